import Foundation
import HTTPTypes
import Hummingbird
import LocalityDomain
import NIOCore
import Synchronization

/// Recent answers to authenticated reads that their handlers marked as keepable (`ResponseCache.keep(until:)`),
/// answered again from memory while nothing they were read from can have changed (issue 14: a read of a board or
/// a project without a database round trip).
///
/// What an answer is kept under: the caller (token, user, authority, supplier, roles, boards: another caller never
/// gets it, and a changed role makes a new caller), the request target and its `Accept`. What ends it:
/// - a change to the data it depends on (`DataChanges`): its caller's authority for staff, anything for a supplier.
///   This instance's writes end it before they are answered; other instances' within milliseconds (notifications);
/// - the time its handler set, for an answer that the clock alone changes (a project whose deadline passes);
/// - `lifetime` after it was read, whatever happens to notifications (an operator's change that nobody announced:
///   the stated bound);
/// - the listener session's loss: nothing is kept or answered from memory until it is back.
/// Conditional requests (`If-None-Match`, `If-Modified-Since`, `Range`) and requests that send `Cache-Control`
/// (a client that must read the database: `no-cache`) always reach their handler. Only for routes that read the
/// primary: an answer read from a lagging replica could be older than its ticket.
final class ResponseCache: Sendable {
    struct Key: Hashable, Sendable {
        let tokenID: UUID
        let userID: UUID
        let authorityID: UUID?
        let supplierID: UUID?
        let roles: [Role]
        let boardIDs: [UUID]
        let target: String
        let accept: String?
    }

    struct Answer: Sendable {
        let headers: HTTPFields
        let body: ByteBuffer
    }

    private struct Entry {
        let answer: Answer
        let validUntil: Date
        let ticket: UInt64
        /// The authority whose data the answer depends on; nil: any authority's.
        let authority: UUID?
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        var bytes = 0
        var hits = 0
    }

    let changes: DataChanges
    let lifetime: Duration
    /// Answers larger than this are never kept (long pages are cheaper to read again than to hold).
    let maxAnswerBytes: Int
    /// All kept answers together stay under this.
    let maxTotalBytes: Int
    private let state = Mutex(State())

    init(changes: DataChanges, lifetime: Duration, maxAnswerBytes: Int = 64 * 1024, maxTotalBytes: Int = 64 * 1024 * 1024) {
        self.changes = changes
        self.lifetime = lifetime
        self.maxAnswerBytes = maxAnswerBytes
        self.maxTotalBytes = maxTotalBytes
    }

    /// Answers given from memory so far (tests, diagnostics).
    var hits: Int { state.withLock { $0.hits } }

    var count: Int { state.withLock { $0.entries.count } }

    /// The key of a request that may be answered from memory: a GET or HEAD of an authenticated caller, not
    /// conditional.
    static func key(for request: Request, principal: Principal?) -> Key? {
        guard let principal, request.method == .get || request.method == .head,
              request.headers[.ifNoneMatch] == nil, request.headers[.ifModifiedSince] == nil, request.headers[.range] == nil,
              request.headers[.cacheControl] == nil
        else { return nil }
        return Key(tokenID: principal.tokenID, userID: principal.userID, authorityID: principal.authorityID,
                   supplierID: principal.supplierID, roles: principal.roles.sorted(), boardIDs: principal.boardIDs,
                   target: request.head.path ?? "", accept: request.headers[.accept])
    }

    /// The answer kept under `key`, if it is still good at `now`.
    func answer(for key: Key, now: Date = Date()) -> Answer? {
        let entry: Entry? = state.withLock { state in
            guard let entry = state.entries[key] else { return nil }
            guard now < entry.validUntil else {
                state.entries[key] = nil
                state.bytes -= entry.answer.body.readableBytes
                return nil
            }
            return entry
        }
        guard let entry else { return nil }
        guard changes.unchanged(since: entry.ticket, authority: entry.authority) else {
            state.withLock { state in
                if state.entries[key]?.ticket == entry.ticket, let removed = state.entries.removeValue(forKey: key) {
                    state.bytes -= removed.answer.body.readableBytes
                }
            }
            return nil
        }
        state.withLock { $0.hits += 1 }
        return entry.answer
    }

    /// Keeps an answer read under `ticket` (taken before the read), unless what it depends on changed since.
    func keep(_ answer: Answer, for key: Key, ticket: UInt64, until: Date?, now: Date = Date()) {
        let size = answer.body.readableBytes
        guard size <= maxAnswerBytes else { return }
        let bound = now.addingTimeInterval(Double(lifetime.components.seconds) + Double(lifetime.components.attoseconds) / 1e18)
        let validUntil = until.map { min($0, bound) } ?? bound
        guard validUntil > now else { return }
        // Staff read their own authority's data only (row-level security); a supplier's answer may come from any.
        let authority = key.supplierID == nil ? key.authorityID : nil
        guard changes.unchanged(since: ticket, authority: authority) else { return }
        state.withLock { state in
            if state.bytes + size > maxTotalBytes {
                for (key, entry) in state.entries where entry.validUntil <= now {
                    state.entries[key] = nil
                    state.bytes -= entry.answer.body.readableBytes
                }
                if state.bytes + size > maxTotalBytes {
                    state.entries.removeAll()
                    state.bytes = 0
                }
            }
            if let replaced = state.entries.updateValue(Entry(answer: answer, validUntil: validUntil, ticket: ticket, authority: authority), forKey: key) {
                state.bytes -= replaced.answer.body.readableBytes
            }
            state.bytes += size
        }
    }

    /// Set by the transport around a handler whose answer may be kept; the handler says whether it may.
    final class Offer: Sendable {
        @TaskLocal static var current: Offer?

        private struct Choice { var keep = false; var until: Date? }
        private let choice = Mutex(Choice())

        var kept: (keep: Bool, until: Date?) { choice.withLock { ($0.keep, $0.until) } }

        fileprivate func mark(until: Date?) {
            choice.withLock { $0 = Choice(keep: true, until: until) }
        }
    }

    /// Called by a handler whose 200 answer depends only on its caller, its request and the data of the caller's
    /// authority (any authority, for a supplier), and on the clock only through `until`: the answer may be kept
    /// until then.
    static func keep(until: Date? = nil) {
        Offer.current?.mark(until: until)
    }
}
