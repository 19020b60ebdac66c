public import Foundation
import LocalityPostgres

public struct Board: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID
    public var name: String
    public var shortCode: String
    public var area: String
    public var chair: String
    public var createdAt: Date
    public var updatedAt: Date
}

public struct BoardDraft: Sendable {
    public var name: String
    public var shortCode: String
    public var area: String
    public var chair: String

    public init(name: String, shortCode: String, area: String = "", chair: String = "") {
        self.name = name
        self.shortCode = shortCode
        self.area = area
        self.chair = chair
    }
}

public struct BoardChanges: Sendable {
    public var name: String?
    public var shortCode: String?
    public var area: String?
    public var chair: String?

    public init(name: String? = nil, shortCode: String? = nil, area: String? = nil, chair: String? = nil) {
        self.name = name
        self.shortCode = shortCode
        self.area = area
        self.chair = chair
    }
}

/// Locality boards: every staff role reads the boards it is scoped to; authority admins create and edit.
public struct BoardService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let columns = "id, authority_id, name, short_code, area, chair, created_at, updated_at"

    public func list(_ scope: AccessScope, page: PageRequest) async throws -> Page<Board> {
        try scope.require(scope.isStaff, "list boards")
        let afterName = page.after?.first ?? ""
        let afterID = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? UUID.zero
        let rows = try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT \(unsafeSQL: Self.columns) FROM board
                WHERE (name, id) > (\(afterName), \(afterID))
                ORDER BY name, id LIMIT \(page.limit + 1)
                """).map(Self.decode)
        }
        return page.page(rows) { [$0.name, $0.id.uuidString] }
    }

    public func get(_ scope: AccessScope, id: UUID) async throws -> Board {
        try scope.require(scope.isStaff, "see boards")
        guard scope.canSee(board: id) else { throw DomainError.notFound("board") }
        // One round trip: context and row together.
        guard let row = try await database.read(scope, Self.fetchQuery(id: id)).first else { throw DomainError.notFound("board") }
        return try Self.decode(row)
    }

    public func create(_ scope: AccessScope, _ draft: BoardDraft) async throws -> Board {
        try scope.require(scope.has(.authorityAdmin), "create boards")
        try Self.validate(name: draft.name, shortCode: draft.shortCode, area: draft.area, chair: draft.chair)
        return try await database.transaction(scope) { connection in
            let board = try Self.decode(try await connection.query("""
                INSERT INTO board (authority_id, name, short_code, area, chair)
                VALUES (app_authority_id(), \(draft.name), \(draft.shortCode), \(draft.area), \(draft.chair))
                RETURNING \(unsafeSQL: Self.columns)
                """).first!)
            try await AuditLog.record(connection, action: "board.create", entityType: "board",
                                      entityID: board.id.uuidString.lowercased(), before: nil, after: board)
            return board
        }
    }

    public func update(_ scope: AccessScope, id: UUID, _ changes: BoardChanges) async throws -> Board {
        try scope.require(scope.has(.authorityAdmin), "edit boards")
        try Self.validate(name: changes.name, shortCode: changes.shortCode, area: changes.area, chair: changes.chair)
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            let after = try Self.decode(try await connection.query("""
                UPDATE board SET name = coalesce(\(changes.name), name), short_code = coalesce(\(changes.shortCode), short_code),
                                 area = coalesce(\(changes.area), area), chair = coalesce(\(changes.chair), chair)
                WHERE id = \(id) RETURNING \(unsafeSQL: Self.columns)
                """).first!)
            try await AuditLog.record(connection, action: "board.update", entityType: "board",
                                      entityID: id.uuidString.lowercased(), before: before, after: after)
            return after
        }
    }

    static func fetchQuery(id: UUID, forUpdate: Bool = false) -> PGQuery {
        """
        SELECT \(unsafeSQL: columns) FROM board WHERE id = \(id) \(unsafeSQL: forUpdate ? "FOR UPDATE" : "")
        """
    }

    static func fetch(_ connection: PGConnection, id: UUID, forUpdate: Bool = false) async throws -> Board {
        let rows = try await connection.query(fetchQuery(id: id, forUpdate: forUpdate))
        guard let row = rows.first else { throw DomainError.notFound("board") }
        return try decode(row)
    }

    static func validate(name: String?, shortCode: String?, area: String?, chair: String?) throws {
        var validator = Validator()
        validator.text(name, "name", required: false, max: 200)
        if let name { validator.check(!name.trimmingCharacters(in: .whitespaces).isEmpty, "name", "must not be blank") }
        if let shortCode {
            validator.check(shortCode.isWholeMatch(of: "^[A-Z0-9]{2,10}$"), "short_code",
                            "must be 2–10 capital letters or digits")
        }
        validator.text(area, "area", required: false, max: 500)
        validator.text(chair, "chair", required: false, max: 200)
        try validator.throwIfInvalid()
    }

    static func decode(_ row: PGRow) throws -> Board {
        let (id, authorityID, name, shortCode, area, chair, createdAt, updatedAt) = try row.decode(
            UUID.self, UUID.self, String.self, String.self, String.self, String.self, Date.self, Date.self)
        return Board(id: id, authorityID: authorityID, name: name, shortCode: shortCode, area: area, chair: chair,
                     createdAt: createdAt, updatedAt: updatedAt)
    }
}
