#!/usr/bin/env bash
# The main job on the sample image that ships in the repo: build erofs-fuse,
# mount tests/fixtures/sample.erofs with FUSE, list the mounted tree, show a
# file, and unmount. Installs fuse3 first when run as root and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --quiet
mnt=$(mktemp -d)
trap 'fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true; rmdir "$mnt"' EXIT
target/release/erofs-fuse mount tests/fixtures/sample.erofs "$mnt"
echo "== tests/fixtures/sample.erofs mounted on $mnt"
ls -lR "$mnt"
echo "== $mnt/etc/os-release"
cat "$mnt/etc/os-release"
