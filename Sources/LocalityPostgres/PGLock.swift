import Foundation

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
