import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct LedgerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ledger",
        abstract: "Check the budget ledger.",
        subcommands: [Verify.self]
    )
}

extension LedgerCommand {
    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check that every envelope's balances equal its ledger and every contract's money adds up.",
            discussion: """
                Per envelope (board × financial year × funding stream): allocated, earmarked, committed and spent \
                equal the sums of the ledger entries. Per contract: commitments − spend − decommitments equal its \
                value while it is live (kpi_negotiation, active) and 0 once it has ended; an ended contract's spend \
                equals the amount paid. Prints one OK line, or one BROKEN line per problem (the first broken \
                envelope or contract first) and exits non-zero.
                """
        )

        @Option(help: "Only this authority (slug or id); default every authority.")
        var authority: String?

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let report = try await CommandContext.withDatabase(database, logging) { scoped in
                    var ids: [UUID]?
                    if let authority { ids = [try await AuthorityService(database: scoped).find(authority).id] }
                    return try await LedgerVerifier(database: scoped).verify(authorityIDs: ids)
                }
                if report.isBalanced {
                    print("ledger OK: \(report.authorities) authorities, \(report.envelopes) envelopes, \(report.contracts) contracts")
                    return
                }
                for problem in report.problems { print("BROKEN \(problem)") }
                throw ExitCode.failure
            }
        }
    }
}
