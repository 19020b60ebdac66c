import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Issue 12, finding 2: a supplier could change an agreed KPI by racing the start.
@Suite("KPI negotiation under concurrency")
struct NegotiationRaceTests {
    /// Pins: five starts racing five supplier revisions never leave an active contract whose latest KPI
    /// revision is not agreed by both parties (on main the revisions checked the status before the lock and
    /// landed on the started contract). Every request is answered 200 or 409, never 500.
    @Test func startsRacingRevisionsNeverStartAnUnagreedContract() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 10
        let app = try await buildApplication(configuration)
        let contract = "/v1/contracts/\(lower(world.market.agreed))"
        let kpiID = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("SELECT id FROM contract_kpi WHERE contract_id = \(world.market.agreed)").first!.decode(UUID.self, at: 0)
        }
        @Sendable func definition() -> [String: Any] { [
            "title": "Staff trained", "measure": "Staff completing the course", "unit": "count", "baseline": 0, "target": 20,
            "target_date": "2026-07-31", "frequency": "termly", "evidence_source": "Registers",
        ] }
        let lim = world.token(.lim, of: world.a)
        let supplier = world.supplierToken
        try await app.test(.live) { client in
            let results = try await concurrently(10, on: client) { index, connection in
                if index % 2 == 0 { return try await connection.call(.post, "\(contract)/start", token: lim) }
                return try await connection.call(.post, "\(contract)/kpis/\(lower(kpiID))/revisions", token: supplier,
                                                 body: ["definition": definition(), "reason": "Lower target"])
            }
            #expect(results.allSatisfy { $0.status == 200 || $0.status == 409 }, "\(results.map(\.status))")
            let after = try await client.call(.get, contract, token: lim).jsonObject
            let kpis = after["kpis"] as? [[String: Any]] ?? []
            switch after["status"] as? String {
            case "active":
                #expect(kpis.allSatisfy { $0["agreed"] as? Bool == true }, "started with an unagreed KPI: \(kpis)")
            case "kpi_negotiation":
                #expect(results.filter { $0.status == 200 && $0.body["status"] as? String == "active" }.isEmpty)
            default:
                Issue.record("unexpected status \(after["status"] ?? "nil")")
            }
            // Once started, a revision is refused with its own problem type.
            if after["status"] as? String == "active" {
                let late = try await client.call(.post, "\(contract)/kpis/\(lower(kpiID))/revisions", token: supplier,
                                                 body: ["definition": definition(), "reason": "Too late"])
                #expect(late.status == .conflict)
                #expect(late.jsonObject["type"] as? String == "/problems/negotiation-closed", "\(late.jsonObject)")
            }
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Pins: the database itself refuses KPI revisions and acceptances on a contract that is not in
    /// negotiation, even for a writer that bypasses row-level security (here the superuser), while the same
    /// write on a negotiating contract goes through.
    @Test func theDatabaseRefusesKPIWritesOutsideNegotiation() async throws {
        let world = try await World.make()
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            func revision(_ kpi: UUID) -> PGQuery {
                """
                INSERT INTO kpi_revision (authority_id, kpi_id, revision, proposed_by, actor, definition, reason)
                SELECT authority_id, id, 99, 'supplier', 'test', '{}', 'sneaky' FROM contract_kpi WHERE id = \(kpi)
                """
            }
            do {
                try await connection.query(revision(world.market.activeKPI))
                Issue.record("a revision on an active contract was accepted")
            } catch let error as PGError {
                #expect(error.constraint == "kpi_negotiation_closed", "\(error)")
            }
            do {
                try await connection.query("""
                    INSERT INTO kpi_acceptance (authority_id, revision_id, party, actor)
                    SELECT authority_id, id, 'board', 'test' FROM kpi_revision WHERE kpi_id = \(world.market.activeKPI) AND revision = 1
                    """)
                Issue.record("an acceptance on an active contract was accepted")
            } catch let error as PGError {
                #expect(error.constraint == "kpi_negotiation_closed", "\(error)")
            }
            // In negotiation, the same write is fine.
            try await connection.query(revision(world.market.negotiatingKPI))
        }
    }
}
