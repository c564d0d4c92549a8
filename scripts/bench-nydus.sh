#!/usr/bin/env bash
# Benchmarks erofs-fuse on a Nydus RAFS v6 image (zstd) against nydusd
# serving the same bootstrap and blob, and against kernel erofs mounting the
# same tree as a `nydus-image export --block` disk (loop). Run as root
# (mounts, drop_caches).
#
#   scripts/bench-nydus.sh [--rounds N] [--workdir DIR] [--clean]
#
# nydusd and nydus-image are built from source outside the repository by
# scripts/lib/build-nydus.sh (cached in ~/.cache/erofs-fuse; NYDUS_SRC names
# a clone of github.com/dragonflyoss/nydus, else it is cloned).
# The tree is generated with a fixed seed: ~15k small files (median ~3 KB,
# part text-like, part random) in ~600 directories, a few symlinks, two 48
# MiB random files and a 48 MiB text-like one, ~300 MB in all; then
# `nydus-image create -t dir-rafs --fs-version 6 --compressor zstd` (1 MiB
# chunks) makes the bootstrap and blob, and `nydus-image export --block`
# the disk. All are kept in the workdir (default
# /var/tmp/erofs-fuse-bench-nydus) for the next run; --clean removes it
# afterwards.
# First the three mounts must show the same tree (scripts/manifest.py of
# each, contents hashed; the root's mtime aside: nydusd reports its start
# time for on-disk mtime 0): the bench stops otherwise.
# Then N paired rounds (default 3), the implementations taking turns in
# each: fresh mount (nydusd: blobcache emptied), caches dropped, full read
# (`tar cf - . | wc -c`) timed = cold; the same read again = warm. nydusd runs
# as its fixtures were made: localfs backend, blobcache, enable_xattr,
# direct mode, its default 4 FUSE threads; erofs-fuse with its defaults
# (as many threads as CPUs). Printed: median times, the server's CPU time
# (user+system of the FUSE server process, for the two FUSE servers) and
# the medians of the paired ratios erofs-fuse/nydusd and erofs-fuse/kernel
# (time ratios: lower is better for erofs-fuse).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=3 work=/var/tmp/erofs-fuse-bench-nydus clean=0
while (($#)); do
    case "$1" in
        --rounds) rounds=$2; shift
            [[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "bench-nydus.sh: --rounds takes a positive number" >&2; exit 2; } ;;
        --workdir) work=$2; shift ;;
        --clean) clean=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench-nydus.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "bench-nydus.sh: run as root" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "bench-nydus.sh: needs fusermount3 (fuse3)" >&2; exit 1; }

nydus_bins=$(scripts/lib/build-nydus.sh)
nydusd=$nydus_bins/nydusd nydus_image=$nydus_bins/nydus-image
cargo build --release --quiet
bin=$PWD/target/release/erofs-fuse

# shellcheck source=scripts/lib/workdir.sh
. scripts/lib/workdir.sh
own_workdir "$work"
tree=$work/tree image=$work/image disk=$work/disk.img mnt=$work/mnt cache=$work/nydusd-cache
boot=$image/bootstrap blobs=$image/blobs
mkdir -p "$mnt"
# scripts/manifest.py of a tree, the root's mtime set to 0 (nydus-image
# writes 0 there and nydusd reports its own start time for it).
manifest_of() { # dir
    python3 scripts/manifest.py "$1" | python3 -c '
import json, sys
for line in sys.stdin:
    o = json.loads(line)
    if o["path"] == "/":
        o["mtime"] = 0
    print(json.dumps(o, sort_keys=True))'
}
kind="nydus-tree-v1 $(basename "$nydus_bins/../..")"
if [ ! -s "$disk" ] || [ "$(cat "$work/.kind" 2>/dev/null)" != "$kind" ]; then
    rm -rf "$tree" "$image" "$disk" "$work/export-blobs" "$work/.kind"
    echo "bench-nydus.sh: generating the tree in $tree" >&2
    scripts/lib/gen-nydus-tree.py "$tree"
    manifest_of "$tree" > "$work/manifest-source.jsonl"
    mkdir -p "$blobs"
    "$nydus_image" create --log-level warn -t dir-rafs --fs-version 6 --compressor zstd \
        -B "$boot" -D "$blobs" "$tree" >/dev/null
    # export writes cache files into its -D: it gets a copy of the blobs.
    cp -a "$blobs" "$work/export-blobs"
    "$nydus_image" export --log-level warn --block -B "$boot" -D "$work/export-blobs" -O "$disk" >/dev/null
    rm -rf "$work/export-blobs" "$tree"
    echo "$kind" > "$work/.kind"
fi
blob_bytes=$(du -cb "$blobs"/* | tail -1 | cut -f1)
cat > "$work/nydusd.json" <<EOF
{"device":{"backend":{"type":"localfs","config":{"dir":"$blobs"}},
 "cache":{"type":"blobcache","config":{"work_dir":"$cache"}}},
 "mode":"direct","digest_validate":false,"enable_xattr":true}
EOF

server_pid=
mount_with() { # impl
    case "$1" in
        erofs-fuse)
            "$bin" mount -f "$boot" "$mnt" --blob-dir "$blobs" 2>>"$work/erofs-fuse.log" &
            server_pid=$! ;;
        nydusd)
            rm -rf "$cache" && mkdir -m 700 "$cache"
            "$nydusd" --config "$work/nydusd.json" --mountpoint "$mnt" --bootstrap "$boot" \
                --rlimit-nofile 0 --log-level warn 2>>"$work/nydusd.log" &
            server_pid=$! ;;
        kernel) mount -t erofs -o loop,ro "$disk" "$mnt"; server_pid= ;;
    esac
    for _ in $(seq 500); do
        mountpoint -q "$mnt" && [ -n "$(ls -A "$mnt" 2>/dev/null)" ] && return 0
        sleep 0.01
    done
    echo "bench-nydus.sh: the $1 mount did not come up (see $work/$1.log)" >&2; exit 1
}
unmount() {
    umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"
    if [ -n "$server_pid" ]; then
        for _ in $(seq 500); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.01; done
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
    sleep 0.2  # the loop device of a kernel mount goes with it (autoclear)
}
cleanup() { mountpoint -q "$mnt" 2>/dev/null && unmount; true; }
trap cleanup EXIT
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
# CPU seconds (user + system, all threads) the FUSE server has used; 0 for
# the kernel.
cpu() {
    if [ -z "$server_pid" ]; then echo 0; return; fi
    awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$server_pid/stat"
}

# The same tree from all three, or no figures.
for impl in erofs-fuse nydusd kernel; do
    mount_with "$impl"
    if ! manifest_of "$mnt" > "$work/manifest-$impl.jsonl"; then
        echo "bench-nydus.sh: FAILED: reading the $impl mount (errors above)" >&2; exit 1
    fi
    unmount
done
for impl in nydusd kernel; do
    if ! cmp -s "$work/manifest-erofs-fuse.jsonl" "$work/manifest-$impl.jsonl"; then
        echo "bench-nydus.sh: FAILED: erofs-fuse and $impl show different trees:" >&2
        diff "$work/manifest-erofs-fuse.jsonl" "$work/manifest-$impl.jsonl" | head -20 >&2
        exit 1
    fi
done
files=$(grep -c '"type": "file"' "$work/manifest-kernel.jsonl")
entries=$(wc -l < "$work/manifest-kernel.jsonl")
data_bytes=$(python3 -c '
import json, sys
print(sum(json.loads(l).get("size") or 0 for l in open(sys.argv[1]) if "\"file\"" in l))' "$work/manifest-kernel.jsonl")
echo "bench-nydus.sh: the three mounts show the same tree ($entries entries)" >&2
# For information: nydus-image's tree against the generated one.
if cmp -s "$work/manifest-source.jsonl" "$work/manifest-kernel.jsonl"; then
    source_note="the same as the generated tree's"
else
    source_note="differs from the generated tree's: $(diff "$work/manifest-source.jsonl" \
        "$work/manifest-kernel.jsonl" | grep -c "^[<>]" || true) lines"
fi
load0=$(uptime)

impls=(erofs-fuse nydusd kernel)
declare -A times cpus
read_all() { (cd "$mnt" && tar cf - . | wc -c); }
for round in $(seq "$rounds"); do
    for impl in "${impls[@]}"; do
        mount_with "$impl"
        drop
        for temp in cold warm; do
            c0=$(cpu); t0=$(now)
            got=$(read_all)
            t1=$(now); c1=$(cpu)
            tar_bytes=${tar_bytes:-$got}
            if [ "$got" != "$tar_bytes" ]; then
                echo "bench-nydus.sh: FAILED: $impl's tar stream has $got bytes, not $tar_bytes" >&2; exit 1
            fi
            times[$impl,$temp]+=" $(secs "$t0" "$t1")"
            cpus[$impl,$temp]+=" $(python3 -c "print('%.3f' % ($c1 - $c0))")"
        done
        unmount
        echo "bench-nydus.sh: round $round $impl cold${times[$impl,cold]##* } s warm${times[$impl,warm]##* } s" >&2
    done
done

echo
echo "Tree: $entries entries, $files files, $((data_bytes / 1000000)) MB of file data;" \
     "zstd blob $((blob_bytes / 1000000)) MB, bootstrap $(( $(stat -c %s "$boot") / 1000 )) kB," \
     "export --block disk $(( $(stat -c %s "$disk") / 1000000 )) MB."
echo "Manifest of the three mounts (identical, checked): $source_note."
echo "$(nproc) CPUs, kernel $(uname -r). Load before the rounds:$load0"
echo "Full read (tar cf - . | wc -c), median of $rounds rounds; server CPU = user+system of the FUSE server."
python3 - "$rounds" <<EOF
import statistics
t = {k: [float(x) for x in v.split()] for k, v in {
$(for impl in "${impls[@]}"; do for temp in cold warm; do
    printf '    "%s,%s": "%s",\n' "$impl" "$temp" "${times[$impl,$temp]}"
    printf '    "cpu:%s,%s": "%s",\n' "$impl" "$temp" "${cpus[$impl,$temp]}"
done; done)
}.items()}
med = statistics.median
print("| read | erofs-fuse | nydusd | kernel (export --block) | erofs-fuse/nydusd | erofs-fuse/kernel |")
print("|---|---|---|---|---|---|")
for temp in ("cold", "warm"):
    e, n, k = t["erofs-fuse," + temp], t["nydusd," + temp], t["kernel," + temp]
    rn = [a / b for a, b in zip(e, n)]
    rk = [a / b for a, b in zip(e, k)]
    print("| %s | %.3f s (CPU %.2f s) | %.3f s (CPU %.2f s) | %.3f s | %.2fx (%.2f-%.2f) | %.2fx (%.2f-%.2f) |" % (
        temp, med(e), med(t["cpu:erofs-fuse," + temp]), med(n), med(t["cpu:nydusd," + temp]), med(k),
        med(rn), min(rn), max(rn), med(rk), min(rk), max(rk)))
print("Ratios: median of the paired rounds' time ratios (range); below 1 = erofs-fuse faster.")
EOF
echo "Load after the rounds:$(uptime)"
[ "$clean" -eq 0 ] || rm -rf "$work"
