import Foundation
import HTTPTypes
import Hummingbird
import LocalityDomain
import Logging

/// The authenticated caller of the current request, for handlers.
enum Authenticated {
    @TaskLocal static var principal: Principal?

    /// The caller's scope; every `/v1` handler starts here.
    static func scope() throws -> AccessScope {
        guard let principal else { throw APIProblem.unauthenticated("Authentication is required.") }
        return principal.scope(requestID: RequestInfo.current?.requestID)
    }
}

/// Resolves `Authorization: Bearer <token>` for every `/v1` route. Missing, malformed, unknown, expired and
/// revoked tokens all get the same 401, so the answer reveals nothing about which it was. The token
/// itself is never logged.
struct AuthenticationMiddleware<Context: RequestContext>: RouterMiddleware {
    let tokens: TokenService
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        // Unknown routes and wrong methods fall through to their 404 / 405; public operations need no token.
        // The router sets `endpointPath` only when it matched the path and the method, so the route table is asked
        // only for the rest (its scan showed in profiles, Benchmarks/README.md).
        guard request.uri.path.hasPrefix("/v1/"),
            context.endpointPath != nil || routes.methods(forPath: request.uri.path).contains(request.method),
            !publicOperations.contains(where: { $0.method == request.method && $0.path == request.uri.path })
        else {
            return try await next(request, context)
        }
        guard let header = request.headers[.authorization] else {
            throw APIProblem.unauthenticated("Send an API token: Authorization: Bearer <token>.")
        }
        guard let token = Self.bearerToken(header) else {
            throw APIProblem.unauthenticated("The Authorization header must be \"Bearer <token>\".")
        }
        guard let principal = try await tokens.authenticate(token) else {
            throw APIProblem.unauthenticated("The token is not valid: it is unknown, expired or revoked.")
        }
        var context = context
        // Formatted only if a line is logged inside the handler (most requests log none there).
        context.logger[metadataKey: "user"] = .stringConvertible(LoggedID(id: principal.userID))
        return try await Authenticated.$principal.withValue(principal) {
            try await next(request, context)
        }
    }

    /// The token of a `Bearer` credential (scheme case-insensitive, RFC 9110), or nil.
    static func bearerToken(_ header: String) -> String? {
        // What every client sends: "Bearer " and a token of visible ASCII, which the general rule below would
        // return unchanged. Checked byte by byte: Foundation's case mapping and trimming cost more than the
        // cached authentication they lead to.
        let bytes = header.utf8
        if bytes.count > 7, bytes.starts(with: "Bearer ".utf8), bytes.dropFirst(7).allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
            return String(header.dropFirst(7))
        }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }
}

/// A user id in log metadata, written as everywhere else (lower case) when a line is logged.
struct LoggedID: CustomStringConvertible, Sendable {
    let id: UUID
    var description: String { id.lowercased }
}

/// The `/v1` operations the OpenAPI document marks `security: []`.
let publicOperations: [(method: HTTPRequest.Method, path: String)] = [(.post, "/v1/supplier-registrations")]

/// Authenticated answers (and their problems) must not be cached by browsers or proxies.
struct NoStoreMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        if request.uri.path.hasPrefix("/v1/") {
            response.headers[.cacheControl] = "no-store"
        }
        return response
    }
}
