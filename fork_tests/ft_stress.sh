#!/bin/bash
# ft_stress.sh - ossl-mem-stress itself: short bounded runs in every mode and transport with their
# JSON checked, a run with kills and reloads, RSA with TLS 1.2, the user's own certificate files,
# a client of another CA (must fail and name the verify error), the timeline and plot files, and
# bad command lines (one line, status 2).
set -u
top_builddir=${top_builddir:-.}
tool="$top_builddir/stress/ossl-mem-stress"
[ -x "$tool" ] || { echo "FAIL: $tool not built"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed; tools/setup.sh installs it"; exit 77; }
dir=$(mktemp -d /tmp/ft_stress.XXXXXX)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
check() { if [ "$1" = 0 ]; then echo "ok: $2"; pass=$((pass + 1)); else echo "FAIL: $2"; fail=$((fail + 1)); fi; }

# json FILE PYTHON-CONDITION: the file parses, has the report's keys, and the condition holds
json() {
    python3 -m json.tool "$1" >/dev/null 2>&1 && python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
keys = ["config", "handshakes_ok", "handshakes_failed", "seconds", "serve_seconds", "rate_total",
        "rate_per_worker", "reloads", "kills", "memory", "safety", "check", "workers",
        "first_failure", "verdict"]
safety = ["double_frees", "invalid_frees", "inherited_frees", "overflows", "uaf_writes",
          "corrupt_headers", "hooks_replaced", "shared_failed", "lock_repairs", "check_problems"]
slot = ["slot", "forked", "ok", "failed", "private_peak", "check", "first_failure"]
missing = [k for k in keys if k not in d] + [k for k in safety if k not in d.get("safety", {})]
missing += ["workers[%d].%s" % (i, k) for i, w in enumerate(d.get("workers", [])) for k in slot
            if k not in w]
if len(d.get("workers", [])) != d.get("config", {}).get("workers"):
    missing.append("one workers[] entry per slot")
if missing:
    print("missing keys:", missing)
    sys.exit(1)
s = d["safety"]
# glibc mode has no counters (null); every other mode must have zeros, inherited frees
# included outside shared mode, and every worker that was not killed checked with 0 problems
na = d["config"]["mode"] == "glibc"
clean = all((s[k] is None) if na else (s[k] == 0) for k in safety
            if k != "inherited_frees" or d["config"]["mode"] != "shared")
clean = clean and (s["unexpected"] is None if na else s["unexpected"] == 0)
if not na:
    c = d["check"]
    clean = clean and c["master"] == 0 and c["workers_checked"] >= d["config"]["workers"] \
        and all(w["check"] == 0 for w in d["workers"])
# the rate is over the serving time: from the first fork to the last handshake, within the run;
# the JSON rounds the times to 1 us and the rate to 0.1, so that is all the difference allowed
serve = d["serve_seconds"]
clean = clean and 0 < serve <= d["seconds"] and \
    abs(d["rate_total"] - d["handshakes_ok"] / serve) <= 0.05 + d["rate_total"] * 0.6e-6 / serve + 1e-9
ok = eval(sys.argv[2])
if not ok:
    print(json.dumps(d, indent=1))
sys.exit(0 if ok else 1)
PY
}

# every mode and transport: a short run, all verified, nothing unexpected
for mode in shared private glibc; do
    for tr in bio socket; do
        timeout 120 "$tool" --workers 2 --handshakes 300 --mode $mode --transport $tr \
            --json "$dir/$mode-$tr.json" >"$dir/out" 2>"$dir/err"
        st=$?
        [ $st = 0 ] && json "$dir/$mode-$tr.json" \
            'd["handshakes_ok"] == 300 and d["handshakes_failed"] == 0 and clean and d["verdict"] == "PASS"'
        check $? "--mode $mode --transport $tr: 300 verified handshakes, exit 0, JSON complete"
        [ $st = 0 ] || cat "$dir/out" "$dir/err"
    done
done

# kills and reloads while serving
timeout 120 "$tool" --workers 3 --seconds 6 --reload-every 1 --kill-every 2 --seed 7 \
    --json "$dir/kr.json" --timeline "$dir/kr.csv" >"$dir/out" 2>"$dir/err"
st=$?
[ $st = 0 ] && json "$dir/kr.json" \
    'd["kills"] >= 2 and d["reloads"] >= 4 and d["handshakes_ok"] > 100 and d["handshakes_failed"] == 0 and clean and d["check"]["workers_unchecked"] == d["kills"] and sum(w["forked"] for w in d["workers"]) == 3 + d["kills"] and d["memory"]["contexts_left"] == 0'
check $? "shared, 6 s with a reload every second and a kill every 2 s: all verified, nothing unexpected, kills and reloads counted"
[ $st = 0 ] || cat "$dir/out" "$dir/err"
rows=$(tail -n +2 "$dir/kr.csv" 2>/dev/null | wc -l)
head -1 "$dir/kr.csv" 2>/dev/null | grep -q "^seconds,handshakes,failures,shared_bytes,worker0_private_bytes,worker1_private_bytes,worker2_private_bytes$" &&
    [ "$rows" -ge 5 ]
check $? "--timeline: a header and one row per second ($rows rows)"

# retired contexts are destroyed while the run goes on: the arena never holds more than the
# current context, the one being retired and the one being built (bio: workers only; socket: the
# client processes, forked by the master, count as possible users too)
bounded() { # csv
    python3 - "$1" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
sh = [int(r["shared_bytes"]) for r in rows[:-1]]
ok = len(sh) >= 4 and max(sh) <= 3 * sh[0]
print("shared bytes per second:", sh)
sys.exit(0 if ok else 1)
PY
}
bounded "$dir/kr.csv"
check $? "bio: the arena stays within 3 contexts over 6 reloads (retired ones are reclaimed)"
timeout 120 "$tool" --workers 2 --seconds 6 --reload-every 1 --transport socket \
    --timeline "$dir/krs.csv" >"$dir/out" 2>&1 && bounded "$dir/krs.csv"
check $? "socket: the same with client processes"

for mode in private glibc; do
    timeout 120 "$tool" --workers 2 --seconds 4 --reload-every 1 --kill-every 1 --mode $mode \
        --transport socket --json "$dir/kr-$mode.json" >"$dir/out" 2>&1
    st=$?
    [ $st = 0 ] && json "$dir/kr-$mode.json" 'd["kills"] >= 1 and d["reloads"] >= 2 and d["handshakes_failed"] == 0'
    check $? "--mode $mode, socket, with reloads and kills"
    [ $st = 0 ] || cat "$dir/out"
done

# RSA keys and TLS 1.2 in shared mode (workers verifying the peer used to build the CA key's
# Montgomery context privately inside the shared key)
timeout 120 "$tool" --workers 3 --handshakes 600 --key rsa --tls 1.2 --json "$dir/rsa.json" \
    >"$dir/out" 2>&1
st=$?
[ $st = 0 ] && json "$dir/rsa.json" 'd["handshakes_ok"] == 600 and clean'
check $? "shared, RSA-2048, TLS 1.2, 3 workers: 600 verified handshakes"
[ $st = 0 ] || cat "$dir/out"

# the user's own certificate files (made with the openssl command)
if command -v openssl >/dev/null; then
    . "${top_srcdir:-.}/fork_tests/ft_pki.sh" # mkpki
    mkpki ca test-ca && mkpki srv localhost ca && mkpki cli test-client ca
    timeout 120 "$tool" --workers 2 --handshakes 200 --cert "$dir/srv.pem" --key-file "$dir/srv.key" \
        --ca "$dir/ca.pem" --client-cert "$dir/cli.pem" --client-key "$dir/cli.key" \
        --json "$dir/files.json" >"$dir/out" 2>&1
    st=$?
    [ $st = 0 ] && json "$dir/files.json" 'd["handshakes_ok"] == 200'
    check $? "--cert/--key-file/--ca/--client-cert/--client-key with files made by openssl"
    [ $st = 0 ] || cat "$dir/out"
else
    echo "skipped: the openssl command is not installed (certificate files case)"
fi

# a client certificate from another CA: every handshake fails, the report names the verify error
for tr in bio socket; do
    timeout 120 "$tool" --workers 2 --handshakes 50 --wrong-client-ca --transport $tr \
        --json "$dir/wrong.json" >"$dir/out" 2>&1
    st=$?
    [ $st = 1 ] && grep -q "verdict     FAIL: 50 handshakes failed; first failure: .*certificate verify failed.*unable to get local issuer certificate" "$dir/out" &&
        json "$dir/wrong.json" 'd["handshakes_failed"] == 50 and d["verdict"] == "FAIL" and "unable to get local issuer certificate" in d["first_failure"]'
    check $? "--wrong-client-ca ($tr): exit 1, the report names OpenSSL's verify error"
    [ $st = 1 ] || cat "$dir/out"
done

# the plot: an SVG with gnuplot, one clear line without it
timeout 120 "$tool" --workers 2 --seconds 3 --plot "$dir/p.svg" >"$dir/out" 2>"$dir/err"
st=$?
if command -v gnuplot >/dev/null; then
    [ $st = 0 ] && grep -q "<svg" "$dir/p.svg" 2>/dev/null
    check $? "--plot writes an SVG"
else
    [ $st = 0 ] && grep -q "gnuplot is not installed" "$dir/err" && [ ! -e "$dir/p.svg" ]
    check $? "--plot without gnuplot: one clear line, the run still succeeds"
fi

# a run whose workers hang (no process-shared locks: a worker waits for a lock a sibling
# released) still ends: the master's watchdog kills what is left 15 s after the stop
start=$(date +%s)
timeout 120 "$tool" --workers 4 --seconds 5 --options no-shared-locks >"$dir/out" 2>&1
st=$?
took=$(( $(date +%s) - start ))
{ [ $st = 0 ] || { [ $st = 1 ] && grep -q "verdict     FAIL: watchdog" "$dir/out"; }; } && [ $took -le 40 ]
check $? "hanging workers (no-shared-locks): the run still ends in ${took} s ($(grep -o 'verdict.*' "$dir/out" | cut -c1-60))"

# the master killed outright (SIGKILL): its workers and clients die with it (no orphan)
"$tool" --workers 2 --seconds 60 --transport socket >"$dir/out" 2>&1 &
master=$!
sleep 1.5
kids=$(ps -o pid= --ppid $master | tr -d ' ')
kill -KILL $master
wait $master 2>/dev/null
alive() { # the pids given that still run (a zombie waiting for init to reap it does not)
    for k in "$@"; do
        case $(ps -o stat= -p "$k" 2>/dev/null) in ""|Z*) ;; *) printf ' %s' "$k" ;; esac
    done
}
for _ in 1 2 3 4 5 6 7 8 9 10; do
    left=$(alive $kids)
    [ -z "$left" ] && break
    sleep 0.3
done
[ -n "$kids" ] && [ -z "$left" ]
check $? "master SIGKILLed: its $(echo $kids | wc -w) children are gone${left:+ (left:$left)}"
for k in $left; do kill -KILL "$k" 2>/dev/null; done

# SIGTERM to the master: the workers finish their handshake, the report says so, status 1
"$tool" --workers 2 --seconds 60 >"$dir/out" 2>&1 &
master=$!
sleep 1.5
kids=$(ps -o pid= --ppid $master | tr -d ' ')
kill -TERM $master
wait $master
st=$?
left=$(alive $kids)
[ $st = 1 ] && grep -q "verdict     FAIL: interrupted by signal 15" "$dir/out" && [ -z "$left" ]
check $? "master SIGTERMed: the run ends with a report (status $st), no child left"

# the user's files are checked before anything runs: status 2 and one line
if [ -e "$dir/srv.pem" ]; then
    badfile() { # description, then the arguments
        local what=$1
        shift
        timeout 20 "$tool" --handshakes 10 "$@" >"$dir/out" 2>"$dir/err"
        st=$?
        [ $st = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ] && [ ! -s "$dir/out" ]
        check $? "$what: status $st and one line: $(head -c 200 "$dir/err")"
    }
    badfile "a key that does not match the certificate" --cert "$dir/srv.pem" \
        --key-file "$dir/cli.key" --ca "$dir/ca.pem"
    openssl x509 -req -in "$dir/srv.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
        -out "$dir/srvonly.pem" -extfile <(printf 'extendedKeyUsage=serverAuth\n') 2>/dev/null
    badfile "a serverAuth-only certificate reused as the client's" --cert "$dir/srvonly.pem" \
        --key-file "$dir/srv.key" --ca "$dir/ca.pem"
    badfile "a directory as --ca" --cert "$dir/srv.pem" --key-file "$dir/srv.key" --ca "$dir"
fi

# bad command lines: one line on stderr, status 2, nothing run
for args in "--bogus" "--workers -1" "--workers 0" "--handshakes abc" "--seconds -5" \
    "--mode fast" "--transport udp" "--tls 1.1" "--verify maybe" "--key dsa" \
    "--cert /nonexistent/x.pem --key-file /nonexistent/x.key --ca /nonexistent/ca.pem" \
    "--handshakes 10 --seconds 2" "--options frobnicate" "--workers" "extra" \
    "--json /nonexistent/r.json" "--kill-every 1x" "--seed -3"; do
    # shellcheck disable=SC2086
    timeout 20 "$tool" $args >"$dir/out" 2>"$dir/err"
    st=$?
    [ $st = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ] && [ ! -s "$dir/out" ]
    check $? "bad usage '$args': status 2 and one line: $(cat "$dir/err")"
done
"$tool" --help | grep -q -- "--kill-every"
check $? "--help describes the options"

# the man page passes mandoc's lint where mandoc is installed (groff's check is in ft_docs.sh)
if command -v mandoc >/dev/null; then
    mandoc -Tlint "${top_srcdir:-.}/man/ossl-mem-stress.1" >"$dir/lint" 2>&1
    check $? "mandoc -Tlint ossl-mem-stress.1: $(head -c 200 "$dir/lint")"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
