import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// A second board member of A's first board, with a token, for panels of two.
func secondMember(_ world: World) async throws -> (User, String) {
    try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 1) { pool in
        let scoped = ScopedDatabase(pool: pool)
        let scope = AccessScope.operatorScope(authorityID: world.a.authority.id, osUser: "test")
        let user = try await UserService(database: scoped).create(scope, UserDraft(
            email: "member2@alpha.example", displayName: "Second member", roles: [RoleGrant(role: .boardMember, boardID: world.a.boards[0].id)]))
        let token = try await TokenService(database: scoped).issue(scope, userID: user.id, label: "t", expiresAt: nil).secret
        return (user, token)
    }
}

func latest(_ response: TestResponse) -> [String: Any] {
    ((response.jsonObject["kpis"] as? [[String: Any]])?.first?["revisions"] as? [[String: Any]])?.last ?? [:]
}

func agreed(_ response: TestResponse) -> Bool? { (response.jsonObject["kpis"] as? [[String: Any]])?.first?["agreed"] as? Bool }

var allScores: [[String: Any]] { [
    ["kind": "quality", "criterion": "Approach", "score": 4, "comment": "Clear plan"],
    ["kind": "quality", "criterion": "Outcomes", "score": 3, "comment": "Plausible"],
    ["kind": "social_value", "criterion": "Local benefit", "score": 2, "comment": "Modest"],
] }

@Suite("Evaluation, award and contracts")
struct EvaluationTests {
    /// A member who declares a conflict with a bidder cannot see or score that bid — through the API and
    /// under RLS alone — while a member who declared no conflict can; nobody sees a bid before declaring.
    @Test func conflictsOfInterestHideTheBid() async throws {
        let world = try await World.make()
        let (second, secondToken) = try await secondMember(world)
        let lim = world.token(.lim, of: world.a)
        let member = world.token(.boardMember, of: world.a)
        let project = lower(world.market.closedWithBid)
        let bid = lower(world.market.closedBid)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let panel = try await client.call(.put, "/v1/projects/\(project)/panel", token: lim,
                                              body: ["member_ids": [lower(world.a.users[.boardMember]!.id), lower(second.id)]])
            #expect(panel.status == .ok)
            #expect((panel.jsonObject["members"] as? [[String: Any]])?.count == 2)
            // Before declaring: the names of bidders, nothing of their bids.
            let bidders = try await client.call(.get, "/v1/projects/\(project)/bidders", token: member)
            #expect(bidders.items.map { $0["supplier_name"] as? String } == ["Supplier Ltd"])
            #expect(!String(buffer: bidders.body).contains("price"))
            #expect(try await client.call(.get, "/v1/bids/\(bid)", token: member).status == .notFound)
            // One declares a conflict (a note is required), the other none.
            let noNote = try await client.call(.post, "/v1/projects/\(project)/declarations", token: member,
                                               body: ["supplier_id": lower(world.supplierID), "conflicted": true])
            #expect(noNote.status == .unprocessableContent)
            #expect(try await client.call(.post, "/v1/projects/\(project)/declarations", token: member,
                                          body: ["supplier_id": lower(world.supplierID), "conflicted": true, "note": "My sister runs it"]).status == .created)
            #expect(try await client.call(.post, "/v1/projects/\(project)/declarations", token: member,
                                          body: ["supplier_id": lower(world.supplierID), "conflicted": false]).status == .conflict, "declarations are final")
            #expect(try await client.call(.post, "/v1/projects/\(project)/declarations", token: secondToken,
                                          body: ["supplier_id": lower(world.supplierID), "conflicted": false]).status == .created)
            // The conflicted member: no bid, no scoring, no scores.
            #expect(try await client.call(.get, "/v1/bids/\(bid)", token: member).status == .notFound)
            #expect(try await client.call(.put, "/v1/bids/\(bid)/scores", token: member, body: ["scores": allScores, "submit": false]).status == .notFound)
            #expect(try await client.call(.get, "/v1/projects/\(project)/bids", token: member).items.isEmpty)
            // The other sees and scores it.
            #expect(try await client.call(.get, "/v1/bids/\(bid)", token: secondToken).status == .ok)
            #expect(try await client.call(.put, "/v1/bids/\(bid)/scores", token: secondToken, body: ["scores": allScores, "submit": true]).status == .ok)
            // The declarations are visible to the LIM and audited.
            let declarations = try await client.call(.get, "/v1/projects/\(project)/declarations", token: lim)
            #expect(declarations.items.count == 2)
            let audit = try await client.call(.get, "/v1/audit-events?entity_type=conflict_declaration", token: world.token(.auditor, of: world.a))
            #expect(audit.items.count == 2)
        }
        // Row-level security alone gives the same answer.
        for (userID, expected) in [(world.a.users[.boardMember]!.id, 0), (second.id, 1)] {
            let seen = try await world.database.withPool { pool in
                try await pool.withTransaction { connection in
                    try await ScopedDatabase.setContext(AccessScope(
                        authorityID: world.a.authority.id, userID: userID, roles: [.boardMember], boardIDs: [world.a.boards[0].id],
                        actor: "user:test"), on: connection)
                    return try await connection.query("SELECT count(*) FROM bid WHERE id = \(world.market.closedBid)").first!.decode(Int.self, at: 0)
                }
            }
            #expect(seen == expected)
        }
    }

    /// Members do not see each other's scores until they have submitted their own.
    @Test func scoringIsBlindUntilSubmitted() async throws {
        let world = try await World.make()
        let (second, secondToken) = try await secondMember(world)
        let lim = world.token(.lim, of: world.a)
        let member = world.token(.boardMember, of: world.a)
        let project = lower(world.market.closedWithBid)
        let bid = lower(world.market.closedBid)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            _ = try await client.call(.put, "/v1/projects/\(project)/panel", token: lim,
                                      body: ["member_ids": [lower(world.a.users[.boardMember]!.id), lower(second.id)]])
            for token in [member, secondToken] {
                #expect(try await client.call(.post, "/v1/projects/\(project)/declarations", token: token,
                                              body: ["supplier_id": lower(world.supplierID), "conflicted": false]).status == .created)
            }
            // Incomplete or invalid scorecards are refused.
            let partial = try await client.call(.put, "/v1/bids/\(bid)/scores", token: member, body: ["scores": [allScores[0]], "submit": true])
            #expect(partial.status == .unprocessableContent)
            let outOfRange = try await client.call(.put, "/v1/bids/\(bid)/scores", token: member,
                                                   body: ["scores": [["kind": "quality", "criterion": "Approach", "score": 6, "comment": "x"]], "submit": false])
            #expect(outOfRange.status == .unprocessableContent)
            let noComment = try await client.call(.put, "/v1/bids/\(bid)/scores", token: member,
                                                  body: ["scores": [["kind": "quality", "criterion": "Approach", "score": 3, "comment": " "]], "submit": false])
            #expect(noComment.status == .unprocessableContent)
            let submitted = try await client.call(.put, "/v1/bids/\(bid)/scores", token: member, body: ["scores": allScores, "submit": true])
            #expect(submitted.status == .ok, "\(String(buffer: submitted.body))")
            // The second member, not yet submitted, sees only their own (nothing yet).
            let blind = try await client.call(.get, "/v1/bids/\(bid)/scores", token: secondToken)
            #expect(blind.items.isEmpty)
            #expect(try await client.call(.put, "/v1/bids/\(bid)/scores", token: secondToken, body: ["scores": [allScores[0]], "submit": false]).status == .ok)
            let ownOnly = try await client.call(.get, "/v1/bids/\(bid)/scores", token: secondToken)
            #expect(ownOnly.items.map { $0["user_id"] as? String } == [lower(second.id)])
            #expect(try await client.call(.put, "/v1/bids/\(bid)/scores", token: secondToken, body: ["scores": allScores, "submit": true]).status == .ok)
            let both = try await client.call(.get, "/v1/bids/\(bid)/scores", token: secondToken)
            #expect(both.items.count == 2)
            // Submitted scores are final.
            #expect(try await client.call(.put, "/v1/bids/\(bid)/scores", token: member, body: ["scores": allScores, "submit": false]).status == .conflict)
            // The LIM moderates; the report shows moderated and individual scores and totals to 2 dp.
            for score in allScores {
                var moderated = score
                moderated["comment"] = "Panel consensus"
                #expect(try await client.call(.post, "/v1/bids/\(bid)/moderation", token: lim, body: moderated).status == .ok)
            }
            let report = try await client.call(.get, "/v1/projects/\(project)/evaluation", token: lim)
            let line = (report.jsonObject["lines"] as? [[String: Any]])?.first
            // 90,000 is the only (so lowest) price: 40.00; quality 4/5×30 + 3/5×15 = 33.00; social 2/5×15 = 6.00.
            #expect(line?["price_score"] as? String == "40.00")
            #expect(line?["quality_score"] as? String == "33.00")
            #expect(line?["social_value_score"] as? String == "6.00")
            #expect(line?["total"] as? String == "79.00")
            #expect(line?["rank"] as? Int == 1)
            #expect((line?["individual"] as? [[String: Any]])?.count == 2)
            let csv = try await client.call(.get, "/v1/projects/\(project)/evaluation.csv", token: lim)
            #expect(csv.headers[.contentType]?.hasPrefix("text/csv") == true)
            let text = String(buffer: csv.body)
            #expect(text.hasPrefix("rank,supplier,bid_id,price_pence,compliant,price_score"))
            #expect(text.contains("1,Supplier Ltd,\(bid),90000,yes,40.00,4,3,33.00,2,6.00,79.00"))
        }
    }

    /// Five concurrent awards of the same project: exactly one succeeds; one contract, one commitment.
    @Test func concurrentAwardsYieldExactlyOne() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 6
        let app = try await buildApplication(configuration)
        let project = lower(world.market.closedForAward)
        try await app.test(.live) { client in
            // One connection per request (see `OwnConnection`): otherwise they are answered one at a time.
            let statuses = try await concurrently(5, on: client) { _, connection in
                try await connection.call(.post, "/v1/projects/\(project)/award", token: world.token(.lim, of: world.a),
                                          body: ["bid_id": lower(world.market.awardBid)])
            }.map(\.status)
            #expect(statuses.filter { $0 == 201 }.count == 1)
            #expect(statuses.filter { $0 == 409 }.count == 4)
        }
        try await assertLedgerInvariant(world.database)
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            let contracts = try await connection.query("SELECT count(*) FROM contract WHERE project_id = \(world.market.closedForAward)").first!.decode(Int.self, at: 0)
            #expect(contracts == 1)
            let commitments = try await connection.query("""
                SELECT count(*) FROM budget_ledger WHERE kind = 'commitment' AND reference = 'contract:project:' || \(world.market.closedForAward.uuidString.lowercased())
                """).first!.decode(Int.self, at: 0)
            #expect(commitments == 1)
            let bid = try await connection.query("SELECT status::text FROM bid WHERE id = \(world.market.awardBid)").first!.decode(String.self, at: 0)
            #expect(bid == "awarded")
        }
    }

    /// If the earmark can no longer be released (someone released it), the award is refused and nothing
    /// changes: project, bids, ledger and contracts stay as they were.
    @Test func aRefusedAwardChangesNothing() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let admin = world.token(.authorityAdmin, of: world.a)
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            let budget = try await client.call(.get, "/v1/boards/\(board)/budgets/2025-26", token: admin)
            let earmarked = (budget.jsonObject["streams"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "locality" }?["earmarked_pence"] as? Int ?? 0
            #expect(try await client.call(.post, "/v1/boards/\(board)/ledger", token: admin, body: [
                "financial_year": "2025-26", "funding_stream": "locality", "kind": "release", "amount_pence": earmarked, "reason": "Released everything",
            ]).status == .created)
            let ledgerBefore = try await client.call(.get, "/v1/boards/\(board)/ledger?limit=200", token: admin).items.count
            let refused = try await client.call(.post, "/v1/projects/\(lower(world.market.closedForAward))/award", token: world.token(.lim, of: world.a),
                                                body: ["bid_id": lower(world.market.awardBid)])
            #expect(refused.status == .conflict)
            #expect(try await client.call(.get, "/v1/boards/\(board)/ledger?limit=200", token: admin).items.count == ledgerBefore)
            let project = try await client.call(.get, "/v1/projects/\(lower(world.market.closedForAward))", token: admin)
            #expect(project.jsonObject["status"] as? String == "closed")
            let bid = try await client.call(.get, "/v1/bids/\(lower(world.market.awardBid))", token: world.supplierToken)
            #expect(bid.jsonObject["status"] as? String == "submitted")
            let contracts = try await client.call(.get, "/v1/contracts", token: world.supplierToken)
            #expect(!contracts.items.contains { $0["project_id"] as? String == lower(world.market.closedForAward) })
        }
    }

    @Test func awardRulesAndOutcomesForTheOthers() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let project = lower(world.market.closedForAward)
        try await app.test(.live) { client in
            // Not closed yet: refused.
            #expect(try await client.call(.post, "/v1/projects/\(lower(world.market.openEmpty))/award", token: lim,
                                          body: ["bid_id": lower(world.market.awardBid)]).status == .conflict)
            // A non-compliant bid cannot be awarded.
            #expect(try await client.call(.post, "/v1/bids/\(lower(world.market.awardBid))/compliance", token: lim,
                                          body: ["compliant": false]).status == .unprocessableContent)
            #expect(try await client.call(.post, "/v1/bids/\(lower(world.market.awardBid))/compliance", token: lim,
                                          body: ["compliant": false, "reason": "No insurance evidence"]).status == .ok)
            #expect(try await client.call(.post, "/v1/projects/\(project)/award", token: lim,
                                          body: ["bid_id": lower(world.market.awardBid)]).status == .unprocessableContent)
            #expect(try await client.call(.post, "/v1/bids/\(lower(world.market.awardBid))/compliance", token: lim, body: ["compliant": true]).status == .ok)
            let award = try await client.call(.post, "/v1/projects/\(project)/award", token: lim, body: ["bid_id": lower(world.market.awardBid)])
            #expect(award.status == .created)
            let contract = award.jsonObject
            #expect(contract["status"] as? String == "kpi_negotiation")
            #expect(contract["value_pence"] as? Int == 90_000)
            #expect((contract["kpis"] as? [[String: Any]])?.count == 1)
            #expect((contract["social_value"] as? [[String: Any]])?.first?["proxy_value_pence"] as? Int == 4_250)
            #expect((contract["start_date"] as? String ?? "") >= (contract["standstill_ends_on"] as? String ?? "~"))
            // The earmark is gone and the price committed.
            let ledger = try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))/ledger?limit=200", token: lim)
            let mine = ledger.items.filter { ($0["reference"] as? String)?.hasSuffix(project) == true }
            #expect(mine.compactMap { $0["kind"] as? String }.sorted() == ["commitment", "earmark", "release"])
            let outcome = try await client.call(.get, "/v1/bids/\(lower(world.market.awardBid))", token: world.supplierToken)
            #expect(outcome.jsonObject["status"] as? String == "awarded")
            #expect((outcome.jsonObject["outcome_note"] as? String)?.contains("total") == true)
            // Awarding again is refused.
            #expect(try await client.call(.post, "/v1/projects/\(project)/award", token: lim, body: ["bid_id": lower(world.market.awardBid)]).status == .conflict)
            // The list is encoded in one pass (`PreEncodedBody`: keys in the document's order, so `id` first) and
            // says what the contract's own page says; HEAD gets its length and no body.
            let list = try await client.call(.get, "/v1/contracts?limit=100", token: lim)
            #expect(list.status == .ok)
            #expect(String(buffer: list.body).hasPrefix(#"{"items":[{"id":""#))
            #expect(list.headers[.contentType]?.hasPrefix("application/json") == true)
            #expect(list.headers[.contentLength] == String(list.body.readableBytes))
            let listed = try #require(list.items.first { $0["id"] as? String == contract["id"] as? String })
            let alone = try await client.call(.get, "/v1/contracts/\(contract["id"] as? String ?? "")", token: lim)
            #expect(NSDictionary(dictionary: listed).isEqual(to: alone.jsonObject))
            let head = try await client.call(.head, "/v1/contracts?limit=100", token: lim)
            #expect(head.status == .ok && head.body.readableBytes == 0)
            #expect(head.headers[.contentLength] == String(list.body.readableBytes))
        }
    }

    /// Negotiation: a new revision clears earlier acceptances; the contract starts only when every KPI is
    /// agreed and the standstill is over; afterwards KPIs change only by a variation both parties agree.
    @Test func kpiNegotiationStartGateAndVariations() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let supplier = world.supplierToken
        let contract = "/v1/contracts/\(lower(world.market.negotiating))"
        let kpi = "\(contract)/kpis/\(lower(world.market.negotiatingKPI))"
        try await app.test(.live) { client in
            let definition: [String: Any] = [
                "title": "Staff trained", "measure": "Staff completing the course", "unit": "count", "baseline": 0, "target": 150,
                "target_date": "2026-07-31", "frequency": "termly", "evidence_source": "Registers", "amber_threshold_percent": 85,
            ]
            // Board accepts revision 1; the supplier counter-proposes revision 2, which clears the board's acceptance.
            let boardAccepts = try await client.call(.post, "\(kpi)/accept", token: lim, body: ["revision": 1])
            #expect(latest(boardAccepts)["accepted_by"] as? [String] == ["board"])
            let counter = try await client.call(.post, "\(kpi)/revisions", token: supplier, body: ["definition": definition, "reason": "More staff"])
            #expect(latest(counter)["revision"] as? Int == 2)
            #expect(latest(counter)["accepted_by"] as? [String] == ["supplier"])
            #expect(agreed(counter) == false)
            // Accepting a stale revision is refused.
            #expect(try await client.call(.post, "\(kpi)/accept", token: lim, body: ["revision": 1]).status == .conflict)
            // Not agreed yet: the contract cannot start.
            let early = try await client.call(.post, "\(contract)/start", token: lim)
            #expect(early.status == .conflict)
            #expect((early.jsonObject["detail"] as? String)?.contains("not yet agreed") == true)
            let agree = try await client.call(.post, "\(kpi)/accept", token: lim, body: ["revision": 2])
            #expect(agreed(agree) == true)
            // The supplier cannot start it; the LIM can.
            #expect(try await client.call(.post, "\(contract)/start", token: supplier).status == .forbidden)
            let started = try await client.call(.post, "\(contract)/start", token: lim)
            #expect(started.jsonObject["status"] as? String == "active")
            // Agreed KPIs are now fixed.
            #expect(try await client.call(.post, "\(kpi)/revisions", token: lim, body: ["definition": definition]).status == .conflict)
            #expect(try await client.call(.post, "\(contract)/kpis", token: supplier, body: ["definition": definition]).status == .conflict)
            // A variation: proposed by the board, accepted by the supplier, recorded with both.
            var changed = definition
            changed["target"] = 180
            let proposal = try await client.call(.post, "\(contract)/variations", token: lim, body: [
                "reason": "Extra schools joined", "value_pence": 99_000,
                "kpis": [["kpi_id": lower(world.market.negotiatingKPI), "definition": changed]],
            ])
            #expect(proposal.status == .ok)
            let variation = (proposal.jsonObject["variations"] as? [[String: Any]])?.last?["id"] as? String ?? ""
            #expect(try await client.call(.post, "\(contract)/variations/\(variation)/decision", token: lim, body: ["accept": true]).status == .forbidden,
                    "the proposer cannot accept its own variation")
            let accepted = try await client.call(.post, "\(contract)/variations/\(variation)/decision", token: supplier, body: ["accept": true])
            #expect(accepted.status == .ok)
            #expect(accepted.jsonObject["value_pence"] as? Int == 99_000)
            #expect((latest(accepted)["definition"] as? [String: Any])?["target"] as? Int == 180)
            #expect(latest(accepted)["accepted_by"] as? [String] == ["board", "supplier"])
            #expect(try await client.call(.post, "\(contract)/variations/\(variation)/decision", token: supplier, body: ["accept": true]).status == .conflict)
        }
    }

    /// With the default standstill of 8 working days, a freshly awarded contract cannot start yet.
    @Test func theStandstillGatesTheStart() async throws {
        let world = try await World.make()
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.execute("UPDATE authority SET standstill_working_days = 8")
        }
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        try await app.test(.live) { client in
            let award = try await client.call(.post, "/v1/projects/\(lower(world.market.closedForAward))/award", token: lim,
                                              body: ["bid_id": lower(world.market.awardBid)])
            let contract = award.jsonObject
            let id = contract["id"] as? String ?? ""
            let kpiID = (contract["kpis"] as? [[String: Any]])?.first?["id"] as? String ?? ""
            for token in [lim, world.supplierToken] {
                #expect(try await client.call(.post, "/v1/contracts/\(id)/kpis/\(kpiID)/accept", token: token, body: ["revision": 1]).status == .ok)
            }
            let start = try await client.call(.post, "/v1/contracts/\(id)/start", token: lim)
            #expect(start.status == .conflict)
            #expect((start.jsonObject["detail"] as? String)?.contains("standstill") == true)
        }
    }

    /// Ending a contract settles its money: terminated, the amount paid is spent and the rest of the
    /// commitment returns to the budget; completed, the whole value is spent.
    @Test func endingContractsSettlesTheLedger() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let budgetPath = "/v1/boards/\(lower(world.a.boards[0].id))/budgets/2025-26"
        try await app.test(.live) { client in
            func locality() async throws -> [String: Any] {
                let budget = try await client.call(.get, budgetPath, token: lim)
                return (budget.jsonObject["streams"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "locality" } ?? [:]
            }
            let before = try await locality()
            let overpaid = try await client.call(.post, "/v1/contracts/\(lower(world.market.negotiating))/terminate", token: lim,
                                                 body: ["reason": "Withdrew", "amount_paid_pence": 90_001])
            #expect(overpaid.status == .unprocessableContent)
            let terminated = try await client.call(.post, "/v1/contracts/\(lower(world.market.negotiating))/terminate", token: lim,
                                                   body: ["reason": "Provider withdrew", "amount_paid_pence": 10_000])
            #expect(terminated.jsonObject["status"] as? String == "terminated")
            #expect(terminated.jsonObject["amount_paid_pence"] as? Int == 10_000)
            let afterTermination = try await locality()
            #expect((afterTermination["committed_pence"] as? Int ?? 0) == (before["committed_pence"] as? Int ?? 0) - 80_000)
            #expect((afterTermination["spent_pence"] as? Int ?? 0) == (before["spent_pence"] as? Int ?? 0) + 10_000)
            #expect((afterTermination["available_pence"] as? Int ?? 0) == (before["available_pence"] as? Int ?? 0) + 80_000)
            #expect(try await client.call(.post, "/v1/contracts/\(lower(world.market.negotiating))/terminate", token: lim,
                                          body: ["reason": "Again", "amount_paid_pence": 0]).status == .conflict)
            #expect(try await client.call(.post, "/v1/contracts/\(lower(world.market.agreed))/complete", token: lim).status == .conflict,
                    "only an active contract completes")
            #expect(try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/complete", token: world.supplierToken).status == .forbidden)
            #expect(try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/returns", token: world.supplierToken,
                                          body: ["period_id": lower(world.market.activePeriod), "actual": "120"]).jsonObject["computed_rating"] as? String == "green")
            let completed = try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/complete", token: lim)
            #expect(completed.jsonObject["status"] as? String == "completed")
            // Completed with the target met (the supplier's corrected return): Blue.
            let returns = try await client.call(.get, "/v1/contracts/\(lower(world.market.active))/returns", token: lim)
            #expect(returns.items.first?["computed_rating"] as? String == "blue")
            #expect(returns.items.first?["late"] as? Bool == false)
            let afterCompletion = try await locality()
            #expect((afterCompletion["spent_pence"] as? Int ?? 0) == (afterTermination["spent_pence"] as? Int ?? 0) + 90_000)
            #expect(afterCompletion["available_pence"] as? Int == afterTermination["available_pence"] as? Int)
        }
    }

    /// Returns are rated at once against the straight line; a correction is a new version; an override sits
    /// beside the computed rating; a Red opens a corrective action plan.
    @Test func returnsAreRatedVersionedOverriddenAndTriggerCorrectiveAction() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let supplier = world.supplierToken
        let path = "/v1/contracts/\(lower(world.market.active))/returns"
        let period = lower(world.market.activePeriod)
        try await app.test(.live) { client in
            let calendar = try await client.call(.get, path, token: lim)
            #expect(calendar.items.count >= 2, "a termly KPI over the contract has several periods")
            #expect(calendar.items.filter { $0["period_id"] as? String != period }.allSatisfy { $0["rating"] as? String == "white" })
            // A count KPI takes one figure; a fraction or both are refused.
            #expect(try await client.call(.post, path, token: supplier, body: ["period_id": period, "numerator": "1", "denominator": "0"]).status == .unprocessableContent)
            #expect(try await client.call(.post, path, token: supplier, body: ["period_id": period, "actual": "1", "numerator": "1"]).status == .unprocessableContent)
            #expect(try await client.call(.post, path, token: supplier, body: ["period_id": period, "actual": "lots"]).status == .unprocessableContent)
            // The fixture's return: baseline 0, target 120, the target date before this period ends, so 120 was
            // expected and 0 delivered is Red — which opened a corrective action plan.
            let red = calendar.items.first { $0["period_id"] as? String == period } ?? [:]
            #expect(red["computed_rating"] as? String == "red")
            #expect(red["procurement_act_level"] as? String == "Requires improvement")
            let plans = try await client.call(.get, "/v1/contracts/\(lower(world.market.active))/corrective-actions", token: lim)
            #expect(plans.items.map { $0["trigger"] as? String } == ["red"])
            // A correction is version 2; the first is kept.
            let corrected = try await client.call(.post, path, token: supplier, body: ["period_id": period, "actual": "120"])
            #expect(corrected.jsonObject["versions"] as? Int == 2)
            #expect(corrected.jsonObject["computed_rating"] as? String == "green")
            // The LIM's override sits beside the computed rating.
            let overridden = try await client.call(.post, "\(path)/\(period)/override", token: lim, body: ["rating": "amber", "reason": "Evidence pending"])
            #expect(overridden.jsonObject["computed_rating"] as? String == "green")
            #expect(overridden.jsonObject["override_rating"] as? String == "amber" && overridden.jsonObject["rating"] as? String == "amber")
            #expect(try await client.call(.post, "\(path)/\(period)/override", token: supplier, body: ["rating": "green", "reason": "x"]).status == .forbidden)
            // No activity, with a reason, is a return too (and not rated).
            let other = calendar.items.compactMap { $0["period_id"] as? String }.first { $0 != period }!
            try await startAllPeriods(world, contract: world.market.active)
            let quiet = try await client.call(.post, path, token: supplier, body: ["period_id": other, "no_activity_reason": "School closed for works"])
            #expect(quiet.status == .ok && quiet.jsonObject["computed_rating"] == nil)
            // A contract not started takes no returns.
            #expect(try await client.call(.post, "/v1/contracts/\(lower(world.market.negotiating))/returns", token: supplier,
                                          body: ["period_id": period, "actual": "1"]).status == .conflict)
        }
    }

    /// A corrective action plan: the supplier proposes, the contract manager sends back or agrees, actions are
    /// done, overdue ones flagged, and the plan closes with an outcome.
    @Test func correctiveActionPlansRunToClosure() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let supplier = world.supplierToken
        let base = "/v1/contracts/\(lower(world.market.active))/corrective-actions/\(lower(world.market.plan))"
        try await app.test(.live) { client in
            let proposal: [String: Any] = ["root_cause": "Staff shortage", "actions": [
                ["description": "Recruit a second trainer", "owner": "Director", "due_date": "2020-01-31"],
                ["description": "Add evening sessions", "owner": "Ops lead", "due_date": "2099-01-31"],
            ]]
            #expect(try await client.call(.post, "\(base)/decision", token: lim, body: ["agree": true]).status == .conflict, "nothing proposed yet")
            #expect(try await client.call(.post, "\(base)/proposal", token: lim, body: proposal).status == .forbidden, "the supplier proposes")
            #expect(try await client.call(.post, "\(base)/proposal", token: supplier, body: ["root_cause": "", "actions": []]).status == .unprocessableContent)
            #expect(try await client.call(.post, "\(base)/proposal", token: supplier, body: proposal).jsonObject["status"] as? String == "proposed")
            #expect(try await client.call(.post, "\(base)/decision", token: lim, body: ["agree": false]).jsonObject["status"] as? String == "open")
            #expect(try await client.call(.post, "\(base)/proposal", token: supplier, body: proposal).status == .ok)
            let agreed = try await client.call(.post, "\(base)/decision", token: lim, body: ["agree": true])
            #expect(agreed.jsonObject["status"] as? String == "agreed")
            #expect(agreed.jsonObject["overdue_actions"] as? Int == 1, "the first action's due date has passed")
            let done = try await client.call(.post, "\(base)/progress", token: supplier, body: ["index": 0, "done_on": "2026-11-20"])
            #expect(done.jsonObject["overdue_actions"] as? Int == 0)
            #expect(try await client.call(.post, "\(base)/progress", token: supplier, body: ["index": 5, "done_on": "2026-11-20"]).status == .unprocessableContent)
            #expect(try await client.call(.post, "\(base)/close", token: supplier, body: ["outcome": "resolved"]).status == .forbidden)
            let closed = try await client.call(.post, "\(base)/close", token: lim, body: ["outcome": "partly_resolved"])
            #expect(closed.jsonObject["status"] as? String == "closed" && closed.jsonObject["outcome"] as? String == "partly_resolved")
            #expect(try await client.call(.post, "\(base)/close", token: lim, body: ["outcome": "resolved"]).status == .conflict)
        }
    }

    @Test func visitsAndComplaintsAreKeptByTheBoardAndReadByBoth() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let base = "/v1/contracts/\(lower(world.market.active))"
        try await app.test(.live) { client in
            #expect(try await client.call(.post, "\(base)/visits", token: lim, body: ["visit_date": "2027-02-30", "kind": "planned", "attendees": "x"]).status == .unprocessableContent)
            #expect(try await client.call(.post, "\(base)/visits", token: world.supplierToken,
                                          body: ["visit_date": "2027-02-10", "kind": "planned", "attendees": "x"]).status == .forbidden)
            #expect(try await client.call(.post, "\(base)/visits", token: lim, body: ["visit_date": "2027-02-10", "kind": "planned", "attendees": "LIM"]).status == .created)
            #expect(try await client.call(.get, "\(base)/visits", token: world.supplierToken).items.count == 1)
            let complaint = "\(base)/complaints/\(lower(world.market.complaint))/resolution"
            #expect(try await client.call(.post, complaint, token: lim, body: ["resolution": "Fixed", "resolved_on": "2027-01-01"]).status == .unprocessableContent,
                    "not before it was received")
            let resolved = try await client.call(.post, complaint, token: lim, body: ["resolution": "Fixed", "resolved_on": "2027-01-25"])
            #expect(resolved.jsonObject["resolved_on"] as? String == "2027-01-25")
            #expect(try await client.call(.post, complaint, token: lim, body: ["resolution": "Again", "resolved_on": "2027-01-26"]).status == .conflict)
            let log = try await client.call(.get, "\(base)/complaints", token: world.supplierToken)
            #expect(log.items.first?["resolution"] as? String == "Fixed")
        }
    }

    @Test func dashboardsAndTheTermlyReport() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            let dashboard = try await client.call(.get, "/v1/boards/\(board)/dashboard?financial_year=2025-26", token: world.token(.lim, of: world.a))
            #expect(dashboard.status == .ok)
            let body = dashboard.jsonObject
            let locality = (body["budget"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "locality" }
            #expect(locality?["allocated_pence"] as? Int == 10_000_000)
            #expect((body["projects_by_status"] as? [String: Any])?["awarded"] as? Int == 3)
            let active = (body["contracts"] as? [[String: Any]])?.first { $0["contract_id"] as? String == lower(world.market.active) }
            #expect(active?["kpi_ratings"] as? [String] == ["red"])
            #expect(body["open_corrective_actions"] as? Int == 1)
            // The authority view adds the other board; board-scoped roles cannot see it.
            let authority = try await client.call(.get, "/v1/dashboard?financial_year=2025-26", token: world.token(.hosi, of: world.a))
            let total = (authority.jsonObject["budget"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "locality" }
            #expect(total?["allocated_pence"] as? Int == 20_000_001)
            #expect(try await client.call(.get, "/v1/dashboard?financial_year=2025-26", token: world.token(.lim, of: world.a)).status == .forbidden)
            #expect(try await client.call(.get, "/v1/boards/\(lower(world.a.boards[1].id))/dashboard?financial_year=2025-26",
                                          token: world.token(.lim, of: world.a)).status == .notFound)
            let csv = try await client.call(.get, "/v1/boards/\(board)/monitoring-report.csv?academic_year=2026-27&term=spring",
                                            token: world.token(.lim, of: world.a))
            let lines = String(buffer: csv.body).split(separator: "\r\n")
            #expect(lines.first?.hasPrefix("project,supplier,contract_id") == true)
            #expect(lines.contains { $0.contains("Awarded and started") && $0.contains(",red,Requires improvement,") })
        }
    }

    /// Termly periods follow the authority's own term dates when it has set them.
    @Test func termlyPeriodsFollowTheAuthoritysTermDates() async throws {
        let world = try await World.make()
        try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 1) { pool in
            let service = MonitoringService(database: ScopedDatabase(pool: pool))
            let scope = AccessScope.operatorScope(authorityID: world.a.authority.id, osUser: "test")
            await #expect(throws: DomainError.self) {
                try await service.setTermDates(scope, TermDates(academicYear: 2026, terms: [.init(name: "autumn", starts: "2026-09-03", ends: "2026-12-18")]))
            }
            try await service.setTermDates(scope, TermDates(academicYear: 2026, terms: [
                .init(name: "autumn", starts: "2026-09-03", ends: "2026-12-18"),
                .init(name: "spring", starts: "2027-01-06", ends: "2027-03-26"),
                .init(name: "summer", starts: "2027-04-12", ends: "2027-07-21"),
            ]))
        }
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let started = try await client.call(.post, "/v1/contracts/\(lower(world.market.agreed))/start", token: world.token(.lim, of: world.a))
            #expect(started.status == .ok)
            let periods = try await client.call(.get, "/v1/contracts/\(lower(world.market.agreed))/returns", token: world.token(.lim, of: world.a))
            let first = periods.items.first ?? [:]
            #expect(first["label"] as? String == "spring 2026-27")
            #expect(first["ends"] as? String == "2027-03-26")
            #expect(periods.items.dropFirst().first?["starts"] as? String == "2027-04-12")
        }
    }

    /// The scheduled check opens a plan for an overdue return; a second Red in a row is Inadequate.
    @Test func overdueReturnsOpenPlansAndRepeatedRedsAreInadequate() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        try await app.test(.live) { client in
            #expect(try await client.call(.post, "/v1/contracts/\(lower(world.market.agreed))/start", token: lim).status == .ok)
            _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                try await connection.query("""
                    UPDATE reporting_period SET starts = current_date - 30, ends = current_date - 20, due = current_date - 1
                    WHERE id = (SELECT id FROM reporting_period WHERE contract_id = \(world.market.agreed) ORDER BY starts LIMIT 1)
                    """)
            }
            let opened = try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 1) { pool in
                let service = MonitoringService(database: ScopedDatabase(pool: pool))
                let scope = AccessScope.operatorScope(authorityID: world.a.authority.id, osUser: "test")
                return (try await service.openPlansForOverdueReturns(scope), try await service.openPlansForOverdueReturns(scope))
            }
            #expect(opened.0 == 1 && opened.1 == 0, "one plan, and not twice")
            let plans = try await client.call(.get, "/v1/contracts/\(lower(world.market.agreed))/corrective-actions", token: lim)
            #expect(plans.items.map { $0["trigger"] as? String } == ["overdue"])
            let overdue = try await client.call(.get, "/v1/contracts/\(lower(world.market.agreed))/returns", token: lim)
            #expect(overdue.items.first?["overdue"] as? Bool == true)

            // The active contract's first return was Red; a second Red in a row is Inadequate.
            let periods = try await client.call(.get, "/v1/contracts/\(lower(world.market.active))/returns", token: lim)
            #expect(periods.items.first?["procurement_act_level"] as? String == "Requires improvement")
            let second = periods.items.dropFirst().first?["period_id"] as? String ?? ""
            try await startAllPeriods(world, contract: world.market.active)
            let red = try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/returns", token: world.supplierToken,
                                            body: ["period_id": second, "actual": "0"])
            #expect(red.jsonObject["computed_rating"] as? String == "red")
            #expect(red.jsonObject["procurement_act_level"] as? String == "Inadequate")
        }
    }
}
