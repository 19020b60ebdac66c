import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Waits (no sleeping) for the `count`th event that `matches` (a cache's `events()`), or fails after `bound`.
func waitFor<Event: Sendable>(
    _ events: AsyncStream<Event>, within bound: Duration = .seconds(10), count: Int = 1,
    _ matches: @escaping @Sendable (Event) -> Bool
) async throws -> Duration {
    let start = ContinuousClock.now
    let found = try await withThrowingTaskGroup(of: Bool.self) { group in
        group.addTask {
            var seen = 0
            for await event in events where matches(event) {
                seen += 1
                if seen == count { return true }
            }
            return false
        }
        group.addTask {
            try await Task.sleep(for: bound)   // a deadline, not synchronisation
            return false
        }
        let first = try await group.next()!
        group.cancelAll()
        return first
    }
    #expect(found, "no matching cache event within \(bound)")
    return ContinuousClock.now - start
}

/// Waits until the cache is in use (its listener session is up).
func waitUntilEnabled(_ cache: AuthenticationCache) async throws {
    let events = cache.events()
    if cache.isEnabled { return }
    _ = try await waitFor(events) { $0 == .enabled }
}

/// Issue 14: tokens are mostly authenticated from memory, and a revocation, a disabled user or a role change
/// reaches every instance within the stated bound (the cache lifetime; in practice the notification's delay).
@Suite("Authentication cache")
struct AuthenticationCacheTests {
    /// Two instances on one database. The token is cached in B; revoked through A; B refuses it as soon as the
    /// notification arrives — long before B's cache lifetime (an hour here, so only the notification can do it).
    @Test func aRevocationInOneInstanceReachesTheOther() async throws {
        let world = try await World.make()
        let cacheA = AuthenticationCache(lifetime: .seconds(3600))
        let cacheB = AuthenticationCache(lifetime: .seconds(3600))
        let appA = try await buildApplication(testConfiguration(world.database), authenticationCache: cacheA)
        let appB = try await buildApplication(testConfiguration(world.database), authenticationCache: cacheB)
        let admin = world.token(.authorityAdmin, of: world.a)
        let adminID = world.a.users[.authorityAdmin]!.id
        try await appA.test(.live) { clientA in
            try await appB.test(.live) { clientB in
                try await waitUntilEnabled(cacheB)
                #expect(try await clientB.call(.get, "/v1/me", token: world.a.spareToken).status == .ok)
                let hits = cacheB.hits
                #expect(try await clientB.call(.get, "/v1/me", token: world.a.spareToken).status == .ok)
                #expect(cacheB.hits == hits + 1, "the second request was answered from the cache")

                let events = cacheB.events()
                let revoke = try await clientA.call(.delete, "/v1/users/\(lower(adminID))/tokens/\(lower(world.a.spareTokenID))", token: admin)
                #expect(revoke.status == .noContent)
                // A itself refuses it at once (in-process invalidation).
                #expect(try await clientA.call(.get, "/v1/me", token: world.a.spareToken).status == .unauthorized)
                let delay = try await waitFor(events, within: .seconds(10)) { $0 == .invalidated(adminID) }
                #expect(try await clientB.call(.get, "/v1/me", token: world.a.spareToken).status == .unauthorized)
                // The admin's other token still works in B (read again from the database).
                #expect(try await clientB.call(.get, "/v1/me", token: admin).status == .ok)
                print("revocation reached the other instance after \(delay)")
            }
        }
    }

    /// Disabling a user or changing their roles, in the database by any route (here: SQL, as the operator's
    /// tools would), reaches a running instance that has the user's token cached.
    @Test func roleChangesAndDisablingMadeElsewhereReachTheCache() async throws {
        let world = try await World.make()
        let cache = AuthenticationCache(lifetime: .seconds(3600))
        let app = try await buildApplication(testConfiguration(world.database), authenticationCache: cache)
        let limID = world.a.users[.lim]!.id
        let lim = world.token(.lim, of: world.a)
        try await app.test(.live) { client in
            try await waitUntilEnabled(cache)
            #expect(try await client.call(.get, "/v1/me", token: lim).jsonObject["board_ids"] as? [String] == [lower(world.a.boards[0].id)])
            var events = cache.events()
            try await asSuperuser(world) { connection in
                try await connection.query("UPDATE role_assignment SET board_id = \(world.a.boards[1].id) WHERE user_id = \(limID)")
            }
            _ = try await waitFor(events) { $0 == .invalidated(limID) }
            #expect(try await client.call(.get, "/v1/me", token: lim).jsonObject["board_ids"] as? [String] == [lower(world.a.boards[1].id)])
            events = cache.events()
            try await asSuperuser(world) { connection in
                try await connection.query("UPDATE app_user SET disabled_at = now() WHERE id = \(limID)")
            }
            _ = try await waitFor(events) { $0 == .invalidated(limID) }
            #expect(try await client.call(.get, "/v1/me", token: lim).status == .unauthorized)
        }
    }

    /// If the listener's session is lost, notifications sent meanwhile are lost too: the cache is emptied and
    /// bypassed until the session is back, so a token revoked in that gap is refused at once.
    @Test func withoutItsListenerTheCacheIsBypassed() async throws {
        let world = try await World.make()
        let cache = AuthenticationCache(lifetime: .seconds(3600))
        var configuration = testConfiguration(world.database)
        configuration.authenticationListenerReconnectDelay = .seconds(3600)   // stays down for this test
        let app = try await buildApplication(configuration, authenticationCache: cache)
        try await app.test(.live) { client in
            try await waitUntilEnabled(cache)
            #expect(try await client.call(.get, "/v1/me", token: world.a.spareToken).status == .ok)
            let events = cache.events()
            try await asSuperuser(world) { connection in
                try await connection.query("""
                    SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                    WHERE datname = current_database() AND application_name = 'locality-server-listen'
                    """)
            }
            _ = try await waitFor(events) { $0 == .disabled }
            #expect(!cache.isEnabled)
            // Revoked while nobody listens: the notification goes nowhere.
            try await asSuperuser(world) { connection in
                try await connection.query("UPDATE api_token SET revoked_at = now() WHERE id = \(world.a.spareTokenID)")
            }
            #expect(try await client.call(.get, "/v1/me", token: world.a.spareToken).status == .unauthorized)
            // Other tokens still work, from the database.
            let hits = cache.hits
            #expect(try await client.call(.get, "/v1/me", token: world.token(.hosi, of: world.a)).status == .ok)
            #expect(try await client.call(.get, "/v1/me", token: world.token(.hosi, of: world.a)).status == .ok)
            #expect(cache.hits == hits, "nothing is answered from the cache while it is bypassed")
        }
    }

    /// The configuration's default states the bound the README and the OpenAPI document give.
    @Test func theStatedBoundIsTheDefaultLifetime() {
        #expect(AppConfiguration().authenticationCacheLifetime == .seconds(10))
    }

    func asSuperuser(_ world: World, _ body: (PGConnection) async throws -> Void) async throws {
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await body(connection)
        }
    }
}
