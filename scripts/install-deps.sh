#!/usr/bin/env bash
# Installs, with apt-get, the Debian packages that ember needs and that are
# missing. `install-deps.sh build` covers building and running ember (make,
# make demo); `install-deps.sh test` adds what the test suite uses; `install-deps.sh go-sdk`
# what building firecracker-go-sdk takes (make go-sdk-test: Debian's Go and the libraries the
# SDK imports; the SDK's own source is not in Debian).
set -euo pipefail

build_pkgs=(gcc make pkg-config libc6-dev liburing-dev libcjson-dev libslirp-dev libseccomp-dev
            nettle-dev)
test_pkgs=(clang libclang-rt-14-dev check qemu-system-x86 clang-format
           busybox-static cpio e2fsprogs xz-utils zstd iproute2 socat python3 curl dpdk-dev)

go_sdk_pkgs=(golang-go golang-github-go-openapi-errors-dev golang-github-go-openapi-runtime-dev
             golang-github-go-openapi-strfmt-dev golang-github-go-openapi-swag-dev
             golang-github-go-openapi-validate-dev golang-github-containerd-fifo-dev
             golang-github-appc-cni-dev golang-github-containernetworking-plugins-dev
             golang-github-vishvananda-netlink-dev golang-github-google-uuid-dev
             golang-github-hashicorp-go-multierror-dev golang-github-sirupsen-logrus-dev
             golang-github-mdlayher-vsock-dev golang-golang-x-sys-dev git)

want=("${build_pkgs[@]}")
case "${1:-build}" in
test) want+=("${test_pkgs[@]}") ;;
go-sdk) want=("${go_sdk_pkgs[@]}") ;;
esac

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
