#!/bin/bash
# stress_compare.sh - ossl-mem-stress --mode shared against --mode glibc and against --mode glibc
# under LD_PRELOAD of mimalloc, interleaved: for every round, transport and worker count the
# three run back to back (order rotated by round), and the table gives the median handshakes/s
# of each and the medians of the per-round ratios.
# Usage: bench/stress_compare.sh [SECONDS [ROUNDS [WORKERS...]]]   (default: 5 3 1 2 4 8)
# STRESS_TOOL=PATH runs another build of the tool (e.g. an installed one while this tree is rebuilt).
# mimalloc is Debian's libmimalloc.so.2 (found with dpkg -L; MIMALLOC_SO=PATH overrides); if it
# is not installed (apt-get install libmimalloc2.0, or tools/setup.sh --bench), the mimalloc
# runs are skipped and said so. Every process of the tool is under the preload, workers and
# clients alike; OpenSSL is left on its default allocator, so its malloc is mimalloc's.
# KILL_EVERY=S adds a fourth mode, "kills": --mode shared with --kill-every S (SIGKILLs at random
# instants, workers replaced), in the same rounds, and columns comparing it with shared and glibc.
# Run by hand (never in CI); the machine should be otherwise idle.
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
workers=("$@")
[ ${#workers[@]} -gt 0 ] || workers=(1 2 4 8)
tool=${STRESS_TOOL:-stress/ossl-mem-stress}
[ -n "${STRESS_TOOL:-}" ] || [ -x "$tool" ] || make -s "$tool"
mi=${MIMALLOC_SO:-}
if [ -z "$mi" ]; then
    for p in libmimalloc2.0 libmimalloc2; do
        mi=$(dpkg -L "$p" 2>/dev/null | grep -m1 '/libmimalloc\.so\.2$') && break || mi=""
    done
fi
modes_all=(shared glibc mimalloc)
if [ -z "$mi" ] || [ ! -r "$mi" ]; then
    echo "mimalloc: SKIPPED: libmimalloc.so.2 not found${MIMALLOC_SO:+ at $MIMALLOC_SO}" \
         "(apt-get install libmimalloc2.0, or tools/setup.sh --bench)"
    modes_all=(shared glibc)
else
    echo "mimalloc: ossl-mem-stress --mode glibc with LD_PRELOAD=$mi"
fi
[ -z "${KILL_EVERY:-}" ] || modes_all+=(kills)
out=$(mktemp /tmp/stress_compare.XXXXXX)
trap 'rm -f "$out" "$out.json" "$out.err"' EXIT
n=${#modes_all[@]}
for r in $(seq "$rounds"); do
    for tr in bio socket; do
        for w in "${workers[@]}"; do
            for k in $(seq 0 $((n - 1))); do
                m=${modes_all[$(( (r - 1 + k) % n ))]}   # rotated: each mode leads some rounds
                pre="" mode=$m extra=()
                [ "$m" != mimalloc ] || { pre=$mi; mode=glibc; }
                [ "$m" != kills ] || { mode=shared; extra=(--kill-every "$KILL_EVERY"); }
                LD_PRELOAD=$pre "$tool" --mode "$mode" --transport "$tr" --workers "$w" \
                    --seconds "$secs" "${extra[@]}" --json "$out.json" >/dev/null 2>"$out.err" ||
                    { tail -n 3 "$out.err"; echo "run failed: $m $tr $w"; exit 1; }
                ! grep -q 'cannot be preloaded' "$out.err" ||
                    { head -n 1 "$out.err"; echo "run failed: $m $tr $w: no mimalloc"; exit 1; }
                rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rate_total'])" "$out.json")
                echo "$r $tr $w $m $rate" | tee -a "$out"
            done
        done
    done
done
python3 - "$out" <<'PY'
import sys, statistics as S
rows = [l.split() for l in open(sys.argv[1])]
runs = {}
for r, tr, w, m, rate in rows:
    runs.setdefault((tr, int(w)), {}).setdefault(m, {})[r] = float(rate)
have_mi = any("mimalloc" in d for d in runs.values())
have_k = any("kills" in d for d in runs.values())
def paired(a, b):
    return S.median([a[r] / b[r] for r in a if r in b])
hdr = "\n%-8s %7s %12s %12s %10s %10s" % ("transport", "workers", "shared hs/s", "glibc hs/s",
                                          "ratio", "paired")
if have_mi:
    hdr += " %14s %11s %11s %11s" % ("mimalloc hs/s", "sh/mi", "sh/mi pair", "gl/mi pair")
if have_k:
    hdr += " %11s %11s %11s" % ("kills hs/s", "k/sh pair", "k/gl pair")
print(hdr)
for (tr, w), d in sorted(runs.items()):
    sh, gl = d["shared"], d["glibc"]
    line = "%-8s %7d %12.0f %12.0f %10.3f %10.3f" % (tr, w, S.median(sh.values()),
           S.median(gl.values()), S.median(sh.values()) / S.median(gl.values()), paired(sh, gl))
    if have_mi:
        mi = d["mimalloc"]
        line += " %14.0f %11.3f %11.3f %11.3f" % (S.median(mi.values()),
                S.median(sh.values()) / S.median(mi.values()), paired(sh, mi), paired(gl, mi))
    if have_k:
        k = d["kills"]
        line += " %11.0f %11.3f %11.3f" % (S.median(k.values()), paired(k, sh), paired(k, gl))
    print(line)
print("(medians over the rounds; ratio = shared/glibc of the medians, paired = median of the "
      "per-round shared/glibc ratios" + ("; sh/mi and sh/mi pair the same against mimalloc, "
      "gl/mi pair = glibc/mimalloc per round" if have_mi else "") + ("; k/sh pair and k/gl pair = "
      "shared with kills against shared without and against glibc, per round" if have_k else "")
      + ")")
PY
