public import Foundation
import LocalityPostgres

public struct PanelMember: Sendable, Codable, Equatable {
    public var userID: UUID
    public var displayName: String
}

public struct Bidder: Sendable, Codable, Equatable {
    public var supplierID: UUID
    public var supplierName: String
}

public struct ConflictDeclaration: Sendable, Codable, Equatable {
    public var userID: UUID
    public var supplierID: UUID
    public var conflicted: Bool
    public var note: String
    public var declaredAt: Date
}

public enum CriterionKind: String, Sendable, Codable { case quality, socialValue = "social_value" }

public struct CriterionScore: Sendable, Codable, Equatable {
    public var kind: CriterionKind
    public var criterion: String
    public var score: Int
    public var comment: String

    public init(kind: CriterionKind, criterion: String, score: Int, comment: String) {
        self.kind = kind
        self.criterion = criterion
        self.score = score
        self.comment = comment
    }
}

public struct MemberScores: Sendable, Equatable {
    public var userID: UUID
    public var submitted: Bool
    public var scores: [CriterionScore]
}

public struct EvaluationReport: Sendable {
    public struct Line: Sendable {
        public var bidID: UUID
        public var supplierID: UUID
        public var supplierName: String
        public var pricePence: Int
        public var compliant: Bool
        public var nonComplianceReason: String?
        public var submittedAt: Date
        public var moderated: [CriterionScore]
        public var individual: [MemberScores]
        public var scored: ScoredBid
    }

    public var projectID: UUID
    public var model: EvaluationModel
    public var lines: [Line]
}

/// Evaluation after the deadline: panel, conflict declarations, blind individual scoring, moderation,
/// compliance, the report, and the award.
public struct EvaluationService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    // MARK: Panel and declarations

    /// Names the panel (board members of the project's board); refused once anyone has declared.
    public func setPanel(_ scope: AccessScope, projectID: UUID, memberIDs: [UUID]) async throws -> [PanelMember] {
        try scope.require(scope.isStaff && scope.has(.lim), "name evaluation panels")
        return try await database.transaction(scope) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID, forUpdate: true)
            try ProjectService.requireOwnBoard(scope, project)
            guard [.open, .closed].contains(project.status) else { throw DomainError.conflict("The project is \(project.status.rawValue).") }
            let members = try await Self.boardMembers(connection, boardID: project.boardID)
            var validator = Validator()
            validator.check(!memberIDs.isEmpty, "member_ids", "name at least one board member")
            for (index, id) in memberIDs.enumerated() {
                validator.check(members.contains { $0.userID == id }, "member_ids[\(index)]", "is not a member of the project's board")
            }
            try validator.throwIfInvalid()
            let declared = try await connection.query("SELECT count(*) FROM conflict_declaration WHERE project_id = \(projectID)")
                .first!.decode(Int.self, at: 0)
            let before = try await Self.panel(connection, projectID: projectID)
            if declared > 0 { throw DomainError.conflict("Panel members have already declared; the panel cannot change.") }
            try await connection.query("DELETE FROM evaluation_panel_member WHERE project_id = \(projectID)")
            for id in Set(memberIDs) {
                try await connection.query("""
                    INSERT INTO evaluation_panel_member (authority_id, project_id, user_id) VALUES (app_authority_id(), \(projectID), \(id))
                    """)
            }
            let after = try await Self.panel(connection, projectID: projectID)
            try await AuditLog.record(connection, action: "evaluation.panel", entityType: "project", entityID: projectID.lowercased,
                                      before: ["panel": before.map(\.userID.lowercased)], after: ["panel": after.map(\.userID.lowercased)])
            return after
        }
    }

    public func panel(_ scope: AccessScope, projectID: UUID) async throws -> [PanelMember] {
        try scope.require(scope.isStaff, "see evaluation panels")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await ProjectService.fetch(connection, id: projectID)
            return try await Self.panel(connection, projectID: projectID)
        }
    }

    /// Who bid (names only), for panel members to declare conflicts before seeing any bid.
    public func bidders(_ scope: AccessScope, projectID: UUID) async throws -> [Bidder] {
        try scope.require(scope.isStaff, "see bidders")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await ProjectService.fetch(connection, id: projectID)
            return try await connection.query("SELECT supplier_id, supplier_name FROM project_bidders(\(projectID))").map { row in
                let (id, name) = try row.decode(UUID.self, String.self)
                return Bidder(supplierID: id, supplierName: name)
            }
        }
    }

    public func declare(_ scope: AccessScope, projectID: UUID, supplierID: UUID, conflicted: Bool, note: String) async throws -> ConflictDeclaration {
        try scope.require(scope.isStaff && scope.has(.boardMember), "declare conflicts of interest")
        var validator = Validator()
        validator.text(note, "note", required: conflicted, max: 2000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            _ = try await ProjectService.fetch(connection, id: projectID)
            let onPanel = try await Self.panel(connection, projectID: projectID).contains { $0.userID == scope.userID }
            guard onPanel else { throw DomainError.forbidden("Only members of this project's evaluation panel declare conflicts.") }
            let bidders = try await connection.query("SELECT supplier_id FROM project_bidders(\(projectID))").map { try $0.decode(UUID.self, at: 0) }
            guard bidders.contains(supplierID) else {
                throw DomainError.invalid("supplier_id", "is not a bidder on this project (or the deadline has not passed)")
            }
            do {
                try await connection.query("""
                    INSERT INTO conflict_declaration (authority_id, project_id, user_id, supplier_id, conflicted, note)
                    VALUES (app_authority_id(), \(projectID), app_user_id(), \(supplierID), \(conflicted), \(note))
                    """)
            } catch let error as PGError where error.isUniqueViolation {
                throw DomainError.stateConflict(type: "already-declared", "You have already declared for this supplier; declarations are final.")
            }
            let declaration = ConflictDeclaration(userID: scope.userID!, supplierID: supplierID, conflicted: conflicted, note: note, declaredAt: Date())
            try await AuditLog.record(connection, action: "evaluation.declare", entityType: "conflict_declaration",
                                      entityID: "\(projectID.lowercased)/\(scope.userID!.lowercased)/\(supplierID.lowercased)",
                                      before: nil, after: declaration)
            return declaration
        }
    }

    public func declarations(_ scope: AccessScope, projectID: UUID) async throws -> [ConflictDeclaration] {
        try scope.require(scope.isStaff, "see declarations")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await ProjectService.fetch(connection, id: projectID)
            return try await connection.query("""
                SELECT user_id, supplier_id, conflicted, note, declared_at FROM conflict_declaration
                WHERE project_id = \(projectID) ORDER BY declared_at, user_id, supplier_id
                """).map { row in
                let (user, supplier, conflicted, note, at) = try row.decode(UUID.self, UUID.self, Bool.self, String.self, Date.self)
                return ConflictDeclaration(userID: user, supplierID: supplier, conflicted: conflicted, note: note, declaredAt: at)
            }
        }
    }

    // MARK: Scoring

    /// Saves the member's scores for a bid (while their scorecard is open); each needs a comment.
    public func saveScores(_ scope: AccessScope, bidID: UUID, _ scores: [CriterionScore], submit: Bool) async throws -> MemberScores {
        try scope.require(scope.isStaff && scope.has(.boardMember), "score bids")
        return try await database.transaction(scope) { connection in
            let bid = try await BidService.fetch(connection, id: bidID)   // RLS: only if declared no conflict
            guard try await connection.query("SELECT app_may_evaluate(\(bid.authorityID), \(bid.projectID), \(bid.supplierID))")
                .first!.decode(Bool.self, at: 0)
            else { throw DomainError.notFound("bid") }
            let project = try await ProjectService.fetch(connection, id: bid.projectID)
            guard project.status == .closed, let model = project.evaluation else {
                throw DomainError.conflict("Scoring is open only between the deadline and the award.")
            }
            try Self.validate(scores, model: model, requireAll: submit)
            // The member's scorecard row is the lock for their saves and submit: create it if missing (a
            // concurrent save may be creating it too), then lock it and check it under the lock. Two saves
            // apply one after the other; of two submits the second sees the first and hears 409.
            try await connection.query("""
                INSERT INTO scorecard (authority_id, bid_id, user_id) VALUES (app_authority_id(), \(bidID), app_user_id())
                ON CONFLICT (authority_id, bid_id, user_id) DO NOTHING
                """)
            let submitted = try await connection.query("""
                SELECT submitted_at IS NOT NULL FROM scorecard WHERE bid_id = \(bidID) AND user_id = app_user_id() FOR UPDATE
                """).first?.decode(Bool.self, at: 0)
            if submitted == true {
                throw DomainError.stateConflict(type: "already-submitted", "Your scores for this bid are submitted and final.")
            }
            for score in scores {
                try await connection.query("""
                    INSERT INTO individual_score (authority_id, bid_id, user_id, criterion_kind, criterion, score, comment)
                    VALUES (app_authority_id(), \(bidID), app_user_id(), \(score.kind.rawValue)::criterion_kind, \(score.criterion),
                            \(score.score), \(score.comment))
                    ON CONFLICT (authority_id, bid_id, user_id, criterion_kind, criterion)
                    DO UPDATE SET score = EXCLUDED.score, comment = EXCLUDED.comment, updated_at = now()
                    """)
            }
            if submit {
                let count = try await connection.query("""
                    SELECT count(*) FROM individual_score WHERE bid_id = \(bidID) AND user_id = app_user_id()
                    """).first!.decode(Int.self, at: 0)
                let needed = model.qualityCriteria.count + model.socialValueCriteria.count
                guard count == needed else {
                    throw DomainError.invalid("scores", "score every criterion (\(needed)) before submitting; \(count) scored")
                }
                try await connection.query("""
                    UPDATE individual_score SET submitted = true WHERE bid_id = \(bidID) AND user_id = app_user_id()
                    """)
                try await connection.query("""
                    UPDATE scorecard SET submitted_at = now() WHERE bid_id = \(bidID) AND user_id = app_user_id()
                    """)
            }
            let mine = try await Self.memberScores(connection, bidID: bidID).first { $0.userID == scope.userID }
                ?? MemberScores(userID: scope.userID!, submitted: false, scores: [])
            try await AuditLog.record(connection, action: submit ? "evaluation.score.submit" : "evaluation.score", entityType: "bid",
                                      entityID: bidID.lowercased, before: nil,
                                      after: ["user_id": scope.userID!.lowercased, "criteria": String(scores.count), "submitted": String(submit)])
            return mine
        }
    }

    /// The individual scores for a bid that the caller may see: their own, and others' once they submitted.
    public func scores(_ scope: AccessScope, bidID: UUID) async throws -> [MemberScores] {
        try scope.require(scope.isStaff, "see scores")
        return try await database.transaction(scope, readOnly: true) { connection in
            _ = try await BidService.fetch(connection, id: bidID)
            return try await Self.memberScores(connection, bidID: bidID)
        }
    }

    public func moderate(_ scope: AccessScope, bidID: UUID, _ score: CriterionScore) async throws -> [CriterionScore] {
        try scope.require(scope.isStaff && scope.has(.lim), "moderate scores")
        return try await database.transaction(scope) { connection in
            let bid = try await BidService.fetch(connection, id: bidID)
            let project = try await ProjectService.fetch(connection, id: bid.projectID)
            try ProjectService.requireOwnBoard(scope, project)
            guard project.status == .closed, let model = project.evaluation else {
                throw DomainError.conflict("Moderation is open only between the deadline and the award.")
            }
            var validator = Validator()
            Self.check(score, model: model, field: "score", into: &validator)
            try validator.throwIfInvalid()
            let before = try await Self.moderated(connection, bidID: bidID)
            try await connection.query("""
                INSERT INTO moderated_score (authority_id, bid_id, criterion_kind, criterion, score, rationale, recorded_by)
                VALUES (app_authority_id(), \(bidID), \(score.kind.rawValue)::criterion_kind, \(score.criterion), \(score.score),
                        \(score.comment), current_setting('app.actor'))
                ON CONFLICT (authority_id, bid_id, criterion_kind, criterion)
                DO UPDATE SET score = EXCLUDED.score, rationale = EXCLUDED.rationale, recorded_by = EXCLUDED.recorded_by, recorded_at = now()
                """)
            let after = try await Self.moderated(connection, bidID: bidID)
            try await AuditLog.record(connection, action: "evaluation.moderate", entityType: "bid", entityID: bidID.lowercased,
                                      before: before, after: after)
            return after
        }
    }

    public func setCompliance(_ scope: AccessScope, bidID: UUID, compliant: Bool, reason: String?) async throws -> Bid {
        try scope.require(scope.isStaff && scope.has(.lim), "judge compliance")
        var validator = Validator()
        validator.text(reason, "reason", required: !compliant, max: 2000)
        try validator.throwIfInvalid()
        return try await database.transaction(scope) { connection in
            let bid = try await BidService.fetch(connection, id: bidID)
            let project = try await ProjectService.fetch(connection, id: bid.projectID)
            try ProjectService.requireOwnBoard(scope, project)
            guard project.status == .closed else { throw DomainError.conflict("Compliance is judged between the deadline and the award.") }
            try await connection.query("""
                UPDATE bid SET compliant = \(compliant), non_compliance_reason = CASE WHEN \(compliant) THEN NULL ELSE \(reason) END
                WHERE id = \(bidID)
                """)
            try await AuditLog.record(connection, action: compliant ? "evaluation.compliant" : "evaluation.non_compliant",
                                      entityType: "bid", entityID: bidID.lowercased, before: nil,
                                      after: ["compliant": String(compliant), "reason": reason ?? ""])
            return try await BidService.fetch(connection, id: bidID)
        }
    }

    // MARK: Report

    /// The board's LIMs and the auditor: every submitted bid with its scores, totals and rank.
    public func report(_ scope: AccessScope, projectID: UUID) async throws -> EvaluationReport {
        try scope.require(scope.isStaff && scope.hasAny(.lim, .auditor), "see evaluation reports")
        return try await database.transaction(scope, readOnly: true) { connection in
            let project = try await ProjectService.fetch(connection, id: projectID)
            if scope.has(.lim) && !scope.has(.auditor) { try ProjectService.requireOwnBoard(scope, project) }
            return try await Self.report(connection, project: project)
        }
    }

    static func report(_ connection: PGConnection, project: Project) async throws -> EvaluationReport {
        guard let model = project.evaluation else { throw DomainError.conflict("The project has no evaluation model.") }
        let rows = try await connection.query("""
            SELECT b.id, b.supplier_id, s.name, b.price_pence, b.compliant, b.non_compliance_reason, b.submitted_at
            FROM bid b JOIN supplier s ON s.id = b.supplier_id
            WHERE b.project_id = \(project.id) AND b.status NOT IN ('draft', 'withdrawn')
            ORDER BY b.submitted_at, b.id
            """)
        let bids = try rows.map { try $0.decode(UUID.self, UUID.self, String.self, Int.self, Bool.self, String?.self, Date.self) }
        // Every bid's scores in two statements, not two per bid (issue 14: 2 + 2N round trips before).
        let bidIDs = bids.map(\.0)
        let moderatedByBid = try await moderated(connection, bidIDs: bidIDs)
        let individualByBid = try await memberScores(connection, bidIDs: bidIDs)
        var lines: [EvaluationReport.Line] = []
        var inputs: [ScoringInput] = []
        for (id, supplierID, name, price, compliant, reason, submittedAt) in bids {
            let moderated = moderatedByBid[id] ?? []
            let individual = individualByBid[id] ?? []
            inputs.append(ScoringInput(
                bidID: id, pricePence: price, compliant: compliant, submittedAt: submittedAt,
                quality: Dictionary(moderated.filter { $0.kind == .quality }.map { ($0.criterion, $0.score) }, uniquingKeysWith: { a, _ in a }),
                socialValue: Dictionary(moderated.filter { $0.kind == .socialValue }.map { ($0.criterion, $0.score) }, uniquingKeysWith: { a, _ in a })))
            lines.append(EvaluationReport.Line(
                bidID: id, supplierID: supplierID, supplierName: name, pricePence: price, compliant: compliant,
                nonComplianceReason: reason, submittedAt: submittedAt, moderated: moderated, individual: individual,
                scored: ScoredBid(bidID: id, priceScore: 0, rank: nil, compliant: compliant)))
        }
        let scored = Scoring.score(inputs, model: model)
        for index in lines.indices { lines[index].scored = scored[index] }
        lines.sort { ($0.scored.rank ?? Int.max, $0.submittedAt) < ($1.scored.rank ?? Int.max, $1.submittedAt) }
        return EvaluationReport(projectID: project.id, model: model, lines: lines)
    }

    /// The report as CSV: one row per bid.
    public static func csv(_ report: EvaluationReport) -> String {
        var header = ["rank", "supplier", "bid_id", "price_pence", "compliant", "price_score"]
        header += report.model.qualityCriteria.map { "quality: \($0.name)" } + ["quality_score"]
        header += report.model.socialValueCriteria.map { "social value: \($0.name)" } + ["social_value_score", "total"]
        var lines = [header.map(csvField).joined(separator: ",")]
        for line in report.lines {
            func moderated(_ kind: CriterionKind, _ name: String) -> String {
                line.moderated.first { $0.kind == kind && $0.criterion == name }.map { String($0.score) } ?? ""
            }
            var fields = [line.scored.rank.map(String.init) ?? "", line.supplierName, line.bidID.lowercased, String(line.pricePence),
                          line.compliant ? "yes" : "no", Scoring.display(line.scored.priceScore) ?? ""]
            fields += report.model.qualityCriteria.map { moderated(.quality, $0.name) } + [Scoring.display(line.scored.qualityScore) ?? ""]
            fields += report.model.socialValueCriteria.map { moderated(.socialValue, $0.name) }
            fields += [Scoring.display(line.scored.socialValueScore) ?? "", Scoring.display(line.scored.total) ?? ""]
            lines.append(fields.map(csvField).joined(separator: ","))
        }
        return lines.joined(separator: "\r\n") + "\r\n"
    }

    static func csvField(_ text: String) -> String {
        // Quote when needed, and defuse spreadsheet formulas (CSV injection, OWASP's list: = + - @ TAB CR).
        // By scalar: "\r\n" is one Character, which a Character comparison would miss.
        var value = text
        if let first = value.unicodeScalars.first, "=+-@\t\r".unicodeScalars.contains(first), Double(value) == nil { value = "'" + value }
        guard value.contains(where: { ",\"\r\n".contains($0) }) else { return value }
        return "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    // MARK: Helpers

    static func boardMembers(_ connection: PGConnection, boardID: UUID) async throws -> [PanelMember] {
        try await connection.query("SELECT user_id, display_name FROM board_members(\(boardID))").map { row in
            let (id, name) = try row.decode(UUID.self, String.self)
            return PanelMember(userID: id, displayName: name)
        }
    }

    static func panel(_ connection: PGConnection, projectID: UUID) async throws -> [PanelMember] {
        try await connection.query("""
            SELECT m.user_id, coalesce(b.display_name, '') FROM evaluation_panel_member m
            JOIN project p ON p.authority_id = m.authority_id AND p.id = m.project_id
            LEFT JOIN board_members(p.board_id) b ON b.user_id = m.user_id
            WHERE m.project_id = \(projectID) ORDER BY 2, 1
            """).map { row in
            let (id, name) = try row.decode(UUID.self, String.self)
            return PanelMember(userID: id, displayName: name)
        }
    }

    /// Scores grouped by member, as far as the caller may see them (own; peers' once submitted).
    static func memberScores(_ connection: PGConnection, bidID: UUID) async throws -> [MemberScores] {
        let rows = try await connection.query("""
            SELECT user_id, criterion_kind::text, criterion, score, comment, submitted FROM individual_score WHERE bid_id = \(bidID)
            ORDER BY user_id, criterion_kind, criterion
            """).map { try $0.decode(UUID.self, String.self, String.self, Int.self, String.self, Bool.self) }
        var members: [MemberScores] = []
        for row in rows {
            let score = CriterionScore(kind: try storedEnum(row.1, column: "individual_score.criterion_kind"), criterion: row.2, score: row.3, comment: row.4)
            if let index = members.firstIndex(where: { $0.userID == row.0 }) {
                members[index].scores.append(score)
            } else {
                members.append(MemberScores(userID: row.0, submitted: row.5, scores: [score]))
            }
        }
        return members
    }

    /// `memberScores` of several bids in one statement, by bid.
    static func memberScores(_ connection: PGConnection, bidIDs: [UUID]) async throws -> [UUID: [MemberScores]] {
        let rows = try await connection.query("""
            SELECT bid_id, user_id, criterion_kind::text, criterion, score, comment, submitted FROM individual_score WHERE bid_id = ANY (\(bidIDs))
            ORDER BY bid_id, user_id, criterion_kind, criterion
            """).map { try $0.decode(UUID.self, UUID.self, String.self, String.self, Int.self, String.self, Bool.self) }
        var byBid: [UUID: [MemberScores]] = [:]
        for row in rows {
            let score = CriterionScore(kind: try storedEnum(row.2, column: "individual_score.criterion_kind"), criterion: row.3, score: row.4, comment: row.5)
            var members = byBid[row.0] ?? []
            if let index = members.firstIndex(where: { $0.userID == row.1 }) {
                members[index].scores.append(score)
            } else {
                members.append(MemberScores(userID: row.1, submitted: row.6, scores: [score]))
            }
            byBid[row.0] = members
        }
        return byBid
    }

    /// `moderated` of several bids in one statement, by bid.
    static func moderated(_ connection: PGConnection, bidIDs: [UUID]) async throws -> [UUID: [CriterionScore]] {
        var byBid: [UUID: [CriterionScore]] = [:]
        for row in try await connection.query("""
            SELECT bid_id, criterion_kind::text, criterion, score, rationale FROM moderated_score WHERE bid_id = ANY (\(bidIDs))
            ORDER BY bid_id, criterion_kind, criterion
            """) {
            let (bid, kind, criterion, score, rationale) = try row.decode(UUID.self, String.self, String.self, Int.self, String.self)
            byBid[bid, default: []].append(
                CriterionScore(kind: try storedEnum(kind, column: "moderated_score.criterion_kind"), criterion: criterion, score: score, comment: rationale))
        }
        return byBid
    }

    static func moderated(_ connection: PGConnection, bidID: UUID) async throws -> [CriterionScore] {
        try await connection.query("""
            SELECT criterion_kind::text, criterion, score, rationale FROM moderated_score WHERE bid_id = \(bidID)
            ORDER BY criterion_kind, criterion
            """).map { row in
            let (kind, criterion, score, rationale) = try row.decode(String.self, String.self, Int.self, String.self)
            return CriterionScore(kind: try storedEnum(kind, column: "moderated_score.criterion_kind"), criterion: criterion, score: score, comment: rationale)
        }
    }

    static func validate(_ scores: [CriterionScore], model: EvaluationModel, requireAll: Bool) throws {
        var validator = Validator()
        for (index, score) in scores.enumerated() { check(score, model: model, field: "scores[\(index)]", into: &validator) }
        try validator.throwIfInvalid()
    }

    static func check(_ score: CriterionScore, model: EvaluationModel, field: String, into validator: inout Validator) {
        let names = (score.kind == .quality ? model.qualityCriteria : model.socialValueCriteria).map(\.name)
        validator.check(names.contains(score.criterion), "\(field).criterion", "is not a \(score.kind.rawValue) criterion of this project")
        validator.check((0...5).contains(score.score), "\(field).score", "must be 0 (unacceptable) to 5 (excellent)")
        validator.text(score.comment, "\(field).comment", max: 4000)
    }
}
