import Foundation

/// ISO 8601 text as PostgreSQL writes it with `DateStyle=ISO` and `TimeZone=UTC`, converted without
/// Foundation's calendar machinery (it is on the hot path and must cover years 4713 BC to 294276 AD).
public enum PGDateFormat {
    /// `2025-04-01 09:30:00.123456+00`, or `… BC` for years before 1 AD.
    static func format(_ date: Date) -> String {
        // Round to the microsecond, PostgreSQL's resolution.
        let totalMicros = (date.timeIntervalSince1970 * 1_000_000).rounded()
        let micros = Int64(totalMicros)
        var days = micros / 86_400_000_000
        var microsOfDay = micros % 86_400_000_000
        if microsOfDay < 0 {
            microsOfDay += 86_400_000_000
            days -= 1
        }
        let (year, month, day) = civil(fromDays: days)
        let seconds = microsOfDay / 1_000_000
        let fraction = microsOfDay % 1_000_000
        let bc = year <= 0
        let displayYear = bc ? 1 - year : year
        var text = pad(displayYear, 4) + "-" + pad(month, 2) + "-" + pad(day, 2)
        text += " " + pad(seconds / 3600, 2) + ":" + pad(seconds / 60 % 60, 2) + ":" + pad(seconds % 60, 2)
        if fraction != 0 { text += "." + pad(fraction, 6) }
        text += "+00"
        if bc { text += " BC" }
        return text
    }

    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> Date? {
        var cursor = Cursor(bytes: bytes)
        if cursor.matches("infinity") { return .distantFuture }
        if cursor.matches("-infinity") { return .distantPast }
        guard var year = cursor.number(minDigits: 4), cursor.take("-"),
            let month = cursor.number(minDigits: 2, maxDigits: 2), cursor.take("-"),
            let day = cursor.number(minDigits: 2, maxDigits: 2)
        else { return nil }
        var micros: Int64 = 0
        var offsetSeconds: Int64 = 0
        if cursor.take(" ") || cursor.take("T") {
            if let hour = cursor.number(minDigits: 2, maxDigits: 2) {
                guard cursor.take(":"), let minute = cursor.number(minDigits: 2, maxDigits: 2), cursor.take(":"),
                    let second = cursor.number(minDigits: 2, maxDigits: 2)
                else { return nil }
                micros = (hour * 3600 + minute * 60 + second) * 1_000_000
                if cursor.take(".") {
                    var scale: Int64 = 100_000
                    var digits = 0
                    while let digit = cursor.digit() {
                        micros += digit * scale
                        scale /= 10
                        digits += 1
                    }
                    if digits == 0 { return nil }
                }
                if cursor.peek == UInt8(ascii: "+") || cursor.peek == UInt8(ascii: "-") {
                    let sign: Int64 = cursor.take("-") ? -1 : 1
                    if sign == 1 { _ = cursor.take("+") }
                    guard let hours = cursor.number(minDigits: 2, maxDigits: 2) else { return nil }
                    var minutes: Int64 = 0
                    var secs: Int64 = 0
                    if cursor.take(":") {
                        guard let m = cursor.number(minDigits: 2, maxDigits: 2) else { return nil }
                        minutes = m
                        if cursor.take(":") {
                            guard let s = cursor.number(minDigits: 2, maxDigits: 2) else { return nil }
                            secs = s
                        }
                    }
                    offsetSeconds = sign * (hours * 3600 + minutes * 60 + secs)
                } else if cursor.take("Z") {
                    offsetSeconds = 0
                }
            } else if !cursor.matches("BC") {
                return nil
            } else {
                year = 1 - year
                return finish(year: year, month: month, day: day, micros: 0, offset: 0)
            }
        }
        if cursor.take(" ") {
            guard cursor.matches("BC") else { return nil }
            year = 1 - year
        }
        guard cursor.atEnd else { return nil }
        return finish(year: year, month: month, day: day, micros: micros, offset: offsetSeconds)
    }

    private static func finish(year: Int64, month: Int64, day: Int64, micros: Int64, offset: Int64) -> Date? {
        guard (1...12).contains(month), (1...31).contains(day) else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let totalMicros = days * 86_400_000_000 + micros - offset * 1_000_000
        // Split before converting so that microseconds survive the Double conversion far from 1970.
        let seconds = Double(totalMicros / 1_000_000)
        let fraction = Double(totalMicros % 1_000_000) / 1_000_000
        return Date(timeIntervalSince1970: seconds + fraction)
    }

    // Howard Hinnant's days-from-civil algorithms (proleptic Gregorian, year 0 = 1 BC). Public for the API's
    // strict timestamp parser.
    public static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    /// The proleptic Gregorian date `days` after 1970-01-01 (negative: before it). Public for the API's
    /// timestamp encoder, which has the same need to stay off Foundation's calendar on the hot path.
    public static func civil(fromDays days: Int64) -> (year: Int64, month: Int64, day: Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }

    private struct Cursor {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0

        var atEnd: Bool { index == bytes.count }
        var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

        mutating func take(_ character: Unicode.Scalar) -> Bool {
            guard peek == UInt8(ascii: character) else { return false }
            index += 1
            return true
        }

        mutating func matches(_ text: String) -> Bool {
            let utf8 = Array(text.utf8)
            guard bytes.count - index >= utf8.count, Array(bytes[index..<index + utf8.count]) == utf8 else {
                return false
            }
            index += utf8.count
            return true
        }

        mutating func digit() -> Int64? {
            guard let byte = peek, byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            index += 1
            return Int64(byte - UInt8(ascii: "0"))
        }

        mutating func number(minDigits: Int, maxDigits: Int = 7) -> Int64? {
            var value: Int64 = 0
            var count = 0
            while count < maxDigits, let digit = digit() {
                value = value * 10 + digit
                count += 1
            }
            return count >= minDigits ? value : nil
        }
    }
}

extension PGDateFormat {
    /// PostgreSQL's text form of a timestamptz in UTC (stable, sortable; used in cursors).
    public static func string(_ date: Date) -> String { format(date) }

    /// Parses PostgreSQL's (or RFC 3339) timestamp text.
    public static func date(_ text: String) -> Date? {
        var text = text
        return text.withUTF8 { parse($0) }
    }
}
