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
/// A class for the same reason as `DomainServices`: the generated server copies it for every request.
final class APIHandlers: APIProtocol {
    let pool: PGPool
    let migrator: Migrator
    let registry: PrometheusCollectorRegistry
    let services: DomainServices
    let drainNotice: DrainNotice

    init(pool: PGPool, migrator: Migrator, registry: PrometheusCollectorRegistry, services: DomainServices, drainNotice: DrainNotice) {
        self.pool = pool
        self.migrator = migrator
        self.registry = registry
        self.services = services
        self.drainNotice = drainNotice
    }

    func getHealth(_ input: Operations.GetHealth.Input) async throws -> Operations.GetHealth.Output {
        .ok(.init(body: .json(.init(status: .ok))))
    }

    func getReadiness(_ input: Operations.GetReadiness.Input) async throws -> Operations.GetReadiness.Output {
        // Shutting down (ShutdownDelay): still serving, but a load balancer should send nothing new here.
        guard !drainNotice.isDraining else {
            return .serviceUnavailable(.init(headers: .init(retryAfter: 5), body: .applicationProblemJson(.init(
                _type: APIProblem.typeURI("not-ready"), title: "Service Unavailable", status: 503,
                detail: "This instance is shutting down.", requestId: RequestInfo.current?.requestID))))
        }
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
        let schema = migrator.migrations.last.map { String($0.fileName.dropLast(".sql".count)) } ?? "none"
        return .ok(.init(body: .json(.init(status: .ready, migrations: migrator.migrations.count, version: BuildVersion.current, schema: schema))))
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
/// The contract served at `/openapi.yaml`, read once at start from the resource bundle. Found without
/// `Bundle.module`, whose accessor kills the process when the bundle is missing (an install that copied
/// only the executable): `load()` instead fails the start with a message naming the bundle.
enum OpenAPIDocument {
    static let bundleName = "locality-commissioning_LocalityAPI.resources"

    /// Read once, on first use (Swift initialises a static `let` exactly once, whichever thread asks first).
    private static let loaded: Result<[UInt8], StartupError> = {
        let places = candidates()
        guard let data = places.lazy.compactMap({ try? Data(contentsOf: $0) }).first else {
            return .failure(StartupError("the resource bundle \(bundleName) (with openapi.yaml) is missing; install it beside the executable or set LOCALITY_RESOURCES_DIR (looked in: \(places.map(\.path).joined(separator: ", ")))"))
        }
        return .success([UInt8](data))
    }()

    /// The document; `load()` has succeeded before the server starts, so this is never empty when served.
    static var bytes: [UInt8] { (try? loaded.get()) ?? [] }

    /// Where the document may be: the bundle beside the executable (as SwiftPM lays out builds and as the
    /// release is packaged), `LOCALITY_RESOURCES_DIR`, or the source tree (development).
    static func candidates(environment: [String: String] = ProcessInfo.processInfo.environment) -> [URL] {
        var urls: [URL] = []
        if let explicit = environment["LOCALITY_RESOURCES_DIR"], !explicit.isEmpty {
            urls.append(URL(fileURLWithPath: explicit).appendingPathComponent("openapi.yaml"))
        }
        let executable = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath().deletingLastPathComponent()
        urls.append(executable.appendingPathComponent(bundleName).appendingPathComponent("openapi.yaml"))
        if let main = Bundle.main.executableURL?.deletingLastPathComponent() {
            urls.append(main.appendingPathComponent(bundleName).appendingPathComponent("openapi.yaml"))
        }
        urls.append(URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("openapi.yaml"))
        return urls
    }

    /// Fails the start, naming the bundle, when the document cannot be found.
    static func load() throws {
        _ = try loaded.get()
    }
}
