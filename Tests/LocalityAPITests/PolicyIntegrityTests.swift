import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Issue 12, findings 8 and 9: row-level security agrees with the service, and the smaller holes.
@Suite("Policies and smaller holes")
struct PolicyIntegrityTests {
    /// Runs `body` as the application role under `scope`'s context (set_config, as every request does):
    /// what row-level security alone lets that role see or do.
    static func asRole<R: Sendable>(_ world: World, _ scope: AccessScope, _ body: (PGConnection) async throws -> R) async throws -> R {
        try await world.database.withPool(conninfo: world.database.applicationConninfo, maxConnections: 1) { pool in
            try await pool.withTransaction { connection in
                try await ScopedDatabase.setContext(scope, on: connection)
                return try await body(connection)
            }
        }
    }

    static func staff(_ world: World, _ role: Role) -> AccessScope {
        let user = world.a.users[role]!
        return AccessScope(authorityID: world.a.authority.id, userID: user.id, roles: [role],
                           boardIDs: role.isBoardScoped ? [world.a.boards[0].id] : [], actor: "user:\(lower(user.id))")
    }

    /// Pins: once the LIM publishes an answer, board members (and the HoSI and admin) see the question,
    /// anonymised, through the API and under row-level security alone; unpublished questions stay hidden
    /// from them. On main the policy let no board member see any, so the API answered {"items": []}.
    @Test func boardStaffSeePublishedQuestionsAnonymised() async throws {
        let world = try await World.make()
        let project = lower(world.market.openWithDraft)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let answered = try await client.call(.post, "/v1/projects/\(project)/questions/\(lower(world.market.question))/answer",
                                                 token: world.token(.lim, of: world.a), body: ["answer": "Yes, at the usual rates.", "publish": true])
            #expect(answered.status == .ok, "\(answered.jsonObject)")
            let unpublished = try await client.call(.post, "/v1/projects/\(project)/questions", token: world.supplierToken,
                                                    body: ["question": "Is parking available?"])
            #expect(unpublished.status == .created, "\(unpublished.jsonObject)")
            for role in [Role.boardMember, .hosi, .authorityAdmin] {
                let seen = try await client.call(.get, "/v1/projects/\(project)/questions", token: world.token(role, of: world.a))
                #expect(seen.items.count == 1, "\(role): \(seen.items)")
                #expect(seen.items.first?["answer"] as? String == "Yes, at the usual rates.")
                #expect(seen.items.first?["supplier_id"] as? String == nil && seen.items.first?["supplier_name"] as? String == nil,
                        "\(role) sees the asker")
            }
        }
        for role in [Role.boardMember, .hosi, .authorityAdmin] {
            let visible = try await Self.asRole(world, Self.staff(world, role)) { connection in
                try await connection.query("""
                    SELECT count(*) FILTER (WHERE published_at IS NOT NULL), count(*) FROM clarification WHERE project_id = \(world.market.openWithDraft)
                    """).first!.decode(Int.self, Int.self)
            }
            #expect(visible == (1, 1), "\(role) under RLS sees (published, all) = \(visible)")
        }
        // The board's LIM still sees both, the asker's organisation included.
        let lim = try await Self.asRole(world, Self.staff(world, .lim)) { connection in
            try await connection.query("SELECT count(*) FROM clarification WHERE project_id = \(world.market.openWithDraft)").first!.decode(Int.self, at: 0)
        }
        #expect(lim == 2)
    }

    /// Pins: the LIM cannot move a published project's deadline earlier through its row policy (on main it
    /// could, closing the project at once and unsealing its bids); moving it later is still allowed.
    @Test func aPublishedDeadlineCannotBeBroughtForward() async throws {
        let world = try await World.make()
        let lim = Self.staff(world, .lim)
        do {
            try await Self.asRole(world, lim) { connection in
                try await connection.query("UPDATE project SET bid_deadline = now() - interval '1 hour' WHERE id = \(world.market.openWithSubmitted)")
            }
            Issue.record("the deadline was brought forward")
        } catch let error as PGError {
            #expect(error.constraint == "project_deadline_not_earlier", "\(error)")
        }
        let moved = try await Self.asRole(world, lim) { connection in
            try await connection.query("""
                UPDATE project SET bid_deadline = bid_deadline + interval '1 day' WHERE id = \(world.market.openWithSubmitted) RETURNING id
                """).rowCount
        }
        #expect(moved == 1)
        // Drafts are free to change.
        try await Self.asRole(world, lim) { connection in
            try await connection.query("UPDATE project SET bid_deadline = now() - interval '1 day' WHERE id = \(world.market.draft)")
        }
    }

    /// Pins (0032): a contract's board, which its row policy now reads instead of looking up the project, is its
    /// project's board and stays so: it cannot be set to another board, and it follows the project's.
    @Test func aContractsBoardIsItsProjectsBoardAndFollowsIt() async throws {
        let world = try await World.make()
        let contract = world.market.active
        let (first, second) = (world.a.boards[0].id, world.a.boards[1].id)
        try await world.database.withPool(conninfo: world.database.superuserConninfo, maxConnections: 1) { pool in
            func board() async throws -> UUID {
                try await pool.query("SELECT board_id FROM contract WHERE id = \(contract)").first!.decode(UUID.self, at: 0)
            }
            #expect(try await board() == first)
            do {
                try await pool.query("UPDATE contract SET board_id = \(second) WHERE id = \(contract)")
                Issue.record("a contract was moved to a board its project is not on")
            } catch let error as PGError {
                #expect(error.constraint == "contract_project_board", "\(error)")
            }
            try await pool.query("""
                UPDATE project SET board_id = \(second) WHERE id = (SELECT project_id FROM contract WHERE id = \(contract))
                """)
            #expect(try await board() == second)
        }
        // And the policy reads it: the LIM of the first board no longer sees the contract, an admin still does.
        let seenByLIM = try await Self.asRole(world, Self.staff(world, .lim)) { connection in
            try await connection.query("SELECT count(*) FROM contract WHERE id = \(contract)").first!.decode(Int.self, at: 0)
        }
        let seenByAdmin = try await Self.asRole(world, Self.staff(world, .authorityAdmin)) { connection in
            try await connection.query("SELECT count(*) FROM contract WHERE id = \(contract)").first!.decode(Int.self, at: 0)
        }
        #expect(seenByLIM == 0)
        #expect(seenByAdmin == 1)
    }

    /// Pins (0033): a contract's KPIs, periods and returns carry its board and supplier, which their read policies
    /// compare instead of looking the contract up. The copies are filled on insert without the writer naming them,
    /// cannot be set to another board, follow the contract's board, and a return stays append-only otherwise.
    @Test func monitoringRowsCarryTheirContractsBoardAndFollowIt() async throws {
        let world = try await World.make()
        let contract = world.market.active
        let (first, second) = (world.a.boards[0].id, world.a.boards[1].id)
        let counts: PGQuery = """
            SELECT (SELECT count(*) FROM contract_kpi WHERE contract_id = \(contract)),
                   (SELECT count(*) FROM reporting_period WHERE contract_id = \(contract)),
                   (SELECT count(*) FROM kpi_return r JOIN reporting_period p ON p.authority_id = r.authority_id AND p.id = r.period_id
                    WHERE p.contract_id = \(contract))
            """
        let revisionCounts: PGQuery = """
            SELECT (SELECT count(*) FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id
                    WHERE k.contract_id = \(contract)),
                   (SELECT count(*) FROM kpi_acceptance a JOIN kpi_revision r ON r.authority_id = a.authority_id AND r.id = a.revision_id
                    JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id WHERE k.contract_id = \(contract))
            """
        // The contract's revisions by id, and how many acceptances they have, read before any policy applies.
        let (revisionIDs, acceptanceCount) = try await world.database.withPool(conninfo: world.database.superuserConninfo, maxConnections: 1) { pool in
            let ids = try await pool.query("""
                SELECT r.id FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id WHERE k.contract_id = \(contract)
                """).map { try $0.decode(UUID.self, at: 0) }
            let accepted = try await pool.query("SELECT count(*) FROM kpi_acceptance WHERE revision_id = ANY(\(ids))").first!.decode(Int.self, at: 0)
            return (ids, accepted)
        }
        let ownRevisionCounts: PGQuery = """
            SELECT (SELECT count(*) FROM kpi_revision WHERE id = ANY(\(revisionIDs))),
                   (SELECT count(*) FROM kpi_acceptance WHERE revision_id = ANY(\(revisionIDs)))
            """
        try await world.database.withPool(conninfo: world.database.superuserConninfo, maxConnections: 1) { pool in
            func boards() async throws -> Set<UUID> {
                Set(try await pool.query("""
                    SELECT board_id FROM contract_kpi WHERE contract_id = \(contract)
                    UNION ALL SELECT board_id FROM reporting_period WHERE contract_id = \(contract)
                    UNION ALL SELECT r.board_id FROM kpi_return r JOIN reporting_period p ON p.authority_id = r.authority_id AND p.id = r.period_id
                              WHERE p.contract_id = \(contract)
                    UNION ALL SELECT r.board_id FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id
                              WHERE k.contract_id = \(contract)
                    UNION ALL SELECT a.board_id FROM kpi_acceptance a JOIN kpi_revision r ON r.authority_id = a.authority_id AND r.id = a.revision_id
                              JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id WHERE k.contract_id = \(contract)
                    """).map { try $0.decode(UUID.self, at: 0) })
            }
            let (kpis, periods, returns) = try await pool.query(counts).first!.decode(Int.self, Int.self, Int.self)
            #expect(kpis > 0 && periods > 0 && returns > 0, "the active contract has KPIs, periods and returns")
            let (revisions, acceptances) = try await pool.query(revisionCounts).first!.decode(Int.self, Int.self)
            #expect(revisions >= kpis && acceptances > 0, "its KPIs have revisions, and the agreed ones acceptances")
            #expect(try await boards() == [first])
            let suppliers = try await pool.query("""
                SELECT DISTINCT r.supplier_id FROM kpi_return r JOIN reporting_period p ON p.authority_id = r.authority_id AND p.id = r.period_id
                WHERE p.contract_id = \(contract)
                """).map { try $0.decode(UUID.self, at: 0) }
            #expect(suppliers == [world.supplierID])
            let revisionSuppliers = try await pool.query("""
                SELECT a.supplier_id FROM kpi_acceptance a JOIN kpi_revision r ON r.authority_id = a.authority_id AND r.id = a.revision_id
                JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id WHERE k.contract_id = \(contract)
                UNION SELECT r.supplier_id FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id
                WHERE k.contract_id = \(contract)
                """).map { try $0.decode(UUID.self, at: 0) }
            #expect(revisionSuppliers == [world.supplierID])
            // A revision's or an acceptance's copy cannot be moved alone; otherwise both stay append-only.
            let moves: [(PGQuery, String)] = [
                ("UPDATE kpi_revision SET board_id = \(second) WHERE kpi_id IN (SELECT id FROM contract_kpi WHERE contract_id = \(contract))",
                 "kpi_revision_kpi_scope"),
                ("""
                 UPDATE kpi_acceptance SET board_id = \(second) WHERE revision_id IN (SELECT r.id FROM kpi_revision r JOIN contract_kpi k
                     ON k.authority_id = r.authority_id AND k.id = r.kpi_id WHERE k.contract_id = \(contract))
                 """, "kpi_acceptance_revision_scope"),
            ]
            for (statement, constraint) in moves {
                do {
                    try await pool.query(statement)
                    Issue.record("a copy was moved to a board its contract is not on: \(constraint)")
                } catch let error as PGError {
                    #expect(error.constraint == constraint, "\(error)")
                }
            }
            do {
                try await pool.query("UPDATE kpi_revision SET reason = 'changed' WHERE kpi_id IN (SELECT id FROM contract_kpi WHERE contract_id = \(contract))")
                Issue.record("a revision was changed")
            } catch let error as PGError {
                #expect(error.message.contains("append-only"), "\(error)")
            }
            do {
                try await pool.query("UPDATE reporting_period SET board_id = \(second) WHERE contract_id = \(contract)")
                Issue.record("a period was moved to a board its contract is not on")
            } catch let error as PGError {
                #expect(error.constraint == "reporting_period_contract_scope", "\(error)")
            }
            do {
                try await pool.query("""
                    UPDATE kpi_return SET actual = coalesce(actual, 0) + 1 WHERE id = (SELECT r.id FROM kpi_return r JOIN reporting_period p
                                                                 ON p.authority_id = r.authority_id AND p.id = r.period_id
                                                                 WHERE p.contract_id = \(contract) LIMIT 1)
                    """)
                Issue.record("a return was changed")
            } catch let error as PGError {
                #expect(error.message.contains("append-only"), "\(error)")
            }
            try await pool.query("""
                UPDATE project SET board_id = \(second) WHERE id = (SELECT project_id FROM contract WHERE id = \(contract))
                """)
            #expect(try await boards() == [second])
        }
        // The policies read the copies: the first board's LIM sees none of the rows now, an admin and the supplier all.
        let lim = try await Self.asRole(world, Self.staff(world, .lim)) { try await $0.query(counts).first!.decode(Int.self, Int.self, Int.self) }
        let admin = try await Self.asRole(world, Self.staff(world, .authorityAdmin)) {
            try await $0.query(counts).first!.decode(Int.self, Int.self, Int.self)
        }
        let supplierScope = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                        boardIDs: [], actor: "test")
        let supplier = try await Self.asRole(world, supplierScope) { try await $0.query(counts).first!.decode(Int.self, Int.self, Int.self) }
        #expect(lim == (0, 0, 0))
        #expect(admin.0 > 0 && admin.1 > 0 && admin.2 > 0)
        #expect(supplier == admin)
        // The same for revisions and acceptances, counted by id from their own tables (a join through contract_kpi
        // would hide them behind its policy), so only their own policies decide.
        let limRevisions = try await Self.asRole(world, Self.staff(world, .lim)) { try await $0.query(ownRevisionCounts).first!.decode(Int.self, Int.self) }
        let adminRevisions = try await Self.asRole(world, Self.staff(world, .authorityAdmin)) {
            try await $0.query(ownRevisionCounts).first!.decode(Int.self, Int.self)
        }
        let supplierRevisions = try await Self.asRole(world, supplierScope) { try await $0.query(ownRevisionCounts).first!.decode(Int.self, Int.self) }
        #expect(limRevisions == (0, 0))
        #expect(adminRevisions == (revisionIDs.count, acceptanceCount))
        #expect(supplierRevisions == adminRevisions)
    }

    /// Pins: a stored value the code does not know fails the read, naming the column, instead of reading as
    /// a default (on main an unknown rating read as "no rating").
    @Test func anUnknownStoredEnumValueFailsTheRead() async throws {
        let world = try await World.make()
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("""
                INSERT INTO kpi_return (authority_id, period_id, version, actual, computed_rating, submitted_by)
                SELECT authority_id, period_id, 99, 1, 'purple', 'test' FROM kpi_return WHERE period_id = \(world.market.activePeriod) LIMIT 1
                """)
        }
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "test")
        do {
            let periods = try await world.database.withPool(conninfo: world.database.applicationConninfo, maxConnections: 1) { pool in
                try await MonitoringService(database: ScopedDatabase(pool: pool)).periods(supplier, contractID: world.market.active)
            }
            Issue.record("read an unknown rating as \(String(describing: periods.first { $0.periodID == world.market.activePeriod }?.computedRating))")
        } catch let error as PGError {
            #expect(error.kind == .decoding && error.column == "kpi_return.computed_rating", "\(error)")
        }
    }

    /// Pins: a return for a reporting period that has not started is refused with 422 naming period_id (on
    /// main it was accepted and rated); once the period has begun, the same return is taken.
    @Test func returnsOnlyForPeriodsThatHaveStarted() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let path = "/v1/contracts/\(lower(world.market.active))/returns"
        try await app.test(.live) { client in
            let later = try await client.call(.get, path, token: world.supplierToken).items
                .first { $0["period_id"] as? String != lower(world.market.activePeriod) }?["period_id"] as? String ?? ""
            let early = try await client.call(.post, path, token: world.supplierToken, body: ["period_id": later, "actual": "10"])
            #expect(early.status == .unprocessableContent)
            #expect((early.jsonObject["errors"] as? [[String: Any]])?.first?["field"] as? String == "period_id", "\(early.jsonObject)")
            try await startAllPeriods(world, contract: world.market.active)
            #expect(try await client.call(.post, path, token: world.supplierToken, body: ["period_id": later, "actual": "10"]).status == .ok)
        }
    }
}

/// Lets every reporting period of `contract` have begun (returns are accepted only then), keeping their
/// order: each period's start moves into the past, as the superuser.
func startAllPeriods(_ world: World, contract: UUID) async throws {
    _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
        try await connection.query("""
            UPDATE reporting_period p SET starts = current_date - 1000 + r.n
            FROM (SELECT id, row_number() OVER (PARTITION BY kpi_id ORDER BY starts)::int AS n FROM reporting_period
                  WHERE contract_id = \(contract)) r
            WHERE p.id = r.id
            """)
    }
}
