import Foundation
import LocalityDomain
import OpenAPIRuntime

extension APIHandlers {
    func getPanel(_ input: Operations.GetPanel.Input) async throws -> Operations.GetPanel.Output {
        let members = try await services.evaluation.panel(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(members: members.map { .init(userId: $0.userID.lowercased, displayName: $0.displayName) }))))
    }

    func setPanel(_ input: Operations.SetPanel.Input) async throws -> Operations.SetPanel.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let ids = try body.memberIds.enumerated().map { index, text in
            guard let id = UUID(uuidString: text) else { throw DomainError.invalid("member_ids[\(index)]", "must be a UUID") }
            return id
        }
        let members = try await services.evaluation.setPanel(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"), memberIDs: ids)
        return .ok(.init(body: .json(.init(members: members.map { .init(userId: $0.userID.lowercased, displayName: $0.displayName) }))))
    }

    func listBidders(_ input: Operations.ListBidders.Input) async throws -> Operations.ListBidders.Output {
        let bidders = try await services.evaluation.bidders(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(items: bidders.map { .init(supplierId: $0.supplierID.lowercased, supplierName: $0.supplierName) }))))
    }

    func listDeclarations(_ input: Operations.ListDeclarations.Input) async throws -> Operations.ListDeclarations.Output {
        let declarations = try await services.evaluation.declarations(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(items: declarations.map(Components.Schemas.Declaration.init)))))
    }

    func declareConflict(_ input: Operations.DeclareConflict.Input) async throws -> Operations.DeclareConflict.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let supplierID = UUID(uuidString: body.supplierId) else { throw DomainError.invalid("supplier_id", "must be a UUID") }
        let declaration = try await services.evaluation.declare(
            try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"), supplierID: supplierID,
            conflicted: body.conflicted, note: body.note ?? "")
        return .created(.init(headers: .init(location: "/v1/projects/\(input.path.projectId)/declarations"), body: .json(.init(declaration))))
    }

    func listScores(_ input: Operations.ListScores.Input) async throws -> Operations.ListScores.Output {
        let scores = try await services.evaluation.scores(try Authenticated.scope(), bidID: try pathID(input.path.bidId, "bid"))
        return .ok(.init(body: .json(.init(items: scores.map(Components.Schemas.MemberScores.init)))))
    }

    func saveScores(_ input: Operations.SaveScores.Input) async throws -> Operations.SaveScores.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let saved = try await services.evaluation.saveScores(
            try Authenticated.scope(), bidID: try pathID(input.path.bidId, "bid"), body.scores.map(CriterionScore.init), submit: body.submit)
        return .ok(.init(body: .json(.init(saved))))
    }

    func moderateScore(_ input: Operations.ModerateScore.Input) async throws -> Operations.ModerateScore.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let moderated = try await services.evaluation.moderate(try Authenticated.scope(), bidID: try pathID(input.path.bidId, "bid"), CriterionScore(body))
        return .ok(.init(body: .json(.init(items: moderated.map(Components.Schemas.CriterionScore.init)))))
    }

    func setCompliance(_ input: Operations.SetCompliance.Input) async throws -> Operations.SetCompliance.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let bid = try await services.evaluation.setCompliance(
            try Authenticated.scope(), bidID: try pathID(input.path.bidId, "bid"), compliant: body.compliant, reason: body.reason)
        return .ok(.init(body: .json(.init(bid))))
    }

    func getEvaluationReport(_ input: Operations.GetEvaluationReport.Input) async throws -> Operations.GetEvaluationReport.Output {
        let report = try await services.evaluation.report(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(
            projectId: report.projectID.lowercased, evaluation: Components.Schemas.Project.evaluationModel(report.model),
            lines: report.lines.map { line in
                .init(bidId: line.bidID.lowercased, supplierId: line.supplierID.lowercased, supplierName: line.supplierName,
                      pricePence: Int64(line.pricePence), compliant: line.compliant, nonComplianceReason: line.nonComplianceReason,
                      submittedAt: line.submittedAt, moderated: line.moderated.map(Components.Schemas.CriterionScore.init),
                      individual: line.individual.map(Components.Schemas.MemberScores.init),
                      priceScore: Scoring.display(line.scored.priceScore) ?? "0.00", qualityScore: Scoring.display(line.scored.qualityScore),
                      socialValueScore: Scoring.display(line.scored.socialValueScore), total: Scoring.display(line.scored.total),
                      rank: line.scored.rank)
            }))))
    }

    func exportEvaluationReport(_ input: Operations.ExportEvaluationReport.Input) async throws -> Operations.ExportEvaluationReport.Output {
        let report = try await services.evaluation.report(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .csv(HTTPBody(EvaluationService.csv(report)))))
    }

    func awardProject(_ input: Operations.AwardProject.Input) async throws -> Operations.AwardProject.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let bidID = UUID(uuidString: body.bidId) else { throw DomainError.invalid("bid_id", "must be a UUID") }
        let contract = try await services.contracts.award(
            try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"), bidID: bidID, reason: body.reason)
        return .created(.init(headers: .init(location: "/v1/contracts/\(contract.id.lowercased)"), body: .json(.init(contract))))
    }

    // MARK: Contracts

    func listContracts(_ input: Operations.ListContracts.Input) async throws -> Operations.ListContracts.Output {
        let page = try await services.contracts.list(
            try Authenticated.scope(), page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(PreEncodedBody.offer(.init(items: page.items.map(Components.Schemas.Contract.init), nextCursor: page.nextCursor),
                                                               standIn: .init(items: [])))))
    }

    func getContract(_ input: Operations.GetContract.Input) async throws -> Operations.GetContract.Output {
        let contract = try await services.contracts.get(try Authenticated.scope(), id: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(contract))))
    }

    func addContractKPI(_ input: Operations.AddContractKPI.Input) async throws -> Operations.AddContractKPI.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.contracts.addKPI(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), KPIDefinition(body.definition))
        return .ok(.init(body: .json(.init(contract))))
    }

    func reviseContractKPI(_ input: Operations.ReviseContractKPI.Input) async throws -> Operations.ReviseContractKPI.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.contracts.reviseKPI(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), kpiID: try pathID(input.path.kpiId, "KPI"),
            definition: body.definition.map(KPIDefinition.init), removal: body.removal ?? false, reason: body.reason ?? "")
        return .ok(.init(body: .json(.init(contract))))
    }

    func acceptContractKPI(_ input: Operations.AcceptContractKPI.Input) async throws -> Operations.AcceptContractKPI.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.contracts.acceptKPI(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), kpiID: try pathID(input.path.kpiId, "KPI"),
            revision: body.revision)
        return .ok(.init(body: .json(.init(contract))))
    }

    func startContract(_ input: Operations.StartContract.Input) async throws -> Operations.StartContract.Output {
        let contract = try await services.contracts.start(try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(contract))))
    }

    func completeContract(_ input: Operations.CompleteContract.Input) async throws -> Operations.CompleteContract.Output {
        let contract = try await services.contracts.complete(try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"))
        return .ok(.init(body: .json(.init(contract))))
    }

    func terminateContract(_ input: Operations.TerminateContract.Input) async throws -> Operations.TerminateContract.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let paid = Int(exactly: body.amountPaidPence) else { throw DomainError.invalid("amount_paid_pence", "is out of range") }
        let contract = try await services.contracts.terminate(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), reason: body.reason, amountPaidPence: paid)
        return .ok(.init(body: .json(.init(contract))))
    }

    func proposeVariation(_ input: Operations.ProposeVariation.Input) async throws -> Operations.ProposeVariation.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.contracts.proposeVariation(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), reason: body.reason,
            valuePence: try body.valuePence.map { value in
                guard let pence = Int(exactly: value) else { throw DomainError.invalid("value_pence", "is out of range") }
                return pence
            },
            endDate: body.endDate,
            kpis: try (body.kpis ?? []).enumerated().map { index, kpi in
                VariationKPI(kpiID: try bodyID(kpi.kpiId, field: "kpis[\(index)].kpi_id"), definition: KPIDefinition(kpi.definition),
                             removal: kpi.removal ?? false)
            })
        return .ok(.init(body: .json(.init(contract))))
    }

    func decideVariation(_ input: Operations.DecideVariation.Input) async throws -> Operations.DecideVariation.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.contracts.decideVariation(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"),
            variationID: try pathID(input.path.variationId, "variation"), accept: body.accept)
        return .ok(.init(body: .json(.init(contract))))
    }
}

extension CriterionScore {
    init(_ score: Components.Schemas.CriterionScore) {
        self.init(kind: CriterionKind(rawValue: score.kind.rawValue) ?? .quality, criterion: score.criterion, score: score.score,
                  comment: score.comment)
    }
}

extension Components.Schemas.CriterionScore {
    init(_ score: CriterionScore) {
        self.init(kind: .init(rawValue: score.kind.rawValue) ?? .quality, criterion: score.criterion, score: score.score, comment: score.comment)
    }
}

extension Components.Schemas.MemberScores {
    init(_ scores: MemberScores) {
        self.init(userId: scores.userID.lowercased, submitted: scores.submitted, scores: scores.scores.map(Components.Schemas.CriterionScore.init))
    }
}

extension Components.Schemas.Declaration {
    init(_ declaration: ConflictDeclaration) {
        self.init(userId: declaration.userID.lowercased, supplierId: declaration.supplierID.lowercased, conflicted: declaration.conflicted,
                  note: declaration.note, declaredAt: declaration.declaredAt)
    }
}

extension KPIDefinition {
    init(_ definition: Components.Schemas.KPIDefinition) {
        self.init(title: definition.title, measure: definition.measure, unit: KPIUnit(rawValue: definition.unit.rawValue) ?? .count,
                  baseline: definition.baseline, target: definition.target, targetDate: definition.targetDate,
                  frequency: ReportingFrequency(rawValue: definition.frequency.rawValue) ?? .termly, evidenceSource: definition.evidenceSource,
                  amberThresholdPercent: definition.amberThresholdPercent ?? 80)
    }
}

extension Components.Schemas.KPIDefinition {
    init(_ definition: KPIDefinition) {
        self.init(title: definition.title, measure: definition.measure, unit: .init(rawValue: definition.unit.rawValue) ?? .count,
                  baseline: definition.baseline, target: definition.target, targetDate: definition.targetDate,
                  frequency: .init(rawValue: definition.frequency.rawValue) ?? .termly, evidenceSource: definition.evidenceSource,
                  amberThresholdPercent: definition.amberThresholdPercent)
    }
}

extension Components.Schemas.Contract {
    init(_ contract: Contract) {
        self.init(
            id: contract.id.lowercased, projectId: contract.projectID.lowercased, bidId: contract.bidID.lowercased,
            supplierId: contract.supplierID.lowercased, valuePence: Int64(contract.valuePence), startDate: contract.startDate,
            endDate: contract.endDate, contractManager: contract.contractManager, standstillEndsOn: contract.standstillEndsOn,
            status: .init(rawValue: contract.status.rawValue) ?? .kpiNegotiation,
            socialValue: contract.socialValue.map {
                .init(measureCode: $0.measureCode, measureName: $0.measureName, unit: $0.unit, quantity: $0.quantity, proxyValuePence: Int64($0.proxyValuePence))
            },
            terminationReason: contract.terminationReason, amountPaidPence: contract.amountPaidPence.map(Int64.init),
            kpis: contract.kpis.map { kpi in
                .init(id: kpi.id.lowercased, agreed: kpi.agreed, removed: kpi.removed, revisions: kpi.revisions.map { revision in
                    .init(revision: revision.revision, proposedBy: .init(rawValue: revision.proposedBy.rawValue) ?? .board, removal: revision.removal,
                          definition: .init(revision.definition), reason: revision.reason,
                          acceptedBy: revision.acceptedBy.compactMap { .init(rawValue: $0.rawValue) }, createdAt: revision.createdAt)
                })
            },
            variations: contract.variations.map { variation in
                .init(id: variation.id.lowercased, proposedBy: .init(rawValue: variation.proposedBy.rawValue) ?? .board, reason: variation.reason,
                      valuePence: variation.valuePence.map(Int64.init), endDate: variation.endDate,
                      kpis: variation.kpis.map { .init(kpiId: $0.kpiID?.lowercased, definition: .init($0.definition), removal: $0.removal) },
                      status: .init(rawValue: variation.status) ?? .proposed, createdAt: variation.createdAt, decidedAt: variation.decidedAt)
            })
    }
}
