import LocalityPostgres
import PostgresTestSupport
import Testing

/// Keeps `deploy/SCALING.md` true as the schema grows: the plan past one primary distributes every tenant table
/// by `authority_id` (Citus), which only works while every tenant key leads with it. A new table must be
/// classified here (and in SCALING.md) before this passes.
@Suite("Schema stays ready to distribute by authority")
struct DistributionReadinessTests {
    /// Tables without a `NOT NULL authority_id`: replicated to every node (reference tables) or kept on the
    /// coordinator. Suppliers and their users are global: one organisation works for several councils.
    static let referenceTables: Set<String> = [
        "authority", "supplier", "app_user", "api_token",
        "idempotency_key", "registration_attempt", "schema_migrations", "notice_threshold",
    ]
    /// Distributed by `chain_id`, which is the authority's id for an authority's chain (so co-located with its
    /// data) and the supplier's id for a supplier's chain.
    static let chainTables: Set<String> = ["audit_event", "audit_chain_head"]
    /// Unique constraints on `id` alone that Citus cannot enforce across shards; SCALING.md says they are
    /// dropped when the tables are distributed (ids are random UUIDs; every foreign key already uses
    /// `(authority_id, id)`). Listed so that no new one appears unnoticed.
    static let uniqueByIDToDrop: Set<String> = [
        "project.project_id_unique", "bid.bid_id_unique", "contract.contract_id_unique",
        "school_contract.school_contract_id_unique", "audit_event.audit_event_id_unique",
    ]

    @Test func everyTableIsClassifiedAndEveryTenantKeyLeadsWithTheAuthority() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.superuserConninfo, maxConnections: 1) { pool in
            let tables = try await pool.query("""
                SELECT c.relname,
                       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'authority_id'
                               AND a.attnotnull AND NOT a.attisdropped)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                ORDER BY 1
                """).map { try $0.decode(String.self, Bool.self) }
            let distributed = Set(tables.filter { $0.1 }.map(\.0))
            let unclassified = tables.map(\.0).filter {
                !distributed.contains($0) && !Self.referenceTables.contains($0) && !Self.chainTables.contains($0)
            }
            #expect(unclassified.isEmpty, "classify these tables in deploy/SCALING.md and this test: \(unclassified)")
            #expect(distributed.isDisjoint(with: Self.referenceTables.union(Self.chainTables)),
                    "a listed reference/chain table now has NOT NULL authority_id: \(distributed.intersection(Self.referenceTables))")
            #expect(distributed.count > 20, "the tenant tables were not found (\(distributed.count))")

            // The distribution column of each distributed table, and the first column of every constraint key.
            func column(_ table: String) -> String { Self.chainTables.contains(table) ? "chain_id" : "authority_id" }
            let constraints = try await pool.query("""
                SELECT c.relname, k.conname, k.contype::text,
                       (SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]),
                       coalesce((SELECT array_agg(a.attname::text) FROM pg_attribute a
                                 WHERE a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)), '{}'),
                       coalesce(r.relname::text, ''),
                       coalesce((SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = k.confrelid AND a.attnum = k.confkey[1]), '')
                FROM pg_constraint k
                JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_class r ON r.oid = k.confrelid
                WHERE n.nspname = 'public' AND k.contype IN ('p', 'u', 'x', 'f')
                ORDER BY 1, 2
                """).map { try $0.decode(String.self, String.self, String.self, String.self, [String].self, String.self, String.self) }
            var problems: [String] = []
            for (table, name, kind, first, columns, referenced, referencedFirst) in constraints {
                let isDistributed = distributed.contains(table) || Self.chainTables.contains(table)
                let referencesDistributed = distributed.contains(referenced) || Self.chainTables.contains(referenced)
                switch kind {
                case "p" where isDistributed && first != column(table):
                    problems.append("\(table): primary key \(name) does not lead with \(column(table))")
                case "u", "x":
                    if isDistributed && !columns.contains(column(table)) && !Self.uniqueByIDToDrop.contains("\(table).\(name)") {
                        problems.append("\(table): \(name) does not include \(column(table)); Citus cannot enforce it")
                    }
                case "f" where referencesDistributed && !isDistributed:
                    problems.append("\(table): \(name) references the distributed table \(referenced) from a reference table")
                case "f" where referencesDistributed && (first != column(table) || referencedFirst != column(referenced)):
                    problems.append("\(table): foreign key \(name) to \(referenced) does not lead with the distribution column")
                default: break
                }
            }
            // Unique indexes made without a constraint count too.
            let indexes = try await pool.query("""
                SELECT c.relname, i.relname,
                       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY (x.indkey)
                               AND a.attname IN ('authority_id', 'chain_id'))
                FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND x.indisunique
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)
                """).map { try $0.decode(String.self, String.self, Bool.self) }
            for (table, index, hasColumn) in indexes where distributed.contains(table) && !hasColumn {
                problems.append("\(table): unique index \(index) does not include authority_id")
            }
            #expect(problems.isEmpty, "\(problems.joined(separator: "\n"))")
            // The documented exceptions still exist (remove them from the list, and SCALING.md, when dropped).
            let present = Set(constraints.filter { $0.2 == "u" }.map { "\($0.0).\($0.1)" })
            #expect(Self.uniqueByIDToDrop.isSubset(of: present), "\(Self.uniqueByIDToDrop.subtracting(present))")
        }
    }
}
