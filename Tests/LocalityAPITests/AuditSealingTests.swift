import Foundation
import LocalityDomain
import LocalityPostgres
import PostgresTestSupport
import Testing

/// Audited writes of one authority (or one supplier) do not queue behind each other (issue 14, migration 0028):
/// an event is written unsealed and chained by whichever sealer comes next, so no writer waits for the chain's
/// head while another writer's transaction is open. The chain stays verifiable (LedgerAndAuditTests' tamper
/// tests run on it unchanged).
@Suite("Audit sealing")
struct AuditSealingTests {
    static func lim(_ world: World) -> AccessScope {
        let a = world.a
        return AccessScope(authorityID: a.authority.id, userID: a.users[.lim]!.id, roles: [.lim], boardIDs: [a.boards[0].id],
                           actor: "user:\(lower(a.users[.lim]!.id))")
    }

    static func supplier(_ world: World) -> AccessScope {
        AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser], boardIDs: [],
                    actor: "user:\(lower(world.supplierUserID))")
    }

    /// Two LIM edits of two different projects of one authority, each audited, in two open transactions: the
    /// second completes while the first is still open. On main the second waited on the authority's chain head
    /// until the first ended (here: until its lock_timeout, and the test fails).
    @Test func concurrentWritesOnDifferentProjectsOfOneAuthorityDoNotWait() async throws {
        let world = try await World.make()
        let lim = Self.lim(world)
        let (first, second) = (world.market.draft, world.market.draftComplete)
        let config = PGConnectionConfiguration(conninfo: world.database.applicationConninfo, applicationName: "t")
        try await PGConnection.withConnection(config) { holder in
            try await holder.execute("BEGIN")
            try await ScopedDatabase.setContext(lim, on: holder)
            #expect(try await holder.query("UPDATE project SET title = 'First, held open' WHERE id = \(first)").affectedRows == 1)
            try await holder.query("SELECT append_audit_event('project.update', 'project', \(lower(first)), NULL, '{}')")

            try await PGConnection.withConnection(config) { other in
                try await other.execute("BEGIN")
                // A bound, not a wait: on main this statement queues on the head row and fails here.
                try await other.execute("SET LOCAL lock_timeout = '20s'")
                try await ScopedDatabase.setContext(lim, on: other)
                #expect(try await other.query("UPDATE project SET title = 'Second' WHERE id = \(second)").affectedRows == 1)
                try await other.query("SELECT append_audit_event('project.update', 'project', \(lower(second)), NULL, '{}')")
                try await other.execute("COMMIT")
            }
            // Nothing in this database is waiting for a lock: the first transaction holds what it took, unshared.
            let waiting = try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) {
                try await $0.query("""
                    SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                    WHERE d.datname = current_database() AND NOT l.granted
                    """).first!.decode(Int.self, at: 0)
            }
            #expect(waiting == 0)
            try await holder.execute("COMMIT")
        }
        try await expectChainsIntact(world, including: [world.a.authority.id], events: [(lower(first), "project"), (lower(second), "project")])
    }

    /// The supplier submits a bid (the real service path) while another of its audited writes, on another
    /// project, is open: the submission does not wait for it. A watcher reports any lock wait in this database
    /// while the submission runs; on main the submission queued on the supplier's chain head.
    @Test func aBidSubmissionDoesNotWaitForTheSuppliersOtherWrites() async throws {
        let world = try await World.make()
        let supplier = Self.supplier(world)
        let config = PGConnectionConfiguration(conninfo: world.database.applicationConninfo, applicationName: "t")
        let superuser = PGConnectionConfiguration(conninfo: world.database.superuserConninfo, applicationName: "t")
        try await world.database.withPool { pool in
            let bids = BidService(database: ScopedDatabase(pool: pool))
            try await PGConnection.withConnection(config) { holder in
                try await holder.execute("BEGIN")
                try await ScopedDatabase.setContext(supplier, on: holder)
                let draft = world.market.draftBid
                #expect(try await holder.query("UPDATE bid SET approach = 'Held open' WHERE id = \(draft)").affectedRows == 1)
                try await holder.query("SELECT append_audit_event('bid.update', 'bid', \(lower(draft)), NULL, '{}')")

                enum Outcome: Sendable { case submitted, sawLockWait }
                let outcome = try await withThrowingTaskGroup(of: Outcome.self) { group in
                    group.addTask {
                        let (submitted, _) = try await bids.submit(supplier, id: world.market.completeBid)
                        #expect(submitted.status == .submitted)
                        return .submitted
                    }
                    group.addTask {
                        try await PGConnection.withConnection(superuser) { watcher in
                            while true {
                                try Task.checkCancellation()
                                let waits = try await watcher.query("""
                                    SELECT count(*) FROM pg_stat_activity
                                    WHERE datname = current_database() AND wait_event_type = 'Lock'
                                    """).first!.decode(Int.self, at: 0)
                                if waits > 0 { return .sawLockWait }
                                await Task.yield()
                            }
                        }
                    }
                    let first = try await group.next()!
                    if first == .sawLockWait {
                        // Let the queued submission through before failing, so that the test ends.
                        try await holder.execute("ROLLBACK")
                    }
                    group.cancelAll()
                    while let next = try? await group.next(), next != .submitted {}
                    return first
                }
                #expect(outcome == .submitted, "the bid submission waited for a lock held by the supplier's other write")
                if outcome == .submitted { try await holder.execute("COMMIT") }
            }
        }
        try await expectChainsIntact(world, including: [world.supplierID], events: [(lower(world.market.completeBid), "bid")])
    }

    /// Migration 0040: an append that can take its chain's head inserts its event sealed, with no second version
    /// of the row; one that finds the head taken writes it unsealed, and the next append that takes the head
    /// seals that backlog before its own event, so the chain keeps the order events became visible. On 0039 the
    /// first transaction updates each of its two events after inserting it (two updates, not none).
    @Test func anAppendThatHoldsTheHeadInsertsItsEventSealed() async throws {
        let world = try await World.make()
        let lim = Self.lim(world)
        let authority = world.a.authority.id
        let config = PGConnectionConfiguration(conninfo: world.database.applicationConninfo, applicationName: "t")
        let append: PGQuery = "SELECT append_audit_event('project.update', 'project', 'sealed-on-insert', NULL, '{}')"
        let writes: PGQuery = """
            SELECT n_tup_ins::int, n_tup_upd::int FROM pg_stat_xact_user_tables WHERE relname = 'audit_event'
            """
        let headSeq: PGQuery = "SELECT coalesce((SELECT seq::int FROM audit_chain_head WHERE chain_id = \(authority)), 0)"
        let superuser = PGConnectionConfiguration(conninfo: world.database.superuserConninfo, applicationName: "t")
        let before = try await PGConnection.withConnection(superuser) { try await $0.query(headSeq).first!.decode(Int.self, at: 0) }

        try await PGConnection.withConnection(config) { holder in
            try await holder.execute("BEGIN")
            try await ScopedDatabase.setContext(lim, on: holder)
            let first = try await holder.query(append).first!.decode(Int.self, at: 0)
            let second = try await holder.query(append).first!.decode(Int.self, at: 0)
            #expect((first, second) == (before + 1, before + 2), "each event has its place when written")
            let (inserted, updated) = try await holder.query(writes).first!.decode(Int.self, Int.self)
            #expect((inserted, updated) == (2, 0), "inserted sealed, never updated")

            // The holder keeps the head: another transaction's event waits unsealed, without waiting itself.
            let pending = try await PGConnection.withConnection(config) { other in
                try await other.withTransaction { other in
                    try await ScopedDatabase.setContext(lim, on: other)
                    return try await other.query(append).first!.decode(Int.self, at: 0)
                }
            }
            #expect(pending < 0, "written unsealed while the head is taken")
            try await holder.execute("COMMIT")
        }

        // The next append seals the backlog first, then writes its own event after it.
        let next = try await PGConnection.withConnection(config) { connection in
            try await connection.withTransaction { connection in
                try await ScopedDatabase.setContext(lim, on: connection)
                return try await connection.query(append).first!.decode(Int.self, at: 0)
            }
        }
        #expect(next == before + 4)
        try await PGConnection.withConnection(superuser) { connection in
            #expect(try await connection.query(headSeq).first!.decode(Int.self, at: 0) == before + 4)
            let unsealed = try await connection.query("SELECT count(*)::int FROM audit_event WHERE hash IS NULL").first!.decode(Int.self, at: 0)
            #expect(unsealed == 0)
        }
        try await expectChainsIntact(world, including: [authority], events: [("sealed-on-insert", "project")])
    }

    /// Every chain verifies (the verifier seals first), and each named event is in its chain with a place (seq > 0).
    func expectChainsIntact(_ world: World, including chains: [UUID], events: [(id: String, type: String)]) async throws {
        try await world.database.withPool(conninfo: world.database.ownerConninfo) { pool in
            let reports = try await AuditService(database: ScopedDatabase(pool: pool)).verify()
            #expect(reports.allSatisfy { $0.isIntact }, "\(reports)")
            #expect(Set(chains).isSubset(of: Set(reports.map(\.chainID))))
        }
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            let unsealed = try await connection.query("SELECT count(*) FROM audit_event WHERE hash IS NULL").first!.decode(Int.self, at: 0)
            #expect(unsealed == 0)
            for (id, type) in events {
                let sealed = try await connection.query("""
                    SELECT count(*) FROM audit_event WHERE entity_type = \(type) AND entity_id = \(id) AND seq > 0
                    """).first!.decode(Int.self, at: 0)
                #expect(sealed >= 1, "\(type) \(id) is in its chain")
            }
        }
    }
}
