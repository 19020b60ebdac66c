import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct SchoolCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "schools",
        abstract: "The school register (DfE GIAS).",
        subcommands: [Import.self, Category.self, Rules.self]
    )
}

extension SchoolCommand {
    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import a local authority's schools from the GIAS all-establishments CSV (Windows-1252).",
            discussion: """
                Keeps the rows of --la-code, upserts by URN (a re-run of the same file changes nothing), marks closed schools \
                closed and assigns boards by the authority's rules. All or nothing: one transaction. Reports added, updated, \
                unchanged, closed, skipped (other authorities) and rejected rows with their line numbers, and open schools \
                no rule assigns to a board.
                """
        )

        @Argument(help: "The GIAS CSV file.")
        var file: String

        @Option(help: "The local authority code to keep, e.g. 815 (North Yorkshire).")
        var laCode: String

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                guard let data = FileManager.default.contents(atPath: file) else { throw CLIError("cannot read \(file)") }
                let report = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await SchoolImportService(database: session.database).importFile(session.scope, data: data, laCode: laCode) { done, total in
                        if total >= 5_000 {
                            FileHandle.standardError.write(Data("\rparsed \(done) of \(total) rows".utf8))
                            if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
                        }
                    }
                }
                if json {
                    printJSON(report)
                    return
                }
                print("read \(report.rowsRead) rows: \(report.added) added, \(report.updated) updated, \(report.unchanged) unchanged, "
                      + "\(report.closed) closed, \(report.skipped) skipped (other authorities), \(report.rejected.count) rejected")
                for rejection in report.rejected { print("  line \(rejection.line): \(rejection.reason)") }
                if !report.unmappedURNs.isEmpty {
                    print("\(report.unmappedURNs.count) open schools are not assigned to a board (add a rule or an override): "
                          + report.unmappedURNs.prefix(50).map(String.init).joined(separator: ", ")
                          + (report.unmappedURNs.count > 50 ? ", …" : ""))
                }
            }
        }
    }
}
