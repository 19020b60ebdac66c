import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Check the tamper-evident audit log.",
        subcommands: [Verify.self]
    )
}

extension AuditCommand {
    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Recompute every audit hash chain (or one authority's) and report the first bad event of each.",
            discussion: "Exits non-zero when any chain is broken (an event edited, deleted or reordered)."
        )

        @Option(help: "Only this authority's chain (slug or id); default every chain, suppliers' included.")
        var authority: String?

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let reports = try await CommandContext.withDatabase(database, logging) { scoped in
                    var chains: [UUID]?
                    if let authority { chains = [try await AuthorityService(database: scoped).find(authority).id] }
                    return try await AuditService(database: scoped).verify(chainIDs: chains)
                }
                if json {
                    printJSON(reports.map(ChainReportJSON.init))
                } else if reports.isEmpty {
                    print("No audit chains.")
                } else {
                    for report in reports {
                        if let problem = report.problem {
                            print("BROKEN \(report.chainID.lowercased): first bad event \(report.firstBadSeq.map(String.init) ?? "?"): \(problem)")
                        } else {
                            print("ok \(report.chainID.lowercased) (\(report.events) events)")
                        }
                    }
                }
                if reports.contains(where: { !$0.isIntact }) { throw ExitCode.failure }
            }
        }
    }
}
