import Foundation
import LocalityDomain
import OpenAPIRuntime

extension APIHandlers {
    func getAuthorityDashboard(_ input: Operations.GetAuthorityDashboard.Input) async throws -> Operations.GetAuthorityDashboard.Output {
        let dashboard = try await services.dashboards.dashboard(try Authenticated.scope(), boardID: nil, financialYear: input.query.financialYear)
        return .ok(.init(body: .json(.init(dashboard))))
    }

    func getBoardDashboard(_ input: Operations.GetBoardDashboard.Input) async throws -> Operations.GetBoardDashboard.Output {
        let dashboard = try await services.dashboards.dashboard(
            try Authenticated.scope(), boardID: try pathID(input.path.boardId, "board"), financialYear: input.query.financialYear)
        return .ok(.init(body: .json(.init(dashboard))))
    }

    func exportMonitoringReport(_ input: Operations.ExportMonitoringReport.Input) async throws -> Operations.ExportMonitoringReport.Output {
        let csv = try await services.dashboards.termlyReport(
            try Authenticated.scope(), boardID: try pathID(input.path.boardId, "board"), academicYear: input.query.academicYear,
            term: input.query.term.rawValue)
        return .ok(.init(body: .csv(HTTPBody(csv))))
    }
}

extension Components.Schemas.Dashboard {
    init(_ dashboard: Dashboard) {
        self.init(
            budget: dashboard.budget.map { balance in
                .init(fundingStreamId: balance.fundingStreamID.lowercased, fundingStreamCode: balance.fundingStreamCode,
                      fundingStreamName: balance.fundingStreamName, allocatedPence: Int64(balance.allocatedPence),
                      earmarkedPence: Int64(balance.earmarkedPence), committedPence: Int64(balance.committedPence),
                      spentPence: Int64(balance.spentPence), availablePence: Int64(balance.availablePence))
            },
            projectsByStatus: .init(additionalProperties: dashboard.projectsByStatus),
            contracts: dashboard.contracts.map {
                .init(contractId: $0.contractID.lowercased, boardId: $0.boardID.lowercased, projectTitle: $0.projectTitle,
                      supplierName: $0.supplierName, status: $0.status, valuePence: Int64($0.valuePence),
                      kpiRatings: $0.kpiRatings.compactMap { .init(rawValue: $0) })
            },
            overdueReturns: dashboard.overdueReturns, openCorrectiveActions: dashboard.openCorrectiveActions)
    }
}
