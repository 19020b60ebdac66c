import ArgumentParser
import LocalityCommandLine
import LocalityDomain

struct AuthorityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authority",
        abstract: "Create and list authorities (the tenants).",
        subcommands: [Create.self, List.self, Configure.self, Terms.self]
    )
}

extension AuthorityCommand {
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an authority with the default funding streams (locality, school_improvement)."
        )

        @Option(help: "URL name: 2–63 lowercase letters, digits or hyphens, e.g. north-yorkshire.")
        var slug: String

        @Option(help: "Display name, e.g. \"North Yorkshire County Council\".")
        var name: String

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let authority = try await CommandContext.withDatabase(database, logging) { scoped in
                    try await AuthorityService(database: scoped).create(slug: slug, name: name)
                }
                if json {
                    printJSON(AuthorityJSON(authority))
                } else {
                    print("created authority \(authority.slug) (\(authority.name)) id \(authority.id.lowercased)")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every authority.")

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let authorities = try await CommandContext.withDatabase(database, logging) { scoped in
                    try await AuthorityService(database: scoped).list()
                }
                if json {
                    printJSON(authorities.map(AuthorityJSON.init))
                } else if authorities.isEmpty {
                    print("No authorities.")
                } else {
                    printTable(["SLUG", "NAME", "ID", "CREATED"],
                               authorities.map { [$0.slug, $0.name, $0.id.lowercased, timestamp($0.createdAt)] })
                }
            }
        }
    }
}

extension AuthorityCommand {
    struct Configure: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set an authority's clarification cut-off and standstill period.",
            discussion: "Questions on a project close --clarification-cutoff-hours before its bid deadline (default 48); a contract may start --standstill-working-days after its award (default 8, 0 allowed)."
        )

        @Option(help: "Hours before the bid deadline that clarification questions close (0–720).")
        var clarificationCutoffHours: Int?

        @Option(help: "Working days between award and the earliest contract start (0–30).")
        var standstillWorkingDays: Int?

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let settings = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await AuthorityService(database: session.database).configure(
                        session.authority, clarificationCutoffHours: clarificationCutoffHours, standstillWorkingDays: standstillWorkingDays)
                }
                if json {
                    printJSON(settings)
                } else {
                    print("clarification questions close \(settings.clarificationCutoffHours) h before the deadline; standstill \(settings.standstillWorkingDays) working days")
                }
            }
        }
    }
}

extension AuthorityCommand {
    struct Terms: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set an academic year's term dates (termly reporting periods follow them).",
            discussion: "Each term is START:END, e.g. --autumn 2026-09-03:2026-12-18. Without them, standard dates apply."
        )

        @Option(help: "The academic year, e.g. 2026-27.")
        var academicYear: String

        @Option(help: "Autumn term START:END.") var autumn: String
        @Option(help: "Spring term START:END.") var spring: String
        @Option(help: "Summer term START:END.") var summer: String

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                guard let year = FinancialYear(academicYear) else { throw CLIError("--academic-year must be like 2026-27") }
                let terms = try [("autumn", autumn), ("spring", spring), ("summer", summer)].map { name, range in
                    let parts = range.split(separator: ":").map(String.init)
                    guard parts.count == 2 else { throw CLIError("--\(name) must be START:END, e.g. 2026-09-03:2026-12-18") }
                    return TermDates.Term(name: name, starts: parts[0], ends: parts[1])
                }
                try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await MonitoringService(database: session.database).setTermDates(session.scope, TermDates(academicYear: year.startYear, terms: terms))
                }
                print("term dates for \(year) set")
            }
        }
    }
}
