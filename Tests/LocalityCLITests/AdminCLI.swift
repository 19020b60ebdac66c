import Foundation
import PostgresTestSupport
import Testing

/// Runs the built `locality-admin` executable as a subprocess.
///
/// The binary is not a dependency of this test target (SwiftPM cannot express "build this executable
/// before the tests"); `swift build --build-tests` and `swift test` build every product, so it is expected
/// next to the test bundle, normally `.build/debug/locality-admin`. Set `LOCALITY_ADMIN_BINARY` to use
/// another one.
enum AdminCLI {
    struct Result: Sendable, CustomStringConvertible {
        var status: Int32
        var stdout: String
        var stderr: String

        var stdoutLines: [String] { stdout.split(separator: "\n").map(String.init) }
        var stderrLines: [String] { stderr.split(separator: "\n").map(String.init) }

        var description: String { "exit \(status)\n--- stdout\n\(stdout)--- stderr\n\(stderr)" }

        /// stdout parsed as JSON.
        func json() throws -> Any {
            try JSONSerialization.jsonObject(with: Data(stdout.utf8))
        }
    }

    struct BinaryMissing: Error, CustomStringConvertible {
        var searched: [String]
        var description: String {
            "locality-admin binary not found (looked in \(searched.joined(separator: ", "))); build it first with "
                + "`swift build --build-tests` (it is expected at .build/debug/locality-admin), or set LOCALITY_ADMIN_BINARY"
        }
    }

    static func binary() throws -> String {
        let fileManager = FileManager.default
        if let explicit = ProcessInfo.processInfo.environment["LOCALITY_ADMIN_BINARY"], !explicit.isEmpty {
            guard fileManager.isExecutableFile(atPath: explicit) else { throw BinaryMissing(searched: [explicit]) }
            return explicit
        }
        var candidates: [String] = []
        // The products directory holds the test bundle too; on macOS the runner sits a few levels inside it.
        if var directory = Bundle.main.executableURL?.deletingLastPathComponent() {
            for _ in 0..<4 {
                candidates.append(directory.appendingPathComponent("locality-admin").path)
                directory.deleteLastPathComponent()
            }
        }
        // <package>/Tests/LocalityCLITests/AdminCLI.swift → <package>/.build/debug/locality-admin
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(packageRoot.appendingPathComponent(".build/debug/locality-admin").path)
        guard let found = candidates.first(where: { fileManager.isExecutableFile(atPath: $0) }) else {
            throw BinaryMissing(searched: candidates)
        }
        return found
    }

    /// Runs `locality-admin <arguments>` against `database` (both roles' conninfo strings are passed).
    static func run(_ arguments: [String], database: TestDatabase, timeout: Duration = .seconds(120)) async throws -> Result {
        try await run(arguments + [
            "--database-url", database.applicationConninfo, "--owner-database-url", database.ownerConninfo,
        ], timeout: timeout)
    }

    /// Runs `locality-admin <arguments>`, capturing stdout and stderr separately (through files, so a large
    /// output cannot fill a pipe and stall the child).
    static func run(_ arguments: [String], timeout: Duration = .seconds(120), currentDirectory: URL? = nil) async throws -> Result {
        let executable = try binary()
        let directory = FileManager.default.temporaryDirectory
        let stdoutURL = directory.appendingPathComponent("locality-admin-\(UUID().uuidString).out")
        let stderrURL = directory.appendingPathComponent("locality-admin-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: stdoutURL)
            try? FileManager.default.removeItem(at: stderrURL)
        }
        let stdoutHandle = try FileHandle(forWritingTo: stdoutURL)
        let stderrHandle = try FileHandle(forWritingTo: stderrURL)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let currentDirectory { process.currentDirectoryURL = currentDirectory }
        // Only what the test passes: no LOCALITY_* settings from the environment running the tests.
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("LOCALITY_") }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdoutHandle
        process.standardError = stderrHandle

        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { finished in
                continuation.resume(returning: finished.terminationStatus)
            }
            do {
                try process.run()
            } catch {
                process.terminationHandler = nil
                continuation.resume(throwing: error)
                return
            }
            let seconds = Double(timeout.components.seconds)
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [process] in
                if process.isRunning { process.terminate() }
            }
        }
        try? stdoutHandle.close()
        try? stderrHandle.close()
        return Result(
            status: status,
            stdout: (try? String(contentsOf: stdoutURL, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOf: stderrURL, encoding: .utf8)) ?? ""
        )
    }
}

/// Fails the test with the command's output unless it exited 0.
@discardableResult
func expectSuccess(_ result: AdminCLI.Result, sourceLocation: SourceLocation = #_sourceLocation) -> AdminCLI.Result {
    #expect(result.status == 0, "\(result)", sourceLocation: sourceLocation)
    return result
}
