import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct SeedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seed",
        abstract: "Load sample data.",
        subcommands: [Demo.self, Scale.self]
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

extension SeedCommand {
    struct Scale: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate national-scale data for measurement: authorities × boards × financial years.",
            discussion: """
                Deterministic from --seed and --as-of: authorities scale-<seed>-1…N, each with its boards, staff, \
                admitted suppliers, projects, bids, panels, scores, contracts, KPIs, reporting periods, returns, \
                corrective action plans, budget ledger, schools (every tenth authority has --schools, the others a \
                tenth of it), concerns, school contracts and its audit chain. Every constraint and trigger holds; \
                `ledger verify` and `audit verify` pass. Authorities that already exist are skipped, so a run can be \
                resumed. Loads with set-based SQL in one transaction per authority (see ScaleSeed); run it while the \
                service is idle: each authority's load locks the tables it writes. Progress goes to stderr.
                """
        )

        @Option(help: "Seed of every id and value.")
        var seed = 42

        @Option(help: "Number of authorities.")
        var authorities = 150

        @Option(help: "Boards per authority.")
        var boards = 6

        @Option(help: "Financial years, ending with the one containing --as-of.")
        var years = 10

        @Option(help: "Projects per board per financial year.")
        var projects = 30

        @Option(help: "Schools of a large authority (every tenth); the others get a tenth.")
        var schools = 25_000

        @Option(help: "Supplier organisations in all.")
        var suppliers = 1_500

        @Option(help: "Suppliers admitted by each authority.")
        var admittedSuppliers = 40

        @Option(help: "The day the data describes (YYYY-MM-DD; default today, UTC).")
        var asOf: String?

        @Flag(help: "A small dataset for tests: 2 authorities × 3 boards × 3 years (other size options are ignored).")
        var small = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let day = asOf ?? CalendarDate.format(Date())
                let options = small
                    ? ScaleSeed.Options.small(seed: seed, asOf: day)
                    : ScaleSeed.Options(seed: seed, authorities: authorities, boards: boards, years: years, projectsPerBoardYear: projects,
                                        schools: schools, suppliers: suppliers, admittedSuppliers: admittedSuppliers, asOf: day)
                try await CommandContext.withDatabase(database, logging) { scoped in
                    let generator = ScaleSeed(database: scoped, options: options)
                    let started = ContinuousClock.now
                    var rows = 0
                    let total = try await generator.run { progress in
                        rows += progress.rows
                        let elapsed = Self.seconds(ContinuousClock.now - started)
                        let what = progress.skipped ? "exists, skipped" : "\(progress.rows) rows in \(String(format: "%.1f", progress.seconds)) s"
                        warn("seed scale: authority \(progress.authorityIndex + 1)/\(options.authorities) \(progress.slug): \(what); "
                            + "\(rows) rows in \(String(format: "%.0f", elapsed)) s (\(String(format: "%.0f", Double(rows) / max(elapsed, 0.001))) rows/s)")
                    }
                    warn("seed scale: analyzing")
                    try await generator.analyze()
                    let elapsed = Self.seconds(ContinuousClock.now - started)
                    print("Generated \(total) rows for \(options.authorities) authorities (seed \(options.seed), as of \(options.asOf)) in \(String(format: "%.0f", elapsed)) s.")
                }
            }
        }

        static func seconds(_ duration: Duration) -> Double {
            Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        }
    }
}
