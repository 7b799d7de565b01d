#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages that ember needs and that are
# missing. `install-deps.sh build` covers building and running ember (make,
# make demo); `install-deps.sh test` adds what the test suite uses.
set -euo pipefail

build_pkgs=(gcc make pkg-config libc6-dev liburing-dev libcjson-dev libslirp-dev libseccomp-dev
            nettle-dev)
test_pkgs=(clang libclang-rt-14-dev check qemu-system-x86 clang-format
           busybox-static cpio e2fsprogs xz-utils zstd iproute2 socat python3 curl)

want=("${build_pkgs[@]}")
if [ "${1:-build}" = test ]; then
    want+=("${test_pkgs[@]}")
fi

missing=()
for p in "${want[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ember: installing missing packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then
        sudo="sudo"
    else
        echo "ember: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# A stale package index is the usual reason an install fails on a fresh machine.
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
