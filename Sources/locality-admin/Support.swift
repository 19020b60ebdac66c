import ArgumentParser
import Foundation
import LocalityCommandLine
import LocalityDomain
import LocalityPostgres

/// A usage mistake the CLI catches itself (before the domain sees it); reported as one line.
struct CLIError: Error, CustomStringConvertible {
    let description: String

    init(_ description: String) {
        self.description = description
    }
}

extension CommandContext {
    /// Opens a small pool as the database OWNER (the operator's role), closing it when `body` ends,
    /// whether it returns or throws.
    func withDatabase<R>(_ body: (ScopedDatabase) async throws -> R) async throws -> R {
        let pool = PGPool(
            configuration: .init(
                connection: .init(conninfo: endpoints.ownerConninfo, applicationName: "locality-admin"),
                maxConnections: 2
            ),
            logger: logger
        )
        do {
            try await requireCurrentSchema(pool)
            let result = try await body(ScopedDatabase(pool: pool))
            await pool.close()
            return result
        } catch {
            await pool.close()
            throw error
        }
    }

    /// Every command but `migrate` needs the schema of this build: say so, naming the fix, instead of letting
    /// the first query fail with `relation "authority" does not exist`.
    func requireCurrentSchema(_ pool: PGPool) async throws {
        let migrator = Migrator(migrations: try Migration.load(from: Migration.defaultDirectory()), logger: logger)
        let current: Bool
        do {
            current = try await pool.withConnection { try await migrator.isCurrent(on: $0) }
        } catch let error as PGError where error.sqlState == "42P01" {
            current = false   // no schema_migrations table: never migrated
        }
        if !current {
            throw CLIError("the database schema is not migrated to this version (or was edited); run `locality-admin migrate` first")
        }
    }

    /// Resolves the database, opens an owner pool on it and runs `body`.
    static func withDatabase<R>(
        _ database: DatabaseOptions, _ logging: LoggingOptions, _ body: (ScopedDatabase) async throws -> R
    ) async throws -> R {
        try await with(database, logging) { context in
            try await context.withDatabase(body)
        }
    }

    /// As `withDatabase`, then resolves `--authority` and hands over an operator session on it.
    static func withAuthority<R>(
        _ database: DatabaseOptions, _ logging: LoggingOptions, _ authority: AuthorityOptions,
        _ body: (OperatorSession) async throws -> R
    ) async throws -> R {
        try await withDatabase(database, logging) { scoped in
            let found = try await AuthorityService(database: scoped).find(authority.authority)
            return try await body(OperatorSession(database: scoped, authority: found))
        }
    }
}

/// `--authority <slug-or-id>`, shared by every command that works inside one authority.
struct AuthorityOptions: ParsableArguments {
    @Option(help: "The authority to act on: its slug or id.")
    var authority: String
}

/// The platform operator working on one authority: its admin and auditor rights, acting as `cli:<os user>`.
/// Every change made through the domain services is audited in the authority's chain.
struct OperatorSession {
    let database: ScopedDatabase
    let authority: Authority

    var scope: AccessScope { .operatorScope(authorityID: authority.id) }

    /// Every board of the authority, by name.
    func boards() async throws -> [Board] {
        let service = BoardService(database: database)
        var boards: [Board] = []
        var cursor: String?
        repeat {
            let page = try await service.list(scope, page: try PageRequest(limit: PageRequest.maxLimit, cursor: cursor))
            boards += page.items
            cursor = page.nextCursor
        } while cursor != nil
        return boards
    }

    /// A board by id or short code (case-insensitive).
    func board(_ idOrShortCode: String) async throws -> Board {
        let wanted = idOrShortCode.trimmingCharacters(in: .whitespaces)
        let id = UUID(uuidString: wanted)
        guard let board = try await boards().first(where: {
            $0.id == id || $0.shortCode.caseInsensitiveCompare(wanted) == .orderedSame
        }) else {
            throw DomainError.notFound("board \"\(idOrShortCode)\" in authority \(authority.slug)")
        }
        return board
    }

    /// Every user of the authority, by email.
    func users() async throws -> [User] {
        let service = UserService(database: database)
        var users: [User] = []
        var cursor: String?
        repeat {
            let page = try await service.list(scope, page: try PageRequest(limit: PageRequest.maxLimit, cursor: cursor))
            users += page.items
            cursor = page.nextCursor
        } while cursor != nil
        return users
    }

    /// A user by id or email (case-insensitive).
    func user(_ idOrEmail: String) async throws -> User {
        let wanted = idOrEmail.trimmingCharacters(in: .whitespaces)
        if let id = UUID(uuidString: wanted) {
            return try await UserService(database: database).get(scope, id: id)
        }
        guard let user = try await users().first(where: { $0.email.caseInsensitiveCompare(wanted) == .orderedSame }) else {
            throw DomainError.notFound("user \"\(idOrEmail)\" in authority \(authority.slug)")
        }
        return user
    }
}

/// Money on the command line: pounds in, integer pence inside, `£1,234.56` out.
enum Money {
    /// Parses pounds written like `121000` or `121000.50` (an optional leading `£`) into pence, exactly:
    /// from the decimal text, never through floating point.
    static func pence(fromPounds text: String) throws -> Int {
        var digits = Substring(text.trimmingCharacters(in: .whitespaces))
        if digits.hasPrefix("£") { digits = digits.dropFirst() }
        if digits.hasPrefix("-") { throw CLIError("amount must not be negative (got \"\(text)\")") }
        let parts = digits.split(separator: ".", omittingEmptySubsequences: false)
        func allDigits(_ part: Substring) -> Bool { part.allSatisfy { $0.isASCII && $0.isNumber } }
        guard parts.count <= 2, let whole = parts.first, !whole.isEmpty, allDigits(whole),
            parts.count == 1 || (!parts[1].isEmpty && allDigits(parts[1]))
        else {
            throw CLIError("amount must be pounds like 121000 or 121000.50 (got \"\(text)\")")
        }
        let fraction = parts.count == 2 ? parts[1] : ""
        guard fraction.count <= 2 else {
            throw CLIError("amount has more than 2 decimal places (got \"\(text)\"); give pounds and pence, like 121000.50")
        }
        let wholeDigits = whole.drop(while: { $0 == "0" })
        guard wholeDigits.count <= 15, let pounds = Int(wholeDigits.isEmpty ? "0" : wholeDigits),
            let pence = Int(fraction.padding(toLength: 2, withPad: "0", startingAt: 0))
        else {
            throw CLIError("amount is too large (got \"\(text)\")")
        }
        return pounds * 100 + pence
    }

    /// `£1,234.56`; negative amounts as `-£1,234.56`.
    static func format(pence: Int) -> String {
        let magnitude = pence.magnitude
        var pounds = String(magnitude / 100)
        var grouped = ""
        while pounds.count > 3 {
            grouped = "," + pounds.suffix(3) + grouped
            pounds.removeLast(3)
        }
        let fraction = magnitude % 100
        return (pence < 0 ? "-" : "") + "£" + pounds + grouped + "." + (fraction < 10 ? "0" : "") + String(fraction)
    }
}

/// Prints rows as columns padded to their widest cell; `rightAligned` holds the indexes of numeric columns.
func printTable(_ header: [String], _ rows: [[String]], rightAligned: Set<Int> = []) {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    for row in all {
        let cells = row.enumerated().map { column, cell in
            let pad = String(repeating: " ", count: widths[column] - cell.count)
            return rightAligned.contains(column) ? pad + cell : cell + pad
        }
        var line = cells.joined(separator: "  ")
        while line.last == " " { line.removeLast() }
        print(line)
    }
}

func timestamp(_ date: Date?) -> String {
    date.map { ISO8601DateFormatter().string(from: $0) } ?? "-"
}

func warn(_ message: String) {
    FileHandle.standardError.write(Data("locality-admin: \(message)\n".utf8))
}
