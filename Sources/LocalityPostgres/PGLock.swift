import Foundation
import Synchronization

/// A value behind a `pthread_mutex_t`: the client's one lock type.
///
/// Why not `Synchronization.Mutex`: on Linux its contended path hands the lock over through a futex, which
/// the thread sanitizer cannot see, so the CI's sanitizer run reported false races on every contended lock
/// (four threads appending to an array under a `Mutex` reproduce it). TSan intercepts pthread mutexes, and
/// uncontended they cost the same one atomic exchange.
///
/// `@unchecked Sendable`: `value` is only touched inside `withLock`, under the mutex.
final class PGLock<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ value: Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}

/// Makes a hand-over through a continuation visible to the thread sanitizer: the giving thread calls `give()`
/// just before it resumes the continuation, the resumed task calls `take()` once it has the value.
///
/// Why: the concurrency runtime orders the two through its own atomics, but when `resume` wins the race with
/// the task's `await` the task goes on without suspending, and the sanitizer (which cannot see the
/// uninstrumented runtime) saw no order between what the giver wrote (a connection's statement cache, a
/// result) and what the task did next. The pair costs two plain moves on x86 and ARM64, and states the
/// ownership rule in code instead of in suppressions.
final class PGHandOff: Sendable {
    private let given = Atomic<Bool>(false)

    init() {}

    func give() { given.store(true, ordering: .releasing) }

    func take() { _ = given.load(ordering: .acquiring) }
}
