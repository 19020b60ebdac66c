import Foundation
import LocalityDomain
@testable import LocalityAPI
import OpenAPIRuntime
import Testing

/// The API's timestamps: whole seconds exactly as the OpenAPI runtime's `.iso8601` transcoder writes them,
/// fractions to the microsecond PostgreSQL stores, and strict parsing.
@Suite("RFC 3339 timestamps")
struct InternetDateTranscoderTests {
    @Test func writesWholeSecondsAsTheRuntimesFormatterDoes() throws {
        let fast = InternetDateTranscoder()
        let reference: any DateTranscoder = .iso8601
        var generator = SystemRandomNumberGenerator()
        // 1582-10-15 to 9999-12-31 (the Julian years before go to the runtime's formatter), both sides of 1970.
        let earliest = -12_219_292_800.0, latest = 253_402_300_799.0
        var dates = (0..<5_000).map { _ in Date(timeIntervalSince1970: Double.random(in: earliest...latest, using: &generator).rounded(.down)) }
        dates += [0, -1, 86_399, -86_400, 951_782_400, 1_795_651_200, earliest, latest].map { Date(timeIntervalSince1970: $0) }
        for date in dates {
            #expect(try fast.encode(date) == reference.encode(date), "\(date.timeIntervalSince1970)")
        }
    }

    @Test func writesFractionsToTheMicrosecond() throws {
        let fast = InternetDateTranscoder()
        #expect(try fast.encode(Date(timeIntervalSince1970: 1_795_651_200.75)) == "2026-11-26T00:00:00.75Z")
        #expect(try fast.encode(Date(timeIntervalSince1970: 1_795_651_200.123456)) == "2026-11-26T00:00:00.123456Z")
        #expect(try fast.encode(Date(timeIntervalSince1970: 1_795_651_200.000_000_2)) == "2026-11-26T00:00:00Z")
        #expect(try fast.encode(Date(timeIntervalSince1970: -0.5)) == "1969-12-31T23:59:59.5Z")
        // Every microsecond survives the round trip through text (1900–2100, where a Double holds microseconds).
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            let micros = Int64.random(in: -2_208_988_800_000_000...4_102_444_800_000_000, using: &generator)
            let text = try fast.encode(Date(timeIntervalSince1970: Double(micros) / 1_000_000))
            #expect((try fast.decode(text).timeIntervalSince1970 * 1_000_000).rounded() == Double(micros), "\(text)")
        }
    }

    @Test func leavesYearsBeyondFourDigitsToTheRuntime() throws {
        let fast = InternetDateTranscoder()
        let reference: any DateTranscoder = .iso8601
        for seconds in [-62_135_596_801.0, 253_402_300_800.0, -100_000_000_000] {
            let date = Date(timeIntervalSince1970: seconds)
            #expect(try fast.encode(date) == reference.encode(date))
        }
    }

    @Test func decodesStrictly() throws {
        let fast = InternetDateTranscoder()
        let reference: any DateTranscoder = .iso8601
        for text in ["2026-11-26T09:30:00Z", "2026-11-26T09:30:00+01:00", "2024-02-29T23:59:59-11:30"] {
            #expect(try fast.decode(text) == reference.decode(text), "\(text)")
        }
        // Proleptic Gregorian both ways before 1582, as PostgreSQL counts.
        #expect(try fast.encode(fast.decode("1000-01-01T00:00:00Z")) == "1000-01-01T00:00:00Z")
        #expect(try fast.decode("1000-01-01T00:00:00Z").timeIntervalSince1970 == -30_610_224_000)
        #expect(try fast.decode("2027-01-01T00:00:00.123Z").timeIntervalSince1970 == 1_798_761_600.123)
        #expect(try fast.decode("2027-01-01t01:00:00.5+01:00").timeIntervalSince1970 == 1_798_761_600.5)
        for text in ["26/11/2026", "2025-02-30T12:00:00Z", "2025-02-29T12:00:00Z", "2027-01-01T24:00:00Z", "2027-01-01T23:60:00Z",
                     "2027-01-01T23:59:60Z", "2027-13-01T00:00:00Z", "2027-00-10T00:00:00Z", "0999-12-31T23:59:59Z",
                     "2027-01-01T00:00:00", "2027-01-01 00:00:00Z", "2027-01-01T00:00:00.Z", "2027-01-01T00:00:00.1234567890Z",
                     "2027-01-01T00:00:00+24:00", "2027-01-01T00:00:00+0100", "2027-01-01", "+2027-01-01T00:00:00Z", "2027-01-01T00:00:00Zjunk"] {
            #expect(throws: InternetDateTranscoder.InvalidDateTime.self, "\(text)") { try fast.decode(text) }
        }
    }

    @Test func calendarDatesAreStrictToo() {
        #expect(CalendarDate.parse("2024-02-29") != nil)
        for text in ["2025-02-30", "2025-13-01", "0999-01-01", "2025-1-01", "2025-04-31"] {
            #expect(CalendarDate.parse(text) == nil, "\(text)")
        }
    }
}
