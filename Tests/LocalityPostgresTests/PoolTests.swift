import Foundation
import LocalityPostgres
import PostgresTestSupport
import Synchronization
import Testing

@Suite("Connection pool")
struct PoolTests {
    @Test func twoHundredTasksOverFourConnectionsAllFinishWithinTheBound() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 4, acquireTimeout: .seconds(30)) { pool in
            let maxOpen = Shared(0)
            let maxServerSessions = Shared(0)
            let sum = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        try await pool.withConnection { connection in
                            maxOpen.max(pool.statistics.open)
                            let sessions = try await connection.query(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'test'"
                            ).first!.decode(Int.self, at: 0)
                            maxServerSessions.max(sessions)
                            return try await connection.query("SELECT \(index)::int8 + 1").first!.decode(Int.self, at: 0)
                        }
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(sum == (1...200).reduce(0, +))
            #expect(maxOpen.value <= 4)
            #expect(maxServerSessions.value <= 4)
            #expect(maxServerSessions.value >= 1)
            #expect(pool.statistics.inUse == 0)
        }
    }

    @Test func aTerminatedBackendIsReplacedTransparently() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            let firstPID = try await pool.withConnection { $0.backendPID }
            try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { admin in
                let terminated = try await admin.query("SELECT pg_terminate_backend(\(firstPID), 5000)").first!.decode(Bool.self, at: 0)
                #expect(terminated)
            }
            // The idle connection died; the caller never sees it.
            let (pid, answer) = try await pool.withConnection { connection in
                (connection.backendPID, try await connection.query("SELECT 42").first!.decode(Int32.self, at: 0))
            }
            #expect(answer == 42)
            #expect(pid != firstPID)
            #expect(pool.statistics.open == 1)
        }
    }

    @Test func aConnectionKilledMidQueryIsDiscardedAndTheSlotReopened() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            let pidBox = Shared(0)
            async let failing: Void = pool.withConnection { connection in
                pidBox.set(Int(connection.backendPID))
                try await connection.query("SELECT pg_sleep(10)")
            }
            try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { admin in
                try await waitUntilActive(admin) { pidBox.value }
                try await admin.query("SELECT pg_terminate_backend(\(Int32(pidBox.value)), 5000)")
            }
            do {
                try await failing
                Issue.record("the killed query should fail")
            } catch let error as PGError {
                #expect(error.breaksConnection)
            }
            #expect(try await pool.query("SELECT 1").first!.decode(Int32.self, at: 0) == 1)
        }
    }

    @Test func acquireTimesOutInTimeWithAClearError() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1, acquireTimeout: .milliseconds(200)) { pool in
            let release = Rendezvous(parties: 2)
            let holding = Rendezvous(parties: 2)
            async let holder: Void = pool.withConnection { _ in
                await holding.arrive()
                await release.arrive()
            }
            await holding.arrive()
            let start = ContinuousClock.now
            do {
                try await pool.query("SELECT 1")
                Issue.record("acquire should time out")
            } catch let error as PGError {
                #expect(error.kind == .acquireTimeout)
                #expect(error.message.contains("no database connection became free"))
            }
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(200))
            #expect(elapsed < .seconds(2))
            await release.arrive()
            try await holder
            #expect(pool.statistics.waiting == 0)
        }
    }

    @Test func cancellingATaskCancelsItsRunningQueryWithinASecond() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            let pidBox = Shared(0)
            let task = Task {
                try await pool.withConnection { connection in
                    pidBox.set(Int(connection.backendPID))
                    try await connection.query("SELECT pg_sleep(10)")
                }
            }
            try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { admin in
                try await waitUntilActive(admin) { pidBox.value }
            }
            let start = ContinuousClock.now
            task.cancel()
            let result = await task.result
            #expect(ContinuousClock.now - start < .seconds(1))
            guard case .failure(let error as PGError) = result else {
                Issue.record("expected a cancelled query, got \(result)")
                return
            }
            #expect(error.isQueryCancelled)
            // The connection survives a cancelled statement.
            #expect(try await pool.query("SELECT 7").first!.decode(Int32.self, at: 0) == 7)
        }
    }

    @Test func copyLoadsOneHundredThousandRows() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo) { pool in
            try await pool.query("CREATE TABLE copy_target (urn int PRIMARY KEY, name text, closed date)")
            let rows = (1...100_000).lazy.map { urn -> [String?] in
                [String(urn), "School \(urn)\t\"quoted\"\\", urn % 10 == 0 ? nil : "2024-07-31"]
            }
            let copied = try await pool.withConnection { try await $0.copyIn("COPY copy_target (urn, name, closed) FROM STDIN", rows: rows) }
            #expect(copied == 100_000)
            let row = try await pool.query("SELECT count(*), count(closed), max(urn) FROM copy_target").first!
            let (count, closedCount, maxURN) = try row.decode(Int.self, Int.self, Int32.self)
            #expect(count == 100_000)
            #expect(closedCount == 90_000)
            #expect(maxURN == 100_000)
            let name = try await pool.query("SELECT name FROM copy_target WHERE urn = 7").first!.decode(String.self, at: 0)
            #expect(name == "School 7\t\"quoted\"\\")
        }
    }

    @Test func aClosedPoolRefusesBorrowers() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool { pool in
            try await pool.query("SELECT 1")
            await pool.close()
            await #expect(throws: PGError.self) { try await pool.query("SELECT 1") }
        }
    }
}

/// Polls pg_stat_activity until the backend is running a statement (no fixed sleeps).
func waitUntilActive(_ admin: PGPool, pid: @Sendable () -> Int) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while ContinuousClock.now < deadline {
        let current = pid()
        if current != 0 {
            let active = try await admin.query(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = \(current) AND state = 'active' AND query LIKE '%pg_sleep%'"
            ).first!.decode(Int.self, at: 0)
            if active == 1 { return }
        }
        await Task.yield()
    }
    Issue.record("backend never became active")
}

/// A shared integer for observations made inside concurrent tasks.
final class Shared: Sendable {
    private let storage: Atomic<Int>
    init(_ value: Int) { storage = Atomic(value) }
    var value: Int { storage.load(ordering: .relaxed) }
    func set(_ value: Int) { storage.store(value, ordering: .relaxed) }
    func max(_ candidate: Int) {
        var current = storage.load(ordering: .relaxed)
        while candidate > current {
            let (exchanged, original) = storage.compareExchange(expected: current, desired: candidate, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }
}
