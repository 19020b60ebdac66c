import Foundation
import HTTPTypes
import Hummingbird
import LocalityPostgres
import Logging
import Metrics
import NIOCore
import OpenAPIRuntime

/// Per-request facts handlers may need (the request id for problems and, later, audit events).
struct RequestInfo: Sendable {
    @TaskLocal static var current: RequestInfo?
    let requestID: String
}

/// Accepts a client's `X-Request-Id` (if short and printable) or makes one; puts it in the logger's
/// metadata and echoes it back on the response.
struct RequestIDMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let requestID = request.headers[.requestID].flatMap(Self.acceptable) ?? Self.newID()
        var context = context
        context.logger[metadataKey: "request_id"] = .string(requestID)
        var response = try await RequestInfo.$current.withValue(RequestInfo(requestID: requestID)) {
            try await next(request, context)
        }
        response.headers[.requestID] = requestID
        return response
    }

    /// A random (version 4) UUID in lower case, as `UUID().uuidString.lowercased()` wrote it, from the system's
    /// random generator: Foundation's `UUID()` here opens, reads and closes /dev/urandom (three system calls on
    /// every request, Benchmarks/README.md).
    static func newID() -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes = (generator.next() as UInt64, generator.next() as UInt64)
        return withUnsafeMutableBytes(of: &bytes) { raw in
            raw[6] = (raw[6] & 0x0F) | 0x40   // version 4
            raw[8] = (raw[8] & 0x3F) | 0x80   // RFC 4122 variant
            let hex = Array("0123456789abcdef".utf8)
            var text: [UInt8] = []
            text.reserveCapacity(36)
            for (index, byte) in raw.enumerated() {
                if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
                text.append(hex[Int(byte >> 4)])
                text.append(hex[Int(byte & 0x0F)])
            }
            return String(decoding: text, as: UTF8.self)
        }
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

/// One structured line per request at info: method, route template (never the raw path, which holds ids),
/// status, duration and — from the logger's metadata — the request id. Never headers or bodies, so never a
/// token or a bid. Off with `--no-access-log`.
struct AccessLogMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let response = try await next(request, context)
        context.logger.info("request", metadata: [
            "method": .string(request.method.rawValue), "route": .string(context.endpointPath ?? "unmatched"),
            "status": .stringConvertible(response.status.code),
            "duration_ms": .string(Self.milliseconds(ContinuousClock.now - start)),
        ])
        return response
    }

    /// Milliseconds with two decimals ("0.42", "1203.07"), rounded half up: what `String(format: "%.2f")` wrote,
    /// without Foundation's formatter (a measurable share of every request's CPU).
    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        // In hundredths of a millisecond (10 µs = 10^13 attoseconds).
        let hundredths = max(0, seconds * 100_000 + (attoseconds + 5_000_000_000_000) / 10_000_000_000_000)
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

/// Refuses bodies over the limit with 413 before any handler reads them, whether the size was declared
/// (`Content-Length`) or only found while reading (chunked transfer coding).
struct BodyLimitMiddleware<Context: RequestContext>: RouterMiddleware {
    let maxBytes: Int

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > maxBytes {
            throw APIProblem.tooLarge(limit: maxBytes)
        }
        var request = request
        if request.method != .get && request.method != .head {
            do {
                _ = try await request.collectBody(upTo: maxBytes)
            } catch is NIOTooManyBytesError {
                throw APIProblem.tooLarge(limit: maxBytes)
            }
        }
        return try await next(request, context)
    }
}

/// What every response owes HTTP, whoever produced it (a handler, the generated layer or a problem):
///
/// - `HEAD` (routed wherever `GET` is, see `RecordingTransport`) gets GET's headers, its length, no body;
/// - `ETag` is the quoted entity tag (`"v3"`): the generated layer writes header values URI-encoded
///   (`%22v3%22`), which no client compares correctly (`Location` likewise, `/` as `%2F`);
/// - every 503 says when to come back (`Retry-After`), including readiness and database problems.
struct HTTPConventionsMiddleware<Context: RequestContext>: RouterMiddleware {
    /// Built once: an array literal in `handle` was an allocation per request.
    private static var percentDecoded: [HTTPField.Name] { percentDecodedHeaders }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        // Only the headers the generated layer writes (a client's X-Request-Id may hold a literal `%`). `%` is
        // looked for byte by byte: `String.contains(String)` is Foundation's substring search, on every ETag.
        for name in Self.percentDecoded {
            if let value = response.headers[name], value.utf8.contains(UInt8(ascii: "%")), let decoded = value.removingPercentEncoding {
                response.headers[name] = decoded
            }
        }
        if response.status == .serviceUnavailable, response.headers[.retryAfter] == nil {
            response.headers[.retryAfter] = APIProblem.retryAfterSeconds
        }
        if request.method == .head {
            let length = response.body.contentLength ?? response.headers[.contentLength].flatMap(Int.init)
            response.body = ResponseBody()
            response.headers[.contentLength] = length.map(String.init)
        }
        return response
    }
}

private let percentDecodedHeaders: [HTTPField.Name] = [.eTag, .location]

/// The request side of the contract, checked before the generated layer sees the request (it would answer
/// these with 500s, after running the handler, or accept them silently):
///
/// - `Accept` is set aside: every operation answers in exactly one media type (and errors in
///   `application/problem+json`), so the answer is in the only type there is, as RFC 9110 §12.5.1 allows.
///   (The generated layer checks `Accept` only after the handler has run: a committed write answered 500.)
/// - A body must be JSON (`application/json`, optionally `; charset=utf-8`, or `application/<x>+json`);
///   anything else, or no `Content-Type` at all, is 415.
/// - Query and path parameters match the document's declarations (`ParameterRules`): 400 naming them.
/// - The body passes `JSONBodyCheck` (duplicate keys 400; NUL and explicit `null` 422).
/// - A timestamp the strict parser refuses (`InternetDateTranscoder.InvalidDateTime`) is named: 422 with the
///   body field that holds it, or 400 with the query parameter.
struct RequestContentMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable
    let parameters: ParameterRules
    let maxBytes: Int

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var head = request.head
        // Only when present: removing an absent field still copies the request's header storage.
        if head.headerFields[.accept] != nil { head.headerFields[.accept] = nil }
        var body = request.body
        var bytes: [UInt8] = []
        let query = request.uri.queryParameters.map { (key: String($0.key), value: String($0.value)) }
        // The router's matched template when it has one (the same text as the table's; no second scan).
        let template = context.endpointPath ?? routes.template(forPath: request.uri.path, method: request.method)
        if let template, let problem = parameters.problem(method: request.method, template: template, path: request.uri.path, query: query) {
            throw problem
        }
        if template != nil, request.method != .get, request.method != .head {
            var collecting = request
            let buffer = try await collecting.collectBody(upTo: maxBytes)
            body = collecting.body
            bytes = Array(buffer.readableBytesView)
            if !bytes.isEmpty {
                guard Self.isJSON(request.headers[.contentType]) else { throw APIProblem.unsupportedMediaType }
                // The generated layer matches `application/json` exactly.
                head.headerFields[.contentType] = "application/json"
                try Self.check(bytes)
            }
        }
        do {
            // Without `If-Match` the task-local keeps its default (nil): no binding to push and pop.
            guard let ifMatch = request.headers[.ifMatch] else {
                return try await next(Request(head: head, body: body), context)
            }
            return try await RequestPreconditions.$ifMatch.withValue(ifMatch) {
                try await next(Request(head: head, body: body), context)
            }
        } catch let error as ServerError {
            guard let invalid = error.underlyingError as? InternetDateTranscoder.InvalidDateTime else { throw error }
            throw Self.problem(invalid, body: bytes, query: query)
        }
    }

    /// `application/json` or `application/<anything>+json`, in UTF-8 (the only charset JSON has, RFC 8259).
    static func isJSON(_ contentType: String?) -> Bool {
        guard let contentType else { return false }
        let parts = contentType.split(separator: ";", omittingEmptySubsequences: false)
        let mediaType = parts[0].trimmingCharacters(in: .whitespaces).lowercased()
        guard mediaType == "application/json" || (mediaType.hasPrefix("application/") && mediaType.hasSuffix("+json")) else {
            return false
        }
        for parameter in parts.dropFirst() {
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            if pair.first == "charset", pair.count == 2, pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")) != "utf-8" {
                return false
            }
        }
        return true
    }

    static func check(_ bytes: [UInt8]) throws {
        let findings = JSONBodyCheck.findings(in: bytes)
        let duplicates = findings.compactMap { finding -> APIProblem.FieldError? in
            guard case .duplicateKey(let field) = finding else { return nil }
            return APIProblem.FieldError(field: field, message: "appears more than once")
        }
        if !duplicates.isEmpty {
            throw APIProblem(
                status: .badRequest, type: APIProblem.typeURI("duplicate-key"), title: "Bad Request",
                detail: "The request body names a key twice in one object; send each key once.", fieldErrors: duplicates)
        }
        let issues = findings.compactMap { finding -> APIProblem.FieldError? in
            switch finding {
            case .duplicateKey: nil
            case .nul(let field): APIProblem.FieldError(field: field, message: "must not contain the NUL character (U+0000)")
            case .null(let field): APIProblem.FieldError(field: field, message: "must not be null; leave the field out instead")
            }
        }
        if !issues.isEmpty {
            throw APIProblem(
                status: .unprocessableContent, type: APIProblem.typeURI("validation"), title: "Unprocessable Content",
                detail: "The request has invalid fields.", fieldErrors: issues)
        }
    }

    static func problem(_ invalid: InternetDateTranscoder.InvalidDateTime, body: [UInt8], query: [(key: String, value: String)]) -> APIProblem {
        let fields = JSONBodyCheck.fields(holding: invalid.text, in: body)
        if fields.isEmpty, let parameter = query.first(where: { $0.value == invalid.text })?.key {
            return .invalidParameter(parameter, invalid.description)
        }
        return APIProblem(
            status: .unprocessableContent, type: APIProblem.typeURI("validation"), title: "Unprocessable Content",
            detail: "The request has invalid fields.",
            fieldErrors: (fields.isEmpty ? ["body"] : fields).map { APIProblem.FieldError(field: $0, message: invalid.description) })
    }
}

/// Runs each write on one of the database pool's I/O threads (`PGPool.withIOAffinity`). Why: a write runs
/// several statements (BEGIN, context, the work, COMMIT), and each reply then resumes the handler on the
/// thread that read it instead of waking the connection's event loop. Handlers never block.
///
/// GET and HEAD stay on the connection's event loop (see `GuardedHTTP1Channel.handle`): a read is one round
/// trip (`ScopedDatabase.read`), so moving it to an I/O thread and back would cost two thread hops to save one.
struct DatabaseAffinityMiddleware<Context: RequestContext>: RouterMiddleware {
    let pool: PGPool

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.method == .get || request.method == .head { return try await next(request, context) }
        return try await pool.withIOAffinity { try await next(request, context) }
    }
}

/// The generated layer writes header values URI-encoded (`/v1/boards/…` would leave as `%2Fv1%2Fboards%2F…`),
/// which is wrong for `Location`, a URI reference sent as is (RFC 9110 §10.2.2). Our locations are built from
/// path segments, ids and digits, so decoding restores exactly what the handler set.
struct LocationHeaderMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        if let location = response.headers[.location], location.utf8.contains(UInt8(ascii: "%")), let decoded = location.removingPercentEncoding {
            response.headers[.location] = decoded
        }
        return response
    }
}
