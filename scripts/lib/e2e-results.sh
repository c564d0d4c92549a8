# shellcheck shell=bash disable=SC2016
# Shared by the e2e scripts (podman-e2e.sh, podman5-e2e.sh). Check results:
# each check appends "PASS|FAIL description" to $W/results, and the root
# part tallies them at exit. Uses the sourcing script's log().

record() { # PASS|FAIL description
    echo "$1 $2" >>"$W/results"
    if [ "$1" = PASS ]; then log "ok   $2"; else log "FAIL $2"; fi
}

check() { # description want got
    if [ "$3" = "$2" ]; then record PASS "$1"; else record FAIL "$1: want '$2', got '$3'"; fi
}

# Compares "key=value" lines of OUTPUT with each line of EXPECTED.
compare() { # name expected output
    local line key got
    while IFS= read -r line; do
        key=${line%%=*}
        got=$(printf '%s\n' "$3" | sed -n "s/^$key=//p" | head -n 1)
        check "$1: $key" "${line#*=}" "$got"
    done <<<"$2"
}

# Prints "NAME: N passed, M failed" (a non-zero RC of the run itself counts
# as a failure) and succeeds only when nothing failed and something passed.
report_results() { # name rc
    local passed failed
    passed=$(grep -c '^PASS' "$W/results" 2>/dev/null)
    failed=$(grep -c '^FAIL' "$W/results" 2>/dev/null)
    passed=${passed:-0} failed=${failed:-0}
    if [ "$2" -ne 0 ]; then
        log "FAIL: the run itself stopped with status $2 (see above)"
        failed=$((failed + 1))
    fi
    if [ "$failed" -ne 0 ]; then
        grep '^FAIL' "$W/results" 2>/dev/null | sed 's/^/  /'
        log "logs: $W/logs"
    fi
    echo "$1: $passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
}

# Starts a FUSE server in podman's rootless namespace (the sourcing script's
# pu: `podman unshare` under its timeout), its output appended to OUT and its
# pid written to PIDFILE, and waits up to 30 s for MNT to become a mount
# point; fails if the server exits first.
serve_until_mounted() { # mnt out pidfile command...
    pu sh -c '
        mnt=$1 out=$2 pidf=$3; shift 3
        "$@" </dev/null >>"$out" 2>&1 &
        pid=$!; echo $pid >"$pidf"
        i=0
        until mountpoint -q "$mnt"; do
            st=$(sed "s/.*) //; s/ .*//" /proc/$pid/stat 2>/dev/null || echo gone)
            if [ "$st" = Z ] || [ "$st" = gone ]; then echo "server exited before mounting" >&2; exit 1; fi
            i=$((i + 1)); [ $i -le 300 ] || { echo "not mounted after 30 s" >&2; exit 1; }
            sleep 0.1
        done' sh "$@"
}
