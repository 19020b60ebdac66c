import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct OCDSCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ocds",
        abstract: "The open contracting (OCDS 1.1.5) publication.",
        subcommands: [Export.self]
    )
}

extension OCDSCommand {
    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write every release of an authority to stdout: one release package, or one release per line (jsonl).",
            discussion: "Oldest first. Progress goes to stderr. Refused while the authority has no OCID prefix (authority configure --ocid-prefix)."
        )

        enum Format: String, ExpressibleByArgument, CaseIterable { case package, jsonl }

        @Option(help: "The authority: its slug or id.") var authority: String
        @Option(help: "Only releases dated at or after this time (RFC 3339, e.g. 2026-04-01T00:00:00Z).") var since: String?
        @Option(help: "package (an OCDS release package) or jsonl (one release per line).") var format: Format = .package
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                var sinceDate: Date?
                if let since {
                    guard let parsed = try? Date(since, strategy: .iso8601) else { throw CLIError("--since must be an RFC 3339 time, e.g. 2026-04-01T00:00:00Z") }
                    sinceDate = parsed
                }
                let format = self.format
                try await CommandContext.withDatabase(database, logging) { scoped in
                    let service = OpenContractingService(database: scoped)
                    let publisher = try await service.publisher(authority)
                    var releases: [String] = []
                    var count = 0
                    try await service.export(authority: authority, since: sinceDate) { release in
                        count += 1
                        if format == .jsonl {
                            FileHandle.standardOutput.write(Data((release + "\n").utf8))
                        } else {
                            releases.append(release)
                        }
                        if count % 200 == 0 { FileHandle.standardError.write(Data("exported \(count) releases…\n".utf8)) }
                    }
                    if format == .package {
                        let package = try OpenContractingService.releasePackage(
                            releases, uri: "urn:locality:ocds-export:\(publisher.slug)", publisher: publisher.name, publishedDate: Date())
                        FileHandle.standardOutput.write(try OpenContractingService.encode(package).data + Data("\n".utf8))
                    }
                    FileHandle.standardError.write(Data("exported \(count) releases of \(publisher.name)\n".utf8))
                }
            }
        }
    }
}

struct NoticesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "notices",
        abstract: "Procurement Act 2023 notices.",
        subcommands: [Due.self]
    )
}

extension NoticesCommand {
    struct Due: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per procurement, the notices the Act requires, when each is due, and whether it was filed.",
            discussion: "Lists the notices not yet filed; --all lists filed ones too."
        )

        @Flag(help: "Include notices already filed.") var all = false
        @Flag(help: "Print JSON instead of text.") var json = false
        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let procurements = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await OpenContractingService(database: session.database).notices(session.scope)
                }
                if json {
                    printJSON(procurements)
                    return
                }
                var rows: [[String]] = []
                for procurement in procurements {
                    for notice in procurement.notices where all || !notice.filed {
                        rows.append([procurement.title, procurement.regime, notice.type, notice.eventOn ?? "-", notice.dueOn ?? "not yet",
                                     notice.filed ? "filed \(notice.platformNoticeID ?? "")" : "not filed"])
                    }
                }
                if rows.isEmpty {
                    print("No notices \(all ? "" : "outstanding ")for \(procurements.count) procurement(s).")
                } else {
                    printTable(["PROCUREMENT", "REGIME", "NOTICE", "EVENT", "DUE", "STATUS"], rows)
                }
            }
        }
    }
}
