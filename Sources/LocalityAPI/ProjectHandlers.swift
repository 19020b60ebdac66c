import Foundation
import LocalityDomain

extension APIHandlers {
    func listProjects(_ input: Operations.ListProjects.Input) async throws -> Operations.ListProjects.Output {
        let query = input.query
        var status: ProjectStatus?
        if let text = query.status?.rawValue {
            guard let parsed = ProjectStatus(rawValue: text) else { throw DomainError.invalid("status", "is not a project status") }
            status = parsed
        }
        let page = try await services.projects.list(
            try Authenticated.scope(),
            filter: ProjectFilter(boardID: try bodyID(query.boardId, field: "board_id"), status: status, text: query.q),
            page: PageRequest(limit: query.limit, cursor: query.cursor))
        return .ok(.init(body: .json(PreEncodedBody.offer(.init(items: page.items.map(Components.Schemas.Project.init), nextCursor: page.nextCursor), standIn: .init(items: [])))))
    }

    func listOpportunities(_ input: Operations.ListOpportunities.Input) async throws -> Operations.ListOpportunities.Output {
        let query = input.query
        let page = try await services.projects.opportunities(
            try Authenticated.scope(),
            filter: ProjectFilter(
                authority: query.authority?.lowercased(), boardID: try bodyID(query.boardId, field: "board_id"),
                themeID: try bodyID(query.themeId, field: "theme_id"), closingBefore: query.closingBefore,
                minValuePence: query.minValuePence.map(Int.init), maxValuePence: query.maxValuePence.map(Int.init), text: query.q),
            page: PageRequest(limit: query.limit, cursor: query.cursor))
        return .ok(.init(body: .json(PreEncodedBody.offer(.init(items: page.items.map(Components.Schemas.Project.init), nextCursor: page.nextCursor), standIn: .init(items: [])))))
    }

    func createProject(_ input: Operations.CreateProject.Input) async throws -> Operations.CreateProject.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let boardID = UUID(uuidString: body.boardId) else { throw DomainError.invalid("board_id", "must be a UUID") }
        let project = try await services.projects.create(
            try Authenticated.scope(), boardID: boardID,
            try Self.fields(themeId: body.themeId, fundingStream: body.fundingStream, financialYear: body.financialYear, title: body.title,
                            description: body.description, outcomesSought: body.outcomesSought, schoolUrns: body.schoolUrns,
                            maxValuePence: body.maxValuePence, bidDeadline: body.bidDeadline, plannedStart: body.plannedStart,
                            plannedEnd: body.plannedEnd, contractManager: body.contractManager, evaluation: body.evaluation,
                            valueIncludesVat: body.valueIncludesVat, procurementMethod: body.procurementMethod?.rawValue))
        return .created(.init(headers: .init(location: "/v1/projects/\(project.id.lowercased)", eTag: Self.etag(project)), body: .json(.init(project))))
    }

    func getProject(_ input: Operations.GetProject.Input) async throws -> Operations.GetProject.Output {
        let project = try await services.projects.get(try Authenticated.scope(), id: try pathID(input.path.projectId, "project"))
        // The clock changes an open project at its deadline (it reads as closed, and its bids unseal): kept until a
        // second before, a margin for the database's clock against ours.
        if project.status != .open {
            ResponseCache.keep()
        } else if let deadline = project.bidDeadline {
            ResponseCache.keep(until: deadline.addingTimeInterval(-1))
        }
        return .ok(.init(headers: .init(eTag: Self.etag(project)), body: .json(.init(project))))
    }

    func updateProject(_ input: Operations.UpdateProject.Input) async throws -> Operations.UpdateProject.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let scope = try Authenticated.scope()
        let id = try pathID(input.path.projectId, "project")
        try scope.require(scope.isStaff && scope.has(.lim), "edit projects")
        // The raw header (RequestPreconditions), not the generated input: the generated layer URI-decodes
        // header values, which a list of quoted tags does not survive.
        guard let header = RequestPreconditions.ifMatch else { throw DomainError.preconditionRequired }
        guard let condition = IfMatch(header) else { throw APIProblem.invalidParameter("If-Match", "must be * or a list of entity tags like \"v3\"") }
        let fields = try Self.fields(themeId: body.themeId, fundingStream: body.fundingStream, financialYear: body.financialYear, title: body.title,
                                     description: body.description, outcomesSought: body.outcomesSought, schoolUrns: body.schoolUrns,
                                     maxValuePence: body.maxValuePence, bidDeadline: body.bidDeadline, plannedStart: body.plannedStart,
                                     plannedEnd: body.plannedEnd, contractManager: body.contractManager, evaluation: body.evaluation,
                                     valueIncludesVat: body.valueIncludesVat, procurementMethod: body.procurementMethod?.rawValue)
        let project = try await condition.apply { version in
            try await services.projects.update(scope, id: id, expectedVersion: version, fields)
        }
        return .ok(.init(headers: .init(eTag: Self.etag(project)), body: .json(.init(project))))
    }

    func deleteProject(_ input: Operations.DeleteProject.Input) async throws -> Operations.DeleteProject.Output {
        try await services.projects.delete(try Authenticated.scope(), id: try pathID(input.path.projectId, "project"))
        return .noContent(.init())
    }

    func publishProject(_ input: Operations.PublishProject.Input) async throws -> Operations.PublishProject.Output {
        let project = try await services.projects.publish(try Authenticated.scope(), id: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(project))))
    }

    func cancelProject(_ input: Operations.CancelProject.Input) async throws -> Operations.CancelProject.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let project = try await services.projects.cancel(
            try Authenticated.scope(), id: try pathID(input.path.projectId, "project"), reason: body.reason)
        return .ok(.init(body: .json(.init(project))))
    }

    func markProjectUnsuccessful(_ input: Operations.MarkProjectUnsuccessful.Input) async throws -> Operations.MarkProjectUnsuccessful.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let project = try await services.projects.markUnsuccessful(
            try Authenticated.scope(), id: try pathID(input.path.projectId, "project"), reason: body.reason)
        return .ok(.init(body: .json(.init(project))))
    }

    func amendProject(_ input: Operations.AmendProject.Input) async throws -> Operations.AmendProject.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let project = try await services.projects.amend(
            try Authenticated.scope(), id: try pathID(input.path.projectId, "project"), note: body.note, newDeadline: body.newDeadline)
        return .ok(.init(body: .json(.init(project))))
    }

    // MARK: Questions

    func listQuestions(_ input: Operations.ListQuestions.Input) async throws -> Operations.ListQuestions.Output {
        let questions = try await services.clarifications.list(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(items: questions.map(Components.Schemas.Question.init)))))
    }

    func askQuestion(_ input: Operations.AskQuestion.Input) async throws -> Operations.AskQuestion.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let question = try await services.clarifications.ask(
            try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"), question: body.question)
        return .created(.init(headers: .init(location: "/v1/projects/\(input.path.projectId)/questions"), body: .json(.init(question))))
    }

    func answerQuestion(_ input: Operations.AnswerQuestion.Input) async throws -> Operations.AnswerQuestion.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let question = try await services.clarifications.answer(
            try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"),
            id: try pathID(input.path.questionId, "question"), answer: body.answer, publish: body.publish)
        return .ok(.init(body: .json(.init(question))))
    }

    // MARK: Helpers

    static func etag(_ project: Project) -> String { "\"v\(project.version)\"" }


    static func fields(
        themeId: String?, fundingStream: String?, financialYear: String?, title: String?, description: String?,
        outcomesSought: String?, schoolUrns: [String]?, maxValuePence: Int64?, bidDeadline: Date?, plannedStart: String?,
        plannedEnd: String?, contractManager: String?, evaluation: Components.Schemas.EvaluationModel?,
        valueIncludesVat: Bool? = nil, procurementMethod: String? = nil
    ) throws -> ProjectFields {
        ProjectFields(
            themeID: try bodyID(themeId, field: "theme_id"), fundingStream: fundingStream, financialYear: financialYear, title: title,
            description: description, outcomesSought: outcomesSought, schoolURNs: schoolUrns,
            maxValuePence: try maxValuePence.map { value in
                guard let pence = Int(exactly: value) else { throw DomainError.invalid("max_value_pence", "is out of range") }
                return pence
            },
            bidDeadline: bidDeadline, plannedStart: plannedStart, plannedEnd: plannedEnd, contractManager: contractManager,
            evaluation: evaluation.map { model in
                EvaluationModel(
                    priceWeight: model.priceWeight, qualityWeight: model.qualityWeight, socialValueWeight: model.socialValueWeight,
                    qualityCriteria: model.qualityCriteria.map { .init(name: $0.name, weight: $0.weight) },
                    socialValueCriteria: model.socialValueCriteria.map { .init(name: $0.name, weight: $0.weight) })
            },
            valueIncludesVAT: valueIncludesVat, procurementMethod: procurementMethod)
    }
}

extension Components.Schemas.Project {
    static func evaluationModel(_ model: EvaluationModel) -> Components.Schemas.EvaluationModel {
        .init(priceWeight: model.priceWeight, qualityWeight: model.qualityWeight, socialValueWeight: model.socialValueWeight,
              qualityCriteria: model.qualityCriteria.map { .init(name: $0.name, weight: $0.weight) },
              socialValueCriteria: model.socialValueCriteria.map { .init(name: $0.name, weight: $0.weight) })
    }

    init(_ project: Project) {
        self.init(
            id: project.id.lowercased, authorityId: project.authorityID.lowercased, boardId: project.boardID.lowercased,
            themeId: project.themeID?.lowercased, fundingStream: project.fundingStream, financialYear: project.financialYear,
            title: project.title, description: project.description, outcomesSought: project.outcomesSought,
            schoolUrns: project.schoolURNs, maxValuePence: project.maxValuePence.map(Int64.init), bidDeadline: project.bidDeadline,
            plannedStart: project.plannedStart, plannedEnd: project.plannedEnd,
            valueIncludesVat: project.valueIncludesVAT, procurementMethod: .init(rawValue: project.procurementMethod),
            contractManager: project.contractManager,
            evaluation: project.evaluation.map(Self.evaluationModel),
            questionsCloseAt: project.questionsCloseAt,
            status: Components.Schemas.ProjectStatus(rawValue: project.status.rawValue) ?? .draft, statusReason: project.statusReason,
            version: project.version, publishedAt: project.publishedAt, createdAt: project.createdAt, updatedAt: project.updatedAt,
            amendments: project.amendments.map {
                .init(id: $0.id.lowercased, note: $0.note, oldDeadline: $0.oldDeadline, newDeadline: $0.newDeadline, createdAt: $0.createdAt)
            })
    }
}

extension Components.Schemas.Question {
    init(_ question: Clarification) {
        self.init(id: question.id.lowercased, projectId: question.projectID.lowercased, supplierId: question.supplierID?.lowercased,
                  supplierName: question.supplierName, question: question.question, answer: question.answer, askedAt: question.askedAt,
                  answeredAt: question.answeredAt, publishedAt: question.publishedAt)
    }
}

/// The raw `If-Match` of the current request, set by `RequestContentMiddleware`.
enum RequestPreconditions {
    @TaskLocal static var ifMatch: String?
}

/// An `If-Match` header (RFC 9110 §13.1.1): `*`, or a list of entity tags compared strongly, so a weak tag
/// (`W/"v3"`) never matches. Our tags are `"v<version>"`.
enum IfMatch: Equatable {
    case any
    /// The versions the strong tags name; weak and foreign tags name none.
    case versions([Int])

    /// Nil when the header is not `*` or a comma-separated list of (possibly weak) quoted tags.
    init?(_ header: String) {
        let text = header.trimmingCharacters(in: .whitespaces)
        if text == "*" {
            self = .any
            return
        }
        var versions: [Int] = []
        var rest = Substring(text)
        while true {
            rest = rest.drop(while: { $0 == " " || $0 == "\t" })
            let weak = rest.hasPrefix("W/")
            if weak { rest = rest.dropFirst(2) }
            guard rest.first == "\"", let close = rest.dropFirst().firstIndex(of: "\"") else { return nil }
            let opaque = rest[rest.index(after: rest.startIndex)..<close]
            if !weak, opaque.hasPrefix("v"), let version = Int(opaque.dropFirst()) { versions.append(version) }
            rest = rest[rest.index(after: close)...].drop(while: { $0 == " " || $0 == "\t" })
            if rest.isEmpty { break }
            guard rest.first == "," else { return nil }
            rest = rest.dropFirst()
        }
        self = .versions(versions)
    }

    func matches(_ version: Int) -> Bool {
        switch self {
        case .any: true
        case .versions(let versions): versions.contains(version)
        }
    }

    /// Runs `change` with the version to expect. The domain compares it under the row lock; for `*` or a
    /// list, the current version is learned from the 412 (which carries it) and the change re-run when that
    /// version matches. Bounded: each further 412 means someone else changed the resource meanwhile.
    func apply<R>(_ change: (Int) async throws -> R) async throws -> R {
        var expected = -1
        if case .versions(let versions) = self, let first = versions.first { expected = first }
        for _ in 0..<3 {
            do {
                return try await change(expected)
            } catch DomainError.preconditionFailed(let current) where current != expected && matches(current) {
                expected = current
            }
        }
        return try await change(expected)
    }
}
