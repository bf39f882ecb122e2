# cg_lib.sh - what bench/cachegrind.sh and bench/ablate.sh share: their arguments, running the
# valgrind jobs a few at a time, and the per-handshake arithmetic. Sourced, not run; the script
# sets PROG and defines usage() before sourcing it.

SHORT=30 LONG=130 WARMUP=10
LL_SPEC=262144,8,64

die2() { echo "$PROG: $*" >&2; exit 2; }
die1() { echo "$PROG: $*" >&2; exit 1; }

# cg_parse_args ARG...: --help, --jobs N and --keep DIR into JOBS and KEEP; everything else
# (after -- too) into ARGS. An unknown option exits with status 2.
cg_parse_args() {
    JOBS=2 KEEP=""
    ARGS=()
    while (($#)); do
        case "$1" in
        --help | -h) usage; exit 0 ;;
        --jobs)
            (($# >= 2)) || die2 "--jobs needs a value (try --help)"
            [[ "$2" =~ ^[1-9][0-9]?$ ]] || die2 "--jobs needs a whole number from 1 to 99, got '$2'"
            JOBS=$2; shift ;;
        --keep) (($# >= 2)) || die2 "--keep needs a directory (try --help)"; KEEP=$2; shift ;;
        --) shift; ARGS+=("$@"); break ;;
        -*) die2 "unknown argument '$1' (try --help)" ;;
        *) ARGS+=("$1") ;;
        esac
        shift
    done
}

# cg_workdir: the directory for the runs, $KEEP (made if needed) or a temporary one removed at
# exit; printed.
cg_workdir() {
    if [[ -n "$KEEP" ]]; then
        mkdir -p "$KEEP" || die1 "cannot make $KEEP"
        (cd "$KEEP" && pwd)
    else
        mktemp -d "${TMPDIR:-/tmp}/${PROG%.sh}_sh.XXXXXX" || die1 "mktemp failed"
    fi
}

# cg_run_all ROWS: calls run I N (the caller's) for rows 0 .. ROWS-1 with N = $SHORT and $LONG,
# $JOBS at a time, in the background, and waits for all of them.
cg_run_all() {
    local i n
    for ((i = 0; i < $1; i++)); do
        for n in $SHORT $LONG; do
            while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
            run "$i" "$n" &
        done
    done
    wait
}

# cg_per_handshake PREFIX...: for each PREFIX, from PREFIX.$SHORT.out and PREFIX.$LONG.out
# (cachegrind files), one line "Ir L1 LL cycles" of one handshake: (long - short) / (LONG -
# SHORT); L1 = I1mr + D1mr + D1mw, LL = ILmr + DLmr + DLmw, cycles = Ir + 10 L1 + 100 LL.
cg_per_handshake() {
    python3 - "$PROG" "$SHORT" "$LONG" "$@" <<'EOF'
import sys
prog, short, long_, prefixes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]

def totals(path):
    events = summary = None
    for ln in open(path):
        if ln.startswith("events:"):
            events = ln.split()[1:]
        elif ln.startswith("summary:"):
            summary = [int(x) for x in ln.split()[1:]]
    if not events or not summary or len(events) != len(summary):
        sys.exit(f"{prog}: no events/summary line in {path}")
    return dict(zip(events, summary))

for p in prefixes:
    a, b = totals(f"{p}.{short}.out"), totals(f"{p}.{long_}.out")
    try:
        d = {e: (b[e] - a[e]) / (long_ - short)
             for e in ("Ir", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")}
    except KeyError as e:
        sys.exit(f"{prog}: event {e} missing (was --cache-sim=yes honoured?)")
    l1 = d["I1mr"] + d["D1mr"] + d["D1mw"]
    ll = d["ILmr"] + d["DLmr"] + d["DLmw"]
    print(d["Ir"], l1, ll, d["Ir"] + 10 * l1 + 100 * ll)
EOF
}
