public import Foundation

/// One bound parameter: its type OID, format and bytes (`nil` is SQL NULL).
///
/// Text-format values are NUL-terminated because libpq reads them as C strings.
public struct PGBind: Sendable {
    public var oid: UInt32
    public var isBinary: Bool
    public var bytes: [UInt8]?

    public init(oid: UInt32, text: String) {
        self.oid = oid
        self.isBinary = false
        var bytes = Array(text.utf8)
        bytes.append(0)
        self.bytes = bytes
    }

    public init(oid: UInt32, binary: [UInt8]) {
        self.oid = oid
        self.isBinary = true
        self.bytes = binary
    }

    public static func null(oid: UInt32 = 0) -> PGBind {
        PGBind(oid: oid, isBinary: false, bytes: nil)
    }

    private init(oid: UInt32, isBinary: Bool, bytes: [UInt8]?) {
        self.oid = oid
        self.isBinary = isBinary
        self.bytes = bytes
    }
}

/// Well-known type OIDs (`pg_type.oid`).
public enum PGType {
    public static let unknown: UInt32 = 0
    public static let bool: UInt32 = 16
    public static let bytea: UInt32 = 17
    public static let int8: UInt32 = 20
    public static let int2: UInt32 = 21
    public static let int4: UInt32 = 23
    public static let text: UInt32 = 25
    public static let float8: UInt32 = 701
    public static let date: UInt32 = 1082
    public static let timestamptz: UInt32 = 1184
    public static let uuid: UInt32 = 2950
    public static let jsonb: UInt32 = 3802
    public static let textArray: UInt32 = 1009
    public static let int8Array: UInt32 = 1016
    public static let int4Array: UInt32 = 1007
    public static let uuidArray: UInt32 = 2951
}

/// A query: SQL text with `$n` placeholders and the values bound to them.
///
/// Build one with string interpolation — every interpolated value becomes a bound parameter, never SQL text:
/// `"SELECT * FROM board WHERE id = \(id)"`. Identifiers and fragments that must be SQL use `unsafeSQL:`.
public struct PGQuery: Sendable, ExpressibleByStringInterpolation {
    public var sql: String
    public var binds: [PGBind]
    /// Sent unnamed, so that PostgreSQL plans it with this run's values every time, never with a generic plan
    /// kept from earlier runs. For lists with optional filters (`(\(x)::uuid IS NULL OR col = \(x))`) and
    /// keyset ranges whose plans are cheap to make: a generic plan cannot drop the filters a request left out,
    /// and estimates each such term and the range as selective, so PostgreSQL keeps a "read every row of the
    /// tenant, sort, take 51" plan that looks cheaper than the index read in order (issue 14: a page of the
    /// audit log 19 ms instead of 0.1 ms, of 1,800 projects 27 ms instead of 7). Costs a parse and a plan per
    /// run (about 1–2 ms for those lists); not for statements whose planning is the expensive part.
    public var plannedWithValues = false

    public init(_ sql: String, _ binds: [PGBind] = []) {
        self.sql = sql
        self.binds = binds
    }

    public init(stringLiteral value: String) {
        self.init(value)
    }

    public init(stringInterpolation: StringInterpolation) {
        self.init(stringInterpolation.sql, stringInterpolation.binds)
    }

    public struct StringInterpolation: StringInterpolationProtocol {
        var sql = ""
        var binds: [PGBind] = []

        public init(literalCapacity: Int, interpolationCount: Int) {
            sql.reserveCapacity(literalCapacity + interpolationCount * 3)
            binds.reserveCapacity(interpolationCount)
        }

        public mutating func appendLiteral(_ literal: String) {
            sql += literal
        }

        public mutating func appendInterpolation(_ value: some PGEncodable) {
            binds.append(value.pgBind())
            appendPlaceholder()
        }

        public mutating func appendInterpolation<Value: PGEncodable>(_ value: Value?) {
            binds.append(value.pgBind())
            appendPlaceholder()
        }

        /// `$n` for the bind just added; the common ones are made once, not formatted per query.
        private mutating func appendPlaceholder() {
            let index = binds.count
            sql += index < Self.placeholders.count ? Self.placeholders[index] : "$\(index)"
        }

        private static let placeholders = (0..<64).map { "$\($0)" }

        /// Appends SQL text verbatim. Only for trusted fragments written in our code.
        public mutating func appendInterpolation(unsafeSQL fragment: String) {
            sql += fragment
        }
    }
}

extension PGQuery {
    /// This query, planned with its values every time (see `plannedWithValues`).
    public var plannedWithValuesEachTime: PGQuery {
        var query = self
        query.plannedWithValues = true
        return query
    }
}

// MARK: - Encoding

/// An integer in network byte order, PostgreSQL's binary format for int2/int4/int8: one small allocation
/// per parameter, where text needs a String and then its bytes.
func bigEndianBytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

/// A Swift value that can be bound as a query parameter.
public protocol PGEncodable: Sendable {
    func pgBind() -> PGBind
}

extension PGEncodable {
    /// For `PGQuery(sql, [a.pg, b.pg])`.
    public var pg: PGBind { pgBind() }
}

extension String: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.text, text: self) }
}

extension Substring: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.text, text: String(self)) }
}

extension Bool: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.bool, text: self ? "t" : "f") }
}

extension Int: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.int8, binary: bigEndianBytes(Int64(self))) }
}

extension Int64: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.int8, binary: bigEndianBytes(self)) }
}

extension Int32: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.int4, binary: bigEndianBytes(self)) }
}

extension Int16: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.int2, binary: bigEndianBytes(self)) }
}

extension Double: PGEncodable {
    public func pgBind() -> PGBind {
        let text: String
        if isNaN {
            text = "NaN"
        } else if isInfinite {
            text = self < 0 ? "-Infinity" : "Infinity"
        } else {
            text = description  // shortest representation that round-trips
        }
        return PGBind(oid: PGType.float8, text: text)
    }
}

extension UUID: PGEncodable {
    /// Bound in binary, PostgreSQL's 16 bytes: `uuidString` formats through `snprintf`, measurable per request.
    public func pgBind() -> PGBind { PGBind(oid: PGType.uuid, binary: withUnsafeBytes(of: uuid) { Array($0) }) }
}

extension Date: PGEncodable {
    /// Bound as `timestamptz` text in UTC with microseconds; PostgreSQL casts it to `date` on assignment.
    public func pgBind() -> PGBind { PGBind(oid: PGType.timestamptz, text: PGDateFormat.format(self)) }
}

extension Data: PGEncodable {
    public func pgBind() -> PGBind { PGBind(oid: PGType.bytea, binary: [UInt8](self)) }
}

extension Optional: PGEncodable where Wrapped: PGEncodable {
    public func pgBind() -> PGBind {
        switch self {
        case .some(let value): value.pgBind()
        case .none: .null()
        }
    }
}

/// A value stored as `jsonb`, encoded and decoded with `Codable`.
public struct PGJSON<Value: Codable & Sendable>: PGEncodable, PGDecodable, Sendable {
    public var value: Value

    public init(_ value: Value) {
        self.value = value
    }

    public func pgBind() -> PGBind {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // Encoding a Codable value to JSON only fails for non-finite floats; store them as null.
        let data = (try? encoder.encode(value)) ?? Data("null".utf8)
        return PGBind(oid: PGType.jsonb, text: String(decoding: data, as: UTF8.self))
    }

    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        do {
            value = try JSONDecoder().decode(Value.self, from: Data(bytes))
        } catch {
            throw PGError.decoding(column: column, type: Value.self, reason: "invalid JSON for the type: \(error)")
        }
    }
}

extension PGJSON: Equatable where Value: Equatable {}

// MARK: - Arrays of text, uuid and integers

/// Element types that can travel in a PostgreSQL array literal.
public protocol PGArrayElement: PGEncodable, PGDecodable {
    static var pgArrayOID: UInt32 { get }
    var pgArrayLiteralElement: String { get }
}

extension String: PGArrayElement {
    public static var pgArrayOID: UInt32 { PGType.textArray }
    public var pgArrayLiteralElement: String {
        var quoted = "\""
        for character in self.unicodeScalars {
            if character == "\"" || character == "\\" { quoted.unicodeScalars.append("\\") }
            quoted.unicodeScalars.append(character)
        }
        quoted += "\""
        return quoted
    }
}

extension UUID: PGArrayElement {
    public static var pgArrayOID: UInt32 { PGType.uuidArray }
    public var pgArrayLiteralElement: String { uuidString }
}

extension Int: PGArrayElement {
    public static var pgArrayOID: UInt32 { PGType.int8Array }
    public var pgArrayLiteralElement: String { String(self) }
}

extension Int64: PGArrayElement {
    public static var pgArrayOID: UInt32 { PGType.int8Array }
    public var pgArrayLiteralElement: String { String(self) }
}

extension Int32: PGArrayElement {
    public static var pgArrayOID: UInt32 { PGType.int4Array }
    public var pgArrayLiteralElement: String { String(self) }
}

extension Array: PGEncodable where Element: PGArrayElement {
    public func pgBind() -> PGBind {
        let literal = "{" + map(\.pgArrayLiteralElement).joined(separator: ",") + "}"
        return PGBind(oid: Element.pgArrayOID, text: literal)
    }
}
