import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Runs a helper program (initdb, pg_ctl) and waits for it without blocking a Swift concurrency thread.
///
/// Not Foundation's `Process`: it notices a child's exit through a descriptor the child inherits, and the
/// postmaster that `pg_ctl start` leaves running would hold that descriptor, so the wait would never end.
/// Here the child gets only stdin (/dev/null) and stdout/stderr (a temporary file); `waitpid` runs on a
/// thread of its own. The child starts with no blocked signals and default handlers: threads of a Swift
/// process block signals, and a child inheriting that mask would never see, say, pgbench's SIGALRM.
public enum ProcessRunner {
    public struct Output: Sendable {
        public let status: Int32
        public let text: String
    }

    public static func run(_ executable: String, _ arguments: [String]) async throws -> Output {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("locality-\(UUID().uuidString).out").path
        defer { unlink(outputPath) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
        guard spawned == 0 else {
            throw EmbeddedPostgresError("cannot run \(executable): \(String(cString: strerror(spawned)))")
        }
        let childPID = pid
        let status: Int32 = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var status: Int32 = 0
                while waitpid(childPID, &status, 0) == -1 && errno == EINTR {}
                // WIFEXITED / WEXITSTATUS, spelled out because the C macros are not imported.
                let exited = status & 0x7f == 0
                continuation.resume(returning: exited ? (status >> 8) & 0xff : 128 + (status & 0x7f))
            }
        }
        let text = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return Output(status: status, text: text)
    }
}
