import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import Logging
import NIOCore
import PostgresTestSupport
import Testing

func testConfiguration(_ database: TestDatabase, maxBody: Int = 1 << 20) -> AppConfiguration {
    var configuration = AppConfiguration(
        host: "127.0.0.1",
        port: 0,
        database: DatabaseSettings(databaseURL: database.applicationConninfo, ownerDatabaseURL: database.ownerConninfo),
        poolSize: 4,
        acquireTimeout: .seconds(2),
        maxRequestBodyBytes: maxBody,
        logLevel: .warning
    )
    // Tests race requests on purpose on a machine shared with parallel tests: a queue behind a row lock may
    // take longer than production's 3 s. Tests of the lock timeout itself set their own.
    configuration.lockTimeoutMilliseconds = 15_000
    return configuration
}

func json(_ buffer: ByteBuffer) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any] ?? [:]
}

@Suite("Operations endpoints and HTTP conventions")
struct OperationsTests {
    @Test func healthAnswersWithoutTheDatabase() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.database.databaseURL = "host=/nonexistent-socket-dir dbname=none connect_timeout=1"
        configuration.applyMigrations = false
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/healthz", method: .get)
            #expect(response.status == .ok)
            #expect(try json(response.body)["status"] as? String == "ok")
        }
    }

    /// Row-level security does not hold the tables' owner, a superuser or a BYPASSRLS role: given such a
    /// `--database-url`, the service refuses to start and says how to fix it.
    @Test(arguments: ["owner", "superuser"])
    func refusesToServeAsARoleThatBypassesRowLevelSecurity(_ role: String) async throws {
        let database = try await TestDatabase.migrated()
        var configuration = testConfiguration(database)
        configuration.database.databaseURL = role == "owner" ? database.ownerConninfo : database.superuserConninfo
        do {
            _ = try await buildApplication(configuration)
            Issue.record("the service started as the \(role)")
        } catch let error as StartupError {
            #expect(error.description.contains(role == "owner" ? "owner of the tables" : "superuser"), "\(error)")
            #expect(error.description.contains("deploy/README.md"))
        }
    }

    /// A write queued behind a row lock someone else holds gives up after the lock timeout with a 503 the
    /// client may retry, and frees its pooled connection; it does not wait as long as the lock is held.
    @Test func aWriteStuckBehindAHeldLockGets503WithRetryAfter() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.lockTimeoutMilliseconds = 300
        configuration.statementTimeoutMilliseconds = 8_000   // so that without the lock timeout this fails, not hangs
        let app = try await buildApplication(configuration)
        let board = world.a.boards[0].id
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "holder")) { holder in
            try await holder.execute("BEGIN")
            try await holder.query("SELECT 1 FROM board WHERE id = \(board) FOR UPDATE")
            try await app.test(.live) { client in
                let started = ContinuousClock.now
                let stuck = try await client.call(.patch, "/v1/boards/\(lower(board))", token: world.token(.authorityAdmin, of: world.a),
                                                  body: ["chair": "Someone"])
                #expect(stuck.status == .serviceUnavailable, "\(String(buffer: stuck.body))")
                #expect(stuck.headers[HTTPField.Name("Retry-After")!] != nil)
                #expect(ContinuousClock.now - started < .seconds(5))
                // Reads of the same board are not held up by the lock.
                #expect(try await client.call(.get, "/v1/boards/\(lower(board))", token: world.token(.authorityAdmin, of: world.a)).status == .ok)
            }
            try await holder.execute("ROLLBACK")
        }
    }

    /// A client that connects and sends nothing is disconnected after the idle timeout (anyone could otherwise
    /// hold sockets open without a token), while a client that sends its request in time is answered.
    @Test func anIdleConnectionIsClosedAfterTheIdleTimeout() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.idleTimeoutSeconds = 1
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            let started = ContinuousClock.now
            let silent = try await withThrowingTaskGroup(of: String?.self) { group in
                group.addTask { try await RawHTTP.exchange(port: port, "") }
                group.addTask { try await Task.sleep(for: .seconds(30)); return nil }   // the test's own deadline
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
            #expect(silent == "", "the server closed the silent connection without writing anything")
            // Generous for a 1 s timeout: on a loaded 2-core machine timers and accepts have run seconds late.
            #expect(ContinuousClock.now - started < .seconds(25))
            let answered = try await RawHTTP.exchange(port: port, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            #expect(answered.hasPrefix("HTTP/1.1 200"))
        }
    }

    @Test func readyWhenTheSchemaIsCurrent() async throws {
        let app = try await buildApplication(testConfiguration(try await TestDatabase.migrated()))
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/readyz", method: .get)
            #expect(response.status == .ok)
            let body = try json(response.body)
            #expect(body["status"] as? String == "ready")
            #expect((body["migrations"] as? Int ?? 0) >= 1)
            #expect(body["version"] as? String == BuildVersion.current)
            let newest = try Migration.load(from: Migration.defaultDirectory()).last!.fileName
            #expect(body["schema"] as? String == String(newest.dropLast(4)), "\(body)")
        }
    }

    @Test func notReadyWhenTheDatabaseIsDown() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.database.databaseURL = "host=/nonexistent-socket-dir dbname=none connect_timeout=1"
        configuration.applyMigrations = false
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/readyz", method: .get)
            #expect(response.status == .serviceUnavailable)
            #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true)
            #expect(try json(response.body)["status"] as? Int == 503)
            #expect(response.headers[.retryAfter] != nil)
        }
    }

    @Test func notReadyWhenMigrationsArePending() async throws {
        var configuration = testConfiguration(try await TestDatabase.empty())
        configuration.applyMigrations = false
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/readyz", method: .get)
            #expect(response.status == .serviceUnavailable)
        }
    }

    @Test func unknownRouteIsA404Problem() async throws {
        let app = try await buildApplication(testConfiguration(try await TestDatabase.migrated()))
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/v1/nothing-here", method: .get)
            #expect(response.status == .notFound)
            #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true)
            let body = try json(response.body)
            #expect(body["status"] as? Int == 404)
            #expect(body["type"] as? String == "/problems/not-found")
            #expect(body["title"] as? String == "Not Found")
        }
    }

    @Test func wrongMethodIsA405ProblemWithAllow() async throws {
        let app = try await buildApplication(testConfiguration(try await TestDatabase.migrated()))
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/readyz", method: .delete)
            #expect(response.status == .methodNotAllowed)
            #expect(response.headers[HTTPField.Name("Allow")!] == "GET, HEAD")
            #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true)
            #expect(try json(response.body)["status"] as? Int == 405)
        }
    }

    @Test func oversizedBodyIsA413Problem() async throws {
        let app = try await buildApplication(testConfiguration(try await TestDatabase.migrated(), maxBody: 1024))
        try await app.test(.live) { client in
            let big = ByteBuffer(repeating: UInt8(ascii: "x"), count: 4096)
            let response = try await client.execute(uri: "/healthz", method: .post, body: big)
            #expect(response.status == .contentTooLarge)
            #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true)
            #expect(try json(response.body)["status"] as? Int == 413)
        }
    }

    @Test func requestIDIsEchoedOrGenerated() async throws {
        let app = try await buildApplication(testConfiguration(try await TestDatabase.migrated()))
        try await app.test(.live) { client in
            let echoed = try await client.execute(uri: "/healthz", method: .get, headers: [HTTPField.Name("X-Request-Id")!: "trace-42"])
            #expect(echoed.headers[HTTPField.Name("X-Request-Id")!] == "trace-42")
            let generated = try await client.execute(uri: "/healthz", method: .get)
            let id = generated.headers[HTTPField.Name("X-Request-Id")!]
            #expect(id != nil && id != "trace-42" && UUID(uuidString: id ?? "") != nil)
            // Problems carry it too, for support.
            let missing = try await client.execute(uri: "/nope", method: .get, headers: [HTTPField.Name("X-Request-Id")!: "trace-43"])
            #expect(try json(missing.body)["request_id"] as? String == "trace-43")
            // A hostile id (control characters, huge) is replaced, not echoed.
            let hostile = try await client.execute(uri: "/healthz", method: .get, headers: [HTTPField.Name("X-Request-Id")!: String(repeating: "a", count: 500)])
            #expect(hostile.headers[HTTPField.Name("X-Request-Id")!]?.count == 36)
        }
    }

    @Test func metricsReportRequestsByRouteTemplateAndThePool() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.metricsPort = 0
        let ports = PortStream()
        let app = try await buildApplication(configuration, onMetricsServerRunning: ports.record)
        try await app.test(.live) { client in
            _ = try await client.execute(uri: "/readyz", method: .get)
            _ = try await client.execute(uri: "/no/such/thing", method: .get)
            let port = await ports.next()
            let response = try await TestClient.withClient(host: "127.0.0.1", port: port) { try await $0.get("/metrics") }
            #expect(response.status == .ok)
            let text = String(buffer: response.body ?? ByteBuffer())
            #expect(text.contains(#"http_requests_total{route="/readyz",method="GET",status="200"} 1"#))
            #expect(text.contains("http_request_duration_seconds_bucket"))
            #expect(text.contains("locality_db_pool_connections_open"))
            #expect(text.contains("locality_db_pool_acquire_seconds"))
            #expect(text.contains("locality_db_query_seconds"))
            // Raw unmatched paths never become label values.
            #expect(!text.contains("/no/such/thing"))
        }
    }

    @Test func servesTheOpenAPIDocument() async throws {
        let app = try await buildApplication(testConfiguration(try await TestDatabase.migrated()))
        try await app.test(.live) { client in
            let response = try await client.execute(uri: "/openapi.yaml", method: .get)
            #expect(response.status == .ok)
            let text = String(buffer: response.body)
            #expect(text.hasPrefix("openapi: 3.1"))
            #expect(text.contains("/readyz:"))
        }
    }
}

extension OperationsTests {
    /// One council's writers queued behind a held lock take at most its share of the pool: another council's
    /// reads and readiness still answer at once, and the queued writers all finish once the lock goes.
    @Test func aStuckTenantLeavesTheOthersTheirShareOfThePool() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 4
        configuration.tenantConnectionLimit = 2
        configuration.lockTimeoutMilliseconds = 0
        configuration.statementTimeoutMilliseconds = 20_000   // so that a broken bulkhead fails the test, not hangs it
        configuration.acquireTimeout = .seconds(30)
        let app = try await buildApplication(configuration)
        let board = world.a.boards[0].id
        let adminA = world.token(.authorityAdmin, of: world.a), adminB = world.token(.authorityAdmin, of: world.b)
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "holder")) { holder in
            try await holder.execute("BEGIN")
            try await holder.query("SELECT 1 FROM board WHERE id = \(board) FOR UPDATE")
            try await app.test(.live) { client in
                let writers = Task {
                    try await concurrently(5, on: client) { index, connection in
                        try await connection.call(.patch, "/v1/boards/\(lower(board))", token: adminA, body: ["chair": "Chair \(index)"])
                    }.map(\.status)
                }
                // Two of A's writers wait on the lock (its share); the other three wait for a place, not a connection.
                let deadline = ContinuousClock.now + .seconds(20)
                var waiting = 0
                while waiting < 2 && ContinuousClock.now < deadline {
                    // Inside its transaction the holder would see one snapshot of the statistics: refresh it.
                    // The cluster is shared by tests running in parallel: count this test's database only.
                    try await holder.query("SELECT pg_stat_clear_snapshot()")
                    waiting = try await holder.query("""
                        SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'locality-server'
                          AND datname = current_database()
                        """).first!.decode(Int.self, at: 0)
                    await Task.yield()
                }
                #expect(waiting == 2)
                let started = ContinuousClock.now
                let other = try await client.call(.get, "/v1/boards", token: adminB)
                let ready = try await client.call(.get, "/readyz", token: nil)
                #expect(other.status == .ok && ready.status == .ok)
                #expect(ContinuousClock.now - started < .seconds(10), "B waited \(ContinuousClock.now - started)")   // without the bulkhead: 503 after the 30 s acquire timeout
                try await holder.execute("ROLLBACK")
                let statuses = try await writers.value
                #expect(statuses == Array(repeating: 200, count: 5), "\(statuses)")
            }
        }
    }
}
