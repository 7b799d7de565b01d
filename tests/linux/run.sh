#!/bin/bash
# Run the real-Linux guest checks: build (or reuse) the kernel and the
# initramfs, then boot them under the VMM once per virtio transport.
#
# Usage: tests/linux/run.sh [--vmm qemu|ember|both] [--transport mmio|pci|both]
#                           [--checks smp,blk,...] [--net tap|user]
#                           [-- more options of ember_linux_test.py]
# Default: QEMU, both transports, every check; --vmm both runs ember (the
# build/ember binary) and then QEMU as the reference. Needs root (apt-get on
# a fresh machine, a network namespace and a tap device for the net check).
# Prints TAP per run and a total line; the exit status is 0 when every run
# passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
vmms=(qemu)
transports=(mmio pci)
extra=()
while (($#)); do
    case $1 in
    --vmm)
        [[ $2 == both ]] && vmms=(ember qemu) || vmms=("$2")
        shift 2
        ;;
    --transport)
        [[ $2 == both ]] && transports=(mmio pci) || transports=("$2")
        shift 2
        ;;
    --checks | --net) extra+=("$1" "$2"); shift 2 ;;
    --) shift; extra+=("$@"); break ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

need=()
command -v python3 >/dev/null || need+=(python3)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v ip >/dev/null || need+=(iproute2)
[[ " ${vmms[*]} " != *" qemu "* ]] || command -v qemu-system-x86_64 >/dev/null ||
    need+=(qemu-system-x86)
command -v debugfs >/dev/null || need+=(e2fsprogs)
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
passed=0 failed=0 skipped=0
summary=()
for vmm in "${vmms[@]}"; do
    for t in "${transports[@]}"; do
        echo "# --- $vmm, virtio-$t"
        start=$(date +%s)
        out=$(mktemp)
        python3 "$here/ember_linux_test.py" --vmm "$vmm" --transport "$t" \
            --kernel "$kernel" --initrd "$initrd" "${extra[@]}" | tee "$out" || status=1
        # "N passed, N failed, N skipped" of this run, added to the total.
        if read -r p f s < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "$out" | tail -1); then
            passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
            summary+=("# $vmm/$t: $p passed, $f failed, $s skipped in $(($(date +%s) - start)) s")
        else
            status=1
            summary+=("# $vmm/$t: no result")
        fi
        rm -f "$out"
    done
done
printf '%s\n' "${summary[@]}"
echo "$passed passed, $failed failed, $skipped skipped"
exit $status
