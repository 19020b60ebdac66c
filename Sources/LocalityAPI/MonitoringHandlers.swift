import Foundation
import LocalityDomain

extension APIHandlers {
    func listReturns(_ input: Operations.ListReturns.Input) async throws -> Operations.ListReturns.Output {
        let periods = try await services.monitoring.periods(try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(items: periods.map(Components.Schemas.Period.init)))))
    }

    func submitReturn(_ input: Operations.SubmitReturn.Input) async throws -> Operations.SubmitReturn.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let periodID = UUID(uuidString: body.periodId) else { throw DomainError.invalid("period_id", "must be a UUID") }
        func decimal(_ text: String?, _ field: String) throws -> Decimal? {
            guard let text else { return nil }
            guard text.isWholeMatch(of: #"^-?[0-9]{1,12}(\.[0-9]{1,6})?$"#), let value = Decimal(string: text) else {
                throw DomainError.invalid(field, "must be a decimal number")
            }
            return value
        }
        let actual = try decimal(body.actual, "actual")
        let numerator = try decimal(body.numerator, "numerator")
        let denominator = try decimal(body.denominator, "denominator")
        var value: ReturnValue?
        switch (actual, numerator, denominator, body.noActivityReason) {
        case (let actual?, nil, nil, nil): value = .number(actual)
        case (nil, let numerator?, let denominator?, nil): value = .fraction(numerator: numerator, denominator: denominator)
        case (nil, nil, nil, _?): value = nil
        default:
            throw DomainError.invalid("actual", "give an actual figure, a numerator and denominator, or a no-activity reason — one of them")
        }
        let status = try await services.monitoring.submit(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"),
            ReturnSubmission(periodID: periodID, value: value, noActivityReason: body.noActivityReason, narrative: body.narrative ?? "",
                             evidence: body.evidence ?? ""))
        return .ok(.init(body: .json(.init(status))))
    }

    func overrideRating(_ input: Operations.OverrideRating.Input) async throws -> Operations.OverrideRating.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let status = try await services.monitoring.override(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"),
            periodID: try pathID(input.path.periodId, "reporting period"), rating: RAGRating(rawValue: body.rating.rawValue) ?? .white,
            reason: body.reason)
        return .ok(.init(body: .json(.init(status))))
    }

    func listCorrectiveActions(_ input: Operations.ListCorrectiveActions.Input) async throws -> Operations.ListCorrectiveActions.Output {
        let plans = try await services.monitoring.correctiveActions(try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(items: plans.map(Components.Schemas.CorrectiveAction.init)))))
    }

    func proposeCorrectiveAction(_ input: Operations.ProposeCorrectiveAction.Input) async throws -> Operations.ProposeCorrectiveAction.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let plan = try await services.monitoring.proposePlan(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), planID: try pathID(input.path.planId, "plan"),
            rootCause: body.rootCause, actions: body.actions.map { CorrectiveAction(description: $0.description, owner: $0.owner, dueDate: $0.dueDate) })
        return .ok(.init(body: .json(.init(plan))))
    }

    func decideCorrectiveAction(_ input: Operations.DecideCorrectiveAction.Input) async throws -> Operations.DecideCorrectiveAction.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let plan = try await services.monitoring.decidePlan(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), planID: try pathID(input.path.planId, "plan"),
            agree: body.agree)
        return .ok(.init(body: .json(.init(plan))))
    }

    func completeCorrectiveAction(_ input: Operations.CompleteCorrectiveAction.Input) async throws -> Operations.CompleteCorrectiveAction.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let plan = try await services.monitoring.completeAction(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), planID: try pathID(input.path.planId, "plan"),
            index: body.index, on: body.doneOn)
        return .ok(.init(body: .json(.init(plan))))
    }

    func closeCorrectiveAction(_ input: Operations.CloseCorrectiveAction.Input) async throws -> Operations.CloseCorrectiveAction.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let plan = try await services.monitoring.closePlan(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), planID: try pathID(input.path.planId, "plan"),
            outcome: body.outcome.rawValue)
        return .ok(.init(body: .json(.init(plan))))
    }
}

extension Components.Schemas.Period {
    init(_ period: PeriodStatus) {
        self.init(
            periodId: period.periodID.lowercased, kpiId: period.kpiID.lowercased, label: period.label, starts: period.starts, ends: period.ends,
            due: period.due, overdue: period.overdue, late: period.late, versions: period.versions,
            latest: period.latest.map {
                .init(version: $0.version, actual: $0.actual.map { "\($0)" }, numerator: $0.numerator.map { "\($0)" },
                      denominator: $0.denominator.map { "\($0)" }, noActivity: $0.noActivity, noActivityReason: $0.noActivityReason,
                      narrative: $0.narrative, evidence: $0.evidence, submittedAt: $0.submittedAt)
            },
            computedRating: period.computedRating.flatMap { .init(rawValue: $0.rawValue) },
            overrideRating: period.overrideRating.flatMap { .init(rawValue: $0.rawValue) }, overrideReason: period.overrideReason,
            rating: .init(rawValue: period.rating.rawValue) ?? .white, procurementActLevel: period.performanceLevel ?? period.rating.procurementActLevel)
    }
}

extension Components.Schemas.CorrectiveAction {
    init(_ plan: CorrectiveActionPlan) {
        self.init(
            actions: plan.actions.map { .init(description: $0.description, owner: $0.owner, dueDate: $0.dueDate, doneOn: $0.doneOn) },
            outcome: plan.outcome, overdueActions: plan.overdueActions, id: plan.id.lowercased, kpiId: plan.kpiID.lowercased,
            trigger: plan.trigger, status: plan.status, rootCause: plan.rootCause, openedAt: plan.openedAt)
    }
}

extension APIHandlers {
    func listVisits(_ input: Operations.ListVisits.Input) async throws -> Operations.ListVisits.Output {
        let visits = try await services.records.visits(try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(items: visits.map(Components.Schemas.Visit.init)))))
    }

    func recordVisit(_ input: Operations.RecordVisit.Input) async throws -> Operations.RecordVisit.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let visit = try await services.records.recordVisit(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), date: body.visitDate, kind: body.kind.rawValue,
            attendees: body.attendees, findings: body.findings ?? "", followUps: body.followUps ?? "")
        return .created(.init(headers: .init(location: "/v1/contracts/\(input.path.contractId)/visits"), body: .json(.init(visit))))
    }

    func listComplaints(_ input: Operations.ListComplaints.Input) async throws -> Operations.ListComplaints.Output {
        let complaints = try await services.records.complaints(try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(items: complaints.map(Components.Schemas.Complaint.init)))))
    }

    func logComplaint(_ input: Operations.LogComplaint.Input) async throws -> Operations.LogComplaint.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let complaint = try await services.records.logComplaint(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), receivedOn: body.receivedOn,
            nature: body.nature, actionTaken: body.actionTaken ?? "")
        return .created(.init(headers: .init(location: "/v1/contracts/\(input.path.contractId)/complaints"), body: .json(.init(complaint))))
    }

    func resolveComplaint(_ input: Operations.ResolveComplaint.Input) async throws -> Operations.ResolveComplaint.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let complaint = try await services.records.resolveComplaint(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"),
            complaintID: try pathID(input.path.complaintId, "complaint"), resolution: body.resolution, resolvedOn: body.resolvedOn,
            actionTaken: body.actionTaken)
        return .ok(.init(body: .json(.init(complaint))))
    }
}

extension Components.Schemas.Visit {
    init(_ visit: MonitoringVisit) {
        self.init(id: visit.id.lowercased, visitDate: visit.visitDate, kind: .init(rawValue: visit.kind) ?? .planned, attendees: visit.attendees,
                  findings: visit.findings, followUps: visit.followUps)
    }
}

extension Components.Schemas.Complaint {
    init(_ complaint: Complaint) {
        self.init(id: complaint.id.lowercased, receivedOn: complaint.receivedOn, nature: complaint.nature, actionTaken: complaint.actionTaken,
                  resolution: complaint.resolution, resolvedOn: complaint.resolvedOn)
    }
}
