import Foundation

/// North Yorkshire County Council with its five locality boards, budgets from 2025-26 to the current financial
/// year, and one user per role: enough to try every endpoint. Tokens are returned once, for printing.
public struct DemoSeed: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    public static let authoritySlug = "north-yorkshire"
    public static let financialYear = "2025-26"
    /// The financial year of today (a newcomer publishing a project at once needs its budget).
    public static var currentFinancialYear: String { FinancialYear.containing(Date()).description }
    /// 2025-26 (the specification's figures) and every year up to the current one.
    static var seededFinancialYears: [String] {
        let first = FinancialYear(Self.financialYear)!.startYear
        let last = max(first, FinancialYear.containing(Date()).startYear)
        return (first...last).map { FinancialYear(startYear: $0).description }
    }
    /// £50,300 per board for school improvement, as in the specification.
    public static let schoolImprovementPence = 5_030_000

    public static let boards: [(name: String, code: String, area: String, localityPence: Int)] = [
        ("Craven", "CRA", "Craven district", 12_100_000),
        ("Harrogate, Ripon and Knaresborough", "HRK", "Harrogate, Ripon and Knaresborough", 29_200_000),
        ("Coast and Ryedale", "CAR", "Scarborough, Whitby, Filey and Ryedale", 21_500_000),
        ("Hambleton and Richmondshire", "HAR", "Hambleton and Richmondshire", 19_800_000),
        ("Selby and district", "SEL", "Selby district", 15_600_000),
    ]

    public struct DemoUser: Sendable {
        public var role: Role
        public var email: String
        public var displayName: String
        public var token: String
    }

    public struct Result: Sendable {
        public var authority: Authority
        public var boards: [Board]
        public var users: [DemoUser]
    }

    /// True when the demo authority already exists (seeding again would fail on its slug).
    public func isSeeded() async throws -> Bool {
        try await AuthorityService(database: database).list().contains { $0.slug == Self.authoritySlug }
    }

    public func run(osUser: String = OperatorIdentity.osUser) async throws -> Result {
        let authority = try await AuthorityService(database: database)
            .create(slug: Self.authoritySlug, name: "North Yorkshire County Council", osUser: osUser)
        let scope = AccessScope.operatorScope(authorityID: authority.id, osUser: osUser)
        try await CatalogueService(database: database).seedDefaults(scope)
        let boardService = BoardService(database: database)
        let budgets = BudgetService(database: database)
        var boards: [Board] = []
        for spec in Self.boards {
            let board = try await boardService.create(scope, BoardDraft(name: spec.name, shortCode: spec.code, area: spec.area))
            boards.append(board)
            for year in Self.seededFinancialYears {
                _ = try await budgets.append(scope, boardID: board.id, LedgerEntryDraft(
                    financialYear: year, fundingStream: "locality", kind: .allocation,
                    amountPence: spec.localityPence, reason: "\(year) locality budget"))
                _ = try await budgets.append(scope, boardID: board.id, LedgerEntryDraft(
                    financialYear: year, fundingStream: "school_improvement", kind: .allocation,
                    amountPence: Self.schoolImprovementPence, reason: "\(year) school improvement allocation"))
            }
        }
        let imports = SchoolImportService(database: database)
        try await imports.setRules(scope, source: "district", rules: SchoolImportService.northYorkshireDistricts.compactMap { rule in
            boards.first { $0.shortCode == rule.boardCode }.map { (value: rule.district, boardID: $0.id) }
        })
        try await imports.seedConcernCategories(scope)
        let users = UserService(database: database)
        let tokens = TokenService(database: database)
        let craven = boards[0].id
        let staff: [(Role, String, String, [RoleGrant])] = [
            (.authorityAdmin, "admin@demo.northyorks.example", "Demo Authority Admin", [RoleGrant(role: .authorityAdmin)]),
            (.hosi, "hosi@demo.northyorks.example", "Demo Head of School Improvement", [RoleGrant(role: .hosi)]),
            (.lim, "lim.craven@demo.northyorks.example", "Demo Locality Inclusion Manager (Craven)", [RoleGrant(role: .lim, boardID: craven)]),
            (.boardMember, "member.craven@demo.northyorks.example", "Demo Board Member (Craven)", [RoleGrant(role: .boardMember, boardID: craven)]),
            (.auditor, "auditor@demo.northyorks.example", "Demo Auditor", [RoleGrant(role: .auditor)]),
        ]
        var demoUsers: [DemoUser] = []
        for (role, email, name, grants) in staff {
            let user = try await users.create(scope, UserDraft(email: email, displayName: name, roles: grants))
            let issued = try await tokens.issue(scope, userID: user.id, label: "demo", expiresAt: nil)
            demoUsers.append(DemoUser(role: role, email: email, displayName: name, token: issued.secret))
        }
        let (supplier, supplierUser) = try await SupplierService(database: database).createWithUser(
            name: "Dales Inclusion Partnership CIC", userEmail: "bids@dales-inclusion.example", userName: "Demo Supplier User",
            osUser: osUser)
        try await AdmissionService(database: database).admit(
            authorityID: authority.id, supplierID: supplier.id,
            declarations: AdmissionDeclarations(
                safeguardingPolicy: true, safeguardingLead: "Demo Safeguarding Lead", insuranceProvider: "Demo Mutual",
                insuranceExpiresOn: CalendarDate.format(Date() + 365 * 24 * 3600), dbsChecks: true, businessContinuityPlan: true,
                dataProtectionCompliance: true, environmentalPolicy: true),
            osUser: osUser)
        let issued = try await tokens.issue(.operatorScope(supplierID: supplier.id, osUser: osUser), userID: supplierUser.id,
                                            label: "demo", expiresAt: nil)
        demoUsers.append(DemoUser(role: .supplierUser, email: supplierUser.email, displayName: supplierUser.displayName,
                                  token: issued.secret))
        return Result(authority: authority, boards: boards, users: demoUsers)
    }
}
