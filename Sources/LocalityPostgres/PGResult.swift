internal import CLibPQ
import Foundation

/// The rows of one statement's result. Owns its `PGresult` and frees it when the last reference goes.
///
/// `@unchecked Sendable`: a `PGresult` is immutable once libpq hands it over, so reading it from any thread
/// is safe; it is freed once, in `deinit`.
public final class PGResult: @unchecked Sendable {
    private let handle: OpaquePointer
    public let rowCount: Int
    public let columnCount: Int
    /// Column names in order.
    public var columns: [String] { (0..<columnCount).map(columnName) }

    var handlePointer: OpaquePointer { handle }

    init(handle: OpaquePointer) {
        self.handle = handle
        self.rowCount = Int(PQntuples(handle))
        self.columnCount = Int(PQnfields(handle))
    }

    deinit {
        PQclear(handle)
    }

    /// Rows changed by INSERT/UPDATE/DELETE/COPY (`PQcmdTuples`), 0 otherwise.
    public var affectedRows: Int {
        Int(String(cString: PQcmdTuples(handle))) ?? 0
    }

    public var isEmpty: Bool { rowCount == 0 }

    public var rows: [PGRow] {
        (0..<rowCount).map { PGRow(result: self, index: $0) }
    }

    public var first: PGRow? {
        rowCount > 0 ? PGRow(result: self, index: 0) : nil
    }

    public func columnName(_ index: Int) -> String {
        String(cString: PQfname(handle, Int32(index)))
    }

    public func columnIndex(_ name: String) -> Int? {
        let index = Int(PQfnumber(handle, "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""))
        return index >= 0 ? index : nil
    }

    func isNull(row: Int, column: Int) -> Bool {
        PQgetisnull(handle, Int32(row), Int32(column)) == 1
    }

    func withValue<R>(row: Int, column: Int, _ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        let length = Int(PQgetlength(handle, Int32(row), Int32(column)))
        let pointer = PQgetvalue(handle, Int32(row), Int32(column))!
        return try pointer.withMemoryRebound(to: UInt8.self, capacity: length) {
            try body(UnsafeBufferPointer(start: $0, count: length))
        }
    }
}

extension PGResult: RandomAccessCollection {
    public var startIndex: Int { 0 }
    public var endIndex: Int { rowCount }
    public subscript(position: Int) -> PGRow { PGRow(result: self, index: position) }
}

/// One row of a `PGResult`.
public struct PGRow: Sendable {
    public let result: PGResult
    public let index: Int
    /// Where this row's column 0 is in the result: for a statement that returns two records side by side, each
    /// decoded by its own positional decoder (`shifted(by:)`).
    public private(set) var firstColumn = 0

    public init(result: PGResult, index: Int) {
        self.result = result
        self.index = index
    }

    /// The same row, its columns counted from `columns` further on.
    public func shifted(by columns: Int) -> PGRow {
        var row = self
        row.firstColumn += columns
        return row
    }

    /// Decodes column `column` (zero-based). NULL decodes only into an `Optional`.
    public func decode<T: PGDecodable>(_ type: T.Type = T.self, at relative: Int) throws -> T {
        let column = relative + firstColumn
        guard column >= 0, column < result.columnCount else {
            throw PGError(kind: .decoding, message: "column \(column) does not exist (the result has \(result.columnCount))")
        }
        let name = result.columnName(column)
        if result.isNull(row: index, column: column) {
            if let optionalType = T.self as? any PGOptionalDecodable.Type {
                return optionalType.pgNull as! T
            }
            throw PGError.decoding(column: name, type: T.self, reason: "value is NULL")
        }
        return try result.withValue(row: index, column: column) { try T(pgText: $0, column: name) }
    }

    /// Decodes the column named `name`.
    public func decode<T: PGDecodable>(_ type: T.Type = T.self, _ name: String) throws -> T {
        guard let column = result.columnIndex(name) else {
            throw PGError(kind: .decoding, message: "column \"\(name)\" is not in the result", column: name)
        }
        return try decode(type, at: column - firstColumn)
    }

    /// Decodes the leading columns in order: `let (id, name) = try row.decode(UUID.self, String.self)`.
    public func decode<each T: PGDecodable>(_ types: repeat (each T).Type) throws -> (repeat each T) {
        var column = 0
        func next<U: PGDecodable>(_ type: U.Type) throws -> U {
            defer { column += 1 }
            return try decode(type, at: column)
        }
        return (repeat try next((each T).self))
    }
}

/// Lets `Optional` decode SQL NULL without the row knowing the wrapped type.
protocol PGOptionalDecodable {
    static var pgNull: Self { get }
}

extension Optional: PGOptionalDecodable {
    static var pgNull: Optional<Wrapped> { .none }
}

extension Optional: PGDecodable where Wrapped: PGDecodable {
    public init(pgText bytes: UnsafeBufferPointer<UInt8>, column: String) throws {
        self = .some(try Wrapped(pgText: bytes, column: column))
    }
}
