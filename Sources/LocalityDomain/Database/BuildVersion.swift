/// The version of this build, reported by `--version` of both executables and by `/readyz`, and used by
/// `deploy/build-release.sh` to name the release tarball. Raise it when a release is cut.
public enum BuildVersion {
    public static let current = "0.16.0"
}
