// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

/// For the database client, the services and the benchmark: their async functions run on the caller's
/// executor (SE-0461) instead of hopping to the global one, so a request's task stays on its PostgreSQL
/// I/O loop without an executor check at every call (measured: 11 of them per pooled query before, 4 after).
/// Not for the API target: its Hummingbird middleware conformances must stay `@concurrent`.
let callerIsolatedSettings = swiftSettings + [.enableUpcomingFeature("NonisolatedNonsendingByDefault")]

let package = Package(
    name: "locality-commissioning",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "locality-server", targets: ["locality-server"]),
        .executable(name: "locality-admin", targets: ["locality-admin"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-openapi-generator.git", from: "1.14.3"),
        .package(url: "https://github.com/apple/swift-openapi-runtime.git", from: "1.13.4"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/swift-openapi-hummingbird.git", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Already in the graph (the OpenAPI generator uses it); the API reads its own document's parameters.
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        // Spans for requests and statements (a no-op until a tracer is bootstrapped; Hummingbird already uses it).
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        // The OTLP exporter, bootstrapped by `locality-server` only when configured. HTTP only: the gRPC trait
        // would pull in grpc-swift for nothing we use.
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // The only way to the database: libpq through a system-library module.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        // Our PostgreSQL client: connections, pool, binds, rows, errors, transactions, COPY.
        .target(
            name: "LocalityPostgres",
            dependencies: [
                "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: callerIsolatedSettings
        ),
        // A private PostgreSQL cluster started from the installed server binaries.
        .target(
            name: "EmbeddedPostgres",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Domain rules and storage: migrations, database bootstrap, repositories.
        .target(
            name: "LocalityDomain",
            dependencies: [
                "LocalityPostgres",
                "EmbeddedPostgres",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: callerIsolatedSettings
        ),
        // The REST API: OpenAPI document, generated types, handlers, middleware, app builder.
        .target(
            name: "LocalityAPI",
            dependencies: [
                "LocalityDomain",
                "LocalityPostgres",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "OpenAPIRuntime", package: "swift-openapi-runtime"),
                .product(name: "OpenAPIHummingbird", package: "swift-openapi-hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            resources: [.copy("openapi.yaml")],
            swiftSettings: swiftSettings,
            plugins: [.plugin(name: "OpenAPIGenerator", package: "swift-openapi-generator")]
        ),
        // Command-line options shared by the server and the admin CLI (flags with LOCALITY_* fallbacks).
        .target(
            name: "LocalityCommandLine",
            dependencies: [
                "LocalityDomain",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "locality-server",
            dependencies: [
                "LocalityAPI",
                "LocalityCommandLine",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "locality-admin",
            dependencies: [
                "EmbeddedPostgres",
                "LocalityDomain",
                "LocalityCommandLine",
                "LocalityPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "locality-bench",
            dependencies: [
                "LocalityPostgres",
                "EmbeddedPostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/PoolBenchmark",
            swiftSettings: callerIsolatedSettings
        ),
        // Test support: one throwaway cluster per test process, a fresh migrated database per test.
        .target(
            name: "PostgresTestSupport",
            dependencies: ["LocalityDomain", "LocalityPostgres", "EmbeddedPostgres"],
            path: "Tests/PostgresTestSupport",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LocalityPostgresTests",
            dependencies: ["LocalityPostgres", "PostgresTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "EmbeddedPostgresTests",
            dependencies: ["EmbeddedPostgres", "PostgresTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LocalityDomainTests",
            dependencies: ["LocalityDomain", "LocalityPostgres", "PostgresTestSupport"],
            swiftSettings: swiftSettings
        ),
        // Runs the built `locality-admin` binary (.build/debug/locality-admin) against a fresh test database.
        .testTarget(
            name: "LocalityCLITests",
            dependencies: ["LocalityDomain", "LocalityPostgres", "PostgresTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "LocalityAPITests",
            dependencies: [
                "LocalityAPI",
                "PostgresTestSupport",
                .product(name: "HummingbirdTesting", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
    ],
    swiftLanguageModes: [.v6]
)
