import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

/// How long a client may take to send a request once it has started one.
public struct RequestReadTimeouts: Sendable {
    /// From the first byte of a request until its header block is complete (nil: no limit).
    public var header: TimeAmount?
    /// From the end of the header block until the end of the body (nil: no limit).
    public var body: TimeAmount?

    public init(header: TimeAmount?, body: TimeAmount?) {
        self.header = header
        self.body = body
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 as Hummingbird serves it, plus two things it lacks:
    /// - read timeouts: the idle timeout alone is reset by every body chunk, so a client sending a byte every few
    ///   seconds could hold a connection (and a request's place) for ever ("slowloris"). A request whose header
    ///   block or body takes longer than `readTimeouts` allows is answered 408 (when no response has begun) and
    ///   its connection closed;
    /// - `Connection: close` on the responses still in flight when a graceful shutdown begins: Hummingbird closes
    ///   such connections once the response is written, and this tells the client so, instead of letting it find
    ///   the socket shut under its next request.
    static func guardedHTTP1(configuration: HTTP1Channel.Configuration, readTimeouts: RequestReadTimeouts) -> HTTPServerBuilder {
        .init { responder in
            GuardedHTTP1Channel(responder: responder, configuration: configuration, readTimeouts: readTimeouts)
        }
    }
}

/// `HTTP1Channel` with a `RequestReadTimeoutHandler` in front of the HTTP decoder (it sees raw bytes, so it knows
/// when a request has begun) and a `RequestProgressHandler` behind it (it sees request and response parts).
struct GuardedHTTP1Channel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>

    let responder: HTTPChannelHandler.Responder
    let configuration: HTTP1Channel.Configuration
    let readTimeouts: RequestReadTimeouts

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture { () -> HTTP1Channel in
            let timeouts = RequestReadTimeoutHandler(timeouts: readTimeouts, logger: logger)
            try channel.pipeline.syncOperations.addHandler(timeouts)   // first: before the decoder
            // The progress handler is per connection and goes where Hummingbird puts additional handlers (after
            // the codec); the closure is called once, below, on this event loop.
            let progress = NIOLoopBound(RequestProgressHandler(timeouts: timeouts), eventLoop: channel.eventLoop)
            var configuration = self.configuration
            configuration.additionalChannelHandlers = { [progress.value] }
            return HTTP1Channel(responder: responder, configuration: configuration)
        }.flatMap { http1 in
            http1.setup(channel: channel, logger: logger)
        }
    }

    func handle(value asyncChannel: Value, logger: Logger) async {
        // The connection's task runs on its channel's event loop, not on Swift's global executor: the loop that
        // reads a request resumes the task without waking another thread, and the response is written from
        // the loop itself. On the global executor each request crossed threads twice more (loop → worker to
        // read, worker → loop to write). Handlers never block (the database is reached through the PostgreSQL
        // I/O loops), so the event loop is never held up for longer than a request's own CPU work.
        await withTaskExecutorPreference(EventLoopTaskExecutor(asyncChannel.channel.eventLoop)) {
            await handleHTTP(asyncChannel: asyncChannel, logger: logger)
        }
    }
}

/// A NIO event loop as a `TaskExecutor`: the jobs of tasks that prefer it run on the loop's thread.
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        // From the loop itself this only appends to its queue; from another thread it wakes the loop once
        // (NIO skips the wake-up when one is pending already).
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// Times the reading of each request. Sits first in the pipeline: a request begins with its first byte, long
/// before the decoder has anything to pass on. Told by `RequestProgressHandler` when a header block and a body
/// end, and when responses begin and end. All on the channel's event loop.
final class RequestReadTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        /// Between requests: waiting is the idle timeout's business.
        case awaitingRequest
        case readingHeader
        case readingBody
    }

    private let timeouts: RequestReadTimeouts
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var phase = Phase.awaitingRequest
    private var timer: Scheduled<Void>?
    /// Requests whose header block was read, and responses begun and finished: a 408 may be written only when
    /// every earlier request is fully answered and the current one not at all.
    private var requestsStarted = 0
    private var responsesStarted = 0
    private var responsesFinished = 0

    init(timeouts: RequestReadTimeouts, logger: Logger) {
        self.timeouts = timeouts
        self.logger = logger
    }

    // A connection that sends nothing at all (new, or kept alive between requests) is the idle timeout's business,
    // not this handler's: counting from the accept closed legitimate clients of an overloaded server (a test
    // suite's hundred connections opened at once) that had not yet sent their first request.
    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The first bytes of a request start its header clock (before the decoder sees them, so that a header
        // block completed by these very bytes stops it again at once).
        if case .awaitingRequest = phase, unwrapInboundIn(data).readableBytes > 0 {
            phase = .readingHeader
            schedule(timeouts.header, "header")
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        context.fireChannelInactive()
    }

    // MARK: Told by RequestProgressHandler

    func requestHeadRead() {
        requestsStarted += 1
        cancelTimer()
        phase = .readingBody
        schedule(timeouts.body, "body")
    }

    func requestEndRead() {
        cancelTimer()
        phase = .awaitingRequest
    }

    func responseHeadWritten() { responsesStarted += 1 }
    func responseEndWritten() { responsesFinished += 1 }

    // MARK: Timer

    private func schedule(_ timeout: TimeAmount?, _ part: String) {
        guard let timeout, let context else { return }
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            timer = nil
            expire(part)
        }
    }

    private func cancelTimer() {
        timer?.cancel()
        timer = nil
    }

    private func expire(_ part: String) {
        guard let context else { return }
        let earlierAnswered = responsesStarted == responsesFinished
        let unanswered = switch phase {
        case .readingHeader: earlierAnswered && responsesFinished == requestsStarted
        case .readingBody: earlierAnswered && responsesFinished == requestsStarted - 1
        case .awaitingRequest: false
        }
        logger.debug("closing a connection: the client was too slow sending its request", metadata: ["part": "\(part)"])
        phase = .awaitingRequest
        if unanswered {
            // Written below the HTTP encoder, which has nothing in progress (no response has begun), and followed
            // by the close: nothing else can go out on this connection after it.
            context.writeAndFlush(wrapOutboundOut(Self.timeoutResponse(part)), promise: nil)
        }
        context.close(promise: nil)
    }

    static func timeoutResponse(_ part: String) -> ByteBuffer {
        let body = """
            {"detail":"The request's \(part) was not received in time; send it again without pauses.",\
            "status":408,"title":"Request Timeout","type":"/problems/request-timeout"}
            """
        return ByteBuffer(string: "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/problem+json\r\n"
                            + "Cache-Control: no-store\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + body)
    }
}

/// Watches request and response parts for `RequestReadTimeoutHandler`, and marks the responses still to be written
/// when a graceful shutdown begins with `Connection: close`.
final class RequestProgressHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let timeouts: RequestReadTimeoutHandler
    private var quiescing = false

    init(timeouts: RequestReadTimeoutHandler) {
        self.timeouts = timeouts
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: timeouts.requestHeadRead()
        case .body: break
        case .end: timeouts.requestEndRead()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var head):
            // Informational (1xx) heads are not the response; only a final one counts and can carry the close.
            guard head.status.kind != .informational else { break }
            timeouts.responseHeadWritten()
            if quiescing {
                head.headerFields[.connection] = "close"
                context.write(wrapOutboundOut(.head(head)), promise: promise)
                return
            }
        case .body: break
        case .end: timeouts.responseEndWritten()
        }
        context.write(data, promise: promise)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird's connection handler (behind this one) closes idle connections at once and busy ones after
        // their response; those responses are the ones still to pass here.
        if event is ChannelShouldQuiesceEvent { quiescing = true }
        context.fireUserInboundEventTriggered(event)
    }
}

extension AppConfiguration {
    var requestReadTimeouts: RequestReadTimeouts {
        RequestReadTimeouts(header: requestHeaderTimeoutSeconds > 0 ? .seconds(Int64(requestHeaderTimeoutSeconds)) : nil,
                            body: requestBodyTimeoutSeconds > 0 ? .seconds(Int64(requestBodyTimeoutSeconds)) : nil)
    }
}
