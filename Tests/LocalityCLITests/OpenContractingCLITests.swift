import Foundation
import PostgresTestSupport
import Testing

@Suite("Admin CLI: open contracting")
struct OpenContractingCLITests {
    @Test func thePrefixGatesPublicationAndTheExportSpeaksOCDS() async throws {
        let db = try await TestDatabase.migrated()
        try expectSuccess(await AdminCLI.run(["authority", "create", "--slug", "test-la", "--name", "Test Local Authority"], database: db))

        // Nothing is published until the prefix is set, and the export says why.
        let refused = try await AdminCLI.run(["ocds", "export", "--authority", "test-la"], database: db)
        #expect(refused.status != 0 && refused.stderrLines.count == 1 && refused.stderr.contains("OCID prefix"), "\(refused)")
        let badPrefix = try await AdminCLI.run(["authority", "configure", "--authority", "test-la", "--ocid-prefix", "OCDS-12"], database: db)
        #expect(badPrefix.status != 0 && badPrefix.stderrLines.count == 1, "\(badPrefix)")

        let configured = try expectSuccess(await AdminCLI.run(
            ["authority", "configure", "--authority", "test-la", "--ocid-prefix", "ocds-t3st01", "--central-government", "true",
             "--contract-details-notice-days", "20", "--json"], database: db))
        let settings = try #require(try configured.json() as? [String: Any], "\(configured)")
        #expect(settings["ocid_prefix"] as? String == "ocds-t3st01" && settings["central_government"] as? Bool == true
                && settings["contract_details_notice_days"] as? Int == 20 && settings["publish_kpi_actuals"] as? Bool == false, "\(settings)")

        // KPI actuals per reporting period: published or not, on the authority's choice.
        for (value, expected) in [("on", true), ("off", false), ("true", true)] {
            let switched = try expectSuccess(await AdminCLI.run(
                ["authority", "configure", "--authority", "test-la", "--publish-kpi-actuals", value, "--json"], database: db))
            #expect((try switched.json() as? [String: Any])?["publish_kpi_actuals"] as? Bool == expected, "\(value): \(switched)")
        }
        let text = try expectSuccess(await AdminCLI.run(["authority", "configure", "--authority", "test-la", "--publish-kpi-actuals", "off"], database: db))
        #expect(text.stdout.contains("KPI actuals not published"), "\(text)")
        let unclear = try await AdminCLI.run(["authority", "configure", "--authority", "test-la", "--publish-kpi-actuals", "maybe"], database: db)
        #expect(unclear.status != 0, "\(unclear)")

        let package = try expectSuccess(await AdminCLI.run(["ocds", "export", "--authority", "test-la"], database: db))
        let object = try #require(try package.json() as? [String: Any], "\(package)")
        #expect(object["version"] as? String == "1.1" && (object["releases"] as? [Any])?.isEmpty == true)
        #expect((object["publisher"] as? [String: Any])?["name"] as? String == "Test Local Authority")
        #expect(package.stderr.contains("exported 0 releases"), "\(package)")
        let lines = try expectSuccess(await AdminCLI.run(["ocds", "export", "--authority", "test-la", "--format", "jsonl",
                                                          "--since", "2026-01-01T00:00:00Z"], database: db))
        #expect(lines.stdout.isEmpty, "\(lines)")
        let badSince = try await AdminCLI.run(["ocds", "export", "--authority", "test-la", "--since", "yesterday"], database: db)
        #expect(badSince.status != 0 && badSince.stderrLines.count == 1, "\(badSince)")

        let due = try expectSuccess(await AdminCLI.run(["notices", "due", "--authority", "test-la"], database: db))
        #expect(due.stdout.contains("No notices outstanding"), "\(due)")
    }
}
