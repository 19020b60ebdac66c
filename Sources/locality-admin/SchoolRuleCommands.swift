import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

extension SchoolBoardSource: ExpressibleByArgument {}

/// The school-to-board mapping as the CLI prints it with --json: boards by short code as well as id.
struct SchoolBoardMappingJSON: Encodable {
    struct Rule: Encodable {
        var source: String
        var value: String
        var board: String
        var boardId: String
    }

    struct Override: Encodable {
        var urn: Int
        var board: String
        var boardId: String
    }

    var rules: [Rule]
    var overrides: [Override]
    var remapped: Int
    var unmappedURNs: [Int]

    init(_ mapping: SchoolBoardMapping, boards: [Board]) {
        let codes = Dictionary(boards.map { ($0.id, $0.shortCode) }, uniquingKeysWith: { first, _ in first })
        rules = mapping.rules.map {
            Rule(source: $0.source.rawValue, value: $0.value, board: codes[$0.boardID] ?? "?", boardId: $0.boardID.lowercased)
        }
        overrides = mapping.overrides.map { Override(urn: $0.urn, board: codes[$0.boardID] ?? "?", boardId: $0.boardID.lowercased) }
        remapped = mapping.remapped
        unmappedURNs = mapping.unmappedURNs
    }

    func printText(showRemapped: Bool) {
        if rules.isEmpty {
            print("No rules.")
        } else {
            printTable(["SOURCE", "VALUE", "BOARD"], rules.map { [$0.source, $0.value, $0.board] })
        }
        if !overrides.isEmpty {
            print("")
            printTable(["URN", "BOARD"], overrides.map { [String($0.urn), $0.board] })
        }
        if showRemapped { print("\(remapped) schools moved board") }
        if !unmappedURNs.isEmpty {
            print("\(unmappedURNs.count) open schools are not assigned to a board (add a rule or an override): "
                  + unmappedURNs.prefix(50).map(String.init).joined(separator: ", ") + (unmappedURNs.count > 50 ? ", …" : ""))
        }
    }
}

extension SchoolCommand {
    struct Rules: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rules",
            abstract: "Show or set the rules that assign schools to boards (by district, ward, constituency or postcode district).",
            subcommands: [Show.self, Set.self]
        )
    }
}

extension SchoolCommand.Rules {
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the rules, the per-URN overrides and the open schools no rule assigns.")

        @OptionGroup var authority: AuthorityOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let shown = try await CommandContext.withAuthority(database, logging, authority) { session in
                    SchoolBoardMappingJSON(try await SchoolImportService(database: session.database).mapping(session.scope),
                                           boards: try await session.boards())
                }
                if json { printJSON(shown) } else { shown.printText(showRemapped: false) }
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the rules of one source, e.g. --source district --rule \"Craven=CRA\" --rule \"Selby=SEL\".",
            discussion: """
                The rules of the other sources and the per-URN overrides stay. The register is re-mapped at once (not at the \
                next import): the command reports how many schools moved board and lists open schools left without one. \
                With no --rule, the source's rules are removed.
                """
        )

        @OptionGroup var authority: AuthorityOptions

        @Option(help: "The GIAS column the rules read: district, ward, constituency or postcode_district.")
        var source: SchoolBoardSource

        @Option(name: .customLong("rule"), help: "VALUE=BOARD: schools whose column equals VALUE belong to BOARD (short code or id). Repeatable.")
        var rules: [String] = []

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                // Split at the last '=': board codes and ids never contain one, values might.
                let pairs = try rules.map { text -> (String, String) in
                    guard let equals = text.lastIndex(of: "="), equals != text.startIndex, text.index(after: equals) != text.endIndex else {
                        throw CLIError("--rule must be VALUE=BOARD, e.g. \"Craven=CRA\" (got \"\(text)\")")
                    }
                    return (String(text[..<equals]), String(text[text.index(after: equals)...]))
                }
                let result = try await CommandContext.withAuthority(database, logging, authority) { session in
                    var values: [(value: String, boardID: UUID)] = []
                    for (value, board) in pairs { values.append((value, try await session.board(board).id)) }
                    let mapping = try await SchoolImportService(database: session.database).replaceRules(session.scope, source: source, values: values)
                    return SchoolBoardMappingJSON(mapping, boards: try await session.boards())
                }
                if json { printJSON(result) } else { result.printText(showRemapped: true) }
            }
        }
    }
}
