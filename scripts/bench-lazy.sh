#!/usr/bin/env bash
# Benchmarks `erofs-fuse mount --lazy` over a throttled link (issue 21): a
# registry in a network namespace behind a veth shaped to 100 Mbit/s with
# `tc qdisc ... tbf` on both ends, reached through a relay on the host that
# adds 5 ms each way (scripts/lib/delay_relay.py: this kernel has no netem),
# so clients see 100 Mbit/s and a 10 ms round trip. Everything runs as one
# unprivileged user (rootless mounts and podman); run the script as root (it
# makes the user, the namespace and the veth, fixes the host as bench-pull.sh
# does, and drops the page cache before every measurement).
#
#   scripts/bench-lazy.sh [--size MB] [--rounds N] [--layers erofs|targz]
#                         [--attach] [--rate RATE] [--delay-ms MS] [--workdir DIR]
#
# The image is scripts/gen_image.py's (default 500 MB in 5 layers, busybox
# in the first, /bin/sh its entrypoint) with each layer converted to an
# EROFS-native layer (`erofs-fuse convert --mode full`, uncompressed:
# scripts/lib/erofs_image.py), kept in the workdir (default
# /var/tmp/erofs-fuse-bench-lazy) for the next run. --layers targz keeps
# gen_image.py's tar.gz layers and runs `erofs-fuse attach` after the push
# (tar index, zinfo and verity tree as referrers), so the mount reads them
# lazily and verified; --attach does the same for EROFS-native layers
# (verified instead of unverified). The bytes fetched then include the
# artifacts' (tree blocks, zinfo windows, tar indexes).
# Measured each round, from an empty store, the page cache dropped:
#   lazy mount    `mount --lazy REF MNT` until the command returns
#   lazy small    `mount --lazy REF MNT` then `cat MNT/etc/hostname`: time
#                 from the mount command until the cat succeeds, and bytes
#                 fetched (the relay counts what the registry sent)
#   lazy entry    then `cat MNT/bin/busybox` (the entrypoint, 2 MB), the
#                 same time and bytes counted from the mount command
#   lazy seq      then `cat` of 4 large files of the top layer (25 MB): its
#                 own time and bytes (sequential reads through the cache)
#   lazy podman   `podman unshare erofs-fuse mount --lazy -o allow_other`
#                 then `podman run --rootfs MNT:O /bin/sh -c true`
#   local podman  the same run on a local directory holding busybox alone:
#                 podman's own share of the time above
#   pull+cat      `erofs-fuse pull`, `mount REF MNT`, `cat MNT/etc/hostname`
#   skopeo        `skopeo copy docker://REF dir:DIR`
# (--lazy-only skips the last two, which take most of the time.)
# Targets (issue 21): the small file within 1 s of the mount command and
# under 2% of the image's bytes fetched; the container under 10%.
set -euo pipefail
cd "$(dirname "$0")/.."

lazy_only=0 attach=0 size=500 rounds=2 kind=erofs rate=100mbit delay_ms=5 work=/var/tmp/erofs-fuse-bench-lazy
while (($#)); do
    case "$1" in
        --size) size=$2; shift ;;
        --rounds) rounds=$2; shift ;;
        --layers) kind=$2; shift ;;
        --rate) rate=$2; shift ;;
        --delay-ms) delay_ms=$2; shift ;;
        --workdir) work=$2; shift ;;
        --lazy-only) lazy_only=1 ;;
        --attach) attach=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        *) echo "bench-lazy.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
for n in "$size" "$rounds" "$delay_ms"; do
    [[ "$n" =~ ^[0-9]+$ && "$n" != 0 ]] ||
        { echo "bench-lazy.sh: --size, --rounds and --delay-ms are positive numbers" >&2; exit 2; }
done
[[ "$rate" =~ ^[1-9][0-9]*[kmg]?bit$ ]] || { echo "bench-lazy.sh: --rate is like 100mbit" >&2; exit 2; }
case $kind in
    erofs) ;;
    targz) attach=1 ;;
    *) echo "bench-lazy.sh: --layers is erofs or targz" >&2; exit 2 ;;
esac

E2E_USER=${BENCH_USER:-erofs-lazy}
GECOS="erofs-fuse lazy benchmark (scripts/bench-lazy.sh)"
STATE=/run/erofs-fuse-bench-lazy.state
NETSTATE=/run/erofs-fuse-bench-lazy.netns
NS=erofs-bench-lazy VETH=efbl0 VETH_NS=efbl1
HOST_IP=10.231.77.1 NS_IP=10.231.77.2
PORT=${BENCH_PORT:-5058} CTL=$((PORT + 1))
W=$work/run
REF=127.0.0.1:$PORT/bench-lazy:1
PACKAGES=(podman crun uidmap slirp4netns fuse3 fuse-overlayfs containers-storage
          docker-registry skopeo busybox-static iproute2 curl bc)
UID_='' UHOME='' RUNDIR=''
log() { printf '[bench-lazy] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/rootless-host.sh
. scripts/lib/rootless-host.sh

as_user() {
    runuser -u "$E2E_USER" -- env -i HOME="$UHOME" USER="$E2E_USER" LOGNAME="$E2E_USER" \
        PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$RUNDIR" LANG=C.UTF-8 \
        W="$W" REF="$REF" CTL="$CTL" BIN="$W/erofs-fuse" "$@"
}

# The network namespace and its shaped veth, recorded in $NETSTATE first
# so that a later run removes them after a SIGKILL.
net_up() {
    net_down
    echo "$NS" >"$NETSTATE"
    ip netns add "$NS"
    ip link add "$VETH" type veth peer name "$VETH_NS" netns "$NS"
    ip addr add "$HOST_IP/30" dev "$VETH"
    ip link set "$VETH" up
    ip netns exec "$NS" ip addr add "$NS_IP/30" dev "$VETH_NS"
    ip netns exec "$NS" ip link set "$VETH_NS" up
    ip netns exec "$NS" ip link set lo up
}

shape() {
    tc qdisc add dev "$VETH" root tbf rate "$rate" burst 32kbit latency 400ms
    ip netns exec "$NS" tc qdisc add dev "$VETH_NS" root tbf rate "$rate" burst 32kbit latency 400ms
    log "link: $rate each way ($(tc qdisc show dev "$VETH" | head -1))"
}

net_down() {
    [ -f "$NETSTATE" ] || return 0
    local ns
    ns=$(cat "$NETSTATE")
    # Deleting the namespace deletes its end of the veth, and so the pair.
    [ "$ns" = "$NS" ] && ip netns del "$ns" 2>/dev/null
    ip link del "$VETH" 2>/dev/null || true
    rm -f "$NETSTATE"
}

start_registry() {
    printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s/registry}}\nhttp: {addr: "%s:5000"}\n' \
        "$W" "$NS_IP" >"$W/registry.yml"
    ip netns exec "$NS" docker-registry serve "$W/registry.yml" </dev/null >"$W/logs/registry.log" 2>&1 &
    echo $! >"$W/registry.pid"
    python3 scripts/lib/delay_relay.py "$PORT" "$NS_IP:5000" --delay-ms "$delay_ms" \
        --control-port "$CTL" >"$W/logs/relay.out" 2>"$W/logs/relay.log" &
    echo $! >"$W/relay.pid"
    local i
    for i in $(seq 100); do
        curl -fs --max-time 2 "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && return 0
        alive "$(cat "$W/registry.pid")" && alive "$(cat "$W/relay.pid")" || break
        sleep 0.1
    done
    cat "$W/logs/registry.log" "$W/logs/relay.log" >&2 || true
    die "registry or relay did not come up (logs above)"
}

unmount_all() {
    as_user bash -c 'fusermount3 -u -z "$W/mnt" 2>/dev/null; podman unshare fusermount3 -u -z "$W/mnt" 2>/dev/null; true'
}

reset_user_state() {
    unmount_all
    as_user bash -c 'rm -rf "$W/store" "$W/skopeo"; mkdir -p "$W/mnt"
        podman rm -af >/dev/null 2>&1; true'
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

finish() {
    local rc=$?
    trap - EXIT
    set +e
    [ -n "$RUNDIR" ] && [ -d "$W" ] && unmount_all
    local f
    for f in "$W/relay.pid" "$W/registry.pid"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
    done
    net_down
    [ -n "$RUNDIR" ] && as_user podman system migrate >/dev/null 2>&1
    restore_host
    exit "$rc"
}

# Measures one scenario as the user; the script it runs prints
# "NAME SECONDS BYTES" lines (bytes from the relay's counter).
measure() {
    reset_user_state
    as_user bash -c '
        set -e
        now() { date +%s.%N; }
        fetched() { local n; exec 3<>"/dev/tcp/127.0.0.1/$CTL"; read -r n <&3; exec 3<&-; echo "$n"; }
        since() { echo "$(echo "$1 - $2" | bc -l) $(($(fetched) - ${3:-$b0}))"; }
        b0=$(fetched)
        '"$1" >>"$W/results.raw" 2>>"$W/log" || die "failed: $1 (see $W/log)"
}

LAZY='t0=$(now)
    "$BIN" mount --lazy --insecure --store "$W/store" "$REF" "$W/mnt" >/dev/null 2>>"$W/log"
    t=$(now); echo "lazy-mount $(since "$t" "$t0")"
    cat "$W/mnt/etc/hostname" >/dev/null; t=$(now); echo "lazy-small $(since "$t" "$t0")"
    cat "$W/mnt/bin/busybox" >/dev/null; t=$(now); echo "lazy-entry $(since "$t" "$t0")"
    t1=$(now) b1=$(fetched)
    cat "$W"/mnt/usr/lib/big4-?.bin >/dev/null; t=$(now); echo "lazy-seq $(since "$t" "$t1" "$b1")"'
PODMAN='t0=$(now)
    podman unshare "$BIN" mount --lazy -o allow_other --insecure --store "$W/store" "$REF" "$W/mnt" >/dev/null 2>>"$W/log"
    podman run --rm --network=none --cgroups=disabled --rootfs "$W/mnt:O" /bin/sh -c true
    t=$(now); echo "lazy-podman $(since "$t" "$t0")"'
PULL='t0=$(now)
    "$BIN" pull --quiet --insecure --store "$W/store" "$REF" >/dev/null 2>>"$W/log"
    "$BIN" mount --insecure --store "$W/store" "$REF" "$W/mnt" >/dev/null 2>>"$W/log"
    cat "$W/mnt/etc/hostname" >/dev/null; t=$(now); echo "pull-small $(since "$t" "$t0")"'
LOCAL='t0=$(now)
    podman run --rm --network=none --cgroups=disabled --rootfs "$W/localroot:O" /bin/sh -c true
    t=$(now); echo "local-podman $(since "$t" "$t0")"'
SKOPEO='t0=$(now)
    skopeo copy -q --src-tls-verify=false "docker://$REF" "dir:$W/skopeo"
    t=$(now); echo "skopeo $(since "$t" "$t0")"'

main() {
    [ "$(id -u)" -eq 0 ] || die "run as root"
    restore_host
    trap finish EXIT
    trap 'exit 130' INT TERM
    install_packages
    ensure_user
    host_fixes
    cargo build --release --quiet
    # shellcheck source=scripts/lib/workdir.sh
    . scripts/lib/workdir.sh
    own_workdir "$work"
    # The test user works below it: it may pass through, not list or write.
    chmod 711 "$work"
    local tgz=$work/tgz-$size-5 image=$work/$kind-$size-5
    if [ ! -f "$tgz/index.json" ]; then
        log "generating a $size MB, 5-layer image in $tgz"
        rm -rf "$tgz.tmp"
        python3 scripts/gen_image.py 1 "$tgz.tmp" --size "$size" --layers 5 --tag 1 >&2
        mv "$tgz.tmp" "$tgz"
    fi
    if [ "$kind" = targz ]; then
        image=$tgz
    elif [ ! -f "$image/index.json" ]; then
        log "converting its layers to EROFS-native ones in $image"
        rm -rf "$image.tmp"
        python3 scripts/lib/erofs_image.py target/release/erofs-fuse "$tgz" "$image.tmp" >&2
        mv "$image.tmp" "$image"
    fi
    rm -rf "$W"
    install -d -m 755 -o "$E2E_USER" -g "$E2E_USER" "$W" "$W/logs"
    install -m 755 -o "$E2E_USER" target/release/erofs-fuse "$W/erofs-fuse"
    chmod -R a+rX "$image"
    # The podman baseline: the same run on a local root (busybox alone).
    install -d -m 755 -o "$E2E_USER" -g "$E2E_USER" "$W/localroot" "$W/localroot/bin"
    install -m 755 /bin/busybox "$W/localroot/bin/busybox"
    ln -s busybox "$W/localroot/bin/sh"
    : >"$W/log"
    chown "$E2E_USER" "$W/log"
    net_up
    start_registry
    log "pushing $image to $REF (before the link is shaped)"
    skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$image:1" "docker://$REF" >>"$W/log" 2>&1
    if ((attach)); then
        log "attaching layer indexes to $REF"
        target/release/erofs-fuse attach --quiet "$REF" --insecure --store "$W/attach-store" >>"$W/log" 2>&1
        rm -rf "$W/attach-store"
    fi
    shape
    local total
    total=$(python3 -c 'import json, sys
d = sys.argv[1]
m = json.load(open(d + "/index.json"))["manifests"][0]["digest"][7:]
print(sum(l["size"] for l in json.load(open(d + "/blobs/sha256/" + m))["layers"]))' "$image")
    echo "image $total" >"$W/results.raw"
    log "image: $((total / 1000000)) MB in 5 $kind layers$( ((attach)) && echo ", attached")"

    local r
    for ((r = 1; r <= rounds; r++)); do
        measure "$LAZY"
        measure "$PODMAN"
        measure "$LOCAL"
        if ! ((lazy_only)); then
            measure "$PULL"
            measure "$SKOPEO"
        fi
        log "round $r: $(tail -n $((lazy_only ? 6 : 8)) "$W/results.raw" | tr '\n' ' ')"
    done
    unmount_all
    report "$total" | tee "$W/report"
}

# The median of the numbers on stdin (the mean of the middle two for an
# even count), in plain notation for bc.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.6f\n", v[(NR + 1) / 2]; else printf "%.6f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

report() {
    local total=$1 name s b
    printf '\n%-38s %9s %12s %9s\n' "($rounds rounds, median)" "seconds" "MB fetched" "% image"
    for name in lazy-mount lazy-small lazy-entry lazy-seq lazy-podman local-podman pull-small skopeo; do
        grep -q "^$name " "$W/results.raw" || continue
        s=$(awk -v n="$name" '$1 == n { print $2 }' "$W/results.raw" | median)
        b=$(awk -v n="$name" '$1 == n { print $3 }' "$W/results.raw" | median)
        printf '%-38s %9.2f %12.1f %9.2f\n' "$(label "$name")" "$s" "$(echo "$b / 1000000" | bc -l)" \
            "$(echo "100 * $b / $total" | bc -l)"
        eval "S_${name//-/_}=$s B_${name//-/_}=$b"
    done
    echo
    target "first small file within 1 s of the mount" "$(echo "$S_lazy_small <= 1" | bc -l)" \
        "$(printf '%.2f s' "$S_lazy_small")"
    target "first small file under 2% of the image" "$(echo "100 * $B_lazy_small / $total < 2" | bc -l)" \
        "$(printf '%.2f%%' "$(echo "100 * $B_lazy_small / $total" | bc -l)")"
    target "sh -c true container under 10% of the image" "$(echo "100 * $B_lazy_podman / $total < 10" | bc -l)" \
        "$(printf '%.2f%%' "$(echo "100 * $B_lazy_podman / $total" | bc -l)")"
    ((lazy_only)) && return 0
    printf 'lazy small file vs pull+mount+cat: %.1fx sooner; vs skopeo copy: %.1fx sooner\n' \
        "$(echo "$S_pull_small / $S_lazy_small" | bc -l)" "$(echo "$S_skopeo / $S_lazy_small" | bc -l)"
}

label() {
    case $1 in
        lazy-mount) echo "mount --lazy (the command alone)" ;;
        lazy-small) echo "mount --lazy + cat small file" ;;
        lazy-entry) echo "mount --lazy + cat entrypoint" ;;
        lazy-seq) echo "then cat 4 big files (25 MB)" ;;
        lazy-podman) echo "mount --lazy + podman run sh -c true" ;;
        local-podman) echo "(podman run on a local busybox dir)" ;;
        pull-small) echo "pull + mount + cat small file" ;;
        skopeo) echo "skopeo copy (dir:)" ;;
    esac
}

target() { # what, 1 if met, figure
    local verdict=FAIL
    [ "$2" = 1 ] && verdict=PASS
    printf '%-4s %-46s %s\n' "$verdict" "$1" "$3"
}

main
