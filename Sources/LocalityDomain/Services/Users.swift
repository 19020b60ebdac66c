public import Foundation
import LocalityPostgres

public struct RoleGrant: Sendable, Codable, Hashable {
    public var role: Role
    public var boardID: UUID?

    public init(role: Role, boardID: UUID? = nil) {
        self.role = role
        self.boardID = boardID
    }
}

public struct User: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID?
    public var supplierID: UUID?
    public var email: String
    public var displayName: String
    public var disabled: Bool
    public var roles: [RoleGrant]
    public var createdAt: Date
    public var updatedAt: Date
}

public struct UserDraft: Sendable {
    public var email: String
    public var displayName: String
    public var roles: [RoleGrant]

    public init(email: String, displayName: String, roles: [RoleGrant]) {
        self.email = email
        self.displayName = displayName
        self.roles = roles
    }
}

public struct UserChanges: Sendable {
    public var displayName: String?
    public var disabled: Bool?
    /// Replaces every role when given.
    public var roles: [RoleGrant]?

    public init(displayName: String? = nil, disabled: Bool? = nil, roles: [RoleGrant]? = nil) {
        self.displayName = displayName
        self.disabled = disabled
        self.roles = roles
    }
}

/// Staff of an authority: authority admins manage them; auditors read them; everyone reads themself.
public struct UserService: Sendable {
    public let database: ScopedDatabase
    /// Dropped entries of a changed user, so this instance sees the change on the next request.
    public let authenticationCache: AuthenticationCache?

    public init(database: ScopedDatabase, authenticationCache: AuthenticationCache? = nil) {
        self.database = database
        self.authenticationCache = authenticationCache
    }

    static let selectSQL = """
        SELECT u.id, u.authority_id, u.supplier_id, u.email, u.display_name, u.disabled_at IS NOT NULL, u.created_at,
               u.updated_at,
               coalesce((SELECT array_agg(r.role::text || ':' || coalesce(r.board_id::text, '') ORDER BY r.role, r.board_id)
                         FROM role_assignment r WHERE r.authority_id = u.authority_id AND r.user_id = u.id), '{}')
        FROM app_user u
        """

    public func list(_ scope: AccessScope, page: PageRequest) async throws -> Page<User> {
        try scope.require(scope.isStaff && scope.hasAny(.authorityAdmin, .auditor), "list users")
        let afterEmail = page.after?.first ?? ""
        let afterID = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? .zero
        let users = try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                \(unsafeSQL: Self.selectSQL)
                WHERE u.authority_id = app_authority_id() AND (u.email, u.id) > (\(afterEmail), \(afterID))
                ORDER BY u.email, u.id LIMIT \(page.limit + 1)
                """).map(Self.decode)
        }
        return page.page(users) { [$0.email, $0.id.uuidString] }
    }

    public func get(_ scope: AccessScope, id: UUID) async throws -> User {
        try scope.require(scope.isStaff, "see users")
        guard scope.hasAny(.authorityAdmin, .auditor) || scope.userID == id else { throw DomainError.notFound("user") }
        return try await database.transaction(scope, readOnly: true) { connection in
            try await Self.fetch(connection, id: id)
        }
    }

    public func create(_ scope: AccessScope, _ draft: UserDraft) async throws -> User {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "create users")
        try Self.validate(email: draft.email, displayName: draft.displayName, roles: draft.roles)
        return try await database.transaction(scope) { connection in
            let id = try await connection.query("""
                INSERT INTO app_user (authority_id, email, display_name)
                VALUES (app_authority_id(), \(draft.email), \(draft.displayName)) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            try await Self.replaceRoles(connection, userID: id, roles: draft.roles)
            let user = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "user.create", entityType: "user", entityID: id.lowercased,
                                      before: nil, after: user)
            return user
        }
    }

    public func update(_ scope: AccessScope, id: UUID, _ changes: UserChanges) async throws -> User {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "edit users")
        if let roles = changes.roles { try Self.validate(email: nil, displayName: changes.displayName, roles: roles) }
        else { try Self.validate(email: nil, displayName: changes.displayName, roles: nil) }
        if changes.disabled == true && id == scope.userID {
            throw DomainError.invalid("disabled", "you cannot disable yourself")
        }
        let updated = try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            try await connection.query("""
                UPDATE app_user SET display_name = coalesce(\(changes.displayName), display_name),
                    disabled_at = CASE WHEN \(changes.disabled)::boolean IS NULL THEN disabled_at
                                       WHEN \(changes.disabled)::boolean THEN coalesce(disabled_at, now()) ELSE NULL END
                WHERE id = \(id)
                """)
            if let roles = changes.roles {
                try await connection.query("DELETE FROM role_assignment WHERE user_id = \(id)")
                try await Self.replaceRoles(connection, userID: id, roles: roles)
            }
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: changes.disabled == true && !before.disabled ? "user.disable" : "user.update",
                                      entityType: "user", entityID: id.lowercased, before: before, after: after)
            return after
        }
        // Disabled, renamed or given other roles: this instance's cached principal is stale (the others hear
        // it from the notification, migration 0019).
        authenticationCache?.invalidate(userID: id)
        return updated
    }

    static func replaceRoles(_ connection: PGConnection, userID: UUID, roles: [RoleGrant]) async throws {
        for grant in Set(roles) {
            try await connection.query("""
                INSERT INTO role_assignment (authority_id, user_id, role, board_id)
                VALUES (app_authority_id(), \(userID), \(grant.role.rawValue)::user_role, \(grant.boardID))
                """)
        }
    }

    static func fetch(_ connection: PGConnection, id: UUID, forUpdate: Bool = false) async throws -> User {
        let rows = try await connection.query("""
            \(unsafeSQL: selectSQL) WHERE u.id = \(id) \(unsafeSQL: forUpdate ? "FOR UPDATE OF u" : "")
            """)
        guard let row = rows.first else { throw DomainError.notFound("user") }
        return try decode(row)
    }

    static func validate(email: String?, displayName: String?, roles: [RoleGrant]?) throws {
        var validator = Validator()
        if let email {
            validator.check(isEmail(email), "email", "must be an email address")
        }
        if let displayName { validator.text(displayName, "display_name", max: 200) }
        if let roles {
            validator.check(!roles.isEmpty, "roles", "must name at least one role")
            for (index, grant) in roles.enumerated() {
                validator.check(grant.role != .supplierUser, "roles[\(index)].role",
                                "supplier users belong to supplier organisations, not authorities")
                if grant.role.isBoardScoped {
                    validator.check(grant.boardID != nil, "roles[\(index)].board_id", "is required for \(grant.role.rawValue)")
                } else if grant.role != .supplierUser {
                    validator.check(grant.boardID == nil, "roles[\(index)].board_id",
                                    "must be absent: \(grant.role.rawValue) covers the whole authority")
                }
            }
            validator.check(roles.filter { $0.role == .boardMember }.count <= 1, "roles", "a board member sits on exactly one board")
        }
        try validator.throwIfInvalid()
    }

    static func decode(_ row: PGRow) throws -> User {
        let (id, authorityID, supplierID, email, displayName, disabled, createdAt, updatedAt, grants) = try row.decode(
            UUID.self, UUID?.self, UUID?.self, String.self, String.self, Bool.self, Date.self, Date.self, [String].self)
        let roles = grants.compactMap { text -> RoleGrant? in
            let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let role = parts.first.flatMap({ Role(rawValue: String($0)) }) else { return nil }
            return RoleGrant(role: role, boardID: parts.count > 1 ? UUID(uuidString: String(parts[1])) : nil)
        }
        return User(id: id, authorityID: authorityID, supplierID: supplierID, email: email, displayName: displayName,
                    disabled: disabled, roles: supplierID != nil ? [RoleGrant(role: .supplierUser)] : roles,
                    createdAt: createdAt, updatedAt: updatedAt)
    }
}
