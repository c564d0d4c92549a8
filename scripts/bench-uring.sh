#!/usr/bin/env bash
# Does FUSE over io_uring pay for erofs-fuse's request mix? (issue 25)
#
# fuser (our FUSE library) does not speak the io_uring transport, so this
# measures it with libfuse's passthrough_hp example, built from libfuse's
# source (3.18 or newer), serving the same directory tree once over the
# classic /dev/fuse transport and once over io_uring (`-o io_uring`, with
# /sys/module/fuse/parameters/enable_uring=Y), everything else equal.
#
#   scripts/bench-uring.sh [--rounds N] [--tree DIR] [--workdir DIR]
#                          [--libfuse-git GITDIR] [--tag TAG] [--no-counts]
#                          [--num-threads N] [--hp-opt OPT]...
#
# Needs: root; a kernel with CONFIG_FUSE_IO_URING (the enable_uring module
# parameter); perf (for the request counts); libfuse source as a git dir
# (default /work/.mirror/libfuse+libfuse/repo, as the session's `fetch` of
# github:libfuse/libfuse leaves it; else it is cloned from GitHub) of which
# tag TAG (default fuse-3.18.2) is built with meson/ninja into
# WORKDIR/libfuse-VERSION-stock/build if not built yet (deps: meson, ninja-build,
# pkg-config, g++, liburing-dev, libnuma-dev; apt-installed if
# missing). It is never installed: the example finds its libfuse3.so through
# its build-tree rpath. Stock passthrough_hp holds an O_PATH descriptor for
# every inode the kernel knows, and RLIMIT_NOFILE's hard limit here is
# 20000 (root without CAP_SYS_RESOURCE cannot raise it), so the tree must
# have fewer entries than that.
# The tree (default: WORKDIR/tree, made once from the python3.11, doc and
# include trees of scripts/bench.sh's small-file corpus, 15,954 entries and
# 323 MB) is only read: it is served through a read-only, noatime bind
# mount so that not even atimes change.
#
# Both modes run passthrough_hp with the same options: --nopassthrough (every
# READ reaches the server, as with erofs-fuse; FUSE passthrough would hand
# them to the backing file), --nosplice (replies are written from memory, as
# fuser does), default caching (entry/attr timeout 86400 s, keep_cache,
# cache_readdir; passthrough_hp then also asks for the writeback cache),
# default threads (classic: libfuse's multi-threaded loop, up to 10
# workers; io_uring: libfuse's one ring thread per CPU, pinned, queue depth
# 8, beside the idle /dev/fuse workers; --num-threads N passes
# passthrough_hp's --num-threads N to both, which caps the classic workers
# and the idle /dev/fuse workers of io_uring mode; --hp-opt OPT adds OPT,
# e.g. --clone-fd, to both), -o ro, --foreground.
#
# Each round (classic then io_uring, alternating; N rounds each, default 7),
# each figure after `sync; echo 3 > /proc/sys/vm/drop_caches` and a fresh
# mount:
#   walk cold   find . -printf '%i %s %T@\n' >/dev/null
#   walk warm   the same again at once
#   read cold   tar cf - . | wc -c >/dev/null
#   read warm   the same again at once
#   cpu         the server's utime+stime (/proc/PID/stat) over the cold and
#               over the warm read, in seconds
# Prints every round's figures, then per figure the medians of each mode and
# the median, min and max of the per-round ratios io_uring/classic. Then
# (unless --no-counts) one more cold full read per mode under
# `perf record -e fuse:fuse_request_send,fuse:fuse_request_end -a` (filtered
# to the mount's connection) and prints the requests by opcode.
#
# Runs itself at nice 19 and idle I/O class. On exit (also on INT/TERM) it
# unmounts everything it mounted, stops its servers and restores
# enable_uring's original value.
set -euo pipefail

ROUNDS=7
TREE=
SMALL=/var/tmp/erofs-fuse-bench/small/tree
WORK=/var/tmp/uring-bench
LIBFUSE_GIT=/work/.mirror/libfuse+libfuse/repo
TAG=fuse-3.18.2
COUNTS=1
THREADS=
EXTRA_OPTS=()
while [[ $# -gt 0 ]]; do
	case $1 in
	--rounds) ROUNDS=$2; shift 2 ;;
	--tree) TREE=$2; shift 2 ;;
	--workdir) WORK=$2; shift 2 ;;
	--libfuse-git) LIBFUSE_GIT=$2; shift 2 ;;
	--tag) TAG=$2; shift 2 ;;
	--no-counts) COUNTS=0; shift ;;
	--num-threads) THREADS=$2; shift 2 ;;
	--hp-opt) EXTRA_OPTS+=("$2"); shift 2 ;;
	-h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
	*) echo "unknown argument: $1" >&2; exit 2 ;;
	esac
done

[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }
PARAM=/sys/module/fuse/parameters/enable_uring
[[ -e $PARAM ]] || { echo "$PARAM missing: kernel without CONFIG_FUSE_IO_URING" >&2; exit 1; }
# Root writes there: it must be ours, not another user's or a symlink.
# shellcheck source=scripts/lib/workdir.sh
. "$(dirname "$0")/lib/workdir.sh"
own_workdir "$WORK"
if [[ -z $TREE ]]; then
	TREE=$WORK/tree
	if [[ ! -d $TREE ]]; then
		[[ -d $SMALL ]] || { echo "no small-file corpus at $SMALL (scripts/bench.sh --tables small makes it)" >&2; exit 1; }
		mkdir -p "$TREE.part/usr/lib" "$TREE.part/usr/share"
		cp -a "$SMALL/usr/lib/python3.11" "$TREE.part/usr/lib/"
		cp -a "$SMALL/usr/share/doc" "$TREE.part/usr/share/"
		cp -a "$SMALL/usr/include" "$TREE.part/usr/"
		mv "$TREE.part" "$TREE"
	fi
fi
[[ -d $TREE ]] || { echo "no tree at $TREE" >&2; exit 1; }
entries=$(find "$TREE" | wc -l)
[[ $entries -lt 19000 ]] || { echo "$TREE has $entries entries: stock passthrough_hp needs a descriptor for each (limit 20000)" >&2; exit 1; }

# Be gentle with whatever else runs on the machine; children inherit both.
renice -n 19 -p $$ >/dev/null
ionice -c3 -p $$

VER=${TAG#fuse-}
SRC=$WORK/libfuse-$VER-stock
HP=$SRC/build/example/passthrough_hp
SRCMNT=$WORK/src    # read-only bind mount of the tree
MNT=$WORK/mnt       # the FUSE mount
ORIG_PARAM=$(cat "$PARAM")
SERVER_PID=
MOUNTED_SRC=0

log() { printf '%s\n' "$*" >&2; }

cleanup() {
	set +e
	if mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
	if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null
	fi
	if [[ $MOUNTED_SRC -eq 1 ]] && mountpoint -q "$SRCMNT"; then umount "$SRCMNT"; fi
	echo "$ORIG_PARAM" >"$PARAM"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- libfuse -------------------------------------------------------------
build_libfuse() {
	local need=()
	command -v meson >/dev/null || need+=(meson)
	command -v ninja >/dev/null || need+=(ninja-build)
	command -v pkg-config >/dev/null || need+=(pkg-config)
	command -v g++ >/dev/null || need+=(g++)
	dpkg -s liburing-dev >/dev/null 2>&1 || need+=(liburing-dev)
	dpkg -s libnuma-dev >/dev/null 2>&1 || need+=(libnuma-dev)
	if [[ ${#need[@]} -gt 0 ]]; then
		log "installing build deps: ${need[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >&2
	fi
	rm -rf "$SRC"; mkdir -p "$SRC"
	if [[ -d $LIBFUSE_GIT ]]; then
		git --git-dir="$LIBFUSE_GIT" archive "$TAG" | tar x -C "$SRC"
	else
		git clone -q --depth 1 --branch "$TAG" https://github.com/libfuse/libfuse "$SRC"
	fi
	(cd "$SRC" && meson setup build -Dexamples=true -Dtests=false -Dutils=false \
		-Duseroot=false >&2 && ninja -C build example/passthrough_hp >&2)
	grep -q '^#define HAVE_URING' "$SRC/build/fuse_config.h" ||
		{ log "libfuse built without io_uring (liburing with SQE128 and libnuma needed)"; exit 1; }
}
[[ -x $HP ]] || build_libfuse
log "passthrough_hp: $HP (libfuse $VER)"

# ---- mounts --------------------------------------------------------------
mkdir -p "$SRCMNT" "$MNT"
if ! mountpoint -q "$SRCMNT"; then
	mount --bind "$TREE" "$SRCMNT"
	MOUNTED_SRC=1
	mount -o remount,bind,ro,noatime "$SRCMNT"
fi

HP_OPTS=(--foreground --nopassthrough --nosplice -o ro)
[[ -z $THREADS ]] || HP_OPTS+=(--num-threads "$THREADS")
HP_OPTS+=(${EXTRA_OPTS[@]+"${EXTRA_OPTS[@]}"})

start_server() { # MODE: classic | uring
	local mode=$1 extra=()
	if [[ $mode == uring ]]; then
		echo Y >"$PARAM"
		extra=(-o io_uring)
	else
		echo "$ORIG_PARAM" >"$PARAM"
	fi
	"$HP" "${HP_OPTS[@]}" "${extra[@]}" "$SRCMNT" "$MNT" 2>>"$WORK/server-$mode.log" &
	SERVER_PID=$!
	local i
	for i in $(seq 500); do
		if [[ $(findmnt -n -o FSTYPE --mountpoint "$MNT" 2>/dev/null) == fuse* ]] &&
			ls "$MNT" >/dev/null 2>&1; then
			break
		fi
		kill -0 "$SERVER_PID" 2>/dev/null || { log "server died, see $WORK/server-$mode.log"; exit 1; }
		sleep 0.01
	done
	# The ring is set up at INIT; check it is there (or not).
	local rings
	rings=$(find /proc/"$SERVER_PID"/fd -lname 'anon_inode:*io_uring*' 2>/dev/null | wc -l)
	if [[ $mode == uring && $rings -eq 0 ]]; then
		log "io_uring mode without io_uring fds: see $WORK/server-$mode.log"; exit 1
	fi
	if [[ $mode == classic && $rings -ne 0 ]]; then
		log "classic mode with io_uring fds?"; exit 1
	fi
}

stop_server() {
	umount "$MNT"
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
}

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
CLK=$(getconf CLK_TCK)
cpu() { awk -v clk="$CLK" '{ printf "%.2f", ($14 + $15) / clk }' /proc/"$SERVER_PID"/stat; }

walk() { (cd "$MNT" && find . -printf '%i %s %T@\n' >/dev/null); }
readall() { (cd "$MNT" && tar cf - . | wc -c >/dev/null); }

SUFFIX=$(printf '%s' "${HP_OPTS[*]:5}" | tr -cs 'a-z0-9' '-')
RES=$WORK/results${SUFFIX:+-${SUFFIX#-}}.txt
: >"$RES"
record() { echo "$1 $2 $3 $4" >>"$RES"; } # round mode figure value

one_mode() { # ROUND MODE
	local r=$1 m=$2 t0 t1 c0 c1
	# walk: cold, then warm
	start_server "$m"; drop
	t0=$(now); walk; t1=$(now); record "$r" "$m" walk_cold "$(elapsed "$t0" "$t1")"
	t0=$(now); walk; t1=$(now); record "$r" "$m" walk_warm "$(elapsed "$t0" "$t1")"
	stop_server
	# full read: cold, then warm
	start_server "$m"; drop
	c0=$(cpu); t0=$(now); readall; t1=$(now); c1=$(cpu)
	record "$r" "$m" read_cold "$(elapsed "$t0" "$t1")"
	record "$r" "$m" cpu_read_cold "$(elapsed "$c0" "$c1")"
	c0=$(cpu); t0=$(now); readall; t1=$(now); c1=$(cpu)
	record "$r" "$m" read_warm "$(elapsed "$t0" "$t1")"
	record "$r" "$m" cpu_read_warm "$(elapsed "$c0" "$c1")"
	stop_server
	grep "^$r $m " "$RES" | awk '{ printf "%s=%s ", $3, $4 } END { print "" }' |
		sed "s/^/round $r $m: /; s/\$/ loadavg=$(cut -d' ' -f1 \/proc\/loadavg)/" >&2
}

log "tree: $TREE ($(find "$SRCMNT" | wc -l) entries), $ROUNDS rounds, options: ${HP_OPTS[*]}"
for r in $(seq "$ROUNDS"); do
	one_mode "$r" classic
	one_mode "$r" uring
done

echo
echo "passthrough_hp (libfuse $VER) ${HP_OPTS[*]}, $ROUNDS paired rounds; times and server CPU in s"
echo "$(uname -r), $(nproc) CPUs, tree $TREE"
printf '%-14s %9s %9s %22s\n' figure classic io_uring 'uring/classic (range)'
for f in walk_cold walk_warm read_cold read_warm cpu_read_cold cpu_read_warm; do
	awk -v f="$f" '
	function median(a, n,   i, j, t) {
		for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
		return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
	}
	$3 == f { v[$2, $1] = $4; if ($1 > n) n = $1 }
	END {
		for (i = 1; i <= n; i++) { c[i] = v["classic", i]; u[i] = v["uring", i]
			q[i] = (c[i] > 0) ? u[i] / c[i] : 0 }
		mc = median(c, n); mu = median(u, n); mq = median(q, n)
		printf "%-14s %9.3f %9.3f %8.2fx (%.2f-%.2f)\n", f, mc, mu, mq, q[1], q[n]
	}' "$RES"
done
echo "per-round values: $RES"

# ---- request counts --------------------------------------------------------
if [[ $COUNTS -eq 1 ]]; then
	for m in classic uring; do
		start_server "$m"
		# The tracepoints' connection is the mount's (anonymous) device number.
		dev=$(stat -c %d "$MNT")
		drop
		c0=$(cpu)
		perf record -q -o "$WORK/perf-$m.data" -a \
			-e fuse:fuse_request_send --filter "connection == $dev" \
			-e fuse:fuse_request_end --filter "connection == $dev" \
			-- bash -c "cd '$MNT' && tar cf - . | wc -c >/dev/null" 2>/dev/null
		c1=$(cpu)
		threads=$(for t in /proc/"$SERVER_PID"/task/*; do
			awk -v clk="$CLK" -v comm="$(cat "$t"/comm)" \
				'{ printf "%s %.2f s, ", comm, ($14 + $15) / clk }' "$t"/stat
		done)
		stop_server
		echo
		echo "$m: requests of one cold full read (server CPU $(elapsed "$c0" "$c1") s;"
		echo "  per thread since mount: ${threads%, })"
		perf script -i "$WORK/perf-$m.data" -F event,trace 2>/dev/null | awk '
			/fuse_request_send/ { n++; if (match($0, /\(FUSE_[A-Z_]+\)/)) s[substr($0, RSTART+1, RLENGTH-2)]++ }
			/fuse_request_end/ { e++ }
			END { for (k in s) printf "  %-18s %8d\n", k, s[k] | "sort -k2 -nr"; close("sort -k2 -nr")
			      printf "  %-18s %8d (fuse_request_end: %d)\n", "total sent", n, e }'
	done
fi
exit 0
