#!/bin/bash
# stress_compare.sh - ossl-mem-stress --mode shared against --mode glibc, interleaved: for every
# round, transport and worker count both modes run back to back (order alternating by round),
# and the table gives the median handshakes/s of each and the median of the per-run ratios.
# Usage: bench/stress_compare.sh [SECONDS [ROUNDS [WORKERS...]]]   (default: 5 3 1 2 4 8)
# STRESS_TOOL=PATH runs another build of the tool (e.g. an installed one while this tree is rebuilt).
# Run by hand (never in CI); the machine should be otherwise idle.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
rounds=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
workers=("$@")
[ ${#workers[@]} -gt 0 ] || workers=(1 2 4 8)
tool=${STRESS_TOOL:-stress/ossl-mem-stress}
[ -n "${STRESS_TOOL:-}" ] || [ -x "$tool" ] || make -s "$tool"
out=$(mktemp /tmp/stress_compare.XXXXXX)
trap 'rm -f "$out"' EXIT
for r in $(seq "$rounds"); do
    for tr in bio socket; do
        for w in "${workers[@]}"; do
            modes=(shared glibc)
            [ $((r % 2)) = 0 ] && modes=(glibc shared)
            for m in "${modes[@]}"; do
                "$tool" --mode "$m" --transport "$tr" --workers "$w" --seconds "$secs" \
                    --json "$out.json" >/dev/null 2>&1 || { echo "run failed: $m $tr $w"; exit 1; }
                rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rate_total'])" "$out.json")
                echo "$r $tr $w $m $rate" | tee -a "$out"
            done
        done
    done
done
rm -f "$out.json"
python3 - "$out" <<'PY'
import sys, statistics as S
rows = [l.split() for l in open(sys.argv[1])]
runs = {}
for r, tr, w, m, rate in rows:
    runs.setdefault((tr, int(w)), {}).setdefault(m, {})[r] = float(rate)
print("\n%-8s %7s %12s %12s %10s %10s" % ("transport", "workers", "shared hs/s", "glibc hs/s",
                                          "ratio", "paired"))
for (tr, w), d in sorted(runs.items()):
    sh, gl = d["shared"], d["glibc"]
    paired = S.median([sh[r] / gl[r] for r in sh if r in gl])
    print("%-8s %7d %12.0f %12.0f %10.3f %10.3f" % (tr, w, S.median(sh.values()),
          S.median(gl.values()), S.median(sh.values()) / S.median(gl.values()), paired))
print("(medians over the rounds; paired = median of the per-round shared/glibc ratios)")
PY
