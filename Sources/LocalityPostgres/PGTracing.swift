import Synchronization
import Tracing

/// A span per statement, a child of whatever span the calling task is in (the request's), when tracing is on.
/// Attributes: the statement's kind (its first SQL keyword), the SQLSTATE of a failure and the rows returned —
/// never its text, bound values or PostgreSQL's messages, which can quote values. Off until `enable()`: then
/// each statement costs one relaxed atomic load and nothing else.
public enum PGTracing {
    private static let enabled = Atomic<Bool>(false)

    /// Call once a tracer is bootstrapped (`InstrumentationSystem.bootstrap`).
    public static func enable() { enabled.store(true, ordering: .relaxed) }

    static var isEnabled: Bool { enabled.load(ordering: .relaxed) }

    static func traced(_ work: PGRequest.Work, _ run: () async throws -> PGResult?) async throws -> PGResult? {
        let operation: String
        switch work {
        case .query(let sql, _, _), .simple(let sql), .pipeline(_, let sql, _, _): operation = keyword(sql)
        case .pipelined: operation = "PIPELINE"
        case .close, .detach: return try await run()
        }
        let span = startSpan("db \(operation)", ofKind: .client)
        defer { span.end() }
        span.attributes["db.system.name"] = "postgresql"
        span.attributes["db.operation.name"] = operation
        do {
            let result = try await run()
            if let result { span.attributes["db.response.returned_rows"] = result.rowCount }
            return result
        } catch {
            if let error = error as? PGError {
                if let state = error.sqlState { span.attributes["db.response.status_code"] = state }
                span.attributes["error.type"] = error.kind.rawValue
            } else {
                span.attributes["error.type"] = error is CancellationError ? "cancelled" : "other"
            }
            // A status without the message: PostgreSQL's messages can quote the values that failed.
            span.setStatus(.init(code: .error))
            throw error
        }
    }

    /// The first SQL keyword, uppercased (`SELECT`, `INSERT`, `WITH`…), at most 16 letters.
    static func keyword(_ sql: String) -> String {
        let word = sql.drop { !$0.isLetter }.prefix { $0.isLetter }.prefix(16)
        return word.isEmpty ? "OTHER" : word.uppercased()
    }
}
