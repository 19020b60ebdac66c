public import Foundation
public import Logging
public import ServiceLifecycle

/// What went wrong starting the private cluster, each with what to do about it.
public struct EmbeddedPostgresError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct EmbeddedPostgresConfiguration: Sendable {
    /// The cluster's data directory (created and initialised on first use).
    public var dataDirectory: String
    /// When running as root, PostgreSQL runs as this unprivileged OS user, who owns the data directory.
    public var osUser: String
    /// Where `initdb`, `pg_ctl` and `postgres` are; found automatically when nil.
    public var binDirectory: String?
    /// Names the socket file (`.s.PGSQL.<port>`); no TCP port is opened.
    public var port: Int
    /// Extra `postgresql.conf` settings written at initialisation (tests turn off fsync, for example).
    public var settings: [String: String]

    public init(
        dataDirectory: String,
        osUser: String = "postgres",
        binDirectory: String? = nil,
        port: Int = 5432,
        settings: [String: String] = [:]
    ) {
        self.dataDirectory = dataDirectory
        self.osUser = osUser
        self.binDirectory = binDirectory
        self.port = port
        self.settings = settings
    }
}

/// A private PostgreSQL cluster started from the installed server binaries, reachable by Unix socket only.
///
/// `start()` initialises the cluster on first use and reuses it afterwards; two processes starting it at
/// once are serialised by a lock file beside the data directory. As a `Service`, it stops the server on
/// graceful shutdown if this process started it.
public final class EmbeddedPostgres: Service, @unchecked Sendable {
    public let configuration: EmbeddedPostgresConfiguration
    private let logger: Logger
    private let dataDirectory: String
    private let lock = NSLock()
    private var startedByUs = false
    private var binDirectory: String?

    public init(configuration: EmbeddedPostgresConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        self.dataDirectory = URL(fileURLWithPath: configuration.dataDirectory).standardizedFileURL.path
    }

    /// The directory holding the server's socket.
    public var socketDirectory: String { dataDirectory }

    /// A libpq conninfo for `user` on `database` over the cluster's socket.
    public func conninfo(user: String = "postgres", database: String = "postgres") -> String {
        "host='\(socketDirectory)' port=\(configuration.port) user='\(user)' dbname='\(database)'"
    }

    /// Finds the server binaries: explicit directory, then `PATH`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`.
    public static func locateBinaries(explicit: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> String {
        let fileManager = FileManager.default
        func hasAll(_ directory: String) -> Bool {
            ["initdb", "pg_ctl", "postgres"].allSatisfy { fileManager.isExecutableFile(atPath: "\(directory)/\($0)") }
        }
        if let explicit {
            guard hasAll(explicit) else {
                throw EmbeddedPostgresError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in \(explicit). Install the PostgreSQL server (apt-get install postgresql) or point --postgres-bin-dir at its bin directory.")
            }
            return explicit
        }
        var candidates = (environment["PATH"] ?? "").split(separator: ":").map(String.init)
        if let pgConfig = candidates.map({ "\($0)/pg_config" }).first(where: fileManager.isExecutableFile(atPath:)),
            let output = try? await ProcessRunner.run(pgConfig, ["--bindir"]), output.status == 0
        {
            candidates.append(output.text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let versions = (try? fileManager.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        for version in versions.sorted(by: { (Int($0) ?? 0) > (Int($1) ?? 0) }) {
            candidates.append("/usr/lib/postgresql/\(version)/bin")
        }
        if let found = candidates.first(where: hasAll) { return found }
        throw EmbeddedPostgresError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, via pg_config or in /usr/lib/postgresql/*/bin. Install the PostgreSQL server (apt-get install postgresql) or set --postgres-bin-dir, or give a --database-url for an existing server.")
    }

    /// Initialises the cluster if needed and starts it unless it is already running.
    public func start() async throws {
        let binaries = try await Self.locateBinaries(explicit: configuration.binDirectory)
        lock.withLock { binDirectory = binaries }
        let runAs = try RunAs.resolve(osUser: configuration.osUser)
        let parent = URL(fileURLWithPath: dataDirectory).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        guard (socketDirectory + "/.s.PGSQL.\(configuration.port)").utf8.count < 100 else {
            throw EmbeddedPostgresError("the data directory path \(dataDirectory) is too long for a Unix socket path (limit 107 bytes); choose a shorter --data-dir")
        }

        // Serialise with other processes starting the same cluster.
        let lockFile = try await FileLock.acquire(path: dataDirectory + ".lock")
        defer { lockFile.release() }

        if !FileManager.default.fileExists(atPath: dataDirectory + "/PG_VERSION") {
            try await initialise(binaries: binaries, runAs: runAs)
        } else {
            try checkOwnership(runAs: runAs)
        }
        if try await isRunning(binaries: binaries, runAs: runAs) {
            // Started by a process that is gone (killed, crashed): nobody would ever stop it, so this process
            // takes it over and stops it on shutdown. Started by one that is alive (the server, while the CLI
            // runs): share it and leave it to its starter.
            if let starter = Self.readStarter(markerPath), Self.isAlive(starter) {
                logger.info("reusing the running embedded PostgreSQL", metadata: ["data_dir": "\(dataDirectory)", "started_by_pid": "\(starter)"])
            } else {
                logger.warning("adopting an embedded PostgreSQL left running by a process that is gone; it stops when this one does",
                               metadata: ["data_dir": "\(dataDirectory)"])
                Self.writeStarter(markerPath)
                lock.withLock { startedByUs = true }
            }
            return
        }
        let logFile = dataDirectory + "/server.log"
        let output = try await ProcessRunner.run(
            runAs.executable, runAs.arguments(binaries + "/pg_ctl", ["start", "-D", dataDirectory, "-w", "-t", "60", "-l", logFile])
        )
        guard output.status == 0 else {
            let log = (try? String(contentsOfFile: logFile, encoding: .utf8))?.split(separator: "\n").suffix(5).joined(separator: "\n") ?? ""
            if log.contains("lock file") || log.contains("already in use") {
                throw EmbeddedPostgresError("another PostgreSQL already uses the socket \(socketDirectory)/.s.PGSQL.\(configuration.port); stop it or choose another --data-dir or --postgres-port.\n\(log)")
            }
            throw EmbeddedPostgresError("the embedded PostgreSQL did not start (see \(logFile)):\n\(output.text)\(log)")
        }
        Self.writeStarter(markerPath)
        lock.withLock { startedByUs = true }
        logger.info("started the embedded PostgreSQL", metadata: ["data_dir": "\(dataDirectory)"])
    }

    /// Whether, as root, the OS user PostgreSQL runs as can reach `dataDirectory`: it needs search permission
    /// on every existing ancestor (a clone under /root, or any 0700 directory, is out of its reach). Directories
    /// still to be created are made 0755 by us. Always true when not root (the server then runs as us).
    public static func osUserCanReach(_ dataDirectory: String, osUser: String) -> Bool {
        guard getuid() == 0, let entry = getpwnam(osUser) else { return true }
        let uid = entry.pointee.pw_uid, gid = entry.pointee.pw_gid
        var path = URL(fileURLWithPath: dataDirectory).standardizedFileURL.deletingLastPathComponent()
        while true {
            var info = stat()
            if stat(path.path, &info) == 0 {
                let mode = info.st_mode
                let allowed = info.st_uid == uid ? mode & S_IXUSR != 0 : info.st_gid == gid ? mode & S_IXGRP != 0 : mode & S_IXOTH != 0
                if !allowed { return false }
            }
            if path.path == "/" { return true }
            path = path.deletingLastPathComponent()
        }
    }

    /// Beside the data directory: the pid of the process that started (or adopted) the running cluster.
    private var markerPath: String { dataDirectory + ".starter" }

    static func readStarter(_ path: String) -> pid_t? {
        (try? String(contentsOfFile: path, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    static func writeStarter(_ path: String) {
        try? "\(getpid())\n".write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// Whether a process exists (signal 0 checks without sending; EPERM means it exists under another user).
    static func isAlive(_ pid: pid_t) -> Bool {
        pid > 0 && (kill(pid, 0) == 0 || errno == EPERM)
    }

    /// If this process runs the cluster and its postmaster has died (killed, out of memory), starts it again.
    /// Returns true when it restarted it. `run()` calls it every few seconds.
    @discardableResult
    public func superviseOnce() async throws -> Bool {
        let (ours, binaries) = lock.withLock { (startedByUs, binDirectory) }
        guard ours, let binaries else { return false }
        let runAs = try RunAs.resolve(osUser: configuration.osUser)
        if try await isRunning(binaries: binaries, runAs: runAs) { return false }
        logger.warning("the embedded PostgreSQL stopped unexpectedly; starting it again", metadata: ["data_dir": "\(dataDirectory)"])
        let logFile = dataDirectory + "/server.log"
        let output = try await ProcessRunner.run(
            runAs.executable, runAs.arguments(binaries + "/pg_ctl", ["start", "-D", dataDirectory, "-w", "-t", "60", "-l", logFile]))
        guard output.status == 0 else { throw EmbeddedPostgresError("the embedded PostgreSQL did not restart (see \(logFile)):\n\(output.text)") }
        return true
    }

    /// Stops the server if this process started it.
    public func stop() async {
        let (shouldStop, binaries) = lock.withLock { () -> (Bool, String?) in
            defer { startedByUs = false }
            return (startedByUs, binDirectory)
        }
        guard shouldStop, let binaries, let runAs = try? RunAs.resolve(osUser: configuration.osUser) else { return }
        _ = try? await ProcessRunner.run(runAs.executable, runAs.arguments(binaries + "/pg_ctl", ["stop", "-D", dataDirectory, "-m", "fast", "-w"]))
        try? FileManager.default.removeItem(atPath: markerPath)
        logger.info("stopped the embedded PostgreSQL", metadata: ["data_dir": "\(dataDirectory)"])
    }

    /// Runs until graceful shutdown, then stops the server (after the services listed after it are done).
    /// Meanwhile supervises it: a postmaster that died is started again within a few seconds, so the service
    /// heals (503s meanwhile) instead of waiting for someone to restart it.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(2))
                if Task.isCancelled { break }
                do { try await self.superviseOnce() } catch { self.logger.error("\(error)") }
            }
        }
        await stop()
    }

    private func initialise(binaries: String, runAs: RunAs) async throws {
        logger.info("initialising the embedded PostgreSQL", metadata: ["data_dir": "\(dataDirectory)"])
        let fileManager = FileManager.default
        if !fileManager.fileExists(atPath: dataDirectory) {
            try fileManager.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        if let owner = runAs.ownerIDs {
            guard chown(dataDirectory, owner.uid, owner.gid) == 0 else {
                throw EmbeddedPostgresError("cannot give \(dataDirectory) to the OS user \(configuration.osUser): \(String(cString: strerror(errno)))")
            }
        }
        try checkOwnership(runAs: runAs)
        let output = try await ProcessRunner.run(
            runAs.executable,
            runAs.arguments(binaries + "/initdb", [
                "-D", dataDirectory, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions",
            ])
        )
        guard output.status == 0 else {
            throw EmbeddedPostgresError("initdb failed for \(dataDirectory):\n\(output.text)")
        }
        var settings = [
            "listen_addresses": "''",
            "unix_socket_directories": "'\(socketDirectory)'",
            "unix_socket_permissions": "0700",
            "port": "\(configuration.port)",
        ]
        settings.merge(configuration.settings) { _, new in new }
        let lines = settings.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value)" }.joined(separator: "\n")
        let confPath = dataDirectory + "/postgresql.conf"
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: confPath))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data("\n# Written by locality (embedded PostgreSQL)\n\(lines)\n".utf8))
        try handle.close()
    }

    private func checkOwnership(runAs: RunAs) throws {
        var info = stat()
        guard stat(dataDirectory, &info) == 0 else {
            throw EmbeddedPostgresError("cannot read \(dataDirectory): \(String(cString: strerror(errno)))")
        }
        let expected = runAs.ownerIDs?.uid ?? getuid()
        guard info.st_uid == expected else {
            let ownerName = getpwuid(info.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(info.st_uid)"
            let expectedName = getpwuid(expected).map { String(cString: $0.pointee.pw_name) } ?? "uid \(expected)"
            throw EmbeddedPostgresError("the data directory \(dataDirectory) belongs to \(ownerName), but PostgreSQL runs as \(expectedName); run as that user, chown -R \(expectedName) \(dataDirectory), or choose another --data-dir")
        }
    }

    private func isRunning(binaries: String, runAs: RunAs) async throws -> Bool {
        let output = try await ProcessRunner.run(runAs.executable, runAs.arguments(binaries + "/pg_ctl", ["status", "-D", dataDirectory]))
        return output.status == 0
    }
}

/// How to run the server binaries: directly, or — as root, which initdb refuses — as the unprivileged OS user.
struct RunAs {
    let user: String?
    let ownerIDs: (uid: uid_t, gid: gid_t)?

    static func resolve(osUser: String) throws -> RunAs {
        guard getuid() == 0 else { return RunAs(user: nil, ownerIDs: nil) }
        guard let entry = getpwnam(osUser) else {
            throw EmbeddedPostgresError("running as root, PostgreSQL must run as an unprivileged OS user, but \"\(osUser)\" does not exist; create it (useradd --system \(osUser)) or set --postgres-os-user")
        }
        return RunAs(user: osUser, ownerIDs: (entry.pointee.pw_uid, entry.pointee.pw_gid))
    }

    var executable: String {
        guard user != nil else { return "/usr/bin/env" }
        return ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].first(where: FileManager.default.isExecutableFile(atPath:)) ?? "/usr/sbin/runuser"
    }

    func arguments(_ program: String, _ arguments: [String]) -> [String] {
        guard let user else { return [program] + arguments }
        return ["-u", user, "--", program] + arguments
    }
}

/// An exclusive `flock` on a file, taken on a thread of its own because waiting for it blocks.
struct FileLock: @unchecked Sendable {
    let descriptor: Int32

    static func acquire(path: String) async throws -> FileLock {
        let descriptor = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw EmbeddedPostgresError("cannot open the lock file \(path): \(String(cString: strerror(errno)))")
        }
        let result: Int32 = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(returning: flock(descriptor, LOCK_EX))
            }
        }
        guard result == 0 else {
            close(descriptor)
            throw EmbeddedPostgresError("cannot lock \(path): \(String(cString: strerror(errno)))")
        }
        return FileLock(descriptor: descriptor)
    }

    func release() {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}
