# Helpers for the rootless part of podman5-e2e.sh (and its --bench),
# run as the test user inside the trixie root: FUSE
# servers in podman's namespace, registry log accounting, listings of the
# store's layers, the root-mode comparison. The sourcing
# script defines log and t (a command under the per-command timeout) and
# sets W (work dir), PORT and BIN.
# Single-quoted scripts for sh -c expand in the inner shell.
# shellcheck shell=bash disable=SC2016

# record, check, compare (copied beside this file by the root part).
# shellcheck source=lib/e2e-results.sh
. "$W/lib/e2e-results.sh"

# Two listings must be equal; on a difference the diff goes to the log.
same_listing() { # description file-want file-got
    if cmp -s "$2" "$3"; then
        record PASS "$1 ($(wc -l <"$2") entries)"
    else
        { diff "$2" "$3" || true; } | head -n 20 | sed 's/^/    /'
        record FAIL "$1: listings differ ($2 vs $3)"
    fi
}

# True if PID runs (zombies count as gone: PID 1 may not reap them).
alive() {
    local state
    state=$(sed 's/.*) //; s/ .*//' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# podman unshare with a deadline: a shell in podman's user+mount namespace.
pu() { t podman unshare "$@"; }

# Starts a foreground FUSE server inside podman's namespace (so podman sees
# its mount, with the image's uids) and waits until MOUNTPOINT is mounted.
# The server outlives `podman unshare`: the pause process keeps the
# namespace. Its pid and mountpoint go to $W/pids for unmount_all.
start_fuse() { # name mountpoint command...
    local name=$1 mnt=$2
    shift 2
    mkdir -p "$mnt" "$W/pids"
    echo "$mnt" >"$W/pids/$name.mnt"
    log "$name: podman unshare $*"
    serve_until_mounted "$mnt" "$W/logs/$name.out" "$W/pids/$name.pid" "$@" ||
        { record FAIL "$name: server did not mount $mnt"; return 1; }
}

# Unmounts what start_fuse recorded; each server must end with its mount
# (fusermount3 -u is how users stop it); one that does not is killed.
unmount_all() {
    local m base mnt pid i
    for m in "$W"/pids/*.mnt; do
        [ -f "$m" ] || continue
        base=${m%.mnt}
        mnt=$(cat "$m")
        pid=$(cat "$base.pid" 2>/dev/null || echo 0)
        if pu mountpoint -q "$mnt"; then
            # stderr: fusermount3 cannot take its lock file inside the user namespace (harmless).
            pu fusermount3 -u "$mnt" 2>>"$W/logs/fusermount3.err" || log "fusermount3 -u $mnt failed"
            for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
            if alive "$pid"; then record FAIL "${base##*/}: server still running 10 s after fusermount3 -u"; fi
        fi
        if [ "$pid" != 0 ] && alive "$pid"; then
            kill "$pid" 2>/dev/null || true
            sleep 1
            if alive "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$m" "$base.pid"
    done
}

# Registry access-log accounting. The log is docker-registry's combined
# format: "GET /v2/NAME/blobs/DIGEST HTTP/1.1" STATUS BYTES ...
reg_mark() { wc -l <"$W/logs/registry.log"; }
reg_since() { sed -n "$(($1 + 1)),\$p" "$W/logs/registry.log" | grep -o '"[A-Z]* /v2/[^"]*" [0-9]* [0-9-]*' || true; }
# Bytes the registry sent in the lines after MARK (responses' body sizes).
reg_bytes() { reg_since "$1" | awk '{ if ($NF != "-") s += $NF } END { print s + 0 }'; }

# The tree a layer's diff shows in the store, from podman's namespace.
store_listing() { # diff-dir
    pu sh -c 'cd "$1" && find . -printf "%p %m %U %G %s %y %l\n" | sort && find . -type f -print0 | sort -z | xargs -0r sha256sum' sh "$1"
}

# The container's / is the top layer's root directory. When that layer's
# tar has no "./" entry (podman's own pushes have none), podman's overlay
# driver gives it mode 0555 while the store's EROFS root is 0755: a known
# difference of the store, reported (and a failure with E2E_STRICT_ROOT=1),
# so that the rest of the comparison keeps CI meaningful.
root_mode() { # name oracle-list list
    local want got
    want=$(grep '^\. ' "$2" || true)
    got=$(grep '^\. ' "$3" || true)
    if [ "$want" = "$got" ]; then
        record PASS "$1: container / as the oracle's ($got)"
    elif [ "${E2E_STRICT_ROOT:-0}" = 1 ]; then
        record FAIL "$1: container /: want '$want', got '$got'"
    else
        echo "KNOWN $1: container / is '$got', podman without the store '$want'" >>"$W/results"
        log "KNOWN $1: container / is '$got', podman without the store '$want' (E2E_STRICT_ROOT=1 fails on it)"
    fi
}

# store_listing of each layer (TOC digests, one a line) under DIR.
store_layers() { # dir tocs
    local toc
    for toc in $2; do
        echo "== $toc"
        store_listing "$1/$toc/diff"
    done
}


