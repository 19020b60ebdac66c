import Foundation

/// Runs blocking `body` on a new thread and resumes the caller with its result: for rare blocking work
/// (connecting, COPY) that must stay off Swift's cooperative threads and off the I/O loop.
func runOnOwnThread<R: Sendable>(name: String, _ body: @escaping @Sendable () throws -> R) async throws -> R {
    let handOff = PGHandOff()
    defer { handOff.take() }
    return try await withCheckedThrowingContinuation { continuation in
        startThread(named: name) {
            let result = Result { try body() }
            handOff.give()
            continuation.resume(with: result)
        }
    }
}

/// Starts a thread that `top -H`, `perf` and `/proc` show under `name`. On Linux, Foundation applies a
/// thread's name only when it is set from the thread itself; set before `start()` it is silently dropped.
func startThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    Thread {
        Thread.current.name = name
        body()
    }.start()
}
