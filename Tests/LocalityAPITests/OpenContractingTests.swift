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

    /// The test client keeps one connection while the lifecycle runs through the services in between; on a busy
    /// machine that can outlast the server's idle timeout, which would close it under the client.
    static func patientConfiguration(_ database: TestDatabase) -> AppConfiguration {
        var configuration = testConfiguration(database)
        configuration.idleTimeoutSeconds = 0
        return configuration
    }

    @Test func aFullLifecycleIsPublishedValidCompleteAndWithoutWhatMustNeverBe() async throws {
        let world = try await World.make()
        let lim = Self.lim(world)
        let app = try await buildApplication(Self.patientConfiguration(world.database))
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
                // And an unsuccessful one: no suitable bid by the deadline.
                let unsuccessful = try await projects.create(lim, boardID: world.a.boards[0].id,
                                                             MarketFixture.fields(theme: world.market.theme, title: "Parent workshops"))
                _ = try await projects.publish(lim, id: unsuccessful.id)
                try await MarketFixture.setDeadline(world.database, projects: [unsuccessful.id], "now() - interval '1 hour'")
                _ = try await projects.markUnsuccessful(lim, id: unsuccessful.id, reason: "No bid met the quality threshold")

                // The feed, page by page (small pages, to follow the cursor).
                let (pages, releases) = try await Self.feed(client, "authority=alpha&limit=3")
                let ocid = "ocds-a1b2c3-\(lower(project.id))"
                let mine = releases.filter { $0["ocid"] as? String == ocid }
                // The return's actual and rating are published as it is made (the authority publishes KPI actuals).
                #expect(mine.map { ($0["tag"] as? [String]) ?? [] } == [
                    ["tender"], ["tenderAmendment"], ["award"], ["contract"], ["contract"], ["implementation"], ["contractAmendment"],
                    ["implementation", "contractTermination"],
                ])
                #expect(Set(releases.compactMap { $0["id"] as? String }).count == releases.count, "release ids are unique")
                #expect(mine.map { $0["noticeType"] as? String } == ["below_threshold_tender", nil, nil, nil, "uk7_contract_details", nil, nil, nil])
                let returned = try #require(((mine[5]["contracts"] as? [[String: Any]])?.first?["implementation"] as? [String: Any])?["metrics"] as? [[String: Any]])
                #expect(returned.count == 1 && returned[0]["id"] as? String == lower(contract.kpis[0].id))
                let observation = (returned[0]["observations"] as? [[String: Any]])?.first
                #expect(observation?["id"] as? String == lower(period) && number(observation?["measure"]) == 60)
                #expect((observation?["period"] as? [String: Any])?["startDate"] != nil)
                #expect(((observation?["dimensions"] as? [String: Any])?["rag"] as? String)?.isEmpty == false)
                let other = releases.filter { $0["ocid"] as? String == "ocds-a1b2c3-\(lower(cancelled.id))" }
                #expect(other.map { ($0["tag"] as? [String]) ?? [] } == [["tender"], ["tenderCancellation"]])
                let failed = releases.filter { $0["ocid"] as? String == "ocds-a1b2c3-\(lower(unsuccessful.id))" }
                #expect(failed.map { ($0["tag"] as? [String]) ?? [] } == [["tender"], ["tenderCancellation"]])
                let failedTender = failed.last?["tender"] as? [String: Any]
                #expect(failedTender?["status"] as? String == "unsuccessful")
                #expect((failedTender?["amendments"] as? [[String: Any]])?.first?["rationale"] as? String == "No bid met the quality threshold")

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
                documents["record-unsuccessful"] = bodyData(try await client.call(.get, "/ocds/records/ocds-a1b2c3-\(lower(unsuccessful.id))", token: nil))
                let validation = try validateOCDS(documents)
                #expect(validation.ok, "\(validation.output)")
                #expect(validation.output.contains("0 errors"), "\(validation.output)")

                let record = try #require((object(bodyData(recordResponse))["records"] as? [[String: Any]])?.first)
                #expect((record["releases"] as? [Any])?.count == 8)
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

                // Until the authority marks the contract publishable. Its LIM may not; the HoSI and the admins may, once
                // for good: its school causing concern is then published, in a release of its own, and merges into the record.
                let path = "/v1/contracts/\(lower(contract.id))/concern-school-publication"
                @Sendable func updatedAt() async throws -> String {
                    try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
                        try await connection.query("SELECT updated_at::text FROM contract WHERE id = \(contract.id)").first!.decode(String.self, at: 0)
                    }
                }
                let endedAt = try await updatedAt()
                let byLIM = try await client.call(.put, path, token: world.token(.lim, of: world.a), body: ["publish_concern_schools": true])
                #expect(byLIM.status == .forbidden)
                let marked = try await client.call(.put, path, token: world.token(.hosi, of: world.a), body: ["publish_concern_schools": true])
                #expect(marked.status == .ok && marked.jsonObject["publish_concern_schools"] as? Bool == true, "\(String(buffer: marked.body))")
                let again = try await client.call(.put, path, token: world.token(.authorityAdmin, of: world.a), body: ["publish_concern_schools": true])
                #expect(again.status == .ok)
                let withdraw = try await client.call(.put, path, token: world.token(.authorityAdmin, of: world.a), body: ["publish_concern_schools": false])
                #expect(withdraw.status == .conflict && (withdraw.jsonObject["type"] as? String)?.hasSuffix("concern-schools-published") == true,
                        "\(String(buffer: withdraw.body))")
                let elsewhere = try await client.call(.put, "/v1/contracts/\(lower(UUID()))/concern-school-publication",
                                                      token: world.token(.hosi, of: world.a), body: ["publish_concern_schools": true])
                #expect(elsewhere.status == .notFound)
                // The mark is not a change of the contract: its end date (the termination notice's event) stays.
                #expect(try await updatedAt() == endedAt)
                let afterMark = try await Self.feed(client, "authority=alpha").releases.filter { $0["ocid"] as? String == ocid }
                #expect(afterMark.count == 9 && afterMark.last?["tag"] as? [String] == ["tenderUpdate"], "\(afterMark.map { $0["tag"] ?? "" })")
                let update = String(decoding: try JSONSerialization.data(withJSONObject: afterMark.last ?? [:]), as: UTF8.self)
                #expect(update.contains("121003") && update.contains("Concerned Primary"))
                #expect(!update.contains("Falling outcomes") && !update.contains("governance"), "the concern itself is not published: \(update)")
                let markedRecord = try await client.call(.get, "/ocds/records/\(ocid)", token: nil)
                let markedValidation = try validateOCDS(["record-marked": bodyData(markedRecord)])
                #expect(markedValidation.ok, "\(markedValidation.output)")
                let markedTender = ((object(bodyData(markedRecord))["records"] as? [[String: Any]])?.first?["compiledRelease"] as? [String: Any])?["tender"] as? [String: Any]
                let markedItem = (markedTender?["items"] as? [[String: Any]])?.first
                #expect((markedItem?["additionalClassifications"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["121001", "121003"])

                // The contract details notice is due the authority's number of days after the contract started.
                @Sendable func contractDetailsNotice() async throws -> (eventOn: Date?, dueOn: Date?) {
                    let response = try await client.call(.get, "/v1/notices", token: world.token(.authorityAdmin, of: world.a))
                    let procurement = response.items.first { $0["title"] as? String == "Autism-friendly classrooms" }
                    let notice = (procurement?["notices"] as? [[String: Any]])?.first { $0["type"] as? String == "uk7_contract_details" }
                    func day(_ key: String) -> Date? { (notice?[key] as? String).flatMap { try? Date($0 + "T00:00:00Z", strategy: .iso8601) } }
                    return (day("event_on"), day("due_on"))
                }
                let thirty = try await contractDetailsNotice()
                #expect(thirty.eventOn != nil && thirty.dueOn == thirty.eventOn.map { $0 + 30 * 86_400 }, "\(thirty)")
                _ = try await publication.configure(world.a.authority, ocidPrefix: nil, centralGovernment: nil, contractDetailsNoticeDays: 20,
                                                    publishKPIActuals: nil, osUser: "test")
                let twenty = try await contractDetailsNotice()
                #expect(twenty.eventOn == thirty.eventOn && twenty.dueOn == thirty.eventOn.map { $0 + 20 * 86_400 }, "\(twenty)")
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

extension OpenContractingTests {
    /// KPI actuals and ratings per reporting period are published as each return is made (and when a rating is
    /// overridden), in the same transaction, only while the authority chooses to publish them; valid OCDS.
    @Test func kpiActualsArePublishedPerReturnOnlyWhereTheAuthorityChoosesTo() async throws {
        let world = try await World.make()
        let lim = Self.lim(world)
        let supplier = Self.supplier(world.supplierID)
        let app = try await buildApplication(Self.patientConfiguration(world.database))
        try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 2) { pool in
            let scoped = ScopedDatabase(pool: pool)
            let publication = OpenContractingService(database: scoped)
            let monitoring = MonitoringService(database: scoped)
            let contract = world.market.active
            let period = world.market.activePeriod
            @Sendable func returned(_ value: Decimal) async throws {
                _ = try await monitoring.submit(supplier, contractID: contract, ReturnSubmission(
                    periodID: period, value: .number(value), noActivityReason: nil, narrative: "NARRATIVE-SECRET", evidence: "EVIDENCE-SECRET"))
            }
            try await app.test(.live) { client in
                // Publishing, but not KPI actuals (the default): a return writes no release.
                let off = try await publication.configure(world.a.authority, ocidPrefix: "ocds-a1b2c3", centralGovernment: nil,
                                                          contractDetailsNoticeDays: nil, publishKPIActuals: nil, osUser: "test")
                #expect(off.publishKPIActuals == false)
                try await returned(3)
                _ = try await monitoring.override(lim, contractID: contract, periodID: period, rating: .amber, reason: "Context agreed at the visit")
                #expect(try await Self.feed(client, "tag=implementation").releases.isEmpty)

                // Turned on: each return, and each override, writes its period's actual and rating.
                _ = try await publication.configure(world.a.authority, ocidPrefix: nil, centralGovernment: nil,
                                                    contractDetailsNoticeDays: nil, publishKPIActuals: true, osUser: "test")
                try await returned(7)
                _ = try await monitoring.override(lim, contractID: contract, periodID: period, rating: .red, reason: "Second look at the registers")
                let (pages, releases) = try await Self.feed(client, "tag=implementation")
                #expect(releases.count == 2, "\(releases)")
                func observation(_ release: [String: Any]) -> [String: Any]? {
                    let contracts = release["contracts"] as? [[String: Any]]
                    let metrics = (contracts?.first?["implementation"] as? [String: Any])?["metrics"] as? [[String: Any]]
                    #expect(metrics?.count == 1 && metrics?.first?["id"] as? String == lower(world.market.activeKPI))
                    #expect(contracts?.first?["id"] as? String == lower(contract))
                    return (metrics?.first?["observations"] as? [[String: Any]])?.first
                }
                let fromReturn = try #require(observation(releases[0]))
                #expect(fromReturn["id"] as? String == lower(period) && number(fromReturn["measure"]) == 7)
                #expect((fromReturn["dimensions"] as? [String: Any])?["rag"] as? String == "amber", "the override in force: \(fromReturn)")
                #expect((fromReturn["dimensions"] as? [String: Any])?["rating"] as? String == "Approaching target")
                let fromOverride = try #require(observation(releases[1]))
                #expect(number(fromOverride["measure"]) == 7 && (fromOverride["dimensions"] as? [String: Any])?["rag"] as? String == "red")
                #expect((fromOverride["dimensions"] as? [String: Any])?["rating"] as? String == "Requires improvement")
                #expect(Set(releases.compactMap { $0["id"] as? String }).count == 2)
                let text = String(decoding: try JSONSerialization.data(withJSONObject: releases), as: UTF8.self)
                #expect(!text.contains("SECRET") && !text.contains("Second look") && !text.contains("Context agreed"), "\(text)")
                let ocid = try #require(releases[0]["ocid"] as? String)
                let record = try await client.call(.get, "/ocds/records/\(ocid)", token: nil)
                var documents = ["record": bodyData(record)]
                for (index, page) in pages.enumerated() { documents["feed-\(index)"] = page }
                let validation = try validateOCDS(documents)
                #expect(validation.ok, "\(validation.output)")
                // The compiled release holds the period's latest observation (merged by the period's id).
                let compiled = (object(bodyData(record))["records"] as? [[String: Any]])?.first?["compiledRelease"] as? [String: Any]
                let implementation = (compiled?["contracts"] as? [[String: Any]])?.first?["implementation"] as? [String: Any]
                let merged = ((implementation?["metrics"] as? [[String: Any]])?.first?["observations"] as? [[String: Any]]) ?? []
                #expect(merged.count == 1 && (merged.first?["dimensions"] as? [String: Any])?["rag"] as? String == "red", "\(merged)")

                // Turned off again: nothing more.
                _ = try await publication.configure(world.a.authority, ocidPrefix: nil, centralGovernment: nil,
                                                    contractDetailsNoticeDays: nil, publishKPIActuals: false, osUser: "test")
                try await returned(9)
                #expect(try await Self.feed(client, "tag=implementation").releases.count == 2)
            }
        }
    }

    /// The feed's limit is shared by instances through PostgreSQL, but reads do not write: an instance leases a
    /// client's slots in batches and remembers a refusal until the window ends.
    @Test func theFeedLimitIsSharedWithoutAWritePerRead() async throws {
        let database = try await TestDatabase.migrated()
        // Counts every write to the limit's table (a trigger of the test's own, as the superuser).
        _ = try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("CREATE TABLE limit_writes (n integer NOT NULL)")
            try await connection.query("""
                CREATE FUNCTION count_limit_write() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
                AS $$ BEGIN INSERT INTO limit_writes VALUES (1); RETURN NULL; END $$
                """)
            try await connection.query("""
                CREATE TRIGGER count_limit_write AFTER INSERT OR UPDATE ON registration_attempt FOR EACH ROW EXECUTE FUNCTION count_limit_write()
                """)
        }
        @Sendable func writes() async throws -> Int {
            try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
                try await connection.query("SELECT count(*)::integer FROM limit_writes").first!.decode(Int.self, at: 0)
            }
        }
        @Sendable func hour() async throws -> String {
            try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
                try await connection.query("SELECT date_trunc('hour', now())::text").first!.decode(String.self, at: 0)
            }
        }
        var configuration = Self.patientConfiguration(database)   // the first instance's connection waits while the second works
        configuration.publicFeedRequestsPerHour = 100   // leased 10 at a time
        let first = try await buildApplication(configuration)
        let second = try await buildApplication(configuration)
        // What happened, checked at the end unless the hourly window turned meanwhile (then the counts start afresh).
        struct Observed: Sendable {
            var firstStatuses: [Int] = []
            var writesAfterFirst = 0
            var served = 0
            var limited: (status: Int, problem: Bool, retryAfter: Int)?
            var writesAfterRefusal = 0
            var hammered: [Int] = []
            var writesAfterHammering = 0
            var firstAgain: [Int] = []
            var writesAtEnd = 0
        }
        let startHour = try await hour()
        let observed = try await first.test(.live) { one in
            var observed = Observed()
            for _ in 0..<25 { observed.firstStatuses.append(Int(try await one.call(.get, "/ocds/releases", token: nil).status.code)) }
            observed.writesAfterFirst = try await writes()
            let sofar = observed
            observed = try await second.test(.live) { two in
                var observed = sofar
                for _ in 0..<100 {
                    let response = try await two.call(.get, "/ocds/releases", token: nil)
                    guard response.status == .ok else {
                        observed.limited = (Int(response.status.code), response.headers[.contentType]?.hasPrefix("application/problem+json") == true,
                                            Int(response.headers[.retryAfter] ?? "") ?? 0)
                        break
                    }
                    observed.served += 1
                }
                observed.writesAfterRefusal = try await writes()
                for _ in 0..<20 { observed.hammered.append(Int(try await two.call(.get, "/ocds/releases", token: nil).status.code)) }
                observed.writesAfterHammering = try await writes()
                return observed
            }
            for _ in 0..<6 { observed.firstAgain.append(Int(try await one.call(.get, "/ocds/releases", token: nil).status.code)) }
            observed.writesAtEnd = try await writes()
            return observed
        }
        guard try await hour() == startHour else { return }
        // 25 reads on the first instance: three leases of 10.
        #expect(observed.firstStatuses == Array(repeating: 200, count: 25))
        #expect(observed.writesAfterFirst == 3)
        // The other instance gets what is left of the hour's 100 (the first holds 5 more), then 429 with Retry-After.
        #expect(observed.served == 70)
        #expect(observed.limited?.status == 429 && observed.limited?.problem == true && (observed.limited?.retryAfter ?? 0) > 0)
        #expect(observed.writesAfterRefusal == 3 + 7 + 1)
        // Refused from memory until the window ends: hammering costs no write.
        #expect(observed.hammered == Array(repeating: 429, count: 20))
        #expect(observed.writesAfterHammering == 11)
        // The first instance spends the 5 it holds, then is refused too: never more than 100 in the hour.
        #expect(observed.firstAgain == Array(repeating: 200, count: 5) + [429])
        #expect(observed.writesAtEnd == 12)
    }

    /// With `publicBaseURL` the documents' URIs are the configured ones whatever Host a client sends; without it, a
    /// Host is repeated only when it is a plain host name (and the response varies by Host), else URIs are relative.
    @Test func documentURIsNeverCarryAHostileHost() async throws {
        let database = try await TestDatabase.migrated()
        /// The feed's first page asked under `host` (the test framework's own client always says localhost).
        struct Fetched: Sendable { var status: HTTPResponse.Status; var headers: HTTPFields; var data: Data; var text: String { String(decoding: data, as: UTF8.self) } }
        @Sendable func fetch(_ client: some TestClientProtocol, host: String) async throws -> Fetched {
            let connection = TestClient(host: "localhost", port: try #require(client.port), configuration: .init(timeout: .seconds(60)))
            connection.connect()
            let response = try await connection.execute(.init("/ocds/releases?limit=5", method: .get, authority: host))
            try await connection.shutdown()
            return Fetched(status: response.head.status, headers: response.head.headerFields, data: Data((response.body ?? ByteBuffer()).readableBytesView))
        }
        var configured = testConfiguration(database)
        configured.publicBaseURL = "https://data.alpha.example/"
        try await buildApplication(configured).test(.live) { client in
            let hostile = try await fetch(client, host: "evil.example")
            let honest = try await fetch(client, host: "data.alpha.example")
            #expect(hostile.status == .ok && honest.status == .ok)
            #expect(object(hostile.data)["uri"] as? String == "https://data.alpha.example/ocds/releases?limit=5", "\(hostile.text)")
            #expect(!hostile.text.contains("evil"))
            // The same document whatever the Host (an empty page is dated by the minute it is asked in): one cache
            // entry, never a poisoned one.
            #expect(NSDictionary(dictionary: object(hostile.data).filter { $0.key != "publishedDate" })
                        .isEqual(to: object(honest.data).filter { $0.key != "publishedDate" }))
            #expect(hostile.headers[.vary] == nil)
        }
        try await buildApplication(testConfiguration(database)).test(.live) { client in
            let plain = try await fetch(client, host: "feed.alpha.example:8443")
            #expect(object(plain.data)["uri"] as? String == "http://feed.alpha.example:8443/ocds/releases?limit=5")
            #expect(plain.headers[.vary] == "Host")
            for host in ["user@evil.example", "evil_example.com", "evil.example:99999", "-evil.example", "evil..example", "evil.example%2F"] {
                let response = try await fetch(client, host: host)
                #expect(response.status == .ok || response.status == .badRequest, "\(host)")
                if response.status == .ok {
                    #expect(object(response.data)["uri"] as? String == "/ocds/releases?limit=5", "\(host): \(response.text)")
                }
                #expect(!response.text.contains("evil"), "\(host)")
            }
        }
        #expect(AppConfiguration.normalisedPublicBaseURL("https://data.alpha.example/") == "https://data.alpha.example")
        for bad in ["ftp://data.alpha.example", "data.alpha.example", "https://user@data.alpha.example", "https://data.alpha.example/?a=1", "https://"] {
            #expect(AppConfiguration.normalisedPublicBaseURL(bad) == nil, "\(bad)")
        }
        var broken = testConfiguration(database)
        broken.publicBaseURL = "ftp://data.alpha.example"
        await #expect(throws: (any Error).self) { _ = try await buildApplication(broken) }
    }
}
