public import Foundation
import LocalityPostgres

public struct Clarification: Sendable, Codable, Equatable {
    public var id: UUID
    public var projectID: UUID
    /// Only the board's LIMs, the auditor and the asker themself see who asked.
    public var supplierID: UUID?
    public var supplierName: String?
    public var question: String
    public var answer: String?
    public var askedAt: Date
    public var answeredAt: Date?
    public var publishedAt: Date?
}

/// Clarification questions: an admitted supplier asks privately (until the project's questions close);
/// the board's LIM answers and publishes, after which every admitted supplier sees question and answer
/// with the asker anonymised.
public struct ClarificationService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let selectSQL = """
        SELECT c.id, c.project_id, c.supplier_id, s.name, c.question, c.answer, c.asked_at, c.answered_at, c.published_at
        FROM clarification c LEFT JOIN supplier s ON s.id = c.supplier_id
        """

    public func ask(_ scope: AccessScope, projectID: UUID, question: String) async throws -> Clarification {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "ask clarification questions")
        var validator = Validator()
        validator.text(question, "question", max: 5000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID)
            let open = try await connection.query("""
                SELECT p.status = 'open' AND p.questions_close_at > statement_timestamp() FROM project p WHERE p.id = \(projectID)
                """).first?.decode(Bool.self, at: 0) ?? false
            guard open else { throw DomainError.conflict("Clarification questions for this project have closed.") }
            let id = try await connection.query("""
                INSERT INTO clarification (authority_id, project_id, supplier_id, question)
                VALUES (\(project.authorityID), \(projectID), app_supplier_id(), \(question)) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            let asked = try await Self.fetch(connection, id: id, scope: scope)
            try await AuditLog.record(connection, action: "clarification.ask", entityType: "clarification", entityID: id.lowercased,
                                      before: nil, after: asked)
            return asked
        }
    }

    /// What the caller may see of a project's questions.
    public func list(_ scope: AccessScope, projectID: UUID) async throws -> [Clarification] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see clarification questions")
        return try await database.transaction(scope, readOnly: true) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID)
            if scope.isStaff && !(scope.has(.auditor) || (scope.has(.lim) && scope.boardIDs.contains(project.boardID))) {
                // Other staff see the published questions, anonymised, like suppliers.
                return try await connection.query("""
                    \(unsafeSQL: Self.selectSQL) WHERE c.project_id = \(projectID) AND c.published_at IS NOT NULL ORDER BY c.asked_at, c.id
                    """).map { try Self.decode($0, scope: scope, revealAsker: false) }
            }
            return try await connection.query("""
                \(unsafeSQL: Self.selectSQL) WHERE c.project_id = \(projectID) ORDER BY c.asked_at, c.id
                """).map { try Self.decode($0, scope: scope, revealAsker: scope.isStaff) }
        }
    }

    public func answer(_ scope: AccessScope, projectID: UUID, id: UUID, answer: String, publish: Bool) async throws -> Clarification {
        try scope.require(scope.isStaff && scope.has(.lim), "answer clarification questions")
        var validator = Validator()
        validator.text(answer, "answer", max: 10_000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID)
            try ProjectService.requireOwnBoard(scope, project)
            guard let beforeRow = try await connection.query("""
                \(unsafeSQL: Self.selectSQL) WHERE c.id = \(id) AND c.project_id = \(projectID) FOR UPDATE OF c
                """).first
            else { throw DomainError.notFound("question") }
            let before = try Self.decode(beforeRow, scope: scope, revealAsker: true)
            if before.publishedAt != nil { throw DomainError.conflict("The answer is already published.") }
            try await connection.query("""
                UPDATE clarification SET answer = \(answer), answered_at = now(),
                    published_at = CASE WHEN \(publish) THEN now() END
                WHERE id = \(id) AND authority_id = app_authority_id()
                """)
            let after = try await Self.fetch(connection, id: id, scope: scope)
            try await AuditLog.record(connection, action: publish ? "clarification.publish" : "clarification.answer",
                                      entityType: "clarification", entityID: id.lowercased, before: before, after: after)
            return after
        }
    }

    static func fetch(_ connection: PGConnection, id: UUID, scope: AccessScope) async throws -> Clarification {
        guard let row = try await connection.query("\(unsafeSQL: selectSQL) WHERE c.id = \(id)").first else {
            throw DomainError.notFound("question")
        }
        return try decode(row, scope: scope, revealAsker: scope.isStaff)
    }

    static func decode(_ row: PGRow, scope: AccessScope, revealAsker: Bool) throws -> Clarification {
        let (id, projectID, supplierID, supplierName, question, answer, askedAt, answeredAt, publishedAt) = try row.decode(
            UUID.self, UUID.self, UUID.self, String?.self, String.self, String?.self, Date.self, Date?.self, Date?.self)
        let own = supplierID == scope.supplierID
        let reveal = revealAsker || own
        // A supplier sees an answer to someone else's question only once it is published.
        let showAnswer = scope.isStaff || own || publishedAt != nil
        return Clarification(id: id, projectID: projectID, supplierID: reveal ? supplierID : nil, supplierName: reveal ? supplierName : nil,
                             question: question, answer: showAnswer ? answer : nil, askedAt: askedAt,
                             answeredAt: showAnswer ? answeredAt : nil, publishedAt: publishedAt)
    }
}
