import ArgumentParser
import LocalityCommandLine
import LocalityDomain

struct SeedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seed",
        abstract: "Load sample data.",
        subcommands: [Demo.self]
    )
}

extension SeedCommand {
    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the demo authority (north-yorkshire): five boards, budgets from 2025-26 to the current year, one user per role.",
            discussion: """
                Prints each demo user's API token; they are shown once only. Does nothing (and succeeds) when the \
                demo authority already exists.
                """
        )

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        struct Seeded {
            var result: DemoSeed.Result
            var balances: [[BudgetBalance]]
        }

        func run() async throws {
            try await reportingFailure {
                let seeded = try await CommandContext.withDatabase(database, logging) { scoped -> Seeded? in
                    let seed = DemoSeed(database: scoped)
                    if try await seed.isSeeded() { return nil }
                    let result = try await seed.run()
                    let scope = AccessScope.operatorScope(authorityID: result.authority.id)
                    var balances: [[BudgetBalance]] = []
                    for board in result.boards {
                        balances.append(try await BudgetService(database: scoped)
                            .balances(scope, boardID: board.id, financialYear: DemoSeed.currentFinancialYear))
                    }
                    return Seeded(result: result, balances: balances)
                }
                guard let seeded else {
                    warn("demo data already seeded (authority \(DemoSeed.authoritySlug)); nothing to do")
                    return
                }
                if json {
                    printJSON(DemoJSON(seeded))
                    warn("the tokens in this output are shown once only; store them now")
                } else {
                    printText(seeded)
                }
            }
        }

        private func printText(_ seeded: Seeded) {
            let authority = seeded.result.authority
            print("Authority: \(authority.name) (\(authority.slug), id \(authority.id.lowercased))")
            print("")
            print("Boards, \(DemoSeed.currentFinancialYear) allocations (and each year from \(DemoSeed.financialYear)):")
            printTable(
                ["CODE", "NAME", "STREAM", "ALLOCATED", "AVAILABLE"],
                zip(seeded.result.boards, seeded.balances).flatMap { board, balances in
                    balances.map { balance in
                        [board.shortCode, board.name, balance.fundingStreamCode, Money.format(pence: balance.allocatedPence),
                         Money.format(pence: balance.availablePence)]
                    }
                },
                rightAligned: [3, 4])
            print("")
            print("Users and API tokens:")
            printTable(["ROLE", "EMAIL", "TOKEN"], seeded.result.users.map { [$0.role.rawValue, $0.email, $0.token] })
            print("")
            print("The tokens are shown once only (only their hashes are stored); store them now.")
        }
    }
}

struct DemoJSON: Encodable {
    struct BoardEntry: Encodable {
        var board: BoardJSON
        var financialYear: String
        var balances: [BalanceJSON]
    }

    struct UserEntry: Encodable {
        var role: String
        var email: String
        var displayName: String
        var token: String
    }

    var authority: AuthorityJSON
    var boards: [BoardEntry]
    var users: [UserEntry]

    init(_ seeded: SeedCommand.Demo.Seeded) {
        authority = AuthorityJSON(seeded.result.authority)
        boards = zip(seeded.result.boards, seeded.balances).map { board, balances in
            BoardEntry(board: BoardJSON(board), financialYear: DemoSeed.currentFinancialYear, balances: balances.map(BalanceJSON.init))
        }
        users = seeded.result.users.map {
            UserEntry(role: $0.role.rawValue, email: $0.email, displayName: $0.displayName, token: $0.token)
        }
    }
}
