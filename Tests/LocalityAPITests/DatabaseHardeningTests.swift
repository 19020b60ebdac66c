import Foundation
import LocalityDomain
import LocalityPostgres
import Logging
import PostgresTestSupport
import Testing

/// Name resolution in our SQL functions, the owner's backup policy, and what the application role may create.
@Suite("Database hardening")
struct DatabaseHardeningTests {
    /// pg_dump and pg_restore run with an empty search path, and any caller may. Every policy, trigger and
    /// helper must then find our objects (migration 0018 qualifies them): each role, on every table, reads the
    /// same rows as under the default path and updates, inserts and deletes (rolled back) without a
    /// name-resolution error — that runs the PL/pgSQL helpers too, which resolve names only when they run.
    @Test func policiesTriggersAndHelpersWorkUnderAnEmptySearchPath() async throws {
        let world = try await World.make()
        let a = world.a
        var appScopes: [(String, AccessScope)] = a.users.map { role, user in
            let boards = (role == .lim || role == .boardMember) ? [a.boards[0].id] : []
            return ("A's \(role.rawValue)", AccessScope(authorityID: a.authority.id, userID: user.id, roles: [role], boardIDs: boards, actor: "user:test"))
        }
        appScopes.append(("B's admin", AccessScope(authorityID: world.b.authority.id, userID: world.b.users[.authorityAdmin]!.id,
                                                   roles: [.authorityAdmin], boardIDs: [], actor: "user:test")))
        appScopes.append(("supplier", AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID,
                                                  roles: [.supplierUser], boardIDs: [], actor: "user:test")))
        appScopes.append(("no context", AccessScope(authorityID: nil, userID: nil, roles: [], boardIDs: [], actor: "test")))
        let ownerScopes: [(String, AccessScope)] = [
            ("operator of A", .operatorScope(authorityID: a.authority.id, osUser: "test")),
            ("operator of the supplier", .operatorScope(supplierID: world.supplierID, osUser: "test")),
            // The owner with no context is how authentication reads tokens (app_is_authenticating()).
            ("owner authenticating", AccessScope(authorityID: nil, userID: nil, roles: [], boardIDs: [], actor: "test")),
        ]
        let tables = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("""
                SELECT c.relname::text,
                       (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
                        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
                FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1
                """).map { try $0.decode(String.self, String.self) }
        }
        #expect(tables.count > 30)
        // Missing function, table, type or schema: what an unqualified name gives under an empty path.
        let nameErrors: Set<String> = ["42883", "42P01", "42704", "3F000"]
        var exercised = 0
        for (conninfo, scopes) in [(world.database.applicationConninfo, appScopes), (world.database.ownerConninfo, ownerScopes)] {
            try await PGConnection.withConnection(.init(conninfo: conninfo, applicationName: "t")) { connection in
                for (name, scope) in scopes {
                    try await connection.execute("BEGIN")
                    try await ScopedDatabase.setContext(scope, on: connection)
                    for (table, columns) in tables {
                        let relation = "public." + quoteIdentifier(table)
                        let count = "SELECT count(*) FROM \(relation)"
                        // The count under the default path, or the error it gives (no privilege, for example).
                        try await connection.execute("SET LOCAL search_path = public; SAVEPOINT expected")
                        var expected: Result<Int, PGError>
                        do {
                            expected = .success(try await connection.query("\(unsafeSQL: count)").first!.decode(Int.self, at: 0))
                        } catch let error as PGError {
                            expected = .failure(error)
                            try await connection.execute("ROLLBACK TO SAVEPOINT expected")
                        }
                        try await connection.execute("SET LOCAL search_path = ''")
                        let statements = [
                            count,
                            "UPDATE \(relation) SET \(columns.components(separatedBy: ", ")[0]) = \(columns.components(separatedBy: ", ")[0])",
                            "INSERT INTO \(relation) (\(columns)) SELECT \(columns) FROM \(relation) LIMIT 1",
                            "DELETE FROM \(relation)",
                        ]
                        for statement in statements {
                            try await connection.execute("SAVEPOINT probe")
                            do {
                                let result = try await connection.query("\(unsafeSQL: statement)")
                                if statement == count {
                                    #expect(try result.first!.decode(Int.self, at: 0) == expected.get(), "\(name): \(table) under an empty search path")
                                }
                            } catch let error as PGError {
                                if statement == count, case .failure(let original) = expected {
                                    #expect(error.sqlState == original.sqlState, "\(name): \(table): \(error), by default \(original)")
                                }
                                // Refusals (privilege, policy, constraint, append-only) are fine: the check ran.
                                #expect(!nameErrors.contains(error.sqlState ?? ""), "\(name): \(statement) under an empty search path: \(error)")
                            }
                            try await connection.execute("ROLLBACK TO SAVEPOINT probe")
                            exercised += 1
                        }
                    }
                    try await connection.execute("ROLLBACK")
                }
            }
        }
        #expect(exercised == tables.count * 4 * (appScopes.count + ownerScopes.count))
    }

    /// A future function must not bring the problem back: every function of ours without a pinned search path
    /// names our functions, tables and types schema-qualified (a textual check of the body: PL/pgSQL resolves
    /// names only when a statement runs, so a test that never reaches it would not notice).
    @Test func functionsWithoutAPinnedSearchPathQualifyOurNames() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            let unqualified = try await connection.query("""
                WITH ours AS (
                    SELECT p.proname::text AS name, 'function' AS kind FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
                    UNION SELECT c.relname::text, 'relation' FROM pg_class c
                    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
                    UNION SELECT t.typname::text, 'type' FROM pg_type t
                    WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd', 'c', 'b', 'r')
                ), unpinned AS (
                    SELECT p.oid::regprocedure::text AS function, p.prosrc FROM pg_proc p
                    WHERE p.pronamespace = 'public'::regnamespace
                      AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) s WHERE s LIKE 'search_path=%')
                )
                SELECT u.function || ' names ' || o.kind || ' ' || o.name || ' without public.'
                FROM unpinned u JOIN ours o ON
                    (o.kind = 'function' AND u.prosrc ~* ('(?<![.\\w"])' || o.name || '\\s*\\('))
                 OR (o.kind = 'relation' AND u.prosrc ~* ('\\m(from|join|into|update|table)\\s+' || o.name || '\\M'))
                 OR (o.kind = 'type' AND u.prosrc ~* ('(::|%)\\s*' || o.name || '\\M'))
                ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
            #expect(unqualified.isEmpty, "these fail under an empty search path (pg_dump, pg_restore): \(unqualified)")
            // The check itself finds an unqualified name.
            let probe = try await connection.query("""
                SELECT 'SELECT app_authority_id() FROM board' ~* ('(?<![.\\w"])' || 'app_authority_id' || '\\s*\\('),
                       'SELECT public.app_authority_id()' ~* ('(?<![.\\w"])' || 'app_authority_id' || '\\s*\\(')
                """).first!.decode(Bool.self, Bool.self)
            #expect(probe == (true, false))
            // Where a function does pin its path, pg_temp comes last (not only SECURITY DEFINER ones).
            let pinned = try await connection.query("""
                SELECT p.oid::regprocedure::text || ' ' || s FROM pg_proc p, unnest(p.proconfig) s
                WHERE p.pronamespace = 'public'::regnamespace AND s LIKE 'search_path=%' AND s <> 'search_path=public, pg_temp'
                """).map { try $0.decode(String.self, at: 0) }
            #expect(pinned.isEmpty, "\(pinned)")
        }
    }

    /// Every row-level-secured table lets the owner's backup session read it, and only that session: the
    /// policy is for the owner role and asks for session_user = the owner, which SECURITY DEFINER code run for
    /// the application role does not have.
    @Test func everySecuredTableHasTheOwnersBackupPolicy() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            let missing = try await connection.query("""
                SELECT c.relname::text FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND c.relrowsecurity
                  AND NOT EXISTS (
                      SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'owner_backup_read' AND p.polcmd = 'r'
                         AND p.polpermissive AND p.polroles = ARRAY[\(DatabaseRoles.owner)::regrole::oid]
                         AND pg_get_expr(p.polqual, p.polrelid) = '((SESSION_USER = ''locality_owner''::name) AND (current_setting(''app.backup''::text, true) = ''on''::text))')
                ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
            #expect(missing.isEmpty, "row-level-secured tables a backup as the owner would miss (add the owner_backup_read policy of 0018): \(missing)")
        }
    }

    /// The owner, logged in directly with app.backup = on, reads every row; the application role asking for the
    /// same through a SECURITY DEFINER function owned by the owner reads no more than without it.
    @Test func onlyTheOwnersOwnSessionGetsTheBackupView() async throws {
        let world = try await World.make()
        let database = world.database
        let tables = try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("""
                SELECT c.relname::text FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND c.relrowsecurity ORDER BY 1
                """).map { try $0.decode(String.self, at: 0) }
        }
        func counts(_ conninfo: String, _ sql: (String) -> String, backup: Bool, context: AccessScope? = nil) async throws -> [String: Int] {
            try await PGConnection.withConnection(.init(conninfo: conninfo, applicationName: "t")) { connection in
                try await connection.withTransaction { connection in
                    if backup { try await connection.execute("SET LOCAL app.backup = 'on'") }
                    if let context { try await ScopedDatabase.setContext(context, on: connection) }
                    var result: [String: Int] = [:]
                    for table in tables {
                        result[table] = try await connection.query("\(unsafeSQL: sql(table))").first!.decode(Int.self, at: 0)
                    }
                    return result
                }
            }
        }
        let direct = { (table: String) in "SELECT count(*) FROM public.\(quoteIdentifier(table))" }
        let all = try await counts(database.superuserConninfo, direct, backup: false)
        #expect(all["audit_event"]! > 20 && all["bid"]! > 3, "the world has data")
        #expect(try await counts(database.ownerConninfo, direct, backup: true) == all)
        // Without the opt-in, the owner (the CLI) sees only what its other policies show, as before.
        let ownerPlain = try await counts(database.ownerConninfo, direct, backup: false)
        #expect(ownerPlain["bid"] == 0 && ownerPlain["budget_ledger"] == 0)

        // Owner-privileged code, called by the application role.
        try await PGConnection.withConnection(.init(conninfo: database.ownerConninfo, applicationName: "t")) { connection in
            try await connection.execute("""
                CREATE FUNCTION public.test_definer_count(p_table text) RETURNS bigint
                LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
                DECLARE n bigint;
                BEGIN
                    EXECUTE format('SELECT count(*) FROM public.%I', p_table) INTO n;
                    RETURN n;
                END $$;
                GRANT EXECUTE ON FUNCTION public.test_definer_count(text) TO locality_app;
                """)
        }
        let viaDefiner = { (table: String) in "SELECT public.test_definer_count(\(quoteLiteral(table)))" }
        let scopeOfB = AccessScope(authorityID: world.b.authority.id, userID: world.b.users[.authorityAdmin]!.id,
                                   roles: [.authorityAdmin], boardIDs: [], actor: "user:test")
        for context in [nil, scopeOfB] {
            let plain = try await counts(database.applicationConninfo, viaDefiner, backup: false, context: context)
            let asking = try await counts(database.applicationConninfo, viaDefiner, backup: true, context: context)
            #expect(asking == plain, "app.backup = on gave the application role more through owner-privileged code")
            #expect(asking["bid"] == 0 && asking != all)
        }
    }

    /// The application role cannot create a temporary table or an object in public by any route: PUBLIC, a
    /// grant of its own, or a role it belongs to (in a database migrated from empty, as a deployment is).
    @Test func theApplicationRoleCreatesNothingByAnyRoute() async throws {
        let database = try await TestDatabase.empty()
        let migrator = Migrator(migrations: try Migration.load(from: Migration.defaultDirectory()), logger: Logger(label: "t"))
        try await migrator.apply(ownerConninfo: database.ownerConninfo)
        try await PGConnection.withConnection(.init(conninfo: database.applicationConninfo, applicationName: "t")) { connection in
            let routes = try await connection.query("""
                SELECT m.rolname::text FROM pg_roles m
                WHERE pg_has_role(current_user, m.oid, 'MEMBER')
                  AND (has_database_privilege(m.oid, current_database(), 'TEMPORARY') OR has_schema_privilege(m.oid, 'public', 'CREATE'))
                """).map { try $0.decode(String.self, at: 0) }
            #expect(routes.isEmpty, "roles through which the application role can create objects: \(routes)")
            do {
                try await connection.execute("CREATE FUNCTION public.app_authority_id(text) RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'")
                Issue.record("the application role created a function in public")
            } catch let error as PGError {
                #expect(error.sqlState == "42501", "\(error)")
            }
        }
        try await DatabaseRoles.checkApplicationRole(conninfo: database.applicationConninfo, ownerConninfo: database.ownerConninfo)
    }

    /// A database where the application role could create temporary tables (a restore into a new database
    /// brings PUBLIC's TEMPORARY back) or objects in public: the service refuses to start, naming the fix.
    @Test func theServiceRefusesARoleThatCanCreateObjects() async throws {
        let database = try await TestDatabase.migrated()
        try await DatabaseRoles.checkApplicationRole(conninfo: database.applicationConninfo, ownerConninfo: database.ownerConninfo)
        let grants = [
            ("GRANT TEMPORARY ON DATABASE \(quoteIdentifier(database.name)) TO PUBLIC", "REVOKE TEMPORARY ON DATABASE \(quoteIdentifier(database.name)) FROM PUBLIC"),
            ("GRANT TEMPORARY ON DATABASE \(quoteIdentifier(database.name)) TO locality_app", "REVOKE TEMPORARY ON DATABASE \(quoteIdentifier(database.name)) FROM locality_app"),
            ("GRANT CREATE ON SCHEMA public TO PUBLIC", "REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        ]
        for (grant, revoke) in grants {
            try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { try await $0.execute(grant) }
            do {
                try await DatabaseRoles.checkApplicationRole(conninfo: database.applicationConninfo, ownerConninfo: database.ownerConninfo)
                Issue.record("started after \(grant)")
            } catch let error as StartupError {
                #expect(error.description.contains("REVOKE TEMPORARY ON DATABASE") && error.description.contains("locality_app"), "\(error)")
            }
            try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { try await $0.execute(revoke) }
        }
        try await DatabaseRoles.checkApplicationRole(conninfo: database.applicationConninfo, ownerConninfo: database.ownerConninfo)
    }
}

/// A single-quoted SQL literal (test SQL built from catalog names).
func quoteLiteral(_ text: String) -> String {
    "'" + text.replacingOccurrences(of: "'", with: "''") + "'"
}
