import Foundation
import LocalityDomain

extension APIHandlers {
    func getMe(_ input: Operations.GetMe.Input) async throws -> Operations.GetMe.Output {
        guard let principal = Authenticated.principal else { throw APIProblem.unauthenticated("Authentication is required.") }
        let scope = try Authenticated.scope()
        let authority = try await services.authorities.current(scope)
        let supplier = try await services.suppliers.get(scope)
        return .ok(.init(body: .json(.init(
            userId: principal.userID.lowercased,
            displayName: principal.displayName,
            email: principal.email,
            authority: authority.map { .init(id: $0.id.lowercased, slug: $0.slug, name: $0.name) },
            supplier: supplier.map { .init(id: $0.id.lowercased, name: $0.name) },
            roles: principal.roles.sorted().compactMap { Components.Schemas.Role(rawValue: $0.rawValue) },
            boardIds: principal.boardIDs.map(\.lowercased).sorted()
        ))))
    }
}
