public import Foundation
import LocalityPostgres

public enum ContractParty: String, Sendable, Codable { case board, supplier }

public enum ContractStatus: String, Sendable, Codable { case kpiNegotiation = "kpi_negotiation", active, completed, terminated }

/// An agreed (or proposed) KPI definition, with its RAG threshold.
public struct KPIDefinition: Sendable, Codable, Equatable {
    public var title: String
    public var measure: String
    public var unit: KPIUnit
    public var baseline: Double
    public var target: Double
    public var targetDate: String
    public var frequency: ReportingFrequency
    public var evidenceSource: String
    /// Amber from this share of the expected progress (default 80%); below it, Red.
    public var amberThresholdPercent: Int

    public init(title: String, measure: String, unit: KPIUnit, baseline: Double, target: Double, targetDate: String,
                frequency: ReportingFrequency, evidenceSource: String, amberThresholdPercent: Int = 80) {
        self.title = title
        self.measure = measure
        self.unit = unit
        self.baseline = baseline
        self.target = target
        self.targetDate = targetDate
        self.frequency = frequency
        self.evidenceSource = evidenceSource
        self.amberThresholdPercent = amberThresholdPercent
    }

    init(_ kpi: ProposedKPI) {
        self.init(title: kpi.title, measure: kpi.measure, unit: kpi.unit, baseline: kpi.baseline, target: kpi.target,
                  targetDate: kpi.targetDate, frequency: kpi.frequency, evidenceSource: kpi.evidenceSource)
    }

    func validate(into validator: inout Validator, field: String) {
        validator.text(title, "\(field).title", max: 200)
        validator.text(measure, "\(field).measure", max: 1000)
        validator.text(evidenceSource, "\(field).evidence_source", max: 1000)
        validator.check(baseline.isFinite && target.isFinite, field, "baseline and target must be numbers")
        if unit == .percentage {
            validator.check((0...100).contains(baseline) && (0...100).contains(target), field, "percentages must be between 0 and 100")
        }
        validator.check(CalendarDate.parse(targetDate) != nil, "\(field).target_date", "must be a date (YYYY-MM-DD)")
        validator.check((1...99).contains(amberThresholdPercent), "\(field).amber_threshold_percent", "must be between 1 and 99")
    }
}

public struct KPIRevision: Sendable, Codable, Equatable {
    public var revision: Int
    public var proposedBy: ContractParty
    public var removal: Bool
    public var definition: KPIDefinition
    public var reason: String
    public var acceptedBy: [ContractParty]
    public var createdAt: Date
}

public struct ContractKPI: Sendable, Codable, Equatable {
    public var id: UUID
    public var revisions: [KPIRevision]
    public var latest: KPIRevision { revisions.last! }
    /// Both parties accepted the latest revision.
    public var agreed: Bool { Set(latest.acceptedBy) == [.board, .supplier] }
    /// Agreed removal: no longer part of the contract.
    public var removed: Bool { agreed && latest.removal }
}

public struct ContractVariation: Sendable, Codable, Equatable {
    public var id: UUID
    public var proposedBy: ContractParty
    public var reason: String
    public var valuePence: Int?
    public var endDate: String?
    public var kpis: [VariationKPI]
    public var status: String
    public var createdAt: Date
    public var decidedAt: Date?
}

public struct VariationKPI: Sendable, Codable, Equatable {
    public var kpiID: UUID?
    public var definition: KPIDefinition
    public var removal: Bool

    public init(kpiID: UUID?, definition: KPIDefinition, removal: Bool = false) {
        self.kpiID = kpiID
        self.definition = definition
        self.removal = removal
    }
}

public struct Contract: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID
    public var projectID: UUID
    public var bidID: UUID
    public var supplierID: UUID
    public var valuePence: Int
    public var startDate: String
    public var endDate: String
    public var contractManager: String
    public var standstillEndsOn: String
    public var status: ContractStatus
    public var socialValue: [SocialValueCommitment]
    public var terminationReason: String?
    public var amountPaidPence: Int?
    public var kpis: [ContractKPI]
    public var variations: [ContractVariation]
}

/// Award (one per project, in one transaction with the ledger and the contract) and the contract's KPI
/// negotiation, start gate and variations.
public struct ContractService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    // MARK: Award

    /// Awards the project to a bid: the top-ranked compliant one, or another with a recorded reason.
    public func award(_ scope: AccessScope, projectID: UUID, bidID: UUID, reason: String?) async throws -> Contract {
        try scope.require(scope.isStaff && scope.has(.lim), "award projects")
        return try await database.transaction(scope) { connection in
            // The row lock serialises concurrent awards; the loser then sees `awarded` and stops.
            let project = try await ProjectService.fetch(connection, id: projectID, forUpdate: true)
            try ProjectService.requireOwnBoard(scope, project)
            guard project.status == .closed else {
                throw DomainError.conflict(project.status == .awarded ? "The project has already been awarded."
                                           : "Only a closed project (deadline passed) can be awarded; it is \(project.status.rawValue).")
            }
            let report = try await EvaluationService.report(connection, project: project)
            guard let chosen = report.lines.first(where: { $0.bidID == bidID }) else { throw DomainError.invalid("bid_id", "is not a submitted bid of this project") }
            guard chosen.compliant else { throw DomainError.invalid("bid_id", "the bid is non-compliant") }
            guard report.lines.filter(\.compliant).allSatisfy({ $0.scored.total != nil }) else {
                throw DomainError.conflict("Every compliant bid needs its moderated scores before the award.")
            }
            if chosen.scored.rank != 1 {
                var validator = Validator()
                validator.text(reason, "reason", max: 4000)
                try validator.throwIfInvalid()
            }
            let winnerTotal = Scoring.display(chosen.scored.total) ?? ""
            try await connection.query("""
                UPDATE project SET status = 'awarded', awarded_bid_id = \(bidID), award_reason = \(reason), version = version + 1
                WHERE id = \(projectID)
                """)
            for line in report.lines {
                let won = line.bidID == bidID
                let note = won ? "Awarded with a total of \(winnerTotal)."
                    : "Your total: \(Scoring.display(line.scored.total) ?? "not scored") (price \(Scoring.display(line.scored.priceScore) ?? "0.00"), quality \(Scoring.display(line.scored.qualityScore) ?? "-"), social value \(Scoring.display(line.scored.socialValueScore) ?? "-")); the winning total: \(winnerTotal)."
                try await connection.query("""
                    UPDATE bid SET status = \(won ? "awarded" : "unsuccessful")::bid_status, outcome_note = \(note) WHERE id = \(line.bidID)
                    """)
            }
            // Money: release the project's earmark, commit the awarded price. The ledger's CHECKs refuse it
            // (and so the whole award) if the board cannot afford it.
            try await ProjectService.ledger(connection, project, kind: .release, reason: "Earmark released on award")
            try await connection.query("""
                INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason)
                SELECT p.authority_id, p.board_id, p.financial_year, p.funding_stream_id, 'commitment', \(chosen.pricePence),
                       'contract:project:' || p.id, current_setting('app.actor'), 'Committed on award to ' || \(chosen.supplierName)
                FROM project p WHERE p.id = \(projectID)
                """)
            let standstill = try await connection.query("""
                SELECT standstill_working_days FROM authority WHERE id = app_authority_id()
                """).first!.decode(Int.self, at: 0)
            let today = try await connection.query("SELECT current_date::text").first!.decode(String.self, at: 0)
            let standstillEnds = Self.addWorkingDays(standstill, to: CalendarDate.parse(today)!)
            let plannedStart = project.plannedStart.flatMap(CalendarDate.parse) ?? standstillEnds
            let start = max(plannedStart, standstillEnds)
            let end = max(project.plannedEnd.flatMap(CalendarDate.parse) ?? start, start)
            let bid = try await BidService.fetch(connection, id: bidID)
            let contractID = try await connection.query("""
                INSERT INTO contract (authority_id, project_id, board_id, bid_id, supplier_id, value_pence, start_date, end_date, contract_manager,
                                      standstill_ends_on, social_value)
                VALUES (app_authority_id(), \(projectID), \(project.boardID), \(bidID), \(chosen.supplierID), \(chosen.pricePence), \(CalendarDate.format(start))::date,
                        \(CalendarDate.format(end))::date, \(project.contractManager), \(CalendarDate.format(standstillEnds))::date,
                        \(try ProjectService.json(bid.socialValue))::jsonb)
                RETURNING id
                """).first!.decode(UUID.self, at: 0)
            // The bid's KPIs become revision 1 of each contract KPI, proposed by the supplier but accepted by
            // nobody yet: the bid does NOT count as the supplier's acceptance. The bid was written before the
            // award, against the project's planned dates; after the award both parties confirm revision 1
            // explicitly (or counter-propose), so that "agreed" always means two recorded acceptances by
            // people acting for each party on this contract.
            for kpi in bid.kpis {
                let kpiID = try await connection.query("""
                    INSERT INTO contract_kpi (authority_id, contract_id) VALUES (app_authority_id(), \(contractID)) RETURNING id
                    """).first!.decode(UUID.self, at: 0)
                try await connection.query("""
                    INSERT INTO kpi_revision (authority_id, kpi_id, revision, proposed_by, actor, definition, reason)
                    VALUES (app_authority_id(), \(kpiID), 1, 'supplier', current_setting('app.actor'),
                            \(try ProjectService.json(KPIDefinition(kpi)))::jsonb, 'Proposed in the bid')
                    """)
            }
            let contract = try await Self.fetch(connection, id: contractID)
            // One event for the whole award: the project's change and the contract it created.
            struct Award: Encodable, Sendable {
                var awardedBidID: UUID
                var reason: String?
                var total: String
                var contract: Contract
            }
            try await AuditLog.record(connection, action: "project.award", entityType: "project", entityID: projectID.lowercased,
                                      before: project, after: Award(awardedBidID: bidID, reason: reason, total: winnerTotal, contract: contract))
            try await OCDSReleaseKind.publish(connection, projectID: projectID, .award)
            try await OCDSReleaseKind.publish(connection, projectID: projectID, .contract)
            return contract
        }
    }

    /// Adds working days (Monday to Friday). Bank holidays are not modelled.
    static func addWorkingDays(_ days: Int, to date: Date) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        var current = date
        var remaining = days
        while remaining > 0 {
            current = calendar.date(byAdding: .day, value: 1, to: current)!
            let weekday = calendar.component(.weekday, from: current)
            if weekday != 1 && weekday != 7 { remaining -= 1 }
        }
        return current
    }

    // MARK: Reading

    public func get(_ scope: AccessScope, id: UUID) async throws -> Contract {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see contracts")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await Self.fetch(connection, id: id)
        }
    }

    /// Newest first, a page at a time, in one statement and one round trip: each contract with its KPI revisions
    /// and variations aggregated as JSON beside it (the same rows `fetch` reads with three queries per contract).
    /// The tenant is stated in the query as well as by row-level security: the policies are an OR (staff's,
    /// supplier's), which no index serves, while `(tenant, created_at, id)` serves this order and cursor directly
    /// — with bitmap scans off (`orderedScans`), or PostgreSQL sorts all of the tenant's contracts for a page.
    public func list(_ scope: AccessScope, page: PageRequest) async throws -> Page<Contract> {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see contracts")
        let afterCreated = page.after?.first.flatMap(PGDateFormat.date) ?? Date.distantFuture
        // The first page starts after the greatest key: (far future, ffff…) in descending order.
        let afterID = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? UUID(uuidString: "ffffffff-ffff-ffff-ffff-ffffffffffff")!
        // One row per KPI revision (a contract without KPIs: one row, its revision columns null), the page's
        // contracts first by their ordered index. The revisions come as columns, not as a JSON aggregate: parsing
        // that JSON (and each definition inside it) was a third of the server's time on a page of contracts.
        let result = try await database.read(scope, """
            SELECT \(unsafeSQL: Self.columnsSQL), c.created_at, c.variations, \(unsafeSQL: Self.revisionColumnsSQL)
            FROM (SELECT c.*,
                         coalesce((SELECT json_agg(json_build_object(
                                       'id', v.id, 'proposed_by', v.proposed_by, 'reason', v.reason, 'changes', v.changes::text, 'status', v.status,
                                       'created_at', v.created_at, 'decided_at', v.decided_at) ORDER BY v.created_at, v.id)
                                   FROM contract_variation v WHERE v.authority_id = c.authority_id AND v.contract_id = c.id), '[]')::text AS variations
                  FROM contract c
                  WHERE \(unsafeSQL: scope.isStaff ? "c.authority_id = app_authority_id()" : "c.supplier_id = app_supplier_id()")
                    AND (c.created_at, c.id) < (\(afterCreated), \(afterID))
                  ORDER BY c.created_at DESC, c.id DESC LIMIT \(page.limit + 1)) c
            LEFT JOIN LATERAL (SELECT r.*, k.created_at AS kpi_created_at FROM contract_kpi k
                               JOIN kpi_revision r ON r.authority_id = k.authority_id AND r.kpi_id = k.id
                               WHERE k.authority_id = c.authority_id AND k.contract_id = c.id) r ON true
            ORDER BY c.created_at DESC, c.id DESC, r.kpi_created_at, r.kpi_id, r.revision
            """, orderedScans: true)
        var rows: [(Contract, Date)] = []
        var revisions: [(UUID, KPIRevision)] = []
        func finish() {
            guard !rows.isEmpty else { return }
            rows[rows.count - 1].0.kpis = Self.groupKPIs(revisions)
            revisions = []
        }
        for row in result {
            let id = try row.decode(UUID.self, at: 0)
            if rows.last?.0.id != id {
                finish()
                var contract = try Self.decodeColumns(row)
                contract.variations = try Self.decodeVariations(try row.decode(String.self, at: 15))
                rows.append((contract, try row.decode(Date.self, at: 14)))
            }
            if let revision = try Self.decodeRevision(row, at: 16) { revisions.append(revision) }
        }
        finish()
        let built = page.page(rows) { [PGDateFormat.string($0.1), $0.0.id.uuidString] }
        return Page(items: built.items.map(\.0), nextCursor: built.nextCursor)
    }

    // MARK: Negotiation (before the contract starts)

    public func addKPI(_ scope: AccessScope, contractID: UUID, _ definition: KPIDefinition) async throws -> Contract {
        try await negotiate(scope, contractID: contractID, action: "contract.kpi.add") { connection, party, _ in
            var validator = Validator()
            definition.validate(into: &validator, field: "definition")
            try validator.throwIfInvalid()
            let kpiID = try await connection.query("""
                INSERT INTO contract_kpi (authority_id, contract_id)
                SELECT authority_id, id FROM contract WHERE id = \(contractID) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            try await Self.revise(connection, kpiID: kpiID, revision: 1, party: party, definition: definition, removal: false, reason: "Added")
        }
    }

    /// A new revision of a KPI (or a proposal to remove it); it clears earlier acceptances, and counts as
    /// accepted by the proposing party.
    public func reviseKPI(_ scope: AccessScope, contractID: UUID, kpiID: UUID, definition: KPIDefinition?, removal: Bool, reason: String) async throws -> Contract {
        try await negotiate(scope, contractID: contractID, action: removal ? "contract.kpi.propose_removal" : "contract.kpi.revise") { connection, party, contract in
            guard let kpi = contract.kpis.first(where: { $0.id == kpiID }) else { throw DomainError.notFound("KPI") }
            var validator = Validator()
            let next = definition ?? kpi.latest.definition
            next.validate(into: &validator, field: "definition")
            validator.text(reason, "reason", required: false, max: 2000)
            try validator.throwIfInvalid()
            try await Self.revise(connection, kpiID: kpiID, revision: kpi.latest.revision + 1, party: party, definition: next,
                                  removal: removal, reason: reason)
        }
    }

    /// Accepts the KPI's latest revision, which must be the one the caller saw.
    public func acceptKPI(_ scope: AccessScope, contractID: UUID, kpiID: UUID, revision: Int) async throws -> Contract {
        try await negotiate(scope, contractID: contractID, action: "contract.kpi.accept") { connection, party, contract in
            guard let kpi = contract.kpis.first(where: { $0.id == kpiID }) else { throw DomainError.notFound("KPI") }
            guard kpi.latest.revision == revision else {
                throw DomainError.conflict("Revision \(revision) is no longer the latest (\(kpi.latest.revision)); review the latest before accepting.")
            }
            if kpi.latest.acceptedBy.contains(party) { return }
            try await connection.query("""
                INSERT INTO kpi_acceptance (authority_id, revision_id, party, actor)
                SELECT r.authority_id, r.id, \(party.rawValue)::contract_party, current_setting('app.actor')
                FROM kpi_revision r WHERE r.kpi_id = \(kpiID) AND r.revision = \(revision)
                """)
        }
    }

    /// kpi_negotiation → active: only once the standstill has ended (database date), at least one KPI
    /// remains and every KPI is agreed. The board's LIMs start it.
    public func start(_ scope: AccessScope, contractID: UUID) async throws -> Contract {
        try scope.require(scope.isStaff && scope.has(.lim), "start contracts")
        return try await database.transaction(scope) { connection in
            // The contract's row lock, the one every KPI move takes (lockForParty) before it looks at the
            // status: the KPIs read below cannot change until the start commits.
            let contract = try await Self.fetch(connection, id: contractID, forUpdate: true)
            guard try await Self.party(connection, contract) == .board else { throw DomainError.forbidden("Only the board's LIMs start contracts.") }
            guard contract.status == .kpiNegotiation else { throw DomainError.conflict("The contract is \(contract.status.rawValue).") }
            let standstillOver = try await connection.query("SELECT current_date >= \(contract.standstillEndsOn)::date").first!.decode(Bool.self, at: 0)
            var problems: [String] = []
            if !standstillOver { problems.append("the standstill period ends on \(contract.standstillEndsOn)") }
            let live = contract.kpis.filter { !$0.removed }
            if live.isEmpty { problems.append("the contract has no KPI") }
            let pending = contract.kpis.filter { !$0.agreed }
            if !pending.isEmpty { problems.append("\(pending.count) KPI(s) are not yet agreed by both parties") }
            guard problems.isEmpty else { throw DomainError.conflict("The contract cannot start: " + problems.joined(separator: "; ") + ".") }
            try await connection.query("UPDATE contract SET status = 'active', started_at = now() WHERE id = \(contractID)")
            try await MonitoringService.generateCalendar(connection, contract)
            let after = try await Self.fetch(connection, id: contractID)
            try await AuditLog.record(connection, action: "contract.start", entityType: "contract", entityID: contractID.lowercased,
                                      before: contract, after: after)
            try await OCDSReleaseKind.publish(connection, projectID: contract.projectID, .contractStarted)
            return after
        }
    }

    // MARK: Ending

    /// active → completed: what remains of the commitment is recorded as spent.
    public func complete(_ scope: AccessScope, contractID: UUID) async throws -> Contract {
        try await end(scope, contractID: contractID, status: .completed, reason: nil, amountPaid: nil)
    }

    /// kpi_negotiation or active → terminated, with a reason and the amount paid: that is spent, the rest
    /// of the commitment returns to the board's budget.
    public func terminate(_ scope: AccessScope, contractID: UUID, reason: String, amountPaidPence: Int) async throws -> Contract {
        var validator = Validator()
        validator.text(reason, "reason", max: 4000)
        validator.check(amountPaidPence >= 0, "amount_paid_pence", "must not be negative")
        try validator.throwIfInvalid()
        return try await end(scope, contractID: contractID, status: .terminated, reason: reason, amountPaid: amountPaidPence)
    }

    private func end(_ scope: AccessScope, contractID: UUID, status: ContractStatus, reason: String?, amountPaid: Int?) async throws -> Contract {
        try scope.require(scope.isStaff && scope.has(.lim), "end contracts")
        return try await database.transaction(scope) { connection in
            let before = try await Self.fetch(connection, id: contractID, forUpdate: true)
            guard try await Self.party(connection, before) == .board else { throw DomainError.forbidden("Only the board's LIMs end contracts.") }
            let allowed: Set<ContractStatus> = status == .completed ? [.active] : [.kpiNegotiation, .active]
            guard allowed.contains(before.status) else {
                throw DomainError.conflict("A contract that is \(before.status.rawValue) cannot become \(status.rawValue).")
            }
            let paid = amountPaid ?? before.valuePence
            if paid > before.valuePence {
                throw DomainError.invalid("amount_paid_pence", "must not exceed the contract value (\(before.valuePence) pence)")
            }
            try await connection.query("""
                UPDATE contract SET status = \(status.rawValue)::contract_status, termination_reason = \(reason),
                    amount_paid_pence = \(paid) WHERE id = \(contractID)
                """)
            for (kind, amount) in [("spend", paid), ("decommitment", before.valuePence - paid)] where amount > 0 {
                try await connection.query("""
                    INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence, reference, actor, reason)
                    SELECT p.authority_id, p.board_id, p.financial_year, p.funding_stream_id, \(kind)::ledger_entry_kind, \(amount),
                           'contract:' || \(contractID.lowercased), current_setting('app.actor'), \("Contract \(status.rawValue)")
                    FROM project p WHERE p.id = \(before.projectID)
                    """)
            }
            let after = try await Self.fetch(connection, id: contractID)
            try await AuditLog.record(connection, action: "contract.\(status == .completed ? "complete" : "terminate")", entityType: "contract",
                                      entityID: contractID.lowercased, before: before, after: after)
            try await OCDSReleaseKind.publish(connection, projectID: before.projectID, .contractEnded)
            return after
        }
    }

    // MARK: Variations (after the contract starts)

    public func proposeVariation(_ scope: AccessScope, contractID: UUID, reason: String, valuePence: Int?, endDate: String?, kpis: [VariationKPI]) async throws -> Contract {
        try scope.require(scope.isStaff ? scope.has(.lim) : scope.has(.supplierUser), "propose variations")
        var validator = Validator()
        validator.text(reason, "reason", max: 4000)
        if let valuePence { validator.check(valuePence > 0, "value_pence", "must be positive") }
        if let endDate { validator.check(CalendarDate.parse(endDate) != nil, "end_date", "must be a date (YYYY-MM-DD)") }
        validator.check(valuePence != nil || endDate != nil || !kpis.isEmpty, "changes", "a variation must change something")
        for (index, kpi) in kpis.enumerated() { kpi.definition.validate(into: &validator, field: "kpis[\(index)].definition") }
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let seen = try await Self.fetch(connection, id: contractID)
            guard try await Self.party(connection, seen) != nil else { throw DomainError.forbidden("Only the contract's parties propose variations.") }
            // The status is checked under the contract's row lock (a completion may be racing).
            let contract = try await Self.lockForParty(connection, seen)
            guard let party = try await Self.party(connection, contract) else { throw DomainError.forbidden("Only the contract's parties propose variations.") }
            guard contract.status == .active else {
                throw DomainError.conflict("Variations apply to active contracts; before the start, negotiate the KPIs directly.")
            }
            for kpi in kpis where kpi.kpiID != nil && !contract.kpis.contains(where: { $0.id == kpi.kpiID }) {
                throw DomainError.invalid("kpis", "names a KPI that is not on this contract")
            }
            struct Changes: Encodable { var valuePence: Int?; var endDate: String?; var kpis: [VariationKPI] }
            try await connection.query("""
                INSERT INTO contract_variation (authority_id, contract_id, proposed_by, proposer, reason, changes)
                VALUES (\(contract.authorityID), \(contractID), \(party.rawValue)::contract_party, current_setting('app.actor'), \(reason),
                        \(try ProjectService.json(Changes(valuePence: valuePence, endDate: endDate, kpis: kpis)))::jsonb)
                """)
            let after = try await Self.fetch(connection, id: contractID)
            try await AuditLog.record(connection, action: "contract.variation.propose", entityType: "contract", entityID: contractID.lowercased,
                                      before: nil, after: after.variations.last)
            return after
        }
    }

    /// The other party accepts (applying it) or rejects a proposed variation.
    public func decideVariation(_ scope: AccessScope, contractID: UUID, variationID: UUID, accept: Bool) async throws -> Contract {
        try scope.require(scope.isStaff ? scope.has(.lim) : scope.has(.supplierUser), "decide variations")
        return try await database.transaction(scope) { connection in
            let seen = try await Self.fetch(connection, id: contractID)
            guard try await Self.party(connection, seen) != nil else { throw DomainError.forbidden("Only the contract's parties decide variations.") }
            // Everything below is decided under the contract's row lock: two decisions, or a decision and a
            // completion, apply one after the other and the second sees the first.
            let before = try await Self.lockForParty(connection, seen)
            guard let party = try await Self.party(connection, before) else { throw DomainError.forbidden("Only the contract's parties decide variations.") }
            guard let variation = before.variations.first(where: { $0.id == variationID }) else { throw DomainError.notFound("variation") }
            guard variation.status == "proposed" else {
                throw DomainError.stateConflict(type: "variation-decided", "The variation is already \(variation.status).")
            }
            guard before.status == .active else { throw DomainError.conflict("The contract is \(before.status.rawValue); variations apply to active contracts.") }
            guard variation.proposedBy != party else { throw DomainError.forbidden("The other party decides a variation, not its proposer.") }
            if accept {
                // Applies the changes and moves the money: a value increase commits the difference from the
                // board's budget (refused, with nothing changed, beyond what is available); a reduction
                // decommits it. The function re-checks the state under the same locks.
                try await connection.query("SELECT accept_contract_variation(\(before.authorityID), \(variationID))")
            } else {
                try await connection.query("""
                    UPDATE contract_variation SET status = 'rejected', decided_by = current_setting('app.actor'), decided_at = now()
                    WHERE id = \(variationID) AND status = 'proposed'
                    """)
            }
            let after = try await Self.fetch(connection, id: contractID)
            try await AuditLog.record(connection, action: accept ? "contract.variation.accept" : "contract.variation.reject",
                                      entityType: "contract", entityID: contractID.lowercased, before: before, after: after)
            if accept { try await OCDSReleaseKind.publish(connection, projectID: before.projectID, .contractAmendment, ref: variationID) }
            return after
        }
    }

    // MARK: Helpers

    private func negotiate(
        _ scope: AccessScope, contractID: UUID, action: String,
        _ body: (PGConnection, ContractParty, Contract) async throws -> Void
    ) async throws -> Contract {
        try scope.require(scope.isStaff ? scope.has(.lim) : scope.has(.supplierUser), "negotiate KPIs")
        return try await database.transaction(scope) { connection in
            let seen = try await Self.fetch(connection, id: contractID)
            guard try await Self.party(connection, seen) != nil else { throw DomainError.forbidden("Only the contract's parties negotiate its KPIs.") }
            // Lock the contract row first, then check its status: two parties' moves, and a move and the
            // start (which takes the same row lock), apply one after the other, and each sees the other's
            // effect. (Checking before the lock let a revision land on a contract that had just started.)
            let current = try await Self.lockForParty(connection, seen)
            guard let party = try await Self.party(connection, current) else { throw DomainError.forbidden("Only the contract's parties negotiate its KPIs.") }
            guard current.status == .kpiNegotiation else {
                throw DomainError.stateConflict(type: "negotiation-closed", "Agreed KPIs of a started contract are fixed; propose a variation.")
            }
            try await body(connection, party, current)
            let after = try await Self.fetch(connection, id: contractID)
            // A move that changed nothing (accepting a revision already accepted) answers like the first and is
            // not audited again.
            if after.kpis != current.kpis {
                try await AuditLog.record(connection, action: action, entityType: "contract", entityID: contractID.lowercased,
                                          before: ["kpis": current.kpis], after: ["kpis": after.kpis])
            }
            return after
        }
    }

    static func revise(_ connection: PGConnection, kpiID: UUID, revision: Int, party: ContractParty, definition: KPIDefinition,
                       removal: Bool, reason: String) async throws {
        let revisionID = try await connection.query("""
            INSERT INTO kpi_revision (authority_id, kpi_id, revision, proposed_by, actor, removal, definition, reason)
            SELECT k.authority_id, k.id, \(revision), \(party.rawValue)::contract_party, current_setting('app.actor'), \(removal),
                   \(try ProjectService.json(definition))::jsonb, \(reason)
            FROM contract_kpi k WHERE k.id = \(kpiID) RETURNING id
            """).first!.decode(UUID.self, at: 0)
        try await connection.query("""
            INSERT INTO kpi_acceptance (authority_id, revision_id, party, actor)
            SELECT authority_id, id, \(party.rawValue)::contract_party, current_setting('app.actor') FROM kpi_revision WHERE id = \(revisionID)
            """)
    }

    /// Takes the contract's row lock for either party (the supplier cannot lock contracts with SELECT … FOR
    /// UPDATE itself) and returns the contract as it is under the lock. Every KPI move, the start, the end
    /// and every variation decision take this lock before looking at the contract's state.
    static func lockForParty(_ connection: PGConnection, _ contract: Contract) async throws -> Contract {
        guard try await connection.query("SELECT lock_contract_for_party(\(contract.authorityID), \(contract.id))").first?
            .decode(String?.self, at: 0) != nil
        else { throw DomainError.notFound("contract") }
        return try await fetch(connection, id: contract.id)
    }

    static func party(_ connection: PGConnection, _ contract: Contract) async throws -> ContractParty? {
        let party = try await connection.query("SELECT app_contract_party(\(contract.authorityID), \(contract.id))").first?
            .decode(String?.self, at: 0)
        return try storedEnum(party ?? nil, column: "app_contract_party", as: ContractParty.self)
    }

    static let columnsSQL = """
        c.id, c.authority_id, c.project_id, c.bid_id, c.supplier_id, c.value_pence, c.start_date::text, c.end_date::text, c.contract_manager,
        c.standstill_ends_on::text, c.status::text, c.social_value::text, c.termination_reason, c.amount_paid_pence
        """

    static func fetch(_ connection: PGConnection, id: UUID, forUpdate: Bool = false) async throws -> Contract {
        guard let row = try await connection.query("""
            SELECT \(unsafeSQL: columnsSQL) FROM contract c WHERE c.id = \(id) \(unsafeSQL: forUpdate ? "FOR UPDATE" : "")
            """).first
        else { throw DomainError.notFound("contract") }
        var contract = try decodeColumns(row)
        let revisions = try await connection.query("""
            SELECT \(unsafeSQL: revisionColumnsSQL)
            FROM kpi_revision r JOIN contract_kpi k ON k.authority_id = r.authority_id AND k.id = r.kpi_id
            WHERE k.contract_id = \(id) ORDER BY k.created_at, k.id, r.revision
            """).map { row in try decodeRevision(row, at: 0)! }
        contract.kpis = groupKPIs(revisions)
        contract.variations = try await connection.query("""
            SELECT id, proposed_by::text, reason, changes::text, status::text, created_at, decided_at FROM contract_variation
            WHERE contract_id = \(id) ORDER BY created_at, id
            """).map { row -> ContractVariation in
            let (variationID, proposedBy, reason, changes, status, createdAt, decidedAt) = try row.decode(
                UUID.self, String.self, String.self, String.self, String.self, Date.self, Date?.self)
            return try variation(id: variationID, proposedBy: proposedBy, reason: reason, changes: Data(changes.utf8), status: status,
                                 createdAt: createdAt, decidedAt: decidedAt)
        }
        return contract
    }

    private static let snakeCaseDecoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return decoder
    }()

    /// `contract.social_value` as stored (the bid's commitments, snake-case keys), with its keys spelt out: on a
    /// page of contracts Foundation's key conversion (split, capitalise, join and hash every key of every object)
    /// cost more than parsing the JSON itself.
    static func decodeSocialValue(_ json: String) throws -> [SocialValueCommitment] {
        if json == "[]" { return [] }
        struct Stored: Decodable {
            var measureCode: String, measureName: String, unit: String, quantity: Double, proxyValuePence: Int
            enum CodingKeys: String, CodingKey {
                case measureCode = "measure_code", measureName = "measure_name", unit, quantity, proxyValuePence = "proxy_value_pence"
            }
        }
        return try plainDecoder.decode([Stored].self, from: Data(json.utf8)).map {
            SocialValueCommitment(measureCode: $0.measureCode, measureName: $0.measureName, unit: $0.unit, quantity: $0.quantity,
                                  proxyValuePence: $0.proxyValuePence)
        }
    }

    /// The contract's own columns (`columnsSQL`, from column 0); KPIs and variations are left empty.
    static func decodeColumns(_ row: PGRow) throws -> Contract {
        Contract(
            id: try row.decode(UUID.self, at: 0), authorityID: try row.decode(UUID.self, at: 1), projectID: try row.decode(UUID.self, at: 2),
            bidID: try row.decode(UUID.self, at: 3), supplierID: try row.decode(UUID.self, at: 4), valuePence: try row.decode(Int.self, at: 5),
            startDate: try row.decode(String.self, at: 6), endDate: try row.decode(String.self, at: 7),
            contractManager: try row.decode(String.self, at: 8), standstillEndsOn: try row.decode(String.self, at: 9),
            status: try storedEnum(try row.decode(String.self, at: 10), column: "contract.status"),
            socialValue: try decodeSocialValue(try row.decode(String.self, at: 11)),
            terminationReason: try row.decode(String?.self, at: 12), amountPaidPence: try row.decode(Int?.self, at: 13),
            kpis: [], variations: [])
    }

    /// Revisions in KPI order, grouped into KPIs.
    static func groupKPIs(_ revisions: [(UUID, KPIRevision)]) -> [ContractKPI] {
        var kpis: [ContractKPI] = []
        for (kpiID, revision) in revisions {
            if let index = kpis.firstIndex(where: { $0.id == kpiID }) { kpis[index].revisions.append(revision) }
            else { kpis.append(ContractKPI(id: kpiID, revisions: [revision])) }
        }
        return kpis
    }

    static func variation(id: UUID, proposedBy: String, reason: String, changes: Data, status: String, createdAt: Date,
                          decidedAt: Date?) throws -> ContractVariation {
        struct Changes: Decodable { var valuePence: Int?; var endDate: String?; var kpis: [VariationKPI]? }
        let decoded = try snakeCaseDecoder.decode(Changes.self, from: changes)
        return ContractVariation(id: id, proposedBy: try storedEnum(proposedBy, column: "contract_variation.proposed_by"), reason: reason,
                                 valuePence: decoded.valuePence, endDate: decoded.endDate, kpis: decoded.kpis ?? [], status: status,
                                 createdAt: createdAt, decidedAt: decidedAt)
    }

    /// A KPI revision's columns, its stored definition's fields taken out by PostgreSQL (`r`: kpi_revision).
    static let revisionColumnsSQL = """
        r.kpi_id, r.revision, r.proposed_by::text, r.removal, r.reason, r.created_at,
        coalesce((SELECT array_agg(a.party::text ORDER BY a.party) FROM kpi_acceptance a
                  WHERE a.authority_id = r.authority_id AND a.revision_id = r.id), '{}'),
        r.definition->>'title', r.definition->>'measure', r.definition->>'unit', r.definition->>'baseline', r.definition->>'target',
        r.definition->>'target_date', r.definition->>'frequency', r.definition->>'evidence_source', r.definition->>'amber_threshold_percent'
        """

    /// The revision in `revisionColumnsSQL` from column `offset` on, or nil when its KPI column is null (a contract
    /// without KPIs in `list`). A definition missing a field fails the read, naming the column.
    static func decodeRevision(_ row: PGRow, at offset: Int) throws -> (UUID, KPIRevision)? {
        guard let kpiID = try row.decode(UUID?.self, at: offset) else { return nil }
        let definition = KPIDefinition(
            title: try row.decode(String.self, at: offset + 7), measure: try row.decode(String.self, at: offset + 8),
            unit: try storedEnum(try row.decode(String.self, at: offset + 9), column: "kpi_revision.definition.unit"),
            baseline: try row.decode(Double.self, at: offset + 10), target: try row.decode(Double.self, at: offset + 11),
            targetDate: try row.decode(String.self, at: offset + 12),
            frequency: try storedEnum(try row.decode(String.self, at: offset + 13), column: "kpi_revision.definition.frequency"),
            evidenceSource: try row.decode(String.self, at: offset + 14), amberThresholdPercent: try row.decode(Int.self, at: offset + 15))
        return (kpiID, KPIRevision(
            revision: try row.decode(Int.self, at: offset + 1),
            proposedBy: try storedEnum(try row.decode(String.self, at: offset + 2), column: "kpi_revision.proposed_by"),
            removal: try row.decode(Bool.self, at: offset + 3), definition: definition, reason: try row.decode(String.self, at: offset + 4),
            acceptedBy: try row.decode([String].self, at: offset + 6).map { try storedEnum($0, column: "kpi_acceptance.party") },
            createdAt: try row.decode(Date.self, at: offset + 5)))
    }

    /// Stateless after configuration, so one is shared (Foundation's `JSONDecoder` is `Sendable`).
    private static let plainDecoder = JSONDecoder()

    /// The JSON array of variations built by `list`.
    static func decodeVariations(_ json: String) throws -> [ContractVariation] {
        if json == "[]" { return [] }
        struct Row: Decodable {
            var id: UUID
            var proposedBy: String
            var reason: String
            var changes: String
            var status: String
            var createdAt: String
            var decidedAt: String?
            enum CodingKeys: String, CodingKey {
                case id, proposedBy = "proposed_by", reason, changes, status, createdAt = "created_at", decidedAt = "decided_at"
            }
        }
        return try plainDecoder.decode([Row].self, from: Data(json.utf8)).map { row in
            try variation(id: row.id, proposedBy: row.proposedBy, reason: row.reason, changes: Data(row.changes.utf8),
                          status: row.status, createdAt: try jsonTime(row.createdAt), decidedAt: try row.decidedAt.map(jsonTime))
        }
    }

    /// A timestamptz as json_build_object writes it (`2026-11-30T08:23:33.123456+00:00`).
    static func jsonTime(_ text: String) throws -> Date {
        guard let date = PGDateFormat.date(text) else {  // the parser takes the `T` as well as PostgreSQL's space
            throw DomainError.invalid("created_at", "unreadable time \(text)")
        }
        return date
    }
}
