import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Issue, list and revoke users' API bearer tokens.",
        subcommands: [Issue.self, List.self, Revoke.self]
    )
}

/// `--user <id or email>`, for the token commands.
struct TokenUserOptions: ParsableArguments {
    @Option(help: "The user: their id or email.")
    var user: String
}

extension TokenCommand {
    struct Issue: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a token for a user and print it once.",
            discussion: """
                The token is printed alone on stdout, so it can be captured (TOKEN=$(locality-admin token issue ...)). \
                Only its hash is stored: it cannot be shown again. Revoke it with `token revoke`.
                """
        )

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var user: TokenUserOptions

        @Option(help: "A note on what the token is for.")
        var label: String = ""

        @Option(help: "Days until the token expires (1–366; default 90).")
        var expiresInDays: Int?

        @Flag(help: "Print JSON (including the token) instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func validate() throws {
            if let expiresInDays, !(1...366).contains(expiresInDays) {
                throw ValidationError("--expires-in-days must be between 1 and 366")
            }
        }

        func run() async throws {
            try await reportingFailure {
                let expiresAt = expiresInDays.map { Date() + TimeInterval($0) * 86_400 }
                let issued = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.user(user.user)
                    return try await TokenService(database: session.database)
                        .issue(session.scope, userID: target.id, label: label, expiresAt: expiresAt)
                }
                warn("token \(issued.token.prefix) (id \(issued.token.id.lowercased)) expires \(timestamp(issued.token.expiresAt)); "
                    + "store it now, it will not be shown again")
                if json {
                    printJSON(TokenJSON(issued.token, secret: issued.secret))
                } else {
                    print(issued.secret)
                }
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a user's tokens (never their secrets).")

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var user: TokenUserOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let tokens = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.user(user.user)
                    return try await TokenService(database: session.database).list(session.scope, userID: target.id)
                }
                if json {
                    printJSON(tokens.map { TokenJSON($0) })
                } else if tokens.isEmpty {
                    print("No tokens.")
                } else {
                    printTable(["PREFIX", "LABEL", "STATUS", "CREATED", "EXPIRES", "LAST USED", "ID"], tokens.map { token in
                        [token.prefix, token.label, token.status, timestamp(token.createdAt), timestamp(token.expiresAt),
                         timestamp(token.lastUsedAt), token.id.lowercased]
                    })
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke one of a user's tokens.")

        @OptionGroup var authority: AuthorityOptions
        @OptionGroup var user: TokenUserOptions

        @Argument(help: "The token: its id or its prefix (lcm_ and 12 hex digits).")
        var token: String

        @Flag(help: "Print JSON instead of text.")
        var json = false

        @OptionGroup var database: DatabaseOptions
        @OptionGroup var logging: LoggingOptions

        func run() async throws {
            try await reportingFailure {
                let (before, after) = try await CommandContext.withAuthority(database, logging, authority) { session in
                    let target = try await session.user(user.user)
                    let service = TokenService(database: session.database)
                    let wanted = token.trimmingCharacters(in: .whitespaces)
                    let id = UUID(uuidString: wanted)
                    // A whole token (secret included) also names its prefix.
                    let prefix = TokenFormat.prefix(of: wanted) ?? wanted.lowercased()
                    guard let match = try await service.list(session.scope, userID: target.id)
                        .first(where: { $0.id == id || $0.prefix == prefix })
                    else { throw DomainError.notFound("token \"\(token)\" of user \(target.email)") }
                    return (match, try await service.revoke(session.scope, userID: target.id, tokenID: match.id))
                }
                if json {
                    printJSON(TokenJSON(after))
                } else if before.revokedAt != nil {
                    print("token \(after.prefix) was already revoked at \(timestamp(after.revokedAt))")
                } else {
                    print("revoked token \(after.prefix) id \(after.id.lowercased)")
                }
            }
        }
    }
}
