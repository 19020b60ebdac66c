import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

@Suite("Budget ledger and audit chain")
struct LedgerAndAuditTests {
    /// 100 earmarks race for a budget that affords 66 of them: exactly 66 succeed, the rest are refused with
    /// a problem, and the maintained balance equals the ledger's sum.
    @Test func racingEarmarksNeverOverspend() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 8
        configuration.acquireTimeout = .seconds(30)
        let app = try await buildApplication(configuration)
        // boards[1]: no projects have earmarked anything there.
        let board = lower(world.a.boards[1].id)
        let allocated = 10_000_001   // fixture allocation for boards[1]
        let earmark = 150_000
        try await app.test(.live) { client in
            // One connection per request (see `OwnConnection`): otherwise they are answered one at a time.
            let statuses = try await concurrently(100, on: client) { index, connection in
                try await connection.call(.post, "/v1/boards/\(board)/ledger", token: world.token(.authorityAdmin, of: world.a), body: [
                    "financial_year": "2025-26", "funding_stream": "locality", "kind": "earmark",
                    "amount_pence": earmark, "reference": "race:\(index)", "reason": "race",
                ])
            }.map { ($0.status, ($0.body["type"] as? String) ?? "") }
            #expect(statuses.count == 100)
            #expect(statuses.filter { $0.0 == 201 }.count == allocated / earmark, "\(statuses.prefix(3))")
            let refused = statuses.filter { $0.0 != 201 }
            #expect(refused.count == 100 - allocated / earmark)
            #expect(refused.allSatisfy { $0.0 == 409 && $0.1 == "/problems/insufficient-funds" }, "\(Set(refused.map { "\($0.0) \($0.1)" }))")

            let budget = try await client.call(.get, "/v1/boards/\(board)/budgets/2025-26", token: world.token(.authorityAdmin, of: world.a))
            let locality = (budget.jsonObject["streams"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "locality" }
            #expect(locality?["earmarked_pence"] as? Int == (allocated / earmark) * earmark)
            #expect(locality?["available_pence"] as? Int == allocated - (allocated / earmark) * earmark)
        }
        try await assertLedgerInvariant(world.database)
        // The maintained balance never drifts from the ledger.
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            let drift = try await connection.query("""
                SELECT count(*) FROM budget_balance b
                WHERE ROW(b.allocated_pence, b.earmarked_pence, b.committed_pence, b.spent_pence) IS DISTINCT FROM (
                    SELECT ROW(coalesce(sum(amount_pence) FILTER (WHERE kind = 'allocation'), 0)::bigint,
                           (coalesce(sum(amount_pence) FILTER (WHERE kind = 'earmark'), 0) - coalesce(sum(amount_pence) FILTER (WHERE kind = 'release'), 0))::bigint,
                           coalesce(sum(amount_pence) FILTER (WHERE kind = 'commitment'), 0)::bigint,
                           coalesce(sum(amount_pence) FILTER (WHERE kind = 'spend'), 0)::bigint)
                    FROM budget_ledger l WHERE l.authority_id = b.authority_id AND l.board_id = b.board_id
                      AND l.financial_year = b.financial_year AND l.funding_stream_id = b.funding_stream_id)
                """).first!.decode(Int.self, at: 0)
            #expect(drift == 0)
        }
    }

    @Test func releasesCannotExceedEarmarksAndBadEntriesAreRefusedWithFieldErrors() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let path = "/v1/boards/\(lower(world.a.boards[1].id))/ledger"
        let admin = world.token(.authorityAdmin, of: world.a)
        try await app.test(.live) { client in
            let release = try await client.call(.post, path, token: admin, body: [
                "financial_year": "2025-26", "funding_stream": "locality", "kind": "release", "amount_pence": 1, "reason": "nothing held",
            ])
            #expect(release.status == .conflict)
            let bad = try await client.call(.post, path, token: admin, body: [
                "financial_year": "2025-27", "funding_stream": "nonsense", "kind": "allocation", "amount_pence": -5, "reason": "",
            ])
            #expect(bad.status == .unprocessableContent)
            let fields = Set((bad.jsonObject["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String })
            #expect(fields.isSuperset(of: ["financial_year", "amount_pence", "reason"]))
            let commitment = try await client.call(.post, path, token: admin, body: [
                "financial_year": "2025-26", "funding_stream": "locality", "kind": "commitment", "amount_pence": 5, "reason": "direct",
            ])
            #expect(commitment.status == .unprocessableContent)
            let unknownField = try await client.call(.post, path, token: admin, body: [
                "financial_year": "2025-26", "funding_stream": "locality", "kind": "allocation", "amount_pence": 5, "reason": "x", "approved": true,
            ])
            #expect(unknownField.status == .unprocessableContent)
            let notJSON = try await client.execute(uri: path, method: .post, headers: [.authorization: "Bearer \(admin)", .contentType: "application/json"],
                                                   body: ByteBuffer(string: "{not json"))
            #expect(notJSON.status == .badRequest)
            let ledger = try await client.call(.get, path + "?financial_year=2025-26", token: admin)
            #expect(ledger.items.count == 2, "only the fixture's two allocations: nothing was written by the refusals")
        }
    }

    @Test func auditEventsAreListedFilteredAndPaginated() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let admin = world.token(.authorityAdmin, of: world.a)
        try await app.test(.live) { client in
            let created = try await client.call(.post, "/v1/boards", token: admin, body: ["name": "Audited board", "short_code": "AUD"],
                                                headers: [HTTPField.Name("X-Request-Id")!: "req-audit-1"])
            #expect(created.status == .created)
            let id = created.jsonObject["id"] as! String
            let filtered = try await client.call(.get, "/v1/audit-events?entity_type=board&entity_id=\(id)", token: admin)
            #expect(filtered.items.count == 1)
            let event = filtered.items.first ?? [:]
            #expect(event["action"] as? String == "board.create")
            #expect(event["actor"] as? String == "user:\(lower(world.a.users[.authorityAdmin]!.id))")
            #expect(event["request_id"] as? String == "req-audit-1")
            #expect(event["before"] == nil || event["before"] is NSNull)
            #expect((event["after"] as? [String: Any])?["name"] as? String == "Audited board")

            var seen: [Int] = []
            var cursor: String?
            repeat {
                let page = try await client.call(.get, "/v1/audit-events?limit=7" + (cursor.map { "&cursor=\($0)" } ?? ""), token: world.token(.auditor, of: world.a))
                #expect(page.status == .ok)
                seen += page.items.compactMap { $0["seq"] as? Int }
                cursor = page.jsonObject["next_cursor"] as? String
            } while cursor != nil
            let total = try await auditCount(world.database, authority: world.a.authority.id)
            #expect(seen == Array((1...total).reversed()))
            let byCLI = try await client.call(.get, "/v1/audit-events?actor=cli:test&limit=200", token: admin)
            #expect(!byCLI.items.isEmpty && byCLI.items.allSatisfy { $0["actor"] as? String == "cli:test" })
            let bad = try await client.call(.get, "/v1/audit-events?cursor=garbage!", token: admin)
            #expect(bad.status == .unprocessableContent)
        }
    }

    /// Concurrent writers queue on the chain head: the chain stays one unbroken line.
    @Test func concurrentChangesDoNotForkTheChain() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<30 {
                    group.addTask {
                        let response = try await client.call(.post, "/v1/boards", token: world.token(.authorityAdmin, of: world.a),
                                                             body: ["name": "Concurrent \(index)", "short_code": "C\(index)X"])
                        #expect(response.status == .created)
                    }
                }
                try await group.waitForAll()
            }
        }
        try await world.database.withPool(conninfo: world.database.ownerConninfo) { pool in
            let reports = try await AuditService(database: ScopedDatabase(pool: pool)).verify()
            #expect(reports.count == 5)   // A, B and the three suppliers
            #expect(reports.allSatisfy { $0.isIntact }, "\(reports)")
        }
    }

    /// Editing, deleting or reordering events (as a superuser who disabled the guard trigger) is reported
    /// at the first bad event.
    @Test(arguments: ["edit", "delete", "reorder", "truncate-end"])
    func tamperingIsDetected(_ tampering: String) async throws {
        let world = try await World.make()
        let a = world.a.authority.id
        let sql: String = switch tampering {
        case "edit": "UPDATE audit_event SET after = jsonb_set(after, '{name}', '\"Forged\"') WHERE chain_id = '\(a)' AND seq = 5"
        case "delete": "DELETE FROM audit_event WHERE chain_id = '\(a)' AND seq = 5"
        case "reorder": "UPDATE audit_event SET seq = CASE seq WHEN 5 THEN 6 ELSE 5 END WHERE chain_id = '\(a)' AND seq IN (5, 6)"
        default: "DELETE FROM audit_event WHERE chain_id = '\(a)' AND seq = (SELECT max(seq) FROM audit_event WHERE chain_id = '\(a)')"
        }
        try await world.database.withPool(conninfo: world.database.ownerConninfo) { pool in
            let intact = try await AuditService(database: ScopedDatabase(pool: pool)).verify(chainIDs: [a])
            #expect(intact.first?.isIntact == true)
        }
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.execute("""
                ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only;
                ALTER TABLE audit_event DROP CONSTRAINT audit_event_pkey;
                \(sql);
                ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only;
                """)
        }
        try await world.database.withPool(conninfo: world.database.ownerConninfo) { pool in
            let reports = try await AuditService(database: ScopedDatabase(pool: pool)).verify()
            let report = try #require(reports.first { $0.chainID == a })
            #expect(!report.isIntact)
            if tampering == "truncate-end" {
                #expect(report.firstBadSeq == report.events + 1)
            } else {
                #expect(report.firstBadSeq == 5, "\(report)")
            }
            #expect(reports.filter { $0.chainID != a }.allSatisfy { $0.isIntact })
        }
    }

    /// The audit write is part of the change: when it fails, the change is not made.
    @Test func aFailedAuditWriteFailsTheChange() async throws {
        let world = try await World.make()
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.execute("REVOKE EXECUTE ON FUNCTION append_audit_event(text, text, text, jsonb, jsonb) FROM locality_app")
        }
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let response = try await client.call(.post, "/v1/boards", token: world.token(.authorityAdmin, of: world.a),
                                                 body: ["name": "Unaudited", "short_code": "UNA"])
            #expect(response.status == .internalServerError)
            #expect(!String(buffer: response.body).contains("append_audit_event"), "500s do not leak SQL")
            let list = try await client.call(.get, "/v1/boards", token: world.token(.authorityAdmin, of: world.a))
            #expect(!list.items.contains { $0["name"] as? String == "Unaudited" })
        }
    }
}
