import Foundation
public import LocalityPostgres
public import Logging
public import Metrics
public import ServiceLifecycle
import Synchronization

/// Reads that a streaming replica may serve (issue 16): dashboards, reports, CSV exports, the public open
/// contracting feed and large lists. The API marks such a request (`ReplicaReadRequest.current`); its read-only
/// transactions then go to the replica when all of these hold, and to the primary otherwise:
///
/// 1. The replica is up, is still a replica (`pg_is_in_recovery()`), runs as the same role as the primary, and
///    its replay lag — sampled in the background, never per request — is within the bound.
/// 2. **Read-your-writes fence**: at the start of the request, the primary's WAL insert position is
///    read (`pg_current_wal_insert_lsn()`, one statement touching no table) and the replica must already have
///    replayed up to it. So every write acknowledged before the read began — by this user or anyone, through
///    any instance — is visible on the replica, or the read goes to the primary. Nothing just written
///    disappears from the next read, whichever instance serves it and without any state in the client.
///
/// A request decides once: all its routed reads then come from the same server. A replica that fails under a
/// read (its connection lost, a recovery conflict cancelling the statement) is marked down and the read runs
/// again on the primary: a replica going away costs latency, never an error.
public final class ReplicaRouter: Service, Sendable {
    public struct Configuration: Sendable {
        /// Replicas further behind than this serve nothing.
        public var maxLag: Duration
        /// How often the lag is sampled (and a replica that was down is tried again).
        public var sampleInterval: Duration

        public init(maxLag: Duration = .milliseconds(1000), sampleInterval: Duration = .milliseconds(250)) {
            self.maxLag = maxLag
            self.sampleInterval = sampleInterval
        }
    }

    /// Where a routed read ran, and why (the `reason` label of `locality_replica_routed_requests_total`).
    public enum Target: String, Sendable, CaseIterable {
        case replica
        /// The replica was down or is not a replica.
        case primaryReplicaDown = "down"
        /// The sampled lag was over the bound.
        case primaryLagging = "lagging"
        /// The replica had not yet replayed what the primary had when the request read (read-your-writes).
        case primaryBehindFence = "behind"
        /// The replica failed under the read (the read ran again on the primary), or its pool was busy.
        case primaryAfterFailure = "failed"
    }

    public let replica: PGPool
    let primary: PGPool
    public let configuration: Configuration
    private let logger: Logger
    private let state = Mutex(State())
    private let upGauge: Gauge
    private let lagGauge: Gauge
    private let reads: [Target: Counter]

    struct State {
        var up = false
        /// The staleness bound from the last sample (nil: not known — down, or never sampled).
        var lag: Duration?
        /// Recent (time, primary WAL position) samples newer than what the replica is known to have replayed.
        var samples: [(at: ContinuousClock.Instant, lsn: Int64)] = []
        var counts: [Target: Int] = [:]
        /// Why the replica is not used, once per change (so the log says it once, not every sample).
        var lastComplaint: String?
    }

    public init(primary: PGPool, replica: PGPool, configuration: Configuration, logger: Logger, metricsFactory: any MetricsFactory) {
        self.primary = primary
        self.replica = replica
        self.configuration = configuration
        self.logger = logger
        upGauge = Gauge(label: "locality_replica_up", factory: metricsFactory)
        lagGauge = Gauge(label: "locality_replica_lag_seconds", factory: metricsFactory)
        var reads: [Target: Counter] = [:]
        for target in Target.allCases {
            reads[target] = Counter(
                label: "locality_replica_routed_requests_total",
                dimensions: [("target", target == .replica ? "replica" : "primary"), ("reason", target == .replica ? "ok" : target.rawValue)],
                factory: metricsFactory)
        }
        self.reads = reads
        upGauge.record(0)
    }

    // MARK: Per request

    /// A request whose read-only transactions may go to the replica: where they go is decided now, at its start,
    /// before it writes anything itself (authentication records a token's use, the public feed its rate limit),
    /// so that the fence is exactly "everything acknowledged before this request began".
    public func request() async -> ReplicaReadRequest { ReplicaReadRequest(router: self, target: await fence()) }

    /// Whether the last sample allows the replica (up, a replica, lag within the bound); otherwise why not.
    var sampledTarget: Target {
        state.withLock { state in
            guard state.up, let lag = state.lag else { return .primaryReplicaDown }
            return lag <= configuration.maxLag ? .replica : .primaryLagging
        }
    }

    /// The read-your-writes fence: the primary's position now, and whether the replica has replayed up to it.
    func fence() async -> Target {
        let target = sampledTarget
        guard target == .replica else { return target }
        // If the primary cannot answer, neither could it serve the read: the read then fails there as usual.
        guard let inserted = try? await primary.query(PGQuery(Self.primaryPositionSQL)).first?.decode(Int64.self, at: 0) else {
            return .primaryBehindFence
        }
        let position = Self.recordEnd(fromInsertPosition: inserted)
        do {
            let row = try await replica.query(PGQuery(Self.replayPositionSQL)).first
            let replayedOrNil: Int64? = try row.flatMap { try $0.decode(Int64?.self, at: 0) }
            guard let replayed = replayedOrNil else {
                markDown("the replica is not in recovery: it is not a replica (promoted?)")
                return .primaryReplicaDown
            }
            return replayed >= position ? .replica : .primaryBehindFence
        } catch let error as PGError where error.kind == .acquireTimeout {
            // Its pool is busy, not the replica down.
            return .primaryAfterFailure
        } catch {
            markDown("the replica failed: \(error)")
            return .primaryReplicaDown
        }
    }

    func count(_ target: Target) {
        reads[target]?.increment()
        state.withLock { $0.counts[target, default: 0] += 1 }
    }

    /// Routed requests so far, by where their reads ran (for tests and the admin's eyes; `/metrics` has the same).
    public var counts: [Target: Int] { state.withLock { $0.counts } }

    /// The last sample: up, and the staleness bound.
    public var status: (up: Bool, lag: Duration?) { state.withLock { ($0.up, $0.lag) } }

    /// Failures on the replica that another server can answer: the connection (lost, refused), the server
    /// shutting down, or recovery cancelling the statement (a conflict with replay: 40001 on a standby).
    static func isReplicaFailure(_ error: any Error) -> Bool {
        guard let error = error as? PGError else { return false }
        if error.kind == .connection || error.kind == .acquireTimeout { return true }
        guard let state = error.sqlState else { return false }
        return state.hasPrefix("08") || state == "40001" || state.hasPrefix("57P")
    }

    func markDown(_ reason: String) {
        let complain = state.withLock { state -> Bool in
            state.up = false
            state.lag = nil
            defer { state.lastComplaint = reason }
            return state.lastComplaint != reason
        }
        upGauge.record(0)
        if complain { logger.warning("replica reads go to the primary", metadata: ["reason": "\(reason)"]) }
    }

    /// The end of the last record inserted, from the insert position: at the start of a WAL page the insert
    /// position points past the page's header (24 bytes; 40 on a segment's first page), where no record ever
    /// ends, so a replica that has replayed everything stops short of it. (Default 8 kB pages and 16 MB segments;
    /// with others this changes nothing and such a moment merely sends a read to the primary.)
    static func recordEnd(fromInsertPosition position: Int64) -> Int64 {
        if position % (16 << 20) == 40 { return position - 40 }
        if position % 8192 == 24 { return position - 24 }
        return position
    }

    // MARK: Sampling

    /// Positions as bigint bytes since 0/0 (pg_lsn minus pg_lsn is numeric; a bigint holds any real position).
    /// Insert position, not write position: with `synchronous_commit = off` an acknowledged commit may not be
    /// written yet, but it is always inserted.
    static let primaryPositionSQL = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"
    /// NULL unless the server is in recovery.
    static let replayPositionSQL = "SELECT CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END"
    static let replicaSampleSQL = """
        SELECT pg_is_in_recovery(), (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, current_user::text
        """
    static let primarySampleSQL = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint, current_user::text"

    /// Samples every `sampleInterval` until graceful shutdown.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await self.sample()
                try? await Task.sleep(for: self.configuration.sampleInterval)
            }
        }
    }

    /// One sample: the primary's position, then the replica's replay position. The lag is the age of the newest
    /// primary sample the replica has replayed past (0 when it has replayed everything the primary had): an
    /// idle primary does not make it look old, as `now() - pg_last_xact_replay_timestamp()` would.
    public func sample() async {
        let taken = ContinuousClock.now
        guard let primarySample = try? await primary.query(PGQuery(Self.primarySampleSQL)).first?.decode(Int64.self, String.self) else {
            // The primary is away: nothing to compare with; the reads fail or wait there anyway.
            return
        }
        let (inserted, primaryRole) = primarySample
        let position = Self.recordEnd(fromInsertPosition: inserted)
        var row: (Bool, Int64?, String)?
        do {
            row = try await replica.query(PGQuery(Self.replicaSampleSQL)).first?.decode(Bool.self, Int64?.self, String.self)
        } catch {
            // Once more: the first try may have met a session the replica closed when it restarted.
            do {
                row = try await replica.query(PGQuery(Self.replicaSampleSQL)).first?.decode(Bool.self, Int64?.self, String.self)
            } catch {
                markDown("the replica cannot be reached: \(error)")
                return
            }
        }
        guard let replicaSample = row, replicaSample.0, let replayed = replicaSample.1 else {
            markDown("the replica is not in recovery: it is not a replica (promoted?)")
            return
        }
        let replicaRole = replicaSample.2
        guard replicaRole == primaryRole else {
            // Same role on both, or row-level security and the role checks made at start would not hold there.
            markDown("the replica URL's role (\(replicaRole)) is not the primary's (\(primaryRole))")
            return
        }
        let now = ContinuousClock.now
        let lag = state.withLock { state -> Duration in
            state.samples.append((taken, position))
            let lag: Duration
            if let newest = state.samples.lastIndex(where: { $0.lsn <= replayed }) {
                lag = newest == state.samples.count - 1 ? .zero : now - state.samples[newest].at
                state.samples.removeFirst(newest)
            } else {
                // Behind every sample remembered: at least as old as the oldest.
                lag = now - state.samples[0].at
            }
            if state.samples.count > 4096 { state.samples.removeFirst(state.samples.count - 4096) }
            state.up = true
            state.lag = lag
            state.lastComplaint = nil
            return lag
        }
        upGauge.record(1)
        let (seconds, attoseconds) = lag.components
        lagGauge.record(Double(seconds) + Double(attoseconds) / 1e18)
    }
}

/// One request's routing: decided at its start, the same for all its routed reads.
public final class ReplicaReadRequest: Sendable {
    /// Set by the API around the requests it lets read from a replica.
    @TaskLocal public static var current: ReplicaReadRequest?

    let router: ReplicaRouter
    /// Where its reads go, and whether that has been counted (at its first read: a request refused before it
    /// reads anything is not a routed read).
    private let decision: Mutex<(target: ReplicaRouter.Target, counted: Bool)>

    init(router: ReplicaRouter, target: ReplicaRouter.Target) {
        self.router = router
        decision = Mutex((target, false))
    }

    /// Runs `work` on the replica's pool or the primary's, as decided; a replica failure runs it again on the
    /// primary (routed work is read-only, so running it again is safe).
    public func run<R>(primary: PGPool, _ work: (PGPool) async throws -> R) async throws -> R {
        let target = decision.withLock { decision in
            if !decision.counted {
                decision.counted = true
                router.count(decision.target)
            }
            return decision.target
        }
        guard target == .replica else { return try await work(primary) }
        do {
            return try await work(router.replica)
        } catch let error where ReplicaRouter.isReplicaFailure(error) {
            // A replica pool with no connection free is busy, not down: only this read moves.
            if (error as? PGError)?.kind != .acquireTimeout { router.markDown("a read failed on the replica: \(error)") }
            let first = decision.withLock { decision in
                defer { decision.target = .primaryAfterFailure }
                return decision.target == .replica
            }
            if first { router.count(.primaryAfterFailure) }
            return try await work(primary)
        }
    }
}
