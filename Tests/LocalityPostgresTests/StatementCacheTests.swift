import Foundation
@testable import LocalityPostgres
import PostgresTestSupport
import Testing

/// Which statements a connection prepares by name.
@Suite("Prepared statement cache")
struct StatementCacheTests {
    /// An optional filter binds NULL as type 0 and a value as its own type: the same text has two shapes, and
    /// both must be prepared (issue 14). Keyed by the text alone, the shape seen second ran unnamed, planned
    /// afresh on every call, for the life of the connection: on the national dataset that was 40–60 ms of
    /// planning per board dashboard (the authority's shape, with NULL, was prepared first).
    @Test func theSameTextWithOtherParameterTypesIsPreparedToo() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(maxConnections: 1) { pool in
            try await pool.withConnection { connection in
                let board: UUID? = UUID()
                for filter in [nil, board, nil, board] {
                    let row = try await connection.query("SELECT \(filter)::uuid IS NULL, 'statement-cache-probe'").first!
                    #expect(try row.decode(Bool.self, at: 0) == (filter == nil))
                }
                let prepared = try await connection.query(
                    "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%statement-cache-probe%' AND statement NOT LIKE '%pg_prepared%'"
                ).first!.decode(Int.self, at: 0)
                #expect(prepared == 2, "each shape of the statement is prepared once, by name")
                // And each shape is served from the cache from now on.
                for filter in [nil, board] {
                    guard case .cached = connection.statements.statement(for: "SELECT $1::uuid IS NULL, 'statement-cache-probe'",
                                                                         oids: [filter.pgBind().oid]) else {
                        Issue.record("the shape with parameter type \(filter.pgBind().oid) is not cached")
                        continue
                    }
                }
            }
        }
    }

    @Test func aFullCacheRunsNewStatementsUnnamed() {
        var cache = PGStatementCache(capacity: 1)
        guard case .prepare(let name, let oids) = cache.statement(for: "SELECT $1", oids: [0]) else {
            Issue.record("the first statement is not prepared")
            return
        }
        cache.add("SELECT $1", name: name, oids: oids)
        guard case .unnamed = cache.statement(for: "SELECT $1", oids: [PGType.text]) else {
            Issue.record("a statement past the capacity is prepared")
            return
        }
        guard case .cached(name) = cache.statement(for: "SELECT $1", oids: [0]) else {
            Issue.record("the cached shape is not found")
            return
        }
    }
}
