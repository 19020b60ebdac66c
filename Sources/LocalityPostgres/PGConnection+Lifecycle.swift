internal import CLibPQ
import Foundation
import Synchronization

/// A connection's lifecycle: one state at a time, and the pool's look at it when it comes back.
extension PGConnection {
    /// Where a connection stands.
    enum State: Sendable, Equatable {
        /// In the pool, ready to lend.
        case idle
        /// Lent to a borrower, outside a transaction.
        case inUse
        /// Lent, inside a transaction (`withTransaction`, or a `BEGIN` of the borrower's own).
        case inTransaction
        /// A cancel request is on its way to the server: until it has landed, the session sends nothing
        /// and is lent to no one, or the cancel could hit a statement it was not aimed at.
        case cancelPending
        /// An error showed the session unusable: it is closed, never lent again.
        case broken
    }

    /// The part of the state only the connection's owner (the pool, or the borrowing task) changes.
    enum Phase: Sendable {
        case idle, inUse, inTransaction
    }

    /// The part other threads change, under `control`'s lock: the I/O loop marks a session broken, and
    /// cancel requests start and finish on threads of their own.
    struct Control {
        var broken = false
        /// The cancellable statement in flight, by ticket.
        var running: UInt64?
        /// The last cancellable statement sent (or refused): a cancel aimed at a later one came before
        /// it was sent, and it is then never sent.
        var lastStarted: UInt64 = 0
        var cancelledBeforeStart: UInt64?
        /// `PQcancel` calls running now.
        var cancelsInFlight = 0
        /// What waits for them to finish.
        var afterCancels: [AfterCancels] = []
    }

    enum AfterCancels: Sendable {
        /// The borrower's next statement.
        case resume(CheckedContinuation<Void, Never>)
        /// The connection's return to the pool.
        case returnTo(PGPool)
    }

    /// The current state (read by the owner; `cancelPending` and `broken` may be set by other threads).
    var state: State {
        let (broken, cancelling) = control.withLock { ($0.broken, $0.cancelsInFlight > 0) }
        if broken { return .broken }
        if cancelling { return .cancelPending }
        switch phase {
        case .idle: return .idle
        case .inTransaction: return .inTransaction
        case .inUse: return PQtransactionStatus(handle) == PQTRANS_IDLE ? .inUse : .inTransaction
        }
    }

    /// True once an error showed the session unusable; the pool then discards it.
    public var isBroken: Bool { control.withLock { $0.broken } }

    func markBroken() { control.withLock { $0.broken = true } }

    /// What the pool does with a returned connection.
    enum CheckIn: Equatable {
        /// Lend it again.
        case reuse
        /// Close it; `reason` is for the log, `unexpected` when the borrower misused it.
        case discard(reason: String, unexpected: Bool)
        /// A cancel request is still on its way: the connection is handed back to `pool` (`PGPool.release`)
        /// once it has landed. Until then it stays in use.
        case afterCancel
    }

    /// The pool's check of a returned connection; called by the borrower's task once it is done with it.
    ///
    /// A connection still inside a transaction (a `BEGIN` of the borrower's own, a failed one, or an
    /// unknown state) is discarded rather than rolled back and reset. Why: it is a borrower's bug, so rare;
    /// a rollback and `RESET ALL` would cost two round trips inside `release`, which cannot wait, and would
    /// still leave anything else the session picked up (`SET ROLE`, advisory locks, temporary tables);
    /// closing it leaves nothing, the server rolls the transaction back, and the slot reopens for the next
    /// borrower.
    func checkIn(to pool: PGPool, maxLifetime: Duration?) -> CheckIn {
        let early = control.withLock { control -> CheckIn? in
            if control.broken { return .discard(reason: "broken", unexpected: false) }
            if control.cancelsInFlight > 0 {
                control.afterCancels.append(.returnTo(pool))
                return .afterCancel
            }
            return nil
        }
        if let early { return early }
        if phase == .inTransaction || PQtransactionStatus(handle) != PQTRANS_IDLE {
            return .discard(reason: "returned inside a transaction", unexpected: true)
        }
        if PQpipelineStatus(handle) != PQ_PIPELINE_OFF {
            return .discard(reason: "returned in pipeline mode", unexpected: true)
        }
        // The last reply's time stands for now: no clock read per return.
        if let maxLifetime, hasOutlived(maxLifetime, now: lastReply) {
            return .discard(reason: "past its maximum lifetime", unexpected: false)
        }
        phase = .idle
        return .reuse
    }

    /// Whether the session has been open longer than its share of `lifetime`.
    func hasOutlived(_ lifetime: Duration, now: ContinuousClock.Instant) -> Bool {
        now - openedAt >= lifetime * lifetimeShare
    }

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
}
