public import Foundation

/// One page of a list, with the opaque cursor for the next (nil on the last page).
public struct Page<Item: Sendable>: Sendable {
    public var items: [Item]
    public var nextCursor: String?

    public init(items: [Item], nextCursor: String?) {
        self.items = items
        self.nextCursor = nextCursor
    }
}

/// Keyset pagination: a cursor is the sort key of the last item returned, base64url-encoded so clients
/// treat it as opaque. Stable under inserts, unlike offsets.
public struct PageRequest: Sendable {
    public static let defaultLimit = 50
    public static let maxLimit = 200

    public var limit: Int
    /// The decoded sort key of the last item of the previous page.
    public var after: [String]?

    public init(limit: Int? = nil, cursor: String? = nil) throws {
        var validator = Validator()
        let limit = limit ?? Self.defaultLimit
        validator.check((1...Self.maxLimit).contains(limit), "limit", "must be between 1 and \(Self.maxLimit)")
        var after: [String]?
        if let cursor {
            after = Self.decode(cursor)
            validator.check(after != nil, "cursor", "is not a cursor this service issued")
        }
        try validator.throwIfInvalid()
        self.limit = limit
        self.after = after
    }

    public static func encode(_ key: [String]) -> String {
        let data = (try? JSONEncoder().encode(key)) ?? Data()
        return data.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func decode(_ cursor: String) -> [String]? {
        var base64 = cursor.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard cursor.count <= 512, let data = Data(base64Encoded: base64) else { return nil }
        return try? JSONDecoder().decode([String].self, from: data)
    }

    /// Builds the page from up to `limit + 1` rows fetched in order.
    public func page<Item>(_ rows: [Item], key: (Item) -> [String]) -> Page<Item> {
        guard rows.count > limit else { return Page(items: rows, nextCursor: nil) }
        let items = Array(rows.prefix(limit))
        return Page(items: items, nextCursor: items.last.map { Self.encode(key($0)) })
    }
}

extension UUID {
    /// The all-zero UUID: sorts before every generated id, so it starts a keyset scan.
    public static let zero = UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))

    /// The lowercase text form used in JSON, audit entity ids and actors.
    public var lowercased: String { uuidString.lowercased() }
}
