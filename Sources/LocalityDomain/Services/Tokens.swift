import Crypto
public import Foundation
import LocalityPostgres

public struct APIToken: Sendable, Codable, Equatable {
    public var id: UUID
    public var userID: UUID
    public var prefix: String
    public var label: String
    public var createdAt: Date
    public var expiresAt: Date
    public var revokedAt: Date?
    public var lastUsedAt: Date?
}

/// A freshly issued token: the secret is shown once and never stored.
public struct IssuedToken: Sendable {
    public var token: APIToken
    public var secret: String
}

/// Bearer tokens: `lcm_<12 hex>_<43 base64url>`. The first part is a random public prefix used to find the
/// row; the rest is 256 bits of randomness. Only SHA-256 of the whole token is stored, and the stored hash
/// is compared in constant time.
public enum TokenFormat {
    public static let prefixLength = 16   // "lcm_" + 12 hex digits
    static let secretLength = 43          // 32 bytes in unpadded base64url

    public static func generate() -> (prefix: String, token: String) {
        var generator = SystemRandomNumberGenerator()
        let prefixBytes = (0..<6).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let secretBytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let prefix = "lcm_" + prefixBytes.map { String(format: "%02x", $0) }.joined()
        let secret = Data(secretBytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
        return (prefix, prefix + "_" + secret)
    }

    /// The prefix of a well-formed token, or nil.
    public static func prefix(of token: String) -> String? {
        let bytes = Array(token.utf8)
        guard bytes.count == prefixLength + 1 + secretLength, token.hasPrefix("lcm_"),
            bytes[prefixLength] == UInt8(ascii: "_"),
            bytes[4..<prefixLength].allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains($0) }),
            bytes[(prefixLength + 1)...].allSatisfy({ isBase64URL($0) })
        else { return nil }
        return String(decoding: bytes[0..<prefixLength], as: UTF8.self)
    }

    static func isBase64URL(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
            true
        default: false
        }
    }

    public static func hash(_ token: String) -> Data {
        Data(SHA256.hash(data: Data(token.utf8)))
    }

    /// Compares every byte whatever the first difference, so timing says nothing about the stored hash.
    public static func constantTimeEquals(_ lhs: Data, _ rhs: Data) -> Bool {
        guard lhs.count == rhs.count else { return false }
        var difference: UInt8 = 0
        for (a, b) in zip(lhs, rhs) { difference |= a ^ b }
        return difference == 0
    }
}

/// An authenticated caller: who they are and the scope their requests run in.
public struct Principal: Sendable {
    public var userID: UUID
    public var tokenID: UUID
    public var displayName: String
    public var email: String
    public var authorityID: UUID?
    public var supplierID: UUID?
    public var roles: Set<Role>
    public var boardIDs: [UUID]

    public func scope(requestID: String?) -> AccessScope {
        AccessScope(
            authorityID: authorityID, supplierID: supplierID, userID: userID, roles: roles, boardIDs: boardIDs,
            actor: "user:\(userID.lowercased)", requestID: requestID)
    }
}

public struct TokenService: Sendable {
    public let database: ScopedDatabase
    /// Principals of recent tokens (nil: every request asks the database).
    public let cache: AuthenticationCache?
    public static let defaultLifetime: TimeInterval = 90 * 24 * 3600
    public static let maxLifetime: TimeInterval = 366 * 24 * 3600

    public init(database: ScopedDatabase, cache: AuthenticationCache? = nil) {
        self.database = database
        self.cache = cache
    }

    static let findSQL = """
        SELECT token_id, token_hash, authority_id, supplier_id, user_id, display_name, email, roles, board_ids,
               last_used_at, expires_at FROM find_api_token($1)
        """
    static let touchSQL = "SELECT touch_api_token($1)"
    static let columns = "id, user_id, prefix, label, created_at, expires_at, revoked_at, last_used_at"

    /// Resolves a bearer token to its principal; nil for malformed, unknown, expired or revoked tokens and
    /// disabled users — the caller answers all of them with the same 401.
    public func authenticate(_ token: String) async throws -> Principal? {
        guard let prefix = TokenFormat.prefix(of: token) else { return nil }
        let presented = TokenFormat.hash(token)
        // The key is the hash of the whole presented token, so a hit is already an exact match.
        if let cache, let principal = cache.principal(forTokenHash: presented) { return principal }
        // Taken before the read: a change committed meanwhile keeps this answer out of the cache.
        let ticket = cache?.ticket()
        // A lost connection (a pooler or database restart) is simply tried again: the lookup only reads, and
        // recording the last use twice is harmless.
        let found = try await database.pool.withConnectionRerunIfLost { connection -> (Principal, Date)? in
            guard let row = try await connection.query(PGQuery(Self.findSQL, [prefix.pg])).first else { return nil }
            let (tokenID, storedHash, authorityID, supplierID, userID, displayName, email, roles, boardIDs, lastUsed) =
                try row.decode(UUID.self, Data.self, UUID?.self, UUID?.self, UUID.self, String.self, String.self,
                               [String].self, [UUID].self, Date?.self)
            let expiresAt = try row.decode(Date.self, at: 10)
            guard TokenFormat.constantTimeEquals(presented, storedHash) else { return nil }
            // Last use is recorded at most once a minute; with the cache, when the entry is next read from the
            // database (so within a minute plus the cache lifetime).
            if lastUsed.map({ Date().timeIntervalSince($0) > 60 }) ?? true {
                try await connection.query(PGQuery(Self.touchSQL, [tokenID.pg]))
            }
            let principal = Principal(
                userID: userID, tokenID: tokenID, displayName: displayName, email: email, authorityID: authorityID,
                supplierID: supplierID, roles: Set(try roles.map { try storedEnum($0, column: "role_assignment.role", as: Role.self) }), boardIDs: boardIDs)
            return (principal, expiresAt)
        }
        guard let found else { return nil }
        let (principal, expiresAt) = found
        if let cache, let ticket { cache.insert(principal, tokenHash: presented, expiresAt: expiresAt, ticket: ticket) }
        return principal
    }

    public func list(_ scope: AccessScope, userID: UUID) async throws -> [APIToken] {
        try scope.require(scope.isStaff && scope.hasAny(.authorityAdmin, .auditor), "list tokens")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await UserService.fetch(connection, id: userID)
            return try await connection.query("""
                SELECT \(unsafeSQL: Self.columns) FROM api_token WHERE user_id = \(userID) ORDER BY created_at, id
                """).map(Self.decode)
        }
    }

    /// Issues a token for a user of the caller's authority (or, from the CLI, any supplier user in its
    /// supplier scope).
    public func issue(_ scope: AccessScope, userID: UUID, label: String, expiresAt: Date?) async throws -> IssuedToken {
        try scope.require(scope.has(.authorityAdmin) || (scope.supplierID != nil && scope.userID == nil), "issue tokens")
        var validator = Validator()
        validator.text(label, "label", required: false, max: 200)
        if let expiresAt {
            validator.check(expiresAt > Date(), "expires_at", "must be in the future")
            validator.check(expiresAt < Date() + Self.maxLifetime, "expires_at", "must be within 366 days")
        }
        try validator.throwIfInvalid()
        let (prefix, plaintext) = TokenFormat.generate()
        let hash = TokenFormat.hash(plaintext)
        let expiry = expiresAt ?? Date() + Self.defaultLifetime
        return try await database.transaction(scope) { connection in
            let user = try await UserService.fetch(connection, id: userID)
            guard !user.disabled else { throw DomainError.conflict("The user is disabled; enable them before issuing a token.") }
            let token = try Self.decode(try await connection.query("""
                INSERT INTO api_token (authority_id, supplier_id, user_id, prefix, token_hash, label, expires_at)
                VALUES (\(user.authorityID), \(user.supplierID), \(userID), \(prefix), \(hash), \(label), \(expiry))
                RETURNING \(unsafeSQL: Self.columns)
                """).first!)
            try await AuditLog.record(connection, action: "token.issue", entityType: "api_token", entityID: token.id.lowercased,
                                      before: nil, after: token)
            return IssuedToken(token: token, secret: plaintext)
        }
    }

    public func revoke(_ scope: AccessScope, userID: UUID, tokenID: UUID) async throws -> APIToken {
        try scope.require(scope.has(.authorityAdmin) || (scope.supplierID != nil && scope.userID == nil), "revoke tokens")
        let revoked = try await database.transaction(scope) { connection in
            guard let row = try await connection.query("""
                SELECT \(unsafeSQL: Self.columns) FROM api_token WHERE id = \(tokenID) AND user_id = \(userID) FOR UPDATE
                """).first
            else { throw DomainError.notFound("token") }
            let before = try Self.decode(row)
            if before.revokedAt != nil { return before }
            let after = try Self.decode(try await connection.query("""
                UPDATE api_token SET revoked_at = now() WHERE id = \(tokenID) RETURNING \(unsafeSQL: Self.columns)
                """).first!)
            try await AuditLog.record(connection, action: "token.revoke", entityType: "api_token", entityID: tokenID.lowercased,
                                      before: before, after: after)
            return after
        }
        // This instance refuses the token from the next request on (the others when notified, migration 0019).
        cache?.invalidate(userID: userID)
        return revoked
    }

    static func decode(_ row: PGRow) throws -> APIToken {
        let (id, userID, prefix, label, createdAt, expiresAt, revokedAt, lastUsedAt) = try row.decode(
            UUID.self, UUID.self, String.self, String.self, Date.self, Date.self, Date?.self, Date?.self)
        return APIToken(id: id, userID: userID, prefix: prefix, label: label, createdAt: createdAt, expiresAt: expiresAt,
                        revokedAt: revokedAt, lastUsedAt: lastUsedAt)
    }
}
