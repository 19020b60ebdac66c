internal import CLibPQ
import Foundation

/// Reading replies: `advance` and what it calls run on the I/O loop thread (or on the borrowing task, when
/// the reply is there at once, see `dispatch`), and turn libpq results into `PGResult`s and `PGError`s.
extension PGConnection {
    var socket: Int32 { PQsocket(handle) }

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
                if case .pipelined(_, let resultIndex, let errorsThrough) = request.work {
                    // Keep the first error up to `errorsThrough`, else the reported step's result; nothing after.
                    let index = request.pipelineResults
                    request.pipelineResults += 1
                    let failed = PQresultStatus(result) == PGRES_FATAL_ERROR
                    let keptFailure = request.pending.map { PQresultStatus($0) == PGRES_FATAL_ERROR } ?? false
                    if (index == resultIndex && request.pending == nil) || (failed && index <= errorsThrough && !keptFailure) {
                        if let kept = request.pending { PQclear(kept) }
                        request.pending = result
                    } else {
                        PQclear(result)
                    }
                    continue
                }
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
