internal import CLibPQ
import Foundation
import Synchronization

/// A PostgreSQL session that `LISTEN`s on some channels and hands every notification to `handler`, on a
/// thread of its own (it blocks in `poll(2)`, so it must stay off Swift's cooperative threads and off the
/// I/O loops). It is not one of the pool's sessions: it lives as long as the listener and reconnects by
/// itself after `reconnectDelay` when the session ends.
///
/// What a consumer can rely on: after `.listening`, every notification committed from then on is delivered
/// until the next `.lost`; between a `.lost` and the next `.listening` notifications may have been missed.
/// A cache invalidated by notifications must therefore stop trusting itself on `.lost` (see
/// `AuthenticationCache`). On TCP, keepalives notice a peer that vanished silently within about 10 s.
public final class PGNotificationListener: Sendable {
    public enum Event: Sendable, Equatable {
        /// `LISTEN` is in effect on a new session: from here on every notification arrives.
        case listening
        case notification(channel: String, payload: String)
        /// The session failed or ended (or could not be opened); notifications may be missed until `.listening`.
        case lost(String)
    }

    private struct State {
        var started = false
        var stopped = false
        var backendPID: Int32?
    }

    private let configuration: PGConnectionConfiguration
    private let channels: [String]
    private let reconnectDelay: Duration
    private let handler: @Sendable (Event) -> Void
    private let state = Mutex(State())
    /// Written to by `stop()` to wake the thread out of `poll(2)`.
    private let wakeRead: Int32
    private let wakeWrite: Int32

    public init(
        configuration: PGConnectionConfiguration, channels: [String], reconnectDelay: Duration = .seconds(1),
        handler: @escaping @Sendable (Event) -> Void
    ) {
        self.configuration = configuration
        self.channels = channels
        self.reconnectDelay = reconnectDelay
        self.handler = handler
        var fds: [Int32] = [-1, -1]
        if pipe(&fds) == 0 {
            _ = fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
    }

    deinit {
        close(wakeRead)
        close(wakeWrite)
    }

    /// The server process of the current session (nil while there is none), for tests and diagnostics.
    public var backendPID: Int32? { state.withLock { $0.backendPID } }

    /// Starts the listening thread (once).
    public func start() {
        let first = state.withLock { state -> Bool in
            defer { state.started = true }
            return !state.started && !state.stopped
        }
        guard first else { return }
        startThread(named: "pg-listen") { [self] in run() }
    }

    /// Ends the session and the thread; no event is delivered after the thread notices.
    public func stop() {
        state.withLock { $0.stopped = true }
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private var isStopped: Bool { state.withLock { $0.stopped } }

    private func run() {
        while !isStopped {
            switch connect() {
            case .failure(let failure):
                if !isStopped { handler(.lost(failure.message)) }
            case .success(let handle):
                let message = listen(on: handle)
                state.withLock { $0.backendPID = nil }
                PQfinish(handle.pointer)
                if !isStopped { handler(.lost(message)) }
            }
            guard !isStopped else { return }
            // Wait before reconnecting, unless stopped meanwhile.
            let (seconds, attoseconds) = reconnectDelay.components
            _ = waitReadable(nil, timeoutMilliseconds: Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        }
    }

    private func connect() -> Result<ListenHandle, ListenFailure> {
        // Keepalives (ignored on Unix sockets) so that a vanished server ends the session within ~10 s instead
        // of leaving it waiting for notifications that never come.
        let keywords = ["dbname", "application_name", "client_encoding", "connect_timeout", "options",
                        "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count"]
        let values = [configuration.conninfo, configuration.applicationName + "-listen", "UTF8",
                      String(configuration.connectTimeoutSeconds), configuration.optionsParameter, "1", "5", "2", "2"]
        let duplicated = (keywords + values).map { strdup($0) }
        defer { duplicated.forEach { free($0) } }
        var keywordPointers: [UnsafePointer<CChar>?] = duplicated[..<keywords.count].map { $0.map { UnsafePointer($0) } } + [nil]
        var valuePointers: [UnsafePointer<CChar>?] = duplicated[keywords.count...].map { $0.map { UnsafePointer($0) } } + [nil]
        guard let handle = PQconnectdbParams(&keywordPointers, &valuePointers, 1) else {
            return .failure(ListenFailure("libpq could not allocate a connection"))
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(handle))
            PQfinish(handle)
            return .failure(ListenFailure(message))
        }
        PQsetNoticeProcessor(handle, { _, _ in }, nil)
        for channel in channels {
            // A channel is an identifier: quoted, with quotes doubled.
            let sql = "LISTEN \"" + channel.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            let result = PQexec(handle, sql)
            let ok = result.map { PQresultStatus($0) == PGRES_COMMAND_OK } ?? false
            PQclear(result)
            guard ok else {
                let message = String(cString: PQerrorMessage(handle))
                PQfinish(handle)
                return .failure(ListenFailure(message))
            }
        }
        return .success(ListenHandle(handle))
    }

    /// Delivers notifications until the session fails or the listener stops; returns why it ended.
    private func listen(on handle: ListenHandle) -> String {
        let connection = handle.pointer
        state.withLock { $0.backendPID = PQbackendPID(connection) }
        handler(.listening)
        // Anything that arrived with the LISTEN replies.
        if let ended = drain(connection) { return ended }
        while !isStopped {
            switch waitReadable(PQsocket(connection), timeoutMilliseconds: -1) {
            case .stopped: return "stopped"
            case .failed(let error): return "poll failed: errno \(error)"
            case .readable:
                if let ended = drain(connection) { return ended }
            }
        }
        return "stopped"
    }

    /// Reads what arrived and hands on each notification; returns a message when the session ended.
    private func drain(_ connection: OpaquePointer) -> String? {
        guard PQconsumeInput(connection) == 1, PQstatus(connection) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(connection)).trimmingCharacters(in: .whitespacesAndNewlines)
            return message.isEmpty ? "connection lost" : message
        }
        while let notification = PQnotifies(connection) {
            let channel = String(cString: notification.pointee.relname)
            let payload = String(cString: notification.pointee.extra)
            PQfreemem(notification)
            if !isStopped { handler(.notification(channel: channel, payload: payload)) }
        }
        return nil
    }

    private enum Wait { case readable, stopped, failed(Int32) }

    /// Waits until `socket` (if any) is readable or `stop()` was called, or the timeout passes (-1: none).
    private func waitReadable(_ socket: Int32?, timeoutMilliseconds: Int32) -> Wait {
        var descriptors = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        if let socket { descriptors.append(pollfd(fd: socket, events: Int16(POLLIN), revents: 0)) }
        while true {
            let ready = poll(&descriptors, nfds_t(descriptors.count), timeoutMilliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                return .failed(errno)
            }
            if isStopped || descriptors[0].revents != 0 { return .stopped }
            return .readable
        }
    }
}

private struct ListenFailure: Error {
    let message: String
    init(_ message: String) { self.message = message.trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// The listener's libpq session, passed only between the listener thread's own calls (connect, then listen):
/// never used by two threads at once.
private struct ListenHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}
