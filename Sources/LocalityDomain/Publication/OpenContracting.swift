import Crypto
public import Foundation
import LocalityPostgres

/// The lifecycle events that write an OCDS release (migration 0022, `ocds_publish`).
public enum OCDSReleaseKind: String, Sendable {
    case tender, tenderAmendment, tenderCancellation, award, contract, contractStarted, contractAmendment, contractEnded
    /// A KPI's actual and rating for one reporting period (ref: the return, or for an override the period);
    /// the database writes nothing unless the authority publishes KPI actuals.
    case kpiReturn, ratingOverride
    /// The contract was marked so that its schools causing concern may be published.
    case concernSchools

    /// Writes the release for this event of a project, in the caller's transaction (so it commits or rolls back
    /// with the event). Nothing is written while the authority has no OCID prefix: its procurements are simply
    /// not published, and the public feed says so for that authority.
    static func publish(_ connection: PGConnection, projectID: UUID, _ kind: OCDSReleaseKind, ref: UUID? = nil) async throws {
        try await connection.query("SELECT ocds_publish(\(projectID), \(kind.rawValue), \(ref))")
    }
}

/// Publication settings of an authority (operator CLI).
public struct PublicationSettings: Sendable, Codable, Equatable {
    public var ocidPrefix: String?
    public var centralGovernment: Bool
    public var contractDetailsNoticeDays: Int
    public var publishKPIActuals: Bool
}

/// One notice a procurement needs under the Procurement Act 2023.
public struct ProcurementNotice: Sendable, Codable, Equatable {
    /// Unique within the procurement: the type, and for repeated notices (contract changes) the event's id.
    public var key: String
    public var type: String
    /// The date of the event that makes it due; nil when it has not happened yet.
    public var eventOn: String?
    public var dueOn: String?
    public var filed: Bool
    public var platformNoticeID: String?
    public var filedAt: Date?
}

public struct ProcurementNotices: Sendable, Codable, Equatable {
    public var projectID: UUID
    public var title: String
    public var status: String
    /// none, below_threshold or regulated.
    public var regime: String
    public var procurementMethod: String
    public var valueIncludingVATPence: Int
    public var notices: [ProcurementNotice]
}

/// The public OCDS feed (no caller: it holds only public data) and the Act's notices (staff).
public struct OpenContractingService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    public static let ocdsVersion = "1.1"
    public static let metricsExtension = "https://raw.githubusercontent.com/open-contracting-extensions/ocds_metrics_extension/master/extension.json"

    // MARK: Settings

    public func configure(_ authority: Authority, ocidPrefix: String?, centralGovernment: Bool?, contractDetailsNoticeDays: Int?,
                          publishKPIActuals: Bool?, osUser: String = OperatorIdentity.osUser) async throws -> PublicationSettings {
        var validator = Validator()
        if let ocidPrefix {
            validator.check(ocidPrefix.isWholeMatch(of: "^ocds-[a-z0-9]{6}$"), "ocid_prefix",
                            "must be the prefix registered with the Open Contracting Partnership: ocds- and 6 lowercase letters or digits")
        }
        if let days = contractDetailsNoticeDays { validator.check((1...365).contains(days), "contract_details_notice_days", "must be 1–365") }
        try validator.throwIfInvalid()
        return try await database.transaction(.operatorScope(authorityID: authority.id, osUser: osUser)) { connection in
            let before = try await Self.settings(connection)
            let after = PublicationSettings(ocidPrefix: ocidPrefix ?? before.ocidPrefix, centralGovernment: centralGovernment ?? before.centralGovernment,
                                            contractDetailsNoticeDays: contractDetailsNoticeDays ?? before.contractDetailsNoticeDays,
                                            publishKPIActuals: publishKPIActuals ?? before.publishKPIActuals)
            if let old = before.ocidPrefix, let new = ocidPrefix, old != new {
                // OCIDs already published must stay resolvable: a prefix, once used, is for good.
                let used = try await connection.query("SELECT EXISTS (SELECT 1 FROM ocds_release WHERE authority_id = app_authority_id())")
                    .first!.decode(Bool.self, at: 0)
                if used { throw DomainError.conflict("Releases were already published under \(old); the OCID prefix cannot change.") }
            }
            try await connection.query("""
                UPDATE authority SET ocid_prefix = \(after.ocidPrefix), central_government = \(after.centralGovernment),
                    contract_details_notice_days = \(after.contractDetailsNoticeDays), publish_kpi_actuals = \(after.publishKPIActuals)
                WHERE id = app_authority_id()
                """)
            try await AuditLog.record(connection, action: "authority.configure_publication", entityType: "authority",
                                      entityID: authority.id.lowercased, before: before, after: after)
            return after
        }
    }

    static func settings(_ connection: PGConnection) async throws -> PublicationSettings {
        let (prefix, central, days, actuals) = try await connection.query("""
            SELECT ocid_prefix, central_government, contract_details_notice_days, publish_kpi_actuals FROM authority WHERE id = app_authority_id()
            """).first!.decode(String?.self, Bool.self, Int.self, Bool.self)
        return PublicationSettings(ocidPrefix: prefix, centralGovernment: central, contractDetailsNoticeDays: days, publishKPIActuals: actuals)
    }

    // MARK: The public feed

    public struct Publisher: Sendable {
        public var id: UUID
        public var slug: String
        public var name: String
        public var ocidPrefix: String?
    }

    /// The authority named by slug or id; a 404 when unknown, and when it publishes nothing yet (no prefix).
    public func publisher(_ slugOrID: String) async throws -> Publisher {
        let rows = try await database.publicRead { connection in
            try await connection.query("SELECT id, slug, name, ocid_prefix FROM ocds_publisher(\(slugOrID))").map {
                try $0.decode(UUID.self, String.self, String.self, String?.self)
            }
        }
        guard let (id, slug, name, prefix) = rows.first else { throw DomainError.notFound("authority \"\(slugOrID)\"") }
        guard prefix != nil else {
            throw DomainError.stateConflict(
                type: "not-published", "\(name) does not publish open contracting data yet: it has not set its OCID prefix.", status: 404)
        }
        return Publisher(id: id, slug: slug, name: name, ocidPrefix: prefix)
    }

    public struct ReleaseFilter: Sendable {
        public var authority: String?
        public var since: Date?
        public var until: Date?
        public var tag: String?

        public init(authority: String? = nil, since: Date? = nil, until: Date? = nil, tag: String? = nil) {
            self.authority = authority
            self.since = since
            self.until = until
            self.tag = tag
        }
    }

    public static let releaseTags: Set<String> = [
        "tender", "tenderAmendment", "tenderUpdate", "tenderCancellation", "award", "contract", "contractAmendment", "implementation",
        "contractTermination",
    ]

    /// Releases oldest first (by date, then the order written), as JSON texts, with the next page's cursor.
    public func releases(_ filter: ReleaseFilter, page: PageRequest) async throws -> Page<String> {
        if let tag = filter.tag, !Self.releaseTags.contains(tag) {
            throw DomainError.invalid("tag", "must be one of " + Self.releaseTags.sorted().joined(separator: ", "))
        }
        // `until` before `since` is an empty range: an empty page, not an error.
        var authorityID: UUID?
        if let authority = filter.authority { authorityID = try await publisher(authority).id }
        // The cursor is the last release's (date, seq): its date as exact text (microseconds), its seq as a number.
        var afterDate: String?
        var afterSeq: Int?
        if let after = page.after {
            guard after.count == 2, (try? Date(after[0], strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))) != nil,
                  let seq = Int(after[1]) else {
                throw DomainError.invalid("cursor", "is not a cursor this service issued")
            }
            afterDate = after[0]
            afterSeq = seq
        }
        let rows = try await database.publicRead { connection in
            try await connection.query("""
                SELECT release::text, to_char(date AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), seq FROM ocds_release
                WHERE (\(authorityID)::uuid IS NULL OR authority_id = \(authorityID))
                  AND (\(filter.since)::timestamptz IS NULL OR date >= \(filter.since))
                  AND (\(filter.until)::timestamptz IS NULL OR date < \(filter.until))
                  AND (\(filter.tag)::text IS NULL OR \(filter.tag) = ANY (tags))
                  AND (\(afterDate)::timestamptz IS NULL OR (date, seq) > (\(afterDate)::timestamptz, \(afterSeq)::bigint))
                ORDER BY date, seq
                LIMIT \(page.limit + 1)
                """).map { try $0.decode(String.self, String.self, Int.self) }
        }
        let paged = page.page(rows) { (row: (String, String, Int)) in [row.1, String(row.2)] }
        return Page(items: paged.items.map { $0.0 }, nextCursor: paged.nextCursor)
    }

    public func release(id: String) async throws -> String {
        let row = try await database.publicRead { connection in
            try await connection.query("SELECT release::text FROM ocds_release WHERE id = \(id)").first?.decode(String.self, at: 0)
        }
        guard let row else { throw DomainError.notFound("release \"\(id)\"") }
        return row
    }

    public struct Record: Sendable {
        public var ocid: String
        public var releases: [String]
        public var compiledRelease: String
        public var publisher: String
    }

    public func record(ocid: String) async throws -> Record {
        let found: Record? = try await database.publicRead { connection in
            let releases = try await connection.query("SELECT release::text FROM ocds_release WHERE ocid = \(ocid) ORDER BY date, seq")
                .map { try $0.decode(String.self, at: 0) }
            guard !releases.isEmpty else { return nil }
            let compiled = try await connection.query("SELECT ocds_compiled_release(\(ocid))::text").first!.decode(String.self, at: 0)
            let publisher = try await connection.query("""
                SELECT p.name FROM ocds_release r, ocds_publisher(r.authority_id::text) p WHERE r.ocid = \(ocid) LIMIT 1
                """).first!.decode(String.self, at: 0)
            return Record(ocid: ocid, releases: releases, compiledRelease: compiled, publisher: publisher)
        }
        guard let found else { throw DomainError.notFound("record \"\(ocid)\"") }
        return found
    }

    /// The publisher named in a package: the authority when the package is one authority's, else the service.
    public static let servicePublisher = "Locality Commissioning Marketplace"

    /// A release package (JSON object) around release texts.
    public static func releasePackage(_ releases: [String], uri: String, publisher: String, publishedDate: Date) throws -> [String: Any] {
        [
            "uri": uri,
            "version": ocdsVersion,
            "publishedDate": ocdsTime(publishedDate),
            "publisher": ["name": publisher],
            "extensions": [metricsExtension],
            "releases": try releases.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) },
        ]
    }

    public static func recordPackage(_ record: Record, uri: String, publishedDate: Date) throws -> [String: Any] {
        [
            "uri": uri,
            "version": ocdsVersion,
            "publishedDate": ocdsTime(publishedDate),
            "publisher": ["name": record.publisher],
            "extensions": [metricsExtension],
            "records": [[
                "ocid": record.ocid,
                "releases": try record.releases.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) },
                "compiledRelease": try JSONSerialization.jsonObject(with: Data(record.compiledRelease.utf8)),
            ]],
        ]
    }

    /// The JSON of a package (keys sorted, so the same content is the same bytes) and its strong entity tag.
    public static func encode(_ package: [String: Any]) throws -> (data: Data, etag: String) {
        let data = try JSONSerialization.data(withJSONObject: package, options: [.sortedKeys, .withoutEscapingSlashes])
        let digest = SHA256.hash(data: data).prefix(16).map { String(format: "%02x", $0) }.joined()
        return (data, "\"\(digest)\"")
    }

    public static func ocdsTime(_ date: Date) -> String {
        var formatter = Date.ISO8601FormatStyle()
        formatter.timeZone = .gmt
        return formatter.format(date)
    }

    /// Every release of one authority since a date, oldest first, in batches (bulk export).
    public func export(authority: String, since: Date?, batch: Int = 200,
                       _ body: (String) async throws -> Void) async throws {
        var cursor: String?
        repeat {
            let page = try await releases(ReleaseFilter(authority: authority, since: since), page: PageRequest(limit: batch, cursor: cursor))
            for release in page.items { try await body(release) }
            cursor = page.nextCursor
        } while cursor != nil
    }

    // MARK: Schools causing concern

    /// Marks a contract so that its schools causing concern may be published (authority admins and the Head of
    /// School Improvement), and publishes them at once (a `tenderUpdate` release). One way: `false` is accepted
    /// only while the contract is unmarked, since what was published cannot be withdrawn. Each call is audited
    /// (as a setting is, saying what it was and is); marking a marked contract again publishes nothing more.
    /// Returns the mark.
    public func setConcernSchoolsPublishable(_ scope: AccessScope, contractID: UUID, publishable: Bool) async throws -> Bool {
        try scope.require(scope.isStaff && scope.hasAny(.authorityAdmin, .hosi), "mark contracts' schools causing concern publishable")
        return try await database.transaction(scope) { connection in
            // The function takes the contract's row lock, checks the caller and marks it: of concurrent marks, one
            // changes it and publishes, the others find it marked.
            let before: Bool?
            if publishable {
                before = try await connection.query("SELECT contract_mark_concern_schools_publishable(\(contractID))").first?
                    .decode(Bool?.self, at: 0)
            } else {
                before = try await connection.query("SELECT publish_concern_schools FROM contract WHERE id = \(contractID)")
                    .first?.decode(Bool?.self, at: 0)
            }
            guard let before else { throw DomainError.notFound("contract") }
            if !publishable && before {
                throw DomainError.stateConflict(
                    type: "concern-schools-published",
                    "This contract's schools causing concern are already published; published releases cannot be withdrawn.")
            }
            if publishable && !before {
                let projectID = try await connection.query("SELECT project_id FROM contract WHERE id = \(contractID)").first!.decode(UUID.self, at: 0)
                try await OCDSReleaseKind.publish(connection, projectID: projectID, .concernSchools)
            }
            struct Mark: Encodable, Sendable { var publishConcernSchools: Bool }
            try await AuditLog.record(connection, action: "contract.publish_concern_schools", entityType: "contract", entityID: contractID.lowercased,
                                      before: Mark(publishConcernSchools: before), after: Mark(publishConcernSchools: publishable))
            return publishable
        }
    }

    // MARK: Notices due (staff)

    public func notices(_ scope: AccessScope) async throws -> [ProcurementNotices] {
        try scope.require(scope.isStaff && scope.hasAny(.authorityAdmin, .lim), "see the notices due")
        return try await database.transaction(scope, readOnly: true) { connection in
            let projects = try await connection.query("""
                SELECT p.id, p.title, p.status::text, procurement_regime(p.authority_id, p.id), p.procurement_method,
                       (CASE WHEN p.value_includes_vat THEN coalesce(p.max_value_pence, 0) ELSE round(coalesce(p.max_value_pence, 0) * 1.2) END)::bigint
                FROM project p WHERE p.status <> 'draft' ORDER BY p.published_at, p.id
                """).map { try $0.decode(UUID.self, String.self, String.self, String.self, String.self, Int.self) }
            var result: [ProcurementNotices] = []
            for (id, title, status, regime, method, value) in projects {
                let notices = try await connection.query("""
                    SELECT n.notice_key, n.notice_type, n.event_on::text, n.due_on::text, f.platform_notice_id, f.filed_at
                    FROM procurement_notices(app_authority_id(), \(id)) n
                    LEFT JOIN notice_filing f ON f.authority_id = app_authority_id() AND f.project_id = \(id) AND f.notice_key = n.notice_key
                    """).map { row in
                        let (key, type, eventOn, dueOn, platformID, filedAt) = try row.decode(
                            String.self, String.self, String?.self, String?.self, String?.self, Date?.self)
                        return ProcurementNotice(key: key, type: type, eventOn: eventOn, dueOn: dueOn, filed: platformID != nil,
                                                 platformNoticeID: platformID, filedAt: filedAt)
                    }
                result.append(ProcurementNotices(projectID: id, title: title, status: status, regime: regime, procurementMethod: method,
                                                 valueIncludingVATPence: value, notices: notices))
            }
            return result
        }
    }

    /// Records that a notice was filed on the Central Digital Platform, with the platform's notice id. Once:
    /// a second filing of the same notice is a 409.
    public func markFiled(_ scope: AccessScope, projectID: UUID, noticeKey: String, platformNoticeID: String) async throws -> ProcurementNotices {
        try scope.require(scope.isStaff && scope.hasAny(.authorityAdmin, .lim), "record filed notices")
        var validator = Validator()
        validator.text(platformNoticeID, "platform_notice_id", max: 100)
        try validator.throwIfInvalid()
        try await database.transaction(scope) { connection in
            guard let (type, _) = try await connection.query("""
                SELECT n.notice_type, p.board_id FROM project p, procurement_notices(p.authority_id, p.id) n
                WHERE p.id = \(projectID) AND p.status <> 'draft' AND n.notice_key = \(noticeKey)
                """).first?.decode(String.self, UUID.self) else {
                let exists = try await connection.query("SELECT 1 FROM project WHERE id = \(projectID)").first != nil
                if !exists { throw DomainError.notFound("project") }
                throw DomainError.invalid("notice", "is not a notice this procurement needs")
            }
            // The primary key makes a racing second filing fail; check first for a sentence a user understands.
            if try await connection.query("""
                SELECT 1 FROM notice_filing WHERE project_id = \(projectID) AND notice_key = \(noticeKey)
                """).first != nil {
                throw DomainError.stateConflict(type: "notice-already-filed", "This notice is already recorded as filed.")
            }
            try await connection.query("""
                INSERT INTO notice_filing (authority_id, project_id, notice_key, notice_type, platform_notice_id, filed_by)
                VALUES (app_authority_id(), \(projectID), \(noticeKey), \(type), \(platformNoticeID), current_setting('app.actor'))
                """)
            struct Filed: Encodable, Sendable { var noticeKey: String; var platformNoticeID: String }
            try await AuditLog.record(connection, action: "notice.file", entityType: "project", entityID: projectID.lowercased,
                                      before: nil, after: Filed(noticeKey: noticeKey, platformNoticeID: platformNoticeID))
        }
        guard let filed = try await notices(scope).first(where: { $0.projectID == projectID }) else { throw DomainError.notFound("project") }
        return filed
    }
}
