import ArgumentParser
import LocalityCommandLine
import LocalityDomain

struct AuthorityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authority",
        abstract: "Create and list authorities (the tenants).",
        subcommands: [Create.self, List.self, Configure.self]
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
