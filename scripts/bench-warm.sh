#!/usr/bin/env bash
# Where the warm walk and warm full read of an image go: the kernel's
# erofs against erofs-fuse, both mounted at once, taking turns (issue 25).
#
#   scripts/bench-warm.sh [--rounds N] [--image IMG] [--workdir DIR]
#
# A warm walk or read sends no request to erofs-fuse (everything is in the
# kernel's caches), so what differs is the kernel's code on each side:
# erofs's, or FUSE's page-cache and dentry paths. Each figure is given as
# elapsed time and as the CPU time of the reading processes (user +
# system): when the two agree, the work is all in the readers, and the
# server's own CPU time over the rounds (printed last) shows it did none.
#
# IMG defaults to the small-file corpus scripts/bench.sh leaves in its
# workdir (WORKDIR/small/small.erofs; run `scripts/bench.sh --tables small`
# once to make it). Both mounts are read once whole first (tar), then each
# round runs, kernel then erofs-fuse:
#   walk   find . -printf '%i %s %T@\n' >/dev/null
#   read   tar cf - . | wc -c >/dev/null
# timing each with bash's `time` (elapsed, and user + system of the command
# and its children, in ms). Prints every round, then per figure the medians and the
# median of the per-round ratios erofs-fuse / kernel. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=15 work=/var/tmp/erofs-fuse-bench image=
while (($#)); do
    case "$1" in
        --rounds) rounds=$2; shift
            [[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "bench-warm.sh: --rounds takes a positive number" >&2; exit 2; } ;;
        --image) image=$2; shift ;;
        --workdir) work=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench-warm.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "bench-warm.sh: run as root" >&2; exit 1; }
image=${image:-$work/small/small.erofs}
[ -f "$image" ] || { echo "bench-warm.sh: $image: no such image (run scripts/bench.sh --tables small first, or give --image)" >&2; exit 1; }

cargo build --release --quiet
bin=$PWD/target/release/erofs-fuse
mnt=$(mktemp -d /tmp/bench-warm.XXXXXX)
mkdir "$mnt/kernel" "$mnt/fuse"
cleanup() {
    umount "$mnt/kernel" 2>/dev/null || true
    umount "$mnt/fuse" 2>/dev/null || true
    rmdir "$mnt/kernel" "$mnt/fuse" "$mnt" 2>/dev/null || true
}
trap cleanup EXIT INT TERM

mount -t erofs -o ro,loop "$image" "$mnt/kernel"
"$bin" mount "$image" "$mnt/fuse"
for side in kernel fuse; do (cd "$mnt/$side" && tar cf - . | wc -c >/dev/null); done
server=$(pgrep -n -f "^$bin mount $image $mnt/fuse\$") \
    || { echo "bench-warm.sh: the erofs-fuse server of $mnt/fuse not found" >&2; exit 1; }
# utime + stime of the server process (all threads), in clock ticks.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$server/stat"; }
ticks0=$(server_ticks)

# One run of $2 in $1: "elapsed cpu" in seconds.
run() { # dir command
    (cd "$1" && TIMEFORMAT='%3R %3U %3S' && { time sh -c "$2 >/dev/null"; } 2>&1) \
        | awk 'END { printf "%.3f %.3f", $1, $2 + $3 }'
}
walk="find . -printf '%i %s %T@\n'"
read_all="tar cf - . | wc -c"

results=()
echo "round  walk: kernel s (cpu)  erofs-fuse s (cpu)   read: kernel s (cpu)  erofs-fuse s (cpu)"
for round in $(seq "$rounds"); do
    wk=$(run "$mnt/kernel" "$walk") wf=$(run "$mnt/fuse" "$walk")
    rk=$(run "$mnt/kernel" "$read_all") rf=$(run "$mnt/fuse" "$read_all")
    results+=("$wk $wf $rk $rf")
    printf '%5d  %s  %s   %s  %s\n' "$round" "$wk" "$wf" "$rk" "$rf"
done

ticks1=$(server_ticks)
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [list(map(float, line.split())) for line in sys.stdin if line.strip()]
for name, base in (("walk", 0), ("read", 4)):
    for what, col in (("elapsed", 0), ("cpu", 1)):
        k = [r[base + col] for r in rows]
        f = [r[base + 2 + col] for r in rows]
        ratios = [b / a for a, b in zip(k, f) if a > 0]
        print("%s %-7s kernel %.3f s, erofs-fuse %.3f s (medians); erofs-fuse/kernel median %.2fx (%.2f-%.2f)"
              % (name, what, statistics.median(k), statistics.median(f),
                 statistics.median(ratios), min(ratios), max(ratios)))
'
echo "erofs-fuse server CPU over all the rounds: $(( (ticks1 - ticks0) * 1000 / $(getconf CLK_TCK) )) ms"
