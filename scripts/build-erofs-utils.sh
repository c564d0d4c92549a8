#!/usr/bin/env bash
# Builds erofs-utils 1.9.3's mkfs.erofs outside the repository and prints its
# path. Cached in $XDG_CACHE_HOME/erofs-fuse (default ~/.cache/erofs-fuse), a
# directory of the caller's own: a build found in a shared place (/var/tmp)
# could have been planted by another user, and would be run. The source is a
# clone of github.com/erofs/erofs-utils: EROFS_UTILS_SRC (for example the
# `fetch` tool's mirror), else cloned into the cache; the tag must be the
# pinned commit.
# Needs autotools, liblz4-dev, libzstd-dev, liblzma-dev, zlib1g-dev, uuid-dev.
set -euo pipefail
tag=v1.9.3 commit=7db78788b000999e2de88decd2ba90654f26171c
cache=${XDG_CACHE_HOME:-$HOME/.cache}/erofs-fuse
dest=$cache/erofs-utils-1.9.3
mkdir -p -m 700 "$cache"
for d in "$cache" "$dest"; do
    if [ -e "$d" ] && { [ -L "$d" ] || [ ! -O "$d" ]; }; then
        echo "build-erofs-utils.sh: $d is not a directory of ours" >&2; exit 1
    fi
done
if [ -x "$dest/mkfs/mkfs.erofs" ]; then echo "$dest/mkfs/mkfs.erofs"; exit 0; fi
src=${EROFS_UTILS_SRC:-$cache/erofs-utils.git}
if [ ! -d "$src" ]; then
    git clone --quiet --bare https://github.com/erofs/erofs-utils "$src" >&2
fi
git_src() { git --git-dir="$src" "$@" 2>/dev/null || git -C "$src" "$@"; }
got=$(git_src rev-parse "$tag^{commit}")
if [ "$got" != "$commit" ]; then
    echo "build-erofs-utils.sh: $src: $tag is $got, not $commit" >&2; exit 1
fi
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
git_src archive "$commit" | tar -x -C "$dest.tmp"
cd "$dest.tmp"
./autogen.sh >&2
./configure --quiet --enable-lz4 --enable-lzma --with-libzstd --with-zlib --disable-fuse >&2
make -j"$(nproc)" --quiet >&2
cd / && rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$dest/mkfs/mkfs.erofs"
