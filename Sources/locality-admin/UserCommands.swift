import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct UserCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "user",
        abstract: "Create, list and disable an authority's staff users.",
        subcommands: [Create.self, List.self, Disable.self]
    )
}

extension UserCommand {
    /// Roles an operator may grant to authority staff.
    static let staffRoles: [Role] = [.authorityAdmin, .hosi, .lim, .boardMember, .auditor]

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a staff user with one or more roles.",
            discussion: """
                Roles: authority_admin, hosi, auditor (whole authority); lim and board_member take a board, \
                as ROLE:BOARD where BOARD is the board's id or short code. Repeat --role for several roles, e.g. \
                --role lim:CRA --role lim:HRK.
                """
        )

        @OptionGroup var authority: AuthorityOptions

        @Option(help: "Email address, unique among the authority's users.")
        var email: String

        @Option(help: "Display name.")
        var name: String

        @Option(name: .customLong("role"), help: ArgumentHelp("A role, as ROLE or ROLE:BOARD (repeatable).", valueName: "role[:board]"))
        var roles: [String]

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func validate() throws {
            if roles.isEmpty { throw ValidationError("give at least one --role") }
        }

        func run() async throws {
            try await reportingFailure {
                let parsed = try roles.map(Self.parse)
                let (user, boards) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let boards = parsed.contains { $0.board != nil } ? try await session.boards() : []
                    let grants = try parsed.map { role, board -> RoleGrant in
                        guard let board else { return RoleGrant(role: role) }
                        let id = UUID(uuidString: board)
                        guard let match = boards.first(where: { $0.id == id || $0.shortCode.caseInsensitiveCompare(board) == .orderedSame })
                        else { throw DomainError.notFound("board \"\(board)\" in authority \(session.authority.slug)") }
                        return RoleGrant(role: role, boardID: match.id)
                    }
                    let user = try await UserService(database: session.database)
                        .create(session.scope, UserDraft(email: email, displayName: name, roles: grants))
                    return (user, Dictionary(boards.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first }))
                }
                if json {
                    printJSON(UserJSON(user, boards: boards))
                } else {
                    print("created user \(user.email) id \(user.id.lowercased) roles \(user.roles.map { describe($0, boards: boards) }.joined(separator: ","))")
                }
            }
        }

        /// `ROLE` or `ROLE:BOARD`.
        static func parse(_ text: String) throws -> (role: Role, board: String?) {
            let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let names = UserCommand.staffRoles.map(\.rawValue).joined(separator: ", ")
            guard let role = Role(rawValue: parts[0].lowercased()), UserCommand.staffRoles.contains(role) else {
                throw CLIError("unknown role \"\(parts[0])\" in --role \(text); roles are \(names)")
            }
            guard parts.count == 2 else { return (role, nil) }
            guard !parts[1].isEmpty else { throw CLIError("--role \(text) names no board; write ROLE:BOARD") }
            return (role, parts[1])
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an authority's users.")

        @OptionGroup var authority: AuthorityOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let (users, boards) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let boards = try await session.boards()
                    return (try await session.users(), Dictionary(boards.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first }))
                }
                if json {
                    printJSON(users.map { UserJSON($0, boards: boards) })
                } else if users.isEmpty {
                    print("No users.")
                } else {
                    printTable(["EMAIL", "NAME", "STATUS", "ROLES", "ID"], users.map { user in
                        [user.email, user.displayName, user.disabled ? "disabled" : "active",
                         user.roles.map { describe($0, boards: boards) }.joined(separator: ","), user.id.lowercased]
                    })
                }
            }
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Disable a user: their tokens stop working; their history stays."
        )

        @OptionGroup var authority: AuthorityOptions

        @Argument(help: "The user: their id or email.")
        var user: String

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let (before, after, boards) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let before = try await session.user(user)
                    let after = try await UserService(database: session.database)
                        .update(session.scope, id: before.id, UserChanges(disabled: true))
                    let boards = try await session.boards()
                    return (before, after, Dictionary(boards.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first }))
                }
                if json {
                    printJSON(UserJSON(after, boards: boards))
                } else {
                    print(before.disabled ? "user \(after.email) was already disabled" : "disabled user \(after.email) id \(after.id.lowercased)")
                }
            }
        }
    }
}
