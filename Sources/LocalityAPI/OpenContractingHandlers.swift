import Foundation
import HTTPTypes
import Hummingbird
import LocalityDomain
import LocalityPostgres
import OpenAPIRuntime
import Synchronization

/// The public OCDS feed (no token: releases hold only public data) and the Act's notices (staff).
extension APIHandlers {
    /// Lists and records change as releases are added: a minute. A release never changes: a day, immutable.
    static let feedCacheControl = "public, max-age=60"
    static let releaseCacheControl = "public, max-age=86400, immutable"

    func listOcdsReleases(_ input: Operations.ListOcdsReleases.Input) async throws -> Operations.ListOcdsReleases.Output {
        let query = input.query
        let service = services.openContracting
        let page = try await service.releases(
            .init(authority: query.authority, since: query.since, until: query.until, tag: query.tag?.rawValue),
            page: PageRequest(limit: query.limit, cursor: query.cursor))
        var publisher = OpenContractingService.servicePublisher
        if let authority = query.authority { publisher = try await service.publisher(authority).name }
        var components = URLComponents()
        components.path = "/ocds/releases"
        var items: [URLQueryItem] = []
        if let authority = query.authority { items.append(.init(name: "authority", value: authority)) }
        if let since = query.since { items.append(.init(name: "since", value: OpenContractingService.ocdsTime(since))) }
        if let until = query.until { items.append(.init(name: "until", value: OpenContractingService.ocdsTime(until))) }
        if let tag = query.tag { items.append(.init(name: "tag", value: tag.rawValue)) }
        if let limit = query.limit { items.append(.init(name: "limit", value: String(limit))) }
        let base = PublicFeedRequest.current?.base ?? ""
        components.queryItems = (items + (query.cursor.map { [URLQueryItem(name: "cursor", value: $0)] } ?? [])).nilIfEmpty
        var package = try OpenContractingService.releasePackage(
            page.items, uri: base + (components.string ?? "/ocds/releases"), publisher: publisher,
            publishedDate: try Self.newestDate(page.items))
        if let next = page.nextCursor {
            components.queryItems = items + [URLQueryItem(name: "cursor", value: next)]
            package["links"] = ["next": base + (components.string ?? "")]
        }
        let (data, etag) = try OpenContractingService.encode(package)
        if Self.matches(input.headers.ifNoneMatch, etag) {
            return .notModified(.init(headers: .init(eTag: etag, cacheControl: Self.feedCacheControl)))
        }
        return .ok(.init(headers: .init(eTag: etag, cacheControl: Self.feedCacheControl),
                         body: .json(try JSONDecoder().decode(Components.Schemas.OcdsReleasePackage.self, from: data))))
    }

    func getOcdsRelease(_ input: Operations.GetOcdsRelease.Input) async throws -> Operations.GetOcdsRelease.Output {
        let release = try await services.openContracting.release(id: input.path.releaseId)
        let buyer = ((try JSONSerialization.jsonObject(with: Data(release.utf8)) as? [String: Any])?["buyer"] as? [String: Any])?["name"] as? String
        let base = PublicFeedRequest.current?.base ?? ""
        let package = try OpenContractingService.releasePackage(
            [release], uri: base + "/ocds/releases/" + input.path.releaseId, publisher: buyer ?? OpenContractingService.servicePublisher,
            publishedDate: try Self.newestDate([release]))
        let (data, etag) = try OpenContractingService.encode(package)
        if Self.matches(input.headers.ifNoneMatch, etag) {
            return .notModified(.init(headers: .init(eTag: etag, cacheControl: Self.releaseCacheControl)))
        }
        return .ok(.init(headers: .init(eTag: etag, cacheControl: Self.releaseCacheControl),
                         body: .json(try JSONDecoder().decode(Components.Schemas.OcdsReleasePackage.self, from: data))))
    }

    func getOcdsRecord(_ input: Operations.GetOcdsRecord.Input) async throws -> Operations.GetOcdsRecord.Output {
        let record = try await services.openContracting.record(ocid: input.path.ocid)
        let base = PublicFeedRequest.current?.base ?? ""
        let package = try OpenContractingService.recordPackage(
            record, uri: base + "/ocds/records/" + input.path.ocid, publishedDate: try Self.newestDate(record.releases))
        let (data, etag) = try OpenContractingService.encode(package)
        if Self.matches(input.headers.ifNoneMatch, etag) {
            return .notModified(.init(headers: .init(eTag: etag, cacheControl: Self.feedCacheControl)))
        }
        return .ok(.init(headers: .init(eTag: etag, cacheControl: Self.feedCacheControl),
                         body: .json(try JSONDecoder().decode(Components.Schemas.OcdsRecordPackage.self, from: data))))
    }

    func listNotices(_ input: Operations.ListNotices.Input) async throws -> Operations.ListNotices.Output {
        let notices = try await services.openContracting.notices(try Authenticated.scope())
        return .ok(.init(body: .json(.init(items: try notices.map { try Components.Schemas.ProcurementNotices($0) }))))
    }

    func fileNotice(_ input: Operations.FileNotice.Input) async throws -> Operations.FileNotice.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let filed = try await services.openContracting.markFiled(
            try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"), noticeKey: body.noticeKey,
            platformNoticeID: body.platformNoticeId)
        return .created(.init(headers: .init(location: "/v1/notices"), body: .json(try .init(filed))))
    }

    func setConcernSchoolPublication(
        _ input: Operations.SetConcernSchoolPublication.Input
    ) async throws -> Operations.SetConcernSchoolPublication.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let marked = try await services.openContracting.setConcernSchoolsPublishable(
            try Authenticated.scope(), contractID: try pathID(input.path.contractId, "contract"), publishable: body.publishConcernSchools)
        return .ok(.init(body: .json(.init(publishConcernSchools: marked))))
    }

    /// The publication date of a package: its newest release's, so that the same releases give the same bytes
    /// (and entity tag); an empty page is dated now.
    static func newestDate(_ releases: [String]) throws -> Date {
        let dates = releases.compactMap { text -> Date? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
                  let date = object["date"] as? String else { return nil }
            return try? Date(date, strategy: .iso8601)
        }
        return dates.max() ?? Date(timeIntervalSince1970: (Date().timeIntervalSince1970 / 60).rounded(.down) * 60)
    }

    /// `If-None-Match`: `*`, or a list of (possibly weak) entity tags, one of which is ours.
    static func matches(_ header: String?, _ etag: String) -> Bool {
        guard let header else { return false }
        return header.split(separator: ",").contains { candidate in
            let tag = candidate.trimmingCharacters(in: .whitespaces)
            return tag == "*" || tag == etag || tag == "W/" + etag
        }
    }
}

extension Array {
    fileprivate var nilIfEmpty: Self? { isEmpty ? nil : self }
}

/// A stored value of a closed set, as its generated enum; an unknown one is a bug of ours (500), never a guess.
private func storedValue<E: RawRepresentable>(_ raw: String, _ what: String) throws -> E where E.RawValue == String {
    guard let value = E(rawValue: raw) else { throw StoredValueError(description: "unknown \(what) \(raw)") }
    return value
}

private struct StoredValueError: Error, CustomStringConvertible { let description: String }

extension Components.Schemas.ProcurementNotices {
    init(_ notices: ProcurementNotices) throws {
        self.init(
            projectId: notices.projectID.lowercased, title: notices.title, status: notices.status,
            regime: try storedValue(notices.regime, "regime"), procurementMethod: try storedValue(notices.procurementMethod, "procurement method"),
            valueIncludingVatPence: Int64(notices.valueIncludingVATPence),
            notices: notices.notices.map { notice in
                .init(key: notice.key, _type: notice.type, eventOn: notice.eventOn, dueOn: notice.dueOn, filed: notice.filed,
                      platformNoticeId: notice.platformNoticeID, filedAt: notice.filedAt)
            })
    }
}

/// The public feed's request: its base URL (for the package's `uri` and `links.next`).
struct PublicFeedRequest: Sendable {
    @TaskLocal static var current: PublicFeedRequest?
    let base: String
}

/// Rate limits the public feed per client address and records the request's base URL for the handlers.
///
/// The limit is one for every instance, counted in PostgreSQL like the registration limit, but a read must not
/// cost a write: the instance leases a client's slots in batches (`take_feed_slots`, migration 0023) and spends
/// them from memory (`FeedSlotLeases`), and remembers a refusal until the window ends, so a client hammering
/// past its limit costs no database work at all.
struct PublicFeedMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let pool: PGPool
    let leases: FeedSlotLeases
    let trustedProxies: Set<String>
    /// `--public-base-url`: the scheme and authority every document's URIs start with. Without it, the
    /// request's Host when it is a plain host name or address (see `reflectableHost`), else relative URIs.
    let publicBaseURL: String?

    init(pool: PGPool, perHour: Int, trustedProxies: Set<String>, publicBaseURL: String?) {
        self.pool = pool
        self.leases = FeedSlotLeases(perHour: perHour)
        self.trustedProxies = trustedProxies
        self.publicBaseURL = publicBaseURL
    }

    static let takeSlotsSQL = "SELECT granted, window_seconds FROM take_feed_slots($1, $2::integer, $3::integer)"

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/ocds/") else { return try await next(request, context) }
        let client = "ocds:" + RegistrationRateLimitMiddleware.clientAddress(
            peer: context.remoteAddress?.ipAddress, forwardedFor: request.headers[values: .xForwardedFor], trustedProxies: trustedProxies
        ).prefix(90)
        var decision = leases.take(client)
        if case .lease = decision {
            let (granted, seconds) = try await pool.query(PGQuery(Self.takeSlotsSQL, [client.pg, leases.perHour.pg, leases.batch.pg]))
                .first?.decode(Int.self, Int.self) ?? (0, 1)
            decision = leases.store(client, granted: granted, windowSeconds: seconds)
        }
        if case .refused(let wait) = decision {
            var headers = HTTPFields()
            headers[.retryAfter] = String(wait)
            throw APIProblem(
                status: .tooManyRequests, type: APIProblem.typeURI("rate-limited"), title: "Too Many Requests",
                detail: "Too many requests to the open contracting feed from your address; try again later, or use the bulk export.",
                headers: headers)
        }
        if let publicBaseURL {
            return try await PublicFeedRequest.$current.withValue(PublicFeedRequest(base: publicBaseURL)) {
                try await next(request, context)
            }
        }
        guard let host = request.head.authority.flatMap(Self.reflectableHost) else {
            return try await PublicFeedRequest.$current.withValue(PublicFeedRequest(base: "")) { try await next(request, context) }
        }
        var response = try await PublicFeedRequest.$current.withValue(PublicFeedRequest(base: "http://" + host)) {
            try await next(request, context)
        }
        // The document names the Host it was asked under: a shared cache must not give it to a request for another.
        response.headers[.vary] = "Host"
        return response
    }

    /// The Host header, when it is one a document may repeat: a DNS name (letters, digits, inner hyphens, dots)
    /// or an IPv4 address, with an optional port 1–65535. Nothing else (user info, paths, quotes, brackets,
    /// percent signs, spaces) ever reaches a document: a hostile Host gives relative URIs.
    static func reflectableHost(_ authority: String) -> String? {
        guard (1...260).contains(authority.utf8.count) else { return nil }
        let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return nil }
        if parts.count == 2 {
            guard (1...5).contains(parts[1].count), parts[1].allSatisfy(\.isASCIIDigit), let port = Int(parts[1]), (1...65535).contains(port)
            else { return nil }
        }
        var name = parts[0]
        if name.hasSuffix(".") { name = name.dropLast() }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.utf8.count <= 253, labels.allSatisfy({ label in
            (1...63).contains(label.utf8.count) && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D }
        }) else { return nil }
        return authority.lowercased()
    }
}

/// One instance's leases of the public feed's per-client slots (see `PublicFeedMiddleware`): per client, the
/// slots still to spend, or a refusal, each until the database's hourly window ends.
final class FeedSlotLeases: Sendable {
    enum Decision { case allowed, refused(retryAfter: Int), lease }

    private struct Entry {
        var remaining: Int
        var refused: Bool
        var expires: ContinuousClock.Instant
    }

    let perHour: Int
    /// Slots taken per database write: a tenth of the hourly limit, at most 100. What an instance took and did not
    /// spend is lost when the hour ends, so a client with several instances is stopped at most that early.
    let batch: Int
    /// Clients remembered at once; past it the memory is dropped, which only sends clients back to the database
    /// (their unspent slots are lost: never more requests than the limit).
    let maxClients: Int
    private let state = Mutex<[String: Entry]>([:])

    init(perHour: Int, maxClients: Int = 10_000) {
        self.perHour = perHour
        self.batch = max(1, min(100, perHour / 10))
        self.maxClients = maxClients
    }

    /// Spends a slot held in memory, or says the client is refused, or that a lease is needed.
    func take(_ client: String, now: ContinuousClock.Instant = .now) -> Decision {
        state.withLock { entries in
            guard var entry = entries[client], entry.expires > now else { return .lease }
            if entry.refused { return .refused(retryAfter: Self.seconds(until: entry.expires, from: now)) }
            guard entry.remaining > 0 else { return .lease }
            entry.remaining -= 1
            entries[client] = entry
            return .allowed
        }
    }

    /// Keeps what a lease granted and spends one slot of it; none granted is a refusal until the window ends.
    func store(_ client: String, granted: Int, windowSeconds: Int, now: ContinuousClock.Instant = .now) -> Decision {
        let expires = now + .seconds(max(1, windowSeconds))
        return state.withLock { entries in
            if entries[client] == nil, entries.count >= maxClients {
                entries = entries.filter { $0.value.expires > now }
                if entries.count >= maxClients { entries.removeAll() }
            }
            guard granted > 0 else {
                entries[client] = Entry(remaining: 0, refused: true, expires: expires)
                return .refused(retryAfter: max(1, windowSeconds))
            }
            // A concurrent request of the same client may have leased too: keep both leases' slots.
            let held = entries[client].map { $0.expires > now && !$0.refused ? $0.remaining : 0 } ?? 0
            entries[client] = Entry(remaining: held + granted - 1, refused: false, expires: expires)
            return .allowed
        }
    }

    private static func seconds(until deadline: ContinuousClock.Instant, from now: ContinuousClock.Instant) -> Int {
        let (seconds, attoseconds) = (deadline - now).components
        return max(1, Int(seconds) + (attoseconds > 0 ? 1 : 0))
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}
