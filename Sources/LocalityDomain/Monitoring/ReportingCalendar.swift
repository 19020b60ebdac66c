import Foundation

/// One reporting period of a KPI: what it covers and when its return is due.
public struct ReportingPeriod: Sendable, Equatable, Codable {
    public var label: String
    public var starts: String   // YYYY-MM-DD, inclusive
    public var ends: String     // YYYY-MM-DD, inclusive
    public var due: String
}

/// An authority's term dates for one academic year (September to August).
public struct TermDates: Sendable, Equatable {
    public struct Term: Sendable, Equatable {
        public var name: String     // autumn, spring, summer
        public var starts: String
        public var ends: String

        public init(name: String, starts: String, ends: String) {
            self.name = name
            self.starts = starts
            self.ends = ends
        }
    }

    public var academicYear: Int    // the calendar year it starts in: 2025 for 2025-26
    public var terms: [Term]

    public init(academicYear: Int, terms: [Term]) {
        self.academicYear = academicYear
        self.terms = terms
    }

    /// Typical English term dates, used when an authority has not set its own.
    public static func standard(_ year: Int) -> TermDates {
        TermDates(academicYear: year, terms: [
            Term(name: "autumn", starts: "\(year)-09-01", ends: "\(year)-12-31"),
            Term(name: "spring", starts: "\(year + 1)-01-01", ends: "\(year + 1)-04-14"),
            Term(name: "summer", starts: "\(year + 1)-04-15", ends: "\(year + 1)-08-31"),
        ])
    }
}

/// Generates a contract KPI's reporting calendar when the contract starts: monthly (calendar months), termly
/// (the authority's terms) or annual (years from the start), clipped to the contract's dates. A return is due
/// `dueAfterDays` after its period ends.
public enum ReportingCalendar {
    public static func periods(
        frequency: ReportingFrequency, contractStart: String, contractEnd: String, dueAfterDays: Int = 14,
        termDates: (Int) -> TermDates = { TermDates.standard($0) }
    ) -> [ReportingPeriod] {
        guard let start = CalendarDate.parse(contractStart), let end = CalendarDate.parse(contractEnd), start <= end else { return [] }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = .gmt
        var ranges: [(String, Date, Date)] = []
        switch frequency {
        case .monthly:
            var month = calendar.date(from: calendar.dateComponents([.year, .month], from: start))!
            while month <= end {
                let next = calendar.date(byAdding: .month, value: 1, to: month)!
                let parts = calendar.dateComponents([.year, .month], from: month)
                ranges.append((String(format: "%04d-%02d", parts.year!, parts.month!), month, calendar.date(byAdding: .day, value: -1, to: next)!))
                month = next
            }
        case .termly:
            let firstYear = calendar.component(.year, from: start) - 1
            let lastYear = calendar.component(.year, from: end)
            for year in firstYear...lastYear {
                let dates = termDates(year)
                for term in dates.terms {
                    guard let termStart = CalendarDate.parse(term.starts), let termEnd = CalendarDate.parse(term.ends) else { continue }
                    let label = "\(term.name) \(year)-\(String(format: "%02d", (year + 1) % 100))"
                    ranges.append((label, termStart, termEnd))
                }
            }
        case .annual:
            var yearStart = start
            var index = 1
            while yearStart <= end {
                let next = calendar.date(byAdding: .year, value: 1, to: yearStart)!
                ranges.append(("year \(index)", yearStart, calendar.date(byAdding: .day, value: -1, to: next)!))
                yearStart = next
                index += 1
            }
        }
        return ranges.compactMap { label, from, to in
            // Only periods that overlap the contract, clipped to it.
            guard to >= start, from <= end else { return nil }
            let clippedStart = max(from, start)
            let clippedEnd = min(to, end)
            let due = calendar.date(byAdding: .day, value: dueAfterDays, to: clippedEnd)!
            return ReportingPeriod(label: label, starts: CalendarDate.format(clippedStart), ends: CalendarDate.format(clippedEnd),
                                   due: CalendarDate.format(due))
        }
    }
}
