import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// Issue 14, national-scale data: the generator's data keeps every invariant, and no list, dashboard, report or
/// CSV read of the API scans a table that grows with the data.
@Suite("National-scale data", .serialized)
struct ScaleDataTests {
    /// The suite's one generated database (generating takes a while): its tests only read, and run one at a time.
    actor Fixture {
        static let shared = Fixture()
        private var generated: Task<(TestDatabase, ScaleSeed), any Error>?

        func get() async throws -> (TestDatabase, ScaleSeed) {
            if generated == nil {
                generated = Task {
                    let database = try await TestDatabase.migrated()
                    return (database, try await ScaleDataTests.generate(database))
                }
            }
            return try await generated!.value
        }
    }

    static let asOf = "2026-11-30"
    /// Enough authorities that one authority's rows are a small share of each table (so the planner prefers an
    /// index wherever one fits, as it does at national scale), small enough to load in seconds.
    static let options = ScaleSeed.Options(seed: 7, authorities: 12, boards: 3, years: 3, projectsPerBoardYear: 12, schools: 4_000,
                                           suppliers: 60, admittedSuppliers: 12, asOf: asOf)

    /// Tables whose size follows the data (projects, bids, scores, contracts, monitoring, schools, money, audit):
    /// a sequential scan of one of them by a request costs time in proportion to the whole country's data.
    /// Per-authority configuration (boards, themes, funding streams, rules) stays small and is left out, and so
    /// are the tables the generator leaves empty (clarifications, variations, overrides, visits, complaints,
    /// SPIP priorities, school contract outputs and assessments): the planner rightly scans an empty table.
    /// Admissions (tens per authority) are too few here for the planner to prefer their index.
    static let growingTables: Set<String> = [
        "project", "bid", "evaluation_panel_member", "conflict_declaration", "scorecard", "individual_score", "moderated_score",
        "contract", "contract_kpi", "kpi_revision", "kpi_acceptance", "reporting_period", "kpi_return", "corrective_action_plan",
        "school", "school_concern", "school_contract", "budget_ledger", "budget_balance", "audit_event",
    ]

    static func generate(_ database: TestDatabase) async throws -> ScaleSeed {
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            let seed = ScaleSeed(database: ScopedDatabase(pool: pool), options: options)
            try await seed.run()
            try await seed.analyze()
            return seed
        }
    }

    @Test func theGeneratedDataKeepsEveryInvariantAndResumes() async throws {
        let (database, seed) = try await Fixture.shared.get()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let ledger = try await LedgerVerifier(database: scoped).verify()
            #expect(ledger.authorities == Self.options.authorities)
            #expect(ledger.contracts > 0)
            #expect(ledger.problems.isEmpty, "\(ledger.problems.prefix(5))")
            let chains = try await AuditService(database: scoped).verify()
            #expect(chains.count == Self.options.authorities)
            let broken = chains.filter { !$0.isIntact }
            #expect(broken.isEmpty, "\(broken.prefix(3))")
            let shortest = chains.map(\.events).min() ?? 0
            #expect(shortest > 100)
            // A second run finds every authority and writes nothing.
            let again = try await ScaleSeed(database: scoped, options: Self.options).run()
            #expect(again == 0)
        }
        // Every table the generator fills has rows, with its tenant; forced row-level security is back on.
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                for table in ScaleSeed.tenantTables {
                    let rows = try #require(try await connection.query("SELECT count(*) FROM \(unsafeSQL: quoteIdentifier(table))").first)
                        .decode(Int.self, at: 0)
                    #expect(rows > 0, "\(table) is empty")
                }
                let unforced = try await connection.query("""
                    SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
                      AND relrowsecurity AND NOT relforcerowsecurity
                    """).map { try $0.decode(String.self, at: 0) }
                #expect(unforced.isEmpty, "\(unforced)")
                // Deterministic ids: the authority and its admin are where the seed says.
                let admin = ScaleSeed.id(seed: Self.options.seed, authority: 0, "user", "admin")
                let found = try await connection.query("""
                    SELECT a.slug FROM app_user u JOIN authority a ON a.id = u.authority_id WHERE u.id = \(admin)
                    """).first?.decode(String.self, at: 0)
                #expect(found == ScaleSeed.slug(seed: Self.options.seed, authority: 0))
            }
        }
        _ = seed
    }

    /// One read of the API as one role.
    struct Read: Sendable {
        var operation: String
        var role: String
        var token: String
        var path: String
    }

    @Test func noListDashboardOrReportScansAGrowingTable() async throws {
        let (database, seed) = try await Fixture.shared.get()
        let reads = try await Self.reads(database, seed)
        let app = try await buildApplication(testConfiguration(database))
        let scans = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await app.test(.live) { client in
                var scans: [String] = []
                for read in reads {
                    let before = try await Self.sequentialScans(pool)
                    let response = try await client.call(.get, read.path, token: read.token)
                    #expect(response.status == .ok, "\(read.operation) as \(read.role): \(response.status) \(String(buffer: response.body).prefix(300))")
                    let after = try await Self.sequentialScans(pool)
                    for (table, count) in after where Self.growingTables.contains(table) && count > before[table, default: 0] {
                        scans.append("\(read.operation) as \(read.role) (\(read.path)): \(count - before[table, default: 0]) sequential scan(s) of \(table)")
                    }
                }
                return scans
            }
        }
        #expect(scans.isEmpty, "\(scans.joined(separator: "\n"))")
    }

    /// Sequential scans per table so far, with every statement of the service's sessions counted: the service's
    /// backends are ended (a backend flushes its statistics when it exits; PostgreSQL 15 otherwise holds them
    /// for up to 10 s), `pg_terminate_backend(pid, timeout)` waits until each is gone, and the snapshot is
    /// cleared so the numbers are read afresh. The pool opens new sessions for the next request.
    static func sequentialScans(_ pool: PGPool) async throws -> [String: Int] {
        try await pool.withConnection { connection in
            try await connection.query("""
                SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
                WHERE datname = current_database() AND usename IN ('locality_app', 'locality_owner') AND pid <> pg_backend_pid()
                """)
            try await connection.query("SELECT pg_stat_clear_snapshot()")
            return Dictionary(uniqueKeysWithValues: try await connection.query("""
                SELECT relname::text, seq_scan FROM pg_stat_user_tables WHERE schemaname = 'public'
                """).map { try $0.decode(String.self, Int.self) })
        }
    }

    /// Every list, dashboard, report and CSV read of the document, as the roles that use it, on authority 1 of
    /// the generated data (a large one: its schools are the biggest register) and its first board.
    static func reads(_ database: TestDatabase, _ seed: ScaleSeed) async throws -> [Read] {
        let s = options.seed
        func id(_ kind: String, _ key: String) -> UUID { ScaleSeed.id(seed: s, authority: 0, kind, key) }
        let authority = ScaleSeed.authorityID(seed: s, authority: 0)
        let board = id("board", "0").uuidString.lowercased()
        let supplierNumber = seed.admittedSuppliers(authority: 0)[0]
        let supplier = ScaleSeed.supplier(seed: s, supplierNumber)
        var tokens: [String: String] = [:]
        var samples: [String: String] = [:]
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let tokenService = TokenService(database: scoped)
            for key in ["admin", "auditor", "hosi", "lim:0", "member:0:0"] {
                tokens[key] = try await tokenService.issue(.operatorScope(authorityID: authority, osUser: "test"), userID: id("user", key),
                                                           label: "scale test", expiresAt: nil).secret
            }
            tokens["supplier"] = try await tokenService.issue(.operatorScope(supplierID: supplier.supplierID, osUser: "test"),
                                                              userID: supplier.userID, label: "scale test", expiresAt: nil).secret
        }
        // Sample rows of board 0 (read as the superuser): an awarded project with its contract and a bid, a
        // school causing concern.
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                let row = try #require(try await connection.query("""
                    SELECT p.id::text, c.id::text, b.id::text FROM project p
                    JOIN contract c ON c.authority_id = p.authority_id AND c.project_id = p.id
                    JOIN bid b ON b.authority_id = p.authority_id AND b.id = p.awarded_bid_id
                    WHERE p.authority_id = \(authority) AND p.board_id = \(UUID(uuidString: board)!) AND c.status = 'active'
                    ORDER BY p.created_at DESC LIMIT 1
                    """).first)
                let (project, contract, bid) = try row.decode(String.self, String.self, String.self)
                samples["project"] = project
                samples["contract"] = contract
                samples["bid"] = bid
                samples["urn"] = String(try #require(try await connection.query("""
                    SELECT urn FROM school_concern WHERE authority_id = \(authority) ORDER BY urn LIMIT 1
                    """).first).decode(Int.self, at: 0))
            }
        }
        let year = FinancialYear.containing(CalendarDate.parse(asOf)!).description
        let academicYear = year   // the academic year starting in the same calendar year (2026-27)
        let project = try #require(samples["project"]), contract = try #require(samples["contract"]), bid = try #require(samples["bid"])
        let admin = try #require(tokens["admin"]), auditor = try #require(tokens["auditor"]), hosi = try #require(tokens["hosi"])
        let lim = try #require(tokens["lim:0"]), member = try #require(tokens["member:0:0"]), supplierToken = try #require(tokens["supplier"])
        let urn = try #require(samples["urn"])
        let adminID = id("user", "admin").uuidString.lowercased()
        return [
            Read(operation: "listBoards", role: "admin", token: admin, path: "/v1/boards"),
            Read(operation: "listUsers", role: "admin", token: admin, path: "/v1/users"),
            Read(operation: "listTokens", role: "admin", token: admin, path: "/v1/users/\(adminID)/tokens"),
            Read(operation: "listFundingStreams", role: "admin", token: admin, path: "/v1/funding-streams"),
            Read(operation: "listThemes", role: "admin", token: admin, path: "/v1/themes"),
            Read(operation: "listSocialValueMeasures", role: "admin", token: admin, path: "/v1/social-value-measures"),
            Read(operation: "listAdmissions", role: "admin", token: admin, path: "/v1/admissions"),
            Read(operation: "getSchoolBoardRules", role: "admin", token: admin, path: "/v1/school-board-rules"),
            Read(operation: "listAuditEvents", role: "auditor", token: auditor, path: "/v1/audit-events"),
            Read(operation: "listAuditEvents", role: "auditor", token: auditor, path: "/v1/audit-events?entity_type=project&entity_id=\(project)"),
            Read(operation: "listLedgerEntries", role: "admin", token: admin, path: "/v1/boards/\(board)/ledger?financial_year=\(year)"),
            Read(operation: "getBudget", role: "lim", token: lim, path: "/v1/boards/\(board)/budgets/\(year)"),
            Read(operation: "getAuthorityDashboard", role: "admin", token: admin, path: "/v1/dashboard?financial_year=\(year)"),
            Read(operation: "getAuthorityDashboard", role: "hosi", token: hosi, path: "/v1/dashboard?financial_year=\(year)"),
            Read(operation: "getBoardDashboard", role: "lim", token: lim, path: "/v1/boards/\(board)/dashboard?financial_year=\(year)"),
            Read(operation: "getBoardDashboard", role: "board_member", token: member, path: "/v1/boards/\(board)/dashboard?financial_year=\(year)"),
            Read(operation: "exportMonitoringReport", role: "lim", token: lim,
                 path: "/v1/boards/\(board)/monitoring-report.csv?academic_year=\(academicYear)&term=summer"),
            Read(operation: "listProjects", role: "admin", token: admin, path: "/v1/projects"),
            Read(operation: "listProjects", role: "lim", token: lim, path: "/v1/projects"),
            Read(operation: "listProjects", role: "lim", token: lim, path: "/v1/projects?board_id=\(board)&status=awarded"),
            Read(operation: "listProjects", role: "board_member", token: member, path: "/v1/projects?q=literacy"),
            Read(operation: "listOpportunities", role: "supplier", token: supplierToken, path: "/v1/opportunities"),
            Read(operation: "listQuestions", role: "lim", token: lim, path: "/v1/projects/\(project)/questions"),
            Read(operation: "listBids", role: "lim", token: lim, path: "/v1/projects/\(project)/bids"),
            Read(operation: "getPanel", role: "lim", token: lim, path: "/v1/projects/\(project)/panel"),
            Read(operation: "listBidders", role: "lim", token: lim, path: "/v1/projects/\(project)/bidders"),
            Read(operation: "listDeclarations", role: "lim", token: lim, path: "/v1/projects/\(project)/declarations"),
            Read(operation: "listScores", role: "lim", token: lim, path: "/v1/bids/\(bid)/scores"),
            Read(operation: "getEvaluationReport", role: "lim", token: lim, path: "/v1/projects/\(project)/evaluation"),
            Read(operation: "exportEvaluationReport", role: "auditor", token: auditor, path: "/v1/projects/\(project)/evaluation.csv"),
            Read(operation: "listContracts", role: "admin", token: admin, path: "/v1/contracts"),
            Read(operation: "listContracts", role: "lim", token: lim, path: "/v1/contracts"),
            Read(operation: "listContracts", role: "supplier", token: supplierToken, path: "/v1/contracts"),
            Read(operation: "listReturns", role: "lim", token: lim, path: "/v1/contracts/\(contract)/returns"),
            Read(operation: "listCorrectiveActions", role: "lim", token: lim, path: "/v1/contracts/\(contract)/corrective-actions"),
            Read(operation: "listVisits", role: "lim", token: lim, path: "/v1/contracts/\(contract)/visits"),
            Read(operation: "listComplaints", role: "lim", token: lim, path: "/v1/contracts/\(contract)/complaints"),
            Read(operation: "listSchools", role: "admin", token: admin, path: "/v1/schools"),
            Read(operation: "listSchools", role: "lim", token: lim, path: "/v1/schools?board_id=\(board)&phase=Primary"),
            Read(operation: "listSchools", role: "hosi", token: hosi, path: "/v1/schools?causing_concern=true"),
            Read(operation: "listSchools", role: "admin", token: admin, path: "/v1/schools?q=Oakfield"),
            Read(operation: "getSPIP", role: "hosi", token: hosi, path: "/v1/schools/\(urn)/spip"),
            Read(operation: "listSchoolContracts", role: "hosi", token: hosi, path: "/v1/school-contracts"),
            Read(operation: "listSchoolContracts", role: "supplier", token: supplierToken, path: "/v1/school-contracts"),
            Read(operation: "listAuthorities", role: "supplier", token: supplierToken, path: "/v1/authorities"),
            Read(operation: "listMyAdmissions", role: "supplier", token: supplierToken, path: "/v1/supplier/admissions"),
        ]
    }

    /// `GET /v1/contracts` pages (on main it answered every contract at once, with no `next_cursor`, and read each
    /// contract's KPIs and variations with three more queries per contract).
    @Test func contractsArePaginatedWithAStableOrder() async throws {
        let (database, seed) = try await Fixture.shared.get()
        let authority = ScaleSeed.authorityID(seed: Self.options.seed, authority: 0)
        let admin = try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            try await TokenService(database: ScopedDatabase(pool: pool)).issue(
                .operatorScope(authorityID: authority, osUser: "test"), userID: ScaleSeed.id(seed: Self.options.seed, authority: 0, "user", "admin"),
                label: "scale test", expiresAt: nil).secret
        }
        let expected = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                try await connection.query("""
                    SELECT id::text FROM contract WHERE authority_id = \(authority) ORDER BY created_at DESC, id DESC
                    """).map { try $0.decode(String.self, at: 0) }
            }
        }
        #expect(expected.count > 40)
        _ = seed
        let app = try await buildApplication(testConfiguration(database))
        try await app.test(.live) { client in
            var seen: [String] = []
            var cursor: String?
            var pages = 0
            repeat {
                let path = "/v1/contracts?limit=17" + (cursor.map { "&cursor=\($0)" } ?? "")
                let page = try await client.call(.get, path, token: admin)
                #expect(page.status == .ok, "\(String(buffer: page.body).prefix(300))")
                #expect(page.items.count <= 17)
                seen += page.items.compactMap { $0["id"] as? String }
                // The KPIs come with each contract, as from GET /v1/contracts/{id}.
                let withoutKPIs = page.items.filter { ($0["kpis"] as? [Any])?.isEmpty != false }
                #expect(withoutKPIs.isEmpty)
                cursor = page.jsonObject["next_cursor"] as? String
                pages += 1
            } while cursor != nil && pages < 100
            #expect(seen == expected, "every contract once, newest first")
            let newest = try #require(expected.first)
            let one = try await client.call(.get, "/v1/contracts/\(newest)", token: admin)
            let first = try await client.call(.get, "/v1/contracts?limit=1", token: admin)
            #expect(first.items.first.map { NSDictionary(dictionary: $0) } == NSDictionary(dictionary: one.jsonObject),
                    "a listed contract is the contract itself")
            for bad in ["limit=0", "limit=201", "cursor=not-a-cursor"] {
                let refused = try await client.call(.get, "/v1/contracts?\(bad)", token: admin)
                #expect([400, 422].contains(refused.status.code), "\(bad): \(refused.status)")
            }
        }
    }

    /// Admissions and the authority directory page too (on main they answered every row at once): each row once,
    /// in the documented order, across pages of a size that does not divide the total.
    @Test func admissionsAndAuthoritiesArePaginated() async throws {
        let (database, seed) = try await Fixture.shared.get()
        let s = Self.options.seed
        let authority = ScaleSeed.authorityID(seed: s, authority: 0)
        let supplier = ScaleSeed.supplier(seed: s, seed.admittedSuppliers(authority: 0)[0])
        let (admin, supplierToken) = try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            let tokens = TokenService(database: ScopedDatabase(pool: pool))
            let admin = try await tokens.issue(.operatorScope(authorityID: authority, osUser: "test"),
                                               userID: ScaleSeed.id(seed: s, authority: 0, "user", "admin"),
                                               label: "scale test", expiresAt: nil).secret
            let supplierToken = try await tokens.issue(.operatorScope(supplierID: supplier.supplierID, osUser: "test"),
                                                       userID: supplier.userID, label: "scale test", expiresAt: nil).secret
            return (admin, supplierToken)
        }
        let (admissions, mine, authorities) = try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                let admissions = try await connection.query("""
                    SELECT supplier_id::text FROM supplier_admission WHERE authority_id = \(authority)
                    ORDER BY updated_at DESC, authority_id, supplier_id
                    """).map { try $0.decode(String.self, at: 0) }
                let mine = try await connection.query("""
                    SELECT authority_id::text FROM supplier_admission WHERE supplier_id = \(supplier.supplierID)
                    ORDER BY updated_at DESC, authority_id, supplier_id
                    """).map { try $0.decode(String.self, at: 0) }
                let authorities = try await connection.query("SELECT id::text FROM authority ORDER BY name, id")
                    .map { try $0.decode(String.self, at: 0) }
                return (admissions, mine, authorities)
            }
        }
        #expect(admissions.count > 7)
        #expect(authorities.count == Self.options.authorities)
        let app = try await buildApplication(testConfiguration(database))
        try await app.test(.live) { client in
            func walk(_ path: String, token: String, key: String, limit: Int) async throws -> [String] {
                var seen: [String] = []
                var cursor: String?
                var pages = 0
                repeat {
                    let page = try await client.call(.get, path + "?limit=\(limit)" + (cursor.map { "&cursor=\($0)" } ?? ""), token: token)
                    #expect(page.status == .ok, "\(path): \(String(buffer: page.body).prefix(300))")
                    #expect(page.items.count <= limit)
                    seen += page.items.compactMap { $0[key] as? String }
                    cursor = page.jsonObject["next_cursor"] as? String
                    pages += 1
                } while cursor != nil && pages < 100
                return seen
            }
            #expect(try await walk("/v1/admissions", token: admin, key: "supplier_id", limit: 3) == admissions)
            #expect(try await walk("/v1/supplier/admissions", token: supplierToken, key: "authority_id", limit: 1) == mine)
            #expect(try await walk("/v1/authorities", token: supplierToken, key: "id", limit: 5) == authorities)
            // Staff see their own authority only, on one page.
            #expect(try await walk("/v1/authorities", token: admin, key: "id", limit: 5) == [authority.uuidString.lowercased()])
            for path in ["/v1/admissions", "/v1/supplier/admissions", "/v1/authorities"] {
                for bad in ["limit=0", "limit=201", "cursor=not-a-cursor"] {
                    let token = path == "/v1/admissions" ? admin : supplierToken
                    let refused = try await client.call(.get, "\(path)?\(bad)", token: token)
                    #expect([400, 422].contains(refused.status.code), "\(path)?\(bad): \(refused.status)")
                }
            }
        }
    }
}
