import ArgumentParser
#if canImport(Glibc)
// `stdout` is a mutable C global; the log handler reads it once (below).
@preconcurrency import Glibc
#endif
import Foundation
import Hummingbird
import LocalityAPI
import LocalityCommandLine
import LocalityDomain
import LocalityPostgres
import Logging
import OTel
import ServiceLifecycle
import Synchronization

@main
struct LocalityServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "locality-server",
        abstract: "Serve the Locality Commissioning Marketplace REST API.",
        discussion: "Every option may instead be given as a LOCALITY_* environment variable (shown in brackets). With no database URL, an embedded PostgreSQL under .data/postgres is used.",
        version: BuildVersion.current
    )

    @Option(help: "Address to listen on [LOCALITY_HOST] (default 127.0.0.1).")
    var host: String?

    @Option(help: "Port to listen on [LOCALITY_PORT] (default 8080).")
    var port: Int?

    @Option(help: "Database connections in the pool [LOCALITY_POOL_SIZE] (default 16).")
    var poolSize: Int?

    @Option(help: "Pool connections one tenant may hold at once; its other requests wait [LOCALITY_TENANT_CONNECTION_LIMIT] (default 3/4 of the pool).")
    var tenantConnectionLimit: Int?

    @Option(help: "CSV exports running at once; more wait in order, then get 503 [LOCALITY_EXPORT_CONNECTION_LIMIT] (default 1/4 of the pool).")
    var exportConnectionLimit: Int?

    @Option(help: "Largest accepted request body in bytes [LOCALITY_MAX_BODY_BYTES] (default 1048576).")
    var maxBodyBytes: Int?

    @Option(help: "Address of the separate /metrics listener [LOCALITY_METRICS_HOST] (default 127.0.0.1: loopback only).")
    var metricsHost: String?

    @Option(help: "Port of the separate /metrics listener; 0 turns metrics off [LOCALITY_METRICS_PORT] (default 9464).")
    var metricsPort: Int?

    @Option(help: "Seconds a token's principal may be answered from memory: the longest a revocation can go unnoticed; 0 = no cache [LOCALITY_AUTH_CACHE_SECONDS] (default 10).")
    var authCacheSeconds: Int?

    @Option(help: "Seconds an answer to a board or project read may be given again from memory while nothing it read has changed: the longest an unannounced change (SQL while notifications are lost) can go unseen; 0 = no cache [LOCALITY_RESPONSE_CACHE_SECONDS] (default 2).")
    var responseCacheSeconds: Int?

    @Option(help: "After SIGTERM, seconds in-flight requests get to finish before the process exits anyway [LOCALITY_SHUTDOWN_DEADLINE_SECONDS] (default 10).")
    var shutdownDeadlineSeconds: Int?

    @Option(help: "After SIGTERM, seconds to keep serving with /readyz answering 503 before the drain begins, so a load balancer polling /readyz takes this instance out first [LOCALITY_SHUTDOWN_DELAY_SECONDS] (default 0).")
    var shutdownDelaySeconds: Int?

    @Option(help: "Close a client connection that sends nothing for this many seconds; 0 = never [LOCALITY_IDLE_TIMEOUT_SECONDS] (default 30).")
    var idleTimeoutSeconds: Int?

    @Option(help: "A client that has begun a request must send its whole header block within this many seconds, else 408 and close; 0 = no limit [LOCALITY_REQUEST_HEADER_TIMEOUT_SECONDS] (default 10).")
    var requestHeaderTimeoutSeconds: Int?

    @Option(help: "…and its body within this many seconds after the headers; 0 = no limit [LOCALITY_REQUEST_BODY_TIMEOUT_SECONDS] (default 30).")
    var requestBodyTimeoutSeconds: Int?

    @Option(help: "Client connections served at once; more wait to be accepted; 0 = no cap [LOCALITY_MAX_CONNECTIONS] (default 1000).")
    var maxConnections: Int?

    @Option(help: "Longest a database statement may run, in ms; 0 = no limit [LOCALITY_STATEMENT_TIMEOUT_MS] (default 15000).")
    var statementTimeoutMs: Int?

    @Option(help: "Longest a statement may wait for a row lock, in ms; 0 = no limit [LOCALITY_LOCK_TIMEOUT_MS] (default 3000).")
    var lockTimeoutMs: Int?

    @Option(help: "Longest a transaction may sit idle, in ms; 0 = no limit [LOCALITY_IDLE_IN_TRANSACTION_TIMEOUT_MS] (default 30000).")
    var idleInTransactionTimeoutMs: Int?

    @Option(help: "Close a pooled database connection once it is this many seconds old, when it is next returned; 0 = never [LOCALITY_DB_MAX_CONNECTION_LIFETIME_SECONDS] (default 1800).")
    var dbMaxConnectionLifetimeSeconds: Int?

    @Option(help: "While the database or its pooler cannot be reached (a restart), keep trying to connect this many seconds before answering 503; 0 = at once [LOCALITY_DB_CONNECT_RETRY_SECONDS] (default 3).")
    var dbConnectRetrySeconds: Int?

    @Option(help: "Public supplier registrations allowed per client address per hour, across all instances [LOCALITY_REGISTRATIONS_PER_HOUR] (default 10).")
    var registrationsPerHour: Int?

    @Option(help: "Requests per client address per hour to the public open contracting feed (/ocds/…), across all instances [LOCALITY_PUBLIC_FEED_REQUESTS_PER_HOUR] (default 3600).")
    var publicFeedRequestsPerHour: Int?

    @Option(help: "Scheme and host the public open contracting feed's URIs start with, e.g. https://data.council.example; unset, a plain Host header is used [LOCALITY_PUBLIC_BASE_URL].")
    var publicBaseUrl: String?

    @Option(help: "Comma-separated addresses of trusted proxies (load balancers) whose X-Forwarded-For names the client [LOCALITY_TRUSTED_PROXIES] (default none).")
    var trustedProxies: String?

    @Option(help: "A pooler between the server and PostgreSQL: none, or transaction for PgBouncer's pool_mode = transaction (no startup options, no named prepared statements; the role must carry the session settings, see deploy/README.md) [LOCALITY_DB_POOLER] (default none).")
    var dbPooler: String?

    @Option(help: "URL for the authentication and response caches' LISTEN session: PostgreSQL itself, never a transaction pooler [LOCALITY_DB_LISTEN_URL] (default --database-url; required with --db-pooler transaction unless --auth-cache-seconds 0 --response-cache-seconds 0).")
    var dbListenURL: String?

    @Option(help: "A streaming replica's PostgreSQL URL, same role and database as --database-url: dashboards, reports, CSV exports, the OCDS feed and long lists read from it when it is caught up [LOCALITY_REPLICA_DATABASE_URL] (default none).")
    var replicaDatabaseURL: String?

    @Option(help: "Database connections in the replica's pool [LOCALITY_REPLICA_POOL_SIZE] (default half the pool, at least 2).")
    var replicaPoolSize: Int?

    @Option(help: "A replica further behind than this many ms serves no reads [LOCALITY_REPLICA_MAX_LAG_MS] (default 1000).")
    var replicaMaxLagMs: Int?

    @Option(help: "Send traces over OTLP/HTTP to this URL, e.g. http://127.0.0.1:4318/v1/traces: a span per request and per database statement, W3C traceparent honoured, trace ids in the log lines [LOCALITY_OTLP_TRACES_ENDPOINT] (default: no tracing). OTEL_BSP_* and OTEL_TRACES_SAMPLER* tune it.")
    var otlpTracesEndpoint: String?

    @Option(help: "http/protobuf or http/json [LOCALITY_OTLP_PROTOCOL] (default http/protobuf).")
    var otlpProtocol: String?

    @Flag(inversion: .prefixedNo, help: "A log line per request at info: method, route template, status, duration, request id [LOCALITY_ACCESS_LOG=true|false] (default on).")
    var accessLog: Bool?

    @Flag(inversion: .prefixedNo, help: "Apply pending migrations at start [LOCALITY_MIGRATE=true|false].")
    var migrate: Bool?

    @Flag(help: "On an empty database, create the North Yorkshire demo (five boards, budgets, one user per role) and print its tokens [LOCALITY_DEMO=true].")
    var demo = false

    @OptionGroup var database: DatabaseOptions
    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        var configuration = AppConfiguration()
        configuration.host = host ?? environmentValue("HOST") ?? configuration.host
        configuration.port = try port ?? environmentValue("PORT").map { try parseInt($0, "LOCALITY_PORT") } ?? configuration.port
        configuration.poolSize = try poolSize ?? environmentValue("POOL_SIZE").map { try parseInt($0, "LOCALITY_POOL_SIZE") } ?? configuration.poolSize
        configuration.maxRequestBodyBytes = try maxBodyBytes ?? environmentValue("MAX_BODY_BYTES").map { try parseInt($0, "LOCALITY_MAX_BODY_BYTES") } ?? configuration.maxRequestBodyBytes
        configuration.metricsHost = metricsHost ?? environmentValue("METRICS_HOST") ?? configuration.metricsHost
        let metricsPort = try metricsPort ?? environmentValue("METRICS_PORT").map { try parseInt($0, "LOCALITY_METRICS_PORT") } ?? 9464
        configuration.metricsPort = metricsPort == 0 ? nil : metricsPort
        configuration.shutdownDeadlineSeconds = try shutdownDeadlineSeconds
            ?? environmentValue("SHUTDOWN_DEADLINE_SECONDS").map { try parseInt($0, "LOCALITY_SHUTDOWN_DEADLINE_SECONDS") } ?? configuration.shutdownDeadlineSeconds
        guard configuration.shutdownDeadlineSeconds > 0 else { throw ValidationError("--shutdown-deadline-seconds must be at least 1") }
        configuration.shutdownDelaySeconds = try shutdownDelaySeconds
            ?? environmentValue("SHUTDOWN_DELAY_SECONDS").map { try parseInt($0, "LOCALITY_SHUTDOWN_DELAY_SECONDS") } ?? configuration.shutdownDelaySeconds
        guard configuration.shutdownDelaySeconds >= 0 else { throw ValidationError("--shutdown-delay-seconds must not be negative") }
        let authCacheSeconds = try authCacheSeconds ?? environmentValue("AUTH_CACHE_SECONDS").map { try parseInt($0, "LOCALITY_AUTH_CACHE_SECONDS") } ?? 10
        guard (0...300).contains(authCacheSeconds) else { throw ValidationError("--auth-cache-seconds must be between 0 and 300") }
        configuration.authenticationCacheLifetime = .seconds(authCacheSeconds)
        let responseCacheSeconds = try responseCacheSeconds
            ?? environmentValue("RESPONSE_CACHE_SECONDS").map { try parseInt($0, "LOCALITY_RESPONSE_CACHE_SECONDS") } ?? 2
        guard (0...60).contains(responseCacheSeconds) else { throw ValidationError("--response-cache-seconds must be between 0 and 60") }
        configuration.responseCacheLifetime = .seconds(responseCacheSeconds)
        configuration.idleTimeoutSeconds = try idleTimeoutSeconds
            ?? environmentValue("IDLE_TIMEOUT_SECONDS").map { try parseInt($0, "LOCALITY_IDLE_TIMEOUT_SECONDS") } ?? configuration.idleTimeoutSeconds
        configuration.maxConnections = try maxConnections
            ?? environmentValue("MAX_CONNECTIONS").map { try parseInt($0, "LOCALITY_MAX_CONNECTIONS") } ?? configuration.maxConnections
        guard configuration.idleTimeoutSeconds >= 0, configuration.maxConnections >= 0 else {
            throw ValidationError("--idle-timeout-seconds and --max-connections must not be negative")
        }
        configuration.requestHeaderTimeoutSeconds = try requestHeaderTimeoutSeconds
            ?? environmentValue("REQUEST_HEADER_TIMEOUT_SECONDS").map { try parseInt($0, "LOCALITY_REQUEST_HEADER_TIMEOUT_SECONDS") }
            ?? configuration.requestHeaderTimeoutSeconds
        configuration.requestBodyTimeoutSeconds = try requestBodyTimeoutSeconds
            ?? environmentValue("REQUEST_BODY_TIMEOUT_SECONDS").map { try parseInt($0, "LOCALITY_REQUEST_BODY_TIMEOUT_SECONDS") }
            ?? configuration.requestBodyTimeoutSeconds
        guard configuration.requestHeaderTimeoutSeconds >= 0, configuration.requestBodyTimeoutSeconds >= 0 else {
            throw ValidationError("--request-header-timeout-seconds and --request-body-timeout-seconds must not be negative")
        }
        configuration.statementTimeoutMilliseconds = try statementTimeoutMs
            ?? environmentValue("STATEMENT_TIMEOUT_MS").map { try parseInt($0, "LOCALITY_STATEMENT_TIMEOUT_MS") } ?? configuration.statementTimeoutMilliseconds
        configuration.lockTimeoutMilliseconds = try lockTimeoutMs
            ?? environmentValue("LOCK_TIMEOUT_MS").map { try parseInt($0, "LOCALITY_LOCK_TIMEOUT_MS") } ?? configuration.lockTimeoutMilliseconds
        configuration.idleInTransactionTimeoutMilliseconds = try idleInTransactionTimeoutMs
            ?? environmentValue("IDLE_IN_TRANSACTION_TIMEOUT_MS").map { try parseInt($0, "LOCALITY_IDLE_IN_TRANSACTION_TIMEOUT_MS") }
            ?? configuration.idleInTransactionTimeoutMilliseconds
        for (value, flag) in [(configuration.statementTimeoutMilliseconds, "--statement-timeout-ms"), (configuration.lockTimeoutMilliseconds, "--lock-timeout-ms"),
                              (configuration.idleInTransactionTimeoutMilliseconds, "--idle-in-transaction-timeout-ms")] where value < 0 {
            throw ValidationError("\(flag) must not be negative")
        }
        configuration.dbMaxConnectionLifetimeSeconds = try dbMaxConnectionLifetimeSeconds
            ?? environmentValue("DB_MAX_CONNECTION_LIFETIME_SECONDS").map { try parseInt($0, "LOCALITY_DB_MAX_CONNECTION_LIFETIME_SECONDS") }
            ?? configuration.dbMaxConnectionLifetimeSeconds
        guard configuration.dbMaxConnectionLifetimeSeconds >= 0 else { throw ValidationError("--db-max-connection-lifetime-seconds must not be negative") }
        configuration.dbConnectRetrySeconds = try dbConnectRetrySeconds
            ?? environmentValue("DB_CONNECT_RETRY_SECONDS").map { try parseInt($0, "LOCALITY_DB_CONNECT_RETRY_SECONDS") }
            ?? configuration.dbConnectRetrySeconds
        guard (0...60).contains(configuration.dbConnectRetrySeconds) else { throw ValidationError("--db-connect-retry-seconds must be between 0 and 60") }
        configuration.registrationsPerHour = try registrationsPerHour
            ?? environmentValue("REGISTRATIONS_PER_HOUR").map { try parseInt($0, "LOCALITY_REGISTRATIONS_PER_HOUR") } ?? configuration.registrationsPerHour
        guard configuration.registrationsPerHour > 0 else { throw ValidationError("--registrations-per-hour must be at least 1") }
        configuration.publicFeedRequestsPerHour = try publicFeedRequestsPerHour
            ?? environmentValue("PUBLIC_FEED_REQUESTS_PER_HOUR").map { try parseInt($0, "LOCALITY_PUBLIC_FEED_REQUESTS_PER_HOUR") }
            ?? configuration.publicFeedRequestsPerHour
        guard configuration.publicFeedRequestsPerHour > 0 else { throw ValidationError("--public-feed-requests-per-hour must be at least 1") }
        if let base = publicBaseUrl ?? environmentValue("PUBLIC_BASE_URL"), !base.isEmpty {
            guard let normalised = AppConfiguration.normalisedPublicBaseURL(base) else {
                throw ValidationError("--public-base-url must be an http or https URL with a host and no user, query or fragment, e.g. https://data.council.example")
            }
            configuration.publicBaseURL = normalised
        }
        configuration.trustedProxies = (trustedProxies ?? environmentValue("TRUSTED_PROXIES") ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        configuration.tenantConnectionLimit = try tenantConnectionLimit
            ?? environmentValue("TENANT_CONNECTION_LIMIT").map { try parseInt($0, "LOCALITY_TENANT_CONNECTION_LIMIT") }
        if let limit = configuration.tenantConnectionLimit, limit < 1 { throw ValidationError("--tenant-connection-limit must be at least 1") }
        configuration.exportConnectionLimit = try exportConnectionLimit
            ?? environmentValue("EXPORT_CONNECTION_LIMIT").map { try parseInt($0, "LOCALITY_EXPORT_CONNECTION_LIMIT") }
        if let limit = configuration.exportConnectionLimit, limit < 1 { throw ValidationError("--export-connection-limit must be at least 1") }
        configuration.replicaDatabaseURL = replicaDatabaseURL ?? environmentValue("REPLICA_DATABASE_URL")
        configuration.replicaPoolSize = try replicaPoolSize ?? environmentValue("REPLICA_POOL_SIZE").map { try parseInt($0, "LOCALITY_REPLICA_POOL_SIZE") }
        if let size = configuration.replicaPoolSize, size < 1 { throw ValidationError("--replica-pool-size must be at least 1") }
        configuration.replicaMaxLagMilliseconds = try replicaMaxLagMs
            ?? environmentValue("REPLICA_MAX_LAG_MS").map { try parseInt($0, "LOCALITY_REPLICA_MAX_LAG_MS") } ?? configuration.replicaMaxLagMilliseconds
        guard configuration.replicaMaxLagMilliseconds >= 0 else { throw ValidationError("--replica-max-lag-ms must not be negative") }
        configuration.accessLog = accessLog ?? environmentValue("ACCESS_LOG").map { $0 != "false" && $0 != "0" } ?? true
        configuration.applyMigrations = migrate ?? environmentValue("MIGRATE").map { $0 != "false" && $0 != "0" } ?? true
        configuration.database = database.settings
        let pooler = dbPooler ?? environmentValue("DB_POOLER") ?? "none"
        guard let poolerMode = PGPoolerMode(rawValue: pooler) else {
            throw ValidationError("--db-pooler must be none or transaction, not \"\(pooler)\"")
        }
        configuration.database.pooler = poolerMode
        configuration.database.listenDatabaseURL = dbListenURL ?? environmentValue("DB_LISTEN_URL")
        if poolerMode == .transaction, configuration.database.listenDatabaseURL == nil, authCacheSeconds > 0 || responseCacheSeconds > 0 {
            // LISTEN through a transaction pooler lands on whichever server session ran it: notifications
            // would be lost silently and revoked tokens honoured for the cache's whole lifetime.
            throw ValidationError("--db-pooler transaction needs --db-listen-url (LOCALITY_DB_LISTEN_URL) pointing at PostgreSQL itself, or --auth-cache-seconds 0 --response-cache-seconds 0")
        }
        configuration.seedDemo = demo || environmentValue("DEMO").map { $0 == "true" || $0 == "1" } ?? false
        configuration.logLevel = try logging.level(default: .info)
        guard configuration.poolSize > 0 else { throw ValidationError("--pool-size must be at least 1") }

        let tracesEndpoint = otlpTracesEndpoint ?? environmentValue("OTLP_TRACES_ENDPOINT")
        let tracesProtocol = otlpProtocol ?? environmentValue("OTLP_PROTOCOL") ?? "http/protobuf"
        guard ["http/protobuf", "http/json"].contains(tracesProtocol) else {
            throw ValidationError("--otlp-protocol must be http/protobuf or http/json, not \"\(tracesProtocol)\"")
        }
        configuration.tracing = tracesEndpoint != nil

        let level = configuration.logLevel
        // With tracing on, every line logged inside a request carries its trace and span ids beside the request id.
        LogFlusher.start()
        LoggingSystem.bootstrap({ label, metadataProvider in
            SingleLineLogHandler(label: label, level: level, metadataProvider: metadataProvider)
        }, metadataProvider: configuration.tracing ? OTel.makeLoggingMetadataProvider() : nil)
        let logger = Logger(label: "locality-server")
        var observability: [any Service] = []
        if let tracesEndpoint {
            observability.append(try Self.bootstrapTracing(endpoint: tracesEndpoint, protocol: tracesProtocol))
        }
        Self.ensureFileLimit(for: configuration, logger: logger)
        let trimmer = MallocTuning.start()
        defer { trimmer?.cancel() }
        do {
            let drainNotice = DrainNotice()
            let app = try await buildApplication(configuration, logger: logger, onDemoSeeded: printDemo, drainNotice: drainNotice)
            let delay = configuration.shutdownDelaySeconds > 0
                ? ShutdownDelay(notice: drainNotice, delay: .seconds(configuration.shutdownDelaySeconds)) : nil
            try await serviceGroup(
                app, before: observability, shutdownDelay: delay, shutdownDeadline: .seconds(configuration.shutdownDeadlineSeconds), logger: logger
            ).run()
        } catch let error as ExitCode {
            throw error
        } catch {
            // One line saying what went wrong (embedded cluster, migrations, port in use…), then a non-zero exit.
            logger.critical("cannot start: \(error)")
            throw ExitCode.failure
        }
    }

    /// Traces only, over OTLP/HTTP: our metrics stay on /metrics and our logs on standard output. The OTEL_*
    /// variables that would turn on OTel's logs or metrics (which would replace our logging) are not passed on.
    static func bootstrapTracing(endpoint: String, protocol tracesProtocol: String) throws -> some Service {
        var otel = OTel.Configuration.default
        otel.serviceName = "locality-server"
        otel.logs.enabled = false
        otel.metrics.enabled = false
        otel.traces.enabled = true
        otel.traces.exporter = .otlp
        otel.traces.otlpExporter.endpoint = endpoint
        otel.traces.otlpExporter.protocol = tracesProtocol == "http/json" ? .httpJSON : .httpProtobuf
        otel.propagators = [.traceContext]
        let environment = ProcessInfo.processInfo.environment.filter { key, _ in
            key.hasPrefix("OTEL_BSP_") || key.hasPrefix("OTEL_TRACES_SAMPLER") || key == "OTEL_RESOURCE_ATTRIBUTES"
                || key == "OTEL_SERVICE_NAME" || key.hasPrefix("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        }
        return try OTel.bootstrap(configuration: otel, environment: environment)
    }

    /// Each client connection and each pooled database connection takes a file descriptor. Run out of them and
    /// the process fails in odd places (accept errors; libdispatch aborting when it cannot open /proc files), so
    /// raise the soft limit to the hard one, and say so in one line when even that is below what the
    /// configuration may need.
    static func ensureFileLimit(for configuration: AppConfiguration, logger: Logger) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        let cap = configuration.maxConnections > 0 ? configuration.maxConnections : 10_000
        let needed = UInt64(cap + configuration.poolSize + 128)
        if UInt64(limit.rlim_cur) < needed {
            logger.warning("the open-files limit is low for this configuration; raise LimitNOFILE (systemd) or ulimit -n, or lower --max-connections",
                           metadata: ["limit": "\(limit.rlim_cur)", "needed": "\(needed)"])
        }
    }

    /// The demo's tokens, once: the only time they can be seen.
    private func printDemo(_ demo: DemoSeed.Result?) {
        guard let demo else {
            print("Demo: the database already has authorities; nothing seeded (tokens were shown when it was first seeded).")
            return
        }
        print("Demo seeded: \(demo.authority.name) with \(demo.boards.count) boards. Tokens (shown once):")
        for user in demo.users {
            print("  \(user.role.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0)) \(user.token)")
        }
        if let admin = demo.users.first(where: { $0.role == .authorityAdmin }) {
            print("Try: curl -H 'Authorization: Bearer \(admin.token)' http://\(host ?? "127.0.0.1"):\(port ?? 8080)/v1/boards")
        }
        // Standard output is block-buffered when it is a file or a pipe (systemd, CI): without this the tokens
        // would sit in the buffer while the server runs.
        fflush(nil)
    }

    private func parseInt(_ text: String, _ name: String) throws -> Int {
        guard let value = Int(text) else { throw ValidationError("\(name) must be a whole number, not \"\(text)\"") }
        return value
    }
}

/// One entry, one line: PostgreSQL's messages (and a few others) carry newlines, which split an entry in two for
/// every log shipper reading lines. Newlines in the message and in metadata become `⏎`.
///
/// Writes exactly what swift-log's `StreamLogHandler` wrote to standard output (`<time> <level> <label>: k=v … [source]
/// message`, metadata sorted by key), but formats the line itself:
/// the access log writes one per request, and `StreamLogHandler` re-sorted and re-joined the logger's metadata on
/// every change of it (twice per request: request id, user), copied the metadata into a second dictionary to
/// flatten it, and called `localtime` (a `stat` of /etc/localtime each time) and `strftime` per line. Measured in
/// Benchmarks/README.md ("Where the time goes").
///
/// Info lines and quieter (the access log's, one per request) are flushed by `LogFlusher` within 100 ms, not one by
/// one: a flush per line was a `write(2)` per request, 13% of a cached read's server CPU (Benchmarks/README.md,
/// 2026-12-01 table). A notice, warning or error flushes at once, after whatever preceded it.
struct SingleLineLogHandler: LogHandler {
    /// The C library's `stdout`, read once (a mutable C global to Swift's concurrency checking).
    nonisolated(unsafe) private static let standardOutput: UnsafeMutablePointer<FILE> = stdout
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    let metadataProvider: Logger.MetadataProvider?

    init(label: String, level: Logger.Level, metadataProvider: Logger.MetadataProvider?) {
        self.label = label
        self.logLevel = level
        self.metadataProvider = metadataProvider
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String, file: String, function: String, line: UInt) {
        func flat(_ text: String) -> String {
            // Printable ASCII (nearly every value) holds no newline: checked byte by byte, not by Character.
            if text.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) { return text }
            return text.contains(where: \.isNewline) ? text.split(whereSeparator: \.isNewline).joined(separator: " ⏎ ") : text
        }
        // As StreamLogHandler: the logger's metadata, then the provider's (tracing ids), then the call's.
        var merged = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            merged.merge(provided) { _, provided in provided }
        }
        if let explicit, !explicit.isEmpty {
            merged.merge(explicit) { _, explicit in explicit }
        }
        var text = LogTimestamp.now()
        text.reserveCapacity(256)
        text += " "
        text += level.rawValue
        if !label.isEmpty { text += " " }
        text += label
        text += ":"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            text += " "
            text += key
            text += "="
            text += flat(value.description)
        }
        text += " ["
        text += source
        text += "] "
        text += flat(message.description)
        text += "\n"
        let file = Self.standardOutput
        text.withUTF8 { bytes in
            flockfile(file)
            fwrite(bytes.baseAddress, 1, bytes.count, file)
            if level > .info || !LogFlusher.isRunning { fflush(file) }
            funlockfile(file)
        }
    }
}

/// Flushes standard output every 100 ms, from a thread of its own (never a cooperative or I/O thread), so that info
/// lines need no `write(2)` each; the process's exit flushes the rest. A process killed outright (SIGKILL) loses
/// at most the last 100 ms of info lines.
enum LogFlusher {
    private static let running = Atomic<Bool>(false)

    static var isRunning: Bool { running.load(ordering: .relaxed) }

    static func start() {
        guard running.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
        nonisolated(unsafe) let file: UnsafeMutablePointer<FILE> = stdout
        Thread.detachNewThread {
            while true {
                usleep(100_000)
                fflush(file)
            }
        }
    }
}

/// The log's timestamp (`2026-11-30T18:40:07+0000`, StreamLogHandler's format), formatted once per second.
enum LogTimestamp {
    private static let cache = Mutex<(second: Int, text: String)>((second: -1, text: ""))

    static func now() -> String {
        var seconds = time(nil)
        return cache.withLock { cached in
            if cached.second == Int(seconds) { return cached.text }
            // `localtime_r` reads the time zone once; `localtime` checks /etc/localtime on every call.
            var parts = tm()
            guard localtime_r(&seconds, &parts) != nil else { return "<unknown>" }
            var buffer = [CChar](repeating: 0, count: 64)
            guard strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &parts) > 0 else { return "<unknown>" }
            let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            cached = (second: Int(seconds), text: text)
            return text
        }
    }
}

/// Memory that goes back to the system after a burst. Measured (deploy/README.md, fault drill (b)): after 2,000
/// connections glibc kept the freed memory in its per-thread arenas, and RSS stayed at the burst's peak. Two
/// arenas (instead of up to 8 per core) and a periodic `malloc_trim` return it; set `MALLOC_ARENA_MAX` to choose
/// otherwise, `LOCALITY_MALLOC_TRIM_SECONDS=0` to stop trimming. glibc only; elsewhere nothing happens.
enum MallocTuning {
    private typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
    private typealias MallocTrim = @convention(c) (Int) -> Int32
    private static let arenaMax: Int32 = -8   // M_ARENA_MAX in <malloc.h>

    /// Applies the arena limit and starts the trimming task (nil when trimming is off or unavailable).
    static func start() -> Task<Void, Never>? {
        // Looked up at run time: Swift's Glibc module does not export <malloc.h>.
        guard let process = dlopen(nil, RTLD_NOW) else { return nil }
        if ProcessInfo.processInfo.environment["MALLOC_ARENA_MAX"] == nil, let symbol = dlsym(process, "mallopt") {
            _ = unsafeBitCast(symbol, to: Mallopt.self)(arenaMax, 2)
        }
        let seconds = ProcessInfo.processInfo.environment["LOCALITY_MALLOC_TRIM_SECONDS"].flatMap(Int.init) ?? 10
        guard seconds > 0, let symbol = dlsym(process, "malloc_trim") else { return nil }
        let trim = unsafeBitCast(symbol, to: MallocTrim.self)
        return Task.detached(priority: .background) {
            // Cheap when there is nothing to give back (it walks the free lists of two arenas).
            while (try? await Task.sleep(for: .seconds(seconds))) != nil {
                _ = trim(0)
            }
        }
    }
}
