public import Foundation
import LocalityPostgres

public struct Dashboard: Sendable, Codable, Equatable {
    public struct ContractLine: Sendable, Codable, Equatable {
        public var contractID: UUID
        public var boardID: UUID
        public var projectTitle: String
        public var supplierName: String
        public var status: String
        public var valuePence: Int
        /// Each KPI's latest rating (White before any rated return).
        public var kpiRatings: [String]
    }

    public var budget: [BudgetBalance]
    public var projectsByStatus: [String: Int]
    public var contracts: [ContractLine]
    public var overdueReturns: Int
    public var openCorrectiveActions: Int
}

/// Dashboards for a board (its staff) or the whole authority (authority-wide roles), and the termly
/// monitoring report per board as CSV.
public struct DashboardService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// nil board: the whole authority. Projects are those of the financial year; contracts those of its projects
    /// and any still running (negotiating or active) from earlier years: a dashboard of a year stays the size of
    /// a year, however much history the authority has (issue 14: at 10 years of data, every contract ever let,
    /// each with its KPIs' latest ratings, took 100–150 ms). Those two sets are read by index (0029:
    /// contract_running, project_year) and joined after: a filter on an enum such as `status IN (…)` is not
    /// leakproof, so PostgreSQL applies it only after the row-level policies, and the contracts and counts
    /// started from all 1,800 projects of the authority, checking each contract's policy (1,407 lookups). The year's
    /// projects come first and find their contract each (`OFFSET 0` keeps that order): under row-level security the
    /// planner's estimate of the authority's contracts is a handful, and with fresh statistics it started from all
    /// 1,407 of them instead (5.9 ms, against 0.5). Every query names the authority beside row-level
    /// security, whose OR of policies gives the planner no index (the project counts scanned every authority's
    /// projects: 1.2 s at 34 authorities).
    public func dashboard(_ scope: AccessScope, boardID: UUID?, financialYear: String) async throws -> Dashboard {
        try scope.require(scope.isStaff, "see dashboards")
        if let boardID {
            guard scope.canSee(board: boardID) else { throw DomainError.notFound("board") }
        } else {
            try scope.require(scope.seesAllBoards, "see the authority's dashboard")
        }
        guard FinancialYear(financialYear) != nil else { throw DomainError.invalid("financial_year", "must be a financial year like 2025-26") }
        return try await database.transaction(scope, readOnly: true) { connection in
            if let boardID { _ = try await BoardService.fetch(connection, id: boardID) }
            let budget = try await connection.query("""
                SELECT s.id, s.code, s.name, coalesce(sum(b.allocated_pence), 0)::bigint, coalesce(sum(b.earmarked_pence), 0)::bigint,
                       coalesce(sum(b.committed_pence), 0)::bigint, coalesce(sum(b.spent_pence), 0)::bigint
                FROM funding_stream s
                LEFT JOIN budget_balance b ON b.authority_id = s.authority_id AND b.funding_stream_id = s.id
                     AND b.financial_year = \(financialYear) AND (\(boardID)::uuid IS NULL OR b.board_id = \(boardID))
                GROUP BY s.id, s.code, s.name ORDER BY s.code
                """).map { row in
                let (id, code, name, allocated, earmarked, committed, spent) = try row.decode(
                    UUID.self, String.self, String.self, Int.self, Int.self, Int.self, Int.self)
                return BudgetBalance(fundingStreamID: id, fundingStreamCode: code, fundingStreamName: name, allocatedPence: allocated,
                                     earmarkedPence: earmarked, committedPence: committed, spentPence: spent)
            }
            let statuses = try await connection.query("""
                SELECT CASE WHEN status = 'open' AND bid_deadline <= statement_timestamp() THEN 'closed' ELSE status::text END, count(*)
                FROM project WHERE authority_id = app_authority_id() AND financial_year = \(financialYear)
                  AND (\(boardID)::uuid IS NULL OR board_id = \(boardID)) GROUP BY 1
                """).map { try $0.decode(String.self, Int.self) }
            let contracts = try await connection.query("""
                SELECT c.id, p.board_id, p.title, s.name, c.status::text, c.value_pence,
                       coalesce((SELECT array_agg(coalesce(o.rating, r.computed_rating, 'white') ORDER BY k.created_at, k.id)
                                 FROM contract_kpi k
                                 LEFT JOIN LATERAL (SELECT rp.id FROM reporting_period rp
                                                    WHERE rp.authority_id = k.authority_id AND rp.kpi_id = k.id
                                                      AND EXISTS (SELECT 1 FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id)
                                                    ORDER BY rp.starts DESC LIMIT 1) lp ON true
                                 LEFT JOIN LATERAL (SELECT x.computed_rating FROM kpi_return x WHERE x.authority_id = k.authority_id
                                                    AND x.period_id = lp.id ORDER BY x.version DESC LIMIT 1) r ON true
                                 LEFT JOIN rating_override o ON o.authority_id = k.authority_id AND o.period_id = lp.id
                                 WHERE k.authority_id = c.authority_id AND k.contract_id = c.id), '{}')
                FROM (SELECT c.* FROM contract c WHERE c.authority_id = app_authority_id() AND c.status IN ('kpi_negotiation', 'active')
                      UNION ALL
                      SELECT c.* FROM project p
                      CROSS JOIN LATERAL (SELECT c.* FROM contract c WHERE c.authority_id = p.authority_id AND c.project_id = p.id
                                            AND c.status NOT IN ('kpi_negotiation', 'active') OFFSET 0) c
                      WHERE p.authority_id = app_authority_id() AND p.financial_year = \(financialYear)) c
                JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id
                JOIN supplier s ON s.id = c.supplier_id
                WHERE \(boardID)::uuid IS NULL OR c.board_id = \(boardID)
                ORDER BY c.created_at, c.id
                """).map { row in
                let (id, board, title, supplier, status, value, ratings) = try row.decode(
                    UUID.self, UUID.self, String.self, String.self, String.self, Int.self, [String].self)
                return Dashboard.ContractLine(contractID: id, boardID: board, projectTitle: title, supplierName: supplier, status: status,
                                              valuePence: value, kpiRatings: ratings)
            }
            // The active contracts first, by the partial index contract_running (0029), then their periods; the open
            // plans first (corrective_action_plan_live), then each one's contract. The cached generic plan took the
            // authority's contracts for one row (row-level security hides the estimate) and probed for plans from
            // all 1,407 of them (1.8 ms, against 0.1): `OFFSET 0` keeps the lookup per plan.
            let (overdue, openPlans) = try await connection.query("""
                WITH active AS MATERIALIZED (SELECT c.authority_id, c.id FROM contract c
                                             WHERE c.authority_id = app_authority_id() AND c.status = 'active'
                                               AND (\(boardID)::uuid IS NULL OR c.board_id = \(boardID)))
                SELECT (SELECT count(*) FROM active c JOIN reporting_period rp ON rp.authority_id = c.authority_id AND rp.contract_id = c.id
                        WHERE rp.due < current_date
                          AND NOT EXISTS (SELECT 1 FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id)),
                       (SELECT count(*) FROM corrective_action_plan a
                        CROSS JOIN LATERAL (SELECT c.board_id FROM contract c WHERE c.authority_id = a.authority_id AND c.id = a.contract_id
                                            OFFSET 0) c
                        WHERE a.authority_id = app_authority_id() AND a.status <> 'closed' AND (\(boardID)::uuid IS NULL OR c.board_id = \(boardID)))
                """).first!.decode(Int.self, Int.self)
            return Dashboard(budget: budget, projectsByStatus: Dictionary(statuses, uniquingKeysWith: +), contracts: contracts,
                             overdueReturns: overdue, openCorrectiveActions: openPlans)
        }
    }

    /// One row per reporting period ending in the term, for the board's contracts.
    public func termlyReport(_ scope: AccessScope, boardID: UUID, academicYear: String, term: String) async throws -> String {
        try scope.require(scope.isStaff, "see monitoring reports")
        guard scope.canSee(board: boardID) else { throw DomainError.notFound("board") }
        guard let year = FinancialYear(academicYear) else { throw DomainError.invalid("academic_year", "must be like 2026-27") }
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await BoardService.fetch(connection, id: boardID)
            guard let dates = try await MonitoringService.termDates(connection)(year.startYear).terms.first(where: { $0.name == term }) else {
                throw DomainError.invalid("term", "must be autumn, spring or summer")
            }
            let rows = try await connection.query("""
                SELECT p.title, s.name, c.id, rp.kpi_id, rp.label, rp.ends::text, rp.due::text, r.actual::text,
                       CASE WHEN r.numerator IS NOT NULL THEN r.numerator::text || '/' || r.denominator::text END,
                       coalesce(o.rating, r.computed_rating, 'white'), o.reason,
                       r.version IS NULL AND rp.due < current_date
                FROM reporting_period rp
                JOIN contract c ON c.authority_id = rp.authority_id AND c.id = rp.contract_id
                JOIN project p ON p.authority_id = c.authority_id AND p.id = c.project_id
                JOIN supplier s ON s.id = c.supplier_id
                LEFT JOIN LATERAL (SELECT * FROM kpi_return x WHERE x.authority_id = rp.authority_id AND x.period_id = rp.id
                                   ORDER BY x.version DESC LIMIT 1) r ON true
                LEFT JOIN rating_override o ON o.authority_id = rp.authority_id AND o.period_id = rp.id
                WHERE c.board_id = \(boardID) AND rp.ends BETWEEN \(dates.starts)::date AND \(dates.ends)::date
                ORDER BY p.title, c.id, rp.kpi_id, rp.starts
                """)
            var lines = ["project,supplier,contract_id,kpi_id,period,period_end,due,actual,fraction,rating,performance_level,override_reason,overdue"]
            var previousRed: Set<UUID> = []
            for row in rows {
                let (title, supplier, contract, kpi, label, ends, due, actual, fraction, rating, reason, overdue) = try row.decode(
                    String.self, String.self, UUID.self, UUID.self, String.self, String.self, String.self, String?.self, String?.self,
                    String.self, String?.self, Bool.self)
                // As in the API: a second Red in a row for the same KPI is Inadequate.
                let level = rating == "red" && previousRed.contains(kpi) ? "Inadequate" : (RAGRating(rawValue: rating)?.procurementActLevel ?? "")
                if rating == "red" { previousRed.insert(kpi) } else if actual != nil || fraction != nil { previousRed.remove(kpi) }
                lines.append([title, supplier, contract.lowercased, kpi.lowercased, label, ends, due, actual ?? "", fraction ?? "", rating, level,
                              reason ?? "", overdue ? "yes" : "no"].map(EvaluationService.csvField).joined(separator: ","))
            }
            return lines.joined(separator: "\r\n") + "\r\n"
        }
    }
}
