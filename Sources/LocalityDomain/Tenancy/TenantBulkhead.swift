import Foundation
public import LocalityPostgres
import Synchronization

/// At most `limit` transactions of one tenant (an authority, or a supplier organisation) hold pooled
/// connections at once; the tenant's further transactions wait their turn here, in order, instead of taking
/// the rest of the pool. Why: one council's writers queued behind a held row lock used to hold every
/// connection, and every other council — and `/readyz` — got 503s. The limit is per process, like the pool.
/// A wait longer than `timeout` ends as the pool's own acquire timeout does (503 with `Retry-After`).
/// The same design bounds one kind of work (CSV exports: key "export"), where `maxWaiting` also caps the queue:
/// past it, `BulkheadFull` at once rather than a long wait.
public final class TenantBulkhead: Sendable {
    public let limit: Int
    public let timeout: Duration
    /// Waiters per key beyond which further callers are refused at once (nil: no bound but the timeout).
    public let maxWaiting: Int?

    private struct Waiter {
        let id: UInt64
        let deadline: ContinuousClock.Instant
        let continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var inUse: [String: Int] = [:]
        var waiters: [String: [Waiter]] = [:]
        var nextID: UInt64 = 0
        /// A sweeper task runs while anyone waits (see `sweep`).
        var sweeping = false
    }

    private let state = Mutex(State())

    public init(limit: Int, timeout: Duration, maxWaiting: Int? = nil) {
        precondition(limit > 0, "a bulkhead admits at least one transaction")
        self.limit = limit
        self.timeout = timeout
        self.maxWaiting = maxWaiting
    }

    /// Thrown when `maxWaiting` callers already wait for `key`.
    public struct BulkheadFull: Error, Sendable {
        public let key: String
    }

    /// Takes one of `key`'s places (waiting in order); pair with `leave` — for callers whose work is not one
    /// closure, or who must tell a refusal here from a failure of the work itself.
    public func enter(_ key: String) async throws {
        try await acquire(key)
    }

    /// Gives back a place taken by `enter`.
    public func leave(_ key: String) {
        release(key)
    }

    /// Runs `body` holding one of `key`'s places.
    public func run<R>(_ key: String, _ body: () async throws -> R) async throws -> R {
        try await acquire(key)
        defer { release(key) }
        return try await body()
    }

    /// Places in use for `key` (tests, diagnostics).
    public func inUse(_ key: String) -> Int {
        state.withLock { $0.inUse[key, default: 0] }
    }

    private func acquire(_ key: String) async throws {
        let id: UInt64?? = state.withLock { state in
            if state.inUse[key, default: 0] < limit {
                state.inUse[key, default: 0] += 1
                return .some(nil)
            }
            if let maxWaiting, state.waiters[key, default: []].count >= maxWaiting { return nil }
            state.nextID += 1
            return state.nextID
        }
        guard let id else { throw BulkheadFull(key: key) }
        guard let id else { return }
        // Waits; a release hands its place over directly (inUse stays counted), a timeout (`sweep`) or a
        // cancellation takes the waiter out and fails it.
        let deadline = ContinuousClock.now + timeout
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                enum Outcome { case admitted, full, queued(startSweeper: Bool) }
                let outcome: Outcome = state.withLock { state in
                    // A place may have been freed since the first look (or the queue filled up).
                    if state.inUse[key, default: 0] < limit {
                        state.inUse[key, default: 0] += 1
                        return .admitted
                    }
                    if let maxWaiting, state.waiters[key, default: []].count >= maxWaiting { return .full }
                    state.waiters[key, default: []].append(Waiter(id: id, deadline: deadline, continuation: continuation))
                    defer { state.sweeping = true }
                    return .queued(startSweeper: !state.sweeping)
                }
                switch outcome {
                case .admitted: continuation.resume()
                case .full: continuation.resume(throwing: BulkheadFull(key: key))
                case .queued(let startSweeper):
                    if startSweeper { Task { await self.sweep() } }
                }
            }
        } onCancel: {
            fail(key, id, CancellationError())
        }
    }

    private func release(_ key: String) {
        let next: Waiter? = state.withLock { state in
            if var queue = state.waiters[key], !queue.isEmpty {
                let first = queue.removeFirst()
                state.waiters[key] = queue.isEmpty ? nil : queue
                return first   // the place passes to it: inUse unchanged
            }
            let count = state.inUse[key, default: 1] - 1
            state.inUse[key] = count > 0 ? count : nil
            return nil
        }
        next?.continuation.resume()
    }

    /// Fails the waiters whose deadline has passed. One task per bulkhead, running only while someone waits,
    /// sleeping until the earliest deadline: a timer task per waiter (as before) cost every queued request a task
    /// to start and another to cancel, each a wake-up of Swift's global executor (Benchmarks/README.md).
    /// Every waiter has the same timeout, so each key's queue is in deadline order.
    private func sweep() async {
        while true {
            let next: ContinuousClock.Instant? = state.withLock { state in
                let earliest = state.waiters.values.compactMap { $0.first?.deadline }.min()
                if earliest == nil { state.sweeping = false }
                return earliest
            }
            guard let next else { return }
            try? await Task.sleep(until: next, clock: .continuous)
            let now = ContinuousClock.now
            let expired: [Waiter] = state.withLock { state in
                var expired: [Waiter] = []
                for (key, queue) in state.waiters {
                    let late = queue.prefix { $0.deadline <= now }
                    guard !late.isEmpty else { continue }
                    expired += late
                    state.waiters[key] = queue.count == late.count ? nil : Array(queue.dropFirst(late.count))
                }
                return expired
            }
            for waiter in expired {
                waiter.continuation.resume(throwing: PGError(
                    kind: .acquireTimeout, message: "the tenant's transactions are queued behind slow ones; retry shortly"))
            }
        }
    }

    private func fail(_ key: String, _ id: UInt64, _ error: any Error) {
        let waiter: Waiter? = state.withLock { state in
            guard var queue = state.waiters[key], let index = queue.firstIndex(where: { $0.id == id }) else { return nil }
            let waiter = queue.remove(at: index)
            state.waiters[key] = queue.isEmpty ? nil : queue
            return waiter
        }
        waiter?.continuation.resume(throwing: error)
    }
}
