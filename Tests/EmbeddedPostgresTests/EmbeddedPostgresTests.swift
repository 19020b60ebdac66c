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
