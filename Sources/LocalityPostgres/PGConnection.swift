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
    /// Server settings every session starts with (for example `statement_timeout`, `lock_timeout`,
    /// `idle_in_transaction_session_timeout`), sent as `-c name=value` at connect so no round trip is spent
    /// on them. A transaction that needs longer says so with `SET LOCAL`.
    public var sessionSettings: [(name: String, value: String)]

    public init(
        conninfo: String,
        applicationName: String = "locality",
        connectTimeoutSeconds: Int = 10,
        statementCacheCapacity: Int = 512,
        sessionSettings: [(name: String, value: String)] = []
    ) {
        self.conninfo = conninfo
        self.applicationName = applicationName
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.statementCacheCapacity = statementCacheCapacity
        self.sessionSettings = sessionSettings
    }

    /// The `options` connection parameter: the settings decoders rely on, then `sessionSettings`.
    /// libpq splits `options` on spaces, so a space or backslash inside a value is escaped with a backslash.
    var optionsParameter: String {
        let pinned = ["DateStyle=ISO,YMD", "TimeZone=UTC", "IntervalStyle=iso_8601", "extra_float_digits=1"]
        let extra = sessionSettings.map { "\($0.name)=\($0.value)" }
        return (pinned + extra).map { setting in
            "-c " + setting.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: " ", with: "\\ ")
        }.joined(separator: " ")
    }
}

public enum PGIsolationLevel: String, Sendable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}

/// One PostgreSQL session. Its statements run on one of the shared I/O loops (`PGIOLoop`) through libpq's
/// nonblocking API; connecting, COPY and cancel requests, which block, run on threads of their own.
///
/// Obtain one from `PGPool.withConnection`; a connection must not be used by two tasks at once.
public final class PGConnection: @unchecked Sendable {
    // The `PGconn` and the statement cache are used by one thread at a time: the borrowing task while no
    // statement is in flight, the I/O loop (or a COPY thread) while one is. Handing a request over (a lock)
    // and resuming its continuation order those uses. `PQsocket`/`PQstatus` are also read while idle.
    private let handle: OpaquePointer
    private let cancelHandle: OpaquePointer?
    /// The I/O loop that waits for this connection's replies. Changed only by the borrowing task, while no
    /// request is queued or in flight (`move(to:)`).
    private(set) var loop: PGIOLoop
    private let cacheCapacity: Int
    private var statementCache: [String: PreparedStatement] = [:]
    private let broken = Atomic<Bool>(false)
    /// Called with each statement's duration (for the pool's query-time metric).
    let onQueryTime: (@Sendable (Duration) -> Void)?
    /// Requests handed to the I/O loop so far (a pipeline counts once): round trips, for tests.
    private(set) var requestCount = 0
    /// The server process id, for diagnostics and tests.
    public let backendPID: Int32

    private struct PreparedStatement {
        let name: String
        let oids: [UInt32]
    }

    private init(handle: OpaquePointer, loop: PGIOLoop, cacheCapacity: Int, onQueryTime: (@Sendable (Duration) -> Void)?) {
        self.handle = handle
        self.cancelHandle = PQgetCancel(handle)
        self.loop = loop
        self.cacheCapacity = cacheCapacity
        self.onQueryTime = onQueryTime
        self.backendPID = PQbackendPID(handle)
    }

    deinit {
        if let cancelHandle { PQfreeCancel(cancelHandle) }
    }

    /// Opens a session. `PQconnectdbParams` blocks, so it runs on a short-lived thread of its own; connecting
    /// is rare next to querying, and the I/O loop must never wait on one connection.
    public static func connect(
        _ configuration: PGConnectionConfiguration,
        onQueryTime: (@Sendable (Duration) -> Void)? = nil
    ) async throws -> PGConnection {
        let handle = try await runOnOwnThread(name: "pg-connect") { try openHandle(configuration) }
        return PGConnection(
            handle: handle.pointer,
            // A task running on a loop keeps its connections there, so replies resume it without a hop.
            loop: PGIOLoop.current ?? PGIOLoop.next(),
            cacheCapacity: configuration.statementCacheCapacity,
            onQueryTime: onQueryTime
        )
    }

    private static func openHandle(_ configuration: PGConnectionConfiguration) throws -> UnsafeSendableHandle {
        // Pin the session settings every decoder relies on; later keywords override the URL's.
        let keywords = ["dbname", "application_name", "client_encoding", "connect_timeout", "options"]
        let values = [
            configuration.conninfo,
            configuration.applicationName,
            "UTF8",
            String(configuration.connectTimeoutSeconds),
            configuration.optionsParameter,
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
        // The I/O loop sends with PQsendQuery… and flushes as the socket allows, never blocking on it.
        guard PQsetnonblocking(handle, 1) == 0 else {
            let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQfinish(handle)
            throw PGError(kind: .connection, sqlState: "08001", message: message)
        }
        return UnsafeSendableHandle(handle)
    }

    // MARK: Queries

    /// Runs one parameterised statement (prepared once per connection, then executed by name).
    @discardableResult
    public func query(_ query: PGQuery) async throws -> PGResult {
        let work = PGRequest.Work.query(sql: query.sql, statement: statement(for: query), parameters: PGParameterArrays(query.binds))
        return try await perform(work, cancellable: true)!
    }

    /// Chooses the statement here, on the borrowing task, so the I/O loop only sends and reads.
    private func statement(for query: PGQuery) -> PGRequest.Statement {
        let cached = statementCache[query.sql]
        if let cached, cached.oids.elementsEqual(query.binds.lazy.map(\.oid)) {
            return .cached(name: cached.name)
        } else if cached == nil, statementCache.count < cacheCapacity {
            // Named after the cache size; the loop adds it to the cache once the server has prepared it.
            return .prepare(name: "s\(statementCache.count + 1)", oids: query.binds.map(\.oid))
        } else {
            return .unnamed(oids: query.binds.map(\.oid))
        }
    }

    /// Runs trusted SQL text with no parameters through the simple-query protocol (several statements
    /// allowed). For migrations and fixed commands only; values always go through `query`.
    public func execute(_ sql: String) async throws {
        _ = try await perform(.simple(sql), cancellable: true)
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
        // COPY streams many chunks; doing it in blocking mode on a thread of its own keeps it simple and
        // keeps a bulk load from holding up the I/O loop. No request of ours is in flight meanwhile, so
        // the loop does not touch this connection.
        let state = PGCancelState()
        return try await withTaskCancellationHandler {
            try await runOnOwnThread(name: "pg-copy") { [self] in
                guard state.begin() else { throw PGError.cancelledByUser }
                defer { state.end() }
                let start = ContinuousClock.now
                defer { self.onQueryTime?(ContinuousClock.now - start) }
                PQsetnonblocking(handle, 0)
                defer { PQsetnonblocking(handle, 1) }
                return try self.executeCopyIn(sql, chunks: chunks)
            }
        } onCancel: { [self] in
            if state.cancel() { sendCancelRequest(state) }
        }
    }

    // MARK: Transactions

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    ///
    /// `prelude`, when given, is sent together with `BEGIN` in one round trip (libpq pipeline mode) and runs
    /// first inside the transaction: for the statement every transaction of a kind starts with (the tenant
    /// context). It is not cancellable, like `BEGIN`.
    public func withTransaction<R: Sendable>(
        isolation: PGIsolationLevel = .readCommitted,
        readOnly: Bool = false,
        prelude: PGQuery? = nil,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        let begin = "BEGIN ISOLATION LEVEL \(isolation.rawValue)\(readOnly ? " READ ONLY" : "")"
        let result: R
        do {
            if let prelude {
                let work = PGRequest.Work.pipeline(
                    begin: begin, sql: prelude.sql, statement: statement(for: prelude), parameters: PGParameterArrays(prelude.binds))
                _ = try await perform(work, cancellable: false)
            } else {
                try await runUncancellable(begin)
            }
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

    /// Runs `prelude` then `query` in one transaction and one round trip, and returns `query`'s result: both
    /// statements and a sync point go out together in pipeline mode, where statements up to the sync form one
    /// implicit transaction (READ COMMITTED, committed at the sync, rolled back if either fails). For a read
    /// that is one statement after the tenant context: BEGIN, context, query and COMMIT cost one round trip
    /// instead of three. The first time a session sees either statement it runs them the ordinary way
    /// (`withTransaction(prelude:)`), which prepares them.
    public func readInOneRoundTrip(prelude: PGQuery, _ query: PGQuery) async throws -> PGResult {
        guard case .cached(let first) = statement(for: prelude), case .cached(let second) = statement(for: query) else {
            return try await withTransaction(readOnly: true, prelude: prelude) { try await $0.query(query) }
        }
        let work = PGRequest.Work.pipelinedPair(
            first: first, firstParameters: PGParameterArrays(prelude.binds),
            second: second, secondParameters: PGParameterArrays(query.binds))
        do {
            return try await perform(work, cancellable: true)!
        } catch let error as PGError where error.sqlState == "0A000" && error.message.contains("cached plan") {
            // A schema change invalidated the prepared statements: prepare afresh next time (as `query` does).
            statementCache.removeAll()
            _ = try? await runUncancellable("DEALLOCATE ALL")
            throw error
        }
    }

    // MARK: State the pool needs

    /// True once an error showed the session unusable; the pool then discards it.
    public var isBroken: Bool { broken.load(ordering: .relaxed) }

    func markBroken() { broken.store(true, ordering: .relaxed) }

    /// When the server last answered a statement on this session (set on the I/O loop when the reply is
    /// read; read by the pool after the borrowing task has resumed and returned the connection).
    var lastReply = ContinuousClock.now

    /// How long after its last reply a returned connection is lent again without looking at its socket.
    /// HikariCP's `aliveBypassWindowMs` idea: under load a connection is reused within microseconds, and the
    /// check is a system call per borrow; a session that ends inside the window fails its next statement
    /// with a connection error, as one dying mid-statement does, and is then replaced.
    static let aliveBypassWindow = Duration.milliseconds(1)

    /// Cheap check before lending an idle connection: an idle session has nothing to read, so readable
    /// input means the server ended it (for example `pg_terminate_backend`) or the socket closed.
    func looksHealthyWhileIdle(now: ContinuousClock.Instant) -> Bool {
        guard !isBroken, PQstatus(handle) == CONNECTION_OK else { return false }
        if now - lastReply < Self.aliveBypassWindow { return true }
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

    /// Hands the idle connection to another I/O loop: its current loop stops watching the socket first.
    func move(to target: PGIOLoop) async {
        guard target !== loop else { return }
        _ = try? await perform(.detach, cancellable: false)
        loop = target
    }

    /// Closes the session (`PQfinish`, on the I/O loop).
    public func close() async {
        _ = try? await perform(.close, cancellable: false)
    }

    // MARK: Handing statements to the I/O loop

    @discardableResult
    private func runUncancellable(_ sql: String) async throws -> String {
        try await perform(.simple(sql), cancellable: false)!.commandTag
    }

    /// Sends `work` and suspends until the I/O loop has its result. When `cancellable`, cancelling the
    /// calling task sends the server a cancel request (`PQcancel`), or drops the statement unsent.
    private func perform(_ work: PGRequest.Work, cancellable: Bool) async throws -> PGResult? {
        requestCount += 1
        let request = PGRequest(connection: self, work: work, cancellable: cancellable)
        guard cancellable else {
            return try await withUnsafeThrowingContinuation { continuation in
                request.continuation = continuation
                dispatch(request)
            }
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                request.continuation = continuation
                dispatch(request)
            }
        } onCancel: { [self] in
            if request.cancel() { sendCancelRequest(request) }
        }
    }

    /// The calling task sends the statement itself, reads the reply if it is already there, and otherwise
    /// hands the statement to the loop to wait for the reply.
    ///
    /// Why send here: in nonblocking mode `PQsend…` and `PQflush` only copy into libpq's buffer and write
    /// what the socket takes at once; they never wait, so this does not block the cooperative thread.
    /// Sending here spreads that work (and the cost of waking the server's backend) over the cooperative
    /// threads, and the loop then needs no wake-up of its own: the reply's arrival on the socket wakes it.
    private func dispatch(_ request: PGRequest) {
        switch request.work {
        case .close, .detach:
            loop.submit(request)
            return
        case .query, .simple, .pipeline, .pipelinedPair:
            break
        }
        var progress = send(request)
        if case .waiting(let flushPending) = progress {
            request.sentByCaller = true
            if !flushPending, loop.mayReadInline() {
                // Look for the reply at once, as pgbench does: sending wakes the server's backend, which
                // often runs straight away on this core and answers before we get the core back. Then the
                // result is here, the task goes on without suspending, and the loop never sees this
                // statement. When it is not, the cost is one nonblocking read that finds nothing.
                progress = advance(request, readable: true, writable: false)
            }
        }
        switch progress {
        case .finished(let result):
            request.finish(result)
        case .waiting(let flushPending):
            request.flushPending = flushPending
            loop.submit(request)
        }
    }

    private func sendCancelRequest(_ state: PGCancelState) {
        guard let cancelHandle else { return }
        let cancel = UnsafeSendableHandle(cancelHandle)
        // PQcancel opens a connection of its own and blocks: a short-lived thread of its own, never the
        // caller's, an I/O loop or Dispatch's global queues (which Swift's cooperative pool uses on Linux).
        startThread(named: "pg-cancel") {
            guard state.isRunning else { return }
            var buffer = [CChar](repeating: 0, count: 256)
            _ = PQcancel(cancel.pointer, &buffer, Int32(buffer.count))
        }
    }

    // MARK: On the I/O loop thread

    var socket: Int32 { PQsocket(handle) }
    /// The socket this connection registered with the loop's epoll (-1: none), and the events asked for.
    var loopSocket: Int32 = -1
    var loopInterest: UInt32 = 0
    /// False while the socket is registered for input, so a reply is sure to wake the loop. Written by the
    /// loop, read by submitters under the loop's queue lock (see `PGIOLoop.submit`).
    let loopDeaf = Atomic<Bool>(true)

    /// Closes the session, on the loop thread.
    func finishHandle() {
        PQfinish(handle)
    }

    /// Sends `request`'s first message, or finishes it at once (cancelled, send failed). Runs on the calling
    /// task, before the request is handed to the loop.
    private func send(_ request: PGRequest) -> PGRequest.Progress {
        if request.cancellable, !request.begin() {
            return .finished(.failure(PGError.cancelledByUser))
        }
        if onQueryTime != nil { request.started = ContinuousClock.now }
        let sent: Bool
        switch request.work {
        case .close, .detach:
            sent = false
        case .simple(let sql):
            request.stage = .executing
            sent = PQsendQuery(handle, sql) == 1
        case .pipeline(let begin, let sql, let statement, let parameters):
            sent = sendPipeline(request, begin: begin, sql: sql, statement: statement, parameters: parameters)
        case .pipelinedPair(let first, let firstParameters, let second, let secondParameters):
            request.stage = .pipelining(prepared: nil)
            sent = PQenterPipelineMode(handle) == 1 && sendPrepared(first, firstParameters)
                && sendPrepared(second, secondParameters) && PQpipelineSync(handle) == 1
            if !sent { markBroken() }
        case .query(let sql, let statement, let parameters):
            switch statement {
            case .cached(let name):
                request.stage = .executing
                sent = sendPrepared(name, parameters)
            case .prepare(let name, let oids):
                request.stage = .preparing(name: name)
                sent = oids.withUnsafeBufferPointer { types in
                    PQsendPrepare(handle, name, sql, Int32(oids.count), types.baseAddress) == 1
                }
            case .unnamed(let oids):
                request.stage = .executing
                sent = oids.withUnsafeBufferPointer { types in
                    PQsendQueryParams(
                        handle, sql, parameters.count, types.baseAddress,
                        parameters.values, parameters.lengths, parameters.formats, 0
                    ) == 1
                }
            }
        }
        guard sent else { return .finished(.failure(connectionError())) }
        return flush()
    }

    /// Queues BEGIN, the statement (prepared first if new) and a sync point, in pipeline mode.
    private func sendPipeline(
        _ request: PGRequest, begin: String, sql: String, statement: PGRequest.Statement, parameters: PGParameterArrays
    ) -> Bool {
        guard PQenterPipelineMode(handle) == 1 else { return false }
        var prepared: String? = nil
        var sent = PQsendQueryParams(handle, begin, 0, nil, nil, nil, nil, 0) == 1
        switch statement {
        case .cached(let name):
            sent = sent && sendPrepared(name, parameters)
        case .prepare(let name, let oids):
            prepared = name
            sent = sent
                && oids.withUnsafeBufferPointer { PQsendPrepare(handle, name, sql, Int32(oids.count), $0.baseAddress) == 1 }
                && sendPrepared(name, parameters)
        case .unnamed(let oids):
            sent = sent && oids.withUnsafeBufferPointer { types in
                PQsendQueryParams(
                    handle, sql, parameters.count, types.baseAddress, parameters.values, parameters.lengths, parameters.formats, 0
                ) == 1
            }
        }
        sent = sent && PQpipelineSync(handle) == 1
        // A half-queued pipeline leaves the session in an unknown state.
        if !sent { markBroken() }
        request.stage = .pipelining(prepared: prepared)
        return sent
    }

    /// The pipeline's sync point arrived: leave pipeline mode and report the statement's result (or the
    /// first error: an error skips the rest of the pipeline, whose results say "aborted").
    private func pipelineDone(_ request: PGRequest) -> PGRequest.Progress {
        let raw = request.pending
        request.pending = nil
        if PQexitPipelineMode(handle) != 1 {
            while PQisBusy(handle) == 0, let extra = PQgetResult(handle) { PQclear(extra) }
            if PQexitPipelineMode(handle) != 1 {
                markBroken()
                if let raw { PQclear(raw) }
                return .finished(.failure(connectionError()))
            }
        }
        return .finished(Result { try check(raw) as PGResult? })
    }

    private func sendPrepared(_ name: String, _ parameters: PGParameterArrays) -> Bool {
        PQsendQueryPrepared(handle, name, parameters.count, parameters.values, parameters.lengths, parameters.formats, 0) == 1
    }

    /// Pushes queued output to the socket as far as it goes without blocking.
    private func flush() -> PGRequest.Progress {
        switch PQflush(handle) {
        case 0: .waiting(flushPending: false)
        case 1: .waiting(flushPending: true)
        default: .finished(.failure(connectionError()))
        }
    }

    /// The socket became ready: read what arrived, collect results, and move on to the next step.
    func advance(_ request: PGRequest, readable: Bool, writable: Bool) -> PGRequest.Progress {
        if readable, PQconsumeInput(handle) != 1 {
            // The connection dropped. A FATAL error read just before (e.g. 57P01 from
            // pg_terminate_backend) says why better than "connection lost".
            markBroken()
            if let pending = request.pending {
                request.pending = nil
                return .finished(Result { try check(pending) as PGResult? })
            }
            return .finished(.failure(connectionError()))
        }
        // Output still queued (a large statement): keep flushing, and wait again until it is all out.
        var flushPending = false
        if writable || readable {
            switch PQflush(handle) {
            case 0: break
            case 1: flushPending = true
            default: return .finished(.failure(connectionError()))
            }
        }
        var boundaries = 0
        while PQisBusy(handle) == 0 {
            guard let result = PQgetResult(handle) else {
                // In a pipeline, the end of one statement's results; the next statement's follow. Two ends
                // in a row would mean libpq has nothing more queued, not even the sync point.
                if case .pipelining = request.stage {
                    boundaries += 1
                    if boundaries < 2 { continue }
                    markBroken()
                    return .finished(.failure(PGError(kind: .client, message: "internal: a pipeline lost its sync point")))
                }
                // Every result of this step is in: check it, then finish or send the next step.
                return stepDone(request)
            }
            boundaries = 0
            switch PQresultStatus(result) {
            case PGRES_PIPELINE_SYNC:
                PQclear(result)
                return pipelineDone(request)
            case PGRES_PIPELINE_ABORTED:
                // Skipped because an earlier statement of the pipeline failed; that error is kept.
                PQclear(result)
            case PGRES_COPY_IN:
                // COPY FROM STDIN sent through query/execute: refuse it, and the server ends the statement
                // with an error, leaving the session usable.
                PQclear(result)
                guard PQputCopyEnd(handle, "COPY FROM STDIN needs PGConnection.copyIn") != -1 else {
                    return .finished(.failure(connectionError()))
                }
                switch flush() {
                case .finished(let failure): return .finished(failure)
                case .waiting(let pending): flushPending = flushPending || pending
                }
            case PGRES_COPY_OUT, PGRES_COPY_BOTH:
                PQclear(result)
                markBroken()
                return .finished(.failure(PGError(kind: .client, message: "COPY TO STDOUT is not supported; the session is discarded")))
            default:
                if case .pipelining(.some(let name)) = request.stage {
                    // The second result of a pipeline that prepares is the prepare's: once it succeeds the
                    // statement exists on the server, whatever happens to its execution.
                    request.pipelineResults += 1
                    if request.pipelineResults == 2, PQresultStatus(result) == PGRES_COMMAND_OK,
                        case .pipeline(_, let sql, .prepare(_, let oids), _) = request.work {
                        statementCache[sql] = PreparedStatement(name: name, oids: oids)
                    }
                }
                // As PQexec does: keep the last result, except that the first error wins.
                if let kept = request.pending {
                    if PQresultStatus(kept) == PGRES_FATAL_ERROR {
                        PQclear(result)
                        continue
                    }
                    PQclear(kept)
                }
                request.pending = result
            }
        }
        return .waiting(flushPending: flushPending)
    }

    private func stepDone(_ request: PGRequest) -> PGRequest.Progress {
        let raw = request.pending
        request.pending = nil
        switch request.stage {
        case .preparing(let name):
            do {
                _ = try check(raw)
            } catch {
                return .finished(.failure(error))
            }
            guard case .query(let sql, .prepare(_, let oids), let parameters) = request.work else {
                return .finished(.failure(PGError(kind: .client, message: "internal: prepared a statement that is not a query")))
            }
            statementCache[sql] = PreparedStatement(name: name, oids: oids)
            request.stage = .executing
            guard sendPrepared(name, parameters) else { return .finished(.failure(connectionError())) }
            return flush()
        case .executing:
            do {
                return .finished(.success(try check(raw)))
            } catch let error as PGError where error.sqlState == "0A000" && error.message.contains("cached plan") {
                // A schema change invalidated a prepared statement: forget them all and prepare afresh next
                // time; the statement itself still fails, as it did before.
                statementCache.removeAll()
                request.stage = .deallocating(error)
                guard PQsendQuery(handle, "DEALLOCATE ALL") == 1 else { return .finished(.failure(error)) }
                return flush()
            } catch {
                return .finished(.failure(error))
            }
        case .deallocating(let error):
            if let raw { PQclear(raw) }
            return .finished(.failure(error))
        case .pipelining:
            if let raw { PQclear(raw) }
            return .finished(.failure(PGError(kind: .client, message: "internal: a pipeline ended without its sync point")))
        }
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
    /// Takes ownership of `result`.
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

    func connectionError() -> PGError {
        markBroken()
        let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
        return PGError(kind: .connection, sqlState: "08006", message: message.isEmpty ? "connection lost" : message)
    }
}

extension PGResult {
    var commandTag: String { String(cString: PQcmdStatus(handlePointer)) }
}

/// Tracks one statement for cancellation: whether it started, finished, or was cancelled first.
/// Not final: a `PGRequest` is its own cancellation state, one allocation per statement instead of two.
class PGCancelState: @unchecked Sendable {
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

extension PGError {
    static var cancelledByUser: PGError {
        PGError(kind: .server, sqlState: "57014", message: "canceling statement due to user request")
    }
}

/// Runs blocking `body` on a new thread and resumes the caller with its result: for rare blocking work
/// (connecting, COPY) that must stay off Swift's cooperative threads and off the I/O loop.
private func runOnOwnThread<R: Sendable>(name: String, _ body: @escaping @Sendable () throws -> R) async throws -> R {
    try await withCheckedThrowingContinuation { continuation in
        startThread(named: name) { continuation.resume(with: Result { try body() }) }
    }
}

/// Starts a thread that `top -H`, `perf` and `/proc` show under `name`. On Linux, Foundation applies a
/// thread's name only when it is set from the thread itself; set before `start()` it is silently dropped.
func startThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    Thread {
        Thread.current.name = name
        body()
    }.start()
}

private func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicated = strings.map { strdup($0) }
    defer { duplicated.forEach { free($0) } }
    var pointers: [UnsafePointer<CChar>?] = duplicated.map { $0.map { UnsafePointer($0) } }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
