public import ServiceLifecycle
import Synchronization

/// Whether this instance has been told to stop: `/readyz` answers 503 from then on, while everything else is
/// still served (see `ShutdownDelay`).
public final class DrainNotice: Sendable {
    private let draining = Atomic<Bool>(false)

    public init() {}

    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    func begin() { draining.store(true, ordering: .relaxed) }
}

/// The first thing a graceful shutdown does, before the server stops accepting: say "not ready" on `/readyz` and
/// keep serving for `delay`. A load balancer that polls `/readyz` (deploy/upstream_checker.py beside nginx) takes
/// the instance out of its rotation meanwhile, so no new request — above all no POST on a kept-alive upstream
/// connection, which nginx cannot retry — reaches a listener that is closing. Then the usual drain runs.
///
/// It must come after the application in the service group: a group shuts its services down in reverse order,
/// waiting for each to finish (`serviceGroup(_:before:shutdownDelay:…)` puts it there).
public struct ShutdownDelay: Service {
    public let notice: DrainNotice
    public let delay: Duration

    public init(notice: DrainNotice, delay: Duration) {
        self.notice = notice
        self.delay = delay
    }

    public func run() async throws {
        // Throws only when the group is cancelled; then there is nothing to wait for.
        do { try await gracefulShutdown() } catch { return }
        notice.begin()
        try? await Task.sleep(for: delay)
    }
}
