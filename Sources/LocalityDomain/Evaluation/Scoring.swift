public import Foundation

/// One bid as the scoring rules see it.
public struct ScoringInput: Sendable, Equatable {
    public var bidID: UUID
    public var pricePence: Int
    public var compliant: Bool
    public var submittedAt: Date
    /// Moderated scores (0–5) by criterion name.
    public var quality: [String: Int]
    public var socialValue: [String: Int]

    public init(bidID: UUID, pricePence: Int, compliant: Bool, submittedAt: Date, quality: [String: Int], socialValue: [String: Int]) {
        self.bidID = bidID
        self.pricePence = pricePence
        self.compliant = compliant
        self.submittedAt = submittedAt
        self.quality = quality
        self.socialValue = socialValue
    }
}

public struct ScoredBid: Sendable, Equatable {
    public var bidID: UUID
    /// Nil while a moderated score is missing (and, for price, for a non-compliant bid: 0).
    public var priceScore: Decimal
    public var qualityScore: Decimal?
    public var socialValueScore: Decimal?
    public var total: Decimal?
    /// 1 = best; nil for non-compliant or incompletely moderated bids.
    public var rank: Int?
    public var compliant: Bool
}

/// The scoring rules, exactly: decimal arithmetic (never binary floating point), rounded only for display.
///
/// price = lowest compliant price ÷ bid price × price weight (0 for a non-compliant bid);
/// quality = Σ moderated ÷ 5 × criterion weight; social value likewise; total = their sum (out of 100).
/// Ranking: total, then quality, then earlier submission; only compliant, fully moderated bids are ranked.
public enum Scoring {
    public static func score(_ bids: [ScoringInput], model: EvaluationModel) -> [ScoredBid] {
        let lowest = bids.filter(\.compliant).map(\.pricePence).min()
        var scored = bids.map { bid -> (ScoredBid, Date) in
            var price = Decimal(0)
            if bid.compliant, let lowest, bid.pricePence > 0 {
                price = Decimal(lowest) / Decimal(bid.pricePence) * Decimal(model.priceWeight)
            }
            let quality = weighted(bid.quality, model.qualityCriteria)
            let social = weighted(bid.socialValue, model.socialValueCriteria)
            var total: Decimal?
            if let quality, let social { total = price + quality + social }
            return (ScoredBid(bidID: bid.bidID, priceScore: price, qualityScore: quality, socialValueScore: social, total: total,
                              rank: nil, compliant: bid.compliant), bid.submittedAt)
        }
        let rankable = scored.indices.filter { scored[$0].0.compliant && scored[$0].0.total != nil }
        let ordered = rankable.sorted { a, b in
            let (x, y) = (scored[a], scored[b])
            if x.0.total! != y.0.total! { return x.0.total! > y.0.total! }
            if x.0.qualityScore! != y.0.qualityScore! { return x.0.qualityScore! > y.0.qualityScore! }
            if x.1 != y.1 { return x.1 < y.1 }
            return x.0.bidID.uuidString < y.0.bidID.uuidString
        }
        for (position, index) in ordered.enumerated() { scored[index].0.rank = position + 1 }
        return scored.map(\.0)
    }

    static func weighted(_ scores: [String: Int], _ criteria: [EvaluationModel.Criterion]) -> Decimal? {
        var sum = Decimal(0)
        for criterion in criteria {
            guard let score = scores[criterion.name] else { return nil }
            sum += Decimal(score) / 5 * Decimal(criterion.weight)
        }
        return sum
    }

    /// Two decimal places, half up: "71.43".
    public static func display(_ value: Decimal?) -> String? {
        guard var value else { return nil }
        var rounded = Decimal()
        NSDecimalRound(&rounded, &value, 2, .plain)
        let formatter = NumberFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.minimumFractionDigits = 2
        formatter.maximumFractionDigits = 2
        formatter.minimumIntegerDigits = 1
        return formatter.string(from: NSDecimalNumber(decimal: rounded))
    }
}
