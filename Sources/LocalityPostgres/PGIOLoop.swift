internal import CLibPQ
import Foundation
import Synchronization

/// One thread that drives every connection's statements through libpq's nonblocking API.
///
/// Why: a thread per connection costs two thread hops per statement, and on a small machine dozens of
/// workers compete with the server's backends for the cores. Here tasks hand their statement to this
/// thread and suspend; the thread sends it (`PQsendQuery…`), waits for all sockets at once with `epoll`,
/// reads replies (`PQconsumeInput`/`PQgetResult`) and resumes the waiting tasks. It never runs Swift
/// tasks and never blocks in libpq, so one slow statement holds up nobody else.
///
/// Ownership: a connection's `PGconn` is touched here only while one of its requests is in flight; the
/// request is handed over under `lock` and handed back by resuming its continuation, so the connection's
/// own task and this thread never use the `PGconn` at the same time.
final class PGIOLoop: @unchecked Sendable {
    /// Shared by every connection in the process: one thread suffices to keep a few cores of server busy.
    static let shared = PGIOLoop()

    private let epollFD: Int32
    /// Written by a submitter to wake the thread when it sleeps in `epoll_wait`.
    private let wakeFD: Int32

    private struct Submissions {
        var requests: [PGRequest] = []
        /// True while the thread is (about to be) asleep in `epoll_wait`: only then is a wake-up write needed.
        var sleeping = false
    }
    private let submissions = Mutex(Submissions())

    // Touched only on the loop thread.
    /// The request in flight on each socket, indexed by file descriptor.
    private var inFlight: [PGRequest?] = []

    private init() {
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        precondition(epollFD >= 0 && wakeFD >= 0, "cannot create the PostgreSQL I/O loop's epoll/eventfd: errno \(errno)")
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = wakeFD
        epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event)
        let thread = Thread { [self] in self.run() }
        thread.name = "pg-io"
        thread.start()
    }

    /// Queues `request`; the loop thread starts it on its next turn.
    func submit(_ request: PGRequest) {
        let wake = submissions.withLock { state -> Bool in
            state.requests.append(request)
            let wake = state.sleeping
            state.sleeping = false
            return wake
        }
        // Only a sleeping loop needs the syscall; a busy one picks the request up before it sleeps again.
        if wake { _ = eventfd_write(wakeFD, 1) }
    }

    // MARK: The loop thread

    private func run() {
        let capacity: Int32 = 128
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        while true {
            // Take everything submitted since the last turn; with nothing new, mark the loop asleep under
            // the same lock, so a later submitter knows to write the eventfd.
            let batch = submissions.withLock { state -> [PGRequest] in
                let batch = state.requests
                state.requests.removeAll(keepingCapacity: true)
                state.sleeping = batch.isEmpty
                return batch
            }
            for request in batch { start(request) }
            // After starting a batch look again at once: more may have arrived while we were sending.
            let count = epoll_wait(epollFD, events, capacity, batch.isEmpty ? -1 : 0)
            if batch.isEmpty { submissions.withLock { $0.sleeping = false } }
            guard count > 0 else { continue }  // timeout, or EINTR
            for index in 0..<Int(count) {
                let event = events[index]
                let fd = event.data.fd
                if fd == wakeFD {
                    var value: eventfd_t = 0
                    _ = eventfd_read(wakeFD, &value)
                    continue
                }
                // A stale event (a socket libpq already closed, its number reused) is harmless: handling
                // readiness that is not there just finds libpq still busy and re-arms.
                guard Int(fd) < inFlight.count, let request = inFlight[Int(fd)] else { continue }
                let flags = event.events
                let progress = request.connection.advance(
                    request,
                    readable: flags & (EPOLLIN.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0,
                    writable: flags & EPOLLOUT.rawValue != 0
                )
                settle(request, fd: fd, progress)
            }
        }
    }

    private func start(_ request: PGRequest) {
        // Closing: forget the socket first, so a later socket with the same number starts clean.
        if case .close = request.work {
            let fd = request.connection.socket
            if fd >= 0 {
                var event = epoll_event()
                _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, &event)
            }
        }
        let fd = request.connection.socket
        let progress = request.connection.begin(request)
        if case .waiting = progress, fd >= 0 {
            if Int(fd) >= inFlight.count {
                inFlight.append(contentsOf: repeatElement(nil, count: Int(fd) + 1 - inFlight.count))
            }
            inFlight[Int(fd)] = request
        }
        settle(request, fd: fd, progress)
    }

    /// Re-arms the socket for a request that still waits, or finishes it.
    private func settle(_ request: PGRequest, fd: Int32, _ progress: PGRequest.Progress) {
        switch progress {
        case .waiting(let flushPending):
            // libpq closes the socket when it sees the connection drop; never arm a number it gave up.
            if fd >= 0, request.connection.socket == fd, arm(fd, writable: flushPending) { return }
            if fd >= 0, Int(fd) < inFlight.count { inFlight[Int(fd)] = nil }
            request.finish(.failure(request.connection.connectionError()))
        case .finished(let result):
            if fd >= 0, Int(fd) < inFlight.count, inFlight[Int(fd)] === request { inFlight[Int(fd)] = nil }
            request.finish(result)
        }
    }

    /// One-shot interest: the socket reports once, then stays quiet until re-armed, so an idle
    /// connection's socket (or one in use elsewhere, as for COPY) never wakes the loop.
    private func arm(_ fd: Int32, writable: Bool) -> Bool {
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLONESHOT.rawValue | (writable ? EPOLLOUT.rawValue : 0)
        event.data.fd = fd
        if epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) == 0 { return true }
        // First use of this socket (or a reused descriptor number): register it.
        return errno == ENOENT && epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0
    }

}

/// One statement (or close) handed to the I/O loop, and its progress there.
final class PGRequest: @unchecked Sendable {
    enum Work {
        /// A parameterised statement: run the cached prepared statement, prepare it first, or run it unnamed.
        case query(sql: String, statement: Statement, parameters: PGParameterArrays)
        /// Simple-protocol SQL text, possibly several statements.
        case simple(String)
        /// `PQfinish`.
        case close
    }

    enum Statement {
        case cached(name: String)
        case prepare(name: String, oids: [UInt32])
        case unnamed(oids: [UInt32])
    }

    /// Where a statement stands on the loop thread.
    enum Stage {
        case preparing(name: String)
        case executing
        /// A schema change invalidated the cached plans: `DEALLOCATE ALL` runs, then `error` is reported.
        case deallocating(PGError)
    }

    enum Progress {
        /// Wait for the socket: readable, and writable too when libpq still has output to flush.
        case waiting(flushPending: Bool)
        case finished(Result<PGResult?, any Error>)
    }

    let connection: PGConnection
    let work: Work
    /// Nil for statements that must not be cancelled (BEGIN/COMMIT/ROLLBACK, close).
    let cancel: PGCancelState?
    private let continuation: UnsafeContinuation<PGResult?, any Error>

    // Loop-thread state.
    var stage = Stage.executing
    /// The result kept so far for the current step (the last one, or the first error, as `PQexec` keeps).
    var pending: OpaquePointer?
    var started: ContinuousClock.Instant?

    init(connection: PGConnection, work: Work, cancel: PGCancelState?, continuation: UnsafeContinuation<PGResult?, any Error>) {
        self.connection = connection
        self.work = work
        self.cancel = cancel
        self.continuation = continuation
    }

    func finish(_ result: Result<PGResult?, any Error>) {
        if let pending {
            PQclear(pending)
            self.pending = nil
        }
        if case .query(_, _, let parameters) = work { parameters.deallocate() }
        cancel?.end()
        if let started, let onQueryTime = connection.onQueryTime {
            onQueryTime(ContinuousClock.now - started)
        }
        continuation.resume(with: result)
    }
}

/// The three parallel C arrays libpq wants for parameters, plus the bytes they point at, in one allocation
/// made by the calling task (keeping that work off the loop thread) and freed when the request finishes.
struct PGParameterArrays: @unchecked Sendable {
    let count: Int32
    private let base: UnsafeMutableRawPointer?

    init(_ binds: [PGBind]) {
        count = Int32(binds.count)
        guard !binds.isEmpty else {
            base = nil
            return
        }
        var total = 0
        for bind in binds { total += bind.bytes?.count ?? 0 }
        // Layout: pointers (8 bytes each), lengths (4 each), formats (4 each), then the value bytes.
        let n = binds.count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 16 * n + max(total, 1), alignment: 8)
        let values = raw.bindMemory(to: UnsafePointer<CChar>?.self, capacity: n)
        let lengths = (raw + 8 * n).bindMemory(to: Int32.self, capacity: n)
        let formats = (raw + 12 * n).bindMemory(to: Int32.self, capacity: n)
        let data = (raw + 16 * n).bindMemory(to: CChar.self, capacity: max(total, 1))
        var offset = 0
        for (index, bind) in binds.enumerated() {
            formats[index] = bind.isBinary ? 1 : 0
            guard let bytes = bind.bytes else {
                values[index] = nil
                lengths[index] = 0
                continue
            }
            bytes.withUnsafeBytes { source in
                if source.count > 0 {
                    UnsafeMutableRawPointer(data + offset).copyMemory(from: source.baseAddress!, byteCount: source.count)
                }
            }
            values[index] = UnsafePointer(data + offset)
            lengths[index] = Int32(bytes.count)
            offset += bytes.count
        }
        base = raw
    }

    var values: UnsafePointer<UnsafePointer<CChar>?>? {
        base.map { UnsafePointer($0.assumingMemoryBound(to: UnsafePointer<CChar>?.self)) }
    }
    var lengths: UnsafePointer<Int32>? {
        base.map { UnsafePointer(($0 + 8 * Int(count)).assumingMemoryBound(to: Int32.self)) }
    }
    var formats: UnsafePointer<Int32>? {
        base.map { UnsafePointer(($0 + 12 * Int(count)).assumingMemoryBound(to: Int32.self)) }
    }

    func deallocate() { base?.deallocate() }
}
