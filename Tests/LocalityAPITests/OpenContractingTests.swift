import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// Runs the official-schema validator (Tests/Fixtures/validate_ocds.py, Python jsonschema) on documents the
/// service produced; returns its output and whether it found 0 errors.
func validateOCDS(_ documents: [String: Data]) throws -> (ok: Bool, output: String) {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ocds-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    var files: [String] = []
    for (name, data) in documents.sorted(by: { $0.key < $1.key }) {
        let file = directory.appendingPathComponent(name + ".json")
        try data.write(to: file)
        files.append(file.path)
    }
    // CI installs jsonschema in its venv (.ci/run sets LOCALITY_PYTHON); elsewhere the first Python that has it.
    let venvPython = root.appendingPathComponent(".build/ci-venv/bin/python").path
    let candidates = [ProcessInfo.processInfo.environment["LOCALITY_PYTHON"].map { [$0] }, [venvPython], ["/usr/bin/env", "python3"]]
        .compactMap { $0 }.filter { FileManager.default.isExecutableFile(atPath: $0[0]) }
    let python = candidates.first { command in
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: command[0])
        probe.arguments = Array(command.dropFirst()) + ["-c", "import jsonschema"]
        probe.standardOutput = FileHandle.nullDevice
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return false }
        probe.waitUntilExit()
        return probe.terminationStatus == 0
    } ?? candidates.last ?? ["/usr/bin/env", "python3"]
    // The official OCDS 1.1.5 schemas and codelists, copied unchanged from the standard's release.
    let reference = ProcessInfo.processInfo.environment["LOCALITY_OCDS_SCHEMAS"]
        ?? root.appendingPathComponent("Tests/Fixtures/ocds-1.1.5").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: python[0])
    process.arguments = Array(python.dropFirst()) + [root.appendingPathComponent("Tests/Fixtures/validate_ocds.py").path, reference] + files
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    return (process.terminationStatus == 0, output)
}

private func object(_ data: Data) -> [String: Any] { (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:] }
/// A JSON number as a Double, however JSONSerialization boxed it.
private func number(_ value: Any?) -> Double? {
    if let int = value as? Int { return Double(int) }
    if let double = value as? Double { return double }
    return (value as? NSNumber)?.doubleValue
}
private func bodyData(_ response: TestResponse) -> Data { Data(response.body.readableBytesView) }

@Suite("Open contracting (OCDS) and Procurement Act notices")
struct OpenContractingTests {
    static func lim(_ world: World) -> AccessScope {
        AccessScope(authorityID: world.a.authority.id, userID: world.a.users[.lim]!.id, roles: [.lim], boardIDs: [world.a.boards[0].id],
                    actor: "user:\(lower(world.a.users[.lim]!.id))")
    }

    static func supplier(_ id: UUID) -> AccessScope {
        AccessScope(authorityID: nil, supplierID: id, userID: nil, roles: [.supplierUser], boardIDs: [], actor: "test")
    }

    static func superuser(_ world: World, _ sql: PGQuery) async throws {
        _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query(sql)
        }
    }

    /// Every release of the feed, following `links.next`, as packages (anonymous).
    static func feed(_ client: some TestClientProtocol, _ query: String) async throws -> (pages: [Data], releases: [[String: Any]]) {
        var pages: [Data] = []
        var releases: [[String: Any]] = []
        var next: String? = "/ocds/releases?" + query
        while let uri = next {
            let response = try await client.call(.get, uri, token: nil)
            #expect(response.status == .ok, "\(uri): \(String(buffer: response.body))")
            pages.append(bodyData(response))
            let package = object(bodyData(response))
            releases += package["releases"] as? [[String: Any]] ?? []
            next = ((package["links"] as? [String: Any])?["next"] as? String).map { URLComponents(string: $0)!.string!.replacingOccurrences(of: #"^https?://[^/]+"#, with: "", options: .regularExpression) }
            #expect(pages.count < 20)
        }
        return (pages, releases)
    }

    @Test func aFullLifecycleIsPublishedValidCompleteAndWithoutWhatMustNeverBe() async throws {
        let world = try await World.make()
        let lim = Self.lim(world)
        let app = try await buildApplication(testConfiguration(world.database))
        try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 2) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let projects = ProjectService(database: scoped)
            let contracts = ContractService(database: scoped)
            let bids = BidService(database: scoped)
            let evaluation = EvaluationService(database: scoped)
            let monitoring = MonitoringService(database: scoped)
            let publication = OpenContractingService(database: scoped)

            try await app.test(.live) { client in
                // Without an OCID prefix nothing is published, and the feed says why.
                #expect(try await Self.feed(client, "").releases.isEmpty)
                let unpublished = try await client.call(.get, "/ocds/releases?authority=alpha", token: nil)
                #expect(unpublished.status == .notFound && String(buffer: unpublished.body).contains("OCID prefix"), "\(String(buffer: unpublished.body))")
                await #expect(throws: DomainError.self) {
                    _ = try await publication.configure(world.a.authority, ocidPrefix: "OCDS-123", centralGovernment: nil,
                                                        contractDetailsNoticeDays: nil, publishKPIActuals: nil, osUser: "test")
                }
                _ = try await publication.configure(world.a.authority, ocidPrefix: "ocds-a1b2c3", centralGovernment: false,
                                                    contractDetailsNoticeDays: 30, publishKPIActuals: true, osUser: "test")

                // A second admitted supplier, whose bid loses.
                let (loser, _, _) = try await World.supplierWithToken(scoped, name: "Runner Up Ltd", email: "people@runnerup.example")
                try await AdmissionService(database: scoped).admit(authorityID: world.a.authority.id, supplierID: loser.id,
                                                                   declarations: World.goodDeclarations, osUser: "test")

                var fields = MarketFixture.fields(theme: world.market.theme, title: "Autism-friendly classrooms")
                fields.maxValuePence = 4_500_000
                fields.schoolURNs = ["121001", "121003"]
                let project = try await projects.create(lim, boardID: world.a.boards[0].id, fields)
                _ = try await projects.publish(lim, id: project.id)
                _ = try await projects.amend(lim, id: project.id, note: "Deadline extended for the half term", newDeadline: fields.bidDeadline! + 86_400)
                var winning = MarketFixture.completeContent
                winning.pricePence = 4_012_300
                winning.approach = "WINNER-SECRET-APPROACH"
                var losing = MarketFixture.completeContent
                losing.pricePence = 4_398_700
                losing.approach = "LOSER-SECRET-APPROACH"
                let winnerBid = try await bids.create(Self.supplier(world.supplierID), projectID: project.id, winning)
                _ = try await bids.submit(Self.supplier(world.supplierID), id: winnerBid.id)
                let loserBid = try await bids.create(Self.supplier(loser.id), projectID: project.id, losing)
                _ = try await bids.submit(Self.supplier(loser.id), id: loserBid.id)

                // Sealed: before the deadline no release says anything of the bids, not even how many.
                let sealed = try await Self.feed(client, "authority=alpha")
                let sealedText = String(decoding: try JSONSerialization.data(withJSONObject: sealed.releases), as: UTF8.self)
                #expect(sealed.releases.count == 2)
                for secret in [#""amount":40123"#, #""amount":43987"#, "numberOfTenderers", "Runner Up", "Supplier Ltd"] {
                    #expect(!sealedText.contains(secret), "sealed bid data published before the deadline: \(secret)")
                }

                try await MarketFixture.setDeadline(world.database, projects: [project.id], "now() - interval '1 hour'")
                for bid in [winnerBid.id, loserBid.id] {
                    for (kind, criterion) in [(CriterionKind.quality, "Approach"), (.quality, "Outcomes"), (.socialValue, "Local benefit")] {
                        _ = try await evaluation.moderate(lim, bidID: bid, CriterionScore(kind: kind, criterion: criterion, score: 4, comment: "SCORE-COMMENT-SECRET"))
                    }
                }
                let contract = try await contracts.award(lim, projectID: project.id, bidID: winnerBid.id, reason: nil)
                for party in [lim, Self.supplier(world.supplierID)] {
                    _ = try await contracts.acceptKPI(party, contractID: contract.id, kpiID: contract.kpis[0].id, revision: 1)
                }
                _ = try await contracts.start(lim, contractID: contract.id)
                let period = try await monitoring.periods(lim, contractID: contract.id)[0].periodID
                try await Self.superuser(world, "UPDATE reporting_period SET starts = current_date WHERE id = \(period)")
                _ = try await monitoring.submit(Self.supplier(world.supplierID), contractID: contract.id, ReturnSubmission(
                    periodID: period, value: .number(60), noActivityReason: nil, narrative: "NARRATIVE-SECRET", evidence: ""))
                let proposed = try await contracts.proposeVariation(Self.supplier(world.supplierID), contractID: contract.id,
                                                                    reason: "A second cohort of staff", valuePence: 4_100_000, endDate: nil, kpis: [])
                _ = try await contracts.decideVariation(lim, contractID: contract.id, variationID: proposed.variations[0].id, accept: true)
                _ = try await contracts.complete(lim, contractID: contract.id)

                // A cancelled one.
                let cancelled = try await projects.create(lim, boardID: world.a.boards[0].id,
                                                          MarketFixture.fields(theme: world.market.theme, title: "Speech and language drop-ins"))
                _ = try await projects.publish(lim, id: cancelled.id)
                _ = try await projects.cancel(lim, id: cancelled.id, reason: "Budget withdrawn by the board")

                // The feed, page by page (small pages, to follow the cursor).
                let (pages, releases) = try await Self.feed(client, "authority=alpha&limit=3")
                let ocid = "ocds-a1b2c3-\(lower(project.id))"
                let mine = releases.filter { $0["ocid"] as? String == ocid }
                #expect(mine.map { ($0["tag"] as? [String]) ?? [] } == [
                    ["tender"], ["tenderAmendment"], ["award"], ["contract"], ["contract"], ["contractAmendment"], ["implementation", "contractTermination"],
                ])
                #expect(Set(releases.compactMap { $0["id"] as? String }).count == releases.count, "release ids are unique")
                #expect(mine.map { $0["noticeType"] as? String } == ["below_threshold_tender", nil, nil, nil, "uk7_contract_details", nil, nil])
                let other = releases.filter { $0["ocid"] as? String == "ocds-a1b2c3-\(lower(cancelled.id))" }
                #expect(other.map { ($0["tag"] as? [String]) ?? [] } == [["tender"], ["tenderCancellation"]])

                // Filters: tag and time.
                let awards = try await Self.feed(client, "tag=award").releases
                #expect(awards.count == 1 && awards[0]["ocid"] as? String == ocid)
                let future = try await Self.feed(client, "since=2999-01-01T00:00:00Z").releases
                #expect(future.isEmpty)
                #expect(try await Self.feed(client, "since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z").releases.isEmpty)
                let window = try await Self.feed(client, "authority=alpha&since=\(OpenContractingService.ocdsTime(Date() - 3600))&until=\(OpenContractingService.ocdsTime(Date() + 3600))").releases
                #expect(window.count == releases.count)

                // Each release by id, cacheable; and the record with its compiled release.
                var documents: [String: Data] = [:]
                for (index, page) in pages.enumerated() { documents["feed-\(index)"] = page }
                for release in releases {
                    let id = release["id"] as! String
                    let response = try await client.call(.get, "/ocds/releases/\(id)", token: nil)
                    #expect(response.status == .ok)
                    #expect(response.headers[.cacheControl]?.contains("public") == true)
                    let etag = try #require(response.headers[.eTag])
                    let again = try await client.call(.get, "/ocds/releases/\(id)", token: nil, headers: [.ifNoneMatch: etag])
                    #expect(again.status == .notModified)
                    documents["release-\(id)"] = bodyData(response)
                }
                let recordResponse = try await client.call(.get, "/ocds/records/\(ocid)", token: nil)
                #expect(recordResponse.status == .ok)
                documents["record"] = bodyData(recordResponse)
                documents["record-cancelled"] = bodyData(try await client.call(.get, "/ocds/records/ocds-a1b2c3-\(lower(cancelled.id))", token: nil))
                let validation = try validateOCDS(documents)
                #expect(validation.ok, "\(validation.output)")
                #expect(validation.output.contains("0 errors"), "\(validation.output)")

                let record = try #require((object(bodyData(recordResponse))["records"] as? [[String: Any]])?.first)
                #expect((record["releases"] as? [Any])?.count == 7)
                let compiled = try #require(record["compiledRelease"] as? [String: Any])
                #expect(compiled["tag"] as? [String] == ["compiled"])
                let tender = try #require(compiled["tender"] as? [String: Any])
                #expect(tender["title"] as? String == "Autism-friendly classrooms")
                #expect(tender["status"] as? String == "complete")
                #expect(tender["numberOfTenderers"] as? Int == 2)
                #expect(number((tender["value"] as? [String: Any])?["amount"]) == 45_000)
                #expect((tender["procuringEntity"] as? [String: Any])?["name"] as? String == "Alpha Council")
                #expect((tender["awardCriteriaDetails"] as? String)?.contains("social value 15%") == true)
                #expect((tender["amendments"] as? [[String: Any]])?.first?["rationale"] as? String == "Deadline extended for the half term")
                let item = try #require((tender["items"] as? [[String: Any]])?.first)
                #expect((item["classification"] as? [String: Any])?["id"] as? String == lower(world.market.theme))
                #expect((item["additionalClassifications"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["121001"])
                let award = try #require((compiled["awards"] as? [[String: Any]])?.first)
                #expect(number((award["value"] as? [String: Any])?["amount"]) == 40_123)
                #expect((award["suppliers"] as? [[String: Any]])?.first?["name"] as? String == "Supplier Ltd")
                let compiledContract = try #require((compiled["contracts"] as? [[String: Any]])?.first)
                #expect(compiledContract["status"] as? String == "terminated")
                #expect(number((compiledContract["value"] as? [String: Any])?["amount"]) == 41_000)
                #expect((compiledContract["amendments"] as? [[String: Any]])?.first?["rationale"] as? String == "A second cohort of staff")
                let metric = try #require((compiledContract["metrics"] as? [[String: Any]])?.first)
                #expect(metric["title"] as? String == "Staff trained")
                #expect((metric["observations"] as? [[String: Any]])?.contains { $0["id"] as? String == "target" && number($0["measure"]) == 120 } == true)
                let implementation = try #require(compiledContract["implementation"] as? [String: Any])
                let spent = (implementation["transactions"] as? [[String: Any]] ?? []).compactMap { number(($0["value"] as? [String: Any])?["amount"]) }
                #expect(spent.reduce(0, +) == 41_000)
                let actuals = (implementation["metrics"] as? [[String: Any]])?.first?["observations"] as? [[String: Any]]
                #expect(number(actuals?.first?["measure"]) == 60)
                #expect(((actuals?.first?["dimensions"] as? [String: Any])?["rating"] as? String)?.isEmpty == false)
                let cancellation = other.last?["tender"] as? [String: Any]
                #expect(cancellation?["status"] as? String == "cancelled")
                #expect((cancellation?["amendments"] as? [[String: Any]])?.first?["rationale"] as? String == "Budget withdrawn by the board")

                // Never published, in any release: losing bids, bid content and scores, people, the school causing concern.
                let everything = String(decoding: try JSONSerialization.data(withJSONObject: releases), as: UTF8.self)
                for secret in [#""amount":43987"#, "Runner Up", "runnerup", "SECRET", "Casey Manager", "@alpha.example", "@supplier.example",
                               "Supplier Ltd user", "Alpha Council lim", "S. Lead", "121003", "Concerned Primary", "Falling outcomes",
                               "governance", "outcome_note", "score"] {
                    #expect(!everything.contains(secret), "published: \(secret)")
                }
            }

            // Releases are never edited: the trigger refuses even a superuser; the service's role has no such privilege.
            for statement in ["UPDATE ocds_release SET date = now()", "DELETE FROM ocds_release"] {
                await #expect(throws: PGError.self) {
                    _ = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                        try await connection.query(PGQuery(statement))
                    }
                }
            }
            try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                for privilege in ["UPDATE", "DELETE", "INSERT", "TRUNCATE"] {
                    let has = try await connection.query(
                        "SELECT has_table_privilege(\(DatabaseRoles.application), 'ocds_release', \(privilege))").first!.decode(Bool.self, at: 0)
                    #expect(!has, "the application role may \(privilege) releases")
                }
            }
        }
    }

    @Test func theFeedRefusesWhatItCannotAnswer() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            for (uri, status) in [("/ocds/releases?authority=nowhere", 404), ("/ocds/releases?cursor=garbage", 422),
                                  ("/ocds/releases?tag=planning", 400), ("/ocds/releases?since=yesterday", 400),
                                  ("/ocds/releases/ocds-a1b2c3-none", 404), ("/ocds/records/ocds-a1b2c3-none", 404),
                                  ("/ocds/releases/bad%20id", 400)] {
                let response = try await client.call(.get, uri, token: nil)
                #expect(response.status.code == status, "\(uri): \(response.status.code) \(String(buffer: response.body))")
                #expect(response.headers[.contentType]?.hasPrefix("application/problem+json") == true, "\(uri)")
            }
        }
    }

    @Test func noticesFollowValueAdvertisingAndAuthorityType() async throws {
        let world = try await World.make()
        let lim = Self.lim(world)
        let app = try await buildApplication(testConfiguration(world.database))
        try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 2) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let projects = ProjectService(database: scoped)
            _ = try await BudgetService(database: scoped).append(.operatorScope(authorityID: world.a.authority.id, osUser: "test"),
                boardID: world.a.boards[0].id, LedgerEntryDraft(financialYear: World.year, fundingStream: "locality", kind: .allocation,
                                                                amountPence: 50_000_000, reason: "for the notices test"))
            var ids: [String: UUID] = [:]
            for (name, pence, method) in [("25k advertised", 2_500_000, "open"), ("45k advertised", 4_500_000, "open"),
                                          ("45k direct", 4_500_000, "direct"), ("300k advertised", 30_000_000, "open"),
                                          ("25k excl VAT", 2_500_000, "open")] {
                var fields = MarketFixture.fields(theme: world.market.theme, title: name)
                fields.maxValuePence = pence
                fields.procurementMethod = method
                fields.valueIncludesVAT = name != "25k excl VAT"
                let project = try await projects.create(lim, boardID: world.a.boards[0].id, fields)
                #expect(project.procurementMethod == method && project.valueIncludesVAT == (name != "25k excl VAT"))
                _ = try await projects.publish(lim, id: project.id)
                ids[name] = project.id
            }
            let projectIDs = ids
            try await app.test(.live) { client in
                func notices() async throws -> [String: [String]] {
                    let response = try await client.call(.get, "/v1/notices", token: world.token(.authorityAdmin, of: world.a))
                    #expect(response.status == .ok, "\(String(buffer: response.body))")
                    var result: [String: [String]] = [:]
                    for item in response.items {
                        result[item["title"] as! String] = (item["notices"] as! [[String: Any]]).map { $0["type"] as! String }
                    }
                    return result
                }
                let due = try await notices()
                #expect(due["25k advertised"] == [])
                #expect(due["45k advertised"] == ["below_threshold_tender", "uk7_contract_details"])
                #expect(due["45k direct"] == ["uk7_contract_details"])
                #expect(due["300k advertised"] == ["uk4_tender", "uk6_contract_award", "uk7_contract_details", "uk11_contract_termination"])
                // £25,000 before VAT is £30,000 with it: at the threshold.
                #expect(due["25k excl VAT"] == ["below_threshold_tender", "uk7_contract_details"])
                // The older procurements of the fixture (£1,000) need nothing.
                #expect(due["Open without bids"] == [])

                // Marking one filed: once, by the board's LIM; its id is kept.
                let path = "/v1/projects/\(lower(projectIDs["45k advertised"]!))/notice-filings"
                let filed = try await client.call(.post, path, token: world.token(.lim, of: world.a),
                                                  body: ["notice_key": "below_threshold_tender", "platform_notice_id": "CDP-000123"])
                #expect(filed.status == .created, "\(String(buffer: filed.body))")
                let notice = (filed.jsonObject["notices"] as? [[String: Any]])?.first
                #expect(notice?["filed"] as? Bool == true && notice?["platform_notice_id"] as? String == "CDP-000123")
                let again = try await client.call(.post, path, token: world.token(.lim, of: world.a),
                                                  body: ["notice_key": "below_threshold_tender", "platform_notice_id": "CDP-000124"])
                #expect(again.status == .conflict && (again.jsonObject["type"] as? String)?.hasSuffix("notice-already-filed") == true)
                let unneeded = try await client.call(.post, path, token: world.token(.lim, of: world.a),
                                                     body: ["notice_key": "uk4_tender", "platform_notice_id": "CDP-000125"])
                #expect(unneeded.status == .unprocessableContent)
                let member = try await client.call(.get, "/v1/notices", token: world.token(.boardMember, of: world.a))
                #expect(member.status == .forbidden)
            }

            // Central government: lower thresholds, as data.
            _ = try await OpenContractingService(database: scoped).configure(world.a.authority, ocidPrefix: nil, centralGovernment: true,
                                                                             contractDetailsNoticeDays: nil, publishKPIActuals: nil, osUser: "test")
            let central = try await OpenContractingService(database: scoped).notices(
                AccessScope(authorityID: world.a.authority.id, userID: world.a.users[.authorityAdmin]!.id, roles: [.authorityAdmin], boardIDs: [], actor: "test"))
            #expect(central.first { $0.title == "25k advertised" }?.notices.map(\.type) == ["below_threshold_tender", "uk7_contract_details"])
            #expect(central.first { $0.title == "300k advertised" }?.regime == "regulated")
        }
    }
}
