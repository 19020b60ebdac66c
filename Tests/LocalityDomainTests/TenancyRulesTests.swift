import Foundation
import LocalityDomain
import LocalityPostgres
import Testing

@Suite("Tenancy rules")
struct TenancyRulesTests {
    @Test(arguments: [("2025-26", true), ("2099-00", true), ("2025-27", false), ("2025-2026", false), ("25-26", false), ("", false), ("abcd-ef", false)])
    func financialYearNames(_ text: String, _ valid: Bool) {
        #expect((FinancialYear(text) != nil) == valid)
        if valid { #expect(FinancialYear(text)!.description == text) }
    }

    @Test func financialYearsRunFromAprilToMarch() throws {
        let formatter = ISO8601DateFormatter()
        #expect(FinancialYear.containing(formatter.date(from: "2026-03-31T12:00:00Z")!).description == "2025-26")
        #expect(FinancialYear.containing(formatter.date(from: "2026-04-01T12:00:00Z")!).description == "2026-27")
        // Midnight at the start of 1 April in summer time is still 31 March in UTC.
        #expect(FinancialYear.containing(formatter.date(from: "2026-03-31T23:30:00Z")!).description == "2026-27")
    }

    @Test func cursorsRoundTripAndForgeriesAreRefused() throws {
        let cursor = PageRequest.encode(["Craven", UUID.zero.uuidString])
        let request = try PageRequest(limit: 10, cursor: cursor)
        #expect(request.after == ["Craven", UUID.zero.uuidString])
        #expect(throws: DomainError.self) { try PageRequest(cursor: "not a cursor!") }
        #expect(throws: DomainError.self) { try PageRequest(limit: 0) }
        #expect(throws: DomainError.self) { try PageRequest(limit: 201) }
        #expect(try PageRequest().limit == 50)
        let page = try PageRequest(limit: 2).page([1, 2, 3]) { [String($0)] }
        #expect(page.items == [1, 2])
        #expect(page.nextCursor == PageRequest.encode(["2"]))
        #expect(try PageRequest(limit: 3).page([1, 2, 3]) { [String($0)] }.nextCursor == nil)
    }

    @Test func operatorScopeActsAsTheOSUser() {
        let scope = AccessScope.operatorScope(authorityID: .zero, osUser: "alice")
        #expect(scope.actor == "cli:alice")
        #expect(scope.has(.authorityAdmin) && scope.seesAllBoards)
    }
}

@Suite("Tenant bulkhead")
struct TenantBulkheadTests {
    /// Over its limit a tenant waits, and gives up with the pool's own acquire timeout; another tenant is not held
    /// up; when the place is freed, the count returns to zero.
    @Test func aTenantOverItsLimitWaitsAndTimesOutWhileOthersGoOn() async throws {
        let bulkhead = TenantBulkhead(limit: 1, timeout: .milliseconds(200))
        let (release, releaser) = AsyncStream.makeStream(of: Void.self)
        let holder = Task { try await bulkhead.run("a") { for await _ in release { break } } }
        while bulkhead.inUse("a") == 0 { await Task.yield() }
        do {
            try await bulkhead.run("a") {}
            Issue.record("a second transaction of the tenant was admitted over its limit")
        } catch let error as PGError {
            #expect(error.kind == .acquireTimeout)
        }
        #expect(try await bulkhead.run("b") { 7 } == 7)
        releaser.yield()
        try await holder.value
        #expect(bulkhead.inUse("a") == 0)
        #expect(try await bulkhead.run("a") { 8 } == 8)
    }
}
