import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import LocalityAPI
import LocalityDomain
import LocalityPostgres
import NIOCore
import PostgresTestSupport
import Testing

/// Fails the test when the ledger invariant does not hold (see `LedgerVerifier`): per envelope, balances
/// equal the ledger sums; per contract, committed − spent − decommitted equals its live value (0 once
/// ended). Call it after every concurrency test.
func assertLedgerInvariant(_ database: TestDatabase, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let report = try await database.withPool(conninfo: database.ownerConninfo, maxConnections: 1) { pool in
        try await LedgerVerifier(database: ScopedDatabase(pool: pool)).verify()
    }
    #expect(report.authorities > 0, "no authority was checked", sourceLocation: sourceLocation)
    #expect(report.problems.isEmpty, "ledger invariant broken:\n\(report.problems.map(\.description).joined(separator: "\n"))",
            sourceLocation: sourceLocation)
}

/// A connection of its own to the live test server. Requests through the test framework's client share one
/// keep-alive connection, which the server answers one request at a time: "parallel" requests through it
/// are in fact sequential. Concurrency tests open one of these per request instead.
struct OwnConnection: Sendable {
    let client: TestClient

    func call(_ method: HTTPRequest.Method, _ uri: String, token: String?, body: [String: Any]? = nil) async throws -> (status: Int, data: Data) {
        var headers = HTTPFields()
        headers[.connection] = "keep-alive"
        if let token { headers[.authorization] = "Bearer \(token)" }
        var buffer: ByteBuffer?
        if let body {
            headers[.contentType] = "application/json"
            buffer = ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body))
        }
        let response = try await client.execute(.init(uri, method: method, authority: "localhost", headers: headers, body: buffer))
        return (Int(response.head.status.code), Data((response.body ?? ByteBuffer()).readableBytesView))
    }

    /// A request already encoded (headers as given, plus keep-alive).
    func send(_ method: HTTPRequest.Method, _ uri: String, headers: HTTPFields, body: ByteBuffer?) async throws -> (status: Int, data: Data) {
        var headers = headers
        headers[.connection] = "keep-alive"
        let response = try await client.execute(.init(uri, method: method, authority: "localhost", headers: headers, body: body))
        return (Int(response.head.status.code), Data((response.body ?? ByteBuffer()).readableBytesView))
    }
}

/// Fires `count` requests at once, each on its own connection to the live server (see `OwnConnection`), and
/// returns their statuses and JSON bodies in completion order.
func concurrently(
    _ count: Int, on client: some TestClientProtocol,
    _ request: @escaping @Sendable (Int, OwnConnection) async throws -> (status: Int, data: Data)
) async throws -> [(status: Int, body: [String: Any])] {
    let port = try #require(client.port, "concurrency tests need the live server")
    let connections = (0..<count).map { _ in
        OwnConnection(client: TestClient(host: "localhost", port: port, configuration: .init(timeout: .seconds(60))))
    }
    let results = try await withThrowingTaskGroup(of: (Int, Data).self) { group in
        for (index, connection) in connections.enumerated() {
            group.addTask {
                // Connect in the task that writes at once: a connection opened up front and written to only when
                // a starved test process gets round to it can sit idle past the server's idle timeout and be
                // closed under the request ("I/O on closed channel", seen once in CI). A child task always runs
                // its body, cancelled or not, so every client is connected before `shutdown` waits for it.
                connection.client.connect()
                return try await request(index, connection)
            }
        }
        var results: [(status: Int, body: [String: Any])] = []
        for try await (status, data) in group {
            results.append((status, (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]))
        }
        return results
    }
    for connection in connections { try await connection.client.shutdown() }
    return results
}

/// Issue 12, finding 1: a variation that changes a contract's value moves the money with it.
@Suite("Money follows the contract")
struct MoneyIntegrityTests {
    static func locality(_ client: some TestClientProtocol, _ world: World) async throws -> [String: Any] {
        let budget = try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))/budgets/2025-26", token: world.token(.lim, of: world.a))
        return (budget.jsonObject["streams"] as? [[String: Any]])?.first { $0["funding_stream_code"] as? String == "locality" } ?? [:]
    }

    static func propose(_ client: some TestClientProtocol, _ world: World, valuePence: Int) async throws -> String {
        let proposal = try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/variations", token: world.token(.lim, of: world.a),
                                             body: ["reason": "Change of scope", "value_pence": valuePence])
        #expect(proposal.status == .ok, "\(proposal.jsonObject)")
        return (proposal.jsonObject["variations"] as? [[String: Any]])?.last?["id"] as? String ?? ""
    }

    static func decide(_ client: some TestClientProtocol, _ world: World, _ variation: String, token: String) async throws -> TestResponse {
        try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/variations/\(variation)/decision", token: token,
                              body: ["accept": true])
    }

    /// Pins: an accepted +£1,000 variation commits £1,000 more (on main, committed stayed put), and the
    /// contract then completes, spending its new value.
    @Test func anIncreaseCommitsTheDifferenceAndTheContractCompletes() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await Self.locality(client, world)
            let variation = try await Self.propose(client, world, valuePence: 190_000)   // 90,000 → 190,000: +£1,000
            let accepted = try await Self.decide(client, world, variation, token: world.supplierToken)
            #expect(accepted.status == .ok, "\(accepted.jsonObject)")
            #expect(accepted.jsonObject["value_pence"] as? Int == 190_000)
            let afterVariation = try await Self.locality(client, world)
            #expect(afterVariation["committed_pence"] as? Int == (before["committed_pence"] as? Int ?? 0) + 100_000)
            #expect(afterVariation["available_pence"] as? Int == (before["available_pence"] as? Int ?? 0) - 100_000)
            let completed = try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/complete", token: world.token(.lim, of: world.a))
            #expect(completed.status == .ok, "\(completed.jsonObject)")
            let afterCompletion = try await Self.locality(client, world)
            #expect(afterCompletion["committed_pence"] as? Int == afterVariation["committed_pence"] as? Int)
            #expect(afterCompletion["spent_pence"] as? Int == (before["spent_pence"] as? Int ?? 0) + 190_000)
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Pins: a reduction returns the difference to the board (on main, it stayed committed for good), and a
    /// termination afterwards decommits only what is left.
    @Test func aReductionDecommitsTheDifference() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await Self.locality(client, world)
            let variation = try await Self.propose(client, world, valuePence: 60_000)   // −30,000
            #expect(try await Self.decide(client, world, variation, token: world.supplierToken).status == .ok)
            let after = try await Self.locality(client, world)
            #expect(after["committed_pence"] as? Int == (before["committed_pence"] as? Int ?? 0) - 30_000)
            #expect(after["available_pence"] as? Int == (before["available_pence"] as? Int ?? 0) + 30_000)
            let entries = try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))/ledger?financial_year=2025-26&limit=200",
                                                token: world.token(.lim, of: world.a))
            let decommitment = entries.items.last
            #expect(decommitment?["kind"] as? String == "decommitment")
            #expect(decommitment?["amount_pence"] as? Int == 30_000)
            #expect(decommitment?["reference"] as? String == "contract:\(lower(world.market.active))")
            let terminated = try await client.call(.post, "/v1/contracts/\(lower(world.market.active))/terminate", token: world.token(.lim, of: world.a),
                                                   body: ["reason": "Ended early", "amount_paid_pence": 10_000])
            #expect(terminated.status == .ok, "\(terminated.jsonObject)")
            let ended = try await Self.locality(client, world)
            #expect(ended["committed_pence"] as? Int == (before["committed_pence"] as? Int ?? 0) - 80_000)
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Pins: an increase beyond what the board has available is refused with 409 insufficient-funds and
    /// changes nothing: contract value, variation status, ledger and audit log stay as they were.
    @Test func anIncreaseBeyondAvailableIsRefusedAndChangesNothing() async throws {
        let world = try await World.make()
        let app = try await buildApplication(testConfiguration(world.database))
        try await app.test(.live) { client in
            let before = try await Self.locality(client, world)
            let available = before["available_pence"] as? Int ?? 0
            let variation = try await Self.propose(client, world, valuePence: 90_000 + available + 1)
            let ledgerBefore = try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))/ledger?limit=200", token: world.token(.lim, of: world.a)).items.count
            let refused = try await Self.decide(client, world, variation, token: world.supplierToken)
            #expect(refused.status == .conflict)
            #expect(refused.jsonObject["type"] as? String == "/problems/insufficient-funds", "\(refused.jsonObject)")
            let contract = try await client.call(.get, "/v1/contracts/\(lower(world.market.active))", token: world.supplierToken).jsonObject
            #expect(contract["value_pence"] as? Int == 90_000)
            #expect((contract["variations"] as? [[String: Any]])?.first { $0["id"] as? String == variation }?["status"] as? String == "proposed")
            #expect(try await Self.locality(client, world)["committed_pence"] as? Int == before["committed_pence"] as? Int)
            #expect(try await client.call(.get, "/v1/boards/\(lower(world.a.boards[0].id))/ledger?limit=200", token: world.token(.lim, of: world.a)).items.count == ledgerBefore)
            // Exactly what is available is fine.
            let exact = try await Self.propose(client, world, valuePence: 90_000 + available)
            #expect(try await Self.decide(client, world, exact, token: world.supplierToken).status == .ok)
            #expect(try await Self.locality(client, world)["available_pence"] as? Int == 0)
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Pins: concurrent accepts of several value variations (each an absolute new value) and a completion
    /// racing them keep the books right whatever the order; nobody gets a 500. On main the ledger never
    /// followed the value, so the invariant failed.
    @Test func concurrentVariationAcceptsAndCompletionKeepTheInvariant() async throws {
        let world = try await World.make()
        var configuration = testConfiguration(world.database)
        configuration.poolSize = 8
        let app = try await buildApplication(configuration)
        try await app.test(.live) { client in
            var proposed: [String] = []
            for value in [100_000, 80_000, 120_000, 95_500, 70_000] {
                proposed.append(try await Self.propose(client, world, valuePence: value))
            }
            let variations = proposed
            let supplier = world.supplierToken
            let lim = world.token(.lim, of: world.a)
            let contract = "/v1/contracts/\(lower(world.market.active))"
            let results = try await concurrently(variations.count + 2, on: client) { index, connection in
                if index < variations.count {
                    return try await connection.call(.post, "\(contract)/variations/\(variations[index])/decision", token: supplier, body: ["accept": true])
                }
                if index == variations.count {
                    // The fixture's own variation, proposed by the supplier: the LIM decides it.
                    return try await connection.call(.post, "\(contract)/variations/\(lower(world.market.proposedVariation))/decision", token: lim,
                                                     body: ["accept": true])
                }
                return try await connection.call(.post, "\(contract)/complete", token: lim)
            }
            #expect(results.allSatisfy { $0.status == 200 || $0.status == 409 }, "\(results.map(\.status))")
            #expect(results.contains { $0.status == 200 })
        }
        try await assertLedgerInvariant(world.database)
    }

    /// Pins: the verifier sees a contract whose value no longer matches its commitments (the bug of
    /// finding 1, made by hand), and is silent on the fixture's consistent books.
    @Test func theVerifierNamesAContractWhoseMoneyDoesNotAddUp() async throws {
        let world = try await World.make()
        try await assertLedgerInvariant(world.database)
        try await PGConnection.withConnection(.init(conninfo: world.database.superuserConninfo, applicationName: "t")) { connection in
            try await connection.query("UPDATE contract SET value_pence = value_pence + 100000 WHERE id = \(world.market.active)")
        }
        let report = try await world.database.withPool(conninfo: world.database.ownerConninfo, maxConnections: 1) { pool in
            try await LedgerVerifier(database: ScopedDatabase(pool: pool)).verify()
        }
        #expect(report.problems.map(\.subject) == ["contract"], "\(report.problems)")
        #expect(report.problems.first?.subjectID == lower(world.market.active))
        #expect(report.problems.first?.authoritySlug == "alpha")
    }
}
