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
        // The first request, caught in flight: its claim made exactly as the middleware makes it, with a lease
        // long enough to stand for one its running request keeps renewing (building the app may take seconds).
        try await world.database.withPool { pool in
            let claim = try await IdempotencyKeys(pool: pool, lease: .seconds(3600)).claim(
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

    /// A claim whose lease lapsed with nothing applied (its instance died mid-request): the retry through another
    /// instance takes it over at once and runs — not after `abandonedAfterSeconds` (300 s) as before leases.
    @Test func aRetryTakesOverALapsedClaimAtOnce() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let body = #"{"name":"Dead Claim","short_code":"DEAD"}"#
        // The first request, claimed as the middleware claims it, then its instance died: no renewal came.
        try await world.database.withPool { pool in
            let claim = try await IdempotencyKeys(pool: pool).claim(
                caller: "user:\(lower(world.a.users[.authorityAdmin]!.id))", key: "dead",
                requestHash: IdempotencyKeys.requestHash(method: "POST", path: "/v1/boards", body: Array(body.utf8)))
            #expect(claim == .claimed)
        }
        // It holds for the lease (10 s) from the claim, not 300 s; the instance that made it died: age it past that.
        let lease = try await world.database.withPool(conninfo: world.database.superuserConninfo) { pool in
            try await pool.query("SELECT extract(epoch FROM lease_expires_at - created_at)::float8 FROM idempotency_key").first!.decode(Double.self, at: 0)
        }
        #expect(abs(lease - 10) < 0.001)
        try await superuser(world, "UPDATE idempotency_key SET lease_expires_at = now() - interval '1 millisecond'")
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await boardCount(client, admin)
            let retry = try await post(client, "/v1/boards", token: admin, body, key: "dead")
            #expect(retry.status == .created, "\(String(buffer: retry.body))")
            #expect(retry.headers[Self.replayed] == nil)
            #expect(try await boardCount(client, admin) == before + 1)
            // Its answer is the key's now.
            let again = try await post(client, "/v1/boards", token: admin, body, key: "dead")
            #expect(again.status == .created)
            #expect(again.headers[Self.replayed] == "true")
        }
    }

    /// A request that runs longer than its lease keeps renewing it: a retry after the first lease would have
    /// lapsed still gets 409, the first request finishes and its answer is replayed; one board is created.
    @Test func aLiveRenewedClaimIsNotTakenOver() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let body = #"{"name":"Slow Board","short_code":"SLOW"}"#
        var configuration = testConfiguration(world.database)
        configuration.idempotencyLease = .seconds(3)
        configuration.lockTimeoutMilliseconds = 0
        configuration.statementTimeoutMilliseconds = 0
        let app = try await buildApplication(configuration)
        let other = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let before = try await boardCount(client, admin)
            try await world.database.withPool(conninfo: world.database.superuserConninfo, maxConnections: 1) { admin_ in
                try await admin_.withConnection { locker in
                    // The first request's insert waits behind this uncommitted one (same name and code: unique) for as
                    // long as the test wants; nothing else waits.
                    try await locker.execute("BEGIN")
                    try await locker.query("INSERT INTO board (authority_id, name, short_code) VALUES (\(world.a.authority.id), 'Slow Board', 'SLOW')")
                    let first = Task { try await post(client, "/v1/boards", token: admin, body, key: "slow") }
                    let firstLease = try await pollClaim(world) { $0 != nil }!
                    // Wait (polling) until the first lease is past and a renewal has moved it on.
                    _ = try await pollClaim(world) { lease in
                        guard let lease else { return false }
                        return lease.renewed > firstLease.renewed && lease.now > firstLease.renewed
                    }
                    // The retry through another instance (a test client's requests share one connection, in order).
                    let during = try await other.test(.live) { client in try await post(client, "/v1/boards", token: admin, body, key: "slow") }
                    #expect(during.status == .conflict)
                    #expect(during.jsonObject["type"] as? String == "/problems/idempotency-key-in-progress")
                    try await locker.execute("ROLLBACK")
                    let answered = try await first.value
                    #expect(answered.status == .created)
                    #expect(answered.headers[Self.replayed] == nil)
                }
            }
            let replay = try await post(client, "/v1/boards", token: admin, body, key: "slow")
            #expect(replay.status == .created)
            #expect(replay.headers[Self.replayed] == "true")
            #expect(try await boardCount(client, admin) == before + 1)
        }
    }

    /// The unsafe case a lease alone would have: the first run's write committed but its instance died before the
    /// answer was stored. The lapsed claim is marked applied (by that write's own transaction), so the retry does
    /// not run again: 409 `idempotency-key-answer-lost`, and nothing is created twice.
    @Test func aTakeoverNeverRepeatsAWriteThatCommitted() async throws {
        let world = try await World.make()
        let admin = world.token(.authorityAdmin, of: world.a)
        let adminScope = AccessScope(
            authorityID: world.a.authority.id, userID: world.a.users[.authorityAdmin]!.id, roles: [.authorityAdmin], boardIDs: [],
            actor: "user:\(lower(world.a.users[.authorityAdmin]!.id))")
        let caller = "user:\(lower(world.a.users[.authorityAdmin]!.id))"
        let body = #"{"name":"Applied Board","short_code":"APPL"}"#
        let hash = IdempotencyKeys.requestHash(method: "POST", path: "/v1/boards", body: Array(body.utf8))
        try await world.database.withPool { pool in
            let keys = IdempotencyKeys(pool: pool)
            let first = UUID()
            #expect(try await keys.claim(caller: caller, key: "applied", requestHash: hash, token: first) == .claimed)
            // The first run's write, fenced as the middleware fences it; then its instance dies (no answer stored).
            try await IdempotencyFence.$current.withValue(.init(caller: caller, key: "applied", token: first)) {
                try await ScopedDatabase(pool: pool).transaction(adminScope) { connection in
                    try await connection.query(
                        "INSERT INTO board (authority_id, name, short_code) VALUES (\(world.a.authority.id), 'Applied Board', 'APPL')")
                }
            }
        }
        try await superuser(world, "UPDATE idempotency_key SET lease_expires_at = now() - interval '1 millisecond'")
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await boardCount(client, admin)
            let retry = try await post(client, "/v1/boards", token: admin, body, key: "applied")
            #expect(retry.status == .conflict)
            #expect(retry.jsonObject["type"] as? String == "/problems/idempotency-key-answer-lost")
            #expect(try await boardCount(client, admin) == before)
        }
    }

    /// A run whose claim was taken over (it had stopped renewing, say behind a network partition) can no longer
    /// commit a write: its fence finds the new token and its transaction rolls back. The new run's write commits.
    @Test func aRunWhoseClaimWasTakenOverCannotCommit() async throws {
        let world = try await World.make()
        let adminScope = AccessScope(
            authorityID: world.a.authority.id, userID: world.a.users[.authorityAdmin]!.id, roles: [.authorityAdmin], boardIDs: [],
            actor: "user:\(lower(world.a.users[.authorityAdmin]!.id))")
        let caller = "user:\(lower(world.a.users[.authorityAdmin]!.id))"
        let hash = IdempotencyKeys.requestHash(method: "POST", path: "/v1/boards", body: Array("{}".utf8))
        try await world.database.withPool { pool in
            let keys = IdempotencyKeys(pool: pool)
            let (old, new) = (UUID(), UUID())
            #expect(try await keys.claim(caller: caller, key: "k", requestHash: hash, token: old) == .claimed)
            try await superuser(world, "UPDATE idempotency_key SET lease_expires_at = now() - interval '1 millisecond'")
            #expect(try await keys.claim(caller: caller, key: "k", requestHash: hash, token: new) == .claimed)
            #expect(try await keys.renew(caller: caller, key: "k", token: old) == false)
            let insert: PGQuery = "INSERT INTO board (authority_id, name, short_code) VALUES (\(world.a.authority.id), 'Fenced Board', 'FENCE')"
            await #expect(throws: IdempotencyFence.ClaimLost.self) {
                try await IdempotencyFence.$current.withValue(.init(caller: caller, key: "k", token: old)) {
                    try await ScopedDatabase(pool: pool).transaction(adminScope) { try await $0.query(insert) }
                }
            }
            let count: PGQuery = "SELECT count(*)::int FROM board WHERE short_code = 'FENCE'"
            #expect(try await ScopedDatabase(pool: pool).transaction(adminScope) { try await $0.query(count).first!.decode(Int.self, at: 0) } == 0)
            try await IdempotencyFence.$current.withValue(.init(caller: caller, key: "k", token: new)) {
                try await ScopedDatabase(pool: pool).transaction(adminScope) { try await $0.query(insert) }
            }
            #expect(try await ScopedDatabase(pool: pool).transaction(adminScope) { try await $0.query(count).first!.decode(Int.self, at: 0) } == 1)
            // The old run can neither store an answer nor free the key now.
            try await keys.release(caller: caller, key: "k", token: old)
            #expect(try await keys.claim(caller: caller, key: "k", requestHash: hash) == .inProgress)
        }
    }

    /// Runs `sql` as the superuser (row-level security does not filter it).
    func superuser(_ world: World, _ sql: String) async throws {
        _ = try await world.database.withPool(conninfo: world.database.superuserConninfo) { pool in
            try await pool.withConnection { connection in try await connection.execute(sql) }
        }
    }

    /// Polls (bounded) the one claim's lease until `done` holds: (its expiry, the database's clock), as epoch ms.
    func pollClaim(_ world: World, until done: ((renewed: Double, now: Double)?) -> Bool) async throws -> (renewed: Double, now: Double)? {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            let lease: (renewed: Double, now: Double)? = try await world.database.withPool(conninfo: world.database.superuserConninfo) { pool in
                try await pool.withConnection { connection in
                    try await connection.query(
                        "SELECT extract(epoch FROM lease_expires_at)::float8 * 1000, extract(epoch FROM clock_timestamp())::float8 * 1000 FROM idempotency_key"
                    ).first.map { row in
                        let (renewed, now) = try row.decode(Double.self, Double.self)
                        return (renewed, now)
                    }
                }
            }
            if done(lease) { return lease }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("the claim never reached the expected state")
        return nil
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
