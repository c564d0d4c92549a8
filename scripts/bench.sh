#!/usr/bin/env bash
# Benchmarks erofs-fuse against kernel erofs (the baseline), and against
# erofs-utils' erofsfuse and squashfuse where installed, on the same corpus in
# one run. Run as root (mounts, drop_caches). Prints a table of each figure
# and its ratio to the kernel's.
#
#   scripts/bench.sh [--quick] [--workdir DIR] [--clean] [--tables LIST]
#                    [--rounds N]
#
# --tables: which of plain, lz4hc, verity, small, small-lz4hc and
# small-verity to measure (default: all, comma-separated).
#
# The corpus is generated (not committed): a rootfs-like tree of ~30k small
# files in ~2k directories, a 256 MB and three 32 MB random files and a
# 128 MB compressible text file (~820 MB in all; --quick: ~3k files,
# ~130 MB). It is packed twice: uncompressed (every figure below, against
# kernel erofs, erofsfuse and squashfuse) and with -zlz4hc (mount, cold
# full read, sequential reads of the text file, random reads, against kernel
# erofs). Both are kept in the workdir (default /var/tmp/erofs-fuse-bench)
# for the next run; --clean removes them afterwards. The verity table
# mounts the uncompressed image with --verity and a tree made by `verity
# format` (sha256, 4 KiB blocks), against the same mount without it; and
# with --verity --verity-once (file data hashed once on the map and
# trusted after, instead of a copy hashed at every read).
# The small-file corpus is a copy of this machine's /usr/lib/python3.*,
# /usr/share/doc, /usr/include, /usr/share/man and /usr/share/locale (what
# real container layers are mostly made of: ~45k entries, ~580 MB), packed
# by erofs-utils 1.9.3's mkfs.erofs (scripts/build-erofs-utils.sh; the
# installed one if that cannot be built) with -b4096, uncompressed and
# -zlz4hc; its tables measure walks and full reads, and verity's overhead
# on them. It is kept in the workdir's small/ like the other corpus.
# Measured, each after `echo 3 > drop_caches` and a fresh mount (cold) and
# again without (warm):
#   mount         time until the mountpoint answers (everything cold: the
#                 programs and libraries too, as on a first mount after boot)
#   mount-warm-bin the same with the programs and their libraries read back
#                 into the page cache after the drop (the image stays cold):
#                 what a mount costs once the binary is cached
#   walk          find -printf of every entry's inode, size and mtime
#   read-all      tar cf - . | wc -c (every byte of every file)
#   seq-read      dd of the largest file (256 MB), 1 MiB blocks (MB/s);
#                 warm: four passes
#   rand-4k-cold  4096 fio random 4 KiB reads of the largest file, cold
#                 (IOPS; below the table, how many MB each read from disk
#                 for them: read-around can make a few MB of reads cost the
#                 whole file)
#   rand-4k-warm  fio random 4 KiB reads for 10 s, the file read once
#                 before and its cache kept (IOPS)
# Times are the best of 3 rounds (5 for the verity table, whose overhead is
# the median of paired rounds; --rounds N for N), the implementations taking
# turns in each. Under the plain and lz4hc tables, erofs-fuse's ratio to the
# kernel is also given as the median of each round's pair, which one lucky
# round of either side cannot decide.
# Ratios: time / kernel time (lower is better), throughput / kernel
# throughput (higher is better).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0 clean=0 work=/var/tmp/erofs-fuse-bench tables=plain,lz4hc,verity,small,small-lz4hc,small-verity rounds_opt=
while (($#)); do
    case "$1" in
        --quick) quick=1 ;;
        --clean) clean=1 ;;
        --workdir) work=$2; shift ;;
        --tables) tables=$2; shift ;;
        --rounds) rounds_opt=$2; shift
            [[ "$rounds_opt" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --rounds takes a positive number" >&2; exit 2; } ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }

need=()
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v fio >/dev/null || need+=(fio)
command -v mksquashfs >/dev/null || need+=(squashfs-tools)
command -v squashfuse >/dev/null || need+=(squashfuse)
command -v fusermount3 >/dev/null || need+=(fuse3)
if ((${#need[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
bin=$PWD/target/release/erofs-fuse

# shellcheck source=scripts/lib/workdir.sh
. scripts/lib/workdir.sh
own_workdir "$work"
tree=$work/tree plain_img=$work/bench.erofs zimg=$work/bench-lz4hc.erofs sqfs=$work/bench.sqfs
mnt=$work/mnt
mkdir -p "$mnt"
kind="corpus-v4 quick=$quick"
if [ ! -f "$zimg" ] || [ "$(cat "$work/.kind" 2>/dev/null)" != "$kind" ]; then
    rm -rf "$tree" "$plain_img" "$zimg" "$sqfs"
    echo "bench.sh: generating the corpus in $tree" >&2
    python3 - "$tree" "$quick" <<'EOF'
import itertools, os, random, sys
root, quick = sys.argv[1], sys.argv[2] == "1"
rng = random.Random(42)
dirs, files = (200, 3000) if quick else (2000, 30000)
words = [b"lib", b"usr", b"share", b"locale", b"python3", b"include", b"doc", b"bin", b"etc", b"x86_64"]
paths = [root]
os.makedirs(root)
for i in range(dirs):
    p = os.path.join(rng.choice(paths), "%s-%d" % (rng.choice(words).decode(), i))
    os.mkdir(p)
    paths.append(p)
text = b" ".join(rng.choice(words) for _ in range(50000))
for i in range(files):
    size = int(rng.lognormvariate(8, 1.6)) % (1 << 20)  # median ~3 KB, long tail
    p = os.path.join(rng.choice(paths), "f%d.%s" % (i, rng.choice(["so", "py", "txt", "h", "mo"])))
    with open(p, "wb") as f:
        start = rng.randrange(len(text) - 1)
        data = (text[start:] + text)[:size // 2] + rng.randbytes(size - size // 2)
        f.write(data)
# One large file for the sequential figures (long enough to time well),
# and a few medium ones.
sizes_mb = [64] if quick else [256, 32, 32, 32]
for i, mb in enumerate(sizes_mb):
    with open(os.path.join(root, "large-%d.bin" % i), "wb") as f:
        for _ in range(mb):
            f.write(rng.randbytes(1 << 20))
# Compressible like text (lz4hc in 4 KiB pclusters gets ~1.5x, gzip ~2.6x):
# words drawn with Zipf frequencies, numbers, a few random bytes.
letters = b"abcdefghijklmnopqrstuvwxyz"
vocab = [bytes(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(4000)]
cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
with open(os.path.join(root, "text.bin"), "wb") as f:
    for _ in range(32 if quick else 128):
        words = iter(rng.choices(vocab, cum_weights=cum, k=250000))
        chunk = bytearray()
        while len(chunk) < 1 << 20:
            r = rng.random()
            if r < 0.9:
                chunk += next(words) + b" "
            elif r < 0.97:
                chunk += b"%d\n" % rng.randrange(1000)
            else:
                chunk += rng.randbytes(4)
        f.write(chunk[:1 << 20])
EOF
    mkfs.erofs --quiet "$plain_img" "$tree"
    mkfs.erofs --quiet -zlz4hc "$zimg" "$tree"
    mksquashfs "$tree" "$sqfs" -noappend -no-progress -noI -noD -noF -noX >/dev/null
    echo "$kind" > "$work/.kind"
fi
wanted() { [[ ",$tables," == *",$1,"* ]]; }
verity_tree() { # image: a dm-verity tree beside it (veritysetup's defaults)
    if [ ! -s "$1.roothash" ] || [ "$1.roothash" -ot "$1" ]; then
        "$bin" verity format "$1" "$1.verity" \
            | awk -F'\t' '/^Root hash:/ {print $2}' > "$1.roothash"
    fi
}
# The small-file corpus, from this machine's /usr (see the top).
small=$work/small small_img=$work/small/small.erofs small_zimg=$work/small/small-lz4hc.erofs
small_probe=usr/include/stdio.h
if wanted small || wanted small-lz4hc || wanted small-verity; then
    small_kind="small-v1 $(ls -d /usr/lib/python3.* | head -1)"
    if [ ! -f "$small_zimg" ] || [ "$(cat "$small/.kind" 2>/dev/null)" != "$small_kind" ]; then
        echo "bench.sh: copying the small-file corpus into $small/tree" >&2
        rm -rf "$small" && mkdir -p "$small/tree/usr/lib" "$small/tree/usr/share"
        cp -a "$(ls -d /usr/lib/python3.* | head -1)" "$small/tree/usr/lib/"
        cp -a /usr/include "$small/tree/usr/"
        cp -a /usr/share/doc /usr/share/man /usr/share/locale "$small/tree/usr/share/"
        mkfs19=$(scripts/build-erofs-utils.sh 2>/dev/null || command -v mkfs.erofs)
        "$mkfs19" --quiet -b4096 "$small_img" "$small/tree"
        "$mkfs19" --quiet -b4096 -zlz4hc "$small_zimg" "$small/tree"
        echo "$small_kind" > "$small/.kind"
    fi
    small_files=$(find "$small/tree" | wc -l) small_bytes=$(du -sb "$small/tree" | cut -f1)
    wanted small-verity && verity_tree "$small_img"
fi
largest=$(cd "$tree" && ls -S large-*.bin | head -1)
wanted verity && verity_tree "$plain_img"
files=$(find "$tree" -type f | wc -l)
bytes=$(du -sb "$tree" | cut -f1)

mount_with() { # impl
    case "$1" in
        kernel) mount -t erofs -o loop,ro "$img" "$mnt" ;;
        erofs-fuse) "$bin" mount "$img" "$mnt" ;;
        erofs-fuse-verity) "$bin" mount --verity "$(cat "$img.roothash"):$img.verity" "$img" "$mnt" ;;
        erofs-fuse-verity-once) "$bin" mount --verity "$(cat "$img.roothash"):$img.verity" --verity-once "$img" "$mnt" ;;
        erofsfuse) erofsfuse "$img" "$mnt" >/dev/null 2>&1 ;;
        squashfuse) squashfuse "$sqfs" "$mnt" ;;
    esac
    local i
    for i in $(seq 200); do stat "$mnt/$large" >/dev/null 2>&1 && return 0; sleep 0.01; done
    echo "bench.sh: $1 mount did not come up" >&2; return 1
}
unmount() {
    umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt"
    # The loop device of a kernel mount goes away with it (autoclear).
    sleep 0.2
}
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# Reads the programs a mount with $1 runs (and their libraries) into the
# page cache, leaving the image cold.
warm_programs() { # impl
    local progs=(stat sleep umount) p lib
    case "$1" in
        kernel) progs+=(mount) ;;
        erofs-fuse*) progs+=("$bin") ;;
        *) progs+=("$1") ;;
    esac
    for p in "${progs[@]}"; do
        p=$(command -v "$p") || continue
        cat "$p" >/dev/null
        for lib in $(ldd "$p" 2>/dev/null | grep -o '/[^ ]*'); do cat "$lib" >/dev/null; done
    done
}
# Sectors read so far from the block device the images live on (0 when it
# has no statistics, as for a filesystem on several devices).
disk_stat=/sys/dev/block/$(python3 -c "import os, sys; d = os.stat(sys.argv[1]).st_dev; print('%d:%d' % (os.major(d), os.minor(d)))" "$work")/stat
disk_sectors() { if [ -r "$disk_stat" ]; then awk '{print $3}' "$disk_stat"; else echo 0; fi; }
declare -A disk_mb
now() { date +%s.%N; }
secs() { python3 -c "import sys; print('%.3f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }

declare -A result
# One measurement of $metric with $impl: sets `value`.
measure_one() { # impl metric
    local impl=$1 metric=$2 t0 t1
    drop
    case "$metric" in
        mount|mount-warm-bin)
            [ "$metric" = mount-warm-bin ] && warm_programs "$impl"
            t0=$(now); mount_with "$impl"; t1=$(now); value=$(secs "$t0" "$t1"); unmount ;;
        walk-cold|read-all-cold|seq-read-cold)
            mount_with "$impl"; drop
            t0=$(now)
            case "$metric" in
                walk-cold) (cd "$mnt" && find . -printf '%i %s %T@\n' >/dev/null) ;;
                read-all-cold) (cd "$mnt" && tar cf - . | wc -c >/dev/null) ;;
                seq-read-cold) dd if="$mnt/$large" of=/dev/null bs=1M status=none ;;
            esac
            t1=$(now); value=$(secs "$t0" "$t1"); unmount ;;
        walk-warm|read-all-warm|seq-read-warm)
            mount_with "$impl"
            (cd "$mnt" && tar cf - . | wc -c >/dev/null)  # warm every cache
            t0=$(now)
            case "$metric" in
                walk-warm) (cd "$mnt" && find . -printf '%i %s %T@\n' >/dev/null) ;;
                read-all-warm) (cd "$mnt" && tar cf - . | wc -c >/dev/null) ;;
                seq-read-warm) for pass in 1 2 3 4; do
                        dd if="$mnt/$large" of=/dev/null bs=1M status=none; done ;;
            esac
            t1=$(now); value=$(secs "$t0" "$t1"); unmount ;;
        rand-4k-cold|rand-4k-warm)
            mount_with "$impl"
            local limit=(--number_ios=4096) disk0
            if [ "$metric" = rand-4k-warm ]; then
                cat "$mnt/$large" >/dev/null
                # fio would drop the file's cache first (invalidate=1).
                limit=(--time_based --runtime=10 --invalidate=0)
            else
                drop
            fi
            disk0=$(disk_sectors)
            value=$(fio --name=rand --filename="$mnt/$large" --rw=randread --bs=4k --ioengine=psync \
                "${limit[@]}" --readonly --output-format=terse --terse-version=3 2>/dev/null \
                | awk -F';' '{print $8}')
            disk_mb[$table,$impl,$metric]=$(( ($(disk_sectors) - disk0) * 512 / 1000000 ))
            unmount ;;
    esac
}

# Every metric for every implementation, best of 3. The implementations take
# turns within each round, so a machine that drifts (disk, noisy
# neighbours) weighs on all of them alike and the ratios stay fair.
# The verity table also keeps each round's with/without pair: its overhead
# is the median of the paired ratios, which a lucky round of one side
# (this machine's "cold" reads are sometimes served by the host's cache)
# cannot skew the way a best-of-N against a best-of-N can.
declare -A pairs opairs kpairs
measure_all() {
    local impl metric run best rounds=3
    [[ "$table" = *verity ]] && rounds=5
    [ -n "$rounds_opt" ] && rounds=$rounds_opt
    for metric in "${metrics[@]}"; do
        for run in $(seq "$rounds"); do
            declare -A this_round=()
            for impl in "${impls[@]}"; do
                measure_one "$impl" "$metric"
                this_round[$impl]=$value
                best=${result[$table,$impl,$metric]:-}
                if [ -z "$best" ]; then best=$value
                elif [[ "$metric" = rand-4k-* ]]; then best=$(python3 -c "print(max($best, $value))")
                else best=$(python3 -c "print(min($best, $value))"); fi
                result[$table,$impl,$metric]=$best
            done
            if [[ "$table" = *verity ]]; then
                pairs[$table,$metric]+=" $(python3 -c "print(${this_round[erofs-fuse-verity]} / ${this_round[erofs-fuse]})")"
                opairs[$table,$metric]+=" $(python3 -c "print(${this_round[erofs-fuse-verity-once]} / ${this_round[erofs-fuse]})")"
            else
                # As the table shows it: time ratio, or for dd's seq-read
                # times the throughput ratio (kernel time / ours).
                case "$metric" in
                    seq-read-*) r="${this_round[kernel]} / ${this_round[erofs-fuse]}" ;;
                    *) r="${this_round[erofs-fuse]} / ${this_round[kernel]}" ;;
                esac
                kpairs[$table,$metric]+=" $(python3 -c "print($r)")"
            fi
            [[ "$metric" = rand-4k-* ]] && break  # one round is enough
        done
        for impl in "${impls[@]}"; do
            echo "bench.sh: $table $impl $metric ${result[$table,$impl,$metric]}" >&2
        done
    done
}

print_table() { # title
    local large_mb=0
    echo
    if [[ "$table" = small* ]]; then echo "$1."
    else
        large_mb=$(( $(stat -c %s "$work/tree/$large") / 1000000 ))
        echo "$1; sequential and random reads of $large ($large_mb MB)."
    fi
    printf '%-16s' "figure"; for impl in "${impls[@]}"; do printf '| %-22s' "$impl"; done; echo
    for metric in "${metrics[@]}"; do
        printf '%-16s' "$metric"
        for impl in "${impls[@]}"; do
            v=${result[$table,$impl,$metric]} k=${result[$table,kernel,$metric]}
            case "$metric" in
                seq-read-cold) cell=$(python3 -c "v=$large_mb/$v; k=$large_mb/$k; print('%.0f MB/s (%.2fx)' % (v, v/k))") ;;
                seq-read-warm) cell=$(python3 -c "v=4*$large_mb/$v; k=4*$large_mb/$k; print('%.0f MB/s (%.2fx)' % (v, v/k))") ;;
                rand-4k-*) cell=$(python3 -c "print('%d IOPS (%.2fx)' % ($v, $v/$k))") ;;
                *) cell=$(python3 -c "print('%.3f s (%.2fx)' % ($v, $v/$k))") ;;
            esac
            printf '| %-22s' "$cell"
        done
        echo
    done
    [[ "$table" = *verity ]] && return
    local line=""
    for metric in "${metrics[@]}"; do
        [[ "$metric" = rand-4k-* ]] && continue  # one round only
        line+=$(python3 -c "
import statistics, sys
r = [float(x) for x in sys.argv[2].split()]
print(' %s %.2fx (%.2f-%.2f);' % (sys.argv[1], statistics.median(r), min(r), max(r)))
" "$metric" "${kpairs[$table,$metric]}")
    done
    echo "erofs-fuse/kernel, median of paired rounds:${line%;}"
    [[ "$table" = small* ]] && return
    line=""
    for impl in "${impls[@]}"; do line+=" $impl ${disk_mb[$table,$impl,rand-4k-cold]} MB,"; done
    echo "rand-4k-cold read from disk, for 16 MB of random reads:${line%,}"
}

plain_metrics=(mount mount-warm-bin walk-cold read-all-cold seq-read-cold walk-warm read-all-warm seq-read-warm rand-4k-cold rand-4k-warm)
plain_impls=(kernel erofs-fuse)
command -v erofsfuse >/dev/null && plain_impls+=(erofsfuse)
command -v squashfuse >/dev/null && plain_impls+=(squashfuse)
z_metrics=(mount read-all-cold seq-read-cold seq-read-warm rand-4k-cold rand-4k-warm)
z_impls=(kernel erofs-fuse)
v_metrics=(mount walk-cold read-all-cold seq-read-cold)
v_impls=(kernel erofs-fuse erofs-fuse-verity erofs-fuse-verity-once)

# Uncompressed image: every figure, every implementation.
if wanted plain; then
    table=plain img=$plain_img large=$largest metrics=("${plain_metrics[@]}") impls=("${plain_impls[@]}")
    measure_all
fi
# lz4hc image: what decompression changes.
if wanted lz4hc; then
    table=lz4hc img=$zimg large=text.bin metrics=("${z_metrics[@]}") impls=("${z_impls[@]}")
    measure_all
fi
# The uncompressed image again, verifying every block against a dm-verity
# tree, in rounds of its own so the with/without pair is measured together.
if wanted verity; then
    table=verity img=$plain_img large=$largest metrics=("${v_metrics[@]}") impls=("${v_impls[@]}")
    measure_all
fi
# The small-file corpus: walks and full reads, uncompressed and lz4hc,
# and verity's overhead on its full read.
small_metrics=(mount mount-warm-bin walk-cold read-all-cold walk-warm read-all-warm)
small_impls=(kernel erofs-fuse)
command -v erofsfuse >/dev/null && small_impls+=(erofsfuse)
sz_metrics=(read-all-cold walk-cold read-all-warm)
sv_metrics=(walk-cold read-all-cold)
sv_impls=(kernel erofs-fuse erofs-fuse-verity erofs-fuse-verity-once)
small_table() { # table: sets what measure_all and print_table use
    table=$1 tree=$small/tree large=$small_probe
    case "$1" in
        small) img=$small_img metrics=("${small_metrics[@]}") impls=("${small_impls[@]}") ;;
        small-lz4hc) img=$small_zimg metrics=("${sz_metrics[@]}") impls=(kernel erofs-fuse) ;;
        small-verity) img=$small_img metrics=("${sv_metrics[@]}") impls=("${sv_impls[@]}") ;;
    esac
}
for t in small small-lz4hc small-verity; do
    if wanted $t; then small_table $t; measure_all; fi
done

echo
echo "Corpus: $files files, $((bytes / 1000000)) MB. $(nproc) CPUs, kernel $(uname -r)."
if wanted plain; then
    table=plain large=$largest metrics=("${plain_metrics[@]}") impls=("${plain_impls[@]}")
    print_table "Uncompressed image ($(( $(stat -c %s "$plain_img") / 1000000 )) MB)"
fi
if wanted lz4hc; then
    table=lz4hc large=text.bin metrics=("${z_metrics[@]}") impls=("${z_impls[@]}")
    print_table "lz4hc image ($(( $(stat -c %s "$zimg") / 1000000 )) MB, mkfs.erofs -zlz4hc)"
fi
if wanted verity; then
    table=verity large=$largest metrics=("${v_metrics[@]}") impls=("${v_impls[@]}")
    print_table "Uncompressed image with and without --verity (sha256, 4 KiB blocks)"
fi
if wanted small || wanted small-lz4hc || wanted small-verity; then
    echo
    echo "Small-file corpus (this machine's /usr trees): $small_files entries, $((small_bytes / 1000000)) MB."
fi
for t in small small-lz4hc small-verity; do
    wanted $t || continue
    small_table $t
    case $t in
        small) print_table "Small-file corpus, uncompressed ($(( $(stat -c %s "$small_img") / 1000000 )) MB, mkfs.erofs -b4096)" ;;
        small-lz4hc) print_table "Small-file corpus, lz4hc ($(( $(stat -c %s "$small_zimg") / 1000000 )) MB, mkfs.erofs -b4096 -zlz4hc)" ;;
        small-verity) print_table "Small-file corpus with and without --verity (sha256, 4 KiB blocks)" ;;
    esac
done
overheads() { # table metric...
    local t=$1 metric kind ratios; shift
    for metric in "$@"; do
        # Every verity figure is a time: overhead = extra time, per round.
        for kind in verity verity-once; do
            if [ "$kind" = verity ]; then ratios=${pairs[$t,$metric]}; else ratios=${opairs[$t,$metric]}; fi
            python3 -c "
import statistics, sys
t, k, m, ratios = sys.argv[1], sys.argv[2], sys.argv[3], [float(r) for r in sys.argv[4].split()]
print('%s: %s overhead, %s: %+.1f%% (median of %d paired rounds; %+.1f%% to %+.1f%%)' % (
    t, k, m, 100 * (statistics.median(ratios) - 1), len(ratios), 100 * (min(ratios) - 1), 100 * (max(ratios) - 1)))
" "$t" "$kind" "$metric" "$ratios"
        done
    done
}
wanted verity && overheads verity "${v_metrics[@]}"
wanted small-verity && overheads small-verity "${sv_metrics[@]}"
echo "Times: lower is better; MB/s and IOPS: higher is better. Ratios are against kernel erofs."
[ "$clean" -eq 0 ] || rm -rf "$work"
