internal import CLibPQ
import Foundation

/// `COPY … FROM STDIN`, in blocking mode on a thread of its own.
extension PGConnection {
    /// `COPY … FROM STDIN` in text format; `rows` are column values, `nil` for NULL. Returns rows copied.
    @discardableResult
    public func copyIn(_ sql: String, rows: some Sequence<[String?]>) async throws -> Int {
        var chunks: [[UInt8]] = []
        var chunk: [UInt8] = []
        chunk.reserveCapacity(1 << 16)
        for row in rows {
            for (index, value) in row.enumerated() {
                if index > 0 { chunk.append(UInt8(ascii: "\t")) }
                appendCopyText(value, to: &chunk)
            }
            chunk.append(UInt8(ascii: "\n"))
            if chunk.count >= 1 << 16 {
                chunks.append(chunk)
                chunk.removeAll(keepingCapacity: true)
            }
        }
        if !chunk.isEmpty { chunks.append(chunk) }
        return try await copyIn(sql, chunks: chunks)
    }

    /// `COPY … FROM STDIN` with pre-formatted data chunks. Returns rows copied.
    @discardableResult
    public func copyIn(_ sql: String, chunks: [[UInt8]]) async throws -> Int {
        // COPY streams many chunks; doing it in blocking mode on a thread of its own keeps it simple and
        // keeps a bulk load from holding up the I/O loop. No request of ours is in flight meanwhile, so
        // the loop does not touch this connection.
        try await sendDeferredBegin()
        await waitForCancels()
        let ticket = issueTicket()
        return try await withTaskCancellationHandler {
            try await runOnOwnThread(name: "pg-copy") { [self] in
                guard startStatement(ticket) else { throw PGError.cancelledByUser }
                defer { endStatement(ticket) }
                let start = ContinuousClock.now
                defer { self.onQueryTime?(ContinuousClock.now - start) }
                PQsetnonblocking(handle, 0)
                defer { PQsetnonblocking(handle, 1) }
                return try self.executeCopyIn(sql, chunks: chunks)
            }
        } onCancel: { [self] in
            cancel(ticket)
        }
    }

    private func executeCopyIn(_ sql: String, chunks: [[UInt8]]) throws -> Int {
        guard let start = PQexec(handle, sql) else { throw connectionError() }
        guard PQresultStatus(start) == PGRES_COPY_IN else {
            _ = try check(start)
            throw PGError(kind: .client, message: "statement did not start COPY FROM STDIN: \(sql.prefix(60))")
        }
        PQclear(start)
        var failure: String? = nil
        for chunk in chunks where failure == nil {
            let sent = chunk.withUnsafeBufferPointer { buffer in
                buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                    PQputCopyData(handle, $0, Int32(buffer.count))
                }
            }
            if sent != 1 { failure = String(cString: PQerrorMessage(handle)) }
        }
        guard PQputCopyEnd(handle, failure) == 1 else { throw connectionError() }
        var last: PGResult? = nil
        var firstError: (any Error)? = nil
        while let next = PQgetResult(handle) {
            do { last = try check(next) } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
        return last?.affectedRows ?? 0
    }
}

/// Text COPY format: backslash, tab, newline and carriage return escaped; NULL as `\N`.
private func appendCopyText(_ value: String?, to buffer: inout [UInt8]) {
    guard let value else {
        buffer.append(UInt8(ascii: "\\"))
        buffer.append(UInt8(ascii: "N"))
        return
    }
    for byte in value.utf8 {
        switch byte {
        case UInt8(ascii: "\\"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
        case UInt8(ascii: "\t"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
        case UInt8(ascii: "\n"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
        case UInt8(ascii: "\r"): buffer.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
        default: buffer.append(byte)
        }
    }
}
