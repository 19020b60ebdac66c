// Pool benchmark: primary-key SELECTs through PGPool versus `pgbench -S -M prepared` on the same cluster,
// the same 100,000-row table (pgbench_accounts, scale 1) and the same client counts.
//
//   swift run -c release locality-bench [--duration 10] [--concurrency 1,8,32] [--database-url URL]
//
// Without --database-url a throwaway embedded cluster is started in a temporary directory and removed after.
import ArgumentParser
import EmbeddedPostgres
import Foundation
import LocalityPostgres
import Logging
import Synchronization

@main
struct PoolBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locality-bench",
        abstract: "Compare PGPool primary-key SELECT throughput with pgbench -S -M prepared."
    )

    @Option(help: "Seconds per measurement.")
    var duration: Int = 10

    @Option(help: "Comma-separated client counts.")
    var concurrency: String = "1,8,32"

    @Flag(help: "Skip pgbench and the cooperative-pool run: measure only the pool with I/O affinity (for profiling).")
    var affinityOnly = false

    @Option(help: "A superuser conninfo/URL of an existing server (default: a throwaway embedded cluster).")
    var databaseURL: String?

    @Option(help: "Directory holding pgbench (default: found on PATH or beside the server binaries).")
    var pgbenchBinDir: String?

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let clientCounts = concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }

        var embedded: EmbeddedPostgres?
        var scratch: String?
        let conninfo: String
        if let databaseURL {
            conninfo = databaseURL
        } else {
            let root = FileManager.default.temporaryDirectory.appendingPathComponent("locality-bench-\(getpid())").path
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            scratch = root
            let cluster = EmbeddedPostgres(
                configuration: .init(dataDirectory: root + "/pg", settings: ["max_connections": "200", "shared_buffers": "'256MB'"]),
                logger: logger
            )
            try await cluster.start()
            embedded = cluster
            conninfo = cluster.conninfo()
        }
        defer {
            if let scratch { try? FileManager.default.removeItem(atPath: scratch) }
        }

        let pgbench = try locatePgbench()
        print("initialising pgbench_accounts (scale 1 = 100,000 rows)…")
        _ = try await runProcess(pgbench, ["-i", "-s", "1", "-q", conninfo])
        // Write the freshly loaded table out now, so that background writeback does not land in (and skew)
        // whichever measurement comes first.
        try await PGConnection.withConnection(.init(conninfo: conninfo, applicationName: "bench")) { try await $0.execute("CHECKPOINT") }

        print("clients  pgbench tps  pool tps (I/O affinity)  pool/pgbench  pool tps (cooperative pool)  pool/pgbench")
        for clients in clientCounts {
            let threads = min(clients, ProcessInfo.processInfo.activeProcessorCount)
            if affinityOnly {
                let affinityTPS = try await measurePool(conninfo: conninfo, clients: clients, ioAffinity: true, logger: logger)
                print(String(format: "%7d            -  %23.0f", clients, affinityTPS))
                continue
            }
            let output = try await runProcess(pgbench, ["-S", "-M", "prepared", "-n", "-c", "\(clients)", "-j", "\(threads)", "-T", "\(duration)", conninfo])
            let pgbenchTPS = parseTPS(output)
            let affinityTPS = try await measurePool(conninfo: conninfo, clients: clients, ioAffinity: true, logger: logger)
            let cooperativeTPS = try await measurePool(conninfo: conninfo, clients: clients, ioAffinity: false, logger: logger)
            print(String(
                format: "%7d  %11.0f  %23.0f  %11.0f%%  %27.0f  %11.0f%%",
                clients, pgbenchTPS, affinityTPS, 100 * affinityTPS / pgbenchTPS, cooperativeTPS, 100 * cooperativeTPS / pgbenchTPS
            ))
        }
        await embedded?.stop()
    }

    /// `clients` tasks, each borrowing a connection per query, for `duration` seconds. With `ioAffinity`
    /// the tasks run on the pool's I/O loops (`PGPool.withIOAffinity`, as the API server's requests do);
    /// without, on Swift's cooperative pool.
    func measurePool(conninfo: String, clients: Int, ioAffinity: Bool, logger: Logger) async throws -> Double {
        let pool = PGPool(
            configuration: .init(connection: .init(conninfo: conninfo, applicationName: "bench"), maxConnections: clients, acquireTimeout: .seconds(30)),
            logger: logger
        )
        @Sendable func client(_ work: @Sendable () async throws -> Int) async throws -> Int {
            ioAffinity ? try await pool.withIOAffinity(work) : try await work()
        }
        // Warm up: open every connection and prepare the statement on each.
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<clients {
                group.addTask {
                    try await client { _ = try await pool.query("SELECT abalance FROM pgbench_accounts WHERE aid = \(Int32(1))"); return 0 }
                }
            }
            try await group.waitForAll()
        }
        let stop = ContinuousClock.now + .seconds(duration)
        let start = ContinuousClock.now
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<clients {
                group.addTask {
                    try await client {
                        var count = 0
                        // A user-space generator, as pgbench's: a getrandom(2) per query would be measured too.
                        var seeder = SystemRandomNumberGenerator()
                        var generator = SplitMix64(seed: seeder.next())
                        while ContinuousClock.now < stop {
                            let aid = Int32.random(in: 1...100_000, using: &generator)  // aid is int4, as pgbench binds it
                            let result = try await pool.query("SELECT abalance FROM pgbench_accounts WHERE aid = \(aid)")
                            _ = try result.first?.decode(Int32.self, at: 0)
                            count += 1
                        }
                        return count
                    }
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = ContinuousClock.now - start
        await pool.close()
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return Double(total) / seconds
    }

    func locatePgbench() throws -> String {
        var candidates: [String] = []
        if let pgbenchBinDir { candidates.append(pgbenchBinDir) }
        candidates += (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        candidates += ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []).map { "/usr/lib/postgresql/\($0)/bin" }
        guard let found = candidates.map({ $0 + "/pgbench" }).first(where: FileManager.default.isExecutableFile(atPath:)) else {
            throw ValidationError("pgbench not found; install postgresql-contrib or pass --pgbench-bin-dir")
        }
        return found
    }

    func runProcess(_ executable: String, _ arguments: [String]) async throws -> String {
        let output = try await ProcessRunner.run(executable, arguments)
        guard output.status == 0 else { throw ValidationError("\(executable) failed:\n\(output.text)") }
        return output.text
    }

    func parseTPS(_ output: String) -> Double {
        for line in output.split(separator: "\n") where line.hasPrefix("tps = ") {
            let number = line.dropFirst(6).split(separator: " ").first ?? ""
            return Double(number) ?? 0
        }
        return 0
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): fast and plenty for picking account ids.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
