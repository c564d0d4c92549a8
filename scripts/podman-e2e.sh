#!/usr/bin/env bash
# End-to-end test: rootless podman running containers whose root filesystem
# is served by erofs-fuse. Run as root on Debian 12 (CI: a fresh machine).
#
#   sudo scripts/podman-e2e.sh            # builds target/release/erofs-fuse first
#   sudo BIN=/path/to/erofs-fuse scripts/podman-e2e.sh
#
# What it does (background and the fixes: /work/shared/docs/rootless-podman.md):
#  1. root: installs the Debian packages, makes the host fixes rootless podman
#     needs on these machines (/dev/fuse 0666, crun's hybrid-cgroup check,
#     a test user with subuids, /run/user/UID), starts docker-registry on
#     127.0.0.1:$E2E_PORT as that user;
#  2. the user: builds a two-layer OCI image by hand (scripts/oci_layers.py:
#     whiteout, opaque dir, uid 1000 file), pushes it with skopeo, and checks
#     three ways of running it (contents, ownership, whiteout, opaque dir,
#     permissions, and that container writes never reach the image):
#       (a) one merged erofs-fuse mount of both layers (--layer ... --layer),
#           layers converted with --aufs and without, as `podman run --rootfs MNT:O`
#       (b) erofs-fuse as podman's additional layer store (`store add` +
#           `store serve`): `podman pull` must take the layers from it
#       (c) kernel overlayfs (userxattr) over one erofs-fuse mount per layer
#           (--overlay-xattrs user), as `podman run --rootfs MERGED:O`
#  3. root, at exit (also after a failure or ^C): stops everything it started
#     and undoes the machine-level changes. The test user (default erofs-e2e)
#     and its home are left in place so reruns are fast; remove them with
#     `userdel -r erofs-e2e`. A run that was killed with SIGKILL leaves a state
#     file (/run/erofs-fuse-podman-e2e.state); the next run undoes it first.
#
# Every FUSE server runs in the foreground inside `podman unshare`, i.e. in
# podman's rootless user+mount namespace (held by its pause process): mounts
# made there are visible to `podman run` and the image's uids 0/1000 show up
# as 0/1000 in the container. A mount made in the host namespace would be
# invisible to podman or show every file as 65534 (doc, section 3).
#
# Ulimits: nothing is changed. Only root podman trips over this machine's
# RLIMIT_NOFILE hard limit (it asks for 1048576 without CAP_SYS_RESOURCE);
# rootless podman keeps the caller's limits, and everything here is rootless.
#
# Environment: BIN (erofs-fuse binary), E2E_USER (erofs-e2e), E2E_PORT (5055),
# E2E_WORK (/var/lib/erofs-fuse-e2e/podman4: logs stay there after the run),
# E2E_TIMEOUT (60 s per podman/mount command).
# Output ends with "podman-e2e: N passed, M failed"; exit status 1 on any failure.

# Single-quoted scripts for sh -c / podman run expand in the inner shell.
# shellcheck disable=SC2016
set -euo pipefail

E2E_USER=${E2E_USER:-erofs-e2e}
PORT=${E2E_PORT:-5055}
W=${E2E_WORK:-/var/lib/erofs-fuse-e2e/podman4}
TIMEOUT=${E2E_TIMEOUT:-60}
STATE=/run/erofs-fuse-podman-e2e.state
GECOS="erofs-fuse podman e2e (scripts/podman-e2e.sh)"
REF=localhost:$PORT/e2e:1
UID_='' UHOME='' RUNDIR='' USER_PART=''  # set by user_vars / root_main
PACKAGES=(podman crun uidmap slirp4netns fuse3 fuse-overlayfs containers-storage
          docker-registry skopeo busybox-static python3 curl)

log() { printf '[podman-e2e] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
# Every podman/skopeo/mount command gets a deadline, so a wedged FUSE server
# or registry fails the run instead of hanging CI. On expiry timeout(1)
# signals its whole process group, servers started by that command included.
t() { timeout -k 10 "$TIMEOUT" "$@"; }
# alive, install_packages, ensure_user, user_vars, host_fixes, restore_host,
# start_registry (the user part runs from a copy in $W, with lib/ beside it).
# shellcheck source=lib/rootless-host.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/rootless-host.sh"
# record, check, compare, report_results.
# shellcheck source=lib/e2e-results.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/e2e-results.sh"

###########################################################################
# Root part
###########################################################################

# Runs a command as the test user with a clean, fixed environment. One fixed
# XDG_RUNTIME_DIR: skopeo needs one (no logind here), and podman's database
# remembers the runroot of its first run.
as_user() {
    runuser -u "$E2E_USER" -- env -i HOME="$UHOME" USER="$E2E_USER" LOGNAME="$E2E_USER" \
        PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="$RUNDIR" LANG=C.UTF-8 \
        W="$W" PORT="$PORT" REF="$REF" TIMEOUT="$TIMEOUT" BIN="$W/bin/erofs-fuse" "$@"
}

# Stops what a run (this one, or an earlier one that was killed) left in the
# test user's podman: FUSE servers, containers, the test image, the layer
# store config, the registry, and the pause process that holds the rootless
# namespace and every mount made in it.
cleanup_user() {
    id -u "$E2E_USER" >/dev/null 2>&1 || return 0
    user_vars
    local pidf pid
    if [ -d "$RUNDIR" ] && [ -f "$W/e2e-user.sh" ]; then
        as_user timeout -k 5 60 bash "$W/e2e-user.sh" --cleanup || true
    fi
    for pidf in "$W"/pids/*.pid "$W/registry.pid"; do
        [ -f "$pidf" ] || continue
        pid=$(cat "$pidf")
        if [ -n "$pid" ] && alive "$pid"; then kill "$pid" 2>/dev/null || true; fi
    done
    if [ -d "$RUNDIR" ]; then
        # Stops the pause process; the namespace and its mounts go with it.
        as_user timeout -k 5 60 podman system migrate >/dev/null 2>&1 || true
    fi
    # Whatever is left (conmon, catatonit, registry children), but only for
    # the account this script made, never for a real user's.
    if [ "$(getent passwd "$E2E_USER" | cut -d: -f5)" = "$GECOS" ]; then
        local pids
        pids=$(pgrep -u "$UID_" || true)
        if [ -n "$pids" ]; then
            # shellcheck disable=SC2086  # a list of pids
            kill $pids 2>/dev/null || true
            sleep 1
            pids=$(pgrep -u "$UID_" || true)
            # shellcheck disable=SC2086
            [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
        fi
    fi
}

build_binary() {
    if [ -n "${BIN:-}" ]; then
        [ -x "$BIN" ] || die "BIN=$BIN is not executable"
        return 0
    fi
    local repo cargo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
    [ -x "$cargo" ] || die "no cargo: install Rust or set BIN=/path/to/erofs-fuse"
    log "build: cargo build --release (in $repo)"
    (cd "$repo" && "$cargo" build --release --quiet)
    BIN=${CARGO_TARGET_DIR:-$repo/target}/release/erofs-fuse
    [ -x "$BIN" ] || die "$BIN not built"
}

prepare_work() {
    # Mounts live only in the (now stopped) rootless namespace; refuse to
    # rm -rf across anything still mounted in ours.
    if findmnt -rn -o TARGET | grep -q "^$W\(/\|$\)"; then
        die "something is mounted under $W"
    fi
    rm -rf --one-file-system "$W"
    install -d -m 755 -o "$E2E_USER" -g "$E2E_USER" "$W"
    local d
    for d in bin logs pids mnt; do install -d -m 755 -o "$E2E_USER" -g "$E2E_USER" "$W/$d"; done
    # Copies the user can read whatever the checkout's permissions are
    # (e.g. a repo under /root).
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    install -m 755 -o "$E2E_USER" -g "$E2E_USER" "${BASH_SOURCE[0]}" "$W/e2e-user.sh"
    install -m 755 -o "$E2E_USER" -g "$E2E_USER" "$here/oci_layers.py" "$W/oci_layers.py"
    install -d -m 755 -o "$E2E_USER" -g "$E2E_USER" "$W/lib"
    install -m 644 -o "$E2E_USER" -g "$E2E_USER" "$here/lib/rootless-host.sh" "$W/lib/rootless-host.sh"
    install -m 644 -o "$E2E_USER" -g "$E2E_USER" "$here/lib/e2e-results.sh" "$W/lib/e2e-results.sh"
    install -m 755 -o "$E2E_USER" -g "$E2E_USER" "$BIN" "$W/bin/erofs-fuse"
    : >"$W/results"
    chown "$E2E_USER:" "$W/results"
}

root_exit() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    log "teardown"
    if [ -n "$USER_PART" ] && kill -0 "$USER_PART" 2>/dev/null; then
        kill "$USER_PART" 2>/dev/null    # runuser passes it on to the user's shell
        wait "$USER_PART" 2>/dev/null
    fi
    cleanup_user
    restore_host
    report_results podman-e2e "$rc"
    exit $?
}

root_main() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and fixes the host)"
    check_work_parent "$W"
    # Undo what a killed earlier run left behind, before recording anew.
    restore_host
    rm -f "$W/results"   # an early failure must not count an old run's results
    trap root_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install_packages
    ensure_user
    build_binary
    host_fixes
    cleanup_user
    prepare_work
    start_registry
    log "rootless part as $E2E_USER (uid $UID_, XDG_RUNTIME_DIR=$RUNDIR, nofile $(ulimit -Sn)/$(ulimit -Hn))"
    # Failed checks are recorded in $W/results; a non-zero status here means
    # the rootless part could not even run its paths. In the background so
    # that SIGINT/SIGTERM reach root_exit at once (bash runs traps only
    # between foreground commands, but does interrupt `wait`).
    as_user bash "$W/e2e-user.sh" --as-user &
    USER_PART=$!
    wait "$USER_PART"
    USER_PART=
}

###########################################################################
# Rootless part (runs as the test user; W, PORT, REF, TIMEOUT, BIN set)
###########################################################################

RUNARGS=(--rm --network=none --cgroups=disabled)
# The image as the container and the mounts see it. Arguments: the root to
# look at ("" inside the container) and "write" to also try writes (only
# inside the container: the image side must stay unchanged).
VIEW='r=$1 mode=${2:-}; set -f
echo "hello=$(cat "$r/etc/hello")"
echo "top=$(cat "$r/etc/top")"
echo "owned1000=$(cat "$r/etc/owned1000")"
echo "owner_owned1000=$(stat -c %u:%g "$r/etc/owned1000")"
echo "mode_owned1000=$(stat -c %a "$r/etc/owned1000")"
echo "owner_hello=$(stat -c %u:%g "$r/etc/hello")"
if test -e "$r/etc/deleted" || test -L "$r/etc/deleted"; then echo deleted=present; else echo deleted=absent; fi
if test -e "$r/etc/.wh.deleted"; then echo whiteout_file=present; else echo whiteout_file=absent; fi
set -- $(ls -A "$r/opq"); echo "opq=$*"
if test -e "$r/newfile"; then echo newfile=present; else echo newfile=absent; fi
if test "$mode" = write; then
  echo x > /etc/hello && echo "write_hello=$(cat /etc/hello)"
  : > /newfile && echo write_newfile=made
fi'
EXPECT_VIEW='hello=hello from layer 2
top=top
owned1000=mine
owner_owned1000=1000:1000
mode_owned1000=640
owner_hello=0:0
deleted=absent
whiteout_file=absent
opq=c
newfile=absent'
EXPECT_WRITE='write_hello=x
write_newfile=made'

# podman unshare with a deadline: a shell in podman's user+mount namespace.
pu() { t podman unshare "$@"; }

# Starts a foreground FUSE server inside podman's namespace and waits until
# MOUNTPOINT is mounted there. The server outlives `podman unshare` (the
# pause process keeps the namespace); its pid and mountpoint are recorded
# for unmount_all.
SEQ=0
start_fuse() { # name mountpoint command...
    local name=$1 mnt=$2
    shift 2
    SEQ=$((SEQ + 1))
    local base
    base=$W/pids/$(printf %02d "$SEQ")-$name
    mkdir -p "$mnt"
    echo "$mnt" >"$base.mnt"
    log "$name: podman unshare $*"
    serve_until_mounted "$mnt" "$W/logs/$name.out" "$base.pid" "$@" ||
        { record FAIL "$name: server did not mount $mnt"; return 1; }
}

# Kernel overlay mount inside podman's namespace (recorded for unmount_all).
mount_overlay() { # name lowerdir merged
    SEQ=$((SEQ + 1))
    mkdir -p "$3"
    echo "$3" >"$W/pids/$(printf %02d "$SEQ")-$1.mnt"
    log "$1: podman unshare mount -t overlay overlay -o userxattr,lowerdir=$2 $3"
    pu mount -t overlay overlay -o "userxattr,lowerdir=$2" "$3"
}

# Unmounts everything start_fuse/mount_overlay recorded, newest first, and
# checks each FUSE server ends with its mount (fusermount3 -u is how users
# stop it). Servers that do not are killed so the next path starts clean.
unmount_all() {
    local m base mnt pid mnts=() i
    for m in "$W"/pids/*.mnt; do [ -f "$m" ] && mnts=("$m" "${mnts[@]}"); done
    for m in "${mnts[@]}"; do
        base=${m%.mnt}
        mnt=$(cat "$m")
        if [ -f "$base.pid" ]; then
            pid=$(cat "$base.pid" 2>/dev/null || echo 0)
            if pu mountpoint -q "$mnt"; then
                pu fusermount3 -u "$mnt" || log "fusermount3 -u $mnt failed"
                for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
                if alive "$pid"; then
                    record FAIL "${base##*/[0-9][0-9]-}: server still running 10 s after fusermount3 -u"
                fi
            fi
            # Never mounted, or did not stop: end it so the next path starts clean.
            if alive "$pid"; then
                kill "$pid" 2>/dev/null || true
                sleep 1
                if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
            fi
            rm -f "$base.pid"
        else
            if pu mountpoint -q "$mnt"; then pu umount "$mnt" || log "umount $mnt failed"; fi
        fi
        rm -f "$m"
    done
}

storage_conf() { echo "$HOME/.config/containers/storage.conf"; }

# Leaves podman as a path found it: no container, no test image, no layer
# store config, nothing mounted.
cleanup_path() {
    t podman rm -af -t 0 >/dev/null 2>&1 || true
    if t podman image exists "$REF" 2>/dev/null; then
        t podman rmi -f "$REF" >/dev/null 2>&1 || log "podman rmi $REF failed"
    fi
    # Only remove the config this script wrote.
    if grep -qs 'podman-e2e.sh' "$(storage_conf)"; then rm -f "$(storage_conf)"; fi
    unmount_all
}

# Runs the checks in a container. Arguments: name, then podman run's
# arguments for the root (--rootfs DIR:O, or an image).
check_container() {
    local name=$1
    shift
    local out
    log "$name: podman run ${RUNARGS[*]} $* /bin/sh -c VIEW"
    out=$(t podman run "${RUNARGS[@]}" "$@" /bin/sh -c "$VIEW" sh "" write 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /'; record FAIL "$name: podman run failed"; return 0; }
    printf '%s\n' "$out" >"$W/logs/$name-run.out"
    compare "$name: container" "$EXPECT_VIEW
$EXPECT_WRITE" "$out"
    # allow_other + the image's permission bits: the owner reads its 0640
    # file, another non-root user is refused.
    out=$(t podman run "${RUNARGS[@]}" --user 1000:1000 --passwd=false "$@" \
        /bin/sh -c 'echo "uid=$(id -u)"; echo "owned1000=$(cat /etc/owned1000)"; echo "hello=$(cat /etc/hello)"' 2>&1) || true
    compare "$name: container as 1000" 'uid=1000
owned1000=mine
hello=hello from layer 2' "$out"
    out=$(t podman run "${RUNARGS[@]}" --user 2000:2000 --passwd=false "$@" \
        /bin/sh -c 'if cat /etc/owned1000 >/dev/null 2>&1; then echo read=allowed; else echo read=denied; fi' 2>&1) || true
    compare "$name: container as 2000" 'read=denied' "$out"
}

# The same checks on a mount, from inside podman's namespace (uids as the
# container sees them). After a container ran this also proves its writes
# stayed in podman's overlay upper.
check_view() { # name root
    local out
    out=$(pu sh -c "$VIEW" sh "$2" 2>&1) || true
    compare "$1" "$EXPECT_VIEW" "$out"
}

# Whiteout and opaque marker as kernel overlayfs (userxattr) needs them in
# a lower layer: char 0:0 device and user.overlay.opaque=y.
check_overlay_markers() { # name layer2-root
    local out
    out=$(pu sh -c 'echo "whiteout=$(stat -c "%F %t:%T" "$1/etc/deleted" 2>&1)"
        echo "opaque=$(python3 -c "import os,sys; print(os.getxattr(sys.argv[1], \"user.overlay.opaque\").decode())" "$1/opq" 2>&1 | tail -n 1)"' \
        sh "$2" 2>&1) || true
    compare "$1: layer 2 markers" "whiteout=character special file 0:0
opaque=y" "$out"
}

# (a) one merged mount of both layers.
path_merged() { # kind: aufs | oci
    local name=merged-$1 mnt=$W/mnt/merged-$1
    start_fuse "$name" "$mnt" "$BIN" mount -f -o allow_other --log-file "$W/logs/$name.log" \
        --layer "$W/L1-$1.erofs" --layer "$W/L2-$1.erofs" "$mnt"
    check_view "$name: mount" "$mnt"
    check_container "$name" --rootfs "$mnt:O"
    check_view "$name: mount after container" "$mnt"
}

# (b) additional layer store.
path_store() {
    local name=store st=$W/store mnt=$W/mnt/store n blob digest
    mkdir -p "$st"
    for n in 1 2; do
        blob=$W/image/L$n.tar.gz
        log "$name: $BIN store add $st $blob"
        "$BIN" store add "$st" "$blob" >>"$W/logs/$name-add.out" 2>&1 ||
            { record FAIL "$name: store add L$n"; return 1; }   # run_path shows the log
    done
    start_fuse "$name" "$mnt" "$BIN" store serve -f -o allow_other --log-file "$W/logs/$name.log" "$st" "$mnt"
    mkdir -p "$(dirname "$(storage_conf)")"
    # ":ref" makes podman look layers up as <store>/<base64(image ref)>/<digest>/.
    printf '# written by podman-e2e.sh, removed when it ends\n[storage]\ndriver = "overlay"\n[storage.options]\nadditionallayerstores = ["%s:ref"]\n' \
        "$mnt" >"$(storage_conf)"
    local out graphroot b64 l found seen requests gc
    # The registry's access log tells which blobs the pull fetched.
    seen=$(wc -l <"$W/logs/registry.log")
    log "$name: podman pull --tls-verify=false $REF (additionallayerstores = [\"$mnt:ref\"])"
    out=$(t podman pull --tls-verify=false "$REF" 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /'; record FAIL "$name: podman pull"; return 1; }
    printf '%s\n' "$out" | tee "$W/logs/$name-pull.out" | sed 's/^/    /'
    requests=$(sed -n "$((seen + 1)),\$p" "$W/logs/registry.log" | grep -o '"GET /v2/[^ ]*' || true)
    printf '%s\n' "$requests" | sed 's/^/    registry: /'
    # podman warns when the store does not answer its use/release signals
    # with ENOENT; a container run's output is compared whole, so a warning
    # there fails too.
    if printf '%s\n' "$out" | grep -q "GC doesn't seem to be supported"; then gc=unanswered; else gc=answered; fi
    check "$name: use/release signals answered ENOENT" answered "$gc"
    graphroot=$(t podman info --format '{{.Store.GraphRoot}}')
    b64=$(printf %s "$REF" | base64 -w 0)
    for l in "$graphroot"/overlay/*/diff; do
        if [ -L "$l" ]; then log "$name: layer $(basename "$(dirname "$l")") diff -> $(readlink "$l")"; fi
    done
    for n in 1 2; do
        digest=L${n}_DIGEST
        digest=${!digest}
        if printf '%s\n' "$requests" | grep -q "/blobs/$digest"; then found=downloaded; else found=skipped; fi
        check "$name: pull took layer $n from the store, not the registry" skipped "$found"
        # podman names layer dirs by chain id; find the one linked to the store.
        found=no
        for l in "$graphroot"/overlay/*/diff; do
            [ -L "$l" ] && [ "$(readlink "$l")" = "$mnt/$b64/$digest/diff" ] && found=yes
        done
        check "$name: layer $n diff is a symlink to $mnt/<ref>/${digest:0:19}.../diff" yes "$found"
    done
    check_overlay_markers "$name" "$mnt/$b64/$L2_DIGEST/diff"
    check_container "$name" "$REF"
    # The top layer as served must not have been touched by the container.
    out=$(pu sh -c 'cat "$1/etc/hello"; test -e "$1/newfile" && echo newfile || true; test -e "$2/newfile" && echo newfile || true' \
        sh "$mnt/$b64/$L2_DIGEST/diff" "$mnt/$b64/$L1_DIGEST/diff" 2>&1) || true
    check "$name: store unchanged after container" "hello from layer 2" "$out"
}

# (c) kernel overlayfs over per-layer mounts.
path_overlay() {
    local name=overlay n
    for n in 1 2; do
        start_fuse "$name-l$n" "$W/mnt/$name-l$n" "$BIN" mount -f -o allow_other \
            --log-file "$W/logs/$name-l$n.log" --overlay-xattrs user "$W/L$n-aufs.erofs" "$W/mnt/$name-l$n"
    done
    check_overlay_markers "$name" "$W/mnt/$name-l2"
    mount_overlay "$name" "$W/mnt/$name-l2:$W/mnt/$name-l1" "$W/mnt/$name-merged"
    check_view "$name: merged" "$W/mnt/$name-merged"
    check_container "$name" --rootfs "$W/mnt/$name-merged:O"
    check_view "$name: merged after container" "$W/mnt/$name-merged"
}

show_logs() { # name prefix
    local f
    for f in "$W/logs/$1"*; do
        [ -s "$f" ] || continue
        log "--- $f (last 40 lines)"
        tail -n 40 "$f" | sed 's/^/    /'
    done
}

# Runs one path with set -e in a subshell (so a hard error ends only that
# path), then cleans up whatever it left; shows its logs if anything failed.
run_path() { # name function args...
    local name=$1 before rc
    shift
    log "=== $name"
    before=$(grep -c '^FAIL' "$W/results" || true)
    set +e
    (
        set -eE
        trap 'log "$name: failed (status $?) in ${FUNCNAME[*]}: $BASH_COMMAND"' ERR
        "$@"
    )
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        # One FAIL line per cause: count the abort only if nothing said why.
        if [ "$(grep -c '^FAIL' "$W/results" || true)" = "$before" ]; then
            record FAIL "$name: stopped early (status $rc)"
        else
            log "$name: stopped early (status $rc)"
        fi
    fi
    cleanup_path
    if [ "$(grep -c '^FAIL' "$W/results" || true)" != "$before" ]; then show_logs "$name"; fi
}

build_image() {
    log "image: python3 oci_layers.py $W/image 1"
    python3 "$W/oci_layers.py" "$W/image" 1 | sed 's/^/    /'
    # shellcheck source=/dev/null  # written by oci_layers.py: L1_DIGEST etc.
    . "$W/image/layers.env"
    log "image: skopeo copy oci:$W/image/oci:1 docker://$REF"
    t skopeo copy -q "oci:$W/image/oci:1" "docker://$REF" --dest-tls-verify=false
    # The layer store is keyed by the manifest's blob digests: the registry
    # must serve our gzip blobs unchanged.
    local got
    got=$(curl -fs --max-time 10 -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$PORT/v2/e2e/manifests/1" |
        python3 -c 'import json,sys; print(" ".join(l["digest"] for l in json.load(sys.stdin)["layers"]))')
    check "registry serves both layers unchanged" "$L1_DIGEST $L2_DIGEST" "$got"
}

convert_layers() {
    local n out kind
    for n in 1 2; do
        for kind in aufs oci; do
            out=$W/L$n-$kind.erofs
            if [ "$kind" = aufs ]; then set -- --aufs; else set --; fi
            log "convert: $BIN convert --mode full $* $W/image/L$n.tar.gz $out"
            "$BIN" convert --mode full "$@" "$W/image/L$n.tar.gz" "$out" >>"$W/logs/convert.out" 2>&1 ||
                { cat "$W/logs/convert.out"; return 1; }
        done
    done
}

user_main() {
    cd "$W"
    log "podman: $(t podman info --format 'runtime {{.Host.OCIRuntime.Name}}, graph driver {{.Store.GraphDriverName}}, rootless {{.Host.Security.Rootless}}')"
    cleanup_path
    build_image
    if convert_layers; then
        record PASS "convert: 2 layers, with and without --aufs"
        run_path merged-aufs path_merged aufs
        run_path merged-oci path_merged oci
        run_path overlay path_overlay
    else
        record FAIL "convert: erofs-fuse convert failed (paths a and c skipped)"
    fi
    run_path store path_store
}

case ${1:-} in
"") root_main ;;
--as-user) user_main ;;
--cleanup) cleanup_path ;;  # as the user, from root's cleanup_user
*) die "usage: $0 (as root; see the comments at the top)" ;;
esac
