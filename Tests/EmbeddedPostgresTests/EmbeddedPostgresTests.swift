import EmbeddedPostgres
import Foundation
import LocalityPostgres
import Logging
import Testing

@Suite("Embedded PostgreSQL")
struct EmbeddedPostgresTests {
    let logger: Logger = {
        var logger = Logger(label: "embedded-test")
        logger.logLevel = .warning
        return logger
    }()

    func scratchDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("locality-embedded-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func firstStartInitialisesAndASecondStartReusesTheCluster() async throws {
        let root = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = EmbeddedPostgresConfiguration(dataDirectory: root + "/pg", settings: ["fsync": "off"])

        let first = EmbeddedPostgres(configuration: configuration, logger: logger)
        try await first.start()
        #expect(FileManager.default.fileExists(atPath: root + "/pg/PG_VERSION"))
        // Unix socket only: no TCP listener.
        let settings = try await PGConnection.withConnection(.init(conninfo: first.conninfo())) { connection in
            try await connection.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (1)")
            return try await connection.query("SELECT current_setting('listen_addresses')").first!.decode(String.self, at: 0)
        }
        #expect(settings == "")
        await first.stop()

        let initialisedAt = try FileManager.default.attributesOfItem(atPath: root + "/pg/PG_VERSION")[.modificationDate] as? Date
        let second = EmbeddedPostgres(configuration: configuration, logger: logger)
        let start = ContinuousClock.now
        try await second.start()
        let elapsed = ContinuousClock.now - start
        let kept = try await PGConnection.withConnection(.init(conninfo: second.conninfo())) { connection in
            try await connection.query("SELECT count(*) FROM kept").first!.decode(Int.self, at: 0)
        }
        #expect(kept == 1)
        #expect(try FileManager.default.attributesOfItem(atPath: root + "/pg/PG_VERSION")[.modificationDate] as? Date == initialisedAt)
        #expect(elapsed < .seconds(10))
        await second.stop()
    }

    /// What `pg_ctl status` says, as the OS user the cluster runs as.
    func clusterIsRunning(_ directory: String) async throws -> Bool {
        let binaries = try await EmbeddedPostgres.locateBinaries()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: getuid() == 0 ? "/usr/sbin/runuser" : binaries + "/pg_ctl")
        process.arguments = (getuid() == 0 ? ["-u", "postgres", "--", binaries + "/pg_ctl"] : []) + ["status", "-D", directory]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus == 0
    }

    /// A cluster left running by a process that died (kill -9 of the server) is adopted by the next starter and
    /// stopped when that one stops; one whose starter is alive is shared and left to it.
    @Test func anOrphanedClusterIsAdoptedAndStoppedButALiveStartersIsLeftAlone() async throws {
        let root = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = EmbeddedPostgresConfiguration(dataDirectory: root + "/pg", settings: ["fsync": "off"])
        let first = EmbeddedPostgres(configuration: configuration, logger: logger)
        try await first.start()

        // Its starter is alive (this process): a second user shares it and does not stop it.
        let sharer = EmbeddedPostgres(configuration: configuration, logger: logger)
        try await sharer.start()
        await sharer.stop()
        #expect(try await clusterIsRunning(root + "/pg"))

        // Its starter is gone: the next one adopts it.
        let gone = Process()
        gone.executableURL = URL(fileURLWithPath: "/bin/true")
        try gone.run()
        gone.waitUntilExit()
        try "\(gone.processIdentifier)\n".write(toFile: root + "/pg.starter", atomically: true, encoding: .utf8)
        let adopter = EmbeddedPostgres(configuration: configuration, logger: logger)
        try await adopter.start()
        await adopter.stop()
        #expect(try await clusterIsRunning(root + "/pg") == false, "the adopted orphan was stopped")
        await first.stop()
    }

    /// A postmaster that stops behind the service's back is started again by the supervisor.
    @Test func aStoppedPostmasterIsStartedAgainBySupervision() async throws {
        let root = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = EmbeddedPostgresConfiguration(dataDirectory: root + "/pg", settings: ["fsync": "off"])
        let embedded = EmbeddedPostgres(configuration: configuration, logger: logger)
        try await embedded.start()
        #expect(try await embedded.superviseOnce() == false, "nothing to do while it runs")
        let binaries = try await EmbeddedPostgres.locateBinaries()
        let crash = Process()
        crash.executableURL = URL(fileURLWithPath: getuid() == 0 ? "/usr/sbin/runuser" : binaries + "/pg_ctl")
        crash.arguments = (getuid() == 0 ? ["-u", "postgres", "--", binaries + "/pg_ctl"] : []) + ["stop", "-D", root + "/pg", "-m", "immediate", "-w"]
        crash.standardOutput = FileHandle.nullDevice
        try crash.run()
        crash.waitUntilExit()
        #expect(try await clusterIsRunning(root + "/pg") == false)
        #expect(try await embedded.superviseOnce() == true)
        let answer = try await PGConnection.withConnection(.init(conninfo: embedded.conninfo())) { connection in
            try await connection.query("SELECT 1").first!.decode(Int.self, at: 0)
        }
        #expect(answer == 1)
        await embedded.stop()
    }

    @Test func twoStartersAtOnceShareOneHealthyCluster() async throws {
        let root = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = EmbeddedPostgresConfiguration(dataDirectory: root + "/pg", settings: ["fsync": "off"])
        let a = EmbeddedPostgres(configuration: configuration, logger: logger)
        let b = EmbeddedPostgres(configuration: configuration, logger: logger)
        async let startA: Void = a.start()
        async let startB: Void = b.start()
        _ = try await (startA, startB)
        let answer = try await PGConnection.withConnection(.init(conninfo: b.conninfo())) { connection in
            try await connection.query("SELECT 1").first!.decode(Int32.self, at: 0)
        }
        #expect(answer == 1)
        await a.stop()
        await b.stop()
    }

    @Test func missingBinariesGiveOneClearMessage() async throws {
        do {
            _ = try await EmbeddedPostgres.locateBinaries(explicit: "/nonexistent/bin")
            Issue.record("locating binaries in a missing directory should fail")
        } catch let error as EmbeddedPostgresError {
            #expect(error.description.contains("not found in /nonexistent/bin"))
            #expect(error.description.contains("apt-get install postgresql"))
        }
        let root = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cluster = EmbeddedPostgres(configuration: .init(dataDirectory: root + "/pg", binDirectory: root), logger: logger)
        await #expect(throws: EmbeddedPostgresError.self) { try await cluster.start() }
        #expect(!FileManager.default.fileExists(atPath: root + "/pg/PG_VERSION"))
    }

    @Test(.enabled(if: getuid() == 0, "needs root to hand the directory to another user"))
    func aDataDirectoryOwnedBySomeoneElseIsRefused() async throws {
        let root = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let data = root + "/pg"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: data + "/PG_VERSION", contents: Data("15\n".utf8))
        let nobody = getpwnam("nobody")!.pointee
        chown(data, nobody.pw_uid, nobody.pw_gid)
        let cluster = EmbeddedPostgres(configuration: .init(dataDirectory: data), logger: logger)
        do {
            try await cluster.start()
            Issue.record("a foreign data directory should be refused")
        } catch let error as EmbeddedPostgresError {
            #expect(error.description.contains("belongs to nobody"))
            #expect(error.description.contains("--data-dir"))
        }
    }
}
