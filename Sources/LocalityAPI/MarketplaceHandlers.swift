import Foundation
import LocalityDomain

// Suppliers, admission and catalogues.
extension APIHandlers {
    func registerSupplier(_ input: Operations.RegisterSupplier.Input) async throws -> Operations.RegisterSupplier.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let registered = try await services.suppliers.register(SupplierRegistration(
            name: body.name, companiesHouseNumber: body.companiesHouseNumber, charityNumber: body.charityNumber,
            address: body.address, contactName: body.contactName, contactEmail: body.contactEmail,
            contactPhone: body.contactPhone ?? "", userEmail: body.userEmail, userName: body.userName),
            requestID: RequestInfo.current?.requestID)
        // The new supplier user's own view, reached with the token in this answer.
        return .created(.init(headers: .init(location: "/v1/me"), body: .json(.init(
            supplier: .init(registered.supplier), userId: registered.user.id.lowercased,
            token: .init(token: .init(registered.token.token), secret: registered.token.secret)))))
    }

    func listAuthorities(_ input: Operations.ListAuthorities.Input) async throws -> Operations.ListAuthorities.Output {
        let scope = try Authenticated.scope()
        let page = try await services.authorities.directory(scope, page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(.init(items: page.items.map { .init(id: $0.id.lowercased, slug: $0.slug, name: $0.name) },
                                           nextCursor: page.nextCursor))))
    }

    func listMyAdmissions(_ input: Operations.ListMyAdmissions.Input) async throws -> Operations.ListMyAdmissions.Output {
        let scope = try Authenticated.scope()
        try scope.require(scope.supplierID != nil, "see a supplier's admissions")
        let page = try await services.admissions.list(scope, page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(.init(items: page.items.map(Components.Schemas.Admission.init), nextCursor: page.nextCursor))))
    }

    func applyForAdmission(_ input: Operations.ApplyForAdmission.Input) async throws -> Operations.ApplyForAdmission.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let d = body.declarations
        let admission = try await services.admissions.apply(
            try Authenticated.scope(), authority: body.authority,
            AdmissionDeclarations(
                safeguardingPolicy: d.safeguardingPolicy, safeguardingLead: d.safeguardingLead, insuranceProvider: d.insuranceProvider,
                insuranceExpiresOn: d.insuranceExpiresOn, dbsChecks: d.dbsChecks, businessContinuityPlan: d.businessContinuityPlan,
                dataProtectionCompliance: d.dataProtectionCompliance, environmentalPolicy: d.environmentalPolicy))
        return .created(.init(headers: .init(location: "/v1/supplier/admissions"), body: .json(.init(admission))))
    }

    func listAdmissions(_ input: Operations.ListAdmissions.Input) async throws -> Operations.ListAdmissions.Output {
        let scope = try Authenticated.scope()
        try scope.require(scope.isStaff, "see applications to an authority")
        var status: AdmissionStatus?
        if let text = input.query.status?.rawValue {
            guard let parsed = AdmissionStatus(rawValue: text) else { throw DomainError.invalid("status", "is not an admission status") }
            status = parsed
        }
        let page = try await services.admissions.list(scope, status: status,
                                                      page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(.init(items: page.items.map(Components.Schemas.Admission.init), nextCursor: page.nextCursor))))
    }

    func decideAdmission(_ input: Operations.DecideAdmission.Input) async throws -> Operations.DecideAdmission.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let decision = AdmissionDecision(rawValue: body.decision.rawValue) ?? .reject
        let admission = try await services.admissions.decide(
            try Authenticated.scope(), supplierID: try pathID(input.path.supplierId, "admission"), decision: decision, reason: body.reason)
        return .ok(.init(body: .json(.init(admission))))
    }

    func listThemes(_ input: Operations.ListThemes.Input) async throws -> Operations.ListThemes.Output {
        let scope = try Authenticated.scope()
        let authorityID = try await authorityFilter(scope, input.query.authority)
        let themes = try await services.catalogue.themes(scope, authorityID: authorityID, includeRetired: input.query.includeRetired ?? false)
        return .ok(.init(body: .json(.init(items: themes.map(Components.Schemas.Theme.init)))))
    }

    func createTheme(_ input: Operations.CreateTheme.Input) async throws -> Operations.CreateTheme.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let theme = try await services.catalogue.createTheme(
            try Authenticated.scope(), category: ThemeCategory(rawValue: body.category.rawValue) ?? .send, name: body.name,
            description: body.description ?? "", exampleOutcomes: body.exampleOutcomes ?? "")
        return .created(.init(headers: .init(location: "/v1/themes/\(theme.id.lowercased)"), body: .json(.init(theme))))
    }

    func updateTheme(_ input: Operations.UpdateTheme.Input) async throws -> Operations.UpdateTheme.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let theme = try await services.catalogue.setThemeRetired(
            try Authenticated.scope(), id: try pathID(input.path.themeId, "theme"), retired: body.retired)
        return .ok(.init(body: .json(.init(theme))))
    }

    func listSocialValueMeasures(_ input: Operations.ListSocialValueMeasures.Input) async throws -> Operations.ListSocialValueMeasures.Output {
        let scope = try Authenticated.scope()
        let authorityID = try await authorityFilter(scope, input.query.authority)
        let measures = try await services.catalogue.socialValueMeasures(
            scope, authorityID: authorityID, includeRetired: input.query.includeRetired ?? false)
        return .ok(.init(body: .json(.init(items: measures.map(Components.Schemas.SocialValueMeasure.init)))))
    }

    func createSocialValueMeasure(_ input: Operations.CreateSocialValueMeasure.Input) async throws -> Operations.CreateSocialValueMeasure.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let measure = try await services.catalogue.createSocialValueMeasure(
            try Authenticated.scope(), code: body.code, name: body.name, unit: body.unit, proxyValuePence: Int(body.proxyValuePence))
        return .created(.init(headers: .init(location: "/v1/social-value-measures/\(measure.id.lowercased)"), body: .json(.init(measure))))
    }

    func updateSocialValueMeasure(_ input: Operations.UpdateSocialValueMeasure.Input) async throws -> Operations.UpdateSocialValueMeasure.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let measure = try await services.catalogue.updateSocialValueMeasure(
            try Authenticated.scope(), id: try pathID(input.path.measureId, "measure"),
            SocialValueMeasureChanges(name: body.name, unit: body.unit, proxyValuePence: body.proxyValuePence.map(Int.init),
                                      retired: body.retired))
        return .ok(.init(body: .json(.init(measure))))
    }

    /// `?authority=` (slug or id) as an id; unknown authorities match nothing.
    func authorityFilter(_ scope: AccessScope, _ text: String?) async throws -> UUID? {
        guard let text else { return nil }
        return try await services.authorities.directoryEntry(scope, slugOrID: text)?.id ?? .zero
    }
}

extension Components.Schemas.Supplier {
    init(_ supplier: Supplier) {
        self.init(id: supplier.id.lowercased, name: supplier.name, companiesHouseNumber: supplier.companiesHouseNumber,
                  charityNumber: supplier.charityNumber, address: supplier.address, contactName: supplier.contactName,
                  contactEmail: supplier.contactEmail, contactPhone: supplier.contactPhone, createdAt: supplier.createdAt)
    }
}

extension Components.Schemas.Admission {
    init(_ admission: Admission) {
        let d = admission.declarations
        self.init(
            authorityId: admission.authorityID.lowercased, authorityName: admission.authorityName,
            supplierId: admission.supplierID.lowercased, supplierName: admission.supplierName,
            status: Components.Schemas.AdmissionStatus(rawValue: admission.status.rawValue) ?? .pending,
            declarations: .init(
                safeguardingPolicy: d.safeguardingPolicy, safeguardingLead: d.safeguardingLead, insuranceProvider: d.insuranceProvider,
                insuranceExpiresOn: d.insuranceExpiresOn, dbsChecks: d.dbsChecks, businessContinuityPlan: d.businessContinuityPlan,
                dataProtectionCompliance: d.dataProtectionCompliance, environmentalPolicy: d.environmentalPolicy),
            decisionReason: admission.decisionReason, decidedAt: admission.decidedAt, createdAt: admission.createdAt,
            updatedAt: admission.updatedAt)
    }
}

extension Components.Schemas.SocialValueMeasure {
    init(_ measure: LocalityDomain.SocialValueMeasure) {
        self.init(id: measure.id.lowercased, authorityId: measure.authorityID.lowercased, code: measure.code, name: measure.name,
                  unit: measure.unit, proxyValuePence: Int64(measure.proxyValuePence), retired: measure.retired)
    }
}

extension Components.Schemas.Theme {
    init(_ theme: Theme) {
        self.init(id: theme.id.lowercased, authorityId: theme.authorityID.lowercased,
                  category: Components.Schemas.ThemeCategory(rawValue: theme.category.rawValue) ?? .send, name: theme.name,
                  description: theme.description, exampleOutcomes: theme.exampleOutcomes, retired: theme.retired)
    }
}
