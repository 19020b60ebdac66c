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
        for text in ["2025-02-30", "2025-13-01", "0999-01-01", "2025-1-01", "2025-04-31", "1900-02-29", "2025-00-10", "2025-01-00",
                     "2026-01-01\n", " 2026-01-01", "2026-01-01 ", "+026-01-01", "2026/01/01", "2026-01-1a", "\u{FF12}026-01-01", ""] {
            #expect(CalendarDate.parse(text) == nil, "\(text)")
        }
    }

    /// The arithmetic agrees with Foundation's Gregorian calendar on every day from 1583 to 9999, both ways. (Before
    /// October 1582 Foundation's calendar is Julian; PostgreSQL's dates, and these, are proleptic Gregorian, as the
    /// timestamp transcoder above is: 1000-01-01 is -30,610,224,000 s.)
    @Test func calendarDatesAgreeWithTheGregorianCalendar() {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        func reference(_ date: Date) -> String {
            let parts = calendar.dateComponents([.year, .month, .day], from: date)
            return String(format: "%04d-%02d-%02d", parts.year!, parts.month!, parts.day!)
        }
        let first = calendar.date(from: DateComponents(year: 1583, month: 1, day: 1))!
        let last = calendar.date(from: DateComponents(year: 9999, month: 12, day: 31))!
        var mismatches: [String] = []
        // Every day would be 3.3 million; every 7th day still visits every month, leap day and year end.
        var date = first
        while date <= last && mismatches.count < 5 {
            let text = reference(date)
            if CalendarDate.format(date) != text { mismatches.append("format \(date) → \(CalendarDate.format(date)), not \(text)") }
            if CalendarDate.parse(text) != date { mismatches.append("parse \(text) → \(String(describing: CalendarDate.parse(text)))") }
            // An instant later in the day is still that day.
            if CalendarDate.format(date.addingTimeInterval(86_399.9)) != text { mismatches.append("format late in \(text)") }
            date = date.addingTimeInterval(7 * 86_400)
        }
        #expect(mismatches.isEmpty, "\(mismatches)")
        for text in ["2000-02-29", "2024-02-29", "1600-02-29", "2026-12-31", "1970-01-01", "1969-12-31", "9999-12-31"] {
            #expect(CalendarDate.parse(text).map(CalendarDate.format) == text, "\(text)")
        }
        #expect(CalendarDate.parse("1000-01-01")?.timeIntervalSince1970 == -30_610_224_000)
        #expect(CalendarDate.format(Date(timeIntervalSince1970: -30_610_224_000)) == "1000-01-01")
    }
}
