#!/usr/bin/env bash
# replay_bench.sh - replays one recorded handshake allocation trace under glibc, jemalloc, mimalloc and ossl_mem in interleaved rounds and tabulates ns per call.
set -u -o pipefail

PROG=replay_bench.sh
VARIANTS=(glibc jemalloc mimalloc ossl_mem)

usage() {
    cat <<EOF
usage: $PROG [--trace FILE] [--rounds N] [--reps R] [--handshakes N] [--options STR] [--help]
Replays an OpenSSL allocation trace (recorded by replay_record during verified TLS 1.3
handshakes) with replay_glibc, replay_jemalloc, replay_mimalloc and replay_ossl_mem,
in N interleaved rounds (order rotated each round), and prints the median ns per call
of each, with its ratio to glibc and to mimalloc.
  --trace FILE     trace to replay; recorded there first if the file does not exist
                   (default: replay_handshakes.trace next to the binaries)
  --rounds N       rounds (default 7)
  --reps R         timed replays per binary run, passed to the replayers (default 20)
  --handshakes N   handshakes to record when a trace has to be made (default 100)
  --options STR    ossl_mem options for replay_ossl_mem (default: its defaults)
The binaries are looked for in \$BUILD/bench (if BUILD is set), then next to this script.
Exit status: 0 ok, 1 a run failed, 2 bad arguments.
EOF
}

die2() { echo "$PROG: $*" >&2; exit 2; }
die1() { echo "$PROG: $*" >&2; exit 1; }

# posint NAME VALUE: VALUE must be a whole number >= 1.
posint() {
    [[ "$2" =~ ^[0-9]+$ ]] && (( 10#$2 >= 1 && 10#$2 <= 1000000 )) ||
        die2 "$1 needs a whole number from 1 to 1000000, got '$2' (try --help)"
}

ROUNDS=7 REPS=20 HANDSHAKES=100 TRACE="" OPTIONS="" HAVE_OPTIONS=0
while (($#)); do
    case "$1" in
    --help | -h) usage; exit 0 ;;
    --trace) (($# >= 2)) || die2 "--trace needs a file"; TRACE=$2; shift ;;
    --rounds) (($# >= 2)) || die2 "--rounds needs a value"; posint --rounds "$2"; ROUNDS=$((10#$2)); shift ;;
    --reps) (($# >= 2)) || die2 "--reps needs a value"; posint --reps "$2"; REPS=$((10#$2)); shift ;;
    --handshakes) (($# >= 2)) || die2 "--handshakes needs a value"; posint --handshakes "$2"; HANDSHAKES=$((10#$2)); shift ;;
    --options) (($# >= 2)) || die2 "--options needs a value"; OPTIONS=$2; HAVE_OPTIONS=1; shift ;;
    *) die2 "bad argument '$1' (try --help)" ;;
    esac
    shift
done

command -v python3 >/dev/null || die1 "python3 is needed for the arithmetic"

# Find the directory holding all five binaries.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BINDIR=""
for d in ${BUILD:+"$BUILD/bench"} "$here"; do
    ok=1
    for b in replay_record "${VARIANTS[@]/#/replay_}"; do
        [[ -x "$d/$b" ]] || ok=0
    done
    if ((ok)); then BINDIR=$d; break; fi
done
[[ -n "$BINDIR" ]] || die1 "replay binaries not found in ${BUILD:+\$BUILD/bench ($BUILD/bench) or }$here; build them first (make bench, or bench/build_by_hand.sh)"

[[ -n "$TRACE" ]] || TRACE="$BINDIR/replay_handshakes.trace"
if [[ ! -f "$TRACE" ]]; then
    echo "# recording $TRACE ($HANDSHAKES handshakes)"
    "$BINDIR/replay_record" "$TRACE" --handshakes "$HANDSHAKES" || die1 "replay_record failed"
fi

results=$(mktemp "${TMPDIR:-/tmp}/replay_bench.XXXXXX") || die1 "mktemp failed"
trap 'rm -f "$results"' EXIT

echo "# $PROG: trace $TRACE, $ROUNDS rounds x ${#VARIANTS[@]} allocators, $REPS timed reps each (median per run), binaries in $BINDIR"
n=${#VARIANTS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        v=${VARIANTS[(r + k) % n]}
        args=("$TRACE" --reps "$REPS")
        if [[ $v == ossl_mem ]] && ((HAVE_OPTIONS)); then args+=(--options "$OPTIONS"); fi
        out=$("$BINDIR/replay_$v" "${args[@]}") || { printf '%s\n' "$out"; die1 "replay_$v failed in round $((r + 1))"; }
        grep '^warning:' <<<"$out" | sed "s/^/replay_$v: /" >&2
        line=$(grep '^RESULT ' <<<"$out" | tail -n 1)
        ns=$(sed -n 's/.* ns_per_call=\([0-9.]*\).*/\1/p' <<<"$line")
        [[ -n "$ns" ]] || die1 "replay_$v printed no RESULT line"
        printf 'round %d/%d  %-9s %8s ns/call\n' $((r + 1)) "$ROUNDS" "$v" "$ns"
        printf '%s %s\n' "$v" "$ns" >>"$results"
    done
done

om_label=ossl_mem
((HAVE_OPTIONS)) && om_label="ossl_mem:$OPTIONS"
OM_LABEL=$om_label python3 - "$results" "${VARIANTS[@]}" <<'EOF'
import os, statistics, sys
path, variants = sys.argv[1], sys.argv[2:]
runs = {v: [] for v in variants}
for ln in open(path):
    v, ns = ln.split()
    runs[v].append(float(ns))
med = {v: statistics.median(runs[v]) for v in variants}
print()
label = {v: os.environ["OM_LABEL"] if v == "ossl_mem" else v for v in variants}
w = max(10, *(len(x) for x in label.values()))
print(f"{'variant':<{w}} {'median ns/call':>14} {'min':>8} {'max':>8} {'vs glibc':>9} {'vs mimalloc':>12}")
for v in variants:
    print(f"{label[v]:<{w}} {med[v]:>14.2f} {min(runs[v]):>8.2f} {max(runs[v]):>8.2f} "
          f"{med[v] / med['glibc']:>9.3f} {med[v] / med['mimalloc']:>12.3f}")
print(f"(medians over {len(runs[variants[0]])} rounds; ratio = ns/call / reference's, lower is faster)")
EOF
