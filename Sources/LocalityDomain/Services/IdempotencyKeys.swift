import Crypto
public import Foundation
public import LocalityPostgres

/// Stored answers to POST requests sent with an `Idempotency-Key` (table `idempotency_key`, migration 0012).
///
/// Each step is a short transaction of its own, never the request's: the claim must be visible to a
/// concurrent repeat at once, and the answer must be kept even though the request's transaction has ended.
///
/// A claim is a lease (migration 0031): it holds for `lease` and the running request renews it (`renew`, every
/// `lease / 3`), so a claim whose instance died lapses within `lease` and a retry may take it over. The answer is
/// stored after the request's own transaction has committed, so a takeover alone could repeat a write whose
/// answer was lost. Two things make it safe: each claim carries a token, and every write transaction of the
/// claimed request marks the claim `applied_at` under the token, in that same transaction (`IdempotencyFence`,
/// run by `ScopedDatabase.transaction`). A takeover finding `applied_at` set never runs the request again
/// (`answerLost`); a run whose claim was taken over cannot commit a write any more (its fence finds another
/// token and the transaction rolls back).
public struct IdempotencyKeys: Sendable {
    /// How long an answer is kept.
    public static let lifetime: Duration = .seconds(24 * 3600)
    /// A claim made before leases (no `lease_expires_at`: an instance of an older release during a rolling
    /// upgrade) may be taken over after this long, as before.
    public static let abandonedAfterSeconds = 300
    /// How long a claim holds without renewal.
    public static let defaultLease: Duration = .seconds(10)

    public let pool: PGPool
    public let lease: Duration

    public init(pool: PGPool, lease: Duration = Self.defaultLease) {
        self.pool = pool
        self.lease = lease
    }

    /// How often the running request renews its claim.
    public var renewalInterval: Duration { lease / 3 }

    var leaseMilliseconds: Int {
        Int(lease.components.seconds) * 1000 + Int(lease.components.attoseconds / 1_000_000_000_000_000)
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
        /// The key is new (or expired, or its lease lapsed with nothing applied): this request runs under the
        /// token it passed and must then `complete` or `release`.
        case claimed
        /// An earlier run with this key committed its change, but its instance stopped before the answer was
        /// stored: the request must not run again, and its answer cannot be replayed.
        case answerLost
        /// The same request was answered before: replay this.
        case replay(StoredResponse)
        /// The key was used for a different request.
        case reused
        /// The first request with this key is still running.
        case inProgress
    }

    /// Claims `key` for `caller` under `token` (one per run of a request), or says why not.
    public func claim(caller: String, key: String, requestHash: Data, token: UUID = UUID()) async throws -> Claim {
        // A claim that disappears between the insert and the read (its request failed and released it) is
        // simply claimed again on the next turn.
        for _ in 0..<3 {
            let outcome: Claim? = try await pool.withTransaction(retry: .onConflict(), prelude: Self.context(caller)) { connection in
                // An expired answer no longer holds the key.
                try await connection.query("DELETE FROM idempotency_key WHERE caller = \(caller) AND key = \(key) AND expires_at <= now()")
                // ON CONFLICT waits for a concurrent claimer's transaction, so exactly one insert wins.
                let inserted = try await connection.query("""
                    INSERT INTO idempotency_key (caller, key, request_hash, expires_at, claim_token, lease_expires_at)
                    VALUES (\(caller), \(key), \(requestHash), now() + make_interval(secs => \(Int(Self.lifetime.components.seconds))),
                            \(token), now() + make_interval(secs => \(Double(leaseMilliseconds) / 1000)))
                    ON CONFLICT (caller, key) DO NOTHING
                    RETURNING 1
                    """)
                if inserted.first != nil { return .claimed }
                // Under the row lock: a run's fence (which sets applied_at with its write) has committed or not.
                guard let row = try await connection.query("""
                    SELECT request_hash, status, response_headers::text, response_body, applied_at IS NOT NULL,
                           coalesce(lease_expires_at, created_at + make_interval(secs => \(Self.abandonedAfterSeconds))) <= now()
                    FROM idempotency_key WHERE caller = \(caller) AND key = \(key)
                    FOR UPDATE
                    """).first
                else { return nil }
                let (hash, status, headers, body, applied, lapsed) = try row.decode(Data.self, Int?.self, String.self, Data.self, Bool.self, Bool.self)
                guard hash == requestHash else { return .reused }
                if let status {
                    let headerMap = (try? JSONDecoder().decode([String: String].self, from: Data(headers.utf8))) ?? [:]
                    return .replay(StoredResponse(status: status, headers: headerMap, body: [UInt8](body)))
                }
                guard lapsed else { return .inProgress }
                guard !applied else { return .answerLost }
                // The run holding it stopped renewing (its instance died) and changed nothing: take it over.
                // Its token goes, so should it still be alive, none of its writes can commit now.
                try await connection.query("""
                    UPDATE idempotency_key
                    SET claim_token = \(token), lease_expires_at = now() + make_interval(secs => \(Double(leaseMilliseconds) / 1000))
                    WHERE caller = \(caller) AND key = \(key)
                    """)
                return .claimed
            }
            if let outcome { return outcome }
        }
        return .inProgress
    }

    /// Extends a running request's claim by another `lease`; false when it is no longer this run's (taken over,
    /// released or answered).
    @discardableResult
    public func renew(caller: String, key: String, token: UUID) async throws -> Bool {
        try await pool.withTransaction(retry: .onConflict(), prelude: Self.context(caller)) { connection in
            try await connection.query("""
                UPDATE idempotency_key SET lease_expires_at = now() + make_interval(secs => \(Double(leaseMilliseconds) / 1000))
                WHERE caller = \(caller) AND key = \(key) AND claim_token = \(token) AND status IS NULL
                RETURNING 1
                """).first != nil
        }
    }

    /// Keeps the answer of a claimed request (a 2xx or a final 4xx); with `token`, only while the claim is that run's.
    public func complete(caller: String, key: String, token: UUID? = nil, response: StoredResponse) async throws {
        precondition((200..<500).contains(response.status), "only 2xx and 4xx answers are kept")
        let headers = String(decoding: (try? JSONEncoder().encode(response.headers)) ?? Data("{}".utf8), as: UTF8.self)
        try await pool.withTransaction(retry: .onConflict(), prelude: Self.context(caller)) { connection in
            try await connection.query("""
                UPDATE idempotency_key
                SET status = \(response.status), response_headers = \(headers)::jsonb, response_body = \(Data(response.body))
                WHERE caller = \(caller) AND key = \(key) AND status IS NULL AND (\(token)::uuid IS NULL OR claim_token = \(token))
                """)
        }
    }

    /// Gives the key up (the request failed with a 5xx, or never finished), so a retry runs again; with `token`,
    /// only while the claim is that run's, and never once a write of it was applied (then a retry must not run).
    public func release(caller: String, key: String, token: UUID? = nil) async throws {
        try await pool.withTransaction(retry: .onConflict(), prelude: Self.context(caller)) { connection in
            try await connection.query("""
                DELETE FROM idempotency_key
                WHERE caller = \(caller) AND key = \(key) AND status IS NULL
                  AND (\(token)::uuid IS NULL OR (claim_token = \(token) AND applied_at IS NULL))
                """)
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

/// The claim of the request running in this task, which each of its write transactions must still hold
/// (`IdempotencyKeys`). Set by the API's idempotency middleware around the handler.
public struct IdempotencyFence: Sendable {
    public let caller: String
    public let key: String
    public let token: UUID

    public init(caller: String, key: String, token: UUID) {
        self.caller = caller
        self.key = key
        self.token = token
    }

    @TaskLocal public static var current: IdempotencyFence?

    /// The claim was taken over by a retry (this run had stopped renewing it): nothing of this run may commit.
    public struct ClaimLost: Error, Sendable {}

    /// In the request's write transaction, just before it commits: marks the claim applied if it is still this
    /// run's (taking its row lock, so a concurrent takeover waits and then sees it), else throws and the
    /// transaction rolls back. The caller is stated for this transaction (the key's row-level security).
    func markApplied(on connection: PGConnection) async throws {
        try await connection.query(IdempotencyKeys.context(caller))
        let marked = try await connection.query("""
            UPDATE idempotency_key SET applied_at = coalesce(applied_at, now())
            WHERE caller = \(caller) AND key = \(key) AND claim_token = \(token) AND status IS NULL
            RETURNING 1
            """)
        guard marked.first != nil else { throw ClaimLost() }
    }
}
