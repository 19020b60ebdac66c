import EmbeddedPostgres
import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import Logging
import NIOCore
import PostgresTestSupport
import Testing

/// deploy/README.md's backup and restore, step by step, with the real pg_dump and pg_restore: a backup taken as
/// the owner role (no superuser), restored into a new cluster where a superuser only created the roles and an
/// empty database, serves what the original served and verifies.
@Suite("Backup and restore")
struct BackupRestoreTests {
    @Test func aDumpAsTheOwnerRestoresIntoAFreshClusterThatServesTheSameAndVerifies() async throws {
        let world = try await World.make()
        let reads = matrix(world).filter { !$0.value.mutates && $0.value.path.hasPrefix("/v1/") }.sorted { $0.key < $1.key }
            .map { (operation: $0.key, path: $0.value.path, headers: $0.value.headers) }
        #expect(reads.count > 20)
        /// Every read of the role matrix, as each of A's roles: status and body.
        func serve(_ configuration: AppConfiguration) async throws -> [String: String] {
            let app = try await buildApplication(configuration)
            return try await app.test(.live) { client in
                var answers: [String: String] = [:]
                for read in reads {
                    for role in everyRole {
                        let response = try await client.call(.get, read.path, token: world.token(role, of: world.a), headers: read.headers)
                        // Each answer carries its own request id, and a token's last use moves as these reads use
                        // it; the rest must be the same.
                        let body = String(buffer: response.body)
                            .replacingOccurrences(of: #""(request_id|last_used_at)":"[^"]*""#, with: "", options: .regularExpression)
                        answers["\(read.operation) as \(role.rawValue)"] = "\(response.status.code) \(body)"
                    }
                }
                return answers
            }
        }
        let original = try await serve(testConfiguration(world.database))
        #expect(original.values.filter { $0.hasPrefix("200 ") }.count > 40)
        let originalContent = try await tableDigests(world.database.superuserConninfo)
        let originalAudit = try await verifyAudit(world.database.ownerConninfo)
        #expect(originalAudit.count == 5 && originalAudit.allSatisfy(\.isIntact), "two authorities' chains and three suppliers'")
        #expect(originalAudit.map(\.events).reduce(0, +) > 30)

        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("locality-restore-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The client programs of the server the tests run (PATH may hold only links to initdb, pg_ctl, postgres).
        let binaries = URL(fileURLWithPath: try await EmbeddedPostgres.locateBinaries() + "/postgres")
            .resolvingSymlinksInPath().deletingLastPathComponent().path
        let dumpFile = directory + "/locality.dump"

        // 1. Back up as the owner, asking for the backup view (PGOPTIONS, as the README says).
        let dump = try await ProcessRunner.run("/usr/bin/env", [
            "PGOPTIONS=-c app.backup=on", binaries + "/pg_dump", "--format=custom", "--enable-row-security",
            "--file=" + dumpFile, "--dbname=" + world.database.ownerConninfo,
        ])
        #expect(dump.status == 0, "pg_dump as the owner: \(dump.text)")
        // Without the opt-in the owner's dump is refused rather than silently partial.
        let partial = try await ProcessRunner.run(binaries + "/pg_dump", [
            "--format=custom", "--file=" + directory + "/refused.dump", "--dbname=" + world.database.ownerConninfo,
        ])
        #expect(partial.status != 0 && partial.text.contains("row-level security"), "\(partial.text)")

        // 2. A new cluster; as its superuser, once: the two roles and an empty database owned by the owner.
        var logger = Logger(label: "restored-cluster")
        logger.logLevel = .warning
        let cluster = EmbeddedPostgres(
            configuration: .init(dataDirectory: directory + "/pg", settings: ["fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"]),
            logger: logger)
        try await cluster.start()
        do {
            try await DatabaseRoles.ensure(superuserConninfo: cluster.conninfo())
            let owner = cluster.conninfo(user: DatabaseRoles.owner, database: DatabaseRoles.database)
            let application = cluster.conninfo(user: DatabaseRoles.application, database: DatabaseRoles.database)

            // 3. As the owner: restore, then take TEMPORARY from PUBLIC (a new database has it, a dump does not
            //    carry database privileges, and the service refuses to start until it is gone).
            let restore = try await ProcessRunner.run(binaries + "/pg_restore", [
                "--exit-on-error", "--single-transaction", "--dbname=" + owner, dumpFile,
            ])
            #expect(restore.status == 0, "pg_restore as the owner: \(restore.text)")
            await #expect(throws: StartupError.self) {
                try await DatabaseRoles.checkApplicationRole(conninfo: application, ownerConninfo: owner)
            }
            try await PGConnection.withConnection(.init(conninfo: owner, applicationName: "t")) {
                try await $0.execute("REVOKE TEMPORARY ON DATABASE \(quoteIdentifier(DatabaseRoles.database)) FROM PUBLIC")
            }

            // Every row of every table came back, unchanged.
            let restoredContent = try await tableDigests(cluster.conninfo(database: DatabaseRoles.database))
            #expect(restoredContent.count == originalContent.count)
            for (table, digest) in originalContent {
                #expect(restoredContent[table] == digest, "\(table) differs after the restore")
            }

            // 4. The service starts on it (migrations current, role checks pass) and answers as before.
            var configuration = testConfiguration(world.database)
            configuration.database = DatabaseSettings(databaseURL: application, ownerDatabaseURL: owner)
            let restored = try await serve(configuration)
            #expect(restored.count == original.count)
            for (key, answer) in original.sorted(by: { $0.key < $1.key }) {
                #expect(restored[key] == answer, "\(key) differs on the restored database")
            }

            // 5. `audit verify` and the ledger invariant hold on the restored database.
            let audit = try await verifyAudit(owner)
            #expect(audit == originalAudit)
            let ledger = try await verifyLedger(owner)
            #expect(ledger.isBalanced, "\(ledger.problems)")
            #expect(ledger == (try await verifyLedger(world.database.ownerConninfo)))
            #expect(ledger.authorities == 2 && ledger.envelopes >= 8)
        } catch {
            await cluster.stop()
            throw error
        }
        await cluster.stop()
    }

    /// A digest of each table's rows (sorted text), read as the superuser.
    func tableDigests(_ conninfo: String) async throws -> [String: String] {
        try await PGConnection.withConnection(.init(conninfo: conninfo, applicationName: "t")) { connection in
            let tables = try await connection.query("""
                SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
            var digests: [String: String] = [:]
            for table in tables {
                let relation = "public." + quoteIdentifier(table)
                digests[table] = try await connection.query("""
                    SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM \(unsafeSQL: relation) t
                    """).first!.decode(String.self, at: 0)
            }
            return digests
        }
    }

    func verifyAudit(_ ownerConninfo: String) async throws -> [AuditChainReport] {
        try await withOwnerPool(ownerConninfo) { try await AuditService(database: $0).verify() }
    }

    func verifyLedger(_ ownerConninfo: String) async throws -> LedgerReport {
        try await withOwnerPool(ownerConninfo) { try await LedgerVerifier(database: $0).verify() }
    }

    func withOwnerPool<R: Sendable>(_ conninfo: String, _ body: (ScopedDatabase) async throws -> R) async throws -> R {
        var logger = Logger(label: "owner-pool")
        logger.logLevel = .warning
        let pool = PGPool(configuration: .init(connection: .init(conninfo: conninfo, applicationName: "t"), maxConnections: 2), logger: logger)
        do {
            let result = try await body(ScopedDatabase(pool: pool))
            await pool.close()
            return result
        } catch {
            await pool.close()
            throw error
        }
    }
}
