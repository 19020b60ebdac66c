import Foundation
public import LocalityPostgres

/// The one way domain code reaches tenant data: a transaction that first states who is acting, so that
/// PostgreSQL's row-level security applies the same scope the service checked.
public struct ScopedDatabase: Sendable {
    public let pool: PGPool
    /// When set (the API), each tenant's transactions hold at most its limit of the pool at once.
    public let bulkhead: TenantBulkhead?
    /// This instance's record of data changes (the API's response cache), told of each write as it ends. Every
    /// write is announced to the other instances (`DataChanges.announce`) whether or not this is set.
    public let changes: DataChanges?

    public init(pool: PGPool, bulkhead: TenantBulkhead? = nil, changes: DataChanges? = nil) {
        self.pool = pool
        self.bulkhead = bulkhead
        self.changes = changes
    }

    static let setContextSQL = """
        SELECT set_config('app.authority_id', $1, true), set_config('app.supplier_id', $2, true),
               set_config('app.user_id', $3, true), set_config('app.roles', $4, true),
               set_config('app.board_ids', $5, true), set_config('app.actor', $6, true),
               set_config('app.request_id', $7, true)
        """
    static let setContextOrderedScansSQL = setContextSQL
        + ", set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"

    /// Runs `body` in a transaction carrying `scope`'s context; known constraint violations become domain
    /// errors (for example, a budget that would go below zero becomes `insufficientFunds`).
    ///
    /// A deadlock or serialization failure re-runs the whole transaction (a few times, with backoff) before
    /// the error reaches the caller (and the API answers 503): every body here reaches the outside world only
    /// through its connection, so after the rollback nothing of the first attempt remains. A body that does
    /// more (sends mail, mutates captured state) must pass `retry: .never`.
    public func transaction<R: Sendable>(
        _ scope: AccessScope,
        isolation: PGIsolationLevel = .readCommitted,
        readOnly: Bool = false,
        retry: PGTransactionRetry = .onConflict(),
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        if readOnly {
            return try await scopedTransaction(scope, isolation: isolation, readOnly: true, retry: retry, afterCommit: nil, body)
        }
        // Announced after it ends, before its request is answered: the caller's next read, on any instance, sees it
        // (DataChanges). The announcement goes to the others with the COMMIT, in the same round trip, and runs
        // after it in a transaction of its own. A failure that may hide a commit is announced too.
        let result: R
        do {
            result = try await scopedTransaction(
                scope, isolation: isolation, readOnly: false, retry: retry, afterCommit: DataChanges.announcement(scope), body)
        } catch {
            if DataChanges.mayHaveCommitted(error) { await DataChanges.announce(scope, local: changes, on: pool) }
            throw error
        }
        changes?.changed(authority: scope.authorityID)
        return result
    }

    private func scopedTransaction<R: Sendable>(
        _ scope: AccessScope, isolation: PGIsolationLevel, readOnly: Bool, retry: PGTransactionRetry, afterCommit: PGQuery?,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        // A write of a request sent with an Idempotency-Key commits only while that request still holds its key,
        // and marks it applied in the same transaction (IdempotencyFence): a retry never repeats a committed write.
        let fence = readOnly ? nil : IdempotencyFence.current
        func fenced(_ connection: PGConnection) async throws -> R {
            let result = try await body(connection)
            if let fence { try await fence.markApplied(on: connection) }
            return result
        }
        do {
            // A read-only transaction of a request the API marked may go to a replica (ReplicaReads.swift).
            return try await Self.routed(readOnly: readOnly, primary: pool) { pool in
                // The context goes with BEGIN and the first statement in one round trip.
                // A body may commit with its last statement (`PGConnection.queryAndCommit`) unless the fence is to
                // mark its key after it.
                guard let bulkhead, let tenant = Self.tenantKey(scope) else {
                    return try await pool.withTransaction(
                        isolation: isolation, readOnly: readOnly, retry: retry, prelude: Self.contextQuery(scope),
                        afterCommit: afterCommit, mayCommitEarly: fence == nil, fenced)
                }
                return try await bulkhead.run(tenant) {
                    try await pool.withTransaction(
                        isolation: isolation, readOnly: readOnly, retry: retry, prelude: Self.contextQuery(scope),
                        afterCommit: afterCommit, mayCommitEarly: fence == nil, fenced)
                }
            }
        } catch let error as PGError {
            throw ConstraintTranslation.domainError(for: error) ?? error
        }
    }

    /// A read that is one statement: the context and the statement run in one transaction and one round trip
    /// (`PGConnection.readInOneRoundTrip`), within the tenant's share of the pool like `transaction`; run again
    /// on a fresh connection if its connection turns out lost (a pooler or database restart).
    ///
    /// `orderedScans` turns bitmap and sequential scans off for the statement (`enable_bitmapscan`,
    /// `enable_seqscan`, transaction-local, set with the context): for a page of a tenant's rows in index order,
    /// whose row-level policies are an OR of branches (staff's, suppliers') over values PostgreSQL only learns at
    /// run time. It estimates a few rows, and so prefers gathering all of the tenant's rows through a bitmap (or,
    /// while a table is small, a sequential scan) and sorting them to walking the ordered index and stopping at
    /// the page's end; on national-scale data that was 5–7 ms against 1 ms. Off means dearer, not forbidden: a
    /// plan with no other way still runs.
    public func read(_ scope: AccessScope, _ query: PGQuery, orderedScans: Bool = false) async throws -> PGResult {
        let prelude = Self.contextQuery(scope, orderedScans: orderedScans)
        do {
            return try await Self.routed(readOnly: true, primary: pool) { pool in
                guard let bulkhead, let tenant = Self.tenantKey(scope) else {
                    return try await pool.withConnectionRerunIfLost { try await $0.readInOneRoundTrip(prelude: prelude, query) }
                }
                return try await bulkhead.run(tenant) {
                    try await pool.withConnectionRerunIfLost { try await $0.readInOneRoundTrip(prelude: prelude, query) }
                }
            }
        } catch let error as PGError {
            throw ConstraintTranslation.domainError(for: error) ?? error
        }
    }

    /// A read-only transaction with no tenant context, for public data (the open contracting feed); routed
    /// like the scoped reads.
    public func publicRead<R: Sendable>(isolation: PGIsolationLevel = .readCommitted, _ body: (PGConnection) async throws -> R) async throws -> R {
        try await Self.routed(readOnly: true, primary: pool) { pool in
            try await pool.withTransaction(isolation: isolation, readOnly: true, retry: .onConflict(), body)
        }
    }

    /// Runs `work` on the primary's pool, or — for a read-only transaction of a request marked for replica
    /// reads — wherever that request's routing says.
    static func routed<R>(readOnly: Bool, primary: PGPool, _ work: (PGPool) async throws -> R) async throws -> R {
        guard readOnly, let request = ReplicaReadRequest.current else { return try await work(primary) }
        return try await request.run(primary: primary, work)
    }

    /// Whose share of the pool a transaction uses: the authority's, or a supplier organisation's (nil: no tenant,
    /// as for a public registration).
    static func tenantKey(_ scope: AccessScope) -> String? {
        if let authority = scope.authorityID { return "authority:" + authority.uuidString }
        if let supplier = scope.supplierID { return "supplier:" + supplier.uuidString }
        return nil
    }

    /// States `scope` for the current transaction (transaction-local settings).
    public static func setContext(_ scope: AccessScope, on connection: PGConnection) async throws {
        try await connection.query(contextQuery(scope))
    }

    static func contextQuery(_ scope: AccessScope, orderedScans: Bool = false) -> PGQuery {
        let boards = "{" + scope.boardIDs.map(\.uuidString).joined(separator: ",") + "}"
        return PGQuery(orderedScans ? setContextOrderedScansSQL : setContextSQL, [
            (scope.authorityID?.uuidString ?? "").pg, (scope.supplierID?.uuidString ?? "").pg,
            (scope.userID?.uuidString ?? "").pg, scope.roles.map(\.rawValue).sorted().joined(separator: ",").pg,
            boards.pg, scope.actor.pg, (scope.requestID ?? "").pg,
        ])
    }
}

/// Maps the constraints whose violation is a user error (not a bug) to what the user should hear.
enum ConstraintTranslation {
    static func domainError(for error: PGError) -> DomainError? {
        guard let constraint = error.constraint else { return nil }
        switch constraint {
        case "budget_available_not_negative":
            return .insufficientFunds("The budget does not have enough available for this entry.")
        case "budget_earmarked_not_negative":
            return .conflict("The release is larger than the amount earmarked.")
        case "budget_committed_not_negative":
            return .conflict("The entry would release more than is committed.")
        case "budget_spent_within_committed":
            return .conflict("Spend would exceed the amount committed.")
        // Raised by SQL functions and triggers (RAISE … USING CONSTRAINT) for a state the change no longer fits.
        case "contract_variation_decided":
            return .stateConflict(type: "variation-decided", "The variation has already been decided.")
        case "contract_variation_contract_active":
            return .conflict("Variations apply to active contracts; this contract is no longer active.")
        case "kpi_negotiation_closed":
            return .stateConflict(type: "negotiation-closed",
                                  "The contract's KPIs are no longer under negotiation (it has started or ended); propose a variation.")
        case "project_deadline_not_earlier":
            return .invalid("bid_deadline", "a published project's deadline can only be extended, never brought forward")
        case "board_name_unique":
            return .conflict("A board with this name already exists in the authority.")
        case "board_short_code_unique":
            return .conflict("A board with this short code already exists in the authority.")
        case "app_user_staff_email", "app_user_supplier_email":
            return .stateConflict(type: "duplicate-email", "A user with this email already exists.")
        case "authority_slug_key":
            return .conflict("An authority with this slug already exists.")
        // Unique keys a repeated or concurrent request can hit (issue 12): each loser hears what happened, with a
        // problem type of its own. Where the service can, it serialises first (row locks, ON CONFLICT); these
        // remain for whatever still races.
        case "supplier_companies_house_unique":
            return .stateConflict(type: "duplicate-registration", "An organisation with this Companies House number is already registered.")
        case "supplier_charity_unique":
            return .stateConflict(type: "duplicate-registration", "An organisation with this charity number is already registered.")
        case "supplier_admission_pkey":
            return .stateConflict(type: "duplicate-application", "Your organisation has already applied to this authority.")
        case "theme_name_unique":
            return .stateConflict(type: "duplicate-theme", "A theme with this name already exists in the authority.")
        case "social_value_measure_code_unique":
            return .stateConflict(type: "duplicate-measure", "A social value measure with this code already exists in the authority.")
        case "funding_stream_code_unique":
            return .stateConflict(type: "duplicate-funding-stream", "A funding stream with this code already exists in the authority.")
        case "bid_one_per_supplier":
            return .stateConflict(type: "duplicate-bid", "Your organisation already has a bid on this project; edit that one.")
        case "evaluation_panel_member_pkey":
            return .stateConflict(type: "panel-changed", "The panel was changed at the same time; reload it and try again.")
        case "conflict_declaration_pkey":
            return .stateConflict(type: "already-declared", "You have already declared for this supplier; declarations are final.")
        case "scorecard_pkey":
            return .stateConflict(type: "scores-changed", "Your scores for this bid were being saved at the same time; reload them and try again.")
        case "contract_one_per_project":
            return .stateConflict(type: "already-awarded", "The project has already been awarded.")
        case "kpi_revision_unique":
            return .stateConflict(type: "stale-revision", "Someone proposed a revision of this KPI at the same time; review the latest and try again.")
        case "kpi_acceptance_pkey":
            return .stateConflict(type: "already-accepted", "You have already accepted this revision.")
        case "kpi_return_version_unique":
            return .stateConflict(type: "duplicate-return", "Another return for this period was saved at the same time; reload the period and try again.")
        case "corrective_action_plan_live":
            return .stateConflict(type: "plan-in-progress", "A corrective action plan for this KPI is already in progress.")
        case "school_concern_open":
            return .stateConflict(type: "already-causing-concern", "The school is already causing concern; clear it first.")
        case "school_board_rule_pkey", "school_board_override_pkey":
            return .stateConflict(type: "duplicate-mapping", "The same district (or school) is mapped twice; give each once.")
        case "concern_category_pkey":
            return .stateConflict(type: "duplicate-category", "A concern category with this code already exists.")
        case "role_assignment_unique":
            return .invalid("roles", "names the same role (and board) twice")
        case "role_assignment_one_board_member":
            return .invalid("roles", "a board member sits on exactly one board")
        case "role_assignment_authority_id_board_id_fkey":
            return .invalid("roles", "names a board that does not exist")
        default:
            return nil
        }
    }
}

/// Writes audit events; always inside the transaction of the change, so a failed write fails the change.
public enum AuditLog {
    static let appendSQL = "SELECT append_audit_event($1, $2, $3, $4, $5)"

    public static func record(
        _ connection: PGConnection, action: String, entityType: String, entityID: String,
        before: (any Encodable & Sendable)?, after: (any Encodable & Sendable)?
    ) async throws {
        try await connection.query(PGQuery(appendSQL, [
            action.pg, entityType.pg, entityID.pg, try jsonBind(before), try jsonBind(after),
        ]))
    }

    static func jsonBind(_ value: (any Encodable & Sendable)?) throws -> PGBind {
        guard let value else { return .null(oid: PGType.jsonb) }
        let encoder = value is any SnakeCaseCodingKeys ? plainEncoder : auditEncoder
        return PGBind(oid: PGType.jsonb, text: String(decoding: try encoder.encode(value), as: UTF8.self))
    }

    /// Snake-case keys, sorted, ISO 8601 times. One for every caller (an encoder's options are fixed once set, and
    /// encoding with it is thread-safe).
    static let auditEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    /// `auditEncoder` without the key conversion, for types whose coding keys are spelt in snake case already
    /// (`SnakeCaseCodingKeys`): the same text, without Foundation splitting, recasing and joining every key.
    static let plainEncoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    /// Plain decoding for the same types (`convertFromSnakeCase` would turn `target_date` into `targetDate`, which
    /// their spelt-out keys no longer match).
    static let plainDecoder = JSONDecoder()
}

/// A type whose coding keys (its own and its members') are spelt in snake case, so `AuditLog.plainEncoder` writes
/// what `auditEncoder` would, more cheaply. `SnakeCaseCodingKeysTests` checks each such type against `auditEncoder`.
protocol SnakeCaseCodingKeys: Encodable {}
