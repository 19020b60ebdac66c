import Dispatch
import Foundation
@testable import LocalityPostgres
import Logging
import PostgresTestSupport
import Synchronization
import Testing

/// The connection lifecycle and the client's races. Each race is forced with a hook (`PGHooks`) that holds
/// one side at the point where the other must slip in: no sleeps, no timing.
@Suite("Connection lifecycle and races")
struct ConnectionLifecycleTests {
    // MARK: State checked on release

    @Test func aConnectionKnowsItsState() async throws {
        let database = try await TestDatabase.migrated()
        try await withHookedPool(database, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                #expect(connection.state == .inUse)
                try await connection.withTransaction { _ in
                    #expect(connection.state == .inTransaction)
                }
                #expect(connection.state == .inUse)
                try await connection.execute("BEGIN")
                #expect(connection.state == .inTransaction)
                try await connection.execute("COMMIT")
                #expect(connection.state == .inUse)
            }
            let idle = try await pool.withConnection { $0 }
            #expect(idle.state == .idle)
        }
    }

    /// A borrower that leaves a transaction open (its own BEGIN) must not hand it, or its `app.*` settings,
    /// to the next borrower: the connection is closed and replaced.
    @Test func aConnectionReturnedInsideATransactionIsClosedNotLentAgain() async throws {
        let database = try await TestDatabase.migrated()
        try await withHookedPool(database, maxConnections: 1) { pool in
            let (firstPID, xid) = try await pool.withConnection { connection in
                try await connection.execute("BEGIN")
                try await connection.setLocal("app.authority_id", "north-yorkshire")
                return (connection.backendPID, try await connection.query("SELECT txid_current()").first!.decode(Int.self, at: 0))
            }
            let (pid, setting, sameXact) = try await pool.withConnection { connection in
                let row = try await connection.query(
                    "SELECT current_setting('app.authority_id', true), txid_current_if_assigned() IS NOT DISTINCT FROM \(xid)"
                ).first!
                let (setting, same) = try row.decode(String?.self, Bool.self)
                return (connection.backendPID, setting, same)
            }
            #expect(setting == nil || setting == "", "the previous borrower's setting leaked")
            #expect(!sameXact, "the previous borrower's transaction leaked")
            #expect(pid != firstPID)
            #expect(pool.statistics.open == 1)
            #expect(pool.statistics.inUse == 0)
        }
    }

    @Test func aConnectionReturnedInAFailedTransactionIsClosedNotLentAgain() async throws {
        let database = try await TestDatabase.migrated()
        try await withHookedPool(database, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                try await connection.execute("BEGIN")
                _ = try? await connection.query("SELECT 1 / \(0)")
            }
            // Today's failure: 25P02 "current transaction is aborted" for the next borrower.
            #expect(try await pool.query("SELECT 7").first!.decode(Int32.self, at: 0) == 7)
        }
    }

    // MARK: Maximum lifetime

    @Test func aConnectionPastItsLifetimeIsClosedWhenReturnedNeverInUse() async throws {
        #expect(PGPoolConfiguration(connection: .init(conninfo: "")).maxConnectionLifetime == .seconds(30 * 60))
        let database = try await TestDatabase.migrated()
        try await withHookedPool(database, maxConnections: 1, maxConnectionLifetime: .zero) { pool in
            // Past its lifetime from the start, and still it serves its borrower to the end.
            let (first, again) = try await pool.withConnection { connection in
                let one = try await connection.query("SELECT pg_backend_pid()").first!.decode(Int32.self, at: 0)
                let two = try await connection.query("SELECT pg_backend_pid()").first!.decode(Int32.self, at: 0)
                return (one, two)
            }
            #expect(first == again)
            let next = try await pool.withConnection { $0.backendPID }
            #expect(next != first)
            #expect(pool.statistics.open == 1)
        }
        try await withHookedPool(database, maxConnections: 1) { pool in
            let first = try await pool.withConnection { $0.backendPID }
            #expect(try await pool.withConnection { $0.backendPID } == first)
        }
    }

    // MARK: Waiters queued atomically

    /// The race: a borrower finds nothing free, and before it queues, the only connection comes back and
    /// goes idle (or, closed on return, frees its slot). The borrower must take it, not wait out the acquire
    /// timeout beside it.
    @Test(arguments: [false, true])
    func aConnectionReturnedJustBeforeABorrowerQueuesIsNotLeftIdle(closedOnReturn: Bool) async throws {
        let database = try await TestDatabase.migrated()
        let atQueue = Signal()
        let returned = Signal()
        let hooks = PGHooks(beforeQueueing: {
            atQueue.fire()
            await returned.wait()
        })
        try await withHookedPool(database, maxConnections: 1, acquireTimeout: .seconds(3), hooks: hooks) { pool in
            let holding = Signal()
            let letGo = Signal()
            let holder = Task {
                try await pool.withConnection { connection in
                    holding.fire()
                    await letGo.wait()
                    // Returned inside a transaction, it is closed: what comes free is its slot.
                    if closedOnReturn { try await connection.execute("BEGIN") }
                }
            }
            await holding.wait()
            let borrower = Task { try await pool.query("SELECT 42").first!.decode(Int32.self, at: 0) }
            await atQueue.wait()
            letGo.fire()
            try await holder.value
            #expect(pool.statistics.inUse == 0, "the connection (or its slot) is free while the borrower is about to queue")
            #expect(pool.statistics.open == (closedOnReturn ? 0 : 1))
            returned.fire()
            #expect(try await borrower.value == 42)
            #expect(pool.statistics.waiting == 0)
        }
    }

    // MARK: 0A000 "cached plan must not change result type"

    @Test func aColumnTypeChangedUnderACachedStatementLeavesTheConnectionWorking() async throws {
        let database = try await TestDatabase.migrated()
        try await withHookedPool(database, conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            try await pool.query("CREATE TABLE widget (id int PRIMARY KEY, size int NOT NULL)")
            try await pool.query("INSERT INTO widget VALUES (1, 5)")
            let select: PGQuery = "SELECT size FROM widget WHERE id = \(1)"
            let pid = try await pool.withTransaction { connection in
                _ = try await connection.query(select)
                return connection.backendPID
            }
            try await alter(database, "ALTER TABLE widget ALTER COLUMN size TYPE bigint")

            // Inside a transaction the first use fails, and the transaction with it.
            do {
                _ = try await pool.withTransaction { try await $0.query(select) }
                Issue.record("a plan invalidated inside a transaction cannot be saved")
            } catch let error as PGError {
                #expect(error.sqlState == "0A000")
            }
            // The same connection then works: the statement is prepared afresh, and so are new ones.
            let (samePID, size, other) = try await pool.withTransaction { connection in
                (connection.backendPID,
                 try await connection.query(select).first!.decode(Int64.self, at: 0),
                 try await connection.query("SELECT \(7)::int4 + 1").first!.decode(Int32.self, at: 0))
            }
            #expect(samePID == pid)
            #expect(size == 5)
            #expect(other == 8)

            // Outside a transaction the statement simply runs again, prepared afresh.
            try await alter(database, "ALTER TABLE widget ALTER COLUMN size TYPE text")
            #expect(try await pool.query(select).first!.decode(String.self, at: 0) == "5")
            // A transaction that may run again does so.
            try await alter(database, "ALTER TABLE widget ALTER COLUMN size TYPE int USING size::int")
            let retried = try await pool.withTransaction(retry: .onConflict()) { try await $0.query(select).first!.decode(Int32.self, at: 0) }
            #expect(retried == 5)

            // The stale statements were deallocated once outside the transaction: the server holds exactly
            // what the cache names, still on the first session.
            try await pool.withConnection { connection in
                let held = try await connection.query("SELECT count(*) FROM pg_prepared_statements").first!.decode(Int.self, at: 0)
                #expect(connection.backendPID == pid)
                #expect(held == connection.statements.count)
                #expect(connection.statements.stale.isEmpty)
            }
        }
    }

    private func alter(_ database: TestDatabase, _ sql: String) async throws {
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { other in
            try await other.withConnection { try await $0.execute(sql) }
        }
    }

    // MARK: Cancels hit only their own statement

    /// The race: a cancel request is sent for a running statement; during `PQcancel`'s round trip the
    /// statement finishes and the connection is returned. The next borrower (another tenant, perhaps) must
    /// not receive that cancel.
    @Test func aCancelThatMissedItsStatementNeverReachesTheNextBorrower() async throws {
        let database = try await TestDatabase.migrated()
        let cancelReady = Signal()
        let sendCancel = DispatchSemaphore(value: 0)
        let hooks = PGHooks(beforeCancelRequest: {
            cancelReady.fire()
            sendCancel.wait()
        })
        try await withHookedPool(database, conninfo: database.ownerConninfo, maxConnections: 1, hooks: hooks) { pool in
            try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 2) { admin in
                try await admin.withConnection { locks in
                    try await locks.query("SELECT pg_advisory_lock(1), pg_advisory_lock(2)")
                    let first = Task { try await pool.withConnection { try await $0.query("SELECT pg_advisory_xact_lock(1)") } }
                    try await eventually("the first statement waits for lock 1") { try await lockWaiters(admin, "pg_advisory_xact_lock(1)") == 1 }
                    first.cancel()
                    await cancelReady.wait()
                    // The statement finishes before the cancel request is sent, and its borrower returns.
                    try await locks.query("SELECT pg_advisory_unlock(1)")
                    _ = await first.result

                    let secondDone = Shared(0)
                    let second = Task {
                        defer { secondDone.set(1) }
                        return try await pool.withConnection { try await $0.query("SELECT pg_advisory_xact_lock(2)") }
                    }
                    try await eventually("the second borrower queues, or runs its statement") {
                        if pool.statistics.waiting == 1 { return true }
                        return try await lockWaiters(admin, "pg_advisory_xact_lock(2)") == 1
                    }
                    sendCancel.signal()
                    try await eventually("the second statement runs") {
                        if secondDone.value == 1 { return true }
                        return try await lockWaiters(admin, "pg_advisory_xact_lock(2)") == 1
                    }
                    try await locks.query("SELECT pg_advisory_unlock(2)")
                    let result = await second.result
                    if case .failure(let error) = result {
                        Issue.record("the next borrower got the cancel aimed at the previous one: \(error)")
                    }
                }
            }
        }
    }

    /// The borrower's own next statement (here the ROLLBACK after a cancelled one) waits until the cancel
    /// request has landed, so the cancel cannot hit it; the session stays usable.
    @Test func aStatementAfterACancelWaitsUntilTheCancelRequestHasLanded() async throws {
        let database = try await TestDatabase.migrated()
        let cancelReady = Signal()
        let sendCancel = DispatchSemaphore(value: 0)
        let hooks = PGHooks(beforeCancelRequest: {
            cancelReady.fire()
            sendCancel.wait()
        })
        try await withHookedPool(database, conninfo: database.ownerConninfo, maxConnections: 1, hooks: hooks) { pool in
            let pid = try await pool.withConnection { $0.backendPID }
            try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 2) { admin in
                try await admin.withConnection { locks in
                    try await locks.query("SELECT pg_advisory_lock(4)")
                    let borrowed = Locked<PGConnection?>(nil)
                    let task = Task {
                        try await pool.withTransaction { connection in
                            borrowed.withLock { $0 = connection }
                            try await connection.query("SELECT pg_advisory_xact_lock(4)")
                            try await connection.query("SELECT 1")
                        }
                    }
                    try await eventually("the statement waits for lock 4") { try await lockWaiters(admin, "pg_advisory_xact_lock(4)") == 1 }
                    task.cancel()
                    await cancelReady.wait()
                    try await locks.query("SELECT pg_advisory_unlock(4)")
                    let connection = try #require(borrowed.withLock { $0 })
                    try await eventually("the next statement waits for the cancel request") {
                        connection.control.withLock { $0.afterCancels.count } == 1
                    }
                    #expect(connection.state == .cancelPending)
                    sendCancel.signal()
                    let result = await task.result
                    guard case .failure(let error as PGError) = result else {
                        Issue.record("expected the cancelled transaction to fail, got \(result)")
                        return
                    }
                    #expect(error.isQueryCancelled)
                }
            }
            // The session was rolled back cleanly, not broken: the same one serves the next borrower.
            let (samePID, answer) = try await pool.withConnection { connection in
                (connection.backendPID, try await connection.query("SELECT 9").first!.decode(Int32.self, at: 0))
            }
            #expect(samePID == pid)
            #expect(answer == 9)
        }
    }

    /// `deinit` used to free the cancel key while `PQcancel` could still be using it: now the cancel thread
    /// holds it until it is done, however soon the connection is closed and dropped.
    @Test func theCancelKeyOutlivesItsConnectionWhileACancelRequestUsesIt() async throws {
        let database = try await TestDatabase.migrated()
        let cancelReady = Signal()
        let sendCancel = DispatchSemaphore(value: 0)
        let hooks = PGHooks(beforeCancelRequest: {
            cancelReady.fire()
            sendCancel.wait()
        })
        let key = Locked(WeakCancelHandle())
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 2) { admin in
            try await admin.withConnection { locks in
                try await locks.query("SELECT pg_advisory_lock(3)")
                let configuration = PGConnectionConfiguration(conninfo: database.ownerConninfo, applicationName: "test")
                let task = Task {
                    try await PGConnection.withConnection(configuration, hooks: hooks) { connection in
                        key.withLock { $0.handle = connection.cancelHandle }
                        try await connection.query("SELECT pg_advisory_xact_lock(3)")
                    }
                }
                try await eventually("the statement waits for lock 3") { try await lockWaiters(admin, "pg_advisory_xact_lock(3)") == 1 }
                task.cancel()
                await cancelReady.wait()
                try await locks.query("SELECT pg_advisory_unlock(3)")
                _ = await task.result
                // The connection is closed and its borrower gone; the cancel request has not been sent yet.
                #expect(key.withLock { $0.handle } != nil)
                sendCancel.signal()
                try await eventually("the cancel key is freed once the cancel request is done") { key.withLock { $0.handle } == nil }
            }
        }
    }
}

struct WeakCancelHandle {
    weak var handle: PGCancelHandle?
}

/// A value shared between a test and the tasks it starts (on the client's lock, which the thread sanitizer sees).
final class Locked<Value: Sendable>: Sendable {
    private let lock: PGLock<Value>
    init(_ value: Value) { lock = PGLock(value) }
    func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { lock.withLock { body(&$0) } }
}

/// A pool on `database` with test hooks and the lifetime given.
func withHookedPool<R: Sendable>(
    _ database: TestDatabase,
    conninfo: String? = nil,
    maxConnections: Int,
    acquireTimeout: Duration = .seconds(30),
    maxConnectionLifetime: Duration? = .seconds(30 * 60),
    hooks: PGHooks = PGHooks(),
    _ body: (PGPool) async throws -> R
) async throws -> R {
    var logger = Logger(label: "test-pool")
    logger.logLevel = .error
    let pool = PGPool(
        configuration: .init(
            connection: .init(conninfo: conninfo ?? database.applicationConninfo, applicationName: "test"),
            maxConnections: maxConnections,
            acquireTimeout: acquireTimeout,
            maxConnectionLifetime: maxConnectionLifetime
        ),
        logger: logger,
        hooks: hooks
    )
    do {
        let result = try await body(pool)
        await pool.close()
        return result
    } catch {
        await pool.close()
        throw error
    }
}

/// Backends of this database waiting for a lock while running a statement that contains `text`.
func lockWaiters(_ admin: PGPool, _ text: String) async throws -> Int {
    try await admin.query("""
        SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'
          AND position(\(text) in query) > 0
        """).first!.decode(Int.self, at: 0)
}

/// Polls `condition` (no fixed sleeps) until it holds; records an issue after 20 s.
func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(20)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        await Task.yield()
    }
    Issue.record("never happened: \(what)")
    throw CancellationError()
}

/// A one-shot event: `wait` returns once `fire` has been called, before or after.
final class Signal: Sendable {
    private struct State {
        var fired = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state = PGLock(State())

    func fire() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.fired = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let fired = state.withLock { state -> Bool in
                if state.fired { return true }
                state.waiters.append(continuation)
                return false
            }
            if fired { continuation.resume() }
        }
    }
}
