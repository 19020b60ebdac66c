import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// One read operation of the OpenAPI document, and what row-level security alone must agree with.
private struct ReadCheck {
    /// The call; `{id}` stands for each value of `over` (A's rows as the superuser sees them), one call each.
    let path: String
    var over: String?
    /// The ids (as text) the role may read under row-level security alone, with its context set as every
    /// request sets it. `$1` is authority A. Where the service is deliberately narrower than the policy
    /// in *which* rows it shows, the extra condition is written into this query with a comment saying why.
    let policy: String
    /// Where the answer names the ids: nil when the call shows the `{id}` object itself (200, or 403/404).
    var ids: ((TestResponse) -> [String])?
    /// Roles the service refuses outright (403/404) although their policies show them rows, and why.
    var refused: [Role: String] = [:]
    /// Roles the service answers (200) with nothing in the test data, by design, and why. Every other answered
    /// role must see something, so a policy that hides everything from a role (finding 8) cannot pass as agreement.
    var emptyByDesign: [Role: String] = [:]
}

/// Ids named by each element of the answer's `items` (several keys joined with "/").
private func items(_ keys: String...) -> (TestResponse) -> [String] { nested("items", keys) }

/// Ids named by each element of the array under `array` (a top-level key).
private func nested(_ array: String, _ keys: [String]) -> (TestResponse) -> [String] {
    { response in
        (response.jsonObject[array] as? [[String: Any]] ?? []).map { element in
            keys.map { key in element[key].map { "\($0)".lowercased() } ?? "<no \(key)>" }.joined(separator: "/")
        }
    }
}

/// The values of one column of a CSV answer (the test data has no quoted commas).
private func csvColumn(_ name: String) -> (TestResponse) -> [String] {
    { response in
        let rows = String(buffer: response.body).split(whereSeparator: \.isNewline).map { $0.split(separator: ",", omittingEmptySubsequences: false) }
        guard let header = rows.first, let index = header.firstIndex(where: { $0 == name }) else { return [] }
        return rows.dropFirst().map { String($0[index]).lowercased() }
    }
}

private func refuse(_ roles: [Role], _ why: String) -> [Role: String] { Dictionary(uniqueKeysWithValues: roles.map { ($0, why) }) }

/// Operations that read no tenant table, so there is nothing for a policy to agree with.
private let readsNoTenantTable: [String: String] = [
    "getHealth": "liveness only",
    "getReadiness": "counts applied migrations",
    "getOpenAPIDocument": "a static document",
    // The public open contracting feed reads ocds_release, whose policy shows every row to everyone (public data by
    // construction, no caller context): there is no per-role view to compare. OpenContractingTests checks its content.
    "listOcdsReleases": "public feed: every release to everyone",
    "getOcdsRelease": "public feed: every release to everyone",
    "getOcdsRecord": "public feed: every release to everyone",
]

/// Every GET of the document: operation → the call and the rows row-level security alone must agree with.
private func readChecks(_ world: World) -> [String: ReadCheck] {
    let staff: [Role] = [.authorityAdmin, .hosi, .lim, .boardMember, .auditor]
    let projects = "SELECT id::text FROM project WHERE authority_id = $1"
    let boards = "SELECT id::text FROM board WHERE authority_id = $1"
    let contracts = "SELECT id::text FROM contract WHERE authority_id = $1"
    let bids = "SELECT id::text FROM bid WHERE authority_id = $1"
    let users = "SELECT id::text FROM app_user WHERE authority_id = $1"
    let schools = "SELECT urn::text FROM school WHERE authority_id = $1"
    let evaluationReport = refuse([.boardMember], "Panel members score the bids; the ranked report of every member's scores is the LIM's and the auditor's.")
        .merging(refuse([.supplierUser], "The report ranks competing bids; a supplier reads its own bid.")) { a, _ in a }
    let notEvaluators = refuse([.authorityAdmin, .hosi],
                               "The admin and the HoSI take no part in evaluation: bids are the board's LIMs', its panel's and the auditor's.")
    let budgetStaff = "Budgets are the authority's own books: suppliers see a project's value, never a board's balances."
    return [
        "getMe": ReadCheck(path: "/v1/me", policy: "SELECT id::text FROM app_user WHERE id = app_user_id()",
                           ids: { [($0.jsonObject["user_id"] as? String) ?? "<none>"] }),
        "listFundingStreams": ReadCheck(
            path: "/v1/funding-streams", policy: "SELECT id::text FROM funding_stream WHERE authority_id = $1", ids: items("id"),
            refused: refuse([.supplierUser], "Suppliers read a project's funding stream on the project; the list is for budgeting.")),
        "listBoards": ReadCheck(
            path: "/v1/boards", policy: boards, ids: items("id"),
            refused: refuse([.supplierUser], "Suppliers need no board records (a project names its board); the policy shows them names only.")),
        "getBoard": ReadCheck(
            path: "/v1/boards/{id}", over: boards, policy: boards,
            refused: refuse([.supplierUser], "Suppliers need no board records (a project names its board); the policy shows them names only.")),
        "getBudget": ReadCheck(
            path: "/v1/boards/{id}/budgets/2025-26", over: boards,
            policy: "SELECT DISTINCT board_id::text FROM budget_balance WHERE authority_id = $1 AND financial_year = '2025-26'"),
        "listLedgerEntries": ReadCheck(
            path: "/v1/boards/{id}/ledger", over: boards, policy: "SELECT id::text FROM budget_ledger WHERE authority_id = $1", ids: items("id")),
        "listUsers": ReadCheck(
            path: "/v1/users", policy: users, ids: items("id"),
            refused: refuse([.hosi, .lim, .boardMember],
                            "Only the admin and the auditor list users; the others' policies show themselves and the board members of the boards they see (panels are named from them).")),
        // Only the admin and the auditor read others' user records; everyone reads their own. (The others' policies
        // also show the board members of the boards they see, whose names panels need; the service does not serve
        // those records.)
        "getUser": ReadCheck(
            path: "/v1/users/{id}", over: users,
            policy: users + " AND (id = app_user_id() OR app_has_role('authority_admin') OR app_has_role('auditor'))"),
        "listTokens": ReadCheck(
            path: "/v1/users/{id}/tokens", over: users, policy: "SELECT id::text FROM api_token WHERE authority_id = $1", ids: items("id")),
        "listAuditEvents": ReadCheck(
            path: "/v1/audit-events", policy: "SELECT id::text FROM audit_event WHERE chain_id = $1", ids: items("id")),
        "listAuthorities": ReadCheck(path: "/v1/authorities", policy: "SELECT id::text FROM authority", ids: items("id")),
        // "My admissions": the operation is the supplier's own applications by definition.
        "listMyAdmissions": ReadCheck(
            path: "/v1/supplier/admissions", policy: "SELECT authority_id::text FROM supplier_admission WHERE supplier_id = app_supplier_id()",
            ids: items("authority_id")),
        "listAdmissions": ReadCheck(
            path: "/v1/admissions", policy: "SELECT supplier_id::text FROM supplier_admission WHERE authority_id = $1", ids: items("supplier_id"),
            refused: refuse([.boardMember], "Board members take no part in admitting suppliers.")
                .merging(refuse([.supplierUser], "A supplier reads its own applications at /v1/supplier/admissions.")) { a, _ in a }),
        "listThemes": ReadCheck(path: "/v1/themes", policy: "SELECT id::text FROM theme WHERE authority_id = $1", ids: items("id")),
        "getSchoolBoardRules": ReadCheck(
            path: "/v1/school-board-rules",
            policy: "SELECT lower(source::text || '/' || value || '/' || board_id::text) FROM school_board_rule WHERE authority_id = $1",
            ids: { nested("rules", ["source", "value", "board_id"])($0) }),
        "listSocialValueMeasures": ReadCheck(
            path: "/v1/social-value-measures", policy: "SELECT id::text FROM social_value_measure WHERE authority_id = $1", ids: items("id")),
        "listProjects": ReadCheck(
            path: "/v1/projects", policy: projects, ids: items("id"),
            refused: refuse([.supplierUser], "Suppliers search opportunities (listOpportunities), not the authority's project register.")),
        "getProject": ReadCheck(path: "/v1/projects/{id}", over: projects, policy: projects),
        // Opportunities are what a supplier can still bid on: open projects whose deadline has not passed (RLS also
        // shows it closed and awarded ones, which it reads through getProject).
        "listOpportunities": ReadCheck(
            path: "/v1/opportunities", policy: projects + " AND status = 'open' AND bid_deadline > now()", ids: items("id"),
            refused: refuse(staff, "Opportunities are the supplier's search; staff use the project register.")),
        "listQuestions": ReadCheck(
            path: "/v1/projects/{id}/questions", over: projects, policy: "SELECT id::text FROM clarification WHERE authority_id = $1", ids: items("id")),
        "listBids": ReadCheck(path: "/v1/projects/{id}/bids", over: projects, policy: bids, ids: items("id"), emptyByDesign: notEvaluators),
        "getBid": ReadCheck(path: "/v1/bids/{id}", over: bids, policy: bids),
        "getPanel": ReadCheck(
            path: "/v1/projects/{id}/panel", over: projects,
            policy: "SELECT DISTINCT user_id::text FROM evaluation_panel_member WHERE authority_id = $1", ids: { nested("members", ["user_id"])($0) }),
        // project_bidders() is SECURITY DEFINER on purpose: a panel member must see the names (only) to declare
        // before the bid policy lets it see a bid. After declaring (as here) the bid policy agrees.
        "listBidders": ReadCheck(
            path: "/v1/projects/{id}/bidders", over: projects,
            policy: "SELECT DISTINCT supplier_id::text FROM bid WHERE authority_id = $1", ids: items("supplier_id"),
            refused: refuse([.supplierUser], "Who else bid is not shown to bidders; a supplier reads its own bids."), emptyByDesign: notEvaluators),
        "listDeclarations": ReadCheck(
            path: "/v1/projects/{id}/declarations", over: projects,
            policy: "SELECT user_id::text || '/' || supplier_id::text FROM conflict_declaration WHERE authority_id = $1",
            ids: items("user_id", "supplier_id"), emptyByDesign: notEvaluators),
        // The scores of a bid are answered exactly where the bid policy shows the bid (which scores within, the score
        // policies decide; the supplier's show none: checked below).
        "listScores": ReadCheck(path: "/v1/bids/{id}/scores", over: bids, policy: bids,
                                refused: refuse([.supplierUser], "A bidder learns its result at award (the bid's outcome note), never the panel's scores.")),
        "getEvaluationReport": ReadCheck(
            path: "/v1/projects/{id}/evaluation", over: projects, policy: bids, ids: { nested("lines", ["bid_id"])($0) }, refused: evaluationReport),
        "exportEvaluationReport": ReadCheck(
            path: "/v1/projects/{id}/evaluation.csv", over: projects, policy: bids, ids: csvColumn("bid_id"), refused: evaluationReport),
        "listContracts": ReadCheck(path: "/v1/contracts", policy: contracts, ids: items("id")),
        "getContract": ReadCheck(path: "/v1/contracts/{id}", over: contracts, policy: contracts),
        "listSchools": ReadCheck(path: "/v1/schools", policy: schools, ids: items("urn")),
        "listReturns": ReadCheck(
            path: "/v1/contracts/{id}/returns", over: contracts,
            policy: "SELECT id::text FROM reporting_period WHERE authority_id = $1", ids: items("period_id")),
        "listCorrectiveActions": ReadCheck(
            path: "/v1/contracts/{id}/corrective-actions", over: contracts,
            policy: "SELECT id::text FROM corrective_action_plan WHERE authority_id = $1", ids: items("id")),
        "listVisits": ReadCheck(
            path: "/v1/contracts/{id}/visits", over: contracts, policy: "SELECT id::text FROM monitoring_visit WHERE authority_id = $1", ids: items("id")),
        "listComplaints": ReadCheck(
            path: "/v1/contracts/{id}/complaints", over: contracts, policy: "SELECT id::text FROM complaint WHERE authority_id = $1", ids: items("id")),
        "getAuthorityDashboard": ReadCheck(
            path: "/v1/dashboard?financial_year=2025-26",
            policy: "SELECT DISTINCT funding_stream_id::text FROM budget_balance WHERE authority_id = $1 AND financial_year = '2025-26'",
            ids: { nested("budget", ["funding_stream_id"])($0) },
            refused: refuse([.lim, .boardMember], "Board staff read their board's dashboard; the authority-wide one is for the admin, HoSI and auditor.")),
        "getBoardDashboard": ReadCheck(path: "/v1/boards/{id}/dashboard?financial_year=2025-26", over: boards, policy: boards,
                                       refused: refuse([.supplierUser], budgetStaff)),
        "exportMonitoringReport": ReadCheck(
            path: "/v1/boards/{id}/monitoring-report.csv?academic_year=2026-27&term=spring", over: boards,
            policy: "SELECT DISTINCT contract_id::text FROM reporting_period WHERE authority_id = $1 AND label = 'spring 2026-27'",
            ids: csvColumn("contract_id"),
            refused: refuse([.supplierUser], "The monitoring report is the board's; a supplier reads its own returns on its contract.")),
        // A plan shows its priorities and contracts, which are board-scoped (app_sees_school); the school list is not.
        "getSPIP": ReadCheck(
            path: "/v1/schools/{id}/spip", over: schools,
            policy: "SELECT id::text FROM spip_priority WHERE authority_id = $1 UNION SELECT id::text FROM school_contract WHERE authority_id = $1",
            ids: { nested("priorities", ["id"])($0) + nested("contracts", ["id"])($0) },
            refused: refuse([.supplierUser], "The plan is the school's; a supplier lists its own contracts at /v1/school-contracts.")),
        // Notices are the authority admin's and the board's LIMs' (who file them); the others' policies show the projects.
        "listNotices": ReadCheck(
            path: "/v1/notices", policy: projects + " AND status <> 'draft'", ids: items("project_id"),
            refused: refuse([.hosi, .boardMember, .auditor], "Filing Procurement Act notices is the admin's and the board's LIMs' work.")
                .merging(refuse([.supplierUser], "Notices are the authority's obligations, not a supplier's.")) { a, _ in a }),
        "listSchoolContracts": ReadCheck(
            path: "/v1/school-contracts", policy: "SELECT id::text FROM school_contract WHERE authority_id = $1", ids: items("id")),
    ]
}

/// Issue 12: "a test that compares, for every read operation and role, what the service allows with what
/// the policies return". For every GET of the document (the table above) and each role of authority A (and
/// the admitted supplier), what the API shows — the ids it lists, or whether it shows an object at all —
/// equals what row-level security alone shows the same role context. A policy looser than the service is a
/// hole the service alone was closing; a policy stricter than the service is a page that shows nothing (as
/// finding 8 was for published questions). Where the service is deliberately stricter, the table says so.
@Suite("Service and row-level security agree on reads")
struct ReadAgreementTests {
    static func scope(_ world: World, _ role: Role) -> AccessScope {
        if role == .supplierUser {
            return AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                               boardIDs: [], actor: "user:\(lower(world.supplierUserID))")
        }
        let user = world.a.users[role]!
        return AccessScope(authorityID: world.a.authority.id, userID: user.id, roles: [role],
                           boardIDs: role.isBoardScoped ? [world.a.boards[0].id] : [], actor: "user:\(lower(user.id))")
    }

    /// The ids `sql` returns: as the superuser (A's rows, no policies) when `scope` is nil, otherwise as the
    /// application role under `scope`'s context, set by ScopedDatabase exactly as for a request.
    static func ids(_ world: World, _ sql: String, as scope: AccessScope?) async throws -> [String] {
        let query = PGQuery(sql, sql.contains("$1") ? [world.a.authority.id.pg] : [])
        if let scope {
            return try await world.database.withPool(conninfo: world.database.applicationConninfo, maxConnections: 1) { pool in
                try await pool.withTransaction(readOnly: true) { connection in
                    try await ScopedDatabase.setContext(scope, on: connection)
                    return try await connection.query(query).map { try $0.decode(String.self, at: 0).lowercased() }
                }
            }
        }
        return try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query(query).map { try $0.decode(String.self, at: 0).lowercased() }
        }
    }

    /// The GET operations of the document, read from the document itself, so a new one cannot be forgotten.
    static func documentedGetOperationIDs() throws -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Sources/LocalityAPI/openapi.yaml"), encoding: .utf8)
        var method = ""
        var operations = Set<String>()
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            // Operations sit at four spaces under their path: `    get:`, then their `operationId`.
            if line.hasPrefix("    ") && !line.hasPrefix("     ") && trimmed.hasSuffix(":") { method = String(trimmed.dropLast()) }
            if method == "get", trimmed.hasPrefix("operationId:") {
                operations.insert(trimmed.dropFirst("operationId:".count).trimmingCharacters(in: .whitespaces))
            }
        }
        return operations
    }

    @Test func everyGetOperationIsCheckedOrExcused() async throws {
        let world = try await World.make()
        let documented = try Self.documentedGetOperationIDs()
        let checked = Set(readChecks(world).keys)
        let excused = Set(readsNoTenantTable.keys)
        #expect(documented.count >= 40 && documented.isSuperset(of: ["getProject", "listContracts"]), "\(documented.sorted())")
        #expect(documented.subtracting(checked).subtracting(excused).isEmpty,
                "GET operations neither compared with the policies nor excused: \(documented.subtracting(checked).subtracting(excused).sorted())")
        #expect(checked.union(excused).subtracting(documented).isEmpty, "not GET operations of the document: \(checked.union(excused).subtracting(documented).sorted())")
        #expect(checked.isDisjoint(with: excused))
    }

    @Test func everyRoleReadsThroughTheAPIExactlyWhatItsPoliciesShow() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let lim = world.token(.lim, of: world.a)
            let m = world.market
            // A published answer and a second, unpublished question, so both kinds are compared; a declaration, so
            // the board member's view of bids after declaring is compared; a visit and a priority at a school of the
            // second board (outside the LIM's and board member's scope), so those lists are not empty.
            #expect(try await client.call(.post, "/v1/projects/\(lower(m.openWithDraft))/questions/\(lower(m.question))/answer",
                                          token: lim, body: ["answer": "Yes.", "publish": true]).status == .ok)
            #expect(try await client.call(.post, "/v1/projects/\(lower(m.openWithDraft))/questions", token: world.supplierToken,
                                          body: ["question": "Unpublished?"]).status == .created)
            #expect(try await client.call(.post, "/v1/projects/\(lower(m.closedWithBid))/declarations", token: world.token(.boardMember, of: world.a),
                                          body: ["supplier_id": lower(world.supplierID), "conflicted": false]).status == .created)
            #expect(try await client.call(.post, "/v1/contracts/\(lower(m.active))/visits", token: lim,
                                          body: ["visit_date": "2027-02-10", "kind": "planned", "attendees": "LIM", "findings": "Fine"]).status == .created)
            #expect(try await client.call(.post, "/v1/schools/121002/spip/priorities", token: world.token(.hosi, of: world.a),
                                          body: ["priority": "Improve attendance", "actions": ["Weekly panel"]]).status == .ok)

            var seen: [String: Int] = [:]
            for (operation, check) in readChecks(world).sorted(by: { $0.key < $1.key }) {
                var targets = [""]
                if let over = check.over { targets = try await Self.ids(world, over, as: nil) }
                for role in everyRole {
                    let token = world.token(role, of: world.a)
                    let policies = Set(try await Self.ids(world, check.policy, as: Self.scope(world, role)))
                    var service = Set<String>()
                    var statuses = Set<UInt16>()
                    for target in targets {
                        for response in try await client.pages(check.path.replacingOccurrences(of: "{id}", with: target), token: token) {
                            statuses.insert(UInt16(response.status.code))
                            guard response.status == .ok else { continue }
                            if let ids = check.ids { service.formUnion(ids(response)) } else { service.insert(target) }
                        }
                    }
                    // 409: a report asked for before the project's deadline, which shows nothing either.
                    #expect(statuses.isSubset(of: [200, 403, 404, 409]), "\(operation) as \(role.rawValue): statuses \(statuses.sorted())")
                    if let why = check.refused[role] {
                        // The service's own rule, stated in the table: refused although the policy shows rows.
                        #expect(service.isEmpty && !statuses.contains(200), "\(operation) as \(role.rawValue) is meant to be refused (\(why))")
                        #expect(!policies.isEmpty, "\(operation) as \(role.rawValue): the policy shows nothing, so the excuse is stale: \(why)")
                        continue
                    }
                    seen[operation, default: 0] += service.count
                    // The other half of finding 8: API and policies agreeing on an empty answer is a disagreement with what
                    // the service means, unless the table says that role sees nothing there.
                    if statuses.contains(200) && check.emptyByDesign[role] == nil {
                        #expect(!service.isEmpty, "\(operation) as \(role.rawValue) is answered but shows nothing")
                    }
                    if let why = check.emptyByDesign[role] { #expect(service.isEmpty, "\(operation) as \(role.rawValue) was to show nothing: \(why)") }
                    #expect(service == policies, """
                        \(operation) as \(role.rawValue): the API shows \(service.subtracting(policies).sorted()) that the policies hide, \
                        and the policies show \(policies.subtracting(service).sorted()) that the API does not
                        """)
                }
            }
            // The comparison means something only if every operation showed somebody something.
            for operation in readChecks(world).keys { #expect(seen[operation, default: 0] > 0, "\(operation) showed nothing to anyone") }

            // The supplier's refusal on scores rests on the service; its policies must not show a score either (the
            // score tables are the authority's: their policies require the authority context).
            for table in ["scorecard", "individual_score", "moderated_score"] {
                let rows = try await Self.ids(world, "SELECT bid_id::text FROM \(table)", as: Self.scope(world, .supplierUser))
                let all = try await Self.ids(world, "SELECT bid_id::text FROM \(table)", as: nil)
                #expect(rows.isEmpty, "the supplier's policies show \(rows.count) rows of \(table)")
                #expect(table == "moderated_score" ? !all.isEmpty : true, "no \(table) rows to hide")
            }
            // Questions: the service's rule, stated independently: the board's LIMs and the auditor see every question,
            // the asker its own, and everyone else who sees the project the published ones (finding 8: on main the
            // policies showed board staff none, so API and policies agreed on an empty list).
            let expected: [Role: Int] = [.lim: 2, .auditor: 2, .supplierUser: 2, .authorityAdmin: 1, .hosi: 1, .boardMember: 1]
            for role in everyRole {
                let policies = try await Self.ids(world, "SELECT id::text FROM clarification WHERE authority_id = $1", as: Self.scope(world, role))
                #expect(policies.count == expected[role], "\(role) sees \(policies.count) questions under RLS")
            }
        }
    }
}

extension TestClientProtocol {
    /// Every page of a GET (following `next_cursor`), or the single answer of an unpaginated one.
    fileprivate func pages(_ path: String, token: String) async throws -> [TestResponse] {
        var answers: [TestResponse] = []
        var next: String? = path
        while let uri = next {
            let response = try await call(.get, uri, token: token)
            answers.append(response)
            next = nil
            if response.status == .ok, let cursor = response.jsonObject["next_cursor"] as? String, answers.count < 100 {
                let encoded = cursor.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? cursor
                next = path + (path.contains("?") ? "&" : "?") + "cursor=\(encoded)"
            }
        }
        return answers
    }
}
