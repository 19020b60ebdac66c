import Foundation
import LocalityDomain

extension APIHandlers {
    func listSchools(_ input: Operations.ListSchools.Input) async throws -> Operations.ListSchools.Output {
        let query = input.query
        let page = try await services.schools.list(
            try Authenticated.scope(),
            filter: SchoolFilter(boardID: try bodyID(query.boardId, field: "board_id"), phase: query.phase, open: query.open,
                                 causingConcern: query.causingConcern, text: query.q),
            page: PageRequest(limit: query.limit, cursor: query.cursor))
        return .ok(.init(body: .json(PreEncodedBody.offer(.init(items: page.items.map(Components.Schemas.School.init), nextCursor: page.nextCursor), standIn: .init(items: [])))))
    }

    func getSchoolBoardRules(_ input: Operations.GetSchoolBoardRules.Input) async throws -> Operations.GetSchoolBoardRules.Output {
        let mapping = try await services.schoolMapping.mapping(try Authenticated.scope())
        return .ok(.init(body: .json(.init(mapping))))
    }

    func setSchoolBoardRules(_ input: Operations.SetSchoolBoardRules.Input) async throws -> Operations.SetSchoolBoardRules.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let rules = try body.rules.enumerated().map { index, rule in
            SchoolBoardRule(source: SchoolBoardSource(rawValue: rule.source.rawValue) ?? .district, value: rule.value,
                            boardID: try bodyID(rule.boardId, field: "rules[\(index)].board_id")!)
        }
        let overrides = try body.overrides.enumerated().map { index, override in
            SchoolBoardOverride(urn: override.urn, boardID: try bodyID(override.boardId, field: "overrides[\(index)].board_id")!)
        }
        let mapping = try await services.schoolMapping.replaceMapping(try Authenticated.scope(), rules: rules, overrides: overrides)
        return .ok(.init(body: .json(.init(mapping))))
    }

    func markSchoolConcern(_ input: Operations.MarkSchoolConcern.Input) async throws -> Operations.MarkSchoolConcern.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let school = try await services.schools.markConcern(
            try Authenticated.scope(), urn: input.path.urn, category: body.category, reason: body.reason, since: body.since)
        return .ok(.init(body: .json(.init(school))))
    }

    func clearSchoolConcern(_ input: Operations.ClearSchoolConcern.Input) async throws -> Operations.ClearSchoolConcern.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let school = try await services.schools.clearConcern(try Authenticated.scope(), urn: input.path.urn, reason: body.reason, on: body.clearedOn)
        return .ok(.init(body: .json(.init(school))))
    }
}

extension Components.Schemas.School {
    init(_ school: School) {
        self.init(urn: school.urn, name: school.name, establishmentType: school.establishmentType, phase: school.phase, status: school.status,
                  open: school.isOpen, boardId: school.boardID?.lowercased, district: school.district, postcode: school.postcode,
                  concern: school.concern.map { .init(id: $0.id.lowercased, category: $0.category, reason: $0.reason, since: $0.since) })
    }
}

extension Components.Schemas.SchoolBoardMapping {
    init(_ mapping: SchoolBoardMapping) {
        self.init(
            rules: mapping.rules.map {
                .init(source: Components.Schemas.SchoolBoardSource(rawValue: $0.source.rawValue) ?? .district, value: $0.value,
                      boardId: $0.boardID.lowercased)
            },
            overrides: mapping.overrides.map { .init(urn: $0.urn, boardId: $0.boardID.lowercased) },
            remapped: mapping.remapped, unmappedUrns: mapping.unmappedURNs)
    }
}
