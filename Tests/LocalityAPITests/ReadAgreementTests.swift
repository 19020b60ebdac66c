import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Issue 12: "a test that compares, for every read operation and role, what the service allows with what
/// the policies return". For each role of authority A (and the admitted supplier) and every project, bid,
/// clarification question and contract of A: the API shows the object exactly when row-level security
/// alone (the role's context, set with set_config) lets the role read its row. A policy looser than the
/// service is a hole the service alone was closing; a policy stricter than the service is a page that shows
/// nothing (as finding 8 was for published questions).
@Suite("Service and row-level security agree on reads")
struct ReadAgreementTests {
    static func scope(_ world: World, _ role: Role) -> AccessScope {
        if role == .supplierUser {
            return AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                               boardIDs: [], actor: "user:\(lower(world.supplierUserID))")
        }
        let user = world.a.users[role]!
        return AccessScope(authorityID: world.a.authority.id, userID: user.id, roles: [role],
                           boardIDs: role.isBoardScoped ? [world.a.boards[0].id] : [], actor: "user:\(lower(user.id))")
    }

    /// Ids of `table`'s rows in A, as the superuser sees them, and as `scope` sees them under RLS alone.
    static func ids(_ world: World, _ sql: String, as scope: AccessScope?) async throws -> Set<String> {
        let query = PGQuery(sql, [world.a.authority.id.pg])
        if let scope {
            return try await world.database.withPool(conninfo: world.database.applicationConninfo, maxConnections: 1) { pool in
                try await pool.withTransaction(readOnly: true) { connection in
                    try await ScopedDatabase.setContext(scope, on: connection)
                    return Set(try await connection.query(query).map { try lower($0.decode(UUID.self, at: 0)) })
                }
            }
        }
        return try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            Set(try await connection.query(query).map { try lower($0.decode(UUID.self, at: 0)) })
        }
    }

    @Test func everyRoleReadsThroughTheAPIExactlyWhatItsPoliciesShow() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            // A published answer and a second, unpublished question, so both kinds are compared.
            #expect(try await client.call(.post, "/v1/projects/\(lower(world.market.openWithDraft))/questions/\(lower(world.market.question))/answer",
                                          token: world.token(.lim, of: world.a), body: ["answer": "Yes.", "publish": true]).status == .ok)
            #expect(try await client.call(.post, "/v1/projects/\(lower(world.market.openWithDraft))/questions", token: world.supplierToken,
                                          body: ["question": "Unpublished?"]).status == .created)
            let kinds: [(name: String, sql: String, path: String)] = [
                ("project", "SELECT id FROM project WHERE authority_id = $1", "/v1/projects/"),
                ("bid", "SELECT id FROM bid WHERE authority_id = $1", "/v1/bids/"),
                ("contract", "SELECT id FROM contract WHERE authority_id = $1", "/v1/contracts/"),
            ]
            let projects = try await Self.ids(world, "SELECT id FROM project WHERE authority_id = $1", as: nil)
            var seen: [String: Int] = [:]
            for role in everyRole {
                let token = world.token(role, of: world.a)
                let scope = Self.scope(world, role)
                for kind in kinds {
                    let all = try await Self.ids(world, kind.sql, as: nil)
                    let policies = try await Self.ids(world, kind.sql, as: scope)
                    var service = Set<String>()
                    for id in all where try await client.call(.get, kind.path + id, token: token).status == .ok { service.insert(id) }
                    seen[kind.name, default: 0] += service.count
                    #expect(service == policies, """
                        \(role) \(kind.name)s: the API shows \(service.subtracting(policies).sorted()) that the policies hide, \
                        and the policies show \(policies.subtracting(service).sorted()) that the API does not
                        """)
                }
                // Questions: the API lists a project's questions; compare every project's list with the policies.
                let policies = try await Self.ids(world, "SELECT id FROM clarification WHERE authority_id = $1", as: scope)
                var service = Set<String>()
                for project in projects {
                    let listed = try await client.call(.get, "/v1/projects/\(project)/questions", token: token)
                    if listed.status == .ok { service.formUnion(listed.items.compactMap { $0["id"] as? String }) }
                }
                seen["question", default: 0] += service.count
                // The service's rule, stated independently: the board's LIMs and the auditor see every question, the
                // asker its own, and everyone else who sees the project the published ones (finding 8: on main the
                // policies showed board staff none, so API and policies agreed on an empty list).
                let expected: [Role: Int] = [.lim: 2, .auditor: 2, .supplierUser: 2, .authorityAdmin: 1, .hosi: 1, .boardMember: 1]
                #expect(policies.count == expected[role], "\(role) sees \(policies.count) questions under RLS")
                #expect(service == policies, """
                    \(role) questions: the API shows \(service.subtracting(policies).sorted()) that the policies hide, \
                    and the policies show \(policies.subtracting(service).sorted()) that the API does not
                    """)
            }
            // The comparison means something only if objects of every kind were visible to someone.
            for kind in ["project", "bid", "contract", "question"] { #expect(seen[kind, default: 0] > 0, "no \(kind) was visible to anyone") }
        }
    }
}
