internal import CLibPQ
import Foundation

/// Sending requests and reading replies: `perform`/`dispatch`/`send` run on the borrowing task, `advance`
/// and what it calls on the I/O loop thread (or on the task, when the reply is there at once).
extension PGConnection {

    /// Sends `work` and suspends until the I/O loop has its result. When `cancellable`, cancelling the
    /// calling task sends the server a cancel request (`PQcancel`), or drops the statement unsent.
    func perform(_ work: PGRequest.Work, cancellable: Bool) async throws -> PGResult? {
        switch work {
        case .query, .simple, .pipeline:
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
        case .query, .simple, .pipeline:
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

    // MARK: On the I/O loop thread

    var socket: Int32 { PQsocket(handle) }

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

    /// The pipeline's sync point arrived: leave pipeline mode and report the statement's result (or the
    /// first error: an error skips the rest of the pipeline, whose results say "aborted").
    private func pipelineDone(_ request: PGRequest) -> PGRequest.Progress {
        let raw = request.pending
        request.pending = nil
        if PQexitPipelineMode(handle) != 1 {
            while PQisBusy(handle) == 0, let extra = PQgetResult(handle) { PQclear(extra) }
            if PQexitPipelineMode(handle) != 1 {
                markBroken()
                if let raw { PQclear(raw) }
                return .finished(.failure(connectionError()))
            }
        }
        return .finished(Result { try check(raw) as PGResult? })
    }

    private func sendPrepared(_ name: String, _ parameters: PGParameterArrays) -> Bool {
        PQsendQueryPrepared(handle, name, parameters.count, parameters.values, parameters.lengths, parameters.formats, 0) == 1
    }

    /// Pushes queued output to the socket as far as it goes without blocking.
    private func flush() -> PGRequest.Progress {
        switch PQflush(handle) {
        case 0: .waiting(flushPending: false)
        case 1: .waiting(flushPending: true)
        default: .finished(.failure(connectionError()))
        }
    }

    /// The socket became ready: read what arrived, collect results, and move on to the next step.
    func advance(_ request: PGRequest, readable: Bool, writable: Bool) -> PGRequest.Progress {
        if readable, PQconsumeInput(handle) != 1 {
            // The connection dropped. A FATAL error read just before (e.g. 57P01 from
            // pg_terminate_backend) says why better than "connection lost".
            markBroken()
            if let pending = request.pending {
                request.pending = nil
                return .finished(Result { try check(pending) as PGResult? })
            }
            return .finished(.failure(connectionError()))
        }
        // Output still queued (a large statement): keep flushing, and wait again until it is all out.
        var flushPending = false
        if writable || readable {
            switch PQflush(handle) {
            case 0: break
            case 1: flushPending = true
            default: return .finished(.failure(connectionError()))
            }
        }
        var boundaries = 0
        while PQisBusy(handle) == 0 {
            guard let result = PQgetResult(handle) else {
                // In a pipeline, the end of one statement's results; the next statement's follow. Two ends
                // in a row would mean libpq has nothing more queued, not even the sync point.
                if case .pipelining = request.stage {
                    boundaries += 1
                    if boundaries < 2 { continue }
                    markBroken()
                    return .finished(.failure(PGError(kind: .client, message: "internal: a pipeline lost its sync point")))
                }
                // Every result of this step is in: check it, then finish or send the next step.
                return stepDone(request)
            }
            boundaries = 0
            switch PQresultStatus(result) {
            case PGRES_PIPELINE_SYNC:
                PQclear(result)
                return pipelineDone(request)
            case PGRES_PIPELINE_ABORTED:
                // Skipped because an earlier statement of the pipeline failed; that error is kept.
                PQclear(result)
            case PGRES_COPY_IN:
                // COPY FROM STDIN sent through query/execute: refuse it, and the server ends the statement
                // with an error, leaving the session usable.
                PQclear(result)
                guard PQputCopyEnd(handle, "COPY FROM STDIN needs PGConnection.copyIn") != -1 else {
                    return .finished(.failure(connectionError()))
                }
                switch flush() {
                case .finished(let failure): return .finished(failure)
                case .waiting(let pending): flushPending = flushPending || pending
                }
            case PGRES_COPY_OUT, PGRES_COPY_BOTH:
                PQclear(result)
                markBroken()
                return .finished(.failure(PGError(kind: .client, message: "COPY TO STDOUT is not supported; the session is discarded")))
            default:
                if case .pipelining(.some(let name)) = request.stage {
                    // The second result of a pipeline that prepares is the prepare's: once it succeeds the
                    // statement exists on the server, whatever happens to its execution.
                    request.pipelineResults += 1
                    if request.pipelineResults == 2, PQresultStatus(result) == PGRES_COMMAND_OK,
                        case .pipeline(_, let sql, .prepare(_, let oids), _) = request.work {
                        statements.add(sql, name: name, oids: oids)
                    }
                }
                // As PQexec does: keep the last result, except that the first error wins.
                if let kept = request.pending {
                    if PQresultStatus(kept) == PGRES_FATAL_ERROR {
                        PQclear(result)
                        continue
                    }
                    PQclear(kept)
                }
                request.pending = result
            }
        }
        return .waiting(flushPending: flushPending)
    }

    private func stepDone(_ request: PGRequest) -> PGRequest.Progress {
        let raw = request.pending
        request.pending = nil
        switch request.stage {
        case .preparing(let name):
            do {
                _ = try check(raw)
            } catch {
                return .finished(.failure(error))
            }
            guard case .query(let sql, .prepare(_, let oids), let parameters) = request.work else {
                return .finished(.failure(PGError(kind: .client, message: "internal: prepared a statement that is not a query")))
            }
            statements.add(sql, name: name, oids: oids)
            request.stage = .executing
            guard sendPrepared(name, parameters) else { return .finished(.failure(connectionError())) }
            return flush()
        case .executing:
            return .finished(Result { try check(raw) as PGResult? })
        case .pipelining:
            if let raw { PQclear(raw) }
            return .finished(.failure(PGError(kind: .client, message: "internal: a pipeline ended without its sync point")))
        }
    }

    /// Wraps a result, turning failures into `PGError` and noting whether the session is still usable.
    /// Takes ownership of `result`.
    func check(_ result: OpaquePointer?) throws -> PGResult {
        guard let result else { throw connectionError() }
        let status = PQresultStatus(result)
        if status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK || status == PGRES_EMPTY_QUERY {
            return PGResult(handle: result)
        }
        let error = serverError(result)
        PQclear(result)
        if error.isCachedPlanInvalidated {
            // A schema change (an online migration) altered what prepared statements return: prepare every
            // statement afresh, under new names; the old ones are deallocated outside the transaction.
            statements.invalidateAll()
        }
        if PQstatus(handle) != CONNECTION_OK || error.breaksConnection {
            markBroken()
        }
        throw error
    }

    private func serverError(_ result: OpaquePointer) -> PGError {
        func field(_ code: Unicode.Scalar) -> String? {
            guard let value = PQresultErrorField(result, Int32(UInt8(ascii: code))) else { return nil }
            return String(cString: value)
        }
        let sqlState = field("C")
        let message = field("M") ?? String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
        let lost = PQstatus(handle) != CONNECTION_OK
        return PGError(
            kind: sqlState == nil && lost ? .connection : .server,
            sqlState: sqlState ?? (lost ? "08006" : nil),
            message: message.isEmpty ? String(cString: PQerrorMessage(handle)) : message,
            detail: field("D"),
            hint: field("H"),
            constraint: field("n"),
            table: field("t"),
            column: field("c")
        )
    }

    func connectionError() -> PGError {
        markBroken()
        let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
        return PGError(kind: .connection, sqlState: "08006", message: message.isEmpty ? "connection lost" : message)
    }
}
