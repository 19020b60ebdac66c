import ArgumentParser
import LocalityCommandLine
import LocalityDomain

struct BudgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "budget",
        abstract: "Allocate and show boards' budgets (the ledger is append-only; every entry is audited).",
        subcommands: [Allocate.self, Show.self]
    )
}

extension BudgetCommand {
    struct Allocate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add an allocation to a board's budget for one financial year and funding stream."
        )

        @OptionGroup var authority: AuthorityOptions

        @Option(help: "The board: its id or short code.")
        var board: String

        @Option(help: "Financial year, e.g. 2025-26.")
        var year: String

        @Option(help: "Funding stream code: locality or school_improvement.")
        var stream: String

        // Unconditional, so that `--amount -5` reaches the amount check (and is refused as negative) rather
        // than being taken for an unknown flag.
        @Option(parsing: .unconditional, help: "Amount in pounds, e.g. 121000 or 121000.50 (at most 2 decimal places).")
        var amount: String

        @Option(help: "Why the money is allocated (recorded on the ledger entry).")
        var reason: String

        @Option(help: "Optional reference, e.g. a cabinet decision number.")
        var reference: String = ""

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let pence = try Money.pence(fromPounds: amount)
                let (target, entry) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.board(board)
                    let entry = try await BudgetService(database: session.database).append(
                        session.scope, boardID: target.id,
                        LedgerEntryDraft(financialYear: year, fundingStream: stream, kind: .allocation, amountPence: pence,
                                         reference: reference, reason: reason))
                    return (target, entry)
                }
                if json {
                    printJSON(LedgerEntryJSON(entry))
                } else {
                    print("allocated \(Money.format(pence: entry.amountPence)) to \(target.shortCode) \(entry.fundingStreamCode) "
                        + "\(entry.financialYear) (ledger entry \(entry.id.lowercased))")
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a board's budget for one financial year, per funding stream."
        )

        @OptionGroup var authority: AuthorityOptions

        @Option(help: "The board: its id or short code.")
        var board: String

        @Option(help: "Financial year, e.g. 2025-26.")
        var year: String

        @Flag(help: "Print JSON (amounts in pence) instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let (target, balances) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.board(board)
                    let balances = try await BudgetService(database: session.database)
                        .balances(session.scope, boardID: target.id, financialYear: year)
                    return (target, balances)
                }
                if json {
                    printJSON(BudgetJSON(boardId: target.id.lowercased, boardShortCode: target.shortCode, financialYear: year,
                                         balances: balances.map(BalanceJSON.init)))
                } else {
                    print("\(target.shortCode) \(target.name), \(year)")
                    printTable(
                        ["STREAM", "ALLOCATED", "EARMARKED", "COMMITTED", "SPENT", "AVAILABLE"],
                        balances.map { balance in
                            [balance.fundingStreamCode] + [
                                balance.allocatedPence, balance.earmarkedPence, balance.committedPence, balance.spentPence,
                                balance.availablePence,
                            ].map { Money.format(pence: $0) }
                        },
                        rightAligned: [1, 2, 3, 4, 5])
                }
            }
        }
    }
}
