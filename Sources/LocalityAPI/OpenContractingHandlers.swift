import Foundation
import HTTPTypes
import Hummingbird
import LocalityDomain
import LocalityPostgres
import OpenAPIRuntime

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

/// Rate limits the public feed per client address, in PostgreSQL like the public registration route (one limit
/// shared by every instance), in a bucket of its own; and records the request's base URL for the handlers.
struct PublicFeedMiddleware: RouterMiddleware {
    typealias Context = AppRequestContext
    let pool: PGPool
    let perHour: Int
    let trustedProxies: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasPrefix("/ocds/") else { return try await next(request, context) }
        let client = RegistrationRateLimitMiddleware.clientAddress(
            peer: context.remoteAddress?.ipAddress, forwardedFor: request.headers[values: .xForwardedFor], trustedProxies: trustedProxies)
        let wait = try await pool.query(PGQuery(RegistrationRateLimitMiddleware.takeSlotSQL, [("ocds:" + client.prefix(90)).pg, perHour.pg]))
            .first?.decode(Int.self, at: 0) ?? 0
        guard wait == 0 else {
            var headers = HTTPFields()
            headers[.retryAfter] = String(wait)
            throw APIProblem(
                status: .tooManyRequests, type: APIProblem.typeURI("rate-limited"), title: "Too Many Requests",
                detail: "Too many requests to the open contracting feed from your address; try again later, or use the bulk export.",
                headers: headers)
        }
        // Only a plain host[:port] is echoed into the documents; anything else gives relative URIs.
        let host = request.head.authority.flatMap { $0.range(of: #"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$"#, options: .regularExpression) != nil ? $0 : nil }
        return try await PublicFeedRequest.$current.withValue(PublicFeedRequest(base: host.map { "http://" + $0 } ?? "")) {
            try await next(request, context)
        }
    }
}
