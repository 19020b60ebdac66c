import Foundation
public import Logging
public import LocalityDomain

/// Everything the service needs to start; `locality-server` fills it from flags and `LOCALITY_*`
/// environment variables, tests construct it directly.
public struct AppConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port (tests).
    public var port: Int
    public var database: DatabaseSettings
    public var poolSize: Int
    public var acquireTimeout: Duration
    /// Apply pending migrations before accepting traffic.
    public var applyMigrations: Bool
    /// Larger request bodies are refused with 413.
    public var maxRequestBodyBytes: Int
    public var logLevel: Logger.Level
    /// Seed the North Yorkshire demo when the database has no authority yet.
    public var seedDemo = false
    /// Public supplier registrations allowed per client address per hour.
    public var registrationsPerHour = 10
    /// Requests per client address per hour to the public open contracting feed (`/ocds/…`).
    public var publicFeedRequestsPerHour = 3600
    /// The scheme and authority of the public open contracting feed's URIs (each package's `uri`, `links.next`),
    /// e.g. `https://data.council.example`. Unset, the request's Host is used when it is a plain host name
    /// (and responses then vary by Host); set it in production, so that no Host a client sends ends up in a
    /// cached public document.
    public var publicBaseURL: String?
    /// Addresses of load balancers whose `X-Forwarded-For` names the client (for the registration limit).
    public var trustedProxies: [String] = []
    /// `/metrics` is served on its own listener, never on the API port (its counters are operational data,
    /// and per-route counts would reveal activity on sealed tenders). Loopback by default.
    public var metricsHost = "127.0.0.1"
    /// The metrics listener's port; nil serves no metrics, 0 picks a free port (tests).
    /// (`locality-server` listens on 9464 unless told otherwise; `--metrics-port 0` turns it off.)
    public var metricsPort: Int?
    /// Server-side limits on every session of the service's pool (PostgreSQL `statement_timeout`,
    /// `lock_timeout`, `idle_in_transaction_session_timeout`): one stuck statement, one held row lock or one
    /// abandoned transaction cannot hold a pooled connection for long. A request that hits one gets 503
    /// with `Retry-After`. 0 turns a limit off.
    /// Pool connections one tenant (an authority or a supplier) may hold at once; its further transactions wait.
    /// Three quarters of the pool by default, so a stuck tenant leaves the others a quarter.
    public var tenantConnectionLimit: Int?
    var perTenantConnections: Int { max(1, min(poolSize, tenantConnectionLimit ?? max(1, poolSize * 3 / 4))) }
    /// CSV exports running at once (they hold a pool connection each); further exports wait, at most
    /// `exportQueueLimit` of them, then get 503. A quarter of the pool by default.
    public var exportConnectionLimit: Int?
    public var exportQueueLimit = 8
    var exportConnections: Int { max(1, min(poolSize, exportConnectionLimit ?? poolSize / 4)) }
    /// A structured line per request at info level (method, route template, status, duration, request id).
    public var accessLog = true
    /// After SIGTERM, in-flight requests get this long to finish before they are cancelled and the process exits.
    public var shutdownDeadlineSeconds = 10
    /// After SIGTERM and before that drain, this long with `/readyz` answering 503 while everything is still served,
    /// so that a load balancer polling `/readyz` takes the instance out first (`ShutdownDelay`; 0: drain at once).
    public var shutdownDelaySeconds = 0
    /// A connection that sends nothing for this long is closed (0: never).
    public var idleTimeoutSeconds = 30
    /// A client that has begun a request must finish its header block within this many seconds, and its body
    /// within this many more (0: no limit); otherwise 408 and the connection is closed (slow-sending clients).
    public var requestHeaderTimeoutSeconds = 10
    public var requestBodyTimeoutSeconds = 30
    /// Open client connections served at once; more wait in the listen backlog (0: no cap).
    public var maxConnections = 1_000
    /// How long a token's principal may be answered from memory after it was read from the database
    /// (`AuthenticationCache`): the most a revocation, a disabled user or a role change can take to reach this
    /// instance if its notifications stop arriving unnoticed. Usually they arrive within milliseconds of the
    /// commit. Zero turns the cache (and its listener session) off.
    public var authenticationCacheLifetime: Duration = .seconds(10)
    /// How long an answer to a read may be given again from memory (`ResponseCache`): the most a change that
    /// nobody announced (an operator's SQL while notifications are lost unnoticed) can take to show. Changes made
    /// through the services show at once on this instance and within milliseconds on the others; an operator's SQL
    /// within milliseconds too (migration 0036's triggers). Zero turns the response cache off.
    public var responseCacheLifetime: Duration = .seconds(2)
    /// How long the notification listener waits before reconnecting after its session is lost (the cache is
    /// bypassed meanwhile).
    public var authenticationListenerReconnectDelay: Duration = .seconds(1)
    public var statementTimeoutMilliseconds = 15_000
    public var lockTimeoutMilliseconds = 3_000
    public var idleInTransactionTimeoutMilliseconds = 30_000
    /// How long an `Idempotency-Key` claim holds unless the running request renews it: a retry of a request
    /// whose instance died may take the key over after this long (IdempotencyKeys).
    public var idempotencyLease: Duration = IdempotencyKeys.defaultLease
    /// A pooled database connection older than this is closed when returned (never in use) and replaced (0: never).
    public var dbMaxConnectionLifetimeSeconds = 30 * 60
    /// While the database (or the pooler in front of it) cannot be reached, opening a connection is retried for
    /// this long before a request gets 503 (0: at once): a restart of either rides through.
    public var dbConnectRetrySeconds = 3

    /// A public base URL as used: http or https, a host, no user info, query or fragment, no trailing slash;
    /// nil when it is not one.
    public static func normalisedPublicBaseURL(_ text: String) -> String? {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(), ["http", "https"].contains(scheme),
              let host = components.host, !host.isEmpty, components.user == nil, components.password == nil,
              components.query == nil, components.fragment == nil
        else { return nil }
        var base = text
        while base.hasSuffix("/") { base.removeLast() }
        return base
    }

    /// A streaming replica of the database (same role, same database), for the heavy read-only operations
    /// (`ReplicaReadMiddleware`); nil: every read goes to the primary.
    public var replicaDatabaseURL: String?
    /// The replica's pool (default: half the primary's, at least 2).
    public var replicaPoolSize: Int?
    var replicaConnections: Int { max(1, replicaPoolSize ?? max(2, poolSize / 2)) }
    /// A replica further behind than this serves nothing (its reads go to the primary).
    public var replicaMaxLagMilliseconds = 1_000
    /// How often the replica's lag is sampled (and a replica that was down is tried again).
    public var replicaLagSampleInterval: Duration = .milliseconds(250)

    /// A span per request and per statement (`RequestTracingMiddleware`, `PGTracing`), for a tracer the caller
    /// has bootstrapped (`locality-server --otlp-traces-endpoint`). Off: no span work at all.
    public var tracing = false

    /// The pool's session settings for the limits above.
    var sessionSettings: [(name: String, value: String)] {
        [("statement_timeout", "\(statementTimeoutMilliseconds)ms"), ("lock_timeout", "\(lockTimeoutMilliseconds)ms"),
         ("idle_in_transaction_session_timeout", "\(idleInTransactionTimeoutMilliseconds)ms")]
    }

    public init(
        host: String = "127.0.0.1",
        port: Int = 8080,
        database: DatabaseSettings = DatabaseSettings(),
        poolSize: Int = 16,
        acquireTimeout: Duration = .seconds(5),
        applyMigrations: Bool = true,
        maxRequestBodyBytes: Int = 1 << 20,
        logLevel: Logger.Level = .info
    ) {
        self.host = host
        self.port = port
        self.database = database
        self.poolSize = poolSize
        self.acquireTimeout = acquireTimeout
        self.applyMigrations = applyMigrations
        self.maxRequestBodyBytes = maxRequestBodyBytes
        self.logLevel = logLevel
    }
}
