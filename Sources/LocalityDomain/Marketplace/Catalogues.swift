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

    public func socialValueMeasures(_ scope: AccessScope, authorityID: UUID? = nil) async throws -> [SocialValueMeasure] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see social-value measures")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                SELECT id, authority_id, code, name, unit, proxy_value_pence FROM social_value_measure
                WHERE retired_at IS NULL AND (\(authorityID)::uuid IS NULL OR authority_id = \(authorityID))
                ORDER BY code
                """).map { row in
                let (id, authority, code, name, unit, proxy) = try row.decode(UUID.self, UUID.self, String.self, String.self, String.self, Int.self)
                return SocialValueMeasure(id: id, authorityID: authority, code: code, name: name, unit: unit, proxyValuePence: proxy)
            }
        }
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
