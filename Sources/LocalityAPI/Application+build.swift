import EmbeddedPostgres
public import Hummingbird
import HummingbirdCore
public import LocalityDomain
import LocalityPostgres
public import Logging
import Metrics
public import NIOCore
import OpenAPIHummingbird
import OpenAPIRuntime
import Prometheus
public import ServiceLifecycle
public import UnixSignals

/// The request context every route sees.
public struct AppRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The client's address (for per-client rate limits).
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// Builds the whole service: database (embedded or given), migrations, pool, routes and middleware.
/// `locality-server` runs what this returns; tests build the real application the same way.
public func buildApplication(
    _ configuration: AppConfiguration,
    logger: Logger? = nil,
    onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in },
    onMetricsServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in },
    onDemoSeeded: @Sendable (DemoSeed.Result?) -> Void = { _ in },
    authenticationCache: AuthenticationCache? = nil,
    dataChanges: DataChanges? = nil,
    onReplicaRouter: @Sendable (ReplicaRouter) -> Void = { _ in },
    drainNotice: DrainNotice = DrainNotice()
) async throws -> some ApplicationProtocol {
    var logger = logger ?? Logger(label: "locality-server")
    logger.logLevel = configuration.logLevel

    // Files the build must ship with, checked before anything starts.
    try OpenAPIDocument.load()
    let migrations = try Migration.load(from: Migration.defaultDirectory())
    let endpoints = try await DatabaseBootstrap.prepare(configuration.database, logger: logger)
    let migrator = Migrator(migrations: migrations, logger: logger)
    if configuration.applyMigrations {
        do {
            try await migrator.apply(ownerConninfo: endpoints.ownerConninfo)
        } catch {
            await endpoints.embedded?.stop()
            throw error
        }
    }

    do {
        try await DatabaseRoles.checkApplicationRole(
            conninfo: endpoints.applicationConninfo, ownerConninfo: endpoints.ownerConninfo, pooler: configuration.database.pooler,
            sessionSettings: configuration.sessionSettings)
    } catch let error as PGError where error.kind == .connection {
        // The database is not up yet: start anyway (readiness says 503 until it is), as before.
        logger.warning("cannot check the service role yet: the database is unreachable", metadata: ["error": "\(error.message)"])
    } catch {
        await endpoints.embedded?.stop()
        throw error
    }

    if configuration.seedDemo {
        do {
            onDemoSeeded(try await seedDemoIfEmpty(ownerConninfo: endpoints.ownerConninfo, logger: logger))
        } catch {
            await endpoints.embedded?.stop()
            throw error
        }
    }

    let registry = PrometheusCollectorRegistry()
    let metricsFactory = PrometheusMetricsFactory(registry: registry)
    let pool = PGPool(
        configuration: .init(
            connection: .init(conninfo: endpoints.applicationConninfo, applicationName: "locality-server",
                              sessionSettings: configuration.sessionSettings, pooler: configuration.database.pooler),
            maxConnections: configuration.poolSize,
            acquireTimeout: configuration.acquireTimeout,
            maxConnectionLifetime: configuration.dbMaxConnectionLifetimeSeconds > 0 ? .seconds(configuration.dbMaxConnectionLifetimeSeconds) : nil,
            connectRetryWindow: .seconds(configuration.dbConnectRetrySeconds)
        ),
        logger: logger,
        metricsFactory: metricsFactory
    )

    // Heavy reads may go to a streaming replica: same role and session settings, read-only transactions only.
    // Its pool's own gauges stay out of /metrics (they would share the primary's names); the router reports it.
    let replicaRouter = configuration.replicaDatabaseURL.map { url in
        ReplicaRouter(
            primary: pool,
            replica: PGPool(
                configuration: .init(
                    // A replica that does not answer is given up on sooner than the primary.
                    connection: .init(conninfo: url, applicationName: "locality-server-replica", connectTimeoutSeconds: 2,
                                      sessionSettings: configuration.sessionSettings),
                    maxConnections: configuration.replicaConnections,
                    acquireTimeout: configuration.acquireTimeout,
                    maxConnectionLifetime: configuration.dbMaxConnectionLifetimeSeconds > 0 ? .seconds(configuration.dbMaxConnectionLifetimeSeconds) : nil),
                logger: logger, metricsFactory: NOOPMetricsHandler.instance),
            configuration: .init(maxLag: .milliseconds(configuration.replicaMaxLagMilliseconds),
                                 sampleInterval: configuration.replicaLagSampleInterval),
            logger: logger, metricsFactory: metricsFactory)
    }
    if let replicaRouter { onReplicaRouter(replicaRouter) }

    let routes = RouteTable(maxBodyBytes: configuration.maxRequestBodyBytes)
    let router = Router(context: AppRequestContext.self)
    router.add(middleware: DatabaseAffinityMiddleware(pool: pool))
    router.add(middleware: RequestIDMiddleware())
    if configuration.tracing {
        router.add(middleware: RequestTracingMiddleware(routes: routes))
        PGTracing.enable()
    }
    router.add(middleware: HTTPMetricsMiddleware(factory: metricsFactory))
    if configuration.accessLog { router.add(middleware: AccessLogMiddleware()) }
    router.add(middleware: NoStoreMiddleware())
    router.add(middleware: HTTPConventionsMiddleware())
    router.add(middleware: LocationHeaderMiddleware())
    router.add(middleware: ProblemMiddleware(routes: routes))
    router.add(middleware: BodyLimitMiddleware(maxBytes: configuration.maxRequestBodyBytes))
    // One tenant's transactions may hold at most this share of the pool; the rest is left for the others (and
    // for readiness, which does not go through it).
    let bulkhead = TenantBulkhead(limit: configuration.perTenantConnections, timeout: configuration.acquireTimeout)
    // Authentication mostly from memory, kept right by notifications (see AuthenticationCache); a test may pass
    // its own cache to watch it.
    let cache = authenticationCache ?? (configuration.authenticationCacheLifetime > .zero
        ? AuthenticationCache(lifetime: configuration.authenticationCacheLifetime) : nil)
    // Some reads answered from memory while nothing they read has changed (see ResponseCache, DataChanges); a test
    // may pass its own record of changes to watch it.
    let changes = configuration.responseCacheLifetime > .zero ? dataChanges ?? DataChanges() : nil
    let responseCache = changes.map { ResponseCache(changes: $0, lifetime: configuration.responseCacheLifetime) }
    let domain = DomainServices(database: ScopedDatabase(pool: pool, bulkhead: bulkhead, changes: changes), authenticationCache: cache)
    // Before the middleware that write (rate limits, authentication's record of a token's use): the replica
    // read fence is the primary's position when the request began.
    if let replicaRouter { router.add(middleware: ReplicaReadMiddleware(router: replicaRouter, routes: routes)) }
    router.add(middleware: RegistrationRateLimitMiddleware(
        pool: pool, perHour: configuration.registrationsPerHour, trustedProxies: Set(configuration.trustedProxies)))
    router.add(middleware: PublicFeedMiddleware(
        pool: pool, perHour: configuration.publicFeedRequestsPerHour, trustedProxies: Set(configuration.trustedProxies),
        publicBaseURL: try configuration.publicBaseURL.map { text in
            guard let base = AppConfiguration.normalisedPublicBaseURL(text) else { throw InvalidPublicBaseURL(text: text) }
            return base
        }))
    router.add(middleware: AuthenticationMiddleware(tokens: domain.tokens, routes: routes))
    // After authentication (an anonymous export takes no place): exports hold at most their share of the pool.
    router.add(middleware: ExportBulkheadMiddleware(
        bulkhead: TenantBulkhead(limit: configuration.exportConnections, timeout: configuration.acquireTimeout,
                                 maxWaiting: configuration.exportQueueLimit),
        routes: routes))
    let parameterRules: ParameterRules
    do {
        parameterRules = try ParameterRules(document: String(decoding: OpenAPIDocument.bytes, as: UTF8.self))
    } catch {
        logger.error("cannot read the OpenAPI document's parameters; the generated layer alone checks them", metadata: ["error": "\(error)"])
        parameterRules = .empty
    }
    router.add(middleware: RequestContentMiddleware(routes: routes, parameters: parameterRules, maxBytes: configuration.maxRequestBodyBytes))
    // After authentication: idempotency keys are scoped to the caller.
    router.add(middleware: IdempotencyMiddleware(keys: IdempotencyKeys(pool: pool, lease: configuration.idempotencyLease), routes: routes))
    let handlers = APIHandlers(pool: pool, migrator: migrator, registry: registry, services: domain, drainNotice: drainNotice)
    // Compact JSON (the runtime's default also pretty-prints) with keys still sorted, so output stays stable.
    let openAPIConfiguration = Configuration(dateTranscoder: InternetDateTranscoder(), jsonEncodingOptions: [.sortedKeys])
    try handlers.registerHandlers(
        on: RecordingTransport(router: router, table: routes, responseCache: responseCache), configuration: openAPIConfiguration)

    // Services stop in reverse order: the servers first (finishing in-flight requests), then the pool,
    // then the embedded cluster.
    var services: [any Service] = []
    if let embedded = endpoints.embedded { services.append(embedded) }
    services.append(pool)
    if let replicaRouter {
        // Stops before the replica's pool closes (reverse order).
        services.append(replicaRouter.replica)
        services.append(replicaRouter)
    }
    if cache != nil || changes != nil {
        let caches = CacheListener.Caches(authentication: cache, data: changes)
        services.append(CacheListener(
            caches: caches, logger: logger,
            listener: PGNotificationListener(
                // LISTEN is session state: straight to PostgreSQL, past any transaction pooler.
                configuration: .init(conninfo: configuration.database.listenDatabaseURL ?? endpoints.applicationConninfo,
                                     applicationName: "locality-server"),
                channels: caches.channels, reconnectDelay: configuration.authenticationListenerReconnectDelay,
                handler: { [logger] event in CacheListener.apply(event, to: caches, logger: logger) })))
    }
    if let metricsPort = configuration.metricsPort {
        services.append(MetricsServer.application(
            registry: registry, host: configuration.metricsHost, port: metricsPort, logger: logger, onServerRunning: onMetricsServerRunning))
    }
    return Application(
        router: router,
        // A socket that sends nothing for the idle timeout is closed (between requests, or before the first): idle
        // or trickling clients cannot pile up. Past the connection cap, new connections wait in the listen backlog.
        // A request begun must be sent within the header and body timeouts (slowloris); see RequestReadTimeouts.swift.
        server: .guardedHTTP1(
            configuration: .init(idleTimeout: configuration.idleTimeoutSeconds > 0 ? .seconds(Int64(configuration.idleTimeoutSeconds)) : nil),
            readTimeouts: configuration.requestReadTimeouts),
        configuration: .init(
            address: .hostname(configuration.host, port: configuration.port), serverName: nil,
            availableConnectionsDelegate: configuration.maxConnections > 0 ? MaximumAvailableConnections(configuration.maxConnections) : nil),
        services: services,
        onServerRunning: onServerRunning,
        logger: logger
    )
}

/// Runs the session that keeps every instance's caches right: `LISTEN locality_auth` for the authentication cache,
/// `LISTEN locality_data` for the record of data changes behind the response cache; while the session is down
/// neither is trusted.
struct CacheListener: Service {
    struct Caches: Sendable {
        let authentication: AuthenticationCache?
        let data: DataChanges?

        var channels: [String] {
            (authentication != nil ? [AuthenticationCache.channel] : []) + (data != nil ? [DataChanges.channel] : [])
        }
    }

    let caches: Caches
    let logger: Logger
    let listener: PGNotificationListener

    func run() async throws {
        listener.start()
        try? await gracefulShutdown()
        listener.stop()
        caches.authentication?.listenerDown()
        caches.data?.listenerDown()
    }

    static func apply(_ event: PGNotificationListener.Event, to caches: Caches, logger: Logger) {
        switch event {
        case .listening:
            caches.authentication?.listenerUp()
            caches.data?.listenerUp()
        case .notification(let channel, let payload):
            if channel == DataChanges.channel {
                caches.data?.apply(notificationPayload: payload)
            } else {
                caches.authentication?.apply(notificationPayload: payload)
            }
        case .lost(let reason):
            if caches.authentication?.isEnabled == true || caches.data?.isEnabled == true {
                logger.warning("authentication and response caches off: their notification session was lost", metadata: ["reason": "\(reason)"])
            }
            caches.authentication?.listenerDown()
            caches.data?.listenerDown()
        }
    }
}

/// Seeds the demo as the operator (owner role) when no authority exists yet; nil when there was one.
func seedDemoIfEmpty(ownerConninfo: String, logger: Logger) async throws -> DemoSeed.Result? {
    let pool = PGPool(
        configuration: .init(connection: .init(conninfo: ownerConninfo, applicationName: "locality-server-demo"), maxConnections: 2),
        logger: logger)
    do {
        let database = ScopedDatabase(pool: pool)
        let result: DemoSeed.Result? =
            try await AuthorityService(database: database).list().isEmpty ? DemoSeed(database: database).run() : nil
        await pool.close()
        return result
    } catch {
        await pool.close()
        throw error
    }
}

/// The service as `locality-server` runs it: until SIGTERM or SIGINT, then a graceful drain (stop accepting,
/// finish in-flight requests, close the pool, stop the embedded cluster) that is cut short after
/// `shutdownDeadline`: a stuck request cannot hold up a restart or a deploy. Tests pass no signals and trigger
/// the shutdown themselves.
/// `before` run beside it and stop after it (the trace exporter, which sends what the drain produced).
/// `shutdownDelay`, when given, stops first: `/readyz` says 503 for its delay while the server still serves, and
/// the deadline starts after it.
public func serviceGroup(
    _ app: some ApplicationProtocol, before: [any Service] = [], shutdownDelay: ShutdownDelay? = nil, shutdownDeadline: Duration,
    signals: [UnixSignal] = [.sigterm, .sigint], logger: Logger
) -> ServiceGroup {
    let after: [any Service] = shutdownDelay.map { [$0] } ?? []
    var configuration = ServiceGroupConfiguration(services: before + [app] + after, gracefulShutdownSignals: signals, logger: logger)
    configuration.maximumGracefulShutdownDuration = shutdownDeadline + (shutdownDelay?.delay ?? .zero)
    return ServiceGroup(configuration: configuration)
}

/// `publicBaseURL` is not an http(s) URL with a host (and no user, query or fragment).
struct InvalidPublicBaseURL: Error, CustomStringConvertible {
    let text: String
    var description: String { "the public base URL \"\(text)\" must be an http or https URL with a host and no user, query or fragment" }
}
