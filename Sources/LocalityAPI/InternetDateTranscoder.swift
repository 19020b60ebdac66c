import Foundation
import LocalityPostgres
import OpenAPIRuntime

/// RFC 3339 timestamps for the API (`2026-11-26T09:30:00Z`, `2026-11-26T09:30:00.123456Z`).
///
/// Encoding: UTC, with the fraction of a second PostgreSQL stored (microseconds, trailing zeros dropped;
/// none for a whole second), written without Foundation's shared `ISO8601DateFormatter` (ICU behind a lock
/// shared by all requests was a measurable part of the server's CPU per request).
///
/// Decoding is strict, because the formatter it replaces rolled impossible values forward
/// (`2025-02-30` became 3 March, `T24:00:00` the next day) and refused fractions, which is what
/// JavaScript's `toISOString()` sends: `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, every field in range
/// (no leap seconds), years 1000–9999. Anything else throws `InvalidDateTime`, which the API answers with
/// 422 naming the field (or 400 naming the query parameter).
struct InternetDateTranscoder: DateTranscoder {
    private let fallback: any DateTranscoder = .iso8601

    /// A timestamp the API refuses; `text` is what was sent.
    struct InvalidDateTime: Error, CustomStringConvertible {
        let text: String
        var description: String {
            "must be an RFC 3339 date-time such as 2027-01-01T09:30:00Z (a real date and time, year 1000 or later)"
        }
    }

    func encode(_ date: Date) throws -> String {
        // To the nearest microsecond, PostgreSQL's precision (a `Date` near today is exact to ~0.2 µs).
        let microseconds = (date.timeIntervalSince1970 * 1_000_000).rounded()
        // Proleptic Gregorian from year 1, as PostgreSQL and the parser count (the formatter would write Julian
        // dates before 1582-10-15); before year 1 and past 9999 (never accepted) it is left to the formatter.
        guard microseconds >= -62_135_596_800_000_000, microseconds < 253_402_300_800_000_000 else { return try fallback.encode(date) }
        let totalMicros = Int64(microseconds)
        var seconds = totalMicros / 1_000_000
        var fraction = totalMicros % 1_000_000
        if fraction < 0 {
            fraction += 1_000_000
            seconds -= 1
        }
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
        if fraction > 0 {
            var digits = 6
            while fraction % 10 == 0 {
                fraction /= 10
                digits -= 1
            }
            text.append(".")
            append(fraction, digits: digits, to: &text)
        }
        text.append("Z")
        return text
    }

    func decode(_ string: String) throws -> Date {
        guard let date = Self.parse(string) else { throw InvalidDateTime(text: string) }
        return date
    }

    /// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, strictly; nil for anything else.
    static func parse(_ string: String) -> Date? {
        let bytes = Array(string.utf8)
        var index = 0
        func number(_ count: Int) -> Int64? {
            guard index + count <= bytes.count else { return nil }
            var value: Int64 = 0
            for byte in bytes[index..<(index + count)] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int64(byte - UInt8(ascii: "0"))
            }
            index += count
            return value
        }
        func take(_ characters: String) -> Bool {
            guard index < bytes.count, characters.utf8.contains(bytes[index]) else { return false }
            index += 1
            return true
        }
        guard let year = number(4), take("-"), let month = number(2), take("-"), let day = number(2), take("Tt"),
            let hour = number(2), take(":"), let minute = number(2), take(":"), let second = number(2)
        else { return nil }
        var nanoseconds: Int64 = 0
        if take(".") {
            let start = index
            while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") { index += 1 }
            let digits = bytes[start..<index]
            guard !digits.isEmpty, digits.count <= 9 else { return nil }
            for (position, byte) in digits.enumerated() {
                var scale: Int64 = 1
                for _ in 0..<(8 - position) { scale *= 10 }
                nanoseconds += Int64(byte - UInt8(ascii: "0")) * scale
            }
        }
        var offsetSeconds: Int64 = 0
        if !take("Zz") {
            guard index < bytes.count else { return nil }
            let sign: Int64 = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            guard take("+-"), let offsetHours = number(2), take(":"), let offsetMinutes = number(2),
                offsetHours <= 23, offsetMinutes <= 59
            else { return nil }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        }
        guard index == bytes.count, (1000...9999).contains(year), (1...12).contains(month),
            (1...daysIn(month: month, year: year)).contains(day), hour <= 23, minute <= 59, second <= 59
        else { return nil }
        let days = PGDateFormat.daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
        return Date(timeIntervalSince1970: Double(seconds) + Double(nanoseconds) / 1_000_000_000)
    }

    static func daysIn(month: Int64, year: Int64) -> Int64 {
        switch month {
        case 2: (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: 30
        default: 31
        }
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
