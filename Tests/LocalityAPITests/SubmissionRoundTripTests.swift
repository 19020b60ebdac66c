import Foundation
import LocalityDomain
@testable import LocalityPostgres
import PostgresTestSupport
import Testing

/// Bid submission's conversation with PostgreSQL (issue 14): BEGIN with the tenant context and the first statement
/// (the bid as it is, with its project, the deadline check and the social-value catalogue); the update of the version
/// read, with its audit
/// append, COMMIT and the announcement to every instance's response cache (`DataChanges`) after it
/// (`PGConnection.queryAndCommit`) — two round trips (three while COMMIT went on its own; six before that: BEGIN,
/// the lock, the project, the commit and the announcement each on their own; eight before that).
@Suite("Bid submission round trips")
struct SubmissionRoundTripTests {
    @Test func aSubmissionTakesTwoRoundTrips() async throws {
        let world = try await World.make()
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "user:\(lower(world.supplierUserID))")
        try await world.database.withPool(maxConnections: 1) { pool in
            let bids = BidService(database: ScopedDatabase(pool: pool))
            let second = try await bids.create(supplier, projectID: world.market.openEmpty, MarketFixture.completeContent)
            #expect(!MarketFixture.completeContent.socialValue!.isEmpty, "the bid prices social value")
            // The first submission on the connection prepares its statements; the second is measured.
            _ = try await bids.submit(supplier, id: world.market.completeBid)
            let before = try await pool.withConnection { $0.requestCount }
            let (submitted, receipt) = try await bids.submit(supplier, id: second.id)
            let after = try await pool.withConnection { $0.requestCount }
            #expect(submitted.status == .submitted && receipt.bidID == second.id)
            #expect(after - before == 2)
            // Committed with its last statement: stored as answered; submitting again is refused, nothing changed.
            let stored = try await bids.get(supplier, id: second.id)
            #expect(stored.status == .submitted && stored.receiptSHA256 == receipt.sha256 && stored.version == submitted.version)
            await #expect(throws: DomainError.self) { try await bids.submit(supplier, id: second.id) }
            #expect(try await bids.get(supplier, id: second.id).version == submitted.version)
        }
        // The audit record of the submission is the one the service describes.
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            let (action, status, version) = try await connection.query("""
                SELECT action, after->>'status', (after->>'version')::int FROM audit_event
                WHERE entity_type = 'bid' AND entity_id = \(lower(world.market.completeBid)) ORDER BY occurred_at DESC LIMIT 1
                """).first!.decode(String.self, String.self, Int.self)
            let stored = try await connection.query("SELECT version FROM bid WHERE id = \(world.market.completeBid)").first!.decode(Int.self, at: 0)
            #expect(action == "bid.submit" && status == "submitted" && version == stored)
        }
    }

    /// The submission reads the bid without locking it, and its update applies only to the version it read and
    /// validated. An edit that takes the bid's row between the two, and commits, leaves the submission nothing to
    /// change: 409, nothing submitted, nothing audited; the next submission submits the edited content. (While the
    /// read locked the bid, the submission waited for the edit and submitted what it had not validated before the
    /// edit: this test fails there.)
    @Test func anEditBetweenTheReadAndTheUpdateRefusesTheSubmission() async throws {
        let world = try await World.make()
        let supplier = AccessScope(authorityID: nil, supplierID: world.supplierID, userID: world.supplierUserID, roles: [.supplierUser],
                                   boardIDs: [], actor: "user:\(lower(world.supplierUserID))")
        let bid = world.market.completeBid
        let superuser = PGConnectionConfiguration(conninfo: world.database.superuserConninfo, applicationName: "t")
        try await world.database.withPool { pool in
            let bids = BidService(database: ScopedDatabase(pool: pool))
            let version = try await bids.get(supplier, id: bid).version
            try await PGConnection.withConnection(.init(conninfo: world.database.applicationConninfo, applicationName: "t")) { editor in
                try await editor.execute("BEGIN")
                try await ScopedDatabase.setContext(supplier, on: editor)
                #expect(try await editor.query("""
                    UPDATE bid SET approach = 'Edited meanwhile', version = version + 1 WHERE id = \(bid)
                    """).affectedRows == 1)
                async let submission: Result<Bid, any Error> = {
                    do { return .success(try await bids.submit(supplier, id: bid).0) } catch { return .failure(error) }
                }()
                // The submission has read the bid (the edit is not committed) and its update waits for the edit's row lock.
                try await PGConnection.withConnection(superuser) { watcher in
                    while try await watcher.query("""
                        SELECT count(*)::int FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
                        """).first!.decode(Int.self, at: 0) == 0 {
                        await Task.yield()
                    }
                }
                try await editor.execute("COMMIT")
                switch await submission {
                case .success(let submitted):
                    Issue.record("submitted over a concurrent edit: \(submitted.status), version \(submitted.version)")
                case .failure(let error):
                    #expect(error as? DomainError == .conflict(
                        "The bid was changed by another request while it was being submitted; nothing was changed."), "\(error)")
                }
            }
            let stored = try await bids.get(supplier, id: bid)
            #expect(stored.status == .draft && stored.version == version + 1 && stored.approach == "Edited meanwhile")
            let audited = try await PGConnection.withConnection(superuser) {
                try await $0.query("SELECT count(*)::int FROM audit_event WHERE entity_type = 'bid' AND entity_id = \(lower(bid)) AND action = 'bid.submit'")
                    .first!.decode(Int.self, at: 0)
            }
            #expect(audited == 0)
            let (submitted, receipt) = try await bids.submit(supplier, id: bid)
            #expect(submitted.status == .submitted && submitted.approach == "Edited meanwhile" && receipt.canonical.contains("Edited meanwhile"))
        }
    }
}
