import Foundation
import HTTPTypes
import LocalityDomain
import Yams

/// The query and path parameters each operation of the OpenAPI document declares, read from the document at
/// start-up, so a missing or malformed one is answered 400 naming it.
///
/// Why not leave it to the generated layer: it reports a missing required query parameter or an unreadable
/// value as a `DecodingError` with an empty coding path and no name, after which nothing can tell the client
/// which parameter was wrong (and the message reads like a body error). Checking the same declarations
/// first (required, type, enum, format, pattern, minimum/maximum) names it. The generated layer still
/// decodes afterwards; anything it refuses that slipped past here stays a 400.
struct ParameterRules: Sendable {
    struct Parameter: Sendable {
        enum Kind: Sendable {
            case string
            case integer
            case number
            case boolean
        }

        let name: String
        let inPath: Bool
        /// For a path parameter, the index of its segment in the operation's template (set once the template is known).
        var segment: Int?
        let required: Bool
        let kind: Kind
        let format: String?
        let allowed: [String]?
        let pattern: String?
        let minimum: Double?
        let maximum: Double?
    }

    /// An operation: its method (GET for HEAD) and path template.
    struct Operation: Hashable, Sendable {
        let method: HTTPRequest.Method
        let template: String
    }

    /// GET /v1/boards/{board_id}/dashboard → its parameters.
    private let operations: [Operation: [Parameter]]

    static let empty = ParameterRules(operations: [:])

    private init(operations: [Operation: [Parameter]]) {
        self.operations = operations
    }

    /// Reads `document` (YAML); throws when it is not a mapping with `paths`.
    init(document: String) throws {
        guard let root = try Yams.load(yaml: document) as? [String: Any], let paths = root["paths"] as? [String: Any] else {
            throw DomainError.invalid("openapi.yaml", "has no paths")
        }
        let components = (root["components"] as? [String: Any])?["parameters"] as? [String: Any] ?? [:]
        let schemas = (root["components"] as? [String: Any])?["schemas"] as? [String: Any] ?? [:]
        /// A parameter's schema may name a shared one (`$ref: '#/components/schemas/Term'`, an enum).
        func resolveSchema(_ node: [String: Any]) -> [String: Any] {
            guard let reference = node["$ref"] as? String,
                let named = schemas[String(reference.split(separator: "/").last ?? "")] as? [String: Any]
            else { return node }
            return resolveSchema(named)
        }
        func resolve(_ node: Any) -> [String: Any]? {
            guard let node = node as? [String: Any] else { return nil }
            if let reference = node["$ref"] as? String {
                return components[String(reference.split(separator: "/").last ?? "")] as? [String: Any]
            }
            return node
        }
        func parameter(_ node: [String: Any]) -> Parameter? {
            guard let name = node["name"] as? String, let location = node["in"] as? String, location == "query" || location == "path" else {
                return nil
            }
            let schema = resolveSchema(node["schema"] as? [String: Any] ?? [:])
            let kind: Parameter.Kind =
                switch schema["type"] as? String {
                case "integer": .integer
                case "number": .number
                case "boolean": .boolean
                default: .string
                }
            return Parameter(
                name: name, inPath: location == "path", segment: nil, required: node["required"] as? Bool ?? (location == "path"), kind: kind,
                format: schema["format"] as? String, allowed: (schema["enum"] as? [Any])?.map { "\($0)" },
                pattern: schema["pattern"] as? String, minimum: Self.double(schema["minimum"]), maximum: Self.double(schema["maximum"]))
        }
        var operations: [Operation: [Parameter]] = [:]
        for (path, item) in paths {
            guard let item = item as? [String: Any] else { continue }
            let shared = (item["parameters"] as? [Any] ?? []).compactMap(resolve).compactMap(parameter)
            for (method, operation) in item where ["get", "put", "post", "patch", "delete"].contains(method) {
                guard let operation = operation as? [String: Any] else { continue }
                let own = (operation["parameters"] as? [Any] ?? []).compactMap(resolve).compactMap(parameter)
                // An operation's own declaration overrides the path item's one of the same name.
                var merged = shared.filter { parameter in !own.contains { $0.name == parameter.name } } + own
                let segments = path.split(separator: "/")
                for index in merged.indices where merged[index].inPath {
                    merged[index].segment = segments.firstIndex { $0 == "{\(merged[index].name)}" }
                }
                operations[Operation(method: HTTPRequest.Method(method.uppercased())!, template: path)] = merged
            }
        }
        self.operations = operations
    }

    private static func double(_ value: Any?) -> Double? {
        switch value {
        case let value as Int: Double(value)
        case let value as Double: value
        default: nil
        }
    }

    /// The problem with the request's parameters for the operation at `template`, or nil.
    func problem(method: HTTPRequest.Method, template: String, path: String, query: [(key: String, value: String)]) -> APIProblem? {
        // HEAD is served by GET's operation.
        guard let parameters = operations[Operation(method: method == .head ? .get : method, template: template)] else { return nil }
        // Each path parameter's segment is known from the template: no template split or search per request
        // (this check was ~4% of a cached read's server CPU, Benchmarks/README.md).
        let pathSegments = parameters.contains(where: \.inPath) ? path.split(separator: "/") : []
        var issues: [APIProblem.FieldError] = []
        for parameter in parameters {
            let value: String?
            if parameter.inPath {
                value = parameter.segment.flatMap { $0 < pathSegments.count ? pathSegments[$0] : nil }.map { segment in
                    segment.utf8.contains(UInt8(ascii: "%")) ? (String(segment).removingPercentEncoding ?? String(segment)) : String(segment)
                }
            } else {
                value = query.last { $0.key == parameter.name }?.value
            }
            guard let value else {
                if parameter.required { issues.append(.init(field: parameter.name, message: "is required")) }
                continue
            }
            if let message = Self.check(value, parameter) { issues.append(.init(field: parameter.name, message: message)) }
        }
        guard !issues.isEmpty else { return nil }
        let names = issues.map(\.field).joined(separator: ", ")
        return APIProblem(status: .badRequest, type: APIProblem.typeURI("invalid-parameter"), title: "Bad Request",
                          detail: "Check the parameter\(issues.count == 1 ? "" : "s") \(names).", fieldErrors: issues)
    }

    /// What is wrong with `value` for `parameter`, or nil.
    static func check(_ value: String, _ parameter: Parameter) -> String? {
        switch parameter.kind {
        case .integer:
            guard let number = Int64(value) else { return "must be a whole number" }
            return range(Double(number), parameter)
        case .number:
            guard let number = Double(value), number.isFinite else { return "must be a number" }
            return range(number, parameter)
        case .boolean:
            return value == "true" || value == "false" ? nil : "must be true or false"
        case .string:
            // As in bodies (JSONBodyCheck): PostgreSQL cannot store it, and the C client would cut the text there.
            if value.unicodeScalars.contains("\0") { return "must not contain the NUL character (U+0000)" }
            if let allowed = parameter.allowed, !allowed.contains(value) {
                return "must be one of: \(allowed.joined(separator: ", "))"
            }
            switch parameter.format {
            case "uuid" where UUID(uuidString: value) == nil:
                return "must be a UUID"
            case "date-time" where InternetDateTranscoder.parse(value) == nil:
                return InternetDateTranscoder.InvalidDateTime(text: value).description
            case "date" where CalendarDate.parse(value) == nil:
                return "must be a date (YYYY-MM-DD)"
            default:
                break
            }
            if let pattern = parameter.pattern, value.range(of: pattern, options: .regularExpression) == nil {
                return "must match \(pattern)"
            }
            return nil
        }
    }

    private static func range(_ number: Double, _ parameter: Parameter) -> String? {
        if let minimum = parameter.minimum, number < minimum { return "must be at least \(Self.text(minimum))" }
        if let maximum = parameter.maximum, number > maximum { return "must be at most \(Self.text(maximum))" }
        return nil
    }

    private static func text(_ number: Double) -> String {
        number == number.rounded() ? String(Int64(number)) : String(number)
    }
}
