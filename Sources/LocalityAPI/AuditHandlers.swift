import Foundation
import LocalityDomain
import OpenAPIRuntime

extension APIHandlers {
    func listAuditEvents(_ input: Operations.ListAuditEvents.Input) async throws -> Operations.ListAuditEvents.Output {
        let query = input.query
        let page = try await services.audit.list(
            try Authenticated.scope(),
            filter: AuditFilter(entityType: query.entityType, entityID: query.entityId, actor: query.actor, from: query.from, to: query.to),
            page: PageRequest(limit: query.limit, cursor: query.cursor))
        let items = try page.items.map { event in
            Components.Schemas.AuditEvent(
                id: event.id.lowercased, seq: Int64(event.seq), occurredAt: event.occurredAt, actor: event.actor,
                action: event.action, entityType: event.entityType, entityId: event.entityID,
                before: try event.before.map(Self.jsonValue), after: try event.after.map(Self.jsonValue), requestId: event.requestID)
        }
        return .ok(.init(body: .json(.init(items: items, nextCursor: page.nextCursor))))
    }

    static func jsonValue(_ text: String) throws -> OpenAPIValueContainer {
        try JSONDecoder().decode(OpenAPIValueContainer.self, from: Data(text.utf8))
    }
}
