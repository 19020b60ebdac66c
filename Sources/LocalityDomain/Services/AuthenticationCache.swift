public import Foundation
import Synchronization

/// Principals of recently seen tokens, keyed by the SHA-256 of the token, so that most authenticated
/// requests need no database round trip to find out who is calling.
///
/// How a change reaches it (the revocation delay):
/// - in this instance, the service that revokes a token, disables a user or changes their roles calls
///   `invalidate(userID:)` after its commit: the very next request sees the change;
/// - in every instance, triggers (migration 0019) send `NOTIFY locality_auth, '<user id>'` when a token, a
///   user or a role assignment changes, and the listener session (`PGNotificationListener`) applies it here:
///   typically milliseconds after the commit;
/// - the cache is trusted only while that listener session is up: when it is lost, the cache is emptied and
///   bypassed until `LISTEN` is in effect again (notifications sent meanwhile are lost, so nothing cached
///   before can be trusted);
/// - whatever happens to notifications, an entry is used for at most `lifetime` after it was read from the
///   database, and never past the token's expiry. That is the stated bound.
///
/// A lookup that raced with a change cannot re-insert what the change removed: every change advances a
/// generation, and `insert` takes only entries read under the generation current when it ends.
public final class AuthenticationCache: Sendable {
    public enum Event: Sendable, Equatable {
        /// A user's entries were dropped (nil: every entry).
        case invalidated(UUID?)
        /// The listener is up: the cache is in use.
        case enabled
        /// The listener was lost: the cache is empty and bypassed.
        case disabled
    }

    /// The channel the triggers notify on.
    public static let channel = "locality_auth"

    /// The most time an entry is used after it was read from the database (zero: no caching at all).
    public let lifetime: Duration
    public let capacity: Int

    private struct Entry {
        let principal: Principal
        let validUntil: ContinuousClock.Instant
    }

    private struct State {
        var entries: [Data: Entry] = [:]
        var enabled = false
        var generation: UInt64 = 0
        var hits = 0
    }

    private let state = Mutex(State())
    private let observers = EventObservers<Event>()

    public init(lifetime: Duration, capacity: Int = 10_000) {
        self.lifetime = lifetime
        self.capacity = capacity
    }

    /// Whether lookups may be answered from the cache now.
    public var isEnabled: Bool { state.withLock { $0.enabled } }

    /// Requests answered from the cache so far (for tests and diagnostics).
    public var hits: Int { state.withLock { $0.hits } }

    /// The principal cached for this token hash, if any and still within its lifetime.
    public func principal(forTokenHash hash: Data, now: ContinuousClock.Instant = .now) -> Principal? {
        state.withLock { state in
            guard state.enabled, let entry = state.entries[hash] else { return nil }
            guard now < entry.validUntil else {
                state.entries[hash] = nil
                return nil
            }
            state.hits += 1
            return entry.principal
        }
    }

    /// Taken before reading the database; nil when nothing read now may be cached.
    public func ticket() -> UInt64? {
        state.withLock { $0.enabled && lifetime > .zero ? $0.generation : nil }
    }

    /// Caches a principal read from the database under `ticket`, unless anything changed since.
    public func insert(_ principal: Principal, tokenHash hash: Data, expiresAt: Date, ticket: UInt64) {
        let remaining = expiresAt.timeIntervalSinceNow
        guard remaining > 0 else { return }
        let now = ContinuousClock.now
        let validUntil = now + min(lifetime, .milliseconds(Int64(remaining * 1000)))
        state.withLock { state in
            guard state.enabled, state.generation == ticket else { return }
            if state.entries.count >= capacity {
                state.entries = state.entries.filter { $0.value.validUntil > now }
                if state.entries.count >= capacity { return }
            }
            state.entries[hash] = Entry(principal: principal, validUntil: validUntil)
        }
    }

    /// Drops a user's entries (after their token, account or roles changed).
    public func invalidate(userID: UUID) {
        change(.invalidated(userID)) { state in
            state.entries = state.entries.filter { $0.value.principal.userID != userID }
        }
    }

    /// Drops every entry.
    public func invalidateAll() {
        change(.invalidated(nil)) { $0.entries.removeAll() }
    }

    /// The listener is up (`LISTEN` in effect): start from empty and use the cache.
    public func listenerUp() {
        change(.enabled) { state in
            state.entries.removeAll()
            state.enabled = lifetime > .zero
        }
    }

    /// The listener was lost: changes may go unnoticed, so empty the cache and bypass it until it is back.
    public func listenerDown() {
        change(.disabled) { state in
            state.entries.removeAll()
            state.enabled = false
        }
    }

    /// Applies one notification's payload (a user id; anything else drops every entry).
    public func apply(notificationPayload payload: String) {
        if let userID = UUID(uuidString: payload) {
            invalidate(userID: userID)
        } else {
            invalidateAll()
        }
    }

    /// Every change from now on, for tests that wait for one (no sleeping).
    public func events() -> AsyncStream<Event> { observers.stream() }

    private func change(_ event: Event, _ body: (inout State) -> Void) {
        state.withLock { state in
            state.generation &+= 1
            body(&state)
        }
        observers.yield(event)
    }
}
