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

        @Option(help: "The OCID prefix registered with the Open Contracting Partnership, e.g. ocds-a1b2c3. Until it is set, nothing is published.")
        var ocidPrefix: String?

        @Option(help: "Whether the authority is central government (lower Procurement Act thresholds): true or false.")
        var centralGovernment: Bool?

        @Option(help: "Days within which a contract details notice is due (\"as soon as reasonably practicable\"; default 30).")
        var contractDetailsNoticeDays: Int?

        @Option(help: "Whether KPI actuals and ratings per reporting period are published in the open contracting feed, as each return is made: on or off.")
        var publishKpiActuals: Switch?

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let publicationChanged = ocidPrefix != nil || centralGovernment != nil || contractDetailsNoticeDays != nil || publishKpiActuals != nil
                let (settings, publication) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let settings = try await AuthorityService(database: session.database).configure(
                        session.authority, clarificationCutoffHours: clarificationCutoffHours, standstillWorkingDays: standstillWorkingDays)
                    let publication = try await OpenContractingService(database: session.database).configure(
                        session.authority, ocidPrefix: ocidPrefix, centralGovernment: centralGovernment,
                        contractDetailsNoticeDays: contractDetailsNoticeDays, publishKPIActuals: publishKpiActuals?.isOn)
                    return (settings, publication)
                }
                if json {
                    printJSON(ConfiguredJSON(settings: settings, publication: publication))
                } else {
                    print("clarification questions close \(settings.clarificationCutoffHours) h before the deadline; standstill \(settings.standstillWorkingDays) working days")
                    if publicationChanged || publication.ocidPrefix == nil {
                        print(publication.ocidPrefix.map { "OCID prefix \($0)" } ?? "no OCID prefix: nothing is published until one is set (--ocid-prefix)")
                        print("\(publication.centralGovernment ? "central government" : "not central government"); contract details notices due within \(publication.contractDetailsNoticeDays) days; KPI actuals \(publication.publishKPIActuals ? "published" : "not published")")
                    }
                }
            }
        }
    }
}

/// A setting turned on or off (`true`/`false` are taken too).
enum Switch: String, ExpressibleByArgument, CaseIterable {
    case on, off

    init?(argument: String) {
        switch argument.lowercased() {
        case "on", "true": self = .on
        case "off", "false": self = .off
        default: return nil
        }
    }

    static var allValueStrings: [String] { ["on", "off"] }
    var isOn: Bool { self == .on }
}

/// The settings, flat, as `authority configure --json` prints them.
struct ConfiguredJSON: Encodable {
    var clarificationCutoffHours: Int
    var standstillWorkingDays: Int
    var ocidPrefix: String?
    var centralGovernment: Bool
    var contractDetailsNoticeDays: Int
    var publishKpiActuals: Bool

    init(settings: AuthorityService.Settings, publication: PublicationSettings) {
        clarificationCutoffHours = settings.clarificationCutoffHours
        standstillWorkingDays = settings.standstillWorkingDays
        ocidPrefix = publication.ocidPrefix
        centralGovernment = publication.centralGovernment
        contractDetailsNoticeDays = publication.contractDetailsNoticeDays
        publishKpiActuals = publication.publishKPIActuals
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
