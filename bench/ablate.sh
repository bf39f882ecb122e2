#!/usr/bin/env bash
# ablate.sh - what each of ossl_mem's guarantees costs per TLS handshake, counted by cachegrind:
# the defaults against builds (or options) with one guarantee taken out, and with all of them out.
#
# Method: the same as bench/cachegrind.sh (bench/handshake_once, 10 warm-up handshakes, then
# 30 and 130 in two processes under valgrind --tool=cachegrind --cache-sim=yes
# --LL=262144,8,64; the difference / 100 is one handshake; estimated cycles = Ir + 10 x L1
# misses + 100 x LL misses). The source tree (git ls-files) is copied to a scratch directory
# and configured once; each ablation edits the copy's fast paths (exact text replacements
# below, which fail loudly when the code they expect has changed), builds handshake_once and
# puts the copy back. Zeroing and the quarantine are taken out with their options instead.
# These builds are measuring instruments only: they drop guarantees the library promises.
set -u -o pipefail

PROG=ablate.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/cg_lib.sh"
ALL_ABLATIONS=(sites check stats gate zero quarantine all)

usage() {
    cat <<EOF
usage: bench/$PROG [--jobs N] [--keep DIR] [ABLATION]...
Prints, per TLS 1.3 handshake (mutual verification, P-256, both ends in one process), what
ossl_mem with its defaults costs and what it costs with one guarantee taken out:
  sites       no site lookup on the fast paths (every chunk gets site id 2)
  check       no keyed header hash (the check is a constant; the state and free-site
              mixes stay)
  stats       no per-tag allocation count, free count or live bytes on the fast paths
  gate        no fork gate (the busy flag and the gate test)
  zero        no zeroing on free (option no-zero)
  quarantine  no quarantine (option quarantine=0)
  all         all six out at once: what the 16-byte header and the thread caches cost alone
With no ABLATION, all of them. mimalloc (Debian's libmimalloc.so.2 by LD_PRELOAD, MIMALLOC_SO
overrides) is measured alongside for the ratio column. Method as bench/cachegrind.sh: 10
warm-up + $SHORT and 10 warm-up + $LONG handshakes under valgrind --tool=cachegrind
--cache-sim=yes --LL=$LL_SPEC, (long - short) / 100; estimated cycles = Ir + 10 x (I1mr + D1mr
+ D1mw) + 100 x (ILmr + DLmr + DLmw).
  --jobs N    valgrind runs at a time (default 2)
  --keep DIR  keep the builds and cachegrind.out files in DIR
Needs git, autoconf/automake/libtool, the build dependencies, valgrind and python3; takes
about ten minutes. The ablated builds drop guarantees: measuring instruments, never to ship.
Exit status: 0 ok, 1 a build or run failed (or an edit no longer applies), 2 bad arguments.
EOF
}

cg_parse_args "$@"
WANT=()
for a in "${ARGS[@]}"; do
    [[ " ${ALL_ABLATIONS[*]} " == *" $a "* ]] || die2 "unknown ablation '$a' (try --help)"
    WANT+=("$a")
done
((${#WANT[@]})) || WANT=("${ALL_ABLATIONS[@]}")

for t in git valgrind python3 autoreconf; do
    command -v $t >/dev/null || die1 "$t is not installed (tools/setup.sh --bench installs what the benchmarks need)"
done
top=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null) || die1 "$here is not in a git checkout"
MI=${MIMALLOC_SO:-$(dpkg -L libmimalloc2.0 2>/dev/null | grep -m1 '/libmimalloc\.so\.2$')} ||
    die1 "libmimalloc.so.2 not found: apt-get install libmimalloc2.0, or set MIMALLOC_SO"
[[ -r "$MI" ]] || die1 "MIMALLOC_SO: no such file '$MI'"

work=$(cg_workdir) || exit 1
[[ -n "$KEEP" ]] || trap 'rm -rf "$work"' EXIT
src=$work/src
rm -rf "$src" && mkdir -p "$src" "$work/bin" || die1 "cannot make $src"
(cd "$top" && git ls-files -z | xargs -0 cp --parents -t "$src") || die1 "copying the tree failed"
echo "# $PROG: configuring a copy of $top in $src"
(cd "$src" && autoreconf -fi && ./configure --quiet) >"$work/configure.log" 2>&1 ||
    die1 "configure failed: see $work/configure.log"

# edit NAME: applies ablation NAME's replacements to the copy (python3; exact text, once each).
edit() {
    python3 - "$src" "$1" <<'PY'
import sys
src, name = sys.argv[1], sys.argv[2]
SITE_FAST = """    uint64_t key = (uint64_t)(uintptr_t)file | (uint64_t)(uint32_t)line << 47;
    uint32_t i = (uint32_t)((key * om_g.site_mul) >> (64 - OM_SITES_HOT_SHIFT));
    if (OM_LIKELY(atomic_load_explicit(&om_g.sites[i], memory_order_relaxed) == key))
        return i;
    if (atomic_load_explicit(&om_g.sites[i ^ 1], memory_order_relaxed) == key)
        return i ^ 1;
    return 0xFFFFFFFFu;"""
CHECK = """    uint64_t x = ((w0 << 16) ^ om_g.cookie) * om_g.hmul0; /* the free site left out */"""
MALLOC_STATS = """    OM_CTR_ADD(tc->st.tag_allocs[tc->tag], 1);
    int64_t l = tc->st.live + (int64_t)n;
    OM_CTR_SET(tc->st.live, l);
    if (OM_UNLIKELY(stat_due(tc, l)))
        return end_flush(tc, om_user(h));
"""
FREE_STATS = """    OM_CTR_ADD(tc->st.frees, 1);
    int64_t l = tc->st.live - (int64_t)size;
    OM_CTR_SET(tc->st.live, l);
"""
GATE = """    __atomic_store_n(&tc->busy, 1, __ATOMIC_RELAXED);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (OM_UNLIKELY(__atomic_load_n(&om_g.gate, __ATOMIC_RELAXED)))
"""
edits = {
    "sites": [("ossl_mem/router.c", SITE_FAST, "    (void)file; (void)line;\n    return 2;", 1)],
    "check": [("ossl_mem/om.h", CHECK, "    (void)h; (void)w0; (void)w1;\n    return 0;\n" + CHECK, 1)],
    "stats": [("ossl_mem/router.c", MALLOC_STATS, "", 1),
              ("ossl_mem/router.c", FREE_STATS, "", 1),
              ("ossl_mem/router.c", "    return stat_due(tc, l);\n", "    return false;\n", 1)],
    # the busy flag's clearing (om_op_end) stays: one store
    "gate": [("ossl_mem/router.c", GATE + "        return malloc_slow_site(", "    if (0)\n        return malloc_slow_site(", 1),
             ("ossl_mem/router.c", GATE + "        return free_rest_site(", "    if (0)\n        return free_rest_site(", 1)],
}
names = ["sites", "check", "stats", "gate"] if name == "all" else [name]
for n in names:
    for path, old, new, count in edits[n]:
        p = f"{src}/{path}"
        s = open(p).read()
        if s.count(old) != count:
            sys.exit(f"ablate.sh: ablation '{n}' no longer applies to {path} (expected text found "
                     f"{s.count(old)} times, wanted {count}): update bench/ablate.sh")
        open(p, "w").write(s.replace(old, new))
PY
}

# build NAME: handshake_once of the copy with ablation NAME (or "base": none) in $work/bin.
build() {
    local name=$1 f
    for f in router.c om.h; do cp "$top/ossl_mem/$f" "$src/ossl_mem/$f" || return 1; done
    if [[ $name != base ]]; then edit "$name" || return 1; fi
    (cd "$src" && make -s -j"$JOBS" bench/handshake_once) >"$work/build.$name.log" 2>&1 ||
        { echo "$PROG: building '$name' failed: see $work/build.$name.log" >&2; return 1; }
    cp "$src/bench/handshake_once" "$work/bin/handshake_once.$name"
}

# Rows: label, binary, options, LD_PRELOAD.
labels=(mimalloc "defaults") bins=(base base) opts=(glibc ossl_mem) pre=("$MI" "")
need=(base)
for a in "${WANT[@]}"; do
    case $a in
    zero) labels+=("- zero on free (no-zero)") bins+=(base) opts+=(no-zero) pre+=("") ;;
    quarantine) labels+=("- quarantine (quarantine=0)") bins+=(base) opts+=(quarantine=0) pre+=("") ;;
    all) labels+=("- all six") bins+=(all) opts+=(no-zero,quarantine=0) pre+=("") need+=(all) ;;
    *) labels+=("- $a") bins+=("$a") opts+=(ossl_mem) pre+=("") need+=("$a") ;;
    esac
done
for b in "${need[@]}"; do
    echo "# building $b"
    build "$b" || exit 1
done
for f in router.c om.h; do cp "$top/ossl_mem/$f" "$src/ossl_mem/$f"; done

run() {
    local i=$1 n=$2 base="$work/run.$1.$2"
    LD_PRELOAD=${pre[$i]} valgrind --tool=cachegrind --cache-sim=yes --LL=$LL_SPEC \
        --cachegrind-out-file="$base.out" "$work/bin/handshake_once.${bins[$i]}" "${opts[$i]}" \
        "$n" "$WARMUP" >"$base.stdout" 2>"$base.stderr"
    echo $? >"$base.rc"
}
echo "# ${#labels[@]} variants, $((${#labels[@]} * 2)) cachegrind runs, $JOBS at a time"
cg_run_all ${#labels[@]}
for i in "${!labels[@]}"; do
    for n in $SHORT $LONG; do
        [[ "$(cat "$work/run.$i.$n.rc")" == 0 ]] ||
            die1 "'${labels[$i]}' with $n handshakes failed: $(tail -3 "$work/run.$i.$n.stderr")"
    done
done

prefixes=()
for i in "${!labels[@]}"; do prefixes+=("$work/run.$i"); done
figures=$(cg_per_handshake "${prefixes[@]}") || exit 1
printf '%s\n' "$figures" | python3 -c '
import sys
labels = sys.argv[1:]
rows = [(lab, *map(float, ln.split())) for lab, ln in zip(labels, sys.stdin)]
mi, base = rows[0][4], rows[1][4]
print("| variant | instructions / handshake | L1 misses | LL misses | estimated cycles "
      "| vs mimalloc | saves (cycles) | saves (% of mimalloc) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for label, ir, l1, ll, cyc in rows:
    saves = f"{base - cyc:,.0f} | {100 * (base - cyc) / mi:.1f}%" if label.startswith("- ") else " | "
    print(f"| {label} | {ir:,.0f} | {l1:,.0f} | {ll:,.0f} | {cyc:,.0f} | {cyc / mi:.3f} | {saves} |")
' "${labels[@]}"
echo "(per handshake: (run of $LONG - run of $SHORT) / $((LONG - SHORT)) after $WARMUP warm-up ones;" \
    "estimated cycles = Ir + 10 x L1 misses + 100 x LL misses; '- X': the defaults with X taken out)"
