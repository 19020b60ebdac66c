public import Foundation

/// What a person may do. Staff roles belong to one authority; `supplierUser` to one supplier organisation.
public enum Role: String, Sendable, CaseIterable, Codable, Comparable {
    case authorityAdmin = "authority_admin"
    case hosi
    case lim
    case boardMember = "board_member"
    case supplierUser = "supplier_user"
    case auditor

    /// Roles scoped to particular boards (the others see every board of their authority).
    public var isBoardScoped: Bool { self == .lim || self == .boardMember }

    public static func < (lhs: Role, rhs: Role) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// Who is acting and over what: the service checks it per operation, and every transaction hands it to
/// PostgreSQL (`app.*` settings) so that row-level security enforces the same scope.
public struct AccessScope: Sendable, Equatable {
    public var authorityID: UUID?
    public var supplierID: UUID?
    public var userID: UUID?
    public var roles: Set<Role>
    /// Boards a LIM or board member is assigned to.
    public var boardIDs: [UUID]
    /// Recorded on audit events and ledger entries: `user:<id>` or `cli:<os user>`.
    public var actor: String
    public var requestID: String?

    public init(
        authorityID: UUID?, supplierID: UUID? = nil, userID: UUID?, roles: Set<Role>, boardIDs: [UUID],
        actor: String, requestID: String? = nil
    ) {
        self.authorityID = authorityID
        self.supplierID = supplierID
        self.userID = userID
        self.roles = roles
        self.boardIDs = boardIDs
        self.actor = actor
        self.requestID = requestID
    }

    /// The platform operator working on one authority from the CLI: its admin and auditor rights, acting
    /// as `cli:<os user>`.
    public static func operatorScope(authorityID: UUID, osUser: String = OperatorIdentity.osUser) -> AccessScope {
        AccessScope(
            authorityID: authorityID, userID: nil, roles: [.authorityAdmin, .auditor], boardIDs: [],
            actor: "cli:\(osUser)")
    }

    /// The platform operator acting for one supplier organisation (creating it and its first users).
    public static func operatorScope(supplierID: UUID, osUser: String = OperatorIdentity.osUser) -> AccessScope {
        AccessScope(
            authorityID: nil, supplierID: supplierID, userID: nil, roles: [], boardIDs: [],
            actor: "cli:\(osUser)")
    }

    public func has(_ role: Role) -> Bool { roles.contains(role) }

    public func hasAny(_ wanted: Role...) -> Bool { wanted.contains(where: roles.contains) }

    /// Authority-wide roles see every board; LIMs and board members only their own.
    public var seesAllBoards: Bool { hasAny(.authorityAdmin, .hosi, .auditor) }

    public var isStaff: Bool { authorityID != nil }

    public func canSee(board: UUID) -> Bool { isStaff && (seesAllBoards || boardIDs.contains(board)) }

    /// Deny by default: throws `forbidden` unless `allowed`.
    public func require(_ allowed: Bool, _ what: @autoclosure () -> String) throws {
        if !allowed { throw DomainError.forbidden("Your role does not allow you to \(what()).") }
    }
}

/// The operating-system user running the CLI, for `cli:<user>` audit actors.
public enum OperatorIdentity {
    public static var osUser: String {
        if let user = ProcessInfo.processInfo.environment["SUDO_USER"], !user.isEmpty { return user }
        if let user = ProcessInfo.processInfo.environment["USER"], !user.isEmpty { return user }
        return String(getuid())
    }
}
