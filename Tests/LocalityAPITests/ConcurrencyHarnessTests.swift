import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// How the same request, arriving several times at once, may end.
enum RaceOutcome: Sendable {
    /// Exactly one succeeds; every other copy is refused with one of `losers` (a problem naming why).
    case oneWins(losers: Set<Int>)
    /// Every copy succeeds: each copy rightly makes (or records) something of its own.
    case allSucceed
    /// Every copy succeeds, but only one changes anything (and is audited): the others find the change made.
    case idempotent

    static let oneWinsWith409 = RaceOutcome.oneWins(losers: [409])
}

/// The expected outcome of N identical concurrent calls, for every operation of the document that creates or
/// transitions something. `everyWriteOperationHasARaceExpectation` fails when an operation is added to the
/// document without a line here.
let raceOutcomes: [String: RaceOutcome] = [
    // Identity, boards, users, tokens, ledger.
    "createBoard": .oneWinsWith409,                 // the name and short code are unique in the authority
    "updateBoard": .allSucceed,                     // the same change, applied again
    "postLedgerEntry": .allSucceed,                 // each allocation is its own entry (Idempotency-Key dedupes retries)
    "createUser": .oneWinsWith409,                  // one user per email
    "updateUser": .allSucceed,
    "issueToken": .allSucceed,                      // each call issues a token of its own
    "revokeToken": .idempotent,                     // revoking a revoked token changes nothing (204 again)
    // Suppliers and admission.
    "registerSupplier": .oneWinsWith409,            // the Companies House number and the user's email are unique
    "applyForAdmission": .allSucceed,               // the first applies, the others resubmit the pending application
    "decideAdmission": .oneWinsWith409,             // decided once
    // Catalogue.
    "createTheme": .oneWinsWith409,                 // theme names are unique in the authority
    "updateTheme": .allSucceed,
    "createSocialValueMeasure": .oneWinsWith409,   // codes are unique in the authority (duplicate-measure)
    "updateSocialValueMeasure": .allSucceed,        // the same change, applied again under the row lock
    // Projects.
    "createProject": .allSucceed,                   // separate drafts (Idempotency-Key dedupes retries)
    "updateProject": .oneWins(losers: [412]),       // If-Match: the first edit moves the version on
    "deleteProject": .oneWins(losers: [404]),       // the draft is gone
    "publishProject": .oneWinsWith409,
    "cancelProject": .oneWinsWith409,
    "markProjectUnsuccessful": .oneWinsWith409,
    "amendProject": .allSucceed,                    // each amendment is recorded
    "askQuestion": .allSucceed,
    "answerQuestion": .oneWinsWith409,              // answered once
    // Bids.
    "createBid": .oneWinsWith409,                   // one live bid per supplier per project
    "updateBid": .allSucceed,
    "submitBid": .oneWinsWith409,
    "withdrawBid": .oneWinsWith409,
    // Evaluation and award.
    "setPanel": .allSucceed,                        // the same panel, set again
    "declareConflict": .oneWinsWith409,             // one declaration per member and bidder
    "saveScores": .allSucceed,                      // a draft scorecard, saved again
    "moderateScore": .allSucceed,                   // the moderated score, recorded again
    "setCompliance": .allSucceed,
    "awardProject": .oneWinsWith409,
    // Contracts.
    "addContractKPI": .allSucceed,                  // each call adds a KPI
    "reviseContractKPI": .allSucceed,               // each call is a further revision, one after another
    "acceptContractKPI": .idempotent,               // accepting a revision already accepted changes nothing
    "startContract": .oneWinsWith409,
    "proposeVariation": .allSucceed,
    "decideVariation": .oneWinsWith409,
    "completeContract": .oneWinsWith409,
    "terminateContract": .oneWinsWith409,
    // Schools and improvement plans.
    "addSPIPPriority": .allSucceed,
    "recordSchoolContract": .allSucceed,
    "addSchoolContractOutput": .allSucceed,
    "assessSchoolContract": .allSucceed,
    "markSchoolConcern": .oneWinsWith409,           // one open concern per school
    "clearSchoolConcern": .oneWinsWith409,
    "setSchoolBoardRules": .allSucceed,             // the same mapping, replaced again (one at a time per authority)
    // Monitoring.
    "submitReturn": .allSucceed,                    // a resubmission is a new version of the period's return
    "overrideRating": .allSucceed,
    "proposeCorrectiveAction": .oneWinsWith409,     // the plan leaves `open` once
    "decideCorrectiveAction": .oneWinsWith409,
    "completeCorrectiveAction": .allSucceed,        // the same completion date, recorded again
    "closeCorrectiveAction": .oneWinsWith409,
    "recordVisit": .allSucceed,
    "logComplaint": .allSucceed,
    "resolveComplaint": .oneWinsWith409,
    // Open contracting.
    "fileNotice": .oneWinsWith409,                  // a notice is filed once
    "setConcernSchoolPublication": .allSucceed,     // marked once (one release at most), each call audited like a setting
]

/// The ledger's invariants, checked as the superuser: every envelope's maintained balance equals its ledger,
/// and every contract's commitment is accounted for (`ledger_verify()`).
func expectLedgerInvariant(_ database: TestDatabase, _ context: String = "", sourceLocation: SourceLocation = #_sourceLocation) async throws {
    try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "invariant")) { connection in
        let problems = try await connection.query("SELECT subject, subject_id, problem FROM ledger_verify()").map {
            "\(try $0.decode(String.self, at: 0)) \(try $0.decode(String.self, at: 1)): \(try $0.decode(String.self, at: 2))"
        }
        #expect(problems.isEmpty, "ledger invariant broken \(context): \(problems)", sourceLocation: sourceLocation)
    }
}

@Suite("Concurrency harness: every write operation, N identical requests at once")
struct ConcurrencyHarnessTests {
    static let copies = 6

    @Test func everyWriteOperationHasARaceExpectation() async throws {
        let world = try await World.make()
        let writes = Set(matrix(world).filter { $0.value.mutates }.keys)
        #expect(writes.count >= 40)
        #expect(writes.subtracting(raceOutcomes.keys).isEmpty, "write operations without a race expectation: \(writes.subtracting(raceOutcomes.keys).sorted())")
        #expect(Set(raceOutcomes.keys).subtracting(writes).isEmpty, "race expectations for unknown operations: \(Set(raceOutcomes.keys).subtracting(writes).sorted())")
    }

    /// Each write operation, called `copies` times at once by the role allowed to make it, with the same body:
    /// the outcomes are exactly the expected ones, no copy gets a 5xx, each success is audited once and no
    /// refusal is, and after every operation the ledger and the audit chains are intact.
    @Test func identicalConcurrentRequestsEndAsExpected() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 8
        configuration.acquireTimeout = .seconds(30)
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            let entries = matrix(world).filter { $0.value.mutates }.sorted { ($0.value.phase, $0.key) < ($1.value.phase, $1.key) }
            for (operation, entry) in entries {
                guard let outcome = raceOutcomes[operation] else { continue }
                guard let (role, success) = entry.expected.filter({ $0.value.code < 300 }).min(by: { $0.key.rawValue < $1.key.rawValue })
                else { Issue.record("\(operation): no role may call it"); continue }
                // The same bytes for every copy (bodies are not Sendable; their encoding is).
                let body = try entry.body(role).map { ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: $0)) }
                var headers = entry.headers
                headers[.authorization] = "Bearer \(world.token(role, of: world.a))"
                if body != nil { headers[.contentType] = "application/json" }
                let method = entry.method, path = entry.path, sentHeaders = headers
                let auditBefore = try await totalAuditCount(world.database)
                // Each copy on a connection of its own: copies sharing one keep-alive connection are answered one
                // after another, which would test nothing.
                let responses = try await concurrently(Self.copies, on: client) { _, connection in
                    try await connection.send(method, path, headers: sentHeaders, body: body)
                }.map { ($0.status, $0.body["type"] as? String ?? "", "\($0.body)") }
                let successes = responses.filter { $0.0 == Int(success.code) }.count
                let summary = responses.map { "\($0.0) \($0.2.prefix(160))" }
                #expect(responses.allSatisfy { $0.0 < 500 }, "\(operation): a copy failed on our side: \(summary)")
                switch outcome {
                case .allSucceed, .idempotent:
                    #expect(successes == Self.copies, "\(operation): expected every copy to succeed: \(summary)")
                case .oneWins(let losers):
                    #expect(successes == 1, "\(operation): expected exactly one winner: \(summary)")
                    let refused = responses.filter { $0.0 != Int(success.code) }
                    #expect(refused.allSatisfy { losers.contains($0.0) && $0.1.hasPrefix("/problems/") && $0.1 != "/problems/internal" },
                            "\(operation): the losers should get \(losers.sorted()) problems: \(summary)")
                }
                let auditAfter = try await totalAuditCount(world.database)
                let perSuccess = operation == "registerSupplier" ? 3 : 1
                let changes = if case .idempotent = outcome { min(successes, 1) } else { successes }
                #expect(auditAfter - auditBefore == changes * perSuccess, "\(operation): \(successes) successes wrote \(auditAfter - auditBefore) audit events")
                do { try await expectLedgerInvariant(world.database, "after \(operation)") } catch { Issue.record(error) }
            }
        }
        try await world.database.withPool(conninfo: world.database.ownerConninfo) { pool in
            let reports = try await AuditService(database: ScopedDatabase(pool: pool)).verify()
            #expect(reports.allSatisfy { $0.isIntact }, "\(reports)")
        }
    }
}

extension ConcurrencyHarnessTests {
    /// Two requests that exclude each other, each sent `copies` times at once: exactly one copy of one of them
    /// wins, every other copy is refused with a problem, and the ledger stays exact.
    @Test func conflictingConcurrentRequestsLeaveExactlyOneOutcome() async throws {
        let world = try await World.make()
        let m = world.market
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 8
        configuration.acquireTimeout = .seconds(30)
        let app = try await buildApplication(configuration)
        let lim = world.token(.lim, of: world.a)
        typealias Call = (method: HTTPRequest.Method, path: String, body: ByteBuffer?)
        func json(_ object: [String: Any]) -> ByteBuffer { ByteBuffer(bytes: (try? JSONSerialization.data(withJSONObject: object)) ?? Data()) }
        let pairs: [(name: String, first: Call, second: Call, losers: Set<Int>)] = [
            ("award or mark unsuccessful",
             (.post, "/v1/projects/\(lower(m.closedForAward))/award", json(["bid_id": lower(m.awardBid)])),
             (.post, "/v1/projects/\(lower(m.closedForAward))/unsuccessful", json(["reason": "No suitable bid"])), [409]),
            ("publish or delete a draft",
             (.post, "/v1/projects/\(lower(m.draftComplete))/publish", nil),
             (.delete, "/v1/projects/\(lower(m.draftComplete))", nil), [404, 409]),
            ("accept or reject a variation",
             (.post, "/v1/contracts/\(lower(m.active))/variations/\(lower(m.proposedVariation))/decision", json(["accept": true])),
             (.post, "/v1/contracts/\(lower(m.active))/variations/\(lower(m.proposedVariation))/decision", json(["accept": false])), [409]),
            ("complete or terminate",
             (.post, "/v1/contracts/\(lower(m.active))/complete", nil),
             (.post, "/v1/contracts/\(lower(m.active))/terminate", json(["reason": "Provider withdrew", "amount_paid_pence": 10_000])), [409]),
        ]
        try await app.test(.live) { client in
            for pair in pairs {
                let calls = (0..<Self.copies).flatMap { _ in [pair.first, pair.second] }
                let responses = try await concurrently(calls.count, on: client) { index, connection in
                    let (method, path, body) = calls[index]
                    var headers: HTTPFields = [.authorization: "Bearer \(lim)"]
                    if body != nil { headers[.contentType] = "application/json" }
                    return try await connection.send(method, path, headers: headers, body: body)
                }.map { ("", $0.status, "\($0.body)") }   // in completion order, so the body says which it was
                let summary = responses.map { "\($0.1) \($0.0): \($0.2)" }
                #expect(responses.filter { $0.1 < 300 }.count == 1, "\(pair.name): exactly one change should win: \(summary)")
                #expect(responses.filter { $0.1 >= 300 }.allSatisfy { pair.losers.contains($0.1) }, "\(pair.name): \(summary)")
                try await expectLedgerInvariant(world.database, "after \(pair.name)")
            }
        }
    }
}

extension ConcurrencyHarnessTests {
    /// Every POST of the document, `copies` times at once with one `Idempotency-Key`: it runs once (one audited
    /// change, whatever the operation would do with copies that carry no key); the others get its answer or a
    /// 409 saying it is still in progress; and a later retry with the key gets the first answer again.
    @Test func identicalRequestsWithOneIdempotencyKeyRunOnce() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 8
        configuration.acquireTimeout = .seconds(30)
        let app = try await buildApplication(configuration)
        // Their answers hold a secret shown once, so they take no key (400 if sent; see the document).
        let withoutKeys: Set<String> = ["registerSupplier", "issueToken"]
        try await app.test(.live) { client in
            let entries = matrix(world).filter { $0.value.method == .post && !withoutKeys.contains($0.key) }
                .sorted { ($0.value.phase, $0.key) < ($1.value.phase, $1.key) }
            #expect(entries.count >= 30)
            for (operation, entry) in entries {
                guard let (role, success) = entry.expected.filter({ $0.value.code < 300 }).min(by: { $0.key.rawValue < $1.key.rawValue })
                else { continue }
                let body = try entry.body(role).map { ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: $0)) }
                var headers = entry.headers
                headers[.authorization] = "Bearer \(world.token(role, of: world.a))"
                headers[HTTPField.Name("Idempotency-Key")!] = "harness-\(operation)"
                if body != nil { headers[.contentType] = "application/json" }
                let path = entry.path, sentHeaders = headers
                let auditBefore = try await totalAuditCount(world.database)
                let responses = try await concurrently(Self.copies, on: client) { _, connection in
                    try await connection.send(.post, path, headers: sentHeaders, body: body)
                }
                let summary = responses.map { "\($0.status) \($0.body["type"] ?? "")" }
                let firsts = responses.filter { $0.status == Int(success.code) }
                let waiting = responses.filter { $0.status == 409 && $0.body["type"] as? String == "/problems/idempotency-key-in-progress" }
                #expect(firsts.count >= 1 && firsts.count + waiting.count == Self.copies, "\(operation): \(summary)")
                let auditAfter = try await totalAuditCount(world.database)
                #expect(auditAfter - auditBefore == 1, "\(operation): one key, \(auditAfter - auditBefore) audited changes: \(summary)")
                let retry = try await concurrently(1, on: client) { _, connection in
                    try await connection.send(.post, path, headers: sentHeaders, body: body)
                }[0]
                #expect(retry.status == Int(success.code), "\(operation): a retry with the key gets the first answer: \(retry)")
                #expect(retry.body["id"] as? String == firsts.first?.body["id"] as? String, "\(operation)")
                #expect(try await totalAuditCount(world.database) == auditAfter, "\(operation): the retry changed something")
            }
        }
    }
}
