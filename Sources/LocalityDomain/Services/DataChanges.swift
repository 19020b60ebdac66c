public import Foundation
public import LocalityPostgres
import Synchronization

/// What this instance knows of changes to tenant data, for answers kept in memory (the API's `ResponseCache`):
/// whether anything such an answer was read from may have changed since it was read.
///
/// How a change reaches it:
/// - this instance's own writes: `ScopedDatabase` records each write transaction here after it ends, before its
///   request is answered, so a client always reads its own writes from this instance;
/// - every instance's writes, the CLI's included: after the commit, `announce` sends
///   `NOTIFY locality_data, '<authority id>'`, and each instance's listener session applies it here
///   (typically within milliseconds of the commit);
/// - any other write (an operator's SQL, a migration, a bulk load): migration 0036's triggers send
///   `NOTIFY locality_data, ''` at its commit: anything may have changed;
/// - answers are trusted only while the listener session is up: when it is lost, or comes back (notifications
///   in between are lost), everything counts as changed.
///
/// Changes are numbered: a reader takes a `ticket` before it reads, and its answer stays good while nothing it
/// depends on has changed after that number. A staff member's answers depend on their authority's data only (row
/// level security keeps them there); a supplier's may come from any authority, so any change ends them.
public final class DataChanges: Sendable {
    /// The channel the announcements and the triggers use.
    public static let channel = "locality_data"

    /// Sent after a write's commit, in a transaction of its own. `synchronous_commit` off: this transaction only
    /// notifies (nothing to lose in a crash, which ends every listener's session anyway), and a notifying commit
    /// holds a database-wide lock until it ends, which must not include a WAL flush.
    static let announceSQL =
        "SELECT pg_catalog.set_config('synchronous_commit', 'off', true), pg_catalog.pg_notify('locality_data', $1)"

    public enum Event: Sendable, Equatable {
        /// An authority's data changed (nil: anything may have).
        case changed(UUID?)
        case enabled
        case disabled
    }

    private struct State {
        var sequence: UInt64 = 0
        /// The last change that may have touched anything.
        var everythingChangedAt: UInt64 = 0
        var authorityChangedAt: [UUID: UInt64] = [:]
        var enabled = false
    }

    private let state = Mutex(State())
    private let observers = EventObservers<Event>()

    public init() {}

    /// Whether answers may be kept now (the listener session is up).
    public var isEnabled: Bool { state.withLock { $0.enabled } }

    /// Taken before a read whose answer may be kept; nil when nothing read now may be.
    public func ticket() -> UInt64? {
        state.withLock { $0.enabled ? $0.sequence : nil }
    }

    /// Whether nothing an answer read under `ticket` depends on has changed since: the data of `authority`, or
    /// (nil) of any authority.
    public func unchanged(since ticket: UInt64, authority: UUID?) -> Bool {
        state.withLock { state in
            guard state.enabled else { return false }
            guard let authority else { return state.sequence == ticket }
            return state.everythingChangedAt <= ticket && (state.authorityChangedAt[authority] ?? 0) <= ticket
        }
    }

    /// Records a change to `authority`'s data (nil: anything may have changed).
    public func changed(authority: UUID?) {
        change(.changed(authority)) { state in
            if let authority { state.authorityChangedAt[authority] = state.sequence } else { state.everythingChangedAt = state.sequence }
        }
    }

    /// Applies a notification's payload: an authority id, or anything else for "anything may have changed".
    public func apply(notificationPayload payload: String) {
        changed(authority: UUID(uuidString: payload))
    }

    /// The listener session is up (`LISTEN` in effect): answers may be kept from now on, none from before.
    public func listenerUp() {
        change(.enabled) { state in
            state.everythingChangedAt = state.sequence
            state.enabled = true
        }
    }

    /// The listener session was lost: changes may go unnoticed, so nothing may be kept until it is back.
    public func listenerDown() {
        change(.disabled) { state in
            state.everythingChangedAt = state.sequence
            state.enabled = false
        }
    }

    /// Every change from now on, for tests that wait for one (no sleeping).
    public func events() -> AsyncStream<Event> { observers.stream() }

    private func change(_ event: Event, _ body: (inout State) -> Void) {
        state.withLock { state in
            state.sequence &+= 1
            body(&state)
        }
        observers.yield(event)
    }

    /// Tells every instance (this one through `local`) that a write for `scope` has ended and may have changed its
    /// authority's data (a supplier's or an operator's write without an authority: anything). A failed
    /// announcement is not the write's failure: the instances that missed it keep their answers for at most the
    /// cache's lifetime (logged by the caller's metrics only).
    static func announce(_ scope: AccessScope, local: DataChanges?, on pool: PGPool) async {
        local?.changed(authority: scope.authorityID)
        _ = try? await pool.withConnectionRerunIfLost { connection in
            try await connection.query(announcement(scope))
        }
    }

    /// The announcement of a write for `scope`: run after its commit, in a transaction of its own (the services'
    /// transactions send it with their COMMIT, `ScopedDatabase.transaction`).
    static func announcement(_ scope: AccessScope) -> PGQuery {
        PGQuery(announceSQL, [(scope.authorityID?.uuidString.lowercased() ?? "").pg])
    }

    /// Whether a write transaction that failed with `error` may nevertheless have committed (or left changes the
    /// caches must not trust): anything but a rollback the database or the service reported.
    static func mayHaveCommitted(_ error: any Error) -> Bool {
        if error is DomainError { return false }
        if let error = error as? PGError {
            switch error.kind {
            case .server, .acquireTimeout, .poolClosed, .decoding, .client: return false
            case .connection: return !error.lostBeforeCommit
            }
        }
        return true
    }
}
