import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import LocalityDomain
import LocalityPostgres
import OpenAPIRuntime
import Prometheus

/// Implements the generated `APIProtocol`. Handlers stay thin: parse, call the domain, shape the response.
struct APIHandlers: APIProtocol {
    let pool: PGPool
    let migrator: Migrator
    let registry: PrometheusCollectorRegistry
    let services: DomainServices

    func getHealth(_ input: Operations.GetHealth.Input) async throws -> Operations.GetHealth.Output {
        .ok(.init(body: .json(.init(status: .ok))))
    }

    func getReadiness(_ input: Operations.GetReadiness.Input) async throws -> Operations.GetReadiness.Output {
        let current: Bool
        do {
            current = try await pool.withConnection { try await migrator.isCurrent(on: $0) }
        } catch {
            return .serviceUnavailable(.init(headers: .init(retryAfter: 5), body: .applicationProblemJson(.init(
                _type: APIProblem.typeURI("not-ready"), title: "Service Unavailable", status: 503,
                detail: "The database is not reachable.", requestId: RequestInfo.current?.requestID))))
        }
        guard current else {
            return .serviceUnavailable(.init(headers: .init(retryAfter: 30), body: .applicationProblemJson(.init(
                _type: APIProblem.typeURI("not-ready"), title: "Service Unavailable", status: 503,
                detail: "The database schema is not at this build's migrations; run locality-admin migrate.",
                requestId: RequestInfo.current?.requestID))))
        }
        return .ok(.init(body: .json(.init(status: .ready, migrations: migrator.migrations.count))))
    }

    /// Never routed on the API port (`RecordingTransport` excludes `/metrics`; `MetricsServer` serves it on
    /// its own listener). Kept only while the document still declares the operation.
    func getMetrics(_ input: Operations.GetMetrics.Input) async throws -> Operations.GetMetrics.Output {
        throw APIProblem.notFound(MetricsServer.path)
    }

    func getOpenAPIDocument(_ input: Operations.GetOpenAPIDocument.Input) async throws -> Operations.GetOpenAPIDocument.Output {
        // application/yaml (RFC 9512) unless the client asks for text/yaml and not for application/yaml.
        let asked = Set(input.headers.accept.map(\.contentType.rawValue))
        if asked.contains("text/yaml") && !asked.contains("application/yaml") {
            return .ok(.init(body: .textYaml(HTTPBody(OpenAPIDocument.bytes))))
        }
        return .ok(.init(body: .yaml(HTTPBody(OpenAPIDocument.bytes))))
    }
}

/// Prometheus metrics on a listener of their own, loopback by default (`--metrics-host`, `--metrics-port`):
/// the public reaching the API port cannot read them. Plain Hummingbird, outside the OpenAPI contract.
enum MetricsServer {
    static let path = "/metrics"

    static func application(
        registry: PrometheusCollectorRegistry, host: String, port: Int, logger: Logger,
        onServerRunning: @escaping @Sendable (any Channel) async -> Void
    ) -> some Service {
        let router = Router()
        router.get(RouterPath(path)) { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        return Application(
            router: router, configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: onServerRunning, logger: logger)
    }
}

/// The contract itself, served at `/openapi.yaml`.
enum OpenAPIDocument {
    static let bytes: [UInt8] = {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
            let data = try? Data(contentsOf: url)
        else { return Array("openapi: 3.1.0\n".utf8) }
        return [UInt8](data)
    }()
}
