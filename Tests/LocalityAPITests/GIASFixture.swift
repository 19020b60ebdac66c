import Foundation

/// Builds GIAS all-establishments CSV files in the real format: the real header (139 columns), quoted
/// fields, Windows-1252 bytes, DD-MM-YYYY dates.
enum GIASFixture {
    static let header: [String] = {
        // A copy of the DfE header (public reference data), kept with the tests so CI needs nothing outside the repo.
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/gias-header.csv")
        let data = (try? Data(contentsOf: url)) ?? Data()
        let text = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return text.split(separator: ",").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "\"")) }
    }()

    struct School {
        var urn: String
        var la = "815"
        var name: String
        var status = "Open"
        var phase = "Primary"
        var district = "Northshire"
        var openDate = "01-09-1990"
        var closeDate = ""
        var postcode = "BD23 1AA"
    }

    static func row(_ school: School) -> [String] {
        var fields = [String](repeating: "", count: header.count)
        func set(_ column: String, _ value: String) {
            if let index = header.firstIndex(of: column) { fields[index] = value }
        }
        set("URN", school.urn)
        set("LA (code)", school.la)
        set("LA (name)", "North Yorkshire")
        set("EstablishmentName", school.name)
        set("TypeOfEstablishment (name)", "Community school")
        set("EstablishmentStatus (name)", school.status)
        set("OpenDate", school.openDate)
        set("CloseDate", school.closeDate)
        set("PhaseOfEducation (name)", school.phase)
        set("DistrictAdministrative (name)", school.district)
        set("AdministrativeWard (name)", "Skipton West")
        set("ParliamentaryConstituency (name)", "Skipton and Ripon")
        set("Postcode", school.postcode)
        return fields
    }

    /// The file's bytes in Windows-1252; `extraLines` are appended verbatim (for malformed rows).
    static func file(_ schools: [School], extraLines: [String] = []) -> Data {
        var lines = [header.map(quote).joined(separator: ",")]
        lines += schools.map { row($0).map(quote).joined(separator: ",") }
        lines += extraLines
        let text = lines.joined(separator: "\r\n") + "\r\n"
        return text.data(using: .windowsCP1252) ?? Data(text.utf8)
    }

    static func quote(_ value: String) -> String { "\"" + value.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
}
