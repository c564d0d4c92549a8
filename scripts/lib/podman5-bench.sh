# `podman5-e2e.sh --bench`: rootless podman 5 pulling a generated ~300 MB
# zstd:chunked image and running `true` in it, through erofs-fuse's
# additional layer store against a plain pull, paired rounds with fresh
# storage each, medians of E2E_ROUNDS (3). Sourced by the user part of
# podman5-e2e.sh (inside the trixie root), which defines t, log, record,
# start_fuse, unmount_all, reg_mark, reg_bytes and sets W, PORT, BIN, LAZY.
# shellcheck shell=bash disable=SC2016

BENCH_REF_TAG=bench

# The image's one layer: busybox (for `true`), /usr of the trixie root up
# to ~220 MB (many files, mixed sizes, compressible) and ~80 MB of random
# data in files from 1 KiB to 8 MiB (incompressible).
bench_tar() {
    TIMEOUT=600 t python3 - "$W/bench.tar" <<'EOF'
import io, os, random, sys, tarfile
rng = random.Random(5)
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as tf:
    tf.add("/bin/busybox", "bin/busybox")
    for a in ("sh", "true"):
        i = tarfile.TarInfo("bin/" + a); i.type = tarfile.SYMTYPE; i.linkname = "busybox"; tf.addfile(i)
    budget = 220 << 20
    for top, dirs, files in os.walk("/usr"):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(top, f)
            if budget <= 0 or not os.path.isfile(p) or os.path.islink(p):
                continue
            budget -= os.path.getsize(p)
            tf.add(p, "data" + p, recursive=False)
    left, n = 80 << 20, 0
    while left > 0:
        size = min(left, int(1024 * 2 ** rng.uniform(0, 13)))
        i = tarfile.TarInfo(f"data/random/{n:04}.bin"); i.size = size
        tf.addfile(i, io.BytesIO(os.urandom(size)))
        left -= size; n += 1
EOF
}

bench_image() {
    log "bench: generating the image (~300 MB)"
    bench_tar
    t podman import -q "$W/bench.tar" localhost/p5bench:1 >/dev/null
    log "bench: podman push --compression-format=zstd:chunked localhost:$PORT/$REPO:$BENCH_REF_TAG"
    TIMEOUT=900 t podman push -q --compression-format=zstd:chunked --force-compression --tls-verify=false \
        localhost/p5bench:1 "docker://localhost:$PORT/$REPO:$BENCH_REF_TAG"
    t podman rmi -af >/dev/null 2>&1 || true
    log "bench: layer $(($(stat -c %s "$W/bench.tar") >> 20)) MiB as a tar, $(($(t curl -fsS \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://127.0.0.1:$PORT/v2/$REPO/manifests/$BENCH_REF_TAG" |
        python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))') >> 20)) MiB as zstd:chunked"
    rm -f "$W/bench.tar"
}

# A fresh storage root for one round (podman's own config file for it).
bench_conf() { # round-name [store-mount]
    local conf=$W/bench-$1.conf
    printf '[storage]\ndriver = "overlay"\ngraphroot = "%s"\nrunroot = "%s"\n' \
        "$HOME/bench/$1" "$XDG_RUNTIME_DIR/bench-$1" >"$conf"
    if [ -n "${2:-}" ]; then printf '[storage.options]\nadditionallayerstores = ["%s:ref"]\n' "$2" >>"$conf"; fi
    echo "$conf"
}

# One round: pull + run true with CONF; prints "seconds bytes".
bench_round() { # name conf
    local ref=localhost:$PORT/$REPO:$BENCH_REF_TAG mark t0 t1 bytes
    mark=$(reg_mark)
    t0=$(date +%s.%N)
    CONTAINERS_STORAGE_CONF=$2 TIMEOUT=900 t podman pull -q --tls-verify=false "$ref" >/dev/null
    CONTAINERS_STORAGE_CONF=$2 t podman run --rm --network=none --cgroups=disabled "$ref" true
    t1=$(date +%s.%N)
    sleep 1   # the registry writes its access log line after the response
    bytes=$(reg_bytes "$mark")
    CONTAINERS_STORAGE_CONF=$2 t podman rmi -af >/dev/null 2>&1 || true
    pu rm -rf "$HOME/bench/$1" >/dev/null
    echo "$(python3 -c "print(round($t1 - $t0, 2))") $bytes"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

bench_main() {
    local rounds=${E2E_ROUNDS:-3} i kind st mnt conf out
    bench_image
    : >"$W/bench.txt"
    if [ "$LAZY" = 1 ]; then
        kind=lazy
    else
        kind=added
        log "bench: lazy fetching not available (store serve --help mentions no fetching): the store round uses layers added beforehand with store add"
        st=$W/bench-store mnt=$W/mnt/bench
        t skopeo copy -q --preserve-digests --src-tls-verify=false \
            "docker://localhost:$PORT/$REPO:$BENCH_REF_TAG" "oci:$W/bench-layout:1"
        local a0 a1
        a0=$(date +%s.%N)
        TIMEOUT=900 t "$BIN" store add -q "$st" "$W/bench-layout" >"$W/logs/bench-add.out"
        a1=$(date +%s.%N)
        log "bench: store add of the layer took $(python3 -c "print(round($a1 - $a0, 2))") s (once, not in the rounds)"
        start_fuse bench "$mnt" "$BIN" store serve -f -o allow_other --log-file "$W/logs/bench.log" "$st" "$mnt"
    fi
    for ((i = 1; i <= rounds; i++)); do
        conf=$(bench_conf "plain-$i")
        out=$(bench_round "plain-$i" "$conf")
        echo "plain $out" >>"$W/bench.txt"
        log "bench round $i plain: $out (s, bytes)"
        if [ "$kind" = lazy ]; then
            st=$W/bench-store-$i mnt=$W/mnt/bench-$i
            mkdir -p "$st"
            # shellcheck disable=SC2086  # options, split on purpose
            start_fuse "bench-$i" "$mnt" "$BIN" store serve -f -o allow_other $LAZY_ARGS \
                --log-file "$W/logs/bench-$i.log" "$st" "$mnt"
        fi
        conf=$(bench_conf "store-$i" "$mnt")
        out=$(bench_round "store-$i" "$conf")
        echo "store $out" >>"$W/bench.txt"
        log "bench round $i store ($kind): $out (s, bytes)"
        if [ "$kind" = lazy ]; then unmount_all; fi
    done
    unmount_all
    local k
    {
        echo "bench: podman pull + podman run true of a ~300 MB zstd:chunked image, medians of $rounds"
        printf '%-22s %10s %14s\n' case seconds bytes-fetched
        for k in plain store; do
            printf '%-22s %10s %14s\n' "$k$([ "$k" = store ] && echo " ($kind)")" \
                "$(awk -v k=$k '$1 == k { print $2 }' "$W/bench.txt" | median)" \
                "$(awk -v k=$k '$1 == k { print $3 }' "$W/bench.txt" | median)"
        done
    } | tee -a "$W/bench.txt"
    record PASS "bench: $rounds paired rounds"
}
