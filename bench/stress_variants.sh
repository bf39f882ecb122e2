#!/bin/bash
# stress_variants.sh - ossl-mem-stress with several ossl_mem option strings against --mode glibc,
# interleaved: each round runs every variant once, back to back (order reversed every other
# round), and the table gives each variant's median handshakes/s and the median and mean of its
# per-round ratio to glibc. It is how the default quarantine was chosen (bench/RESULTS.md
# section 9).
# Usage: bench/stress_variants.sh TRANSPORT WORKERS SECONDS ROUNDS [OPTIONS...]
#   TRANSPORT bio|socket; each OPTIONS is an --options string for --mode shared, "" for the
#   defaults (default variants: the defaults, the old default quarantine=64K,quarantine-over=0,
#   the 4K quarantine on every chunk, quarantine-over=0, and none, quarantine=0).
# STRESS_TOOL=PATH runs another build of the tool. Run by hand (never in CI), on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
tr=$1 workers=$2 secs=$3 rounds=$4
shift 4
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("" quarantine=64K,quarantine-over=0 quarantine-over=0 quarantine=0)
tool=${STRESS_TOOL:-stress/ossl-mem-stress}
[ -n "${STRESS_TOOL:-}" ] || [ -x "$tool" ] || make -s "$tool"
out=$(mktemp /tmp/stress_variants.XXXXXX)
trap 'rm -f "$out" "$out.json"' EXIT
all=(glibc "${variants[@]/#/shared:}")
for r in $(seq "$rounds"); do
    order=("${all[@]}")
    if [ $((r % 2)) = 0 ]; then
        order=()
        for ((i = ${#all[@]} - 1; i >= 0; i--)); do order+=("${all[i]}"); done
    fi
    for v in "${order[@]}"; do
        args=(--mode glibc)
        if [ "$v" != glibc ]; then
            args=(--mode shared)
            [ -n "${v#shared:}" ] && args+=(--options "${v#shared:}")
        fi
        "$tool" "${args[@]}" --transport "$tr" --workers "$workers" --seconds "$secs" \
            --json "$out.json" >/dev/null 2>&1 || { echo "run failed: $v"; exit 1; }
        rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rate_total'])" "$out.json")
        name=${v#shared:}
        [ "$v" = "shared:" ] && name=defaults
        echo "$r ${name} $rate" | tee -a "$out"
    done
done
python3 - "$out" "$tr" "$workers" <<'PY'
import sys, statistics as S
runs = {}
for line in open(sys.argv[1]):
    r, v, rate = line.split()
    runs.setdefault(v, {})[r] = float(rate)
gl = runs.pop("glibc")
print("\n%s transport, %s workers\n%-24s %10s %12s %12s" % (sys.argv[2], sys.argv[3], "variant",
                                                         "hs/s", "paired med", "paired mean"))
print("%-24s %10.0f %12s %12s" % ("glibc", S.median(gl.values()), "1", "1"))
for v, d in runs.items():
    rs = [d[r] / gl[r] for r in d if r in gl]
    print("%-24s %10.0f %12.3f %12.3f" % (v, S.median(d.values()), S.median(rs), S.mean(rs)))
print("(paired = this variant's rate over glibc's in the same round)")
PY
