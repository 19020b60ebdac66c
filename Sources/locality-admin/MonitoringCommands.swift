import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

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

        func run() async throws {
            try await reportingFailure {
                let results = try await CommandContext.withDatabase(database, logging) { scoped in
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
