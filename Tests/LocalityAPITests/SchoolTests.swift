import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

@Suite("Schools")
struct SchoolTests {
    func importer(_ world: World, _ body: (SchoolImportService, AccessScope) async throws -> Void) async throws {
        try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 2) { pool in
            try await body(SchoolImportService(database: ScopedDatabase(pool: pool)), .operatorScope(authorityID: world.a.authority.id, osUser: "test"))
        }
    }

    /// A file in the real format: a Windows-1252 apostrophe, a comma inside quotes, a closed school, another
    /// authority's row, a malformed line and an unmapped district; then the same file again changes nothing.
    @Test func importsTheRealFormatAndReRunsIdempotently() async throws {
        let world = try await World.make()
        let file = GIASFixture.file([
            .init(urn: "130001", name: "St Mary’s RC Primary, Skipton"),
            .init(urn: "130002", name: "Old Mill Infants", status: "Closed", closeDate: "31-08-2024"),
            .init(urn: "130003", la: "816", name: "York School"),
            .init(urn: "130004", name: "Nowhere Primary", district: "North Yorkshire"),
        ], extraLines: ["\"130005\",\"815\",\"too few fields\""])
        try await importer(world) { service, scope in
            let first = try await service.importFile(scope, data: file, laCode: "815")
            #expect(first.added == 3)
            #expect(first.closed == 1)
            #expect(first.skipped == 1)
            #expect(first.rejected.map(\.line) == [6])
            #expect(first.unmappedURNs == [130004])
            let again = try await service.importFile(scope, data: file, laCode: "815")
            #expect(again.added == 0 && again.updated == 0 && again.unchanged == 3 && again.closed == 0)
            // A changed name is one update.
            let changed = GIASFixture.file([.init(urn: "130001", name: "St Mary’s Catholic Primary")])
            let third = try await service.importFile(scope, data: changed, laCode: "815")
            #expect(third.updated == 1 && third.added == 0)
        }
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let found = try await client.call(.get, "/v1/schools?q=St%20Mary", token: world.token(.hosi, of: world.a))
            #expect(found.items.first?["name"] as? String == "St Mary’s Catholic Primary")
            #expect(found.items.first?["board_id"] as? String == lower(world.a.boards[0].id))
            let byURN = try await client.call(.get, "/v1/schools?q=130002", token: world.token(.hosi, of: world.a))
            #expect(byURN.items.first?["open"] as? Bool == false)
            #expect(try await client.call(.get, "/v1/schools?q=130003", token: world.token(.hosi, of: world.a)).items.isEmpty)
        }
    }

    /// A file that is not a GIAS file is refused whole, and nothing is written.
    @Test func aFileWithoutTheColumnsIsRefused() async throws {
        let world = try await World.make()
        try await importer(world) { service, scope in
            await #expect(throws: DomainError.self) {
                _ = try await service.importFile(scope, data: Data("\"URN\",\"Name\"\r\n\"1\",\"x\"\r\n".utf8), laCode: "815")
            }
        }
    }

    @Test func twentyFiveThousandRowsInUnderTenSeconds() async throws {
        let world = try await World.make()
        let schools = (0..<25_000).map { index in
            GIASFixture.School(urn: String(200_000 + index), name: "School \(index)", district: index % 2 == 0 ? "Northshire" : "Southshire")
        }
        let file = GIASFixture.file(schools)
        try await importer(world) { service, scope in
            let start = ContinuousClock.now
            let report = try await service.importFile(scope, data: file, laCode: "815")
            let elapsed = ContinuousClock.now - start
            #expect(report.added == 25_000)
            // The budget is 10 s; this is a debug build sharing 2 cores with every other suite running in
            // parallel, so the bound here is looser. Benchmarks/README.md records the figures run alone.
            #expect(elapsed < .seconds(30), "took \(elapsed)")
            let again = ContinuousClock.now
            let rerun = try await service.importFile(scope, data: file, laCode: "815")
            #expect(rerun.unchanged == 25_000)
            let rerunElapsed = ContinuousClock.now - again
            #expect(rerunElapsed < .seconds(30))
            print("25,000-row GIAS import: first \(elapsed), re-run \(rerunElapsed)")
        }
    }

    /// The concern shows to the HoSI, authority-wide roles and the school's own board; another board sees
    /// the school but not the concern.
    @Test func concernsAreVisibleToTheSchoolsBoardOnly() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            func concern(_ role: Role, _ urn: Int) async throws -> Any? {
                let response = try await client.call(.get, "/v1/schools?q=\(urn)", token: world.token(role, of: world.a))
                return response.items.first?["concern"]
            }
            for role in [Role.hosi, .authorityAdmin, .auditor, .lim, .boardMember] {
                #expect(try await concern(role, 121003) != nil, "\(role.rawValue) sees the concern of a school of its board")
            }
            // Move the school to the second board: the first board's staff no longer see its concern.
            _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                try await connection.query("UPDATE school SET board_id = \(world.a.boards[1].id) WHERE urn = 121003")
            }
            #expect(try await concern(.lim, 121003) == nil)
            #expect(try await concern(.boardMember, 121003) == nil)
            #expect(try await concern(.hosi, 121003) != nil)
            let concerning = try await client.call(.get, "/v1/schools?causing_concern=true", token: world.token(.hosi, of: world.a))
            #expect(concerning.items.compactMap { $0["urn"] as? Int } == [121003])
            // Marking needs a known category; a second open concern is refused; clearing ends it.
            let hosi = world.token(.hosi, of: world.a)
            #expect(try await client.call(.post, "/v1/schools/121001/concern", token: hosi,
                                          body: ["category": "nonsense", "reason": "x", "since": "2025-01-01"]).status == .unprocessableContent)
            #expect(try await client.call(.post, "/v1/schools/121003/concern", token: hosi,
                                          body: ["category": "local_concern", "reason": "again", "since": "2025-01-01"]).status == .conflict)
            #expect(try await client.call(.post, "/v1/schools/121003/concern/clear", token: hosi,
                                          body: ["reason": "early", "cleared_on": "2024-01-01"]).status == .unprocessableContent)
            let cleared = try await client.call(.post, "/v1/schools/121003/concern/clear", token: hosi, body: ["reason": "Improved", "cleared_on": "2026-01-15"])
            #expect(cleared.status == .ok && cleared.jsonObject["concern"] == nil)
            #expect(try await client.call(.post, "/v1/schools/999999/concern/clear", token: hosi, body: ["reason": "x", "cleared_on": "2026-01-15"]).status == .notFound)
        }
    }

    /// A school's improvement plan and its contracts: the HoSI records them (committed from the board's
    /// school-improvement budget), the supplier adds outputs, the school's board reads them, other boards do not.
    @Test func improvementPlansAndTheirContracts() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        let hosi = world.token(.hosi, of: world.a)
        try await app.test(.live) { client in
            let plan = try await client.call(.get, "/v1/schools/121003/spip", token: world.token(.lim, of: world.a))
            #expect(plan.status == .ok)
            let contract = (plan.jsonObject["contracts"] as? [[String: Any]])?.first
            #expect(contract?["service"] as? String == "governance_audit" && contract?["value_pence"] as? Int == 500_000)
            // The commitment came from the school's board's school-improvement stream.
            let budget = try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))/budgets/2025-26", token: hosi)
            let stream = (budget.jsonObject["streams"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "school_improvement" }
            #expect(stream?["committed_pence"] as? Int == 500_000)
            // Not causing concern: no contract; too dear for the stream: refused, nothing written.
            #expect(try await client.call(.post, "/v1/schools/121002/contracts", token: hosi, body: [
                "supplier_id": lower(world.supplierID), "service": "peer_review", "description": "x", "value_pence": 100,
                "financial_year": "2025-26", "start_date": "2026-01-01", "end_date": "2026-02-01"]).status == .conflict)
            let dear = try await client.call(.post, "/v1/schools/121003/contracts", token: hosi, body: [
                "supplier_id": lower(world.supplierID), "service": "interim_headteacher", "description": "Cover", "value_pence": 4_600_000,
                "financial_year": "2025-26", "start_date": "2026-01-01", "end_date": "2026-07-31"])
            #expect(dear.jsonObject["type"] as? String == "/problems/insufficient-funds")
            // Only admitted suppliers.
            #expect(try await client.call(.post, "/v1/schools/121003/contracts", token: hosi, body: [
                "supplier_id": lower(world.applicantID), "service": "peer_review", "description": "x", "value_pence": 100,
                "financial_year": "2025-26", "start_date": "2026-01-01", "end_date": "2026-02-01"]).status == .unprocessableContent)
            // The supplier records an output; the HoSI assesses.
            let output = try await client.call(.post, "/v1/school-contracts/\(lower(world.schoolContract))/outputs", token: world.supplierToken,
                                               body: ["title": "Governance review report", "summary": "Recommendations on committees"])
            #expect((output.jsonObject["outputs"] as? [[String: Any]])?.count == 1)
            #expect(try await client.call(.post, "/v1/school-contracts/\(lower(world.schoolContract))/outputs", token: world.outsiderToken,
                                          body: ["title": "Not mine"]).status == .notFound)
            // The supplier finds its school contracts without knowing the school (the plan is staff-only);
            // another supplier sees none of them.
            let mine = try await client.call(.get, "/v1/school-contracts", token: world.supplierToken).items
            #expect(mine.map { $0["id"] as? String } == [lower(world.schoolContract)])
            #expect((mine.first?["outputs"] as? [[String: Any]])?.count == 1)
            #expect(try await client.call(.get, "/v1/school-contracts", token: world.outsiderToken).items.isEmpty)
            #expect(try await client.call(.get, "/v1/school-contracts?limit=1", token: hosi).items.count == 1)
            // Another board sees the register, not the plan.
            _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                try await connection.query("UPDATE school SET board_id = \(world.a.boards[1].id) WHERE urn = 121003")
            }
            #expect(try await client.call(.get, "/v1/schools/121003/spip", token: world.token(.lim, of: world.a)).status == .notFound)
            #expect(try await client.call(.get, "/v1/schools/121003/spip", token: hosi).status == .ok)
            #expect(try await client.call(.get, "/v1/schools?q=121003", token: world.token(.lim, of: world.a)).items.count == 1)
        }
    }
}
