import HTTPTypes
import LocalityDomain
import Hummingbird
import NIOCore
import OpenAPIRuntime
import OpenAPIHummingbird
import Synchronization

/// The routes the OpenAPI document declares, recorded as the generated code registers them, so that a
/// known path with the wrong method answers 405 (with `Allow`) instead of 404.
final class RouteTable: Sendable {
    private struct Route {
        let segments: [Substring]
        let method: HTTPRequest.Method
        let template: String
        /// Segments that are not `{param}`: the most specific template wins.
        let literals: Int
    }

    /// By number of segments: a path is compared with the templates of its own length only. Asked twice or more
    /// per request (authentication, the request checks), so a scan of every route showed in profiles (≈ 3% of
    /// a GET's server CPU, Benchmarks/README.md).
    private let routes = Mutex<[Int: [Route]]>([:])
    let maxBodyBytes: Int

    init(maxBodyBytes: Int) {
        self.maxBodyBytes = maxBodyBytes
    }

    func record(path: String, method: HTTPRequest.Method) {
        let segments = path.split(separator: "/")
        let route = Route(segments: segments, method: method, template: "/" + segments.joined(separator: "/"),
                          literals: segments.filter { !Self.isParameter($0) }.count)
        routes.withLock { $0[segments.count, default: []].append(route) }
    }

    /// Methods declared for templates matching `path` (`{param}` matches any one segment).
    func methods(forPath path: String) -> [HTTPRequest.Method] {
        let segments = path.split(separator: "/")
        return routes.withLock { routes in
            (routes[segments.count] ?? []).filter { Self.matches($0.segments, segments) }.map(\.method)
        }
    }

    /// The template (`/v1/boards/{board_id}`) that serves `method` on `path`; literal segments win over
    /// parameters, as in the router.
    func template(forPath path: String, method: HTTPRequest.Method) -> String? {
        let segments = path.split(separator: "/")
        return routes.withLock { routes in
            var best: Route?
            for route in routes[segments.count] ?? [] where route.method == method && Self.matches(route.segments, segments) {
                if best.map({ route.literals > $0.literals }) ?? true { best = route }
            }
            return best?.template
        }
    }

    private static func isParameter(_ segment: Substring) -> Bool {
        segment.hasPrefix("{") && segment.hasSuffix("}")
    }

    private static func matches(_ template: [Substring], _ segments: [Substring]) -> Bool {
        guard template.count == segments.count else { return false }
        for (template, actual) in zip(template, segments) where template != actual && !isParameter(template) {
            return false
        }
        return true
    }
}

/// A `ServerTransport` that registers on the Hummingbird router and records each route in the table.
///
/// Every `GET` is also served as `HEAD` (RFC 9110 §9.3.2): the same handler, whose body
/// `HTTPConventionsMiddleware` drops.
struct RecordingTransport<Context: RequestContext>: ServerTransport {
    let router: Router<Context>
    let table: RouteTable
    /// Answers of GET handlers that allow it, kept in memory (nil: none).
    var responseCache: ResponseCache?

    func register(
        _ handler: @escaping @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?),
        method: HTTPRequest.Method,
        path: String
    ) throws {
        table.record(path: path, method: method)
        Self.route(handler, method: method, path: path, on: router, cache: responseCache)
        if method == .get {
            table.record(path: path, method: .head)
            Self.route(handler, method: .head, path: path, on: router, cache: responseCache)
        }
    }

    /// What `OpenAPIHummingbird`'s `register` does, except for the response body: a body of known length (every
    /// JSON answer, every CSV export) is collected into one buffer, so that Hummingbird writes head, body and end
    /// in one batch — one hop to the event loop and one socket write. The package's own bridge streams it (head,
    /// then each chunk, then end: three hops and three writes per response, measured in Benchmarks/README.md).
    /// A body of unknown length still streams. GET and HEAD pass the generated layer no request body (none of
    /// their operations declares one).
    static func route(
        _ handler: @escaping @Sendable (HTTPRequest, HTTPBody?, ServerRequestMetadata) async throws -> (HTTPResponse, HTTPBody?),
        method: HTTPRequest.Method,
        path: String,
        on router: Router<Context>,
        cache: ResponseCache? = nil
    ) {
        router.on(RouterPath(path), method: method) { request, context -> Response in
            var body: HTTPBody?
            if method != .get && method != .head {
                let length: HTTPBody.Length = request.headers[.contentLength].flatMap(Int.init).map { .known(Int64($0)) } ?? .unknown
                body = HTTPBody(request.body.map { [UInt8](buffer: $0) }, length: length, iterationBehavior: .single)
            }
            var parameters: [String: Substring] = [:]
            for (key, value) in context.parameters where parameters[String(key)] == nil { parameters[String(key)] = value }
            let metadata = ServerRequestMetadata(pathParameters: parameters)
            guard method == .get || method == .head else {
                // A write's answer may come encoded already too (`PreEncodedBody`), replacing the stand-in's body.
                let slot = PreEncodedBody()
                let (response, responseBody) = try await PreEncodedBody.$slot.withValue(slot) {
                    try await handler(request.head, body, metadata)
                }
                if let bytes = slot.take(), response.status == .ok || response.status == .created {
                    return Self.preEncoded(response, bytes).response
                }
                return try await Self.response(response, responseBody).response
            }
            // A read its handler allowed to keep may be answered from memory (ResponseCache).
            let key = cache != nil ? ResponseCache.key(for: request, principal: Authenticated.principal) : nil
            if let cache, let key, let kept = cache.answer(for: key) {
                return Response(status: .ok, headers: kept.headers, body: ResponseBody(byteBuffer: kept.body))
            }
            let ticket = key != nil ? cache?.changes.ticket() : nil
            let offer = ticket != nil ? ResponseCache.Offer() : nil
            // A large answer may come encoded already (`PreEncodedBody`); it replaces the stand-in's body.
            let slot = PreEncodedBody()
            let (response, responseBody) = try await ResponseCache.Offer.$current.withValue(offer) {
                try await PreEncodedBody.$slot.withValue(slot) {
                    try await handler(request.head, body, metadata)
                }
            }
            let answer: (response: Response, kept: ByteBuffer?)
            if let bytes = slot.take(), response.status == .ok {
                let (preEncoded, kept) = Self.preEncoded(response, bytes)
                answer = (preEncoded, kept)
            } else {
                answer = try await Self.response(response, responseBody)
            }
            if let cache, let key, let ticket, let offer, response.status == .ok, let buffer = answer.kept {
                let (keep, until) = offer.kept
                if keep {
                    cache.keep(.init(headers: answer.response.headers, body: buffer), for: key, ticket: ticket, until: until)
                }
            }
            return answer.response
        }
    }

    /// The generated response with the bytes its handler encoded (`PreEncodedBody`) as its body (also returned, for
    /// the response cache); the stand-in's length goes.
    private static func preEncoded(_ response: HTTPResponse, _ bytes: [UInt8]) -> (response: Response, kept: ByteBuffer) {
        var headers = response.headerFields
        headers[.contentLength] = nil
        let buffer = ByteBuffer(bytes: bytes)
        return (Response(status: response.status, headers: headers, body: ResponseBody(byteBuffer: buffer)), buffer)
    }

    /// The Hummingbird response for a generated one: a body of known length in one buffer (also returned, for the
    /// response cache), any other streamed.
    private static func response(_ response: HTTPResponse, _ responseBody: HTTPBody?) async throws -> (response: Response, kept: ByteBuffer?) {
        guard let responseBody else {
            return (Response(status: response.status, headers: response.headerFields, body: ResponseBody(byteBuffer: ByteBuffer())), ByteBuffer())
        }
        guard case .known(let length) = responseBody.length else {
            return (Response(status: response.status, headers: response.headerFields,
                             body: ResponseBody(asyncSequence: responseBody.map { ByteBuffer(bytes: $0) })), nil)
        }
        var buffer = ByteBuffer()
        buffer.reserveCapacity(Int(length))
        for try await chunk in responseBody { buffer.writeBytes(chunk) }
        return (Response(status: response.status, headers: response.headerFields, body: ResponseBody(byteBuffer: buffer)), buffer)
    }
}
