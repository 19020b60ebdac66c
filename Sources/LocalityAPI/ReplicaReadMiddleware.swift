import Hummingbird
import LocalityDomain

/// Marks the requests whose reads a streaming replica may serve (`--replica-database-url`): heavy, read-only
/// operations — dashboards, reports and CSV exports, the public open contracting feed, and the long lists.
/// Their read-only transactions go to the replica when `ReplicaRouter` allows (lag within the bound, and the
/// read-your-writes fence: the replica has replayed everything the primary had when the request first read);
/// every other request, and every write, uses the primary. Authentication always reads the primary. Installed
/// before authentication and the public feed's rate limit, which write: the fence is taken before them.
struct ReplicaReadMiddleware<Context: RequestContext>: RouterMiddleware {
    let router: ReplicaRouter
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.method == .get || request.method == .head,
              let template = routes.template(forPath: request.uri.path, method: request.method),
              ReplicaReadRoutes.templates.contains(template)
        else { return try await next(request, context) }
        return try await ReplicaReadRequest.$current.withValue(await router.request()) { try await next(request, context) }
    }
}

enum ReplicaReadRoutes {
    /// GET (and HEAD) route templates served from the replica when it can. Not the audit list: it seals its
    /// chain before reading (migration 0028), a write, so it always runs on the primary.
    static let templates: Set<String> = [
        "/v1/dashboard", "/v1/boards/{board_id}/dashboard",
        "/v1/boards/{board_id}/monitoring-report.csv", "/v1/projects/{project_id}/evaluation.csv", "/v1/projects/{project_id}/evaluation",
        "/ocds/releases", "/ocds/releases/{release_id}", "/ocds/records/{ocid}",
        "/v1/boards/{board_id}/ledger", "/v1/schools", "/v1/projects", "/v1/opportunities",
    ]
}
