import Foundation

/// A pass over a JSON request body before the generated decoder sees it, for what `JSONDecoder` lets
/// through silently:
///
/// - a key twice in one object (the decoder keeps the first; most parsers keep the last, so a proxy and
///   this server could disagree about what was sent) → 400;
/// - a NUL character (`\u0000`) in a string or key (PostgreSQL cannot store it and the C client would cut
///   the string there) → 422 naming the field;
/// - an explicit `null` (the generated types decode `null` on an optional property as "absent", so a
///   client that means "clear this" would be silently ignored) → 422 naming the field.
///
/// Why a scanner and not the schema: the OpenAPI document declares no nullable property (OpenAPI 3.1 would
/// write `type: [string, 'null']`), so every `null` in a request body is outside the contract and no
/// per-field knowledge is needed. `HTTPStrictnessTests.theDocumentDeclaresNoNullableProperty` fails if one
/// is ever added, so this rule is revisited then.
///
/// Syntax errors are not reported here: the scanner stops and the generated decoder answers its 400.
struct JSONBodyCheck {
    enum Finding: Equatable {
        case duplicateKey(field: String)
        case nul(field: String)
        case null(field: String)
    }

    private let bytes: [UInt8]
    private var index = 0
    private var path: [PathElement] = []
    private(set) var findings: [Finding] = []
    /// When set, the fields whose string value is exactly this are collected in `holding`.
    private var searched: String?
    private var holding: [String] = []

    private enum PathElement {
        case key(String)
        case index(Int)
    }

    private struct Malformed: Error {}

    /// Everything wrong with `bytes`; empty when the body is fine (or not JSON at all).
    static func findings(in bytes: [UInt8]) -> [Finding] {
        var check = JSONBodyCheck(bytes: bytes)
        do {
            check.skipWhitespace()
            try check.value()
        } catch {
            // Unreadable JSON: the decoder's own 400 says so. Findings before the error still count.
        }
        return check.findings
    }

    /// The fields whose string value is `text` (to name the field a refused timestamp came from).
    static func fields(holding text: String, in bytes: [UInt8]) -> [String] {
        var check = JSONBodyCheck(bytes: bytes)
        check.searched = text
        check.skipWhitespace()
        try? check.value()
        return check.holding
    }

    private init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    /// `field.sub[2].name`, as the decoding problems spell fields; "body" for the whole document.
    private var field: String {
        var text = ""
        for element in path {
            switch element {
            case .key(let key): text += text.isEmpty ? key : ".\(key)"
            case .index(let index): text += "[\(index)]"
            }
        }
        return text.isEmpty ? "body" : text
    }

    private mutating func value() throws {
        guard index < bytes.count else { throw Malformed() }
        switch bytes[index] {
        case UInt8(ascii: "{"): try object()
        case UInt8(ascii: "["): try array()
        case UInt8(ascii: "\""):
            let start = index
            if try string() { findings.append(.nul(field: field)) }
            if let searched, Self.decodeString(Array(bytes[start..<index])) == searched { holding.append(field) }
        case UInt8(ascii: "n"):
            try literal("null")
            findings.append(.null(field: field))
        case UInt8(ascii: "t"): try literal("true")
        case UInt8(ascii: "f"): try literal("false")
        default: try number()
        }
    }

    private mutating func object() throws {
        index += 1
        skipWhitespace()
        if try peek() == UInt8(ascii: "}") {
            index += 1
            return
        }
        var keys = Set<String>()
        while true {
            skipWhitespace()
            guard try peek() == UInt8(ascii: "\"") else { throw Malformed() }
            let start = index
            let keyHasNUL = try string()
            // The key as written (escapes decoded by Foundation, cheap and exact).
            let key = Self.decodeString(Array(bytes[start..<index])) ?? String(decoding: bytes[(start + 1)..<(index - 1)], as: UTF8.self)
            path.append(.key(key))
            if !keys.insert(key).inserted { findings.append(.duplicateKey(field: field)) }
            if keyHasNUL { findings.append(.nul(field: field)) }
            skipWhitespace()
            guard try peek() == UInt8(ascii: ":") else { throw Malformed() }
            index += 1
            skipWhitespace()
            try value()
            path.removeLast()
            skipWhitespace()
            switch try peek() {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "}"):
                index += 1
                return
            default: throw Malformed()
            }
        }
    }

    private mutating func array() throws {
        index += 1
        skipWhitespace()
        if try peek() == UInt8(ascii: "]") {
            index += 1
            return
        }
        var position = 0
        while true {
            skipWhitespace()
            path.append(.index(position))
            try value()
            path.removeLast()
            position += 1
            skipWhitespace()
            switch try peek() {
            case UInt8(ascii: ","): index += 1
            case UInt8(ascii: "]"):
                index += 1
                return
            default: throw Malformed()
            }
        }
    }

    /// Skips a string (the index is on its opening quote); true when it holds a NUL, escaped or raw.
    private mutating func string() throws -> Bool {
        index += 1
        var hasNUL = false
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "\""):
                index += 1
                return hasNUL
            case UInt8(ascii: "\\"):
                guard index + 1 < bytes.count else { throw Malformed() }
                if bytes[index + 1] == UInt8(ascii: "u") {
                    guard index + 6 <= bytes.count else { throw Malformed() }
                    if bytes[(index + 2)..<(index + 6)].allSatisfy({ $0 == UInt8(ascii: "0") }) { hasNUL = true }
                    index += 6
                } else {
                    index += 2
                }
            case 0:
                hasNUL = true
                index += 1
            default:
                index += 1
            }
        }
        throw Malformed()
    }

    private static func decodeString(_ quoted: [UInt8]) -> String? {
        try? JSONDecoder().decode(String.self, from: Data(quoted))
    }

    private mutating func literal(_ word: String) throws {
        let expected = Array(word.utf8)
        guard index + expected.count <= bytes.count, bytes[index..<(index + expected.count)].elementsEqual(expected) else { throw Malformed() }
        index += expected.count
    }

    private mutating func number() throws {
        let start = index
        while index < bytes.count, "+-0123456789.eE".utf8.contains(bytes[index]) { index += 1 }
        if index == start { throw Malformed() }
    }

    private func peek() throws -> UInt8 {
        guard index < bytes.count else { throw Malformed() }
        return bytes[index]
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
    }
}
