public import Foundation
import LocalityPostgres

public enum ThemeCategory: String, Sendable, Codable, CaseIterable {
    case send
    case schoolImprovement = "school_improvement"
}

public struct Theme: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID
    public var category: ThemeCategory
    public var name: String
    public var description: String
    public var exampleOutcomes: String
    public var retired: Bool
}

public struct SocialValueMeasure: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID
    public var code: String
    public var name: String
    public var unit: String
    public var proxyValuePence: Int
    public var retired: Bool
}

/// A change to a measure: nil leaves a field as it is. The code is fixed (bids name measures by code).
public struct SocialValueMeasureChanges: Sendable, Equatable {
    public var name: String?
    public var unit: String?
    public var proxyValuePence: Int?
    public var retired: Bool?

    public init(name: String? = nil, unit: String? = nil, proxyValuePence: Int? = nil, retired: Bool? = nil) {
        self.name = name
        self.unit = unit
        self.proxyValuePence = proxyValuePence
        self.retired = retired
    }
}

/// Each authority's theme catalogue and its TOMs-style social-value measures. Staff and admitted suppliers
/// read them; authority admins add and retire themes.
public struct CatalogueService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// North Yorkshire's themes, from its service specification.
    public static let northYorkshireThemes: [(ThemeCategory, String, String)] = [
        (.send, "Workforce training", "Staff confident to identify and meet needs earlier; fewer escalations to specialist services."),
        (.send, "Specific support for pupils or groups", "Improved attendance, engagement and progress for the children supported."),
        (.send, "Targeted support for schools", "Schools able to sustain inclusive practice; reduced exclusions."),
        (.send, "Evidence-based research and pilots", "Tested approaches with evaluated outcomes, ready to scale."),
        (.send, "Addressing barriers to access", "More children accessing provision locally; reduced travel and waiting times."),
        (.schoolImprovement, "Leadership and governance", "Stronger leadership capacity and effective governance."),
        (.schoolImprovement, "Pupils and closing the gap", "Disadvantaged pupils' attainment gap narrowed."),
        (.schoolImprovement, "Curriculum development", "A coherent, well-sequenced curriculum taught well."),
    ]

    /// A starting set of TOMs-style measures (proxy values in pence per unit).
    public static let defaultSocialValueMeasures: [(String, String, String, Int)] = [
        ("NT1", "Local people employed to deliver the contract", "FTE", 3_047_200),
        ("NT10", "Apprenticeship weeks on the contract", "weeks", 21_900),
        ("NT13", "Hours of support to local schools and voluntary groups (staff volunteering)", "hours", 1_700),
        ("NT18", "Spend with local micro, small and medium enterprises", "£ spent", 17),
        ("NT28", "Donations or in-kind contributions to local community projects", "£ value", 100),
    ]

    static let themeColumns = "id, authority_id, category::text, name, description, example_outcomes, retired_at IS NOT NULL"

    public func themes(_ scope: AccessScope, authorityID: UUID? = nil, includeRetired: Bool = false) async throws -> [Theme] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see themes")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT \(unsafeSQL: Self.themeColumns) FROM theme
                WHERE (\(authorityID)::uuid IS NULL OR authority_id = \(authorityID)) AND (\(includeRetired) OR retired_at IS NULL)
                ORDER BY category, name
                """).map(Self.decodeTheme)
        }
    }

    public func createTheme(_ scope: AccessScope, category: ThemeCategory, name: String, description: String, exampleOutcomes: String) async throws -> Theme {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "add themes")
        var validator = Validator()
        validator.text(name, "name", max: 200)
        validator.text(description, "description", required: false, max: 2000)
        validator.text(exampleOutcomes, "example_outcomes", required: false, max: 4000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let theme = try Self.decodeTheme(try await connection.query("""
                INSERT INTO theme (authority_id, category, name, description, example_outcomes)
                VALUES (app_authority_id(), \(category.rawValue)::theme_category, \(name), \(description), \(exampleOutcomes))
                RETURNING \(unsafeSQL: Self.themeColumns)
                """).first!)
            try await AuditLog.record(connection, action: "theme.create", entityType: "theme", entityID: theme.id.lowercased,
                                      before: nil, after: theme)
            return theme
        }
    }

    /// Retires (or restores) a theme: retired themes stay on existing projects but cannot be chosen for new ones.
    public func setThemeRetired(_ scope: AccessScope, id: UUID, retired: Bool) async throws -> Theme {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "retire themes")
        return try await database.transaction(scope) { connection in
            guard let row = try await connection.query("SELECT \(unsafeSQL: Self.themeColumns) FROM theme WHERE id = \(id) FOR UPDATE").first else {
                throw DomainError.notFound("theme")
            }
            let before = try Self.decodeTheme(row)
            let after = try Self.decodeTheme(try await connection.query("""
                UPDATE theme SET retired_at = CASE WHEN \(retired) THEN coalesce(retired_at, now()) ELSE NULL END
                WHERE id = \(id) AND authority_id = app_authority_id() RETURNING \(unsafeSQL: Self.themeColumns)
                """).first!)
            try await AuditLog.record(connection, action: retired ? "theme.retire" : "theme.restore", entityType: "theme",
                                      entityID: id.lowercased, before: before, after: after)
            return after
        }
    }

    static let measureColumns = "id, authority_id, code, name, unit, proxy_value_pence, retired_at IS NOT NULL"

    public func socialValueMeasures(_ scope: AccessScope, authorityID: UUID? = nil, includeRetired: Bool = false) async throws -> [SocialValueMeasure] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see social-value measures")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT \(unsafeSQL: Self.measureColumns) FROM social_value_measure
                WHERE (\(includeRetired) OR retired_at IS NULL) AND (\(authorityID)::uuid IS NULL OR authority_id = \(authorityID))
                ORDER BY code
                """).map(Self.decodeMeasure)
        }
    }

    /// Adds a measure to the admin's authority. A code already used (retired or not) is a 409
    /// (`duplicate-measure`, from the unique constraint, so two concurrent adds cannot both land).
    public func createSocialValueMeasure(
        _ scope: AccessScope, code: String, name: String, unit: String, proxyValuePence: Int
    ) async throws -> SocialValueMeasure {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "add social-value measures")
        var validator = Validator()
        validator.check(code.isWholeMatch(of: "^[A-Za-z0-9._-]{1,20}$"), "code",
                        "must be 1–20 letters, digits, '.', '_' or '-'")
        Self.validateMeasure(&validator, name: name, unit: unit, proxyValuePence: proxyValuePence)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let measure = try Self.decodeMeasure(try await connection.query("""
                INSERT INTO social_value_measure (authority_id, code, name, unit, proxy_value_pence)
                VALUES (app_authority_id(), \(code), \(name), \(unit), \(proxyValuePence))
                RETURNING \(unsafeSQL: Self.measureColumns)
                """).first!)
            try await AuditLog.record(connection, action: "social_value_measure.create", entityType: "social_value_measure",
                                      entityID: measure.id.lowercased, before: nil, after: measure)
            return measure
        }
    }

    /// Changes a measure's name, unit or proxy value, or retires (restores) it. Retired measures stay on the bids
    /// that used them but are no longer offered. Under the row's lock, so concurrent edits apply one after another.
    public func updateSocialValueMeasure(_ scope: AccessScope, id: UUID, _ changes: SocialValueMeasureChanges) async throws -> SocialValueMeasure {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "change social-value measures")
        var validator = Validator()
        Self.validateMeasure(&validator, name: changes.name, unit: changes.unit, proxyValuePence: changes.proxyValuePence)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            guard let row = try await connection.query("""
                SELECT \(unsafeSQL: Self.measureColumns) FROM social_value_measure
                WHERE id = \(id) AND authority_id = app_authority_id() FOR UPDATE
                """).first
            else { throw DomainError.notFound("social-value measure") }
            let before = try Self.decodeMeasure(row)
            let after = try Self.decodeMeasure(try await connection.query("""
                UPDATE social_value_measure SET name = coalesce(\(changes.name), name), unit = coalesce(\(changes.unit), unit),
                    proxy_value_pence = coalesce(\(changes.proxyValuePence), proxy_value_pence),
                    retired_at = CASE WHEN \(changes.retired)::boolean IS NULL THEN retired_at
                                      WHEN \(changes.retired) THEN coalesce(retired_at, now()) ELSE NULL END
                WHERE id = \(id) AND authority_id = app_authority_id() RETURNING \(unsafeSQL: Self.measureColumns)
                """).first!)
            try await AuditLog.record(connection, action: "social_value_measure.update", entityType: "social_value_measure",
                                      entityID: id.lowercased, before: before, after: after)
            return after
        }
    }

    /// The table's CHECKs, told as field errors (nil: not being changed).
    static func validateMeasure(_ validator: inout Validator, name: String?, unit: String?, proxyValuePence: Int?) {
        validator.text(name, "name", required: false, max: 300)
        if let name { validator.check(!name.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "name", "must not be blank") }
        validator.text(unit, "unit", required: false, max: 100)
        if let unit { validator.check(!unit.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "unit", "must not be blank") }
        if let proxyValuePence { validator.check(proxyValuePence >= 0, "proxy_value_pence", "must not be negative") }
    }

    static func decodeMeasure(_ row: PGRow) throws -> SocialValueMeasure {
        let (id, authority, code, name, unit, proxy, retired) = try row.decode(
            UUID.self, UUID.self, String.self, String.self, String.self, Int.self, Bool.self)
        return SocialValueMeasure(id: id, authorityID: authority, code: code, name: name, unit: unit, proxyValuePence: proxy, retired: retired)
    }

    /// Seeds the themes and measures of a new authority (operator, demo).
    public func seedDefaults(_ scope: AccessScope) async throws {
        try await database.transaction(scope) { connection in
            for (category, name, outcomes) in Self.northYorkshireThemes {
                let theme = try Self.decodeTheme(try await connection.query("""
                    INSERT INTO theme (authority_id, category, name, example_outcomes)
                    VALUES (app_authority_id(), \(category.rawValue)::theme_category, \(name), \(outcomes))
                    RETURNING \(unsafeSQL: Self.themeColumns)
                    """).first!)
                try await AuditLog.record(connection, action: "theme.create", entityType: "theme", entityID: theme.id.lowercased,
                                          before: nil, after: theme)
            }
            try await Self.seedDefaultMeasures(connection)
        }
    }

    /// The default social-value measures (TOMs-style), for an authority that lacks them; every new authority
    /// gets them when it is created, so its first project can ask for social value.
    static func seedDefaultMeasures(_ connection: PGConnection) async throws {
        for (code, name, unit, proxy) in Self.defaultSocialValueMeasures {
            guard let row = try await connection.query("""
                INSERT INTO social_value_measure (authority_id, code, name, unit, proxy_value_pence)
                VALUES (app_authority_id(), \(code), \(name), \(unit), \(proxy))
                ON CONFLICT ON CONSTRAINT social_value_measure_code_unique DO NOTHING RETURNING id
                """).first
            else { continue }
            try await AuditLog.record(connection, action: "social_value_measure.create", entityType: "social_value_measure",
                                      entityID: try row.decode(UUID.self, at: 0).lowercased, before: nil,
                                      after: ["code": code, "name": name, "unit": unit, "proxy_value_pence": String(proxy)])
        }
    }

    static func decodeTheme(_ row: PGRow) throws -> Theme {
        let (id, authorityID, category, name, description, outcomes, retired) = try row.decode(
            UUID.self, UUID.self, String.self, String.self, String.self, String.self, Bool.self)
        return Theme(id: id, authorityID: authorityID, category: try storedEnum(category, column: "theme.category"), name: name,
                     description: description, exampleOutcomes: outcomes, retired: retired)
    }
}
