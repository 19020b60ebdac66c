import LocalityDomain

/// The domain services the handlers call, all over the application role's pool.
/// A class, not a struct: the generated server copies its handler value (`APIHandlers`, which holds this) on every
/// request, and copying two dozen services, each holding the database's references, was ~2% of a GET's server CPU
/// (Benchmarks/README.md, "Where the time goes"). Copying a class reference is one retain.
final class DomainServices: Sendable {
    let authorities: AuthorityService
    let fundingStreams: FundingStreamService
    let boards: BoardService
    let budgets: BudgetService
    let users: UserService
    let tokens: TokenService
    let audit: AuditService
    let suppliers: SupplierService
    let admissions: AdmissionService
    let catalogue: CatalogueService
    let projects: ProjectService
    let clarifications: ClarificationService
    let bids: BidService
    let evaluation: EvaluationService
    let contracts: ContractService
    let schools: SchoolService
    let monitoring: MonitoringService
    let records: ContractRecordsService
    let dashboards: DashboardService
    let spip: SPIPService
    let schoolMapping: SchoolImportService
    let openContracting: OpenContractingService

    init(database: ScopedDatabase, authenticationCache: AuthenticationCache? = nil) {
        authorities = AuthorityService(database: database)
        fundingStreams = FundingStreamService(database: database)
        boards = BoardService(database: database)
        budgets = BudgetService(database: database)
        users = UserService(database: database, authenticationCache: authenticationCache)
        tokens = TokenService(database: database, cache: authenticationCache)
        audit = AuditService(database: database)
        suppliers = SupplierService(database: database)
        admissions = AdmissionService(database: database)
        catalogue = CatalogueService(database: database)
        projects = ProjectService(database: database)
        clarifications = ClarificationService(database: database)
        bids = BidService(database: database)
        evaluation = EvaluationService(database: database)
        contracts = ContractService(database: database)
        schools = SchoolService(database: database)
        monitoring = MonitoringService(database: database)
        records = ContractRecordsService(database: database)
        dashboards = DashboardService(database: database)
        spip = SPIPService(database: database)
        schoolMapping = SchoolImportService(database: database)
        openContracting = OpenContractingService(database: database)
    }
}

/// A path id that is not a UUID is a malformed request (400 naming the path parameter), not a missing resource.
func pathID(_ text: String, _ what: String) throws -> UUID {
    guard let id = UUID(uuidString: text) else { throw APIProblem.invalidParameter(pathParameterName(what), "must be a UUID") }
    return id
}

/// The path parameter that holds the id of `what` (the names handlers pass to `pathID`).
func pathParameterName(_ what: String) -> String {
    switch what {
    case "KPI": "kpi_id"
    case "reporting period": "period_id"
    case "school contract": "contract_id"
    case "admission": "supplier_id"
    default: "\(what.replacingOccurrences(of: " ", with: "_"))_id"
    }
}

/// A UUID in a request body: 422 naming the field when malformed.
func bodyID(_ text: String?, field: String) throws -> UUID? {
    guard let text else { return nil }
    guard let id = UUID(uuidString: text) else { throw DomainError.invalid(field, "must be a UUID") }
    return id
}

import Foundation
