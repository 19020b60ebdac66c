import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Issue 12, newcomer papercuts: an authority admin manages its social-value measures and its school-to-board
/// mapping through the API (on main neither operation existed: 404/405, and the application role could not
/// write either table).
@Suite("Catalogue and school-to-board mapping management")
struct CatalogueManagementTests {
    @Test func anAdminAddsEditsAndRetiresAMeasure() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let auditBefore = try await auditCount(world.database, authority: world.a.authority.id)
            let created = try await client.call(.post, "/v1/social-value-measures", token: admin, body: [
                "code": "NT19", "name": "Local supply chain spend", "unit": "£ spent", "proxy_value_pence": 12,
            ])
            #expect(created.status == .created, "\(created.jsonObject)")
            let id = created.jsonObject["id"] as? String ?? ""
            #expect(created.headers[.location] == "/v1/social-value-measures/\(id)")
            #expect(created.jsonObject["proxy_value_pence"] as? Int == 12 && created.jsonObject["retired"] as? Bool == false)
            #expect(try await auditCount(world.database, authority: world.a.authority.id) == auditBefore + 1)
            // Suppliers admitted to A see it at once.
            let offered = try await client.call(.get, "/v1/social-value-measures?authority=alpha", token: world.supplierToken)
            #expect(offered.items.contains { $0["code"] as? String == "NT19" })

            let edited = try await client.call(.patch, "/v1/social-value-measures/\(id)", token: admin, body: [
                "name": "Spend with local suppliers", "proxy_value_pence": 15,
            ])
            #expect(edited.status == .ok, "\(edited.jsonObject)")
            #expect(edited.jsonObject["name"] as? String == "Spend with local suppliers")
            #expect(edited.jsonObject["unit"] as? String == "£ spent", "an absent field stays as it was")
            #expect(edited.jsonObject["proxy_value_pence"] as? Int == 15 && edited.jsonObject["code"] as? String == "NT19")

            let retired = try await client.call(.patch, "/v1/social-value-measures/\(id)", token: admin, body: ["retired": true])
            #expect(retired.jsonObject["retired"] as? Bool == true)
            let live = try await client.call(.get, "/v1/social-value-measures", token: admin)
            #expect(!live.items.contains { $0["id"] as? String == id }, "a retired measure is no longer offered")
            let all = try await client.call(.get, "/v1/social-value-measures?include_retired=true", token: admin)
            #expect(all.items.contains { $0["id"] as? String == id && $0["retired"] as? Bool == true })
            let restored = try await client.call(.patch, "/v1/social-value-measures/\(id)", token: admin, body: ["retired": false])
            #expect(restored.jsonObject["retired"] as? Bool == false)
        }
    }

    /// A code the authority already has (one of the defaults every new authority gets, or one just added) is a 409
    /// with its own problem type, and nothing is written.
    @Test func aDuplicateCodeIsAConflict() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let auditBefore = try await auditCount(world.database, authority: world.a.authority.id)
            let duplicate = try await client.call(.post, "/v1/social-value-measures", token: admin, body: [
                "code": "NT13", "name": "Volunteering again", "unit": "hours", "proxy_value_pence": 1_700,
            ])
            #expect(duplicate.status == .conflict, "\(duplicate.jsonObject)")
            #expect(duplicate.jsonObject["type"] as? String == "/problems/duplicate-measure")
            #expect(try await auditCount(world.database, authority: world.a.authority.id) == auditBefore)
            // B has the same defaults and may add the code A has: codes are unique per authority only.
            let elsewhere = try await client.call(.post, "/v1/social-value-measures", token: world.token(.authorityAdmin, of: world.b), body: [
                "code": "NT19", "name": "Local supply chain spend", "unit": "£ spent", "proxy_value_pence": 12,
            ])
            #expect(elsewhere.status == .created)
        }
    }

    @Test func onlyTheAdminChangesMeasuresAndOnlyItsOwn() async throws {
        let world = try await World.make()
        let measure = lower(world.market.measure)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for role in [Role.hosi, .lim, .boardMember, .auditor, .supplierUser] {
                let token = world.token(role, of: world.a)
                let create = try await client.call(.post, "/v1/social-value-measures", token: token, body: [
                    "code": "Z1", "name": "Anything", "unit": "hours", "proxy_value_pence": 1,
                ])
                #expect(create.status == .forbidden, "\(role)")
                let update = try await client.call(.patch, "/v1/social-value-measures/\(measure)", token: token, body: ["name": "Renamed"])
                #expect(update.status == .forbidden, "\(role)")
            }
            // B's admin: A's measure is as good as missing, and stays as it was.
            let foreign = try await client.call(.patch, "/v1/social-value-measures/\(measure)", token: world.token(.authorityAdmin, of: world.b),
                                                body: ["name": "Hijacked", "retired": true])
            #expect(foreign.status == .notFound, "\(foreign.jsonObject)")
            let list = try await client.call(.get, "/v1/social-value-measures?include_retired=true", token: world.token(.authorityAdmin, of: world.a))
            let mine = list.items.first { $0["id"] as? String == measure }
            #expect(mine?["name"] as? String == "Donations or in-kind contributions to local community projects" && mine?["retired"] as? Bool == false)
        }
        // Row-level security alone: with a LIM's context the application role updates no measure; with the admin's, it does.
        let byLIM = try await PolicyIntegrityTests.asRole(world, PolicyIntegrityTests.staff(world, .lim)) { connection in
            try await connection.query("UPDATE social_value_measure SET name = 'x' WHERE id = \(world.market.measure) RETURNING id").count
        }
        #expect(byLIM == 0)
        let byAdmin = try await PolicyIntegrityTests.asRole(world, PolicyIntegrityTests.staff(world, .authorityAdmin)) { connection in
            try await connection.query("UPDATE social_value_measure SET name = 'x' WHERE id = \(world.market.measure) RETURNING id").count
        }
        #expect(byAdmin == 1)
    }

    @Test func invalidMeasuresAre422NamingTheField() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let cases: [([String: Any], String)] = [
                (["code": "has space", "name": "n", "unit": "u", "proxy_value_pence": 1], "code"),
                (["code": "OK1", "name": "   ", "unit": "u", "proxy_value_pence": 1], "name"),
                (["code": "OK1", "name": "n", "unit": String(repeating: "u", count: 101), "proxy_value_pence": 1], "unit"),
                (["code": "OK1", "name": "n", "unit": "u", "proxy_value_pence": -1], "proxy_value_pence"),
            ]
            for (body, field) in cases {
                let response = try await client.call(.post, "/v1/social-value-measures", token: admin, body: body)
                #expect(response.status == .unprocessableContent, "\(field): \(response.jsonObject)")
                #expect("\(response.jsonObject)".contains(field), "\(field): \(response.jsonObject)")
            }
            let patch = try await client.call(.patch, "/v1/social-value-measures/\(lower(world.market.measure))", token: admin,
                                              body: ["proxy_value_pence": -5])
            #expect(patch.status == .unprocessableContent, "\(patch.jsonObject)")
        }
    }

    /// The mapping as the fixture set it; a change re-maps the register at once (121002 moves board) and reports
    /// the open schools left without one, as the import does; one audit event per change.
    @Test func anAdminReplacesTheMappingAndTheRegisterFollows() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let north = lower(world.a.boards[0].id), south = lower(world.a.boards[1].id)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let shown = try await client.call(.get, "/v1/school-board-rules", token: world.token(.lim, of: world.a))
            #expect(shown.status == .ok)
            let rules = shown.jsonObject["rules"] as? [[String: Any]] ?? []
            #expect(rules.map { "\($0["source"] ?? "") \($0["value"] ?? "") \($0["board_id"] ?? "")" }
                    == ["district Northshire \(north)", "district Southshire \(south)"])
            #expect(shown.jsonObject["unmapped_urns"] as? [Int] == [])

            func boardOf(_ urn: Int) async throws -> String? {
                try await client.call(.get, "/v1/schools?q=\(urn)", token: admin).items.first?["board_id"] as? String
            }
            #expect(try await boardOf(121002) == south)
            let auditBefore = try await auditCount(world.database, authority: world.a.authority.id)
            let moved = try await client.call(.put, "/v1/school-board-rules", token: admin, body: [
                "rules": [["source": "district", "value": "Northshire", "board_id": north]],
                "overrides": [["urn": 121002, "board_id": north]],
            ])
            #expect(moved.status == .ok, "\(moved.jsonObject)")
            #expect(moved.jsonObject["remapped"] as? Int == 1)
            #expect(try await boardOf(121002) == north, "the override moved the school now, not at the next import")
            #expect(try await auditCount(world.database, authority: world.a.authority.id) == auditBefore + 1)

            // Without the override and with no rule for Southshire, 121002 has no board, and the answer says so.
            let unmapped = try await client.call(.put, "/v1/school-board-rules", token: admin, body: [
                "rules": [["source": "district", "value": "Northshire", "board_id": north]], "overrides": [] as [Any],
            ])
            #expect(unmapped.jsonObject["unmapped_urns"] as? [Int] == [121002] && unmapped.jsonObject["remapped"] as? Int == 1)
            #expect(try await boardOf(121002) == nil)
            // A postcode-district rule maps it again (the fixture's schools are in BD23).
            let byPostcode = try await client.call(.put, "/v1/school-board-rules", token: admin, body: [
                "rules": [["source": "district", "value": "Northshire", "board_id": north],
                          ["source": "postcode_district", "value": "bd23", "board_id": south]], "overrides": [] as [Any],
            ])
            #expect(byPostcode.jsonObject["unmapped_urns"] as? [Int] == [], "\(byPostcode.jsonObject)")
            let stored = (byPostcode.jsonObject["rules"] as? [[String: Any]] ?? []).compactMap { $0["value"] as? String }
            #expect(stored == ["Northshire", "BD23"], "postcode districts are kept in capitals, as the import compares them")
            #expect(try await boardOf(121002) == south)
        }
    }

    @Test func aBadMappingIsRefusedWholeAndOnlyTheAdminMaySetIt() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let north = lower(world.a.boards[0].id)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let bodies: [([String: Any], String)] = [
                (["rules": [["source": "district", "value": "Northshire", "board_id": north],
                            ["source": "district", "value": "Northshire", "board_id": north]], "overrides": [] as [Any]], "rules[1].value"),
                (["rules": [["source": "district", "value": "Northshire", "board_id": lower(world.b.boards[0].id)]], "overrides": [] as [Any]],
                 "rules[0].board_id"),
                (["rules": [] as [Any], "overrides": [["urn": 121001, "board_id": north], ["urn": 121001, "board_id": north]]], "overrides[1].urn"),
                (["rules": [["source": "ward", "value": " ", "board_id": north]], "overrides": [] as [Any]], "rules[0].value"),
            ]
            for (body, field) in bodies {
                let response = try await client.call(.put, "/v1/school-board-rules", token: admin, body: body)
                #expect(response.status == .unprocessableContent, "\(field): \(response.jsonObject)")
                #expect("\(response.jsonObject)".contains(field), "\(field): \(response.jsonObject)")
            }
            for role in [Role.hosi, .lim, .boardMember, .auditor, .supplierUser] {
                let response = try await client.call(.put, "/v1/school-board-rules", token: world.token(role, of: world.a),
                                                     body: ["rules": [] as [Any], "overrides": [] as [Any]])
                #expect(response.status == .forbidden, "\(role)")
            }
            #expect(try await client.call(.get, "/v1/school-board-rules", token: world.supplierToken).status == .forbidden)
            // Nothing of the refused changes landed.
            let shown = try await client.call(.get, "/v1/school-board-rules", token: admin)
            #expect((shown.jsonObject["rules"] as? [Any])?.count == 2 && (shown.jsonObject["overrides"] as? [Any])?.count == 0)
        }
    }
}
