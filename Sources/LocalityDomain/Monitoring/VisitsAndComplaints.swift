public import Foundation
import LocalityPostgres

public struct MonitoringVisit: Sendable, Codable, Equatable {
    public var id: UUID
    public var visitDate: String
    public var kind: String
    public var attendees: String
    public var findings: String
    public var followUps: String
}

public struct Complaint: Sendable, Codable, Equatable {
    public var id: UUID
    public var receivedOn: String
    public var nature: String
    public var actionTaken: String
    public var resolution: String?
    public var resolvedOn: String?
}

/// Monitoring visits (planned or unannounced) and the complaints log of a contract: the board's LIMs keep
/// them, both parties read them.
public struct ContractRecordsService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    public func visits(_ scope: AccessScope, contractID: UUID) async throws -> [MonitoringVisit] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see monitoring visits")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await ContractService.fetch(connection, id: contractID)
            return try await Self.visits(connection, contractID: contractID)
        }
    }

    public func recordVisit(_ scope: AccessScope, contractID: UUID, date: String, kind: String, attendees: String, findings: String,
                            followUps: String) async throws -> MonitoringVisit {
        var validator = Validator()
        validator.check(CalendarDate.parse(date) != nil, "visit_date", "must be a date (YYYY-MM-DD)")
        validator.check(["planned", "unannounced"].contains(kind), "kind", "must be planned or unannounced")
        validator.text(attendees, "attendees", max: 2000)
        validator.text(findings, "findings", required: false, max: 10_000)
        validator.text(followUps, "follow_ups", required: false, max: 10_000)
        try validator.throwIfInvalid()
        return try await asBoard(scope, contractID: contractID, action: "contract.visit") { connection in
            let id = try await connection.query("""
                INSERT INTO monitoring_visit (authority_id, contract_id, visit_date, kind, attendees, findings, follow_ups, recorded_by)
                SELECT authority_id, id, \(date)::date, \(kind), \(attendees), \(findings), \(followUps), current_setting('app.actor')
                FROM contract WHERE id = \(contractID) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            return try await Self.visits(connection, contractID: contractID).first { $0.id == id }!
        }
    }

    public func complaints(_ scope: AccessScope, contractID: UUID) async throws -> [Complaint] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see complaints")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await ContractService.fetch(connection, id: contractID)
            return try await Self.complaints(connection, contractID: contractID)
        }
    }

    public func logComplaint(_ scope: AccessScope, contractID: UUID, receivedOn: String, nature: String, actionTaken: String) async throws -> Complaint {
        var validator = Validator()
        validator.check(CalendarDate.parse(receivedOn) != nil, "received_on", "must be a date (YYYY-MM-DD)")
        validator.text(nature, "nature", max: 4000)
        validator.text(actionTaken, "action_taken", required: false, max: 4000)
        try validator.throwIfInvalid()
        return try await asBoard(scope, contractID: contractID, action: "contract.complaint") { connection in
            let id = try await connection.query("""
                INSERT INTO complaint (authority_id, contract_id, received_on, nature, action_taken, recorded_by)
                SELECT authority_id, id, \(receivedOn)::date, \(nature), \(actionTaken), current_setting('app.actor')
                FROM contract WHERE id = \(contractID) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            return try await Self.complaints(connection, contractID: contractID).first { $0.id == id }!
        }
    }

    public func resolveComplaint(_ scope: AccessScope, contractID: UUID, complaintID: UUID, resolution: String, resolvedOn: String,
                                 actionTaken: String?) async throws -> Complaint {
        var validator = Validator()
        validator.text(resolution, "resolution", max: 4000)
        validator.check(CalendarDate.parse(resolvedOn) != nil, "resolved_on", "must be a date (YYYY-MM-DD)")
        try validator.throwIfInvalid()
        return try await asBoard(scope, contractID: contractID, action: "contract.complaint_resolved") { connection in
            guard let complaint = try await Self.complaints(connection, contractID: contractID).first(where: { $0.id == complaintID }) else {
                throw DomainError.notFound("complaint")
            }
            if complaint.resolvedOn != nil { throw DomainError.conflict("The complaint is already resolved.") }
            if resolvedOn < complaint.receivedOn { throw DomainError.invalid("resolved_on", "must not be before it was received") }
            // Conditional on still being open: of two resolutions at once, the second finds it resolved.
            let resolved = try await connection.query("""
                UPDATE complaint SET resolution = \(resolution), resolved_on = \(resolvedOn)::date,
                    action_taken = coalesce(\(actionTaken), action_taken) WHERE id = \(complaintID) AND resolved_on IS NULL
                """).affectedRows
            if resolved == 0 { throw DomainError.conflict("The complaint is already resolved.") }
            return try await Self.complaints(connection, contractID: contractID).first { $0.id == complaintID }!
        }
    }

    private func asBoard<R: Encodable & Sendable>(
        _ scope: AccessScope, contractID: UUID, action: String, _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        try scope.require(scope.isStaff && scope.has(.lim), "keep contract records")
        return try await database.transaction(scope) { connection in
            let contract = try await ContractService.fetch(connection, id: contractID)
            guard try await ContractService.party(connection, contract) == .board else {
                throw DomainError.forbidden("Only the board's LIMs keep this contract's records.")
            }
            let result = try await body(connection)
            try await AuditLog.record(connection, action: action, entityType: "contract", entityID: contractID.lowercased, before: nil, after: result)
            return result
        }
    }

    static func visits(_ connection: PGConnection, contractID: UUID) async throws -> [MonitoringVisit] {
        try await connection.query("""
            SELECT id, visit_date::text, kind, attendees, findings, follow_ups FROM monitoring_visit
            WHERE contract_id = \(contractID) ORDER BY visit_date, created_at, id
            """).map { row in
            let (id, date, kind, attendees, findings, followUps) = try row.decode(UUID.self, String.self, String.self, String.self, String.self, String.self)
            return MonitoringVisit(id: id, visitDate: date, kind: kind, attendees: attendees, findings: findings, followUps: followUps)
        }
    }

    static func complaints(_ connection: PGConnection, contractID: UUID) async throws -> [Complaint] {
        try await connection.query("""
            SELECT id, received_on::text, nature, action_taken, resolution, resolved_on::text FROM complaint
            WHERE contract_id = \(contractID) ORDER BY received_on, created_at, id
            """).map { row in
            let (id, received, nature, action, resolution, resolved) = try row.decode(
                UUID.self, String.self, String.self, String.self, String?.self, String?.self)
            return Complaint(id: id, receivedOn: received, nature: nature, actionTaken: action, resolution: resolution, resolvedOn: resolved)
        }
    }
}
