internal import CLibPQ
import Foundation
import Synchronization

/// How to reach the server and what every session is pinned to.
public struct PGConnectionConfiguration: Sendable {
    /// A `postgresql://` URL or a `key=value` conninfo string.
    public var conninfo: String
    public var applicationName: String
    public var connectTimeoutSeconds: Int
    /// Prepared statements kept per connection; statements beyond this run unnamed.
    public var statementCacheCapacity: Int

    public init(
        conninfo: String,
        applicationName: String = "locality",
        connectTimeoutSeconds: Int = 10,
        statementCacheCapacity: Int = 512
    ) {
        self.conninfo = conninfo
        self.applicationName = applicationName
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.statementCacheCapacity = statementCacheCapacity
    }
}

public enum PGIsolationLevel: String, Sendable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}

/// One PostgreSQL session. Every libpq call on it runs on the connection's own worker thread.
///
/// Obtain one from `PGPool.withConnection`; a connection must not be used by two tasks at once.
public final class PGConnection: @unchecked Sendable {
    // Touched only on `worker`, except `PQsocket`/`PQstatus` reads while the connection is idle in the pool.
    private let handle: OpaquePointer
    private let cancelHandle: OpaquePointer?
    let worker: WorkerThread
    private let cacheCapacity: Int
    private var statementCache: [String: PreparedStatement] = [:]
    private let broken = Atomic<Bool>(false)
    /// Called with each statement's duration (for the pool's query-time metric).
    let onQueryTime: (@Sendable (Duration) -> Void)?
    /// The server process id, for diagnostics and tests.
    public let backendPID: Int32

    private struct PreparedStatement {
        let name: String
        let oids: [UInt32]
    }

    private init(handle: OpaquePointer, worker: WorkerThread, cacheCapacity: Int, onQueryTime: (@Sendable (Duration) -> Void)?) {
        self.handle = handle
        self.cancelHandle = PQgetCancel(handle)
        self.worker = worker
        self.cacheCapacity = cacheCapacity
        self.onQueryTime = onQueryTime
        self.backendPID = PQbackendPID(handle)
    }

    deinit {
        if let cancelHandle { PQfreeCancel(cancelHandle) }
    }

    /// Opens a session (the blocking connect runs on the new connection's worker thread).
    public static func connect(
        _ configuration: PGConnectionConfiguration,
        onQueryTime: (@Sendable (Duration) -> Void)? = nil
    ) async throws -> PGConnection {
        let worker = WorkerThread(name: "pg-\(configuration.applicationName)")
        do {
            let handle = try await worker.run { try openHandle(configuration) }
            return PGConnection(
                handle: handle.pointer,
                worker: worker,
                cacheCapacity: configuration.statementCacheCapacity,
                onQueryTime: onQueryTime
            )
        } catch {
            worker.stop()
            throw error
        }
    }

    private static func openHandle(_ configuration: PGConnectionConfiguration) throws -> UnsafeSendableHandle {
        // Pin the session settings every decoder relies on; later keywords override the URL's.
        let keywords = ["dbname", "application_name", "client_encoding", "connect_timeout", "options"]
        let values = [
            configuration.conninfo,
            configuration.applicationName,
            "UTF8",
            String(configuration.connectTimeoutSeconds),
            "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=iso_8601 -c extra_float_digits=1",
        ]
        let handle = withCStringArray(keywords) { keywordPointers in
            withCStringArray(values) { valuePointers in
                PQconnectdbParams(keywordPointers, valuePointers, 1)
            }
        }
        guard let handle else {
            throw PGError(kind: .connection, sqlState: "08001", message: "libpq could not allocate a connection")
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQfinish(handle)
            throw PGError(kind: .connection, sqlState: "08001", message: message)
        }
        // Notices ("relation already exists, skipping") are chatter, not errors: keep them off stderr.
        PQsetNoticeProcessor(handle, { _, _ in }, nil)
        return UnsafeSendableHandle(handle)
    }

    // MARK: Queries

    /// Runs one parameterised statement (prepared once per connection, then executed by name).
    @discardableResult
    public func query(_ query: PGQuery) async throws -> PGResult {
        let box = try await runCancellable { [self] in try self.executeParameterised(query) }
        return box
    }

    /// Runs trusted SQL text with no parameters through the simple-query protocol (several statements
    /// allowed). For migrations and fixed commands only; values always go through `query`.
    public func execute(_ sql: String) async throws {
        _ = try await runCancellable { [self] in try self.executeSimple(sql) }
    }

    /// Sets a transaction-local setting (`set_config(name, value, true)`), e.g. the tenant context.
    public func setLocal(_ name: String, _ value: String) async throws {
        try await query("SELECT set_config(\(name), \(value), true)")
    }

    /// `COPY … FROM STDIN` in text format; `rows` are column values, `nil` for NULL. Returns rows copied.
    @discardableResult
    public func copyIn(_ sql: String, rows: some Sequence<[String?]>) async throws -> Int {
        var chunks: [[UInt8]] = []
        var chunk: [UInt8] = []
        chunk.reserveCapacity(1 << 16)
        for row in rows {
            for (index, value) in row.enumerated() {
                if index > 0 { chunk.append(UInt8(ascii: "\t")) }
                appendCopyText(value, to: &chunk)
            }
            chunk.append(UInt8(ascii: "\n"))
            if chunk.count >= 1 << 16 {
                chunks.append(chunk)
                chunk.removeAll(keepingCapacity: true)
            }
        }
        if !chunk.isEmpty { chunks.append(chunk) }
        return try await copyIn(sql, chunks: chunks)
    }

    /// `COPY … FROM STDIN` with pre-formatted data chunks. Returns rows copied.
    @discardableResult
    public func copyIn(_ sql: String, chunks: [[UInt8]]) async throws -> Int {
        try await runCancellable { [self] in try self.executeCopyIn(sql, chunks: chunks) }
    }

    // MARK: Transactions

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    public func withTransaction<R: Sendable>(
        isolation: PGIsolationLevel = .readCommitted,
        readOnly: Bool = false,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        try await runUncancellable("BEGIN ISOLATION LEVEL \(isolation.rawValue)\(readOnly ? " READ ONLY" : "")")
        let result: R
        do {
            result = try await body(self)
        } catch {
            if !isBroken {
                do {
                    try await runUncancellable("ROLLBACK")
                } catch {
                    markBroken()
                }
            }
            throw error
        }
        let tag = try await runUncancellable("COMMIT")
        if tag == "ROLLBACK" {
            // The server ends a failed transaction with ROLLBACK even when asked to COMMIT.
            throw PGError(kind: .server, sqlState: "25P02", message: "the transaction failed and was rolled back")
        }
        return result
    }

    // MARK: State the pool needs

    /// True once an error showed the session unusable; the pool then discards it.
    public var isBroken: Bool { broken.load(ordering: .relaxed) }

    func markBroken() { broken.store(true, ordering: .relaxed) }

    /// Cheap check before lending an idle connection: an idle session has nothing to read, so readable
    /// input means the server ended it (for example `pg_terminate_backend`) or the socket closed.
    func looksHealthyWhileIdle() -> Bool {
        guard !isBroken, PQstatus(handle) == CONNECTION_OK else { return false }
        var descriptor = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 0
    }

    /// Connects, runs `body`, and closes the connection whether `body` returns or throws.
    /// For one-off work outside the pool (migrations, bootstrap); services use `PGPool`.
    public static func withConnection<R: Sendable>(
        _ configuration: PGConnectionConfiguration,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        let connection = try await connect(configuration)
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    /// Closes the session and ends its worker thread.
    public func close() async {
        let handle = UnsafeSendableHandle(self.handle)
        _ = try? await worker.run { PQfinish(handle.pointer) }
        worker.stop()
    }

    // MARK: Running work on the worker thread

    @discardableResult
    private func runUncancellable(_ sql: String) async throws -> String {
        try await worker.run { [self] in
            let result = try self.executeSimple(sql)
            return result.commandTag
        }
    }

    /// Runs `body` on the worker; cancelling the calling task sends the server a cancel request (`PQcancel`).
    private func runCancellable<R: Sendable>(_ body: @escaping @Sendable () throws -> R) async throws -> R {
        let state = CancelState()
        return try await withTaskCancellationHandler {
            try await worker.run { [self] in
                guard state.begin() else {
                    throw PGError(kind: .server, sqlState: "57014", message: "canceling statement due to user request")
                }
                defer { state.end() }
                let start = ContinuousClock.now
                defer { self.onQueryTime?(ContinuousClock.now - start) }
                return try body()
            }
        } onCancel: { [self] in
            if state.cancel() { sendCancelRequest(state) }
        }
    }

    private func sendCancelRequest(_ state: CancelState) {
        guard let cancelHandle else { return }
        let cancel = UnsafeSendableHandle(cancelHandle)
        // PQcancel opens a connection of its own and blocks: keep it off the caller's thread.
        DispatchQueue.global().async {
            guard state.isRunning else { return }
            var buffer = [CChar](repeating: 0, count: 256)
            _ = PQcancel(cancel.pointer, &buffer, Int32(buffer.count))
        }
    }

    // MARK: On the worker thread

    private func executeParameterised(_ query: PGQuery) throws -> PGResult {
        let oids = query.binds.map(\.oid)
        var statementName: String? = nil
        if let cached = statementCache[query.sql], cached.oids == oids {
            statementName = cached.name
        } else if statementCache[query.sql] == nil, statementCache.count < cacheCapacity {
            let name = "s\(statementCache.count + 1)"
            let prepared = oids.withUnsafeBufferPointer { types in
                PQprepare(handle, name, query.sql, Int32(oids.count), types.baseAddress)
            }
            _ = try check(prepared)
            statementCache[query.sql] = PreparedStatement(name: name, oids: oids)
            statementName = name
        }
        let result = withParameterArrays(query.binds) { values, lengths, formats in
            if let statementName {
                return PQexecPrepared(handle, statementName, Int32(query.binds.count), values, lengths, formats, 0)
            }
            return oids.withUnsafeBufferPointer { types in
                PQexecParams(handle, query.sql, Int32(query.binds.count), types.baseAddress, values, lengths, formats, 0)
            }
        }
        return try check(result)
    }

    private func executeSimple(_ sql: String) throws -> PGResult {
        // PQexec returns only the last statement's result; earlier errors stop the script and are returned.
        try check(PQexec(handle, sql))
    }

    private func executeCopyIn(_ sql: String, chunks: [[UInt8]]) throws -> Int {
        guard let start = PQexec(handle, sql) else { throw connectionError() }
        guard PQresultStatus(start) == PGRES_COPY_IN else {
            _ = try check(start)
            throw PGError(kind: .client, message: "statement did not start COPY FROM STDIN: \(sql.prefix(60))")
        }
        PQclear(start)
        var failure: String? = nil
        for chunk in chunks where failure == nil {
            let sent = chunk.withUnsafeBufferPointer { buffer in
                buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                    PQputCopyData(handle, $0, Int32(buffer.count))
                }
            }
            if sent != 1 { failure = String(cString: PQerrorMessage(handle)) }
        }
        guard PQputCopyEnd(handle, failure) == 1 else { throw connectionError() }
        var last: PGResult? = nil
        var firstError: (any Error)? = nil
        while let next = PQgetResult(handle) {
            do { last = try check(next) } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
        return last?.affectedRows ?? 0
    }

    /// Wraps a result, turning failures into `PGError` and noting whether the session is still usable.
    private func check(_ result: OpaquePointer?) throws -> PGResult {
        guard let result else { throw connectionError() }
        let status = PQresultStatus(result)
        if status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY {
            return PGResult(handle: result)
        }
        let error = serverError(result)
        PQclear(result)
        if PQstatus(handle) != CONNECTION_OK || error.breaksConnection {
            markBroken()
        }
        if error.sqlState == "0A000", error.message.contains("cached plan") {
            // A schema change invalidated a prepared statement: prepare afresh next time.
            statementCache.removeAll()
            _ = PQexec(handle, "DEALLOCATE ALL").map { PQclear($0) }
        }
        throw error
    }

    private func serverError(_ result: OpaquePointer) -> PGError {
        func field(_ code: Unicode.Scalar) -> String? {
            guard let value = PQresultErrorField(result, Int32(UInt8(ascii: code))) else { return nil }
            return String(cString: value)
        }
        let sqlState = field("C")
        let message = field("M") ?? String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
        let lost = PQstatus(handle) != CONNECTION_OK
        return PGError(
            kind: sqlState == nil && lost ? .connection : .server,
            sqlState: sqlState ?? (lost ? "08006" : nil),
            message: message.isEmpty ? String(cString: PQerrorMessage(handle)) : message,
            detail: field("D"),
            hint: field("H"),
            constraint: field("n"),
            table: field("t"),
            column: field("c")
        )
    }

    private func connectionError() -> PGError {
        markBroken()
        let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
        return PGError(kind: .connection, sqlState: "08006", message: message.isEmpty ? "connection lost" : message)
    }
}

extension PGResult {
    var commandTag: String { String(cString: PQcmdStatus(handlePointer)) }
}

/// Tracks one statement for cancellation: whether it started, finished, or was cancelled first.
private final class CancelState: Sendable {
    private struct State {
        var running = false
        var finished = false
        var cancelled = false
    }
    private let state = Mutex(State())

    /// Marks the statement running; false if it was cancelled before it started.
    func begin() -> Bool {
        state.withLock { state in
            if state.cancelled { return false }
            state.running = true
            return true
        }
    }

    func end() {
        state.withLock { $0.running = false; $0.finished = true }
    }

    /// Records the cancellation; true if the statement is running and the server must be told.
    func cancel() -> Bool {
        state.withLock { state in
            state.cancelled = true
            return state.running && !state.finished
        }
    }

    var isRunning: Bool { state.withLock { $0.running && !$0.finished } }
}

/// A C pointer handed between threads where we guarantee exclusive use.
struct UnsafeSendableHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}

/// Text COPY format: backslash, tab, newline and carriage return escaped; NULL as `\N`.
private func appendCopyText(_ value: String?, to buffer: inout [UInt8]) {
    guard let value else {
        buffer.append(UInt8(ascii: "\\"))
        buffer.append(UInt8(ascii: "N"))
        return
    }
    for byte in value.utf8 {
        switch byte {
        case UInt8(ascii: "\\"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
        case UInt8(ascii: "\t"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
        case UInt8(ascii: "\n"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
        case UInt8(ascii: "\r"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
        default: buffer.append(byte)
        }
    }
}

/// Lays the binds out as the three parallel C arrays libpq wants; the pointers live only inside `body`.
private func withParameterArrays<R>(
    _ binds: [PGBind],
    _ body: (UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) -> R
) -> R {
    if binds.isEmpty { return body(nil, nil, nil) }
    let total = binds.reduce(0) { $0 + ($1.bytes?.count ?? 0) }
    let storage = UnsafeMutablePointer<CChar>.allocate(capacity: max(total, 1))
    defer { storage.deallocate() }
    var values = [UnsafePointer<CChar>?](repeating: nil, count: binds.count)
    var lengths = [Int32](repeating: 0, count: binds.count)
    var formats = [Int32](repeating: 0, count: binds.count)
    var offset = 0
    for (index, bind) in binds.enumerated() {
        formats[index] = bind.isBinary ? 1 : 0
        guard let bytes = bind.bytes else { continue }
        bytes.withUnsafeBytes { raw in
            if raw.count > 0 {
                UnsafeMutableRawPointer(storage + offset).copyMemory(from: raw.baseAddress!, byteCount: raw.count)
            }
        }
        values[index] = UnsafePointer(storage + offset)
        lengths[index] = Int32(bytes.count)
        offset += bytes.count
    }
    return values.withUnsafeBufferPointer { valuePointers in
        lengths.withUnsafeBufferPointer { lengthPointers in
            formats.withUnsafeBufferPointer { formatPointers in
                body(valuePointers.baseAddress, lengthPointers.baseAddress, formatPointers.baseAddress)
            }
        }
    }
}

private func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicated = strings.map { strdup($0) }
    defer { duplicated.forEach { free($0) } }
    var pointers: [UnsafePointer<CChar>?] = duplicated.map { $0.map { UnsafePointer($0) } }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
