import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct CatalogueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalogue",
        abstract: "An authority's catalogue: its social-value measures.",
        subcommands: [MeasureCommand.self]
    )
}

struct MeasureCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "measure",
        abstract: "Add, change, retire and list the authority's TOMs-style social-value measures (every new authority starts with the defaults).",
        subcommands: [Add.self, Update.self, List.self]
    )
}

/// A measure as the CLI prints it with --json (ids in lower case, as the API gives them).
struct MeasureJSON: Encodable {
    var id: String
    var code: String
    var name: String
    var unit: String
    var proxyValuePence: Int
    var retired: Bool

    init(_ measure: SocialValueMeasure) {
        id = measure.id.lowercased
        code = measure.code
        name = measure.name
        unit = measure.unit
        proxyValuePence = measure.proxyValuePence
        retired = measure.retired
    }
}

extension OperatorSession {
    /// A measure by id or code (codes compared exactly, retired measures included).
    func measure(_ idOrCode: String) async throws -> SocialValueMeasure {
        let wanted = idOrCode.trimmingCharacters(in: .whitespaces)
        let id = UUID(uuidString: wanted)
        let all = try await CatalogueService(database: database).socialValueMeasures(scope, authorityID: authority.id, includeRetired: true)
        guard let found = all.first(where: { $0.id == id || $0.code == wanted }) else {
            throw DomainError.notFound("social-value measure \"\(idOrCode)\" in authority \(authority.slug)")
        }
        return found
    }
}

extension MeasureCommand {
    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a measure, e.g. --code NT19 --name \"Local supply chain spend\" --unit \"£ spent\" --proxy-value 0.12.")

        @OptionGroup var authority: AuthorityOptions

        @Option(help: "Code, unique in the authority: 1–20 letters, digits, '.', '_' or '-' (bids name measures by it).")
        var code: String

        @Option(help: "What is measured.")
        var name: String

        @Option(help: "The unit, e.g. hours, FTE, £ spent.")
        var unit: String

        @Option(help: "The proxy value of one unit in pounds, e.g. 17.00 or 0.17.")
        var proxyValue: String

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let pence = try Money.pence(fromPounds: proxyValue)
                let measure = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await CatalogueService(database: session.database).createSocialValueMeasure(
                        session.scope, code: code, name: name, unit: unit, proxyValuePence: pence)
                }
                if json {
                    printJSON(MeasureJSON(measure))
                } else {
                    print("added measure \(measure.code) (\(measure.name)), \(Money.format(pence: measure.proxyValuePence)) per \(measure.unit)")
                }
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a measure's name, unit or proxy value, or retire (restore) it; only the options given change. The code never changes."
        )

        @OptionGroup var authority: AuthorityOptions

        @Argument(help: "The measure: its code or id.")
        var measure: String

        @Option(help: "New name.")
        var name: String?

        @Option(help: "New unit.")
        var unit: String?

        @Option(help: "New proxy value of one unit, in pounds.")
        var proxyValue: String?

        @Flag(inversion: .prefixedNo, help: "Retire the measure (--retire: no longer offered to new bids) or restore it (--no-retire).")
        var retire: Bool?

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                guard name != nil || unit != nil || proxyValue != nil || retire != nil else {
                    throw CLIError("nothing to change: give at least one of --name, --unit, --proxy-value, --retire, --no-retire")
                }
                let pence = try proxyValue.map { try Money.pence(fromPounds: $0) }
                let updated = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.measure(measure)
                    return try await CatalogueService(database: session.database).updateSocialValueMeasure(
                        session.scope, id: target.id, SocialValueMeasureChanges(name: name, unit: unit, proxyValuePence: pence, retired: retire))
                }
                if json {
                    printJSON(MeasureJSON(updated))
                } else {
                    print("updated measure \(updated.code) (\(updated.name)), \(Money.format(pence: updated.proxyValuePence)) per \(updated.unit)"
                          + (updated.retired ? ", retired" : ""))
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the authority's measures (retired ones too with --all).")

        @OptionGroup var authority: AuthorityOptions

        @Flag(help: "Include retired measures.")
        var all = false

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let measures = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await CatalogueService(database: session.database).socialValueMeasures(
                        session.scope, authorityID: session.authority.id, includeRetired: all)
                }
                if json {
                    printJSON(measures.map(MeasureJSON.init))
                } else if measures.isEmpty {
                    print("No measures.")
                } else {
                    printTable(["CODE", "NAME", "UNIT", "PROXY VALUE", "RETIRED", "ID"],
                               measures.map { [$0.code, $0.name, $0.unit, Money.format(pence: $0.proxyValuePence), $0.retired ? "yes" : "", $0.id.lowercased] },
                               rightAligned: [3])
                }
            }
        }
    }
}
