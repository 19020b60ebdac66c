import Foundation
import LocalityPostgres
import PostgresTestSupport
import Testing

@Suite("Errors and transactions")
struct ErrorAndTransactionTests {
    func serverError(_ pool: PGPool, _ query: PGQuery) async -> PGError? {
        do {
            try await pool.query(query)
            return nil
        } catch {
            return error as? PGError
        }
    }

    @Test func sqlStatesMapToTheirCases() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo) { pool in
            try await pool.query("CREATE TABLE parent (id int PRIMARY KEY, n int CONSTRAINT n_positive CHECK (n > 0))")
            try await pool.query("CREATE TABLE child (parent_id int REFERENCES parent (id))")
            try await pool.query("INSERT INTO parent VALUES (1, 1)")

            let unique = await serverError(pool, "INSERT INTO parent VALUES (1, 1)")
            #expect(unique?.isUniqueViolation == true)
            #expect(unique?.constraint == "parent_pkey")
            #expect(unique?.table == "parent")
            #expect(unique?.detail?.contains("already exists") == true)

            let foreign = await serverError(pool, "INSERT INTO child VALUES (42)")
            #expect(foreign?.isForeignKeyViolation == true)

            let check = await serverError(pool, "INSERT INTO parent VALUES (2, -1)")
            #expect(check?.isCheckViolation == true)
            #expect(check?.constraint == "n_positive")

            let syntax = await serverError(pool, "SELEC 1")
            #expect(syntax?.sqlState == "42601")
            #expect(syntax?.kind == .server)
        }
        try await database.withPool { pool in
            let denied = await serverError(pool, "CREATE TABLE nope (id int)")
            #expect(denied?.isInsufficientPrivilege == true)
        }
    }

    @Test func throwingInsideATransactionRollsEverythingBack() async throws {
        struct Boom: Error {}
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo) { pool in
            try await pool.query("CREATE TABLE t (v int)")
            await #expect(throws: Boom.self) {
                try await pool.withTransaction { connection in
                    try await connection.query("INSERT INTO t VALUES (1)")
                    try await connection.query("INSERT INTO t VALUES (2)")
                    throw Boom()
                }
            }
            let count = try await pool.query("SELECT count(*) FROM t").first!.decode(Int.self, at: 0)
            #expect(count == 0)
            // The connection is usable afterwards, not left inside the aborted transaction.
            _ = try await pool.withTransaction { try await $0.query("INSERT INTO t VALUES (3)") }
            #expect(try await pool.query("SELECT count(*) FROM t").first!.decode(Int.self, at: 0) == 1)
        }
    }

    @Test func transactionLocalSettingsEndWithTheTransaction() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            let inside = try await pool.withTransaction { connection in
                try await connection.setLocal("app.authority_id", "north-yorkshire")
                return try await connection.query("SELECT current_setting('app.authority_id', true)").first!.decode(String?.self, at: 0)
            }
            #expect(inside == "north-yorkshire")
            let after = try await pool.query("SELECT current_setting('app.authority_id', true)").first!.decode(String?.self, at: 0)
            #expect(after == nil || after == "")
        }
    }

    @Test func conflictingSerializableTransactionsRetryAndBothLand() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 4) { pool in
            try await pool.query("CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL)")
            try await pool.query("INSERT INTO account VALUES (1, 0)")
            let attempts = AttemptCounter()
            // Both read, then both wait until the other has read too, then both write: a certain conflict.
            let gate = Rendezvous(parties: 2)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        try await pool.withTransaction(isolation: .serializable, retry: .onConflict(maxAttempts: 5)) { connection in
                            let attempt = await attempts.next()
                            let balance = try await connection.query("SELECT balance FROM account WHERE id = 1").first!.decode(Int.self, at: 0)
                            if attempt <= 2 { await gate.arrive() }
                            try await connection.query("UPDATE account SET balance = \(balance + 10) WHERE id = 1")
                        }
                    }
                }
                try await group.waitForAll()
            }
            let balance = try await pool.query("SELECT balance FROM account WHERE id = 1").first!.decode(Int.self, at: 0)
            #expect(balance == 20)
            #expect(await attempts.count == 3)
        }
    }

    @Test func aCommitAfterASwallowedErrorIsReportedAsRolledBack() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo) { pool in
            try await pool.query("CREATE TABLE t (v int PRIMARY KEY)")
            await #expect(throws: PGError.self) {
                try await pool.withTransaction { connection in
                    try await connection.query("INSERT INTO t VALUES (1)")
                    _ = try? await connection.query("INSERT INTO t VALUES (1)")
                }
            }
            #expect(try await pool.query("SELECT count(*) FROM t").first!.decode(Int.self, at: 0) == 0)
        }
    }
}

actor AttemptCounter {
    private(set) var count = 0
    func next() -> Int {
        count += 1
        return count
    }
}

/// Suspends each arriving task until `parties` tasks have arrived.
actor Rendezvous {
    private let parties: Int
    private var arrived = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    init(parties: Int) { self.parties = parties }

    func arrive() async {
        arrived += 1
        if arrived >= parties {
            waiting.forEach { $0.resume() }
            waiting.removeAll()
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }
}
