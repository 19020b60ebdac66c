import LocalityPostgres

/// Reads a stored enum value into its Swift enum, or throws a decoding error naming the column.
///
/// A value the code does not know means the database and the code disagree (a migration added a value this
/// build does not have, or a row was written by hand): reading it as some default (`draft`, `pending`,
/// `board`…) would silently show a wrong state and let the wrong transitions through. It fails the request
/// instead, as a server error that names the column and the value.
func storedEnum<E: RawRepresentable>(_ raw: String, column: String, as type: E.Type = E.self) throws -> E where E.RawValue == String {
    guard let value = E(rawValue: raw) else {
        throw PGError(kind: .decoding, message: "column \(column): unknown \(E.self) value \"\(raw)\"", column: column)
    }
    return value
}

/// As `storedEnum`, for a nullable column.
func storedEnum<E: RawRepresentable>(_ raw: String?, column: String, as type: E.Type = E.self) throws -> E? where E.RawValue == String {
    try raw.map { try storedEnum($0, column: column, as: E.self) }
}
