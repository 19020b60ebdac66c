public import Foundation
import LocalityPostgres

public struct School: Sendable, Codable, Equatable {
    public var urn: Int
    public var name: String
    public var establishmentType: String
    public var phase: String
    public var status: String
    public var isOpen: Bool
    public var boardID: UUID?
    public var district: String
    public var postcode: String
    /// The open concern, when the caller may see it (authority-wide roles, or the school's board).
    public var concern: SchoolConcern?
}

public struct SchoolConcern: Sendable, Codable, Equatable {
    public var id: UUID
    public var category: String
    public var reason: String
    public var since: String
    public var clearedOn: String?
    public var clearReason: String?
}

public struct SchoolFilter: Sendable {
    public var boardID: UUID?
    public var phase: String?
    public var open: Bool?
    public var causingConcern: Bool?
    public var text: String?

    public init(boardID: UUID? = nil, phase: String? = nil, open: Bool? = nil, causingConcern: Bool? = nil, text: String? = nil) {
        self.boardID = boardID
        self.phase = phase
        self.open = open
        self.causingConcern = causingConcern
        self.text = text
    }
}

/// The school register and the Head of School Improvement's schools causing concern.
public struct SchoolService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let selectSQL = """
        SELECT s.urn, s.name, s.establishment_type, s.phase, s.status, s.is_open, s.board_id, s.district, s.postcode,
               c.id, c.category, c.reason, c.since::text
        FROM school s
        LEFT JOIN school_concern c ON c.authority_id = s.authority_id AND c.urn = s.urn AND c.cleared_on IS NULL
        """

    public func list(_ scope: AccessScope, filter: SchoolFilter, page: PageRequest) async throws -> Page<School> {
        try scope.require(scope.isStaff, "see schools")
        let afterName = page.after?.first ?? ""
        let afterURN = page.after?.dropFirst().first.flatMap { Int($0) } ?? 0
        let urn = filter.text.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        // Causing concern or not: a semi- or anti-join, not a comparison per row.
        let openConcern = "SELECT 1 FROM school_concern c WHERE c.authority_id = s.authority_id AND c.urn = s.urn AND c.cleared_on IS NULL"
        let concernFilter = filter.causingConcern.map { $0 ? "AND EXISTS (\(openConcern))" : "AND NOT EXISTS (\(openConcern))" } ?? ""
        // The page of schools first, then their open concerns: joined before the sort and limit, a name search
        // matching 3,000 of 25,000 schools looked up 3,000 concerns (each through its policy) to keep 51.
        // Planned with the values each time (PGQuery.plannedWithValues), so the filters left out drop out.
        //
        // A name search finds the page's keys first, walking `school_listing` (authority, name, urn) in order
        // with the authority stated (the policy's term too) and bitmap and sequential scans off (`orderedScans`):
        // the pattern is tested on the index's names without reading a row (an index-only scan), and only the
        // page's rows are read after. Otherwise PostgreSQL, estimating few matches, read every school of the
        // authority and sorted the matches (10 ms against 3 ms for 25,000 schools). The other filters read the rows
        // in the page query itself, by the plan PostgreSQL chooses: the keys-first shape made a page of schools
        // causing concern slower (2.7 → 4.7 ms).
        let nameSearch = filter.text != nil
        let (pageColumns, authorityTerm, order) = nameSearch
            ? ("s.authority_id, s.urn, s.name", "AND s.authority_id = (SELECT app_authority_id())", "s.authority_id, s.name, s.urn")
            : ("s.authority_id, s.urn, s.name, s.establishment_type, s.phase, s.status, s.is_open, s.board_id, s.district, s.postcode", "", "s.name, s.urn")
        let (rowsOfKeys, row) = nameSearch ? ("JOIN school r ON r.authority_id = k.authority_id AND r.urn = k.urn", "r") : ("", "k")
        let rowColumns = ["urn", "name", "establishment_type", "phase", "status", "is_open", "board_id", "district", "postcode"]
            .map { "\(row).\($0)" }.joined(separator: ", ")
        let schools = try await database.read(scope, ("""
            SELECT \(unsafeSQL: rowColumns), c.id, c.category, c.reason, c.since::text
            FROM (SELECT \(unsafeSQL: pageColumns)
                  FROM school s
                  WHERE (\(filter.boardID)::uuid IS NULL OR s.board_id = \(filter.boardID)) \(unsafeSQL: authorityTerm)
                    AND (\(filter.phase)::text IS NULL OR s.phase = \(filter.phase))
                    AND (\(filter.open)::boolean IS NULL OR s.is_open = \(filter.open))
                    \(unsafeSQL: concernFilter)
                    AND (\(filter.text)::text IS NULL OR s.urn = \(urn) OR s.name ILIKE '%' || \(filter.text) || '%')
                    AND (s.name, s.urn) > (\(afterName), \(afterURN))
                  ORDER BY \(unsafeSQL: order) LIMIT \(page.limit + 1)) k
            \(unsafeSQL: rowsOfKeys)
            LEFT JOIN school_concern c ON c.authority_id = k.authority_id AND c.urn = k.urn AND c.cleared_on IS NULL
            ORDER BY k.name, k.urn
            """ as PGQuery).plannedWithValuesEachTime, orderedScans: nameSearch)
            .map(Self.decode)
        return page.page(schools) { [$0.name, String($0.urn)] }
    }

    /// The HoSI marks a school as causing concern (one open concern per school).
    public func markConcern(_ scope: AccessScope, urn: Int, category: String, reason: String, since: String) async throws -> School {
        try scope.require(scope.isStaff && scope.has(.hosi), "mark schools causing concern")
        var validator = Validator()
        validator.text(reason, "reason", max: 4000)
        validator.check(CalendarDate.parse(since) != nil, "since", "must be a date (YYYY-MM-DD)")
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, urn: urn)
            guard try await connection.query("SELECT 1 FROM concern_category WHERE code = \(category)").first != nil else {
                throw DomainError.invalid("category", "is not a concern category of this authority")
            }
            // A concurrent mark may pass this check too: the unique index school_concern_open then refuses the
            // second, translated to the same 409 (ConstraintTranslation).
            if before.concern != nil {
                throw DomainError.stateConflict(type: "already-causing-concern", "The school is already causing concern; clear it first.")
            }
            try await connection.query("""
                INSERT INTO school_concern (authority_id, urn, category, reason, since, recorded_by)
                VALUES (app_authority_id(), \(urn), \(category), \(reason), \(since)::date, current_setting('app.actor'))
                """)
            let after = try await Self.fetch(connection, urn: urn)
            try await AuditLog.record(connection, action: "school.concern", entityType: "school", entityID: String(urn),
                                      before: before, after: after)
            return after
        }
    }

    public func clearConcern(_ scope: AccessScope, urn: Int, reason: String, on date: String) async throws -> School {
        try scope.require(scope.isStaff && scope.has(.hosi), "clear schools causing concern")
        var validator = Validator()
        validator.text(reason, "reason", max: 4000)
        validator.check(CalendarDate.parse(date) != nil, "cleared_on", "must be a date (YYYY-MM-DD)")
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, urn: urn)
            guard let concern = before.concern else { throw DomainError.conflict("The school is not causing concern.") }
            if date < concern.since { throw DomainError.invalid("cleared_on", "must not be before the concern began (\(concern.since))") }
            // Conditional, so that of two concurrent clears only one records its date and reason.
            let cleared = try await connection.query("""
                UPDATE school_concern SET cleared_on = \(date)::date, clear_reason = \(reason) WHERE id = \(concern.id) AND cleared_on IS NULL
                """).affectedRows
            guard cleared == 1 else { throw DomainError.stateConflict(type: "concern-cleared", "The concern was cleared at the same time.") }
            let after = try await Self.fetch(connection, urn: urn)
            try await AuditLog.record(connection, action: "school.concern_cleared", entityType: "school", entityID: String(urn),
                                      before: before, after: after)
            return after
        }
    }

    static func fetch(_ connection: PGConnection, urn: Int) async throws -> School {
        guard let row = try await connection.query("\(unsafeSQL: selectSQL) WHERE s.urn = \(urn)").first else {
            throw DomainError.notFound("school")
        }
        return try decode(row)
    }

    static func decode(_ row: PGRow) throws -> School {
        let (urn, name, type, phase, status, isOpen, boardID, district, postcode) = try row.decode(
            Int.self, String.self, String.self, String.self, String.self, Bool.self, UUID?.self, String.self, String.self)
        var concern: SchoolConcern?
        if let id = try row.decode(UUID?.self, at: 9) {
            concern = SchoolConcern(id: id, category: try row.decode(String.self, at: 10), reason: try row.decode(String.self, at: 11),
                                    since: try row.decode(String.self, at: 12), clearedOn: nil, clearReason: nil)
        }
        return School(urn: urn, name: name, establishmentType: type, phase: phase, status: status, isOpen: isOpen, boardID: boardID,
                      district: district, postcode: postcode, concern: concern)
    }
}
