import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// One operation of the OpenAPI document, called on authority A's own resources, with the status each of
/// A's roles must get. Deny by default: anything not listed as allowed must be refused.
struct MatrixEntry {
    let method: HTTPRequest.Method
    let path: String
    let body: (Role) -> [String: Any]?
    let expected: [Role: HTTPResponse.Status]
    var mutates: Bool { method != .get }
}

let staffRoles: Set<Role> = [.authorityAdmin, .hosi, .lim, .boardMember, .auditor]

func outcomes(_ allowed: [Role: HTTPResponse.Status], otherwise: HTTPResponse.Status = .forbidden) -> [Role: HTTPResponse.Status] {
    Dictionary(uniqueKeysWithValues: everyRole.map { ($0, allowed[$0] ?? otherwise) })
}

func all(_ status: HTTPResponse.Status, _ roles: Set<Role>) -> [Role: HTTPResponse.Status] {
    Dictionary(uniqueKeysWithValues: roles.map { ($0, status) })
}

/// The operation ids the contract declares, read from the document itself so a new operation cannot be
/// forgotten here.
func documentedOperationIDs() throws -> Set<String> {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let text = try String(contentsOf: root.appendingPathComponent("Sources/LocalityAPI/openapi.yaml"), encoding: .utf8)
    let regex = try NSRegularExpression(pattern: #"operationId:\s*(\w+)"#)
    return Set(regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap { match in
        Range(match.range(at: 1), in: text).map { String(text[$0]) }
    })
}

func matrix(_ world: World) -> [String: MatrixEntry] {
    let a = world.a
    let board = lower(a.boards[0].id)
    let admin = lower(a.users[.authorityAdmin]!.id)
    let hosi = lower(a.users[.hosi]!.id)
    let unique = { (role: Role) in "\(role.rawValue)-\(UUID().uuidString.prefix(6))" }
    return [
        "getHealth": MatrixEntry(method: .get, path: "/healthz", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getReadiness": MatrixEntry(method: .get, path: "/readyz", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getMetrics": MatrixEntry(method: .get, path: "/metrics", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getOpenAPIDocument": MatrixEntry(method: .get, path: "/openapi.yaml", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getMe": MatrixEntry(method: .get, path: "/v1/me", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "listFundingStreams": MatrixEntry(method: .get, path: "/v1/funding-streams", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "listBoards": MatrixEntry(method: .get, path: "/v1/boards", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "createBoard": MatrixEntry(
            method: .post, path: "/v1/boards",
            body: { role in ["name": "Board \(unique(role))", "short_code": "B\(Int.random(in: 1000...99999))"] },
            expected: outcomes([.authorityAdmin: .created])),
        "getBoard": MatrixEntry(method: .get, path: "/v1/boards/\(board)", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "updateBoard": MatrixEntry(
            method: .patch, path: "/v1/boards/\(board)", body: { role in ["chair": "Chair \(unique(role))"] },
            expected: outcomes([.authorityAdmin: .ok])),
        "getBudget": MatrixEntry(method: .get, path: "/v1/boards/\(board)/budgets/2025-26", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "listLedgerEntries": MatrixEntry(method: .get, path: "/v1/boards/\(board)/ledger", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "postLedgerEntry": MatrixEntry(
            method: .post, path: "/v1/boards/\(board)/ledger",
            body: { _ in ["financial_year": "2025-26", "funding_stream": "locality", "kind": "allocation", "amount_pence": 500, "reason": "top-up"] },
            expected: outcomes([.authorityAdmin: .created])),
        "listUsers": MatrixEntry(method: .get, path: "/v1/users", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .auditor: .ok])),
        "createUser": MatrixEntry(
            method: .post, path: "/v1/users",
            body: { role in ["email": "\(unique(role))@alpha.example", "display_name": "New person", "roles": [["role": "auditor"]]] },
            expected: outcomes([.authorityAdmin: .created])),
        "getUser": MatrixEntry(
            method: .get, path: "/v1/users/\(admin)", body: { _ in nil },
            expected: outcomes([.authorityAdmin: .ok, .auditor: .ok, .hosi: .notFound, .lim: .notFound, .boardMember: .notFound])),
        "updateUser": MatrixEntry(
            method: .patch, path: "/v1/users/\(hosi)", body: { role in ["display_name": "Renamed by \(role.rawValue)"] },
            expected: outcomes([.authorityAdmin: .ok])),
        "listTokens": MatrixEntry(method: .get, path: "/v1/users/\(admin)/tokens", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .auditor: .ok])),
        "issueToken": MatrixEntry(
            method: .post, path: "/v1/users/\(hosi)/tokens", body: { _ in ["label": "laptop"] },
            expected: outcomes([.authorityAdmin: .created])),
        "revokeToken": MatrixEntry(
            method: .delete, path: "/v1/users/\(admin)/tokens/\(lower(a.spareTokenID))", body: { _ in nil },
            expected: outcomes([.authorityAdmin: .noContent])),
        "listAuditEvents": MatrixEntry(method: .get, path: "/v1/audit-events", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .auditor: .ok])),
    ]
}

/// Audit events in one authority's chain, counted as the superuser (outside row-level security).
func auditCount(_ database: TestDatabase, authority: UUID) async throws -> Int {
    try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "test")) { connection in
        try await connection.query("SELECT count(*) FROM audit_event WHERE chain_id = \(authority)").first!.decode(Int.self, at: 0)
    }
}

@Suite("Role × operation matrix")
struct RoleMatrixTests {
    @Test func everyDocumentedOperationIsInTheMatrix() async throws {
        let world = try await World.make()
        let documented = try documentedOperationIDs()
        let covered = Set(matrix(world).keys)
        #expect(documented.count >= 20)
        #expect(documented.subtracting(covered).isEmpty, "operations missing from the matrix: \(documented.subtracting(covered).sorted())")
        #expect(covered.subtracting(documented).isEmpty, "matrix names operations the document lacks: \(covered.subtracting(documented).sorted())")
    }

    /// Each role of authority A against A's own resources; a mutating call writes exactly one audit event
    /// when it succeeds and none when refused.
    @Test func everyRoleGetsItsExpectedOutcomeAndEveryChangeIsAuditedOnce() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for (operation, entry) in matrix(world).sorted(by: { $0.key < $1.key }) {
                // Refusals first, so the one successful change of a mutating operation comes last.
                let roles = everyRole.sorted { (entry.expected[$0]!.code < 300 ? 1 : 0, $0.rawValue) < (entry.expected[$1]!.code < 300 ? 1 : 0, $1.rawValue) }
                for role in roles {
                    let before = try await auditCount(world.database, authority: world.a.authority.id)
                    let response = try await client.call(entry.method, entry.path, token: world.token(role, of: world.a), body: entry.body(role))
                    let expected = entry.expected[role]!
                    #expect(response.status == expected, "\(operation) as \(role.rawValue): got \(response.status.code), expected \(expected.code): \(String(buffer: response.body))")
                    if response.status.code >= 400 {
                        #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true, "\(operation) as \(role.rawValue)")
                    }
                    if entry.path.hasPrefix("/v1/") {
                        #expect(response.headers[.cacheControl] == "no-store", "\(operation) as \(role.rawValue)")
                    }
                    let after = try await auditCount(world.database, authority: world.a.authority.id)
                    let expectedEvents = entry.mutates && expected.code < 300 ? 1 : 0
                    #expect(after - before == expectedEvents, "\(operation) as \(role.rawValue) wrote \(after - before) audit events")
                }
            }
        }
    }

    @Test func anonymousCallsToEveryV1OperationAre401() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for (operation, entry) in matrix(world) where entry.path.hasPrefix("/v1/") {
                let response = try await client.call(entry.method, entry.path, token: nil, body: entry.body(.authorityAdmin))
                #expect(response.status == .unauthorized, "\(operation)")
                #expect(response.headers[.wwwAuthenticate] == "Bearer", "\(operation)")
            }
        }
    }
}

extension HTTPField.Name {
    static let wwwAuthenticate = HTTPField.Name("WWW-Authenticate")!
}
