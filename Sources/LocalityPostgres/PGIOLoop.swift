internal import CLibPQ
import Foundation
import Synchronization

/// A thread that waits for the replies of many connections at once, through libpq's nonblocking API.
///
/// Why: a thread per connection costs two thread hops per statement, and on a small machine dozens of
/// workers compete with the server's backends for the cores. Here the calling task sends its statement
/// (`PQsendQuery…` in nonblocking mode never waits), queues the request here and suspends; the loop
/// waits on all sockets with `epoll`, reads replies (`PQconsumeInput`/`PQgetResult`), sends any follow-up
/// step (execute after prepare) and resumes the waiting tasks. It never runs Swift tasks and never
/// blocks in libpq, so one slow statement holds up nobody else.
///
/// Ownership: a connection's `PGconn` is touched here only while one of its requests is queued or in
/// flight; the task hands it over under the queue's lock after its last libpq call and gets it back
/// when its continuation resumes, so the task and this thread never use the `PGconn` at the same time.
///
/// The sending task first looks for the reply itself (`PGConnection.dispatch`): when the server answered at
/// once, the statement never reaches the loop at all.
///
/// The loop is also a `TaskExecutor`. A task that prefers it (`PGPool.withIOAffinity`) runs on this
/// thread between statements, the way pgbench's client threads run: a reply resumes its task by
/// appending a job to the loop's own list, with no wake-up of another thread, and the task sends its next
/// statement before the loop waits again. Such tasks must never block, or every connection on the loop waits.
///
/// `@unchecked Sendable`: what other threads touch is atomic or under `submissions`' lock; the rest
/// (`inFlight`, `registered`, `localJobs`, `inlineReads`) is touched on the loop thread only.
final class PGIOLoop: TaskExecutor, @unchecked Sendable {
    /// Shared by every connection in the process, one loop per core: sending a statement wakes the
    /// server's backend, which costs the sending thread several microseconds, so one loop alone becomes
    /// the bottleneck with several clients.
    private static let loops: [PGIOLoop] = (0..<max(1, ProcessInfo.processInfo.activeProcessorCount)).map { PGIOLoop(index: $0) }
    private static let nextLoop = Atomic<Int>(0)

    /// The loop for a new connection, round-robin.
    static func next() -> PGIOLoop {
        let index = nextLoop.add(1, ordering: .relaxed).oldValue
        return loops[index % loops.count]
    }

    /// The loop whose thread is running the caller, if any.
    static var current: PGIOLoop? {
        let me = UInt(pthread_self())
        return loops.first { $0.threadID.load(ordering: .relaxed) == me }
    }

    /// The loop thread's id (`pthread_self`), set when the thread starts.
    private let threadID = Atomic<UInt>(0)

    private let epollFD: Int32
    /// Written by a submitter to wake the thread when it sleeps in `epoll_wait`.
    private let wakeFD: Int32

    private struct Submissions {
        var requests: [PGRequest] = []
        /// Jobs of tasks that prefer this loop, enqueued from other threads.
        var jobs: [UnownedJob] = []
        /// True while the thread is (about to be) asleep in `epoll_wait`: only then is a wake-up write needed.
        var sleeping = false
    }
    private let submissions = PGLock(Submissions())

    // Touched only on the loop thread.
    /// The request in flight on each socket, indexed by file descriptor.
    private var inFlight: [PGRequest?] = []
    /// The connection registered with epoll under each descriptor, to quiet an idle socket that reports.
    private var registered: [PGConnection?] = []
    /// Jobs enqueued by the loop thread itself (mostly tasks resumed by their replies): no lock, no wake.
    private var localJobs: [UnownedJob] = []

    private init(index: Int) {
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        precondition(epollFD >= 0 && wakeFD >= 0, "cannot create the PostgreSQL I/O loop's epoll/eventfd: errno \(errno)")
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.fd = wakeFD
        epoll_ctl(epollFD, EPOLL_CTL_ADD, wakeFD, &event)
        startThread(named: "pg-io-\(index)") { [self] in self.run() }
    }

    /// Queues `request`; the loop thread takes it on its next turn. A task running on the loop itself
    /// starts it at once: no lock, and nothing for the loop to look at again before it sleeps.
    func submit(_ request: PGRequest) {
        if isLoopThread {
            start(request)
            return
        }
        let wake = submissions.withLock { state -> Bool in
            state.requests.append(request)
            // Only a sleeping loop needs the syscall; a busy one takes the queue before it sleeps again.
            // A statement already sent needs none either when its socket listens for input: the reply
            // wakes the loop, which then takes the queue before looking for the request.
            guard state.sleeping else { return false }
            if request.sentByCaller, !request.connection.loopDeaf.load(ordering: .relaxed) { return false }
            state.sleeping = false
            return true
        }
        if wake { _ = eventfd_write(wakeFD, 1) }
    }

    // MARK: TaskExecutor

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if isLoopThread {
            localJobs.append(job)
            return
        }
        let wake = submissions.withLock { state -> Bool in
            state.jobs.append(job)
            guard state.sleeping else { return false }
            state.sleeping = false
            return true
        }
        if wake { _ = eventfd_write(wakeFD, 1) }
    }

    /// Replies read by tasks on this thread right after sending (`PGConnection.dispatch`) since the loop
    /// last looked at its sockets.
    private var inlineReads = 0
    /// A task whose replies are always ready at once would never suspend, and the loop's other
    /// connections would wait for it: after this many, the next statement waits its turn on the loop.
    /// At 10–20 µs a statement the sockets get a look at least every 5–10 ms. Measured: a cap of 32 cost
    /// 15–20% of the 32-client benchmark (streaks of ready replies are long and cheap); 512 costs nothing.
    static let inlineReadsPerTurn = 512

    /// Whether a task that has just sent a statement on one of this loop's connections may look for the
    /// reply itself. Always, from a thread that is not this loop's.
    func mayReadInline() -> Bool {
        guard isLoopThread else { return true }
        inlineReads += 1
        return inlineReads <= Self.inlineReadsPerTurn
    }

    private var isLoopThread: Bool {
        threadID.load(ordering: .relaxed) == UInt(pthread_self())
    }

    /// Takes and starts everything queued; returns how many requests and jobs it took.
    @discardableResult
    private func takeSubmissions() -> Int {
        let (batch, jobs) = submissions.withLock { state -> ([PGRequest], [UnownedJob]) in
            // The common case on a busy loop: nothing from other threads, and nothing to allocate.
            if state.requests.isEmpty, state.jobs.isEmpty { return ([], []) }
            defer { (state.requests, state.jobs) = ([], []) }
            return (state.requests, state.jobs)
        }
        for request in batch { start(request) }
        localJobs.append(contentsOf: jobs)
        return batch.count + jobs.count
    }

    /// Runs the jobs queued so far (not those they queue in turn: the sockets get a look in between).
    private func runJobs() {
        guard !localJobs.isEmpty else { return }
        var jobs: [UnownedJob] = []
        swap(&jobs, &localJobs)
        let executor = asUnownedTaskExecutor()
        for job in jobs { job.runSynchronously(on: executor) }
        // Keep the storage: the next batch is usually as large.
        jobs.removeAll(keepingCapacity: true)
        if localJobs.isEmpty { swap(&jobs, &localJobs) }
    }

    // MARK: The loop thread

    private func run() {
        let capacity: Int32 = 128
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        threadID.store(UInt(pthread_self()), ordering: .relaxed)
        while true {
            // Take everything submitted since the last turn: one wake-up serves many requests. Then run
            // the tasks resumed by the last replies, which send their next statements.
            takeSubmissions()
            runJobs()

            // No spinning before sleeping: measured, it only took CPU from the server's backends (and from
            // the cooperative threads) on a two-core machine, at every client count.
            var count: Int32 = 0
            if !localJobs.isEmpty {
                // Jobs queued by the jobs just run: look at the sockets without sleeping, then run them.
                count = epoll_wait(epollFD, events, capacity, 0)
            } else {
                // Sleep. The flag is set under the lock that guards the queue, so a request submitted after
                // this check sees it (and writes the eventfd when its reply alone would not wake us).
                let sleep = submissions.withLock { state -> Bool in
                    state.sleeping = state.requests.isEmpty && state.jobs.isEmpty
                    return state.sleeping
                }
                if sleep {
                    count = epoll_wait(epollFD, events, capacity, -1)
                    submissions.withLock { $0.sleeping = false }
                }
            }
            inlineReads = 0
            for index in 0..<Int(max(count, 0)) {
                handle(events[index])
            }
        }
    }

    private func handle(_ event: epoll_event) {
        let fd = event.data.fd
        if fd == wakeFD {
            var value: eventfd_t = 0
            _ = eventfd_read(wakeFD, &value)
            return
        }
        if Int(fd) >= inFlight.count || inFlight[Int(fd)] == nil {
            // A reply can arrive before its request reaches the loop (the caller sends, then queues).
            takeSubmissions()
        }
        guard Int(fd) < inFlight.count, let request = inFlight[Int(fd)] else {
            // An idle connection's socket reports (the server closed it, or COPY runs on it elsewhere):
            // stop listening until its next statement, or the level-triggered event would repeat forever.
            // Then look at the queue once more: a request queued meanwhile, seeing the socket deaf,
            // wakes the loop itself; one queued before is started here, which listens again.
            if Int(fd) < registered.count, let connection = registered[Int(fd)], connection.loopInterest != 0 {
                setInterest(connection, fd: fd, 0)
                connection.loopDeaf.store(true, ordering: .relaxed)
                takeSubmissions()
            }
            return
        }
        let flags = event.events
        let progress = request.connection.advance(
            request,
            readable: flags & (EPOLLIN.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0,
            writable: flags & EPOLLOUT.rawValue != 0
        )
        settle(request, fd: fd, progress)
    }

    private func start(_ request: PGRequest) {
        let connection = request.connection
        let fd = connection.socket
        let leaving: Bool
        switch request.work {
        case .close, .detach: leaving = true
        case .query, .simple, .pipeline, .pipelined: leaving = false
        }
        if leaving, fd >= 0, connection.loopSocket == fd {
            // Forget the socket before libpq closes it (or another loop takes it), so a later socket with
            // the same number starts clean.
            var event = epoll_event()
            _ = epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, &event)
            if Int(fd) < registered.count { registered[Int(fd)] = nil }
            connection.loopSocket = -1
            connection.loopDeaf.store(true, ordering: .relaxed)
        }
        let progress: PGRequest.Progress
        switch request.work {
        case .close:
            connection.finishHandle()
            progress = .finished(.success(nil))
        case .detach:
            progress = .finished(.success(nil))
        case .query, .simple, .pipeline, .pipelined:
            progress = .waiting(flushPending: request.flushPending)
        }
        if case .waiting = progress, fd >= 0 {
            if Int(fd) >= inFlight.count {
                inFlight.append(contentsOf: repeatElement(nil, count: Int(fd) + 1 - inFlight.count))
            }
            inFlight[Int(fd)] = request
        }
        settle(request, fd: fd, progress)
    }

    /// Keeps waiting for a request's socket, or finishes the request.
    private func settle(_ request: PGRequest, fd: Int32, _ progress: PGRequest.Progress) {
        switch progress {
        case .waiting(let flushPending):
            // libpq closes the socket when it sees the connection drop; never listen on a number it gave up.
            if fd >= 0, request.connection.socket == fd, listen(request.connection, fd: fd, writable: flushPending) { return }
            forget(request, fd: fd)
            request.finish(.failure(request.connection.connectionError()))
        case .finished(let result):
            forget(request, fd: fd)
            request.finish(result)
        }
    }

    private func forget(_ request: PGRequest, fd: Int32) {
        if fd >= 0, Int(fd) < inFlight.count, inFlight[Int(fd)] === request {
            inFlight[Int(fd)] = nil
        }
    }

    /// Level-triggered interest, registered once per socket and changed only when it must be: most
    /// statements cost no epoll_ctl at all. Writability is asked for only while libpq has output queued.
    private func listen(_ connection: PGConnection, fd: Int32, writable: Bool) -> Bool {
        let interest = EPOLLIN.rawValue | (writable ? EPOLLOUT.rawValue : 0)
        if connection.loopSocket != fd {
            var event = epoll_event()
            event.events = interest
            event.data.fd = fd
            var result = epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event)
            if result != 0, errno == EEXIST {
                // A number reused from a socket libpq closed while still registered elsewhere.
                result = epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event)
            }
            guard result == 0 else { return false }
            connection.loopSocket = fd
            connection.loopInterest = interest
            connection.loopDeaf.store(false, ordering: .relaxed)
            if Int(fd) >= registered.count {
                registered.append(contentsOf: repeatElement(nil, count: Int(fd) + 1 - registered.count))
            }
            registered[Int(fd)] = connection
            return true
        }
        return connection.loopInterest == interest || setInterest(connection, fd: fd, interest)
    }

    @discardableResult
    private func setInterest(_ connection: PGConnection, fd: Int32, _ interest: UInt32) -> Bool {
        var event = epoll_event()
        event.events = interest
        event.data.fd = fd
        guard epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, &event) == 0 else { return false }
        connection.loopInterest = interest
        if interest != 0 { connection.loopDeaf.store(false, ordering: .relaxed) }
        return true
    }
}

/// One statement (or close) handed to the I/O loop, and its progress there.
///
/// `@unchecked Sendable`: its mutable fields belong to one thread at a time, like the connection's `PGconn`:
/// the calling task until it hands the request to the loop (under the loop's lock), then the loop thread
/// until it resumes the continuation.
final class PGRequest: @unchecked Sendable {
    enum Work {
        /// A parameterised statement: run the cached prepared statement, prepare it first, or run it unnamed.
        case query(sql: String, statement: Statement, parameters: PGParameterArrays)
        /// Simple-protocol SQL text, possibly several statements.
        case simple(String)
        /// `BEGIN …` (text, no parameters) and one parameterised statement, sent together in libpq's
        /// pipeline mode: one round trip for both. The statement's result is the request's result.
        case pipeline(begin: String, sql: String, statement: Statement, parameters: PGParameterArrays)
        /// Statements (each prepared, or unnamed: behind a transaction pooler, or text such as `BEGIN`) and one
        /// sync point in pipeline mode: one round trip. The request's result is the first error among the
        /// steps up to `errorsThrough` (at least `resultIndex`), else step `resultIndex`'s result; what follows
        /// is not reported (an error there is ignored). Used for a read in one implicit transaction
        /// (`readInOneRoundTrip`), a transaction's `BEGIN` and context sent with its first statement, `COMMIT`
        /// with the statement that follows it, and a transaction's last statement with its `COMMIT`
        /// (`queryAndCommit`: the statement's result, or its error or the COMMIT's).
        case pipelined(steps: [PipelineStep], resultIndex: Int, errorsThrough: Int)
        /// `PQfinish`.
        case close
        /// Stop watching the idle connection's socket: it moves to another loop.
        case detach
    }

    enum Statement {
        case cached(name: String)
        case prepare(name: String, oids: [UInt32])
        case unnamed(oids: [UInt32])
    }

    /// A statement of a pipeline: one prepared before, or one sent unnamed with its text.
    enum PairedStatement {
        case cached(name: String)
        case unnamed(sql: String, oids: [UInt32])
    }

    struct PipelineStep {
        let statement: PairedStatement
        let parameters: PGParameterArrays

        /// Trusted SQL text without parameters (`BEGIN …`, `COMMIT`), sent unnamed.
        static func text(_ sql: String) -> PipelineStep {
            PipelineStep(statement: .unnamed(sql: sql, oids: []), parameters: PGParameterArrays([]))
        }
    }

    /// Where a statement stands on the loop thread.
    enum Stage {
        case preparing(name: String)
        case executing
        /// Reading a pipeline's results until its sync point; `prepared` names the statement prepared in it.
        case pipelining(prepared: String?)
    }

    enum Progress {
        /// Wait for the socket: readable, and writable too when libpq still has output to flush.
        case waiting(flushPending: Bool)
        case finished(Result<PGResult?, any Error>)
    }

    let connection: PGConnection
    let work: Work
    /// False for statements that must not be cancelled (BEGIN/COMMIT/ROLLBACK, close).
    let cancellable: Bool
    /// Names this request to the connection's cancel bookkeeping (see `PGCancel`).
    let ticket: UInt64
    /// Set by the calling task before it hands the request over.
    var continuation: UnsafeContinuation<PGResult?, any Error>?

    // Loop-thread state.
    var stage = Stage.executing
    /// The result kept so far for the current step (the last one, or the first error, as `PQexec` keeps).
    var pending: OpaquePointer?
    /// Output libpq could not write yet: the loop listens for writability too and flushes.
    var flushPending = false
    /// Results of a pipeline seen so far (not counting skipped ones): its steps' places, for `.pipelined`.
    var pipelineResults = 0
    /// Sent by the calling task (everything but close): the loop only waits for the reply.
    var sentByCaller = false
    var started: ContinuousClock.Instant?
    /// The connection's hand-back from the loop thread (or whoever finished the request) to the task.
    let handBack = PGHandOff()

    init(connection: PGConnection, work: Work, cancellable: Bool, ticket: UInt64) {
        self.connection = connection
        self.work = work
        self.cancellable = cancellable
        self.ticket = ticket
    }

    func finish(_ result: Result<PGResult?, any Error>) {
        if let pending {
            PQclear(pending)
            self.pending = nil
        }
        switch work {
        case .query(_, _, let parameters), .pipeline(_, _, _, let parameters): parameters.deallocate()
        case .pipelined(let steps, _, _):
            for step in steps { step.parameters.deallocate() }
        case .simple, .close, .detach: break
        }
        if cancellable { connection.endStatement(ticket) }
        if sentByCaller {
            // The server answered (a lost connection is marked broken instead): the pool's alive-bypass
            // window starts here, with no clock read of its own when the connection is returned.
            let now = ContinuousClock.now
            connection.lastReply = now
            if let started, let onQueryTime = connection.onQueryTime { onQueryTime(now - started) }
        }
        handBack.give()
        continuation?.resume(with: result)
    }
}

/// The three parallel C arrays libpq wants for parameters, plus the bytes they point at, in one allocation
/// made by the calling task (keeping that work off the loop thread) and freed when the request finishes.
///
/// `@unchecked Sendable`: the bytes are written once, before the request is handed over, then only read,
/// and freed once (`PGRequest.finish`).
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
