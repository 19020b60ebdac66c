import Foundation
import HTTPTypes
import Hummingbird
import LocalityDomain
import LocalityPostgres
import Logging
import OpenAPIRuntime

/// An RFC 9457 problem the service answers with. Throw it from anywhere below the middleware.
struct APIProblem: Error, Sendable {
var status: HTTPResponse.Status
var type: String
var title: String
var detail: String?
var fieldErrors: [FieldError]
var headers: HTTPFields

struct FieldError: Sendable, Codable, Equatable {
        public var field: String
        public var message: String
    }

init(
        status: HTTPResponse.Status,
        type: String,
        title: String,
        detail: String? = nil,
        fieldErrors: [FieldError] = [],
        headers: HTTPFields = [:]
    ) {
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.fieldErrors = fieldErrors
        self.headers = headers
    }

    /// Problem type URIs are relative references under `/problems/`, stable for clients to switch on.
    static func typeURI(_ slug: String) -> String { "/problems/\(slug)" }

    static func notFound(_ path: String) -> APIProblem {
        APIProblem(status: .notFound, type: typeURI("not-found"), title: "Not Found", detail: "No resource at \(path).")
    }

    static func methodNotAllowed(_ method: HTTPRequest.Method, allowed: [HTTPRequest.Method]) -> APIProblem {
        let allow = allowed.map(\.rawValue).sorted().joined(separator: ", ")
        var headers = HTTPFields()
        headers[.allow] = allow
        return APIProblem(
            status: .methodNotAllowed, type: typeURI("method-not-allowed"), title: "Method Not Allowed",
            detail: "\(method.rawValue) is not allowed here; allowed: \(allow).", headers: headers)
    }

    static func tooLarge(limit: Int) -> APIProblem {
        APIProblem(
            status: .contentTooLarge, type: typeURI("content-too-large"), title: "Content Too Large",
            detail: "The request body exceeds \(limit) bytes.")
    }

    static func unauthenticated(_ detail: String) -> APIProblem {
        var headers = HTTPFields()
        headers[.wwwAuthenticate] = "Bearer"
        return APIProblem(status: .unauthorized, type: typeURI("unauthenticated"), title: "Unauthorized", detail: detail, headers: headers)
    }

    /// How a domain failure reads over HTTP.
    static func domain(_ error: DomainError) -> APIProblem {
        switch error {
        case .notFound(let what):
            return APIProblem(status: .notFound, type: typeURI("not-found"), title: "Not Found",
                              detail: "The \(what) was not found.")
        case .forbidden(let detail):
            return APIProblem(status: .forbidden, type: typeURI("forbidden"), title: "Forbidden", detail: detail)
        case .unauthenticated(let detail):
            return .unauthenticated(detail)
        case .invalid(let issues):
            return APIProblem(status: .unprocessableContent, type: typeURI("validation"), title: "Unprocessable Content",
                              detail: "The request has invalid fields.",
                              fieldErrors: issues.map { FieldError(field: $0.field, message: $0.message) })
        case .conflict(let detail):
            return APIProblem(status: .conflict, type: typeURI("conflict"), title: "Conflict", detail: detail)
        case .stateConflict(let type, let detail, let status):
            if status == 404 { return APIProblem(status: .notFound, type: typeURI(type), title: "Not Found", detail: detail) }
            return status == 422
                ? APIProblem(status: .unprocessableContent, type: typeURI(type), title: "Unprocessable Content", detail: detail)
                : APIProblem(status: .conflict, type: typeURI(type), title: "Conflict", detail: detail)
        case .insufficientFunds(let detail):
            return APIProblem(status: .conflict, type: typeURI("insufficient-funds"), title: "Insufficient Funds", detail: detail)
        case .preconditionFailed:
            return APIProblem(status: .preconditionFailed, type: typeURI("stale-version"), title: "Precondition Failed",
                              detail: error.description)
        case .preconditionRequired:
            return APIProblem(status: .init(code: 428, reasonPhrase: "Precondition Required"), type: typeURI("if-match-required"),
                              title: "Precondition Required", detail: error.description)
        }
    }

    /// A request body that is JSON but not the right shape: 422 naming the field; unreadable JSON: 400.
    static func decoding(_ error: DecodingError) -> APIProblem {
        func path(_ codingPath: [any CodingKey]) -> String {
            codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
                .replacingOccurrences(of: ".[", with: "[")
        }
        let issue: FieldError
        switch error {
        case .keyNotFound(let key, let context):
            issue = FieldError(field: path(context.codingPath + [key]), message: "is required")
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            issue = FieldError(field: path(context.codingPath).isEmpty ? "body" : path(context.codingPath),
                               message: "has the wrong type: \(context.debugDescription)")
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return APIProblem(status: .badRequest, type: typeURI("malformed-request"), title: "Bad Request",
                                  detail: "The request body is not valid JSON.")
            }
            issue = FieldError(field: path(context.codingPath).isEmpty ? "body" : path(context.codingPath),
                               message: context.debugDescription)
        @unknown default:
            issue = FieldError(field: "body", message: "could not be read")
        }
        return APIProblem(status: .unprocessableContent, type: typeURI("validation"), title: "Unprocessable Content",
                          detail: "The request body does not match the schema.", fieldErrors: [issue])
    }

    /// A query, path or header parameter that is missing or malformed: 400 naming it in `errors[].field`.
    static func invalidParameter(_ name: String, _ message: String) -> APIProblem {
        APIProblem(status: .badRequest, type: typeURI("invalid-parameter"), title: "Bad Request",
                   detail: "The parameter \(name) \(message).", fieldErrors: [FieldError(field: name, message: message)])
    }

    /// Seconds a client should wait after a 503: pool waits and lock timeouts are seconds long.
    static let retryAfterSeconds = "2"

    /// A 503 that says when to come back.
    static func unavailable(_ slug: String, _ detail: String) -> APIProblem {
        var headers = HTTPFields()
        headers[.retryAfter] = retryAfterSeconds
        return APIProblem(status: .serviceUnavailable, type: typeURI(slug), title: "Service Unavailable", detail: detail, headers: headers)
    }

    static let unsupportedMediaType = APIProblem(
        status: .unsupportedMediaType, type: typeURI("unsupported-media-type"), title: "Unsupported Media Type",
        detail: "Send the request body as application/json.")

    static let internalError = APIProblem(
        status: .internalServerError, type: typeURI("internal"), title: "Internal Server Error",
        detail: "Something went wrong on our side. Quote the request id when reporting it.")

    static let databaseUnavailable = unavailable("database-unavailable", "The database is unavailable or busy; retry shortly.")

    /// The JSON body, with the request id for support.
    func body(requestID: String?) -> ByteBuffer {
        struct Body: Encodable {
            var type: String
            var title: String
            var status: Int
            var detail: String?
            var request_id: String?
            var errors: [FieldError]?
        }
        let body = Body(
            type: type, title: title, status: status.code, detail: detail, request_id: requestID,
            errors: fieldErrors.isEmpty ? nil : fieldErrors)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return ByteBuffer(bytes: (try? encoder.encode(body)) ?? Data())
    }

    func response(requestID: String?) -> Response {
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: body(requestID: requestID)))
    }
}

extension HTTPField.Name {
    static let allow = HTTPField.Name("Allow")!
    static let wwwAuthenticate = HTTPField.Name("WWW-Authenticate")!
}

/// Translates every error into a problem response — the one place errors become HTTP. Internals (SQL,
/// stack traces) are logged, never sent.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            return problem(for: error, request: request, context: context).response(requestID: RequestInfo.current?.requestID)
        }
    }

    func problem(for error: any Error, request: Request, context: Context) -> APIProblem {
        switch error {
        case let problem as APIProblem:
            return problem
        case let error as ServerError:
            // The generated layer wraps what handlers throw and its own decoding failures.
            if let problem = error.underlyingError as? APIProblem { return problem }
            if let domainError = error.underlyingError as? DomainError { return .domain(domainError) }
            if let pgError = error.underlyingError as? PGError { return databaseProblem(pgError, logger: context.logger) }
            if let invalid = error.underlyingError as? InternetDateTranscoder.InvalidDateTime {
                return APIProblem(status: .unprocessableContent, type: APIProblem.typeURI("validation"), title: "Unprocessable Content",
                                  detail: "The request has invalid fields.", fieldErrors: [.init(field: "body", message: invalid.description)])
            }
            if let problem = parameterProblem(error, request: request, context: context) { return problem }
            if error.httpStatus == .unsupportedMediaType { return .unsupportedMediaType }
            if let decodingError = Self.decodingError(in: error.underlyingError) { return .decoding(decodingError) }
            // The document declares `If-Match` required where it is (so the generated layer refuses its absence
            // before the handler); the answer is still 428, as RFC 6585 has it.
            if error.causeDescription == "The required header field named 'If-Match' is missing." {
                return .domain(.preconditionRequired)
            }
            if error.causeDescription.contains("decod") || (400..<500).contains(error.httpStatus.code) {
                return APIProblem(
                    status: .badRequest, type: APIProblem.typeURI("malformed-request"), title: "Bad Request",
                    detail: "The request could not be read: \(error.causeDescription)")
            }
            context.logger.error("unhandled server error", metadata: ["error": "\(error.underlyingError)"])
            return .internalError
        case let error as DomainError:
            return .domain(error)
        case let error as PGError:
            return databaseProblem(error, logger: context.logger)
        case let error as HTTPError:
            switch error.status {
            case .notFound:
                let allowed = routes.methods(forPath: request.uri.path)
                if !allowed.isEmpty { return .methodNotAllowed(request.method, allowed: allowed) }
                return .notFound(request.uri.path)
            case .contentTooLarge:
                return .tooLarge(limit: routes.maxBodyBytes)
            default:
                return APIProblem(
                    status: error.status, type: APIProblem.typeURI("http-\(error.status.code)"),
                    title: error.status.reasonPhrase, detail: error.body)
            }
        default:
            context.logger.error("unhandled error", metadata: ["error": "\(String(reflecting: error))"])
            return .internalError
        }
    }

    /// The runtime may wrap a body's `DecodingError` in its own error types.
    static func decodingError(in error: any Error) -> DecodingError? {
        if let decodingError = error as? DecodingError { return decodingError }
        for child in Mirror(reflecting: error).children {
            if let nested = child.value as? any Error, let found = decodingError(in: nested) { return found }
        }
        return nil
    }

    /// A missing or malformed query, path or header parameter, as the generated layer reports it: 400 naming
    /// the parameter (not worded as a body error, and never a 500). A missing `If-Match` is 428.
    func parameterProblem(_ error: ServerError, request: Request, context: Context) -> APIProblem? {
        let cause = error.causeDescription
        for (prefix, suffix) in [("Missing required query parameter named: ", ""), ("Missing required path parameter named: ", ""),
                                 ("The required header field named '", "' is missing.")] where cause.hasPrefix(prefix) && cause.hasSuffix(suffix) {
            let name = String(cause.dropFirst(prefix.count).dropLast(suffix.count))
            if name.lowercased() == "if-match" { return .domain(.preconditionRequired) }
            return .invalidParameter(name, "is required")
        }
        // A parameter value the generated layer could not decode (a word for a number, an unknown enum value):
        // the coding path starts with the parameter's name.
        guard error.operationInput == nil, let decodingError = Self.decodingError(in: error.underlyingError) else { return nil }
        let codingPath: [any CodingKey]
        switch decodingError {
        case .typeMismatch(_, let decodingContext), .valueNotFound(_, let decodingContext), .dataCorrupted(let decodingContext):
            codingPath = decodingContext.codingPath
        case .keyNotFound(let key, let decodingContext):
            codingPath = decodingContext.codingPath + [key]
        @unknown default:
            return nil
        }
        guard let name = codingPath.first?.stringValue else { return nil }
        let pathParameters = (context.endpointPath ?? "").split(separator: "/").filter { $0.hasPrefix("{") }.map { String($0.dropFirst().dropLast()) }
        guard request.uri.queryParameters[Substring(name)] != nil || pathParameters.contains(name) else { return nil }
        return .invalidParameter(name, "is not valid here")
    }

    /// What reaches here is what the domain did not translate into its own problem (ConstraintTranslation and
    /// the services' checks do that for the violations they expect): a generic answer per SQLSTATE class, so
    /// that a database refusal is never a 500. The details (constraint, SQL) are logged, never sent.
    func databaseProblem(_ error: PGError, logger: Logger) -> APIProblem {
        if error.kind == .acquireTimeout || error.kind == .poolClosed || error.breaksConnection {
            logger.warning("database unavailable", metadata: ["error": "\(error)"])
            return .databaseUnavailable
        }
        let state = error.sqlState ?? ""
        let metadata: Logger.Metadata = [
            "sqlstate": "\(state)", "constraint": "\(error.constraint ?? "")", "error": "\(error.message)",
        ]
        switch state {
        case "23505", "23P01":
            // unique / exclusion violation: usually the same change arriving twice at once.
            logger.notice("database conflict", metadata: metadata)
            return APIProblem(status: .conflict, type: APIProblem.typeURI("conflict"), title: "Conflict",
                              detail: "This conflicts with something that already exists; refresh and check before retrying.")
        case "23503":
            logger.notice("database reference conflict", metadata: metadata)
            return APIProblem(status: .conflict, type: APIProblem.typeURI("conflict"), title: "Conflict",
                              detail: "This refers to something that no longer exists, or is still referred to by something else.")
        case "23514", "23502", _ where state.hasPrefix("22"):
            // check / not-null violations and data exceptions (out of range, malformed values).
            logger.notice("database refused data", metadata: metadata)
            return APIProblem(status: .unprocessableContent, type: APIProblem.typeURI("validation"), title: "Unprocessable Content",
                              detail: "The request has values the service cannot store.",
                              fieldErrors: error.column.map { [APIProblem.FieldError(field: $0, message: "is not an acceptable value")] } ?? [])
        case "40001", "40P01":
            // Already retried where the transaction was safe to re-run (ScopedDatabase.transaction).
            logger.warning("database contention", metadata: metadata)
            return .unavailable("busy", "The change collided with concurrent changes and could not complete; retry shortly.")
        case "55P03", "57014":
            logger.warning("database timeout", metadata: metadata)
            return .unavailable("busy", "The database is busy and the request timed out; retry shortly.")
        case "42501" where error.message.contains("row-level security"):
            // Row-level security refused a write the service let through: the caller may not make this
            // change. (A missing grant, the other 42501, is a deployment bug: it stays a 500.)
            logger.warning("database refused the caller", metadata: metadata)
            return APIProblem(status: .forbidden, type: APIProblem.typeURI("forbidden"), title: "Forbidden",
                              detail: "You may not make this change.")
        default:
            logger.error("database error", metadata: metadata)
            return .internalError
        }
    }
}
