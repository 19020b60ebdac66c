import Foundation
@testable import LocalityAPI
import OpenAPIRuntime
import Testing

/// The one-pass JSON encoder for large answers (`StreamingJSONEncoder`) against Foundation's `JSONEncoder` set up
/// as the generated layer's `Converter` sets it up: the same JSON, keys in the document's order.
@Suite("One-pass JSON encoding")
struct StreamingJSONEncoderTests {
    /// A page of contracts exercising every kind of member: optional ones present and absent, nested arrays of
    /// objects, enums, 64-bit integers, fractional numbers, timestamps with and without a fraction, and strings
    /// that need escaping.
    static let contractPage = #"""
    {"items":[
     {"id":"deabb4cd-0e49-7706-6c93-024aa98d64fd","project_id":"bc5d5ff6-1fc1-2ea3-18a4-f03e21cf7c5f",
      "bid_id":"f2276f29-1bec-e5f5-67f8-10d803563e2f","supplier_id":"7efa6b9c-7e11-7c89-e399-f8c602e194ea",
      "value_pence":9007199254740993,"start_date":"2026-12-05","end_date":"2027-08-29",
      "contract_manager":"Zoë \"Z\" O'Neil / LIM\\North\n\ttab \u0001 \u001f \u007f 🚸 — ends",
      "standstill_ends_on":"2026-11-19","status":"terminated","termination_reason":"</script> <b>&amp;",
      "amount_paid_pence":-12,
      "social_value":[{"measure_code":"NT1","measure_name":"Local jobs","unit":"hours","quantity":12.5,"proxy_value_pence":1000},
                      {"measure_code":"NT2","measure_name":"Apprentices","unit":"weeks","quantity":3,"proxy_value_pence":0}],
      "kpis":[{"id":"7be59c25-9cd7-dade-c378-fb9b187a5c17","agreed":true,"removed":false,"revisions":[
        {"revision":1,"proposed_by":"supplier","removal":false,"reason":"Proposed in the bid","accepted_by":["supplier","board"],
         "created_at":"2026-11-15T12:00:00Z",
         "definition":{"title":"KPI 1","measure":"Pupils taking part","unit":"percentage","baseline":0.1,"target":99.99,
                       "target_date":"2027-08-29","frequency":"termly","evidence_source":"Registers","amber_threshold_percent":80}},
        {"revision":2,"proposed_by":"board","removal":true,"reason":"","accepted_by":[],
         "created_at":"2026-11-16T09:30:00.123456Z",
         "definition":{"title":"KPI 1","measure":"m","unit":"count","baseline":0,"target":1e21,
                       "target_date":"2027-08-29","frequency":"monthly","evidence_source":"e","amber_threshold_percent":100}}]}],
      "variations":[{"id":"5f3e60b7-9ab7-f1cc-1224-c703e2e6ee3c","proposed_by":"board","reason":"More pupils","value_pence":2000000,
                     "end_date":"2027-09-30","status":"accepted","created_at":"2026-12-01T08:00:00.5Z","decided_at":"2026-12-02T08:00:00Z",
                     "kpis":[{"kpi_id":"7be59c25-9cd7-dade-c378-fb9b187a5c17","removal":false,
                              "definition":{"title":"KPI 1","measure":"m","unit":"count","baseline":0,"target":50,
                                            "target_date":"2027-09-30","frequency":"termly","evidence_source":"e","amber_threshold_percent":80}}]}]},
     {"id":"ccf97946-7f0e-9a41-4713-9212940b7be7","project_id":"bc5d5ff6-1fc1-2ea3-18a4-f03e21cf7c5f",
      "bid_id":"5f3e60b7-9ab7-f1cc-1224-c703e2e6ee3c","supplier_id":"7efa6b9c-7e11-7c89-e399-f8c602e194ea",
      "value_pence":0,"start_date":"2026-12-05","end_date":"2027-07-04","contract_manager":"",
      "standstill_ends_on":"2026-11-19","status":"kpi_negotiation","social_value":[],"kpis":[],"variations":[]}],
     "next_cursor":"eyJpZCI6ImNjZjk3OTQ2In0="}
    """#

    static func decoded() throws -> Components.Schemas.ContractList {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            try InternetDateTranscoder().decode(try decoder.singleValueContainer().decode(String.self))
        }
        return try decoder.decode(Components.Schemas.ContractList.self, from: Data(contractPage.utf8))
    }

    /// Foundation's encoder as `OpenAPIRuntime.Converter` configures it with the API's `Configuration`.
    static func foundationEncoded(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(try InternetDateTranscoder().encode(date))
        }
        return try encoder.encode(value)
    }

    /// Both texts parsed and written again with sorted keys: equal when they mean the same JSON.
    static func canonical(_ data: some Sequence<UInt8>) throws -> Data {
        let object = try JSONSerialization.jsonObject(with: Data(data), options: [.fragmentsAllowed])
        return try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed])
    }

    /// A submitted bid with its receipt (the answer to `POST /v1/bids/{id}/submit`): optional members present and
    /// absent, KPIs, commitments with fractional quantities, a receipt whose canonical text is JSON inside a string.
    static let bidSubmission = #"""
    {"bid":{"id":"f2276f29-1bec-e5f5-67f8-10d803563e2f","project_id":"bc5d5ff6-1fc1-2ea3-18a4-f03e21cf7c5f",
      "supplier_id":"7efa6b9c-7e11-7c89-e399-f8c602e194ea","supplier_name":"Dales \"Youth\" Trust","status":"submitted",
      "price_pence":9007199254740993,"approach":"Small groups\nafter school","outputs":"","kpis":[
        {"title":"Attendance","measure":"Sessions attended","unit":"percentage","baseline":0.5,"target":92.25,
         "target_date":"2027-07-16","frequency":"termly","evidence_source":"Registers"}],
      "social_value":[{"measure_code":"NT1","measure_name":"Local jobs","unit":"hours","quantity":12.5,"proxy_value_pence":1000}],
      "declarations":{"accepts_terms":true,"information_accurate":true,"conflicts_of_interest":"None"},
      "submitted_at":"2026-11-16T09:30:00.123456Z","receipt_sha256":"ab","version":3,
      "created_at":"2026-11-15T12:00:00Z","updated_at":"2026-11-16T09:30:00.123456Z"},
     "receipt":{"bid_id":"f2276f29-1bec-e5f5-67f8-10d803563e2f","submitted_at":"2026-11-16T09:30:00.123456Z","sha256":"ab",
      "canonical":"{\"bid_id\":\"f2276f29\",\"approach\":\"</b> \\u0001\"}"}}
    """#

    @Test func aBidSubmissionIsTheJSONFoundationWrites() throws {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            try InternetDateTranscoder().decode(try decoder.singleValueContainer().decode(String.self))
        }
        let submission = try decoder.decode(Components.Schemas.BidSubmission.self, from: Data(Self.bidSubmission.utf8))
        #expect(submission.bid.outcomeNote == nil && submission.bid.kpis.count == 1)
        let streamed = try PreEncodedBody.encoder.encode(submission)
        let foundation = try Self.foundationEncoded(submission)
        #expect(try Self.canonical(streamed) == Self.canonical(foundation))
        #expect(streamed.count == foundation.count)
        let text = String(decoding: streamed, as: UTF8.self)
        #expect(text.hasPrefix(#"{"bid":{"id":"f2276f29-1bec-e5f5-67f8-10d803563e2f","project_id":"#))
        #expect(!text.contains("outcome_note"))
    }

    @Test func aPageOfContractsIsTheJSONFoundationWrites() throws {
        let page = try Self.decoded()
        let streamed = try PreEncodedBody.encoder.encode(page)
        let foundation = try Self.foundationEncoded(page)
        #expect(try Self.canonical(streamed) == Self.canonical(foundation))
        // The same bytes but for the order of keys: the document's order, not sorted.
        #expect(streamed.count == foundation.count)
        let text = String(decoding: streamed, as: UTF8.self)
        #expect(text.hasPrefix(#"{"items":[{"id":"deabb4cd-0e49-7706-6c93-024aa98d64fd","project_id":"#))
        #expect(text.hasSuffix(#""next_cursor":"eyJpZCI6ImNjZjk3OTQ2In0="}"#))
        // Absent optionals are omitted, as `encodeIfPresent` asks: the second contract has no termination reason.
        #expect(text.components(separatedBy: "termination_reason").count == 2)
        #expect(text.contains(#""created_at":"2026-11-16T09:30:00.123456Z""#))
    }

    @Test func stringsAreEscapedAsFoundationEscapesThem() throws {
        var strings = (0..<0x80).map { String(UnicodeScalar(UInt8($0))) }
        strings += ["", "plain", "a/b", "\"quoted\"", "back\\slash", "Zoë", "🚸🏫", "\u{2028}\u{2029}", "tab\tand\nnewline\r\u{0C}\u{08}"]
        for string in strings {
            let streamed = try PreEncodedBody.encoder.encode(string)
            #expect(Data(streamed) == (try Self.foundationEncoded(string)), "\(string.unicodeScalars.map(\.value))")
        }
        #expect(Data(try PreEncodedBody.encoder.encode(strings)) == (try Self.foundationEncoded(strings)))
    }

    @Test func numbersAreWrittenAsFoundationWritesThem() throws {
        let doubles: [Double] = [0, -0.0, 1, -1, 0.1, 12.5, 99.99, 1e21, 1e-7, 123_456_789.125, Double.greatestFiniteMagnitude,
                                 Double.leastNonzeroMagnitude, 2.0.squareRoot(), 1.0 / 3, 4503599627370496, 9007199254740993]
        for value in doubles {
            #expect(Data(try PreEncodedBody.encoder.encode(value)) == (try Self.foundationEncoded(value)), "\(value)")
        }
        let floats: [Float] = [0, 0.1, 12.5, 1e-7, 3.4e38, 1.0 / 3]
        #expect(Data(try PreEncodedBody.encoder.encode(floats)) == (try Self.foundationEncoded(floats)))
        let integers: [Int64] = [0, 1, -1, .max, .min, 9_007_199_254_740_993]
        #expect(Data(try PreEncodedBody.encoder.encode(integers)) == (try Self.foundationEncoded(integers)))
        #expect(Data(try PreEncodedBody.encoder.encode([true, false])) == (try Self.foundationEncoded([true, false])))
        // The other integer types go through each container's generic path.
        struct Widths: Encodable {
            let a: Int8 = -8, b: Int16 = 300, c: UInt = 5, d: UInt8 = 255, e: UInt64 = .max, f: [UInt32] = [1, 2], g: Int32? = nil
        }
        #expect(try Self.canonical(PreEncodedBody.encoder.encode(Widths())) == Self.canonical(try Self.foundationEncoded(Widths())))
        #expect(Data(try PreEncodedBody.encoder.encode([Int8(-1), 2])) == (try Self.foundationEncoded([Int8(-1), 2])))
        // Not a number: refused, as JSONEncoder refuses it.
        #expect(throws: EncodingError.self) { try PreEncodedBody.encoder.encode([1.0, .nan]) }
        #expect(throws: EncodingError.self) { try PreEncodedBody.encoder.encode(Double.infinity) }
    }

    /// Nested containers asked for explicitly, and a value that writes nothing, come out as Foundation's.
    @Test func nestedContainersAndEmptyValues() throws {
        struct Nested: Encodable {
            enum Keys: String, CodingKey { case a, inner, list, after }
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: Keys.self)
                try container.encode(1, forKey: .a)
                var inner = container.nestedContainer(keyedBy: Keys.self, forKey: .inner)
                try inner.encode("x", forKey: .a)
                try inner.encodeNil(forKey: .after)
                var list = container.nestedUnkeyedContainer(forKey: .list)
                try list.encode(1)
                var deeper = list.nestedUnkeyedContainer()
                try deeper.encode("y")
                try list.encode(Empty())
                try container.encode([Empty(), Empty()], forKey: .after)
            }
        }
        struct Empty: Encodable {
            func encode(to encoder: any Encoder) throws {}
        }
        let streamed = try PreEncodedBody.encoder.encode(Nested())
        #expect(try Self.canonical(streamed) == Self.canonical(try Self.foundationEncoded(Nested())))
        #expect(String(decoding: streamed, as: UTF8.self) == #"{"a":1,"inner":{"a":"x","after":null},"list":[1,["y"],{}],"after":[{},{}]}"#)
    }

    /// What cannot be written in one pass is refused, and `offer` then hands the value to the generated layer.
    @Test func whatItCannotWriteInOrderIsLeftToFoundation() async throws {
        struct LateWrite: Encodable {
            enum Keys: String, CodingKey { case first, second }
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: Keys.self)
                var first = container.nestedContainer(keyedBy: Keys.self, forKey: .first)
                try container.encode(2, forKey: .second)
                // Foundation puts this inside "first"; written now it would land after "second".
                try first.encode(1, forKey: .second)
            }
        }
        struct SuperUser: Encodable {
            enum Keys: String, CodingKey { case a }
            func encode(to encoder: any Encoder) throws {
                var container = encoder.container(keyedBy: Keys.self)
                _ = container.superEncoder()
            }
        }
        struct Bytes: Encodable {
            let data = Data([1, 2, 3])
        }
        /// Asks for itself again, as a type with a single-value container this encoder did not know would.
        struct Itself: Encodable {
            func encode(to encoder: any Encoder) throws {
                var container = encoder.singleValueContainer()
                try container.encode(self)
            }
        }
        #expect(throws: StreamingJSONEncoder.Unsupported.self) { try PreEncodedBody.encoder.encode(LateWrite()) }
        #expect(throws: StreamingJSONEncoder.Unsupported.self) { try PreEncodedBody.encoder.encode(SuperUser()) }
        #expect(throws: StreamingJSONEncoder.Unsupported.self) { try PreEncodedBody.encoder.encode(Bytes()) }
        #expect(throws: StreamingJSONEncoder.Unsupported.self) { try PreEncodedBody.encoder.encode(Itself()) }

        let slot = PreEncodedBody()
        let kept = PreEncodedBody.$slot.withValue(slot) { PreEncodedBody.offer([Bytes()], standIn: []) }
        #expect(kept.count == 1)
        #expect(slot.take() == nil)
        // Without a slot (a handler called directly) the value itself is returned.
        #expect(PreEncodedBody.offer(["a"], standIn: []) == ["a"])
        // With one, the stand-in, and the bytes once.
        let standIn = PreEncodedBody.$slot.withValue(slot) { PreEncodedBody.offer(["a", "b"], standIn: []) }
        #expect(standIn.isEmpty)
        #expect(slot.take().map { String(decoding: $0, as: UTF8.self) } == #"["a","b"]"#)
        #expect(slot.take() == nil)
    }
}
