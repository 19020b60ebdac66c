import Foundation
import LocalityDomain

extension APIHandlers {
    func getBudget(_ input: Operations.GetBudget.Input) async throws -> Operations.GetBudget.Output {
        let boardID = try pathID(input.path.boardId, "board")
        let balances = try await services.budgets.balances(
            try Authenticated.scope(), boardID: boardID, financialYear: input.path.financialYear)
        return .ok(.init(body: .json(.init(
            boardId: boardID.lowercased, financialYear: input.path.financialYear,
            streams: balances.map { balance in
                .init(fundingStreamId: balance.fundingStreamID.lowercased, fundingStreamCode: balance.fundingStreamCode,
                      fundingStreamName: balance.fundingStreamName, allocatedPence: Int64(balance.allocatedPence),
                      earmarkedPence: Int64(balance.earmarkedPence), committedPence: Int64(balance.committedPence),
                      spentPence: Int64(balance.spentPence), availablePence: Int64(balance.availablePence))
            }))))
    }

    func listLedgerEntries(_ input: Operations.ListLedgerEntries.Input) async throws -> Operations.ListLedgerEntries.Output {
        let page = try await services.budgets.entries(
            try Authenticated.scope(), boardID: try pathID(input.path.boardId, "board"),
            financialYear: input.query.financialYear, page: PageRequest(limit: input.query.limit, cursor: input.query.cursor))
        return .ok(.init(body: .json(PreEncodedBody.offer(.init(items: page.items.map(Components.Schemas.LedgerEntry.init), nextCursor: page.nextCursor), standIn: .init(items: [])))))
    }

    func postLedgerEntry(_ input: Operations.PostLedgerEntry.Input) async throws -> Operations.PostLedgerEntry.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        guard let kind = LedgerEntryKind(rawValue: body.kind.rawValue) else { throw DomainError.invalid("kind", "is not a ledger entry kind") }
        guard let amount = Int(exactly: body.amountPence) else { throw DomainError.invalid("amount_pence", "is out of range") }
        let entry = try await services.budgets.append(
            try Authenticated.scope(), boardID: try pathID(input.path.boardId, "board"),
            LedgerEntryDraft(financialYear: body.financialYear, fundingStream: body.fundingStream, kind: kind,
                             amountPence: amount, reference: body.reference ?? "", reason: body.reason))
        return .created(.init(headers: .init(location: "/v1/boards/\(input.path.boardId)/ledger"), body: .json(.init(entry))))
    }
}

extension Components.Schemas.LedgerEntry {
    init(_ entry: LedgerEntry) {
        self.init(id: entry.id.lowercased, boardId: entry.boardID.lowercased, financialYear: entry.financialYear,
                  fundingStream: entry.fundingStreamCode, kind: Components.Schemas.LedgerEntryKind(rawValue: entry.kind.rawValue) ?? .allocation,
                  amountPence: Int64(entry.amountPence), reference: entry.reference, actor: entry.actor, reason: entry.reason,
                  createdAt: entry.createdAt)
    }
}
