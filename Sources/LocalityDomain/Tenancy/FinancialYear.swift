public import Foundation

/// A UK public-sector financial year, 1 April to 31 March, named like `2025-26`.
public struct FinancialYear: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let startYear: Int

    public init(startYear: Int) {
        self.startYear = startYear
    }

    /// Parses `2025-26`; nil for anything else (including `2025-27`).
    public init?(_ text: String) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, parts[0].count == 4, parts[1].count == 2,
            let start = Int(parts[0]), let end = Int(parts[1]), start >= 2000, start < 2100,
            (start + 1) % 100 == end
        else { return nil }
        startYear = start
    }

    /// The year containing `date` (UK civil date).
    public static func containing(_ date: Date) -> FinancialYear {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "Europe/London") ?? .gmt
        let parts = calendar.dateComponents([.year, .month], from: date)
        let year = parts.year ?? 2000
        return FinancialYear(startYear: (parts.month ?? 1) >= 4 ? year : year - 1)
    }

    public var description: String {
        "\(startYear)-\(String(format: "%02d", (startYear + 1) % 100))"
    }

    public static func < (lhs: FinancialYear, rhs: FinancialYear) -> Bool { lhs.startYear < rhs.startYear }
}
