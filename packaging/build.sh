#!/usr/bin/env bash
# Builds the fleetwatch packages: a .deb and an .rpm each for fleetwatch-agent and
# fleetwatch-aggregator, into target/packages/ of the repository.
#
# Versions come from the workspace ([workspace.package] version in Cargo.toml); the package
# revision (deb "-N", rpm release N) is 1 unless --revision says otherwise.
#
#   packaging/build.sh [--no-build] [--deb-only | --rpm-only] [--revision N] [--out DIR] [--fast]
#
#   --no-build     package the release binaries already built (cargo build --release)
#   --deb-only     only the .deb packages;  --rpm-only: only the .rpm packages
#   --revision N   package revision (default 1); a higher one upgrades an installed package
#   --out DIR      where the packages go (default: <repo>/target/packages)
#   --fast         lighter .deb compression (quicker, larger; for tests)
#
# The binaries are built once (cargo build --release --locked) in CARGO_TARGET_DIR if set,
# otherwise in the workspace's target/. cargo-deb and cargo-generate-rpm are installed, at
# the versions pinned below, if they are missing.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
PACKAGES=(fleetwatch-agent fleetwatch-aggregator)

self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
cd "$repo"

build=1
want_deb=1
want_rpm=1
revision=1
out="$repo/target/packages"
deb_flags=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        --deb-only) want_rpm=0 ;;
        --rpm-only) want_deb=0 ;;
        --revision) revision=${2:?--revision needs a number}; shift ;;
        --out) out=${2:?--out needs a directory}; shift ;;
        --fast) deb_flags+=(--fast) ;;
        -h | --help) sed -n '2,18p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$revision" in
    '' | *[!0-9]*) echo "build.sh: --revision must be a number, got '$revision'" >&2; exit 2 ;;
esac

target_dir=${CARGO_TARGET_DIR:-$repo/target}
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac

# cargo-deb and cargo-generate-rpm at the pinned versions, installed only when missing or
# different (cargo install builds them from source: a few minutes, once per machine).
ensure_tool() {
    local crate=$1 version=$2 have
    have=$(cargo "${crate#cargo-}" --version 2>/dev/null | awk '{print $NF}' || true)
    if [ "$have" != "$version" ] && [ "$have" != "v$version" ]; then
        echo "build.sh: installing $crate $version (found: ${have:-none})"
        cargo install --locked "$crate@$version"
    fi
}
need_tools=()
[ "$want_deb" = 1 ] && need_tools+=(cargo-deb)
[ "$want_rpm" = 1 ] && need_tools+=(cargo-generate-rpm)
for tool in "${need_tools[@]}"; do
    case "$tool" in
        cargo-deb) ensure_tool cargo-deb "$CARGO_DEB_VERSION" ;;
        cargo-generate-rpm) ensure_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" ;;
    esac
done
if [ "$want_rpm" = 1 ] && ! command -v strip >/dev/null; then
    echo "build.sh: strip is missing (install binutils)" >&2
    exit 1
fi

if [ "$build" = 1 ]; then
    echo "build.sh: cargo build --release (target dir $target_dir)"
    cargo build --release --locked -p fleetwatch-agent -p fleetwatch-aggregator
fi
for pkg in "${PACKAGES[@]}"; do
    [ -x "$target_dir/release/$pkg" ] || {
        echo "build.sh: $target_dir/release/$pkg is missing; run without --no-build" >&2
        exit 1
    }
done

mkdir -p "$out"
version=$(cargo pkgid -p fleetwatch-agent | sed 's/.*[@#]//')

if [ "$want_deb" = 1 ]; then
    for pkg in "${PACKAGES[@]}"; do
        rm -f "$out/${pkg}_${version}-${revision}_"*.deb
        # cargo-deb takes the binary from the target dir and strips it into the package.
        cargo deb --locked --no-build -p "$pkg" --deb-revision "$revision" --output "$out/" \
            --quiet "${deb_flags[@]}"
    done
fi

if [ "$want_rpm" = 1 ]; then
    # cargo-generate-rpm packages binaries as they are: strip copies into a staging target dir
    # (its assets' target/release/ prefix is resolved against --target-dir).
    stage=$(mktemp -d "${TMPDIR:-/tmp}/fleetwatch-rpm.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage/release"
    for pkg in "${PACKAGES[@]}"; do
        strip -o "$stage/release/$pkg" "$target_dir/release/$pkg"
        rm -f "$out/$pkg-$version-$revision."*.rpm
        cargo generate-rpm -p "${pkg#fleetwatch-}" --target-dir "$stage" \
            -s "release = \"$revision\"" -o "$out/"
    done
fi

echo "build.sh: version $version-$revision, packages in $out:"
for pkg in "${PACKAGES[@]}"; do
    if [ "$want_deb" = 1 ]; then ls -1 "$out/${pkg}_${version}-${revision}_"*.deb; fi
    if [ "$want_rpm" = 1 ]; then ls -1 "$out/$pkg-$version-$revision."*.rpm; fi
done
exit 0
