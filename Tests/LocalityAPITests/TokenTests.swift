import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

@Suite("Bearer tokens")
struct TokenTests {
    @Test func tokensHaveAVisiblePrefixAndAtLeast256BitsAndAreStoredOnlyAsHashes() async throws {
        let (prefix, token) = TokenFormat.generate()
        #expect(token.range(of: #"^lcm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$"#, options: .regularExpression) != nil)
        #expect(TokenFormat.prefix(of: token) == prefix)
        #expect(TokenFormat.generate().token != token)
        let world = try await World.make()
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            let stored = try await connection.query("SELECT count(*) FROM api_token WHERE token_hash = sha256(convert_to(\(world.a.tokens[.hosi]!), 'UTF8'))")
                .first!.decode(Int.self, at: 0)
            #expect(stored == 1)
            let plaintext = try await connection.query("SELECT count(*) FROM api_token t WHERE position(convert_to(\(world.a.tokens[.hosi]!), 'UTF8') IN t.token_hash) > 0 OR t.label = \(world.a.tokens[.hosi]!)")
                .first!.decode(Int.self, at: 0)
            #expect(plaintext == 0)
        }
    }

    @Test func constantTimeComparisonComparesWholeValues() {
        let a = Data(repeating: 7, count: 32)
        var lastDiffers = a
        lastDiffers[31] = 8
        var firstDiffers = a
        firstDiffers[0] = 8
        #expect(TokenFormat.constantTimeEquals(a, a))
        #expect(!TokenFormat.constantTimeEquals(a, lastDiffers))
        #expect(!TokenFormat.constantTimeEquals(a, firstDiffers))
        #expect(!TokenFormat.constantTimeEquals(a, a.prefix(31)))
        #expect(!TokenFormat.constantTimeEquals(a, Data()))
    }

    @Test func malformedMissingUnknownAndForgedCredentialsAre401() async throws {
        let world = try await World.make()
        let good = world.a.tokens[.hosi]!
        let app = try await buildApplication(testConfiguration(world.database))
        var forged = Array(good)
        forged[forged.count - 1] = forged.last == "A" ? "B" : "A"
        let headers: [String?] = [
            nil, "", "Bearer", "Bearer ", "Basic \(Data("u:p".utf8).base64EncodedString())", "Token \(good)",
            "Bearer xyz_" + good.dropFirst(4),            // wrong prefix
            "Bearer lcm_000000000000_" + good.dropFirst(17),   // unknown prefix, well formed
            "Bearer " + String(forged),                    // right prefix, wrong secret
            "Bearer \(good)x", "Bearer \(good.dropLast())",
        ]
        try await app.test(.live) { client in
            for header in headers {
                var fields = HTTPFields()
                if let header { fields[.authorization] = header }
                let response = try await client.execute(uri: "/v1/me", method: .get, headers: fields)
                #expect(response.status == .unauthorized, "\(header ?? "no header")")
                #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true)
                #expect(!String(buffer: response.body).contains(good.dropFirst(17)), "the secret is not echoed")
            }
            let lowercaseScheme = try await client.execute(uri: "/v1/me", method: .get, headers: [.authorization: "bearer \(good)"])
            #expect(lowercaseScheme.status == .ok)
        }
    }

    @Test func expiredRevokedAndDisabledUsersTokensStopWorking() async throws {
        let world = try await World.make()
        let cache = AuthenticationCache(lifetime: .seconds(10))
        let app = try await buildApplication(testConfiguration(world.database), authenticationCache: cache)
        let admin = world.token(.authorityAdmin, of: world.a)
        try await app.test(.live) { client in
            try await waitUntilEnabled(cache)
            // Revocation takes effect on the next request.
            #expect(try await client.call(.get, "/v1/me", token: world.a.spareToken).status == .ok)
            let revoke = try await client.call(.delete, "/v1/users/\(lower(world.a.users[.authorityAdmin]!.id))/tokens/\(lower(world.a.spareTokenID))", token: admin)
            #expect(revoke.status == .noContent)
            #expect(try await client.call(.get, "/v1/me", token: world.a.spareToken).status == .unauthorized)

            // Expiry, by the database clock: one second either side.
            let auditorToken = world.a.tokens[.auditor]!
            try await setExpiry(world, token: auditorToken, "now() + interval '5 seconds'")
            #expect(try await client.call(.get, "/v1/me", token: auditorToken).status == .ok)
            let events = cache.events()
            try await setExpiry(world, token: auditorToken, "now() - interval '1 second'")
            // Changed behind the service's back: the instance hears of it by notification (issue 14).
            _ = try await waitFor(events) { $0 == .invalidated(world.a.users[.auditor]!.id) }
            #expect(try await client.call(.get, "/v1/me", token: auditorToken).status == .unauthorized)

            // Disabling a user disables their tokens.
            let hosi = world.a.tokens[.hosi]!
            #expect(try await client.call(.get, "/v1/me", token: hosi).status == .ok)
            let disable = try await client.call(.patch, "/v1/users/\(lower(world.a.users[.hosi]!.id))", token: admin, body: ["disabled": true])
            #expect(disable.status == .ok)
            #expect(disable.jsonObject["disabled"] as? Bool == true)
            #expect(try await client.call(.get, "/v1/me", token: hosi).status == .unauthorized)

            // Issued through the API: shown once, listed without the secret, last use recorded.
            let issued = try await client.call(.post, "/v1/users/\(lower(world.a.users[.lim]!.id))/tokens", token: admin, body: ["label": "tablet"])
            #expect(issued.status == .created)
            let secret = try #require(issued.jsonObject["secret"] as? String)
            let me = try await client.call(.get, "/v1/me", token: secret)
            #expect(me.status == .ok)
            #expect(me.jsonObject["board_ids"] as? [String] == [lower(world.a.boards[0].id)])
            #expect(me.jsonObject["roles"] as? [String] == ["lim"])
            let listed = try await client.call(.get, "/v1/users/\(lower(world.a.users[.lim]!.id))/tokens", token: admin)
            #expect(!String(buffer: listed.body).contains(secret.dropFirst(17)))
            let tablet = listed.items.first { $0["label"] as? String == "tablet" }
            #expect(tablet?["last_used_at"] != nil)
            let past = try await client.call(.post, "/v1/users/\(lower(world.a.users[.lim]!.id))/tokens", token: admin, body: ["expires_at": "2020-01-01T00:00:00Z"])
            #expect(past.status == .unprocessableContent)
        }
    }

    @Test func meDescribesSuppliersAndStaff() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let supplier = try await client.call(.get, "/v1/me", token: world.supplierToken)
            #expect(supplier.jsonObject["roles"] as? [String] == ["supplier_user"])
            #expect((supplier.jsonObject["supplier"] as? [String: Any])?["name"] as? String == "Supplier Ltd")
            #expect(supplier.jsonObject["authority"] == nil)
            let admin = try await client.call(.get, "/v1/me", token: world.token(.authorityAdmin, of: world.b))
            #expect((admin.jsonObject["authority"] as? [String: Any])?["slug"] as? String == "beta")
        }
    }

    func setExpiry(_ world: World, token: String, _ expression: String) async throws {
        _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query(PGQuery(
                "UPDATE api_token SET expires_at = \(expression) WHERE prefix = $1", [TokenFormat.prefix(of: token)!.pg]))
        }
    }
}
