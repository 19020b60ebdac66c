import Crypto
public import Foundation
public import LocalityPostgres

/// Stored answers to POST requests sent with an `Idempotency-Key` (table `idempotency_key`, migration 0012).
///
/// Each step is a short transaction of its own, never the request's: the claim must be visible to a
/// concurrent repeat at once, and the answer must be kept even though the request's transaction has ended.
public struct IdempotencyKeys: Sendable {
    /// How long an answer is kept.
    public static let lifetime: Duration = .seconds(24 * 3600)
    /// A claim older than this whose request never finished (its instance died) may be taken over. Far
    /// longer than any request may run (the pool's acquire timeout and the statement timeouts bound it).
    public static let abandonedAfterSeconds = 300

    public let pool: PGPool

    public init(pool: PGPool) {
        self.pool = pool
    }

    /// An answer as it is replayed: status, the headers that matter, body.
    public struct StoredResponse: Sendable, Equatable {
        public var status: Int
        public var headers: [String: String]
        public var body: [UInt8]

        public init(status: Int, headers: [String: String], body: [UInt8]) {
            self.status = status
            self.headers = headers
            self.body = body
        }
    }

    public enum Claim: Sendable, Equatable {
        /// The key is new (or expired, or abandoned): this request runs and must then `complete` or `release`.
        case claimed
        /// The same request was answered before: replay this.
        case replay(StoredResponse)
        /// The key was used for a different request.
        case reused
        /// The first request with this key is still running.
        case inProgress
    }

    /// Claims `key` for `caller`, or says why not.
    public func claim(caller: String, key: String, requestHash: Data) async throws -> Claim {
        // A claim that disappears between the insert and the read (its request failed and released it) is
        // simply claimed again on the next turn.
        for _ in 0..<3 {
            let outcome: Claim? = try await pool.withTransaction(prelude: Self.context(caller)) { connection in
                // An expired answer, or a claim whose instance died, no longer holds the key.
                try await connection.query("""
                    DELETE FROM idempotency_key
                    WHERE caller = \(caller) AND key = \(key)
                      AND (expires_at <= now()
                           OR (status IS NULL AND created_at < now() - make_interval(secs => \(Self.abandonedAfterSeconds))))
                    """)
                // ON CONFLICT waits for a concurrent claimer's transaction, so exactly one insert wins.
                let inserted = try await connection.query("""
                    INSERT INTO idempotency_key (caller, key, request_hash, expires_at)
                    VALUES (\(caller), \(key), \(requestHash), now() + make_interval(secs => \(Int(Self.lifetime.components.seconds))))
                    ON CONFLICT (caller, key) DO NOTHING
                    RETURNING 1
                    """)
                if inserted.first != nil { return .claimed }
                guard let row = try await connection.query("""
                    SELECT request_hash, status, response_headers::text, response_body
                    FROM idempotency_key WHERE caller = \(caller) AND key = \(key)
                    """).first
                else { return nil }
                let (hash, status, headers, body) = try row.decode(Data.self, Int?.self, String.self, Data.self)
                guard hash == requestHash else { return .reused }
                guard let status else { return .inProgress }
                let headerMap = (try? JSONDecoder().decode([String: String].self, from: Data(headers.utf8))) ?? [:]
                return .replay(StoredResponse(status: status, headers: headerMap, body: [UInt8](body)))
            }
            if let outcome { return outcome }
        }
        return .inProgress
    }

    /// Keeps the answer of a claimed request (a 2xx or a final 4xx).
    public func complete(caller: String, key: String, response: StoredResponse) async throws {
        precondition((200..<500).contains(response.status), "only 2xx and 4xx answers are kept")
        let headers = String(decoding: (try? JSONEncoder().encode(response.headers)) ?? Data("{}".utf8), as: UTF8.self)
        try await pool.withTransaction(prelude: Self.context(caller)) { connection in
            try await connection.query("""
                UPDATE idempotency_key
                SET status = \(response.status), response_headers = \(headers)::jsonb, response_body = \(Data(response.body))
                WHERE caller = \(caller) AND key = \(key) AND status IS NULL
                """)
        }
    }

    /// Gives the key up (the request failed with a 5xx, or never finished), so a retry runs again.
    public func release(caller: String, key: String) async throws {
        try await pool.withTransaction(prelude: Self.context(caller)) { connection in
            try await connection.query("DELETE FROM idempotency_key WHERE caller = \(caller) AND key = \(key) AND status IS NULL")
        }
    }

    /// Removes up to `limit` expired keys of every caller; returns how many went.
    @discardableResult
    public func purgeExpired(limit: Int = 1000) async throws -> Int {
        try await pool.withTransaction { connection in
            try await connection.query("SELECT purge_expired_idempotency_keys(\(limit)::integer)").first?.decode(Int.self, at: 0) ?? 0
        }
    }

    /// What "the same request" means: SHA-256 over the method, the path with its query, and the body bytes.
    public static func requestHash(method: String, path: String, body: some Sequence<UInt8>) -> Data {
        var hasher = SHA256()
        hasher.update(data: Data("\(method)\n\(path)\n".utf8))
        hasher.update(data: Data(body))
        return Data(hasher.finalize())
    }

    static func context(_ caller: String) -> PGQuery {
        "SELECT set_config('app.idempotency_caller', \(caller), true)"
    }
}
