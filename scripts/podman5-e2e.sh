#!/usr/bin/env bash
# End-to-end test: rootless podman 5.4 (Debian trixie) pulling zstd:chunked
# and eStargz images through erofs-fuse's additional layer store. Run as
# root on Debian 12 (CI: a fresh machine); see docs/podman5-e2e.md.
#
#   sudo BIN=/path/to/erofs-fuse scripts/podman5-e2e.sh   # default: target/release, built if missing
#   sudo scripts/podman5-e2e.sh --bench   # the ~300 MB pull benchmark instead (lib/podman5-bench.sh)
#
#  1. root: a trixie root with podman 5 (mmdebstrap, cached in
#     /var/cache/erofs-fuse-podman5, root-owned 0700; lib/podman5-root.sh),
#     a test user with subids in it, the host fixes (/dev/fuse 0666, crun's
#     hybrid-cgroup check; lib/rootless-host.sh), docker-registry on
#     127.0.0.1:$E2E_PORT; then enters the root with unshare + pivot_root
#     (a chrooted process may not create user namespaces) and runs the
#     rootless part as the user;
#  2. the user: builds a two-layer image (podman import of a busybox root,
#     then podman run + commit: a deleted file, an opaque directory, a 0640
#     file owned by 1000:1000), pushes it as zstd:chunked and, converted by
#     scripts/estargz.py, as eStargz; pulls each without the store into a
#     second storage root (the oracle); then per image:
#       A "added": `store add` of the registry's blobs (an OCI layout made
#         with skopeo --preserve-digests), `store serve` in podman's
#         namespace, additionallayerstores in storage.conf, podman pull:
#         no full-blob GET of the layers, podman reports them as already
#         present and links them into the store, the container's tree equals
#         the oracle's, container writes never reach the store, rmi is quiet;
#       B "lazy" (when `store serve --help` mentions fetching, or E2E_LAZY=1):
#         the same from an empty store that fetches from the registry; only
#         ranged GETs of the layer blobs;
#  3. root, at exit (also after a failure, ^C, or a killed earlier run via
#     the state file): kills what the user part left, stops the registry,
#     undoes the host fixes. The cached root and the user in it stay.
#
# Environment: BIN, E2E_USER (p5e2e), E2E_UID (2345, must be unused on the
# host), E2E_PORT (5056), E2E_WORK (/var/lib/erofs-fuse-e2e/podman5; logs stay),
# E2E_TIMEOUT (120 s per command), E2E_LAZY (0: skip case B),
# E2E_LAZY_ARGS (`store serve` options for case B; default --insecure
# --fetch-from localhost:PORT).
# Output ends with "podman5-e2e: N passed, M failed"; exit status 1 on any failure.

# shellcheck disable=SC2016  # single-quoted scripts expand in the inner shell
set -euo pipefail

E2E_USER=${E2E_USER:-p5e2e}
P5_UID=${E2E_UID:-2345}
PORT=${E2E_PORT:-5056}
W=${E2E_WORK:-/var/lib/erofs-fuse-e2e/podman5}
# Root runs this file, never the copy in $W the test user owns.
SELF=$(readlink -f "${BASH_SOURCE[0]}")
TIMEOUT=${E2E_TIMEOUT:-120}
STATE=/run/erofs-fuse-podman5-e2e.state
GECOS="erofs-fuse podman 5 e2e (scripts/podman5-e2e.sh)"
PACKAGES=(docker-registry curl python3)   # host side; the root has the rest
RUNDIR=''         # rootless-host.sh: the user's run dir lives in the root's /run
USER_PART=''
# Set by the root part for the namespace and the user part.
LAZY=${LAZY:-0} LAZY_ARGS=${LAZY_ARGS:-}

log() { printf '[podman5-e2e] %s\n' "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
t() { timeout -k 10 "$TIMEOUT" "$@"; }

###########################################################################
# Root part (host)
###########################################################################

root_libs() {
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    # shellcheck source=lib/rootless-host.sh
    . "$here/lib/rootless-host.sh"
    # shellcheck source=lib/podman5-root.sh
    . "$here/lib/podman5-root.sh"
    # shellcheck source=lib/e2e-results.sh
    . "$here/lib/e2e-results.sh"
}

# Runs a command on the host as the test uid (the registry).
as_user() {
    setpriv --reuid="$P5_UID" --regid="$P5_UID" --clear-groups -- \
        env -i HOME="$W" PATH=/usr/local/bin:/usr/bin:/bin W="$W" PORT="$PORT" LANG=C.UTF-8 "$@"
}

# The test user inside the root: fixed uid with subordinate ids. The uid
# must not belong to anyone on the host, since cleanup kills its processes.
ensure_root_user() {
    if getent passwd "$P5_UID" >/dev/null; then
        die "uid $P5_UID belongs to host user $(getent passwd "$P5_UID" | cut -d: -f1): set E2E_UID"
    fi
    if ! chroot "$P5_ROOT" id -u "$E2E_USER" >/dev/null 2>&1; then
        log "root: user $E2E_USER ($P5_UID)"
        chroot "$P5_ROOT" useradd -m -u "$P5_UID" -s /bin/bash -c "$GECOS" "$E2E_USER"
    fi
    local f
    for f in etc/subuid etc/subgid; do
        grep -qs "^$E2E_USER:" "$P5_ROOT/$f" || echo "$E2E_USER:200000:65536" >>"$P5_ROOT/$f"
    done
}

build_binary() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    BIN=${BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/erofs-fuse}
    if [ ! -x "$BIN" ]; then
        log "build: cargo build --release"
        (cd "$repo" && cargo build --release --quiet)
    fi
    [ -x "$BIN" ] || die "BIN=$BIN is not executable"
}

# Kills every process of the test uid (FUSE servers, podman's pause
# process and conmon, the registry): only ours, the uid is unused on the host.
kill_user_processes() {
    local pids i
    for i in 1 2 3; do
        pids=$(pgrep -u "$P5_UID" || true)
        [ -n "$pids" ] || return 0
        # shellcheck disable=SC2086  # a list of pids
        if [ "$i" -lt 3 ]; then kill $pids 2>/dev/null || true; else kill -9 $pids 2>/dev/null || true; fi
        sleep 1
    done
}

# What an earlier run killed with SIGKILL left: its namespace process (by
# the pid it recorded), the user's processes, the host fixes.
undo_earlier() {
    local pid
    if [ -f "$STATE" ]; then
        pid=$(sed -n 's/^nspid //p' "$STATE" | tail -n 1)
        if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = unshare ]; then
            log "restore: stopping the earlier run's namespace (pid $pid)"
            kill "$pid" 2>/dev/null || true
        fi
    fi
    kill_user_processes
    restore_host
}

prepare_work() {
    if findmnt -rn -o TARGET | grep -q "^$W\(/\|$\)"; then die "something is mounted under $W"; fi
    rm -rf --one-file-system "$W"
    install -d -m 755 -o "$P5_UID" -g "$P5_UID" "$W" "$W/bin" "$W/logs" "$W/pids" "$W/lib"
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    install -m 755 -o "$P5_UID" -g "$P5_UID" "${BASH_SOURCE[0]}" "$W/e2e.sh"
    install -m 755 -o "$P5_UID" -g "$P5_UID" "$here/estargz.py" "$W/estargz.py"
    install -m 644 -o "$P5_UID" -g "$P5_UID" "$here/lib/podman5-user.sh" "$here/lib/podman5-bench.sh" "$here/lib/e2e-results.sh" "$W/lib/"
    install -m 755 -o "$P5_UID" -g "$P5_UID" "$BIN" "$W/bin/erofs-fuse"
    install -m 644 -o "$P5_UID" -g "$P5_UID" /dev/null "$W/results"
}

root_exit() {
    local rc=$? m
    trap - EXIT INT TERM
    set +e
    log "teardown"
    if [ -n "$USER_PART" ] && kill -0 "$USER_PART" 2>/dev/null; then
        kill "$USER_PART" 2>/dev/null
        wait "$USER_PART" 2>/dev/null
    fi
    kill_user_processes
    restore_host
    # The root's mounts live in the namespace that just ended; a mount left
    # in ours (none expected) would pin the cache.
    for m in $(findmnt -rn -o TARGET | grep -e "^$P5_CACHE/" -e "^$W/" | sort -r); do
        umount -l "$m" && log "restore: unmounted $m"
    done
    report_results podman5-e2e "$rc"
    exit $?
}

# Case B's `store serve` options: E2E_LAZY_ARGS, else fetching from the
# test registry only, over plain http (it is on loopback).
lazy_args() {
    if [ -n "${E2E_LAZY_ARGS+set}" ]; then
        echo "$E2E_LAZY_ARGS"
    else
        echo "--insecure --fetch-from localhost:$PORT"
    fi
}

lazy_wanted() {
    case ${E2E_LAZY:-} in
    1) echo 1 ;;
    0) echo 0 ;;
    *) echo 1 ;;
    esac
}

root_main() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it builds a root, fixes the host, enters namespaces)"
    root_libs
    check_work_parent "$W"
    undo_earlier
    rm -f "$W/results"
    trap root_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install_packages
    p5_build_root
    ensure_root_user
    build_binary
    host_fixes
    prepare_work
    start_registry
    local lazy
    lazy=$(lazy_wanted)
    log "entering $P5_ROOT (unshare --mount, pivot_root) as $E2E_USER; lazy case: $lazy ($(lazy_args))"
    unshare --mount --propagation private --fork --kill-child -- \
        env P5_ROOT="$P5_ROOT" E2E_WORK="$W" E2E_USER="$E2E_USER" E2E_UID="$P5_UID" E2E_PORT="$PORT" \
        E2E_TIMEOUT="$TIMEOUT" LAZY="$lazy" E2E_STRICT_ROOT="${E2E_STRICT_ROOT:-0}" LAZY_ARGS="$(lazy_args)" MODE="${MODE:-e2e}" \
        bash "$SELF" --in-namespace &
    USER_PART=$!
    echo "nspid $USER_PART" >>"$STATE"
    wait "$USER_PART"
    USER_PART=
}

# Root in the new mount namespace: the recipe of podman5.md, then the user.
in_namespace() {
    local r=$P5_ROOT
    mount --bind "$r" "$r"
    mount --rbind /dev "$r/dev"
    mount --rbind /sys "$r/sys"
    mount -t tmpfs -o mode=755 tmpfs "$r/run"
    install -d -m 700 -o "$P5_UID" -g "$P5_UID" "$r/run/user/$P5_UID"
    mkdir -p "$r/e2e" "$r/.oldroot"
    mount --bind "$W" "$r/e2e"
    cd "$r"
    pivot_root . .oldroot
    cd /
    mount -t proc proc /proc
    umount -l /.oldroot
    # Rootless podman wants "/" shared (mounts made later propagate into its
    # namespace); this is our own namespace, so nothing leaks to the host.
    mount --make-rshared /
    local home
    home=$(getent passwd "$E2E_USER" | cut -d: -f6)
    exec /usr/sbin/runuser -u "$E2E_USER" -- env -i HOME="$home" USER="$E2E_USER" LOGNAME="$E2E_USER" \
        PATH=/usr/local/bin:/usr/bin:/bin XDG_RUNTIME_DIR="/run/user/$P5_UID" LANG=C.UTF-8 \
        PODMAN_IGNORE_CGROUPSV1_WARNING=1 E2E_STRICT_ROOT="$E2E_STRICT_ROOT" E2E_WORK=/e2e E2E_PORT="$PORT" \
        E2E_TIMEOUT="$TIMEOUT" LAZY="$LAZY" LAZY_ARGS="$LAZY_ARGS" BIN=/e2e/bin/erofs-fuse \
        bash /e2e/e2e.sh "--as-user-$MODE"
}

###########################################################################
# Rootless part (the user inside the root; W=/e2e)
###########################################################################

REPO=p5e2e
RUNARGS=(--rm --network=none --cgroups=disabled)
# Paths the runtime makes in every container (and eStargz's metadata
# entries, which a full pull of an eStargz layer unpacks): not the image's.
LISTING='cd / && busybox find . -xdev | busybox sort | while IFS= read -r p; do
  case $p in ./dev|./proc|./sys|./etc/hosts|./etc/hostname|./etc/resolv.conf|./run/.containerenv|./stargz.index.json|./.no.prefetch.landmark|./.prefetch.landmark) continue ;; esac
  if [ -L "$p" ]; then echo "$p $(busybox stat -c "%a %u %g" "$p") -> $(busybox readlink "$p")"
  elif [ -f "$p" ]; then echo "$p $(busybox stat -c "%a %u %g %s" "$p") $(busybox sha256sum "$p" | busybox cut -c1-64)"
  else echo "$p $(busybox stat -c "%a %u %g %F" "$p")"; fi
done'
# The checks the issue names, and writes (modify a lower file, delete one, add one).
VIEW='set -f
echo "hello=$(cat /etc/hello)"
echo "top=$(cat /etc/top)"
echo "owned1000=$(cat /etc/owned1000)"
echo "owner_owned1000=$(stat -c %u:%g /etc/owned1000)"
echo "mode_owned1000=$(stat -c %a /etc/owned1000)"
echo "owner_hello=$(stat -c %u:%g /etc/hello)"
if test -e /etc/deleted || test -L /etc/deleted; then echo deleted=present; else echo deleted=absent; fi
if test -e /etc/.wh.deleted; then echo whiteout_file=present; else echo whiteout_file=absent; fi
set -- $(ls -A /opq); echo "opq=$*"
echo x > /etc/hello && echo "write_hello=$(cat /etc/hello)"
busybox rm /etc/top && echo write_rm_top=done
: > /newfile && echo write_newfile=made'
EXPECT_VIEW='hello=hello from layer 2
top=top
owned1000=mine
owner_owned1000=1000:1000
mode_owned1000=640
owner_hello=0:0
deleted=absent
whiteout_file=absent
opq=c
write_hello=x
write_rm_top=done
write_newfile=made'

user_libs() {
    # shellcheck source=lib/podman5-user.sh
    . "$W/lib/podman5-user.sh"
}

storage_conf() { echo "$HOME/.config/containers/storage.conf"; }

# A clean podman: no containers, no images, no store config of ours.
reset_podman() {
    t podman rm -af -t 0 >/dev/null 2>&1 || true
    t podman rmi -af >/dev/null 2>&1 || true
    if grep -qs 'podman5-e2e.sh' "$(storage_conf)"; then rm -f "$(storage_conf)"; fi
}

# Layer 1: a busybox root as a tar for podman import.
base_tar() {
    t python3 - "$W/base.tar" <<'EOF'
import io, sys, tarfile
def add(tf, name, kind=tarfile.REGTYPE, mode=0o644, data=b"", link=""):
    i = tarfile.TarInfo(name); i.type = kind; i.mode = mode; i.mtime = 1700000000
    i.linkname = link; i.size = len(data)
    tf.addfile(i, io.BytesIO(data) if data else None)
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as tf:
    # An explicit root entry: for a layer without one, podman's overlay
    # driver makes the root 0555 and the store 0755 (see docs/podman5-e2e.md).
    add(tf, ".", tarfile.DIRTYPE, 0o755)
    for d in ["bin", "etc", "opq", "opq/sub", "proc", "sys", "dev", "run", "tmp", "root"]:
        add(tf, d, tarfile.DIRTYPE, 0o755)
    add(tf, "bin/busybox", mode=0o755, data=open("/bin/busybox", "rb").read())
    for a in ["sh", "cat", "ls", "id", "true", "stat", "test", "echo"]:
        add(tf, "bin/" + a, tarfile.SYMTYPE, 0o777, link="busybox")
    add(tf, "etc/hello", data=b"hello from layer 1\n")
    add(tf, "etc/deleted", data=b"deleted by layer 2\n")
    add(tf, "etc/top", data=b"top\n")
    add(tf, "etc/big", data=bytes(range(256)) * 4096)
    add(tf, "opq/a", data=b"a\n")
    add(tf, "opq/sub/b", data=b"b\n")
EOF
}

# Layer 2 by podman itself: run + commit (overlayfs turns the removed and
# recreated /opq into an opaque directory, the removal into a whiteout).
build_image() {
    base_tar
    log "image: podman import base.tar; podman run (changes); podman commit"
    t podman import -q "$W/base.tar" localhost/p5base:1 >/dev/null
    t podman run --name p5mk --network=none --cgroups=disabled localhost/p5base:1 /bin/sh -c '
        set -e
        busybox rm /etc/deleted
        busybox rm -r /opq; busybox mkdir /opq; echo c > /opq/c
        echo "hello from layer 2" > /etc/hello
        echo mine > /etc/owned1000; busybox chown 1000:1000 /etc/owned1000; busybox chmod 0640 /etc/owned1000'
    t podman commit -q p5mk localhost/p5e2e:built >/dev/null
    t podman rm p5mk >/dev/null
    log "image: podman push --compression-format=zstd:chunked --force-compression localhost:$PORT/$REPO:zstd"
    t podman push -q --compression-format=zstd:chunked --force-compression --tls-verify=false \
        localhost/p5e2e:built "docker://localhost:$PORT/$REPO:zstd"
    # eStargz: the same image with gzip layers in an OCI layout, converted.
    t podman push -q --compression-format=gzip --force-compression localhost/p5e2e:built "oci:$W/plain:1"
    log "image: estargz.py plain -> estargz; skopeo copy --preserve-digests localhost:$PORT/$REPO:estargz"
    t python3 "$W/estargz.py" "$W/plain" "$W/estargz" --tag 1 --chunk-size 65536 | sed 's/^/    /'
    t skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$W/estargz:1" "docker://localhost:$PORT/$REPO:estargz"
}

# Layer digests and TOC digests of a tag, from the registry's manifest; the
# check that every layer carries the annotation podman 5 needs.
layer_info() { # tag annotation
    t curl -fsS -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "http://127.0.0.1:$PORT/v2/$REPO/manifests/$1" |
        python3 -c 'import json,sys
key = sys.argv[1]
for l in json.load(sys.stdin)["layers"]:
    print(l["digest"], l.get("annotations", {}).get(key, "none"))' "$2"
}

# Pulls REF into a second storage root without any layer store and lists
# the container's tree: what the store paths must show.
oracle() { # name ref
    local conf=$W/oracle-storage.conf out
    # Partial pulls on: podman then reads the TOC itself and checks each
    # file against it (with the default, off here, it reads the blob as a
    # plain tar and would not notice a wrong TOC from estargz.py). eStargz
    # has no tar-split, so podman pulls it partially only when allowed to
    # leave the diffID unverified.
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n[storage.options.pull_options]\nenable_partial_images = "true"\ninsecure_allow_unpredictable_image_contents = "true"\n' \
        "$HOME/oracle-storage" "$XDG_RUNTIME_DIR/oracle-run" >"$conf"
    export CONTAINERS_STORAGE_CONF=$conf
    t podman rmi -af >/dev/null 2>&1 || true
    log "$1: oracle: podman pull (second storage root, no layer store, partial pulls on) $2"
    local mark
    mark=$(reg_mark)
    out=$(t podman pull --tls-verify=false "$2" 2>&1) ||
        { printf '%s\n' "$out" | sed 's/^/    /'; unset CONTAINERS_STORAGE_CONF; record FAIL "$1: oracle pull"; return 1; }
    sleep 0.5   # the registry logs a request after its response
    log "$1: oracle pull: $(reg_since "$mark" | grep -c '/blobs/.*" 206 ' || true) ranged GETs, $(reg_since "$mark" | grep -c '/blobs/.*" 200 ' || true) whole-blob GETs (layers and config)"
    t podman run "${RUNARGS[@]}" "$2" /bin/sh -c "$LISTING" >"$W/logs/$1-oracle.list" ||
        { unset CONTAINERS_STORAGE_CONF; record FAIL "$1: oracle run"; return 1; }
    out=$(t podman run "${RUNARGS[@]}" "$2" /bin/sh -c "$VIEW" 2>&1) || true
    compare "$1: oracle view" "$EXPECT_VIEW" "$out"
    t podman rmi -af >/dev/null 2>&1 || true
    unset CONTAINERS_STORAGE_CONF
}

# One store case: A (layers added by hand) or B (lazy, empty store).
path_store() { # name ref tag kind(added|lazy)
    local name=$1 ref=$2 tag=$3 kind=$4 st=$W/store-$1 mnt=$W/mnt/$1
    local digest toc n=0 mark out b64 graphroot l found requests
    mkdir -p "$st"
    if [ "$kind" = added ]; then
        t skopeo copy -q --preserve-digests --src-tls-verify=false "docker://$ref" "oci:$W/layout-$name:1"
        log "$name: erofs-fuse store add $st layout-$name"
        t "$BIN" store add -q "$st" "$W/layout-$name" >"$W/logs/$name-add.out" 2>&1 ||
            { cat "$W/logs/$name-add.out"; record FAIL "$name: store add"; return 1; }
        # shellcheck disable=SC2086  # LAZY_ARGS: options, split on purpose
        start_fuse "$name" "$mnt" "$BIN" store serve -f -o allow_other --log-file "$W/logs/$name.log" "$st" "$mnt"
    else
        # shellcheck disable=SC2086
        start_fuse "$name" "$mnt" "$BIN" store serve -f -o allow_other $LAZY_ARGS --log-file "$W/logs/$name.log" "$st" "$mnt"
    fi
    mkdir -p "$(dirname "$(storage_conf)")"
    printf '# written by podman5-e2e.sh, removed when it ends\n[storage]\ndriver = "overlay"\n[storage.options]\nadditionallayerstores = ["%s:ref"]\n' \
        "$mnt" >"$(storage_conf)"
    mark=$(reg_mark)
    log "$name: podman pull --log-level=debug --tls-verify=false $ref"
    out=$(t podman pull --log-level=debug --tls-verify=false "$ref" 2>&1) ||
        { printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'; record FAIL "$name: podman pull"; return 1; }
    printf '%s\n' "$out" >"$W/logs/$name-pull.out"
    grep -i -e 'copying blob' -e 'additional layer' "$W/logs/$name-pull.out" | sed 's/^/    podman: /' | head -n 12
    requests=$(reg_since "$mark")
    printf '%s\n' "$requests" | sed 's/^/    registry: /'
    b64=$(printf %s "$ref" | base64 -w 0)
    graphroot=$(t podman info --format '{{.Store.GraphRoot}}')
    while read -r digest toc; do
        n=$((n + 1))
        if printf '%s\n' "$requests" | grep -q "GET /v2/$REPO/blobs/$digest HTTP/[0-9.]*\" 200"; then found=full; else found=none; fi
        check "$name: no full-blob GET of layer $n" none "$found"
        # containers/image copy/single.go (copyLayer) logs this when the
        # destination reused the blob: here, the additional layer store's.
        if printf '%s\n' "$out" | grep -qF "Skipping blob $digest (already present)"; then found=yes; else found=no; fi
        check "$name: podman: layer $n \"Skipping blob ... (already present)\"" yes "$found"
        found=no
        for l in "$graphroot"/overlay/*/diff; do
            [ -L "$l" ] && [ "$(readlink "$l")" = "$mnt/$b64/$toc/diff" ] && found=yes
        done
        check "$name: layer $n diff is a symlink to the store's <ref>/<TOC digest>/diff" yes "$found"
    done < <(layer_info "$tag" "$ANNOTATION")
    if printf '%s\n' "$out" | grep -q "GC doesn't seem to be supported"; then found=unanswered; else found=answered; fi
    check "$name: use/release signals answered" answered "$found"
    local tocs
    tocs=$(layer_info "$tag" "$ANNOTATION" | cut -d' ' -f2)
    store_layers "$mnt/$b64" "$tocs" >"$W/logs/$name-store-before.list" 2>&1 || true
    t podman run "${RUNARGS[@]}" "$ref" /bin/sh -c "$LISTING" >"$W/logs/$name.list" || record FAIL "$name: podman run (listing)"
    root_mode "$name" "$W/logs/$ORACLE-oracle.list" "$W/logs/$name.list"
    grep -v '^\. ' "$W/logs/$ORACLE-oracle.list" >"$W/logs/$name.oracle-nonroot.list" || true
    grep -v '^\. ' "$W/logs/$name.list" >"$W/logs/$name.nonroot.list" || true
    same_listing "$name: container tree (all but /) equals the oracle's" \
        "$W/logs/$name.oracle-nonroot.list" "$W/logs/$name.nonroot.list"
    out=$(t podman run "${RUNARGS[@]}" "$ref" /bin/sh -c "$VIEW" 2>&1) || true
    compare "$name: container" "$EXPECT_VIEW" "$out"
    store_layers "$mnt/$b64" "$tocs" >"$W/logs/$name-store-after.list" 2>&1 || true
    same_listing "$name: store's layers unchanged by container writes" \
        "$W/logs/$name-store-before.list" "$W/logs/$name-store-after.list"
    out=$(t podman rmi "$ref" 2>&1 >/dev/null) || record FAIL "$name: podman rmi"
    check "$name: podman rmi without warnings" "" "$out"
    layer_gets "$name" "$tag" "$kind" "$mark"
}

# Over the whole case (pull, runs, rmi): the layer blobs' GETs. Added
# layers are never fetched; lazy ones only by range (and at least once: the
# TOC). What the registry sent in all is logged.
layer_gets() { # name tag kind mark
    local all digest toc n=0 full ranged want
    sleep 0.5   # the registry logs a request after its response
    all=$(reg_since "$4")
    while read -r digest toc; do
        n=$((n + 1))
        full=$(printf '%s\n' "$all" | grep -c "GET /v2/$REPO/blobs/$digest HTTP/[0-9.]*\" 200" || true)
        ranged=$(printf '%s\n' "$all" | grep -c "GET /v2/$REPO/blobs/$digest HTTP/[0-9.]*\" 206" || true)
        if [ "$3" = added ]; then want="0 0"; else want="0 ranged"; [ "$ranged" -gt 0 ] && ranged=ranged; fi
        check "$1: layer $n GETs over the case (whole, ranged)" "$want" "$full $ranged"
    done < <(layer_info "$2" "$ANNOTATION")
    log "$1: the registry sent $(reg_bytes "$4") bytes over the case ($(printf '%s\n' "$all" | grep -c '" 206 ' || true) ranged responses)"
}

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
    if [ "$rc" -ne 0 ] && [ "$(grep -c '^FAIL' "$W/results" || true)" = "$before" ]; then
        record FAIL "$name: stopped early (status $rc)"
    fi
    t podman rm -af -t 0 >/dev/null 2>&1 || true
    t podman rmi -af >/dev/null 2>&1 || true
    unmount_all
    if grep -qs 'podman5-e2e.sh' "$(storage_conf)"; then rm -f "$(storage_conf)"; fi
    if [ "$(grep -c '^FAIL' "$W/results" || true)" != "$before" ]; then
        for f in "$W/logs/$name"*.log "$W/logs/$name"*.out; do
            [ -s "$f" ] && { log "--- $f (last 20 lines)"; tail -n 20 "$f" | sed 's/^/    /'; }
        done
    fi
    return 0
}

images() {
    build_image
    local l
    l=$(layer_info zstd io.github.containers.zstd-chunked.manifest-checksum)
    printf '%s\n' "$l" | sed 's/^/    zstd layer: /'
    check "zstd:chunked push: 2 layers, each with a TOC digest" "2 0" \
        "$(printf '%s\n' "$l" | wc -l) $(printf '%s\n' "$l" | grep -c ' none$' || true)"
    l=$(layer_info estargz containerd.io/snapshot/stargz/toc.digest)
    printf '%s\n' "$l" | sed 's/^/    estargz layer: /'
    check "eStargz push: 2 layers, each with a TOC digest" "2 0" \
        "$(printf '%s\n' "$l" | wc -l) $(printf '%s\n' "$l" | grep -c ' none$' || true)"
    reset_podman
}

user_main() {
    cd "$W"
    user_libs
    # A killed run's store config would name a mount that is gone.
    if grep -qs 'podman5-e2e.sh' "$(storage_conf)"; then rm -f "$(storage_conf)"; fi
    log "podman: $(t podman version --format '{{.Client.Version}}'), $(t podman info --format 'runtime {{.Host.OCIRuntime.Name}}, graph driver {{.Store.GraphDriverName}}, rootless {{.Host.Security.Rootless}}')"
    reset_podman
    run_path images images
    local zref=localhost:$PORT/$REPO:zstd eref=localhost:$PORT/$REPO:estargz
    run_path oracle-zstd oracle zstd "$zref"
    run_path oracle-estargz oracle estargz "$eref"
    # Without / (see root_mode).
    grep -v '^\. ' "$W/logs/zstd-oracle.list" >"$W/logs/zstd-oracle-nonroot.list" || true
    grep -v '^\. ' "$W/logs/estargz-oracle.list" >"$W/logs/estargz-oracle-nonroot.list" || true
    same_listing "eStargz (estargz.py) pulled by podman equals the zstd:chunked image" \
        "$W/logs/zstd-oracle-nonroot.list" "$W/logs/estargz-oracle-nonroot.list"
    ANNOTATION=io.github.containers.zstd-chunked.manifest-checksum ORACLE=zstd \
        run_path zstd-added path_store zstd-added "$zref" zstd added
    ANNOTATION=containerd.io/snapshot/stargz/toc.digest ORACLE=zstd \
        run_path estargz-added path_store estargz-added "$eref" estargz added
    if [ "$LAZY" = 1 ]; then
        ANNOTATION=io.github.containers.zstd-chunked.manifest-checksum ORACLE=zstd \
            run_path zstd-lazy path_store zstd-lazy "$zref" zstd lazy
        ANNOTATION=containerd.io/snapshot/stargz/toc.digest ORACLE=zstd \
            run_path estargz-lazy path_store estargz-lazy "$eref" estargz lazy
    else
        log "lazy case B skipped: store serve --help does not mention fetching (E2E_LAZY=1 forces it)"
    fi
}

bench_user_main() {
    cd "$W"
    user_libs
    if grep -qs 'podman5-e2e.sh' "$(storage_conf)"; then rm -f "$(storage_conf)"; fi
    # A killed run's store config would name a mount that is gone.
    if grep -qs 'podman5-e2e.sh' "$(storage_conf)"; then rm -f "$(storage_conf)"; fi
    # shellcheck source=lib/podman5-bench.sh
    . "$W/lib/podman5-bench.sh"
    reset_podman
    bench_main
}

case ${1:-} in
"") root_main ;;
--bench) MODE=bench root_main ;;
--as-user-bench) bench_user_main ;;
--in-namespace) in_namespace ;;
--as-user-e2e) user_main ;;
*) die "usage: $0 (as root; see the comments at the top)" ;;
esac
