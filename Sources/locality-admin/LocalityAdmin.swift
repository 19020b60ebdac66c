import ArgumentParser
import EmbeddedPostgres
import Foundation
import LocalityCommandLine
import LocalityDomain
import Logging

// Was main.swift: with several source files a file named main.swift is top-level code, where @main is not allowed.
@main
struct LocalityAdmin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locality-admin",
        abstract: "Administer a Locality Commissioning Marketplace deployment (talks to the database directly).",
        version: BuildVersion.current,
        subcommands: [
            Migrate.self, AuthorityCommand.self, BoardCommand.self, BudgetCommand.self, UserCommand.self,
            TokenCommand.self, AuditCommand.self, LedgerCommand.self, SeedCommand.self, SchoolCommand.self, MonitoringCommand.self,
            CatalogueCommand.self, OCDSCommand.self, NoticesCommand.self,
        ]
    )
}

/// Shared start-up for commands: resolve the database, stopping an embedded cluster we started when done.
struct CommandContext {
    let logger: Logger
    let endpoints: DatabaseEndpoints

    static func with<R>(_ database: DatabaseOptions, _ logging: LoggingOptions, _ body: (CommandContext) async throws -> R) async throws -> R {
        let level = try logging.level(default: .warning)
        var logger = Logger(label: "locality-admin") { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        logger.logLevel = level
        let endpoints = try await DatabaseBootstrap.prepare(database.settings, logger: logger)
        do {
            let result = try await body(CommandContext(logger: logger, endpoints: endpoints))
            await endpoints.embedded?.stop()
            return result
        } catch {
            await endpoints.embedded?.stop()
            throw error
        }
    }
}

/// Runs a command body, turning any failure into one line on stderr and a non-zero exit.
func reportingFailure(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("locality-admin: \(error)\n".utf8))
        throw ExitCode.failure
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply pending SQL migrations, or list applied and pending ones with --status."
    )

    @Flag(help: "List applied and pending migrations instead of applying.")
    var status = false

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Option(help: "Directory of NNNN_name.sql files [LOCALITY_MIGRATIONS_DIR] (default SQL/migrations).")
    var migrationsDir: String?

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        try await reportingFailure {
            let directory = migrationsDir.map { URL(fileURLWithPath: $0) } ?? Migration.defaultDirectory()
            let migrations = try Migration.load(from: directory)
            try await CommandContext.with(database, logging) { context in
                let migrator = Migrator(migrations: migrations, logger: context.logger)
                if status {
                    let rows = try await migrator.status(ownerConninfo: context.endpoints.ownerConninfo)
                    printStatus(rows)
                } else {
                    let applied = try await migrator.apply(ownerConninfo: context.endpoints.ownerConninfo)
                    if json {
                        printJSON(applied.map { ["version": String($0.version), "name": $0.name] })
                    } else {
                        print(applied.isEmpty ? "Database is up to date." : applied.map { "applied \($0.fileName)" }.joined(separator: "\n"))
                    }
                }
            }
        }
    }

    private func printStatus(_ rows: [MigrationStatus]) {
        if json {
            printJSON(rows.map { row in
                var object = ["version": String(row.version), "name": row.name, "state": row.state.rawValue]
                if let at = row.appliedAt { object["applied_at"] = ISO8601DateFormatter().string(from: at) }
                return object
            })
            return
        }
        for row in rows {
            let at = row.appliedAt.map { ISO8601DateFormatter().string(from: $0) } ?? ""
            let state = row.state.rawValue.padding(toLength: 8, withPad: " ", startingAt: 0)
            print("\(String(format: "%04d", row.version))  \(state)  \(row.name)  \(at)")
        }
    }
}

/// Pretty, sorted JSON with snake_case keys and ISO 8601 dates.
func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    encoder.keyEncodingStrategy = .custom { path in SnakeCaseKey(snakeCase(path.last!.stringValue)) }
    encoder.dateEncodingStrategy = .iso8601
    if let data = try? encoder.encode(value) {
        print(String(decoding: data, as: UTF8.self))
    }
}

/// snake_case that keeps acronyms whole, plurals included: `unmappedURNs` → `unmapped_urns`, `boardIDs` →
/// `board_ids`, `receiptSHA256` → `receipt_sha256` (Foundation's `.convertToSnakeCase` gives `unmapped_ur_ns`).
func snakeCase(_ key: String) -> String {
    let characters = Array(key)
    var words: [String] = []
    var index = 0
    while index < characters.count {
        var end = index + 1
        if characters[index].isUppercase {
            // An acronym: the run of capitals, with a plural "s" that ends the key or precedes a capital; its last
            // capital starts the next word when a lowercase letter follows ("URLPath" → "url", "path").
            while end < characters.count, characters[end].isUppercase || characters[end].isNumber { end += 1 }
            if end < characters.count, characters[end] == "s", end + 1 == characters.count || characters[end + 1].isUppercase {
                end += 1
            } else if end - index > 1, end < characters.count, characters[end].isLowercase {
                end -= 1
            } else if end - index == 1 {
                while end < characters.count, characters[end].isLowercase || characters[end].isNumber { end += 1 }
            }
        } else {
            while end < characters.count, !characters[end].isUppercase { end += 1 }
        }
        words.append(String(characters[index..<end]).lowercased())
        index = end
    }
    return words.joined(separator: "_")
}

private struct SnakeCaseKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ stringValue: String) { self.stringValue = stringValue }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}
