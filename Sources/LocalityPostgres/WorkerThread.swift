import Foundation
import Synchronization

/// A thread we own, running blocking libpq work one job at a time.
///
/// libpq calls block; running them here keeps them off Swift concurrency's cooperative threads and off
/// NIO's event loops. Each connection has its own worker, so one `PGconn` is only ever touched by one thread.
final class WorkerThread: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    /// The thread's pthread id, once it runs: lets `run` see that the caller is already here.
    private let threadID = Atomic<UInt>(0)
    private var jobs: [@Sendable () -> Void] = []
    private var stopping = false
    /// Jobs submitted and not yet taken; lets the idle worker spin briefly without taking the lock.
    private let pending = Atomic<Int>(0)
    /// How many times an idle worker checks for new work before sleeping. A query's reply usually comes
    /// back within microseconds, so the caller's next statement often arrives during the spin, sparing a
    /// sleep and a wake-up (each costs more than the query itself on a small machine).
    private static let spinChecks = 2_000

    init(name: String) {
        let thread = Thread { [self] in self.runLoop() }
        thread.name = name
        thread.start()
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        pending.add(1, ordering: .releasing)
        condition.signal()
        condition.unlock()
    }

    /// Finishes the queued jobs, then lets the thread end.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    /// True on this worker's own thread.
    var isCurrent: Bool {
        let id = threadID.load(ordering: .relaxed)
        return id != 0 && UInt(pthread_self()) == id
    }

    /// As a task executor, the worker runs the tasks of whoever borrowed its connection (the pool sets the
    /// preference), so their libpq calls run inline here instead of hopping threads twice per statement.
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        submit { [self] in job.runSynchronously(on: asUnownedTaskExecutor()) }
    }

    /// Runs `body` on this thread and returns its result to the calling task: inline when the task is
    /// already running here, else by queueing it.
    func run<R: Sendable>(_ body: @escaping @Sendable () throws -> R) async throws -> R {
        if isCurrent { return try body() }
        return try await withCheckedThrowingContinuation { continuation in
            submit {
                continuation.resume(with: Result { try body() })
            }
        }
    }

    private func runLoop() {
        threadID.store(UInt(pthread_self()), ordering: .relaxed)
        while true {
            var spins = 0
            while pending.load(ordering: .acquiring) == 0 && spins < Self.spinChecks {
                spins += 1
                if spins % 64 == 0 { sched_yield() }
            }
            condition.lock()
            while jobs.isEmpty && !stopping {
                condition.wait()
            }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            pending.subtract(1, ordering: .relaxed)
            condition.unlock()
            job()
        }
    }
}
