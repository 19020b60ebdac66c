public import Foundation

/// Red / Amber / Green, with White (nothing due yet) and Blue (target met, contract completed).
public enum RAGRating: String, Sendable, Codable, CaseIterable {
    case white, green, amber, red, blue

    /// The Procurement Act 2023 performance levels, for export.
    public var procurementActLevel: String? {
        switch self {
        case .green, .blue: "Good"
        case .amber: "Approaching target"
        case .red: "Requires improvement"
        case .white: nil
        }
    }
}

/// A return's figure: a count or score, or a percentage as numerator and denominator.
public enum ReturnValue: Sendable, Equatable {
    case number(Decimal)
    case fraction(numerator: Decimal, denominator: Decimal)
}

/// The RAG rule, with exact decimal arithmetic. The expected value lies on the straight line from the
/// baseline (at the contract's start) to the target (at the target date). Green when the actual is on or
/// ahead of it; Amber when the progress made is at least `amberThresholdPercent` of the progress expected;
/// Red below. Targets may go down as well as up (fewer exclusions): "ahead" follows the target's direction.
public enum RAG {
    public enum Problem: Error, Equatable {
        case zeroDenominator
        case negativeFigure
    }

    public static func actual(_ value: ReturnValue) throws -> Decimal {
        switch value {
        case .number(let number):
            return number
        case .fraction(let numerator, let denominator):
            guard denominator != 0 else { throw Problem.zeroDenominator }
            guard numerator >= 0, denominator > 0 else { throw Problem.negativeFigure }
            return numerator / denominator * 100
        }
    }

    /// The expected value at `date` (clamped to the line's ends).
    public static func expected(baseline: Decimal, target: Decimal, start: Date, targetDate: Date, at date: Date) -> Decimal {
        let total = targetDate.timeIntervalSince(start)
        guard total > 0 else { return target }
        let elapsed = min(max(date.timeIntervalSince(start), 0), total)
        // Whole days keep the fraction exact and independent of clock skew within a day.
        let elapsedDays = Decimal(Int((elapsed / 86_400).rounded()))
        let totalDays = Decimal(Int((total / 86_400).rounded()))
        return baseline + (target - baseline) * elapsedDays / totalDays
    }

    public static func rate(
        actual: Decimal, baseline: Decimal, target: Decimal, start: Date, targetDate: Date, periodEnd: Date,
        amberThresholdPercent: Int = 80, contractCompleted: Bool = false
    ) -> RAGRating {
        let rising = target >= baseline
        func atLeast(_ a: Decimal, _ b: Decimal) -> Bool { rising ? a >= b : a <= b }
        if contractCompleted && atLeast(actual, target) { return .blue }
        let expected = expected(baseline: baseline, target: target, start: start, targetDate: targetDate, at: periodEnd)
        if atLeast(actual, expected) { return .green }
        let expectedProgress = expected - baseline
        let progress = actual - baseline
        // progress / expectedProgress ≥ threshold, without dividing (expectedProgress is non-zero here).
        let threshold = Decimal(amberThresholdPercent) / 100
        let ratioMet = rising ? progress >= expectedProgress * threshold : progress <= expectedProgress * threshold
        return ratioMet ? .amber : .red
    }

    /// A corrective action plan opens on a Red, on two Ambers in a row, or on an overdue return.
    public static func needsCorrectiveAction(ratings: [RAGRating], overdue: Bool) -> Bool {
        if overdue { return true }
        guard let last = ratings.last else { return false }
        if last == .red { return true }
        return ratings.suffix(2) == [.amber, .amber]
    }
}
