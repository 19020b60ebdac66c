internal import CLibPQ
import Synchronization

/// A connection's cancel key (`PGcancel`), freed when the last reference to it goes.
///
/// Why an object of its own: `PQcancel` runs on a thread of its own for a whole round trip. That thread
/// holds a reference, so `PQfreeCancel` (in `deinit`) runs only after it is done, however soon the
/// connection is closed and dropped. `PQfinish` does not touch it (`PQgetCancel` copies what it needs).
///
/// `@unchecked Sendable`: the `PGcancel` never changes after `PQgetCancel`, and libpq documents `PQcancel`
/// as safe to call from any thread.
final class PGCancelHandle: @unchecked Sendable {
    private let pointer: OpaquePointer

    init?(_ pointer: OpaquePointer?) {
        guard let pointer else { return nil }
        self.pointer = pointer
    }

    deinit {
        PQfreeCancel(pointer)
    }

    /// Asks the server to cancel whatever the session runs now. Blocks for a round trip to the server.
    func send() {
        var buffer = [CChar](repeating: 0, count: 256)
        _ = PQcancel(pointer, &buffer, Int32(buffer.count))
    }
}

/// Cancels that can only hit the statement they were aimed at.
///
/// Each request gets a ticket. A cancel names its ticket and goes to the server only while that statement is
/// in flight; but the statement may finish during `PQcancel`'s round trip, and the server then cancels
/// whatever the session runs when the request lands. So until every cancel request has landed, the session
/// sends nothing more (`waitForCancels`) and the pool lends it to no one (`checkIn` answers `afterCancel`).
/// A cancel that lands on an idle session is ignored by the server.
extension PGConnection {
    /// A new ticket for the next request (owner only).
    func issueTicket() -> UInt64 {
        lastTicket += 1
        return lastTicket
    }

    /// A cancellable statement is about to be sent. False if it was cancelled before: it is then never sent.
    func startStatement(_ ticket: UInt64) -> Bool {
        control.withLock { control in
            control.lastStarted = ticket
            if control.cancelledBeforeStart == ticket {
                control.cancelledBeforeStart = nil
                return false
            }
            control.running = ticket
            return true
        }
    }

    /// Its reply is in (or it failed): from now on a cancel aimed at it does nothing.
    func endStatement(_ ticket: UInt64) {
        control.withLock { control in
            if control.running == ticket { control.running = nil }
        }
    }

    /// The task that made request `ticket` was cancelled (called from any thread). If that statement is in
    /// flight, the server is asked to cancel it; if it is not sent yet, it never will be; if it is done,
    /// nothing happens.
    func cancel(_ ticket: UInt64) {
        let send = control.withLock { control -> Bool in
            if control.running == ticket {
                control.cancelsInFlight += 1
                return true
            }
            if ticket > control.lastStarted { control.cancelledBeforeStart = ticket }
            return false
        }
        guard send else { return }
        // PQcancel opens a connection of its own and blocks: a short-lived thread of its own, never the
        // caller's, an I/O loop or Dispatch's global queues (which Swift's cooperative pool uses on Linux).
        // The thread holds the connection and its cancel key until it is done.
        startThread(named: "pg-cancel") { [self, cancelHandle] in
            #if DEBUG
            hooks?.beforeCancelRequest?()
            #endif
            cancelHandle?.send()
            cancelRequestLanded()
        }
    }

    private func cancelRequestLanded() {
        let waiting = control.withLock { control -> [AfterCancels] in
            control.cancelsInFlight -= 1
            guard control.cancelsInFlight == 0 else { return [] }
            defer { control.afterCancels = [] }
            return control.afterCancels
        }
        for next in waiting {
            switch next {
            case .resume(let continuation): continuation.resume()
            case .returnTo(let pool): pool.release(self)
            }
        }
    }

    /// Waits until no cancel request of this session is on its way (owner only, before sending).
    func waitForCancels() async {
        guard control.withLock({ $0.cancelsInFlight > 0 }) else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let landed = control.withLock { control -> Bool in
                guard control.cancelsInFlight > 0 else { return true }
                control.afterCancels.append(.resume(continuation))
                return false
            }
            if landed { continuation.resume() }
        }
    }
}

extension PGError {
    static var cancelledByUser: PGError {
        PGError(kind: .server, sqlState: "57014", message: "canceling statement due to user request")
    }
}
