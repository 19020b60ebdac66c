public import Foundation
import LocalityPostgres

public struct Supplier: Sendable, Codable, Equatable {
    public var id: UUID
    public var name: String
    public var createdAt: Date
}

/// Supplier organisations (global, not tenants). Registration and admission arrive with the marketplace;
/// for now the operator creates them (demo data, tests).
public struct SupplierService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    /// Creates an organisation and its first user, in the supplier's own audit chain.
    public func createWithUser(name: String, userEmail: String, userName: String, osUser: String = OperatorIdentity.osUser) async throws -> (Supplier, User) {
        var validator = Validator()
        validator.text(name, "name", max: 200)
        try validator.throwIfInvalid()
        try UserService.validate(email: userEmail, displayName: userName, roles: nil)
        let id = UUID()
        return try await database.transaction(.operatorScope(supplierID: id, osUser: osUser)) { connection in
            let (supplierID, supplierName, createdAt) = try await connection.query("""
                INSERT INTO supplier (id, name) VALUES (\(id), \(name)) RETURNING id, name, created_at
                """).first!.decode(UUID.self, String.self, Date.self)
            let supplier = Supplier(id: supplierID, name: supplierName, createdAt: createdAt)
            try await AuditLog.record(connection, action: "supplier.create", entityType: "supplier", entityID: id.lowercased,
                                      before: nil, after: supplier)
            let userID = try await connection.query("""
                INSERT INTO app_user (supplier_id, email, display_name) VALUES (\(id), \(userEmail), \(userName)) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            let user = try await UserService.fetch(connection, id: userID)
            try await AuditLog.record(connection, action: "user.create", entityType: "user", entityID: userID.lowercased,
                                      before: nil, after: user)
            return (supplier, user)
        }
    }

    public func get(_ scope: AccessScope) async throws -> Supplier? {
        guard scope.supplierID != nil else { return nil }
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("SELECT id, name, created_at FROM supplier WHERE id = app_supplier_id()").first.map { row in
                let (id, name, createdAt) = try row.decode(UUID.self, String.self, Date.self)
                return Supplier(id: id, name: name, createdAt: createdAt)
            }
        }
    }
}
