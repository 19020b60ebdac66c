import Foundation
@testable import LocalityPostgres
import PostgresTestSupport
import Synchronization
import Testing

/// `PGPool.withIOAffinity`: tasks run on the I/O loop threads, replies resume them there, and the pool
/// keeps (or moves) their connections on their loop.
@Suite("I/O loop affinity")
struct IOAffinityTests {
    @Test func aTaskWithAffinityStaysOnItsLoopAcrossStatements() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 2) { pool in
            #expect(PGIOLoop.current == nil, "the test itself runs on Swift's cooperative pool")
            try await pool.withIOAffinity {
                let home = try #require(PGIOLoop.current)
                for value in 1...20 {
                    try await pool.withConnection { connection in
                        #expect(connection.loop === home)
                        let answer = try await connection.query("SELECT \(value)::int4 * 2").first!.decode(Int32.self, at: 0)
                        #expect(answer == Int32(value * 2))
                        // Resumed by the reply on the loop that read it, not on the cooperative pool.
                        #expect(PGIOLoop.current === home)
                    }
                }
                try await pool.withTransaction { connection in
                    _ = try await connection.query("SELECT 1")
                    #expect(PGIOLoop.current === home)
                }
            }
            #expect(PGIOLoop.current == nil, "leaving withIOAffinity returns the task to the cooperative pool")
        }
    }

    /// Diagnostics (`top -H`, `perf`) show the loop threads by name.
    @Test func loopThreadsAreNamed() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            try await pool.withIOAffinity { _ = try await pool.query("SELECT 1") }
            // The process's threads by name (the one running this line may be any: which thread resumes a task
            // is the executor's business, tested elsewhere).
            let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
            let names = tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
            #expect(names.contains { $0.hasPrefix("pg-io-") }, "\(names.sorted())")
        }
    }

    @Test func anIdleConnectionMovesToTheBorrowersLoopAndKeepsWorking() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            let firstPID = try await pool.withConnection { $0.backendPID }
            var loopsSeen: [ObjectIdentifier] = []
            // withIOAffinity hands out loops round-robin, so consecutive borrowers sit on different loops
            // whenever the machine has more than one core.
            for round in 0..<12 {
                let (pid, loop, answer) = try await pool.withIOAffinity {
                    try await pool.withConnection { connection in
                        let answer = try await connection.query("SELECT \(round)::int4").first!.decode(Int32.self, at: 0)
                        #expect(connection.loop === PGIOLoop.current)
                        return (connection.backendPID, ObjectIdentifier(connection.loop), answer)
                    }
                }
                #expect(pid == firstPID, "the same session moved, no reconnect")
                #expect(answer == Int32(round))
                loopsSeen.append(loop)
            }
            if ProcessInfo.processInfo.activeProcessorCount > 1 {
                #expect(Set(loopsSeen).count > 1)
            }
            // And the moved connection still serves a borrower on the cooperative pool.
            #expect(try await pool.query("SELECT 5").first!.decode(Int32.self, at: 0) == 5)
        }
    }

    @Test func manyTasksMixingAffinityAndThePoolShareFourConnections() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 4, acquireTimeout: .seconds(30)) { pool in
            let sum = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        let work: @Sendable () async throws -> Int = {
                            try await pool.withTransaction { connection in
                                try await connection.query("SELECT \(index)::int8 + 1").first!.decode(Int.self, at: 0)
                            }
                        }
                        return index.isMultiple(of: 3) ? try await work() : try await pool.withIOAffinity(work)
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(sum == (1...200).reduce(0, +))
            #expect(pool.statistics.open <= 4)
            #expect(pool.statistics.inUse == 0)
        }
    }

    /// BEGIN and the prelude share one round trip: a transaction with a prelude and one statement costs three
    /// requests (pipeline, statement, COMMIT), not four.
    @Test func aPreludeCostsNoRoundTripOfItsOwn() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                for prelude in [nil, "SELECT set_config('app.x', \("y"), true)"] as [PGQuery?] {
                    let before = connection.requestCount
                    let value = try await connection.withTransaction(prelude: prelude) {
                        try await $0.query("SELECT current_setting('app.x', true)").first!.decode(String?.self, at: 0)
                    }
                    // BEGIN, statement, COMMIT; with a prelude sent on its own it would be four.
                    #expect(connection.requestCount - before == 3)
                    if prelude != nil { #expect(value == "y") }
                }
            }
        }
    }

    /// Pipelined transactions, failing preludes and failing bodies, across loops and connection moves:
    /// every outcome is the expected one and the pool ends clean.
    @Test func mixedOutcomesUnderAffinityLeaveEveryConnectionClean() async throws {
        struct Boom: Error {}
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 4, acquireTimeout: .seconds(30)) { pool in
            try await pool.query("CREATE TABLE landed (v int PRIMARY KEY)")
            let outcomes = try await withThrowingTaskGroup(of: String.self) { group in
                for index in 0..<300 {
                    group.addTask {
                        let work: @Sendable () async throws -> String = {
                            do {
                                let divisor = index % 5 == 1 ? 0 : 1
                                try await pool.withTransaction(prelude: "SELECT set_config('app.n', (\(index) / \(divisor))::text, true)") { connection in
                                    let seen = try await connection.query("SELECT current_setting('app.n')").first!.decode(String.self, at: 0)
                                    guard seen == String(index) else { throw PGError(kind: .client, message: "context \(seen) in task \(index)") }
                                    try await connection.query("INSERT INTO landed VALUES (\(index))")
                                    if index % 5 == 2 { throw Boom() }
                                }
                                return "landed"
                            } catch let error as PGError where error.sqlState == "22012" {
                                return "prelude failed"
                            } catch is Boom {
                                return "body failed"
                            }
                        }
                        return index.isMultiple(of: 4) ? try await work() : try await pool.withIOAffinity(work)
                    }
                }
                var counts: [String: Int] = [:]
                for try await outcome in group { counts[outcome, default: 0] += 1 }
                return counts
            }
            #expect(outcomes == ["landed": 180, "prelude failed": 60, "body failed": 60])
            let landed = try await pool.query("SELECT count(*), count(*) FILTER (WHERE v % 5 IN (1, 2)) FROM landed").first!
            #expect(try landed.decode(Int.self, Int.self) == (180, 0))
            #expect(pool.statistics.inUse == 0)
            // No connection was left inside a transaction, and each still answers (none stuck in pipeline mode).
            try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { admin in
                let lingering = try await admin.query("""
                    SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND application_name = 'test' AND state LIKE 'idle in transaction%'
                    """).first!.decode(Int.self, at: 0)
                #expect(lingering == 0)
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        let one = try await pool.withConnection { try await $0.query("SELECT 1").first!.decode(Int32.self, at: 0) }
                        #expect(one == 1)
                    }
                }
                try await group.waitForAll()
            }
        }
    }

    /// A reply already there when the statement is sent is read by the task itself; a task doing that without
    /// end would hold the loop's thread, so after `inlineReadsPerTurn` of them the loop gets its turn first.
    @Test func readingRepliesInlineIsCappedPerTurnOfTheLoop() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            try await pool.withIOAffinity {
                let loop = try #require(PGIOLoop.current)
                // No suspension in between, so the loop cannot take a turn: the budget runs out.
                let allowed = (0..<(PGIOLoop.inlineReadsPerTurn + 10)).filter { _ in loop.mayReadInline() }.count
                #expect(allowed <= PGIOLoop.inlineReadsPerTurn)
                #expect(!loop.mayReadInline())
                // Statements still complete, through the loop.
                for value in 1...3 {
                    #expect(try await pool.query("SELECT \(Int32(value))").first!.decode(Int32.self, at: 0) == Int32(value))
                }
                // The loop has looked at its sockets since: inline reads are allowed again.
                await Task.yield()
                #expect(PGIOLoop.current === loop)
                #expect(loop.mayReadInline())
            }
        }
    }

    @Test func cancellingATaskWithAffinityCancelsItsQueryWithinASecond() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            let pidBox = Shared(0)
            let task = Task {
                try await pool.withIOAffinity {
                    try await pool.withConnection { connection in
                        pidBox.set(Int(connection.backendPID))
                        try await connection.query("SELECT pg_sleep(10)")
                    }
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
            #expect(try await pool.withIOAffinity { try await pool.query("SELECT 7").first!.decode(Int32.self, at: 0) } == 7)
        }
    }
}
