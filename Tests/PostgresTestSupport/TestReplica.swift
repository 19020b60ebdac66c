public import EmbeddedPostgres
import Foundation
public import LocalityPostgres
import Logging

/// A real physical streaming replica of a test cluster: `pg_basebackup -R` into a new data directory, started
/// beside its primary on a socket of its own (hot standby: read-only queries allowed). One per test that needs
/// it; `stop()` it at the end (the process exit stops any left running).
public final class TestReplica: Sendable {
    public let embedded: EmbeddedPostgres
    public let dataDirectory: String
    /// The primary's superuser pool (for positions and writes made behind the service's back).
    public let primary: TestCluster.Info

    private init(embedded: EmbeddedPostgres, dataDirectory: String, primary: TestCluster.Info) {
        self.embedded = embedded
        self.dataDirectory = dataDirectory
        self.primary = primary
    }

    /// Copies `cluster` (everything in it so far, so make the test's database first) and starts the copy.
    public static func make(of cluster: TestCluster = .replicationPrimary) async throws -> TestReplica {
        let info = try await cluster.info()
        let directory = info.rootDirectory + "/r-" + UUID().uuidString.prefix(8).lowercased()
        let osUser = "postgres"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        var runAs: [String] = []
        if getuid() == 0 {
            guard let entry = getpwnam(osUser), chown(directory, entry.pointee.pw_uid, entry.pointee.pw_gid) == 0 else {
                throw EmbeddedPostgresError("cannot give \(directory) to \(osUser)")
            }
            runAs = ["/usr/sbin/runuser", "-u", osUser, "--"]
        }
        CleanupAtExit.register(root: directory, dataDirectory: directory)
        // Beside the server binaries found (which may be links elsewhere), or in the packaged server's directory.
        let binaries = try await EmbeddedPostgres.locateBinaries()
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        let candidates = [binaries + "/pg_basebackup"] + versions.map { "/usr/lib/postgresql/\($0)/bin/pg_basebackup" } + ["/usr/bin/pg_basebackup"]
        guard let basebackup = candidates.first(where: FileManager.default.isExecutableFile(atPath:)) else {
            throw EmbeddedPostgresError("pg_basebackup not found (looked at \(candidates))")
        }
        let command = runAs + [basebackup, "-h", info.embedded.socketDirectory, "-p", String(info.embedded.configuration.port),
                               "-U", "postgres", "-D", directory, "-R", "-X", "stream", "-c", "fast"]
        let output = try await ProcessRunner.run(command[0], Array(command.dropFirst()))
        guard output.status == 0 else { throw EmbeddedPostgresError("pg_basebackup failed: \(output.text)") }
        // The primary's socket lives in its data directory, so its lock file came along: it is not ours.
        for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where file.hasPrefix(".s.PGSQL.") {
            try? FileManager.default.removeItem(atPath: directory + "/" + file)
        }
        // The copy's own socket (its postgresql.conf names the primary's); postgresql.auto.conf wins.
        let settings = "\nunix_socket_directories = '\(directory)'\nhot_standby = on\n"
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: directory + "/postgresql.auto.conf"))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(settings.utf8))
        try handle.close()
        var logger = Logger(label: "test-replica")
        logger.logLevel = .warning
        let embedded = EmbeddedPostgres(configuration: .init(dataDirectory: directory, osUser: osUser), logger: logger)
        try await embedded.start()
        return TestReplica(embedded: embedded, dataDirectory: directory, primary: info)
    }

    public func conninfo(user: String, database: String) -> String { embedded.conninfo(user: user, database: database) }

    /// Stops the replica (fast shutdown); `start()` brings it back, streaming again from where it stopped.
    public func stop() async { await embedded.stop() }

    public func start() async throws { try await embedded.start() }

    /// Stops and removes it.
    public func remove() async {
        await embedded.stop()
        try? FileManager.default.removeItem(atPath: dataDirectory)
    }

    /// Runs one statement as the replica's superuser.
    public func superuserQuery(_ sql: String, database: String = "postgres") async throws -> PGResult {
        try await PGConnection.withConnection(.init(conninfo: conninfo(user: "postgres", database: database), applicationName: "test-replica")) {
            try await $0.query(PGQuery(sql))
        }
    }

    public func pauseReplay() async throws { _ = try await superuserQuery("SELECT pg_wal_replay_pause()") }

    public func resumeReplay() async throws { _ = try await superuserQuery("SELECT pg_wal_replay_resume()") }

    /// Waits until the replica has replayed everything the primary had inserted when this was called. Replay
    /// tells nobody when it gets somewhere, so this asks every few milliseconds (up to `timeout`).
    public func waitUntilCaughtUp(timeout: Duration = .seconds(30)) async throws {
        let inserted = try await primary.superuserPool.query(PGQuery("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint"))
            .first!.decode(Int64.self, at: 0)
        // Past a page header's bytes no record ends (see ReplicaRouter.recordEnd).
        let target = inserted % (16 << 20) == 40 ? inserted - 40 : inserted % 8192 == 24 ? inserted - 24 : inserted
        let deadline = ContinuousClock.now + timeout
        while true {
            let replayed = try await superuserQuery("SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint").first!.decode(Int64.self, at: 0)
            if replayed >= target { return }
            guard ContinuousClock.now < deadline else { throw EmbeddedPostgresError("the replica did not catch up within \(timeout)") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}
