import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import Logging
import NIOCore
import PostgresTestSupport
import Synchronization
import Testing

/// Keeps every log line (message and metadata) for inspection.
final class CapturingLogHandler: LogHandler, Sendable {
    let lines = Mutex<[String]>([])
    var metadata: Logger.Metadata {
        get { [:] }
        set {}
    }
    var logLevel: Logger.Level {
        get { .trace }
        set {}
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { nil }
        set {}
    }

    func log(event: LogEvent) {
        let text = "\(event.level) \(event.message) \(event.metadata ?? [:])"
        lines.withLock { $0.append(text) }
    }
}

@Suite("Logs")
struct LogPrivacyTests {
    /// At trace level, after valid, invalid and failing requests with tokens in headers and bodies, no log
    /// line holds a token's secret part.
    @Test func tokensNeverReachTheLogs() async throws {
        let world = try await World.make()
        let handler = CapturingLogHandler()
        var logger = Logger(label: "test") { _ in handler }
        logger.logLevel = .trace
        var configuration = testConfiguration(world.database)
        configuration.logLevel = .trace
        let app = try await buildApplication(configuration, logger: logger)
        let admin = world.token(.authorityAdmin, of: world.a)
        let issuedSecret: String = try await app.test(.live) { client in
            _ = try await client.call(.get, "/v1/me", token: admin)
            _ = try await client.call(.get, "/v1/me", token: admin + "x")
            _ = try await client.call(.post, "/v1/boards", token: admin, body: ["name": admin, "short_code": "bad code"])
            let issued = try await client.call(.post, "/v1/users/\(lower(world.a.users[.hosi]!.id))/tokens", token: admin, body: ["label": "x"])
            _ = try await client.call(.get, "/v1/nothing", token: admin)
            return issued.jsonObject["secret"] as? String ?? ""
        }
        let lines = handler.lines.withLock { $0 }
        #expect(!lines.isEmpty)
        for secret in [admin, issuedSecret] where !secret.isEmpty {
            let secretPart = String(secret.dropFirst(TokenFormat.prefixLength + 1))
            #expect(!lines.contains { $0.contains(secretPart) }, "a token's secret reached the logs")
        }
    }
}

extension LogPrivacyTests {
    /// One info line per request with the route template, status and request id — never the raw path with its
    /// ids, never the token.
    @Test func everyRequestGetsOneAccessLogLine() async throws {
        let world = try await World.make()
        let handler = CapturingLogHandler()
        var logger = Logger(label: "test") { _ in handler }
        logger.logLevel = .info
        var configuration = testConfiguration(world.database)
        configuration.logLevel = .info
        let app = try await buildApplication(configuration, logger: logger)
        let admin = world.token(.authorityAdmin, of: world.a)
        let board = lower(world.a.boards[0].id)
        try await app.test(.live) { client in
            let response = try await client.call(.get, "/v1/boards/\(board)", token: admin, headers: [HTTPField.Name("X-Request-Id")!: "access-log-test"])
            #expect(response.status == .ok)
        }
        // (The capturing handler keeps per-entry metadata only; the request id rides in the logger's own.)
        let lines = handler.lines.withLock { $0 }.filter { $0.hasPrefix("info request ") }
        #expect(lines.count == 1, "\(lines)")
        let line = try #require(lines.first)
        #expect(line.contains("GET") && line.contains("200") && line.contains("/v1/boards/"), "\(line)")
        #expect(!line.contains(board), "the route template, not the raw path: \(line)")
        #expect(!line.contains(String(admin.dropFirst(TokenFormat.prefixLength + 1))))
    }
}
