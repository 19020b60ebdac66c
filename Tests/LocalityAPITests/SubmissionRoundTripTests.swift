import Foundation
import LocalityDomain
@testable import LocalityPostgres
import PostgresTestSupport
import Testing

/// Bid submission's conversation with PostgreSQL (issue 14): BEGIN with the tenant context and the first statement
/// (the bid locked, with its project, the deadline check and the social-value catalogue); the update with its audit
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
}
