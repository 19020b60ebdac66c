public import EmbeddedPostgres
import Foundation
import LocalityDomain
public import LocalityPostgres
import Logging
import Synchronization

/// One throwaway PostgreSQL cluster per test process: a temporary directory, a private socket, no TCP
/// port, removed when the process exits. Tests get their own database cloned from a migrated template,
/// so they run in parallel without seeing each other.
public actor TestCluster {
    public static let shared = TestCluster()
    /// A second, small cluster that streaming replicas are made from (`TestReplica`): its commits are
    /// durable and synchronous, like production's, and copying it is quick.
    public static let replicationPrimary = TestCluster(name: "repl", settings: ["fsync": "off", "max_connections": "200"])

    let name: String
    let settings: [String: String]

    init(name: String = "", settings: [String: String]? = nil) {
        self.name = name
        self.settings = settings ?? [
            // Durability is worthless for a throwaway cluster; speed is not.
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "500", "shared_buffers": "'128MB'",
        ]
    }

    public struct Info: Sendable {
        public let embedded: EmbeddedPostgres
        public let rootDirectory: String
        public let superuserPool: PGPool
    }

    static let templateDatabase = "locality_template"
    private var starting: Task<Info, any Error>?

    public func info() async throws -> Info {
        if let starting { return try await starting.value }
        let task = Task { [name, settings] in try await Self.start(name: name, settings: settings) }
        starting = task
        return try await task.value
    }

    private static func start(name: String, settings: [String: String]) async throws -> Info {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("locality-test\(name)-\(getpid())-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        CleanupAtExit.register(root: root, dataDirectory: root + "/pg")
        var logger = Logger(label: "test-cluster")
        logger.logLevel = .warning
        let embedded = EmbeddedPostgres(
            configuration: .init(
                dataDirectory: root + "/pg",
                settings: settings
            ),
            logger: logger
        )
        try await embedded.start()
        try await DatabaseRoles.ensure(superuserConninfo: embedded.conninfo(), database: templateDatabase)
        let migrations = try Migration.load(from: Migration.defaultDirectory())
        try await Migrator(migrations: migrations, logger: logger)
            .apply(ownerConninfo: embedded.conninfo(user: DatabaseRoles.owner, database: templateDatabase))
        let pool = PGPool(
            configuration: .init(connection: .init(conninfo: embedded.conninfo(), applicationName: "test-admin"), maxConnections: 4, acquireTimeout: .seconds(180)),
            logger: logger
        )
        return Info(embedded: embedded, rootDirectory: root, superuserPool: pool)
    }
}

/// A fresh database for one test.
public struct TestDatabase: Sendable {
    public let name: String
    public let cluster: TestCluster.Info

    /// A new database cloned from the migrated template.
    public static func migrated(in cluster: TestCluster = .shared) async throws -> TestDatabase {
        try await create(template: TestCluster.templateDatabase, in: cluster)
    }

    /// A new database with no migrations applied (for testing the migrator itself).
    public static func empty() async throws -> TestDatabase {
        try await create(template: "template0")
    }

    private static func create(template: String, in testCluster: TestCluster = .shared) async throws -> TestDatabase {
        let cluster = try await testCluster.info()
        let name = "t_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        try await cluster.superuserPool.withConnection { connection in
            try await connection.execute("CREATE DATABASE \(quoteIdentifier(name)) TEMPLATE \(quoteIdentifier(template)) OWNER \(DatabaseRoles.owner)")
            // Database privileges are not copied from the template: take TEMPORARY from PUBLIC as the migrations
            // did there (the service refuses to start while its role has it). An empty database gets it from them.
            if template == TestCluster.templateDatabase {
                try await connection.execute("REVOKE TEMPORARY ON DATABASE \(quoteIdentifier(name)) FROM PUBLIC")
            }
        }
        return TestDatabase(name: name, cluster: cluster)
    }

    public var applicationConninfo: String { cluster.embedded.conninfo(user: DatabaseRoles.application, database: name) }
    public var ownerConninfo: String { cluster.embedded.conninfo(user: DatabaseRoles.owner, database: name) }
    public var superuserConninfo: String { cluster.embedded.conninfo(user: "postgres", database: name) }

    /// A pool on this database, closed when `body` ends.
    public func withPool<R: Sendable>(
        conninfo: String? = nil,
        maxConnections: Int = 4,
        acquireTimeout: Duration = .seconds(10),
        _ body: (PGPool) async throws -> R
    ) async throws -> R {
        var logger = Logger(label: "test-pool")
        logger.logLevel = .warning
        let pool = PGPool(
            configuration: .init(
                connection: .init(conninfo: conninfo ?? applicationConninfo, applicationName: "test"),
                maxConnections: maxConnections,
                acquireTimeout: acquireTimeout
            ),
            logger: logger
        )
        do {
            let result = try await body(pool)
            await pool.close()
            return result
        } catch {
            await pool.close()
            throw error
        }
    }
}

/// Stops the cluster (immediate shutdown) and removes its directory when the test process exits.
/// (Replicas first: they are registered after their primary.)
enum CleanupAtExit {
    // An NSLock (a pthread mutex), not a `Synchronization.Mutex`: the thread sanitizer cannot see a Mutex's
    // contended hand-over on Linux (see PGLock), and two clusters starting at once registered concurrently.
    private static let lock = NSLock()
    nonisolated(unsafe) private static var registered: [(root: String, dataDirectory: String)] = []

    static func register(root: String, dataDirectory: String) {
        let first = lock.withLock {
            registered.append((root, dataDirectory))
            return registered.count == 1
        }
        guard first else { return }
        atexit {
            for (root, data) in CleanupAtExit.lock.withLock({ CleanupAtExit.registered }).reversed() {
                if let pidFile = try? String(contentsOfFile: data + "/postmaster.pid", encoding: .utf8),
                    let pid = pidFile.split(separator: "\n").first.flatMap({ Int32($0) })
                {
                    kill(pid, SIGQUIT)
                    // Give the postmaster a moment to exit before its directory goes.
                    for _ in 0..<200 where kill(pid, 0) == 0 { usleep(10_000) }
                }
                try? FileManager.default.removeItem(atPath: root)
            }
        }
    }
}
