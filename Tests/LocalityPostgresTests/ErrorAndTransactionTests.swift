import Foundation
@testable import LocalityPostgres
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

    @Test func aPreludeSentWithBeginRunsInsideTheTransaction() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            // Twice on the one connection: first the statement is prepared inside the pipeline, then reused.
            for round in 1...3 {
                let (setting, firstXact, secondXact) = try await pool.withTransaction(
                    prelude: "SELECT set_config('app.authority_id', \("round-\(round)"), true)"
                ) { connection in
                    let setting = try await connection.query("SELECT current_setting('app.authority_id', true)").first!.decode(String?.self, at: 0)
                    let first = try await connection.query("SELECT txid_current()").first!.decode(Int.self, at: 0)
                    let second = try await connection.query("SELECT txid_current()").first!.decode(Int.self, at: 0)
                    return (setting, first, second)
                }
                // A transaction-local setting made by the prelude is seen by the body: one transaction.
                #expect(setting == "round-\(round)")
                #expect(firstXact == secondXact)
                let after = try await pool.query("SELECT current_setting('app.authority_id', true)").first!.decode(String?.self, at: 0)
                #expect(after == nil || after == "")
            }
            // READ ONLY from the BEGIN in the pipeline applies.
            let readOnly = try await pool.withTransaction(readOnly: true, prelude: "SELECT \(1)") { connection in
                try await connection.query("SELECT current_setting('transaction_read_only')").first!.decode(String.self, at: 0)
            }
            #expect(readOnly == "on")
        }
    }

    @Test func aFailingPreludeRollsBackAndLeavesTheConnectionUsable() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            try await pool.query("CREATE TABLE t (v int)")
            for round in 1...2 {
                // The prelude goes with the body's first statement: its error is that statement's, and the statement
                // never runs (round 1 prepares both statements; round 2 sends them together, prepared).
                var statementReturned = false
                do {
                    try await pool.withTransaction(prelude: "SELECT 1 / \(0)") { connection in
                        try await connection.query("INSERT INTO t VALUES (1)")
                        statementReturned = true
                    }
                    Issue.record("the prelude's error was swallowed (round \(round))")
                } catch let error as PGError {
                    #expect(error.sqlState == "22012")
                }
                #expect(!statementReturned)
            }
            // Not left in pipeline mode or in the failed transaction: plain statements and transactions work.
            #expect(try await pool.query("SELECT 7").first!.decode(Int32.self, at: 0) == 7)
            _ = try await pool.withTransaction(prelude: "SELECT \(2)") { try await $0.query("INSERT INTO t VALUES (2)") }
            #expect(try await pool.query("SELECT array_agg(v) FROM t").first!.decode([Int].self, at: 0) == [2])
            // An invalid statement in the prelude (prepared inside the pipeline) fails the same way.
            await #expect(throws: PGError.self) {
                try await pool.withTransaction(prelude: "SELEC \(1)") { try await $0.query("SELECT 1") }
            }
            #expect(try await pool.query("SELECT 8").first!.decode(Int32.self, at: 0) == 8)
        }
    }

    /// A transaction with a prelude and an after-commit statement: BEGIN, the prelude and the first statement in
    /// one round trip, COMMIT and the after-commit statement in another; a body that runs nothing costs nothing.
    @Test func beginTravelsWithTheFirstStatementAndCommitWithTheNext() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            try await pool.query("CREATE TABLE t (v int)")
            try await pool.query("CREATE TABLE followed (xact bigint, committed boolean)")
            let follow: PGQuery = """
                INSERT INTO followed SELECT txid_current(), EXISTS (SELECT 1 FROM t WHERE v = \(1))
                """
            for round in 1...3 {
                let before = try await pool.withConnection { $0.requestCount }
                let xact = try await pool.withTransaction(
                    prelude: "SELECT set_config('app.round', \("\(round)"), true)", afterCommit: follow
                ) { connection in
                    let (setting, xact) = try await connection.query(
                        "SELECT current_setting('app.round'), txid_current()").first!.decode(String.self, Int.self)
                    #expect(setting == "\(round)")
                    try await connection.query("DELETE FROM t")
                    try await connection.query("INSERT INTO t VALUES (1)")
                    return xact
                }
                let trips = try await pool.withConnection { $0.requestCount } - before
                // Round 1 prepares each statement on its own; from round 2 on: three statements and COMMIT, four
                // round trips (BEGIN and the prelude go with the first, the after-commit statement with COMMIT).
                if round > 1 { #expect(trips == 4, "round \(round)") }
                // The after-commit statement ran after the commit, in a transaction of its own, which saw the write.
                let rows = try await pool.query("SELECT xact, committed FROM followed ORDER BY xact DESC LIMIT 1").first!
                    .decode(Int.self, Bool.self)
                #expect(rows.0 != xact && rows.1, "round \(round)")
                #expect(try await pool.query("SELECT count(*) FROM followed").first!.decode(Int.self, at: 0) == round)
            }
            // A body that runs no statement sends nothing: no BEGIN, no COMMIT, no after-commit statement.
            let before = try await pool.withConnection { $0.requestCount }
            try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow) { _ in }
            #expect(try await pool.withConnection { $0.requestCount } == before)
            #expect(try await pool.query("SELECT count(*) FROM followed").first!.decode(Int.self, at: 0) == 3)
        }
    }

    @Test func theAfterCommitStatementRunsOnlyAfterACommitAndItsFailureIsNotTheTransactions() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
            try await pool.query("CREATE TABLE t (v int)")
            try await pool.query("CREATE TABLE followed (v int)")
            try await pool.query("CREATE TABLE deferred (v int, id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
            let follow: PGQuery = "INSERT INTO followed VALUES (\(1))"
            for round in 1...2 {
                // The body fails: rolled back, nothing follows.
                await #expect(throws: PGError.self) {
                    try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow) { connection in
                        try await connection.query("INSERT INTO t VALUES (1)")
                        try await connection.query("SELECT 1 / \(0)")
                    }
                }
                // COMMIT fails (a deferred unique key): nothing committed, nothing follows.
                await #expect(throws: PGError.self) {
                    try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow) { connection in
                        try await connection.query("INSERT INTO deferred VALUES (1, 1), (2, 1)")
                    }
                }
                #expect(try await pool.query("SELECT count(*) FROM followed").first!.decode(Int.self, at: 0) == 0, "round \(round)")
                #expect(try await pool.query("SELECT count(*) FROM deferred").first!.decode(Int.self, at: 0) == 0)
            }
            // The after-commit statement fails: the transaction committed all the same, and the session is usable.
            for round in 1...2 {
                try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: "SELECT 1 / \(0)") { connection in
                    try await connection.query("INSERT INTO t VALUES (\(round))")
                }
            }
            #expect(try await pool.query("SELECT array_agg(v ORDER BY v) FROM t").first!.decode([Int].self, at: 0) == [1, 2])
        }
    }

    /// `queryAndCommit`: the transaction's last statement, its COMMIT and the after-commit statement in one round trip;
    /// committed when it returns; the statement's or the COMMIT's failure commits nothing; nothing may follow it.
    @Test func theLastStatementCanCarryTheCommit() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 2) { pool in
            try await pool.query("CREATE TABLE t (v int PRIMARY KEY)")
            try await pool.query("CREATE TABLE followed (v int)")
            try await pool.query("CREATE TABLE deferred (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
            let follow: PGQuery = "INSERT INTO followed SELECT count(*) FROM t WHERE v > \(0)"
            func count(_ table: String) async throws -> Int {
                try await pool.query(PGQuery("SELECT count(*) FROM \(unsafeSQL: table)")).first!.decode(Int.self, at: 0)
            }
            for round in 1...3 {
                let before = try await pool.withConnection { $0.requestCount }
                let returned = try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow, mayCommitEarly: true) { connection in
                    try await connection.query("INSERT INTO t VALUES (\(round * 10))")
                    let last = try await connection.queryAndCommit("INSERT INTO t VALUES (\(round * 10 + 1)) RETURNING v")
                    // Committed already: another session sees both rows before the body returns (round 1 prepares
                    // the statements one by one, and commits when the body returns, as usual).
                    if round > 1 { #expect(try await count("t") == round * 2) }
                    // Nothing may run in the transaction after its last statement.
                    if round > 1 {
                        await #expect(throws: PGError.self) { try await connection.query("INSERT INTO t VALUES (\(round * 10 + 2))") }
                    }
                    return try last.first!.decode(Int.self, at: 0)
                }
                #expect(returned == round * 10 + 1)
                let trips = try await pool.withConnection { $0.requestCount } - before
                // BEGIN, the prelude and the first statement; the last, COMMIT and the after-commit statement.
                if round > 1 { #expect(trips == 2, "round \(round)") }
                #expect(try await count("t") == round * 2)
                // The after-commit statement ran after the commit, which it saw.
                #expect(try await pool.query("SELECT max(v) FROM followed").first!.decode(Int.self, at: 0) == round * 2)
            }
            // The last statement fails (a duplicate key): nothing of the transaction is committed, nothing follows,
            // the session is usable.
            await #expect(throws: PGError.self) {
                try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow, mayCommitEarly: true) { connection in
                    try await connection.query("INSERT INTO t VALUES (\(100))")
                    try await connection.queryAndCommit("INSERT INTO t VALUES (\(10)) RETURNING v")
                }
            }
            // COMMIT fails (a deferred unique key): nothing committed, nothing follows (the first time the statement
            // is prepared and COMMIT goes when the body returns; the second time it goes with the statement).
            for round in 1...2 {
                await #expect(throws: PGError.self) {
                    try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow, mayCommitEarly: true) { connection in
                        try await connection.query("INSERT INTO t VALUES (\(200 + round))")
                        try await connection.queryAndCommit("INSERT INTO deferred VALUES (\(1)), (\(1))")
                    }
                }
            }
            #expect(try await count("t") == 6)
            #expect(try await count("deferred") == 0)
            #expect(try await count("followed") == 3)
            // A body that throws after its commit: the transaction stays committed.
            await #expect(throws: CancellationError.self) {
                try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow, mayCommitEarly: true) { connection in
                    try await connection.query("INSERT INTO t VALUES (\(300))")
                    try await connection.queryAndCommit("INSERT INTO t VALUES (\(301)) RETURNING v")
                    throw CancellationError()
                }
            }
            #expect(try await count("t") == 8)
            // Without `mayCommitEarly` (a caller that writes after the body) the statement runs as any other, and the
            // transaction commits when the body returns.
            try await pool.withTransaction(prelude: "SELECT \(1)", afterCommit: follow) { connection in
                try await connection.query("INSERT INTO t VALUES (\(400))")
                try await connection.queryAndCommit("INSERT INTO t VALUES (\(401)) RETURNING v")
                #expect(try await count("t") == 8)
                try await connection.query("INSERT INTO t VALUES (\(402))")
            }
            #expect(try await count("t") == 11)
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

@Suite("Session settings")
struct SessionSettingsTests {
    /// Timeouts given in the configuration hold from the first statement (no round trip of their own), and a
    /// value with spaces survives libpq's splitting of `options`.
    @Test func sessionSettingsApplyFromTheFirstStatement() async throws {
        let database = try await TestDatabase.migrated()
        let configuration = PGConnectionConfiguration(
            conninfo: database.applicationConninfo, applicationName: "t",
            sessionSettings: [("statement_timeout", "200ms"), ("lock_timeout", "150ms"),
                              ("idle_in_transaction_session_timeout", "5s"), ("search_path", "public, pg_catalog")])
        try await PGConnection.withConnection(configuration) { connection in
            let row = try await connection.query("""
                SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),
                       current_setting('idle_in_transaction_session_timeout'), current_setting('search_path'),
                       current_setting('TimeZone')
                """).first!
            #expect(try row.decode(String.self, String.self, String.self, String.self, String.self) == ("200ms", "150ms", "5s", "public, pg_catalog", "UTC"))
            do {
                try await connection.query("SELECT pg_sleep(2)")
                Issue.record("the statement outlived statement_timeout")
            } catch let error as PGError {
                #expect(error.sqlState == "57014")
            }
        }
    }
}
