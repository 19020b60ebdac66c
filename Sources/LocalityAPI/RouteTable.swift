import HTTPTypes
import Hummingbird
import OpenAPIRuntime
import OpenAPIHummingbird
import Synchronization

/// The routes the OpenAPI document declares, recorded as the generated code registers them, so that a
/// known path with the wrong method answers 405 (with `Allow`) instead of 404.
final class RouteTable: Sendable {
    private let routes = Mutex<[(segments: [Substring], method: HTTPRequest.Method)]>([])
    let maxBodyBytes: Int

    init(maxBodyBytes: Int) {
        self.maxBodyBytes = maxBodyBytes
    }

    func record(path: String, method: HTTPRequest.Method) {
        routes.withLock { $0.append((path.split(separator: "/"), method)) }
    }

    /// Methods declared for templates matching `path` (`{param}` matches any one segment).
    func methods(forPath path: String) -> [HTTPRequest.Method] {
        let segments = path.split(separator: "/")
        return routes.withLock { routes in
            routes.filter { route in
                route.segments.count == segments.count
                    && zip(route.segments, segments).allSatisfy { template, actual in
                        (template.hasPrefix("{") && template.hasSuffix("}")) || template == actual
                    }
            }.map(\.method)
        }
    }
}

/// A `ServerTransport` that registers on the Hummingbird router and records each route in the table.
struct RecordingTransport<Context: RequestContext>: ServerTransport {
    let router: Router<Context>
    let table: RouteTable

    func register(
        _ handler: @escaping @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?),
        method: HTTPRequest.Method,
        path: String
    ) throws {
        table.record(path: path, method: method)
        router.register(handler, method: method, path: path)
    }
}
