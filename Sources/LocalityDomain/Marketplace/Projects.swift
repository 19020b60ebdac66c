public import Foundation
import LocalityPostgres

/// Price, quality and social-value weights (summing to 100, social value ≥ 10), with the quality and
/// social-value criteria whose weights sum to their part.
public struct EvaluationModel: Sendable, Codable, Equatable {
    public struct Criterion: Sendable, Codable, Equatable {
        public var name: String
        public var weight: Int

        public init(name: String, weight: Int) {
            self.name = name
            self.weight = weight
        }
    }

    public var priceWeight: Int
    public var qualityWeight: Int
    public var socialValueWeight: Int
    public var qualityCriteria: [Criterion]
    public var socialValueCriteria: [Criterion]

    public init(priceWeight: Int, qualityWeight: Int, socialValueWeight: Int, qualityCriteria: [Criterion], socialValueCriteria: [Criterion]) {
        self.priceWeight = priceWeight
        self.qualityWeight = qualityWeight
        self.socialValueWeight = socialValueWeight
        self.qualityCriteria = qualityCriteria
        self.socialValueCriteria = socialValueCriteria
    }

    func validate(into validator: inout Validator, field: String = "evaluation") {
        validator.check([priceWeight, qualityWeight, socialValueWeight].allSatisfy { (0...100).contains($0) }, field,
                        "weights must each be between 0 and 100")
        validator.check(priceWeight + qualityWeight + socialValueWeight == 100, field,
                        "price, quality and social-value weights must sum to 100")
        validator.check(socialValueWeight >= 10, "\(field).social_value_weight", "must be at least 10")
        validator.check(!qualityCriteria.isEmpty || qualityWeight == 0, "\(field).quality_criteria", "name at least one quality criterion")
        validator.check(qualityCriteria.map(\.weight).reduce(0, +) == qualityWeight, "\(field).quality_criteria",
                        "criterion weights must sum to the quality weight (\(qualityWeight))")
        validator.check(!socialValueCriteria.isEmpty, "\(field).social_value_criteria", "name at least one social-value criterion")
        validator.check(socialValueCriteria.map(\.weight).reduce(0, +) == socialValueWeight, "\(field).social_value_criteria",
                        "criterion weights must sum to the social-value weight (\(socialValueWeight))")
        for (index, criterion) in (qualityCriteria + socialValueCriteria).enumerated() {
            validator.check(!criterion.name.trimmingCharacters(in: .whitespaces).isEmpty && criterion.name.count <= 200,
                            "\(field).criteria[\(index)].name", "must be 1–200 characters")
            validator.check(criterion.weight > 0, "\(field).criteria[\(index)].weight", "must be positive")
        }
    }
}

public enum ProjectStatus: String, Sendable, Codable, CaseIterable {
    case draft, open, closed, awarded, cancelled, unsuccessful
}

public struct ProjectAmendment: Sendable, Codable, Equatable {
    public var id: UUID
    public var note: String
    public var oldDeadline: Date
    public var newDeadline: Date
    public var createdAt: Date
}

public struct Project: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID
    public var boardID: UUID
    public var themeID: UUID?
    public var fundingStream: String
    public var financialYear: String
    public var title: String
    public var description: String
    public var outcomesSought: String
    public var schoolURNs: [String]
    public var maxValuePence: Int?
    public var bidDeadline: Date?
    public var questionsCloseAt: Date?
    public var plannedStart: String?
    public var plannedEnd: String?
    public var contractManager: String
    public var evaluation: EvaluationModel?
    /// `closed` is derived: open, and the deadline has passed by the database clock.
    public var status: ProjectStatus
    public var statusReason: String?
    public var version: Int
    public var publishedAt: Date?
    public var createdAt: Date
    public var updatedAt: Date
    public var amendments: [ProjectAmendment]
    /// Whether `maxValuePence` includes VAT (the Procurement Act's thresholds do).
    public var valueIncludesVAT: Bool = true
    /// open (advertised to the admitted suppliers) or direct (a direct award).
    public var procurementMethod: String = "open"
}

/// The fields of a draft; nil leaves a field as it is.
public struct ProjectFields: Sendable {
    public var themeID: UUID?
    public var fundingStream: String?
    public var financialYear: String?
    public var title: String?
    public var description: String?
    public var outcomesSought: String?
    public var schoolURNs: [String]?
    public var maxValuePence: Int?
    public var bidDeadline: Date?
    public var plannedStart: String?
    public var plannedEnd: String?
    public var contractManager: String?
    public var evaluation: EvaluationModel?
    public var valueIncludesVAT: Bool?
    public var procurementMethod: String?

    public init(themeID: UUID? = nil, fundingStream: String? = nil, financialYear: String? = nil, title: String? = nil,
                description: String? = nil, outcomesSought: String? = nil, schoolURNs: [String]? = nil, maxValuePence: Int? = nil,
                bidDeadline: Date? = nil, plannedStart: String? = nil, plannedEnd: String? = nil, contractManager: String? = nil,
                evaluation: EvaluationModel? = nil, valueIncludesVAT: Bool? = nil, procurementMethod: String? = nil) {
        self.valueIncludesVAT = valueIncludesVAT
        self.procurementMethod = procurementMethod
        self.themeID = themeID
        self.fundingStream = fundingStream
        self.financialYear = financialYear
        self.title = title
        self.description = description
        self.outcomesSought = outcomesSought
        self.schoolURNs = schoolURNs
        self.maxValuePence = maxValuePence
        self.bidDeadline = bidDeadline
        self.plannedStart = plannedStart
        self.plannedEnd = plannedEnd
        self.contractManager = contractManager
        self.evaluation = evaluation
    }
}

public struct ProjectFilter: Sendable {
    public var authority: String?
    public var boardID: UUID?
    public var themeID: UUID?
    public var status: ProjectStatus?
    public var closingBefore: Date?
    public var minValuePence: Int?
    public var maxValuePence: Int?
    public var text: String?

    public init(authority: String? = nil, boardID: UUID? = nil, themeID: UUID? = nil, status: ProjectStatus? = nil,
                closingBefore: Date? = nil, minValuePence: Int? = nil, maxValuePence: Int? = nil, text: String? = nil) {
        self.authority = authority
        self.boardID = boardID
        self.themeID = themeID
        self.status = status
        self.closingBefore = closingBefore
        self.minValuePence = minValuePence
        self.maxValuePence = maxValuePence
        self.text = text
    }
}

/// Projects (opportunities): a LIM drafts one for a board, publishes it (earmarking its maximum value), may
/// amend it to extend the deadline, cancel it or, once closed, mark it unsuccessful (releasing the earmark).
public struct ProjectService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let selectSQL = """
        SELECT p.id, p.authority_id, p.board_id, p.theme_id,
               (SELECT s.code FROM funding_stream s WHERE s.authority_id = p.authority_id AND s.id = p.funding_stream_id),
               p.financial_year, p.title, p.description,
               p.outcomes_sought, p.school_urns, p.max_value_pence, p.bid_deadline, p.questions_close_at,
               p.planned_start::text, p.planned_end::text, p.contract_manager, p.evaluation::text,
               CASE WHEN p.status = 'open' AND p.bid_deadline <= statement_timestamp() THEN 'closed' ELSE p.status::text END,
               p.status_reason, p.version, p.published_at, p.created_at, p.updated_at,
               coalesce((SELECT jsonb_agg(jsonb_build_object('id', a.id, 'note', a.note, 'old_deadline', a.old_deadline,
                                                             'new_deadline', a.new_deadline, 'created_at', a.created_at)
                                          ORDER BY a.created_at)
                         FROM project_amendment a WHERE a.authority_id = p.authority_id AND a.project_id = p.id), '[]')::text,
               p.value_includes_vat, p.procurement_method
        FROM project p
        """

    // MARK: Reading

    public func get(_ scope: AccessScope, id: UUID) async throws -> Project {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see projects")
        // One round trip: context and row together.
        guard let row = try await database.read(scope, Self.fetchQuery(id: id)).first else { throw DomainError.notFound("project") }
        return try Self.decode(row)
    }

    /// Board staff: their boards' projects in every state, newest first, in one round trip. The authority is
    /// stated in the query as well as by row-level security, whose OR of policies (staff's, suppliers') no index
    /// serves; with bitmap scans off (`orderedScans`) PostgreSQL walks `project_listing` or `project_board` in
    /// order and stops at the page's end instead of sorting all of the authority's projects.
    public func list(_ scope: AccessScope, filter: ProjectFilter, page: PageRequest) async throws -> Page<Project> {
        try scope.require(scope.isStaff, "list projects (suppliers use opportunities)")
        let after = Self.createdCursor(page)
        // Planned with the values each time (PGQuery.plannedWithValues): a kept generic plan cannot drop the
        // filters left out.
        let projects = try await database.read(scope, ("""
            \(unsafeSQL: Self.selectSQL)
            WHERE p.authority_id = app_authority_id()
              AND (\(filter.boardID)::uuid IS NULL OR p.board_id = \(filter.boardID))
              AND (\(filter.status?.rawValue)::text IS NULL
                   OR (CASE WHEN p.status = 'open' AND p.bid_deadline <= statement_timestamp() THEN 'closed' ELSE p.status::text END) = \(filter.status?.rawValue))
              AND (\(filter.text)::text IS NULL OR p.search @@ websearch_to_tsquery('english', \(filter.text)))
              AND (p.created_at, p.id) < (\(after.0), \(after.1))
            ORDER BY p.created_at DESC, p.id DESC LIMIT \(page.limit + 1)
            """ as PGQuery).plannedWithValuesEachTime, orderedScans: true).map(Self.decode)
        return page.page(projects) { [PGDateFormat.string($0.createdAt), $0.id.uuidString] }
    }

    /// Supplier discovery: open projects of every authority that admitted the caller, soonest deadline first.
    public func opportunities(_ scope: AccessScope, filter: ProjectFilter, page: PageRequest) async throws -> Page<Project> {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "search opportunities")
        let afterDeadline = page.after?.first.flatMap(PGDateFormat.date) ?? Date(timeIntervalSince1970: 0)
        let afterID = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? .zero
        let projects = try await database.transaction(scope, readOnly: true) { connection in
            // Planned with the values each time (PGQuery.plannedWithValues): a kept generic plan cannot drop the
            // filters left out.
            try await connection.query(("""
                \(unsafeSQL: Self.selectSQL)
                JOIN authority au ON au.id = p.authority_id
                WHERE p.status = 'open' AND p.bid_deadline > statement_timestamp()
                  AND (\(filter.authority)::text IS NULL OR au.slug = \(filter.authority) OR au.id::text = \(filter.authority))
                  AND (\(filter.boardID)::uuid IS NULL OR p.board_id = \(filter.boardID))
                  AND (\(filter.themeID)::uuid IS NULL OR p.theme_id = \(filter.themeID))
                  AND (\(filter.closingBefore)::timestamptz IS NULL OR p.bid_deadline < \(filter.closingBefore))
                  AND (\(filter.minValuePence)::bigint IS NULL OR p.max_value_pence >= \(filter.minValuePence))
                  AND (\(filter.maxValuePence)::bigint IS NULL OR p.max_value_pence <= \(filter.maxValuePence))
                  AND (\(filter.text)::text IS NULL OR p.search @@ websearch_to_tsquery('english', \(filter.text)))
                  AND (p.bid_deadline, p.id) > (\(afterDeadline), \(afterID))
                ORDER BY p.bid_deadline, p.id LIMIT \(page.limit + 1)
                """ as PGQuery).plannedWithValuesEachTime).map(Self.decode)
        }
        return page.page(projects) { [PGDateFormat.string($0.bidDeadline ?? Date()), $0.id.uuidString] }
    }

    // MARK: Drafts

    public func create(_ scope: AccessScope, boardID: UUID, _ fields: ProjectFields) async throws -> Project {
        try scope.require(scope.isStaff && scope.has(.lim), "create projects")
        guard scope.boardIDs.contains(boardID) else {
            throw DomainError.invalid("board_id", "must be one of your boards")
        }
        try Self.validate(fields, creating: true)
        let year = fields.financialYear
            ?? fields.plannedStart.flatMap(CalendarDate.parse).map { FinancialYear.containing($0).description }
            ?? FinancialYear.containing(Date()).description
        return try await database.transaction(scope) { connection in
            let streamID = try await Self.fundingStreamID(connection, code: fields.fundingStream ?? "locality")
            if let themeID = fields.themeID { try await Self.requireActiveTheme(connection, themeID) }
            let id = try await connection.query("""
                INSERT INTO project (authority_id, board_id, theme_id, funding_stream_id, financial_year, title, description,
                                     outcomes_sought, school_urns, max_value_pence, bid_deadline, planned_start, planned_end,
                                     contract_manager, evaluation, created_by, value_includes_vat, procurement_method)
                VALUES (app_authority_id(), \(boardID), \(fields.themeID), \(streamID), \(year), \(fields.title ?? ""),
                        \(fields.description ?? ""), \(fields.outcomesSought ?? ""), \(fields.schoolURNs ?? []), \(fields.maxValuePence),
                        \(fields.bidDeadline), \(fields.plannedStart)::date, \(fields.plannedEnd)::date, \(fields.contractManager ?? ""),
                        \(try fields.evaluation.map(Self.json))::jsonb, app_user_id(), \(fields.valueIncludesVAT ?? true),
                        \(fields.procurementMethod ?? "open"))
                RETURNING id
                """).first!.decode(UUID.self, at: 0)
            let project = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "project.create", entityType: "project", entityID: id.lowercased,
                                      before: nil, after: project)
            return project
        }
    }

    /// Edits a draft. `expectedVersion` is the client's `If-Match`: a stale one is refused (412) so
    /// that concurrent editors never silently overwrite each other.
    public func update(_ scope: AccessScope, id: UUID, expectedVersion: Int, _ fields: ProjectFields) async throws -> Project {
        try scope.require(scope.isStaff && scope.has(.lim), "edit projects")
        try Self.validate(fields, creating: false)
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            try Self.requireOwnBoard(scope, before)
            guard before.status == .draft else {
                throw DomainError.conflict("Only drafts can be edited; a published project changes through amendments.")
            }
            guard before.version == expectedVersion else { throw DomainError.preconditionFailed(currentVersion: before.version) }
            let streamID: UUID? = try await fields.fundingStream.asyncMap { try await Self.fundingStreamID(connection, code: $0) }
            if let themeID = fields.themeID { try await Self.requireActiveTheme(connection, themeID) }
            try await connection.query("""
                UPDATE project SET
                    theme_id = coalesce(\(fields.themeID), theme_id), funding_stream_id = coalesce(\(streamID), funding_stream_id),
                    financial_year = coalesce(\(fields.financialYear), financial_year), title = coalesce(\(fields.title), title),
                    description = coalesce(\(fields.description), description),
                    outcomes_sought = coalesce(\(fields.outcomesSought), outcomes_sought),
                    school_urns = coalesce(\(fields.schoolURNs)::text[], school_urns),
                    max_value_pence = coalesce(\(fields.maxValuePence), max_value_pence),
                    bid_deadline = coalesce(\(fields.bidDeadline), bid_deadline),
                    planned_start = coalesce(\(fields.plannedStart)::date, planned_start),
                    planned_end = coalesce(\(fields.plannedEnd)::date, planned_end),
                    contract_manager = coalesce(\(fields.contractManager), contract_manager),
                    evaluation = coalesce(\(try fields.evaluation.map(Self.json))::jsonb, evaluation),
                    value_includes_vat = coalesce(\(fields.valueIncludesVAT), value_includes_vat),
                    procurement_method = coalesce(\(fields.procurementMethod), procurement_method),
                    version = version + 1
                WHERE id = \(id)
                """)
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "project.update", entityType: "project", entityID: id.lowercased,
                                      before: before, after: after)
            return after
        }
    }

    public func delete(_ scope: AccessScope, id: UUID) async throws {
        try scope.require(scope.isStaff && scope.has(.lim), "delete projects")
        try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            try Self.requireOwnBoard(scope, before)
            guard before.status == .draft else { throw DomainError.conflict("Only drafts can be deleted; cancel a published project.") }
            try await connection.query("DELETE FROM project WHERE id = \(id)")
            try await AuditLog.record(connection, action: "project.delete", entityType: "project", entityID: id.lowercased,
                                      before: before, after: nil)
        }
    }

    // MARK: Lifecycle

    /// Draft → open: checks completeness and a future deadline (database clock), then earmarks the
    /// maximum value in the board's budget — refused, with the shortfall, if it is not available.
    public func publish(_ scope: AccessScope, id: UUID) async throws -> Project {
        try scope.require(scope.isStaff && scope.has(.lim), "publish projects")
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            try Self.requireOwnBoard(scope, before)
            guard before.status == .draft else { throw DomainError.conflict("The project is \(before.status.rawValue), not a draft.") }
            try await Self.validateComplete(connection, before)
            let available = try await connection.query("""
                SELECT b.allocated_pence - b.earmarked_pence - b.committed_pence FROM budget_balance b
                JOIN project p ON p.authority_id = b.authority_id AND p.board_id = b.board_id
                     AND p.financial_year = b.financial_year AND p.funding_stream_id = b.funding_stream_id
                WHERE p.id = \(id)
                """).first?.decode(Int.self, at: 0) ?? 0
            let needed = before.maxValuePence ?? 0
            if available < needed {
                throw DomainError.insufficientFunds(
                    "Publishing earmarks \(Money.format(needed)) but the board's \(before.fundingStream) budget for \(before.financialYear) has \(Money.format(available)) available: short by \(Money.format(needed - available)).")
            }
            try await connection.query("""
                UPDATE project p SET status = 'open', published_at = statement_timestamp(), version = version + 1,
                    questions_close_at = p.bid_deadline - (SELECT clarification_cutoff FROM authority WHERE id = p.authority_id)
                WHERE p.id = \(id)
                """)
            try await Self.ledger(connection, before, kind: .earmark, reason: "Earmark for published project \(before.title)")
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "project.publish", entityType: "project", entityID: id.lowercased,
                                      before: before, after: after)
            try await OCDSReleaseKind.publish(connection, projectID: id, .tender)
            return after
        }
    }

    /// Open (or closed) → cancelled, with a reason; releases the earmark.
    public func cancel(_ scope: AccessScope, id: UUID, reason: String) async throws -> Project {
        try await end(scope, id: id, as: "cancelled", reason: reason, allowedFrom: [.open, .closed])
    }

    /// Closed → unsuccessful (no suitable bid, or none), with a reason; releases the earmark.
    public func markUnsuccessful(_ scope: AccessScope, id: UUID, reason: String) async throws -> Project {
        try await end(scope, id: id, as: "unsuccessful", reason: reason, allowedFrom: [.closed])
    }

    private func end(_ scope: AccessScope, id: UUID, as status: String, reason: String, allowedFrom: Set<ProjectStatus>) async throws -> Project {
        try scope.require(scope.isStaff && scope.has(.lim), "end projects")
        var validator = Validator()
        validator.text(reason, "reason", max: 2000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            try Self.requireOwnBoard(scope, before)
            guard allowedFrom.contains(before.status) else {
                throw DomainError.conflict("A project that is \(before.status.rawValue) cannot become \(status).")
            }
            try await connection.query("""
                UPDATE project SET status = \(status)::project_status, status_reason = \(reason), version = version + 1 WHERE id = \(id)
                """)
            try await Self.ledger(connection, before, kind: .release, reason: "Released: project \(status) — \(reason)")
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "project.\(status == "cancelled" ? "cancel" : "unsuccessful")",
                                      entityType: "project", entityID: id.lowercased, before: before, after: after)
            try await OCDSReleaseKind.publish(connection, projectID: id, .tenderCancellation)
            return after
        }
    }

    /// A note to every admitted supplier, optionally extending the deadline; only while bids are accepted.
    public func amend(_ scope: AccessScope, id: UUID, note: String, newDeadline: Date?) async throws -> Project {
        try scope.require(scope.isStaff && scope.has(.lim), "amend projects")
        var validator = Validator()
        validator.text(note, "note", max: 5000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: id, forUpdate: true)
            try Self.requireOwnBoard(scope, before)
            guard before.status == .open, let deadline = before.bidDeadline else {
                throw DomainError.conflict("Only an open project before its deadline can be amended.")
            }
            let target = newDeadline ?? deadline
            if target < deadline { throw DomainError.invalid("new_deadline", "may extend the deadline, never shorten it") }
            let amendmentID = try await connection.query("""
                INSERT INTO project_amendment (authority_id, project_id, note, old_deadline, new_deadline, created_by)
                VALUES (app_authority_id(), \(id), \(note), \(deadline), \(target), current_setting('app.actor'))
                RETURNING id
                """).first!.decode(UUID.self, at: 0)
            try await connection.query("""
                UPDATE project p SET bid_deadline = \(target), version = version + 1,
                    questions_close_at = \(target)::timestamptz - (SELECT clarification_cutoff FROM authority WHERE id = p.authority_id)
                WHERE p.id = \(id)
                """)
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "project.amend", entityType: "project", entityID: id.lowercased,
                                      before: before, after: after)
            try await OCDSReleaseKind.publish(connection, projectID: id, .tenderAmendment, ref: amendmentID)
            return after
        }
    }

    // MARK: Helpers

    static func ledger(_ connection: PGConnection, _ project: Project, kind: LedgerEntryKind, reason: String) async throws {
        try await connection.query("""
            INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason)
            SELECT p.authority_id, p.board_id, p.financial_year, p.funding_stream_id, \(kind.rawValue)::ledger_entry_kind,
                   p.max_value_pence, 'project:' || p.id, current_setting('app.actor'), \(String(reason.prefix(1000)))
            FROM project p WHERE p.id = \(project.id)
            """)
    }

    static func requireOwnBoard(_ scope: AccessScope, _ project: Project) throws {
        // Staff outside the board cannot see the project at all; others of the board may see but not act.
        guard scope.has(.lim) && scope.boardIDs.contains(project.boardID) else {
            throw DomainError.forbidden("Only the board's locality inclusion managers may change its projects.")
        }
    }

    static func fundingStreamID(_ connection: PGConnection, code: String) async throws -> UUID {
        guard let id = try await connection.query("SELECT id FROM funding_stream WHERE code = \(code)").first?.decode(UUID.self, at: 0) else {
            throw DomainError.invalid("funding_stream", "is not a funding stream of this authority")
        }
        return id
    }

    static func requireActiveTheme(_ connection: PGConnection, _ id: UUID) async throws {
        let active = try await connection.query("SELECT retired_at IS NULL FROM theme WHERE id = \(id)").first?.decode(Bool.self, at: 0)
        guard active == true else { throw DomainError.invalid("theme_id", "is not an active theme of this authority") }
    }

    static func validate(_ fields: ProjectFields, creating: Bool) throws {
        var validator = Validator()
        if creating || fields.title != nil { validator.text(fields.title, "title", max: 200) }
        validator.text(fields.description, "description", required: false, max: 20_000)
        validator.text(fields.outcomesSought, "outcomes_sought", required: false, max: 10_000)
        validator.text(fields.contractManager, "contract_manager", required: false, max: 200)
        if let method = fields.procurementMethod { validator.check(["open", "direct"].contains(method), "procurement_method", "must be open or direct") }
        if let year = fields.financialYear { validator.check(FinancialYear(year) != nil, "financial_year", "must be like 2025-26") }
        if let urns = fields.schoolURNs {
            validator.check(urns.count <= 500, "school_urns", "at most 500 schools")
            for (index, urn) in urns.enumerated() {
                validator.check(urn.isWholeMatch(of: "^[0-9]{6,7}$"), "school_urns[\(index)]",
                                "must be a 6–7 digit URN")
            }
        }
        if let value = fields.maxValuePence {
            validator.check(value > 0 && value <= BudgetService.maxAmountPence, "max_value_pence", "must be a positive number of pence")
        }
        let start = fields.plannedStart.map(CalendarDate.parse)
        let end = fields.plannedEnd.map(CalendarDate.parse)
        if let start { validator.check(start != nil, "planned_start", "must be a date (YYYY-MM-DD)") }
        if let end { validator.check(end != nil, "planned_end", "must be a date (YYYY-MM-DD)") }
        if let start = start ?? nil, let end = end ?? nil { validator.check(end >= start, "planned_end", "must not be before planned_start") }
        fields.evaluation?.validate(into: &validator)
        try validator.throwIfInvalid()
    }

    /// Everything a supplier needs before publishing; the deadline is checked against the database clock.
    static func validateComplete(_ connection: PGConnection, _ project: Project) async throws {
        var validator = Validator()
        validator.check(!project.title.isEmpty, "title", "is required to publish")
        validator.check(!project.description.isEmpty, "description", "is required to publish")
        validator.check(!project.outcomesSought.isEmpty, "outcomes_sought", "is required to publish")
        validator.check(project.themeID != nil, "theme_id", "is required to publish")
        validator.check(project.maxValuePence != nil, "max_value_pence", "is required to publish")
        validator.check(project.plannedStart != nil, "planned_start", "is required to publish")
        validator.check(project.plannedEnd != nil, "planned_end", "is required to publish")
        validator.check(!project.contractManager.isEmpty, "contract_manager", "is required to publish")
        if let evaluation = project.evaluation { evaluation.validate(into: &validator) }
        else { validator.check(false, "evaluation", "is required to publish") }
        if let deadline = project.bidDeadline {
            let future = try await connection.query("SELECT \(deadline)::timestamptz > statement_timestamp()").first!.decode(Bool.self, at: 0)
            validator.check(future, "bid_deadline", "must be in the future")
            if let start = project.plannedStart.flatMap(CalendarDate.parse) {
                validator.check(start >= Calendar.current.startOfDay(for: deadline) || start >= deadline, "planned_start",
                                "must not be before the bid deadline")
            }
        } else {
            validator.check(false, "bid_deadline", "is required to publish")
        }
        if let themeID = project.themeID {
            let active = try await connection.query("SELECT retired_at IS NULL FROM theme WHERE id = \(themeID)").first?.decode(Bool.self, at: 0)
            validator.check(active == true, "theme_id", "the theme has been retired")
        }
        try validator.throwIfInvalid()
    }

    static func fetchQuery(id: UUID, forUpdate: Bool = false) -> PGQuery {
        """
        \(unsafeSQL: selectSQL) WHERE p.id = \(id) \(unsafeSQL: forUpdate ? "FOR UPDATE OF p" : "")
        """
    }

    static func fetch(_ connection: PGConnection, id: UUID, forUpdate: Bool = false) async throws -> Project {
        let rows = try await connection.query(fetchQuery(id: id, forUpdate: forUpdate))
        guard let row = rows.first else { throw DomainError.notFound("project") }
        return try decode(row)
    }

    static func createdCursor(_ page: PageRequest) -> (Date, UUID) {
        let date = page.after?.first.flatMap(PGDateFormat.date) ?? Date.distantFuture
        let id = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? UUID(uuidString: "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF")!
        return (date, id)
    }

    static func json(_ value: some Encodable) throws -> String {
        String(decoding: try AuditLog.auditEncoder.encode(value), as: UTF8.self)
    }

    /// One for every row (a decoder's options are fixed once set, and decoding with it is thread-safe). Keys are
    /// spelt out by the stored shapes below rather than converted from snake case: on a page of projects
    /// Foundation's key conversion (split, capitalise, join and hash every key of every object) cost more than
    /// parsing the JSON.
    private static let rowJSONDecoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = PGDateFormat.date(text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad time \(text)"))
            }
            return date
        }
        return decoder
    }()

    /// `project.evaluation` as stored (`EvaluationModel` with snake-case keys).
    struct StoredEvaluationModel: Decodable {
        var model: EvaluationModel
        enum CodingKeys: String, CodingKey {
            case priceWeight = "price_weight", qualityWeight = "quality_weight", socialValueWeight = "social_value_weight"
            case qualityCriteria = "quality_criteria", socialValueCriteria = "social_value_criteria"
        }
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            model = EvaluationModel(
                priceWeight: try c.decode(Int.self, forKey: .priceWeight), qualityWeight: try c.decode(Int.self, forKey: .qualityWeight),
                socialValueWeight: try c.decode(Int.self, forKey: .socialValueWeight),
                qualityCriteria: try c.decode([EvaluationModel.Criterion].self, forKey: .qualityCriteria),
                socialValueCriteria: try c.decode([EvaluationModel.Criterion].self, forKey: .socialValueCriteria))
        }
    }

    /// The amendments `selectSQL` aggregates.
    struct StoredAmendment: Decodable {
        var id: UUID, note: String, oldDeadline: Date, newDeadline: Date, createdAt: Date
        enum CodingKeys: String, CodingKey {
            case id, note, oldDeadline = "old_deadline", newDeadline = "new_deadline", createdAt = "created_at"
        }
    }

    static func decode(_ row: PGRow) throws -> Project {
        let decoder = rowJSONDecoder
        let evaluationText = try row.decode(String?.self, at: 16)
        let amendmentsText = try row.decode(String.self, at: 23)
        return Project(
            id: try row.decode(UUID.self, at: 0), authorityID: try row.decode(UUID.self, at: 1), boardID: try row.decode(UUID.self, at: 2),
            themeID: try row.decode(UUID?.self, at: 3), fundingStream: try row.decode(String.self, at: 4),
            financialYear: try row.decode(String.self, at: 5), title: try row.decode(String.self, at: 6),
            description: try row.decode(String.self, at: 7), outcomesSought: try row.decode(String.self, at: 8),
            schoolURNs: try row.decode([String].self, at: 9), maxValuePence: try row.decode(Int?.self, at: 10),
            bidDeadline: try row.decode(Date?.self, at: 11), questionsCloseAt: try row.decode(Date?.self, at: 12),
            plannedStart: try row.decode(String?.self, at: 13), plannedEnd: try row.decode(String?.self, at: 14),
            contractManager: try row.decode(String.self, at: 15),
            evaluation: try evaluationText.map { try decoder.decode(StoredEvaluationModel.self, from: Data($0.utf8)).model },
            status: try storedEnum(try row.decode(String.self, at: 17), column: "project.status"),
            statusReason: try row.decode(String?.self, at: 18), version: try row.decode(Int.self, at: 19),
            publishedAt: try row.decode(Date?.self, at: 20), createdAt: try row.decode(Date.self, at: 21),
            updatedAt: try row.decode(Date.self, at: 22),
            // Most projects were never amended: no decoder for an empty list.
            amendments: amendmentsText == "[]" ? [] : try decoder.decode([StoredAmendment].self, from: Data(amendmentsText.utf8)).map {
                ProjectAmendment(id: $0.id, note: $0.note, oldDeadline: $0.oldDeadline, newDeadline: $0.newDeadline, createdAt: $0.createdAt)
            },
            valueIncludesVAT: try row.decode(Bool.self, at: 24), procurementMethod: try row.decode(String.self, at: 25))
    }
}

extension Optional {
    func asyncMap<T>(_ transform: (Wrapped) async throws -> T) async rethrows -> T? {
        guard let value = self else { return nil }
        return try await transform(value)
    }
}

/// Pence as pounds for messages: £1,234.56.
public enum Money {
    public static func format(_ pence: Int) -> String {
        let sign = pence < 0 ? "-" : ""
        let absolute = pence.magnitude
        let pounds = absolute / 100
        var digits = String(pounds)
        var grouped = ""
        while digits.count > 3 {
            grouped = "," + digits.suffix(3) + grouped
            digits.removeLast(3)
        }
        return "\(sign)£\(digits)\(grouped).\(String(format: "%02d", Int(absolute % 100)))"
    }
}
