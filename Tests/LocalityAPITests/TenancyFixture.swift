import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// One authority's worth of test data: boards, budgets, one user (and token) per staff role.
struct TenantFixture: Sendable {
    let authority: Authority
    /// The LIM and the board member are assigned to `boards[0]`; `boards[1]` is outside their scope.
    let boards: [Board]
    let users: [Role: User]
    let tokens: [Role: String]
    /// An extra token of the admin, free for tests to revoke.
    let spareTokenID: UUID
    let spareToken: String
}

/// Two authorities and a supplier organisation, created the way the operator would (owner role, CLI scope).
struct World: Sendable {
    let database: TestDatabase
    let a: TenantFixture
    let b: TenantFixture
    let supplierToken: String
    let supplierUserID: UUID

    static let year = "2025-26"

    static func make() async throws -> World {
        let database = try await TestDatabase.migrated()
        return try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 2) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let a = try await tenant(scoped, slug: "alpha", name: "Alpha Council")
            let b = try await tenant(scoped, slug: "beta", name: "Beta Council")
            let (supplier, supplierUser) = try await SupplierService(database: scoped).createWithUser(
                name: "Supplier Ltd", userEmail: "bids@supplier.example", userName: "Supplier User", osUser: "test")
            let issued = try await TokenService(database: scoped).issue(
                .operatorScope(supplierID: supplier.id, osUser: "test"), userID: supplierUser.id, label: "test", expiresAt: nil)
            return World(database: database, a: a, b: b, supplierToken: issued.secret, supplierUserID: supplierUser.id)
        }
    }

    static func tenant(_ database: ScopedDatabase, slug: String, name: String) async throws -> TenantFixture {
        let authority = try await AuthorityService(database: database).create(slug: slug, name: name, osUser: "test")
        let scope = AccessScope.operatorScope(authorityID: authority.id, osUser: "test")
        let boardService = BoardService(database: database)
        let budgets = BudgetService(database: database)
        var boards: [Board] = []
        for (index, code) in ["NORTH", "SOUTH"].enumerated() {
            let board = try await boardService.create(scope, BoardDraft(name: "\(name) \(code.capitalized)", shortCode: code))
            boards.append(board)
            _ = try await budgets.append(scope, boardID: board.id, LedgerEntryDraft(
                financialYear: year, fundingStream: "locality", kind: .allocation, amountPence: 10_000_000 + index, reason: "test allocation"))
        }
        let userService = UserService(database: database)
        let tokenService = TokenService(database: database)
        var users: [Role: User] = [:]
        var tokens: [Role: String] = [:]
        let grants: [Role: RoleGrant] = [
            .authorityAdmin: RoleGrant(role: .authorityAdmin), .hosi: RoleGrant(role: .hosi),
            .lim: RoleGrant(role: .lim, boardID: boards[0].id), .boardMember: RoleGrant(role: .boardMember, boardID: boards[0].id),
            .auditor: RoleGrant(role: .auditor),
        ]
        for (role, grant) in grants {
            let user = try await userService.create(scope, UserDraft(
                email: "\(role.rawValue)@\(slug).example", displayName: "\(name) \(role.rawValue)", roles: [grant]))
            users[role] = user
            tokens[role] = try await tokenService.issue(scope, userID: user.id, label: "test", expiresAt: nil).secret
        }
        let spare = try await tokenService.issue(scope, userID: users[.authorityAdmin]!.id, label: "spare", expiresAt: nil)
        return TenantFixture(authority: authority, boards: boards, users: users, tokens: tokens, spareTokenID: spare.token.id, spareToken: spare.secret)
    }

    /// Every caller of the test world: authority A's and B's staff and the supplier user.
    func token(_ role: Role, of tenant: TenantFixture) -> String {
        role == .supplierUser ? supplierToken : tenant.tokens[role]!
    }
}

/// The roles tests call with.
let everyRole: [Role] = [.authorityAdmin, .hosi, .lim, .boardMember, .auditor, .supplierUser]

extension TestClientProtocol {
    func call(
        _ method: HTTPRequest.Method, _ uri: String, token: String?, body: [String: Any]? = nil, headers extra: HTTPFields = [:]
    ) async throws -> TestResponse {
        var headers = extra
        if let token { headers[.authorization] = "Bearer \(token)" }
        var buffer: ByteBuffer?
        if let body {
            headers[.contentType] = "application/json"
            buffer = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body))
        }
        return try await execute(uri: uri, method: method, headers: headers, body: buffer)
    }
}

extension TestResponse {
    var jsonObject: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]) ?? [:] }
    var items: [[String: Any]] { jsonObject["items"] as? [[String: Any]] ?? [] }
}

func lower(_ id: UUID) -> String { id.uuidString.lowercased() }
