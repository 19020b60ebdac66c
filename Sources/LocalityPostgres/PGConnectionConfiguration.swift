import Foundation

/// How to reach the server and what every session is pinned to.
public struct PGConnectionConfiguration: Sendable {
    /// A `postgresql://` URL or a `key=value` conninfo string.
    public var conninfo: String
    public var applicationName: String
    public var connectTimeoutSeconds: Int
    /// Prepared statements kept per connection; statements beyond this run unnamed.
    public var statementCacheCapacity: Int
    /// Server settings every session starts with (for example `statement_timeout`, `lock_timeout`,
    /// `idle_in_transaction_session_timeout`), sent as `-c name=value` at connect so no round trip is spent
    /// on them. A transaction that needs longer says so with `SET LOCAL`.
    ///
    /// Behind a transaction pooler (`pooler: .transaction`) they cannot be sent: they must be pinned on the role
    /// instead, and each new session checks that they are (see `PGPoolerMode`). Give values as `pg_settings`
    /// shows them (`setting` then `unit`: `15000ms`, not `15s`), so that the check can compare them.
    public var sessionSettings: [(name: String, value: String)]
    /// What sits between the client and PostgreSQL.
    public var pooler: PGPoolerMode

    public init(
        conninfo: String,
        applicationName: String = "locality",
        connectTimeoutSeconds: Int = 10,
        statementCacheCapacity: Int = 512,
        sessionSettings: [(name: String, value: String)] = [],
        pooler: PGPoolerMode = .none
    ) {
        self.conninfo = conninfo
        self.applicationName = applicationName
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.statementCacheCapacity = statementCacheCapacity
        self.sessionSettings = sessionSettings
        self.pooler = pooler
    }

    /// The settings decoders (and the SQL's date arithmetic) rely on, as `pg_settings` shows them.
    static let pinnedSettings: [(name: String, value: String)] = [
        ("DateStyle", "ISO, YMD"), ("TimeZone", "UTC"), ("IntervalStyle", "iso_8601"), ("extra_float_digits", "1"),
    ]

    /// Everything a session must start with: the pinned settings, then `sessionSettings`.
    var requiredSettings: [(name: String, value: String)] { Self.pinnedSettings + sessionSettings }

    /// The `options` connection parameter: the settings decoders rely on, then `sessionSettings`.
    /// libpq splits `options` on spaces, so a space or backslash inside a value is escaped with a backslash.
    var optionsParameter: String {
        requiredSettings.map { "\($0.name)=\($0.value)" }.map { setting in
            "-c " + setting.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: " ", with: "\\ ")
        }.joined(separator: " ")
    }
}

/// A connection pooler between the client and PostgreSQL, and what the client must then avoid.
///
/// `transaction` is PgBouncer's `pool_mode = transaction` (and poolers like it): each transaction, or each
/// statement outside one, may run on a different server session, shared with other clients. So the client
/// - sends no `options` startup parameter (PgBouncer refuses parameters it does not know, or drops them when
///   told to ignore them): the settings every session needs are pinned on the role instead
///   (`ALTER ROLE … IN DATABASE … SET …`, see deploy/README.md), and each new connection checks that they
///   are, refusing to go on otherwise: decoding with another `DateStyle`, or no statement timeout, is worse
///   than not starting;
/// - prepares nothing by name: every statement runs unnamed (Parse, Bind, Execute in one message batch).
///   A named statement prepared on one server session would be missing on the next (26000), or collide with
///   another client's of the same name (42P05);
/// - sends pipelines only when they end in one transaction (one sync point), which the pooler keeps on one
///   server session.
/// What it cannot check, its callers must keep to: no session-level `SET`, `LISTEN`, session advisory locks,
/// temporary tables outliving a transaction or `WITH HOLD` cursors through the pooler (those connect to
/// PostgreSQL directly: migrations, the admin CLI, the notification listener).
public enum PGPoolerMode: String, Sendable, CaseIterable {
    /// Straight to PostgreSQL (or through a session-mode pooler).
    case none
    /// Through a transaction-mode pooler.
    case transaction
}

public enum PGIsolationLevel: String, Sendable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}
