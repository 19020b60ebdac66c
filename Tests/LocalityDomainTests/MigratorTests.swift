import Foundation
import LocalityDomain
import LocalityPostgres
import Logging
import PostgresTestSupport
import Testing

@Suite("Migrations")
struct MigratorTests {
    let logger: Logger = {
        var logger = Logger(label: "migrator-test")
        logger.logLevel = .warning
        return logger
    }()

    func migrationsDirectory(_ files: [String: String]) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("locality-migrations-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        for (name, sql) in files {
            try sql.write(to: url.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        return url
    }

    @Test func theRepositoryMigrationsApplyAndReRunningChangesNothing() async throws {
        let database = try await TestDatabase.empty()
        let migrator = Migrator(migrations: try Migration.load(from: Migration.defaultDirectory()), logger: logger)
        let first = try await migrator.apply(ownerConninfo: database.ownerConninfo)
        #expect(first.count == migrator.migrations.count)
        #expect(!first.isEmpty)
        let second = try await migrator.apply(ownerConninfo: database.ownerConninfo)
        #expect(second.isEmpty)
        let status = try await migrator.status(ownerConninfo: database.ownerConninfo)
        #expect(status.allSatisfy { $0.state == .applied })
    }

    @Test func statusListsPendingBeforeApplying() async throws {
        let database = try await TestDatabase.empty()
        let directory = try migrationsDirectory(["0001_one.sql": "CREATE TABLE one (id int);", "0002_two.sql": "CREATE TABLE two (id int);"])
        defer { try? FileManager.default.removeItem(at: directory) }
        let migrator = Migrator(migrations: try Migration.load(from: directory), logger: logger)
        #expect(try await migrator.status(ownerConninfo: database.ownerConninfo).map(\.state) == [.pending, .pending])
        try await migrator.apply(ownerConninfo: database.ownerConninfo)
        #expect(try await migrator.status(ownerConninfo: database.ownerConninfo).map(\.state) == [.applied, .applied])
    }

    @Test func anEditedAppliedFileIsRefusedByName() async throws {
        let database = try await TestDatabase.empty()
        let directory = try migrationsDirectory(["0001_boards.sql": "CREATE TABLE board (id int);"])
        defer { try? FileManager.default.removeItem(at: directory) }
        try await Migrator(migrations: try Migration.load(from: directory), logger: logger).apply(ownerConninfo: database.ownerConninfo)
        try "CREATE TABLE board (id bigint);".write(to: directory.appendingPathComponent("0001_boards.sql"), atomically: true, encoding: .utf8)
        let edited = Migrator(migrations: try Migration.load(from: directory), logger: logger)
        do {
            try await edited.apply(ownerConninfo: database.ownerConninfo)
            Issue.record("an edited migration must be refused")
        } catch let error as MigrationError {
            #expect(error.description.contains("0001_boards.sql"))
            #expect(error.description.contains("edited"))
        }
        #expect(try await edited.status(ownerConninfo: database.ownerConninfo).map(\.state) == [.edited])
    }

    @Test func aFailingMigrationLeavesNothingBehind() async throws {
        let database = try await TestDatabase.empty()
        let directory = try migrationsDirectory([
            "0001_ok.sql": "CREATE TABLE ok (id int);",
            "0002_broken.sql": "CREATE TABLE half (id int); SELECT no_such_function();",
        ])
        defer { try? FileManager.default.removeItem(at: directory) }
        let migrator = Migrator(migrations: try Migration.load(from: directory), logger: logger)
        await #expect(throws: MigrationError.self) { try await migrator.apply(ownerConninfo: database.ownerConninfo) }
        let states = try await migrator.status(ownerConninfo: database.ownerConninfo).map(\.state)
        #expect(states == [.applied, .pending])
        let half = try await PGConnection.withConnection(.init(conninfo: database.ownerConninfo)) { connection in
            try await connection.query("SELECT to_regclass('half') IS NULL").first!.decode(Bool.self, at: 0)
        }
        #expect(half)
    }

    @Test func concurrentAppliersApplyEachMigrationOnce() async throws {
        let database = try await TestDatabase.empty()
        // Not idempotent on purpose: a second run of 0001 would fail with "already exists".
        let directory = try migrationsDirectory([
            "0001_first.sql": "CREATE TABLE first (id int); SELECT pg_sleep(0.2);",
            "0002_second.sql": "CREATE TABLE second (id int);",
        ])
        defer { try? FileManager.default.removeItem(at: directory) }
        let migrator = Migrator(migrations: try Migration.load(from: directory), logger: logger)
        let results = try await withThrowingTaskGroup(of: [Migration].self) { group in
            for _ in 0..<3 { group.addTask { try await migrator.apply(ownerConninfo: database.ownerConninfo) } }
            return try await group.reduce(into: [[Migration]]()) { $0.append($1) }
        }
        #expect(results.map(\.count).sorted() == [0, 0, 2])
        let recorded = try await PGConnection.withConnection(.init(conninfo: database.ownerConninfo)) { connection in
            try await connection.query("SELECT count(*) FROM schema_migrations").first!.decode(Int.self, at: 0)
        }
        #expect(recorded == 2)
    }

    @Test func badlyNamedFilesAreRefused() throws {
        let directory = try migrationsDirectory(["1_oops.sql": "SELECT 1;"])
        defer { try? FileManager.default.removeItem(at: directory) }
        #expect(throws: MigrationError.self) { try Migration.load(from: directory) }
    }

    @Test func theApplicationRoleOwnsNothingAndCannotBypassRowLevelSecurity() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo)) { connection in
            let role = try await connection.query(
                "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = \(DatabaseRoles.application)"
            ).first!
            #expect(try role.decode(Bool.self, Bool.self, Bool.self, Bool.self) == (false, false, false, false))
            let owned = try await connection.query(
                "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = \(DatabaseRoles.application)"
            ).first!.decode(Int.self, at: 0)
            #expect(owned == 0)
        }
        // And it cannot create tables in the schema.
        await #expect(throws: PGError.self) {
            try await PGConnection.withConnection(.init(conninfo: database.applicationConninfo)) { connection in
                try await connection.execute("CREATE TABLE sneaky (id int)")
            }
        }
    }
}
