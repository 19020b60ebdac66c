import Foundation
import LocalityPostgres
import OpenAPIRuntime

/// RFC 3339 timestamps for the API (`2026-11-26T09:30:00Z`), as the OpenAPI runtime's default `.iso8601`
/// transcoder writes them, without its shared `ISO8601DateFormatter` on the encoding side.
///
/// Why: every response carries a few timestamps, and the formatter (ICU behind a lock shared by all
/// requests) was a measurable part of the server's CPU per request. Decoding, rarer and with more forms to
/// accept, stays with the runtime's transcoder, so what the API accepts does not change.
struct InternetDateTranscoder: DateTranscoder {
    private let fallback: any DateTranscoder = .iso8601

    func encode(_ date: Date) throws -> String {
        // As the formatter does: to the nearest millisecond, then the whole second at or before it.
        let milliseconds = (date.timeIntervalSince1970 * 1000).rounded()
        // Before the Gregorian calendar began (1582-10-15) the formatter writes Julian dates; past 9999 it
        // writes more digits. Both are left to it.
        guard milliseconds >= -12_219_292_800_000, milliseconds < 253_402_300_800_000 else { return try fallback.encode(date) }
        let seconds = Int64((milliseconds / 1000).rounded(.down))
        var days = seconds / 86_400
        var secondOfDay = seconds % 86_400
        if secondOfDay < 0 {
            secondOfDay += 86_400
            days -= 1
        }
        let (year, month, day) = PGDateFormat.civil(fromDays: days)
        var text = ""
        text.reserveCapacity(20)
        append(year, digits: 4, to: &text)
        text.append("-")
        append(month, digits: 2, to: &text)
        text.append("-")
        append(day, digits: 2, to: &text)
        text.append("T")
        append(secondOfDay / 3600, digits: 2, to: &text)
        text.append(":")
        append(secondOfDay / 60 % 60, digits: 2, to: &text)
        text.append(":")
        append(secondOfDay % 60, digits: 2, to: &text)
        text.append("Z")
        return text
    }

    func decode(_ string: String) throws -> Date {
        try fallback.decode(string)
    }

    private func append(_ value: Int64, digits: Int, to text: inout String) {
        var divisor: Int64 = 1
        for _ in 1..<digits { divisor *= 10 }
        var rest = value
        while divisor > 0 {
            text.unicodeScalars.append(Unicode.Scalar(UInt8(ascii: "0") + UInt8(rest / divisor)))
            rest %= divisor
            divisor /= 10
        }
    }
}
