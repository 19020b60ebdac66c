import Foundation
import HTTPTypes
import Hummingbird
import LocalityPostgres
import Logging
import Metrics

/// Per-request facts handlers may need (the request id for problems and, later, audit events).
struct RequestInfo: Sendable {
    @TaskLocal static var current: RequestInfo?
    let requestID: String
}

/// Accepts a client's `X-Request-Id` (if short and printable) or makes one; puts it in the logger's
/// metadata and echoes it back on the response.
struct RequestIDMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let requestID = request.headers[.requestID].flatMap(Self.acceptable) ?? UUID().uuidString.lowercased()
        var context = context
        context.logger[metadataKey: "request_id"] = .string(requestID)
        var response = try await RequestInfo.$current.withValue(RequestInfo(requestID: requestID)) {
            try await next(request, context)
        }
        response.headers[.requestID] = requestID
        return response
    }

    static func acceptable(_ value: String) -> String? {
        guard (1...128).contains(value.utf8.count),
            value.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else { return nil }
        return value
    }
}

extension HTTPField.Name {
    static let requestID = HTTPField.Name("X-Request-Id")!
}

/// Counts requests and times them by route template (never the raw path, which would explode the label set).
struct HTTPMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let factory: any MetricsFactory

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let response = try await next(request, context)
        let route = context.endpointPath ?? "unmatched"
        let method = request.method.rawValue
        Counter(
            label: "http_requests_total",
            dimensions: [("route", route), ("method", method), ("status", String(response.status.code))],
            factory: factory
        ).increment()
        let (seconds, attoseconds) = (ContinuousClock.now - start).components
        Metrics.Timer(label: "http_request_duration_seconds", dimensions: [("route", route), ("method", method)], factory: factory)
            .recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        return response
    }
}

/// Refuses bodies over the limit with 413 before any handler reads them.
struct BodyLimitMiddleware<Context: RequestContext>: RouterMiddleware {
    let maxBytes: Int

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > maxBytes {
            throw APIProblem.tooLarge(limit: maxBytes)
        }
        var request = request
        if request.method != .get && request.method != .head {
            _ = try await request.collectBody(upTo: maxBytes)
        }
        return try await next(request, context)
    }
}

/// Runs each request on one of the database pool's I/O threads (`PGPool.withIOAffinity`). Why: a request
/// runs several statements (BEGIN, context, the work, COMMIT), and each reply then resumes the handler on
/// the thread that read it instead of waking one of Swift's cooperative threads. Handlers never block.
struct DatabaseAffinityMiddleware<Context: RequestContext>: RouterMiddleware {
    let pool: PGPool

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        try await pool.withIOAffinity { try await next(request, context) }
    }
}

/// The generated layer writes header values URI-encoded (`/v1/boards/…` would leave as `%2Fv1%2Fboards%2F…`),
/// which is wrong for `Location`, a URI reference sent as is (RFC 9110 §10.2.2). Our locations are built from
/// path segments, ids and digits, so decoding restores exactly what the handler set.
struct LocationHeaderMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        if let location = response.headers[.location], location.contains("%"), let decoded = location.removingPercentEncoding {
            response.headers[.location] = decoded
        }
        return response
    }
}
