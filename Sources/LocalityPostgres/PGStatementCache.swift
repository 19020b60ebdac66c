/// One connection's prepared statements: which SQL text is prepared under which name.
///
/// Names come from a counter and are never reused on a connection. Why: a statement the server still holds
/// (a prepare whose reply we never read, or one whose `DEALLOCATE` has not run yet) can then never collide
/// with a new one (42P05), whatever happened before.
///
/// Owned by whoever holds the connection: the borrowing task, or the I/O loop while a request is in flight.
struct PGStatementCache {
    struct Entry {
        let name: String
        let oids: [UInt32]
    }

    /// The SQL text and its parameter types. A query with an optional filter (`(\(x)::uuid IS NULL OR …)`) binds
    /// NULL as type 0 and a value as its type: both shapes are prepared, each under its own name. Keyed by the
    /// text alone, whichever came second ran unnamed for the life of the connection, planned afresh every time
    /// (issue 14: 40–60 ms of planning per board dashboard on the national dataset, where the row-level
    /// policies make plans large).
    struct Key: Hashable {
        let sql: String
        let oids: [UInt32]
    }

    let capacity: Int
    private var entries: [Key: Entry] = [:]
    private var lastNumber = 0
    /// Names the server may still hold that we no longer use: deallocated when the session is next outside
    /// a transaction (inside a failed one, `DEALLOCATE` itself would fail).
    private(set) var stale: [String] = []

    init(capacity: Int) {
        self.capacity = capacity
    }

    var count: Int { entries.count }

    /// Which statement runs `sql` with parameters of these types: the cached one, a new one to prepare,
    /// or an unnamed one (cache full).
    mutating func statement(for sql: String, oids: some Collection<UInt32>) -> PGRequest.Statement {
        if let cached = entries[Key(sql: sql, oids: Array(oids))] {
            return .cached(name: cached.name)
        } else if entries.count < capacity {
            // The loop adds it to the cache once the server has prepared it.
            lastNumber += 1
            return .prepare(name: "s\(lastNumber)", oids: Array(oids))
        } else {
            return .unnamed(oids: Array(oids))
        }
    }

    /// The server prepared `name` for `sql`.
    mutating func add(_ sql: String, name: String, oids: [UInt32]) {
        entries[Key(sql: sql, oids: oids)] = Entry(name: name, oids: oids)
    }

    /// A schema change invalidated the plans (0A000 "cached plan must not change result type"): every
    /// statement is prepared afresh, under a new name, and the old ones are deallocated later.
    mutating func invalidateAll() {
        stale.append(contentsOf: entries.values.map(\.name))
        entries.removeAll()
    }

    /// Hands over the stale names to deallocate now.
    mutating func takeStale() -> [String] {
        defer { stale.removeAll() }
        return stale
    }
}
