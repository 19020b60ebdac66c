import Foundation
import LocalityPostgres
import PostgresTestSupport
import Testing

@Suite("Values round-trip through PostgreSQL")
struct TypeRoundTripTests {
    func roundTrip<T: PGEncodable & PGDecodable & Equatable>(_ value: T, as sqlType: String) async throws -> T {
        let database = try await TestDatabase.migrated()
        return try await database.withPool { pool in
            let result = try await pool.query(PGQuery("SELECT $1::\(sqlType)", [value.pg]))
            return try result.first!.decode(T.self, at: 0)
        }
    }

    @Test func integersAtTheirExtremes() async throws {
        for value in [Int.min, -1, 0, 1, Int.max] {
            #expect(try await roundTrip(value, as: "int8") == value)
        }
        for value in [Int32.min, 0, Int32.max] {
            #expect(try await roundTrip(value, as: "int4") == value)
        }
        #expect(try await roundTrip(Int16.min, as: "int2") == Int16.min)
    }

    @Test func stringsIncludingEmptyUnicodeAndSQLLookalikes() async throws {
        for value in ["", "plain", "Ynys Môn — “quoted” 🏫", "'); DROP TABLE x; --", "tab\tnew\nline\\back"] {
            #expect(try await roundTrip(value, as: "text") == value)
        }
    }

    @Test func boolsDoublesUUIDsAndBytes() async throws {
        #expect(try await roundTrip(true, as: "bool") == true)
        #expect(try await roundTrip(false, as: "bool") == false)
        for value in [0.1, -1.5e300, Double.greatestFiniteMagnitude, Double.leastNonzeroMagnitude, .infinity] {
            #expect(try await roundTrip(value, as: "float8") == value)
        }
        let nan = try await roundTrip(Double.nan, as: "float8")
        #expect(nan.isNaN)
        let id = UUID()
        #expect(try await roundTrip(id, as: "uuid") == id)
        let bytes = Data([0, 1, 2, 0xFF, 0x5C, 0x27])
        #expect(try await roundTrip(bytes, as: "bytea") == bytes)
        #expect(try await roundTrip(Data(), as: "bytea") == Data())
    }

    /// UUIDs are bound as 16 binary bytes and read back from PostgreSQL's text without Foundation's parser:
    /// the server must see the same value Foundation prints, in both directions.
    @Test func uuidsMeanTheSameValueOnBothSides() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool { pool in
            for id in [UUID(), UUID(uuidString: "00000000-0000-0000-0000-000000000000")!, UUID(uuidString: "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF")!] {
                let text = try await pool.query("SELECT \(id)::text").first!.decode(String.self, at: 0)
                #expect(text == id.uuidString.lowercased())
            }
            let literal = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
            let sql = "SELECT '\(literal)'::uuid, upper('\(literal)'), '{\(literal)}'"
            let parsed = try await pool.query(PGQuery(sql)).first!
            #expect(try parsed.decode(UUID.self, at: 0) == UUID(uuidString: literal))
            #expect(try parsed.decode(UUID.self, at: 1) == UUID(uuidString: literal))
            // Not the canonical form, and not a uuid at all: Foundation decides, and the error names the column.
            #expect(throws: PGError.self) { try parsed.decode(UUID.self, at: 2) }
            let malformed = try await pool.query("SELECT 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g' AS id").first!
            #expect(performing: { try malformed.decode(UUID.self, at: 0) }, throws: { ($0 as? PGError)?.message.contains("id") == true })
        }
    }

    @Test func timestampsFromAncientToFarFuture() async throws {
        let values = [
            Date(timeIntervalSince1970: 0),
            Date(timeIntervalSince1970: 1_743_465_600.123456),  // 2025-04-01 with microseconds
            Date(timeIntervalSince1970: -62_135_596_800),  // 0001-01-01
            Date(timeIntervalSince1970: 253_402_300_799.999),  // 9999-12-31 23:59:59.999
            Date(timeIntervalSince1970: -62_198_755_200),  // 0002-12-31 BC... well before AD 1
        ]
        for value in values {
            let back = try await roundTrip(value, as: "timestamptz")
            #expect(abs(back.timeIntervalSince1970 - value.timeIntervalSince1970) < 0.000_001, "\(value)")
        }
    }

    @Test func calendarDatesDecodeAtMidnightUTC() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool { pool in
            let row = try await pool.query("SELECT DATE '2026-03-31', DATE '0044-03-15' - 0").first!
            let date = try row.decode(Date.self, at: 0)
            #expect(date == Date(timeIntervalSince1970: 1_774_915_200))
            // A Date bound to a date column keeps its calendar day.
            let stored = try await pool.query("SELECT \(date)::date = DATE '2026-03-31'").first!.decode(Bool.self, at: 0)
            #expect(stored)
        }
    }

    @Test func nullsDecodeOnlyIntoOptionals() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool { pool in
            let none: String? = nil
            let row = try await pool.query("SELECT \(none)::text AS missing, \(Optional("x"))::text AS present").first!
            #expect(try row.decode(String?.self, "missing") == nil)
            #expect(try row.decode(String?.self, "present") == "x")
            #expect(throws: PGError.self) { try row.decode(String.self, "missing") }
        }
    }

    @Test func arraysOfTextUUIDsAndIntegers() async throws {
        #expect(try await roundTrip(["a", "", "with \"quotes\", commas", "NULL", "back\\slash", "ü"], as: "text[]")
            == ["a", "", "with \"quotes\", commas", "NULL", "back\\slash", "ü"])
        #expect(try await roundTrip([String](), as: "text[]") == [])
        let ids = [UUID(), UUID()]
        #expect(try await roundTrip(ids, as: "uuid[]") == ids)
        #expect(try await roundTrip([Int.min, 0, Int.max], as: "int8[]") == [Int.min, 0, Int.max])
    }

    @Test func jsonbThroughCodable() async throws {
        struct Plan: Codable, Equatable, Sendable {
            var title: String
            var weights: [Int]
        }
        let plan = Plan(title: "Craven — SEND", weights: [40, 50, 10])
        let back = try await roundTrip(PGJSON(plan), as: "jsonb")
        #expect(back.value == plan)
    }

    @Test func decodingErrorsNameTheColumnAndType() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool { pool in
            let row = try await pool.query("SELECT 'not a number' AS price_pence").first!
            do {
                _ = try row.decode(Int.self, "price_pence")
                Issue.record("decoding text as Int should fail")
            } catch let error as PGError {
                #expect(error.kind == .decoding)
                #expect(error.message.contains("price_pence"))
                #expect(error.message.contains("Int"))
            }
            let big = try await pool.query("SELECT 9223372036854775807::int8 AS n").first!
            #expect(throws: PGError.self) { try big.decode(Int32.self, "n") }
        }
    }

    @Test func interpolatedValuesAreStoredLiterallyNeverRunAsSQL() async throws {
        let database = try await TestDatabase.migrated()
        try await database.withPool(conninfo: database.ownerConninfo) { pool in
            try await pool.query("CREATE TABLE x (v text)")
            let hostile = "'); DROP TABLE x; --"
            try await pool.query("INSERT INTO x (v) VALUES (\(hostile))")
            let stored = try await pool.query("SELECT v FROM x").first!.decode(String.self, at: 0)
            #expect(stored == hostile)
        }
    }
}
