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
