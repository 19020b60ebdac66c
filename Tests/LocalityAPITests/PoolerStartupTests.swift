import Foundation
import HTTPTypes
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// The service with `--db-pooler transaction` (deploy/README.md, "Through PgBouncer"): it cannot send its session
/// settings at connect, so they must be on the role; without them it does not start. deploy/topology-test.sh runs
/// it through a real PgBouncer.
@Suite("Starting behind a transaction pooler")
struct PoolerStartupTests {
    static func pin(_ database: TestDatabase, _ settings: [(String, String)]) async throws {
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            for (name, value) in settings {
                try await connection.execute("ALTER ROLE locality_app IN DATABASE \"\(database.name)\" SET \(name) = '\(value)'")
            }
        }
    }

    /// With the decoders' settings on the role but not the timeouts, the service refuses to start and names the
    /// missing `ALTER ROLE` lines (before the change, the role check ignored the timeouts and every pooled
    /// connection then failed at run time). With them all, it serves authenticated, RLS-scoped reads and writes.
    @Test func theServiceStartsOnlyWithItsSettingsOnTheRole() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.database.pooler = .transaction
        try await Self.pin(world.database, [("DateStyle", "ISO, YMD"), ("TimeZone", "UTC"), ("IntervalStyle", "iso_8601"), ("extra_float_digits", "1")])
        do {
            _ = try await buildApplication(configuration)
            Issue.record("the service started without its timeouts on the role")
        } catch let error as PGError {
            #expect(error.message.contains("ALTER ROLE locality_app IN DATABASE \(world.database.name) SET statement_timeout = '15000ms';"), "\(error)")
            #expect(error.message.contains("SET lock_timeout = '\(configuration.lockTimeoutMilliseconds)ms';"), "\(error)")
        }
        try await Self.pin(world.database, [
            ("statement_timeout", "\(configuration.statementTimeoutMilliseconds)ms"), ("lock_timeout", "\(configuration.lockTimeoutMilliseconds)ms"),
            ("idle_in_transaction_session_timeout", "\(configuration.idleInTransactionTimeoutMilliseconds)ms"),
        ])
        let app = try await buildApplication(configuration)
        let lim = world.token(.lim, of: world.a)
        try await app.test(.live) { client in
            #expect(try await client.call(.get, "/readyz", token: nil).status == .ok)
            for _ in 0..<3 {
                let board = try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))", token: lim)
                #expect(board.status == .ok)
                #expect(board.jsonObject["id"] as? String == lower(world.a.boards[0].id))
                let boards = try await client.call(.get, "/v1/boards", token: lim).items.compactMap { $0["id"] as? String }
                #expect(boards.contains(lower(world.a.boards[0].id)))
            }
            let patched = try await client.call(.patch, "/v1/boards/\(lower(world.a.boards[0].id))", token: world.token(.authorityAdmin, of: world.a),
                                                body: ["chair": "Pooled Chair"])
            #expect(patched.status == .ok, "\(String(buffer: patched.body))")
        }
    }
}
