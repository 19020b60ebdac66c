import Foundation
@testable import LocalityDomain
import LocalityPostgres
import Testing

/// The bid's stored JSON, its audit records and its receipt are written with spelt-out snake-case keys and a plain
/// encoder (no key conversion) for speed; they must be byte for byte what the converting encoder wrote before, or
/// a receipt's canonical text, and the rows and audit events already stored, would change meaning.
@Suite("Snake-case coding keys")
struct SnakeCaseCodingKeysTests {
    let bid = Bid(
        id: UUID(uuidString: "0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0")!, authorityID: UUID(), projectID: UUID(uuidString: "11111111-2222-3333-4444-555555555555")!,
        supplierID: UUID(uuidString: "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE")!, supplierName: "Dales Learning CIC", status: .submitted, pricePence: 4_250_000,
        approach: "Outreach in every \"cluster\" / hub, then ⟨training⟩", outputs: "Termly reports",
        kpis: [ProposedKPI(title: "Staff trained", measure: "Staff completing the course", unit: .percentage, baseline: 12.5, target: 80,
                           targetDate: "2027-07-20", frequency: .termly, evidenceSource: "Attendance registers")],
        socialValue: [SocialValueCommitment(measureCode: "NT1", measureName: "Local employment", unit: "FTE", quantity: 1.5,
                                            proxyValuePence: 3_012_345)],
        declarations: BidDeclarations(acceptsTerms: true, informationAccurate: true, conflictsOfInterest: "None"),
        submittedAt: Date(timeIntervalSince1970: 1_795_000_000.123456), receiptSHA256: String(repeating: "ab", count: 32), version: 3,
        createdAt: Date(timeIntervalSince1970: 1_790_000_000), updatedAt: Date(timeIntervalSince1970: 1_795_000_000), outcomeNote: nil)

    /// The same members under the names Swift gives them, without spelt-out keys: what the converting encoder saw.
    struct ConvertedKPI: Encodable {
        var title: String, measure: String, unit: KPIUnit, baseline: Double, target: Double, targetDate: String
        var frequency: ReportingFrequency, evidenceSource: String
        init(_ k: ProposedKPI) {
            (title, measure, unit, baseline, target, targetDate, frequency, evidenceSource) =
                (k.title, k.measure, k.unit, k.baseline, k.target, k.targetDate, k.frequency, k.evidenceSource)
        }
    }
    struct ConvertedCommitment: Encodable {
        var measureCode: String, measureName: String, unit: String, quantity: Double, proxyValuePence: Int
        init(_ c: SocialValueCommitment) {
            (measureCode, measureName, unit, quantity, proxyValuePence) = (c.measureCode, c.measureName, c.unit, c.quantity, c.proxyValuePence)
        }
    }
    struct ConvertedDeclarations: Encodable {
        var acceptsTerms: Bool, informationAccurate: Bool, conflictsOfInterest: String
        init(_ d: BidDeclarations) { (acceptsTerms, informationAccurate, conflictsOfInterest) = (d.acceptsTerms, d.informationAccurate, d.conflictsOfInterest) }
    }

    func converted(_ value: some Encodable) throws -> String { String(decoding: try AuditLog.auditEncoder.encode(value), as: UTF8.self) }

    @Test func theStoredColumnsAreWhatTheConvertingEncoderWrote() throws {
        #expect(try BidService.plainJSON(bid.kpis) == converted(bid.kpis.map(ConvertedKPI.init)))
        #expect(try BidService.plainJSON(bid.socialValue) == converted(bid.socialValue.map(ConvertedCommitment.init)))
        #expect(try BidService.plainJSON(bid.declarations!) == converted(ConvertedDeclarations(bid.declarations!)))
        #expect(try BidService.plainJSON(bid.kpis).contains("\"evidence_source\":\"Attendance registers\""))
    }

    @Test func theStoredColumnsDecodeWithThePlainDecoder() throws {
        let kpis = try AuditLog.plainDecoder.decode([ProposedKPI].self, from: Data(converted(bid.kpis.map(ConvertedKPI.init)).utf8))
        let commitments = try AuditLog.plainDecoder.decode([SocialValueCommitment].self,
                                                           from: Data(converted(bid.socialValue.map(ConvertedCommitment.init)).utf8))
        let declarations = try AuditLog.plainDecoder.decode(BidDeclarations.self, from: Data(converted(ConvertedDeclarations(bid.declarations!)).utf8))
        #expect(kpis == bid.kpis && commitments == bid.socialValue && declarations == bid.declarations)
    }

    @Test func theAuditRecordIsWhatTheConvertingEncoderWrote() throws {
        struct ConvertedAuditedBid: Encodable {
            var id: UUID, projectID: UUID, status: BidStatus, version: Int, submittedAt: Date?, receiptSHA256: String?
        }
        let expected = try converted(ConvertedAuditedBid(id: bid.id, projectID: bid.projectID, status: bid.status, version: bid.version,
                                                         submittedAt: bid.submittedAt, receiptSHA256: bid.receiptSHA256))
        let bind = try AuditLog.jsonBind(AuditedBid(bid))
        #expect(bind.bytes.map { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) } == expected)
        #expect(expected.contains("\"receipt_sha256\":") && expected.contains("\"project_id\":"))
    }

    @Test func theReceiptsCanonicalTextIsWhatTheConvertingEncoderWrote() throws {
        struct ConvertedCanonical: Encodable {
            var bidID: String, projectID: String, supplierID: String, pricePence: Int?, approach: String, outputs: String
            var kpis: [ConvertedKPI], socialValue: [ConvertedCommitment], declarations: ConvertedDeclarations?, submittedAt: String
        }
        let expected = try converted(ConvertedCanonical(
            bidID: bid.id.lowercased, projectID: bid.projectID.lowercased, supplierID: bid.supplierID.lowercased, pricePence: bid.pricePence,
            approach: bid.approach, outputs: bid.outputs, kpis: bid.kpis.map(ConvertedKPI.init), socialValue: bid.socialValue.map(ConvertedCommitment.init),
            declarations: bid.declarations.map(ConvertedDeclarations.init), submittedAt: PGDateFormat.string(bid.submittedAt!)))
        #expect(BidService.receiptCanonical(bid) == expected)
        #expect(expected.hasPrefix("{\"approach\":") && expected.contains("\"bid_id\":\"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\""))
    }
}
