import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain
import LocalityPostgres

struct MonitoringCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "monitoring",
        abstract: "Scheduled delivery-monitoring jobs.",
        subcommands: [OpenOverdue.self]
    )
}

extension MonitoringCommand {
    struct OpenOverdue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "open-overdue",
            abstract: "Open corrective action plans for overdue returns (run daily, e.g. from cron or a systemd timer).",
            discussion: "Every authority, or only --authority. A KPI with a plan already in progress gets no second one."
        )

        @Option(help: "Only this authority (slug or id).")
        var authority: String?

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        /// The session-level advisory lock held for the whole run, so that the job scheduled on several hosts
        /// runs on one at a time (the others say so and exit 0: the job is done either way).
        static let advisoryLockKey: Int64 = 0x6C6F_6361_6C69_7479   // "locality"

        func run() async throws {
            try await reportingFailure {
                let results: [(String, Int)]? = try await CommandContext.with(database, logging) { context in
                    try await PGConnection.withConnection(.init(conninfo: context.endpoints.ownerConninfo, applicationName: "locality-overdue-lock")) { lock in
                        let held = try await lock.query("SELECT pg_try_advisory_lock(\(Self.advisoryLockKey))").first!.decode(Bool.self, at: 0)
                        guard held else { return nil }
                        // Closing the connection at the end releases the lock, whatever happens in between.
                        return try await context.withDatabase { scoped in
                            let service = AuthorityService(database: scoped)
                            var authorities: [Authority]
                            if let authority { authorities = [try await service.find(authority)] } else { authorities = try await service.list() }
                            var results: [(String, Int)] = []
                            for authority in authorities {
                                let opened = try await MonitoringService(database: scoped).openPlansForOverdueReturns(.operatorScope(authorityID: authority.id))
                                results.append((authority.slug, opened))
                            }
                            return results
                        }
                    }
                }
                guard let results else {
                    print("open-overdue is already running on another host; nothing done here")
                    return
                }
                for (slug, opened) in results { print("\(slug): \(opened) plan(s) opened") }
            }
        }
    }
}

extension SchoolCommand {
    struct Category: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "category",
            abstract: "Add or rename a category of concern, e.g. --code ofsted_serious_weaknesses --name \"Ofsted: serious weaknesses\"."
        )

        @Option(help: "A code of lower-case letters, digits and _.") var code: String
        @Option(help: "The category's name.") var name: String
        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await SchoolImportService(database: session.database).setConcernCategory(session.scope, code: code, name: name)
                }
                print("category \(code) set")
            }
        }
    }
}
