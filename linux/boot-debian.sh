#!/usr/bin/env bash
# Boots Debian's stock cloud kernel with its virtio modules under ember and
# gives you its shell on the terminal (Ctrl-A x quits). Needs a host with
# hardware virtualization: on a nested host without it the stock kernel
# stops early (see tests/linux/debian-smoke.sh for what is checked there).
#
#   linux/boot-debian.sh [DISK_IMAGE] [ember options...]
#
# With DISK_IMAGE the guest sees it as /dev/vda (virtio-blk over PCI).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ember=${EMBER:-$root/build/ember}
[ -x "$ember" ] || make -C "$root" -s all
mapfile -t files < <("$root/linux/debian-kernel.sh")
args=()
if [ $# -gt 0 ] && [ -f "$1" ]; then
    args+=(--drive "path=$1")
    shift
fi
# The bzImage boots through its own decompressor; the PVH vmlinux would do too.
exec "$ember" run --kernel "${files[0]}" --initrd "${files[2]}" --memory 512 --cpus 2 \
    --cmdline "console=ttyS0 reboot=k panic=1" "${args[@]}" "$@"
