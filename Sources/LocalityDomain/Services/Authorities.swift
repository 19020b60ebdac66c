public import Foundation
import LocalityPostgres

public struct Authority: Sendable, Codable, Equatable {
    public var id: UUID
    public var slug: String
    public var name: String
    public var createdAt: Date
}

public struct FundingStream: Sendable, Codable, Equatable {
    public var id: UUID
    public var code: String
    public var name: String
}

/// Authorities are created by the platform operator (CLI only); each starts with the two funding streams
/// every locality board has.
public struct AuthorityService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    public static let defaultFundingStreams = [
        (code: "locality", name: "Locality budget"),
        (code: "school_improvement", name: "School improvement"),
    ]

    public func create(slug: String, name: String, osUser: String = OperatorIdentity.osUser) async throws -> Authority {
        var validator = Validator()
        validator.check(slug.isWholeMatch(of: "^[a-z0-9][a-z0-9-]{1,62}$"), "slug",
                        "must be 2–63 lowercase letters, digits or hyphens")
        validator.text(name, "name", max: 200)
        try validator.throwIfInvalid()
        let id = UUID()
        let scope = AccessScope.operatorScope(authorityID: id, osUser: osUser)
        return try await database.transaction(scope) { connection in
            let row = try await connection.query("""
                INSERT INTO authority (id, slug, name) VALUES (\(id), \(slug), \(name))
                RETURNING id, slug, name, created_at
                """).first!
            let authority = try Self.decode(row)
            try await AuditLog.record(connection, action: "authority.create", entityType: "authority",
                                      entityID: id.uuidString.lowercased(), before: nil, after: authority)
            for stream in Self.defaultFundingStreams {
                let created = try await connection.query("""
                    INSERT INTO funding_stream (authority_id, code, name) VALUES (\(id), \(stream.code), \(stream.name))
                    RETURNING id, code, name
                    """).first!
                let fundingStream = try FundingStreamService.decode(created)
                try await AuditLog.record(connection, action: "funding_stream.create", entityType: "funding_stream",
                                          entityID: fundingStream.id.uuidString.lowercased(), before: nil, after: fundingStream)
            }
            try await CatalogueService.seedDefaultMeasures(connection)
            return authority
        }
    }

    public struct Settings: Sendable, Codable, Equatable {
        public var clarificationCutoffHours: Int
        public var standstillWorkingDays: Int
    }

    /// The operator's per-authority settings: how long before a bid deadline clarification questions close,
    /// and the standstill period between award and contract start, in working days.
    public func configure(_ authority: Authority, clarificationCutoffHours: Int?, standstillWorkingDays: Int?,
                          osUser: String = OperatorIdentity.osUser) async throws -> Settings {
        var validator = Validator()
        if let hours = clarificationCutoffHours { validator.check((0...720).contains(hours), "clarification_cutoff_hours", "must be 0–720") }
        if let days = standstillWorkingDays { validator.check((0...30).contains(days), "standstill_working_days", "must be 0–30") }
        try validator.throwIfInvalid()
        return try await database.transaction(.operatorScope(authorityID: authority.id, osUser: osUser)) { connection in
            let read = "SELECT (extract(epoch FROM clarification_cutoff) / 3600)::int, standstill_working_days FROM authority WHERE id = app_authority_id()"
            let (hours, days) = try await connection.query(PGQuery(read)).first!.decode(Int.self, Int.self)
            let before = Settings(clarificationCutoffHours: hours, standstillWorkingDays: days)
            try await connection.query("""
                UPDATE authority SET clarification_cutoff = make_interval(hours => \(clarificationCutoffHours ?? hours)::int),
                                     standstill_working_days = \(standstillWorkingDays ?? days)
                WHERE id = app_authority_id()
                """)
            let after = Settings(clarificationCutoffHours: clarificationCutoffHours ?? hours, standstillWorkingDays: standstillWorkingDays ?? days)
            try await AuditLog.record(connection, action: "authority.configure", entityType: "authority", entityID: authority.id.lowercased,
                                      before: before, after: after)
            return after
        }
    }

    /// Every authority: the operator's view (the owner role only).
    public func list() async throws -> [Authority] {
        try await database.pool.withTransaction(readOnly: true) { connection in
            try await connection.query("SELECT id, slug, name, created_at FROM authority ORDER BY slug").map(Self.decode)
        }
    }

    /// Finds an authority by slug or id, for CLI arguments.
    public func find(_ slugOrID: String) async throws -> Authority {
        let all = try await list()
        let wanted = slugOrID.lowercased()
        guard let match = all.first(where: { $0.slug == wanted || $0.id.uuidString.lowercased() == wanted }) else {
            throw DomainError.notFound("authority \"\(slugOrID)\"")
        }
        return match
    }

    /// The authorities a caller may name: every one for a supplier (to seek admission), their own for staff; by name,
    /// a page at a time (a shared deployment may hold every council in England).
    public func directory(_ scope: AccessScope, page: PageRequest) async throws -> Page<Authority> {
        try scope.require(scope.isStaff || scope.supplierID != nil, "list authorities")
        let afterName = page.after?.first ?? ""
        let afterID = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? UUID.zero
        let rows = try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT id, slug, name, created_at FROM authority
                WHERE (name, id) > (\(afterName), \(afterID))
                ORDER BY name, id LIMIT \(page.limit + 1)
                """).map(Self.decode)
        }
        return page.page(rows) { [$0.name, $0.id.uuidString] }
    }

    /// One authority the caller may name, by slug or id (for `?authority=` filters), or nil.
    public func directoryEntry(_ scope: AccessScope, slugOrID: String) async throws -> Authority? {
        try scope.require(scope.isStaff || scope.supplierID != nil, "list authorities")
        let wanted = slugOrID.lowercased()
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT id, slug, name, created_at FROM authority WHERE slug = \(wanted) OR id::text = \(wanted)
                """).map(Self.decode).first
        }
    }

    /// The caller's own authority.
    public func current(_ scope: AccessScope) async throws -> Authority? {
        guard scope.authorityID != nil else { return nil }
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("SELECT id, slug, name, created_at FROM authority WHERE id = app_authority_id()")
                .first.map(Self.decode)
        }
    }

    static func decode(_ row: PGRow) throws -> Authority {
        let (id, slug, name, createdAt) = try row.decode(UUID.self, String.self, String.self, Date.self)
        return Authority(id: id, slug: slug, name: name, createdAt: createdAt)
    }
}

public struct FundingStreamService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    public func list(_ scope: AccessScope) async throws -> [FundingStream] {
        try scope.require(scope.isStaff, "see funding streams")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("SELECT id, code, name FROM funding_stream ORDER BY code").map(Self.decode)
        }
    }

    static func decode(_ row: PGRow) throws -> FundingStream {
        let (id, code, name) = try row.decode(UUID.self, String.self, String.self)
        return FundingStream(id: id, code: code, name: name)
    }
}
