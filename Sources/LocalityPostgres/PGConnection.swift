internal import CLibPQ
import Foundation
import Synchronization

/// One PostgreSQL session. Its statements run on one of the shared I/O loops (`PGIOLoop`) through libpq's
/// nonblocking API; connecting, COPY and cancel requests, which block, run on threads of their own.
///
/// Obtain one from `PGPool.withConnection`; a connection must not be used by two tasks at once.
///
/// The jobs are split by file: this one opens and closes the session; `PGConnection+Lifecycle` keeps its
/// state and the pool's check of a returned connection; `PGConnection+Queries` is the statement API (queries,
/// transactions); `PGStatementCache` names prepared statements; `PGConnection+Wire` sends requests (task
/// side) and `PGConnection+Replies` reads replies (I/O loop side); `PGCancel` runs cancel requests;
/// `PGConnection+Copy` is `COPY FROM STDIN`. New protocol features (LISTEN/NOTIFY, say) fit a file of their own.
///
/// `@unchecked Sendable` because the `PGconn` and the owner-confined state below (statement cache, phase,
/// tickets, loop bookkeeping) are used by one thread at a time: the borrowing task while no statement is in
/// flight, the I/O loop (or a COPY thread) while one is; handing a request over (the loop's lock) and
/// resuming its continuation order those uses. What other threads touch (broken, cancels) is in `control`.
public final class PGConnection: @unchecked Sendable {
    let handle: OpaquePointer
    /// The cancel key, owned by reference: a cancel thread keeps it alive while `PQcancel` runs.
    let cancelHandle: PGCancelHandle?
    /// The I/O loop that waits for this connection's replies. Changed only by the borrowing task, while no
    /// request is queued or in flight (`move(to:)`).
    var loop: PGIOLoop
    var statements: PGStatementCache
    /// Called with each statement's duration (for the pool's query-time metric).
    let onQueryTime: (@Sendable (Duration) -> Void)?
    /// Points where tests pause the client to force an interleaving (nil in production).
    let hooks: PGHooks?
    /// Requests handed to the I/O loop so far (a pipeline counts once): round trips, for tests.
    var requestCount = 0
    /// The server process id, for diagnostics and tests.
    public let backendPID: Int32
    /// When the session was opened, and the share of the pool's maximum lifetime it gets (95–100%, so the
    /// connections opened together in a burst do not all close together).
    let openedAt: ContinuousClock.Instant
    let lifetimeShare: Double

    // Owner-confined lifecycle (see `PGConnection+Lifecycle`).
    /// Idle in the pool, lent, or lent inside `withTransaction`.
    var phase = Phase.inUse
    /// A transaction's `BEGIN` and context not sent yet: they go with its first statement (`withTransaction`).
    var deferredBegin: (begin: String, prelude: PGQuery)?
    /// The transaction `withTransaction` is running (nil outside one), for `queryAndCommit`.
    var openTransaction: OpenTransaction?
    /// The ticket of the last request made: each statement gets its own, so a cancel names its target.
    var lastTicket: UInt64 = 0

    /// When the server last answered a statement on this session (set on the I/O loop when the reply is
    /// read; read by the pool after the borrowing task has resumed and returned the connection).
    var lastReply = ContinuousClock.now

    /// What threads other than the owner touch: the broken flag and the cancel bookkeeping.
    let control = PGLock(Control())

    // I/O loop bookkeeping (see `PGIOLoop`).
    /// The socket this connection registered with the loop's epoll (-1: none), and the events asked for.
    var loopSocket: Int32 = -1
    var loopInterest: UInt32 = 0
    /// False while the socket is registered for input, so a reply is sure to wake the loop. Written by the
    /// loop, read by submitters under the loop's queue lock (see `PGIOLoop.submit`).
    let loopDeaf = Atomic<Bool>(true)

    private init(handle: OpaquePointer, loop: PGIOLoop, cacheCapacity: Int, onQueryTime: (@Sendable (Duration) -> Void)?, hooks: PGHooks?) {
        self.handle = handle
        self.cancelHandle = PGCancelHandle(PQgetCancel(handle))
        self.loop = loop
        self.statements = PGStatementCache(capacity: cacheCapacity)
        self.onQueryTime = onQueryTime
        self.hooks = hooks
        self.backendPID = PQbackendPID(handle)
        self.openedAt = .now
        self.lifetimeShare = Double.random(in: 0.95...1)
    }

    /// Opens a session. `PQconnectdbParams` blocks, so it runs on a short-lived thread of its own; connecting
    /// is rare next to querying, and the I/O loop must never wait on one connection.
    public static func connect(
        _ configuration: PGConnectionConfiguration,
        onQueryTime: (@Sendable (Duration) -> Void)? = nil
    ) async throws -> PGConnection {
        try await connect(configuration, onQueryTime: onQueryTime, hooks: nil)
    }

    static func connect(
        _ configuration: PGConnectionConfiguration,
        onQueryTime: (@Sendable (Duration) -> Void)?,
        hooks: PGHooks?
    ) async throws -> PGConnection {
        // A task running on a loop keeps its connections there, so replies resume it without a hop.
        let loop = PGIOLoop.current ?? PGIOLoop.next()
        // The connection is made on the connecting thread and handed back whole: nothing to hand over unsafely.
        return try await runOnOwnThread(name: "pg-connect") {
            PGConnection(
                handle: try openHandle(configuration),
                loop: loop,
                // Behind a transaction pooler nothing is prepared by name: every statement runs unnamed.
                cacheCapacity: configuration.pooler == .transaction ? 0 : configuration.statementCacheCapacity,
                onQueryTime: onQueryTime,
                hooks: hooks
            )
        }
    }

    private static func openHandle(_ configuration: PGConnectionConfiguration) throws -> OpaquePointer {
        // Pin the session settings every decoder relies on; later keywords override the URL's. Through a
        // transaction pooler they are pinned on the role instead, and checked below.
        var keywords = ["dbname", "application_name", "client_encoding", "connect_timeout"]
        var values = [configuration.conninfo, configuration.applicationName, "UTF8", String(configuration.connectTimeoutSeconds)]
        if configuration.pooler == .none {
            keywords.append("options")
            values.append(configuration.optionsParameter)
        }
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
        if configuration.pooler == .transaction, let mismatch = unpinnedSettings(handle, configuration) {
            PQfinish(handle)
            throw mismatch
        }
        // The I/O loop sends with PQsendQuery… and flushes as the socket allows, never blocking on it.
        guard PQsetnonblocking(handle, 1) == 0 else {
            let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQfinish(handle)
            throw PGError(kind: .connection, sqlState: "08001", message: message)
        }
        return handle
    }

    /// Behind a transaction pooler: the settings the session must start with that it does not have (they are
    /// pinned on the role, not sent at connect), as an error naming the fix; nil when all are in place. One
    /// round trip per new connection, while it is still blocking, on the connecting thread.
    private static func unpinnedSettings(_ handle: OpaquePointer, _ configuration: PGConnectionConfiguration) -> PGError? {
        let required = configuration.requiredSettings
        let names = required.map { $0.name.lowercased() }.joined(separator: ",")
        let sql = "SELECT lower(name), setting || coalesce(unit, '') FROM pg_settings WHERE lower(name) = ANY (string_to_array($1, ','))"
        let result = names.withCString { name in
            withUnsafePointer(to: Optional(name)) { PQexecParams(handle, sql, 1, nil, $0, nil, nil, 0) }
        }
        defer { PQclear(result) }
        guard let result, PQresultStatus(result) == PGRES_TUPLES_OK else {
            let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
            return PGError(kind: .connection, sqlState: "08001", message: "cannot read the session's settings: \(message)")
        }
        var found: [String: String] = [:]
        for row in 0..<PQntuples(result) {
            found[String(cString: PQgetvalue(result, row, 0))] = String(cString: PQgetvalue(result, row, 1))
        }
        let wrong = required.filter { found[$0.name.lowercased()]?.lowercased() != $0.value.lowercased() }
        guard !wrong.isEmpty else { return nil }
        let role = PQuser(handle).map { String(cString: $0) } ?? "the service role"
        let database = PQdb(handle).map { String(cString: $0) } ?? "the database"
        let fix = wrong.map { "\($0.name) = '\($0.value)'" }
        let have = wrong.map { "\($0.name) is \(found[$0.name.lowercased()].map { "'\($0)'" } ?? "unknown")" }
        return PGError(
            kind: .client, sqlState: "F0000",
            message: "through a transaction pooler the session settings must be pinned on the role, but \(have.joined(separator: ", ")); "
                + "as a superuser run: " + fix.map { "ALTER ROLE \(role) IN DATABASE \(database) SET \($0);" }.joined(separator: " "))
    }

    /// Connects, runs `body`, and closes the connection whether `body` returns or throws.
    /// For one-off work outside the pool (migrations, bootstrap); services use `PGPool`.
    public static func withConnection<R: Sendable>(
        _ configuration: PGConnectionConfiguration,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        try await withConnection(configuration, hooks: nil, body)
    }

    static func withConnection<R: Sendable>(
        _ configuration: PGConnectionConfiguration,
        hooks: PGHooks?,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        let connection = try await connect(configuration, onQueryTime: nil, hooks: hooks)
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

    /// Closes the session (`PQfinish`, on the I/O loop). A cancel request still in flight is unaffected: it
    /// uses its own copy of the cancel key (`PGCancelHandle`), not the `PGconn`.
    public func close() async {
        _ = try? await perform(.close, cancellable: false)
    }

    /// Closes the session, on the loop thread.
    func finishHandle() {
        PQfinish(handle)
    }
}

private func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicated = strings.map { strdup($0) }
    defer { duplicated.forEach { free($0) } }
    var pointers: [UnsafePointer<CChar>?] = duplicated.map { $0.map { UnsafePointer($0) } }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
