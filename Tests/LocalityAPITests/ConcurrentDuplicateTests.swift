import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Issue 12, finding 3: concurrent duplicates answered 500 and lost the write. Each test fires the same
/// request many times at once through the real application and pins the exact outcome: never a 500, the
/// loser's 409 carries a problem type of its own, and the winner's write is kept. On main each of these
/// got 500s.
@Suite("Concurrent duplicates")
struct ConcurrentDuplicateTests {
    static func app(_ world: World) async throws -> some ApplicationProtocol {
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 10
        configuration.acquireTimeout = .seconds(30)
        configuration.registrationsPerHour = 1000
        return try await buildApplication(configuration)
    }

    static func statuses(_ results: [(status: Int, body: [String: Any])]) -> [Int] { results.map(\.status).sorted() }

    /// 20 parallel returns for one period: each is kept as its own version (a correction is a new version);
    /// on main 17–18 of them were 500 (kpi_return_version_unique).
    @Test func parallelReturnsForOnePeriodAreAllKeptAsVersions() async throws {
        let world = try await World.make()
        let contract = "/v1/contracts/\(lower(world.market.active))"
        try await Self.app(world).test(.live) { client in
            let results = try await concurrently(20, on: client) { index, connection in
                try await connection.call(.post, "\(contract)/returns", token: world.supplierToken,
                                      body: ["period_id": lower(world.market.activePeriod), "actual": "\(index)", "narrative": "Copy \(index)"])
            }
            #expect(results.allSatisfy { (200..<300).contains($0.status) }, "\(Self.statuses(results))")
            let period = try await client.call(.get, "\(contract)/returns", token: world.supplierToken).items
                .first { $0["period_id"] as? String == lower(world.market.activePeriod) }
            #expect(period?["versions"] as? Int == 21, "the fixture's version 1 and the 20 new ones")
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Red returns racing on different periods of one KPI with no plan in progress: every return is kept and
    /// exactly one corrective action plan is opened (on main: 500, corrective_action_plan_live, and the
    /// return rolled back).
    @Test func parallelRedReturnsOpenOnePlanAndKeepEveryReturn() async throws {
        let world = try await World.make()
        try await startAllPeriods(world, contract: world.market.active)
        let contract = "/v1/contracts/\(lower(world.market.active))"
        try await Self.app(world).test(.live) { client in
            let periods = try await client.call(.get, "\(contract)/returns", token: world.supplierToken).items
                .filter { $0["kpi_id"] as? String == lower(world.market.activeKPI) && $0["period_id"] as? String != lower(world.market.activePeriod) }
                .compactMap { $0["period_id"] as? String }
            try #require(periods.count >= 2, "the fixture's KPI needs at least three periods")
            // Several rounds, each with no plan in progress at its start: each is a chance for the race.
            for round in 1...4 {
                try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                    try await connection.query("UPDATE corrective_action_plan SET status = 'closed', outcome = 'resolved' WHERE status <> 'closed'")
                }
                let results = try await concurrently(periods.count, on: client) { index, connection in
                    try await connection.call(.post, "\(contract)/returns", token: world.supplierToken,
                                              body: ["period_id": periods[index], "actual": "0", "narrative": "Nothing yet"])
                }
                #expect(results.allSatisfy { (200..<300).contains($0.status) }, "round \(round): \(Self.statuses(results))")
                let after = try await client.call(.get, "\(contract)/returns", token: world.supplierToken).items
                for period in periods {
                    #expect(after.first { $0["period_id"] as? String == period }?["versions"] as? Int == round, "a return for \(period) was lost")
                }
                let plans = try await client.call(.get, "\(contract)/corrective-actions", token: world.supplierToken).items
                #expect(plans.filter { $0["status"] as? String != "closed" }.count == 1, "round \(round): \(plans)")
            }
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Ten parallel concern marks on one school: one 200, nine 409 already-causing-concern.
    @Test func parallelConcernMarksOnOneSchool() async throws {
        let world = try await World.make()
        try await Self.app(world).test(.live) { client in
            let results = try await concurrently(10, on: client) { _, connection in
                try await connection.call(.post, "/v1/schools/121001/concern", token: world.token(.hosi, of: world.a),
                                      body: ["category": "local_concern", "reason": "Falling outcomes", "since": "2025-09-01"])
            }
            #expect(Self.statuses(results) == [200] + Array(repeating: 409, count: 9), "\(Self.statuses(results))")
            #expect(results.filter { $0.status == 409 }.allSatisfy { $0.body["type"] as? String == "/problems/already-causing-concern" })
        }
        try await assertLedgerInvariant(world.database)
    }

    /// One panel member saving scores ten times at once: all saved (on main: 500, scorecard_pkey); then ten
    /// submits at once: one 200, nine 409 already-submitted (on main: 500, the row policy refusing the write).
    @Test func parallelScoreSavesAndSubmitsByOneMember() async throws {
        let world = try await World.make()
        let member = world.token(.boardMember, of: world.a)
        let bid = lower(world.market.closedBid)
        try await Self.app(world).test(.live) { client in
            #expect(try await client.call(.post, "/v1/projects/\(lower(world.market.closedWithBid))/declarations", token: member,
                                          body: ["supplier_id": lower(world.supplierID), "conflicted": false]).status == .created)
            let saves = try await concurrently(10, on: client) { _, connection in
                try await connection.call(.put, "/v1/bids/\(bid)/scores", token: member, body: ["scores": allScores, "submit": false])
            }
            #expect(Self.statuses(saves) == Array(repeating: 200, count: 10), "\(Self.statuses(saves))")
            let submits = try await concurrently(10, on: client) { _, connection in
                try await connection.call(.put, "/v1/bids/\(bid)/scores", token: member, body: ["scores": allScores, "submit": true])
            }
            #expect(Self.statuses(submits) == [200] + Array(repeating: 409, count: 9), "\(Self.statuses(submits))")
            #expect(submits.filter { $0.status == 409 }.allSatisfy { $0.body["type"] as? String == "/problems/already-submitted" })
        }
        try await assertLedgerInvariant(world.database)
    }

    /// The same theme name twice (at once, and again afterwards): one 201, the others 409 duplicate-theme.
    @Test func aThemeNameTwice() async throws {
        let world = try await World.make()
        try await Self.app(world).test(.live) { client in
            let results = try await concurrently(5, on: client) { _, connection in
                try await connection.call(.post, "/v1/themes", token: world.token(.authorityAdmin, of: world.a),
                                      body: ["category": "send", "name": "Speech and language"])
            }
            #expect(Self.statuses(results) == [201, 409, 409, 409, 409], "\(Self.statuses(results))")
            #expect(results.filter { $0.status == 409 }.allSatisfy { $0.body["type"] as? String == "/problems/duplicate-theme" })
        }
        try await assertLedgerInvariant(world.database)
    }

    /// A registration reusing a Companies House or charity number: 409 duplicate-registration, and only the
    /// first organisation exists.
    @Test func aRegistrationReusingACompanyOrCharityNumber() async throws {
        let world = try await World.make()
        @Sendable func registration(_ index: Int, companiesHouse: String?, charity: String?) -> [String: Any] {
            var body: [String: Any] = [
                "name": "Tutors \(index)", "address": "2 Market Place, Skipton", "contact_name": "Ali",
                "contact_email": "ali\(index)@tutors.example", "user_email": "ali\(index)@tutors.example", "user_name": "Ali",
            ]
            if let companiesHouse { body["companies_house_number"] = companiesHouse }
            if let charity { body["charity_number"] = charity }
            return body
        }
        try await Self.app(world).test(.live) { client in
            let byCompany = try await concurrently(5, on: client) { index, connection in
                try await connection.call(.post, "/v1/supplier-registrations", token: nil, body: registration(index, companiesHouse: "SC123456", charity: nil))
            }
            #expect(Self.statuses(byCompany) == [201, 409, 409, 409, 409], "\(Self.statuses(byCompany))")
            #expect(byCompany.filter { $0.status == 409 }.allSatisfy { $0.body["type"] as? String == "/problems/duplicate-registration" })
            let first = try await client.call(.post, "/v1/supplier-registrations", token: nil, body: registration(10, companiesHouse: nil, charity: "1123456"))
            #expect(first.status == .created)
            let again = try await client.call(.post, "/v1/supplier-registrations", token: nil, body: registration(11, companiesHouse: nil, charity: "1123456"))
            #expect(again.status == .conflict)
            #expect(again.jsonObject["type"] as? String == "/problems/duplicate-registration")
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Pins: five concurrent closes of an agreed corrective action plan: one 200, four 409 plan-state (on main
    /// all five "closed" it, each with its own audit event, since the state was checked without a lock).
    @Test func parallelClosesOfOnePlan() async throws {
        let world = try await World.make()
        let plans = "/v1/contracts/\(lower(world.market.active))/corrective-actions/\(lower(world.market.plan))"
        let lim = world.token(.lim, of: world.a)
        try await Self.app(world).test(.live) { client in
            let proposed = try await client.call(.post, "\(plans)/proposal", token: world.supplierToken, body: [
                "root_cause": "Late start", "actions": [["description": "Run catch-up sessions", "owner": "Ali", "due_date": "2027-02-01"]],
            ])
            #expect(proposed.status == .ok, "\(proposed.jsonObject)")
            #expect(try await client.call(.post, "\(plans)/decision", token: lim, body: ["agree": true]).status == .ok)
            let closes = try await concurrently(5, on: client) { _, connection in
                try await connection.call(.post, "\(plans)/close", token: lim, body: ["outcome": "resolved"])
            }
            #expect(Self.statuses(closes) == [200, 409, 409, 409, 409], "\(Self.statuses(closes))")
            #expect(closes.filter { $0.status == 409 }.allSatisfy { $0.body["type"] as? String == "/problems/plan-state" })
        }
        try await assertLedgerInvariant(world.database)
    }
}
