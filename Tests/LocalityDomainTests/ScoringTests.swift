import Foundation
import LocalityDomain
import Testing

@Suite("Scoring")
struct ScoringTests {
    let model = EvaluationModel(
        priceWeight: 40, qualityWeight: 45, socialValueWeight: 15,
        qualityCriteria: [.init(name: "Approach", weight: 30), .init(name: "Outcomes", weight: 15)],
        socialValueCriteria: [.init(name: "Local", weight: 15)])
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    func bid(_ n: UInt8, price: Int, compliant: Bool = true, approach: Int, outcomes: Int, local: Int, at offset: TimeInterval = 0) -> ScoringInput {
        ScoringInput(bidID: UUID(uuid: (n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), pricePence: price, compliant: compliant,
                     submittedAt: t0 + offset, quality: ["Approach": approach, "Outcomes": outcomes], socialValue: ["Local": local])
    }

    /// A worked example, by hand (weights: price 40, quality 30 + 15, social value 15):
    ///   A £90,000:  price 70,000/90,000×40 = 31.111… → 31.11; quality 4/5×30 + 3/5×15 = 33.00; social 3/5×15 = 9.00; total 73.11
    ///   B £70,000:  price 40.00 (the lowest); quality 3/5×30 + 3/5×15 = 27.00; social 2/5×15 = 6.00; total 73.00
    ///   C £105,000: price 70,000/105,000×40 = 26.666… → 26.67; quality 45.00; social 15.00; total 86.67
    @Test func workedExampleToTheHundredth() {
        let scored = Scoring.score([
            bid(1, price: 9_000_000, approach: 4, outcomes: 3, local: 3),
            bid(2, price: 7_000_000, approach: 3, outcomes: 3, local: 2),
            bid(3, price: 10_500_000, approach: 5, outcomes: 5, local: 5),
        ], model: model)
        #expect(scored.map { Scoring.display($0.priceScore) } == ["31.11", "40.00", "26.67"])
        #expect(scored.map { Scoring.display($0.qualityScore) } == ["33.00", "27.00", "45.00"])
        #expect(scored.map { Scoring.display($0.socialValueScore) } == ["9.00", "6.00", "15.00"])
        #expect(scored.map { Scoring.display($0.total) } == ["73.11", "73.00", "86.67"])
        #expect(scored.map(\.rank) == [2, 3, 1])
    }

    /// A non-compliant bid is excluded from price scoring: the lowest *compliant* price sets the scale, and
    /// the non-compliant bid is not ranked.
    @Test func nonCompliantLowestPriceIsExcluded() {
        let scored = Scoring.score([
            bid(1, price: 5_000_000, compliant: false, approach: 5, outcomes: 5, local: 5),
            bid(2, price: 8_000_000, approach: 3, outcomes: 3, local: 3),
            bid(3, price: 10_000_000, approach: 3, outcomes: 3, local: 3),
        ], model: model)
        #expect(Scoring.display(scored[0].priceScore) == "0.00")
        #expect(scored[0].rank == nil)
        #expect(Scoring.display(scored[1].priceScore) == "40.00")
        #expect(Scoring.display(scored[2].priceScore) == "32.00")
        #expect(scored[1].rank == 1 && scored[2].rank == 2)
    }

    /// Ties: equal totals are broken by quality, then by earlier submission.
    @Test func tiesBreakOnQualityThenSubmissionTime() {
        // Same price, same total, different split: B has more quality.
        let byQuality = Scoring.score([
            bid(1, price: 5_000_000, approach: 3, outcomes: 3, local: 5),   // quality 27, social 15 → 82
            bid(2, price: 5_000_000, approach: 4, outcomes: 4, local: 2),   // quality 36, social 6 → 82
        ], model: model)
        #expect(byQuality[0].total == byQuality[1].total)
        #expect(byQuality.map(\.rank) == [2, 1])
        let bySubmission = Scoring.score([
            bid(1, price: 5_000_000, approach: 3, outcomes: 3, local: 3, at: 60),
            bid(2, price: 5_000_000, approach: 3, outcomes: 3, local: 3, at: 0),
        ], model: model)
        #expect(bySubmission.map(\.rank) == [2, 1])
    }

    /// Exact decimals: thirds of weights never drift (binary floating point would give 0.30000000000000004-style totals).
    @Test func decimalArithmeticIsExact() {
        let model = EvaluationModel(priceWeight: 30, qualityWeight: 60, socialValueWeight: 10,
                                    qualityCriteria: [.init(name: "Approach", weight: 60)], socialValueCriteria: [.init(name: "Local", weight: 10)])
        let scored = Scoring.score([
            ScoringInput(bidID: UUID(), pricePence: 3, compliant: true, submittedAt: t0, quality: ["Approach": 1], socialValue: ["Local": 1]),
            ScoringInput(bidID: UUID(), pricePence: 9, compliant: true, submittedAt: t0, quality: ["Approach": 1], socialValue: ["Local": 1]),
        ], model: model)
        #expect(scored[0].total == Decimal(30) + Decimal(12) + Decimal(2))
        #expect(Scoring.display(scored[1].priceScore) == "10.00")
        #expect(Scoring.display(scored[1].total) == "24.00")
    }

    @Test func incompleteModerationIsNotRanked() {
        var partial = bid(1, price: 5_000_000, approach: 3, outcomes: 3, local: 3)
        partial.quality.removeValue(forKey: "Outcomes")
        let scored = Scoring.score([partial, bid(2, price: 6_000_000, approach: 1, outcomes: 1, local: 1)], model: model)
        #expect(scored[0].total == nil && scored[0].rank == nil)
        #expect(scored[1].rank == 1)
    }
}
