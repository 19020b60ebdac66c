import Foundation
import HTTPTypes
import Hummingbird
import LocalityDomain
import Logging
import NIOCore
import OpenAPIRuntime

extension HTTPField.Name {
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
}

/// `Idempotency-Key` on POST requests, as Stripe has it: the first request with a key runs and its answer
/// (a 2xx or a final 4xx) is kept for 24 hours; a repeat with the same key and the same request gets that
/// answer again and changes nothing; the same key with another request is refused (422); while the first
/// still runs, a repeat gets 409. A 5xx is not kept, so a retry runs again. Keys are scoped to the caller
/// (its user id) and kept in PostgreSQL, so they hold across instances and restarts.
///
/// The claim is a lease renewed while the request runs: when its instance dies, a retry through another one takes
/// it over within `IdempotencyKeys.lease` — unless the dead run had committed its change (each write transaction
/// marks the claim under its token: `IdempotencyFence`), which is then never repeated (409 `idempotency-key-answer-lost`).
///
/// Runs after authentication (it needs the caller) and below the problem middleware: it turns the
/// handler's errors into their problem responses itself, so that a final 4xx is kept like any other answer.
struct IdempotencyMiddleware<Context: RequestContext>: RouterMiddleware {
    let keys: IdempotencyKeys
    let routes: RouteTable

    /// Headers of the first answer that a replay repeats (the request id and caching headers are the replay's own).
    static var replayedHeaders: [HTTPField.Name] { [.contentType, .location, .eTag] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .post, request.uri.path.hasPrefix("/v1/"),
            request.headers[.idempotencyKey] != nil,
            routes.methods(forPath: request.uri.path).contains(.post)
        else {
            return try await next(request, context)
        }
        let values = request.headers[values: .idempotencyKey]
        guard values.count == 1, let key = values.first, Self.isValidKey(key) else {
            throw APIProblem(
                status: .badRequest, type: APIProblem.typeURI("invalid-idempotency-key"), title: "Bad Request",
                detail: "Send one Idempotency-Key of 1–255 visible ASCII characters (a UUID, say).")
        }
        // Their answers carry a secret that is shown once and never stored, so they could not be replayed; and
        // the public registration has no caller to scope a key to.
        guard !Self.answersWithSecret(request.uri.path), let principal = Authenticated.principal else {
            throw APIProblem(
                status: .badRequest, type: APIProblem.typeURI("idempotency-key-not-supported"), title: "Bad Request",
                detail: "This operation takes no Idempotency-Key: its answer holds a secret that is shown once and never stored.")
        }
        let caller = "user:\(principal.userID.lowercased)"

        var request = request
        let body = try await request.collectBody(upTo: routes.maxBodyBytes)
        let target = request.uri.query.map { "\(request.uri.path)?\($0)" } ?? request.uri.path
        let hash = IdempotencyKeys.requestHash(method: request.method.rawValue, path: target, body: body.readableBytesView)

        let token = UUID()
        switch try await keys.claim(caller: caller, key: key, requestHash: hash, token: token) {
        case .reused:
            throw APIProblem(
                status: .unprocessableContent, type: APIProblem.typeURI("idempotency-key-reused"), title: "Unprocessable Content",
                detail: "This Idempotency-Key was already used for a different request in the last 24 hours; use a new key for a new request.")
        case .inProgress:
            throw APIProblem(
                status: .conflict, type: APIProblem.typeURI("idempotency-key-in-progress"), title: "Conflict",
                detail: "A request with this Idempotency-Key is still being processed; retry once it has finished.")
        case .answerLost:
            throw APIProblem(
                status: .conflict, type: APIProblem.typeURI("idempotency-key-answer-lost"), title: "Conflict",
                detail: "The first request with this Idempotency-Key was carried out, but its answer was lost when the server handling it stopped. Read the resource to see the result; do not send the request again with a new key.")
        case .replay(let stored):
            var headers = HTTPFields()
            for (name, value) in stored.headers {
                if let name = HTTPField.Name(name) { headers[name] = value }
            }
            headers[.idempotentReplayed] = "true"
            return Response(
                status: HTTPResponse.Status(code: stored.status), headers: headers,
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: stored.body)))
        case .claimed:
            break
        }

        // The lease is renewed while the handler runs (a long request is not taken over), and every write
        // transaction of the handler checks the claim is still ours (ScopedDatabase.transaction).
        let renewal = Task { [keys] in
            while true {
                do { try await Task.sleep(for: keys.renewalInterval) } catch { return }
                do { try await keys.renew(caller: caller, key: key, token: token) } catch {
                    context.logger.warning("could not renew an idempotency claim", metadata: ["error": "\(error)"])
                }
            }
        }
        var response: Response
        let collector = BodyCollector()
        do {
            response = try await IdempotencyFence.$current.withValue(.init(caller: caller, key: key, token: token)) {
                var response: Response
                do {
                    response = try await next(request, context)
                } catch let error where Self.lostClaim(error) {
                    response = Self.takenOver.response(requestID: RequestInfo.current?.requestID)
                } catch {
                    response = ProblemMiddleware<Context>(routes: routes).problem(for: error, request: request, context: context)
                        .response(requestID: RequestInfo.current?.requestID)
                }
                // Inside the fence: a body written lazily is still this request's work.
                try await response.body.write(collector)
                return response
            }
        } catch {
            renewal.cancel()
            try? await keys.release(caller: caller, key: key, token: token)
            throw error
        }
        renewal.cancel()
        response.body = ResponseBody(byteBuffer: collector.buffer)

        if (200..<500).contains(response.status.code) {
            var headers: [String: String] = [:]
            for name in Self.replayedHeaders {
                if let value = response.headers[name] { headers[name.canonicalName] = value }
            }
            do {
                try await keys.complete(
                    caller: caller, key: key, token: token,
                    response: .init(status: response.status.code, headers: headers, body: Array(collector.buffer.readableBytesView)))
            } catch {
                // The claim stays; after `abandonedAfterSeconds` a retry may run again. Releasing it now would let
                // a retry repeat a change that has been made.
                context.logger.error("could not store an idempotent answer", metadata: ["error": "\(error)"])
            }
        } else {
            do {
                try await keys.release(caller: caller, key: key, token: token)
            } catch {
                context.logger.warning("could not release an idempotency key", metadata: ["error": "\(error)"])
            }
        }
        // Expired keys of every caller go now and then, so the table stays small without a scheduler.
        if Int.random(in: 0..<100) == 0 {
            do { try await keys.purgeExpired() } catch {
                context.logger.warning("could not purge expired idempotency keys", metadata: ["error": "\(error)"])
            }
        }
        return response
    }

    /// This run's claim was taken over by a retry after its lease lapsed: none of its writes committed.
    static var takenOver: APIProblem {
        APIProblem(
            status: .conflict, type: APIProblem.typeURI("idempotency-key-taken-over"), title: "Conflict",
            detail: "This request took so long that a retry with the same Idempotency-Key took over; nothing of this attempt was applied.")
    }

    static func lostClaim(_ error: any Error) -> Bool {
        error is IdempotencyFence.ClaimLost || (error as? ServerError)?.underlyingError is IdempotencyFence.ClaimLost
    }

    static func isValidKey(_ key: String) -> Bool {
        (1...255).contains(key.utf8.count) && key.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E }
    }

    /// `POST /v1/supplier-registrations` and `POST /v1/users/{user_id}/tokens`.
    static func answersWithSecret(_ path: String) -> Bool {
        let segments = path.split(separator: "/")
        return segments == ["v1", "supplier-registrations"]
            || (segments.count == 4 && segments[0] == "v1" && segments[1] == "users" && segments[3] == "tokens")
    }
}

/// Gathers a response body so that it can be both kept and sent.
private final class BodyCollector: ResponseBodyWriter, @unchecked Sendable {
    var buffer = ByteBuffer()

    func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        self.buffer.writeBuffer(&buffer)
    }

    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
