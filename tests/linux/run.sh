#!/bin/bash
# Run the real-Linux guest checks: build (or reuse) the kernel and the
# initramfs, then boot them under the VMM once per virtio transport.
#
# Usage: tests/linux/run.sh [--vmm qemu|ember] [--transport mmio|pci|both]
#                           [--checks smp,blk,...] [--net tap|user]
#                           [-- more options of ember_linux_test.py]
# Default: QEMU, both transports, every check. Needs root (apt-get on a
# fresh machine, a network namespace and a tap device for the net check).
# Prints TAP; the exit status is 0 when every run passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
vmm=qemu
transports=(mmio pci)
extra=()
while (($#)); do
    case $1 in
    --vmm) vmm=$2; shift 2 ;;
    --transport)
        [[ $2 == both ]] && transports=(mmio pci) || transports=("$2")
        shift 2
        ;;
    --checks | --net) extra+=("$1" "$2"); shift 2 ;;
    --) shift; extra+=("$@"); break ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

need=()
command -v python3 >/dev/null || need+=(python3)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v ip >/dev/null || need+=(iproute2)
[[ $vmm != qemu ]] || command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if ((${#need[@]})); then
    echo "# installing: ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2; }
fi

kernel=$("$root/linux/build-kernel.sh")
initrd=$("$root/linux/build-initramfs.sh")
echo "# kernel: $kernel"
echo "# initramfs: $initrd"

status=0
for t in "${transports[@]}"; do
    echo "# --- $vmm, virtio-$t"
    python3 "$here/ember_linux_test.py" --vmm "$vmm" --transport "$t" \
        --kernel "$kernel" --initrd "$initrd" "${extra[@]}" || status=1
done
exit $status
