import HTTPTypes
import Hummingbird
import LocalityDomain
import LocalityPostgres

/// CSV exports (every route whose template ends in `.csv`) are the service's heaviest reads: a report reads a
/// whole board's or project's history in one transaction. At most `bulkhead.limit` of them run at once, so that
/// a burst of exports — a monitoring deadline, or one impatient client — holds at most that share of the pool
/// and every other request keeps the rest. Further exports wait in order (up to the bulkhead's queue bound and
/// timeout), then get 503 with `Retry-After`.
struct ExportBulkheadMiddleware<Context: RequestContext>: RouterMiddleware {
    static var key: String { "export" }
    let bulkhead: TenantBulkhead
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path.hasSuffix(".csv"),
            let template = routes.template(forPath: request.uri.path, method: request.method), template.hasSuffix(".csv")
        else {
            return try await next(request, context)
        }
        do {
            try await bulkhead.enter(Self.key)
        } catch is TenantBulkhead.BulkheadFull {
            throw APIProblem.unavailable("exports-busy", "Too many CSV exports are waiting already; retry shortly.")
        } catch let error as PGError where error.kind == .acquireTimeout {
            throw APIProblem.unavailable("exports-busy", "CSV exports are busy; retry shortly.")
        }
        defer { bulkhead.leave(Self.key) }
        // The body is built in full before this returns (the reports are strings), so the place is held exactly
        // as long as the export's database work.
        return try await next(request, context)
    }
}
