#!/usr/bin/env bash
# Builds the relocatable release tarball: dist/locality-<version>-linux-<arch>.tar.gz
#
#   deploy/build-release.sh            # release build (Swift runtime linked statically) + tarball
#   deploy/build-release.sh --no-build # package what .build/release already holds
#
# Layout inside the tarball (unpack anywhere, e.g. /opt/locality):
#   bin/locality-server, bin/locality-admin       executables, Swift runtime and Foundation linked in
#   bin/*.resources/                              resource bundles (the OpenAPI document), found beside the executable
#   SQL/migrations/                               found as <bin>/../SQL/migrations from any working directory
#   deploy/                                       systemd units, README.md, SCALING.md
#   etc/server.env.example                        the environment file the units read
# The host needs glibc and libpq (apt install libpq5); PostgreSQL server binaries only for the embedded mode.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
[[ "${1:-}" == "--no-build" ]] && build=0

version=$(sed -n 's/.*static let current = "\(.*\)".*/\1/p' Sources/LocalityDomain/Database/BuildVersion.swift)
arch=$(uname -m)
name="locality-${version}-linux-${arch}"

if (( build )); then
    swift build -c release --static-swift-stdlib --product locality-server
    swift build -c release --static-swift-stdlib --product locality-admin
fi
bin=$(swift build -c release --static-swift-stdlib --show-bin-path)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/SQL" "$root/deploy" "$root/etc"
install -m 0755 "$bin/locality-server" "$bin/locality-admin" "$root/bin/"
for bundle in "$bin"/*.resources; do
    [[ -d "$bundle" ]] && cp -R "$bundle" "$root/bin/"
done
cp -R SQL/migrations "$root/SQL/"
cp deploy/*.service deploy/*.timer deploy/README.md deploy/SCALING.md "$root/deploy/"
cp deploy/server.env.example "$root/etc/server.env.example"
cp README.md "$root/"
printf '%s\n' "$version" > "$root/VERSION"

# Refuse a tarball that would fail an operator: the executables must not need the Swift toolchain's libraries.
for exe in "$root"/bin/locality-*; do
    [[ -f "$exe" && -x "$exe" ]] || continue
    if ldd "$exe" | grep -E 'libswiftCore|libFoundation|not found'; then
        echo "build-release: $exe still needs Swift runtime libraries or misses a library (above)" >&2
        exit 1
    fi
done

mkdir -p dist
tar -C "$stage" -czf "dist/$name.tar.gz" "$name"
echo "dist/$name.tar.gz"
