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

/// `Idempotency-Key` on POST (Stripe semantics): replays, refusals, concurrency, scoping and expiry.
@Suite("Idempotency keys")
struct IdempotencyTests {
    static let key = HTTPField.Name("Idempotency-Key")!
    static let replayed = HTTPField.Name("Idempotent-Replayed")!

    func keyed(_ key: String) -> HTTPFields {
        var headers = HTTPFields()
        headers[Self.key] = key
        return headers
    }

    /// POSTs `json` exactly as written (the key covers the body's bytes; a dictionary would serialise its keys
    /// in any order).
    func post(_ client: some TestClientProtocol, _ path: String, token: String?, _ json: String, key: String?) async throws -> TestResponse {
        var headers = HTTPFields()
        if let key { headers[Self.key] = key }
        if let token { headers[.authorization] = "Bearer \(token)" }
        headers[.contentType] = "application/json"
        return try await client.execute(uri: path, method: .post, headers: headers, body: ByteBuffer(string: json))
    }

    func boardCount(_ client: some TestClientProtocol, _ token: String) async throws -> Int {
        try await client.call(.get, "/v1/boards?limit=200", token: token).items.count
    }

    /// The repeat gets the first answer — status, body, Location — marked as a replay, and creates nothing.
    @Test func aRepeatReplaysTheAnswerAndCreatesNothing() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await boardCount(client, admin)
            let body = #"{"name":"Idempotent Board","short_code":"IDEM"}"#
            let first = try await post(client, "/v1/boards", token: admin, body, key: "board-1")
            #expect(first.status == .created)
            #expect(first.headers[Self.replayed] == nil)
            let location = try #require(first.headers[.location])
            #expect(location.hasPrefix("/v1/boards/"))

            let second = try await post(client, "/v1/boards", token: admin, body, key: "board-1")
            #expect(second.status == .created)
            #expect(second.headers[Self.replayed] == "true")
            #expect(second.headers[.location] == location)
            #expect(second.headers[.contentType] == first.headers[.contentType])
            #expect(String(buffer: second.body) == String(buffer: first.body))
            #expect(try await boardCount(client, admin) == before + 1)
            // Without a key, the same request runs again (and here conflicts on the name).
            #expect(try await post(client, "/v1/boards", token: admin, body, key: nil).status == .conflict)
        }
    }

    /// The key lives in PostgreSQL: another instance (or this one after a restart) replays the answer.
    @Test func aReplayHoldsAcrossInstances() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let body = #"{"name":"Two Instances","short_code":"TWO"}"#
        let first = try await buildApplication(testConfiguration(world.database))
        let created = try await first.test(.live) { client in try await post(client, "/v1/boards", token: admin, body, key: "two") }
        #expect(created.status == .created)
        let second = try await buildApplication(testConfiguration(world.database))
        try await second.test(.live) { client in
            let replay = try await post(client, "/v1/boards", token: admin, body, key: "two")
            #expect(replay.status == .created)
            #expect(replay.headers[Self.replayed] == "true")
            #expect(String(buffer: replay.body) == String(buffer: created.body))
        }
    }

    /// The same key with another body is refused, and the other request does not run.
    @Test func theSameKeyWithAnotherBodyIsRefused() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let first = try await post(client, "/v1/boards", token: admin, #"{"name":"First","short_code":"FIRST"}"#, key: "k")
            #expect(first.status == .created)
            let before = try await boardCount(client, admin)
            let other = try await post(client, "/v1/boards", token: admin, #"{"name":"Second","short_code":"SECOND"}"#, key: "k")
            #expect(other.status == .unprocessableContent)
            #expect(other.jsonObject["type"] as? String == "/problems/idempotency-key-reused")
            #expect(try await boardCount(client, admin) == before)
            // Another path under the same key is another request too.
            let elsewhere = try await post(client, "/v1/themes", token: admin, #"{"category":"send","name":"A theme"}"#, key: "k")
            #expect(elsewhere.status == .unprocessableContent)
        }
    }

    /// A final 4xx is an answer like any other: kept and replayed.
    @Test func aFinalClientErrorIsReplayed() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let body = #"{"name":"   ","short_code":"BLANK"}"#
            let first = try await post(client, "/v1/boards", token: admin, body, key: "blank")
            #expect(first.status == .unprocessableContent)
            let second = try await post(client, "/v1/boards", token: admin, body, key: "blank")
            #expect(second.status == .unprocessableContent)
            #expect(second.headers[Self.replayed] == "true")
            #expect(second.headers[.contentType] == "application/problem+json")
            #expect(String(buffer: second.body) == String(buffer: first.body))
        }
    }

    /// While the first request with a key runs, a repeat gets 409; once it is answered, the repeat is replayed.
    @Test func aRepeatDuringTheFirstRequestGetsAConflict() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let adminID = world.a.users[.authorityAdmin]!.id
        let body = Array(#"{"name":"In Flight","short_code":"FLIGHT"}"#.utf8)
        // The first request, caught in flight: its claim made exactly as the middleware makes it.
        try await world.database.withPool { pool in
            let claim = try await IdempotencyKeys(pool: pool).claim(
                caller: "user:\(lower(adminID))", key: "flight",
                requestHash: IdempotencyKeys.requestHash(method: "POST", path: "/v1/boards", body: body))
            #expect(claim == .claimed)
        }
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            var headers = keyed("flight")
            headers[.authorization] = "Bearer \(admin)"
            headers[.contentType] = "application/json"
            let before = try await boardCount(client, admin)
            let repeatDuring = try await client.execute(uri: "/v1/boards", method: .post, headers: headers, body: ByteBuffer(bytes: body))
            #expect(repeatDuring.status == .conflict)
            #expect(try json(repeatDuring.body)["type"] as? String == "/problems/idempotency-key-in-progress")
            #expect(try await boardCount(client, admin) == before)
        }
    }

    /// N identical requests at once with one key: exactly one runs; every other gets 409 or the replay.
    @Test func concurrentRequestsWithOneKeyRunOnce() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await boardCount(client, admin)
            let responses = try await withThrowingTaskGroup(of: TestResponse.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        try await post(client, "/v1/boards", token: admin, #"{"name":"Raced Board","short_code":"RACE"}"#, key: "race")
                    }
                }
                return try await group.reduce(into: [TestResponse]()) { $0.append($1) }
            }
            let ran = responses.filter { $0.status == .created && $0.headers[Self.replayed] == nil }
            #expect(ran.count == 1)
            for response in responses where !(response.status == .created && response.headers[Self.replayed] == nil) {
                if response.status == .created {
                    #expect(response.headers[Self.replayed] == "true")
                    #expect(String(buffer: response.body) == String(buffer: ran[0].body))
                } else {
                    #expect(response.status == .conflict)
                    #expect(response.jsonObject["type"] as? String == "/problems/idempotency-key-in-progress")
                }
            }
            #expect(try await boardCount(client, admin) == before + 1)
        }
    }

    /// Keys are the caller's own: another user (here in another authority) using the same key is another request.
    @Test func anotherCallersKeyDoesNotCollide() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let a = try await client.call(
                .post, "/v1/boards", token: world.token(.authorityAdmin, of: world.a), body: ["name": "Shared Key A", "short_code": "SKA"],
                headers: keyed("shared"))
            let b = try await client.call(
                .post, "/v1/boards", token: world.token(.authorityAdmin, of: world.b), body: ["name": "Shared Key B", "short_code": "SKB"],
                headers: keyed("shared"))
            #expect(a.status == .created && b.status == .created)
            #expect(b.headers[Self.replayed] == nil)
            #expect(b.jsonObject["name"] as? String == "Shared Key B")
        }
        // Under row-level security, a caller sees only its own keys, and no caller nothing.
        let visible: (own: Int, none: Int) = try await world.database.withPool { pool in
            let count: (String) async throws -> Int = { caller in
                try await pool.withTransaction(prelude: "SELECT set_config('app.idempotency_caller', \(caller), true)") { connection in
                    try await connection.query("SELECT count(*)::int FROM idempotency_key").first!.decode(Int.self, at: 0)
                }
            }
            return (try await count("user:\(lower(world.a.users[.authorityAdmin]!.id))"), try await count(""))
        }
        #expect(visible.own == 1)
        #expect(visible.none == 0)
    }

    /// After 24 hours a key is forgotten: reusing it runs the new request. Expired keys are purged.
    @Test func expiredKeysAreIgnoredAndPurged() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            #expect(try await post(client, "/v1/boards", token: admin, #"{"name":"Old","short_code":"OLD"}"#, key: "old").status == .created)
            try await expireEveryKey(world)
            let reused = try await post(client, "/v1/boards", token: admin, #"{"name":"New","short_code":"NEW"}"#, key: "old")
            #expect(reused.status == .created)
            #expect(reused.headers[Self.replayed] == nil)
        }
        try await expireEveryKey(world)
        let purged = try await world.database.withPool { pool in try await IdempotencyKeys(pool: pool).purgeExpired() }
        #expect(purged == 1)
    }

    /// Moves every key 24 hours on (as the superuser, which row-level security does not filter).
    func expireEveryKey(_ world: World) async throws {
        _ = try await world.database.withPool(conninfo: world.database.superuserConninfo) { pool in
            try await pool.withConnection { connection in
                try await connection.query("UPDATE idempotency_key SET expires_at = now() - interval '1 second'")
            }
        }
    }

    /// A released claim (the request failed with a 5xx) lets the retry run.
    @Test func aReleasedKeyLetsTheRetryRun() async throws {
        let world = try await World.make()
        try await world.database.withPool { pool in
            let keys = IdempotencyKeys(pool: pool)
            let hash = IdempotencyKeys.requestHash(method: "POST", path: "/v1/boards", body: Array("{}".utf8))
            #expect(try await keys.claim(caller: "user:x", key: "k", requestHash: hash) == .claimed)
            #expect(try await keys.claim(caller: "user:x", key: "k", requestHash: hash) == .inProgress)
            try await keys.release(caller: "user:x", key: "k")
            #expect(try await keys.claim(caller: "user:x", key: "k", requestHash: hash) == .claimed)
            try await keys.complete(caller: "user:x", key: "k", response: .init(status: 201, headers: ["Location": "/v1/x"], body: [1, 2]))
            #expect(try await keys.claim(caller: "user:x", key: "k", requestHash: hash)
                    == .replay(.init(status: 201, headers: ["Location": "/v1/x"], body: [1, 2])))
        }
    }

    /// Malformed keys, and keys on the operations whose answer holds a secret, are refused with 400.
    @Test func invalidAndUnsupportedKeysAreRefused() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for bad in [String(repeating: "k", count: 256), "has space", "naïve"] {
                let response = try await post(client, "/v1/boards", token: admin, #"{"name":"Bad Key","short_code":"BADKEY"}"#, key: bad)
                #expect(response.status == .badRequest, "\(bad)")
                #expect(response.jsonObject["type"] as? String == "/problems/invalid-idempotency-key")
            }
            let token = try await post(client, "/v1/users/\(lower(world.a.users[.lim]!.id))/tokens", token: admin, #"{"label":"x"}"#, key: "t")
            #expect(token.status == .badRequest)
            #expect(token.jsonObject["type"] as? String == "/problems/idempotency-key-not-supported")
            let registration = try await post(client, "/v1/supplier-registrations", token: nil, #"{"name":"Keyed Ltd","companies_house_number":"12345678","address":"1 Road","contact_name":"A","contact_email":"a@keyed.example","user_email":"u@keyed.example","user_name":"U"}"#, key: "r")
            #expect(registration.status == .badRequest)
        }
    }
}
