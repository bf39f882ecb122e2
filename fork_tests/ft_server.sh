#!/bin/bash
# ft_server.sh - drives examples/ossl-mem-server with openssl s_client and curl: mutual TLS, reloads, reports, worker loss, clean exit.
set -u
server="${SERVER:-${top_builddir:-.}/examples/ossl-mem-server}"
pass=0 fail=0
[ -x "$server" ] || { echo "FAIL: $server not built"; echo "0 passed, 1 failed"; exit 1; }
for tool in openssl curl timeout; do
    command -v "$tool" >/dev/null ||
        { echo "SKIP: $tool is not installed (tools/setup.sh installs it)"; exit 77; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ft_server.XXXXXX") || exit 1
pki="$tmp/pki"
mkdir "$pki"
pid="" port="" log=""

ok() { echo "ok: $*"; pass=$((pass + 1)); }
bad() { echo "FAIL: $*"; fail=$((fail + 1)); }
abort() { bad "$*"; exit 1; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
check_not() { local what=$1; shift; if "$@"; then bad "$what"; else ok "$what"; fi; }

# Kills what is left of the server: SIGTERM, then after 5 s SIGKILL to it and to its workers.
stop_server() {
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    for w in $(sed -n 's/^worker \([0-9]*\) started.*/\1/p' "$log"); do
        grep -qs ossl-mem-server "/proc/$w/cmdline" && kill -KILL "$w" 2>/dev/null
    done
    pid=""
}

finish() {
    stop_server
    if [ "$fail" -ne 0 ]; then
        for f in "$tmp"/server*.log; do
            [ -f "$f" ] || continue
            echo "--- $f, without the report's detail lines (last 40) ---"
            grep -v '^  ' "$f" | tail -n 40
        done
        echo "--- client errors (last 10 lines) ---"; tail -n 10 "$tmp/client.err" 2>/dev/null
    fi
    if [ -n "${FT_KEEP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
    echo "$pass passed, $fail failed"
}
trap finish EXIT
trap 'abort "interrupted"' INT TERM HUP

# Waits up to $2 s until the server log has ${3:-1} lines matching the extended regex $1.
wait_log() {
    local n=$(($2 * 10))
    while [ "$n" -gt 0 ]; do
        [ "$(grep -cE "$1" "$log")" -ge "${3:-1}" ] && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
        n=$((n - 1))
    done
    return 1
}

# Starts the server (2 workers, port 0) with the extra arguments; waits up to 20 s for its port.
start_server() {
    stop_server
    log="$tmp/server$1.log"
    shift
    rm -f "$tmp/port"
    "$server" --workers 2 --port 0 --port-file "$tmp/port" "$@" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 200); do
        [ -s "$tmp/port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    port=$(cat "$tmp/port" 2>/dev/null)
    [ -n "$port" ] || abort "server did not start: $(grep -m1 -i 'error\|ossl-mem-server:' "$log")"
    ok "server listening on 127.0.0.1:$port ($*)"
}

# SIGTERM, wait up to 30 s; sets $status (124 if it did not exit: then it is killed).
stop_and_wait() {
    kill -TERM "$pid"
    status=124
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then stop_server; else wait "$pid"; status=$?; pid=""; fi
}

# One request with openssl s_client; prints the reply. Arguments: client credentials, if any.
sclient() {
    printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' |
        timeout 10 openssl s_client -connect "127.0.0.1:$port" -servername localhost \
            -verify_hostname localhost -CAfile "$pki/ca.pem" -verify_return_error -quiet "$@" \
            2>>"$tmp/client.err"
}
sclient_cert() { sclient -cert "$pki/client.pem" -key "$pki/client.key"; }

# One request with curl; prints the body. Arguments: client credentials, if any.
curl_get() {
    timeout 10 curl -sS --max-time 8 --resolve "localhost:$port:127.0.0.1" \
        --cacert "$pki/ca.pem" "$@" "https://localhost:$port/" 2>>"$tmp/client.err"
}

# Extracts "generation N" from a reply.
gen_of() { sed -n 's/.*generation \([0-9]*\).*/\1/p' <<<"$1" | head -n1; }

# Checks the end of a run: exit status 0, final figures and ossl_mem's report clean.
check_final() {
    stop_and_wait
    check "server exited with status 0 after SIGTERM (got $status)" [ "$status" -eq 0 ]
    local final
    final=$(grep '^final:' "$log")
    check "final line: double_frees 0, invalid_frees 0, check 0 ($final)" \
        grep -q 'double_frees 0, invalid_frees 0, check 0' <<<"$final"
    check "ossl_mem report: 0 double frees, 0 invalid frees" \
        grep -q ' 0 double frees, 0 invalid frees' "$log"
    check_not "no worker counted a double or invalid free" \
        grep -E '^worker .*(double|invalid)_frees [1-9]' "$log"
    check_not "no ossl_mem call failed" grep -E ': ossl_mem_[a-z_]+: ' "$log"
}

# --- 1. in-memory PKI written with --write-pki; workers recycled every 15 requests -----------
start_server 1 --write-pki "$pki" --max-requests 15
for f in ca.pem server.pem server.key client.pem client.key; do
    [ -s "$pki/$f" ] || abort "--write-pki did not write $f"
done

good=0
for i in $(seq 20); do
    r=$(sclient_cert)
    grep -q '^HTTP/1.0 200' <<<"$r" && grep -q 'client CN omt-client' <<<"$r" && good=$((good + 1))
done
check "openssl s_client: $good of 20 replies are 200 with the client CN" [ "$good" -eq 20 ]

good=0
for i in $(seq 20); do
    r=$(curl_get --cert "$pki/client.pem" --key "$pki/client.key") &&
        grep -q '^hello from worker [0-9]*, client CN omt-client, generation 1' <<<"$r" &&
        good=$((good + 1))
done
check "curl: $good of 20 bodies name the worker, the client CN and generation 1" [ "$good" -eq 20 ]
check "a worker was recycled after 15 requests and replaced" \
    wait_log '^worker [0-9]+ exited, replacing it' 5

r=$(sclient)
check_not "s_client without a certificate gets no reply" grep -q 200 <<<"$r"
check_not "curl without a certificate fails" curl_get
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=rogue \
    -keyout "$tmp/rogue.key" -out "$tmp/rogue.pem" 2>/dev/null || abort "openssl req failed"
r=$(sclient -cert "$tmp/rogue.pem" -key "$tmp/rogue.key")
check_not "s_client with a certificate from another CA gets no reply" grep -q 200 <<<"$r"

prev=1
for k in 1 2 3; do
    kill -HUP "$pid"
    want=$((1 + k))
    wait_log "^reload: generation $want\$" 10 || bad "no 'reload: generation $want' line"
    r=$(sclient_cert)
    g=$(gen_of "$r")
    check "after SIGHUP $k the reply comes from generation $want (got '${g}')" \
        [ "${g:-0}" -eq "$want" -a "${g:-0}" -gt "$prev" ]
    prev=${g:-$prev}
done
r=$(curl_get --cert "$pki/client.pem" --key "$pki/client.key")
check "curl after the reloads gets generation 4 ($(gen_of "$r"))" [ "$(gen_of "$r")" = 4 ]

# The workers adopt the newest context within a second and declare the old ones done; the master
# reclaims them: shared_contexts falls to 1 (asked again each second, for up to 10 s).
n=0 reclaimed=0
while [ "$n" -lt 10 ] && [ "$reclaimed" -eq 0 ]; do
    n=$((n + 1))
    kill -USR1 "$pid"
    wait_log '^report: ' 5 "$n" || break
    grep '^report: ' "$log" | tail -n1 | grep -q 'shared_contexts 1,' && reclaimed=1 || sleep 1
done
report=$(grep '^report: ' "$log" | tail -n1)
check "SIGUSR1 prints the report line ($report)" grep -q 'check 0$' <<<"$report"
check "every worker prints its stats line" wait_log '^worker [0-9]+ stats: generation' 5 2
check "retired contexts were reclaimed: shared_contexts 1" [ "$reclaimed" -eq 1 ]

victim=$(sed -n 's/^worker \([0-9]*\) stats:.*/\1/p' "$log" | tail -n1)
kill -KILL "$victim" 2>/dev/null
check "a killed worker is reaped and replaced" \
    wait_log "^worker $victim killed by signal 9, replacing it" 5
good=0
for i in $(seq 5); do
    sclient_cert | grep -q '^HTTP/1.0 200' && good=$((good + 1))
done
check "after losing a worker: $good of 5 replies are 200" [ "$good" -eq 5 ]
check_final

# --- 2. certificate, key and CA from files, read again at each reload -----------------------
start_server 2 --cert "$pki/server.pem" --key "$pki/server.key" --ca "$pki/ca.pem"
r=$(sclient_cert)
check "files: reply 200 from generation 1" [ "$(gen_of "$r")" = 1 ]
kill -HUP "$pid"
wait_log '^reload: generation 2$' 10 || bad "files: no 'reload: generation 2' line"
r=$(curl_get --cert "$pki/client.pem" --key "$pki/client.key")
check "files: after SIGHUP curl gets generation 2" [ "$(gen_of "$r")" = 2 ]
check_final

[ "$fail" -eq 0 ]
