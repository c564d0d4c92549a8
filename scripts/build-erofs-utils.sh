#!/usr/bin/env bash
# Builds erofs-utils 1.9.3's mkfs.erofs outside the repository (cached in
# /var/tmp/erofs-utils-1.9.3) and prints its path. The source is a clone of
# github.com/erofs/erofs-utils: EROFS_UTILS_SRC, else cloned there.
# Needs autotools, liblz4-dev, libzstd-dev, liblzma-dev, zlib1g-dev, uuid-dev.
set -euo pipefail
tag=v1.9.3 dest=/var/tmp/erofs-utils-1.9.3
if [ -x "$dest/mkfs/mkfs.erofs" ]; then echo "$dest/mkfs/mkfs.erofs"; exit 0; fi
src=${EROFS_UTILS_SRC:-/var/tmp/erofs-utils.git}
if [ ! -d "$src" ]; then
    git clone --quiet --bare https://github.com/erofs/erofs-utils "$src" >&2
fi
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
git --git-dir="$src" archive "$tag" 2>/dev/null | tar -x -C "$dest.tmp" \
    || git -C "$src" archive "$tag" | tar -x -C "$dest.tmp"
cd "$dest.tmp"
./autogen.sh >&2
./configure --quiet --enable-lz4 --enable-lzma --with-libzstd --with-zlib --disable-fuse >&2
make -j"$(nproc)" --quiet >&2
cd / && rm -rf "$dest" && mv "$dest.tmp" "$dest"
echo "$dest/mkfs/mkfs.erofs"
