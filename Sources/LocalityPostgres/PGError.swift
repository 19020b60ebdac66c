/// The one error type of our PostgreSQL client.
///
/// Server errors carry the fields PostgreSQL reports (`PQresultErrorField`); client-side failures
/// (connection, pool, decoding) use the same type so callers translate errors in exactly one place.
public struct PGError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The server rejected a statement; `sqlState` says why.
        case server
        /// The connection could not be opened or was lost.
        case connection
        /// No connection became free within the pool's acquire timeout.
        case acquireTimeout
        /// The pool has been shut down.
        case poolClosed
        /// A result value could not be decoded into the requested Swift type.
        case decoding
        /// The client was used wrongly (for example a COPY that did not start).
        case client
    }

    public var kind: Kind
    /// Five-character SQLSTATE (server errors, and `08…` for lost connections).
    public var sqlState: String?
    public var message: String
    public var detail: String?
    public var hint: String?
    public var constraint: String?
    public var table: String?
    public var column: String?
    /// The connection was lost (or the server ended the session) inside a transaction before its COMMIT was sent:
    /// the server rolled it back, so nothing of it was committed and a body that is safe to run again may be.
    /// (A connection lost while the COMMIT was on its way leaves the outcome unknown: never set then.)
    public internal(set) var lostBeforeCommit = false

    public init(
        kind: Kind,
        sqlState: String? = nil,
        message: String,
        detail: String? = nil,
        hint: String? = nil,
        constraint: String? = nil,
        table: String? = nil,
        column: String? = nil
    ) {
        self.kind = kind
        self.sqlState = sqlState
        self.message = message
        self.detail = detail
        self.hint = hint
        self.constraint = constraint
        self.table = table
        self.column = column
    }

    public var description: String {
        var text = "PostgreSQL \(kind.rawValue) error"
        if let sqlState { text += " \(sqlState)" }
        text += ": \(message)"
        if let detail { text += " (\(detail))" }
        return text
    }

    // MARK: The classes that matter to callers

    public var isUniqueViolation: Bool { sqlState == "23505" }
    public var isForeignKeyViolation: Bool { sqlState == "23503" }
    public var isCheckViolation: Bool { sqlState == "23514" }
    public var isNotNullViolation: Bool { sqlState == "23502" }
    public var isSerializationFailure: Bool { sqlState == "40001" }
    public var isDeadlock: Bool { sqlState == "40P01" }
    /// Worth re-running the whole transaction.
    public var isRetryableTransactionFailure: Bool { isSerializationFailure || isDeadlock }
    public var isQueryCancelled: Bool { sqlState == "57014" }
    public var isInsufficientPrivilege: Bool { sqlState == "42501" }
    /// `57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now.
    public var isAdminShutdown: Bool { sqlState == "57P01" || sqlState == "57P02" || sqlState == "57P03" }
    public var isConnectionFailure: Bool {
        kind == .connection || (sqlState?.hasPrefix("08") ?? false)
    }
    /// `42P05` a prepared statement of that name exists, `26000` none does: the session's prepared
    /// statements are not what the client thinks (it never reuses a name), so it must not go on.
    public var isPreparedStatementMismatch: Bool { sqlState == "42P05" || sqlState == "26000" }
    /// The connection that produced this error must not be reused.
    public var breaksConnection: Bool { isConnectionFailure || isAdminShutdown || isPreparedStatementMismatch }
    /// `0A000` "cached plan must not change result type": a schema change altered what a prepared statement
    /// returns. The client prepares afresh; a transaction that hit it can simply run again.
    var isCachedPlanInvalidated: Bool { sqlState == "0A000" && message.contains("cached plan") }

    static func decoding(column: String, type: Any.Type, reason: String) -> PGError {
        PGError(kind: .decoding, message: "cannot decode column \"\(column)\" as \(type): \(reason)", column: column)
    }
}
