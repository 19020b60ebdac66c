public import Foundation
import LocalityPostgres

public enum LedgerEntryKind: String, Sendable, Codable, CaseIterable {
    case allocation, earmark, release, commitment, spend, decommitment
}

public struct LedgerEntry: Sendable, Codable, Equatable {
    public var id: UUID
    public var seq: Int
    public var boardID: UUID
    public var financialYear: String
    public var fundingStreamID: UUID
    public var fundingStreamCode: String
    public var kind: LedgerEntryKind
    public var amountPence: Int
    public var reference: String
    public var actor: String
    public var reason: String
    public var createdAt: Date
}

/// One envelope: a board's money in one financial year from one funding stream.
public struct BudgetBalance: Sendable, Codable, Equatable {
    public var fundingStreamID: UUID
    public var fundingStreamCode: String
    public var fundingStreamName: String
    public var allocatedPence: Int
    public var earmarkedPence: Int
    public var committedPence: Int
    public var spentPence: Int
    public var availablePence: Int { allocatedPence - earmarkedPence - committedPence }
}

public struct LedgerEntryDraft: Sendable {
    public var financialYear: String
    public var fundingStream: String   // code
    public var kind: LedgerEntryKind
    public var amountPence: Int
    public var reference: String
    public var reason: String

    public init(financialYear: String, fundingStream: String, kind: LedgerEntryKind, amountPence: Int, reference: String = "", reason: String) {
        self.financialYear = financialYear
        self.fundingStream = fundingStream
        self.kind = kind
        self.amountPence = amountPence
        self.reference = reference
        self.reason = reason
    }
}

/// The budget ledger. Entries are appended, never changed; balances are maintained from them by the
/// database (trigger), whose CHECK constraints refuse any entry that would take available below zero,
/// however many race.
public struct BudgetService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// Largest single entry: £100m, far above any locality budget, small enough that sums cannot overflow.
    public static let maxAmountPence = 10_000_000_000

    public func balances(_ scope: AccessScope, boardID: UUID, financialYear: String) async throws -> [BudgetBalance] {
        try scope.require(scope.isStaff, "see budgets")
        guard scope.canSee(board: boardID) else { throw DomainError.notFound("board") }
        guard let year = FinancialYear(financialYear) else {
            throw DomainError.invalid("financial_year", "must be a financial year like 2025-26")
        }
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await BoardService.fetch(connection, id: boardID)
            return try await connection.query("""
                SELECT s.id, s.code, s.name, coalesce(b.allocated_pence, 0), coalesce(b.earmarked_pence, 0),
                       coalesce(b.committed_pence, 0), coalesce(b.spent_pence, 0)
                FROM funding_stream s
                LEFT JOIN budget_balance b ON b.authority_id = s.authority_id AND b.funding_stream_id = s.id
                     AND b.board_id = \(boardID) AND b.financial_year = \(year.description)
                ORDER BY s.code
                """).map { row in
                let (id, code, name, allocated, earmarked, committed, spent) = try row.decode(
                    UUID.self, String.self, String.self, Int.self, Int.self, Int.self, Int.self)
                return BudgetBalance(fundingStreamID: id, fundingStreamCode: code, fundingStreamName: name,
                                     allocatedPence: allocated, earmarkedPence: earmarked, committedPence: committed,
                                     spentPence: spent)
            }
        }
    }

    /// Appends an entry. Through this door: allocations (authority admins), and earmarks and releases
    /// (authority admins, and LIMs of the board). Commitments and spend come from awards and payments.
    public func append(_ scope: AccessScope, boardID: UUID, _ draft: LedgerEntryDraft) async throws -> LedgerEntry {
        guard scope.canSee(board: boardID) else {
            throw scope.isStaff ? DomainError.notFound("board") : DomainError.forbidden("Your role does not allow you to change budgets.")
        }
        switch draft.kind {
        case .allocation:
            try scope.require(scope.has(.authorityAdmin), "allocate budgets")
        case .earmark, .release:
            try scope.require(scope.has(.authorityAdmin) || (scope.has(.lim) && scope.boardIDs.contains(boardID)),
                              "earmark or release budget")
        case .commitment, .spend, .decommitment:
            throw DomainError.invalid("kind", "commitments and spend are recorded by awards and contracts, not posted directly")
        }
        var validator = Validator()
        validator.check(FinancialYear(draft.financialYear) != nil, "financial_year", "must be a financial year like 2025-26")
        validator.check(draft.amountPence > 0, "amount_pence", "must be a positive number of pence")
        validator.check(draft.amountPence <= Self.maxAmountPence, "amount_pence", "must be at most \(Self.maxAmountPence)")
        validator.text(draft.reason, "reason", max: 1000)
        validator.text(draft.reference, "reference", required: false, max: 200)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            _ = try await BoardService.fetch(connection, id: boardID)
            guard let streamID = try await connection.query("SELECT id FROM funding_stream WHERE code = \(draft.fundingStream)")
                .first?.decode(UUID.self, at: 0)
            else { throw DomainError.invalid("funding_stream", "is not a funding stream of this authority") }
            let id = try await connection.query("""
                INSERT INTO budget_ledger (authority_id, board_id, financial_year, funding_stream_id, kind, amount_pence,
                                           reference, actor, reason)
                VALUES (app_authority_id(), \(boardID), \(draft.financialYear), \(streamID), \(draft.kind.rawValue)::ledger_entry_kind,
                        \(draft.amountPence), \(draft.reference), current_setting('app.actor'), \(draft.reason))
                RETURNING id
                """).first!.decode(UUID.self, at: 0)
            let entry = try await Self.fetchEntries(connection, where: "l.id = $1", [id.pg], limit: 1)[0]
            try await AuditLog.record(connection, action: "ledger.\(draft.kind.rawValue)", entityType: "ledger_entry",
                                      entityID: id.lowercased, before: nil, after: entry)
            return entry
        }
    }

    public func entries(_ scope: AccessScope, boardID: UUID, financialYear: String?, page: PageRequest) async throws -> Page<LedgerEntry> {
        guard scope.canSee(board: boardID) else {
            throw scope.isStaff ? DomainError.notFound("board") : DomainError.forbidden("Your role does not allow you to see budgets.")
        }
        if let financialYear, FinancialYear(financialYear) == nil {
            throw DomainError.invalid("financial_year", "must be a financial year like 2025-26")
        }
        let afterSeq = page.after?.first.flatMap { Int($0) } ?? 0
        let entries = try await database.transaction(scope, readOnly: true) { connection in
            _ = try await BoardService.fetch(connection, id: boardID)
            return try await Self.fetchEntries(
                connection, where: "l.board_id = $1 AND ($2::text IS NULL OR l.financial_year = $2) AND l.seq > $3",
                [boardID.pg, financialYear.pg, afterSeq.pg], limit: page.limit + 1)
        }
        return page.page(entries) { [String($0.seq)] }
    }

    static func fetchEntries(_ connection: PGConnection, where condition: String, _ binds: [PGBind], limit: Int) async throws -> [LedgerEntry] {
        try await connection.query(PGQuery("""
            SELECT l.id, l.seq, l.board_id, l.financial_year, l.funding_stream_id, s.code, l.kind::text, l.amount_pence,
                   l.reference, l.actor, l.reason, l.created_at
            FROM budget_ledger l JOIN funding_stream s ON s.authority_id = l.authority_id AND s.id = l.funding_stream_id
            WHERE \(condition) ORDER BY l.seq LIMIT \(limit)
            """, binds)).map { row in
            let (id, seq, boardID, year, streamID, code, kind, amount, reference, actor, reason, createdAt) = try row.decode(
                UUID.self, Int.self, UUID.self, String.self, UUID.self, String.self, String.self, Int.self, String.self,
                String.self, String.self, Date.self)
            return LedgerEntry(id: id, seq: seq, boardID: boardID, financialYear: year, fundingStreamID: streamID,
                               fundingStreamCode: code, kind: try storedEnum(kind, column: "budget_ledger.kind"), amountPence: amount,
                               reference: reference, actor: actor, reason: reason, createdAt: createdAt)
        }
    }
}
