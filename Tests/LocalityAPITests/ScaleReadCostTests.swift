import Foundation
import LocalityDomain
@testable import LocalityPostgres
import PostgresTestSupport
import Testing

/// Issue 14, the p99 target on national-scale data: what made the slow reads slow, each pinned on the generated
/// dataset of `ScaleDataTests` (one authority's rows a small share of each table, as at national scale).
extension ScaleDataTests {
    static var authority: UUID { ScaleSeed.authorityID(seed: options.seed, authority: 0) }
    static var board: UUID { ScaleSeed.id(seed: options.seed, authority: 0, "board", "0") }
    static var year: String { FinancialYear.containing(CalendarDate.parse(asOf)!).description }

    static func staff(_ key: String, _ roles: Set<Role>, boards: [UUID] = []) -> AccessScope {
        let user = ScaleSeed.id(seed: options.seed, authority: 0, "user", key)
        return AccessScope(authorityID: authority, userID: user, roles: roles, boardIDs: boards, actor: "user:\(user.uuidString.lowercased())")
    }

    /// Runs `body` on a one-connection application pool, and returns what it returned with the number of
    /// requests (round trips) the connection made meanwhile.
    static func countingRoundTrips<R: Sendable>(_ database: TestDatabase, _ body: (ScopedDatabase) async throws -> R) async throws -> (R, Int) {
        try await database.withPool(maxConnections: 1) { pool in
            let before = try await pool.withConnection { $0.requestCount }
            let result = try await body(ScopedDatabase(pool: pool))
            let after = try await pool.withConnection { $0.requestCount }
            return (result, after - before)
        }
    }

    /// Index scans per index so far, every statement of the application's sessions counted (as
    /// `sequentialScans`: the sessions are ended so their statistics are flushed).
    static func indexScans(_ pool: PGPool) async throws -> [String: Int] {
        _ = try await sequentialScans(pool)
        return try await pool.withConnection { connection in
            Dictionary(uniqueKeysWithValues: try await connection.query("""
                SELECT indexrelname::text, idx_scan FROM pg_stat_user_indexes WHERE schemaname = 'public'
                """).map { try $0.decode(String.self, Int.self) })
        }
    }

    /// The dashboards read the running contracts and the year's projects by the indexes of 0029. `status IN (…)`
    /// on an enum is not leakproof, so under row-level security it was applied only after the policies: the
    /// contract lines and the overdue count started from every project of the authority and checked each
    /// contract's policy (1,407 lookups for 107 running contracts at national scale). Fails while either index
    /// is missing or unused.
    @Test func dashboardsReadRunningContractsAndTheYearsProjectsByIndex() async throws {
        let (database, _) = try await Fixture.shared.get()
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { statistics in
            let readers: [(AccessScope, UUID?)] = [(Self.staff("admin", [.authorityAdmin]), nil), (Self.staff("lim:0", [.lim], boards: [Self.board]), Self.board)]
            for (scope, board) in readers {
                let before = try await Self.indexScans(statistics)
                let dashboard = try await database.withPool { pool in
                    try await DashboardService(database: ScopedDatabase(pool: pool)).dashboard(scope, boardID: board, financialYear: Self.year)
                }
                let after = try await Self.indexScans(statistics)
                #expect(!dashboard.contracts.isEmpty)
                for index in ["contract_running", "project_year"] {
                    #expect(after[index, default: 0] > before[index, default: 0], "the dashboard (board \(String(describing: board))) did not use \(index)")
                }
            }
        }
    }

    /// The dashboard's contract lines are still those of the year's projects and every running contract, in
    /// the order they were let, now that they are read as two sets.
    @Test func dashboardLinesAreTheYearsContractsAndTheRunningOnes() async throws {
        let (database, _) = try await Fixture.shared.get()
        let expected = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                try await connection.query("""
                    SELECT c.id FROM contract c JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id
                    WHERE c.authority_id = \(Self.authority) AND (p.financial_year = \(Self.year) OR c.status IN ('kpi_negotiation', 'active'))
                    ORDER BY c.created_at, c.id
                    """).map { try $0.decode(UUID.self, at: 0) }
            }
        }
        let dashboard = try await database.withPool { pool in
            try await DashboardService(database: ScopedDatabase(pool: pool)).dashboard(Self.staff("admin", [.authorityAdmin]), boardID: nil,
                                                                                        financialYear: Self.year)
        }
        #expect(dashboard.contracts.map(\.contractID) == expected)
        #expect(Set(expected).count == expected.count)
    }

    /// A page of projects, of contracts, or of a school name search is one round trip (context and statement
    /// pipelined; each was BEGIN + context, the statement, COMMIT) that walks the ordered index of the listing and
    /// stops at the page's end. Under the policies' OR PostgreSQL estimated a handful of rows and read all of the
    /// authority's projects or contracts through a bitmap and sorted them (5–7 ms against 1 ms at national
    /// scale), or every school of the authority for a name (10 ms against 3). Fails while any of these lists
    /// takes more than one round trip once its statements are prepared, or does not use its ordered index.
    @Test func pagesOfProjectsContractsAndSchoolsWalkTheirOrderedIndexInOneRoundTrip() async throws {
        let (database, _) = try await Fixture.shared.get()
        let admin = Self.staff("admin", [.authorityAdmin])
        let page = try PageRequest(limit: 5)
        let lists: [(String, String, @Sendable (ScopedDatabase) async throws -> Int)] = [
            ("projects", "project_listing", { try await ProjectService(database: $0).list(admin, filter: ProjectFilter(), page: page).items.count }),
            ("contracts", "contract_listing", { try await ContractService(database: $0).list(admin, page: page).items.count }),
            ("schools named Oakfield", "school_listing", {
                try await SchoolService(database: $0).list(admin, filter: SchoolFilter(text: "Oakfield"), page: page).items.count
            }),
        ]
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { statistics in
            for (name, index, list) in lists {
                let (count, trips) = try await database.withPool(maxConnections: 1) { pool in
                    let scoped = ScopedDatabase(pool: pool)
                    _ = try await list(scoped)  // the session prepares the statements it keeps
                    let before = try await pool.withConnection { $0.requestCount }
                    let count = try await list(scoped)
                    let after = try await pool.withConnection { $0.requestCount }
                    return (count, after - before)
                }
                // Index statistics reach pg_stat_user_indexes when the session ends (`indexScans` ends them).
                let indexBefore = try await Self.indexScans(statistics)
                _ = try await database.withPool(maxConnections: 1) { try await list(ScopedDatabase(pool: $0)) }
                let used = try await Self.indexScans(statistics)[index, default: 0] - indexBefore[index, default: 0]
                #expect(count == 5, "\(name): \(count) rows")
                #expect(trips == 1, "\(name): \(trips) round trips")
                #expect(used > 0, "\(name) did not use \(index)")
            }
        }
    }

    /// The evaluation report reads every bid's scores in two statements: it made two more per bid (2 + 2N).
    @Test func theEvaluationReportTakesTheSameRoundTripsWhateverTheBids() async throws {
        let (database, _) = try await Fixture.shared.get()
        let projects = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                // Two awarded projects of board 0 with different numbers of submitted bids.
                try await connection.query("""
                    SELECT DISTINCT ON (n) id, n FROM (
                        SELECT p.id, (SELECT count(*) FROM bid b WHERE b.project_id = p.id AND b.status NOT IN ('draft', 'withdrawn')) AS n
                        FROM project p WHERE p.authority_id = \(Self.authority) AND p.board_id = \(Self.board) AND p.status = 'awarded') x
                    WHERE n > 0 ORDER BY n, id
                    """).map { try $0.decode(UUID.self, Int.self) }
            }
        }
        let fewest = try #require(projects.first), most = try #require(projects.last)
        try #require(most.1 >= fewest.1 + 2, "the data has no projects with different numbers of bids: \(projects)")
        let lim = Self.staff("lim:0", [.lim], boards: [Self.board])
        var trips: [Int] = []
        for (project, bids) in [fewest, most] {
            let (report, count) = try await Self.countingRoundTrips(database) {
                try await EvaluationService(database: $0).report(lim, projectID: project)
            }
            #expect(report.lines.count == bids)
            #expect(report.lines.contains { !$0.moderated.isEmpty || !$0.individual.isEmpty }, "no scores were read")
            trips.append(count)
        }
        #expect(trips[0] == trips[1], "round trips \(trips) for \(fewest.1) and \(most.1) bids")
    }

    /// A contract's returns read the contract once: it was read twice (three statements each).
    @Test func aContractsReturnsReadTheContractOnce() async throws {
        let (database, _) = try await Fixture.shared.get()
        let contract = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                try #require(try await connection.query("""
                    SELECT c.id FROM contract c JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id
                    WHERE c.authority_id = \(Self.authority) AND p.board_id = \(Self.board) AND c.status = 'active'
                    ORDER BY c.created_at LIMIT 1
                    """).first).decode(UUID.self, at: 0)
            }
        }
        let (periods, count) = try await Self.countingRoundTrips(database) {
            try await MonitoringService(database: $0).periods(Self.staff("lim:0", [.lim], boards: [Self.board]), contractID: contract)
        }
        #expect(!periods.isEmpty)
        // Context, the contract with its KPIs and variations (3), the periods, commit: the transaction's
        // BEGIN and context go together in one request.
        #expect(count <= 6, "\(count) round trips")
    }

    /// The lists with optional filters and keyset ranges are planned with each request's values, never with a
    /// generic plan kept by the session: PostgreSQL estimated each `(… IS NULL OR …)` term and the range as
    /// selective and kept a plan that read all of an authority's rows and sorted them (a page of the audit log
    /// 19 ms instead of 0.1 ms at national scale). Such statements are sent unnamed, so the session holds none.
    @Test func listsWithOptionalFiltersAreNotKeptAsGenericPlans() async throws {
        let (database, _) = try await Fixture.shared.get()
        let admin = Self.staff("admin", [.authorityAdmin]), auditor = Self.staff("auditor", [.auditor])
        let lim = Self.staff("lim:0", [.lim], boards: [Self.board])
        try await database.withPool(maxConnections: 1) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let page = try PageRequest()
            for _ in 0..<7 {
                _ = try await AuditService(database: scoped).list(auditor, filter: AuditFilter(), page: page)
                _ = try await ProjectService(database: scoped).list(admin, filter: ProjectFilter(), page: page)
                _ = try await ProjectService(database: scoped).list(lim, filter: ProjectFilter(boardID: Self.board, status: .awarded), page: page)
                _ = try await SchoolService(database: scoped).list(admin, filter: SchoolFilter(text: "Oak"), page: page)
            }
            let kept = try await pool.withConnection { connection in
                try await connection.query("""
                    SELECT statement, generic_plans FROM pg_prepared_statements
                    WHERE (statement LIKE '%FROM audit_event%' OR statement LIKE '%ORDER BY p.created_at DESC%'
                           OR statement LIKE '%ORDER BY s.name, s.urn%')
                      AND statement NOT LIKE '%pg_prepared_statements%'
                    """).map { try $0.decode(String.self, Int.self) }
            }
            #expect(kept.isEmpty, "kept by the session: \(kept.map { "\($0.1) generic plan(s): \($0.0.prefix(120))" })")
        }
    }
}

extension ScaleDataTests {
    /// Pins (0034): a bid and its scores carry the project's board, which the peers' policy on individual scores
    /// compares instead of calling app_oversees_bid per row. On the generated data every copy is its project's
    /// board; the board's LIM reads a project's scores (the evaluation report) and another board's LIM none; a copy
    /// cannot be set to another board, and follows the project's.
    @Test func scoresCarryTheirProjectsBoard() async throws {
        let (database, _) = try await Fixture.shared.get()
        let (project, otherBoard) = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            let mismatches = try await pool.query("""
                SELECT (SELECT count(*) FROM bid b JOIN project p ON p.authority_id = b.authority_id AND p.id = b.project_id
                        WHERE b.board_id <> p.board_id),
                       (SELECT count(*) FROM individual_score s JOIN bid b ON b.authority_id = s.authority_id AND b.id = s.bid_id
                        WHERE s.board_id <> b.board_id),
                       (SELECT count(*) FROM individual_score)
                """).first!.decode(Int.self, Int.self, Int.self)
            #expect(mismatches.0 == 0 && mismatches.1 == 0)
            #expect(mismatches.2 > 0, "the generated data has scores")
            let project = try await pool.query("""
                SELECT b.project_id FROM individual_score s JOIN bid b ON b.authority_id = s.authority_id AND b.id = s.bid_id
                WHERE s.authority_id = \(Self.authority) AND s.board_id = \(Self.board) AND s.submitted LIMIT 1
                """).first!.decode(UUID.self, at: 0)
            let otherBoard = try await pool.query("""
                SELECT id FROM board WHERE authority_id = \(Self.authority) AND id <> \(Self.board) LIMIT 1
                """).first!.decode(UUID.self, at: 0)
            // Inside transactions that roll back: the fixture is shared.
            try await pool.withConnection { connection in
                do {
                    try await connection.withTransaction { connection in
                        try await connection.query("UPDATE individual_score SET board_id = \(otherBoard) WHERE bid_id IN (SELECT id FROM bid WHERE project_id = \(project))")
                    }
                    Issue.record("a score was moved to a board its bid is not on")
                } catch let error as PGError {
                    #expect(error.constraint == "individual_score_bid_board", "\(error)")
                }
                struct RolledBack: Error {}
                do {
                    try await connection.withTransaction { connection in
                        try await connection.query("UPDATE project SET board_id = \(otherBoard) WHERE id = \(project)")
                        let boards = try await connection.query("""
                            SELECT DISTINCT s.board_id FROM individual_score s JOIN bid b ON b.authority_id = s.authority_id AND b.id = s.bid_id
                            WHERE b.project_id = \(project)
                            UNION SELECT DISTINCT board_id FROM bid WHERE project_id = \(project)
                            """).map { try $0.decode(UUID.self, at: 0) }
                        #expect(boards == [otherBoard])
                        throw RolledBack()
                    }
                } catch is RolledBack {}
            }
            return (project, otherBoard)
        }
        func report(_ boards: [UUID]) async throws -> Int {
            try await database.withPool { pool in
                try await EvaluationService(database: ScopedDatabase(pool: pool)).report(Self.staff("lim:0", [.lim], boards: boards), projectID: project)
            }.lines.reduce(0) { $0 + $1.individual.count }
        }
        #expect(try await report([Self.board]) > 0)
        let hidden = try await database.withPool { pool in
            try await ScopedDatabase(pool: pool).transaction(Self.staff("lim:0", [.lim], boards: [otherBoard]), readOnly: true) { connection in
                try await connection.query("""
                    SELECT count(*) FROM individual_score s WHERE s.bid_id IN (SELECT id FROM bid WHERE project_id = \(project))
                    """).first!.decode(Int.self, at: 0)
            }
        }
        #expect(hidden == 0)
    }
}
