#!/usr/bin/env bash
# Fuzzes erofs-fuse with cargo-fuzz (libFuzzer, AddressSanitizer, debug
# assertions and overflow checks on): builds the targets in fuzz/, seeds
# their corpora from tests/fixtures, runs each for a while and prints a
# table of executions, coverage and findings.
#
#   scripts/fuzz.sh [--time SECS] [--parallel N] [TARGET...]
#
# Targets (default: all):
#   image       open arbitrary bytes as an image; fsck it (readdir, lookup,
#               every inode, xattr, symlink and byte of data) and read as
#               the FUSE server does
#   decompress  each decoder on arbitrary pclusters, output sizes, configs
#   convert     convert arbitrary tar/tar.gz bytes in index, appended and
#               full mode; whatever it writes must fsck clean
#   verity      the tree superblock parser, and the block checker against
#               whole-tree verification with flipped data and tree bytes
#   nydus       a Nydus RAFS v6 bootstrap and its blob (framed: 4-byte
#               length, bootstrap, blob) opened and read as image does
#   stack       two images merged as layers (mount --layer), walked through
#               the served view: chunked listings must equal whole ones and
#               every listed name must look up to the same inode
# --time: seconds per target (default 60). --parallel: targets at once
# (default: CPUs). Needs cargo-fuzz (installed from crates.io when
# missing); a stable toolchain is used with RUSTC_BOOTSTRAP=1.
#
# Exits 1 if any target found a crash, a timeout (an input taking over 10 s)
# or an out-of-memory (over 2 GiB); the input is kept in
# fuzz/artifacts/TARGET/ and named in the output: copy it to
# tests/fuzz-regressions/TARGET/ (tests/it/fuzz_regressions.rs replays it).
# Corpora grow in fuzz/corpus/TARGET across runs
# (not committed); logs are in target/fuzz-logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=60 parallel=$(nproc) targets=()
while (($#)); do
    case "$1" in
        --time) secs=$2; shift ;;
        --parallel) parallel=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
((${#targets[@]})) || targets=(image decompress convert verity stack nydus)
declare -A max_len=([image]=262144 [decompress]=262144 [convert]=65536 [verity]=8192 [stack]=262144 [nydus]=1048576)
for t in "${targets[@]}"; do
    [ -n "${max_len[$t]:-}" ] || { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
done

export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
logs=target/fuzz-logs seeds=target/fuzz-seeds
mkdir -p "$logs"
rm -rf "$seeds"
# The generator in the dev profile: it runs for a second, a release build
# of it and the library would take minutes.
cargo run --quiet --manifest-path fuzz/Cargo.toml -p fuzz-seeds -- tests/fixtures "$seeds"
mkdir -p "$seeds/stack"
# The fixtures are larger than the image target's max_len: small images of
# a small tree in several layouts make whole seeds (mkfs.erofs, if present).
if command -v mkfs.erofs >/dev/null; then
    small=$(mktemp -d)
    mkdir -p "$small/tree/d/e"
    printf 'hello\n' > "$small/tree/a"
    head -c 9000 /dev/zero | tr '\0' 'x' > "$small/tree/d/b"
    head -c 5000 /dev/urandom > "$small/tree/d/e/c"
    ln -s a "$small/tree/link"
    ln "$small/tree/a" "$small/tree/d/hard"
    setfattr -n user.x -v y "$small/tree/a" 2>/dev/null || true
    i=0
    for opts in "" "-b512" "-Enoinline_data" "--chunksize=4096" "-zlz4" "-zlz4hc -C16384" \
        "-zlz4 -Eztailpacking" "-zlz4hc -Elegacy-compress" "-Eforce-inode-extended"; do
        # shellcheck disable=SC2086
        mkfs.erofs --quiet $opts "$seeds/image/small-$i.erofs" "$small/tree" >/dev/null 2>&1 || true
        i=$((i + 1))
    done
    # An upper layer over it: a whiteout (OCI and overlayfs), an opaque
    # directory, a file replacing a directory. Stack seeds pair the small
    # images as lower and upper: a u32 length, then both.
    mkdir -p "$small/upper/d/e" "$small/upper/link"
    printf 'new\n' > "$small/upper/a"
    : > "$small/upper/d/.wh.b"
    : > "$small/upper/d/e/.wh..wh..opq"
    mknod "$small/upper/hard" c 0 0 2>/dev/null || true
    python3 -c 'import os,sys; os.setxattr(sys.argv[1], "trusted.overlay.opaque", b"y")' \
        "$small/upper/d/e" 2>/dev/null || true
    mkfs.erofs --quiet "$seeds/upper.erofs" "$small/upper" >/dev/null 2>&1 || true
    mkdir -p "$seeds/stack"
    python3 - "$seeds" <<'PY'
import glob, os, struct, sys
seeds = sys.argv[1]
lower = sorted(glob.glob(seeds + "/image/small-*.erofs"))
upper = [seeds + "/upper.erofs"] if os.path.exists(seeds + "/upper.erofs") else []
for i, a in enumerate(lower):
    for j, b in enumerate(upper + lower[:2]):
        da, db = open(a, "rb").read(), open(b, "rb").read()
        open("%s/stack/pair-%d-%d" % (seeds, i, j), "wb").write(struct.pack("<I", len(da)) + da + db)
PY
    rm -rf "$small" "$seeds/upper.erofs"
fi
(cd fuzz && cargo fuzz build --debug-assertions)
# LeakSanitizer counts as leaked the 32 bytes glibc allocates when a thread
# registers its first thread-local destructor (__cxa_thread_atexit_impl)
# if it checks while that thread is still exiting: a conversion that fails
# part-way leaves its decoding thread to end on its own (joining it could
# wait on a stalled input). A finding at that allocation alone does not
# reproduce when its input is run again; only it is suppressed.
printf 'leak:__cxa_thread_atexit_impl\n' > target/fuzz-lsan.supp
export LSAN_OPTIONS="suppressions=$PWD/target/fuzz-lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

run() { # target
    local t=$1
    mkdir -p "fuzz/corpus/$t"
    (cd fuzz && cargo fuzz run --debug-assertions "$t" "corpus/$t" "../$seeds/$t" -- \
        -max_total_time="$secs" -max_len="${max_len[$t]}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1) >"$logs/$t.log" 2>&1
}

declare -A status
running=()
# Ctrl-C or an error stops the fuzzers too.
trap 'kill $(jobs -p) 2>/dev/null || true' INT TERM
for t in "${targets[@]}"; do
    run "$t" & running+=("$!:$t")
    if ((${#running[@]} >= parallel)); then
        for job in "${running[@]}"; do
            if wait "${job%%:*}"; then status[${job#*:}]=0; else status[${job#*:}]=1; fi
        done
        running=()
    fi
done
for job in "${running[@]}"; do
    if wait "${job%%:*}"; then status[${job#*:}]=0; else status[${job#*:}]=1; fi
done

failed=0
printf '%-11s %8s %12s %8s %8s %7s  %s\n' target seconds executions cov features corpus result
for t in "${targets[@]}"; do
    log=$logs/$t.log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    took=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    if [ "${status[$t]}" -eq 0 ]; then
        result="no finding (${took:-?} exec/s)"
    else
        failed=1
        artifact=$(grep -o 'artifact_prefix=[^;]*; Test unit written to [^ ]*' "$log" | sed 's/.*written to //' | tail -1)
        if [ -n "$artifact" ]; then
            result="FINDING: $artifact"
        else
            result="FAILED to run: see $log"
        fi
    fi
    printf '%-11s %8s %12s %8s %8s %7s  %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done
if ((failed)); then
    echo "fuzz.sh: findings above; the logs are in $logs/" >&2
    exit 1
fi
