import Foundation
import LocalityDomain
import Testing

@Suite("Reporting calendars and RAG")
struct MonitoringRulesTests {
    @Test func monthlyPeriodsAreClippedToTheContract() {
        let periods = ReportingCalendar.periods(frequency: .monthly, contractStart: "2025-10-15", contractEnd: "2026-01-10")
        #expect(periods.map(\.label) == ["2025-10", "2025-11", "2025-12", "2026-01"])
        #expect(periods.first?.starts == "2025-10-15" && periods.first?.ends == "2025-10-31" && periods.first?.due == "2025-11-14")
        #expect(periods.last?.ends == "2026-01-10")
    }

    /// Termly periods follow the authority's term dates across academic-year boundaries.
    @Test func termlyPeriodsCrossAcademicYears() {
        let custom: (Int) -> TermDates = { year in
            TermDates(academicYear: year, terms: [
                .init(name: "autumn", starts: "\(year)-09-03", ends: "\(year)-12-19"),
                .init(name: "spring", starts: "\(year + 1)-01-06", ends: "\(year + 1)-03-28"),
                .init(name: "summer", starts: "\(year + 1)-04-14", ends: "\(year + 1)-07-22"),
            ])
        }
        let periods = ReportingCalendar.periods(frequency: .termly, contractStart: "2026-02-01", contractEnd: "2026-12-31", termDates: custom)
        #expect(periods.map(\.label) == ["spring 2025-26", "summer 2025-26", "autumn 2026-27"])
        #expect(periods[0].starts == "2026-02-01" && periods[0].ends == "2026-03-28")
        #expect(periods[1].starts == "2026-04-14" && periods[1].due == "2026-08-05")
        #expect(periods[2].starts == "2026-09-03" && periods[2].ends == "2026-12-19")
    }

    @Test func annualPeriodsRunFromTheStart() {
        let periods = ReportingCalendar.periods(frequency: .annual, contractStart: "2025-09-01", contractEnd: "2027-03-31")
        #expect(periods.map(\.ends) == ["2026-08-31", "2027-03-31"])
    }

    let start = CalendarDate.parse("2025-09-01")!
    let targetDate = CalendarDate.parse("2026-07-01")!   // 303 days later
    var midpoint: Date { CalendarDate.parse("2026-01-30")! }   // 151 days: expected 40 + 20 × 151/303

    /// Baseline 40 → target 60: exactly on the line is Green; a hair below, Amber; exactly at 80% of the
    /// expected progress, Amber; below it, Red.
    @Test func ragAtItsEdges() {
        let expected = RAG.expected(baseline: 40, target: 60, start: start, targetDate: targetDate, at: midpoint)
        #expect(expected == Decimal(40) + Decimal(20) * Decimal(151) / Decimal(303))
        func rate(_ actual: Decimal) -> RAGRating {
            RAG.rate(actual: actual, baseline: 40, target: 60, start: start, targetDate: targetDate, periodEnd: midpoint)
        }
        #expect(rate(expected) == .green)
        #expect(rate(expected - Decimal(string: "0.0001")!) == .amber)
        let atTolerance = Decimal(40) + (expected - 40) * Decimal(string: "0.8")!
        #expect(rate(atTolerance) == .amber)
        #expect(rate(atTolerance - Decimal(string: "0.0001")!) == .red)
        // A falling target (exclusions 30 → 10): lower is better.
        // At the target date 80% of the expected fall (20) is 16: 14 is Amber, 15 Red.
        #expect(RAG.rate(actual: 14, baseline: 30, target: 10, start: start, targetDate: targetDate, periodEnd: targetDate) == .amber)
        #expect(RAG.rate(actual: 15, baseline: 30, target: 10, start: start, targetDate: targetDate, periodEnd: targetDate) == .red)
        #expect(RAG.rate(actual: 10, baseline: 30, target: 10, start: start, targetDate: targetDate, periodEnd: targetDate) == .green)
        #expect(RAG.rate(actual: 60, baseline: 40, target: 60, start: start, targetDate: targetDate, periodEnd: targetDate, contractCompleted: true) == .blue)
        #expect(RAGRating.amber.procurementActLevel == "Approaching target")
    }

    @Test func percentagesUseNumeratorOverDenominatorAndRefuseZero() throws {
        #expect(try RAG.actual(.fraction(numerator: 3, denominator: 4)) == 75)
        #expect(throws: RAG.Problem.zeroDenominator) { try RAG.actual(.fraction(numerator: 0, denominator: 0)) }
        #expect(throws: RAG.Problem.negativeFigure) { try RAG.actual(.fraction(numerator: -1, denominator: 4)) }
    }

    @Test func correctiveActionTriggers() {
        #expect(RAG.needsCorrectiveAction(ratings: [.green, .red], overdue: false))
        #expect(RAG.needsCorrectiveAction(ratings: [.amber, .amber], overdue: false))
        #expect(!RAG.needsCorrectiveAction(ratings: [.amber, .green, .amber], overdue: false))
        #expect(RAG.needsCorrectiveAction(ratings: [], overdue: true))
        #expect(!RAG.needsCorrectiveAction(ratings: [.green], overdue: false))
    }
}
