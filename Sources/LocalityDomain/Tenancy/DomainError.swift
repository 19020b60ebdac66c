import Foundation

/// The failures the domain reports; the API turns each into a problem response, the CLI into one line.
public enum DomainError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Missing, or belonging to someone the caller may not see (indistinguishable on purpose).
    case notFound(String)
    case forbidden(String)
    case unauthenticated(String)
    case invalid([FieldIssue])
    case conflict(String)
    /// A conflict the client can tell apart by its problem `type` (`/problems/<type>`): a lost race or a
    /// duplicate, e.g. `duplicate-return`, `already-submitted`. 409 unless `status` says otherwise (422).
    case stateConflict(type: String, String, status: Int = 409)
    /// A ledger entry would take a budget's available amount below zero.
    case insufficientFunds(String)
    /// The client edited from a stale version (`If-Match` did not match).
    case preconditionFailed(currentVersion: Int)
    /// The change needs `If-Match` with the version being edited.
    case preconditionRequired

    public static func invalid(_ field: String, _ message: String) -> DomainError {
        .invalid([FieldIssue(field: field, message: message)])
    }

    public var description: String {
        switch self {
        case .notFound(let what): "\(what) not found"
        case .forbidden(let detail), .unauthenticated(let detail), .conflict(let detail), .insufficientFunds(let detail),
             .stateConflict(_, let detail, _):
            detail
        case .invalid(let issues): issues.map { "\($0.field): \($0.message)" }.joined(separator: "; ")
        case .preconditionFailed(let version): "the resource has changed (now version \(version)); fetch it and retry"
        case .preconditionRequired: "send If-Match with the ETag of the version you are editing"
        }
    }
}

public struct FieldIssue: Sendable, Equatable, Codable {
    public var field: String
    public var message: String

    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
}

/// Collects field errors so a request reports all of them at once.
public struct Validator {
    public private(set) var issues: [FieldIssue] = []

    public init() {}

    public mutating func check(_ condition: Bool, _ field: String, _ message: String) {
        if !condition { issues.append(FieldIssue(field: field, message: message)) }
    }

    public mutating func text(_ value: String?, _ field: String, required: Bool = true, max: Int) {
        guard let value else {
            if required { issues.append(FieldIssue(field: field, message: "is required")) }
            return
        }
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        if required && trimmed.isEmpty { issues.append(FieldIssue(field: field, message: "must not be blank")) }
        if value.count > max { issues.append(FieldIssue(field: field, message: "must be at most \(max) characters")) }
    }

    public func throwIfInvalid() throws {
        if !issues.isEmpty { throw DomainError.invalid(issues) }
    }
}

extension String {
    /// Whether the regular expression matches the whole string. A validator's `^…$` alone is not enough: ICU's `$`
    /// also matches before a final line break, so `"AB12\n"` passed `^[A-Z0-9]{2,10}$` (and a date with a trailing
    /// line break reached code that split it into fewer parts than it indexed).
    public func isWholeMatch(of pattern: String) -> Bool {
        range(of: pattern, options: .regularExpression) == startIndex..<endIndex
    }
}
