public import Foundation
import LocalityPostgres

public struct KPIReturn: Sendable, Codable, Equatable {
    public var version: Int
    public var actual: Decimal?
    public var numerator: Decimal?
    public var denominator: Decimal?
    public var noActivity: Bool
    public var noActivityReason: String?
    public var narrative: String
    public var evidence: String
    public var submittedAt: Date
}

public struct PeriodStatus: Sendable, Codable, Equatable {
    public var periodID: UUID
    public var kpiID: UUID
    public var label: String
    public var starts: String
    public var ends: String
    public var due: String
    public var overdue: Bool
    /// The first version came in after the due date.
    public var late: Bool
    public var latest: KPIReturn?
    public var versions: Int
    /// The rule's rating (nil when nothing is rated: no return, or "no activity").
    public var computedRating: RAGRating?
    public var overrideRating: RAGRating?
    public var overrideReason: String?
    /// The override if any, else the computed rating, else White.
    public var rating: RAGRating { overrideRating ?? computedRating ?? .white }
    /// The Procurement Act 2023 level: as the rating's, except that a second Red in a row is Inadequate.
    public var performanceLevel: String?
}

public struct CorrectiveAction: Sendable, Codable, Equatable {
    public var description: String
    public var owner: String
    public var dueDate: String
    public var doneOn: String?

    public init(description: String, owner: String, dueDate: String, doneOn: String? = nil) {
        self.description = description
        self.owner = owner
        self.dueDate = dueDate
        self.doneOn = doneOn
    }
}

/// open (waiting for the supplier) → proposed (root cause and actions) → agreed, or sent back to open →
/// closed with an outcome.
public struct CorrectiveActionPlan: Sendable, Codable, Equatable {
    public var id: UUID
    public var kpiID: UUID
    public var trigger: String
    public var status: String
    public var rootCause: String
    public var actions: [CorrectiveAction]
    public var outcome: String?
    public var openedAt: Date
    /// Actions past their due date and not done (by the date the plan was read).
    public var overdueActions: Int
}

public struct ReturnSubmission: Sendable {
    public var periodID: UUID
    public var value: ReturnValue?
    public var noActivityReason: String?
    public var narrative: String
    public var evidence: String

    public init(periodID: UUID, value: ReturnValue?, noActivityReason: String?, narrative: String, evidence: String) {
        self.periodID = periodID
        self.value = value
        self.noActivityReason = noActivityReason
        self.narrative = narrative
        self.evidence = evidence
    }
}

/// Returns against an active contract's KPIs, their RAG ratings, overrides and corrective action plans.
public struct MonitoringService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// Called when a contract starts: every live KPI's periods, clipped to the contract's dates.
    static func generateCalendar(_ connection: PGConnection, _ contract: Contract) async throws {
        let terms = try await termDates(connection)
        for kpi in contract.kpis where !kpi.removed {
            for period in ReportingCalendar.periods(frequency: kpi.latest.definition.frequency, contractStart: contract.startDate,
                                                    contractEnd: contract.endDate, termDates: terms) {
                try await connection.query("""
                    INSERT INTO reporting_period (authority_id, contract_id, kpi_id, label, starts, ends, due)
                    VALUES (\(contract.authorityID), \(contract.id), \(kpi.id), \(period.label), \(period.starts)::date,
                            \(period.ends)::date, \(period.due)::date)
                    """)
            }
        }
    }

    /// The authority's term dates by academic year, standard dates where it set none.
    static func termDates(_ connection: PGConnection) async throws -> @Sendable (Int) -> TermDates {
        let rows = try await connection.query("SELECT academic_year, term, starts::text, ends::text FROM term_dates ORDER BY academic_year, starts")
            .map { try $0.decode(Int.self, String.self, String.self, String.self) }
        var byYear: [Int: [TermDates.Term]] = [:]
        for (year, term, starts, ends) in rows { byYear[year, default: []].append(.init(name: term, starts: starts, ends: ends)) }
        let configured = byYear
        return { year in configured[year].map { TermDates(academicYear: year, terms: $0) } ?? TermDates.standard(year) }
    }

    /// The operator's scheduled check: opens a corrective action plan for every KPI of an active contract with
    /// an overdue return and no plan in progress. Returns how many it opened.
    public func openPlansForOverdueReturns(_ scope: AccessScope) async throws -> Int {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "open corrective action plans")
        return try await database.transaction(scope) { connection in
            let opened = try await connection.query("""
                INSERT INTO corrective_action_plan (authority_id, contract_id, kpi_id, trigger)
                SELECT DISTINCT p.authority_id, p.contract_id, p.kpi_id, 'overdue'
                FROM reporting_period p JOIN contract c ON c.authority_id = p.authority_id AND c.id = p.contract_id
                WHERE c.status = 'active' AND p.due < current_date
                  AND NOT EXISTS (SELECT 1 FROM kpi_return r WHERE r.authority_id = p.authority_id AND r.period_id = p.id)
                  AND NOT EXISTS (SELECT 1 FROM corrective_action_plan a WHERE a.authority_id = p.authority_id AND a.kpi_id = p.kpi_id
                                  AND a.status <> 'closed')
                ON CONFLICT (authority_id, kpi_id) WHERE status <> 'closed' DO NOTHING
                RETURNING contract_id
                """).rowCount
            if opened > 0 {
                try await AuditLog.record(connection, action: "monitoring.overdue_plans", entityType: "corrective_action_plan",
                                          entityID: "overdue", before: nil, after: ["opened": String(opened)])
            }
            return opened
        }
    }

    /// Sets an academic year's three terms (authority admins, or the operator).
    public func setTermDates(_ scope: AccessScope, _ dates: TermDates) async throws {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "set term dates")
        var validator = Validator()
        validator.check(Set(dates.terms.map(\.name)) == ["autumn", "spring", "summer"] && dates.terms.count == 3, "terms",
                        "give autumn, spring and summer")
        var previousEnd: Date?
        for term in dates.terms {
            let starts = CalendarDate.parse(term.starts), ends = CalendarDate.parse(term.ends)
            validator.check(starts != nil && ends != nil, term.name, "dates must be YYYY-MM-DD")
            if let starts, let ends {
                validator.check(ends >= starts, term.name, "must not end before it starts")
                if let previousEnd { validator.check(starts > previousEnd, term.name, "terms must not overlap, in order autumn, spring, summer") }
                previousEnd = ends
            }
        }
        try validator.throwIfInvalid()
        try await database.transaction(scope) { connection in
            for term in dates.terms {
                try await connection.query("""
                    INSERT INTO term_dates (authority_id, academic_year, term, starts, ends)
                    VALUES (app_authority_id(), \(dates.academicYear), \(term.name), \(term.starts)::date, \(term.ends)::date)
                    ON CONFLICT (authority_id, academic_year, term) DO UPDATE SET starts = EXCLUDED.starts, ends = EXCLUDED.ends
                    """)
            }
            try await AuditLog.record(connection, action: "authority.term_dates", entityType: "term_dates", entityID: String(dates.academicYear),
                                      before: nil, after: Dictionary(dates.terms.map { ($0.name, "\($0.starts)..\($0.ends)") }, uniquingKeysWith: { a, _ in a }))
        }
    }

    public func periods(_ scope: AccessScope, contractID: UUID) async throws -> [PeriodStatus] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see returns")
        return try await database.transaction(scope, readOnly: true) { connection in
            let contract = try await ContractService.fetch(connection, id: contractID)
            return try await Self.periods(connection, contractID: contractID, contract: contract)
        }
    }

    /// `contract`: the contract as this transaction already read it, if it did (three statements fewer).
    static func periods(_ connection: PGConnection, contractID: UUID, contract known: Contract? = nil) async throws -> [PeriodStatus] {
        var periods = try await rawPeriods(connection, contractID: contractID)
        var previous: [UUID: RAGRating] = [:]
        for index in periods.indices where periods[index].latest != nil {
            let rating = periods[index].rating
            periods[index].performanceLevel = rating == .red && previous[periods[index].kpiID] == .red ? "Inadequate" : rating.procurementActLevel
            previous[periods[index].kpiID] = rating
        }
        // Blue: the contract is completed and the return met the KPI's target.
        let contract: Contract
        if let known { contract = known } else { contract = try await ContractService.fetch(connection, id: contractID) }
        if contract.status == .completed {
            for index in periods.indices {
                guard let latest = periods[index].latest, let kpi = contract.kpis.first(where: { $0.id == periods[index].kpiID }) else { continue }
                let definition = kpi.latest.definition
                let value: ReturnValue? = latest.actual.map(ReturnValue.number)
                    ?? latest.numerator.flatMap { n in latest.denominator.map { ReturnValue.fraction(numerator: n, denominator: $0) } }
                guard let value, let actual = try? RAG.actual(value), let target = Decimal(string: String(definition.target)),
                    let baseline = Decimal(string: String(definition.baseline))
                else { continue }
                if target >= baseline ? actual >= target : actual <= target { periods[index].computedRating = .blue }
            }
        }
        return periods
    }

    private static func rawPeriods(_ connection: PGConnection, contractID: UUID) async throws -> [PeriodStatus] {
        try await connection.query("""
            SELECT p.id, p.kpi_id, p.label, p.starts::text, p.ends::text, p.due::text,
                   r.version IS NULL AND current_date > p.due,
                   r.version, r.actual::text, r.numerator::text, r.denominator::text, coalesce(r.no_activity, false), r.no_activity_reason,
                   coalesce(r.narrative, ''), coalesce(r.evidence, ''), r.submitted_at, r.computed_rating, o.rating, o.reason,
                   coalesce((SELECT min(x.submitted_at)::date FROM kpi_return x WHERE x.authority_id = p.authority_id AND x.period_id = p.id) > p.due, false)
            FROM reporting_period p
            LEFT JOIN LATERAL (SELECT * FROM kpi_return k WHERE k.authority_id = p.authority_id AND k.period_id = p.id
                               ORDER BY k.version DESC LIMIT 1) r ON true
            LEFT JOIN rating_override o ON o.authority_id = p.authority_id AND o.period_id = p.id
            WHERE p.contract_id = \(contractID) ORDER BY p.kpi_id, p.starts
            """).map { row in
            let version = try row.decode(Int?.self, at: 7)
            var latest: KPIReturn?
            if let version {
                latest = KPIReturn(
                    version: version, actual: try row.decode(String?.self, at: 8).flatMap { Decimal(string: $0) },
                    numerator: try row.decode(String?.self, at: 9).flatMap { Decimal(string: $0) },
                    denominator: try row.decode(String?.self, at: 10).flatMap { Decimal(string: $0) },
                    noActivity: try row.decode(Bool.self, at: 11), noActivityReason: try row.decode(String?.self, at: 12),
                    narrative: try row.decode(String.self, at: 13), evidence: try row.decode(String.self, at: 14),
                    submittedAt: try row.decode(Date.self, at: 15))
            }
            return PeriodStatus(
                periodID: try row.decode(UUID.self, at: 0), kpiID: try row.decode(UUID.self, at: 1), label: try row.decode(String.self, at: 2),
                starts: try row.decode(String.self, at: 3), ends: try row.decode(String.self, at: 4), due: try row.decode(String.self, at: 5),
                overdue: try row.decode(Bool.self, at: 6), late: try row.decode(Bool.self, at: 19), latest: latest, versions: version ?? 0,
                computedRating: try storedEnum(try row.decode(String?.self, at: 16), column: "kpi_return.computed_rating"),
                overrideRating: try storedEnum(try row.decode(String?.self, at: 17), column: "rating_override.rating"),
                overrideReason: try row.decode(String?.self, at: 18))
        }
    }

    /// The supplier's return for one period (a correction is a new version); rated at once, and a corrective
    /// action plan opened when the KPI's ratings call for one.
    public func submit(_ scope: AccessScope, contractID: UUID, _ submission: ReturnSubmission) async throws -> PeriodStatus {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "submit returns")
        var validator = Validator()
        validator.text(submission.narrative, "narrative", required: false, max: 10_000)
        validator.text(submission.evidence, "evidence", required: false, max: 4000)
        if submission.value == nil { validator.text(submission.noActivityReason, "no_activity_reason", max: 2000) }
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            // The contract's row lock serialises the returns of a contract (and a return with the contract's
            // completion): each return's version number and the corrective action plan it may open are
            // decided after the previous return committed, so concurrent returns never collide.
            let contract = try await ContractService.lockForParty(connection, try await ContractService.fetch(connection, id: contractID))
            guard contract.status == .active else { throw DomainError.conflict("Returns are made against an active contract.") }
            guard let period = try await Self.periods(connection, contractID: contractID).first(where: { $0.periodID == submission.periodID }) else {
                throw DomainError.invalid("period_id", "is not a reporting period of this contract")
            }
            // A return reports on a period that has begun (by the database's date); one for a later period is
            // a mistake, not a forecast.
            let started = try await connection.query("SELECT current_date >= \(period.starts)::date").first!.decode(Bool.self, at: 0)
            guard started else {
                throw DomainError.invalid("period_id", "the reporting period \(period.label) starts on \(period.starts); returns are accepted once it has started")
            }
            guard let kpi = contract.kpis.first(where: { $0.id == period.kpiID }) else { throw DomainError.notFound("KPI") }
            let definition = kpi.latest.definition
            var rating: RAGRating?
            var actual: Decimal?
            var numerator: Decimal?
            var denominator: Decimal?
            if let value = submission.value {
                switch (definition.unit, value) {
                case (.percentage, .number):
                    throw DomainError.invalid("numerator", "a percentage KPI is reported as a numerator and a denominator")
                case (.count, .fraction), (.score, .fraction):
                    throw DomainError.invalid("actual", "this KPI is reported as a single figure")
                case (_, .fraction(let n, let d)):
                    numerator = n
                    denominator = d
                case (_, .number(let number)):
                    actual = number
                }
                let figure: Decimal
                do { figure = try RAG.actual(value) } catch RAG.Problem.zeroDenominator {
                    throw DomainError.invalid("denominator", "must not be zero")
                } catch {
                    throw DomainError.invalid("numerator", "must not be negative")
                }
                rating = RAG.rate(
                    actual: figure, baseline: Decimal(string: String(definition.baseline)) ?? 0,
                    target: Decimal(string: String(definition.target)) ?? 0, start: CalendarDate.parse(contract.startDate)!,
                    targetDate: CalendarDate.parse(definition.targetDate) ?? CalendarDate.parse(contract.endDate)!,
                    periodEnd: CalendarDate.parse(period.ends)!, amberThresholdPercent: definition.amberThresholdPercent)
            }
            let returnID = try await connection.query("""
                INSERT INTO kpi_return (authority_id, period_id, version, actual, numerator, denominator, no_activity, no_activity_reason,
                                        narrative, evidence, computed_rating, submitted_by)
                VALUES (\(contract.authorityID), \(submission.periodID), \(period.versions + 1), \(actual.map { "\($0)" })::numeric,
                        \(numerator.map { "\($0)" })::numeric, \(denominator.map { "\($0)" })::numeric, \(submission.value == nil),
                        \(submission.value == nil ? submission.noActivityReason : nil), \(submission.narrative), \(submission.evidence),
                        \(rating?.rawValue), current_setting('app.actor'))
                RETURNING id
                """).first!.decode(UUID.self, at: 0)
            let after = try await Self.periods(connection, contractID: contractID)
            let ratings = after.filter { $0.kpiID == period.kpiID && $0.latest != nil }.map(\.rating).filter { $0 != .white }
            let overdue = after.contains { $0.kpiID == period.kpiID && $0.overdue }
            if RAG.needsCorrectiveAction(ratings: ratings, overdue: overdue) {
                let trigger = overdue ? "overdue" : (ratings.last == .red ? "red" : "two_ambers")
                try await connection.query("""
                    INSERT INTO corrective_action_plan (authority_id, contract_id, kpi_id, trigger)
                    SELECT \(contract.authorityID), \(contractID), \(period.kpiID), \(trigger)
                    WHERE NOT EXISTS (SELECT 1 FROM corrective_action_plan WHERE kpi_id = \(period.kpiID) AND status <> 'closed')
                    ON CONFLICT (authority_id, kpi_id) WHERE status <> 'closed' DO NOTHING
                    """)
            }
            let status = after.first { $0.periodID == submission.periodID }!
            try await AuditLog.record(connection, action: "contract.return", entityType: "contract", entityID: contractID.lowercased,
                                      before: nil, after: status)
            // The period's actual and rating in the open contracting feed, where the authority publishes them.
            try await OCDSReleaseKind.publish(connection, projectID: contract.projectID, .kpiReturn, ref: returnID)
            return status
        }
    }

    /// The contract manager's rating, with a reason, kept beside the computed one.
    public func override(_ scope: AccessScope, contractID: UUID, periodID: UUID, rating: RAGRating, reason: String) async throws -> PeriodStatus {
        try scope.require(scope.isStaff && scope.has(.lim), "override ratings")
        var validator = Validator()
        validator.text(reason, "reason", max: 4000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let contract = try await ContractService.fetch(connection, id: contractID)
            guard try await ContractService.party(connection, contract) == .board else { throw DomainError.forbidden("Only the board's LIMs override ratings.") }
            guard let before = try await Self.periods(connection, contractID: contractID).first(where: { $0.periodID == periodID }) else {
                throw DomainError.notFound("reporting period")
            }
            try await connection.query("""
                INSERT INTO rating_override (authority_id, period_id, rating, reason, recorded_by)
                VALUES (\(contract.authorityID), \(periodID), \(rating.rawValue), \(reason), current_setting('app.actor'))
                ON CONFLICT (authority_id, period_id) DO UPDATE SET rating = EXCLUDED.rating, reason = EXCLUDED.reason,
                    recorded_by = EXCLUDED.recorded_by, recorded_at = now()
                """)
            let after = try await Self.periods(connection, contractID: contractID).first { $0.periodID == periodID }!
            try await AuditLog.record(connection, action: "contract.rating_override", entityType: "contract", entityID: contractID.lowercased,
                                      before: before, after: after)
            try await OCDSReleaseKind.publish(connection, projectID: contract.projectID, .ratingOverride, ref: periodID)
            return after
        }
    }

    public func correctiveActions(_ scope: AccessScope, contractID: UUID) async throws -> [CorrectiveActionPlan] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see corrective actions")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await ContractService.fetch(connection, id: contractID)
            return try await Self.plans(connection, contractID: contractID)
        }
    }

    /// The supplier records the root cause and the actions (owner, due date).
    public func proposePlan(_ scope: AccessScope, contractID: UUID, planID: UUID, rootCause: String, actions: [CorrectiveAction]) async throws -> CorrectiveActionPlan {
        var validator = Validator()
        validator.text(rootCause, "root_cause", max: 4000)
        validator.check(!actions.isEmpty, "actions", "name at least one action")
        for (index, action) in actions.enumerated() {
            validator.text(action.description, "actions[\(index)].description", max: 2000)
            validator.text(action.owner, "actions[\(index)].owner", max: 200)
            validator.check(CalendarDate.parse(action.dueDate) != nil, "actions[\(index)].due_date", "must be a date (YYYY-MM-DD)")
        }
        try validator.throwIfInvalid()
        return try await changePlan(scope, contractID: contractID, planID: planID, party: .supplier, from: ["open"], action: "propose") { connection in
            try await connection.query("""
                UPDATE corrective_action_plan SET status = 'proposed', root_cause = \(rootCause),
                    actions = \(try ProjectService.json(actions.map { CorrectiveAction(description: $0.description, owner: $0.owner, dueDate: $0.dueDate) }))::jsonb
                WHERE id = \(planID)
                """)
        }
    }

    /// The contract manager agrees the plan, or sends it back to the supplier.
    public func decidePlan(_ scope: AccessScope, contractID: UUID, planID: UUID, agree: Bool) async throws -> CorrectiveActionPlan {
        try await changePlan(scope, contractID: contractID, planID: planID, party: .board, from: ["proposed"], action: agree ? "agree" : "send_back") { connection in
            try await connection.query("UPDATE corrective_action_plan SET status = \(agree ? "agreed" : "open") WHERE id = \(planID)")
        }
    }

    /// Either party marks an agreed plan's action done.
    public func completeAction(_ scope: AccessScope, contractID: UUID, planID: UUID, index: Int, on date: String) async throws -> CorrectiveActionPlan {
        guard CalendarDate.parse(date) != nil else { throw DomainError.invalid("done_on", "must be a date (YYYY-MM-DD)") }
        return try await changePlan(scope, contractID: contractID, planID: planID, party: nil, from: ["agreed"], action: "action_done") { connection in
            let changed = try await connection.query("""
                UPDATE corrective_action_plan SET actions = jsonb_set(actions, ARRAY[\(index)::text, 'done_on'], to_jsonb(\(date)::text))
                WHERE id = \(planID) AND \(index) >= 0 AND \(index) < jsonb_array_length(actions)
                """).affectedRows
            guard changed == 1 else { throw DomainError.invalid("index", "is not an action of this plan") }
        }
    }

    /// The contract manager closes the plan with its outcome.
    public func closePlan(_ scope: AccessScope, contractID: UUID, planID: UUID, outcome: String) async throws -> CorrectiveActionPlan {
        guard ["resolved", "partly_resolved", "not_resolved"].contains(outcome) else {
            throw DomainError.invalid("outcome", "must be resolved, partly_resolved or not_resolved")
        }
        return try await changePlan(scope, contractID: contractID, planID: planID, party: .board, from: ["agreed"], action: "close") { connection in
            try await connection.query("UPDATE corrective_action_plan SET status = 'closed', outcome = \(outcome) WHERE id = \(planID)")
        }
    }

    private func changePlan(
        _ scope: AccessScope, contractID: UUID, planID: UUID, party required: ContractParty?, from states: Set<String>, action: String,
        _ change: (PGConnection) async throws -> Void
    ) async throws -> CorrectiveActionPlan {
        try scope.require(scope.isStaff ? scope.has(.lim) : scope.has(.supplierUser), "work on corrective actions")
        return try await database.transaction(scope) { connection in
            let contract = try await ContractService.fetch(connection, id: contractID)
            guard let party = try await ContractService.party(connection, contract) else { throw DomainError.forbidden("Only the contract's parties work on its plans.") }
            if let required, party != required {
                throw DomainError.forbidden(required == .board ? "The contract manager does this." : "The supplier does this.")
            }
            // The plan's row lock first, then its state: of two concurrent moves (two closes, an agreement and a
            // sending back) the second sees the first and hears 409.
            try await connection.query("SELECT 1 FROM corrective_action_plan WHERE id = \(planID) AND contract_id = \(contractID) FOR UPDATE")
            guard let before = try await Self.plans(connection, contractID: contractID).first(where: { $0.id == planID }) else {
                throw DomainError.notFound("corrective action plan")
            }
            guard states.contains(before.status) else {
                throw DomainError.stateConflict(type: "plan-state", "The plan is \(before.status); it cannot be changed that way now.")
            }
            try await change(connection)
            let after = try await Self.plans(connection, contractID: contractID).first { $0.id == planID }!
            try await AuditLog.record(connection, action: "contract.corrective_action.\(action)", entityType: "contract",
                                      entityID: contractID.lowercased, before: before, after: after)
            return after
        }
    }

    static func plans(_ connection: PGConnection, contractID: UUID) async throws -> [CorrectiveActionPlan] {
        let today = try await connection.query("SELECT current_date::text").first!.decode(String.self, at: 0)
        return try await connection.query("""
            SELECT id, kpi_id, trigger, status, root_cause, actions::text, outcome, opened_at FROM corrective_action_plan
            WHERE contract_id = \(contractID) ORDER BY opened_at, id
            """).map { row in
            let (id, kpi, trigger, status, rootCause, actionsText, outcome, opened) = try row.decode(
                UUID.self, UUID.self, String.self, String.self, String.self, String.self, String?.self, Date.self)
            let decoder = JSONDecoder()
            decoder.keyDecodingStrategy = .convertFromSnakeCase
            let actions = try decoder.decode([CorrectiveAction].self, from: Data(actionsText.utf8))
            return CorrectiveActionPlan(id: id, kpiID: kpi, trigger: trigger, status: status, rootCause: rootCause, actions: actions,
                                        outcome: outcome, openedAt: opened,
                                        overdueActions: actions.filter { $0.doneOn == nil && $0.dueDate < today }.count)
        }
    }
}
