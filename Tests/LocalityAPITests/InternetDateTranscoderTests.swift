import Foundation
@testable import LocalityAPI
import OpenAPIRuntime
import Testing

/// The API's timestamp encoder must write exactly what the OpenAPI runtime's `.iso8601` transcoder writes.
@Suite("RFC 3339 timestamps")
struct InternetDateTranscoderTests {
    @Test func writesWhatTheRuntimesFormatterWrites() throws {
        let fast = InternetDateTranscoder()
        let reference: any DateTranscoder = .iso8601
        var generator = SystemRandomNumberGenerator()
        // 0001-01-01 to 9999-12-31 (the Julian years before 1582 go to the runtime's formatter), with fractions
        // of a second, on both sides of 1970.
        let earliest = -62_135_596_800.0, latest = 253_402_300_799.0
        var dates = (0..<5_000).map { _ in Date(timeIntervalSince1970: Double.random(in: earliest...latest, using: &generator)) }
        dates += [0, -0.5, -1, 0.999_999, 0.9994, 0.9996, 86_399.999, -86_400.25, 951_782_400, 1_795_651_200.75, earliest, latest,
                  -12_219_292_800, -12_219_292_800.0004, -12_219_292_801, 253_402_300_799.9996]
            .map { Date(timeIntervalSince1970: $0) }
        for date in dates {
            #expect(try fast.encode(date) == reference.encode(date), "\(date.timeIntervalSince1970)")
        }
        #expect(try fast.encode(Date(timeIntervalSince1970: 1_795_651_200.75)) == "2026-11-26T00:00:00Z")
    }

    @Test func leavesYearsBeyondFourDigitsAndDecodingToTheRuntime() throws {
        let fast = InternetDateTranscoder()
        let reference: any DateTranscoder = .iso8601
        for seconds in [-62_135_596_801.0, 253_402_300_800.0, -100_000_000_000] {
            let date = Date(timeIntervalSince1970: seconds)
            #expect(try fast.encode(date) == reference.encode(date))
        }
        for text in ["2026-11-26T09:30:00Z", "2026-11-26T09:30:00+01:00"] {
            #expect(try fast.decode(text) == reference.decode(text))
        }
        #expect(throws: (any Error).self) { try fast.decode("26/11/2026") }
    }
}
