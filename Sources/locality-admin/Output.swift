import Foundation
import LocalityDomain

// What `--json` prints. Property names are camelCase here and snake_case in the output (printJSON's key
// strategy); ids are lowercase text, as in the API; money is integer pence.

struct AuthorityJSON: Encodable {
    var id: String
    var slug: String
    var name: String
    var createdAt: Date

    init(_ authority: Authority) {
        id = authority.id.lowercased
        slug = authority.slug
        name = authority.name
        createdAt = authority.createdAt
    }
}

struct BoardJSON: Encodable {
    var id: String
    var authorityId: String
    var name: String
    var shortCode: String
    var area: String
    var chair: String
    var createdAt: Date
    var updatedAt: Date

    init(_ board: Board) {
        id = board.id.lowercased
        authorityId = board.authorityID.lowercased
        name = board.name
        shortCode = board.shortCode
        area = board.area
        chair = board.chair
        createdAt = board.createdAt
        updatedAt = board.updatedAt
    }
}

struct BalanceJSON: Encodable {
    var fundingStream: String
    var fundingStreamName: String
    var allocatedPence: Int
    var earmarkedPence: Int
    var committedPence: Int
    var spentPence: Int
    var availablePence: Int

    init(_ balance: BudgetBalance) {
        fundingStream = balance.fundingStreamCode
        fundingStreamName = balance.fundingStreamName
        allocatedPence = balance.allocatedPence
        earmarkedPence = balance.earmarkedPence
        committedPence = balance.committedPence
        spentPence = balance.spentPence
        availablePence = balance.availablePence
    }
}

struct BudgetJSON: Encodable {
    var boardId: String
    var boardShortCode: String
    var financialYear: String
    var balances: [BalanceJSON]
}

struct LedgerEntryJSON: Encodable {
    var id: String
    var seq: Int
    var boardId: String
    var financialYear: String
    var fundingStream: String
    var kind: String
    var amountPence: Int
    var reference: String
    var actor: String
    var reason: String
    var createdAt: Date

    init(_ entry: LedgerEntry) {
        id = entry.id.lowercased
        seq = entry.seq
        boardId = entry.boardID.lowercased
        financialYear = entry.financialYear
        fundingStream = entry.fundingStreamCode
        kind = entry.kind.rawValue
        amountPence = entry.amountPence
        reference = entry.reference
        actor = entry.actor
        reason = entry.reason
        createdAt = entry.createdAt
    }
}

struct RoleJSON: Encodable {
    var role: String
    var boardId: String?
    var boardShortCode: String?
}

struct UserJSON: Encodable {
    var id: String
    var email: String
    var displayName: String
    var disabled: Bool
    var roles: [RoleJSON]
    var createdAt: Date
    var updatedAt: Date

    /// `boards` names the short codes of board-scoped roles.
    init(_ user: User, boards: [UUID: Board]) {
        id = user.id.lowercased
        email = user.email
        displayName = user.displayName
        disabled = user.disabled
        roles = user.roles.map { RoleJSON(role: $0.role.rawValue, boardId: $0.boardID?.lowercased,
                                          boardShortCode: $0.boardID.flatMap { boards[$0]?.shortCode }) }
        createdAt = user.createdAt
        updatedAt = user.updatedAt
    }
}

struct TokenJSON: Encodable {
    var id: String
    var userId: String
    var prefix: String
    var label: String
    var status: String
    var createdAt: Date
    var expiresAt: Date
    var revokedAt: Date?
    var lastUsedAt: Date?
    /// Only when issuing: the one time the secret is shown.
    var token: String?

    init(_ token: APIToken, secret: String? = nil) {
        id = token.id.lowercased
        userId = token.userID.lowercased
        prefix = token.prefix
        label = token.label
        status = token.status
        createdAt = token.createdAt
        expiresAt = token.expiresAt
        revokedAt = token.revokedAt
        lastUsedAt = token.lastUsedAt
        self.token = secret
    }
}

extension APIToken {
    var status: String {
        if revokedAt != nil { return "revoked" }
        return expiresAt <= Date() ? "expired" : "active"
    }
}

struct ChainReportJSON: Encodable {
    var chainId: String
    var events: Int
    var intact: Bool
    var firstBadSeq: Int?
    var problem: String?

    init(_ report: AuditChainReport) {
        chainId = report.chainID.lowercased
        events = report.events
        intact = report.isIntact
        firstBadSeq = report.firstBadSeq
        problem = report.problem
    }
}

/// `role` or `role:SHORTCODE` (the board's id when it is not among `boards`).
func describe(_ grant: RoleGrant, boards: [UUID: Board]) -> String {
    guard let boardID = grant.boardID else { return grant.role.rawValue }
    return grant.role.rawValue + ":" + (boards[boardID]?.shortCode ?? boardID.lowercased)
}
