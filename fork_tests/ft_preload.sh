#!/bin/bash
# ft_preload.sh - libossl_mem_preload.so in unmodified programs: openssl s_server and s_client, mutual verification.
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
command -v openssl >/dev/null || { echo "SKIP: openssl (the command) is not installed; tools/setup.sh installs it"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed; tools/setup.sh installs it"; exit 77; }

dir=$(mktemp -d /tmp/ft_preload.XXXXXX)
srv=""
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
pass=0 fail=0
check() { if [ "$1" = 0 ]; then echo "ok: $2"; pass=$((pass + 1)); else echo "FAIL: $2"; fail=$((fail + 1)); fi; }

# a CA, a server and a client certificate, and a client of another CA (P-256)
. "${top_srcdir:-.}/fork_tests/ft_pki.sh" # mkpki
mkpki ca test-ca && mkpki server localhost ca && mkpki client test-client ca &&
    mkpki rogue-ca rogue-ca && mkpki rogue test-rogue rogue-ca
check $? "test PKI made with the openssl command"

n=20
port=""
for try in 1 2 3; do
    p=$((20000 + RANDOM % 30000))
    timeout 120 env OSSL_MEM_OPTIONS="poison,fill,canary,check=20000,report=$dir/report.%p.json" \
        LD_PRELOAD="$preload" \
        openssl s_server -accept "127.0.0.1:$p" -cert "$dir/server.pem" -key "$dir/server.key" \
        -CAfile "$dir/ca.pem" -Verify 2 -verify_return_error -www -naccept $((n + 1)) \
        >"$dir/server.out" 2>"$dir/server.err" </dev/null &
    srv=$!
    # up to 30 s on a loaded machine; a server that exits at once (port taken) ends the wait
    for i in $(seq 300); do
        grep -q ACCEPT "$dir/server.out" 2>/dev/null && break
        kill -0 "$srv" 2>/dev/null || break
        sleep 0.1
    done
    if grep -q ACCEPT "$dir/server.out"; then port=$p; break; fi
    kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null; srv=""
    rm -f "$dir"/report.*.json # the failed try's exit report: only the serving one is counted
done
[ -n "$port" ]
check $? "openssl s_server runs under the preload on port ${port:-?}"
[ -n "$port" ] || { echo "$pass passed, $fail failed"; exit 1; }

client() { # cert key -> reply on stdout
    printf 'GET / HTTP/1.0\r\n\r\n' | timeout 20 env OSSL_MEM_OPTIONS="report=$dir/creport.%p.json" \
        LD_PRELOAD="$preload" openssl s_client -connect "127.0.0.1:$port" -cert "$1" \
        -key "$2" -CAfile "$dir/ca.pem" -verify_return_error -ign_eof -quiet 2>>"$dir/client.err"
}
ok=0
for i in $(seq $n); do
    client "$dir/client.pem" "$dir/client.key" | grep -q "HTTP/1.0 200 ok" && ok=$((ok + 1))
done
[ "$ok" = "$n" ]
check $? "$ok of $n s_client connections with mutual verification got the server's page"
client "$dir/rogue.pem" "$dir/rogue.key" | grep -q "HTTP/1.0 200 ok"
[ $? != 0 ]
check $? "a client certificate from another CA is refused"
for i in $(seq 100); do kill -0 "$srv" 2>/dev/null || break; sleep 0.1; done
wait "$srv"
check $? "s_server exited by itself after its $((n + 1)) connections"
srv=""

# every process wrote its report at exit: ossl_mem served OpenSSL and counted no fault
python3 - "$dir" <<'EOF'
import glob, json, sys
d = sys.argv[1]
bad = 0
files = glob.glob(d + "/report.*.json") + glob.glob(d + "/creport.*.json")
servers = glob.glob(d + "/report.*.json")
for f in files:
    t = json.load(open(f))["totals"]
    faults = {k: t[k] for k in ("double_frees", "invalid_frees", "overflows", "uaf_writes",
                                "corrupt_headers", "hooks_replaced") if t[k]}
    if faults or t["allocs"] < 1000:
        print("FAIL: %s: %s, %d allocations" % (f, faults, t["allocs"]))
        bad += 1
print("ok: %d reports (%d from s_server), every one with thousands of ossl_mem allocations "
      "and no fault" % (len(files), len(servers)) if not bad and len(servers) == 1 and
      len(files) == 22 else "FAIL: %d reports, %d from s_server" % (len(files), len(servers)))
sys.exit(1 if bad or len(servers) != 1 or len(files) != 22 else 0)
EOF
check $? "exit reports of the server and the clients"
! grep -q "ossl_mem" "$dir/server.err" "$dir/client.err"
check $? "ossl_mem wrote nothing on stderr (no fault, no warning)"

# a program whose OpenSSL allocated before the preload's constructor: one line, program unharmed
cc=${CC:-cc}
if command -v "$cc" >/dev/null; then
    printf '#include <openssl/crypto.h>\n__attribute__((constructor)) static void early(void)\n{ OPENSSL_free(OPENSSL_malloc(10)); }\n' >"$dir/early.c"
    "$cc" -shared -fPIC -o "$dir/libearly.so" "$dir/early.c" -lcrypto 2>"$dir/cc.err"
    # the dynamic linker runs the constructors of LD_PRELOAD objects last one first
    out=$(LD_PRELOAD="$preload $dir/libearly.so" openssl version 2>"$dir/late.err")
    [ "$(grep -c . "$dir/late.err")" = 1 ] && grep -q "already initialised" "$dir/late.err" &&
        grep -q "leaving it alone" "$dir/late.err" && echo "$out" | grep -q "^OpenSSL 3"
    check $? "OpenSSL used before the preload: one line says so, the program runs normally"
    sed 's/^/    /' "$dir/late.err"
else
    echo "skipped: no C compiler ($cc) for the early-allocation case"
fi
[ "$fail" = 0 ] || { echo "--- server stderr:"; cat "$dir/server.err"; }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
