#!/usr/bin/env bash
# cachegrind.sh - instructions, cache misses and estimated cycles per TLS handshake under glibc,
# jemalloc, mimalloc and ossl_mem (any list of options strings), counted by valgrind's cachegrind.
#
# Method. Every allocator runs bench/handshake_once twice, in separate processes, under
#   valgrind --tool=cachegrind --cache-sim=yes --LL=262144,8,64
# once with 10 warm-up + 30 handshakes and once with 10 warm-up + 130; the difference of the two
# runs' totals, divided by 100, is one handshake (PKI, contexts, start-up and exit cancel out).
# A handshake is TLS 1.3 with mutual certificate verification, P-256, both ends in one process
# over a BIO pair (common/omt). From the `summary:` line of each cachegrind.out file:
#   L1 misses        = I1mr + D1mr + D1mw
#   LL misses        = ILmr + DLmr + DLmw            (LL: 256 KiB, 8-way, 64-byte lines)
#   estimated cycles = Ir + 10 x L1 misses + 100 x LL misses
# I1 and D1 are the machine's own (valgrind reads them with cpuid); the header shows them.
#
# How OpenSSL's allocations reach each allocator: always through CRYPTO_malloc, CRYPTO_realloc
# and CRYPTO_free in the same binary, bench/handshake_once.
#   glibc, jemalloc, mimalloc: `handshake_once glibc ...`, OpenSSL left on its default, which
#     calls malloc/realloc/free; for jemalloc and mimalloc those are Debian's libjemalloc.so.2 and
#     libmimalloc.so.2 put in front of libc with LD_PRELOAD (paths found with dpkg -L).
#   ossl_mem: `handshake_once OPTIONS ...`, the project's build of ossl_mem linked into the
#     program and installed with CRYPTO_set_mem_functions (ossl_mem_init with OPTIONS, the
#     environment ignored). libossl_mem_preload.so is not used: it would also interpose
#     pthread_rwlock_init and pthread_mutex_init for every OpenSSL lock, which is not the
#     allocator and which no other variant pays.
# handshake_once prints which library `malloc` resolved to; the script checks it for every run.
set -u -o pipefail

PROG=cachegrind.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/cg_lib.sh"

usage() {
    cat <<EOF
usage: bench/$PROG [--jobs N] [--keep DIR] [--] [OPTIONS_STRING]...
Counts, with valgrind's cachegrind, what one TLS 1.3 handshake (mutual verification, P-256,
both ends in one process) costs under glibc, jemalloc, mimalloc and ossl_mem, and prints:
  | allocator | instructions / handshake | L1 misses | LL misses (256 KiB LL) | estimated cycles | vs mimalloc |
Each allocator runs $WARMUP warm-up + $SHORT and $WARMUP warm-up + $LONG handshakes in two processes
under valgrind --tool=cachegrind --cache-sim=yes --LL=$LL_SPEC; (long - short) / 100 is one
handshake. L1 misses = I1mr + D1mr + D1mw; LL misses = ILmr + DLmr + DLmw; estimated cycles =
Ir + 10 x L1 misses + 100 x LL misses; vs mimalloc = estimated cycles / mimalloc's.
  OPTIONS_STRING  one ossl_mem variant per argument, an options string; "" is the defaults
                  (e.g. bench/$PROG "" no-zero). With none, "" alone.
  --jobs N        valgrind runs at a time (default 2)
  --keep DIR      keep the cachegrind.out files in DIR (for cg_annotate), named
                  ALLOCATOR.HANDSHAKES.out
glibc is OpenSSL's default allocator, jemalloc and mimalloc are Debian's libjemalloc.so.2 and
libmimalloc.so.2 by LD_PRELOAD (JEMALLOC_SO and MIMALLOC_SO override the paths), ossl_mem is
the build's own, installed by handshake_once with the options string.
bench/handshake_once is looked for in \$BUILD/bench (if BUILD is set), then next to this script
(make bench builds it). Takes a few minutes.
Exit status: 0 ok, 1 a run failed or something is missing, 2 bad arguments.
EOF
}

cg_parse_args "$@"
OPTS=("${ARGS[@]}")
# "" on the command line is an argument like any other; with no options string at all, run "".
((${#OPTS[@]})) || OPTS=("")
for o in "${OPTS[@]}"; do
    [[ "$o" != glibc ]] || die2 "'glibc' is not an ossl_mem options string (glibc always runs)"
done

command -v valgrind >/dev/null || die1 "valgrind is not installed (apt-get install valgrind; tools/setup.sh installs it)"
command -v python3 >/dev/null || die1 "python3 is needed for the arithmetic (apt-get install python3)"

# so_path SONAME PKG...: the file SONAME from the first installed package that ships it.
so_path() {
    local soname=$1 p f
    shift
    for p in "$@"; do
        f=$(dpkg -L "$p" 2>/dev/null | grep -m1 "/$soname\$") && [[ -e "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}
JE=${JEMALLOC_SO:-$(so_path libjemalloc.so.2 libjemalloc2)} ||
    die1 "libjemalloc.so.2 not found: apt-get install libjemalloc2 (tools/setup.sh --bench installs it), or set JEMALLOC_SO"
MI=${MIMALLOC_SO:-$(so_path libmimalloc.so.2 libmimalloc2.0 libmimalloc2)} ||
    die1 "libmimalloc.so.2 not found: apt-get install libmimalloc2.0 (tools/setup.sh --bench installs it), or set MIMALLOC_SO"
[[ -r "$JE" ]] || die1 "JEMALLOC_SO: no such file '$JE'"
[[ -r "$MI" ]] || die1 "MIMALLOC_SO: no such file '$MI'"

BIN=""
for d in ${BUILD:+"$BUILD/bench"} "$here"; do
    if [[ -x "$d/handshake_once" ]]; then BIN=$d/handshake_once; break; fi
done
[[ -n "$BIN" ]] || die1 "handshake_once not found in ${BUILD:+\$BUILD/bench ($BUILD/bench) or }$here; build it first (make bench)"
"$BIN" glibc 1 0 2>/dev/null | grep -q ' malloc=' ||
    die1 "$BIN does not take a warm-up count or print malloc=: rebuild it (make bench)"

work=$(cg_workdir) || exit 1
[[ -n "$KEEP" ]] || trap 'rm -rf "$work"' EXIT

# The allocators, in table order: label, LD_PRELOAD, handshake_once variant, expected malloc.
labels=(glibc jemalloc mimalloc) preload=("" "$JE" "$MI") variant=(glibc glibc glibc)
libc_re='/libc\.so\.6$'
expect=("$libc_re" "/$(basename "$JE")\$" "/$(basename "$MI")\$")
for o in "${OPTS[@]}"; do
    v=${o:-ossl_mem}
    # a bad options string fails here, in a second, not after the valgrind runs
    err=$("$BIN" "$v" 1 0 2>&1 >/dev/null) || die2 "ossl_mem options '$o' refused: ${err##*$'\n'}"
    labels+=("ossl_mem${o:+:$o}") preload+=("") variant+=("$v") expect+=("$libc_re")
done

echo "# $PROG: $((${#labels[@]} * 2)) cachegrind runs of $BIN, $JOBS at a time"
echo "# jemalloc: $JE; mimalloc: $MI"

# run I N: one valgrind run of allocator I with N timed handshakes (after the warm-up).
run() {
    local i=$1 n=$2 base="$work/${labels[$1]}.$2"
    LD_PRELOAD=${preload[$i]} valgrind --tool=cachegrind --cache-sim=yes --LL=$LL_SPEC \
        --cachegrind-out-file="$base.out" "$BIN" "${variant[$i]}" "$n" "$WARMUP" \
        >"$base.stdout" 2>"$base.stderr"
    echo $? >"$base.rc"
}

# Run every job, JOBS at a time.
start=$SECONDS
cg_run_all ${#labels[@]}

# Check every run: exit status, output file, the allocator malloc resolved to.
for ((i = 0; i < ${#labels[@]}; i++)); do
    for n in $SHORT $LONG; do
        base="$work/${labels[$i]}.$n"
        line=$(grep -m1 ' malloc=' "$base.stdout" 2>/dev/null)
        if [[ "$(cat "$base.rc" 2>/dev/null)" != 0 || -z "$line" ]] ||
            ! grep -q '^summary:' "$base.out" 2>/dev/null; then
            tail -n 5 "$base.stderr" >&2
            die1 "${labels[$i]}, $n handshakes: the run failed (log above)"
        fi
        lib=${line##* malloc=}
        [[ "$lib" =~ ${expect[$i]} ]] ||
            die1 "${labels[$i]}: malloc came from $lib, not the intended allocator"
    done
done
echo "# runs done in $((SECONDS - start)) s"
grep '^desc: ' "$work/glibc.$SHORT.out" | sed 's/^desc: /# /'

prefixes=()
for lab in "${labels[@]}"; do prefixes+=("$work/$lab"); done
figures=$(cg_per_handshake "${prefixes[@]}") || exit 1
printf '%s\n' "$figures" | python3 -c '
import sys
short, long_, labels = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rows = dict(zip(labels, (tuple(map(float, ln.split())) for ln in sys.stdin if ln.strip())))
ref = rows["mimalloc"][3]
w = max(len(x) for x in labels + ["allocator"])
head, rule = "allocator".ljust(w), "-" * (w + 2)
print()
print(f"| {head} | instructions / handshake | L1 misses | LL misses (256 KiB LL) "
      f"| estimated cycles | vs mimalloc |")
print(f"|{rule}|-------------------------:|----------:|-----------------------:"
      f"|-----------------:|------------:|")
for lab in labels:
    ir, l1, ll, cyc = rows[lab]
    print(f"| {lab:<{w}} | {ir:>24,.0f} | {l1:>9,.0f} | {ll:>22,.0f} | {cyc:>16,.0f} | "
          f"{cyc / ref:>11.3f} |")
print(f"(per handshake: (run of {long_} - run of {short}) / {long_ - short}, both after 10 warm-up "
      f"ones; estimated cycles = Ir + 10 x L1 misses + 100 x LL misses; vs mimalloc = cycles / "
      f"those of mimalloc)")
' "$SHORT" "$LONG" "${labels[@]}"
