import Foundation
import LocalityPostgres
import Logging
import PostgresTestSupport
import Testing

/// What the pool does when the server (or a pooler in front of it) goes away: a transaction that had not sent its
/// COMMIT runs again, a read runs again, and connecting is retried for a bounded window, so a restart of PgBouncer
/// or PostgreSQL costs the requests in flight a short wait instead of an error.
@Suite("Connection loss")
struct ConnectionLossTests {
    /// Ends the session the statement runs on, as a pooler or database restart would: the client sees 57P01.
    static let endThisSession = "SELECT pg_terminate_backend(pg_backend_pid())"

    @Test func aTransactionWhoseConnectionIsLostBeforeCommitRunsAgainAndCommitsOnce() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 2) { pool in
            try await pool.query("CREATE TABLE lost_before_commit (attempt int NOT NULL)")
            let attempts = Shared(0)
            let committedBy = try await pool.withTransaction(retry: .onConflict()) { connection -> Int in
                let attempt = attempts.value + 1
                attempts.set(attempt)
                try await connection.query("INSERT INTO lost_before_commit VALUES (\(attempt))")
                if attempt == 1 { try await connection.query(PGQuery(Self.endThisSession)) }
                return attempt
            }
            #expect(committedBy == 2)
            // The first attempt's insert went with its session; only the second one's is there.
            let rows = try await pool.query("SELECT array_agg(attempt) FROM lost_before_commit").first!.decode([Int32].self, at: 0)
            #expect(rows == [2])
        }
    }

    @Test func aTransactionThatMayNotRunTwiceReportsTheLossAndCommitsNothing() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 2) { pool in
            try await pool.query("CREATE TABLE lost_once (n int NOT NULL)")
            let attempts = Shared(0)
            do {
                try await pool.withTransaction(retry: .never) { connection in
                    attempts.set(attempts.value + 1)
                    try await connection.query("INSERT INTO lost_once VALUES (1)")
                    try await connection.query(PGQuery(Self.endThisSession))
                }
                Issue.record("the lost transaction should fail")
            } catch let error as PGError {
                #expect(error.lostBeforeCommit)
                #expect(error.breaksConnection)
            }
            #expect(attempts.value == 1)
            #expect(try await pool.query("SELECT count(*) FROM lost_once").first!.decode(Int.self, at: 0) == 0)
        }
    }

    @Test func aReadWhoseConnectionIsLostRunsAgainOnAFreshOne() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            let attempts = Shared(0)
            let (answer, pid) = try await pool.withConnectionRerunIfLost { connection -> (Int32, Int32) in
                attempts.set(attempts.value + 1)
                if attempts.value == 1 { try await connection.query(PGQuery(Self.endThisSession)) }
                return (try await connection.query("SELECT 42").first!.decode(Int32.self, at: 0), connection.backendPID)
            }
            #expect(answer == 42)
            #expect(attempts.value == 2)
            #expect(pid != 0)
            // Without the rerun the same loss reaches the caller.
            do {
                _ = try await pool.withConnection { try await $0.query(PGQuery(Self.endThisSession)) }
                Issue.record("a lost connection should fail a plain borrow")
            } catch let error as PGError {
                #expect(error.breaksConnection)
            }
        }
    }

    @Test func connectingIsRetriedWhileTheServerIsDownAndSucceedsWhenItIsBack() async throws {
        // A PostgreSQL of the test's own to stop and start: a streaming copy of the replication primary.
        let database = try await TestDatabase.migrated(in: .replicationPrimary)
        let server = try await TestReplica.make()
        defer { Task { await server.remove() } }
        var logger = Logger(label: "test-pool")
        logger.logLevel = .warning
        func pool(retryWindow: Duration) -> PGPool {
            PGPool(configuration: .init(
                connection: .init(conninfo: server.conninfo(user: "postgres", database: database.name), applicationName: "test"),
                maxConnections: 1, acquireTimeout: .seconds(120), connectRetryWindow: retryWindow), logger: logger)
        }
        let patient = pool(retryWindow: .seconds(120))
        let impatient = pool(retryWindow: .zero)
        #expect(try await patient.query("SELECT 1").first!.decode(Int32.self, at: 0) == 1)

        await server.stop()
        // Without a window the caller hears at once that the server cannot be reached.
        do {
            try await impatient.query("SELECT 1")
            Issue.record("connecting to a stopped server should fail")
        } catch let error as PGError {
            #expect(error.kind == .connection)
        }
        #expect(impatient.failedConnectAttemptsRetried == 0)

        // With one, the caller waits: the query is answered once the server is back.
        let answered = Task { try await patient.query("SELECT 42").first!.decode(Int32.self, at: 0) }
        let deadline = ContinuousClock.now + .seconds(60)
        while patient.failedConnectAttemptsRetried == 0 && ContinuousClock.now < deadline { await Task.yield() }
        #expect(patient.failedConnectAttemptsRetried > 0, "the pool never found the server down")
        try await server.start()
        #expect(try await answered.value == 42)
        await patient.close()
        await impatient.close()
    }
}
