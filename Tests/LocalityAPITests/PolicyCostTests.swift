import Foundation
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// What a row-level policy costs per row (issue 14, migration 0026). The tenant context does not change within a
/// statement, so a policy reads it through a scalar sub-select, `(SELECT app_authority_id())`, which PostgreSQL
/// runs once per statement (an InitPlan); per row it only compares a column with that value. A policy that calls
/// a context accessor, `current_setting` or `string_to_array` directly does that work for every row the scan
/// looks at (a dozen terms per row in the token lookup before 0026), and these tests fail on it.
@Suite("Policy cost")
struct PolicyCostTests {
    /// Helpers that do depend on the row (a lookup by the row's key). Each is allowed per row, and only on the
    /// policies that have always used it: they guard writes of one row or a contract's few rows, or (app_sees_school,
    /// app_oversees_bid, and since 0037 the app_bid_project_closed helpers, which replaced inline sub-selects over
    /// project whose own policies made every bid statement start about a hundred plan nodes) run only after the
    /// once-per-statement authority, status and role tests let the row through.
    static let rowLookups: [String: Set<String>] = [
        "app_contract_party": ["complaint_board", "contract_kpi_party", "contract_variation_party", "corrective_action_plan_parties",
                               "kpi_acceptance_party", "kpi_return_supplier", "kpi_revision_initial", "kpi_revision_party",
                               "monitoring_visit_board", "rating_override_board", "reporting_period_board"],
        "app_bid_project_closed": ["bid_owner_after_deadline", "bid_panel_after_deadline"],
        "app_bid_project_closed_for_staff": ["bid_staff_after_deadline"],
        "app_bid_project_closed_on_own_board": ["bid_lim_decide"],
        "app_may_evaluate": ["bid_panel_after_deadline", "scorecard_own"],
        "app_oversees_bid": ["moderated_score_lim", "scorecard_oversight"],
        "app_submitted_scorecard": ["individual_score_peers"],
        "app_sees_school": ["school_concern_read", "school_contract_read", "spip_priority_read"],
        "app_supplier_admitted_to": ["school_contract_hosi"],
        "project_accepting_bids": ["bid_supplier_insert", "bid_supplier_update"],
    ]

    /// The catalog: outside its once-per-statement sub-selects, no policy calls a function of ours (other than the
    /// row lookups above, where they always were), `current_setting` or `string_to_array`. The owner's backup policy
    /// (0018) is the one exception: its `session_user` test comes first and is false for every other session.
    @Test func policiesReadTheContextOncePerStatement() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            let calls = try await connection.query("""
                WITH expression AS (
                    SELECT pol.polname::text AS policy, pol.polrelid::regclass::text AS relation, x.expr
                    FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid,
                         LATERAL (VALUES (pg_get_expr(pol.polqual, pol.polrelid)), (pg_get_expr(pol.polwithcheck, pol.polrelid))) x (expr)
                    WHERE c.relnamespace = 'public'::regnamespace AND pol.polname <> 'owner_backup_read' AND x.expr IS NOT NULL
                ), per_row AS (
                    -- What is left once each `( SELECT f(…) AS f)` whose arguments are constants (an InitPlan: once per
                    -- statement) is taken out. A sub-select over the row's columns would run per row, so it stays.
                    SELECT policy, relation,
                           regexp_replace(expr, '\\( SELECT [a-z_]+\\((''[a-z_.]+''::text(, true)?)?\\) AS [a-z_]+\\)', '$', 'g') AS rest
                    FROM expression
                )
                SELECT DISTINCT relation, policy, m[1]
                FROM per_row, regexp_matches(rest, '(?<![.\\w"])([a-z_]+)\\(', 'g') m
                WHERE m[1] IN (SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace)
                   OR m[1] IN ('current_setting', 'string_to_array')
                ORDER BY 1, 2, 3
                """).map { try $0.decode(String.self, String.self, String.self) }
            #expect(!calls.isEmpty, "the row lookups are found")
            let unexpected = calls.filter { _, policy, function in !(Self.rowLookups[function]?.contains(policy) ?? false) }
                .map { "\($0.0).\($0.1) calls \($0.2) per row" }
            #expect(unexpected.isEmpty, """
                wrap the context in a sub-select, e.g. (SELECT app_authority_id()), so it is read once per statement: \(unexpected)
                """)
            // The check itself: a direct call is found, a wrapped one is not.
            let probe = try await connection.query("""
                SELECT regexp_replace(
                    '((authority_id = ( SELECT app_authority_id() AS app_authority_id)) AND app_has_role(''lim''::text) AND '
                    || '( SELECT app_has_role(''hosi''::text) AS app_has_role) AND ( SELECT app_sees_school(authority_id, urn) AS app_sees_school))',
                    '\\( SELECT [a-z_]+\\((''[a-z_.]+''::text(, true)?)?\\) AS [a-z_]+\\)', '$', 'g')
                """).first!.decode(String.self, at: 0)
            #expect(probe == "((authority_id = $) AND app_has_role('lim'::text) AND $ AND ( SELECT app_sees_school(authority_id, urn) AS app_sees_school))")
        }
    }

    /// The plans: as each kind of caller, reading every row-level-secured table, no scan's filter evaluates a setting
    /// per row. This also catches a new helper written in SQL, which the planner inlines into the filter, so that
    /// the catalog test above sees only its name.
    @Test func noScanEvaluatesTheContextPerRow() async throws {
        let world = try await World.make()
        let a = world.a
        let scopes: [(String, AccessScope)] = [
            ("LIM", AccessScope(authorityID: a.authority.id, userID: a.users[.lim]!.id, roles: [.lim], boardIDs: [a.boards[0].id], actor: "user:test")),
            ("authority admin", AccessScope(authorityID: a.authority.id, userID: a.users[.authorityAdmin]!.id, roles: [.authorityAdmin],
                                            boardIDs: [], actor: "user:test")),
            ("supplier", AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                     boardIDs: [], actor: "user:test")),
        ]
        let tables = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("""
                SELECT c.relname::text FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND c.relrowsecurity
                  AND has_table_privilege(\(DatabaseRoles.application), c.oid, 'SELECT') ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
        }
        #expect(tables.count > 30)
        var offending: [String] = []
        try await PGConnection.withConnection(.init(conninfo: world.database.applicationConninfo, applicationName: "t")) { connection in
            for (name, scope) in scopes {
                try await connection.withTransaction { connection in
                    try await ScopedDatabase.setContext(scope, on: connection)
                    for table in tables {
                        let plan = try await connection.query("EXPLAIN (COSTS OFF) SELECT * FROM public.\(unsafeSQL: quoteIdentifier(table))")
                            .map { try $0.decode(String.self, at: 0) }
                        for line in plan where line.contains("Filter:") || line.contains("Cond:") {
                            if line.contains("current_setting(") || line.contains("string_to_array(") || line.contains("app_supplier_admitted(") {
                                offending.append("\(name): \(table): \(line.trimmingCharacters(in: .whitespaces))")
                            }
                        }
                    }
                }
            }
        }
        #expect(offending.isEmpty, "per-row context evaluation: \(offending)")
    }

    /// The plans' size: PostgreSQL starts every node of a statement's plan at each execution, including the
    /// sub-plans of policies that cannot apply to the caller. Until 0037 four bid policies tested the project with an
    /// inline sub-select over project, whose own policies were planned inside each one: a supplier's bid update
    /// started about a hundred nodes. Each statement a bid submission runs (and a LIM's bid read) must stay small.
    @Test func bidStatementsStartFewPlanNodes() async throws {
        let world = try await World.make()
        let a = world.a
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "user:test")
        let lim = AccessScope(authorityID: a.authority.id, userID: a.users[.lim]!.id, roles: [.lim], boardIDs: [a.boards[0].id], actor: "user:test")
        let bid = UUID()
        let statements: [(String, AccessScope, String)] = [
            ("a supplier locks its bid", supplier, "SELECT * FROM public.bid WHERE id = '\(bid.lowercased)' FOR UPDATE"),
            ("a supplier submits its bid", supplier,
             "UPDATE public.bid SET status = 'submitted', version = version + 1 WHERE id = '\(bid.lowercased)' RETURNING status, version"),
            ("a LIM reads a bid", lim, "SELECT * FROM public.bid WHERE id = '\(bid.lowercased)'"),
            ("a LIM decides a bid", lim, "UPDATE public.bid SET outcome_note = 'x' WHERE id = '\(bid.lowercased)'"),
        ]
        try await PGConnection.withConnection(.init(conninfo: world.database.applicationConninfo, applicationName: "t")) { connection in
            for (name, scope, sql) in statements {
                try await connection.withTransaction { connection in
                    try await ScopedDatabase.setContext(scope, on: connection)
                    let plan = try await connection.query("EXPLAIN (COSTS OFF) \(unsafeSQL: sql)").map { try $0.decode(String.self, at: 0) }
                    let nodes = plan.filter { $0.contains("->") || $0.contains("InitPlan") || $0.contains("SubPlan") }.count
                    // Before 0037: 116 for the supplier's update, 64 for its lock, 45 for the LIM's read; after: 15–31.
                    #expect(nodes <= 40, "\(name): \(nodes) plan nodes\n\(plan.joined(separator: "\n"))")
                    #expect(!plan.contains { $0.contains(" on project ") }, "\(name) plans a scan of project inside bid's policies")
                }
            }
        }
    }
    /// Whether a project accepts bids is a lookup by the project's key, whatever the number of open projects. Until
    /// 0038 the check (run four times per bid submission, in bid's policies and the submission's locking read) could
    /// be answered from project_open: every open project whose deadline is still ahead, in deadline order, until the
    /// one asked about. A session keeps the plan it made while there were few open projects: in the submission
    /// benchmark (8,000 drafts on as many open projects) that was 23,224 scans reading 83 million index entries in
    /// a 6-second run (`pg_stat_user_indexes`); here, 3,000 projects published after the plan was made.
    @Test func theDeadlineCheckReadsOneProjectNotEveryOpenOne() async throws {
        let world = try await World.make()
        let authority = world.a.authority.id
        let (open, closed) = (world.market.openEmpty, world.market.closedEmpty)
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "user:test")
        let check: PGQuery = "SELECT project_accepting_bids(\(authority), \(open))"
        try await PGConnection.withConnection(.init(conninfo: world.database.applicationConninfo, applicationName: "t")) { connection in
            try await connection.withTransaction { connection in
                try await ScopedDatabase.setContext(supplier, on: connection)
                // The plan the session keeps for the function's statement once it stops planning it afresh, made now.
                try await connection.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                #expect(try await connection.query(check).first!.decode(Bool.self, at: 0))
                #expect(try await !connection.query("SELECT project_accepting_bids(\(authority), \(closed))").first!.decode(Bool.self, at: 0))
                try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { owner in
                    // 3,000 more open projects of the same authority and board, each due before the one checked.
                    let columns = try await owner.query("""
                        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
                        WHERE attrelid = 'project'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
                        """).first!.decode(String.self, at: 0)
                    try await owner.query("""
                        INSERT INTO project (\(unsafeSQL: columns))
                        SELECT \(unsafeSQL: columns) FROM (
                            SELECT (jsonb_populate_record(p, jsonb_build_object(
                                        'id', gen_random_uuid(), 'bid_deadline', statement_timestamp() + interval '1 hour' + i * interval '1 second'))).*
                            FROM project p, generate_series(1, 3000) i WHERE p.id = \(open)) copy
                        """)
                    try await owner.query("UPDATE project SET bid_deadline = statement_timestamp() + interval '30 days' WHERE id = \(open)")
                }
                #expect(try await connection.query(check).first!.decode(Bool.self, at: 0))
                // Buffers read by the check, its function's statements included.
                let plan = try await connection.query(PGQuery("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + check.sql, check.binds)).first!.decode(String.self, at: 0)
                let top = try #require(((try JSONSerialization.jsonObject(with: Data(plan.utf8)) as? [[String: Any]])?.first?["Plan"]) as? [String: Any])
                let buffers = (top["Shared Hit Blocks"] as? Int ?? 0) + (top["Shared Read Blocks"] as? Int ?? 0)
                #expect(buffers <= 30, "the deadline check read \(buffers) buffers")
            }
        }
    }

    /// The supplier's admitted authorities are read from supplier_admission once per transaction (0039), not in every
    /// statement and policy-checked function call (six times per bid submission before), and still follow the
    /// context (another supplier's transaction reads its own) and the data (a suspension is seen by the next one).
    @Test func theSuppliersAdmittedAuthoritiesAreReadOncePerTransaction() async throws {
        let world = try await World.make()
        let authority = world.a.authority.id
        let open = world.market.openEmpty
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "user:test")
        let applicant = AccessScope(authorityID: nil, supplierID: world.applicantID, userID: nil, roles: [.supplierUser], boardIDs: [],
                                    actor: "user:test")
        let admitted: PGQuery = "SELECT app_admitted_authority_ids()::text"
        let admissionReads: PGQuery = """
            SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::int FROM pg_stat_xact_user_tables WHERE relname = 'supplier_admission'
            """
        try await PGConnection.withConnection(.init(conninfo: world.database.applicationConninfo, applicationName: "t")) { connection in
            try await connection.withTransaction { connection in
                try await ScopedDatabase.setContext(supplier, on: connection)
                for _ in 1...3 {
                    #expect(try await connection.query("SELECT project_accepting_bids(\(authority), \(open))").first!.decode(Bool.self, at: 0))
                    #expect(try await connection.query("SELECT count(*)::int FROM project WHERE id = \(open)").first!.decode(Int.self, at: 0) == 1)
                }
                #expect(try await connection.query(admitted).first!.decode(String.self, at: 0) == "{\(authority.lowercased)}")
                #expect(try await connection.query(admissionReads).first!.decode(Int.self, at: 0) == 1)
                // Once read, it is an expression the planner inlines (0041): no function of ours is called for it but
                // the reader, in the branch taken only when the setting does not hold this supplier's list.
                let plan = try await connection.query("EXPLAIN (VERBOSE, COSTS OFF) SELECT app_admitted_authority_ids()")
                    .map { try $0.decode(String.self, at: 0) }.joined(separator: "\n")
                #expect(!plan.contains("app_admitted_authority_ids()") && plan.contains("app_admitted_authority_ids_read()")
                        && plan.contains("current_setting('app.admitted_authority_ids'"), "\(plan)")
                // Another supplier in the same transaction: its own list, read afresh (the applicant is not admitted).
                try await ScopedDatabase.setContext(applicant, on: connection)
                #expect(try await connection.query(admitted).first!.decode(String.self, at: 0) == "{}")
                #expect(try await connection.query("SELECT count(*)::int FROM project WHERE id = \(open)").first!.decode(Int.self, at: 0) == 0)
                #expect(try await connection.query(admissionReads).first!.decode(Int.self, at: 0) == 2)
            }
            try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { owner in
                try await owner.query("""
                    UPDATE supplier_admission SET status = 'suspended' WHERE authority_id = \(authority) AND supplier_id = \(world.supplierID)
                    """)
            }
            try await connection.withTransaction { connection in
                try await ScopedDatabase.setContext(supplier, on: connection)
                #expect(try await connection.query(admitted).first!.decode(String.self, at: 0) == "{}")
                #expect(try await !connection.query("SELECT project_accepting_bids(\(authority), \(open))").first!.decode(Bool.self, at: 0))
            }
        }
    }

    /// A bid's keys (its authority, project, supplier and board) cannot be changed by the application role (0041: it
    /// may update the bid's other columns only). This is what lets the supplier's update policy test the deadline
    /// once, in USING, on the row as it was: the row as written belongs to the same project.
    @Test func aBidsKeysCannotBeChangedSoItsDeadlineIsTestedOnce() async throws {
        let world = try await World.make()
        let a = world.a
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "user:test")
        let lim = AccessScope(authorityID: a.authority.id, userID: a.users[.lim]!.id, roles: [.lim], boardIDs: [a.boards[0].id], actor: "user:test")
        let bid = world.market.draftBid
        let moves: [(AccessScope, String)] = [
            (supplier, "project_id = '\(world.market.openEmpty.lowercased)'"),
            (supplier, "supplier_id = '\(world.applicantID.lowercased)'"),
            (supplier, "authority_id = authority_id"),
            (supplier, "board_id = board_id"),
            (lim, "project_id = project_id"),
        ]
        try await PGConnection.withConnection(.init(conninfo: world.database.applicationConninfo, applicationName: "t")) { connection in
            for (scope, assignment) in moves {
                await #expect(throws: PGError.self, "SET \(assignment) was allowed") {
                    try await connection.withTransaction { connection in
                        try await ScopedDatabase.setContext(scope, on: connection)
                        do {
                            try await connection.query("UPDATE public.bid SET \(unsafeSQL: assignment) WHERE id = \(bid)")
                        } catch let error as PGError {
                            #expect(error.sqlState == "42501", "\(error)")
                            throw error
                        }
                    }
                }
            }
            // Its other columns still can be, by its supplier, while the project accepts bids; the WITH CHECK no
            // longer calls the deadline check, the USING does.
            try await connection.withTransaction { connection in
                try await ScopedDatabase.setContext(supplier, on: connection)
                #expect(try await connection.query("UPDATE public.bid SET approach = 'Edited' WHERE id = \(bid)").affectedRows == 1)
            }
            let policy = try await connection.query("""
                SELECT pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) FROM pg_policy
                WHERE polname = 'bid_supplier_update' AND polrelid = 'public.bid'::regclass
                """).first!.decode(String.self, String.self)
            #expect(policy.0.contains("project_accepting_bids(") && !policy.1.contains("project_accepting_bids("), "\(policy)")
        }
    }
}
