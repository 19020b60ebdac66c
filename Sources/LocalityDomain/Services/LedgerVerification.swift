public import Foundation
import LocalityPostgres

/// One broken envelope or contract, as `ledger_verify()` reports it.
public struct LedgerProblem: Sendable, Equatable, CustomStringConvertible {
    public var authorityID: UUID
    public var authoritySlug: String
    /// `envelope` (board/financial year/funding stream) or `contract`.
    public var subject: String
    public var subjectID: String
    public var problem: String

    public var description: String { "\(subject) \(authoritySlug)/\(subjectID): \(problem)" }
}

public struct LedgerReport: Sendable, Equatable {
    public var authorities = 0
    public var envelopes = 0
    public var contracts = 0
    /// In authority-slug order, envelopes before contracts; empty when the books are right.
    public var problems: [LedgerProblem] = []

    public var isBalanced: Bool { problems.isEmpty }
}

/// The money invariant, checked by the operator (`locality-admin ledger verify`) and by the tests after
/// every concurrency test:
/// - per envelope, the maintained balances equal the sums of its ledger entries (and available ≥ 0);
/// - per contract, commitments − spend − decommitments equal the value still committed: `value_pence`
///   while the contract is live (kpi_negotiation, active), 0 once it has ended; an ended contract's spend
///   equals its `amount_paid_pence`, and a live one has spent nothing.
/// The rules themselves live in SQL (`ledger_verify()`, migration 0011); this runs them for each authority
/// under its operator context, so row-level security shows the function that authority's rows.
public struct LedgerVerifier: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// Needs an owner pool (the operator's role). `authorityIDs` nil: every authority.
    public func verify(authorityIDs: [UUID]? = nil) async throws -> LedgerReport {
        let authorities = try await database.pool.withTransaction(readOnly: true) { connection in
            try await connection.query("SELECT id, slug FROM authority ORDER BY slug").map { try $0.decode(UUID.self, String.self) }
        }.filter { authorityIDs?.contains($0.0) ?? true }
        var report = LedgerReport()
        for (authorityID, slug) in authorities {
            let (envelopes, contracts, problems) = try await database.transaction(
                .operatorScope(authorityID: authorityID), isolation: .repeatableRead, readOnly: true
            ) { connection in
                let envelopes = try await connection.query("SELECT count(*) FROM budget_balance").first!.decode(Int.self, at: 0)
                let contracts = try await connection.query("SELECT count(*) FROM contract").first!.decode(Int.self, at: 0)
                let problems = try await connection.query("SELECT subject, subject_id, problem FROM ledger_verify()").map { row in
                    let (subject, subjectID, problem) = try row.decode(String.self, String.self, String.self)
                    return LedgerProblem(authorityID: authorityID, authoritySlug: slug, subject: subject, subjectID: subjectID, problem: problem)
                }
                return (envelopes, contracts, problems)
            }
            report.authorities += 1
            report.envelopes += envelopes
            report.contracts += contracts
            report.problems += problems
        }
        return report
    }
}
