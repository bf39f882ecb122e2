#!/bin/bash
# ft_stress.sh - ossl-mem-stress itself: short bounded runs in every mode and transport with their
# JSON checked, a run with kills and reloads, kills at random instants (dozens in a few seconds, BIO
# and socket), kills at safe points, kills without robust locks (may hang: still bounded), a stalled
# worker, RSA with TLS 1.2, the user's own certificate files, a client of another CA (must fail and
# name the verify error, with kills too), the timeline and plot files, and bad command lines (one
# line, status 2).
set -u
top_builddir=${top_builddir:-.}
tool="$top_builddir/stress/ossl-mem-stress"
[ -x "$tool" ] || { echo "FAIL: $tool not built"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed; tools/setup.sh installs it"; exit 77; }
dir=$(mktemp -d /tmp/ft_stress.XXXXXX)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
check() { if [ "$1" = 0 ]; then echo "ok: $2"; pass=$((pass + 1)); else echo "FAIL: $2"; fail=$((fail + 1)); fi; }
# wait_master SECONDS: waits for $master and sets st to its status; a master still running after
# SECONDS is SIGKILLed (st 137), so a hang fails its check instead of the whole test
wait_master() {
    (sleep "$1" && kill -KILL $master 2>/dev/null) &
    local guard=$!
    wait $master
    st=$?
    pkill -P $guard sleep 2>/dev/null # its sleep fails, so the guard kills nothing and ends
    wait $guard 2>/dev/null
}

# json FILE PYTHON-CONDITION: the file parses, has the report's keys, and the condition holds
json() {
    python3 -m json.tool "$1" >/dev/null 2>&1 && python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
keys = ["config", "handshakes_ok", "handshakes_failed", "seconds", "serve_seconds", "rate_total",
        "rate_per_worker", "reloads", "rebuilds", "kills", "kills_cutting", "clients", "memory",
        "safety", "check", "workers", "first_failure", "verdict"]
safety = ["double_frees", "invalid_frees", "inherited_frees", "overflows", "uaf_writes",
          "corrupt_headers", "hooks_replaced", "shared_failed", "lock_repairs", "locks_recovered",
          "check_problems"]
# lock repairs and recovered locks are allowed (any count) only when workers are killed anywhere
lock_events = ["lock_repairs", "locks_recovered"]
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
anywhere = d["config"]["kill_every"] > 0 and d["config"]["kill_at"] == "anywhere"
if s["lock_events_expected"] != anywhere:
    print("lock_events_expected is", s["lock_events_expected"])
    sys.exit(1)
clean = all((s[k] is None) if na else (s[k] == 0) for k in safety
            if (k != "inherited_frees" or d["config"]["mode"] != "shared")
            and (k not in lock_events or not anywhere))
clean = clean and all((s[k] is None) if na else (s[k] >= 0) for k in lock_events)
# socket transport: the clients' own outcomes, none failed, cuts within the kills that found a
# connection open; BIO transport has no client processes
cl = d["clients"]
if d["config"]["transport"] == "socket":
    clean = clean and cl["failed"] == 0 and cl["first_failure"] == "" and cl["ok"] > 0 \
        and 0 <= cl["cut"] <= d["kills_cutting"] <= d["kills"]
else:
    clean = clean and cl is None and d["kills_cutting"] == 0
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

# kills (at random instants, the default) and reloads while serving
timeout 120 "$tool" --workers 3 --seconds 6 --reload-every 1 --kill-every 2 --seed 7 \
    --json "$dir/kr.json" --timeline "$dir/kr.csv" >"$dir/out" 2>"$dir/err"
st=$?
[ $st = 0 ] && json "$dir/kr.json" \
    'd["kills"] >= 2 and d["reloads"] >= 4 and d["handshakes_ok"] > 100 and d["handshakes_failed"] == 0 and clean and d["check"]["workers_unchecked"] == d["kills"] and sum(w["forked"] for w in d["workers"]) == 3 + d["kills"] and d["memory"]["contexts_left"] == 0'
check $? "shared, 6 s with a reload every second and a kill every 2 s (anywhere): all verified, nothing unexpected, kills and reloads counted"
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

# kills at random instants: a kill every 0.05 s for 5 s (about a hundred, mostly mid-handshake,
# inside OpenSSL), each followed by a replacement; every handshake that finished verified, the
# killed workers' unfinished ones do not count, lock repairs and recovered locks are reported and
# allowed (how many there are depends on where the kills land: most land outside any lock). In
# socket mode the clients see each cut connection: at most one per kill that found one open.
for tr in bio socket; do
    timeout 120 "$tool" --workers 3 --seconds 5 --kill-every 0.05 --reload-every 2 --transport $tr \
        --seed 11 --json "$dir/ka-$tr.json" >"$dir/out" 2>"$dir/err"
    st=$?
    [ $st = 0 ] && json "$dir/ka-$tr.json" \
        'd["config"]["kill_at"] == "anywhere" and d["config"]["kill_every"] == 0.05 and d["kills"] >= 20 and d["handshakes_ok"] > 0 and d["handshakes_failed"] == 0 and clean and d["verdict"] == "PASS" and d["check"]["workers_unchecked"] == d["kills"] and sum(w["forked"] for w in d["workers"]) == 3 + d["kills"] and d["memory"]["contexts_left"] == 0 and d["reloads"] >= d["rebuilds"]' &&
        grep -q "^  events      .* [0-9]* workers killed at random instants and replaced$" "$dir/out" &&
        grep -Eq "^              allowed: [0-9]+ arena lock repairs, [0-9]+ OpenSSL locks recovered" "$dir/out" &&
        { [ $tr = bio ] || grep -Eq "^  clients     [0-9]+ exchanges verified, 0 other failures, [0-9]+ cut by a killed worker" "$dir/out"; }
    check $? "$tr: a kill every 0.05 s at random instants: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d["clients"]; print("%d kills, %d handshakes verified, %d lock repairs, %d locks recovered, %d rebuilds%s" % (d["kills"], d["handshakes_ok"], d["safety"]["lock_repairs"], d["safety"]["locks_recovered"], d["rebuilds"], "" if c is None else ", clients %d ok, %d cut (%d kills found a connection)" % (c["ok"], c["cut"], d["kills_cutting"])))' "$dir/ka-$tr.json" 2>/dev/null)"
    [ $st = 0 ] || cat "$dir/out" "$dir/err"
done

# kills at safe points (--kill-at safe): parked first, so nobody dies in a lock (a repair or a
# recovery would be unexpected) and no client connection is cut
timeout 120 "$tool" --workers 2 --seconds 4 --kill-every 0.5 --kill-at safe --transport socket \
    --json "$dir/ks.json" >"$dir/out" 2>"$dir/err"
st=$?
[ $st = 0 ] && json "$dir/ks.json" \
    'd["config"]["kill_at"] == "safe" and d["kills"] >= 2 and d["handshakes_failed"] == 0 and clean and d["safety"]["lock_repairs"] == 0 and d["safety"]["locks_recovered"] == 0 and d["clients"]["cut"] == 0 and d["kills_cutting"] == 0 and d["check"]["workers_unchecked"] == d["kills"]' &&
    grep -q "workers killed at safe points and replaced$" "$dir/out"
check $? "--kill-at safe, socket: kills between handshakes, no lock event, no cut connection"
[ $st = 0 ] || cat "$dir/out" "$dir/err"

# kills anywhere without robust locks (the old behaviour): a worker killed holding a lock of the
# shared context blocks every sibling that needs it. Whether a kill lands in a lock is chance (few
# do), so the run either passes (no recovery: nobody recovers) or is stopped by a watchdog; either
# way it ends within its bound and nothing is counted as recovered
start=$(date +%s)
timeout 120 "$tool" --workers 4 --seconds 5 --kill-every 0.05 --options no-robust-locks \
    --json "$dir/nr.json" >"$dir/out" 2>"$dir/err"
st=$?
took=$(( $(date +%s) - start ))
{ { [ $st = 0 ] && grep -q "^  verdict     PASS$" "$dir/out"; } ||
    { [ $st = 1 ] && grep -q "^  verdict     FAIL: watchdog" "$dir/out"; }; } &&
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["safety"]["locks_recovered"] == 0 and d["kills"] >= 1 and d["config"]["options"] == "no-robust-locks" else 1)' "$dir/nr.json" &&
    [ $took -le 45 ]
check $? "no-robust-locks with kills anywhere: ends in ${took} s with status $st, no lock recovered ($(grep -o 'verdict.*' "$dir/out" | cut -c1-80))"
[ $st = 0 ] || [ $st = 1 ] || cat "$dir/out" "$dir/err"

# a worker that stops making progress while its siblings go on fails the run: one of two workers
# is stopped (SIGSTOP); the master kills it after 20 s without progress and the run ends
"$tool" --workers 2 --seconds 60 --json "$dir/stall.json" >"$dir/out" 2>&1 &
master=$!
sleep 1.5
victim=$(ps -o pid= --ppid $master | head -1 | tr -d ' ')
[ -n "$victim" ] && kill -STOP "$victim"
wait_master 90
[ -n "$victim" ] && [ $st = 1 ] &&
    grep -q "^  verdict     FAIL: watchdog: worker $victim (slot [01]) made no progress for 20 s (stalled)" "$dir/out" &&
    json "$dir/stall.json" 'd["handshakes_failed"] == 0 and d["handshakes_ok"] > 0 and d["verdict"] == "FAIL"'
check $? "a stalled worker (SIGSTOP) fails the run (status $st): $(grep -o 'verdict.*' "$dir/out" | cut -c1-100)"

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

# a failed verification still fails a run with kills anywhere: the killed workers' unfinished
# handshakes are not counted, every finished one failed
timeout 120 "$tool" --workers 2 --seconds 2 --kill-every 0.1 --wrong-client-ca --transport socket \
    --json "$dir/wrongk.json" >"$dir/out" 2>&1
st=$?
[ $st = 1 ] && grep -q "verdict     FAIL: [0-9]* handshakes failed; first failure: .*certificate verify failed" "$dir/out" &&
    json "$dir/wrongk.json" 'd["handshakes_failed"] > 0 and d["handshakes_ok"] == 0 and d["kills"] >= 1 and d["verdict"] == "FAIL" and d["clients"]["failed"] > 0'
check $? "--wrong-client-ca with kills anywhere (socket): exit 1, the verify error named"
[ $st = 1 ] || cat "$dir/out"

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
wait_master 20
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
    "--json /nonexistent/r.json" "--kill-every 1x" "--seed -3" "--kill-every 0" \
    "--kill-every 0.001" "--kill-every 1e2" "--kill-every 1 --kill-at sometimes" \
    "--kill-every 1 --kill-at" "--kill-at safe"; do
    # shellcheck disable=SC2086
    timeout 20 "$tool" $args >"$dir/out" 2>"$dir/err"
    st=$?
    [ $st = 2 ] && [ "$(wc -l <"$dir/err")" = 1 ] && [ ! -s "$dir/out" ]
    check $? "bad usage '$args': status 2 and one line: $(cat "$dir/err")"
done
"$tool" --help | grep -q -- "--kill-every"
check $? "--help describes the options"
"$tool" --help | grep -q -- "--kill-at anywhere|safe"
check $? "--help describes --kill-at"

# the man page passes mandoc's lint where mandoc is installed (groff's check is in ft_docs.sh)
if command -v mandoc >/dev/null; then
    mandoc -Tlint "${top_srcdir:-.}/man/ossl-mem-stress.1" >"$dir/lint" 2>&1
    check $? "mandoc -Tlint ossl-mem-stress.1: $(head -c 200 "$dir/lint")"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
