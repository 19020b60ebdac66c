public import Foundation
import Crypto
import LocalityPostgres

/// National-scale data for measurement (`locality-admin seed scale`): authorities × boards × financial years of
/// projects, sealed and evaluated bids, panels and scores, contracts with agreed KPIs, reporting periods and
/// returns, corrective action plans, the budget ledger, schools with concerns and school contracts, and each
/// authority's audit chain.
///
/// Deterministic: every id is `md5(seed, authority, kind, ordinal)` and every choice a hash of the same, so one
/// seed and one `asOf` date always give the same rows (only `updated_at` columns, which triggers set to now(),
/// differ). Authorities are named `scale-<seed>-<n>`; one that already exists is skipped, so an interrupted run
/// resumes where it stopped.
///
/// How it loads: set-based `INSERT … SELECT` over `generate_series`, one transaction per authority, all on the
/// server. Why not COPY: every value here is a function of the seed that PostgreSQL computes as fast as it would
/// parse the same value from COPY text, and INSERT … SELECT moves no bytes through the client (which on this
/// 2-core machine would take CPU from the server formatting and sending hundreds of bytes per row); the rows that
/// depend on other rows (bids on projects, contracts on winning bids, returns on periods) are derived from them
/// with joins instead of being recomputed in Swift. The one sequential part, the audit hash chain, runs in a
/// PL/pgSQL loop over the real `audit_canonical`, so that `locality-admin audit verify` checks it exactly.
///
/// Constraints, foreign keys and triggers all stay on: the ledger trigger maintains the balances (its CHECKs
/// hold at every entry), the KPI trigger sees contracts in negotiation while their revisions are written (the
/// contracts then move to their final state), and the ledger invariant holds per contract. Row-level security
/// is the one thing bypassed: the rows are historical (bids after their deadline, awards long past) and no
/// context could write them through the policies. The loader runs as the owner and, inside each authority's
/// transaction, turns FORCE ROW LEVEL SECURITY off for the tables it writes and back on before COMMIT; the ALTER
/// holds an ACCESS EXCLUSIVE lock until then, so no other session ever sees a table without FORCE.
///
/// The planner's statistics know nothing of the authority being loaded (its rows are new in this transaction),
/// so it would take every join on it for a join of one row and nest seq scans; the tables later statements
/// read are ANALYZEd as they are filled (ANALYZE counts the transaction's own rows).
public struct ScaleSeed: Sendable {
    public struct Options: Sendable, Equatable {
        public var seed: Int
        public var authorities: Int
        public var boards: Int
        public var years: Int
        /// Projects per board per financial year.
        public var projectsPerBoardYear: Int
        /// Schools of a large authority (every tenth); the others have a tenth of it.
        public var schools: Int
        /// Supplier organisations in all (they work for several authorities).
        public var suppliers: Int
        /// Suppliers admitted by each authority.
        public var admittedSuppliers: Int
        /// The day the data describes: the last financial year is the one containing it; projects open on it
        /// have later deadlines, contracts ending before it are complete.
        public var asOf: String

        public init(seed: Int = 42, authorities: Int = 150, boards: Int = 6, years: Int = 10, projectsPerBoardYear: Int = 30,
                    schools: Int = 25_000, suppliers: Int = 1_500, admittedSuppliers: Int = 40, asOf: String) {
            self.seed = seed
            self.authorities = authorities
            self.boards = boards
            self.years = years
            self.projectsPerBoardYear = projectsPerBoardYear
            self.schools = schools
            self.suppliers = suppliers
            self.admittedSuppliers = admittedSuppliers
            self.asOf = asOf
        }

        /// Small but shaped like the real thing: for tests (a few seconds to load).
        public static func small(seed: Int = 42, asOf: String) -> Options {
            Options(seed: seed, authorities: 2, boards: 3, years: 3, projectsPerBoardYear: 12, schools: 3_000, suppliers: 40,
                    admittedSuppliers: 12, asOf: asOf)
        }

        public func validate() throws {
            var validator = Validator()
            validator.check((0...999_999_999).contains(seed), "seed", "must be between 0 and 999999999")
            validator.check((1...10_000).contains(authorities), "authorities", "must be between 1 and 10000")
            validator.check((1...50).contains(boards), "boards", "must be between 1 and 50")
            validator.check((1...30).contains(years), "years", "must be between 1 and 30")
            validator.check((1...1_000).contains(projectsPerBoardYear), "projects", "must be between 1 and 1000")
            validator.check((10...200_000).contains(schools), "schools", "must be between 10 and 200000")
            validator.check((6...suppliers).contains(admittedSuppliers), "admitted_suppliers",
                            "must be at least 6 (bids per project) and at most the number of suppliers")
            validator.check(CalendarDate.parse(asOf) != nil, "as_of", "must be a date (YYYY-MM-DD)")
            try validator.throwIfInvalid()
        }

        /// Schools of authority `index` (0-based): every tenth is large.
        func schools(ofAuthority index: Int) -> Int { index % 10 == 0 ? schools : max(10, schools / 10) }

        var lastFinancialYear: FinancialYear { FinancialYear.containing(CalendarDate.parse(asOf)!) }
        var firstFinancialYear: FinancialYear { FinancialYear(startYear: lastFinancialYear.startYear - years + 1) }
    }

    /// One authority loaded (or skipped because it already existed).
    public struct Progress: Sendable {
        public var authorityIndex: Int
        public var slug: String
        public var rows: Int
        public var seconds: Double
        public var skipped: Bool
    }

    public let database: ScopedDatabase
    public let options: Options

    public init(database: ScopedDatabase, options: Options) {
        self.database = database
        self.options = options
    }

    public static func slug(seed: Int, authority index: Int) -> String { "scale-\(seed)-\(index + 1)" }

    /// The authority's id, as the generator derives it.
    public static func authorityID(seed: Int, authority index: Int) -> UUID {
        UUID(uuidString: md5UUID("\(seed):\(index):authority"))!
    }

    /// The id the generator gives a row of authority `index`: `kind` and `key` as in the SQL below (for example
    /// `user`, `admin` or `lim:0`; `board`, `0`; `project`, `12`).
    public static func id(seed: Int, authority index: Int, _ kind: String, _ key: String) -> UUID {
        UUID(uuidString: md5UUID("\(seed):\(index):\(kind):\(key)"))!
    }

    /// A supplier organisation's id and its one user's (global, not per authority).
    public static func supplier(seed: Int, _ number: Int) -> (supplierID: UUID, userID: UUID) {
        (UUID(uuidString: md5UUID("\(seed):supplier:\(number)"))!, UUID(uuidString: md5UUID("\(seed):supplier-user:\(number)"))!)
    }

    /// The suppliers authority `index` admitted (their numbers).
    public func admittedSuppliers(authority index: Int) -> [Int] {
        (0..<options.admittedSuppliers).map { (index * 7 + $0) % options.suppliers }
    }

    /// Loads every authority in turn (suppliers first), calling `progress` after each; returns the rows written.
    @discardableResult
    public func run(progress: (Progress) -> Void = { _ in }) async throws -> Int {
        try options.validate()
        var total = try await database.pool.withTransaction { connection in
            try await Self.withoutForcedRLS(connection, ["supplier", "app_user"]) {
                var rows = 0
                for statement in Self.supplierStatements {
                    rows += try await connection.query(PGQuery(statement, binds(authority: 0))).affectedRows
                }
                return rows
            }
        }
        for index in 0..<options.authorities {
            let started = ContinuousClock.now
            let slug = Self.slug(seed: options.seed, authority: index)
            let rows = try await database.pool.withTransaction { connection -> Int? in
                let exists = try await connection.query("SELECT 1 FROM authority WHERE slug = \(slug)")
                if !exists.isEmpty { return nil }
                // Fixed time zone: timestamps built from dates mean the same instant in every session.
                try await connection.execute("SET LOCAL TimeZone = 'UTC'")
                try await connection.query("""
                    SELECT set_config('app.authority_id', \(Self.authorityID(seed: options.seed, authority: index).uuidString), true),
                           set_config('scale.key', \("\(options.seed):\(index)"), true),
                           set_config('app.actor', 'cli:scale-seed', true)
                    """)
                return try await Self.withoutForcedRLS(connection, Self.tenantTables) {
                    var rows = 0
                    for statement in Self.authorityStatements {
                        if statement.hasPrefix("ANALYZE") {
                            try await connection.execute(statement)
                        } else {
                            rows += try await connection.query(PGQuery(statement, binds(authority: index))).affectedRows
                        }
                    }
                    try await connection.execute(Self.auditChainSQL)
                    rows += try await connection.query("SELECT seq FROM audit_chain_head WHERE chain_id = app_authority_id()")
                        .first?.decode(Int.self, at: 0) ?? 0
                    return rows
                }
            }
            let seconds = Double((ContinuousClock.now - started).components.attoseconds) / 1e18
                + Double((ContinuousClock.now - started).components.seconds)
            total += rows ?? 0
            progress(Progress(authorityIndex: index, slug: slug, rows: rows ?? 0, seconds: seconds, skipped: rows == nil))
        }
        return total
    }

    /// Refreshes the planner's statistics of every table the generator writes (after a large load, so that plans
    /// are those of the data's real size).
    public func analyze() async throws {
        try await database.pool.withConnection { connection in
            for table in Self.tenantTables + ["supplier", "app_user"] {
                try await connection.execute("ANALYZE \(quoteIdentifier(table))")
            }
        }
    }

    /// Every value a statement may use, in a fixed order ($1…$12); statements use the ones they need.
    private func binds(authority index: Int) -> [PGBind] {
        [
            Self.authorityID(seed: options.seed, authority: index).pg,     // $1  authority id
            "\(options.seed):\(index)".pg,                                 // $2  the authority's hash key
            options.boards.pg,                                             // $3  boards
            options.years.pg,                                              // $4  financial years
            options.projectsPerBoardYear.pg,                               // $5  projects per board and year
            options.firstFinancialYear.startYear.pg,                       // $6  first financial year's start year
            options.asOf.pg,                                               // $7  the as-of date
            options.schools(ofAuthority: index).pg,                        // $8  schools of this authority
            options.admittedSuppliers.pg,                                  // $9  suppliers admitted here
            options.suppliers.pg,                                          // $10 suppliers in all
            String(options.seed).pg,                                       // $11 the seed (global rows' hash key)
            (index + 1).pg,                                                // $12 the authority's number (1-based)
        ]
    }

    /// Turns FORCE ROW LEVEL SECURITY off for `tables` for the length of `body`, in the caller's transaction, and
    /// back on after it (a throw rolls both back with the transaction).
    static func withoutForcedRLS<R: Sendable>(_ connection: PGConnection, _ tables: [String], _ body: () async throws -> R) async throws -> R {
        for table in tables { try await connection.execute("ALTER TABLE \(quoteIdentifier(table)) NO FORCE ROW LEVEL SECURITY") }
        let result = try await body()
        for table in tables { try await connection.execute("ALTER TABLE \(quoteIdentifier(table)) FORCE ROW LEVEL SECURITY") }
        return result
    }

    public static let tenantTables = [
        "authority", "board", "funding_stream", "theme", "app_user", "role_assignment", "supplier_admission", "budget_ledger",
        "budget_balance", "project", "bid", "evaluation_panel_member", "conflict_declaration", "scorecard", "individual_score",
        "moderated_score", "contract", "contract_kpi", "kpi_revision", "kpi_acceptance", "reporting_period", "kpi_return",
        "corrective_action_plan", "school", "school_board_rule", "concern_category", "school_concern", "school_contract",
        "audit_event", "audit_chain_head",
    ]

    static func md5UUID(_ text: String) -> String {
        let digest = Insecure.MD5.hash(data: Data(text.utf8)).map { String(format: "%02x", $0) }.joined()
        let c = Array(digest)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }

    // MARK: SQL

    /// `md5(key:kind:ordinal)::uuid`: the same derivation as `authorityID` (ordinal = the authority index).
    private static func id(_ kind: String, _ ordinal: String) -> String { "md5($2 || ':\(kind):' || (\(ordinal)))::uuid" }
    /// A deterministic number in 0..<m from the authority's key, a tag and an ordinal.
    private static func pick(_ tag: String, _ ordinal: String, _ m: String) -> String {
        "((hashtextextended($2 || ':\(tag):' || (\(ordinal)), 0) & 2147483647) % (\(m)))"
    }
    private static let supplierID = "md5($11 || ':supplier:' || ((($12 - 1) * 7 + m) % $10))::uuid"
    private static let asOf = "$7::date"
    private static let lastYear = "($6 + $4 - 1)"
    private static let fyText = "(fy::text || '-' || lpad(((fy + 1) % 100)::text, 2, '0'))"

    static let supplierStatements = [
        """
        INSERT INTO supplier (id, name, address, contact_name, contact_email, created_at)
        SELECT md5($11 || ':supplier:' || k)::uuid, 'Scale supplier ' || (k + 1) || ' Ltd', (k + 1) || ' High Street',
               'Contact ' || (k + 1), 'bids@supplier' || (k + 1) || '.scale' || $11 || '.example.test', '2015-01-01'::timestamptz
        FROM generate_series(0, $10 - 1) k
        ON CONFLICT DO NOTHING
        """,
        """
        INSERT INTO app_user (id, supplier_id, email, display_name, created_at)
        SELECT md5($11 || ':supplier-user:' || k)::uuid, md5($11 || ':supplier:' || k)::uuid,
               'user@supplier' || (k + 1) || '.scale' || $11 || '.example.test', 'Bid writer ' || (k + 1), '2015-01-01'::timestamptz
        FROM generate_series(0, $10 - 1) k
        ON CONFLICT DO NOTHING
        """,
    ]

    static let words = "(ARRAY['speech', 'language', 'autism', 'attendance', 'literacy', 'numeracy', 'transition', 'wellbeing', 'inclusion', 'training', 'governance', 'curriculum'])"

    static let authorityStatements: [String] = [
        // The authority, its funding streams, boards, themes, concern categories.
        """
        INSERT INTO authority (id, slug, name, created_at)
        VALUES ($1, 'scale-' || $11 || '-' || $12, 'Scale authority ' || $12, make_date($6::int, 1, 1)::timestamptz)
        """,
        """
        INSERT INTO funding_stream (authority_id, id, code, name)
        VALUES ($1, \(id("fs", "'locality'")), 'locality', 'Locality budget'),
               ($1, \(id("fs", "'school_improvement'")), 'school_improvement', 'School improvement')
        """,
        """
        INSERT INTO board (authority_id, id, name, short_code, area, chair, created_at)
        SELECT $1, \(id("board", "j")), 'Board ' || (j + 1), 'B' || (j + 1), 'District ' || (j + 1), 'Chair ' || (j + 1),
               make_date($6::int, 1, 1)::timestamptz
        FROM generate_series(0, $3 - 1) j
        """,
        """
        INSERT INTO theme (authority_id, id, category, name, description, created_at)
        SELECT $1, \(id("theme", "t")), 'send', (ARRAY['Workforce training', 'Specific support for pupils', 'Targeted support for schools',
               'Addressing barriers to access'])[t + 1], 'Scale theme', make_date($6::int, 1, 1)::timestamptz
        FROM generate_series(0, 3) t
        """,
        """
        INSERT INTO concern_category (authority_id, code, name)
        VALUES ($1, 'inadequate', 'Ofsted: inadequate'), ($1, 'requires_improvement', 'Ofsted: requires improvement')
        """,
        // Staff: an admin, an auditor, a HoSI, one LIM and three board members per board.
        """
        INSERT INTO app_user (id, authority_id, email, display_name, created_at)
        SELECT \(id("user", "u.key")), $1, replace(u.key, ':', '.') || '@a' || $12 || '.scale' || $11 || '.example.test',
               initcap(replace(u.key, ':', ' ')), make_date($6::int, 1, 1)::timestamptz
        FROM (SELECT unnest(ARRAY['admin', 'auditor', 'hosi']) AS key
              UNION ALL SELECT 'lim:' || j FROM generate_series(0, $3 - 1) j
              UNION ALL SELECT 'member:' || j || ':' || m FROM generate_series(0, $3 - 1) j, generate_series(0, 2) m) u
        """,
        """
        INSERT INTO role_assignment (authority_id, id, user_id, role, board_id)
        SELECT $1, \(id("role", "r.key")), \(id("user", "r.key")), r.role::user_role, r.board
        FROM (SELECT 'admin' AS key, 'authority_admin' AS role, NULL::uuid AS board
              UNION ALL SELECT 'auditor', 'auditor', NULL UNION ALL SELECT 'hosi', 'hosi', NULL
              UNION ALL SELECT 'lim:' || j, 'lim', \(id("board", "j")) FROM generate_series(0, $3 - 1) j
              UNION ALL SELECT 'member:' || j || ':' || m, 'board_member', \(id("board", "j"))
                        FROM generate_series(0, $3 - 1) j, generate_series(0, 2) m) r
        """,
        "ANALYZE role_assignment, app_user",
        // Admitted suppliers: a window of the global list, different per authority.
        """
        INSERT INTO supplier_admission (authority_id, supplier_id, status, declarations, insurance_expires_on, decision_reason, decided_at, created_at)
        SELECT $1, \(supplierID), 'approved',
               jsonb_build_object('safeguarding_policy', true, 'safeguarding_lead', 'Safeguarding lead', 'insurance_provider', 'Mutual',
                                  'insurance_expires_on', (\(asOf) + 365)::text, 'dbs_checks', true, 'business_continuity_plan', true,
                                  'data_protection_compliance', true, 'environmental_policy', true),
               \(asOf) + 365, 'Meets the framework requirements', make_date($6::int, 2, 1)::timestamptz, make_date($6::int, 1, 15)::timestamptz
        FROM generate_series(0, $9 - 1) m
        """,
        // Budgets: one allocation per board, year and stream, generous enough for every project's earmark and
        // commitment at once (2 × the largest maximum value per project) and the school contracts.
        """
        INSERT INTO budget_ledger (authority_id, id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason, created_at)
        SELECT $1, \(id("alloc", "j || ':' || fy || ':' || s")), \(id("board", "j")), \(fyText),
               \(id("fs", "s")), 'allocation',
               CASE s WHEN 'locality' THEN $5 * 8000000 ELSE $5 * 8000000 + $8 * 40000 / $3 END,
               'allocation', 'cli:scale-seed', 'Annual allocation', make_date(fy::int, 4, 1)::timestamptz
        FROM generate_series(0, $3 - 1) j, generate_series($6, $6 + $4 - 1) fy, unnest(ARRAY['locality', 'school_improvement']) s
        ORDER BY 4, 2
        """,
        // Projects: n runs over boards × years × projects; the last year has open, draft and closed ones, earlier
        // years are decided (mostly awarded).
        """
        INSERT INTO project (authority_id, id, board_id, theme_id, funding_stream_id, financial_year, title, description, outcomes_sought,
                             max_value_pence, bid_deadline, questions_close_at, planned_start, planned_end, contract_manager, evaluation,
                             status, status_reason, version, published_at, created_by, created_at, updated_at, awarded_bid_id)
        SELECT $1, g.pid, \(id("board", "g.j")), \(id("theme", pick("theme", "g.n", "4"))),
               \(id("fs", "CASE WHEN \(pick("stream", "g.n", "10")) = 0 THEN 'school_improvement' ELSE 'locality' END")),
               \(fyText.replacingOccurrences(of: "fy", with: "g.fy")),
               'Project ' || (g.n + 1) || ': ' || \(words)[1 + \(pick("w1", "g.n", "12"))] || ' ' || \(words)[1 + \(pick("w2", "g.n", "12"))],
               'Support for ' || \(words)[1 + \(pick("w3", "g.n", "12"))] || ' across the schools of Board ' || (g.j + 1) || ', with '
                   || \(words)[1 + \(pick("w4", "g.n", "12"))] || ' and ' || \(words)[1 + \(pick("w5", "g.n", "12"))] || '.',
               'Better outcomes for children and young people with SEND.',
               1000000 + \(pick("value", "g.n", "30")) * 100000, g.deadline, g.deadline - interval '2 days',
               (g.deadline + interval '30 days')::date, (g.deadline + interval '30 days')::date + 180 + \(pick("length", "g.n", "180"))::int,
               'LIM ' || (g.j + 1),
               '{"price_weight": 40, "quality_weight": 50, "social_value_weight": 10,
                 "quality_criteria": [{"name": "Approach", "weight": 60}, {"name": "Delivery", "weight": 40}],
                 "social_value_criteria": [{"name": "Social value", "weight": 100}]}'::jsonb,
               g.status::project_status,
               CASE g.status WHEN 'cancelled' THEN 'Withdrawn by the board' WHEN 'unsuccessful' THEN 'No suitable bid' END,
               CASE g.status WHEN 'draft' THEN 1 WHEN 'open' THEN 2 ELSE 3 END,
               CASE WHEN g.status <> 'draft' THEN g.deadline - interval '30 days' END,
               \(id("user", "'lim:' || g.j")), g.deadline - interval '40 days', g.deadline - interval '40 days',
               CASE WHEN g.status = 'awarded' THEN md5($2 || ':bid:' || g.pid || ':0')::uuid END
        FROM (
            SELECT s.*,
                   CASE WHEN s.last AND s.h < 25 THEN \(asOf) + (7 + s.k * 20 / $5)::int
                        WHEN s.last AND s.h < 35 THEN \(asOf) + 30
                        WHEN s.last AND s.h < 50 THEN \(asOf) - (1 + s.k * 10 / $5)::int
                        WHEN s.last THEN \(asOf) - (20 + s.k * 150 / $5)::int
                        ELSE make_date(s.fy::int, 4, 1) + (10 + s.k * 300 / $5)::int END + time '12:00' AS deadline,
                   CASE WHEN s.last AND s.h < 25 THEN 'open' WHEN s.last AND s.h < 35 THEN 'draft' WHEN s.last AND s.h < 50 THEN 'open'
                        WHEN s.last THEN 'awarded' WHEN s.h < 80 THEN 'awarded' WHEN s.h < 90 THEN 'cancelled' ELSE 'unsuccessful' END AS status
            FROM (SELECT n, \(id("project", "n")) AS pid, n % $3 AS j, $6 + (n / $3) / $5 AS fy, (n / $3) % $5 AS k,
                         (n / $3) / $5 = $4 - 1 AS last, \(pick("status", "n", "100")) AS h
                  FROM generate_series(0, $3 * $4 * $5 - 1) n) s
        ) g
        """,
        "ANALYZE project",
        // Bids: 3–6 per published project from consecutive admitted suppliers; bid 0 is the cheapest and the best.
        """
        INSERT INTO bid (authority_id, id, project_id, board_id, supplier_id, status, price_pence, approach, outputs, kpis, declarations,
                         submitted_at, receipt_sha256, created_at, updated_at, outcome_note)
        SELECT $1, x.bid_id, x.pid, x.board_id, md5($11 || ':supplier:' || ((($12 - 1) * 7 + x.m) % $10))::uuid, x.status::bid_status,
               x.max_value * (60 + x.b * 5 + \(pick("price", "x.bid_id", "5"))) / 100,
               'Our approach: ' || \(words)[1 + \(pick("a1", "x.bid_id", "12"))] || ' sessions led by specialists, with '
                   || \(words)[1 + \(pick("a2", "x.bid_id", "12"))] || ' follow-up.', '',
               jsonb_build_array(
                   jsonb_build_object('title', 'Pupils supported', 'measure', 'Pupils taking part', 'unit', 'count', 'baseline', 0,
                                      'target', 40 + x.b, 'target_date', x.planned_end::text, 'frequency', 'termly',
                                      'evidence_source', 'Attendance registers'),
                   jsonb_build_object('title', 'Staff trained', 'measure', 'Share of staff trained', 'unit', 'percentage', 'baseline', 10,
                                      'target', 80, 'target_date', x.planned_end::text, 'frequency', 'termly',
                                      'evidence_source', 'Training records')),
               CASE WHEN x.status = 'draft' THEN '{}'::jsonb
                    ELSE '{"accepts_terms": true, "information_accurate": true, "conflicts_of_interest": ""}'::jsonb END,
               CASE WHEN x.status <> 'draft' THEN x.deadline - (1 + x.b) * interval '1 day' END,
               CASE WHEN x.status <> 'draft' THEN sha256(convert_to(x.bid_id::text, 'UTF8')) END,
               x.published_at + interval '1 day' + x.b * interval '1 hour',
               coalesce(CASE WHEN x.status <> 'draft' THEN x.deadline - (1 + x.b) * interval '1 day' END,
                        x.published_at + interval '1 day' + x.b * interval '1 hour'),
               CASE WHEN x.status IN ('awarded', 'unsuccessful') THEN 'Scored in evaluation.' END
        FROM (SELECT p.id AS pid, p.board_id, p.max_value_pence AS max_value, p.bid_deadline AS deadline, p.published_at, p.planned_end, b,
                     md5($2 || ':bid:' || p.id || ':' || b)::uuid AS bid_id,
                     (\(pick("bidder", "p.id", "$9")) + b) % $9 AS m,
                     CASE WHEN p.status = 'awarded' AND b = 0 THEN 'awarded'
                          WHEN p.status IN ('awarded', 'unsuccessful') THEN 'unsuccessful'
                          WHEN p.status = 'open' AND p.bid_deadline > \(asOf) AND b % 2 = 1 THEN 'draft'
                          ELSE 'submitted' END AS status
              FROM project p, generate_series(0, 2 + \(pick("bids", "p.id", "4"))) b
              WHERE p.authority_id = $1 AND p.status <> 'draft') x
        """,
        "ANALYZE bid",
        // Evaluation of every project past its deadline: the board's three members on the panel, no conflicts,
        // submitted scorecards with three criteria, and the LIM's moderated scores for decided projects.
        """
        INSERT INTO evaluation_panel_member (authority_id, project_id, user_id, added_at)
        SELECT $1, p.id, r.user_id, p.bid_deadline + interval '1 hour'
        FROM project p JOIN role_assignment r ON r.authority_id = p.authority_id AND r.board_id = p.board_id AND r.role = 'board_member'
        WHERE p.authority_id = $1 AND p.status <> 'draft' AND p.bid_deadline <= \(asOf)
        """,
        "ANALYZE evaluation_panel_member",
        """
        INSERT INTO conflict_declaration (authority_id, project_id, user_id, supplier_id, conflicted, declared_at)
        SELECT $1, m.project_id, m.user_id, b.supplier_id, false, m.added_at + interval '1 hour'
        FROM evaluation_panel_member m JOIN bid b ON b.authority_id = m.authority_id AND b.project_id = m.project_id
        WHERE m.authority_id = $1 AND b.status NOT IN ('draft', 'withdrawn')
        """,
        """
        INSERT INTO scorecard (authority_id, bid_id, user_id, submitted_at)
        SELECT $1, b.id, m.user_id, m.added_at + interval '3 days'
        FROM evaluation_panel_member m JOIN bid b ON b.authority_id = m.authority_id AND b.project_id = m.project_id
        WHERE m.authority_id = $1 AND b.status NOT IN ('draft', 'withdrawn')
        """,
        "ANALYZE scorecard",
        """
        INSERT INTO individual_score (authority_id, bid_id, board_id, user_id, criterion_kind, criterion, score, comment, submitted, updated_at)
        SELECT $1, c.bid_id, b.board_id, c.user_id, k.kind::criterion_kind, k.name,
               CASE WHEN b.status = 'awarded' THEN 5 ELSE 1 + \(pick("score", "c.bid_id::text || c.user_id::text || k.name", "4")) END,
               'Evidence reviewed against the criterion.', true, c.submitted_at
        FROM scorecard c JOIN bid b ON b.authority_id = c.authority_id AND b.id = c.bid_id,
             (VALUES ('quality', 'Approach'), ('quality', 'Delivery'), ('social_value', 'Social value')) k (kind, name)
        WHERE c.authority_id = $1
        """,
        """
        INSERT INTO moderated_score (authority_id, bid_id, criterion_kind, criterion, score, rationale, recorded_by, recorded_at)
        SELECT $1, b.id, k.kind::criterion_kind, k.name,
               CASE WHEN b.status = 'awarded' THEN 5 ELSE 1 + \(pick("moderated", "b.id || k.name", "4")) END,
               'Panel consensus after discussion.', 'user:' || p.created_by, p.bid_deadline + interval '5 days'
        FROM bid b JOIN project p ON p.authority_id = b.authority_id AND p.id = b.project_id,
             (VALUES ('quality', 'Approach'), ('quality', 'Delivery'), ('social_value', 'Social value')) k (kind, name)
        WHERE b.authority_id = $1 AND p.status IN ('awarded', 'unsuccessful') AND b.status NOT IN ('draft', 'withdrawn')
        """,
        // Money for projects: the earmark at publication.
        """
        INSERT INTO budget_ledger (authority_id, id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason, created_at)
        SELECT $1, md5($2 || ':earmark:' || p.id)::uuid, p.board_id, p.financial_year, p.funding_stream_id, 'earmark', p.max_value_pence,
               'project:' || p.id, 'user:' || p.created_by, 'Earmarked on publication', p.published_at
        FROM project p WHERE p.authority_id = $1 AND p.status <> 'draft'
        ORDER BY p.published_at, p.id
        """,
        // Contracts of awarded projects, in negotiation while their KPIs are written (the KPI trigger requires it).
        """
        INSERT INTO contract (authority_id, id, project_id, board_id, bid_id, supplier_id, value_pence, start_date, end_date, contract_manager,
                              standstill_ends_on, social_value, created_at, updated_at)
        SELECT $1, md5($2 || ':contract:' || p.id)::uuid, p.id, p.board_id, b.id, b.supplier_id, b.price_pence, p.planned_start, p.planned_end,
               p.contract_manager, (p.bid_deadline + interval '14 days')::date, '[]'::jsonb,
               p.bid_deadline + interval '10 days', p.bid_deadline + interval '10 days'
        FROM project p JOIN bid b ON b.authority_id = p.authority_id AND b.id = p.awarded_bid_id
        WHERE p.authority_id = $1 AND p.status = 'awarded'
        """,
        "ANALYZE contract",
        """
        INSERT INTO contract_kpi (authority_id, id, contract_id, board_id, supplier_id, created_at)
        SELECT $1, md5($2 || ':kpi:' || c.id || ':' || q)::uuid, c.id, c.board_id, c.supplier_id, c.created_at + q * interval '1 second'
        FROM contract c, generate_series(0, 1 + \(pick("kpis", "c.id", "2"))) q
        WHERE c.authority_id = $1
        """,
        "ANALYZE contract_kpi",
        """
        INSERT INTO kpi_revision (authority_id, id, kpi_id, board_id, supplier_id, revision, proposed_by, actor, definition, reason, created_at)
        SELECT $1, md5($2 || ':revision:' || k.id || ':1')::uuid, k.id, k.board_id, k.supplier_id, 1, 'supplier', 'user:' || u.id,
               jsonb_build_object('title', 'KPI ' || (extract(epoch FROM k.created_at - c.created_at)::int + 1), 'measure', 'Pupils taking part', 'unit', 'count',
                                  'baseline', 0, 'target', 40, 'target_date', c.end_date::text, 'frequency', 'termly',
                                  'evidence_source', 'Attendance registers', 'amber_threshold_percent', 80),
               'Proposed in the bid', k.created_at
        FROM contract_kpi k JOIN contract c ON c.authority_id = k.authority_id AND c.id = k.contract_id
        JOIN app_user u ON u.supplier_id = c.supplier_id
        WHERE k.authority_id = $1
        """,
        "ANALYZE kpi_revision",
        // Both parties accepted the KPIs of every contract that has started by the as-of date.
        """
        INSERT INTO kpi_acceptance (authority_id, revision_id, board_id, supplier_id, party, actor, accepted_at)
        SELECT $1, r.id, r.board_id, r.supplier_id, party::contract_party, CASE party WHEN 'board' THEN 'user:' || p.created_by ELSE r.actor END,
               r.created_at + interval '2 days'
        FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id
        JOIN contract c ON c.authority_id = k.authority_id AND c.id = k.contract_id
        JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id,
        unnest(ARRAY['board', 'supplier']) party
        WHERE r.authority_id = $1 AND c.start_date <= \(asOf)
        """,
        // Then each contract takes its state on the as-of date: ended (completed, or one in ten terminated at half
        // paid), active, or still negotiating.
        """
        UPDATE contract c SET
            status = s.status::contract_status,
            started_at = CASE WHEN s.status <> 'kpi_negotiation' THEN c.start_date + time '09:00' END,
            amount_paid_pence = CASE s.status WHEN 'completed' THEN c.value_pence WHEN 'terminated' THEN c.value_pence / 2 END,
            termination_reason = CASE WHEN s.status = 'terminated' THEN 'Ended early by agreement' END
        FROM (SELECT id, CASE WHEN end_date < \(asOf) THEN (CASE WHEN \(pick("ends", "id", "10")) = 0 THEN 'terminated' ELSE 'completed' END)
                              WHEN start_date <= \(asOf) THEN 'active' ELSE 'kpi_negotiation' END AS status
              FROM contract WHERE authority_id = $1) s
        WHERE c.authority_id = $1 AND c.id = s.id
        """,
        // Money for awards and endings: commitment and release at the award, release of cancelled and
        // unsuccessful projects' earmarks, spend (and the rest decommitted) when a contract ended.
        """
        INSERT INTO budget_ledger (authority_id, id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason, created_at)
        SELECT $1, md5($2 || ':' || e.kind || ':' || e.ref)::uuid, p.board_id, p.financial_year, p.funding_stream_id, e.kind::ledger_entry_kind,
               e.amount, e.ref, 'user:' || p.created_by, e.reason, e.at
        FROM project p
        LEFT JOIN contract c ON c.authority_id = p.authority_id AND c.project_id = p.id
        CROSS JOIN LATERAL (VALUES
            (1, 'commitment', c.value_pence, 'contract:project:' || p.id, 'Committed on award', c.created_at),
            (2, 'release', CASE WHEN p.status IN ('awarded', 'cancelled', 'unsuccessful') THEN p.max_value_pence END, 'project:' || p.id,
                'Earmark released', coalesce(c.created_at, p.bid_deadline + interval '5 days')),
            (3, 'spend', c.amount_paid_pence, 'contract:' || c.id, 'Contract ' || c.status, c.end_date + time '17:00'),
            (4, 'decommitment', CASE WHEN c.status = 'terminated' THEN c.value_pence - c.amount_paid_pence END, 'contract:' || c.id,
                'Contract terminated', c.end_date + time '17:00')
        ) e (step, kind, amount, ref, reason, at)
        WHERE p.authority_id = $1 AND p.status <> 'draft' AND e.amount > 0
        ORDER BY e.step, e.at, p.id
        """,
        // Monitoring: a period every 120 days of each started contract, a return for most periods already due
        // (one in ten of an active contract's is overdue), and a corrective action plan for each KPI rated Red.
        """
        INSERT INTO reporting_period (authority_id, id, contract_id, board_id, supplier_id, kpi_id, label, starts, ends, due)
        SELECT $1, md5($2 || ':period:' || k.id || ':' || q)::uuid, c.id, c.board_id, c.supplier_id, k.id, 'Period ' || (q + 1),
               c.start_date + q * 120, least(c.start_date + q * 120 + 119, c.end_date), least(c.start_date + q * 120 + 119, c.end_date) + 14
        FROM contract c JOIN contract_kpi k ON k.authority_id = c.authority_id AND k.contract_id = c.id,
             generate_series(0, (c.end_date - c.start_date) / 120) q
        WHERE c.authority_id = $1 AND c.status <> 'kpi_negotiation'
        """,
        "ANALYZE reporting_period",
        """
        INSERT INTO kpi_return (authority_id, id, period_id, board_id, supplier_id, version, actual, narrative, computed_rating, submitted_by, submitted_at)
        SELECT $1, md5($2 || ':return:' || rp.id)::uuid, rp.id, rp.board_id, rp.supplier_id, 1, 10 + \(pick("actual", "rp.id", "90")),
               'Delivered as planned this period.',
               CASE WHEN \(pick("rating", "rp.id", "10")) < 7 THEN 'green' WHEN \(pick("rating", "rp.id", "10")) < 9 THEN 'amber' ELSE 'red' END,
               'user:' || u.id, rp.ends + time '12:00' + interval '7 days'
        FROM reporting_period rp JOIN contract c ON c.authority_id = rp.authority_id AND c.id = rp.contract_id
        JOIN app_user u ON u.supplier_id = c.supplier_id
        WHERE rp.authority_id = $1 AND rp.due < \(asOf) AND NOT (c.status = 'active' AND \(pick("overdue", "rp.id", "10")) = 0)
        """,
        "ANALYZE kpi_return",
        """
        INSERT INTO corrective_action_plan (authority_id, id, contract_id, kpi_id, trigger, status, root_cause, outcome, opened_at)
        SELECT DISTINCT ON (rp.kpi_id) $1, md5($2 || ':plan:' || rp.kpi_id)::uuid, rp.contract_id, rp.kpi_id, 'red',
               CASE WHEN c.status = 'active' THEN 'open' ELSE 'closed' END, 'Staff turnover delayed sessions',
               CASE WHEN c.status = 'active' THEN NULL ELSE 'resolved' END, x.submitted_at
        FROM kpi_return x JOIN reporting_period rp ON rp.authority_id = x.authority_id AND rp.id = x.period_id
        JOIN contract c ON c.authority_id = rp.authority_id AND c.id = rp.contract_id
        WHERE x.authority_id = $1 AND x.computed_rating = 'red'
        ORDER BY rp.kpi_id, rp.starts
        """,
        // Schools: every tenth authority is large; one in fifty schools causes concern and has a school contract.
        """
        INSERT INTO school_board_rule (authority_id, source, value, board_id)
        SELECT $1, 'district', 'District ' || (j + 1), \(id("board", "j")) FROM generate_series(0, $3 - 1) j
        """,
        """
        INSERT INTO school (authority_id, urn, la_code, name, establishment_type, phase, status, is_open, open_date, close_date, district,
                            ward, constituency, postcode, board_id, source_sha256, imported_at, updated_at)
        SELECT $1, 100000 + n, (800 + $12)::text,
               (ARRAY['St Mary''s', 'Oakfield', 'Riverside', 'Hillside', 'Meadow', 'Parkside', 'Church', 'Moorland'])[1 + \(pick("n1", "n", "8"))]
                   || ' ' || (ARRAY['Primary School', 'Academy', 'Community School', 'Infant School', 'Junior School', 'High School'])[1 + \(pick("n2", "n", "6"))]
                   || ' ' || (n + 1),
               'Community school', (ARRAY['Primary', 'Primary', 'Primary', 'Secondary', 'Special'])[1 + \(pick("phase", "n", "5"))],
               CASE WHEN \(pick("open", "n", "20")) = 0 THEN 'Closed' ELSE 'Open' END, \(pick("open", "n", "20")) <> 0,
               date '1990-09-01' + \(pick("opened", "n", "8000"))::int,
               CASE WHEN \(pick("open", "n", "20")) = 0 THEN date '2019-08-31' END,
               'District ' || (n % $3 + 1), 'Ward ' || (n % 97), 'Constituency ' || (n % 7), 'AB' || (n % 99) || ' 1CD',
               \(id("board", "n % $3")), sha256(convert_to($2 || ':school:' || n, 'UTF8')),
               make_date($6::int, 1, 1)::timestamptz, make_date($6::int, 1, 1)::timestamptz
        FROM generate_series(0, $8 - 1) n
        """,
        "ANALYZE school",
        """
        INSERT INTO school_concern (authority_id, id, urn, category, reason, since, recorded_by, created_at)
        SELECT $1, md5($2 || ':concern:' || s.urn)::uuid, s.urn,
               CASE WHEN \(pick("category", "s.urn", "2")) = 0 THEN 'inadequate' ELSE 'requires_improvement' END,
               'Ofsted inspection outcome', \(asOf) - 30 - \(pick("since", "s.urn", "600"))::int, 'user:' || \(id("user", "'hosi'")),
               (\(asOf) - 30 - \(pick("since", "s.urn", "600"))::int) + time '10:00'
        FROM school s WHERE s.authority_id = $1 AND s.urn % 50 = 7 AND s.is_open
        """,
        "ANALYZE school_concern",
        """
        INSERT INTO school_contract (authority_id, id, urn, board_id, supplier_id, service, description, value_pence, financial_year,
                                     start_date, end_date, recorded_by, created_at)
        SELECT $1, md5($2 || ':school-contract:' || s.urn)::uuid, s.urn, s.board_id,
               md5($11 || ':supplier:' || ((($12 - 1) * 7 + \(pick("sc-supplier", "s.urn", "$9"))) % $10))::uuid,
               (ARRAY['interim_headteacher', 'governance_audit', 'curriculum_review', 'safeguarding_review', 'peer_review'])[1 + \(pick("service", "s.urn", "5"))],
               'Support on the school''s improvement plan', 500000 + \(pick("sc-value", "s.urn", "10")) * 50000,
               \(fyText.replacingOccurrences(of: "fy", with: lastYear)), c.since + 30, c.since + 210, c.recorded_by, c.created_at + interval '20 days'
        FROM school_concern c JOIN school s ON s.authority_id = c.authority_id AND s.urn = c.urn
        WHERE c.authority_id = $1
        """,
        "ANALYZE school_contract",
        """
        INSERT INTO budget_ledger (authority_id, id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason, created_at)
        SELECT $1, md5($2 || ':commitment:school_contract:' || sc.id)::uuid, sc.board_id, sc.financial_year, \(id("fs", "'school_improvement'")),
               'commitment', sc.value_pence, 'school_contract:' || sc.id, sc.recorded_by, 'School improvement: ' || sc.service, sc.created_at
        FROM school_contract sc WHERE sc.authority_id = $1
        ORDER BY sc.created_at, sc.id
        """,
    ]

    /// The authority's audit chain, in the order things happened: each event hashed over the previous one with
    /// the schema's own `audit_canonical`, exactly as `append_audit_event` does. (A DO block takes no parameters:
    /// it reads the authority and the hash key from the transaction's settings.)
    static let auditChainSQL = """
        DO $$
        DECLARE
            v_chain uuid := app_authority_id();
            v_key text := current_setting('scale.key');
            v_prev bytea := decode(repeat('00', 32), 'hex');
            v_seq bigint := 0;
            e audit_event;
            r record;
        BEGIN
            FOR r IN
                SELECT * FROM (
                    SELECT p.created_at AS occurred, 'user:' || p.created_by AS actor, 'project.create' AS action, 'project' AS entity_type,
                           p.id::text AS entity_id, NULL::jsonb AS before, jsonb_build_object('status', 'draft', 'title', p.title) AS after
                    FROM project p WHERE p.authority_id = v_chain
                    UNION ALL
                    SELECT p.published_at, 'user:' || p.created_by, 'project.publish', 'project', p.id::text,
                           jsonb_build_object('status', 'draft'), jsonb_build_object('status', 'open', 'bid_deadline', p.bid_deadline)
                    FROM project p WHERE p.authority_id = v_chain AND p.status <> 'draft'
                    UNION ALL
                    SELECT p.bid_deadline + interval '5 days', 'user:' || p.created_by,
                           CASE p.status WHEN 'cancelled' THEN 'project.cancel' ELSE 'project.unsuccessful' END, 'project', p.id::text,
                           jsonb_build_object('status', 'open'), jsonb_build_object('status', p.status, 'reason', p.status_reason)
                    FROM project p WHERE p.authority_id = v_chain AND p.status IN ('cancelled', 'unsuccessful')
                    UNION ALL
                    SELECT c.created_at, 'user:' || p.created_by, 'project.award', 'project', p.id::text, jsonb_build_object('status', 'closed'),
                           jsonb_build_object('status', 'awarded', 'contract_id', c.id, 'value_pence', c.value_pence)
                    FROM contract c JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id WHERE c.authority_id = v_chain
                    UNION ALL
                    SELECT c.started_at, 'user:' || p.created_by, 'contract.start', 'contract', c.id::text,
                           jsonb_build_object('status', 'kpi_negotiation'), jsonb_build_object('status', 'active')
                    FROM contract c JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id
                    WHERE c.authority_id = v_chain AND c.started_at IS NOT NULL
                    UNION ALL
                    SELECT c.end_date + time '17:00', 'user:' || p.created_by,
                           CASE c.status WHEN 'completed' THEN 'contract.complete' ELSE 'contract.terminate' END, 'contract', c.id::text,
                           jsonb_build_object('status', 'active'), jsonb_build_object('status', c.status, 'amount_paid_pence', c.amount_paid_pence)
                    FROM contract c JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id
                    WHERE c.authority_id = v_chain AND c.status IN ('completed', 'terminated')
                    UNION ALL
                    SELECT s.created_at, s.recorded_by, 'school.concern', 'school', s.urn::text, NULL,
                           jsonb_build_object('category', s.category, 'since', s.since)
                    FROM school_concern s WHERE s.authority_id = v_chain
                    UNION ALL
                    SELECT sc.created_at, sc.recorded_by, 'spip.contract', 'school', sc.urn::text, NULL,
                           jsonb_build_object('contract_id', sc.id, 'value_pence', sc.value_pence)
                    FROM school_contract sc WHERE sc.authority_id = v_chain
                ) events ORDER BY occurred, entity_id, action
            LOOP
                v_seq := v_seq + 1;
                e := ROW(v_chain, v_seq, v_chain, NULL, md5(v_key || ':audit:' || v_seq)::uuid, r.occurred, r.actor, r.action, r.entity_type,
                         r.entity_id, r.before, r.after, NULL, v_prev, NULL);
                e.hash := sha256(v_prev || convert_to(audit_canonical(e), 'UTF8'));
                INSERT INTO audit_event SELECT e.*;
                v_prev := e.hash;
            END LOOP;
            INSERT INTO audit_chain_head (chain_id, seq, hash) VALUES (v_chain, v_seq, v_prev);
        END
        $$
        """
}
