public import Foundation
import LocalityPostgres

public struct SPIPPriority: Sendable, Codable, Equatable {
    public var id: UUID
    public var priority: String
    public var actions: [String]
    public var createdAt: Date
}

public struct SchoolContract: Sendable, Codable, Equatable {
    public struct Output: Sendable, Codable, Equatable {
        public var title: String
        public var summary: String
        public var submittedAt: Date
    }

    public struct Assessment: Sendable, Codable, Equatable {
        public var assessedOn: String
        public var progress: String
        public var note: String
    }

    public var id: UUID
    public var urn: Int
    public var supplierID: UUID
    public var supplierName: String
    public var service: String
    public var description: String
    public var valuePence: Int
    public var startDate: String
    public var endDate: String
    public var outputs: [Output]
    public var assessments: [Assessment]
}

public struct SPIP: Sendable, Codable, Equatable {
    public var school: School
    public var priorities: [SPIPPriority]
    public var contracts: [SchoolContract]
}

public struct SchoolContractDraft: Sendable {
    public var supplierID: UUID
    public var service: String
    public var description: String
    public var valuePence: Int
    public var financialYear: String
    public var startDate: String
    public var endDate: String

    public init(supplierID: UUID, service: String, description: String, valuePence: Int, financialYear: String, startDate: String, endDate: String) {
        self.supplierID = supplierID
        self.service = service
        self.description = description
        self.valuePence = valuePence
        self.financialYear = financialYear
        self.startDate = startDate
        self.endDate = endDate
    }
}

/// A school causing concern's improvement plan, and the HoSI's contracts recorded on it.
public struct SPIPService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    public static let services = ["interim_headteacher", "governance_audit", "curriculum_review", "safeguarding_review", "peer_review", "other"]

    public func get(_ scope: AccessScope, urn: Int) async throws -> SPIP {
        try scope.require(scope.isStaff, "see school improvement plans")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await Self.fetch(connection, urn: urn, scope: scope)
        }
    }

    /// School-improvement contracts the caller may see, newest first: a supplier's own (in every authority it
    /// works for, so it can submit outputs without knowing the school's plan), or, for staff, those on the plans
    /// of the schools they see (row-level security: the authority-wide roles see all, board staff their boards').
    public func listContracts(_ scope: AccessScope, page: PageRequest) async throws -> Page<SchoolContract> {
        try scope.require(scope.isStaff || (scope.has(.supplierUser) && scope.supplierID != nil), "see school contracts")
        let afterCreated = page.after?.first.flatMap(PGDateFormat.date) ?? Date.distantFuture
        // The first page starts after the greatest key: (far future, ffff…) in descending order.
        let afterID = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? UUID(uuidString: "ffffffff-ffff-ffff-ffff-ffffffffffff")!
        // One statement per page: each contract with its outputs and assessments aggregated beside it. The tenant is
        // stated in the query too (row-level security's OR of policies leaves the planner no index).
        let rows = try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT c.id, c.urn, c.supplier_id, s.name, c.service, c.description, c.value_pence, c.start_date::text, c.end_date::text,
                       c.created_at,
                       coalesce((SELECT json_agg(json_build_object('title', o.title, 'summary', o.summary, 'submitted_at', o.submitted_at)
                                                 ORDER BY o.submitted_at, o.id)
                                 FROM school_contract_output o WHERE o.authority_id = c.authority_id AND o.contract_id = c.id), '[]')::text,
                       coalesce((SELECT json_agg(json_build_object('assessed_on', a.assessed_on::text, 'progress', a.progress, 'note', a.note)
                                                 ORDER BY a.assessed_on, a.id)
                                 FROM school_contract_assessment a WHERE a.authority_id = c.authority_id AND a.contract_id = c.id), '[]')::text
                FROM school_contract c JOIN supplier s ON s.id = c.supplier_id
                WHERE \(unsafeSQL: scope.isStaff ? "c.authority_id = app_authority_id()" : "c.supplier_id = app_supplier_id()")
                  AND (c.created_at, c.id) < (\(afterCreated), \(afterID))
                ORDER BY c.created_at DESC, c.id DESC LIMIT \(page.limit + 1)
                """).map { row -> (SchoolContract, Date) in
                let (contractID, urn, supplierID, supplierName, service, description, value, start, end, createdAt, outputs, assessments) = try row.decode(
                    UUID.self, Int.self, UUID.self, String.self, String.self, String.self, Int.self, String.self, String.self, Date.self,
                    String.self, String.self)
                struct OutputRow: Decodable { var title: String; var summary: String; var submittedAt: String }
                let decoder = JSONDecoder()
                decoder.keyDecodingStrategy = .convertFromSnakeCase
                let outputRows = try decoder.decode([OutputRow].self, from: Data(outputs.utf8))
                return (SchoolContract(
                    id: contractID, urn: urn, supplierID: supplierID, supplierName: supplierName, service: service, description: description,
                    valuePence: value, startDate: start, endDate: end,
                    outputs: try outputRows.map { SchoolContract.Output(title: $0.title, summary: $0.summary, submittedAt: try ContractService.jsonTime($0.submittedAt)) },
                    assessments: try decoder.decode([SchoolContract.Assessment].self, from: Data(assessments.utf8))), createdAt)
            }
        }
        let built = page.page(rows) { [PGDateFormat.string($0.1), $0.0.id.uuidString] }
        return Page(items: built.items.map(\.0), nextCursor: built.nextCursor)
    }

    public func addPriority(_ scope: AccessScope, urn: Int, priority: String, actions: [String]) async throws -> SPIP {
        try scope.require(scope.isStaff && scope.has(.hosi), "keep school improvement plans")
        var validator = Validator()
        validator.text(priority, "priority", max: 2000)
        for (index, action) in actions.enumerated() { validator.text(action, "actions[\(index)]", max: 2000) }
        try validator.throwIfInvalid()
        return try await change(scope, urn: urn, action: "spip.priority") { connection, _ in
            try await connection.query("""
                INSERT INTO spip_priority (authority_id, urn, priority, actions, recorded_by)
                VALUES (app_authority_id(), \(urn), \(priority), \(try ProjectService.json(actions))::jsonb, current_setting('app.actor'))
                """)
        }
    }

    /// A direct award to an admitted supplier, committed from the school's board's school-improvement budget.
    public func recordContract(_ scope: AccessScope, urn: Int, _ draft: SchoolContractDraft) async throws -> SPIP {
        try scope.require(scope.isStaff && scope.has(.hosi), "record contracts for schools causing concern")
        var validator = Validator()
        validator.check(Self.services.contains(draft.service), "service", "must be one of \(Self.services.joined(separator: ", "))")
        validator.text(draft.description, "description", max: 4000)
        validator.check(draft.valuePence > 0 && draft.valuePence <= BudgetService.maxAmountPence, "value_pence", "must be a positive number of pence")
        validator.check(FinancialYear(draft.financialYear) != nil, "financial_year", "must be like 2025-26")
        let start = CalendarDate.parse(draft.startDate), end = CalendarDate.parse(draft.endDate)
        validator.check(start != nil, "start_date", "must be a date (YYYY-MM-DD)")
        validator.check(end != nil, "end_date", "must be a date (YYYY-MM-DD)")
        if let start, let end { validator.check(end >= start, "end_date", "must not be before start_date") }
        try validator.throwIfInvalid()
        return try await change(scope, urn: urn, action: "spip.contract") { connection, school in
            guard school.concern != nil else { throw DomainError.conflict("Contracts are recorded for schools causing concern.") }
            guard let boardID = school.boardID else { throw DomainError.conflict("The school is not assigned to a board; map it first.") }
            let admitted = try await connection.query("SELECT app_supplier_admitted_to(app_authority_id(), \(draft.supplierID))").first!.decode(Bool.self, at: 0)
            guard admitted else { throw DomainError.invalid("supplier_id", "is not a supplier admitted to this authority") }
            let id = try await connection.query("""
                INSERT INTO school_contract (authority_id, urn, board_id, supplier_id, service, description, value_pence, financial_year,
                                             start_date, end_date, recorded_by)
                VALUES (app_authority_id(), \(urn), \(boardID), \(draft.supplierID), \(draft.service), \(draft.description), \(draft.valuePence),
                        \(draft.financialYear), \(draft.startDate)::date, \(draft.endDate)::date, current_setting('app.actor'))
                RETURNING id
                """).first!.decode(UUID.self, at: 0)
            try await connection.query("""
                INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason)
                SELECT app_authority_id(), \(boardID), \(draft.financialYear), s.id, 'commitment', \(draft.valuePence),
                       'school_contract:' || \(id.lowercased), current_setting('app.actor'), 'School improvement: ' || \(draft.service) || ' for URN ' || \(String(urn))
                FROM funding_stream s WHERE s.code = 'school_improvement'
                """)
        }
    }

    public func addOutput(_ scope: AccessScope, contractID: UUID, title: String, summary: String) async throws -> SchoolContract {
        try scope.require((scope.isStaff && scope.has(.hosi)) || scope.has(.supplierUser), "submit outputs")
        var validator = Validator()
        validator.text(title, "title", max: 200)
        validator.text(summary, "summary", required: false, max: 10_000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let contract = try await Self.contract(connection, id: contractID)
            try await connection.query("""
                INSERT INTO school_contract_output (authority_id, contract_id, title, summary, submitted_by)
                SELECT authority_id, id, \(title), \(summary), current_setting('app.actor') FROM school_contract WHERE id = \(contractID)
                """)
            let after = try await Self.contract(connection, id: contractID)
            try await AuditLog.record(connection, action: "spip.output", entityType: "school_contract", entityID: contractID.lowercased,
                                      before: contract, after: after)
            return after
        }
    }

    public func assess(_ scope: AccessScope, contractID: UUID, assessedOn: String, progress: String, note: String) async throws -> SchoolContract {
        try scope.require(scope.isStaff && scope.has(.hosi), "assess progress")
        var validator = Validator()
        validator.check(CalendarDate.parse(assessedOn) != nil, "assessed_on", "must be a date (YYYY-MM-DD)")
        validator.check(["strong", "expected", "limited", "none"].contains(progress), "progress", "must be strong, expected, limited or none")
        validator.text(note, "note", max: 4000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let before = try await Self.contract(connection, id: contractID)
            try await connection.query("""
                INSERT INTO school_contract_assessment (authority_id, contract_id, assessed_on, progress, note, recorded_by)
                VALUES (app_authority_id(), \(contractID), \(assessedOn)::date, \(progress), \(note), current_setting('app.actor'))
                """)
            let after = try await Self.contract(connection, id: contractID)
            try await AuditLog.record(connection, action: "spip.assessment", entityType: "school_contract", entityID: contractID.lowercased,
                                      before: before, after: after)
            return after
        }
    }

    private func change(_ scope: AccessScope, urn: Int, action: String, _ body: (PGConnection, School) async throws -> Void) async throws -> SPIP {
        try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, urn: urn, scope: scope)
            try await body(connection, before.school)
            let after = try await Self.fetch(connection, urn: urn, scope: scope)
            try await AuditLog.record(connection, action: action, entityType: "school", entityID: String(urn), before: before, after: after)
            return after
        }
    }

    static func fetch(_ connection: PGConnection, urn: Int, scope: AccessScope) async throws -> SPIP {
        let school = try await SchoolService.fetch(connection, urn: urn)
        // The plan belongs to the school's board and the authority-wide roles; others see the register only.
        guard scope.seesAllBoards || school.boardID.map(scope.boardIDs.contains) == true else { throw DomainError.notFound("improvement plan") }
        let priorities = try await connection.query("""
            SELECT id, priority, actions::text, created_at FROM spip_priority WHERE urn = \(urn) ORDER BY created_at, id
            """).map { row in
            let (id, priority, actions, createdAt) = try row.decode(UUID.self, String.self, String.self, Date.self)
            return SPIPPriority(id: id, priority: priority, actions: try JSONDecoder().decode([String].self, from: Data(actions.utf8)), createdAt: createdAt)
        }
        let ids = try await connection.query("SELECT id FROM school_contract WHERE urn = \(urn) ORDER BY created_at, id").map { try $0.decode(UUID.self, at: 0) }
        var contracts: [SchoolContract] = []
        for id in ids { contracts.append(try await contract(connection, id: id)) }
        return SPIP(school: school, priorities: priorities, contracts: contracts)
    }

    static func contract(_ connection: PGConnection, id: UUID) async throws -> SchoolContract {
        guard let row = try await connection.query("""
            SELECT c.id, c.urn, c.supplier_id, s.name, c.service, c.description, c.value_pence, c.start_date::text, c.end_date::text
            FROM school_contract c JOIN supplier s ON s.id = c.supplier_id WHERE c.id = \(id)
            """).first
        else { throw DomainError.notFound("school contract") }
        let (contractID, urn, supplierID, supplierName, service, description, value, start, end) = try row.decode(
            UUID.self, Int.self, UUID.self, String.self, String.self, String.self, Int.self, String.self, String.self)
        let outputs = try await connection.query("""
            SELECT title, summary, submitted_at FROM school_contract_output WHERE contract_id = \(id) ORDER BY submitted_at, id
            """).map { row in
            let (title, summary, at) = try row.decode(String.self, String.self, Date.self)
            return SchoolContract.Output(title: title, summary: summary, submittedAt: at)
        }
        let assessments = try await connection.query("""
            SELECT assessed_on::text, progress, note FROM school_contract_assessment WHERE contract_id = \(id) ORDER BY assessed_on, id
            """).map { row in
            let (on, progress, note) = try row.decode(String.self, String.self, String.self)
            return SchoolContract.Assessment(assessedOn: on, progress: progress, note: note)
        }
        return SchoolContract(id: contractID, urn: urn, supplierID: supplierID, supplierName: supplierName, service: service,
                              description: description, valuePence: value, startDate: start, endDate: end, outputs: outputs, assessments: assessments)
    }
}
