#!/usr/bin/env bash
# Runs the whole test suite (both tiers: see docs/testing.md), installing
# the Debian packages it needs first.
#
# Tests that need root, kernel erofs, loop devices or FUSE skip with a loud
# "SKIPPED" line when those are missing; with EROFS_FUSE_REQUIRE_PRIVILEGED=1
# (as CI sets) they fail instead. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian package for each program the tests run.
declare -A package=(
    [mkfs.erofs]=erofs-utils
    [fusermount3]=fuse3
    [python3]=python3
    [tar]=tar
    [veritysetup]=cryptsetup-bin
    [losetup]=mount
    [mount]=mount
    [setpriv]=util-linux
    [prlimit]=util-linux
    [useradd]=passwd
    [/usr/bin/time]=time
    [docker-registry]=docker-registry
    [skopeo]=skopeo
    [openssl]=openssl
)
missing=()
for program in "${!package[@]}"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("${package[$program]}")
done
# The rootless tests walk mounts as nobody with Debian's own python3.
[ -x /usr/bin/python3 ] || missing+=(python3)
if ((${#missing[@]})); then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "test.sh: missing packages (install them, or run as root): ${missing[*]}" >&2
    fi
fi

# Kernel pieces the privileged tests use; harmless when built in or absent.
if [ "$(id -u)" -eq 0 ]; then
    modprobe -q erofs 2>/dev/null || true
    modprobe -q loop 2>/dev/null || true
    modprobe -q fuse 2>/dev/null || true
fi

# Library, binary and integration tests (there are no doc tests), both
# tiers: plain `cargo test` is the fast tier only, the `privileged` feature
# adds the mounts, attacks, stress runs and the full mutation sweep.
if (($#)); then
    exec cargo test --features privileged --lib --bins --tests "$@"
fi
# Two at a time (the cores here), except the stress and inputs-changing
# tests, which run alone afterwards: side by side with others they were
# disturbed (a 16-reader server's peak RSS reached 40 MiB against 31 to 33
# alone; a restored device tar failed a read once).
ALONE=(faults:: changing_inputs::)
skips=()
for t in "${ALONE[@]}"; do skips+=(--skip "$t"); done
cargo test --features privileged --lib --bins --tests -- --test-threads=2 "${skips[@]}"
exec cargo test --features privileged --test it -- --test-threads=1 "${ALONE[@]}"
