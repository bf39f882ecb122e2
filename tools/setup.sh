#!/bin/bash
# setup.sh - installs, with apt-get, whatever ossl_mem's build, tests and demo need and this machine lacks.
# Usage: tools/setup.sh [--bench]   (--bench adds jemalloc and mimalloc for the benchmarks)
set -euo pipefail
pkgs=(gcc make autoconf automake libtool pkg-config libssl-dev openssl curl libcunit1-dev python3 binutils
      groff-base clang libclang-rt-14-dev llvm valgrind gnuplot-nox)
if [ "${1:-}" = "--bench" ]; then
    pkgs+=(libjemalloc-dev libmimalloc-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nginx for the real-program test: its package would start a server on port 80 at install
# unless the service start is refused (policy-rc.d exit 101), which we do only if no policy exists
want_nginx=0
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || want_nginx=1
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
if [ ${#missing[@]} -gt 0 ] || [ $want_nginx = 1 ]; then
    echo "setup: installing ${missing[*]}$([ $want_nginx = 1 ] && echo " nginx-light")"
    $SUDO apt-get update -qq
    [ ${#missing[@]} -eq 0 ] ||
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ $want_nginx = 1 ]; then
        policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
            $SUDO chmod +x /usr/sbin/policy-rc.d
            policy=1
        fi
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null ||
            echo "setup: nginx-light could not be installed; its test will be skipped"
        [ $policy = 0 ] || $SUDO rm -f /usr/sbin/policy-rc.d
    fi
fi
