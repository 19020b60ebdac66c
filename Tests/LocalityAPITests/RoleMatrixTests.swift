import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// One operation of the OpenAPI document, called on authority A's own resources, with the status each of
/// A's roles must get. Deny by default: anything not listed as allowed must be refused.
struct MatrixEntry {
    let method: HTTPRequest.Method
    let path: String
    let body: (Role) -> [String: Any]?
    let expected: [Role: HTTPResponse.Status]
    /// Where a successful change is audited: A's chain (staff), or a supplier's own chain (everything a
    /// supplier does, and registrations).
    var auditedInA: (Role) -> Bool = { $0 != .supplierUser }
    var headers: HTTPFields = [:]
    /// Entries run by (phase, operation id): a later phase for changes that would spoil others' fixtures.
    var phase = 0
    var mutates: Bool { method != .get }
}

let staffRoles: Set<Role> = [.authorityAdmin, .hosi, .lim, .boardMember, .auditor]
let supplierOnly: [Role: HTTPResponse.Status] = [.supplierUser: .ok]

func outcomes(_ allowed: [Role: HTTPResponse.Status], otherwise: HTTPResponse.Status = .forbidden) -> [Role: HTTPResponse.Status] {
    Dictionary(uniqueKeysWithValues: everyRole.map { ($0, allowed[$0] ?? otherwise) })
}

func all(_ status: HTTPResponse.Status, _ roles: Set<Role>) -> [Role: HTTPResponse.Status] {
    Dictionary(uniqueKeysWithValues: roles.map { ($0, status) })
}

/// The operation ids the contract declares, read from the document itself so a new operation cannot be
/// forgotten here.
func documentedOperationIDs() throws -> Set<String> {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let text = try String(contentsOf: root.appendingPathComponent("Sources/LocalityAPI/openapi.yaml"), encoding: .utf8)
    let regex = try NSRegularExpression(pattern: #"operationId:\s*(\w+)"#)
    return Set(regex.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap { match in
        Range(match.range(at: 1), in: text).map { String(text[$0]) }
    })
}

func matrix(_ world: World) -> [String: MatrixEntry] {
    let a = world.a
    let board = lower(a.boards[0].id)
    let admin = lower(a.users[.authorityAdmin]!.id)
    let hosi = lower(a.users[.hosi]!.id)
    let unique = { (role: Role) in "\(role.rawValue)-\(UUID().uuidString.prefix(6))" }
    return [
        "getHealth": MatrixEntry(method: .get, path: "/healthz", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getReadiness": MatrixEntry(method: .get, path: "/readyz", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getOpenAPIDocument": MatrixEntry(method: .get, path: "/openapi.yaml", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getMe": MatrixEntry(method: .get, path: "/v1/me", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "listFundingStreams": MatrixEntry(method: .get, path: "/v1/funding-streams", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "listBoards": MatrixEntry(method: .get, path: "/v1/boards", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "createBoard": MatrixEntry(
            method: .post, path: "/v1/boards",
            body: { role in ["name": "Board \(unique(role))", "short_code": "B\(Int.random(in: 1000...99999))"] },
            expected: outcomes([.authorityAdmin: .created])),
        "getBoard": MatrixEntry(method: .get, path: "/v1/boards/\(board)", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "updateBoard": MatrixEntry(
            method: .patch, path: "/v1/boards/\(board)", body: { role in ["chair": "Chair \(unique(role))"] },
            expected: outcomes([.authorityAdmin: .ok])),
        "getBudget": MatrixEntry(method: .get, path: "/v1/boards/\(board)/budgets/2025-26", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "listLedgerEntries": MatrixEntry(method: .get, path: "/v1/boards/\(board)/ledger", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "postLedgerEntry": MatrixEntry(
            method: .post, path: "/v1/boards/\(board)/ledger",
            body: { _ in ["financial_year": "2025-26", "funding_stream": "locality", "kind": "allocation", "amount_pence": 500, "reason": "top-up"] },
            expected: outcomes([.authorityAdmin: .created])),
        "listUsers": MatrixEntry(method: .get, path: "/v1/users", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .auditor: .ok])),
        "createUser": MatrixEntry(
            method: .post, path: "/v1/users",
            body: { role in ["email": "\(unique(role))@alpha.example", "display_name": "New person", "roles": [["role": "auditor"]]] },
            expected: outcomes([.authorityAdmin: .created])),
        "getUser": MatrixEntry(
            method: .get, path: "/v1/users/\(admin)", body: { _ in nil },
            expected: outcomes([.authorityAdmin: .ok, .auditor: .ok, .hosi: .notFound, .lim: .notFound, .boardMember: .notFound])),
        "updateUser": MatrixEntry(
            method: .patch, path: "/v1/users/\(hosi)", body: { role in ["display_name": "Renamed by \(role.rawValue)"] },
            expected: outcomes([.authorityAdmin: .ok])),
        "listTokens": MatrixEntry(method: .get, path: "/v1/users/\(admin)/tokens", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .auditor: .ok])),
        "issueToken": MatrixEntry(
            method: .post, path: "/v1/users/\(hosi)/tokens", body: { _ in ["label": "laptop"] },
            expected: outcomes([.authorityAdmin: .created])),
        "revokeToken": MatrixEntry(
            method: .delete, path: "/v1/users/\(admin)/tokens/\(lower(a.spareTokenID))", body: { _ in nil },
            expected: outcomes([.authorityAdmin: .noContent])),
        "listAuditEvents": MatrixEntry(method: .get, path: "/v1/audit-events", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .auditor: .ok])),
        // The public open contracting feed: no token needed, the same for everyone (A publishes nothing yet: no OCID prefix).
        "listOcdsReleases": MatrixEntry(method: .get, path: "/ocds/releases", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getOcdsRelease": MatrixEntry(method: .get, path: "/ocds/releases/ocds-a1b2c3-none", body: { _ in nil }, expected: outcomes([:], otherwise: .notFound)),
        "getOcdsRecord": MatrixEntry(method: .get, path: "/ocds/records/ocds-a1b2c3-none", body: { _ in nil }, expected: outcomes([:], otherwise: .notFound)),
        "listNotices": MatrixEntry(method: .get, path: "/v1/notices", body: { _ in nil }, expected: outcomes([.authorityAdmin: .ok, .lim: .ok])),
        // A notice is filed once: the admin files the below-threshold tender notice; the LIM, allowed too, names a notice
        // this procurement does not need (422).
        "fileNotice": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(world.market.unsuccessfulBelowThreshold))/notice-filings",
            body: { role in ["notice_key": role == .lim ? "uk4_tender" : "below_threshold_tender", "platform_notice_id": "CDP-\(role.rawValue)"] },
            expected: outcomes([.authorityAdmin: .created, .lim: .unprocessableContent])),
        // Authority-wide roles mark a contract's schools causing concern publishable; the LIM who manages it may not.
        "setConcernSchoolPublication": MatrixEntry(
            method: .put, path: "/v1/contracts/\(lower(world.market.active))/concern-school-publication",
            body: { _ in ["publish_concern_schools": true] }, expected: outcomes([.authorityAdmin: .ok, .hosi: .ok])),
    ].merging(marketplaceMatrix(world)) { first, _ in first }
}

func marketplaceMatrix(_ world: World) -> [String: MatrixEntry] {
    let m = world.market
    let unique = { (role: Role) in "\(role.rawValue)-\(UUID().uuidString.prefix(8))" }
    let lim: [Role: HTTPResponse.Status] = [.lim: .ok]
    let allOK = outcomes([:], otherwise: .ok)
    let staffOK = outcomes(all(.ok, staffRoles))
    return [
        "registerSupplier": MatrixEntry(
            method: .post, path: "/v1/supplier-registrations",
            body: { role in [
                "name": "New \(unique(role))", "companies_house_number": String(format: "%08d", Int.random(in: 1...99_999_999)),
                "address": "1 High Street, Skipton", "contact_name": "Pat", "contact_email": "pat@new.example",
                "user_email": "\(unique(role))@new.example", "user_name": "Pat",
            ] },
            expected: outcomes([:], otherwise: .created), auditedInA: { _ in false }),
        "listAuthorities": MatrixEntry(method: .get, path: "/v1/authorities", body: { _ in nil }, expected: allOK),
        "listMyAdmissions": MatrixEntry(method: .get, path: "/v1/supplier/admissions", body: { _ in nil }, expected: outcomes(supplierOnly)),
        "applyForAdmission": MatrixEntry(
            method: .post, path: "/v1/supplier/admissions",
            body: { _ in ["authority": "beta", "declarations": declarationsJSON] },
            expected: outcomes([.supplierUser: .created])),
        "listAdmissions": MatrixEntry(
            method: .get, path: "/v1/admissions", body: { _ in nil },
            expected: outcomes([.authorityAdmin: .ok, .hosi: .ok, .lim: .ok, .auditor: .ok])),
        "decideAdmission": MatrixEntry(
            method: .post, path: "/v1/admissions/\(lower(world.applicantID))/decision", body: { _ in ["decision": "approve"] },
            expected: outcomes([.authorityAdmin: .ok])),
        "listThemes": MatrixEntry(method: .get, path: "/v1/themes", body: { _ in nil }, expected: allOK),
        "createTheme": MatrixEntry(
            method: .post, path: "/v1/themes", body: { role in ["category": "send", "name": "Theme \(unique(role))"] },
            expected: outcomes([.authorityAdmin: .created])),
        "updateTheme": MatrixEntry(
            method: .patch, path: "/v1/themes/\(lower(m.spareTheme))", body: { _ in ["retired": true] },
            expected: outcomes([.authorityAdmin: .ok])),
        "listSocialValueMeasures": MatrixEntry(method: .get, path: "/v1/social-value-measures", body: { _ in nil }, expected: allOK),
        "createSocialValueMeasure": MatrixEntry(
            method: .post, path: "/v1/social-value-measures",
            body: { _ in ["code": "X\(UUID().uuidString.prefix(8))", "name": "Local supply chain", "unit": "£ spent", "proxy_value_pence": 12] },
            expected: outcomes([.authorityAdmin: .created])),
        "updateSocialValueMeasure": MatrixEntry(
            method: .patch, path: "/v1/social-value-measures/\(lower(m.measure))", body: { role in ["name": "Donations (\(unique(role)))"] },
            expected: outcomes([.authorityAdmin: .ok])),
        "listProjects": MatrixEntry(method: .get, path: "/v1/projects", body: { _ in nil }, expected: staffOK),
        "createProject": MatrixEntry(
            method: .post, path: "/v1/projects", body: { role in ["board_id": lower(world.a.boards[0].id), "title": "New \(unique(role))"] },
            expected: outcomes([.lim: .created])),
        "getProject": MatrixEntry(method: .get, path: "/v1/projects/\(lower(m.openEmpty))", body: { _ in nil }, expected: allOK),
        "updateProject": MatrixEntry(
            method: .patch, path: "/v1/projects/\(lower(m.draft))", body: { _ in ["description": "Edited"] },
            expected: outcomes(lim), headers: [.ifMatch: "\"v1\""]),
        "deleteProject": MatrixEntry(
            method: .delete, path: "/v1/projects/\(lower(m.draftToDelete))", body: { _ in nil }, expected: outcomes([.lim: .noContent])),
        "publishProject": MatrixEntry(method: .post, path: "/v1/projects/\(lower(m.draftComplete))/publish", body: { _ in nil }, expected: outcomes(lim)),
        "cancelProject": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.openToCancel))/cancel", body: { _ in ["reason": "No longer needed"] },
            expected: outcomes(lim)),
        "markProjectUnsuccessful": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.closedEmpty))/unsuccessful", body: { _ in ["reason": "No bids"] },
            expected: outcomes(lim)),
        "amendProject": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.openEmpty))/amendments", body: { _ in ["note": "Venue confirmed"] },
            expected: outcomes(lim)),
        "listOpportunities": MatrixEntry(method: .get, path: "/v1/opportunities", body: { _ in nil }, expected: outcomes(supplierOnly)),
        "listQuestions": MatrixEntry(method: .get, path: "/v1/projects/\(lower(m.openWithDraft))/questions", body: { _ in nil }, expected: allOK),
        "askQuestion": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.openEmpty))/questions", body: { _ in ["question": "Which schools?"] },
            expected: outcomes([.supplierUser: .created])),
        "answerQuestion": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.openWithDraft))/questions/\(lower(m.question))/answer",
            body: { _ in ["answer": "Yes, at HMRC rates.", "publish": true] }, expected: outcomes(lim)),
        "listBids": MatrixEntry(method: .get, path: "/v1/projects/\(lower(m.closedWithBid))/bids", body: { _ in nil }, expected: allOK),
        "createBid": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.openEmpty))/bids", body: { _ in ["price_pence": 80_000] },
            expected: outcomes([.supplierUser: .created])),
        "getBid": MatrixEntry(
            method: .get, path: "/v1/bids/\(lower(m.closedBid))", body: { _ in nil },
            // The board member declared no conflict with this bidder (declareConflict runs first), so may see it.
            expected: outcomes([.supplierUser: .ok, .lim: .ok, .auditor: .ok, .authorityAdmin: .notFound, .hosi: .notFound, .boardMember: .ok])),
        "updateBid": MatrixEntry(
            method: .patch, path: "/v1/bids/\(lower(m.draftBid))", body: { _ in ["approach": "Revised"] },
            expected: outcomes(supplierOnly)),
        "submitBid": MatrixEntry(
            method: .post, path: "/v1/bids/\(lower(m.completeBid))/submit", body: { _ in nil },
            expected: outcomes(supplierOnly)),
        "withdrawBid": MatrixEntry(
            method: .post, path: "/v1/bids/\(lower(m.submittedBid))/withdraw", body: { _ in nil },
            expected: outcomes(supplierOnly)),
    ].merging(evaluationMatrix(world)) { first, _ in first }
}

func evaluationMatrix(_ world: World) -> [String: MatrixEntry] {
    let m = world.market
    let closed = lower(m.closedWithBid)
    let bid = lower(m.closedBid)
    let member = lower(world.a.users[.boardMember]!.id)
    let staffOK = outcomes(all(.ok, staffRoles))
    let limOK = outcomes([.lim: .ok])
    let partiesOK = outcomes([.lim: .ok, .supplierUser: .ok])
    let score = { (kind: String, criterion: String) -> [String: Any] in ["kind": kind, "criterion": criterion, "score": 3, "comment": "Satisfactory"] }
    let kpi: [String: Any] = [
        "title": "Attendance", "measure": "Pupils attending 90%+", "unit": "percentage", "baseline": 60, "target": 75,
        "target_date": "2026-07-31", "frequency": "termly", "evidence_source": "School MIS",
    ]
    return [
        "getPanel": MatrixEntry(method: .get, path: "/v1/projects/\(closed)/panel", body: { _ in nil }, expected: staffOK),
        "setPanel": MatrixEntry(
            method: .put, path: "/v1/projects/\(lower(m.openEmpty))/panel", body: { _ in ["member_ids": [member]] }, expected: limOK),
        "listBidders": MatrixEntry(method: .get, path: "/v1/projects/\(closed)/bidders", body: { _ in nil }, expected: staffOK),
        "listDeclarations": MatrixEntry(method: .get, path: "/v1/projects/\(closed)/declarations", body: { _ in nil }, expected: staffOK),
        "declareConflict": MatrixEntry(
            method: .post, path: "/v1/projects/\(closed)/declarations",
            body: { _ in ["supplier_id": lower(world.supplierID), "conflicted": false] }, expected: outcomes([.boardMember: .created])),
        "listScores": MatrixEntry(
            method: .get, path: "/v1/bids/\(bid)/scores", body: { _ in nil },
            expected: outcomes([.lim: .ok, .auditor: .ok, .boardMember: .ok, .authorityAdmin: .notFound, .hosi: .notFound])),
        "saveScores": MatrixEntry(
            method: .put, path: "/v1/bids/\(bid)/scores",
            body: { _ in ["scores": [score("quality", "Approach")], "submit": false] }, expected: outcomes([.boardMember: .ok])),
        "moderateScore": MatrixEntry(method: .post, path: "/v1/bids/\(bid)/moderation", body: { _ in score("quality", "Approach") }, expected: limOK),
        "setCompliance": MatrixEntry(method: .post, path: "/v1/bids/\(bid)/compliance", body: { _ in ["compliant": true] }, expected: limOK),
        "getEvaluationReport": MatrixEntry(
            method: .get, path: "/v1/projects/\(closed)/evaluation", body: { _ in nil }, expected: outcomes([.lim: .ok, .auditor: .ok])),
        "exportEvaluationReport": MatrixEntry(
            method: .get, path: "/v1/projects/\(closed)/evaluation.csv", body: { _ in nil }, expected: outcomes([.lim: .ok, .auditor: .ok])),
        "awardProject": MatrixEntry(
            method: .post, path: "/v1/projects/\(lower(m.closedForAward))/award", body: { _ in ["bid_id": lower(m.awardBid)] },
            expected: outcomes([.lim: .created])),
        "listContracts": MatrixEntry(method: .get, path: "/v1/contracts", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "getContract": MatrixEntry(method: .get, path: "/v1/contracts/\(lower(m.negotiating))", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "addContractKPI": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.negotiating))/kpis", body: { _ in ["definition": kpi] }, expected: partiesOK),
        "reviseContractKPI": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.negotiating))/kpis/\(lower(m.negotiatingKPI))/revisions",
            body: { role in ["definition": kpi, "reason": "Counter-proposal by \(role.rawValue)"] }, expected: partiesOK),
        "acceptContractKPI": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.negotiating))/kpis/\(lower(m.negotiatingKPI))/accept",
            body: { _ in ["revision": 1] }, expected: partiesOK),
        "startContract": MatrixEntry(method: .post, path: "/v1/contracts/\(lower(m.agreed))/start", body: { _ in nil }, expected: limOK),
        "proposeVariation": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/variations",
            body: { role in ["reason": "Change by \(role.rawValue)", "end_date": "2027-08-31"] }, expected: partiesOK),
        "getSPIP": MatrixEntry(method: .get, path: "/v1/schools/121003/spip", body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "addSPIPPriority": MatrixEntry(
            method: .post, path: "/v1/schools/121003/spip/priorities",
            body: { _ in ["priority": "Improve attendance", "actions": ["Weekly attendance panel"]] }, expected: outcomes([.hosi: .ok])),
        "recordSchoolContract": MatrixEntry(
            method: .post, path: "/v1/schools/121001/contracts",
            body: { _ in ["supplier_id": lower(world.supplierID), "service": "peer_review", "description": "Peer review of leadership",
                          "value_pence": 300_000, "financial_year": "2025-26", "start_date": "2026-02-01", "end_date": "2026-03-31"] },
            expected: outcomes([.hosi: .created])),
        "listSchoolContracts": MatrixEntry(
            method: .get, path: "/v1/school-contracts", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "addSchoolContractOutput": MatrixEntry(
            method: .post, path: "/v1/school-contracts/\(lower(world.schoolContract))/outputs", body: { _ in ["title": "Governance report"] },
            expected: outcomes([.hosi: .ok, .supplierUser: .ok])),
        "assessSchoolContract": MatrixEntry(
            method: .post, path: "/v1/school-contracts/\(lower(world.schoolContract))/assessments",
            body: { _ in ["assessed_on": "2026-02-15", "progress": "expected", "note": "On track"] }, expected: outcomes([.hosi: .ok])),
        "listSchools": MatrixEntry(method: .get, path: "/v1/schools", body: { _ in nil }, expected: staffOK),
        "getSchoolBoardRules": MatrixEntry(method: .get, path: "/v1/school-board-rules", body: { _ in nil }, expected: staffOK),
        // The fixture's own mapping, set again: no school moves, so later entries keep their boards.
        "setSchoolBoardRules": MatrixEntry(
            method: .put, path: "/v1/school-board-rules",
            body: { _ in ["rules": [["source": "district", "value": "Northshire", "board_id": lower(world.a.boards[0].id)],
                                    ["source": "district", "value": "Southshire", "board_id": lower(world.a.boards[1].id)]],
                          "overrides": [["urn": 121002, "board_id": lower(world.a.boards[1].id)]]] },
            expected: outcomes([.authorityAdmin: .ok])),
        "markSchoolConcern": MatrixEntry(
            method: .post, path: "/v1/schools/121001/concern",
            body: { _ in ["category": "ofsted_inadequate", "reason": "Inspection outcome", "since": "2025-10-01"] },
            expected: outcomes([.hosi: .ok])),
        "clearSchoolConcern": MatrixEntry(
            method: .post, path: "/v1/schools/121003/concern/clear",
            body: { _ in ["reason": "Good inspection", "cleared_on": "2026-03-01"] }, expected: outcomes([.hosi: .ok])),
        "listReturns": MatrixEntry(method: .get, path: "/v1/contracts/\(lower(m.active))/returns", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "submitReturn": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/returns",
            body: { _ in ["period_id": lower(m.activePeriod), "actual": "30", "narrative": "Two sessions held"] }, expected: outcomes(supplierOnly)),
        "overrideRating": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/returns/\(lower(m.activePeriod))/override",
            body: { _ in ["rating": "amber", "reason": "Sessions postponed by snow"] }, expected: limOK),
        // The fixture's plan through its states, one phase each: proposed, agreed, an action done, closed.
        "proposeCorrectiveAction": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/corrective-actions/\(lower(m.plan))/proposal",
            body: { _ in ["root_cause": "Venue unavailable", "actions": [["description": "Book the hall", "owner": "Ops lead", "due_date": "2027-02-01"]]] },
            expected: outcomes(supplierOnly), phase: 2),
        "decideCorrectiveAction": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/corrective-actions/\(lower(m.plan))/decision",
            body: { _ in ["agree": true] }, expected: limOK, phase: 3),
        "completeCorrectiveAction": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/corrective-actions/\(lower(m.plan))/progress",
            body: { _ in ["index": 0, "done_on": "2027-01-20"] }, expected: partiesOK, phase: 4),
        "closeCorrectiveAction": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/corrective-actions/\(lower(m.plan))/close",
            body: { _ in ["outcome": "resolved"] }, expected: limOK, phase: 5),
        "getAuthorityDashboard": MatrixEntry(
            method: .get, path: "/v1/dashboard?financial_year=2025-26", body: { _ in nil },
            expected: outcomes([.authorityAdmin: .ok, .hosi: .ok, .auditor: .ok])),
        "getBoardDashboard": MatrixEntry(
            method: .get, path: "/v1/boards/\(lower(world.a.boards[0].id))/dashboard?financial_year=2025-26", body: { _ in nil },
            expected: outcomes(all(.ok, staffRoles))),
        "exportMonitoringReport": MatrixEntry(
            method: .get, path: "/v1/boards/\(lower(world.a.boards[0].id))/monitoring-report.csv?academic_year=2026-27&term=spring",
            body: { _ in nil }, expected: outcomes(all(.ok, staffRoles))),
        "listVisits": MatrixEntry(method: .get, path: "/v1/contracts/\(lower(m.active))/visits", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "recordVisit": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/visits",
            body: { _ in ["visit_date": "2027-02-10", "kind": "unannounced", "attendees": "LIM, provider lead", "findings": "Sessions well attended"] },
            expected: outcomes([.lim: .created])),
        "listComplaints": MatrixEntry(method: .get, path: "/v1/contracts/\(lower(m.active))/complaints", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        "logComplaint": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/complaints",
            body: { _ in ["received_on": "2027-02-12", "nature": "Session cancelled at short notice"] }, expected: outcomes([.lim: .created])),
        "resolveComplaint": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/complaints/\(lower(m.complaint))/resolution",
            body: { _ in ["resolution": "Rescheduled; apology sent", "resolved_on": "2027-02-20"] }, expected: limOK),
        "listCorrectiveActions": MatrixEntry(
            method: .get, path: "/v1/contracts/\(lower(m.active))/corrective-actions", body: { _ in nil }, expected: outcomes([:], otherwise: .ok)),
        // Ending contracts runs last, after the negotiation and variation entries used the same contracts.
        "completeContract": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/complete", body: { _ in nil }, expected: limOK, phase: 9),
        "terminateContract": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.negotiating))/terminate",
            body: { _ in ["reason": "Provider withdrew", "amount_paid_pence": 10_000] }, expected: limOK, phase: 9),
        "decideVariation": MatrixEntry(
            method: .post, path: "/v1/contracts/\(lower(m.active))/variations/\(lower(m.proposedVariation))/decision",
            body: { _ in ["accept": true] }, expected: limOK),
    ]
}

var declarationsJSON: [String: Any] { [
    "safeguarding_policy": true, "safeguarding_lead": "S. Lead", "insurance_provider": "Mutual", "insurance_expires_on": "2099-01-01",
    "dbs_checks": true, "business_continuity_plan": true, "data_protection_compliance": true, "environmental_policy": true,
] }

/// Audit events in every chain (authorities' and suppliers').
func totalAuditCount(_ database: TestDatabase) async throws -> Int {
    try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "test")) { connection in
        try await connection.query("SELECT count(*) FROM audit_event").first!.decode(Int.self, at: 0)
    }
}

/// Audit events in one authority's chain, counted as the superuser (outside row-level security).
func auditCount(_ database: TestDatabase, authority: UUID) async throws -> Int {
    try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "test")) { connection in
        try await connection.query("SELECT count(*) FROM audit_event WHERE chain_id = \(authority)").first!.decode(Int.self, at: 0)
    }
}

@Suite("Role × operation matrix")
struct RoleMatrixTests {
    @Test func everyDocumentedOperationIsInTheMatrix() async throws {
        let world = try await World.make()
        // `/metrics` is served on its own listener, never on the API port (HTTPStrictnessTests checks both).
        let documented = try documentedOperationIDs()
        let covered = Set(matrix(world).keys)
        #expect(documented.count >= 20)
        #expect(documented.subtracting(covered).isEmpty, "operations missing from the matrix: \(documented.subtracting(covered).sorted())")
        #expect(covered.subtracting(documented).isEmpty, "matrix names operations the document lacks: \(covered.subtracting(documented).sorted())")
    }

    /// Each role of authority A against A's own resources; a mutating call writes exactly one audit event
    /// when it succeeds and none when refused.
    @Test func everyRoleGetsItsExpectedOutcomeAndEveryChangeIsAuditedOnce() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for (operation, entry) in matrix(world).sorted(by: { ($0.value.phase, $0.key) < ($1.value.phase, $1.key) }) {
                // Refusals first, so the one successful change of a mutating operation comes last.
                let roles = everyRole.sorted { (entry.expected[$0]!.code < 300 ? 1 : 0, $0.rawValue) < (entry.expected[$1]!.code < 300 ? 1 : 0, $1.rawValue) }
                for role in roles {
                    let before = try await auditCount(world.database, authority: world.a.authority.id)
                    let totalBefore = try await totalAuditCount(world.database)
                    let response = try await client.call(entry.method, entry.path, token: world.token(role, of: world.a), body: entry.body(role),
                                                         headers: entry.headers)
                    let expected = entry.expected[role]!
                    #expect(response.status == expected, "\(operation) as \(role.rawValue): got \(response.status.code), expected \(expected.code): \(String(buffer: response.body))")
                    if response.status.code >= 400 {
                        #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true, "\(operation) as \(role.rawValue)")
                    }
                    if entry.path.hasPrefix("/v1/") {
                        #expect(response.headers[.cacheControl] == "no-store", "\(operation) as \(role.rawValue)")
                    }
                    // Every 201 names what it created, as a plain URI reference (not URI-encoded).
                    if response.status == .created {
                        let location = response.headers[.location] ?? ""
                        #expect(location.hasPrefix("/v1/") && !location.contains("%"), "\(operation) as \(role.rawValue): Location \(location)")
                    }
                    let after = try await auditCount(world.database, authority: world.a.authority.id)
                    let totalAfter = try await totalAuditCount(world.database)
                    let changed = entry.mutates && expected.code < 300
                    #expect(after - before == (changed && entry.auditedInA(role) ? 1 : 0), "\(operation) as \(role.rawValue) wrote \(after - before) audit events in A")
                    // A registration writes its organisation, user and token: three events in the new chain.
                    let expectedTotal = changed ? (operation == "registerSupplier" ? 3 : 1) : 0
                    #expect(totalAfter - totalBefore == expectedTotal, "\(operation) as \(role.rawValue) wrote \(totalAfter - totalBefore) audit events in all")
                }
            }
        }
    }

    @Test func anonymousCallsToEveryV1OperationAre401() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for (operation, entry) in matrix(world) where entry.path.hasPrefix("/v1/") && operation != "registerSupplier" {
                let response = try await client.call(entry.method, entry.path, token: nil, body: entry.body(.authorityAdmin))
                #expect(response.status == .unauthorized, "\(operation)")
                #expect(response.headers[.wwwAuthenticate] == "Bearer", "\(operation)")
            }
        }
    }
}

extension HTTPField.Name {
    static let wwwAuthenticate = HTTPField.Name("WWW-Authenticate")!
    static let ifMatch = HTTPField.Name("If-Match")!
}
