public import ArgumentParser
import Foundation
public import LocalityDomain
public import Logging

/// Reads `LOCALITY_<NAME>` when a flag was not given: every option is both a flag and an environment variable.
public func environmentValue(_ name: String) -> String? {
    guard let value = ProcessInfo.processInfo.environment["LOCALITY_\(name)"], !value.isEmpty else { return nil }
    return value
}

/// Where the database is; shared by `locality-server` and `locality-admin`.
public struct DatabaseOptions: ParsableArguments, Sendable {
    @Option(help: "Application role's PostgreSQL URL [LOCALITY_DATABASE_URL]. Omit to use the embedded cluster.")
    public var databaseURL: String?

    @Option(help: "Owner role's URL, for migrations [LOCALITY_OWNER_DATABASE_URL]; defaults to --database-url.")
    public var ownerDatabaseURL: String?

    @Option(help: "Embedded cluster's data directory [LOCALITY_DATA_DIR] (default .data/postgres).")
    public var dataDir: String?

    @Option(help: "As root, the OS user the embedded PostgreSQL runs as [LOCALITY_POSTGRES_OS_USER] (default postgres).")
    public var postgresOSUser: String?

    @Option(help: "Directory of initdb/pg_ctl/postgres [LOCALITY_POSTGRES_BIN_DIR]; found automatically if omitted.")
    public var postgresBinDir: String?

    public init() {}

    public var settings: DatabaseSettings {
        let explicitDataDirectory = dataDir ?? environmentValue("DATA_DIR")
        var settings = DatabaseSettings(
            databaseURL: databaseURL ?? environmentValue("DATABASE_URL"),
            ownerDatabaseURL: ownerDatabaseURL ?? environmentValue("OWNER_DATABASE_URL"),
            dataDirectory: explicitDataDirectory ?? ".data/postgres",
            postgresOSUser: postgresOSUser ?? environmentValue("POSTGRES_OS_USER") ?? "postgres",
            postgresBinDirectory: postgresBinDir ?? environmentValue("POSTGRES_BIN_DIR")
        )
        settings.dataDirectoryIsExplicit = explicitDataDirectory != nil
        return settings
    }
}

/// `--log-level` with `LOCALITY_LOG_LEVEL` fallback.
public struct LoggingOptions: ParsableArguments, Sendable {
    @Option(help: "trace, debug, info, notice, warning, error or critical [LOCALITY_LOG_LEVEL].")
    public var logLevel: String?

    public init() {}

    public func level(default fallback: Logger.Level) throws -> Logger.Level {
        guard let text = logLevel ?? environmentValue("LOG_LEVEL") else { return fallback }
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            throw ValidationError("unknown log level \"\(text)\"")
        }
        return level
    }
}
