public import Foundation
import LocalityPostgres

public struct Supplier: Sendable, Codable, Equatable {
    public var id: UUID
    public var name: String
    public var companiesHouseNumber: String?
    public var charityNumber: String?
    public var address: String
    public var contactName: String
    public var contactEmail: String
    public var contactPhone: String
    public var createdAt: Date
}

public struct SupplierRegistration: Sendable {
    public var name: String
    public var companiesHouseNumber: String?
    public var charityNumber: String?
    public var address: String
    public var contactName: String
    public var contactEmail: String
    public var contactPhone: String
    public var userEmail: String
    public var userName: String

    public init(name: String, companiesHouseNumber: String?, charityNumber: String?, address: String, contactName: String,
                contactEmail: String, contactPhone: String, userEmail: String, userName: String) {
        self.name = name
        self.companiesHouseNumber = companiesHouseNumber
        self.charityNumber = charityNumber
        self.address = address
        self.contactName = contactName
        self.contactEmail = contactEmail
        self.contactPhone = contactPhone
        self.userEmail = userEmail
        self.userName = userName
    }
}

public struct RegisteredSupplier: Sendable {
    public var supplier: Supplier
    public var user: User
    public var token: IssuedToken
}

/// Supplier organisations: global, not tenants. They register themselves (the first user gets a token);
/// authorities see them once they apply for admission.
public struct SupplierService: Sendable {
    public let database: ScopedDatabase

    public init(database: ScopedDatabase) {
        self.database = database
    }

    static let columns = """
        id, name, companies_house_number, charity_number, address, contact_name, contact_email, contact_phone, created_at
        """

    /// Public self-registration: the organisation, its first user and that user's token, in one transaction
    /// in the new supplier's own context (and audit chain).
    public func register(_ registration: SupplierRegistration, requestID: String?) async throws -> RegisteredSupplier {
        try Self.validate(registration)
        let supplierID = UUID()
        let userID = UUID()
        let scope = AccessScope(authorityID: nil, supplierID: supplierID, userID: userID, roles: [.supplierUser], boardIDs: [],
                                actor: "user:\(userID.lowercased)", requestID: requestID)
        let (prefix, plaintext) = TokenFormat.generate()
        return try await database.transaction(scope) { connection in
            let supplier = try await Self.insertSupplier(connection, id: supplierID, registration)
            try await connection.query("""
                INSERT INTO app_user (id, supplier_id, email, display_name)
                VALUES (\(userID), \(supplierID), \(registration.userEmail), \(registration.userName))
                """)
            let user = try await UserService.fetch(connection, id: userID)
            try await AuditLog.record(connection, action: "user.create", entityType: "user", entityID: userID.lowercased,
                                      before: nil, after: user)
            let token = try TokenService.decode(try await connection.query("""
                INSERT INTO api_token (supplier_id, user_id, prefix, token_hash, label, expires_at)
                VALUES (\(supplierID), \(userID), \(prefix), \(TokenFormat.hash(plaintext)), 'registration',
                        \(Date() + TokenService.defaultLifetime))
                RETURNING \(unsafeSQL: TokenService.columns)
                """).first!)
            try await AuditLog.record(connection, action: "token.issue", entityType: "api_token", entityID: token.id.lowercased,
                                      before: nil, after: token)
            return RegisteredSupplier(supplier: supplier, user: user, token: IssuedToken(token: token, secret: plaintext))
        }
    }

    /// Creates an organisation and its first user as the operator (demo data, tests).
    public func createWithUser(name: String, userEmail: String, userName: String, osUser: String = OperatorIdentity.osUser) async throws -> (Supplier, User) {
        let registration = SupplierRegistration(
            name: name, companiesHouseNumber: nil, charityNumber: nil, address: "", contactName: userName,
            contactEmail: userEmail, contactPhone: "", userEmail: userEmail, userName: userName)
        var validator = Validator()
        validator.text(name, "name", max: 200)
        try validator.throwIfInvalid()
        try UserService.validate(email: userEmail, displayName: userName, roles: nil)
        let id = UUID()
        return try await database.transaction(.operatorScope(supplierID: id, osUser: osUser)) { connection in
            let supplier = try await Self.insertSupplier(connection, id: id, registration)
            let userID = try await connection.query("""
                INSERT INTO app_user (supplier_id, email, display_name) VALUES (\(id), \(userEmail), \(userName)) RETURNING id
                """).first!.decode(UUID.self, at: 0)
            let user = try await UserService.fetch(connection, id: userID)
            try await AuditLog.record(connection, action: "user.create", entityType: "user", entityID: userID.lowercased,
                                      before: nil, after: user)
            return (supplier, user)
        }
    }

    static func insertSupplier(_ connection: PGConnection, id: UUID, _ registration: SupplierRegistration) async throws -> Supplier {
        let supplier = try decode(try await connection.query("""
            INSERT INTO supplier (id, name, companies_house_number, charity_number, address, contact_name, contact_email, contact_phone)
            VALUES (\(id), \(registration.name), \(registration.companiesHouseNumber), \(registration.charityNumber),
                    \(registration.address), \(registration.contactName), \(registration.contactEmail), \(registration.contactPhone))
            RETURNING \(unsafeSQL: columns)
            """).first!)
        try await AuditLog.record(connection, action: "supplier.create", entityType: "supplier", entityID: id.lowercased,
                                  before: nil, after: supplier)
        return supplier
    }

    /// The caller's own organisation (supplier users).
    public func get(_ scope: AccessScope) async throws -> Supplier? {
        guard scope.supplierID != nil else { return nil }
        return try await database.transaction(scope, readOnly: true) { connection in
            try await connection.query("SELECT \(unsafeSQL: Self.columns) FROM supplier WHERE id = app_supplier_id()").first.map(Self.decode)
        }
    }

    static func validate(_ registration: SupplierRegistration) throws {
        var validator = Validator()
        validator.text(registration.name, "name", max: 200)
        validator.check(registration.companiesHouseNumber != nil || registration.charityNumber != nil, "companies_house_number",
                        "give a Companies House number or a charity number")
        if let number = registration.companiesHouseNumber {
            validator.check(number.isWholeMatch(of: "^([0-9]{8}|[A-Z]{2}[0-9]{6})$"),
                            "companies_house_number", "must be 8 digits, or 2 capital letters and 6 digits (e.g. SC123456)")
        }
        if let number = registration.charityNumber {
            validator.check(number.isWholeMatch(of: "^[0-9]{6,8}(-[0-9]{1,2})?$"),
                            "charity_number", "must be a registered charity number (6–8 digits)")
        }
        validator.text(registration.address, "address", max: 500)
        validator.text(registration.contactName, "contact_name", max: 200)
        validator.check(isEmail(registration.contactEmail), "contact_email", "must be an email address")
        validator.text(registration.contactPhone, "contact_phone", required: false, max: 40)
        validator.check(isEmail(registration.userEmail), "user_email", "must be an email address")
        validator.text(registration.userName, "user_name", max: 200)
        try validator.throwIfInvalid()
    }

    static func decode(_ row: PGRow) throws -> Supplier {
        let (id, name, companies, charity, address, contactName, contactEmail, contactPhone, createdAt) = try row.decode(
            UUID.self, String.self, String?.self, String?.self, String.self, String.self, String.self, String.self, Date.self)
        return Supplier(id: id, name: name, companiesHouseNumber: companies, charityNumber: charity, address: address,
                        contactName: contactName, contactEmail: contactEmail, contactPhone: contactPhone, createdAt: createdAt)
    }
}

func isEmail(_ text: String) -> Bool {
    text.count <= 254 && text.isWholeMatch(of: #"^[^@\s]+@[^@\s]+\.[^@\s]+$"#)
}
