# Host setup shared by the scripts that run rootless podman and a local
# registry (podman-e2e.sh, bench-pull.sh, podman5-e2e.sh). The sourcing script sets
# E2E_USER, GECOS, STATE, PACKAGES, W and PORT and defines log, die and
# as_user (which runs a command as E2E_USER with its environment).
# shellcheck shell=bash

# True if PID runs. PID 1 here does not reap orphans, so a FUSE server that
# exited after its parent can linger as a zombie: kill -0 would still succeed.
alive() {
    local state
    state=$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || { log "packages: all present"; return 0; }
    log "packages: installing ${missing[*]}"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_user() {
    if ! id -u "$E2E_USER" >/dev/null 2>&1; then
        log "user: creating $E2E_USER"
        useradd -m -s /bin/bash -c "$GECOS" "$E2E_USER"
    fi
    # Rootless podman maps container uids through /etc/subuid; uid 1000 in
    # the image needs at least 1001 of them. useradd usually adds a range;
    # otherwise take one above every existing range.
    local f next
    for f in /etc/subuid /etc/subgid; do
        touch "$f"
        grep -q "^$E2E_USER:" "$f" && continue
        next=$(awk -F: 'BEGIN { n = 100000 } { if ($2 + $3 > n) n = $2 + $3 } END { print n }' "$f")
        log "user: adding $f range $next-$((next + 65535))"
        if [ "$f" = /etc/subuid ]; then
            usermod --add-subuids "$next-$((next + 65535))" "$E2E_USER"
        else
            usermod --add-subgids "$next-$((next + 65535))" "$E2E_USER"
        fi
    done
    user_vars
}

user_vars() {
    UID_=$(id -u "$E2E_USER")
    UHOME=$(getent passwd "$E2E_USER" | cut -d: -f6)
    RUNDIR=/run/user/$UID_
}

# Machine-level changes, each recorded in $STATE before it is made so that
# restore_host can undo exactly these, even in a later run after a SIGKILL.
host_fixes() {
    : >>"$STATE"
    # No udev: /dev/fuse is 0600 root, so the user gets EACCES, even for
    # FUSE mounts inside its own user namespace.
    [ -c /dev/fuse ] || modprobe fuse 2>/dev/null || true
    [ -c /dev/fuse ] || die "/dev/fuse missing"
    local mode
    mode=$(stat -c %a /dev/fuse)
    if [ "$mode" != 666 ]; then
        echo "fuse_mode $mode" >>"$STATE"
        chmod 0666 /dev/fuse
        log "host: chmod 0666 /dev/fuse (was $mode)"
    fi
    # crun refuses hybrid cgroups when the v2 hierarchy has controllers
    # ("cgroups in hybrid mode not supported, drop all controllers from
    # cgroupv2"), even with --cgroups=disabled. Mounting each such
    # controller (here: hugetlb) as a v1 hierarchy empties the v2 list.
    local c created controllers=()
    # An empty list (no controllers left, as after an earlier run's fix)
    # makes `read` fail: not an error under `set -e`.
    if [ -r /sys/fs/cgroup/unified/cgroup.controllers ]; then
        read -ra controllers </sys/fs/cgroup/unified/cgroup.controllers || true
    fi
    for c in "${controllers[@]}"; do
        mountpoint -q "/sys/fs/cgroup/$c" && continue
        created=0
        [ -d "/sys/fs/cgroup/$c" ] || created=1
        echo "cgroup $c $created" >>"$STATE"
        mkdir -p "/sys/fs/cgroup/$c"
        mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
        log "host: moved cgroup controller $c from v2 to v1 (/sys/fs/cgroup/$c)"
    done
    # podman5-e2e.sh makes its user's run dir inside its root (RUNDIR empty).
    if [ -n "$RUNDIR" ] && [ ! -d "$RUNDIR" ]; then
        echo "rundir $RUNDIR" >>"$STATE"
        install -d -m 700 -o "$E2E_USER" -g "$E2E_USER" "$RUNDIR"
        log "host: created $RUNDIR"
    fi
}

restore_host() {
    [ -f "$STATE" ] || return 0
    local kind a b
    while read -r kind a b; do
        case $kind in
        fuse_mode)
            chmod "$a" /dev/fuse && log "restore: /dev/fuse mode $a" ;;
        cgroup)
            # The controller returns to the v2 hierarchy once unmounted.
            umount "/sys/fs/cgroup/$a" 2>/dev/null || true
            if [ "$b" = 1 ]; then rmdir "/sys/fs/cgroup/$a" 2>/dev/null || true; fi
            log "restore: unmounted cgroup $a" ;;
        rundir)
            case $a in /run/user/[0-9]*) rm -rf --one-file-system "$a" && log "restore: removed $a" ;; esac ;;
        esac
    done <"$STATE"
    rm -f "$STATE"
}

# The work directory's parent must be a real directory only root can write
# to: a predictable name under a world-writable one (/tmp) could be made
# first by another user, and root then writes and runs files there.
check_work_parent() {
    local parent
    parent=$(dirname "$1")
    [ "$parent" != /var/lib/erofs-fuse-e2e ] || install -d -m 755 -o root -g root "$parent"
    { [ ! -L "$parent" ] && [ -d "$parent" ]; } || die "$parent: not a directory"
    [ "$(stat -c %u "$parent")" = 0 ] || die "$parent: not owned by root"
    [ -z "$(find "$parent" -maxdepth 0 -perm /022)" ] ||
        die "$parent: writable by others (like /tmp); set E2E_WORK under a directory only root can write to"
}

start_registry() {
    # The Debian service is not started (policy-rc.d) and listens on :5000
    # with htpasswd auth; run our own on loopback, as the user, no auth.
    if curl -fs --max-time 2 "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1; then
        die "port $PORT already serves a registry (set E2E_PORT)"
    fi
    printf 'version: 0.1\nlog: {level: warn}\nstorage: {filesystem: {rootdirectory: %s/registry}}\nhttp: {addr: "127.0.0.1:%s"}\n' \
        "$W" "$PORT" >"$W/registry.yml"
    log "registry: docker-registry serve on 127.0.0.1:$PORT"
    as_user bash -c 'docker-registry serve "$W/registry.yml" </dev/null >"$W/logs/registry.log" 2>&1 & echo $! >"$W/registry.pid"'
    local i
    for i in $(seq 100); do
        curl -fs --max-time 2 "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && return 0
        alive "$(cat "$W/registry.pid")" || break
        sleep 0.1
    done
    cat "$W/logs/registry.log" >&2 || true
    die "registry did not come up (log above)"
}
