import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
@testable import LocalityAPI
@testable import LocalityDomain
import LocalityPostgres
import Logging
import NIOCore
import NIOPosix
import PostgresTestSupport
import Synchronization
import Testing

/// The HTTP contract is strict and honest: ordinary client mistakes get the right 4xx problem (never a
/// 500), and what HTTP says about bodies, `Accept`, `HEAD`, `ETag` and `If-Match` holds.
@Suite("Strict HTTP contract")
struct HTTPStrictnessTests {
    // MARK: 1. Content-Type

    @Test func bodiesThatAreNotJSONAre415() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let admin = world.token(.authorityAdmin, of: world.a)
        try await app.test(.live) { client in
            func post(_ contentType: String?, _ body: String) async throws -> TestResponse {
                var headers: HTTPFields = [.authorization: "Bearer \(admin)"]
                if let contentType { headers[.contentType] = contentType }
                return try await client.execute(uri: "/v1/boards", method: .post, headers: headers, body: ByteBuffer(string: body))
            }
            let json = { (code: String) in #"{"name":"Board \#(code)","short_code":"\#(code)"}"# }
            // What `curl -d` sends, a JSON body with no type or an empty one, text.
            for (contentType, body) in [("application/x-www-form-urlencoded", "name=Board&short_code=F1"), (nil, json("F2")),
                                        ("", json("F3")), ("text/plain", json("F4")), ("application/json; charset=latin1", json("F5"))] {
                let response = try await post(contentType, body)
                #expect(response.status == .unsupportedMediaType, "\(contentType ?? "none"): \(String(buffer: response.body))")
                #expect(response.headers[.contentType] == "application/problem+json")
                #expect(response.jsonObject["type"] as? String == "/problems/unsupported-media-type")
            }
            // JSON with a charset, and a structured +json type, are JSON.
            #expect(try await post("application/json; charset=utf-8", json("J1")).status == .created)
            #expect(try await post("Application/JSON;charset=\"UTF-8\"", json("J2")).status == .created)
            #expect(try await post("application/vnd.locality+json", json("J3")).status == .created)
            // Nothing refused was created.
            let boards = try await client.call(.get, "/v1/boards", token: admin).items.compactMap { $0["short_code"] as? String }
            #expect(Set(boards).isDisjoint(with: ["F1", "F2", "F3", "F4", "F5"]))
        }
    }

    // MARK: 2. Accept

    @Test func acceptNeverCausesA500TheAnswerIsInTheOnlyTypeThereIs() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            let cases: [(String, String?, String)] = [
                ("/healthz", nil, "application/json"), ("/openapi.yaml", nil, "application/yaml"),
                ("/v1/boards/\(board)/monitoring-report.csv?academic_year=2026-27&term=spring", lim, "text/csv"),
            ]
            for (uri, token, type) in cases {
                for accept in ["text/html", "application/json", "image/png, text/html;q=0.5", "*/*", "\(type);q=0.9, */*;q=0.1", "not a media type"] {
                    var headers: HTTPFields = [.accept: accept]
                    if let token { headers[.authorization] = "Bearer \(token)" }
                    let response = try await client.execute(uri: uri, method: .get, headers: headers)
                    #expect(response.status == .ok, "\(uri) Accept: \(accept) → \(response.status.code)")
                    #expect(response.headers[.contentType]?.hasPrefix(type) == true, "\(uri) Accept: \(accept)")
                }
            }
            // A write is answered (and done once), whatever the client said it accepts.
            let admin = world.token(.authorityAdmin, of: world.a)
            let created = try await client.call(.post, "/v1/boards", token: admin, body: ["name": "Accept board", "short_code": "ACC"],
                                                headers: [.accept: "text/html"])
            #expect(created.status == .created)
        }
    }

    // MARK: 3. Parameters

    @Test func missingOrMalformedParametersAre400NamingTheParameter() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let admin = world.token(.authorityAdmin, of: world.a)
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            let cases: [(String, String)] = [
                ("/v1/dashboard", "financial_year"),
                ("/v1/boards/\(board)/monitoring-report.csv?term=spring", "academic_year"),
                ("/v1/boards/\(board)/monitoring-report.csv?academic_year=2026-27&term=midsummer", "term"),
                ("/v1/projects/not-a-uuid", "project_id"),
                ("/v1/boards/12345/dashboard?financial_year=2025-26", "board_id"),
                ("/v1/schools/not-a-number/spip", "urn"),
                ("/v1/boards?limit=many", "limit"),
                ("/v1/opportunities?closing_before=2025-02-30T12:00:00Z", "closing_before"),
                ("/v1/projects?q=a%00b", "q"),
            ]
            for (uri, parameter) in cases {
                let response = try await client.call(.get, uri, token: admin)
                #expect(response.status == .badRequest, "\(uri): \(response.status.code) \(String(buffer: response.body))")
                #expect(response.headers[.contentType] == "application/problem+json", "\(uri)")
                #expect(response.jsonObject["type"] as? String == "/problems/invalid-parameter", "\(uri)")
                let fields = (response.jsonObject["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String }
                #expect(fields == [parameter], "\(uri): \(fields)")
            }
        }
    }

    // MARK: 4. Chunked bodies

    @Test func aChunkedBodyOverTheLimitIs413LikeADeclaredOne() async throws {
        let world = try await World.make()
        let ports = PortStream()
        let app = try await buildApplication(testConfiguration(world.database, maxBody: 1024), onServerRunning: ports.record)
        let admin = world.token(.authorityAdmin, of: world.a)
        try await app.test(.live) { _ in
            let port = await ports.next()
            let chunk = String(repeating: "x", count: 700)
            var raw = "POST /v1/boards HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \(admin)\r\n"
            raw += "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            for _ in 0..<3 { raw += String(700, radix: 16) + "\r\n" + chunk + "\r\n" }
            raw += "0\r\n\r\n"
            let response = try await RawHTTP.exchange(port: port, raw)
            #expect(response.hasPrefix("HTTP/1.1 413"), "\(response.prefix(200))")
            #expect(response.contains("content-too-large"))
            // Under the limit, chunked is fine.
            let body = #"{"name":"Chunked board","short_code":"CHK"}"#
            let small = "POST /v1/boards HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer \(admin)\r\nContent-Type: application/json\r\n"
                + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\(String(body.utf8.count, radix: 16))\r\n\(body)\r\n0\r\n\r\n"
            #expect(try await RawHTTP.exchange(port: port, small).hasPrefix("HTTP/1.1 201"))
        }
    }

    // MARK: 5 and 6. NUL, null, duplicate keys

    @Test func nulCharactersNullsAndDuplicateKeysAreRefusedNamingTheField() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let admin = world.token(.authorityAdmin, of: world.a)
        let lim = world.token(.lim, of: world.a)
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            func send(_ method: HTTPRequest.Method, _ uri: String, _ token: String, _ raw: String) async throws -> TestResponse {
                try await client.execute(uri: uri, method: method, headers: [.authorization: "Bearer \(token)", .contentType: "application/json"],
                                         body: ByteBuffer(string: raw))
            }
            func fields(_ response: TestResponse) -> [String] {
                (response.jsonObject["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String }
            }
            let cases: [(HTTPRequest.Method, String, String, String, HTTPResponse.Status, [String])] = [
                (.post, "/v1/boards", admin, #"{"name":"Nul\u0000Board","short_code":"NUL1"}"#, .unprocessableContent, ["name"]),
                (.post, "/v1/boards", admin, #"{"name":"\u0000","short_code":"NUL2"}"#, .unprocessableContent, ["name"]),
                (.patch, "/v1/boards/\(board)", admin, #"{"chair":null}"#, .unprocessableContent, ["chair"]),
                (.post, "/v1/boards", admin, #"{"name":"Null code","short_code":null}"#, .unprocessableContent, ["short_code"]),
                (.post, "/v1/projects", lim,
                 #"{"board_id":"\#(board)","title":"T","evaluation":{"price_weight":40,"quality_weight":45,"social_value_weight":15,"quality_criteria":[{"name":null,"weight":45}],"social_value_criteria":[]}}"#,
                 .unprocessableContent, ["evaluation.quality_criteria[0].name"]),
                (.post, "/v1/boards", admin, #"{"name":"First","name":"Second","short_code":"DUP1"}"#, .badRequest, ["name"]),
            ]
            for (method, uri, token, raw, status, expected) in cases {
                let response = try await send(method, uri, token, raw)
                #expect(response.status == status, "\(raw): \(response.status.code) \(String(buffer: response.body))")
                #expect(fields(response) == expected, "\(raw)")
            }
            // Nothing was stored, not even truncated.
            let names = try await client.call(.get, "/v1/boards", token: admin).items.compactMap { $0["name"] as? String }
            #expect(!names.contains { $0.hasPrefix("Nul") || $0 == "" || $0 == "First" || $0 == "Second" })
            #expect(try await client.call(.get, "/v1/boards/\(board)", token: admin).jsonObject["chair"] as? String
                    == world.a.boards[0].chair)
        }
    }

    /// The null rule above relies on this: a nullable property would need the validator taught which.
    @Test func theDocumentDeclaresNoNullableProperty() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Sources/LocalityAPI/openapi.yaml"), encoding: .utf8)
        let nullable = try NSRegularExpression(pattern: #"(type:.*\bnull\b|-\s*['"]?null['"]?\s*$|nullable:\s*true)"#, options: [.anchorsMatchLines])
        #expect(nullable.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) == nil,
                "openapi.yaml declares a nullable property: teach JSONBodyCheck which fields may be null")
    }

    @Test func theBodyCheckFindsWhatTheDecoderLetsThrough() {
        func findings(_ text: String) -> [JSONBodyCheck.Finding] { JSONBodyCheck.findings(in: Array(text.utf8)) }
        #expect(findings(#"{"a":"x","b":[1,{"c":true}],"d":{"e":"\\u0000"}}"#).isEmpty)   // an escaped backslash, not a NUL
        #expect(findings(#"{"a":{"b":1,"b":2}}"#) == [.duplicateKey(field: "a.b")])
        #expect(findings(#"{"a\u0041":1,"aA":2}"#) == [.duplicateKey(field: "aA")])        // the same key, spelled two ways
        #expect(findings(#"{"list":["ok","x\u0000y"]}"#) == [.nul(field: "list[1]")])
        #expect(findings(#"{"a":[null]}"#) == [.null(field: "a[0]")])
        #expect(findings("null") == [.null(field: "body")])
        #expect(findings(#"{"a": nul"#).isEmpty)                                            // malformed: the decoder's 400
    }

    // MARK: 7. Timestamps and dates

    @Test func timestampsWithFractionsAreAcceptedAndImpossibleDatesRefused() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            func create(_ extra: [String: Any]) async throws -> TestResponse {
                try await client.call(.post, "/v1/projects", token: lim,
                                      body: ["board_id": board, "title": "Dated \(UUID().uuidString.prefix(6))"].merging(extra) { $1 })
            }
            // What JavaScript's toISOString() sends, kept to the microsecond PostgreSQL stores.
            let fractional = try await create(["bid_deadline": "2027-01-01T00:00:00.123Z"])
            #expect(fractional.status == .created, "\(String(buffer: fractional.body))")
            #expect(fractional.jsonObject["bid_deadline"] as? String == "2027-01-01T00:00:00.123Z")
            let micro = try await create(["bid_deadline": "2027-01-01T10:00:00.654321+01:00"])
            #expect(micro.jsonObject["bid_deadline"] as? String == "2027-01-01T09:00:00.654321Z")
            let whole = try await create(["bid_deadline": "2027-01-01T00:00:00Z"])
            #expect(whole.jsonObject["bid_deadline"] as? String == "2027-01-01T00:00:00Z")
            let refused: [(String, String)] = [
                ("bid_deadline", "2025-02-30T12:00:00Z"), ("bid_deadline", "2027-01-01T24:00:00Z"), ("bid_deadline", "2027-01-01T23:60:00Z"),
                ("bid_deadline", "0999-12-31T00:00:00Z"), ("bid_deadline", "2027-01-01"), ("bid_deadline", "2027-01-01T00:00:00"),
                ("planned_start", "0999-01-01"), ("planned_start", "2025-02-30"), ("planned_end", "2025-13-01"),
                // A trailing line break: `^…$` validators let it through (ICU's `$` matches before it), and the date
                // parser then indexed parts the split had not made (the process stopped).
                ("planned_start", "2027-01-01\n"), ("planned_end", "2027-01-01\r\n"),
            ]
            for (field, value) in refused {
                let response = try await create([field: value])
                #expect(response.status == .unprocessableContent, "\(field)=\(value): \(response.status.code) \(String(buffer: response.body))")
                let fields = (response.jsonObject["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String }
                #expect(fields == [field], "\(field)=\(value)")
            }
            let urn = try await create(["school_urns": ["123456\n"]])
            #expect(urn.status == .unprocessableContent, "\(urn.status.code) \(String(buffer: urn.body))")
            #expect((urn.jsonObject["errors"] as? [[String: Any]] ?? []).compactMap { $0["field"] as? String } == ["school_urns[0]"])
        }
    }

    // MARK: 8. ETag and If-Match

    @Test func eTagsAreQuotedAndIfMatchFollowsRFC9110() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let lim = world.token(.lim, of: world.a)
        let draft = "/v1/projects/\(lower(world.market.draft))"
        try await app.test(.live) { client in
            let fetched = try await client.call(.get, draft, token: lim)
            #expect(fetched.headers[.eTag] == #""v1""#)
            func patch(_ ifMatch: String, _ title: String) async throws -> TestResponse {
                try await client.call(.patch, draft, token: lim, body: ["title": title], headers: [.ifMatch: ifMatch])
            }
            // `*` matches whatever the current version is.
            let any = try await patch("*", "Star")
            #expect(any.status == .ok, "\(String(buffer: any.body))")
            #expect(any.headers[.eTag] == #""v2""#)
            // Weak tags never match (strong comparison), even naming the current version.
            let weak = try await patch(#"W/"v2""#, "Weak")
            #expect(weak.status == .preconditionFailed)
            // A list matches when any of its tags does.
            let listed = try await patch(#""v1", W/"v9", "v2""#, "Listed")
            #expect(listed.status == .ok)
            #expect(listed.headers[.eTag] == #""v3""#)
            #expect(try await patch(#""v1", "v2""#, "Stale").status == .preconditionFailed)
            #expect(try await patch("v3", "Unquoted").status == .badRequest)
            #expect(try await client.call(.get, draft, token: lim).jsonObject["title"] as? String == "Listed")
        }
    }

    // MARK: 9. HEAD

    @Test func headIsServedWhereverGetIs() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let admin = world.token(.authorityAdmin, of: world.a)
        try await app.test(.live) { client in
            for (uri, token) in [("/healthz", nil), ("/openapi.yaml", nil), ("/v1/boards", admin), ("/v1/boards/\(lower(world.a.boards[0].id))", admin)] {
                let get = try await client.call(.get, uri, token: token)
                let head = try await client.call(.head, uri, token: token)
                #expect(head.status == .ok, "\(uri): \(head.status.code)")
                #expect(head.body.readableBytes == 0, "\(uri)")
                #expect(head.headers[.contentType] == get.headers[.contentType], "\(uri)")
                #expect(head.headers[.contentLength] == get.headers[.contentLength] || get.headers[.contentLength] == nil, "\(uri)")
            }
            let anonymous = try await client.call(.head, "/v1/boards", token: nil)
            #expect(anonymous.status == .unauthorized)
            #expect(anonymous.body.readableBytes == 0)
            let refused = try await client.execute(uri: "/readyz", method: .post)
            #expect(refused.headers[HTTPField.Name("Allow")!] == "GET, HEAD")
        }
    }

    // MARK: 10. Database errors

    /// Real PostgreSQL errors of each class that can reach the middleware untranslated: none is a 500, and
    /// every 503 says when to retry.
    @Test func databaseErrorsMapToProblemsNever500() async throws {
        let database = try await TestDatabase.migrated()
        let middleware = ProblemMiddleware<BasicRequestContext>(routes: RouteTable(maxBodyBytes: 1024))
        let logger = Logger(label: "test")
        func error(_ body: (PGConnection) async throws -> Void) async throws -> PGError {
            do {
                try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { try await body($0) }
            } catch let error as PGError {
                return error
            }
            Issue.record("no error")
            return PGError(kind: .client, message: "none")
        }
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            for sql in ["CREATE TABLE probe_parent (id int PRIMARY KEY)", "CREATE TABLE probe_child (parent int REFERENCES probe_parent)",
                        "CREATE TABLE probe_checked (value int NOT NULL CHECK (value > 0))", "INSERT INTO probe_parent VALUES (1)"] {
                try await connection.query(PGQuery(sql, []))
            }
        }
        var cases: [(String, PGError, Int)] = [
            ("unique", try await error { try await $0.query("INSERT INTO probe_parent VALUES (1)") }, 409),
            ("foreign key", try await error { try await $0.query("INSERT INTO probe_child VALUES (2)") }, 409),
            ("check", try await error { try await $0.query("INSERT INTO probe_checked VALUES (0)") }, 422),
            ("not null", try await error { try await $0.query(PGQuery("INSERT INTO probe_checked VALUES (NULL)", [])) }, 422),
            ("out of range", try await error { try await $0.query("SELECT 2147483647::int + 1") }, 422),
            ("statement timeout", try await error { connection in
                try await connection.query("SET statement_timeout = '20ms'")
                try await connection.query("SELECT pg_sleep(5)")
            }, 503),
            ("lock timeout", try await error { holder in
                try await holder.withTransaction { holder in
                    try await holder.query("LOCK TABLE probe_parent")
                    try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { waiter in
                        try await waiter.withTransaction { waiter in
                            try await waiter.query("SET LOCAL lock_timeout = '20ms'")
                            try await waiter.query("LOCK TABLE probe_parent")
                        }
                    }
                }
            }, 503),
        ]
        // Row-level security refusing a write, as the application role with no tenant context.
        do {
            try await PGConnection.withConnection(.init(conninfo: database.applicationConninfo, applicationName: "t")) { connection in
                try await connection.query("INSERT INTO board (authority_id, name, short_code) VALUES (gen_random_uuid(), 'Sneaky', 'SNK')")
            }
            Issue.record("row-level security let the write through")
        } catch let error as PGError {
            cases.append(("row-level security", error, 403))
        }
        cases += [
            ("deadlock", PGError(kind: .server, sqlState: "40P01", message: "deadlock detected"), 503),
            ("serialization", PGError(kind: .server, sqlState: "40001", message: "could not serialize access"), 503),
            ("acquire timeout", PGError(kind: .acquireTimeout, message: "no connection"), 503),
        ]
        for (name, error, status) in cases {
            let problem = middleware.databaseProblem(error, logger: logger)
            #expect(problem.status.code == status, "\(name) (\(error.sqlState ?? "-")): \(problem.status.code)")
            #expect((problem.status.code == 503) == (problem.headers[.retryAfter] != nil), "\(name)")
        }
    }

    /// A deadlock between two write transactions: the loser is re-run (ScopedDatabase's default) and both
    /// changes land, instead of one 500.
    @Test func aDeadlockedTransactionIsRetried() async throws {
        let database = try await TestDatabase.migrated()
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("CREATE TABLE probe_rows (id int PRIMARY KEY, touched int NOT NULL DEFAULT 0)")
            try await connection.query("INSERT INTO probe_rows VALUES (1), (2)")
        }
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 2) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let scope = AccessScope.operatorScope(authorityID: UUID(), osUser: "test")
            let firstHasOne = Latch(), secondHasTwo = Latch()
            let attempts = Counter()
            func run(first: Int, second: Int, took: Latch, waitFor: Latch) async throws {
                try await scoped.transaction(scope) { connection in
                    attempts.value.withLock { $0 += 1 }
                    try await connection.query("UPDATE probe_rows SET touched = touched + 1 WHERE id = \(first)")
                    await took.open()
                    await waitFor.wait()
                    try await connection.query("UPDATE probe_rows SET touched = touched + 1 WHERE id = \(second)")
                }
            }
            async let one: Void = run(first: 1, second: 2, took: firstHasOne, waitFor: secondHasTwo)
            async let two: Void = run(first: 2, second: 1, took: secondHasTwo, waitFor: firstHasOne)
            _ = try await (one, two)
            #expect(attempts.value.withLock { $0 } == 3)
            let touched = try await pool.query("SELECT sum(touched)::int FROM probe_rows").first!.decode(Int.self, at: 0)
            #expect(touched == 4)
        }
    }

    // MARK: 11. Metrics

    @Test func metricsAreNotOnTheAPIPortButOnTheirOwnListener() async throws {
        let database = try await TestDatabase.migrated()
        var configuration = testConfiguration(database)
        configuration.metricsPort = 0
        let ports = PortStream()
        let app = try await buildApplication(configuration, onMetricsServerRunning: ports.record)
        try await app.test(.live) { client in
            let onAPIPort = try await client.execute(uri: "/metrics", method: .get)
            #expect(onAPIPort.status == .notFound)
            #expect(onAPIPort.headers[.contentType] == "application/problem+json")
            _ = try await client.execute(uri: "/readyz", method: .get)
            let port = await ports.next()
            let text = try await TestClient.withClient(host: "127.0.0.1", port: port) { metrics in
                String(buffer: try await metrics.get("/metrics").body ?? ByteBuffer())
            }
            #expect(text.contains(#"http_requests_total{route="/readyz",method="GET",status="200"} 1"#))
            #expect(text.contains("locality_db_pool_connections_open"))
        }
    }

    // MARK: 12. CSV

    @Test func theCSVFormulaGuardCoversTabAndCarriageReturn() {
        for dangerous in ["=SUM(A1)", "+1+1", "-2+3", "@cmd", "\tcmd", "\r=1", "\r\n=1"] {
            #expect(EvaluationService.csvField(dangerous).drop(while: { $0 == "\"" }).hasPrefix("'"), "\(dangerous.debugDescription)")
        }
        #expect(EvaluationService.csvField("-12.5") == "-12.5")
        #expect(EvaluationService.csvField("Plain") == "Plain")
    }
}

/// The port a server bound, handed to the test that waits for it (no sleeping).
final class PortStream: Sendable {
    private let stream: AsyncStream<Int>
    private let continuation: AsyncStream<Int>.Continuation

    init() {
        (stream, continuation) = AsyncStream.makeStream()
    }

    var record: @Sendable (any Channel) async -> Void {
        { [continuation] channel in continuation.yield(channel.localAddress?.port ?? 0) }
    }

    func next() async -> Int {
        for await port in stream { return port }
        return 0
    }
}

/// Raw bytes over TCP, for what the test client cannot send (a chunked request body).
enum RawHTTP {
    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        private var received = ByteBuffer()
        let done: EventLoopPromise<String>

        init(_ done: EventLoopPromise<String>) {
            self.done = done
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received.writeBuffer(&buffer)
        }

        func channelInactive(context: ChannelHandlerContext) {
            done.succeed(String(buffer: received))
        }
    }

    /// Sends `request` and returns everything the server wrote until it closed the connection.
    static func exchange(port: Int, _ request: String) async throws -> String {
        let group = MultiThreadedEventLoopGroup.singleton
        let done = group.next().makePromise(of: String.self)
        let collector = Collector(done)
        let channel = try await ClientBootstrap(group: group)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) } }
            .connect(host: "127.0.0.1", port: port).get()
        try await channel.writeAndFlush(ByteBuffer(string: request)).get()
        return try await done.futureResult.get()
    }
}

/// Opens once; every waiter, before or after, goes on.
actor Latch {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func open() {
        isOpen = true
        for waiter in waiters { waiter.resume() }
        waiters = []
    }

    func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }
}

final class Counter: Sendable {
    let value = Mutex(0)
}
