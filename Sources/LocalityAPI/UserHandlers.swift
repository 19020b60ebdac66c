import Foundation
import LocalityDomain

extension APIHandlers {
    func listUsers(_ input: Operations.ListUsers.Input) async throws -> Operations.ListUsers.Output {
        let page = try await services.users.list(
            try Authenticated.scope(), page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(.init(items: page.items.map(Components.Schemas.User.init), nextCursor: page.nextCursor))))
    }

    func createUser(_ input: Operations.CreateUser.Input) async throws -> Operations.CreateUser.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let user = try await services.users.create(
            try Authenticated.scope(),
            UserDraft(email: body.email, displayName: body.displayName, roles: try Self.grants(body.roles)))
        return .created(.init(headers: .init(location: "/v1/users/\(user.id.lowercased)"), body: .json(.init(user))))
    }

    func getUser(_ input: Operations.GetUser.Input) async throws -> Operations.GetUser.Output {
        let user = try await services.users.get(try Authenticated.scope(), id: try pathID(input.path.userId, "user"))
        return .ok(.init(body: .json(.init(user))))
    }

    func updateUser(_ input: Operations.UpdateUser.Input) async throws -> Operations.UpdateUser.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let user = try await services.users.update(
            try Authenticated.scope(), id: try pathID(input.path.userId, "user"),
            UserChanges(displayName: body.displayName, disabled: body.disabled, roles: try body.roles.map(Self.grants)))
        return .ok(.init(body: .json(.init(user))))
    }

    func listTokens(_ input: Operations.ListTokens.Input) async throws -> Operations.ListTokens.Output {
        let tokens = try await services.tokens.list(try Authenticated.scope(), userID: try pathID(input.path.userId, "user"))
        return .ok(.init(body: .json(.init(items: tokens.map(Components.Schemas.Token.init)))))
    }

    func issueToken(_ input: Operations.IssueToken.Input) async throws -> Operations.IssueToken.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let issued = try await services.tokens.issue(
            try Authenticated.scope(), userID: try pathID(input.path.userId, "user"), label: body.label ?? "",
            expiresAt: body.expiresAt)
        return .created(.init(
            headers: .init(location: "/v1/users/\(input.path.userId)/tokens/\(issued.token.id.lowercased)"),
            body: .json(.init(token: .init(issued.token), secret: issued.secret))))
    }

    func revokeToken(_ input: Operations.RevokeToken.Input) async throws -> Operations.RevokeToken.Output {
        _ = try await services.tokens.revoke(
            try Authenticated.scope(), userID: try pathID(input.path.userId, "user"),
            tokenID: try pathID(input.path.tokenId, "token"))
        return .noContent(.init())
    }

    static func grants(_ roles: [Components.Schemas.RoleGrant]) throws -> [RoleGrant] {
        try roles.enumerated().map { index, grant in
            guard let role = Role(rawValue: grant.role.rawValue) else { throw DomainError.invalid("roles[\(index)].role", "is not a role") }
            return RoleGrant(role: role, boardID: try bodyID(grant.boardId, field: "roles[\(index)].board_id"))
        }
    }
}

extension Components.Schemas.User {
    init(_ user: User) {
        self.init(id: user.id.lowercased, email: user.email, displayName: user.displayName, disabled: user.disabled,
                  roles: user.roles.map { .init(role: Components.Schemas.Role(rawValue: $0.role.rawValue) ?? .auditor, boardId: $0.boardID?.lowercased) },
                  createdAt: user.createdAt, updatedAt: user.updatedAt)
    }
}

extension Components.Schemas.Token {
    init(_ token: APIToken) {
        self.init(id: token.id.lowercased, userId: token.userID.lowercased, prefix: token.prefix, label: token.label,
                  createdAt: token.createdAt, expiresAt: token.expiresAt, revokedAt: token.revokedAt, lastUsedAt: token.lastUsedAt)
    }
}
