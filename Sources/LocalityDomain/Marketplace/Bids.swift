import Crypto
public import Foundation
import LocalityPostgres

public enum KPIUnit: String, Sendable, Codable, CaseIterable { case count, percentage, score }
public enum ReportingFrequency: String, Sendable, Codable, CaseIterable { case monthly, termly, annual }

/// A KPI a bidder proposes (aggregate figures only: never data about individual children).
public struct ProposedKPI: Sendable, Codable, Equatable {
    public var title: String
    public var measure: String
    public var unit: KPIUnit
    public var baseline: Double
    public var target: Double
    public var targetDate: String
    public var frequency: ReportingFrequency
    public var evidenceSource: String

    // Spelt out (the stored and audited snake case) so that rows decode, and receipts encode, without Foundation's
    // key conversion, which splits, recases and joins every key of every object (see `AuditLog.plainEncoder`).
    enum CodingKeys: String, CodingKey {
        case title, measure, unit, baseline, target, targetDate = "target_date", frequency, evidenceSource = "evidence_source"
    }

    public init(title: String, measure: String, unit: KPIUnit, baseline: Double, target: Double, targetDate: String,
                frequency: ReportingFrequency, evidenceSource: String) {
        self.title = title
        self.measure = measure
        self.unit = unit
        self.baseline = baseline
        self.target = target
        self.targetDate = targetDate
        self.frequency = frequency
        self.evidenceSource = evidenceSource
    }
}

/// A social-value commitment: a measure of the authority's catalogue, a quantity, and the proxy value
/// computed from the catalogue (never taken from the bidder).
public struct SocialValueCommitment: Sendable, Codable, Equatable {
    public var measureCode: String
    public var measureName: String
    public var unit: String
    public var quantity: Double
    public var proxyValuePence: Int

    enum CodingKeys: String, CodingKey {
        case measureCode = "measure_code", measureName = "measure_name", unit, quantity, proxyValuePence = "proxy_value_pence"
    }
}

public struct BidDeclarations: Sendable, Codable, Equatable {
    public var acceptsTerms: Bool
    public var informationAccurate: Bool
    /// Empty when the bidder has no conflict of interest to declare.
    public var conflictsOfInterest: String

    enum CodingKeys: String, CodingKey {
        case acceptsTerms = "accepts_terms", informationAccurate = "information_accurate", conflictsOfInterest = "conflicts_of_interest"
    }

    public init(acceptsTerms: Bool, informationAccurate: Bool, conflictsOfInterest: String) {
        self.acceptsTerms = acceptsTerms
        self.informationAccurate = informationAccurate
        self.conflictsOfInterest = conflictsOfInterest
    }
}

public enum BidStatus: String, Sendable, Codable, CaseIterable {
    case draft, submitted, withdrawn, shortlisted, unsuccessful, awarded
}

public struct Bid: Sendable, Codable, Equatable {
    public var id: UUID
    public var authorityID: UUID
    public var projectID: UUID
    public var supplierID: UUID
    public var supplierName: String
    public var status: BidStatus
    public var pricePence: Int?
    public var approach: String
    public var outputs: String
    public var kpis: [ProposedKPI]
    public var socialValue: [SocialValueCommitment]
    public var declarations: BidDeclarations?
    public var submittedAt: Date?
    public var receiptSHA256: String?
    public var version: Int
    public var createdAt: Date
    public var updatedAt: Date
    /// After the award: the bidder's own scores and the winner's total (or, for the winner, its total).
    public var outcomeNote: String?
}

public struct BidContent: Sendable {
    public struct Commitment: Sendable {
        public var measureCode: String
        public var quantity: Double

        public init(measureCode: String, quantity: Double) {
            self.measureCode = measureCode
            self.quantity = quantity
        }
    }

    public var pricePence: Int?
    public var approach: String?
    public var outputs: String?
    public var kpis: [ProposedKPI]?
    public var socialValue: [Commitment]?
    public var declarations: BidDeclarations?

    public init(pricePence: Int? = nil, approach: String? = nil, outputs: String? = nil, kpis: [ProposedKPI]? = nil,
                socialValue: [Commitment]? = nil, declarations: BidDeclarations? = nil) {
        self.pricePence = pricePence
        self.approach = approach
        self.outputs = outputs
        self.kpis = kpis
        self.socialValue = socialValue
        self.declarations = declarations
    }
}

public struct BidReceipt: Sendable, Equatable {
    public var bidID: UUID
    public var submittedAt: Date
    /// SHA-256 (hex) of `canonical`: the bidder can later prove what it submitted.
    public var sha256: String
    /// Exactly the UTF-8 text that was hashed (see `BidService.receiptCanonical`), so that the bidder can
    /// check the digest without knowing how we serialise: `sha256(canonical) == sha256`.
    public var canonical: String
}

/// Sealed bids. A supplier keeps one bid per project: draft → submitted → withdrawn → (revised) →
/// submitted again, all before the deadline by the database clock; after it nothing changes. Until the
/// deadline no one but the bidder sees anything of a project's bids (service and RLS); the changes are
/// audited in the supplier's own chain so that the authority's audit log cannot reveal them either.
public struct BidService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let selectSQL = """
        SELECT b.id, b.authority_id, b.project_id, b.supplier_id, s.name, b.status::text, b.price_pence, b.approach, b.outputs,
               b.kpis::text, b.social_value::text, b.declarations::text, b.submitted_at, encode(b.receipt_sha256, 'hex'),
               b.version, b.created_at, b.updated_at, b.outcome_note
        FROM bid b JOIN supplier s ON s.id = b.supplier_id
        """

    public func create(_ scope: AccessScope, projectID: UUID, _ content: BidContent) async throws -> Bid {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "bid")
        return try await database.transaction(scope) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID)   // 404 unless admitted
            try await Self.requireAcceptingBids(connection, project)
            let existing = try await connection.query("""
                SELECT id FROM bid WHERE project_id = \(projectID) AND supplier_id = app_supplier_id()
                """).first?.decode(UUID.self, at: 0)
            if let existing {
                throw DomainError.stateConflict(type: "duplicate-bid", "You already have a bid on this project (\(existing.lowercased)); edit that one.")
            }
            let fields = try await Self.resolve(connection, content, project: project, submitting: false)
            let id: UUID
            do {
                id = try await connection.query("""
                    INSERT INTO bid (authority_id, project_id, supplier_id, price_pence, approach, outputs, kpis, social_value, declarations)
                    VALUES (\(project.authorityID), \(projectID), app_supplier_id(), \(fields.price), \(fields.approach), \(fields.outputs),
                            \(fields.kpis)::jsonb, \(fields.socialValue)::jsonb, \(fields.declarations)::jsonb)
                    RETURNING id
                    """).first!.decode(UUID.self, at: 0)
            } catch let error as PGError where error.isUniqueViolation {
                throw DomainError.stateConflict(type: "duplicate-bid", "You already have a bid on this project; edit that one.")
            }
            let bid = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "bid.create", entityType: "bid", entityID: id.lowercased, before: nil,
                                      after: AuditedBid(bid))
            return bid
        }
    }

    public func update(_ scope: AccessScope, id: UUID, _ content: BidContent) async throws -> Bid {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "edit bids")
        return try await database.transaction(scope) { connection in
            let (before, project) = try await Self.lockOwnBid(connection, id: id, scope: scope)
            guard before.status == .draft || before.status == .withdrawn else {
                throw DomainError.conflict("A submitted bid cannot be edited; withdraw it, revise it and submit it again.")
            }
            var merged = content
            merged.pricePence = content.pricePence ?? before.pricePence
            merged.approach = content.approach ?? before.approach
            merged.outputs = content.outputs ?? before.outputs
            merged.kpis = content.kpis ?? before.kpis
            merged.socialValue = content.socialValue ?? before.socialValue.map { .init(measureCode: $0.measureCode, quantity: $0.quantity) }
            merged.declarations = content.declarations ?? before.declarations
            let fields = try await Self.resolve(connection, merged, project: project, submitting: false)
            try await connection.query("""
                UPDATE bid SET price_pence = \(fields.price), approach = \(fields.approach), outputs = \(fields.outputs),
                    kpis = \(fields.kpis)::jsonb, social_value = \(fields.socialValue)::jsonb, declarations = \(fields.declarations)::jsonb,
                    version = version + 1
                WHERE id = \(id)
                """)
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "bid.update", entityType: "bid", entityID: id.lowercased,
                                      before: AuditedBid(before), after: AuditedBid(after))
            return after
        }
    }

    /// Submits (or resubmits a withdrawn bid): complete content, before the deadline by the database clock.
    public func submit(_ scope: AccessScope, id: UUID) async throws -> (Bid, BidReceipt) {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "submit bids")
        do {
            return try await database.transaction(scope) { connection in
                try await Self.submit(connection, id: id, scope: scope)
            }
        } catch is BidChangedMeanwhile {
            // Nothing was changed. Why, as it is now: the deadline passed, or a concurrent request submitted, withdrew
            // or edited the bid since it was read.
            return try await database.transaction(scope, readOnly: true) { connection in
                let (current, _, _, _) = try await Self.readOwnBidTimed(connection, id: id, scope: scope)
                guard current.status == .draft || current.status == .withdrawn else {
                    throw DomainError.conflict("The bid is already \(current.status.rawValue).")
                }
                throw DomainError.conflict("The bid was changed by another request while it was being submitted; nothing was changed.")
            }
        }
    }

    /// The submission's update found the bid no longer as it was read (or row-level security refused it: the
    /// deadline passed meanwhile); nothing was changed.
    private struct BidChangedMeanwhile: Error {}

    private static func submit(_ connection: PGConnection, id: UUID, scope: AccessScope) async throws -> (Bid, BidReceipt) {
        // The database clock's time of the check that the project still accepts bids is the submission time.
        let (before, project, checkedAt, measures) = try await readOwnBidTimed(connection, id: id, scope: scope)
        guard before.status == .draft || before.status == .withdrawn else {
            throw DomainError.conflict("The bid is already \(before.status.rawValue).")
        }
        let content = BidContent(
            pricePence: before.pricePence, approach: before.approach, outputs: before.outputs, kpis: before.kpis,
            socialValue: before.socialValue.map { .init(measureCode: $0.measureCode, quantity: $0.quantity) },
            declarations: before.declarations)
        try await validate(connection, content, project: project, submitting: true, measures: measures)
        let submittedAt = checkedAt
        var submitted = before
        submitted.submittedAt = submittedAt
        let canonical = receiptCanonical(submitted)
        let digest = sha256Hex(canonical)
        // The update applies only to the version read and validated (every change of a bid's content or status adds
        // one to its version): a concurrent edit, submission or withdrawal that committed first leaves it nothing to
        // change, and one still in flight makes it wait, then find the version changed. The update and the audit
        // append are one statement, the append running only if the update changed the row, and the transaction's
        // last, sent with its COMMIT (one round trip for all three). If the update changed nothing, the commit
        // commits nothing.
        var expected = submitted
        expected.status = .submitted
        expected.receiptSHA256 = digest
        expected.version = before.version + 1
        let changed = try await connection.queryAndCommit(PGQuery("""
            WITH changed AS (
                UPDATE bid SET status = 'submitted', submitted_at = $1, receipt_sha256 = decode($2, 'hex'), version = version + 1
                WHERE id = $3 AND version = $8 AND status IN ('draft', 'withdrawn')
                RETURNING status::text, submitted_at, encode(receipt_sha256, 'hex'), version, updated_at)
            SELECT changed.*, append_audit_event($4, 'bid', $5, $6, $7) FROM changed
            """, [
                submittedAt.pg, digest.pg, id.pg, (before.status == .withdrawn ? "bid.resubmit" : "bid.submit").pg, id.lowercased.pg,
                try AuditLog.jsonBind(AuditedBid(before)), try AuditLog.jsonBind(AuditedBid(expected)), before.version.pg,
            ]))
        // Row-level security refuses the write too if the deadline passed meanwhile (and nothing is audited).
        guard let row = changed.first else { throw BidChangedMeanwhile() }
        var after = before
        after.status = try storedEnum(try row.decode(String.self, at: 0), column: "bid.status")
        after.submittedAt = try row.decode(Date?.self, at: 1)
        after.receiptSHA256 = try row.decode(String?.self, at: 2)
        after.version = try row.decode(Int.self, at: 3)
        after.updatedAt = try row.decode(Date.self, at: 4)
        return (after, BidReceipt(bidID: id, submittedAt: submittedAt, sha256: digest, canonical: canonical))
    }

    public func withdraw(_ scope: AccessScope, id: UUID) async throws -> Bid {
        try scope.require(scope.has(.supplierUser) && scope.supplierID != nil, "withdraw bids")
        return try await database.transaction(scope) { connection in
            let (before, _) = try await Self.lockOwnBid(connection, id: id, scope: scope)
            guard before.status == .submitted else { throw DomainError.conflict("Only a submitted bid can be withdrawn.") }
            let changed = try await connection.query("""
                UPDATE bid SET status = 'withdrawn', version = version + 1 WHERE id = \(id)
                """).affectedRows
            guard changed == 1 else { throw DomainError.conflict("The bid deadline has passed; nothing was changed.") }
            let after = try await Self.fetch(connection, id: id)
            try await AuditLog.record(connection, action: "bid.withdraw", entityType: "bid", entityID: id.lowercased,
                                      before: AuditedBid(before), after: AuditedBid(after))
            return after
        }
    }

    public func get(_ scope: AccessScope, id: UUID) async throws -> Bid {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see bids")
        return try await database.transaction(scope, readOnly: true) { connection in
            try await Self.fetch(connection, id: id)   // RLS: the bidder's own, or staff after the deadline
        }
    }

    /// A project's bids as the caller may see them: a supplier its own; the board's LIMs and the auditor
    /// the submitted ones after the deadline; anyone else, and everyone before the deadline, none — the
    /// answer is the same empty list, so it reveals nothing.
    public func list(_ scope: AccessScope, projectID: UUID) async throws -> [Bid] {
        try scope.require(scope.isStaff || scope.has(.supplierUser), "see bids")
        return try await database.transaction(scope, readOnly: true) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID)
            // The tenant key leads, so the bids are read through their key (row-level security alone, an OR of
            // several policies, gives the planner no index to use).
            return try await connection.query("""
                \(unsafeSQL: Self.selectSQL) WHERE b.authority_id = \(project.authorityID) AND b.project_id = \(projectID)
                ORDER BY b.submitted_at NULLS LAST, b.id
                """).map(Self.decode)
        }
    }

    // MARK: Helpers

    /// The caller's bid, locked for change, and its project — refused (409, nothing changed) once the
    /// project stops accepting bids. The row lock is taken only after that check, because row-level
    /// security hides a bid from `FOR UPDATE` once its deadline has passed.
    static func lockOwnBid(_ connection: PGConnection, id: UUID, scope: AccessScope) async throws -> (Bid, Project) {
        let current = try await fetch(connection, id: id)
        guard current.supplierID == scope.supplierID else { throw DomainError.notFound("bid") }
        let project = try await ProjectService.fetch(connection, id: current.projectID)
        try await requireAcceptingBids(connection, project)
        guard let locked = try? await fetch(connection, id: id, forUpdate: true) else {
            throw DomainError.conflict("The bid deadline has passed; nothing was changed.")
        }
        return (locked, project)
    }

    /// What validating a bid needs of its project: whose catalogue prices its social value, and its maximum value.
    struct ProjectTerms {
        var authorityID: UUID
        var maxValuePence: Int?

        init(authorityID: UUID, maxValuePence: Int?) {
            self.authorityID = authorityID
            self.maxValuePence = maxValuePence
        }

        init(_ project: Project) {
            self.init(authorityID: project.authorityID, maxValuePence: project.maxValuePence)
        }
    }

    /// What a submission reads, in one statement (one round trip; with BEGIN and the context, the transaction's
    /// first): the caller's bid as it is now (not locked: the submission's update applies only to this version of
    /// it), what validation needs of its project, the database clock's time of the check that the project accepts
    /// bids, and the catalogue entries the bid's social value names. The project is read by its key and only for the
    /// columns a submission uses: the full project read (its funding stream's code, its amendments) is two more
    /// row-level-secured lookups a submission does not need.
    static func readOwnBidTimed(_ connection: PGConnection, id: UUID, scope: AccessScope) async throws -> (Bid, ProjectTerms, Date, Measures) {
        // The bid's columns first (decoded as any bid read), then the project's after the `project_found` marker.
        // No `FOR UPDATE`: a lock would cost a WAL record and, through bid's update policy, a second deadline check,
        // and the update that follows tests the version read here instead (`submit`). Whether the project accepts
        // bids is `project_accepting_bids` spelt out on the row just read, at the statement's time.
        let result = try await connection.query("""
            SELECT current.*, p.id IS NOT NULL AS project_found, p.status::text AS project_status, p.max_value_pence,
                   coalesce(p.status = 'open' AND p.bid_deadline > statement_timestamp(), false) AS accepting_now,
                   statement_timestamp() AS checked_at,
                   (SELECT coalesce(jsonb_object_agg(m.code, jsonb_build_array(m.name, m.unit, m.proxy_value_pence)), '{}')::text
                    FROM social_value_measure m
                    WHERE m.authority_id = p.authority_id AND m.retired_at IS NULL
                      AND m.code IN (SELECT c ->> 'measure_code' FROM jsonb_array_elements(current.social_value::jsonb) c)) AS measures
            FROM (\(unsafeSQL: selectSQL) WHERE b.id = \(id)) current
            LEFT JOIN project p ON p.authority_id = current.authority_id AND p.id = current.project_id
            """)
        if let row = result.first, let found = result.columnIndex("project_found") {
            let current = try decode(row)
            if current.supplierID == scope.supplierID {
                guard try row.decode(Bool.self, at: found) else { throw DomainError.notFound("project") }
                guard try row.decode(Bool.self, "accepting_now") else {
                    let status: ProjectStatus = try storedEnum(try row.decode(String.self, "project_status"), column: "project.status")
                    throw notAccepting(status: status)
                }
                return (current, ProjectTerms(authorityID: current.authorityID, maxValuePence: try row.decode(Int?.self, "max_value_pence")),
                        try row.decode(Date.self, "checked_at"), try Measures(json: row.decode(String.self, "measures")))
            }
        }
        // Not the caller's bid (row-level security shows a supplier only its own), or no such bid: the same answer.
        throw DomainError.notFound("bid")
    }

    /// Returns the statement time of the check (the database clock).
    @discardableResult
    static func requireAcceptingBids(_ connection: PGConnection, _ project: Project) async throws -> Date {
        let (accepting, checkedAt) = try await connection.query("""
            SELECT project_accepting_bids(\(project.authorityID), \(project.id)), statement_timestamp()
            """).first!.decode(Bool.self, Date.self)
        guard accepting else { throw notAcceptingBids(project) }
        return checkedAt
    }

    static func notAcceptingBids(_ project: Project) -> DomainError {
        notAccepting(status: project.status)
    }

    /// `status` as stored, or as read (`closed` once an open project's deadline has passed).
    static func notAccepting(status: ProjectStatus) -> DomainError {
        .conflict(status == .open || status == .closed
            ? "The bid deadline has passed; nothing was changed." : "The project is \(status.rawValue) and not accepting bids.")
    }

    struct ResolvedFields {
        var price: Int?
        var approach: String
        var outputs: String
        var kpis: String
        var socialValue: String
        var declarations: String
    }

    /// Social-value measures of the project's authority by code (name, unit, proxy value), read ahead of `resolve`.
    struct Measures {
        var byCode: [String: (name: String, unit: String, proxyValuePence: Int)] = [:]

        init(json: String) throws {
            guard let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: [Any]] else { return }
            for (code, entry) in object {
                guard entry.count == 3, let name = entry[0] as? String, let unit = entry[1] as? String,
                      let proxy = (entry[2] as? NSNumber)?.intValue else { continue }
                byCode[code] = (name, unit, proxy)
            }
        }
    }

    /// `validate`, then the fields as the bid's columns store them.
    static func resolve(_ connection: PGConnection, _ content: BidContent, project: Project, submitting: Bool,
                        measures: Measures? = nil) async throws -> ResolvedFields {
        let valid = try await validate(connection, content, project: ProjectTerms(project), submitting: submitting, measures: measures)
        return ResolvedFields(
            price: content.pricePence, approach: content.approach ?? "", outputs: content.outputs ?? "",
            kpis: try plainJSON(valid.kpis), socialValue: try plainJSON(valid.socialValue),
            declarations: try content.declarations.map(plainJSON) ?? "{}")
    }

    static func plainJSON(_ value: some Encodable) throws -> String {
        String(decoding: try AuditLog.plainEncoder.encode(value), as: UTF8.self)
    }

    /// Validates content (field-level errors) and prices social value from the authority's catalogue (`measures`
    /// when the caller read them already, else one query per commitment).
    @discardableResult
    static func validate(_ connection: PGConnection, _ content: BidContent, project: ProjectTerms, submitting: Bool,
                         measures: Measures? = nil) async throws -> (kpis: [ProposedKPI], socialValue: [SocialValueCommitment]) {
        var validator = Validator()
        if let price = content.pricePence {
            validator.check(price > 0, "price_pence", "must be a positive number of pence")
            if let maximum = project.maxValuePence {
                validator.check(price <= maximum, "price_pence", "must not exceed the project's maximum value (\(maximum) pence)")
            }
        } else if submitting {
            validator.check(false, "price_pence", "is required to submit")
        }
        validator.text(content.approach, "approach", required: submitting, max: 50_000)
        validator.text(content.outputs, "outputs", required: false, max: 20_000)
        let kpis = content.kpis ?? []
        if submitting { validator.check(!kpis.isEmpty, "kpis", "propose at least one KPI") }
        validator.check(kpis.count <= 50, "kpis", "at most 50 KPIs")
        for (index, kpi) in kpis.enumerated() {
            let field = "kpis[\(index)]"
            validator.text(kpi.title, "\(field).title", max: 200)
            validator.text(kpi.measure, "\(field).measure", max: 1000)
            validator.text(kpi.evidenceSource, "\(field).evidence_source", max: 1000)
            validator.check(kpi.baseline.isFinite && kpi.target.isFinite, field, "baseline and target must be numbers")
            if kpi.unit == .percentage {
                validator.check((0...100).contains(kpi.baseline) && (0...100).contains(kpi.target), field,
                                "percentages must be between 0 and 100")
            }
            validator.check(CalendarDate.parse(kpi.targetDate) != nil, "\(field).target_date", "must be a date (YYYY-MM-DD)")
        }
        let commitments = content.socialValue ?? []
        var priced: [SocialValueCommitment] = []
        for (index, commitment) in commitments.enumerated() {
            let field = "social_value[\(index)]"
            validator.check(commitment.quantity.isFinite && commitment.quantity > 0 && commitment.quantity <= 1_000_000_000,
                            "\(field).quantity", "must be a positive number")
            let measure: (String, String, Int)? = if let measures {
                measures.byCode[commitment.measureCode].map { ($0.name, $0.unit, $0.proxyValuePence) }
            } else {
                try await connection.query("""
                    SELECT name, unit, proxy_value_pence FROM social_value_measure
                    WHERE authority_id = \(project.authorityID) AND code = \(commitment.measureCode) AND retired_at IS NULL
                    """).first.map { try $0.decode(String.self, String.self, Int.self) }
            }
            guard let measure else {
                validator.check(false, "\(field).measure_code", "is not a social-value measure of this authority")
                continue
            }
            // Exact decimal arithmetic: quantity × proxy value, rounded half up to the penny.
            let quantity = Decimal(string: String(commitment.quantity)) ?? 0
            var product = quantity * Decimal(measure.2)
            var rounded = Decimal()
            NSDecimalRound(&rounded, &product, 0, .plain)
            priced.append(SocialValueCommitment(measureCode: commitment.measureCode, measureName: measure.0, unit: measure.1,
                                                quantity: commitment.quantity, proxyValuePence: NSDecimalNumber(decimal: rounded).intValue))
        }
        if let declarations = content.declarations {
            validator.text(declarations.conflictsOfInterest, "declarations.conflicts_of_interest", required: false, max: 2000)
            if submitting {
                validator.check(declarations.acceptsTerms, "declarations.accepts_terms", "must be accepted to submit")
                validator.check(declarations.informationAccurate, "declarations.information_accurate", "must be confirmed to submit")
            }
        } else if submitting {
            validator.check(false, "declarations", "are required to submit")
        }
        try validator.throwIfInvalid()
        return (kpis, priced)
    }

    /// The canonical form a receipt's digest covers: one line of JSON, keys sorted, snake_case, no
    /// insignificant whitespace, `/` escaped as `\/` (Foundation's JSONEncoder), with the bid's id, project,
    /// supplier, price, approach, outputs, KPIs, social-value commitments, declarations and `submitted_at` in
    /// PostgreSQL's UTC text form with microseconds (the stored value, not the API's rendering of it).
    static func receiptCanonical(_ bid: Bid) -> String {
        struct Canonical: Encodable {
            var bidID: String
            var projectID: String
            var supplierID: String
            var pricePence: Int?
            var approach: String
            var outputs: String
            var kpis: [ProposedKPI]
            var socialValue: [SocialValueCommitment]
            var declarations: BidDeclarations?
            var submittedAt: String

            enum CodingKeys: String, CodingKey {
                case bidID = "bid_id", projectID = "project_id", supplierID = "supplier_id", pricePence = "price_pence", approach
                case outputs, kpis, socialValue = "social_value", declarations, submittedAt = "submitted_at"
            }
        }
        let canonical = Canonical(
            bidID: bid.id.lowercased, projectID: bid.projectID.lowercased, supplierID: bid.supplierID.lowercased,
            pricePence: bid.pricePence, approach: bid.approach, outputs: bid.outputs, kpis: bid.kpis, socialValue: bid.socialValue,
            declarations: bid.declarations, submittedAt: PGDateFormat.string(bid.submittedAt ?? Date()))
        return String(decoding: (try? AuditLog.plainEncoder.encode(canonical)) ?? Data(), as: UTF8.self)
    }

    /// SHA-256 (lowercase hex) of `text`'s UTF-8 bytes.
    static func sha256Hex(_ text: String) -> String {
        // Hex by table: String(format:) per byte went through Foundation's formatter 32 times per receipt.
        let digits = Array("0123456789abcdef".utf8)
        var hex = [UInt8]()
        hex.reserveCapacity(64)
        for byte in SHA256.hash(data: Data(text.utf8)) {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: hex, as: UTF8.self)
    }

    static func fetch(_ connection: PGConnection, id: UUID, forUpdate: Bool = false) async throws -> Bid {
        let rows = try await connection.query("""
            \(unsafeSQL: selectSQL) WHERE b.id = \(id) \(unsafeSQL: forUpdate ? "FOR UPDATE OF b" : "")
            """)
        guard let row = rows.first else { throw DomainError.notFound("bid") }
        return try decode(row)
    }

    static func decode(_ row: PGRow) throws -> Bid {
        let decoder = AuditLog.plainDecoder
        let declarationsText = try row.decode(String.self, at: 11)
        return Bid(
            id: try row.decode(UUID.self, at: 0), authorityID: try row.decode(UUID.self, at: 1), projectID: try row.decode(UUID.self, at: 2),
            supplierID: try row.decode(UUID.self, at: 3), supplierName: try row.decode(String.self, at: 4),
            status: try storedEnum(try row.decode(String.self, at: 5), column: "bid.status"), pricePence: try row.decode(Int?.self, at: 6),
            approach: try row.decode(String.self, at: 7), outputs: try row.decode(String.self, at: 8),
            kpis: try decoder.decode([ProposedKPI].self, from: Data(try row.decode(String.self, at: 9).utf8)),
            socialValue: try decoder.decode([SocialValueCommitment].self, from: Data(try row.decode(String.self, at: 10).utf8)),
            declarations: declarationsText == "{}" ? nil : try decoder.decode(BidDeclarations.self, from: Data(declarationsText.utf8)),
            submittedAt: try row.decode(Date?.self, at: 12), receiptSHA256: try row.decode(String?.self, at: 13),
            version: try row.decode(Int.self, at: 14), createdAt: try row.decode(Date.self, at: 15), updatedAt: try row.decode(Date.self, at: 16),
            outcomeNote: try row.decode(String?.self, at: 17))
    }
}

/// What the audit chain keeps of a bid: its state and its receipt, not its content (prices and
/// approaches stay in the bid, whose access is sealed).
struct AuditedBid: SnakeCaseCodingKeys, Sendable {
    var id: UUID
    var projectID: UUID
    var status: BidStatus
    var version: Int
    var submittedAt: Date?
    var receiptSHA256: String?

    enum CodingKeys: String, CodingKey {
        case id, projectID = "project_id", status, version, submittedAt = "submitted_at", receiptSHA256 = "receipt_sha256"
    }

    init(_ bid: Bid) {
        id = bid.id
        projectID = bid.projectID
        status = bid.status
        version = bid.version
        submittedAt = bid.submittedAt
        receiptSHA256 = bid.receiptSHA256
    }
}
