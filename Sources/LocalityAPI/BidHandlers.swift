import Foundation
import LocalityDomain

extension APIHandlers {
    func listBids(_ input: Operations.ListBids.Input) async throws -> Operations.ListBids.Output {
        let bids = try await services.bids.list(try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"))
        return .ok(.init(body: .json(.init(items: bids.map(Components.Schemas.Bid.init)))))
    }

    func createBid(_ input: Operations.CreateBid.Input) async throws -> Operations.CreateBid.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let bid = try await services.bids.create(
            try Authenticated.scope(), projectID: try pathID(input.path.projectId, "project"), try Self.content(body))
        return .created(.init(headers: .init(location: "/v1/bids/\(bid.id.lowercased)"), body: .json(Self.offer(bid))))
    }

    func getBid(_ input: Operations.GetBid.Input) async throws -> Operations.GetBid.Output {
        let bid = try await services.bids.get(try Authenticated.scope(), id: try pathID(input.path.bidId, "bid"))
        return .ok(.init(body: .json(Self.offer(bid))))
    }

    func updateBid(_ input: Operations.UpdateBid.Input) async throws -> Operations.UpdateBid.Output {
        guard case .json(let body) = input.body else { throw APIProblem.unsupportedMediaType }
        let bid = try await services.bids.update(try Authenticated.scope(), id: try pathID(input.path.bidId, "bid"), try Self.content(body))
        return .ok(.init(body: .json(Self.offer(bid))))
    }

    func submitBid(_ input: Operations.SubmitBid.Input) async throws -> Operations.SubmitBid.Output {
        let (bid, receipt) = try await services.bids.submit(try Authenticated.scope(), id: try pathID(input.path.bidId, "bid"))
        let submission = Components.Schemas.BidSubmission(
            bid: .init(bid), receipt: .init(bidId: receipt.bidID.lowercased, submittedAt: receipt.submittedAt, sha256: receipt.sha256,
                                 canonical: receipt.canonical))
        return .ok(.init(body: .json(PreEncodedBody.offer(submission, standIn: .init(bid: .standIn, receipt: submission.receipt)))))
    }

    func withdrawBid(_ input: Operations.WithdrawBid.Input) async throws -> Operations.WithdrawBid.Output {
        let bid = try await services.bids.withdraw(try Authenticated.scope(), id: try pathID(input.path.bidId, "bid"))
        return .ok(.init(body: .json(Self.offer(bid))))
    }

    /// A bid as its answer, encoded in one pass (`PreEncodedBody`: its KPIs and commitments are most of it).
    static func offer(_ bid: Bid) -> Components.Schemas.Bid {
        PreEncodedBody.offer(.init(bid), standIn: .standIn)
    }

    static func content(_ body: Components.Schemas.BidContent) throws -> BidContent {
        BidContent(
            pricePence: try body.pricePence.map { value in
                guard let pence = Int(exactly: value) else { throw DomainError.invalid("price_pence", "is out of range") }
                return pence
            },
            approach: body.approach, outputs: body.outputs,
            kpis: body.kpis?.map { kpi in
                ProposedKPI(title: kpi.title, measure: kpi.measure, unit: KPIUnit(rawValue: kpi.unit.rawValue) ?? .count,
                            baseline: kpi.baseline, target: kpi.target, targetDate: kpi.targetDate,
                            frequency: ReportingFrequency(rawValue: kpi.frequency.rawValue) ?? .termly, evidenceSource: kpi.evidenceSource)
            },
            socialValue: body.socialValue?.map { .init(measureCode: $0.measureCode, quantity: $0.quantity) },
            declarations: body.declarations.map {
                BidDeclarations(acceptsTerms: $0.acceptsTerms, informationAccurate: $0.informationAccurate, conflictsOfInterest: $0.conflictsOfInterest)
            })
    }
}

extension Components.Schemas.Bid {
    /// What the generated layer encodes in place of a bid offered to `PreEncodedBody` (never sent).
    static let standIn = Self(
        id: "", projectId: "", supplierId: "", supplierName: "", status: .draft, approach: "", outputs: "", kpis: [], socialValue: [],
        version: 0, createdAt: Date(timeIntervalSince1970: 0), updatedAt: Date(timeIntervalSince1970: 0))

    init(_ bid: Bid) {
        self.init(
            id: bid.id.lowercased, projectId: bid.projectID.lowercased, supplierId: bid.supplierID.lowercased, supplierName: bid.supplierName,
            status: Components.Schemas.BidStatus(rawValue: bid.status.rawValue) ?? .draft, pricePence: bid.pricePence.map(Int64.init),
            approach: bid.approach, outputs: bid.outputs,
            kpis: bid.kpis.map { kpi in
                .init(title: kpi.title, measure: kpi.measure, unit: .init(rawValue: kpi.unit.rawValue) ?? .count, baseline: kpi.baseline,
                      target: kpi.target, targetDate: kpi.targetDate, frequency: .init(rawValue: kpi.frequency.rawValue) ?? .termly,
                      evidenceSource: kpi.evidenceSource)
            },
            socialValue: bid.socialValue.map {
                .init(measureCode: $0.measureCode, measureName: $0.measureName, unit: $0.unit, quantity: $0.quantity,
                      proxyValuePence: Int64($0.proxyValuePence))
            },
            declarations: bid.declarations.map {
                .init(acceptsTerms: $0.acceptsTerms, informationAccurate: $0.informationAccurate, conflictsOfInterest: $0.conflictsOfInterest)
            },
            submittedAt: bid.submittedAt, receiptSha256: bid.receiptSHA256, outcomeNote: bid.outcomeNote, version: bid.version,
            createdAt: bid.createdAt,
            updatedAt: bid.updatedAt)
    }
}
