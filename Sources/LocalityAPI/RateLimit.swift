import Foundation
import HTTPTypes
import Hummingbird
import LocalityPostgres
import NIOCore

/// Limits public supplier registrations per client address, counted in PostgreSQL (`take_registration_slot`,
/// migration 0017), so that every instance shares one limit and a restart does not reset it.
///
/// The client address is the socket peer's, unless the peer is a configured trusted proxy (a load balancer):
/// then it is the right-most `X-Forwarded-For` entry that is not itself a trusted proxy. An untrusted peer's
/// `X-Forwarded-For` is ignored (anyone can send one), so spoofing it gets a client nothing.
struct RegistrationRateLimitMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let pool: PGPool
    let perHour: Int
    let trustedProxies: Set<String>

    static let takeSlotSQL = "SELECT take_registration_slot($1, $2::integer)"

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .post, request.uri.path == "/v1/supplier-registrations" else {
            return try await next(request, context)
        }
        let client = Self.clientAddress(peer: context.remoteAddress?.ipAddress, forwardedFor: request.headers[values: .xForwardedFor],
                                        trustedProxies: trustedProxies)
        let wait = try await pool.query(PGQuery(Self.takeSlotSQL, [client.pg, perHour.pg])).first?.decode(Int.self, at: 0) ?? 0
        guard wait == 0 else {
            var headers = HTTPFields()
            headers[.retryAfter] = String(wait)
            throw APIProblem(
                status: .tooManyRequests, type: APIProblem.typeURI("rate-limited"), title: "Too Many Requests",
                detail: "Too many registrations from your address; try again later.", headers: headers)
        }
        return try await next(request, context)
    }

    static func clientAddress(peer: String?, forwardedFor: [String], trustedProxies: Set<String>) -> String {
        guard let peer else { return "unknown" }
        guard trustedProxies.contains(peer) else { return String(peer.prefix(100)) }
        let hops = forwardedFor.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let client = hops.last { !trustedProxies.contains($0) } ?? peer
        return String(client.prefix(100))
    }
}

extension HTTPField.Name {
    static let xForwardedFor = HTTPField.Name("X-Forwarded-For")!
}
