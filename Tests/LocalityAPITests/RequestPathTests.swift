import Foundation
import HTTPTypes
@testable import LocalityAPI
import Testing

/// The cheaper request-path code (Benchmarks/README.md, "Where the time goes") answers exactly as the code it
/// replaced.
@Suite("Request path")
struct RequestPathTests {
    /// What `String(format: "%.2f")` wrote for the access log's `duration_ms`.
    @Test func accessLogMillisecondsHaveTwoDecimals() {
        #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.zero) == "0.00")
        #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.microseconds(4)) == "0.00")
        #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.microseconds(5)) == "0.01")
        #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.microseconds(420)) == "0.42")
        #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.microseconds(90_999)) == "91.00")
        #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.seconds(1203) + .microseconds(70)) == "1203000.07")
        // Away from exact halves, where printf rounds the nearest binary double (0.175 is 0.17499…) and this rounds up.
        for micros in stride(from: 0, to: 3_000, by: 7) where micros % 10 != 5 {
            let expected = String(format: "%.2f", Double(micros) / 1000)
            #expect(AccessLogMiddleware<AppRequestContext>.milliseconds(.microseconds(micros)) == expected, "\(micros) µs")
        }
    }

    /// The fast path for `Bearer <token>` gives what the general rule gives, and leaves the odd cases to it.
    @Test func bearerTokenFastPathAgreesWithTheGeneralRule() {
        typealias Auth = AuthenticationMiddleware<AppRequestContext>
        #expect(Auth.bearerToken("Bearer lcm_abc123") == "lcm_abc123")
        #expect(Auth.bearerToken("bearer lcm_abc123") == "lcm_abc123")
        #expect(Auth.bearerToken("BEARER   lcm_abc123  ") == "lcm_abc123")
        #expect(Auth.bearerToken("Bearer ") == nil)
        #expect(Auth.bearerToken("Bearer") == nil)
        #expect(Auth.bearerToken("Basic dXNlcjpwYXNz") == nil)
        #expect(Auth.bearerToken("Bearer a b") == "a b")
    }

    /// Literal segments win over parameters; a path matches only templates of its own length.
    @Test func routeTableFindsTheMostSpecificTemplate() {
        let table = RouteTable(maxBodyBytes: 1024)
        table.record(path: "/v1/boards/{board_id}", method: .get)
        table.record(path: "/v1/boards/mine", method: .get)
        table.record(path: "/v1/boards/{board_id}", method: .put)
        table.record(path: "/v1/boards", method: .get)
        #expect(table.template(forPath: "/v1/boards/mine", method: .get) == "/v1/boards/mine")
        #expect(table.template(forPath: "/v1/boards/42", method: .get) == "/v1/boards/{board_id}")
        #expect(table.template(forPath: "/v1/boards/42", method: .delete) == nil)
        #expect(table.template(forPath: "/v1/boards/42/x", method: .get) == nil)
        #expect(Set(table.methods(forPath: "/v1/boards/42").map(\.rawValue)) == ["GET", "PUT"])
        #expect(table.methods(forPath: "/v1/boards").map(\.rawValue) == ["GET"])
        #expect(table.methods(forPath: "/v2/boards").isEmpty)
    }

    /// A made-up request id has the form `UUID().uuidString.lowercased()` had: a version 4 UUID in lower case.
    @Test func requestIDsAreLowerCaseVersion4UUIDs() {
        var seen = Set<String>()
        for _ in 0..<1_000 {
            let id = RequestIDMiddleware<AppRequestContext>.newID()
            let bytes = Array(id.utf8)
            #expect(bytes.count == 36, "\(id)")
            #expect(UUID(uuidString: id)?.uuidString.lowercased() == id, "\(id)")
            #expect(bytes.count == 36 && bytes[14] == UInt8(ascii: "4") && "89ab".utf8.contains(bytes[19]), "\(id)")
            seen.insert(id)
        }
        #expect(seen.count == 1_000)
    }

    /// Path parameters are percent-decoded before they are checked (only when they hold a `%`).
    @Test func pathParametersAreCheckedDecoded() throws {
        let rules = try ParameterRules(document: """
            paths:
              /v1/boards/{board_id}:
                get:
                  parameters:
                    - {name: board_id, in: path, required: true, schema: {type: string, format: uuid}}
            """)
        let id = "0b7f9e1c-4a7d-4e8b-9c3f-2d1e0a9b8c7d"
        let template = "/v1/boards/{board_id}"
        #expect(rules.problem(method: .get, template: template, path: "/v1/boards/\(id)", query: []) == nil)
        #expect(rules.problem(method: .head, template: template, path: "/v1/boards/\(id)", query: []) == nil)
        // "%30" is "0": the decoded text is the same UUID.
        #expect(rules.problem(method: .get, template: template, path: "/v1/boards/%30b7f9e1c-4a7d-4e8b-9c3f-2d1e0a9b8c7d", query: []) == nil)
        let problem = try #require(rules.problem(method: .get, template: template, path: "/v1/boards/not-a-uuid", query: []))
        #expect(problem.fieldErrors.map(\.field) == ["board_id"])
        #expect(rules.problem(method: .get, template: template, path: "/v1/boards/%7Bnot%7D", query: []) != nil)
    }
}
