import Foundation
import Hummingbird
import NIOCore
import Synchronization

/// Limits public supplier registrations per client address: a token bucket refilled evenly over the hour.
///
/// Kept in process memory, so each instance limits on its own; behind N instances a client gets at most N
/// times the limit, which still stops scripted mass registration. (A shared limiter would need a store all
/// instances reach; the database could be that store if this ever matters.)
final class RegistrationRateLimiter: Sendable {
    struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    let perHour: Int
    private let buckets = Mutex<[String: Bucket]>([:])

    init(perHour: Int) {
        self.perHour = perHour
    }

    /// Takes a token for `client`; false when the bucket is empty.
    func allow(_ client: String, now: ContinuousClock.Instant = .now) -> Bool {
        buckets.withLock { buckets in
            if buckets.count > 100_000 { buckets.removeAll() }   // bound memory under address spraying
            var bucket = buckets[client] ?? Bucket(tokens: Double(perHour), updated: now)
            let elapsed = now - bucket.updated
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            bucket.tokens = min(Double(perHour), bucket.tokens + seconds * Double(perHour) / 3600)
            bucket.updated = now
            guard bucket.tokens >= 1 else {
                buckets[client] = bucket
                return false
            }
            bucket.tokens -= 1
            buckets[client] = bucket
            return true
        }
    }
}

struct RegistrationRateLimitMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let limiter: RegistrationRateLimiter

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .post, request.uri.path == "/v1/supplier-registrations" else {
            return try await next(request, context)
        }
        let client = context.remoteAddress?.ipAddress ?? "unknown"
        guard limiter.allow(client) else {
            var headers = HTTPFields()
            headers[.retryAfter] = "3600"
            throw APIProblem(
                status: .tooManyRequests, type: APIProblem.typeURI("rate-limited"), title: "Too Many Requests",
                detail: "Too many registrations from your address; try again later.", headers: headers)
        }
        return try await next(request, context)
    }
}
