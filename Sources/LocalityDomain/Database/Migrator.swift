import Crypto
public import Foundation
public import Logging
public import LocalityPostgres

/// One forward-only SQL migration: `SQL/migrations/NNNN_name.sql`.
public struct Migration: Sendable, Equatable {
    public let version: Int
    public let name: String
    public let fileName: String
    public let sql: String
    /// Hex SHA-256 of the file's bytes; an applied file whose checksum changes is refused.
    public let checksum: String

    public init(version: Int, name: String, fileName: String, sql: String) {
        self.version = version
        self.name = name
        self.fileName = fileName
        self.sql = sql
        self.checksum = SHA256.hash(data: Data(sql.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// Reads every `NNNN_name.sql` in `directory`, ordered by version.
    public static func load(from directory: URL) throws -> [Migration] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw MigrationError("the migrations directory \(directory.path) does not exist; run from the release's directory, or set LOCALITY_MIGRATIONS_DIR to its SQL/migrations")
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        var migrations: [Migration] = []
        for fileName in names where fileName.hasSuffix(".sql") {
            let stem = fileName.dropLast(4)
            guard let underscore = stem.firstIndex(of: "_"), let version = Int(stem[..<underscore]),
                stem[..<underscore].count == 4
            else {
                throw MigrationError("\(fileName) is not named NNNN_name.sql")
            }
            let sql = try String(contentsOf: directory.appendingPathComponent(fileName), encoding: .utf8)
            migrations.append(Migration(version: version, name: String(stem[stem.index(after: underscore)...]), fileName: fileName, sql: sql))
        }
        migrations.sort { $0.version < $1.version }
        for (previous, next) in zip(migrations, migrations.dropFirst()) where previous.version == next.version {
            throw MigrationError("\(previous.fileName) and \(next.fileName) share version \(next.version)")
        }
        return migrations
    }

    /// `LOCALITY_MIGRATIONS_DIR`, else `./SQL/migrations`, else an installed release's `<bin>/../SQL/migrations`, else the repository's `SQL/migrations` next to this source.
    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        if let explicit = environment["LOCALITY_MIGRATIONS_DIR"], !explicit.isEmpty {
            return URL(fileURLWithPath: explicit)
        }
        let local = URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("SQL/migrations")
        if FileManager.default.fileExists(atPath: local.path) { return local }
        // An installed release: bin/<executable> beside SQL/migrations, wherever the working directory is.
        if let executable = Bundle.main.executableURL?.resolvingSymlinksInPath() {
            let installed = executable.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("SQL/migrations")
            if FileManager.default.fileExists(atPath: installed.path) { return installed }
        }
        return URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("SQL/migrations")
    }
}

public struct MigrationError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

public struct MigrationStatus: Sendable, Equatable {
    public enum State: String, Sendable { case applied, pending, edited, unknown }
    public let version: Int
    public let name: String
    public let state: State
    public let appliedAt: Date?
}

/// Applies migrations as the owner role, each in its own transaction, recording them in `schema_migrations`.
/// Concurrent appliers (several instances starting at once) are serialised with an advisory lock.
public struct Migrator: Sendable {
    public let migrations: [Migration]
    private let logger: Logger

    /// Arbitrary but fixed: the advisory lock every applier takes.
    static let advisoryLockKey: Int64 = 7_318_221_001

    static let createTable = """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,      -- hex SHA-256 of the file as applied
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """

    public init(migrations: [Migration], logger: Logger) {
        self.migrations = migrations
        self.logger = logger
    }

    /// Applies every pending migration; returns those applied now.
    @discardableResult
    public func apply(ownerConninfo: String) async throws -> [Migration] {
        try await PGConnection.withConnection(.init(conninfo: ownerConninfo, applicationName: "locality-migrate")) { connection in
            // Session-level lock: released explicitly, or by the server when the connection closes. So the owner's
            // URL must reach PostgreSQL itself, never a transaction pooler (which could run the unlock, or the
            // migrations, on another server session).
            try await connection.query("SELECT pg_advisory_lock(\(Self.advisoryLockKey))")
            try await connection.execute(Self.createTable)
            let applied = try await appliedChecksums(connection)
            try verifyUnedited(applied)
            var appliedNow: [Migration] = []
            for migration in migrations where applied[migration.version] == nil {
                logger.info("applying migration", metadata: ["migration": "\(migration.fileName)"])
                do {
                    try await connection.withTransaction { connection in
                        try await connection.execute(migration.sql)
                        try await connection.query(
                            "INSERT INTO schema_migrations (version, name, checksum) VALUES (\(migration.version), \(migration.name), \(migration.checksum))"
                        )
                    }
                } catch let error as PGError {
                    throw MigrationError("\(migration.fileName) failed: \(error)")
                }
                appliedNow.append(migration)
            }
            try await connection.query("SELECT pg_advisory_unlock(\(Self.advisoryLockKey))")
            return appliedNow
        }
    }

    /// Applied, pending, edited and unknown (applied here but not in this build) migrations.
    public func status(ownerConninfo: String) async throws -> [MigrationStatus] {
        try await PGConnection.withConnection(.init(conninfo: ownerConninfo, applicationName: "locality-migrate")) { connection in
            try await status(on: connection)
        }
    }

    private func status(on connection: PGConnection) async throws -> [MigrationStatus] {
        let exists = try await connection.query("SELECT to_regclass('schema_migrations') IS NOT NULL")
        var applied: [Int: (name: String, checksum: String, at: Date)] = [:]
        if try exists.first?.decode(Bool.self, at: 0) == true {
            for row in try await connection.query("SELECT version, name, checksum, applied_at FROM schema_migrations") {
                let (version, name, checksum, at) = try row.decode(Int.self, String.self, String.self, Date.self)
                applied[version] = (name, checksum, at)
            }
        }
        var result = migrations.map { migration -> MigrationStatus in
            guard let record = applied[migration.version] else {
                return MigrationStatus(version: migration.version, name: migration.name, state: .pending, appliedAt: nil)
            }
            return MigrationStatus(
                version: migration.version, name: migration.name,
                state: record.checksum == migration.checksum ? .applied : .edited, appliedAt: record.at)
        }
        let known = Set(migrations.map(\.version))
        for (version, record) in applied where !known.contains(version) {
            result.append(MigrationStatus(version: version, name: record.name, state: .unknown, appliedAt: record.at))
        }
        return result.sorted { $0.version < $1.version }
    }

    /// True when every migration of this build is applied unedited (for readiness checks).
    public func isCurrent(on connection: PGConnection) async throws -> Bool {
        let applied = try await appliedChecksums(connection)
        return migrations.allSatisfy { applied[$0.version] == $0.checksum }
    }

    private func appliedChecksums(_ connection: PGConnection) async throws -> [Int: String] {
        var applied: [Int: String] = [:]
        for row in try await connection.query("SELECT version, checksum FROM schema_migrations") {
            let (version, checksum) = try row.decode(Int.self, String.self)
            applied[version] = checksum
        }
        return applied
    }

    private func verifyUnedited(_ applied: [Int: String]) throws {
        for migration in migrations {
            if let checksum = applied[migration.version], checksum != migration.checksum {
                throw MigrationError("SQL/migrations/\(migration.fileName) was edited after it was applied (checksum \(checksum.prefix(12))… recorded, \(migration.checksum.prefix(12))… on disk); migrations are forward-only: restore the file and add a new migration")
            }
        }
    }
}
