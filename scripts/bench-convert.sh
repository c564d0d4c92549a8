#!/usr/bin/env bash
# Benchmarks `erofs-fuse convert` on a generated ~1 GB OCI layer, against the
# floor of reading the stream (`tar tf -` from a pipe) and of reading and hashing it
# (`sha256sum`; for the tar.gz, `gzip -dc | sha256sum`), and against
# erofs-utils 1.9.3's `mkfs.erofs --tar=i` (the installed one if 1.9.3
# cannot be built and it has --tar). `convert` without --digests reads a
# tar file header by header (as mkfs.erofs --tar=i); with --digests it
# reads and hashes every byte. Also
# `convert --mode full --compress lz4hc|zstd` against erofs-utils 1.9.3's
# `mkfs.erofs --tar=f -zlz4hc|-zzstd` (built from fetched source into
# ~/.cache/erofs-fuse/erofs-utils-1.9.3 if absent: needs git, autotools, liblz4-dev,
# libzstd-dev, liblzma-dev, zlib1g-dev; EROFS_UTILS_SRC names a clone), time
# and image size.
# Prints a table of times (best of 3, input in the page cache; one run for
# the compressed conversions) and ratios.
#
#   scripts/bench-convert.sh [--workdir DIR] [--clean]
#
# The layer is a tree of ~30k files (a rootfs-like part of small files and a
# few large ones, ~1 GB in all), kept in the workdir (default
# /var/tmp/erofs-fuse-bench-convert) for the next run; --clean removes it.
set -euo pipefail
cd "$(dirname "$0")/.."

work=/var/tmp/erofs-fuse-bench-convert clean=0
while (($#)); do
    case "$1" in
        --workdir) work=$2; shift ;;
        --clean) clean=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench-convert.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

cargo build --release --quiet
bin=$PWD/target/release/erofs-fuse
# shellcheck source=scripts/lib/workdir.sh
. scripts/lib/workdir.sh
own_workdir "$work"
tarfile=$work/layer.tar gzfile=$work/layer.tar.gz
if [ ! -s "$gzfile" ]; then
    echo "bench-convert.sh: generating the layer in $work ..." >&2
    rm -rf "$work/tree"
    python3 - "$work/tree" <<'EOF'
import os, random, sys
root = sys.argv[1]; rng = random.Random(7)
dirs = [root]
for i in range(2000):
    d = os.path.join(rng.choice(dirs), "d%d" % i); os.makedirs(d, exist_ok=True); dirs.append(d)
for i in range(30000):
    size = int(rng.paretovariate(1.2) * 1500) % 200000
    with open(os.path.join(rng.choice(dirs), "f%d" % i), "wb") as f:
        f.write(rng.randbytes(size // 2) + b"x" * (size - size // 2))
for i in range(3):
    with open(os.path.join(root, "large-%d.bin" % i), "wb") as f:
        for _ in range(256):
            f.write(rng.randbytes(1 << 20))
EOF
    tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner -cf "$tarfile" -C "$work/tree" .
    gzip -1 -c "$tarfile" > "$gzfile"
    rm -rf "$work/tree"
fi
entries=$(tar tf "$tarfile" | wc -l)
size_mb=$(( $(stat -c %s "$tarfile") / 1000000 ))
gz_mb=$(( $(stat -c %s "$gzfile") / 1000000 ))

best() { # command...: best of 3 wall-clock seconds
    local best= t0 t1 t
    for _ in 1 2 3; do
        t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
        t=$(python3 -c "print('%.3f' % ($t1 - $t0))")
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
    done
    echo "$best"
}
once() { # command...: wall-clock seconds of one run (the compressed
    # conversions take minutes: the layer's 768 MB of random data is tried
    # pcluster by pcluster)
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1 || { echo "bench-convert.sh: failed: $*" >&2; return 1; }
    t1=$(date +%s.%N)
    python3 -c "print('%.3f' % ($t1 - $t0))"
}
# Warm the page cache: every figure reads from memory.
cat "$tarfile" "$gzfile" >/dev/null

out=$work/out
mkdir -p "$out"
declare -A t
# Through a pipe: on a file GNU tar seeks past the data instead of reading it.
t[tar-tf]=$(best sh -c "cat '$tarfile' | tar tf -")
t[sha256sum]=$(best sha256sum "$tarfile")
t[index]=$(best "$bin" convert -q "$tarfile" "$out/index.erofs")
t[index-digests]=$(best "$bin" convert -q --digests "$tarfile" "$out/index.erofs")
t[append]=$(best "$bin" convert -q --append-tar "$tarfile" "$out/appended.erofs")
t[full]=$(best "$bin" convert -q --mode full "$tarfile" "$out/full.erofs")
t[gz-floor]=$(best sh -c "gzip -dc '$gzfile' | sha256sum")
t[gz-index]=$(best "$bin" convert -q --digests "$gzfile" "$out/gz.erofs" --tar-out "$out/gz.tar")
mkfs19=$(scripts/build-erofs-utils.sh 2>/dev/null || true)
mkfs= mkfs_bin=${mkfs19:-mkfs.erofs}
if "$mkfs_bin" --help 2>&1 | grep -q -- '--tar'; then
    mkfs=$(best sh -c "'$mkfs_bin' --quiet --tar=i '$out/mkfs.erofs' < '$tarfile'")
fi
declare -A z zsize
for alg in lz4hc zstd; do
    z[$alg]=$(once "$bin" convert -q --mode full --compress $alg "$tarfile" "$out/$alg.erofs")
    zsize[$alg]=$(stat -c %s "$out/$alg.erofs")
    if [ -n "$mkfs19" ]; then
        z[mkfs-$alg]=$(once sh -c "'$mkfs19' --quiet --tar=f -z$alg '$out/mkfs-$alg.erofs' < '$tarfile'")
        zsize[mkfs-$alg]=$(stat -c %s "$out/mkfs-$alg.erofs")
    fi
done
rm -rf "$out"

ratio() { python3 -c "print('%.2fx' % ($1 / $2))"; }
echo "Layer: $entries entries, $size_mb MB tar, $gz_mb MB tar.gz (gzip -1). $(nproc) CPUs, $(uname -r)."
echo "Best of 3, input in the page cache; ratio = time / time of sha256sum of the tar (read and hash)."
printf '%-44s | %8s | %s\n' "what" "time" "ratio"
row() { printf '%-44s | %7.3fs | %s\n' "$1" "$2" "$(ratio "$2" "${t[sha256sum]}")"; }
row "cat layer.tar | tar tf - (read the stream)" "${t[tar-tf]}"
row "sha256sum layer.tar (read and hash)" "${t[sha256sum]}"
row "erofs-fuse convert layer.tar (index)" "${t[index]}"
row "erofs-fuse convert --digests layer.tar" "${t[index-digests]}"
row "erofs-fuse convert --append-tar layer.tar" "${t[append]}"
row "erofs-fuse convert --mode full layer.tar" "${t[full]}"
row "gzip -dc layer.tar.gz | sha256sum" "${t[gz-floor]}"
row "erofs-fuse convert --digests layer.tar.gz" "${t[gz-index]}"
if [ -n "$mkfs" ]; then row "mkfs.erofs --tar=i ($( [ -n "$mkfs19" ] && echo 1.9.3 || echo installed))" "$mkfs"; else echo "(no mkfs.erofs with --tar here: erofs-utils 1.9.3 could not be built)"; fi
for alg in lz4hc zstd; do
    row "erofs-fuse convert --mode full --compress $alg" "${z[$alg]}"
    echo "    image ${zsize[$alg]} bytes"
    if [ -n "$mkfs19" ]; then
        row "mkfs.erofs 1.9.3 --tar=f -z$alg" "${z[mkfs-$alg]}"
        echo "    image ${zsize[mkfs-$alg]} bytes ($(ratio "${zsize[$alg]}" "${zsize[mkfs-$alg]}") of it for erofs-fuse)"
    fi
done
[ -n "$mkfs19" ] || echo "(erofs-utils 1.9.3 could not be built: scripts/build-erofs-utils.sh)"
[ "$clean" = 1 ] && rm -rf "$work"
exit 0
