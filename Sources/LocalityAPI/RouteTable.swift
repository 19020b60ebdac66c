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
            routes.filter { Self.matches($0.segments, segments) }.map(\.method)
        }
    }

    /// The template (`/v1/boards/{board_id}`) that serves `method` on `path`; literal segments win over
    /// parameters, as in the router.
    func template(forPath path: String, method: HTTPRequest.Method) -> String? {
        let segments = path.split(separator: "/")
        return routes.withLock { routes in
            routes.filter { $0.method == method && Self.matches($0.segments, segments) }
                .max { $0.segments.filter { !$0.hasPrefix("{") }.count < $1.segments.filter { !$0.hasPrefix("{") }.count }
                .map { "/" + $0.segments.joined(separator: "/") }
        }
    }

    private static func matches(_ template: [Substring], _ segments: [Substring]) -> Bool {
        template.count == segments.count
            && zip(template, segments).allSatisfy { template, actual in
                (template.hasPrefix("{") && template.hasSuffix("}")) || template == actual
            }
    }
}

/// A `ServerTransport` that registers on the Hummingbird router and records each route in the table.
///
/// Every `GET` is also served as `HEAD` (RFC 9110 §9.3.2): the same handler, whose body
/// `HTTPConventionsMiddleware` drops.
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
        if method == .get {
            table.record(path: path, method: .head)
            router.register(handler, method: .head, path: path)
        }
    }
}
