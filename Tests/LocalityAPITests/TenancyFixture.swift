import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// One authority's worth of test data: boards, budgets, one user (and token) per staff role.
struct TenantFixture: Sendable {
    let authority: Authority
    /// The LIM and the board member are assigned to `boards[0]`; `boards[1]` is outside their scope.
    let boards: [Board]
    let users: [Role: User]
    let tokens: [Role: String]
    /// An extra token of the admin, free for tests to revoke.
    let spareTokenID: UUID
    let spareToken: String
}

/// Two authorities and a supplier organisation, created the way the operator would (owner role, CLI scope).
struct World: Sendable {
    let database: TestDatabase
    let a: TenantFixture
    let b: TenantFixture
    /// Admitted to A (not B).
    let supplierToken: String
    let supplierUserID: UUID
    let supplierID: UUID
    /// Applied to A, pending.
    let applicantToken: String
    let applicantID: UUID
    /// Registered, admitted nowhere.
    let outsiderToken: String
    let market: MarketFixture
    /// A contract on school 121003's improvement plan, with the admitted supplier.
    let schoolContract: UUID

    static let year = "2025-26"

    static func make(in cluster: TestCluster = .shared) async throws -> World {
        let database = try await TestDatabase.migrated(in: cluster)
        return try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 2) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let a = try await tenant(scoped, slug: "alpha", name: "Alpha Council")
            let b = try await tenant(scoped, slug: "beta", name: "Beta Council")
            let (supplier, supplierUser, supplierToken) = try await supplierWithToken(scoped, name: "Supplier Ltd", email: "bids@supplier.example")
            let (applicant, _, applicantToken) = try await supplierWithToken(scoped, name: "Applicant Ltd", email: "bids@applicant.example")
            let (_, _, outsiderToken) = try await supplierWithToken(scoped, name: "Outsider Ltd", email: "bids@outsider.example")
            let admissions = AdmissionService(database: scoped)
            try await admissions.admit(authorityID: a.authority.id, supplierID: supplier.id, declarations: goodDeclarations, osUser: "test")
            let applicantScope = AccessScope(authorityID: nil, supplierID: applicant.id, userID: nil, roles: [.supplierUser], boardIDs: [], actor: "test")
            _ = try await admissions.apply(applicantScope, authority: "alpha", goodDeclarations)
            let market = try await MarketFixture.make(database: database, scoped: scoped, a: a, supplierID: supplier.id)
            try await schools(scoped, a)
            let schoolContract = try await schoolContract(scoped, a, supplierID: supplier.id)
            return World(database: database, a: a, b: b, supplierToken: supplierToken, supplierUserID: supplierUser.id,
                         supplierID: supplier.id, applicantToken: applicantToken, applicantID: applicant.id,
                         outsiderToken: outsiderToken, market: market, schoolContract: schoolContract)
        }
    }

    /// A's schools: 121001 (first board), 121002 (second board), 121003 (first board, causing concern).
    static func schools(_ database: ScopedDatabase, _ a: TenantFixture) async throws {
        let scope = AccessScope.operatorScope(authorityID: a.authority.id, osUser: "test")
        let imports = SchoolImportService(database: database)
        try await imports.setRules(scope, source: "district", rules: [("Northshire", a.boards[0].id), ("Southshire", a.boards[1].id)])
        try await imports.seedConcernCategories(scope)
        _ = try await imports.importFile(scope, data: GIASFixture.file([
            .init(urn: "121001", name: "Northside Primary"), .init(urn: "121002", name: "Southside Academy", district: "Southshire"),
            .init(urn: "121003", name: "Concerned Primary"),
        ]), laCode: "815")
        let hosi = AccessScope(authorityID: a.authority.id, userID: a.users[.hosi]!.id, roles: [.hosi], boardIDs: [], actor: "user:test")
        _ = try await SchoolService(database: database).markConcern(hosi, urn: 121003, category: "local_concern", reason: "Falling outcomes", since: "2025-09-01")
    }

    /// A contract on 121003's improvement plan, to the admitted supplier; returns its id.
    static func schoolContract(_ database: ScopedDatabase, _ a: TenantFixture, supplierID: UUID) async throws -> UUID {
        let hosi = AccessScope(authorityID: a.authority.id, userID: a.users[.hosi]!.id, roles: [.hosi], boardIDs: [], actor: "user:test")
        let spip = try await SPIPService(database: database).recordContract(hosi, urn: 121003, SchoolContractDraft(
            supplierID: supplierID, service: "governance_audit", description: "External review of governance", valuePence: 500_000,
            financialYear: "2025-26", startDate: "2026-01-05", endDate: "2026-03-31"))
        return spip.contracts[0].id
    }

    static let goodDeclarations = AdmissionDeclarations(
        safeguardingPolicy: true, safeguardingLead: "S. Lead", insuranceProvider: "Mutual", insuranceExpiresOn: "2099-01-01",
        dbsChecks: true, businessContinuityPlan: true, dataProtectionCompliance: true, environmentalPolicy: true)

    static func supplierWithToken(_ database: ScopedDatabase, name: String, email: String) async throws -> (Supplier, User, String) {
        let (supplier, user) = try await SupplierService(database: database).createWithUser(
            name: name, userEmail: email, userName: "\(name) user", osUser: "test")
        let issued = try await TokenService(database: database).issue(
            .operatorScope(supplierID: supplier.id, osUser: "test"), userID: user.id, label: "test", expiresAt: nil)
        return (supplier, user, issued.secret)
    }

    static func tenant(_ database: ScopedDatabase, slug: String, name: String) async throws -> TenantFixture {
        let authority = try await AuthorityService(database: database).create(slug: slug, name: name, osUser: "test")
        let scope = AccessScope.operatorScope(authorityID: authority.id, osUser: "test")
        try await CatalogueService(database: database).seedDefaults(scope)
        let boardService = BoardService(database: database)
        let budgets = BudgetService(database: database)
        var boards: [Board] = []
        for (index, code) in ["NORTH", "SOUTH"].enumerated() {
            let board = try await boardService.create(scope, BoardDraft(name: "\(name) \(code.capitalized)", shortCode: code))
            boards.append(board)
            _ = try await budgets.append(scope, boardID: board.id, LedgerEntryDraft(
                financialYear: year, fundingStream: "locality", kind: .allocation, amountPence: 10_000_000 + index, reason: "test allocation"))
            _ = try await budgets.append(scope, boardID: board.id, LedgerEntryDraft(
                financialYear: year, fundingStream: "school_improvement", kind: .allocation, amountPence: 5_030_000, reason: "test allocation"))
        }
        let userService = UserService(database: database)
        let tokenService = TokenService(database: database)
        var users: [Role: User] = [:]
        var tokens: [Role: String] = [:]
        let grants: [Role: RoleGrant] = [
            .authorityAdmin: RoleGrant(role: .authorityAdmin), .hosi: RoleGrant(role: .hosi),
            .lim: RoleGrant(role: .lim, boardID: boards[0].id), .boardMember: RoleGrant(role: .boardMember, boardID: boards[0].id),
            .auditor: RoleGrant(role: .auditor),
        ]
        for (role, grant) in grants {
            let user = try await userService.create(scope, UserDraft(
                email: "\(role.rawValue)@\(slug).example", displayName: "\(name) \(role.rawValue)", roles: [grant]))
            users[role] = user
            tokens[role] = try await tokenService.issue(scope, userID: user.id, label: "test", expiresAt: nil).secret
        }
        let spare = try await tokenService.issue(scope, userID: users[.authorityAdmin]!.id, label: "spare", expiresAt: nil)
        return TenantFixture(authority: authority, boards: boards, users: users, tokens: tokens, spareTokenID: spare.token.id, spareToken: spare.secret)
    }

    /// A role's token: A's or B's staff; for suppliers, the one admitted to A, or (for B) one admitted nowhere.
    func token(_ role: Role, of tenant: TenantFixture) -> String {
        guard role == .supplierUser else { return tenant.tokens[role]! }
        return tenant.authority.id == a.authority.id ? supplierToken : outsiderToken
    }
}

/// The roles tests call with.
let everyRole: [Role] = [.authorityAdmin, .hosi, .lim, .boardMember, .auditor, .supplierUser]

extension TestClientProtocol {
    func call(
        _ method: HTTPRequest.Method, _ uri: String, token: String?, body: [String: Any]? = nil, headers extra: HTTPFields = [:]
    ) async throws -> TestResponse {
        var headers = extra
        if let token { headers[.authorization] = "Bearer \(token)" }
        var buffer: ByteBuffer?
        if let body {
            headers[.contentType] = "application/json"
            buffer = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body))
        }
        return try await execute(uri: uri, method: method, headers: headers, body: buffer)
    }
}

extension TestResponse {
    var jsonObject: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.readableBytesView)) as? [String: Any]) ?? [:] }
    var items: [[String: Any]] { jsonObject["items"] as? [[String: Any]] ?? [] }
}

func lower(_ id: UUID) -> String { id.uuidString.lowercased() }

/// Authority A's marketplace: projects in each state, and the admitted supplier's bids on them.
struct MarketFixture: Sendable {
    let theme: UUID
    let spareTheme: UUID
    /// One of A's default social-value measures (NT28), free for tests to edit.
    let measure: UUID
    /// Open, supplier has a draft bid (`draftBid`).
    let openWithDraft: UUID
    let draftBid: UUID
    /// Open, supplier has a complete, unsubmitted bid (`completeBid`).
    let openWithComplete: UUID
    let completeBid: UUID
    /// Open, supplier has a submitted bid (`submittedBid`).
    let openWithSubmitted: UUID
    let submittedBid: UUID
    /// Open, no bids.
    let openEmpty: UUID
    /// Open, to be cancelled.
    let openToCancel: UUID
    /// Deadline passed, with the supplier's submitted bid (`closedBid`).
    let closedWithBid: UUID
    let closedBid: UUID
    /// Deadline passed, no bids.
    let closedEmpty: UUID
    /// £30,000 incl. VAT, advertised, then unsuccessful (its earmark released): a below-threshold procurement whose
    /// tender notice the Procurement Act requires.
    let unsuccessfulBelowThreshold: UUID
    /// Drafts: to edit, to delete, complete and ready to publish.
    let draft: UUID
    let draftToDelete: UUID
    let draftComplete: UUID
    /// A question asked on `openWithDraft`, unanswered.
    let question: UUID
    /// Deadline passed, the supplier's bid fully moderated: ready to award.
    let closedForAward: UUID
    let awardBid: UUID
    /// Contracts: in negotiation (revision 1 of one KPI, nobody accepted); every KPI agreed, not started;
    /// active, with a variation the supplier proposed.
    let negotiating: UUID
    let negotiatingKPI: UUID
    let agreed: UUID
    let active: UUID
    let activeKPI: UUID
    let proposedVariation: UUID
    /// The active contract's first reporting period, with a Red return that opened `plan`.
    let activePeriod: UUID
    let plan: UUID
    /// An unresolved complaint on the active contract.
    let complaint: UUID

    static let evaluation = EvaluationModel(
        priceWeight: 40, qualityWeight: 45, socialValueWeight: 15,
        qualityCriteria: [.init(name: "Approach", weight: 30), .init(name: "Outcomes", weight: 15)],
        socialValueCriteria: [.init(name: "Local benefit", weight: 15)])

    static func fields(theme: UUID, title: String, deadline: Date = Date() + 14 * 86_400) -> ProjectFields {
        ProjectFields(
            themeID: theme, fundingStream: "locality", financialYear: "2025-26", title: title,
            description: "Training for school staff on autism-friendly classrooms across the locality.",
            outcomesSought: "More pupils with autism attending full time.", schoolURNs: ["121234"], maxValuePence: 100_000,
            bidDeadline: deadline, plannedStart: CalendarDate.format(deadline + 30 * 86_400),
            plannedEnd: CalendarDate.format(deadline + 300 * 86_400), contractManager: "Casey Manager", evaluation: evaluation)
    }

    static let completeContent = BidContent(
        pricePence: 90_000, approach: "Twilight sessions in every school.", outputs: "Twelve sessions.",
        kpis: [ProposedKPI(title: "Staff trained", measure: "Staff completing the course", unit: .count, baseline: 0, target: 120,
                           targetDate: "2026-07-31", frequency: .termly, evidenceSource: "Attendance registers")],
        socialValue: [.init(measureCode: "NT13", quantity: 2.5)],
        declarations: BidDeclarations(acceptsTerms: true, informationAccurate: true, conflictsOfInterest: ""))

    static func make(database: TestDatabase, scoped: ScopedDatabase, a: TenantFixture, supplierID: UUID) async throws -> MarketFixture {
        let lim = AccessScope(authorityID: a.authority.id, userID: a.users[.lim]!.id, roles: [.lim], boardIDs: [a.boards[0].id],
                              actor: "user:\(lower(a.users[.lim]!.id))")
        let supplier = AccessScope(authorityID: nil, supplierID: supplierID, userID: nil, roles: [.supplierUser], boardIDs: [], actor: "test")
        let catalogue = CatalogueService(database: scoped)
        let themes = try await catalogue.themes(.operatorScope(authorityID: a.authority.id, osUser: "test"))
        let theme = themes[0].id
        let spare = try await catalogue.createTheme(.operatorScope(authorityID: a.authority.id, osUser: "test"), category: .send,
                                                    name: "Spare theme", description: "", exampleOutcomes: "")
        let measure = try await catalogue.socialValueMeasures(.operatorScope(authorityID: a.authority.id, osUser: "test"))
            .first { $0.code == "NT28" }!.id
        let projects = ProjectService(database: scoped)
        let bids = BidService(database: scoped)
        func published(_ title: String) async throws -> UUID {
            let project = try await projects.create(lim, boardID: a.boards[0].id, fields(theme: theme, title: title))
            let opened = try await projects.publish(lim, id: project.id)
            return opened.id
        }
        let openWithDraft = try await published("Open with draft bid")
        let draftBid = try await bids.create(supplier, projectID: openWithDraft, BidContent(pricePence: 50_000, approach: "Draft"))
        let openWithComplete = try await published("Open with complete bid")
        let completeBid = try await bids.create(supplier, projectID: openWithComplete, completeContent)
        let openWithSubmitted = try await published("Open with submitted bid")
        let submittedBid = try await bids.create(supplier, projectID: openWithSubmitted, completeContent)
        _ = try await bids.submit(supplier, id: submittedBid.id)
        let openEmpty = try await published("Open without bids")
        let openToCancel = try await published("Open to cancel")
        let closedWithBid = try await published("Closed with bid")
        let closedBid = try await bids.create(supplier, projectID: closedWithBid, completeContent)
        _ = try await bids.submit(supplier, id: closedBid.id)
        let closedEmpty = try await published("Closed without bids")
        var belowThreshold = fields(theme: theme, title: "Unsuccessful, below threshold")
        belowThreshold.maxValuePence = 3_000_000
        let unsuccessfulBelowThreshold = try await projects.publish(lim, id: try await projects.create(lim, boardID: a.boards[0].id, belowThreshold).id).id
        try await setDeadline(database, projects: [closedWithBid, closedEmpty, unsuccessfulBelowThreshold], "now() - interval '1 hour'")
        _ = try await projects.markUnsuccessful(lim, id: unsuccessfulBelowThreshold, reason: "No bids")
        let draft = try await projects.create(lim, boardID: a.boards[0].id, ProjectFields(title: "Draft to edit"))
        let draftToDelete = try await projects.create(lim, boardID: a.boards[0].id, ProjectFields(title: "Draft to delete"))
        let draftComplete = try await projects.create(lim, boardID: a.boards[0].id, fields(theme: theme, title: "Draft ready to publish"))
        let question = try await ClarificationService(database: scoped).ask(supplier, projectID: openWithDraft, question: "Is travel paid?")

        // Evaluation and contracts: standstill of 0 working days so that contracts may start today.
        _ = try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("UPDATE authority SET standstill_working_days = 0 WHERE id = \(a.authority.id)")
        }
        let evaluation = EvaluationService(database: scoped)
        let contracts = ContractService(database: scoped)
        let member = a.users[.boardMember]!.id
        _ = try await evaluation.setPanel(lim, projectID: closedWithBid, memberIDs: [member])
        func biddedAndClosed(_ title: String) async throws -> (UUID, UUID) {
            let project = try await published(title)
            let bid = try await bids.create(supplier, projectID: project, completeContent)
            _ = try await bids.submit(supplier, id: bid.id)
            try await setDeadline(database, projects: [project], "now() - interval '1 hour'")
            for (kind, criterion) in [(CriterionKind.quality, "Approach"), (.quality, "Outcomes"), (.socialValue, "Local benefit")] {
                _ = try await evaluation.moderate(lim, bidID: bid.id, CriterionScore(kind: kind, criterion: criterion, score: 4, comment: "Good"))
            }
            return (project, bid.id)
        }
        let (closedForAward, awardBid) = try await biddedAndClosed("Closed, ready to award")
        func awarded(_ title: String) async throws -> Contract {
            let (project, bid) = try await biddedAndClosed(title)
            return try await contracts.award(lim, projectID: project, bidID: bid, reason: nil)
        }
        let negotiating = try await awarded("Awarded, negotiating")
        let agreed = try await awarded("Awarded, KPIs agreed")
        for party in [lim, supplier] {
            _ = try await contracts.acceptKPI(party, contractID: agreed.id, kpiID: agreed.kpis[0].id, revision: 1)
        }
        let active = try await awarded("Awarded and started")
        for party in [lim, supplier] {
            _ = try await contracts.acceptKPI(party, contractID: active.id, kpiID: active.kpis[0].id, revision: 1)
        }
        _ = try await contracts.start(lim, contractID: active.id)
        let monitoring = MonitoringService(database: scoped)
        let activePeriod = try await monitoring.periods(lim, contractID: active.id)[0].periodID
        // Returns are accepted once a period has started: the first period has begun.
        _ = try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("UPDATE reporting_period SET starts = current_date WHERE id = \(activePeriod)")
        }
        _ = try await monitoring.submit(supplier, contractID: active.id, ReturnSubmission(
            periodID: activePeriod, value: .number(0), noActivityReason: nil, narrative: "Delayed start", evidence: ""))
        let plan = try await monitoring.correctiveActions(lim, contractID: active.id)[0].id
        let complaint = try await ContractRecordsService(database: scoped).logComplaint(
            lim, contractID: active.id, receivedOn: "2027-01-20", nature: "Late start", actionTaken: "")
        let varied = try await contracts.proposeVariation(
            supplier, contractID: active.id, reason: "Extra cohort", valuePence: 95_000, endDate: nil, kpis: [])
        return MarketFixture(
            theme: theme, spareTheme: spare.id, measure: measure, openWithDraft: openWithDraft, draftBid: draftBid.id, openWithComplete: openWithComplete,
            completeBid: completeBid.id, openWithSubmitted: openWithSubmitted, submittedBid: submittedBid.id, openEmpty: openEmpty,
            openToCancel: openToCancel, closedWithBid: closedWithBid, closedBid: closedBid.id, closedEmpty: closedEmpty,
            unsuccessfulBelowThreshold: unsuccessfulBelowThreshold,
            draft: draft.id, draftToDelete: draftToDelete.id, draftComplete: draftComplete.id, question: question.id,
            closedForAward: closedForAward, awardBid: awardBid, negotiating: negotiating.id, negotiatingKPI: negotiating.kpis[0].id,
            agreed: agreed.id, active: active.id, activeKPI: active.kpis[0].id, proposedVariation: varied.variations[0].id,
            activePeriod: activePeriod, plan: plan, complaint: complaint.id)
    }

    /// Moves deadlines (and the question cut-off with them) as the superuser: the database clock decides.
    static func setDeadline(_ database: TestDatabase, projects: [UUID], _ expression: String) async throws {
        _ = try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query(PGQuery(
                "UPDATE project SET bid_deadline = \(expression), questions_close_at = \(expression) - interval '1 minute' WHERE id = ANY($1)",
                [projects.pg]))
        }
    }
}
