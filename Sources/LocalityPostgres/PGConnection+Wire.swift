internal import CLibPQ
import Foundation

/// Sending requests, on the borrowing task: `perform` hands a request over, `dispatch` and `send` write it
/// to the socket. Replies are read in `PGConnection+Replies`.
extension PGConnection {
    /// Sends `work` and suspends until the I/O loop has its result. When `cancellable`, cancelling the
    /// calling task sends the server a cancel request (`PQcancel`), or drops the statement unsent.
    func perform(_ work: PGRequest.Work, cancellable: Bool) async throws -> PGResult? {
        guard PGTracing.isEnabled else { return try await performWork(work, cancellable: cancellable) }
        return try await PGTracing.traced(work) { try await performWork(work, cancellable: cancellable) }
    }

    private func performWork(_ work: PGRequest.Work, cancellable: Bool) async throws -> PGResult? {
        switch work {
        case .query, .simple, .pipeline, .pipelined:
            // A cancel request still on its way would land on this statement instead of its own.
            await waitForCancels()
            // Statements a schema change made stale go once the session is outside a transaction.
            if !statements.stale.isEmpty, PQtransactionStatus(handle) == PQTRANS_IDLE {
                await deallocateStale()
            }
        case .close, .detach:
            break
        }
        requestCount += 1
        let request = PGRequest(connection: self, work: work, cancellable: cancellable, ticket: issueTicket())
        // Whatever the outcome, the connection is the task's again from here.
        defer { request.handBack.take() }
        guard cancellable else {
            return try await withUnsafeThrowingContinuation { continuation in
                request.continuation = continuation
                dispatch(request)
            }
        }
        return try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { continuation in
                request.continuation = continuation
                dispatch(request)
            }
        } onCancel: { [self] in
            cancel(request.ticket)
        }
    }

    /// `DEALLOCATE`s the statements a schema change made stale. Their names are never reused, so this only
    /// frees server memory: if it fails, the session's prepared statements are no longer what we think,
    /// and it is closed when returned.
    private func deallocateStale() async {
        let names = statements.takeStale()
        do {
            _ = try await perform(.simple(names.map { "DEALLOCATE \($0)" }.joined(separator: "; ")), cancellable: false)
        } catch {
            markBroken()
        }
    }

    /// The calling task sends the statement itself, reads the reply if it is already there, and otherwise
    /// hands the statement to the loop to wait for the reply.
    ///
    /// Why send here: in nonblocking mode `PQsend…` and `PQflush` only copy into libpq's buffer and write
    /// what the socket takes at once; they never wait, so this does not block the cooperative thread.
    /// Sending here spreads that work (and the cost of waking the server's backend) over the cooperative
    /// threads, and the loop then needs no wake-up of its own: the reply's arrival on the socket wakes it.
    private func dispatch(_ request: PGRequest) {
        switch request.work {
        case .close, .detach:
            loop.submit(request)
            return
        case .query, .simple, .pipeline, .pipelined:
            break
        }
        var progress = send(request)
        if case .waiting(let flushPending) = progress {
            request.sentByCaller = true
            if !flushPending, loop.mayReadInline() {
                // Look for the reply at once, as pgbench does: sending wakes the server's backend, which
                // often runs straight away on this core and answers before we get the core back. Then the
                // result is here, the task goes on without suspending, and the loop never sees this
                // statement. When it is not, the cost is one nonblocking read that finds nothing.
                progress = advance(request, readable: true, writable: false)
            }
        }
        switch progress {
        case .finished(let result):
            request.finish(result)
        case .waiting(let flushPending):
            request.flushPending = flushPending
            loop.submit(request)
        }
    }

    /// Sends `request`'s first message, or finishes it at once (cancelled, send failed). Runs on the calling
    /// task, before the request is handed to the loop.
    private func send(_ request: PGRequest) -> PGRequest.Progress {
        if request.cancellable, !startStatement(request.ticket) {
            return .finished(.failure(PGError.cancelledByUser))
        }
        if onQueryTime != nil { request.started = ContinuousClock.now }
        let sent: Bool
        switch request.work {
        case .close, .detach:
            sent = false
        case .simple(let sql):
            request.stage = .executing
            sent = PQsendQuery(handle, sql) == 1
        case .pipeline(let begin, let sql, let statement, let parameters):
            sent = sendPipeline(request, begin: begin, sql: sql, statement: statement, parameters: parameters)
        case .pipelined(let steps, _, _):
            request.stage = .pipelining(prepared: nil)
            sent = PQenterPipelineMode(handle) == 1 && steps.allSatisfy { sendPaired($0.statement, $0.parameters) }
                && PQpipelineSync(handle) == 1
            // A half-queued pipeline leaves the session in an unknown state.
            if !sent { markBroken() }
        case .query(let sql, let statement, let parameters):
            switch statement {
            case .cached(let name):
                request.stage = .executing
                sent = sendPrepared(name, parameters)
            case .prepare(let name, let oids):
                request.stage = .preparing(name: name)
                sent = oids.withUnsafeBufferPointer { types in
                    PQsendPrepare(handle, name, sql, Int32(oids.count), types.baseAddress) == 1
                }
            case .unnamed(let oids):
                request.stage = .executing
                sent = oids.withUnsafeBufferPointer { types in
                    PQsendQueryParams(
                        handle, sql, parameters.count, types.baseAddress,
                        parameters.values, parameters.lengths, parameters.formats, 0
                    ) == 1
                }
            }
        }
        guard sent else { return .finished(.failure(connectionError())) }
        return flush()
    }

    /// Queues BEGIN, the statement (prepared first if new) and a sync point, in pipeline mode.
    private func sendPipeline(
        _ request: PGRequest, begin: String, sql: String, statement: PGRequest.Statement, parameters: PGParameterArrays
    ) -> Bool {
        guard PQenterPipelineMode(handle) == 1 else { return false }
        var prepared: String? = nil
        var sent = PQsendQueryParams(handle, begin, 0, nil, nil, nil, nil, 0) == 1
        switch statement {
        case .cached(let name):
            sent = sent && sendPrepared(name, parameters)
        case .prepare(let name, let oids):
            prepared = name
            sent = sent
                && oids.withUnsafeBufferPointer { PQsendPrepare(handle, name, sql, Int32(oids.count), $0.baseAddress) == 1 }
                && sendPrepared(name, parameters)
        case .unnamed(let oids):
            sent = sent && oids.withUnsafeBufferPointer { types in
                PQsendQueryParams(
                    handle, sql, parameters.count, types.baseAddress, parameters.values, parameters.lengths, parameters.formats, 0
                ) == 1
            }
        }
        sent = sent && PQpipelineSync(handle) == 1
        // A half-queued pipeline leaves the session in an unknown state.
        if !sent { markBroken() }
        request.stage = .pipelining(prepared: prepared)
        return sent
    }

    private func sendPaired(_ statement: PGRequest.PairedStatement, _ parameters: PGParameterArrays) -> Bool {
        switch statement {
        case .cached(let name):
            return sendPrepared(name, parameters)
        case .unnamed(let sql, let oids):
            // Several unnamed statements in one pipeline are fine: the server parses, binds and runs each
            // before it reads the next Parse, which replaces it.
            return oids.withUnsafeBufferPointer { types in
                PQsendQueryParams(
                    handle, sql, parameters.count, types.baseAddress, parameters.values, parameters.lengths, parameters.formats, 0
                ) == 1
            }
        }
    }

    func sendPrepared(_ name: String, _ parameters: PGParameterArrays) -> Bool {
        PQsendQueryPrepared(handle, name, parameters.count, parameters.values, parameters.lengths, parameters.formats, 0) == 1
    }

    /// Pushes queued output to the socket as far as it goes without blocking.
    func flush() -> PGRequest.Progress {
        switch PQflush(handle) {
        case 0: .waiting(flushPending: false)
        case 1: .waiting(flushPending: true)
        default: .finished(.failure(connectionError()))
        }
    }
}
