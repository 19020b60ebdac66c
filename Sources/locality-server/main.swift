import ArgumentParser
import Foundation
import Hummingbird
import LocalityAPI
import LocalityCommandLine
import LocalityDomain
import Logging

@main
struct LocalityServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locality-server",
        abstract: "Serve the Locality Commissioning Marketplace REST API.",
        discussion: "Every option may instead be given as a LOCALITY_* environment variable (shown in brackets). With no database URL, an embedded PostgreSQL under .data/postgres is used."
    )

    @Option(help: "Address to listen on [LOCALITY_HOST] (default 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on [LOCALITY_PORT] (default 8080).")
    var port: Int?

    @Option(help: "Database connections in the pool [LOCALITY_POOL_SIZE] (default 16).")
    var poolSize: Int?

    @Option(help: "Largest accepted request body in bytes [LOCALITY_MAX_BODY_BYTES] (default 1048576).")
    var maxBodyBytes: Int?

    @Flag(inversion: .prefixedNo, help: "Apply pending migrations at start [LOCALITY_MIGRATE=true|false].")
    var migrate: Bool?

    @Flag(help: "On an empty database, create the North Yorkshire demo (five boards, budgets, one user per role) and print its tokens [LOCALITY_DEMO=true].")
    var demo = false

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        var configuration = AppConfiguration()
        configuration.host = host ?? environmentValue("HOST") ?? configuration.host
        configuration.port = try port ?? environmentValue("PORT").map { try parseInt($0, "LOCALITY_PORT") } ?? configuration.port
        configuration.poolSize = try poolSize ?? environmentValue("POOL_SIZE").map { try parseInt($0, "LOCALITY_POOL_SIZE") } ?? configuration.poolSize
        configuration.maxRequestBodyBytes = try maxBodyBytes ?? environmentValue("MAX_BODY_BYTES").map { try parseInt($0, "LOCALITY_MAX_BODY_BYTES") } ?? configuration.maxRequestBodyBytes
        configuration.applyMigrations = migrate ?? environmentValue("MIGRATE").map { $0 != "false" && $0 != "0" } ?? true
        configuration.database = database.settings
        configuration.seedDemo = demo || environmentValue("DEMO").map { $0 == "true" || $0 == "1" } ?? false
        configuration.logLevel = try logging.level(default: .info)
        guard configuration.poolSize > 0 else { throw ValidationError("--pool-size must be at least 1") }

        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardOutput(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "locality-server")
        do {
            let app = try await buildApplication(configuration, logger: logger, onDemoSeeded: printDemo)
            try await app.runService()
        } catch let error as ExitCode {
            throw error
        } catch {
            // One line saying what went wrong (embedded cluster, migrations, port in use…), then a non-zero exit.
            logger.critical("cannot start: \(error)")
            throw ExitCode.failure
        }
    }

    /// The demo's tokens, once: the only time they can be seen.
    private func printDemo(_ demo: DemoSeed.Result?) {
        guard let demo else {
            print("Demo: the database already has authorities; nothing seeded (tokens were shown when it was first seeded).")
            return
        }
        print("Demo seeded: \(demo.authority.name) with \(demo.boards.count) boards. Tokens (shown once):")
        for user in demo.users {
            print("  \(user.role.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0)) \(user.token)")
        }
        if let admin = demo.users.first(where: { $0.role == .authorityAdmin }) {
            print("Try: curl -H 'Authorization: Bearer \(admin.token)' http://\(host ?? "127.0.0.1"):\(port ?? 8080)/v1/boards")
        }
        // Standard output is block-buffered when it is a file or a pipe (systemd, CI): without this the tokens
        // would sit in the buffer while the server runs.
        fflush(nil)
    }

    private func parseInt(_ text: String, _ name: String) throws -> Int {
        guard let value = Int(text) else { throw ValidationError("\(name) must be a whole number, not \"\(text)\"") }
        return value
    }
}
