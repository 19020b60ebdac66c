import Foundation
import OpenAPIRuntime
import Synchronization

/// Encodes an `Encodable` value (a generated schema type) straight into JSON bytes, in the order its
/// `encode(to:)` writes them: for the generated types, the order of the properties in the OpenAPI document.
///
/// Why: Foundation's `JSONEncoder` first builds a tree of its own values (a dictionary per object), then sorts
/// and writes it. For a page of contracts (77 KB: every KPI revision an object with its definition) that was 56%
/// of the server's CPU per request (`perf`, Benchmarks/README.md). Here nothing is built but the bytes.
///
/// What it writes means what `JSONEncoder` writes with the API's settings (the tests compare the two on the
/// generated types): dates through the same `DateTranscoder`, strings escaped the same way (`/` included),
/// doubles as `JSONEncoder` writes them, non-finite numbers refused, `encodeIfPresent` of nil omitted. Keys come
/// in the document's order rather than sorted. What it does not support (a `superEncoder`, writing to a
/// container after a later sibling has been written, `Data`, `URL`, `Decimal`) throws `Unsupported`, and
/// the caller then uses `JSONEncoder`.
struct StreamingJSONEncoder {
    let dateTranscoder: any DateTranscoder

    struct Unsupported: Error, CustomStringConvertible {
        let description: String
    }

    func encode(_ value: some Encodable) throws -> [UInt8] {
        let sink = JSONByteSink(dateTranscoder: dateTranscoder)
        try sink.encodeValue(value)
        if let failure = sink.failure { throw Unsupported(description: failure) }
        return sink.bytes
    }
}

/// The output buffer and the writing of scalars, shared by every container of one encoding.
///
/// Used by one encoding on one thread, so its mutable state skips Swift's dynamic exclusivity checks: one per
/// append otherwise, a tenth of the encoder's time (`perf`).
final class JSONByteSink {
    @exclusivity(unchecked) var bytes: [UInt8] = []
    let dateTranscoder: any DateTranscoder
    /// Set when a container was asked for that cannot be written in order: the output is then not used.
    var failure: String?

    init(dateTranscoder: any DateTranscoder) {
        self.dateTranscoder = dateTranscoder
        bytes.reserveCapacity(16_384)
    }

    /// One value in a slot (the top level, an object's member, an array's element). No coding path is kept
    /// (JSON output has no use for it, and building one per member cost an allocation each).
    func encodeValue<T: Encodable>(_ value: T) throws {
        // Scalars first, without a container: the type comparisons are pointer comparisons, and the value is
        // then read as that type without a dynamic cast.
        if T.self == String.self { return writeString(Self.read(value, as: String.self)) }
        if T.self == Int.self { return writeInteger(Self.read(value, as: Int.self)) }
        if T.self == Int64.self { return writeInteger(Self.read(value, as: Int64.self)) }
        if T.self == Int32.self { return writeInteger(Self.read(value, as: Int32.self)) }
        if T.self == Bool.self { return writeBool(Self.read(value, as: Bool.self)) }
        if T.self == Double.self { return try writeDouble(Self.read(value, as: Double.self)) }
        if T.self == Date.self { return writeString(try dateTranscoder.encode(Self.read(value, as: Date.self))) }
        if T.self == Float.self { return try writeDouble(Self.read(value, as: Float.self)) }
        // The containers' overloads for the other integer widths come here through the generic path (their
        // default implementations): without these a value would ask its single-value container again, forever.
        if T.self == Int8.self { return writeInteger(Self.read(value, as: Int8.self)) }
        if T.self == Int16.self { return writeInteger(Self.read(value, as: Int16.self)) }
        if T.self == UInt.self { return writeInteger(Self.read(value, as: UInt.self)) }
        if T.self == UInt8.self { return writeInteger(Self.read(value, as: UInt8.self)) }
        if T.self == UInt16.self { return writeInteger(Self.read(value, as: UInt16.self)) }
        if T.self == UInt32.self { return writeInteger(Self.read(value, as: UInt32.self)) }
        if T.self == UInt64.self { return writeInteger(Self.read(value, as: UInt64.self)) }
        if T.self == Data.self || T.self == URL.self || T.self == Decimal.self {
            throw StreamingJSONEncoder.Unsupported(description: "\(T.self) is encoded by JSONEncoder")
        }
        // A type this encoder does not know that asks its single-value container for itself again would recurse
        // until the stack ran out; no answer of the API nests anywhere near this deep.
        guard depth < Self.maximumDepth else {
            throw StreamingJSONEncoder.Unsupported(description: "\(T.self) nests deeper than \(Self.maximumDepth)")
        }
        depth += 1
        defer { depth -= 1 }
        let encoder = StreamingValueEncoder(sink: self)
        try value.encode(to: encoder)
        try encoder.finish()
    }

    private static let maximumDepth = 256
    @exclusivity(unchecked) private var depth = 0

    /// `value` as `U`, which the caller has checked `T` is.
    private static func read<T, U>(_ value: T, as type: U.Type) -> U {
        withUnsafePointer(to: value) { $0.withMemoryRebound(to: U.self, capacity: 1) { $0.pointee } }
    }

    func writeBool(_ value: Bool) {
        bytes.append(contentsOf: value ? Self.trueBytes : Self.falseBytes)
    }

    func writeNull() {
        bytes.append(contentsOf: Self.nullBytes)
    }

    func writeInteger(_ value: some BinaryInteger) {
        bytes.append(contentsOf: value.description.utf8)
    }

    /// As `JSONEncoder` writes a double (or a float): its shortest description, without a trailing `.0`.
    func writeDouble(_ value: some BinaryFloatingPoint & LosslessStringConvertible) throws {
        guard value.isFinite else {
            throw EncodingError.invalidValue(value, .init(codingPath: [], debugDescription: "Unable to encode \(value) directly in JSON."))
        }
        var text = value.description
        if text.hasSuffix(".0") { text.removeLast(2) }
        bytes.append(contentsOf: text.utf8)
    }

    /// As `JSONEncoder` escapes: quote, backslash, slash, and control characters; everything else as UTF-8.
    func writeString(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { utf8 in
            var start = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                let escaped: StaticString
                switch byte {
                case UInt8(ascii: "\""): escaped = "\\\""
                case UInt8(ascii: "\\"): escaped = "\\\\"
                case UInt8(ascii: "/"): escaped = "\\/"
                case 0x08: escaped = "\\b"
                case 0x0C: escaped = "\\f"
                case 0x0A: escaped = "\\n"
                case 0x0D: escaped = "\\r"
                case 0x09: escaped = "\\t"
                case 0..<0x20: escaped = ""
                default: continue
                }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<index]))
                if escaped.utf8CodeUnitCount > 0 {
                    escaped.withUTF8Buffer { bytes.append(contentsOf: $0) }
                } else {
                    bytes.append(contentsOf: "\\u00".utf8)
                    bytes.append(Self.hexDigits[Int(byte >> 4)])
                    bytes.append(Self.hexDigits[Int(byte & 0x0F)])
                }
                start = index + 1
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<utf8.count]))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    func writeKey(_ key: some CodingKey) {
        writeString(key.stringValue)
        bytes.append(UInt8(ascii: ":"))
    }

    private static let trueBytes = Array("true".utf8)
    private static let falseBytes = Array("false".utf8)
    private static let nullBytes = Array("null".utf8)
    private static let hexDigits = Array("0123456789abcdef".utf8)
}

/// The `Encoder` for one value: it opens at most one container (an object or an array; a single value writes
/// at once), and `finish` closes it. A nested container opened from one of its containers is closed before
/// the next member is written here, so output stays in order; writing to it after that throws `Unsupported`.
final class StreamingValueEncoder: Encoder {
    enum Shape {
        case none
        case object
        case array
        case single
    }

    let sink: JSONByteSink
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    // Used by one encoding on one thread (see `JSONByteSink`).
    @exclusivity(unchecked) private(set) var shape = Shape.none
    /// Members or elements written so far (for the commas).
    @exclusivity(unchecked) private var count = 0
    @exclusivity(unchecked) private var closed = false
    /// A container opened by `nestedContainer`/`nestedUnkeyedContainer`, still open.
    @exclusivity(unchecked) private var openChild: StreamingValueEncoder?

    init(sink: JSONByteSink) {
        self.sink = sink
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if shape == .none {
            shape = .object
            sink.bytes.append(UInt8(ascii: "{"))
        }
        return KeyedEncodingContainer(StreamingKeyedContainer<Key>(encoder: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if shape == .none {
            shape = .array
            sink.bytes.append(UInt8(ascii: "["))
        }
        return StreamingUnkeyedContainer(encoder: self)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        StreamingSingleValueContainer(encoder: self)
    }

    /// Closes the value: `}` or `]`, or `{}` for a value that wrote nothing (as `JSONEncoder` does).
    func finish() throws {
        try closeChild()
        closed = true
        switch shape {
        case .object: sink.bytes.append(UInt8(ascii: "}"))
        case .array: sink.bytes.append(UInt8(ascii: "]"))
        case .single: break
        case .none: sink.bytes.append(contentsOf: "{}".utf8)
        }
    }

    /// Before a member or element: checks the shape, closes an open nested container, writes the comma.
    func beginElement(_ expected: Shape) throws {
        guard !closed, shape == expected else {
            throw StreamingJSONEncoder.Unsupported(description: "a container written out of order")
        }
        try closeChild()
        if count > 0 { sink.bytes.append(UInt8(ascii: ",")) }
        count += 1
    }

    /// A single value: only once, and only into an encoder that opened nothing else.
    func beginSingle() throws {
        guard !closed, shape == .none else {
            throw StreamingJSONEncoder.Unsupported(description: "a second single value")
        }
        shape = .single
    }

    func nested() -> StreamingValueEncoder {
        let child = StreamingValueEncoder(sink: sink)
        openChild = child
        return child
    }

    private func closeChild() throws {
        if let child = openChild {
            openChild = nil
            try child.finish()
        }
    }

    /// A value this encoder cannot write in order: the caller falls back to `JSONEncoder`.
    func unsupported(_ what: String) -> StreamingValueEncoder {
        sink.failure = what
        closed = true
        let child = StreamingValueEncoder(sink: sink)
        child.closed = true
        return child
    }
}

struct StreamingKeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let encoder: StreamingValueEncoder
    var codingPath: [any CodingKey] { [] }

    private func member(_ key: Key) throws {
        try encoder.beginElement(.object)
        encoder.sink.writeKey(key)
    }

    mutating func encodeNil(forKey key: Key) throws {
        try member(key)
        encoder.sink.writeNull()
    }

    mutating func encode(_ value: Bool, forKey key: Key) throws {
        try member(key)
        encoder.sink.writeBool(value)
    }

    mutating func encode(_ value: String, forKey key: Key) throws {
        try member(key)
        encoder.sink.writeString(value)
    }

    mutating func encode(_ value: Double, forKey key: Key) throws {
        try member(key)
        try encoder.sink.writeDouble(value)
    }

    mutating func encode(_ value: Float, forKey key: Key) throws {
        try member(key)
        try encoder.sink.writeDouble(value)
    }

    mutating func encode(_ value: Int, forKey key: Key) throws {
        try member(key)
        encoder.sink.writeInteger(value)
    }

    mutating func encode(_ value: Int64, forKey key: Key) throws {
        try member(key)
        encoder.sink.writeInteger(value)
    }

    mutating func encode(_ value: Int32, forKey key: Key) throws {
        try member(key)
        encoder.sink.writeInteger(value)
    }

    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try member(key)
        try encoder.sink.encodeValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        do {
            try member(key)
        } catch {
            return encoder.unsupported("nested container").container(keyedBy: keyType)
        }
        return encoder.nested().container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        do {
            try member(key)
        } catch {
            return encoder.unsupported("nested container").unkeyedContainer()
        }
        return encoder.nested().unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder { encoder.unsupported("superEncoder") }

    mutating func superEncoder(forKey key: Key) -> any Encoder { encoder.unsupported("superEncoder") }
}

struct StreamingUnkeyedContainer: UnkeyedEncodingContainer {
    let encoder: StreamingValueEncoder
    var codingPath: [any CodingKey] { [] }
    private(set) var count = 0

    init(encoder: StreamingValueEncoder) {
        self.encoder = encoder
    }

    private mutating func element() throws {
        try encoder.beginElement(.array)
        count += 1
    }

    mutating func encodeNil() throws {
        try element()
        encoder.sink.writeNull()
    }

    mutating func encode(_ value: Bool) throws {
        try element()
        encoder.sink.writeBool(value)
    }

    mutating func encode(_ value: String) throws {
        try element()
        encoder.sink.writeString(value)
    }

    mutating func encode(_ value: Double) throws {
        try element()
        try encoder.sink.writeDouble(value)
    }

    mutating func encode(_ value: Int) throws {
        try element()
        encoder.sink.writeInteger(value)
    }

    mutating func encode(_ value: Int64) throws {
        try element()
        encoder.sink.writeInteger(value)
    }

    mutating func encode<T: Encodable>(_ value: T) throws {
        try element()
        try encoder.sink.encodeValue(value)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        do {
            try element()
        } catch {
            return encoder.unsupported("nested container").container(keyedBy: keyType)
        }
        return encoder.nested().container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        do {
            try element()
        } catch {
            return encoder.unsupported("nested container").unkeyedContainer()
        }
        return encoder.nested().unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder { encoder.unsupported("superEncoder") }
}

struct StreamingSingleValueContainer: SingleValueEncodingContainer {
    let encoder: StreamingValueEncoder
    var codingPath: [any CodingKey] { [] }

    mutating func encodeNil() throws {
        try encoder.beginSingle()
        encoder.sink.writeNull()
    }

    mutating func encode(_ value: Bool) throws {
        try encoder.beginSingle()
        encoder.sink.writeBool(value)
    }

    mutating func encode(_ value: String) throws {
        try encoder.beginSingle()
        encoder.sink.writeString(value)
    }

    mutating func encode(_ value: Double) throws {
        try encoder.beginSingle()
        try encoder.sink.writeDouble(value)
    }

    mutating func encode(_ value: Int) throws {
        try encoder.beginSingle()
        encoder.sink.writeInteger(value)
    }

    mutating func encode(_ value: Int64) throws {
        try encoder.beginSingle()
        encoder.sink.writeInteger(value)
    }

    mutating func encode<T: Encodable>(_ value: T) throws {
        try encoder.beginSingle()
        try encoder.sink.encodeValue(value)
    }
}

/// A JSON body a handler has already encoded with `StreamingJSONEncoder`, handed to `RecordingTransport` past the
/// generated layer (whose `Converter` always encodes with `JSONEncoder` and has no hook for another encoder).
///
/// How: for every request the transport puts an empty slot in a task-local; a handler whose answer is large calls
/// `offer(_:standIn:)` as its last step, which encodes the answer into the slot and returns a small stand-in of the
/// same generated type for the generated layer to encode; when the generated layer then answers 200 (or, for a
/// write, 201), the transport sends the slot's bytes instead. The bytes are the encoding of a value of the generated
/// type, so the contract is the same; with no slot (a test calling the handler directly) or when the encoder
/// cannot write the value, `offer` returns the value itself and `JSONEncoder` encodes it as before.
///
/// Used for the lists whose pages are large (projects, opportunities, contracts, schools, school contracts, ledger
/// entries): `JSONEncoder` was 35–56% of the server's CPU on such a page (`perf`, Benchmarks/README.md); and for
/// bids (their KPIs and commitments), which a supplier submits many of at a deadline. Audit
/// events are left to `JSONEncoder`: their free-form `before`/`after` objects would come out in hash order.
final class PreEncodedBody: Sendable {
    @TaskLocal static var slot: PreEncodedBody?

    private let bytes = Mutex<[UInt8]?>(nil)

    static let encoder = StreamingJSONEncoder(dateTranscoder: InternetDateTranscoder())

    /// `value` encoded into the current request's slot, and `standIn` in its place; or `value` itself.
    static func offer<T: Encodable>(_ value: T, standIn: @autoclosure () -> T) -> T {
        guard let slot, let encoded = try? encoder.encode(value) else { return value }
        slot.bytes.withLock { $0 = encoded }
        return standIn()
    }

    /// The bytes offered, once.
    func take() -> [UInt8]? {
        bytes.withLock { bytes in
            defer { bytes = nil }
            return bytes
        }
    }
}
