public import Foundation
import LocalityPostgres

/// What a supplier declares when seeking admission, from the service specification.
public struct AdmissionDeclarations: Sendable, Codable, Equatable {
    public var safeguardingPolicy: Bool
    public var safeguardingLead: String
    public var insuranceProvider: String
    public var insuranceExpiresOn: String      // YYYY-MM-DD
    public var dbsChecks: Bool
    public var businessContinuityPlan: Bool
    public var dataProtectionCompliance: Bool  // DPA 2018 / UK GDPR
    public var environmentalPolicy: Bool

    public init(safeguardingPolicy: Bool, safeguardingLead: String, insuranceProvider: String, insuranceExpiresOn: String,
                dbsChecks: Bool, businessContinuityPlan: Bool, dataProtectionCompliance: Bool, environmentalPolicy: Bool) {
        self.safeguardingPolicy = safeguardingPolicy
        self.safeguardingLead = safeguardingLead
        self.insuranceProvider = insuranceProvider
        self.insuranceExpiresOn = insuranceExpiresOn
        self.dbsChecks = dbsChecks
        self.businessContinuityPlan = businessContinuityPlan
        self.dataProtectionCompliance = dataProtectionCompliance
        self.environmentalPolicy = environmentalPolicy
    }
}

public enum AdmissionStatus: String, Sendable, Codable, CaseIterable {
    case pending, approved, rejected, suspended
}

public enum AdmissionDecision: String, Sendable, CaseIterable {
    case approve, reject, suspend
}

public struct Admission: Sendable, Codable, Equatable {
    public var authorityID: UUID
    public var authorityName: String
    public var supplierID: UUID
    public var supplierName: String
    public var status: AdmissionStatus
    public var declarations: AdmissionDeclarations
    public var decisionReason: String?
    public var decidedAt: Date?
    public var createdAt: Date
    public var updatedAt: Date
}

/// A supplier's admission to an authority's framework: the supplier applies with declarations, the
/// authority admin approves, rejects or suspends with a reason. Only approved suppliers see that
/// authority's open projects in detail, ask questions and bid (enforced by RLS too).
public struct AdmissionService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let selectSQL = """
        SELECT a.authority_id, au.name, a.supplier_id, s.name, a.status::text, a.declarations::text, a.decision_reason,
               a.decided_at, a.created_at, a.updated_at
        FROM supplier_admission a JOIN authority au ON au.id = a.authority_id JOIN supplier s ON s.id = a.supplier_id
        """

    /// Applies (or re-applies after a rejection) to an authority, found by slug or id.
    public func apply(_ scope: AccessScope, authority: String, _ declarations: AdmissionDeclarations) async throws -> Admission {
        try scope.require(scope.supplierID != nil && scope.has(.supplierUser), "apply for admission")
        let insuranceExpiry = try Self.validate(declarations)
        return try await database.transaction(scope) { connection in
            guard let authorityID = try await connection.query("""
                SELECT id FROM authority WHERE slug = \(authority.lowercased()) OR id::text = \(authority.lowercased())
                """).first?.decode(UUID.self, at: 0)
            else { throw DomainError.invalid("authority", "is not an authority on this service") }
            // Insert first, skipping a row that exists (or is being inserted by a concurrent copy of this request,
            // which we then wait for): copies of one application all succeed, the later ones as resubmissions.
            let inserted = try await connection.query("""
                INSERT INTO supplier_admission (authority_id, supplier_id, declarations, insurance_expires_on)
                VALUES (\(authorityID), app_supplier_id(), \(try Self.json(declarations))::jsonb, \(insuranceExpiry)::date)
                ON CONFLICT (authority_id, supplier_id) DO NOTHING
                """).affectedRows == 1
            let existing = inserted ? nil : try await Self.fetch(connection, authorityID: authorityID, supplierID: scope.supplierID!, forUpdate: true)
            if let existing {
                guard existing.status == .rejected || existing.status == .pending else {
                    throw DomainError.conflict("Your admission is \(existing.status.rawValue); it cannot be re-submitted.")
                }
                try await connection.query("""
                    UPDATE supplier_admission SET status = 'pending', declarations = \(try Self.json(declarations))::jsonb,
                        insurance_expires_on = \(insuranceExpiry)::date, decision_reason = NULL, decided_at = NULL
                    WHERE authority_id = \(authorityID) AND supplier_id = app_supplier_id()
                    """)
            }
            let after = try await Self.fetch(connection, authorityID: authorityID, supplierID: scope.supplierID!)!
            try await AuditLog.record(connection, action: existing == nil ? "admission.apply" : "admission.reapply",
                                      entityType: "admission", entityID: "\(authorityID.lowercased)/\(scope.supplierID!.lowercased)",
                                      before: existing, after: after)
            return after
        }
    }

    /// A supplier's own admissions, or an authority's applications (staff), most recently changed first, a page at
    /// a time. The key is (updated_at, supplier_id) rather than the authority: a supplier's page spans authorities, a
    /// staff member's spans suppliers, and (authority, supplier) is unique, so within either view the key is unique.
    public func list(_ scope: AccessScope, status: AdmissionStatus? = nil, page: PageRequest) async throws -> Page<Admission> {
        try scope.require(scope.supplierID != nil || (scope.isStaff && scope.hasAny(.authorityAdmin, .auditor, .lim, .hosi)),
                          "see admissions")
        let afterUpdated = page.after?.first.flatMap(PGDateFormat.date) ?? Date.distantFuture
        let afterAuthority = page.after?.dropFirst().first.flatMap(UUID.init(uuidString:)) ?? UUID.zero
        let afterSupplier = page.after?.dropFirst(2).first.flatMap(UUID.init(uuidString:)) ?? UUID.zero
        let rows = try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("""
                \(unsafeSQL: Self.selectSQL)
                WHERE (\(status?.rawValue)::text IS NULL OR a.status::text = \(status?.rawValue))
                  AND (a.updated_at < \(afterUpdated)
                       OR (a.updated_at = \(afterUpdated) AND (a.authority_id, a.supplier_id) > (\(afterAuthority), \(afterSupplier))))
                ORDER BY a.updated_at DESC, a.authority_id, a.supplier_id LIMIT \(page.limit + 1)
                """).map(Self.decode)
        }
        return page.page(rows) { [PGDateFormat.string($0.updatedAt), $0.authorityID.uuidString, $0.supplierID.uuidString] }
    }

    /// The authority admin's decision: approve, reject or suspend, with a reason (required except to approve).
    public func decide(_ scope: AccessScope, supplierID: UUID, decision: AdmissionDecision, reason: String?) async throws -> Admission {
        try scope.require(scope.isStaff && scope.has(.authorityAdmin), "decide admissions")
        var validator = Validator()
        validator.text(reason, "reason", required: decision != .approve, max: 1000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            guard let before = try await Self.fetch(connection, authorityID: scope.authorityID!, supplierID: supplierID, forUpdate: true) else {
                throw DomainError.notFound("admission")
            }
            let next: AdmissionStatus
            switch (decision, before.status) {
            case (.approve, .pending), (.approve, .suspended): next = .approved
            case (.reject, .pending): next = .rejected
            case (.suspend, .approved): next = .suspended
            default:
                throw DomainError.conflict("An admission that is \(before.status.rawValue) cannot be given the decision \(decision.rawValue).")
            }
            try await connection.query("""
                UPDATE supplier_admission SET status = \(next.rawValue)::admission_status, decision_reason = \(reason), decided_at = now()
                WHERE authority_id = app_authority_id() AND supplier_id = \(supplierID)
                """)
            let after = try await Self.fetch(connection, authorityID: scope.authorityID!, supplierID: supplierID)!
            try await AuditLog.record(connection, action: "admission.\(decision.rawValue)", entityType: "admission",
                                      entityID: "\(scope.authorityID!.lowercased)/\(supplierID.lowercased)", before: before, after: after)
            return after
        }
    }

    /// Operator shortcut (demo data and tests): applies and approves in one go.
    public func admit(authorityID: UUID, supplierID: UUID, declarations: AdmissionDeclarations, osUser: String = OperatorIdentity.osUser) async throws {
        let expiry = try Self.validate(declarations)
        try await database.transaction(.operatorScope(authorityID: authorityID, osUser: osUser)) { connection in
            try await connection.query("""
                INSERT INTO supplier_admission (authority_id, supplier_id, status, declarations, insurance_expires_on, decided_at, decision_reason)
                VALUES (app_authority_id(), \(supplierID), 'approved', \(try Self.json(declarations))::jsonb, \(expiry)::date, now(), 'admitted by the operator')
                """)
            let after = try await Self.fetch(connection, authorityID: authorityID, supplierID: supplierID)!
            try await AuditLog.record(connection, action: "admission.approve", entityType: "admission",
                                      entityID: "\(authorityID.lowercased)/\(supplierID.lowercased)", before: nil, after: after)
        }
    }

    static func fetch(_ connection: PGConnection, authorityID: UUID, supplierID: UUID, forUpdate: Bool = false) async throws -> Admission? {
        try await connection.query("""
            \(unsafeSQL: selectSQL) WHERE a.authority_id = \(authorityID) AND a.supplier_id = \(supplierID)
            \(unsafeSQL: forUpdate ? "FOR UPDATE OF a" : "")
            """).first.map(decode)
    }

    /// Returns the insurance expiry date text once validated.
    static func validate(_ declarations: AdmissionDeclarations) throws -> String {
        var validator = Validator()
        validator.check(declarations.safeguardingPolicy, "declarations.safeguarding_policy", "a safeguarding policy is required")
        validator.text(declarations.safeguardingLead, "declarations.safeguarding_lead", max: 200)
        validator.text(declarations.insuranceProvider, "declarations.insurance_provider", max: 200)
        let expiry = CalendarDate.parse(declarations.insuranceExpiresOn)
        validator.check(expiry != nil, "declarations.insurance_expires_on", "must be a date (YYYY-MM-DD)")
        if let expiry { validator.check(expiry > Date(), "declarations.insurance_expires_on", "insurance must not have expired") }
        validator.check(declarations.dbsChecks, "declarations.dbs_checks", "DBS checks are required")
        validator.check(declarations.businessContinuityPlan, "declarations.business_continuity_plan", "a business continuity plan is required")
        validator.check(declarations.dataProtectionCompliance, "declarations.data_protection_compliance",
                        "compliance with the DPA 2018 and UK GDPR is required")
        validator.check(declarations.environmentalPolicy, "declarations.environmental_policy", "an environmental policy is required")
        try validator.throwIfInvalid()
        return declarations.insuranceExpiresOn
    }

    static func json(_ value: some Encodable) throws -> String {
        String(decoding: try AuditLog.auditEncoder.encode(value), as: UTF8.self)
    }

    static func decode(_ row: PGRow) throws -> Admission {
        let (authorityID, authorityName, supplierID, supplierName, status, declarations, reason, decidedAt, createdAt, updatedAt) =
            try row.decode(UUID.self, String.self, UUID.self, String.self, String.self, String.self, String?.self, Date?.self,
                           Date.self, Date.self)
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return Admission(
            authorityID: authorityID, authorityName: authorityName, supplierID: supplierID, supplierName: supplierName,
            status: try storedEnum(status, column: "supplier_admission.status"),
            declarations: try decoder.decode(AdmissionDeclarations.self, from: Data(declarations.utf8)),
            decisionReason: reason, decidedAt: decidedAt, createdAt: createdAt, updatedAt: updatedAt)
    }
}

/// Calendar dates (`YYYY-MM-DD`) as UTC midnights.
///
/// By arithmetic on the proleptic Gregorian calendar (days since 1970-01-01), not through `Calendar`, a regular
/// expression and `String(format:)`: dates are parsed and printed in most requests (KPI target dates, reporting
/// periods, term dates), and each of those cost tens of microseconds.
public enum CalendarDate {
    public static func parse(_ text: String) -> Date? {
        var text = text
        return text.withUTF8 { bytes -> Date? in
            // Exactly `DDDD-DD-DD` in ASCII digits: nothing before or after (no sign, no space, no line break).
            guard bytes.count == 10, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-") else { return nil }
            func number(_ range: Range<Int>) -> Int? {
                var value = 0
                for index in range {
                    let digit = Int(bytes[index]) - 48
                    guard (0...9).contains(digit) else { return nil }
                    value = value * 10 + digit
                }
                return value
            }
            // Years before 1000 are typing mistakes here, and PostgreSQL would print them differently.
            guard let year = number(0..<4), year >= 1000, let month = number(5..<7), (1...12).contains(month),
                  let day = number(8..<10), day >= 1, day <= daysIn(month: month, year: year) else { return nil }
            return Date(timeIntervalSince1970: Double(daysSinceEpoch(year: year, month: month, day: day)) * 86_400)
        }
    }

    public static func format(_ date: Date) -> String {
        let days = (date.timeIntervalSince1970 / 86_400).rounded(.down)
        guard days.isFinite, abs(days) < 3_000_000 else { return calendarFormat(date) }
        let (year, month, day) = civil(daysSinceEpoch: Int(days))
        guard (1...9999).contains(year) else { return calendarFormat(date) }
        var bytes = [UInt8](repeating: UInt8(ascii: "-"), count: 10)
        func put(_ value: Int, at offset: Int, width: Int) {
            var value = value
            for index in stride(from: offset + width - 1, through: offset, by: -1) {
                bytes[index] = UInt8(48 + value % 10)
                value /= 10
            }
        }
        put(year, at: 0, width: 4)
        put(month, at: 5, width: 2)
        put(day, at: 8, width: 2)
        return String(decoding: bytes, as: UTF8.self)
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Howard Hinnant's `days_from_civil`: days from 1970-01-01 to the given Gregorian date.
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// Its inverse, `civil_from_days`.
    static func civil(daysSinceEpoch days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// Outside years 1–9999 (never a date of ours): as before, through the calendar (its years count eras).
    private static func calendarFormat(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        let parts = calendar.dateComponents([.year, .month, .day], from: date)
        return String(format: "%04d-%02d-%02d", parts.year ?? 0, parts.month ?? 0, parts.day ?? 0)
    }
}
