import Foundation
import LocalityDomain

extension APIHandlers {
    func getSPIP(_ input: Operations.GetSPIP.Input) async throws -> Operations.GetSPIP.Output {
        let spip = try await services.spip.get(try Authenticated.scope(), urn: input.path.urn)
        return .ok(.init(body: .json(.init(spip))))
    }

    func addSPIPPriority(_ input: Operations.AddSPIPPriority.Input) async throws -> Operations.AddSPIPPriority.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let spip = try await services.spip.addPriority(try Authenticated.scope(), urn: input.path.urn, priority: body.priority, actions: body.actions ?? [])
        return .ok(.init(body: .json(.init(spip))))
    }

    func recordSchoolContract(_ input: Operations.RecordSchoolContract.Input) async throws -> Operations.RecordSchoolContract.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let supplierID = UUID(uuidString: body.supplierId) else { throw DomainError.invalid("supplier_id", "must be a UUID") }
        guard let value = Int(exactly: body.valuePence) else { throw DomainError.invalid("value_pence", "is out of range") }
        let spip = try await services.spip.recordContract(
            try Authenticated.scope(), urn: input.path.urn,
            SchoolContractDraft(supplierID: supplierID, service: body.service.rawValue, description: body.description, valuePence: value,
                                financialYear: body.financialYear, startDate: body.startDate, endDate: body.endDate))
        return .created(.init(headers: .init(location: "/v1/schools/\(input.path.urn)/spip"), body: .json(.init(spip))))
    }

    func listSchoolContracts(_ input: Operations.ListSchoolContracts.Input) async throws -> Operations.ListSchoolContracts.Output {
        let page = try await services.spip.listContracts(
            try Authenticated.scope(), page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(PreEncodedBody.offer(.init(items: page.items.map(Components.Schemas.SchoolContract.init), nextCursor: page.nextCursor), standIn: .init(items: [])))))
    }

    func addSchoolContractOutput(_ input: Operations.AddSchoolContractOutput.Input) async throws -> Operations.AddSchoolContractOutput.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.spip.addOutput(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "school contract"), title: body.title, summary: body.summary ?? "")
        return .ok(.init(body: .json(.init(contract))))
    }

    func assessSchoolContract(_ input: Operations.AssessSchoolContract.Input) async throws -> Operations.AssessSchoolContract.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let contract = try await services.spip.assess(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "school contract"), assessedOn: body.assessedOn,
            progress: body.progress.rawValue, note: body.note)
        return .ok(.init(body: .json(.init(contract))))
    }
}

extension Components.Schemas.Spip {
    init(_ spip: SPIP) {
        self.init(school: .init(spip.school),
                  priorities: spip.priorities.map { .init(id: $0.id.lowercased, priority: $0.priority, actions: $0.actions, createdAt: $0.createdAt) },
                  contracts: spip.contracts.map(Components.Schemas.SchoolContract.init))
    }
}

extension Components.Schemas.SchoolContract {
    init(_ contract: SchoolContract) {
        self.init(id: contract.id.lowercased, urn: contract.urn, supplierId: contract.supplierID.lowercased, supplierName: contract.supplierName,
                  service: contract.service, description: contract.description, valuePence: Int64(contract.valuePence),
                  startDate: contract.startDate, endDate: contract.endDate,
                  outputs: contract.outputs.map { .init(title: $0.title, summary: $0.summary, submittedAt: $0.submittedAt) },
                  assessments: contract.assessments.map { .init(assessedOn: $0.assessedOn, progress: $0.progress, note: $0.note) })
    }
}
