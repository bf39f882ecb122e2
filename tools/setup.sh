#!/bin/bash
# setup.sh - installs, with apt-get, whatever ossl_mem's build, tests and demo need and this machine lacks.
# Usage: tools/setup.sh [--bench]   (--bench adds jemalloc and mimalloc for the benchmarks)
set -euo pipefail
pkgs=(gcc make autoconf automake libtool pkg-config libssl-dev openssl curl libcunit1-dev python3 binutils)
if [ "${1:-}" = "--bench" ]; then
    pkgs+=(libjemalloc-dev libmimalloc-dev)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
