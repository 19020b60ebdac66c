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

@Suite("Tenant isolation")
struct TenantIsolationTests {
    /// Every operation, called by each role of authority B on authority A's resources: 404, 403 or a list
    /// without any of A's data — and A's audit chain (so every change) untouched.
    @Test func anotherAuthoritysRolesNeverSeeOrChangeIt() async throws {
        let world = try await World.make()
        let m = world.market
        let aProjects = [m.openWithDraft, m.openWithComplete, m.openWithSubmitted, m.openEmpty, m.openToCancel, m.closedWithBid, m.closedEmpty,
                         m.draft, m.draftToDelete, m.draftComplete]
        let aIDs = Set(world.a.boards.map { lower($0.id) } + world.a.users.values.map { lower($0.id) } + aProjects.map(lower)
                       + [m.draftBid, m.completeBid, m.submittedBid, m.closedBid, m.question, m.theme, m.spareTheme, m.measure, m.closedForAward,
                          m.awardBid, m.negotiating, m.negotiatingKPI, m.agreed, m.active, m.activeKPI, m.proposedVariation, m.activePeriod, m.plan, m.complaint, world.schoolContract].map(lower))
        let auditBefore = try await auditCount(world.database, authority: world.a.authority.id)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for (operation, entry) in matrix(world).sorted(by: { $0.key < $1.key }) where entry.path.hasPrefix("/v1/") {
                for role in everyRole {
                    let response = try await client.call(entry.method, entry.path, token: world.token(role, of: world.b), body: entry.body(role),
                                                         headers: entry.headers)
                    let text = String(buffer: response.body)
                    switch response.status.code {
                    case 403, 404:
                        break
                    case 422 where entry.method == .post || entry.method == .put:
                        // e.g. "board_id must be one of your boards": the same answer for A's board as for none.
                        break
                    case 200, 201:
                        // Lists and the caller's own things: nothing of A's may appear.
                        for id in aIDs { #expect(!text.contains(id), "\(operation) as B's \(role.rawValue) leaked \(id)") }
                        // The authority directory is public to suppliers (they need it to seek admission).
                        if !(operation == "listAuthorities" && role == .supplierUser) {
                            #expect(!text.contains(world.a.authority.name), "\(operation) as B's \(role.rawValue) leaked A's name")
                        }
                    default:
                        Issue.record("\(operation) as B's \(role.rawValue): unexpected \(response.status.code) \(text)")
                    }
                    if aIDs.contains(where: { entry.path.contains($0) }) || entry.path.contains("/users/") || entry.path.contains(lower(world.applicantID)) {
                        #expect([403, 404].contains(response.status.code), "\(operation) on A's resource as B's \(role.rawValue): \(response.status.code)")
                    }
                }
            }
        }
        #expect(try await auditCount(world.database, authority: world.a.authority.id) == auditBefore)
    }

    /// A LIM and a board member see only their own board of their own authority.
    @Test func boardScopedRolesSeeOnlyTheirBoards() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for role in [Role.lim, .boardMember] {
                let token = world.token(role, of: world.a)
                let list = try await client.call(.get, "/v1/boards", token: token)
                #expect(list.items.compactMap { $0["id"] as? String } == [lower(world.a.boards[0].id)])
                let other = lower(world.a.boards[1].id)
                #expect(try await client.call(.get, "/v1/boards/\(other)", token: token).status == .notFound)
                #expect(try await client.call(.get, "/v1/boards/\(other)/budgets/2025-26", token: token).status == .notFound)
                #expect(try await client.call(.get, "/v1/boards/\(other)/ledger", token: token).status == .notFound)
            }
            let lim = world.token(.lim, of: world.a)
            let earmarkElsewhere = try await client.call(.post, "/v1/boards/\(lower(world.a.boards[1].id))/ledger", token: lim, body: [
                "financial_year": "2025-26", "funding_stream": "locality", "kind": "earmark", "amount_pence": 100, "reason": "not my board",
            ])
            #expect(earmarkElsewhere.status == .notFound)
        }
    }

    /// The same isolation from PostgreSQL alone: the application role with B's context (service checks
    /// bypassed) sees none of A's rows and can write none; with no context it sees no tenant rows at all.
    @Test func rowLevelSecurityIsolatesOnItsOwn() async throws {
        let world = try await World.make()
        let tables = try await tenantTables(world.database)
        #expect(tables.count >= 8)
        let everyRoleOfB = AccessScope(
            authorityID: world.b.authority.id, userID: world.b.users[.authorityAdmin]!.id,
            roles: Set(Role.allCases), boardIDs: world.b.boards.map(\.id), actor: "user:test")
        try await world.database.withPool { pool in
            try await pool.withTransaction { connection in
                try await ScopedDatabase.setContext(everyRoleOfB, on: connection)
                for (table, column) in tables {
                    let leaked = try await connection.query(PGQuery(
                        "SELECT count(*) FROM \(quoteIdentifier(table)) WHERE \(quoteIdentifier(column)) = $1", [world.a.authority.id.pg]))
                        .first!.decode(Int.self, at: 0)
                    #expect(leaked == 0, "\(table) shows \(leaked) of A's rows to B")
                }
                let authorities = try await connection.query("SELECT id FROM authority").map { try $0.decode(UUID.self, at: 0) }
                #expect(authorities == [world.b.authority.id])
                let ownBoards = try await connection.query("SELECT count(*) FROM board").first!.decode(Int.self, at: 0)
                #expect(ownBoards == 2, "B's own boards are visible")
            }
            try await pool.withTransaction { connection in
                let authorities = try await connection.query("SELECT count(*) FROM authority").first!.decode(Int.self, at: 0)
                #expect(authorities == 0)
                for (table, _) in tables {
                    let visible = try await connection.query("SELECT count(*) FROM \(unsafeSQL: quoteIdentifier(table))").first!.decode(Int.self, at: 0)
                    #expect(visible == 0, "\(table) shows \(visible) rows without any context")
                }
            }
            // Writes into A with B's context are refused by the policies' WITH CHECK or by the keys.
            let writes: [PGQuery] = [
                "INSERT INTO board (authority_id, name, short_code) VALUES (\(world.a.authority.id), 'Intruder', 'INTR')",
                "INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, actor, reason) SELECT \(world.a.authority.id), \(world.a.boards[0].id), '2025-26', id, 'allocation', 1, 'user:test', 'x' FROM funding_stream LIMIT 1",
                "INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, actor, reason) SELECT authority_id, \(world.a.boards[0].id), '2025-26', id, 'allocation', 1, 'user:test', 'x' FROM funding_stream LIMIT 1",
                "INSERT INTO app_user (authority_id, email, display_name) VALUES (\(world.a.authority.id), 'x@y.example', 'Intruder')",
                "UPDATE board SET name = 'Hijacked' WHERE authority_id = \(world.a.authority.id)",
            ]
            for write in writes {
                let changed: Int? = try? await pool.withTransaction { connection in
                    try await ScopedDatabase.setContext(everyRoleOfB, on: connection)
                    return try await connection.query(write).affectedRows
                }
                #expect(changed == nil || changed == 0, "\(write.sql) changed \(changed ?? 0) rows of A")
            }
        }
        let names = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) {
            try await $0.query("SELECT name FROM board WHERE authority_id = \(world.a.authority.id) ORDER BY name").map { try $0.decode(String.self, at: 0) }
        }
        #expect(names == world.a.boards.map(\.name).sorted())
    }

    /// PostgreSQL re-parses and re-plans a SQL function it cannot inline in every statement that calls it;
    /// in PL/pgSQL the plans are kept per session. The token lookup runs on every request, policy helpers
    /// in most statements.
    @Test func functionsPostgresCannotInlineAreWrittenInPLpgSQL() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            let definers = try await connection.query("""
                SELECT p.proname, l.lanname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                JOIN pg_language l ON l.oid = p.prolang
                WHERE n.nspname = 'public' AND p.prosecdef ORDER BY p.proname
                """).map { try $0.decode(String.self, String.self) }
            #expect(definers.contains { $0.0 == "find_api_token" })
            let inSQL = definers.filter { $0.1 != "plpgsql" }.map(\.0)
            #expect(inSQL.isEmpty, "SECURITY DEFINER functions re-planned on every call: \(inSQL)")
            // Scalar SQL functions with a FROM or a sub-select are not inlined either (policy helpers).
            let notInlinable = try await connection.query("""
                SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                JOIN pg_language l ON l.oid = p.prolang
                WHERE n.nspname = 'public' AND l.lanname = 'sql' AND NOT p.proretset
                  AND (p.prosrc ~* '\\mFROM\\M' OR p.prosrc ~* '\\mSELECT\\M.*\\mSELECT\\M')
                ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
            #expect(notInlinable.isEmpty, "SQL functions planned again in every statement: \(notInlinable)")
        }
    }

    /// Owner-privileged code must not find a caller's temporary objects before ours: every SECURITY DEFINER
    /// function names its search path with pg_temp last (walks the catalog, so later functions are covered).
    @Test func securityDefinerFunctionsSearchPgTempLast() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            let unsafe = try await connection.query("""
                SELECT p.proname || ' ' || coalesce(array_to_string(p.proconfig, ';'), '(no SET)')
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'public' AND p.prosecdef
                  AND NOT coalesce('search_path=public, pg_temp' = ANY (p.proconfig), false)
                ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
            #expect(unsafe.isEmpty, "SECURITY DEFINER functions without `search_path = public, pg_temp`: \(unsafe)")
        }
    }

    /// The migration takes TEMP from PUBLIC on the database it runs in (database privileges are not copied
    /// from a template, so this checks a database migrated from empty).
    @Test func theApplicationRoleCannotCreateTemporaryTables() async throws {
        let database = try await TestDatabase.empty()
        let migrator = Migrator(migrations: try Migration.load(from: Migration.defaultDirectory()), logger: Logger(label: "t"))
        try await migrator.apply(ownerConninfo: database.ownerConninfo)
        try await PGConnection.withConnection(.init(conninfo: database.applicationConninfo, applicationName: "t")) { connection in
            do {
                try await connection.query("CREATE TEMPORARY TABLE audit_event (id int)")
                Issue.record("the application role created a temporary table")
            } catch let error as PGError {
                #expect(error.sqlState == "42501", "\(error)")
            }
        }
    }

    /// Walks the catalog, so tables added later are covered without editing this test.
    @Test func everyTenantTableHasForcedRowLevelSecurityAndTheAppRoleOwnsNothing() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            let unprotected = try await connection.query("""
                SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                  AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped
                              AND a.attname IN ('authority_id', 'supplier_id', 'chain_id'))
                  AND NOT (c.relrowsecurity AND c.relforcerowsecurity)
                """).map { try $0.decode(String.self, at: 0) }
            #expect(unprotected.isEmpty, "tenant tables without forced RLS: \(unprotected)")
            let tenantTables = try await connection.query("""
                SELECT count(DISTINCT c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_attribute a ON a.attrelid = c.oid
                WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attname IN ('authority_id', 'supplier_id', 'chain_id')
                """).first!.decode(Int.self, at: 0)
            #expect(tenantTables >= 9)
            let withoutPolicies = try await connection.query("""
                SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relrowsecurity
                  AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
                """).map { try $0.decode(String.self, at: 0) }
            #expect(withoutPolicies.isEmpty, "RLS tables without any policy: \(withoutPolicies)")
            let owned = try await connection.query("""
                SELECT c.relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner WHERE r.rolname = \(DatabaseRoles.application)
                """).map { try $0.decode(String.self, at: 0) }
            #expect(owned.isEmpty, "the application role owns \(owned)")
            let (bypass, superuser) = try await connection.query("""
                SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = \(DatabaseRoles.application)
                """).first!.decode(Bool.self, Bool.self)
            #expect(!bypass && !superuser)
            let (ownerBypass, ownerSuper) = try await connection.query("""
                SELECT rolbypassrls, rolsuper FROM pg_roles WHERE rolname = \(DatabaseRoles.owner)
                """).first!.decode(Bool.self, Bool.self)
            #expect(!ownerBypass && !ownerSuper)
            // Append-only tables: the application role may read, never change or delete.
            for table in ["audit_event", "budget_ledger"] {
                for privilege in ["UPDATE", "DELETE", "TRUNCATE"] {
                    let has = try await connection.query(
                        "SELECT has_table_privilege(\(DatabaseRoles.application), \(table), \(privilege))").first!.decode(Bool.self, at: 0)
                    #expect(!has, "the application role has \(privilege) on \(table)")
                }
            }
            let canInsertAudit = try await connection.query(
                "SELECT has_table_privilege(\(DatabaseRoles.application), 'audit_event', 'INSERT')").first!.decode(Bool.self, at: 0)
            #expect(!canInsertAudit, "audit events are appended only through append_audit_event, which chains them")
        }
    }
}

/// Tables with a tenant column, and that column.
func tenantTables(_ database: TestDatabase) async throws -> [(String, String)] {
    try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
        try await connection.query("""
            SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND NOT a.attisdropped
            WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attname IN ('authority_id', 'chain_id')
              AND has_table_privilege('locality_app', c.oid, 'SELECT')
            ORDER BY 1
            """).map { try $0.decode(String.self, String.self) }
    }
}
