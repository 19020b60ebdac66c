import HTTPTypes
import Hummingbird
import Tracing

/// A server span per request when tracing is on (`--otlp-traces-endpoint`): named by method and route
/// template, with the status; a W3C `traceparent` (and `tracestate`) from the client makes it a child of the
/// caller's span, and every database statement of the request a child of it (`PGTracing`). Never the raw path
/// (it holds ids), the query string, headers or bodies. With tracing off this middleware is not installed.
struct RequestTracingMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var parent = InstrumentationContext.current ?? .topLevel
        InstrumentationSystem.instrument.extract(request.headers, into: &parent, using: HTTPFieldsExtractor())
        let route = routes.template(forPath: request.uri.path, method: request.method) ?? "unmatched"
        let span = startSpan("\(request.method.rawValue) \(route)", context: parent, ofKind: .server)
        defer { span.end() }
        span.attributes["http.request.method"] = request.method.rawValue
        span.attributes["http.route"] = route
        if let requestID = RequestInfo.current?.requestID { span.attributes["locality.request_id"] = requestID }
        do {
            let response = try await InstrumentationContext.$current.withValue(span.context) { try await next(request, context) }
            span.attributes["http.response.status_code"] = Int(response.status.code)
            if response.status.code >= 500 { span.setStatus(.init(code: .error)) }
            return response
        } catch {
            // Problems are answered inside (ProblemMiddleware); what escapes is the server's failure. No error
            // text on the span: it could quote request data.
            span.attributes["http.response.status_code"] = Int((error as? any HTTPResponseError)?.status.code ?? 500)
            span.setStatus(.init(code: .error))
            throw error
        }
    }
}

/// Reads propagation headers (`traceparent`, `tracestate`) for the bootstrapped instrument.
struct HTTPFieldsExtractor: Extractor {
    func extract(key: String, from fields: HTTPFields) -> String? {
        HTTPField.Name(key).flatMap { fields[$0] }
    }
}
