import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityDomain
import NIOCore
import PostgresTestSupport
import Synchronization
import Testing

/// Tracing end to end (issue 16): the built `locality-server`, run as operators run it with
/// `--otlp-traces-endpoint`, sends its spans over OTLP/HTTP to a collector double in this test.
@Suite struct TracingTests {
    /// What the collector double received: each POST /v1/traces body.
    final class Collector: Sendable {
        let bodies = Mutex<[String]>([])
        var all: [String] { bodies.withLock { $0 } }
    }

    struct ExportedSpan {
        let traceID: String
        let spanID: String
        let parentSpanID: String
        let name: String
        let attributes: [String: String]
    }

    @Test func requestAndStatementSpansArriveUnderTheCallersTraceWithoutBoundValues() async throws {
        let world = try await World.make()
        let board = lower(world.a.boards[0].id)
        let admin = world.token(.authorityAdmin, of: world.a)

        let collector = Collector()
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 16 << 20)
            collector.bodies.withLock { $0.append(String(buffer: body)) }
            // An empty ExportTraceServiceResponse, as a collector answers.
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: "{}")))
        }
        let ports = PortStream()
        let receiver = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)), onServerRunning: ports.record)
        try await receiver.test(.live) { _ in
            let collectorPort = await ports.next()
            let port = try freePort()
            let output = FileManager.default.temporaryDirectory.appendingPathComponent("locality-trace-\(UUID().uuidString).log").path
            FileManager.default.createFile(atPath: output, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: output) }
            let server = Process()
            server.executableURL = URL(fileURLWithPath: try Self.serverBinary())
            server.arguments = [
                "--host", "127.0.0.1", "--port", String(port), "--metrics-port", "0", "--no-migrate",
                "--database-url", world.database.applicationConninfo, "--owner-database-url", world.database.ownerConninfo,
                "--otlp-traces-endpoint", "http://127.0.0.1:\(collectorPort)/v1/traces", "--otlp-protocol", "http/json",
            ]
            var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LOCALITY_") && !$0.key.hasPrefix("OTEL_") }
            environment["OTEL_BSP_SCHEDULE_DELAY"] = "50"
            server.environment = environment
            let log = FileHandle(forWritingAtPath: output)
            server.standardOutput = log
            server.standardError = log
            try server.run()
            defer { if server.isRunning { server.terminate() } }

            let traceA = "4bf92f3577b34da6a3ce929d0e0e4736", parentA = "00f067aa0ba902b7"
            let traceB = "0af7651916cd43dd8448eb211c80319c", parentB = "b7ad6b7169203331"
            // Up when it answers (it starts in a moment; nothing tells us when).
            let started = ContinuousClock.now + .seconds(60)
            while (try? await TestClient.withClient(host: "127.0.0.1", port: port, operation: { try await $0.get("/healthz") }))?.status != .ok {
                guard ContinuousClock.now < started, server.isRunning else {
                    Issue.record("the server did not start: \((try? String(contentsOfFile: output, encoding: .utf8)) ?? "")")
                    return
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            try await TestClient.withClient(host: "127.0.0.1", port: port) { client in
                let read = try await client.get("/v1/boards/\(board)", headers: [
                    .authorization: "Bearer \(admin)", HTTPField.Name("traceparent")!: "00-\(traceA)-\(parentA)-01",
                    HTTPField.Name("X-Request-Id")!: "trace-req-1",
                ])
                #expect(read.status == .ok)
                let body = #"{"financial_year":"2025-26","funding_stream":"locality","kind":"earmark","amount_pence":987654,"reference":"trace-ref-Z9","reason":"confidential-reason-7Q"}"#
                let write = try await client.post("/v1/boards/\(board)/ledger", headers: [
                    .authorization: "Bearer \(admin)", .contentType: "application/json",
                    HTTPField.Name("traceparent")!: "00-\(traceB)-\(parentB)-01",
                ], body: ByteBuffer(string: body))
                #expect(write.status == .created)
            }

            // Spans are exported in batches (every 50 ms here): wait for both requests' server spans.
            var spans: [ExportedSpan] = []
            let deadline = ContinuousClock.now + .seconds(30)
            while ContinuousClock.now < deadline {
                spans = collector.all.flatMap { Self.spans(in: $0) }
                if spans.contains(where: { $0.traceID == traceA && $0.attributes["http.route"] != nil })
                    && spans.contains(where: { $0.traceID == traceB && $0.attributes["http.route"] != nil }) { break }
                try await Task.sleep(for: .milliseconds(50))
            }

            let request = try #require(spans.first { $0.traceID == traceA && $0.attributes["http.route"] != nil }, "\(collector.all)")
            #expect(request.name == "GET /v1/boards/{board_id}")
            #expect(request.attributes["http.route"] == "/v1/boards/{board_id}")
            #expect(request.attributes["http.response.status_code"] == "200")
            #expect(request.parentSpanID == parentA)
            let statements = spans.filter { $0.traceID == traceA && $0.parentSpanID == request.spanID }
            #expect(!statements.isEmpty)
            #expect(statements.allSatisfy { $0.name.hasPrefix("db ") && $0.attributes["db.system.name"] == "postgresql" })
            #expect(statements.contains { $0.attributes["db.operation.name"] == "SELECT" && $0.attributes["db.response.returned_rows"] != nil })

            let writeSpan = try #require(spans.first { $0.traceID == traceB && $0.attributes["http.route"] != nil })
            #expect(writeSpan.name == "POST /v1/boards/{board_id}/ledger")
            #expect(writeSpan.attributes["http.response.status_code"] == "201")
            #expect(spans.contains { $0.traceID == traceB && $0.parentSpanID == writeSpan.spanID && $0.attributes["db.operation.name"] == "INSERT" }
                || spans.contains { $0.traceID == traceB && $0.parentSpanID == writeSpan.spanID && $0.name.hasPrefix("db ") })

            // Nothing bound to a statement, nor the request's path or body, reaches the collector.
            let exported = collector.all.joined(separator: "\n")
            for secret in [admin, "confidential-reason-7Q", "trace-ref-Z9", board, lower(world.a.authority.id)] {
                #expect(!exported.contains(secret), "\(secret) was exported")
            }
            // (The amount only among attributes: as digits it could turn up inside a timestamp.)
            #expect(!spans.contains { $0.attributes.values.contains { $0.contains("987654") } })

            // The access log line of the first request names both its request id and its trace id.
            server.terminate()
            while server.isRunning { try await Task.sleep(for: .milliseconds(20)) }
            let lines = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            #expect(lines.split(separator: "\n").contains { $0.contains("request_id=trace-req-1") && $0.contains("trace_id=\(traceA)") }, "\(lines)")
            #expect(!lines.contains("Failed to export"), "\(lines)")
        }
    }

    /// The spans in one OTLP/JSON export (ids as hex, as OTLP/JSON has them; base64 accepted too).
    static func spans(in body: String) -> [ExportedSpan] {
        guard let root = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else { return [] }
        func hex(_ value: Any?) -> String {
            guard let text = value as? String else { return "" }
            if text.count % 2 == 0, text.allSatisfy(\.isHexDigit) { return text.lowercased() }
            return Data(base64Encoded: text).map { $0.map { String(format: "%02x", $0) }.joined() } ?? text
        }
        var result: [ExportedSpan] = []
        for resource in root["resourceSpans"] as? [[String: Any]] ?? [] {
            for scope in resource["scopeSpans"] as? [[String: Any]] ?? [] {
                for span in scope["spans"] as? [[String: Any]] ?? [] {
                    var attributes: [String: String] = [:]
                    for attribute in span["attributes"] as? [[String: Any]] ?? [] {
                        guard let key = attribute["key"] as? String, let value = (attribute["value"] as? [String: Any])?.values.first else { continue }
                        attributes[key] = "\(value)"
                    }
                    result.append(ExportedSpan(
                        traceID: hex(span["traceId"]), spanID: hex(span["spanId"]), parentSpanID: hex(span["parentSpanId"]),
                        name: span["name"] as? String ?? "", attributes: attributes))
                }
            }
        }
        return result
    }

    /// `.build/debug/locality-server`, beside the test bundle.
    static func serverBinary() throws -> String {
        var candidates: [String] = []
        if var directory = Bundle.main.executableURL?.deletingLastPathComponent() {
            for _ in 0..<4 {
                candidates.append(directory.appendingPathComponent("locality-server").path)
                directory.deleteLastPathComponent()
            }
        }
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        candidates.append(packageRoot.appendingPathComponent(".build/debug/locality-server").path)
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw TestFailure("locality-server is not built (looked in \(candidates)); run swift build --build-tests")
        }
        return found
    }

    struct TestFailure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}

/// A TCP port free on loopback now (the kernel's pick; the server binds it a moment later).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TracingTests.TestFailure("socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    guard bound == 0 else { throw TracingTests.TestFailure("bind failed") }
    let named = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    guard named == 0 else { throw TracingTests.TestFailure("getsockname failed") }
    return Int(UInt16(bigEndian: address.sin_port))
}
