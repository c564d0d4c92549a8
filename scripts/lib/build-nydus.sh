#!/usr/bin/env bash
# Builds nydusd and nydus-image (dragonflyoss/nydus at a pinned commit)
# outside the repository and prints the directory holding both. Cached in
# $XDG_CACHE_HOME/erofs-fuse (default ~/.cache/erofs-fuse), a directory of
# the caller's own: a build found in a shared place (/var/tmp) could have
# been planted by another user, and would be run (as root, by the bench).
# The source is a clone of github.com/dragonflyoss/nydus: NYDUS_SRC (a bare
# or non-bare clone, for example the `fetch` tool's mirror), else cloned
# into the cache; it must hold the pinned commit. The tree is taken with
# `git archive` without tests/ (not needed to build; the `fetch` mirror
# lacks one of its binary files). Built with the stable toolchain
# (NYDUS_TOOLCHAIN to change it; the tree pins 1.94.0, which rustup would
# download), niced: it takes a while on a small machine.
# Needs git, cmake (libz-sys builds zlib-ng), protoc (protobuf-compiler:
# prost-wkt-types), a C compiler, a Rust toolchain
# and crates.io.
set -euo pipefail
commit=34e6071e556aca39ad5b400d69a609797f879e55
cache=${XDG_CACHE_HOME:-$HOME/.cache}/erofs-fuse
dest=$cache/nydus-${commit:0:12}
mkdir -p -m 700 "$cache"
for d in "$cache" "$dest" "$dest.tmp"; do
    if [ -e "$d" ] && { [ -L "$d" ] || [ ! -O "$d" ]; }; then
        echo "build-nydus.sh: $d is not a directory of ours" >&2; exit 1
    fi
done
bins=$dest/target/release
if [ -x "$bins/nydusd" ] && [ -x "$bins/nydus-image" ]; then echo "$bins"; exit 0; fi
for tool in cmake protoc; do
    command -v "$tool" >/dev/null || { echo "build-nydus.sh: needs $tool (apt-get install cmake protobuf-compiler)" >&2; exit 1; }
done
src=${NYDUS_SRC:-$cache/nydus-src}
if [ ! -d "$src" ]; then
    git clone --quiet --bare https://github.com/dragonflyoss/nydus "$src" >&2
fi
gitdir=$(git -C "$src" rev-parse --absolute-git-dir)
if ! git --git-dir="$gitdir" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "build-nydus.sh: $src does not hold commit $commit" >&2; exit 1
fi
# A partial build from an interrupted run is kept: cargo resumes it.
mkdir -p "$dest.tmp"
# (git archive names the mirror's missing file on stderr although it is
# excluded; its exit status is what counts.)
git --git-dir="$gitdir" archive "$commit" -- . ':(exclude)tests' 2>/dev/null | tar -x -C "$dest.tmp"
cd "$dest.tmp"
RUSTUP_TOOLCHAIN=${NYDUS_TOOLCHAIN:-stable} nice -n 19 \
    cargo build --release --quiet --bin nydusd --bin nydus-image >&2
cd / && rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$bins"
