import ArgumentParser
import LocalityCommandLine
import LocalityDomain

struct BoardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "board",
        abstract: "Create, list and edit an authority's locality boards.",
        subcommands: [Create.self, List.self, Update.self]
    )
}

extension BoardCommand {
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a locality board.")

        @OptionGroup var authority: AuthorityOptions

        @Option(help: "Board name, unique in the authority.")
        var name: String

        @Option(help: "Short code: 2–10 capital letters or digits, unique in the authority, e.g. CRA.")
        var shortCode: String

        @Option(help: "The area the board covers.")
        var area: String = ""

        @Option(help: "The board's chair.")
        var chair: String = ""

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let board = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await BoardService(database: session.database)
                        .create(session.scope, BoardDraft(name: name, shortCode: shortCode, area: area, chair: chair))
                }
                if json {
                    printJSON(BoardJSON(board))
                } else {
                    print("created board \(board.shortCode) (\(board.name)) id \(board.id.lowercased)")
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an authority's boards.")

        @OptionGroup var authority: AuthorityOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let boards = try await CommandContext.withAuthority(database, logging, authority) { session in
                    try await session.boards()
                }
                if json {
                    printJSON(boards.map(BoardJSON.init))
                } else if boards.isEmpty {
                    print("No boards.")
                } else {
                    printTable(["CODE", "NAME", "AREA", "CHAIR", "ID"],
                               boards.map { [$0.shortCode, $0.name, $0.area, $0.chair, $0.id.lowercased] })
                }
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Change a board's name, short code, area or chair (only the options given change)."
        )

        @OptionGroup var authority: AuthorityOptions

        @Argument(help: "The board: its id or short code.")
        var board: String

        @Option(help: "New name.")
        var name: String?

        @Option(help: "New short code (2–10 capital letters or digits).")
        var shortCode: String?

        @Option(help: "New area (an empty string clears it).")
        var area: String?

        @Option(help: "New chair (an empty string clears it).")
        var chair: String?

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                guard name != nil || shortCode != nil || area != nil || chair != nil else {
                    throw CLIError("nothing to change: give at least one of --name, --short-code, --area, --chair")
                }
                let updated = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.board(board)
                    return try await BoardService(database: session.database).update(
                        session.scope, id: target.id, BoardChanges(name: name, shortCode: shortCode, area: area, chair: chair))
                }
                if json {
                    printJSON(BoardJSON(updated))
                } else {
                    print("updated board \(updated.shortCode) (\(updated.name)) id \(updated.id.lowercased)")
                }
            }
        }
    }
}
