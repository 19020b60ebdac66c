import ArgumentParser
import LocalityCommandLine
import LocalityDomain

struct AuthorityCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "authority",
        abstract: "Create and list authorities (the tenants).",
        subcommands: [Create.self, List.self]
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
