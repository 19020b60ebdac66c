import Foundation
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// The admin CLI end to end: the built binary, run as a subprocess against a fresh migrated database.
@Suite("Admin CLI")
struct AdminCLITests {
    static let tokenPattern = "^lcm_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$"

    /// Creates an authority `test-la` with board CRA; returns nothing but fails the test on error.
    func authorityWithBoard(_ db: TestDatabase) async throws {
        try expectSuccess(await AdminCLI.run(["authority", "create", "--slug", "test-la", "--name", "Test Local Authority"], database: db))
        try expectSuccess(await AdminCLI.run([
            "board", "create", "--authority", "test-la", "--name", "Craven", "--short-code", "CRA", "--area", "Craven district",
        ], database: db))
    }

    func balances(_ db: TestDatabase, board: String = "CRA") async throws -> [String: [String: Any]] {
        let show = try expectSuccess(await AdminCLI.run(
            ["budget", "show", "--authority", "test-la", "--board", board, "--year", "2025-26", "--json"], database: db))
        let object = try #require(try show.json() as? [String: Any], "\(show)")
        let rows = try #require(object["balances"] as? [[String: Any]], "\(show)")
        return Dictionary(uniqueKeysWithValues: rows.map { ($0["funding_stream"] as? String ?? "?", $0) })
    }

    @Test func allocatedPoundsAndPenceAreStoredExactlyInPence() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let allocate = try expectSuccess(await AdminCLI.run([
            "budget", "allocate", "--authority", "test-la", "--board", "cra", "--year", "2025-26", "--stream", "locality",
            "--amount", "121000.50", "--reason", "2025-26 locality budget",
        ], database: db))
        #expect(allocate.stdout.contains("£121,000.50"), "\(allocate)")

        let streams = try await balances(db)
        #expect(streams["locality"]?["allocated_pence"] as? Int == 12_100_050)
        #expect(streams["locality"]?["available_pence"] as? Int == 12_100_050)
        #expect(streams["school_improvement"]?["allocated_pence"] as? Int == 0)

        let text = try expectSuccess(await AdminCLI.run(
            ["budget", "show", "--authority", "test-la", "--board", "CRA", "--year", "2025-26"], database: db))
        let locality = try #require(text.stdoutLines.first { $0.hasPrefix("locality") }, "\(text)")
        #expect(locality.contains("£121,000.50"))
        #expect(locality.contains("£0.00"))
    }

    @Test func anAmountWithMoreThanTwoDecimalPlacesIsRefusedInOneLine() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        for amount in ["1.234", "-5"] {
            let result = try await AdminCLI.run([
                "budget", "allocate", "--authority", "test-la", "--board", "CRA", "--year", "2025-26", "--stream", "locality",
                "--amount", amount, "--reason", "typo",
            ], database: db)
            #expect(result.status != 0, "\(result)")
            #expect(result.stderrLines.count == 1, "\(result)")
            #expect(result.stdout.isEmpty, "\(result)")
        }
        let refused = try await AdminCLI.run([
            "budget", "allocate", "--authority", "test-la", "--board", "CRA", "--year", "2025-26", "--stream", "locality",
            "--amount", "1.234", "--reason", "typo",
        ], database: db)
        #expect(refused.stderr.contains("more than 2 decimal places"), "\(refused)")
        #expect(try await balances(db)["locality"]?["allocated_pence"] as? Int == 0)
    }

    @Test func aNewAuthorityHasTheDefaultSocialValueMeasures() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let codes = try await PGConnection.withConnection(.init(conninfo: db.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("""
                SELECT m.code FROM social_value_measure m JOIN authority a ON a.id = m.authority_id WHERE a.slug = 'test-la' ORDER BY m.code
                """).map { try $0.decode(String.self, at: 0) }
        }
        #expect(Set(codes) == Set(CatalogueService.defaultSocialValueMeasures.map(\.0)), "a project's social-value criteria need measures")
    }

    /// Given only the owner's URL, `migrate` migrates that database (it used to start an embedded cluster in
    /// the working directory and report success there); any other command on an unmigrated database says to
    /// migrate, instead of `relation "authority" does not exist`.
    @Test func aDatabaseURLIsNeverIgnoredAndAnUnmigratedSchemaNamesMigrate() async throws {
        let db = try await TestDatabase.empty()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }

        let seed = try await AdminCLI.run(["seed", "demo", "--owner-database-url", db.ownerConninfo, "--data-dir", directory.path])
        #expect(seed.status != 0)
        #expect(seed.stderrLines == ["locality-admin: the database schema is not migrated to this version (or was edited); run `locality-admin migrate` first"], "\(seed)")

        let migrate = try await AdminCLI.run(["migrate", "--owner-database-url", db.ownerConninfo, "--data-dir", directory.path])
        #expect(migrate.status == 0, "\(migrate)")
        #expect(!FileManager.default.fileExists(atPath: directory.path), "no embedded cluster was created")
        let applied = try await PGConnection.withConnection(.init(conninfo: db.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("SELECT count(*) FROM schema_migrations").first!.decode(Int.self, at: 0)
        }
        let expected = try Migration.load(from: Migration.defaultDirectory()).count
        #expect(applied == expected)
        try expectSuccess(await AdminCLI.run(["seed", "demo", "--owner-database-url", db.ownerConninfo, "--data-dir", directory.path]))
    }

    /// As root, from a clone in a private directory (mode 0700, as under /root) the PostgreSQL OS user cannot
    /// reach `./.data/postgres`: the embedded cluster goes under /var/lib/locality instead, and the command works.
    @Test(.enabled(if: getuid() == 0, "only root runs PostgreSQL as another OS user"))
    func theEmbeddedClusterWorksFromAPrivateDirectoryAsRoot() async throws {
        let name = "private-\(UUID().uuidString.prefix(8).lowercased())"
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(at: directory) }
        let migrate = try await AdminCLI.run(["migrate"], currentDirectory: directory)
        let relocated = (try? FileManager.default.contentsOfDirectory(atPath: "/var/lib/locality"))?.filter { $0.hasPrefix(name + "-") } ?? []
        defer { for entry in relocated { try? FileManager.default.removeItem(atPath: "/var/lib/locality/" + entry) } }
        #expect(migrate.status == 0, "\(migrate)")
        #expect(relocated.count == 1, "the cluster should live under /var/lib/locality: \(migrate)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent(".data/postgres/PG_VERSION").path))
    }

    @Test func domainErrorsReachTheUserAsOneLine() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let duplicate = try await AdminCLI.run(["authority", "create", "--slug", "test-la", "--name", "Again"], database: db)
        #expect(duplicate.status != 0)
        #expect(duplicate.stderrLines == ["locality-admin: An authority with this slug already exists."], "\(duplicate)")

        let unknownBoard = try await AdminCLI.run(
            ["budget", "show", "--authority", "test-la", "--board", "XYZ", "--year", "2025-26"], database: db)
        #expect(unknownBoard.status != 0)
        #expect(unknownBoard.stderrLines.count == 1, "\(unknownBoard)")
        #expect(unknownBoard.stderr.contains("not found"), "\(unknownBoard)")
    }

    @Test func seedingTheDemoTwiceCreatesItOnce() async throws {
        let db = try await TestDatabase.migrated()
        let tokenRegex = try Regex(String(Self.tokenPattern.dropFirst().dropLast()))   // unanchored, to find them in the table

        let first = try expectSuccess(await AdminCLI.run(["seed", "demo"], database: db))
        #expect(first.stdout.contains(DemoSeed.authoritySlug), "\(first)")
        #expect(first.stdout.matches(of: tokenRegex).count == 6, "\(first)")
        #expect(first.stdout.contains("shown once"), "\(first)")

        let boards = try expectSuccess(await AdminCLI.run(["board", "list", "--authority", DemoSeed.authoritySlug, "--json"], database: db))
        #expect((try boards.json() as? [Any])?.count == 5, "\(boards)")
        // A newcomer can publish at once: the current financial year has money too, not only 2025-26.
        let current = FinancialYear.containing(Date()).description
        let budget = try expectSuccess(await AdminCLI.run(
            ["budget", "show", "--authority", DemoSeed.authoritySlug, "--board", "CRA", "--year", current, "--json"], database: db))
        let rows = try #require((try budget.json() as? [String: Any])?["balances"] as? [[String: Any]], "\(budget)")
        #expect(rows.contains { $0["funding_stream"] as? String == "locality" && ($0["available_pence"] as? Int ?? 0) == 12_100_000 }, "\(budget)")

        let second = try await AdminCLI.run(["seed", "demo"], database: db)
        #expect(second.status == 0, "\(second)")
        #expect(second.stderr.contains("already seeded"), "\(second)")
        #expect(second.stdout.matches(of: tokenRegex).isEmpty, "\(second)")

        let boardsAfter = try expectSuccess(await AdminCLI.run(["board", "list", "--authority", DemoSeed.authoritySlug, "--json"], database: db))
        #expect((try boardsAfter.json() as? [Any])?.count == 5, "\(boardsAfter)")
        let authorities = try expectSuccess(await AdminCLI.run(["authority", "list", "--json"], database: db))
        #expect((try authorities.json() as? [Any])?.count == 1, "\(authorities)")
    }

    @Test func auditVerifyPassesAnIntactChainAndNamesATamperedEvent() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let list = try expectSuccess(await AdminCLI.run(["authority", "list", "--json"], database: db))
        let authorityID = try #require((try list.json() as? [[String: Any]])?.first?["id"] as? String, "\(list)")

        let intact = try expectSuccess(await AdminCLI.run(["audit", "verify"], database: db))
        // authority.create, two funding_stream.create, the default social-value measures, board.create
        let events = 4 + CatalogueService.defaultSocialValueMeasures.count
        #expect(intact.stdoutLines == ["ok \(authorityID) (\(events) events)"], "\(intact)")
        try expectSuccess(await AdminCLI.run(["audit", "verify", "--authority", "test-la"], database: db))

        try await PGConnection.withConnection(.init(conninfo: db.superuserConninfo, applicationName: "t")) { connection in
            try await connection.execute("""
                ALTER TABLE audit_event DISABLE TRIGGER audit_event_append_only;
                UPDATE audit_event SET action = 'tampered' WHERE seq = 2;
                ALTER TABLE audit_event ENABLE TRIGGER audit_event_append_only;
                """)
        }

        let broken = try await AdminCLI.run(["audit", "verify", "--authority", "test-la"], database: db)
        #expect(broken.status != 0, "\(broken)")
        #expect(broken.stdoutLines.count == 1, "\(broken)")
        #expect(broken.stdout.hasPrefix("BROKEN \(authorityID): first bad event 2: "), "\(broken)")

        let json = try await AdminCLI.run(["audit", "verify", "--json"], database: db)
        #expect(json.status != 0, "\(json)")
        let report = try #require((try json.json() as? [[String: Any]])?.first, "\(json)")
        #expect(report["intact"] as? Bool == false)
        #expect(report["first_bad_seq"] as? Int == 2)
    }

    @Test func anIssuedTokenIsPrintedOnceAndListedWithoutItsSecret() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        try expectSuccess(await AdminCLI.run([
            "user", "create", "--authority", "test-la", "--email", "admin@test.example", "--name", "Test Admin",
            "--role", "authority_admin", "--role", "lim:cra",
        ], database: db))

        let issue = try expectSuccess(await AdminCLI.run([
            "token", "issue", "--authority", "test-la", "--user", "ADMIN@test.example", "--label", "laptop",
            "--expires-in-days", "30",
        ], database: db))
        #expect(issue.stdoutLines.count == 1, "\(issue)")
        let secret = issue.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(try Regex(Self.tokenPattern).wholeMatch(in: secret) != nil, "\(issue)")
        #expect(issue.stderrLines.count == 1, "\(issue)")
        #expect(issue.stderr.contains("will not be shown again"), "\(issue)")
        #expect(!issue.stderr.contains(secret))

        // The token works: it authenticates as the user through the application role.
        let principal = try await db.withPool { pool in
            try await TokenService(database: ScopedDatabase(pool: pool)).authenticate(secret)
        }
        #expect(principal?.email == "admin@test.example")
        #expect(principal?.roles == [.authorityAdmin, .lim])

        let prefix = String(secret.prefix(TokenFormat.prefixLength))
        let listed = try expectSuccess(await AdminCLI.run(
            ["token", "list", "--authority", "test-la", "--user", "admin@test.example", "--json"], database: db))
        #expect(!listed.stdout.contains(secret))
        let tokens = try #require(try listed.json() as? [[String: Any]], "\(listed)")
        #expect(tokens.count == 1)
        #expect(tokens.first?["prefix"] as? String == prefix)
        #expect(tokens.first?["label"] as? String == "laptop")
        #expect(tokens.first?["status"] as? String == "active")
        #expect(tokens.first?["token"] == nil)

        let text = try expectSuccess(await AdminCLI.run(
            ["token", "list", "--authority", "test-la", "--user", "admin@test.example"], database: db))
        #expect(text.stdout.contains(prefix))
        #expect(!text.stdout.contains(secret))

        try expectSuccess(await AdminCLI.run(
            ["token", "revoke", "--authority", "test-la", "--user", "admin@test.example", prefix], database: db))
        let afterRevoke = try expectSuccess(await AdminCLI.run(
            ["token", "list", "--authority", "test-la", "--user", "admin@test.example", "--json"], database: db))
        #expect((try afterRevoke.json() as? [[String: Any]])?.first?["status"] as? String == "revoked")
        let rejected = try await db.withPool { pool in
            try await TokenService(database: ScopedDatabase(pool: pool)).authenticate(secret)
        }
        #expect(rejected == nil)
    }

    @Test func boardsAreUpdatedAndUsersDisabledByShortCodeAndEmail() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let updated = try expectSuccess(await AdminCLI.run(
            ["board", "update", "--authority", "test-la", "cra", "--chair", "Jo Bloggs", "--json"], database: db))
        let board = try #require(try updated.json() as? [String: Any], "\(updated)")
        #expect(board["chair"] as? String == "Jo Bloggs")
        #expect(board["short_code"] as? String == "CRA")
        #expect(board["area"] as? String == "Craven district")

        try expectSuccess(await AdminCLI.run([
            "user", "create", "--authority", "test-la", "--email", "member@test.example", "--name", "Member",
            "--role", "board_member:CRA",
        ], database: db))
        try expectSuccess(await AdminCLI.run(["user", "disable", "--authority", "test-la", "member@test.example"], database: db))
        let users = try expectSuccess(await AdminCLI.run(["user", "list", "--authority", "test-la", "--json"], database: db))
        let user = try #require((try users.json() as? [[String: Any]])?.first, "\(users)")
        #expect(user["disabled"] as? Bool == true)
        let roles = try #require(user["roles"] as? [[String: Any]])
        #expect(roles.first?["role"] as? String == "board_member")
        #expect(roles.first?["board_short_code"] as? String == "CRA")

        let badRole = try await AdminCLI.run([
            "user", "create", "--authority", "test-la", "--email", "x@test.example", "--name", "X", "--role", "supplier_user",
        ], database: db)
        #expect(badRole.status != 0)
        #expect(badRole.stderrLines.count == 1, "\(badRole)")
    }

    @Test func authoritySettingsAndSchoolsImport() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let configured = try expectSuccess(await AdminCLI.run(
            ["authority", "configure", "--authority", "test-la", "--clarification-cutoff-hours", "24", "--standstill-working-days", "0", "--json"],
            database: db))
        let settings = try #require(try configured.json() as? [String: Any], "\(configured)")
        #expect(settings["clarification_cutoff_hours"] as? Int == 24 && settings["standstill_working_days"] as? Int == 0)
        let refused = try await AdminCLI.run(["authority", "configure", "--authority", "test-la", "--standstill-working-days", "31"], database: db)
        #expect(refused.status != 0 && refused.stderrLines.count == 1, "\(refused)")

        // A two-row GIAS file: one school of LA 815, one of another authority, with a Windows-1252 character.
        let header = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/gias-header.csv"), encoding: .utf8).split(whereSeparator: \.isNewline)[0]
        let columns = header.split(separator: ",").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
        func row(_ values: [String: String]) -> String {
            columns.map { "\"" + (values[$0] ?? "") + "\"" }.joined(separator: ",")
        }
        let text = [String(header),
                    row(["URN": "121234", "LA (code)": "815", "EstablishmentName": "St Peter’s CE Primary", "EstablishmentStatus (name)": "Open",
                         "OpenDate": "01-09-1975", "DistrictAdministrative (name)": "Craven"]),
                    row(["URN": "999999", "LA (code)": "816", "EstablishmentName": "Elsewhere School", "EstablishmentStatus (name)": "Open"])]
            .joined(separator: "\r\n") + "\r\n"
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("gias-\(UUID().uuidString).csv")
        try #require(text.data(using: .windowsCP1252)).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let imported = try expectSuccess(await AdminCLI.run(
            ["schools", "import", file.path, "--authority", "test-la", "--la-code", "815", "--json"], database: db))
        let report = try #require(try imported.json() as? [String: Any], "\(imported)")
        #expect(report["added"] as? Int == 1 && report["skipped"] as? Int == 1)
        #expect(report["unmapped_urns"] as? [Int] == [121234], "no board rule yet: reported, not guessed (keys read as words)")
        #expect(report["unmapped_ur_ns"] == nil)
        let again = try expectSuccess(await AdminCLI.run(
            ["schools", "import", file.path, "--authority", "test-la", "--la-code", "815"], database: db))
        #expect(again.stdout.contains("0 added, 0 updated, 1 unchanged"), "\(again)")
    }

    @Test func versionIsTheBuildVersion() async throws {
        let result = try expectSuccess(await AdminCLI.run(["--version"]))
        #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == BuildVersion.current, "\(result)")
    }

    @Test func scheduledMonitoringAndConcernCategories() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        let check = try expectSuccess(await AdminCLI.run(["monitoring", "open-overdue"], database: db))
        #expect(check.stdout.contains("test-la: 0 plan(s) opened"), "\(check)")
        // Scheduled on two hosts: while one run holds the job's lock, another does nothing and says so.
        try await PGConnection.withConnection(.init(conninfo: db.superuserConninfo, applicationName: "other-host")) { other in
            try await other.query("SELECT pg_advisory_lock(7813573148592927865)")
            let second = try expectSuccess(await AdminCLI.run(["monitoring", "open-overdue"], database: db))
            #expect(second.stdout.contains("already running on another host") && !second.stdout.contains("plan(s) opened"), "\(second)")
        }
        let category = try expectSuccess(await AdminCLI.run(
            ["schools", "category", "--authority", "test-la", "--code", "serious_weaknesses", "--name", "Ofsted: serious weaknesses"], database: db))
        #expect(category.stdout.contains("serious_weaknesses"))
        let bad = try await AdminCLI.run(["schools", "category", "--authority", "test-la", "--code", "Bad Code", "--name", "x"], database: db)
        #expect(bad.status != 0 && bad.stderrLines.count == 1, "\(bad)")
    }
}

extension AdminCLITests {
    /// Issue 12, newcomer papercuts: the operator adds, changes, retires and lists an authority's measures, and
    /// sets its school-to-board rules by board short code; each change is audited as the operator, and a rule
    /// change re-maps the schools already imported.
    @Test func measuresAndSchoolBoardRulesAreManagedFromTheCLI() async throws {
        let db = try await TestDatabase.migrated()
        try await authorityWithBoard(db)
        try expectSuccess(await AdminCLI.run(["board", "create", "--authority", "test-la", "--name", "Selby", "--short-code", "SEL"], database: db))
        let added = try expectSuccess(await AdminCLI.run([
            "catalogue", "measure", "add", "--authority", "test-la", "--code", "NT19", "--name", "Local supply chain spend",
            "--unit", "£ spent", "--proxy-value", "0.12", "--json",
        ], database: db))
        let measure = try #require(try added.json() as? [String: Any], "\(added)")
        #expect(measure["proxy_value_pence"] as? Int == 12 && measure["code"] as? String == "NT19")
        let duplicate = try await AdminCLI.run([
            "catalogue", "measure", "add", "--authority", "test-la", "--code", "NT19", "--name", "Again", "--unit", "£", "--proxy-value", "1",
        ], database: db)
        #expect(duplicate.status != 0 && duplicate.stderr.contains("already exists"), "\(duplicate)")
        try expectSuccess(await AdminCLI.run([
            "catalogue", "measure", "update", "NT19", "--authority", "test-la", "--proxy-value", "0.15", "--retire",
        ], database: db))
        let live = try expectSuccess(await AdminCLI.run(["catalogue", "measure", "list", "--authority", "test-la", "--json"], database: db))
        let liveCodes = (try live.json() as? [[String: Any]] ?? []).compactMap { $0["code"] as? String }
        #expect(!liveCodes.contains("NT19") && liveCodes.contains("NT13"), "\(live)")
        let all = try expectSuccess(await AdminCLI.run(["catalogue", "measure", "list", "--authority", "test-la", "--all"], database: db))
        let row = try #require(all.stdoutLines.first { $0.hasPrefix("NT19") }, "\(all)")
        #expect(row.contains("£0.15") && row.contains("yes"), "\(row)")

        // Two schools in Craven, imported before any rule: unmapped; a rule maps them at once.
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("gias-\(UUID().uuidString).csv")
        defer { try? FileManager.default.removeItem(at: file) }
        let header = "\"URN\",\"LA (code)\",\"EstablishmentName\",\"TypeOfEstablishment (name)\",\"EstablishmentStatus (name)\",\"OpenDate\",\"CloseDate\","
            + "\"PhaseOfEducation (name)\",\"DistrictAdministrative (name)\",\"AdministrativeWard (name)\",\"ParliamentaryConstituency (name)\",\"Postcode\""
        let lines = [header] + [("140001", "Craven"), ("140002", "Selby")].map { urn, district in
            "\"\(urn)\",\"815\",\"School \(urn)\",\"Community school\",\"Open\",\"\",\"\",\"Primary\",\"\(district)\",\"Ward\",\"Seat\",\"BD23 1AA\""
        }
        try Data((lines.joined(separator: "\r\n") + "\r\n").utf8).write(to: file)
        let imported = try expectSuccess(await AdminCLI.run(
            ["schools", "import", file.path, "--la-code", "815", "--authority", "test-la", "--json"], database: db))
        #expect((try imported.json() as? [String: Any])?["unmapped_urns"] as? [Int] == [140001, 140002], "\(imported)")

        let set = try expectSuccess(await AdminCLI.run([
            "schools", "rules", "set", "--authority", "test-la", "--source", "district", "--rule", "Craven=CRA", "--json",
        ], database: db))
        let mapping = try #require(try set.json() as? [String: Any], "\(set)")
        #expect(mapping["remapped"] as? Int == 1 && mapping["unmapped_urns"] as? [Int] == [140002], "\(set)")
        let rules = mapping["rules"] as? [[String: Any]] ?? []
        #expect(rules.map { "\($0["source"] ?? "") \($0["value"] ?? "") \($0["board"] ?? "")" } == ["district Craven CRA"])
        let bad = try await AdminCLI.run(["schools", "rules", "set", "--authority", "test-la", "--source", "district", "--rule", "Craven"], database: db)
        #expect(bad.status != 0 && bad.stderrLines.count == 1, "\(bad)")
        try expectSuccess(await AdminCLI.run([
            "schools", "rules", "set", "--authority", "test-la", "--source", "district", "--rule", "Craven=CRA", "--rule", "Selby=sel",
        ], database: db))
        let shown = try expectSuccess(await AdminCLI.run(["schools", "rules", "show", "--authority", "test-la"], database: db))
        #expect(shown.stdoutLines.contains { $0.hasPrefix("district") && $0.contains("Selby") && $0.hasSuffix("SEL") }, "\(shown)")
        #expect(!shown.stdout.contains("not assigned"), "\(shown)")

        // Each change audited once, as the operator.
        let actions = try await PGConnection.withConnection(.init(conninfo: db.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("""
                SELECT action, actor FROM audit_event
                WHERE action IN ('social_value_measure.create', 'social_value_measure.update', 'schools.board_mapping')
                """).map { try $0.decode(String.self, String.self) }
        }
        // The defaults the new authority got, and NT19 (the refused duplicate wrote nothing).
        #expect(actions.filter { $0.0 == "social_value_measure.create" }.count == CatalogueService.defaultSocialValueMeasures.count + 1)
        #expect(actions.filter { $0.0 == "social_value_measure.update" }.count == 1)
        #expect(actions.filter { $0.0 == "schools.board_mapping" }.count == 2, "the malformed --rule changed nothing")
        #expect(actions.allSatisfy { $0.1.hasPrefix("cli:") }, "\(actions)")
    }
}
