public import Foundation

/// A Swift type that can be read from a text-format result value.
///
/// Decoding never coerces: a value of the wrong shape throws an error naming the column and the type.
public protocol PGDecodable: Sendable {
    init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws
}

extension String: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        self = String(decoding: bytes, as: UTF8.self)
    }
}

extension Bool: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        guard bytes.count == 1, bytes[0] == UInt8(ascii: "t") || bytes[0] == UInt8(ascii: "f") else {
            throw PGError.decoding(column: column, type: Bool.self, reason: "expected t or f, got \(pgPreview(bytes))")
        }
        self = bytes[0] == UInt8(ascii: "t")
    }
}

extension FixedWidthInteger where Self: PGDecodable {
    static func decodeDecimal(_ bytes: UnsafeBufferPointer<UInt8>, column: String) throws -> Self {
        // Hand-rolled: this sits on the hot path of every id and count we read.
        var index = 0
        var negative = false
        if bytes.count > 0, bytes[0] == UInt8(ascii: "-") {
            negative = true
            index = 1
        }
        guard index < bytes.count else {
            throw PGError.decoding(column: column, type: Self.self, reason: "expected an integer, got \(pgPreview(bytes))")
        }
        var value: Self = 0
        while index < bytes.count {
            let digit = bytes[index] &- UInt8(ascii: "0")
            guard digit < 10 else {
                throw PGError.decoding(column: column, type: Self.self, reason: "expected an integer, got \(pgPreview(bytes))")
            }
            let (shifted, overflow1) = value.multipliedReportingOverflow(by: 10)
            let (next, overflow2) =
                negative
                ? shifted.subtractingReportingOverflow(Self(digit))
                : shifted.addingReportingOverflow(Self(digit))
            guard !overflow1, !overflow2 else {
                throw PGError.decoding(column: column, type: Self.self, reason: "\(pgPreview(bytes)) is out of range")
            }
            value = next
            index += 1
        }
        return value
    }
}

extension Int: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        self = try Int.decodeDecimal(bytes, column: column)
    }
}

extension Int64: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        self = try Int64.decodeDecimal(bytes, column: column)
    }
}

extension Int32: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        self = try Int32.decodeDecimal(bytes, column: column)
    }
}

extension Int16: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        self = try Int16.decodeDecimal(bytes, column: column)
    }
}

extension Double: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        let text = String(decoding: bytes, as: UTF8.self)
        switch text {
        case "NaN": self = .nan
        case "Infinity": self = .infinity
        case "-Infinity": self = -.infinity
        default:
            guard let value = Double(text) else {
                throw PGError.decoding(column: column, type: Double.self, reason: "expected a number, got \(pgPreview(bytes))")
            }
            self = value
        }
    }
}

extension UUID: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        // PostgreSQL writes the canonical 8-4-4-4-12 form; `UUID(uuidString:)` parses it with `sscanf`,
        // which showed up per request, so that form is read here and anything else is left to Foundation.
        if let value = Self.canonical(bytes) {
            self = value
            return
        }
        guard let value = UUID(uuidString: String(decoding: bytes, as: UTF8.self)) else {
            throw PGError.decoding(column: column, type: UUID.self, reason: "expected a uuid, got \(pgPreview(bytes))")
        }
        self = value
    }

    private static func canonical(_ text: UnsafeBufferPointer<UInt8>) -> UUID? {
        guard text.count == 36 else { return nil }
        var bytes: uuid_t = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        let parsed = withUnsafeMutableBytes(of: &bytes) { output -> Bool in
            var position = 0
            for index in 0..<16 {
                if position == 8 || position == 13 || position == 18 || position == 23 {
                    guard text[position] == UInt8(ascii: "-") else { return false }
                    position += 1
                }
                guard let high = hexValue(text[position]), let low = hexValue(text[position + 1]) else { return false }
                output[index] = high << 4 | low
                position += 2
            }
            return true
        }
        return parsed ? UUID(uuid: bytes) : nil
    }

    private static func hexValue(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): character - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension Date: PGDecodable {
    /// Reads `timestamptz` (always UTC: the session time zone is pinned) and `date` (midnight UTC).
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        guard let value = PGDateFormat.parse(bytes) else {
            throw PGError.decoding(column: column, type: Date.self, reason: "expected a timestamptz or date, got \(pgPreview(bytes))")
        }
        self = value
    }
}

extension Data: PGDecodable {
    /// Reads `bytea` in PostgreSQL's hex output format (`\x…`).
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        guard bytes.count >= 2, bytes[0] == UInt8(ascii: "\\"), bytes[1] == UInt8(ascii: "x"), bytes.count % 2 == 0 else {
            throw PGError.decoding(column: column, type: Data.self, reason: "expected bytea in hex format")
        }
        var data = Data(capacity: (bytes.count - 2) / 2)
        var index = 2
        while index < bytes.count {
            guard let high = hexValue(bytes[index]), let low = hexValue(bytes[index + 1]) else {
                throw PGError.decoding(column: column, type: Data.self, reason: "invalid hex digit")
            }
            data.append(high << 4 | low)
            index += 2
        }
        self = data
    }
}

private func hexValue(_ byte: UInt8) -> UInt8? {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
    default: nil
    }
}

extension Array: PGDecodable where Element: PGArrayElement {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        guard let elements = PGArrayLiteral.parse(bytes) else {
            throw PGError.decoding(column: column, type: [Element].self, reason: "expected a one-dimensional array, got \(pgPreview(bytes))")
        }
        self = try elements.map { element in
            guard let element else {
                throw PGError.decoding(column: column, type: [Element].self, reason: "array holds NULL")
            }
            var utf8 = Array<UInt8>(element.utf8)
            return try utf8.withUnsafeMutableBufferPointer { buffer in
                try Element(pgText: UnsafeBufferPointer(buffer), column: column)
            }
        }
    }
}

/// Parses a one-dimensional PostgreSQL array literal: `{a,"b c",NULL}`.
enum PGArrayLiteral {
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> [String?]? {
        let scalars = Array(String(decoding: bytes, as: UTF8.self).unicodeScalars)
        guard scalars.first == "{", scalars.last == "}" else { return nil }
        var result: [String?] = []
        var index = 1
        let end = scalars.count - 1
        if index == end { return [] }
        while index <= end {
            var element = String.UnicodeScalarView()
            var quoted = false
            if scalars[index] == "\"" {
                quoted = true
                index += 1
                while index < end, scalars[index] != "\"" {
                    if scalars[index] == "\\" { index += 1 }
                    guard index < end else { return nil }
                    element.append(scalars[index])
                    index += 1
                }
                guard index < end else { return nil }
                index += 1  // closing quote
            } else {
                while index < end, scalars[index] != "," {
                    if scalars[index] == "{" { return nil }  // nested arrays are not supported
                    element.append(scalars[index])
                    index += 1
                }
            }
            let text = String(element)
            result.append(!quoted && text == "NULL" ? nil : text)
            guard index == end || scalars[index] == "," else { return nil }
            index += 1
        }
        return result
    }
}

func pgPreview(_ bytes: UnsafeBufferPointer<UInt8>) -> String {
    let text = String(decoding: bytes.prefix(40), as: UTF8.self)
    return "\"\(text)\(bytes.count > 40 ? "…" : "")\""
}
