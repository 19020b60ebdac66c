public import Logging
public import Metrics
public import ServiceLifecycle
import Synchronization

public struct PGPoolConfiguration: Sendable {
    public var connection: PGConnectionConfiguration
    /// Upper bound on open connections.
    public var maxConnections: Int
    /// How long a caller waits for a free connection before `PGError.Kind.acquireTimeout`.
    public var acquireTimeout: Duration
    /// How long a connection is kept open at most (nil: forever). One past it is closed when returned or
    /// about to be lent, never in use, and replaced when needed. Why: server-side memory a long session
    /// accumulates (plan and catalog caches) is returned, a failover or a changed setting reaches every
    /// session in bounded time, and load spreads again after a replica joins. Each connection gets 95–100%
    /// of it, so a burst of connections opened together does not close together.
    public var maxConnectionLifetime: Duration?
    /// How long opening a connection keeps being retried (with backoff) while the server cannot be reached or
    /// is not accepting connections yet, before the caller gets the error (zero: at once). Why: a pooler or
    /// database restart takes a fraction of a second; requests that arrive meanwhile should wait it out, not
    /// fail. A pool that has somewhere else to go (a replica's, which falls back to the primary) keeps zero.
    public var connectRetryWindow: Duration

    public init(
        connection: PGConnectionConfiguration,
        maxConnections: Int = 8,
        acquireTimeout: Duration = .seconds(5),
        maxConnectionLifetime: Duration? = .seconds(30 * 60),
        connectRetryWindow: Duration = .zero
    ) {
        precondition(maxConnections > 0, "a pool needs at least one connection")
        self.connection = connection
        self.maxConnections = maxConnections
        self.acquireTimeout = acquireTimeout
        self.maxConnectionLifetime = maxConnectionLifetime
        self.connectRetryWindow = connectRetryWindow
    }
}

/// Whether `PGPool.withTransaction` re-runs the whole closure after a serialization failure or deadlock, or
/// after its connection was lost before COMMIT was sent (`PGError.lostBeforeCommit`).
public enum PGTransactionRetry: Sendable {
    case never
    /// Only for closures that are safe to run again from the start.
    case onConflict(maxAttempts: Int = 5)

    var maxAttempts: Int {
        switch self {
        case .never: 1
        case .onConflict(let maxAttempts): max(1, maxAttempts)
        }
    }
}

/// A bounded, fair pool of `PGConnection`s, run as a swift-service-lifecycle `Service`.
///
/// Callers never hold a connection: they borrow one for the length of a closure. Waiters are served in
/// arrival order. A returned connection is checked (`PGConnection.checkIn`): a broken one, one still inside
/// a transaction or one past its lifetime is closed and its slot reopened for the next caller; one with a
/// cancel request on its way comes back once that has landed.
public final class PGPool: Service, Sendable {
    public let configuration: PGPoolConfiguration
    private let logger: Logger
    private let state = PGLock(State())
    private let metrics: PoolMetrics
    private let connectRetries = Atomic<Int>(0)
    /// Points where tests force an interleaving (nil outside tests).
    let hooks: PGHooks?

    private struct Waiter {
        let id: Int
        let continuation: CheckedContinuation<Grant, any Error>
    }

    /// What a waiting caller is handed: a connection, or the right to open one.
    private enum Grant: Sendable {
        case connection(PGConnection)
        case openSlot
    }

    private struct State {
        var idle: [PGConnection] = []
        var open = 0
        var inUse = 0
        var waiters: [Waiter] = []
        var nextWaiterID = 0
        var closed = false
    }

    public init(configuration: PGPoolConfiguration, logger: Logger, metricsFactory: (any MetricsFactory)? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = PoolMetrics(factory: metricsFactory ?? MetricsSystem.factory)
        self.hooks = nil
    }

    init(configuration: PGPoolConfiguration, logger: Logger, hooks: PGHooks) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = PoolMetrics(factory: MetricsSystem.factory)
        self.hooks = hooks
    }

    // MARK: Borrowing

    /// Lends a connection for the duration of `body`. Its statements go to the shared I/O loop
    /// (`PGIOLoop`); `body` itself runs wherever the caller's task runs.
    public func withConnection<R: Sendable>(_ body: (PGConnection) async throws -> R) async throws -> R {
        try await borrow(body)
    }

    /// Like `withConnection`, for a `body` that only reads (or whose writes are harmless to repeat): when its
    /// connection turns out lost (the server, or a pooler in between, closed it), `body` runs once more on a
    /// fresh connection instead of failing the caller.
    public func withConnectionRerunIfLost<R: Sendable>(_ body: (PGConnection) async throws -> R) async throws -> R {
        do {
            return try await borrow(body)
        } catch let error as PGError where error.breaksConnection {
            metrics.transactionRetries.increment()
            logger.debug("running a read again on a fresh connection", metadata: ["sqlstate": "\(error.sqlState ?? "")"])
            return try await borrow(body)
        }
    }

    private func borrow<R: Sendable>(_ body: (PGConnection) async throws -> R) async throws -> R {
        let connection = try await acquire()
        do {
            let result = try await body(connection)
            release(connection)
            return result
        } catch {
            release(connection)
            throw error
        }
    }

    /// Runs `body` in a transaction on a borrowed connection; with `.onConflict`, a serialization failure,
    /// a deadlock or a connection lost before COMMIT was sent re-runs the whole transaction after a short
    /// randomised backoff (the next attempt borrows another connection, opened anew if need be). A connection
    /// lost while COMMIT was on its way is never retried: the transaction may have committed.
    /// `prelude` goes with `BEGIN` and the body's first statement, `afterCommit` with `COMMIT`, each in one
    /// round trip (see `PGConnection.withTransaction`).
    public func withTransaction<R: Sendable>(
        isolation: PGIsolationLevel = .readCommitted,
        readOnly: Bool = false,
        retry: PGTransactionRetry = .never,
        prelude: PGQuery? = nil,
        afterCommit: PGQuery? = nil,
        mayCommitEarly: Bool = false,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        var attempt = 1
        while true {
            do {
                return try await withConnection { connection in
                    try await connection.withTransaction(
                        isolation: isolation, readOnly: readOnly, prelude: prelude, afterCommit: afterCommit,
                        mayCommitEarly: mayCommitEarly, body)
                }
            } catch let error as PGError
                where (error.isRetryableTransactionFailure || error.isCachedPlanInvalidated || error.lostBeforeCommit)
                    && attempt < retry.maxAttempts
            {
                // A cached plan a migration invalidated failed the transaction; its connection prepares afresh.
                metrics.transactionRetries.increment()
                logger.debug("retrying transaction", metadata: ["sqlstate": "\(error.sqlState ?? "")", "attempt": "\(attempt)"])
                let ceiling = 5 * (1 << min(attempt, 6))
                try await Task.sleep(for: .milliseconds(Int.random(in: 1...ceiling)))
                attempt += 1
            }
        }
    }

    /// Runs `body` on one of the I/O loop threads (round-robin), the way pgbench's client threads run.
    ///
    /// Why: each reply otherwise resumes its task on Swift's cooperative pool, a wake-up of another thread
    /// per statement. Inside `body` the reply resumes the task on the loop thread that read it, and the pool
    /// lends connections served by that loop first. Use it around a unit of work that runs several
    /// statements (an API request); `body` must never block the thread (no blocking I/O, no long
    /// computation), or every connection on that loop waits. Child tasks inherit the preference.
    public func withIOAffinity<R>(_ body: @concurrent () async throws -> R) async rethrows -> R {
        // `body` is `@concurrent`: entering it moves the task to the loop it now prefers. A closure that ran on
        // its caller's executor (this module's default) would stay on the current thread until its first
        // suspension.
        try await withTaskExecutorPreference(PGIOLoop.next(), operation: body)
    }

    /// Runs one statement on a borrowed connection.
    @discardableResult
    public func query(_ query: PGQuery) async throws -> PGResult {
        try await withConnection { try await $0.query(query) }
    }

    // MARK: Service

    /// Keeps the pool open until graceful shutdown, then closes every connection.
    /// Gauges are refreshed here, once a second, rather than on every borrow: the hot path stays cheap.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                self.updateGauges()
                try? await Task.sleep(for: .seconds(1))
            }
        }
        await close()
    }

    /// Refuses new borrowers, fails waiters and closes idle connections; busy ones close when returned.
    public func close() async {
        let (idle, waiters) = state.withLock { state -> ([PGConnection], [Waiter]) in
            state.closed = true
            let idle = state.idle
            state.open -= idle.count
            state.idle = []
            let waiters = state.waiters
            state.waiters = []
            return (idle, waiters)
        }
        for waiter in waiters {
            waiter.continuation.resume(throwing: PGError(kind: .poolClosed, message: "the connection pool is shut down"))
        }
        for connection in idle { await connection.close() }
        updateGauges()
    }

    /// Current counts, for metrics and tests.
    public var statistics: (open: Int, inUse: Int, waiting: Int) {
        state.withLock { ($0.open, $0.inUse, $0.waiters.count) }
    }

    /// Connection attempts that failed and were tried again (see `connectRetryWindow`), for tests.
    public var failedConnectAttemptsRetried: Int { connectRetries.load(ordering: .relaxed) }

    // MARK: Acquire and release

    private func acquire() async throws -> PGConnection {
        let start = ContinuousClock.now
        // The I/O loop this task runs on, if any (see `withIOAffinity`); awaiting keeps a task on it.
        let home = PGIOLoop.current
        var waited = false
        while true {
            let grant: Grant
            switch nextGrant(home: home) {
            case .closed:
                throw PGError(kind: .poolClosed, message: "the connection pool is shut down")
            case .grant(let immediate):
                grant = immediate
            case .wait(let id):
                #if DEBUG
                await hooks?.beforeQueueing?()
                #endif
                grant = try await waitForGrant(id: id, home: home)
                waited = true
            }
            switch grant {
            case .connection(let connection):
                if let lifetime = configuration.maxConnectionLifetime, connection.hasOutlived(lifetime, now: start) {
                    logger.debug("closing a connection past its maximum lifetime", metadata: ["pid": "\(connection.backendPID)"])
                    discard(connection, reopenForWaiter: false)
                    await connection.close()
                    continue
                }
                if connection.looksHealthyWhileIdle(now: start) {
                    connection.phase = .inUse
                    // A task on an I/O loop keeps its connections there: each reply then resumes it
                    // without waking another thread.
                    if let home, connection.loop !== home {
                        await connection.move(to: home)
                    }
                    // A connection lent at once has waited for nothing: recorded as zero, which is what
                    // the histogram would show anyway, without a second clock read per borrow.
                    metrics.acquireTime.recordNanoseconds(waited ? durationNanoseconds(ContinuousClock.now - start) : 0)
                    return connection
                }
                logger.debug("discarding a connection the server closed", metadata: ["pid": "\(connection.backendPID)"])
                discard(connection, reopenForWaiter: false)
                await connection.close()
                // The slot was freed; ask again, which may open a replacement.
                continue
            case .openSlot:
                do {
                    let connection = try await openRetryingWhileUnreachable()
                    metrics.acquireTime.recordNanoseconds(durationNanoseconds(ContinuousClock.now - start))
                    return connection
                } catch {
                    giveBackSlot()
                    throw error
                }
            }
        }
    }

    /// Opens a connection for a granted slot; while the server cannot be reached (a pooler or database
    /// restarting), tries again with backoff until `connectRetryWindow` has passed since the first failure.
    private func openRetryingWhileUnreachable() async throws -> PGConnection {
        var pause = Duration.milliseconds(10)
        var retryUntil: ContinuousClock.Instant? = nil
        while true {
            do {
                return try await PGConnection.connect(configuration.connection, onQueryTime: { [metrics] duration in
                    metrics.queryTime.recordNanoseconds(durationNanoseconds(duration))
                }, hooks: hooks)
            } catch let error as PGError where error.kind == .connection {
                let now = ContinuousClock.now
                if retryUntil == nil { retryUntil = now + configuration.connectRetryWindow }
                guard let retryUntil, now + pause < retryUntil, !state.withLock({ $0.closed }) else { throw error }
                metrics.connectRetries.increment()
                connectRetries.add(1, ordering: .relaxed)
                logger.debug("the database cannot be reached; trying again", metadata: ["error": "\(error.message)"])
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .milliseconds(200))
            }
        }
    }

    private enum ImmediateGrant {
        case grant(Grant)
        /// Nothing free: queue under this waiter id.
        case wait(Int)
        case closed
    }

    /// Takes an idle connection or a free slot; never suspends. `.wait` when there is neither.
    private func nextGrant(home: PGIOLoop?) -> ImmediateGrant {
        state.withLock { state -> ImmediateGrant in
            if state.closed { return .closed }
            if let grant = Self.take(&state, home: home, maxConnections: configuration.maxConnections) { return .grant(grant) }
            state.nextWaiterID += 1
            return .wait(state.nextWaiterID)
        }
    }

    /// An idle connection (one of `home`'s loop first) or a free slot, counted as in use; nil if neither.
    private static func take(_ state: inout State, home: PGIOLoop?, maxConnections: Int) -> Grant? {
        // A task on an I/O loop gets a connection of that loop if one is idle.
        if let home, let index = state.idle.lastIndex(where: { $0.loop === home }) {
            state.inUse += 1
            return .connection(state.idle.remove(at: index))
        }
        if let connection = state.idle.popLast() {
            state.inUse += 1
            return .connection(connection)
        }
        if state.open < maxConnections {
            state.open += 1
            state.inUse += 1
            return .openSlot
        }
        return nil
    }

    /// Queues the caller until a connection or slot is handed over, the acquire timeout passes or its task
    /// is cancelled.
    ///
    /// The pool is looked at again under the same lock that queues the caller: a connection returned (or a
    /// slot freed) since `nextGrant` looked is taken here, never left idle while the caller waits.
    private func waitForGrant(id: Int, home: PGIOLoop?) async throws -> Grant {
        let timeout = configuration.acquireTimeout
        var timer: Task<Void, any Error>? = nil
        defer {
            timer?.cancel()
            // Whoever granted took this lock after its last use of the connection and before resuming us:
            // taking it once more orders that use before ours where the sanitizer can see it (see `PGHandOff`).
            state.withLock { _ in }
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                enum Outcome {
                    case queued
                    case granted(Grant)
                    case failed(any Error)
                }
                let outcome = state.withLock { state -> Outcome in
                    if state.closed { return .failed(PGError(kind: .poolClosed, message: "the connection pool is shut down")) }
                    if let grant = Self.take(&state, home: home, maxConnections: configuration.maxConnections) { return .granted(grant) }
                    // Checked under the lock the cancellation handler takes: it either ran before (and the
                    // flag is seen here) or runs after, and finds the waiter.
                    if Task.isCancelled { return .failed(CancellationError()) }
                    state.waiters.append(Waiter(id: id, continuation: continuation))
                    return .queued
                }
                switch outcome {
                case .granted(let grant):
                    continuation.resume(returning: grant)
                case .failed(let error):
                    continuation.resume(throwing: error)
                case .queued:
                    // Started once queued, so it always finds the waiter (or nothing, once served).
                    timer = Task { [weak self] in
                        try await Task.sleep(for: timeout)
                        self?.failWaiter(id, PGError(
                            kind: .acquireTimeout,
                            message: "no database connection became free within \(timeout) (pool of \(self?.configuration.maxConnections ?? 0))"
                        ))
                    }
                }
            }
        } onCancel: {
            failWaiter(id, CancellationError())
        }
    }

    private func failWaiter(_ id: Int, _ error: any Error) {
        let waiter = state.withLock { state -> Waiter? in
            guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return state.waiters.remove(at: index)
        }
        waiter?.continuation.resume(throwing: error)
    }

    /// Takes a connection back from its borrower (or, for one with a cancel request on its way, from the
    /// cancel thread once that has landed).
    func release(_ connection: PGConnection) {
        switch connection.checkIn(to: self, maxLifetime: configuration.maxConnectionLifetime) {
        case .reuse:
            break
        case .afterCancel:
            // Still in use: `PGConnection.cancel` calls this again once the cancel request has landed.
            return
        case .discard(let reason, let unexpected):
            logger.log(level: unexpected ? .warning : .debug, "closing a returned connection: \(reason)",
                       metadata: ["pid": "\(connection.backendPID)"])
            discard(connection, reopenForWaiter: true)
            Task { await connection.close() }
            return
        }
        enum Next {
            case handTo(Waiter)
            case close
            case idle
        }
        let next = state.withLock { state -> Next in
            if state.closed {
                state.inUse -= 1
                state.open -= 1
                return .close
            }
            if !state.waiters.isEmpty {
                // Fairness: the longest waiter gets the connection directly.
                return .handTo(state.waiters.removeFirst())
            }
            state.inUse -= 1
            state.idle.append(connection)
            return .idle
        }
        switch next {
        case .handTo(let waiter): waiter.continuation.resume(returning: .connection(connection))
        case .close: Task { await connection.close() }
        case .idle: break
        }
    }

    /// Forgets a connection; its slot goes to the first waiter as the right to open a new one.
    private func discard(_ connection: PGConnection, reopenForWaiter: Bool) {
        let waiter = state.withLock { state -> Waiter? in
            state.inUse -= 1
            state.open -= 1
            guard !state.closed, !state.waiters.isEmpty else { return nil }
            state.open += 1
            state.inUse += 1
            return state.waiters.removeFirst()
        }
        waiter?.continuation.resume(returning: .openSlot)
    }

    private func giveBackSlot() {
        let waiter = state.withLock { state -> Waiter? in
            state.inUse -= 1
            state.open -= 1
            guard !state.closed, !state.waiters.isEmpty else { return nil }
            state.open += 1
            state.inUse += 1
            return state.waiters.removeFirst()
        }
        waiter?.continuation.resume(returning: .openSlot)
    }

    private func updateGauges() {
        let (open, inUse, waiting) = statistics
        metrics.open.record(open)
        metrics.inUse.record(inUse)
        metrics.waiting.record(waiting)
    }
}

private struct PoolMetrics: Sendable {
    let open: Gauge
    let inUse: Gauge
    let waiting: Gauge
    let acquireTime: Metrics.Timer
    let queryTime: Metrics.Timer
    let transactionRetries: Counter
    let connectRetries: Counter

    init(factory: any MetricsFactory) {
        open = Gauge(label: "locality_db_pool_connections_open", factory: factory)
        inUse = Gauge(label: "locality_db_pool_connections_in_use", factory: factory)
        waiting = Gauge(label: "locality_db_pool_waiters", factory: factory)
        acquireTime = Metrics.Timer(label: "locality_db_pool_acquire_seconds", preferredDisplayUnit: .seconds, factory: factory)
        queryTime = Metrics.Timer(label: "locality_db_query_seconds", preferredDisplayUnit: .seconds, factory: factory)
        transactionRetries = Counter(label: "locality_db_transaction_retries_total", factory: factory)
        connectRetries = Counter(label: "locality_db_connect_retries_total", factory: factory)
    }
}

private func durationNanoseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
}
