import Foundation
@testable import LocalityPostgres
import PostgresTestSupport
import Synchronization
import Testing

@Suite("One-round-trip reads and LISTEN")
struct PipelineAndNotificationTests {
    /// The context and the read go out together: after the first use (which prepares both statements), each
    /// read is one request, the read sees the context, and the context ends with the implicit transaction.
    @Test func aReadWithItsContextIsOneRoundTrip() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                let read: PGQuery = "SELECT current_setting('app.x', true)"
                for (index, value) in ["a", "b", "c"].enumerated() {
                    let before = connection.requestCount
                    let row = try await connection.readInOneRoundTrip(
                        prelude: "SELECT set_config('app.x', \(value), true)", read).first!
                    #expect(try row.decode(String?.self, at: 0) == value)
                    if index > 0 { #expect(connection.requestCount - before == 1, "read \(index) took \(connection.requestCount - before) requests") }
                }
                // Transaction-local: nothing of the context is left on the session.
                let left = try await connection.query("SELECT coalesce(current_setting('app.x', true), '')").first!.decode(String.self, at: 0)
                #expect(left == "")
                // Context and read share one transaction (the read's now() is the context's), prepared or not.
                for _ in 0..<3 {
                    let same = try await connection.readInOneRoundTrip(
                        prelude: "SELECT set_config('app.t', now()::text, true)", "SELECT current_setting('app.t')::timestamptz = now()").first!
                    #expect(try same.decode(Bool.self, at: 0))
                }
            }
        }
    }

    /// A failing read reports its error and leaves the session outside any transaction, usable.
    @Test func aFailingReadLeavesTheSessionUsable() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                let divide: (Int) -> PGQuery = { "SELECT 10 / \($0)::int4" }
                for _ in 0..<2 { _ = try await connection.readInOneRoundTrip(prelude: "SELECT set_config('app.x', 'y', true)", divide(2)) }
                do {
                    _ = try await connection.readInOneRoundTrip(prelude: "SELECT set_config('app.x', 'y', true)", divide(0))
                    Issue.record("division by zero succeeded")
                } catch let error as PGError {
                    #expect(error.sqlState == "22012", "\(error)")
                }
                #expect(!connection.isBroken)
                let status = try await connection.query("SELECT coalesce(current_setting('app.x', true), ''), txid_current_if_assigned() IS NULL").first!
                #expect(try status.decode(String.self, at: 0) == "")
                let answer = try await connection.readInOneRoundTrip(prelude: "SELECT set_config('app.x', 'y', true)", divide(5)).first!
                #expect(try answer.decode(Int32.self, at: 0) == 2)
            }
        }
    }

    /// A listener hears notifications committed after `.listening`; when its session is killed it says
    /// `.lost`, reconnects, says `.listening` again and hears what is committed from then on.
    @Test func aListenerHearsCommitsAndReportsALostSession() async throws {
        let database = try await TestDatabase.migrated()
        let events = AsyncStream<PGNotificationListener.Event>.makeStream()
        let listener = PGNotificationListener(
            configuration: .init(conninfo: database.applicationConninfo, applicationName: "test"), channels: ["chan"],
            reconnectDelay: .milliseconds(50), handler: { events.continuation.yield($0) })
        listener.start()
        defer { listener.stop() }
        var iterator = events.stream.makeAsyncIterator()
        let first = await iterator.next()
        #expect(first == .listening)
        let connection = try await PGConnection.connect(.init(conninfo: database.superuserConninfo, applicationName: "t"))
        _ = try await connection.withTransaction { try await $0.query("SELECT pg_notify('chan', 'one'), pg_notify('other', 'x')") }
        let one = await iterator.next()
        #expect(one == .notification(channel: "chan", payload: "one"))
        let pid = try #require(listener.backendPID)
        try await connection.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid = \(pid)")
        let lost = await iterator.next()
        guard case .lost = lost else { Issue.record("no lost event: \(String(describing: lost))"); return }
        // Reconnection attempts may fail a few times under load; each says lost again.
        var next = await iterator.next()
        while case .lost = next { next = await iterator.next() }
        #expect(next == .listening)
        try await connection.query("SELECT pg_notify('chan', 'two')")
        let two = await iterator.next()
        #expect(two == .notification(channel: "chan", payload: "two"))
        await connection.close()
    }
}
