import Foundation
@testable import LocalityPostgres
import PostgresTestSupport
import Testing

/// `pooler: .transaction` (PgBouncer's transaction pooling): no startup options, nothing prepared by name, the
/// session settings pinned on the role and checked at connect. deploy/topology-test.sh runs the whole service
/// through a real PgBouncer; these pin down the client's side against PostgreSQL itself.
@Suite("Transaction-pooler mode")
struct PoolerModeTests {
    static let timeouts: [(name: String, value: String)] = [("statement_timeout", "15000ms"), ("lock_timeout", "3000ms")]

    static func configuration(_ database: TestDatabase) -> PGConnectionConfiguration {
        PGConnectionConfiguration(conninfo: database.applicationConninfo, applicationName: "pooler-test", sessionSettings: timeouts, pooler: .transaction)
    }

    /// What an operator does once per database (deploy/README.md): the settings on the service role.
    static func pin(_ database: TestDatabase, _ settings: [(name: String, value: String)]) async throws {
        try await PGConnection.withConnection(.init(conninfo: database.superuserConninfo, applicationName: "t")) { connection in
            for (name, value) in settings {
                try await connection.execute("ALTER ROLE locality_app IN DATABASE \"\(database.name)\" SET \(name) = '\(value)'")
            }
        }
    }

    /// Without the settings on the role a pooler-mode session refuses to start, naming the statement that fixes
    /// it (it could not send them itself); once they are there it starts, and has them. A direct session sends
    /// its own, which win over the role's.
    @Test func theSessionSettingsMustBePinnedOnTheRole() async throws {
        let database = try await TestDatabase.migrated()
        try await Self.pin(database, PGConnectionConfiguration.pinnedSettings)
        do {
            try await PGConnection.withConnection(Self.configuration(database)) { _ in }
            Issue.record("a pooler-mode session started without its timeouts")
        } catch let error as PGError {
            #expect(error.message.contains("ALTER ROLE locality_app IN DATABASE \(database.name) SET statement_timeout = '15000ms';"), "\(error)")
            #expect(error.message.contains("lock_timeout = '3000ms'"), "\(error)")
            #expect(!error.message.contains("DateStyle"), "only what is missing is named: \(error)")
        }
        try await Self.pin(database, Self.timeouts)
        let settings = try await PGConnection.withConnection(Self.configuration(database)) { connection in
            try await connection.query("SELECT current_setting('statement_timeout'), current_setting('DateStyle'), current_setting('TimeZone')")
                .first!.decode(String.self, String.self, String.self)
        }
        #expect(settings == ("15s", "ISO, YMD", "UTC"))
        // Direct: the options sent at connect override the role's.
        var direct = Self.configuration(database)
        direct.pooler = .none
        direct.sessionSettings = [("statement_timeout", "20000ms")]
        let overridden = try await PGConnection.withConnection(direct) { connection in
            try await connection.query("SELECT current_setting('statement_timeout')").first!.decode(String.self, at: 0)
        }
        #expect(overridden == "20s")
    }

    /// Behind a transaction pooler the next statement may run on another server session: nothing may be
    /// prepared by name. Queries, transactions and one-round-trip reads all run unnamed, and the read with its
    /// context still goes out as one request in one transaction. The same work in direct mode does prepare
    /// (so the count below can tell the two apart).
    @Test func nothingIsPreparedByName() async throws {
        let database = try await TestDatabase.migrated()
        try await Self.pin(database, PGConnectionConfiguration.pinnedSettings + Self.timeouts)
        var direct = Self.configuration(database)
        direct.pooler = .none
        for configuration in [Self.configuration(database), direct] {
            let prepared = try await PGConnection.withConnection(configuration) { connection in
                for value in ["a", "b", "c"] {
                    #expect(try await connection.query("SELECT \(value)::text || 'x'").first!.decode(String.self, at: 0) == value + "x")
                    let inside = try await connection.withTransaction(prelude: "SELECT set_config('app.x', \(value), true)") {
                        try await $0.query("SELECT current_setting('app.x')").first!.decode(String.self, at: 0)
                    }
                    #expect(inside == value)
                    let before = connection.requestCount
                    let read = try await connection.readInOneRoundTrip(
                        prelude: "SELECT set_config('app.x', \(value), true)", "SELECT current_setting('app.x', true)").first!
                    #expect(try read.decode(String?.self, at: 0) == value)
                    if configuration.pooler == .transaction {
                        #expect(connection.requestCount - before == 1, "an unnamed read took \(connection.requestCount - before) requests")
                    }
                    // Context and read share one transaction, and nothing of it stays on the session.
                    let same = try await connection.readInOneRoundTrip(
                        prelude: "SELECT set_config('app.t', now()::text, true)", "SELECT current_setting('app.t')::timestamptz = now()").first!
                    #expect(try same.decode(Bool.self, at: 0))
                    #expect(try await connection.query("SELECT coalesce(current_setting('app.x', true), '')").first!.decode(String.self, at: 0) == "")
                }
                return try await connection.query("SELECT count(*) FROM pg_prepared_statements").first!.decode(Int.self, at: 0)
            }
            if configuration.pooler == .transaction {
                #expect(prepared == 0, "named statements behind a transaction pooler")
            } else {
                #expect(prepared > 0, "direct mode prepares its statements")
            }
        }
    }

    /// A failing unnamed read reports its error and leaves the session usable, outside any transaction.
    @Test func aFailingUnnamedReadLeavesTheSessionUsable() async throws {
        let database = try await TestDatabase.migrated()
        try await Self.pin(database, PGConnectionConfiguration.pinnedSettings + Self.timeouts)
        try await PGConnection.withConnection(Self.configuration(database)) { connection in
            do {
                _ = try await connection.readInOneRoundTrip(prelude: "SELECT set_config('app.x', 'y', true)", "SELECT 10 / \(0)::int4")
                Issue.record("division by zero succeeded")
            } catch let error as PGError {
                #expect(error.sqlState == "22012", "\(error)")
            }
            #expect(!connection.isBroken)
            let row = try await connection.query("SELECT coalesce(current_setting('app.x', true), ''), txid_current_if_assigned() IS NULL").first!
            #expect(try row.decode(String.self, Bool.self) == ("", true))
        }
    }
}
