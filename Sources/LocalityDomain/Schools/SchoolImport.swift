public import Foundation
import LocalityPostgres

public struct SchoolImportReport: Sendable, Codable, Equatable {
    public var rowsRead: Int
    public var added: Int
    public var updated: Int
    public var unchanged: Int
    public var closed: Int
    /// Rows of other local authorities.
    public var skipped: Int
    public var rejected: [Rejection]
    /// Open schools no rule or override assigns to a board.
    public var unmappedURNs: [Int]

    public struct Rejection: Sendable, Codable, Equatable {
        public var line: Int
        public var reason: String
    }
}

/// Where a rule reads a school's place from (GIAS columns; the postcode district is the postcode's outward code).
public enum SchoolBoardSource: String, Sendable, Codable, CaseIterable {
    case district, ward, constituency
    case postcodeDistrict = "postcode_district"
}

/// Schools whose `source` column equals `value` belong to the board.
public struct SchoolBoardRule: Sendable, Codable, Equatable {
    public var source: SchoolBoardSource
    public var value: String
    public var boardID: UUID

    public init(source: SchoolBoardSource, value: String, boardID: UUID) {
        self.source = source
        self.value = value
        self.boardID = boardID
    }
}

/// One school's board, whatever the rules say.
public struct SchoolBoardOverride: Sendable, Codable, Equatable {
    public var urn: Int
    public var boardID: UUID

    public init(urn: Int, boardID: UUID) {
        self.urn = urn
        self.boardID = boardID
    }
}

/// An authority's school-to-board mapping, and how the register stands under it.
public struct SchoolBoardMapping: Sendable, Codable, Equatable {
    public var rules: [SchoolBoardRule]
    public var overrides: [SchoolBoardOverride]
    /// Schools whose board the change moved (0 when only reading).
    public var remapped: Int
    /// Open schools no rule or override assigns to a board (as the import reports them).
    public var unmappedURNs: [Int]
}

/// Imports the GIAS register for one local authority into an authority's schools, in one transaction:
/// either the whole file lands or nothing does. Upserts by URN; a re-run of the same file changes nothing.
public struct SchoolImportService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let required = [
        "URN", "LA (code)", "EstablishmentName", "TypeOfEstablishment (name)", "EstablishmentStatus (name)", "OpenDate", "CloseDate",
        "PhaseOfEducation (name)", "DistrictAdministrative (name)", "AdministrativeWard (name)", "ParliamentaryConstituency (name)", "Postcode",
    ]

    public func importFile(
        _ scope: AccessScope, data: Data, laCode: String, progress: @Sendable (Int, Int) -> Void = { _, _ in }
    ) async throws -> SchoolImportReport {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "import schools")
        let file = try GIASFile(data: data)
        let missing = Self.required.filter { !file.header.contains($0) }
        guard missing.isEmpty else { throw DomainError.invalid("file", "not a GIAS establishments file: missing columns \(missing.joined(separator: ", "))") }
        let column = Dictionary(file.header.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        func value(_ row: GIASFile.Row, _ name: String) -> String { row.fields[column[name]!].trimmingCharacters(in: .whitespaces) }

        var rejected = file.malformed.map { SchoolImportReport.Rejection(line: $0.line, reason: $0.reason) }
        var skipped = 0
        var staged: [[String?]] = []
        var seen = Set<Int>()
        for (position, row) in file.rows.enumerated() {
            if position % 5_000 == 0 { progress(position, file.rows.count) }
            guard value(row, "LA (code)") == laCode else { skipped += 1; continue }
            guard let urn = Int(value(row, "URN")), urn > 0, urn < Int(Int32.max) else {
                rejected.append(.init(line: row.line, reason: "URN \"\(value(row, "URN"))\" is not a number")); continue
            }
            let name = value(row, "EstablishmentName")
            guard !name.isEmpty else { rejected.append(.init(line: row.line, reason: "URN \(urn) has no name")); continue }
            guard let openDate = GIASFile.isoDate(value(row, "OpenDate")), let closeDate = GIASFile.isoDate(value(row, "CloseDate")) else {
                rejected.append(.init(line: row.line, reason: "URN \(urn): dates must be DD-MM-YYYY")); continue
            }
            guard seen.insert(urn).inserted else { rejected.append(.init(line: row.line, reason: "URN \(urn) appears twice")); continue }
            let status = value(row, "EstablishmentStatus (name)")
            staged.append([
                String(urn), laCode, name, value(row, "TypeOfEstablishment (name)"), value(row, "PhaseOfEducation (name)"), status,
                status.hasPrefix("Closed") ? "f" : "t", openDate, closeDate, value(row, "DistrictAdministrative (name)"),
                value(row, "AdministrativeWard (name)"), value(row, "ParliamentaryConstituency (name)"), value(row, "Postcode"),
            ])
        }
        progress(file.rows.count, file.rows.count)
        let rowsRead = file.rows.count + file.malformed.count
        let stagedRows = staged
        let finalRejected = rejected
        let finalSkipped = skipped
        return try await database.transaction(scope) { connection in
            try await Self.lockMapping(connection)
            try await connection.execute("""
                CREATE TEMPORARY TABLE school_stage (
                    urn integer, la_code text, name text, establishment_type text, phase text, status text, is_open boolean,
                    open_date date, close_date date, district text, ward text, constituency text, postcode text
                ) ON COMMIT DROP
                """)
            try await connection.copyIn("COPY school_stage FROM STDIN", rows: stagedRows)
            let counts = try await connection.query(PGQuery(Self.upsertSQL)).first!
            let (added, updated, closed) = try counts.decode(Int.self, Int.self, Int.self)
            let unmapped = try await connection.query("""
                SELECT urn FROM school WHERE authority_id = app_authority_id() AND is_open AND board_id IS NULL ORDER BY urn
                """).map { try $0.decode(Int.self, at: 0) }
            let report = SchoolImportReport(
                rowsRead: rowsRead, added: added, updated: updated, unchanged: stagedRows.count - added - updated, closed: closed,
                skipped: finalSkipped, rejected: finalRejected, unmappedURNs: unmapped)
            // One event for the import (its counts), not one per school.
            try await AuditLog.record(connection, action: "schools.import", entityType: "school_register", entityID: laCode,
                                      before: nil, after: report)
            return report
        }
    }

    /// The board of the school `s` (a row with urn, district, ward, constituency, postcode): its override, else the
    /// first rule that matches, by district, ward, constituency, then postcode district. The import and a change
    /// of the rules map with this one expression, so both always agree.
    static let boardOfSchool = """
        coalesce(
                (SELECT o.board_id FROM school_board_override o WHERE o.authority_id = app_authority_id() AND o.urn = s.urn),
                (SELECT r.board_id FROM school_board_rule r WHERE r.authority_id = app_authority_id() AND r.source = 'district' AND r.value = s.district),
                (SELECT r.board_id FROM school_board_rule r WHERE r.authority_id = app_authority_id() AND r.source = 'ward' AND r.value = s.ward),
                (SELECT r.board_id FROM school_board_rule r WHERE r.authority_id = app_authority_id() AND r.source = 'constituency' AND r.value = s.constituency),
                (SELECT r.board_id FROM school_board_rule r WHERE r.authority_id = app_authority_id() AND r.source = 'postcode_district'
                    AND r.value = split_part(upper(s.postcode), ' ', 1)))
        """

    /// Assigns boards (override, then district, ward, constituency, postcode district rules) and upserts,
    /// writing only rows whose content or board changed.
    static let upsertSQL = """
        WITH mapped AS (
            SELECT s.*, \(boardOfSchool) AS board_id,
                sha256(convert_to(concat_ws('|', s.la_code, s.name, s.establishment_type, s.phase, s.status, s.open_date, s.close_date,
                                            s.district, s.ward, s.constituency, s.postcode), 'UTF8')) AS source_sha256
            FROM school_stage s
        ), closing AS (
            SELECT count(*) AS n FROM mapped m LEFT JOIN school x ON x.authority_id = app_authority_id() AND x.urn = m.urn
            WHERE NOT m.is_open AND (x.urn IS NULL OR x.is_open)
        ), written AS (
            INSERT INTO school AS x (authority_id, urn, la_code, name, establishment_type, phase, status, is_open, open_date, close_date,
                                     district, ward, constituency, postcode, board_id, source_sha256)
            SELECT app_authority_id(), urn, la_code, name, establishment_type, phase, status, is_open, open_date, close_date,
                   district, ward, constituency, postcode, board_id, source_sha256
            FROM mapped
            ON CONFLICT (authority_id, urn) DO UPDATE SET
                la_code = EXCLUDED.la_code, name = EXCLUDED.name, establishment_type = EXCLUDED.establishment_type,
                phase = EXCLUDED.phase, status = EXCLUDED.status, is_open = EXCLUDED.is_open, open_date = EXCLUDED.open_date,
                close_date = EXCLUDED.close_date, district = EXCLUDED.district, ward = EXCLUDED.ward,
                constituency = EXCLUDED.constituency, postcode = EXCLUDED.postcode, board_id = EXCLUDED.board_id,
                source_sha256 = EXCLUDED.source_sha256, imported_at = now(), updated_at = now()
            WHERE (x.source_sha256, x.board_id) IS DISTINCT FROM (EXCLUDED.source_sha256, EXCLUDED.board_id)
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), (SELECT n FROM closing) FROM written
        """

    /// Rules from a column's value to a board, e.g. North Yorkshire's districts.
    public func setRules(_ scope: AccessScope, source: String, rules: [(value: String, boardID: UUID)]) async throws {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "map schools to boards")
        try await database.transaction(scope) { connection in
            for rule in rules {
                try await connection.query("""
                    INSERT INTO school_board_rule (authority_id, source, value, board_id)
                    VALUES (app_authority_id(), \(source)::school_board_source, \(rule.value), \(rule.boardID))
                    ON CONFLICT (authority_id, source, value) DO UPDATE SET board_id = EXCLUDED.board_id
                    """)
            }
            try await AuditLog.record(connection, action: "schools.board_rules", entityType: "school_board_rule", entityID: source,
                                      before: nil, after: Dictionary(rules.map { ($0.value, $0.boardID.lowercased) }, uniquingKeysWith: { a, _ in a }))
        }
    }

    public static let maxRules = 2_000
    public static let maxOverrides = 5_000

    /// The authority's rules and overrides, with its open schools that no rule assigns (staff).
    public func mapping(_ scope: AccessScope) async throws -> SchoolBoardMapping {
        try scope.require(scope.isStaff, "see the school-to-board mapping")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await Self.readMapping(connection, remapped: 0)
        }
    }

    /// Replaces the whole mapping (admins): every rule and override, then re-maps the register at once, so the
    /// schools' boards never disagree with the rules. One audit event, with the mapping before and after.
    public func replaceMapping(_ scope: AccessScope, rules: [SchoolBoardRule], overrides: [SchoolBoardOverride]) async throws -> SchoolBoardMapping {
        try await replace(scope, rules: rules, overrides: overrides, onlySource: nil)
    }

    /// Replaces the rules of one source (the CLI's `schools rules set --source`), keeping the other sources' rules
    /// and the overrides; then re-maps the register.
    public func replaceRules(_ scope: AccessScope, source: SchoolBoardSource, values: [(value: String, boardID: UUID)]) async throws -> SchoolBoardMapping {
        try await replace(scope, rules: values.map { SchoolBoardRule(source: source, value: $0.value, boardID: $0.boardID) },
                          overrides: nil, onlySource: source)
    }

    private func replace(
        _ scope: AccessScope, rules: [SchoolBoardRule], overrides: [SchoolBoardOverride]?, onlySource: SchoolBoardSource?
    ) async throws -> SchoolBoardMapping {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "map schools to boards")
        var validator = Validator()
        validator.check(rules.count <= Self.maxRules, "rules", "must be at most \(Self.maxRules)")
        // The import compares postcode rules with the postcode's outward code in capitals ("BD23 1AB" → "BD23"), so
        // they are stored that way: "bd23" means BD23.
        let rules = rules.map { rule in
            var rule = rule
            if rule.source == .postcodeDistrict { rule.value = rule.value.trimmingCharacters(in: .whitespaces).uppercased() }
            return rule
        }
        var seenRules = Set<String>()
        for (index, rule) in rules.enumerated() {
            let field = "rules[\(index)].value"
            validator.text(rule.value, field, max: 200)
            validator.check(seenRules.insert("\(rule.source.rawValue)|\(rule.value)").inserted, field,
                            "maps \(rule.source.rawValue) \"\(rule.value)\" a second time; give each once")
        }
        if let overrides {
            validator.check(overrides.count <= Self.maxOverrides, "overrides", "must be at most \(Self.maxOverrides)")
            var seenURNs = Set<Int>()
            for (index, override) in overrides.enumerated() {
                validator.check((100_000...9_999_999).contains(override.urn), "overrides[\(index)].urn", "must be a URN of 6 or 7 digits")
                validator.check(seenURNs.insert(override.urn).inserted, "overrides[\(index)].urn", "overrides URN \(override.urn) a second time")
            }
        }
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            // Changes of the mapping (and imports) run one at a time per authority: two identical replacements at
            // once would otherwise both delete the old rows and then collide inserting the same new ones.
            try await Self.lockMapping(connection)
            let before = try await Self.readMapping(connection, remapped: 0, withUnmapped: false)
            let boardIDs = Set(rules.map(\.boardID) + (overrides ?? []).map(\.boardID))
            let known = Set(try await connection.query("""
                SELECT id FROM board WHERE authority_id = app_authority_id() AND id = ANY(\(Array(boardIDs)))
                """).map { try $0.decode(UUID.self, at: 0) })
            var boards = Validator()
            for (index, rule) in rules.enumerated() where !known.contains(rule.boardID) {
                boards.check(false, "rules[\(index)].board_id", "names a board that does not exist in the authority")
            }
            for (index, override) in (overrides ?? []).enumerated() where !known.contains(override.boardID) {
                boards.check(false, "overrides[\(index)].board_id", "names a board that does not exist in the authority")
            }
            try boards.throwIfInvalid()
            try await connection.query("""
                DELETE FROM school_board_rule WHERE authority_id = app_authority_id()
                    AND (\(onlySource?.rawValue)::school_board_source IS NULL OR source = \(onlySource?.rawValue)::school_board_source)
                """)
            if !rules.isEmpty {
                try await connection.query("""
                    INSERT INTO school_board_rule (authority_id, source, value, board_id)
                    SELECT app_authority_id(), source::school_board_source, value, board_id
                    FROM unnest(\(rules.map(\.source.rawValue))::text[], \(rules.map(\.value))::text[], \(rules.map(\.boardID))::uuid[])
                        AS r(source, value, board_id)
                    """)
            }
            if let overrides {
                try await connection.query("DELETE FROM school_board_override WHERE authority_id = app_authority_id()")
                if !overrides.isEmpty {
                    try await connection.query("""
                        INSERT INTO school_board_override (authority_id, urn, board_id)
                        SELECT app_authority_id(), urn, board_id FROM unnest(\(overrides.map(\.urn))::integer[], \(overrides.map(\.boardID))::uuid[])
                            AS o(urn, board_id)
                        """)
                }
            }
            let remapped = try await connection.query(PGQuery(Self.remapSQL)).count
            let after = try await Self.readMapping(connection, remapped: remapped)
            try await AuditLog.record(connection, action: "schools.board_mapping", entityType: "school_board_mapping",
                                      entityID: onlySource?.rawValue ?? "all", before: before, after: after)
            return after
        }
    }

    /// Moves every school of the authority whose board the mapping now gives differently (closed schools too, as
    /// the import does); returns one row per school moved.
    static let remapSQL = """
        UPDATE school AS x SET board_id = m.board_id, updated_at = now()
        FROM (SELECT s.urn, \(boardOfSchool) AS board_id FROM school s WHERE s.authority_id = app_authority_id()) AS m
        WHERE x.authority_id = app_authority_id() AND x.urn = m.urn AND x.board_id IS DISTINCT FROM m.board_id
        RETURNING x.urn
        """

    /// The transaction-scoped lock that serialises changes of one authority's mapping and its imports.
    static func lockMapping(_ connection: PGConnection) async throws {
        try await connection.query("SELECT pg_advisory_xact_lock(hashtextextended('school_board_mapping:' || app_authority_id()::text, 0))")
    }

    static func readMapping(_ connection: PGConnection, remapped: Int, withUnmapped: Bool = true) async throws -> SchoolBoardMapping {
        let rules = try await connection.query("""
            SELECT source::text, value, board_id FROM school_board_rule WHERE authority_id = app_authority_id() ORDER BY source, value
            """).map { row in
            let (source, value, board) = try row.decode(String.self, String.self, UUID.self)
            return SchoolBoardRule(source: try storedEnum(source, column: "school_board_rule.source"), value: value, boardID: board)
        }
        let overrides = try await connection.query("""
            SELECT urn, board_id FROM school_board_override WHERE authority_id = app_authority_id() ORDER BY urn
            """).map { row in
            let (urn, board) = try row.decode(Int.self, UUID.self)
            return SchoolBoardOverride(urn: urn, boardID: board)
        }
        let unmapped = withUnmapped ? try await connection.query("""
            SELECT urn FROM school WHERE authority_id = app_authority_id() AND is_open AND board_id IS NULL ORDER BY urn
            """).map { try $0.decode(Int.self, at: 0) } : []
        return SchoolBoardMapping(rules: rules, overrides: overrides, remapped: remapped, unmappedURNs: unmapped)
    }

    public static let northYorkshireDistricts: [(district: String, boardCode: String)] = [
        ("Craven", "CRA"), ("Harrogate", "HRK"), ("Scarborough", "CAR"), ("Ryedale", "CAR"), ("Scarborough and Ryedale", "CAR"),
        ("Hambleton", "HAR"), ("Richmondshire", "HAR"), ("Hambleton and Richmondshire", "HAR"), ("Selby", "SEL"),
    ]

    public static let defaultConcernCategories: [(String, String)] = [
        ("ofsted_inadequate", "Ofsted: inadequate"), ("ofsted_requires_improvement", "Ofsted: requires improvement"),
        ("safeguarding", "Safeguarding concern"), ("local_concern", "Local authority concern"),
    ]

    /// Adds (or renames) a category of concern.
    public func setConcernCategory(_ scope: AccessScope, code: String, name: String) async throws {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "manage concern categories")
        var validator = Validator()
        validator.check(code.isWholeMatch(of: "^[a-z][a-z0-9_]{1,40}$"), "code", "must be lower-case letters, digits and _")
        validator.text(name, "name", max: 200)
        try validator.throwIfInvalid()
        try await database.transaction(scope) { connection in
            try await connection.query("""
                INSERT INTO concern_category (authority_id, code, name) VALUES (app_authority_id(), \(code), \(name))
                ON CONFLICT (authority_id, code) DO UPDATE SET name = EXCLUDED.name
                """)
            try await AuditLog.record(connection, action: "schools.concern_category", entityType: "concern_category", entityID: code,
                                      before: nil, after: ["code": code, "name": name])
        }
    }

    public func seedConcernCategories(_ scope: AccessScope) async throws {
        try await database.transaction(scope) { connection in
            for (code, name) in Self.defaultConcernCategories {
                try await connection.query("""
                    INSERT INTO concern_category (authority_id, code, name) VALUES (app_authority_id(), \(code), \(name))
                    ON CONFLICT DO NOTHING
                    """)
            }
            try await AuditLog.record(connection, action: "schools.concern_categories", entityType: "concern_category", entityID: "defaults",
                                      before: nil, after: Dictionary(Self.defaultConcernCategories, uniquingKeysWith: { a, _ in a }))
        }
    }
}
