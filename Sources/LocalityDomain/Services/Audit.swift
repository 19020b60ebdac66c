public import Foundation
import LocalityPostgres

public struct AuditEvent: Sendable, Equatable {
    public var id: UUID
    public var seq: Int
    public var occurredAt: Date
    public var actor: String
    public var action: String
    public var entityType: String
    public var entityID: String
    /// The JSON text of the entity before and after the change (nil for creations / deletions).
    public var before: String?
    public var after: String?
    public var requestID: String?
}

public struct AuditFilter: Sendable {
    public var entityType: String?
    public var entityID: String?
    public var actor: String?
    public var from: Date?
    public var to: Date?

    public init(entityType: String? = nil, entityID: String? = nil, actor: String? = nil, from: Date? = nil, to: Date? = nil) {
        self.entityType = entityType
        self.entityID = entityID
        self.actor = actor
        self.from = from
        self.to = to
    }
}

/// The result of walking one hash chain.
public struct AuditChainReport: Sendable, Equatable {
    public var chainID: UUID
    public var events: Int
    /// The first event that does not verify, and why; nil when the chain is intact.
    public var firstBadSeq: Int?
    public var problem: String?

    public var isIntact: Bool { problem == nil }
}

public struct AuditService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// Newest first; for authority admins and auditors.
    public func list(_ scope: AccessScope, filter: AuditFilter, page: PageRequest) async throws -> Page<AuditEvent> {
        try scope.require(scope.isStaff && scope.hasAny(.authorityAdmin, .auditor), "read the audit log")
        let beforeSeq = page.after?.first.flatMap { Int($0) } ?? Int(Int64.max)
        // Read-write: the chain is sealed first (migration 0028), in the same transaction, so that every event
        // committed so far has its place (seq) in the chain; one not yet sealed (seq < 0) is never listed.
        let events = try await database.transaction(scope) { connection in
            _ = try await connection.query("SELECT audit_seal_own()")
            // Planned with the values each time (PGQuery.plannedWithValues): a kept generic plan read all the
            // authority's events and sorted them.
            return try await connection.query(("""
                SELECT id, seq, occurred_at, actor, action, entity_type, entity_id, before::text, after::text, request_id
                FROM audit_event
                WHERE chain_id = app_authority_id() AND seq > 0 AND seq < \(beforeSeq)
                  AND (\(filter.entityType)::text IS NULL OR entity_type = \(filter.entityType))
                  AND (\(filter.entityID)::text IS NULL OR entity_id = \(filter.entityID))
                  AND (\(filter.actor)::text IS NULL OR actor = \(filter.actor))
                  AND (\(filter.from)::timestamptz IS NULL OR occurred_at >= \(filter.from))
                  AND (\(filter.to)::timestamptz IS NULL OR occurred_at < \(filter.to))
                ORDER BY seq DESC LIMIT \(page.limit + 1)
                """ as PGQuery).plannedWithValuesEachTime).map { row in
                let (id, seq, occurredAt, actor, action, entityType, entityID, before, after, requestID) = try row.decode(
                    UUID.self, Int.self, Date.self, String.self, String.self, String.self, String.self, String?.self,
                    String?.self, String?.self)
                return AuditEvent(id: id, seq: seq, occurredAt: occurredAt, actor: actor, action: action, entityType: entityType,
                                  entityID: entityID, before: before, after: after, requestID: requestID)
            }
        }
        return page.page(events) { [String($0.seq)] }
    }

    static let verifySQL = """
        SELECT e.seq, e.prev_hash, e.hash,
               sha256(e.prev_hash || convert_to(audit_canonical(e), 'UTF8')) AS recomputed
        FROM audit_event e WHERE e.chain_id = $1 AND e.seq > 0 ORDER BY e.seq
        """

    /// Seals every chain's unsealed events (migration 0028), waiting for any sealer at work, so that the check
    /// covers everything committed before it began.
    static let sealAllSQL = """
        SELECT count(audit_seal(c.chain_id, true, NULL))
        FROM (SELECT DISTINCT chain_id FROM audit_event WHERE hash IS NULL ORDER BY 1) c
        """

    /// Recomputes every hash of a chain (or every chain) and reports the first event that does not fit:
    /// an edited event no longer matches its hash, a deleted one leaves a gap or breaks the next link, and a
    /// reordering breaks the links. Runs as the owner (the operator's CLI).
    public func verify(chainIDs: [UUID]? = nil) async throws -> [AuditChainReport] {
        try await database.pool.withTransaction { connection in
            _ = try await connection.query(PGQuery(Self.sealAllSQL))
        }
        return try await database.pool.withTransaction(isolation: .repeatableRead, readOnly: true) { connection in
            var chains = chainIDs ?? []
            if chainIDs == nil {
                chains = try await connection.query("""
                    SELECT chain_id FROM audit_chain_head UNION SELECT DISTINCT chain_id FROM audit_event ORDER BY 1
                    """).map { try $0.decode(UUID.self, at: 0) }
            }
            var reports: [AuditChainReport] = []
            for chain in chains {
                let head = try await connection.query("SELECT seq, hash FROM audit_chain_head WHERE chain_id = \(chain)").first
                    .map { try $0.decode(Int.self, Data.self) }
                let rows = try await connection.query(PGQuery(Self.verifySQL, [chain.pg]))
                var report = AuditChainReport(chainID: chain, events: rows.count)
                var expectedPrev = Data(count: 32)
                var expectedSeq = 1
                for row in rows {
                    let (seq, prevHash, hash, recomputed) = try row.decode(Int.self, Data.self, Data.self, Data.self)
                    if seq != expectedSeq {
                        report.firstBadSeq = min(seq, expectedSeq)
                        report.problem = "event \(expectedSeq) is missing (next present is \(seq))"
                    } else if prevHash != expectedPrev {
                        report.firstBadSeq = seq
                        report.problem = "event \(seq) does not link to the event before it (deleted or reordered)"
                    } else if hash != recomputed {
                        report.firstBadSeq = seq
                        report.problem = "event \(seq) was altered after it was written (its hash does not match)"
                    }
                    if report.problem != nil { break }
                    expectedPrev = hash
                    expectedSeq += 1
                }
                if report.problem == nil, let head {
                    if head.0 != rows.count || (rows.count > 0 && head.1 != expectedPrev) {
                        report.firstBadSeq = rows.count + 1
                        report.problem = "the chain ends at event \(rows.count) but its head records event \(head.0) (events removed from the end)"
                    }
                } else if report.problem == nil, head == nil, rows.count > 0 {
                    report.firstBadSeq = 1
                    report.problem = "the chain has no head record"
                }
                reports.append(report)
            }
            return reports
        }
    }
}
