import Foundation
import LocalityDomain

extension APIHandlers {
    func listBoards(_ input: Operations.ListBoards.Input) async throws -> Operations.ListBoards.Output {
        let page = try await services.boards.list(
            try Authenticated.scope(), page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(.init(items: page.items.map(Components.Schemas.Board.init), nextCursor: page.nextCursor))))
    }

    func createBoard(_ input: Operations.CreateBoard.Input) async throws -> Operations.CreateBoard.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let board = try await services.boards.create(
            try Authenticated.scope(),
            BoardDraft(name: body.name, shortCode: body.shortCode, area: body.area ?? "", chair: body.chair ?? ""))
        return .created(.init(headers: .init(location: "/v1/boards/\(board.id.lowercased)"), body: .json(.init(board))))
    }

    func getBoard(_ input: Operations.GetBoard.Input) async throws -> Operations.GetBoard.Output {
        let board = try await services.boards.get(try Authenticated.scope(), id: try pathID(input.path.boardId, "board"))
        ResponseCache.keep()
        return .ok(.init(body: .json(.init(board))))
    }

    func updateBoard(_ input: Operations.UpdateBoard.Input) async throws -> Operations.UpdateBoard.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let board = try await services.boards.update(
            try Authenticated.scope(), id: try pathID(input.path.boardId, "board"),
            BoardChanges(name: body.name, shortCode: body.shortCode, area: body.area, chair: body.chair))
        return .ok(.init(body: .json(.init(board))))
    }

    func listFundingStreams(_ input: Operations.ListFundingStreams.Input) async throws -> Operations.ListFundingStreams.Output {
        let streams = try await services.fundingStreams.list(try Authenticated.scope())
        return .ok(.init(body: .json(.init(items: streams.map { .init(id: $0.id.lowercased, code: $0.code, name: $0.name) }))))
    }
}

extension Components.Schemas.Board {
    init(_ board: Board) {
        self.init(id: board.id.lowercased, name: board.name, shortCode: board.shortCode, area: board.area,
                  chair: board.chair, createdAt: board.createdAt, updatedAt: board.updatedAt)
    }
}
