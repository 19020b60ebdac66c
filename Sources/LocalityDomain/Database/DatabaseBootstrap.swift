public import EmbeddedPostgres
import Foundation
public import Logging
public import LocalityPostgres

/// Where the database is, shared by the server and the admin CLI.
public struct DatabaseSettings: Sendable {
    /// The application role's connection URL; nil means the embedded cluster.
    public var databaseURL: String?
    /// The owner role's URL, used for migrations; defaults to `databaseURL`.
    public var ownerDatabaseURL: String?
    /// The embedded cluster's data directory.
    public var dataDirectory: String
    /// Given by the operator (`--data-dir`): used as is. The default may move where the PostgreSQL OS user can
    /// reach it (see `DatabaseBootstrap.embeddedDataDirectory`).
    public var dataDirectoryIsExplicit = false
    /// As root, the embedded PostgreSQL runs as this OS user.
    public var postgresOSUser: String
    public var postgresBinDirectory: String?
    /// A pooler between the service and PostgreSQL (`--db-pooler`): `.transaction` for PgBouncer in transaction
    /// mode, where the service's sessions send no startup options and prepare nothing by name (see `PGPoolerMode`).
    public var pooler: PGPoolerMode = .none
    /// Where the notification listener connects (`--db-listen-url`): PostgreSQL itself, never a transaction
    /// pooler, because `LISTEN` belongs to a session. Defaults to `databaseURL`.
    public var listenDatabaseURL: String?

    public init(
        databaseURL: String? = nil,
        ownerDatabaseURL: String? = nil,
        dataDirectory: String = ".data/postgres",
        postgresOSUser: String = "postgres",
        postgresBinDirectory: String? = nil
    ) {
        self.databaseURL = databaseURL
        self.ownerDatabaseURL = ownerDatabaseURL
        self.dataDirectory = dataDirectory
        self.postgresOSUser = postgresOSUser
        self.postgresBinDirectory = postgresBinDirectory
    }
}

/// The two roles every deployment has: the owner runs migrations; the application role owns nothing
/// and cannot bypass row-level security.
public enum DatabaseRoles {
    public static let owner = "locality_owner"
    public static let application = "locality_app"
    public static let database = "locality"

    /// Creates both roles and a database owned by the owner role, if missing (run as a superuser).
    /// Safe when two processes race: "already exists" from the loser is ignored.
    public static func ensure(superuserConninfo: String, database: String = DatabaseRoles.database, template: String? = nil) async throws {
        try await PGConnection.withConnection(.init(conninfo: superuserConninfo, applicationName: "locality-bootstrap")) { connection in
            for (role, attributes) in [(owner, "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB"), (application, "LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB NOBYPASSRLS")] {
                let exists = try await connection.query("SELECT 1 FROM pg_roles WHERE rolname = \(role)")
                if exists.isEmpty {
                    try await ignoringDuplicates { try await connection.execute("CREATE ROLE \(role) \(attributes)") }
                }
            }
            let exists = try await connection.query("SELECT 1 FROM pg_database WHERE datname = \(database)")
            if exists.isEmpty {
                let templateClause = template.map { " TEMPLATE \(quoteIdentifier($0))" } ?? ""
                try await ignoringDuplicates {
                    try await connection.execute("CREATE DATABASE \(quoteIdentifier(database)) OWNER \(owner)\(templateClause)")
                }
            }
        }
    }

    /// Refuses a role that row-level security would not hold: a superuser, a role with BYPASSRLS, the role
    /// that owns the tables (its policies differ), or one that owns anything in the database. Run at start,
    /// before the service accepts traffic, so a mistaken `--database-url` stops the service instead of
    /// letting every tenant see every other.
    ///
    /// Behind a transaction pooler (`pooler`) the connection also checks that the role carries `sessionSettings`
    /// (see `PGPoolerMode`), so a missing `ALTER ROLE … SET` stops the service here too, naming the fix.
    public static func checkApplicationRole(
        conninfo: String, ownerConninfo: String, pooler: PGPoolerMode = .none, sessionSettings: [(name: String, value: String)] = []
    ) async throws {
        let configuration = PGConnectionConfiguration(
            conninfo: conninfo, applicationName: "locality-role-check", sessionSettings: sessionSettings, pooler: pooler)
        let facts = try await PGConnection.withConnection(configuration) { connection in
            try await connection.query("""
                SELECT r.rolname, r.rolsuper, r.rolbypassrls,
                       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                        WHERE c.relowner = r.oid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'),
                       -- TEMPORARY or CREATE on public by any route: PUBLIC, a grant, or a role it can become.
                       (SELECT bool_or(has_database_privilege(m.oid, current_database(), 'TEMPORARY')
                                       OR has_schema_privilege(m.oid, 'public', 'CREATE'))
                        FROM pg_roles m WHERE pg_has_role(r.oid, m.oid, 'MEMBER')),
                       current_database()::text, to_regclass('public.schema_migrations') IS NOT NULL
                FROM pg_roles r WHERE r.rolname = current_user
                """).first!.decode(String.self, Bool.self, Bool.self, Int.self, Bool.self, String.self, Bool.self)
        }
        let owner = try await PGConnection.withConnection(.init(conninfo: ownerConninfo, applicationName: "locality-role-check")) { connection in
            try await connection.query("SELECT current_user::text").first!.decode(String.self, at: 0)
        }
        let (role, superuser, bypassRLS, owned, createsObjects, database, migrated) = facts
        let fix = "give --database-url a role of its own (see deploy/README.md: CREATE ROLE locality_app LOGIN NOSUPERUSER NOBYPASSRLS)"
        if superuser { throw StartupError("the service role \(role) is a superuser, which bypasses row-level security; \(fix)") }
        if bypassRLS { throw StartupError("the service role \(role) has BYPASSRLS; \(fix)") }
        if role == owner {
            throw StartupError("--database-url connects as \(role), the owner of the tables (--owner-database-url); \(fix)")
        }
        if owned > 0 { throw StartupError("the service role \(role) owns \(owned) tables or other relations; \(fix)") }
        // Its own objects (a temporary table, a function in public) would be found before ours by name, even
        // inside SECURITY DEFINER code. The migrations revoke this (so a database not yet migrated may still have
        // it: readiness waits for the migrations); a restore into a new database brings it back.
        if createsObjects && migrated {
            throw StartupError("the service role \(role) can create temporary tables or objects in schema public of \(database); as the database owner run REVOKE TEMPORARY ON DATABASE \(quoteIdentifier(database)) FROM PUBLIC, \(role) (and REVOKE CREATE ON SCHEMA public FROM PUBLIC, \(role); see deploy/README.md)")
        }
    }

    private static func ignoringDuplicates(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as PGError where error.sqlState == "42710" || error.sqlState == "42P04" || error.isUniqueViolation {
            // Another process created it first.
        }
    }
}

/// Double-quotes an SQL identifier (for the few DDL statements that cannot take parameters).
public func quoteIdentifier(_ identifier: String) -> String {
    "\"" + identifier.replacingOccurrences(of: "\"", with: "\"\"") + "\""
}

/// Connection strings for a running database, and the embedded cluster if we started one.
public struct DatabaseEndpoints: Sendable {
    public let applicationConninfo: String
    public let ownerConninfo: String
    public let embedded: EmbeddedPostgres?
}

public enum DatabaseBootstrap {
    /// The default `.data/postgres` is relative to the working directory. As root, PostgreSQL runs as an
    /// unprivileged user, which cannot reach a clone in a private directory (under /root, or mode 0700): then
    /// the cluster lives under /var/lib/locality instead, in a directory named for the working directory (so
    /// each clone keeps its own), and one log line says where. An explicit `--data-dir` is never moved.
    static func embeddedDataDirectory(_ settings: DatabaseSettings, logger: Logger) -> String {
        let requested = URL(fileURLWithPath: settings.dataDirectory).standardizedFileURL.path
        guard !settings.dataDirectoryIsExplicit, !EmbeddedPostgres.osUserCanReach(requested, osUser: settings.postgresOSUser) else {
            return settings.dataDirectory
        }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325   // FNV-1a of the requested path: stable across runs
        for byte in requested.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let name = URL(fileURLWithPath: FileManager.default.currentDirectoryPath).lastPathComponent
        let relocated = "/var/lib/locality/\(name)-\(String(hash, radix: 16).prefix(10))/postgres"
        logger.notice("the PostgreSQL OS user cannot reach \(requested); the embedded cluster lives in \(relocated) instead (--data-dir to choose)",
                      metadata: ["os_user": "\(settings.postgresOSUser)"])
        return relocated
    }

    /// Resolves the settings to running endpoints: the given URLs, or the embedded cluster started
    /// (and initialised with roles and database on first use).
    public static func prepare(_ settings: DatabaseSettings, logger: Logger) async throws -> DatabaseEndpoints {
        // Any URL means "not embedded": given only the owner's (as `locality-admin migrate` is), use it for both,
        // rather than quietly creating a private cluster and reporting success on it.
        let url = settings.databaseURL.flatMap { $0.isEmpty ? nil : $0 }
        let ownerURL = settings.ownerDatabaseURL.flatMap { $0.isEmpty ? nil : $0 }
        if url != nil || ownerURL != nil {
            return DatabaseEndpoints(applicationConninfo: url ?? ownerURL!, ownerConninfo: ownerURL ?? url!, embedded: nil)
        }
        let embedded = EmbeddedPostgres(
            configuration: .init(
                dataDirectory: embeddedDataDirectory(settings, logger: logger),
                osUser: settings.postgresOSUser,
                binDirectory: settings.postgresBinDirectory
            ),
            logger: logger
        )
        try await embedded.start()
        do {
            try await DatabaseRoles.ensure(superuserConninfo: embedded.conninfo())
        } catch {
            await embedded.stop()
            throw error
        }
        return DatabaseEndpoints(
            applicationConninfo: embedded.conninfo(user: DatabaseRoles.application, database: DatabaseRoles.database),
            ownerConninfo: embedded.conninfo(user: DatabaseRoles.owner, database: DatabaseRoles.database),
            embedded: embedded
        )
    }
}

/// A configuration the service refuses to start with; the message names the fix.
public struct StartupError: Error, CustomStringConvertible, Sendable {
    public let description: String

    public init(_ description: String) {
        self.description = description
    }
}
