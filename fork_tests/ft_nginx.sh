#!/bin/bash
# ft_nginx.sh - Debian's nginx (master + 2 workers, ssl_verify_client on) under libossl_mem_preload.so, curl as client.
set -u
top_builddir=${top_builddir:-.}
lib="$top_builddir/ossl_mem/.libs/libossl_mem_preload.so"
[ -f "$lib" ] || { echo "FAIL: $lib not built"; exit 1; }
lib=$(cd "$(dirname "$lib")" && pwd)/$(basename "$lib")
# a sanitizer build (--enable-sanitizers) needs the ASan runtime first in LD_PRELOAD, and the
# programs' own leaks (not ours: ossl_mem's pools are not malloc's) must not fail them
preload="$lib"
asan=$(ldd "$lib" 2>/dev/null | awk '/libasan/ {print $3}')
if [ -n "$asan" ]; then
    preload="$asan $lib"
    export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
fi
nginx=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$nginx" ] || { echo "SKIP: nginx is not installed (tools/setup.sh installs Debian's nginx-light)"; exit 77; }
for c in curl openssl python3; do
    command -v $c >/dev/null || { echo "SKIP: $c is not installed; tools/setup.sh installs it"; exit 77; }
done

dir=$(mktemp -d /tmp/ft_nginx.XXXXXX)
chmod 755 "$dir"
cleanup() {
    [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null
    sleep 0.2
    rm -rf "$dir"
}
trap cleanup EXIT
pass=0 fail=0
check() { if [ "$1" = 0 ]; then echo "ok: $2"; pass=$((pass + 1)); else echo "FAIL: $2"; fail=$((fail + 1)); fi; }

. "${top_srcdir:-.}/fork_tests/ft_pki.sh" # mkpki
mkpki ca test-ca && mkpki server localhost ca && mkpki client test-client ca
check $? "test PKI made with the openssl command"
chmod 644 "$dir"/*.key

run_nginx() { # port
    local user=""
    [ "$(id -u)" = 0 ] && user="user root;"
    cat >"$dir/nginx.conf" <<EOF
$user
daemon on;
master_process on;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$1 ssl;
        ssl_certificate $dir/server.pem;
        ssl_certificate_key $dir/server.key;
        ssl_client_certificate $dir/ca.pem;
        ssl_verify_client on;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { return 200 "hello \$ssl_client_s_dn \$ssl_client_verify\n"; }
    }
}
EOF
    # the debugging options too: a false alarm in a real server would show in the reports
    timeout 20 env OSSL_MEM_OPTIONS="poison,fill,canary,report=$dir/report.%p.json" LD_PRELOAD="$preload" \
        "$nginx" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>"$dir/start.err"
}
port=""
for try in 1 2 3; do
    p=$((20000 + RANDOM % 30000))
    if run_nginx $p; then
        for i in $(seq 50); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
        [ -s "$dir/nginx.pid" ] && { port=$p; break; }
    fi
done
[ -n "$port" ]
check $? "nginx (master + 2 workers) started under the preload on port ${port:-?}"
[ -n "$port" ] || { cat "$dir/start.err" "$dir/error.log" 2>/dev/null; echo "$pass passed, $fail failed"; exit 1; }
master=$(cat "$dir/nginx.pid")
sleep 0.3
nworkers=$(grep -l "^PPid:[[:space:]]*$master\$" /proc/[0-9]*/status 2>/dev/null | wc -l)
[ "$nworkers" = 2 ]
check $? "2 worker processes ($nworkers)"

n=300
ok=0
for i in $(seq $((n / 10))); do
    out=$(timeout 30 curl -sS --cacert "$dir/ca.pem" --cert "$dir/client.pem" --key "$dir/client.key" \
        --resolve "localhost:$port:127.0.0.1" $(for k in $(seq 10); do echo "https://localhost:$port/r$k"; done) 2>>"$dir/curl.err")
    ok=$((ok + $(grep -c "hello CN=test-client SUCCESS" <<<"$out")))
done
[ "$ok" = "$n" ]
check $? "$ok of $n curl requests with a client certificate answered by nginx"
code=$(timeout 30 curl -s -o /dev/null -w '%{http_code}' --cacert "$dir/ca.pem" \
    --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/")
[ "$code" = 400 ]
check $? "a request without a client certificate is refused (HTTP $code)"

kill -QUIT "$master"
for i in $(seq 100); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$master" 2>/dev/null
check $? "nginx shut down gracefully on SIGQUIT"
rm -f "$dir/nginx.pid"

python3 - "$dir" <<'EOF'
import glob, json, sys
files = glob.glob(sys.argv[1] + "/report.*.json")
bad = 0
served = 0
for f in files:
    t = json.load(open(f))["totals"]
    faults = {k: t[k] for k in ("double_frees", "invalid_frees", "overflows", "uaf_writes",
                                "corrupt_headers", "hooks_replaced") if t[k]}
    if faults:
        print("FAIL: %s: %s" % (f, faults))
        bad += 1
    print("  %s: %d allocations, %d frees" % (f.rsplit("/", 1)[1], t["allocs"], t["frees"]))
    served += t["allocs"]
# the workers' counts include what they inherited; 30 connections take well over 100,000
good = not bad and len(files) >= 3 and served > 100000
print(("ok" if good else "FAIL") + ": %d exit reports (daemon parent, master, workers), %d "
      "allocations in all, no fault" % (len(files), served))
sys.exit(0 if good else 1)
EOF
check $? "the workers' and the master's ossl_mem reports"
grep -E "\[(alert|crit|emerg|error)\]|ossl_mem" "$dir/error.log" >"$dir/bad.log"
[ ! -s "$dir/bad.log" ]
check $? "nginx's error log has no error and no ossl_mem line"
[ "$fail" = 0 ] || { echo "--- error.log:"; tail -20 "$dir/error.log"; cat "$dir/curl.err" 2>/dev/null | head -5; }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
