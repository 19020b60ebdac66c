import Foundation
import LocalityPostgres
import PostgresTestSupport
import Testing

/// `locality-admin ledger verify` (issue 12): one OK line and exit 0 when the books are right; a non-zero
/// exit naming the first broken envelope when a balance no longer equals its ledger.
@Suite("Admin CLI: ledger verify")
struct LedgerVerifyCLITests {
    /// Pins: the command exists, passes a consistent ledger, and names a tampered envelope.
    @Test func ledgerVerifyPassesConsistentBooksAndNamesABrokenEnvelope() async throws {
        let db = try await TestDatabase.migrated()
        try expectSuccess(await AdminCLI.run(["authority", "create", "--slug", "test-la", "--name", "Test Local Authority"], database: db))
        try expectSuccess(await AdminCLI.run([
            "board", "create", "--authority", "test-la", "--name", "Craven", "--short-code", "CRA",
        ], database: db))
        try expectSuccess(await AdminCLI.run([
            "budget", "allocate", "--authority", "test-la", "--board", "cra", "--year", "2025-26", "--stream", "locality",
            "--amount", "1000", "--reason", "2025-26 locality budget",
        ], database: db))

        let intact = try expectSuccess(await AdminCLI.run(["ledger", "verify"], database: db))
        #expect(intact.stdoutLines == ["ledger OK: 1 authorities, 1 envelopes, 0 contracts"], "\(intact)")

        // The balance drifts from its ledger (only a superuser can write it directly).
        let board = try await PGConnection.withConnection(.init(conninfo: db.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("UPDATE budget_balance SET committed_pence = committed_pence + 1 RETURNING board_id")
                .first!.decode(UUID.self, at: 0)
        }
        let broken = try await AdminCLI.run(["ledger", "verify", "--authority", "test-la"], database: db)
        #expect(broken.status != 0, "\(broken)")
        #expect(broken.stdoutLines.first?.hasPrefix("BROKEN envelope test-la/\(board.uuidString.lowercased())/2025-26/") == true, "\(broken)")
        #expect(broken.stdout.contains("committed 1"), "\(broken)")
    }
}
