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
    public var sessionSettings: [(name: String, value: String)]

    public init(
        conninfo: String,
        applicationName: String = "locality",
        connectTimeoutSeconds: Int = 10,
        statementCacheCapacity: Int = 512,
        sessionSettings: [(name: String, value: String)] = []
    ) {
        self.conninfo = conninfo
        self.applicationName = applicationName
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.statementCacheCapacity = statementCacheCapacity
        self.sessionSettings = sessionSettings
    }

    /// The `options` connection parameter: the settings decoders rely on, then `sessionSettings`.
    /// libpq splits `options` on spaces, so a space or backslash inside a value is escaped with a backslash.
    var optionsParameter: String {
        let pinned = ["DateStyle=ISO,YMD", "TimeZone=UTC", "IntervalStyle=iso_8601", "extra_float_digits=1"]
        let extra = sessionSettings.map { "\($0.name)=\($0.value)" }
        return (pinned + extra).map { setting in
            "-c " + setting.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: " ", with: "\\ ")
        }.joined(separator: " ")
    }
}

public enum PGIsolationLevel: String, Sendable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}
