/// Points where a test pauses the client to force one interleaving of a race, instead of sleeping and
/// hoping. Called in debug builds only; a pool or connection made outside the tests has none.
final class PGHooks: Sendable {
    /// On a cancel request's own thread, just before `PQcancel`; it may block.
    let beforeCancelRequest: (@Sendable () -> Void)?
    /// In `PGPool.acquire`, after a borrower found nothing free and before it queues.
    let beforeQueueing: (@Sendable () async -> Void)?

    init(beforeCancelRequest: (@Sendable () -> Void)? = nil, beforeQueueing: (@Sendable () async -> Void)? = nil) {
        self.beforeCancelRequest = beforeCancelRequest
        self.beforeQueueing = beforeQueueing
    }
}
