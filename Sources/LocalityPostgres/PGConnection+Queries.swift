internal import CLibPQ

/// The statement API: parameterised queries, trusted SQL text, transactions.
extension PGConnection {
    /// Runs one parameterised statement (prepared once per connection, then executed by name).
    @discardableResult
    public func query(_ query: PGQuery) async throws -> PGResult {
        try requireOpenTransaction()
        if deferredBegin != nil, let result = try await beginWith(query) { return result }
        let statement = statement(for: query)
        do {
            let work = PGRequest.Work.query(sql: query.sql, statement: statement, parameters: PGParameterArrays(query.binds))
            return try await perform(work, cancellable: true)!
        } catch let error as PGError where error.isCachedPlanInvalidated {
            // An online migration changed what a prepared statement returns. Outside a transaction the
            // statement failed before it ran, so it runs once more, prepared afresh (the cache was emptied);
            // inside one, the transaction has failed, and the caller (or the pool's retry) starts it again.
            guard case .cached = statement, phase != .inTransaction, !isBroken, PQtransactionStatus(handle) == PQTRANS_IDLE else {
                throw error
            }
            let work = PGRequest.Work.query(sql: query.sql, statement: self.statement(for: query), parameters: PGParameterArrays(query.binds))
            return try await perform(work, cancellable: true)!
        }
    }

    /// Runs `prelude` then `query` in one transaction and one round trip, and returns `query`'s result: both
    /// statements and a sync point go out together in pipeline mode, where statements up to the sync form one
    /// implicit transaction (READ COMMITTED, committed at the sync, rolled back if either fails). For a read
    /// that is one statement after the tenant context: BEGIN, context, query and COMMIT cost one round trip
    /// instead of three. The first time a session sees either statement it runs them the ordinary way
    /// (`withTransaction(prelude:)`), which prepares them. A schema change that invalidates them (0A000) is
    /// recovered like any query's: the statements are prepared afresh next time. Statements that are never
    /// prepared (behind a transaction pooler, or past the cache's capacity) go unnamed in the same pipeline:
    /// one sync point, so one transaction, which a transaction pooler keeps on one server session.
    public func readInOneRoundTrip(prelude: PGQuery, _ query: PGQuery) async throws -> PGResult {
        try await sendDeferredBegin()
        guard let first = step(for: prelude), let second = step(for: query) else {
            return try await withTransaction(readOnly: true, prelude: prelude) { try await $0.query(query) }
        }
        return try await perform(.pipelined(steps: [first, second], resultIndex: 1, errorsThrough: 1), cancellable: true)!
    }

    /// How `query` goes into a pipeline; nil when it is yet to be prepared.
    private func step(for query: PGQuery) -> PGRequest.PipelineStep? {
        let statement: PGRequest.PairedStatement
        switch self.statement(for: query) {
        case .cached(let name): statement = .cached(name: name)
        case .unnamed(let oids): statement = .unnamed(sql: query.sql, oids: oids)
        case .prepare: return nil
        }
        return PGRequest.PipelineStep(statement: statement, parameters: PGParameterArrays(query.binds))
    }

    /// The transaction's first statement: `BEGIN`, the context and `query` in one round trip, returning
    /// `query`'s result (or the first error). Nil when one of the statements is yet to be prepared: then
    /// `BEGIN` and the context have been sent (preparing the context if new) and `query` is the caller's to run.
    private func beginWith(_ query: PGQuery) async throws -> PGResult? {
        guard let (begin, prelude) = deferredBegin else { return nil }
        if let context = step(for: prelude), let first = step(for: query) {
            deferredBegin = nil
            return try await perform(.pipelined(steps: [.text(begin), context, first], resultIndex: 2, errorsThrough: 2), cancellable: true)!
        }
        try await sendDeferredBegin()
        return nil
    }

    /// Sends a transaction's deferred `BEGIN` and context on their own (one round trip), before a statement
    /// that cannot go with them (trusted text, COPY, a statement to prepare).
    func sendDeferredBegin() async throws {
        guard let (begin, prelude) = deferredBegin else { return }
        deferredBegin = nil
        let work = PGRequest.Work.pipeline(
            begin: begin, sql: prelude.sql, statement: statement(for: prelude), parameters: PGParameterArrays(prelude.binds))
        _ = try await perform(work, cancellable: false)
    }

    /// Chooses the statement here, on the borrowing task, so the I/O loop only sends and reads.
    func statement(for query: PGQuery) -> PGRequest.Statement {
        if query.plannedWithValues { return .unnamed(oids: query.binds.map(\.oid)) }
        return statements.statement(for: query.sql, oids: query.binds.lazy.map(\.oid))
    }

    /// Runs trusted SQL text with no parameters through the simple-query protocol (several statements
    /// allowed). For migrations and fixed commands only; values always go through `query`.
    public func execute(_ sql: String) async throws {
        try requireOpenTransaction()
        try await sendDeferredBegin()
        _ = try await perform(.simple(sql), cancellable: true)
    }

    /// Sets a transaction-local setting (`set_config(name, value, true)`), e.g. the tenant context.
    public func setLocal(_ name: String, _ value: String) async throws {
        try await query("SELECT set_config(\(name), \(value), true)")
    }

    // MARK: Transactions

    /// What `withTransaction` keeps of the transaction it runs, for `queryAndCommit`.
    struct OpenTransaction {
        /// Whether the body may end the transaction itself (nothing of the caller's runs after it in the transaction).
        let mayCommitEarly: Bool
        let afterCommit: PGQuery?
        /// COMMIT went out with the body's last statement; from then on whether it applied is unknown until answered.
        var commitSent = false
        var committed = false
    }

    /// A statement after `queryAndCommit` would run outside the transaction: a mistake in the body, refused.
    private func requireOpenTransaction() throws {
        if openTransaction?.commitSent == true {
            throw PGError(kind: .client, message: "a statement after the transaction's last one (queryAndCommit): the transaction is over")
        }
    }

    /// Runs `query` as the last statement of the transaction `withTransaction` is running, with its `COMMIT` (and
    /// the transaction's after-commit statement) in the same round trip, and returns `query`'s result: when it
    /// returns, the transaction has committed. The first error, `query`'s or the COMMIT's, is thrown and nothing
    /// is committed (the body's error path rolls back as usual). The body runs nothing more on the connection
    /// (a statement now throws) and returns; throwing afterwards rolls nothing back.
    ///
    /// Where the transaction may not end early the statement runs as any other, and COMMIT follows when the body
    /// returns, as usual: a transaction begun without `mayCommitEarly` (its caller writes after the body: an
    /// idempotency key's mark), outside `withTransaction`, before the transaction's first statement has gone
    /// (`BEGIN` travels with it), or a statement (or after-commit statement) yet to be prepared on this session.
    /// Not cancellable, as COMMIT is not: for a last statement that does not wait on another's lock.
    public func queryAndCommit(_ query: PGQuery) async throws -> PGResult {
        guard let open = openTransaction, open.mayCommitEarly, !open.commitSent, deferredBegin == nil, let last = step(for: query) else {
            return try await self.query(query)
        }
        var steps = [last, PGRequest.PipelineStep.text("COMMIT")]
        if let afterCommit = open.afterCommit {
            guard let next = step(for: afterCommit) else { return try await self.query(query) }
            steps.append(next)
        }
        openTransaction?.commitSent = true
        let result = try await perform(.pipelined(steps: steps, resultIndex: 0, errorsThrough: 1), cancellable: false)!
        openTransaction?.committed = true
        return result
    }

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    ///
    /// `prelude`, when given, runs first inside the transaction: for the statement every transaction of a kind
    /// starts with (the tenant context). `BEGIN` and the prelude are not sent on their own: they go with the
    /// body's first statement, in one round trip (libpq pipeline mode), and a body that runs no statement costs
    /// none. Neither is cancellable on its own; sent with the first statement, cancelling that cancels the
    /// transaction.
    ///
    /// `afterCommit`, when given, is sent with `COMMIT` in the same round trip and runs after it, in a
    /// transaction of its own, when the commit succeeded; its failure is not the transaction's and is not
    /// reported (for a notice to other sessions that must never be part of the committed transaction).
    ///
    /// `mayCommitEarly`: the body may end the transaction with its last statement (`queryAndCommit`), one round
    /// trip fewer. Pass it only when nothing is to run in the transaction after the body.
    public func withTransaction<R: Sendable>(
        isolation: PGIsolationLevel = .readCommitted,
        readOnly: Bool = false,
        prelude: PGQuery? = nil,
        afterCommit: PGQuery? = nil,
        mayCommitEarly: Bool = false,
        _ body: (PGConnection) async throws -> R
    ) async throws -> R {
        let begin = "BEGIN ISOLATION LEVEL \(isolation.rawValue)\(readOnly ? " READ ONLY" : "")"
        try await sendDeferredBegin()
        let enclosing = openTransaction
        openTransaction = OpenTransaction(mayCommitEarly: mayCommitEarly, afterCommit: afterCommit)
        defer { openTransaction = enclosing }
        let outer = phase
        // Until COMMIT or ROLLBACK has been answered, the session counts as inside a transaction: a
        // connection returned in this phase is never lent again (see `checkIn`).
        phase = .inTransaction
        let result: R
        do {
            if let prelude {
                deferredBegin = (begin, prelude)
            } else {
                try await runUncancellable(begin)
            }
            result = try await body(self)
        } catch {
            let commitSent = openTransaction?.commitSent ?? false
            if deferredBegin != nil {
                // Nothing was sent: there is no transaction to roll back.
                deferredBegin = nil
                phase = outer
            } else if openTransaction?.committed == true {
                // The body failed after its last statement committed the transaction: nothing to roll back.
                phase = outer
            } else if !isBroken {
                do {
                    try await runUncancellable("ROLLBACK")
                    phase = outer
                } catch {
                    markBroken()
                }
            }
            if var lost = error as? PGError, lost.breaksConnection, !commitSent {
                // The session failed before COMMIT was sent: the transaction was rolled back, by the ROLLBACK
                // above or by PostgreSQL when the session ended.
                lost.lostBeforeCommit = true
                throw lost
            }
            throw error
        }
        if openTransaction?.committed == true {
            // Committed with the body's last statement, its after-commit statement sent with it.
            phase = outer
            return result
        }
        if deferredBegin != nil {
            // The body ran no statement: nothing to begin, commit or follow.
            deferredBegin = nil
            phase = outer
            return result
        }
        let tag: String
        var followUp = afterCommit
        do {
            if let afterCommit, let next = step(for: afterCommit) {
                followUp = nil
                tag = try await perform(.pipelined(steps: [.text("COMMIT"), next], resultIndex: 0, errorsThrough: 0), cancellable: false)!.commandTag
            } else {
                tag = try await runUncancellable("COMMIT")
            }
        } catch {
            // A COMMIT the server refused (a deferred constraint, a serialization failure) ended the transaction.
            if !isBroken, PQtransactionStatus(handle) == PQTRANS_IDLE { phase = outer }
            throw error
        }
        phase = outer
        if tag == "ROLLBACK" {
            // The server ends a failed transaction with ROLLBACK even when asked to COMMIT.
            throw PGError(kind: .server, sqlState: "25P02", message: "the transaction failed and was rolled back")
        }
        if let followUp {
            // Its first time on this session: run on its own, which prepares it for the next time.
            _ = try? await query(followUp)
        }
        return result
    }

    @discardableResult
    func runUncancellable(_ sql: String) async throws -> String {
        try await perform(.simple(sql), cancellable: false)!.commandTag
    }
}

extension PGResult {
    var commandTag: String { String(cString: PQcmdStatus(handlePointer)) }
}
