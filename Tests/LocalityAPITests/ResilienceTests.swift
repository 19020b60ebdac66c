import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import Logging
import NIOCore
import NIOPosix
import PostgresTestSupport
import ServiceLifecycle
import Synchronization
import Testing

/// Misbehaving clients and shutdown (issue 13): slow senders are cut off, in-flight requests survive a drain,
/// and CSV exports hold no more than their share of the pool.
@Suite("Resilience: read timeouts, drain, export bulkhead")
struct ResilienceTests {
    /// A client that starts a request and then sends its headers a line every 300 ms, never finishing, gets 408
    /// once the header timeout (1 s) passes, and its connection is closed — long before the idle timeout (30 s),
    /// which every trickled byte would otherwise keep at bay. Meanwhile other clients are answered.
    @Test func headersSentTooSlowlyGet408AndTheConnectionIsClosed() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.requestHeaderTimeoutSeconds = 1
        configuration.idleTimeoutSeconds = 30
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            let slow = try await RawConnection.open(port: port)
            let started = ContinuousClock.now
            try await slow.send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            let channel = slow.channel
            let dripping = Task { try await RawConnection.drip("X-Slow: 1\r\n", on: channel, every: .milliseconds(300), for: .seconds(40)) }
            // Others are served meanwhile.
            let other = try await RawHTTP.exchange(port: port, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            #expect(other.hasPrefix("HTTP/1.1 200"))
            let answer = try await slow.untilClosed()
            dripping.cancel()
            #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
            #expect(answer.contains("/problems/request-timeout") && answer.lowercased().contains("connection: close"))
            // Far below the 40 s of dripping (which, with no read timeout, would keep the connection open throughout), and
            // far above the 1 s timeout: on a loaded 2-core machine the other request above alone has taken 10 s.
            #expect(ContinuousClock.now - started < .seconds(25), "closed after \(ContinuousClock.now - started)")
        }
    }

    /// The same for a body sent a byte every 300 ms: 408 after the body timeout (1 s), not never.
    @Test func aBodySentTooSlowlyGets408AndTheConnectionIsClosed() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.requestBodyTimeoutSeconds = 1
        configuration.idleTimeoutSeconds = 30
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let port = try #require(client.port)
            let slow = try await RawConnection.open(port: port)
            let started = ContinuousClock.now
            try await slow.send("POST /v1/supplier-registrations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
            let channel = slow.channel
            let dripping = Task { try await RawConnection.drip(" ", on: channel, every: .milliseconds(300), for: .seconds(40)) }
            let other = try await RawHTTP.exchange(port: port, "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            #expect(other.hasPrefix("HTTP/1.1 200"))
            let answer = try await slow.untilClosed()
            dripping.cancel()
            #expect(answer.hasPrefix("HTTP/1.1 408"), "\(answer)")
            // Far below the 40 s of dripping (which, with no read timeout, would keep the connection open throughout), and
            // far above the 1 s timeout: on a loaded 2-core machine the other request above alone has taken 10 s.
            #expect(ContinuousClock.now - started < .seconds(25), "closed after \(ContinuousClock.now - started)")
        }
    }

    /// The header clock starts with a request's first byte, not when the connection goes quiet: a kept-alive
    /// client that pauses between requests for longer than the header timeout (but within the idle timeout) is
    /// still served, and a request sent in two pieces within the timeout is answered.
    @Test func aPauseBetweenRequestsIsNotASlowRequest() async throws {
        var configuration = testConfiguration(try await TestDatabase.migrated())
        configuration.requestHeaderTimeoutSeconds = 1
        configuration.idleTimeoutSeconds = 30
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let connection = try await RawConnection.open(port: try #require(client.port))
            try await connection.send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            #expect(try await connection.response().hasPrefix("HTTP/1.1 200"))
            try await Task.sleep(for: .milliseconds(1_600))   // the pause under test, longer than the header timeout
            try await connection.send("GET /healthz HTTP/1.1\r\n")
            try await connection.send("Host: localhost\r\n\r\n")
            #expect(try await connection.response().hasPrefix("HTTP/1.1 200"))
            await connection.close()
        }
    }

    /// A graceful shutdown closes an idle kept-alive connection at once and lets the in-flight request on
    /// another finish: its response arrives whole, says `Connection: close`, and then the connection closes.
    @Test func drainFinishesTheInFlightRequestWithConnectionClose() async throws {
        let database = try await TestDatabase.migrated()
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let app = try await buildApplication(testConfiguration(database)) { channel in
            portContinuation.yield(channel.localAddress?.port ?? 0)
        }
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        let group = serviceGroup(app, shutdownDeadline: .seconds(20), signals: [], logger: logger)

        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 2) { admin in
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                var iterator = ports.makeAsyncIterator()
                let port = try #require(await iterator.next())
                let idle = try await RawConnection.open(port: port)
                try await idle.send("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                let first = try await idle.response()
                #expect(first.hasPrefix("HTTP/1.1 200") && !first.lowercased().contains("connection: close"))

                try await admin.withConnection { locker in
                    // Hold a lock /readyz's query waits for, so that its request is provably in flight.
                    try await locker.execute("BEGIN; LOCK TABLE schema_migrations IN ACCESS EXCLUSIVE MODE")
                    let busy = try await RawConnection.open(port: port)
                    try await busy.send("GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    try await GracefulShutdownTests().waitForLockWaiter(admin)

                    await group.triggerGracefulShutdown()
                    // The idle connection goes first, with nothing written on it.
                    #expect(try await idle.untilClosed() == "")
                    try await locker.execute("COMMIT")
                    let answer = try await busy.untilClosed()
                    #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
                    #expect(answer.lowercased().contains("connection: close"), "\(answer)")
                    #expect(answer.contains("\"status\""), "the body arrived whole: \(answer)")
                }
                try await tasks.waitForAll()
            }
        }
    }

    /// Exports held behind a lock take only their share of the pool (one here): another council's reads and
    /// readiness answer at once, one more export waits its turn, and the rest are refused with 503 +
    /// `Retry-After` rather than queueing without end. Without the bulkhead the four exports would hold all
    /// four pooled connections and everything else would wait.
    @Test func exportsHoldOnlyTheirShareOfThePool() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 4
        configuration.exportConnectionLimit = 1
        configuration.exportQueueLimit = 1
        configuration.lockTimeoutMilliseconds = 0
        configuration.statementTimeoutMilliseconds = 20_000   // so that a broken bulkhead fails the test, not hangs it
        configuration.acquireTimeout = .seconds(10)
        let app = try await buildApplication(configuration)
        let board = lower(world.a.boards[0].id)
        let lim = world.token(.lim, of: world.a), adminB = world.token(.authorityAdmin, of: world.b)
        let export = "/v1/boards/\(board)/monitoring-report.csv?academic_year=2026-27&term=spring"
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "holder")) { holder in
            try await holder.execute("BEGIN; LOCK TABLE reporting_period IN ACCESS EXCLUSIVE MODE")
            try await app.test(.live) { client in
                let port = try #require(client.port)
                let refused = Counter()
                let exports = (0..<4).map { _ in
                    Task {
                        let client = TestClient(host: "localhost", port: port, configuration: .init(timeout: .seconds(60)))
                        client.connect()
                        var headers = HTTPFields()
                        headers[.authorization] = "Bearer \(lim)"
                        let response = try await client.execute(.init(export, method: .get, authority: "localhost", headers: headers))
                        try? await client.shutdown()
                        if response.head.status == .serviceUnavailable {
                            #expect(response.head.headerFields[.retryAfter] != nil)
                            #expect(String(buffer: response.body ?? ByteBuffer()).contains("exports-busy"))
                            refused.value.withLock { $0 += 1 }
                        }
                        return Int(response.head.status.code)
                    }
                }
                // Two refused at once; one export waits on the lock, one for its turn.
                let deadline = ContinuousClock.now + .seconds(20)
                var waiting = 0
                while (waiting < 1 || refused.value.withLock({ $0 }) < 2) && ContinuousClock.now < deadline {
                    try await holder.query("SELECT pg_stat_clear_snapshot()")
                    waiting = try await holder.query("""
                        SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'locality-server'
                          AND datname = current_database()
                        """).first!.decode(Int.self, at: 0)
                    await Task.yield()
                }
                #expect(waiting == 1, "exports waiting on the lock: \(waiting)")
                #expect(refused.value.withLock { $0 } == 2)
                let started = ContinuousClock.now
                #expect(try await client.call(.get, "/v1/boards", token: adminB).status == .ok)
                #expect(try await client.call(.get, "/v1/boards", token: world.token(.authorityAdmin, of: world.a)).status == .ok)
                #expect(try await client.call(.get, "/readyz", token: nil).status == .ok)
                // Without the bulkhead the exports hold every connection and these wait out the acquire timeout
                // (10 s) for a 503; the bound is loose because the test machine may be loaded.
                #expect(ContinuousClock.now - started < .seconds(6), "other reads waited \(ContinuousClock.now - started)")
                try await holder.execute("ROLLBACK")
                var statuses: [Int] = []
                for export in exports { statuses.append(try await export.value) }
                #expect(statuses.sorted() == [200, 200, 503, 503], "\(statuses)")
            }
        }
    }
}

/// One client connection driven by hand: send bytes when the test says, read what the server answers.
/// Unchecked: each test uses a connection from one task at a time (it is passed along, never shared).
final class RawConnection: @unchecked Sendable {
    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let events: AsyncStream<String?>.Continuation

        init(_ events: AsyncStream<String?>.Continuation) {
            self.events = events
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            events.yield(String(buffer: unwrapInboundIn(data)))
        }

        func channelInactive(context: ChannelHandlerContext) {
            events.finish()   // the end of the stream: the server closed the connection
        }
    }

    let channel: any Channel
    private var events: AsyncStream<String?>.AsyncIterator
    private var pending = ""

    private init(channel: any Channel, events: AsyncStream<String?>) {
        self.channel = channel
        self.events = events.makeAsyncIterator()
    }

    static func open(port: Int) async throws -> RawConnection {
        let (events, continuation) = AsyncStream.makeStream(of: String?.self)
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Collector(continuation)) }
            }
            .connect(host: "127.0.0.1", port: port).get()
        return RawConnection(channel: channel, events: events)
    }

    func send(_ text: String) async throws {
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
    }

    /// Sends `text` on `channel` every `interval` until the server closes the connection or `total` has passed.
    static func drip(_ text: String, on channel: any Channel, every interval: Duration, for total: Duration) async throws {
        let end = ContinuousClock.now + total
        while channel.isActive, ContinuousClock.now < end {
            try await Task.sleep(for: interval)
            try? await channel.writeAndFlush(ByteBuffer(string: text)).get()
        }
    }

    /// Everything received until the server closes the connection.
    func untilClosed() async throws -> String {
        var text = pending
        pending = ""
        while let chunk = await events.next() { text += chunk ?? "" }
        return text
    }

    /// One complete response with a `Content-Length` body (what follows stays for the next read).
    func response() async throws -> String {
        var data = Array(pending.utf8)
        pending = ""
        let separator = Array("\r\n\r\n".utf8)
        while true {
            if let headerEnd = (0...max(0, data.count - separator.count)).first(where: { data.count >= separator.count && Array(data[$0..<$0 + separator.count]) == separator }) {
                let head = String(decoding: data[..<headerEnd], as: UTF8.self).lowercased()
                let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                let end = headerEnd + separator.count + length
                if data.count >= end {
                    pending = String(decoding: data[end...], as: UTF8.self)
                    return String(decoding: data[..<end], as: UTF8.self)
                }
            }
            guard let chunk = await events.next() else {
                Issue.record("the connection closed mid-response: \(String(decoding: data, as: UTF8.self))")
                return String(decoding: data, as: UTF8.self)
            }
            data += Array((chunk ?? "").utf8)
        }
    }

    func close() async {
        try? await channel.close()
    }
}
