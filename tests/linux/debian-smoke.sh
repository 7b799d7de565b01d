#!/usr/bin/env bash
# Boots Debian's stock cloud kernel (vmlinux extracted from
# linux-image-cloud-amd64, booted through its PVH note) under ember and
# checks what the kernel says about what ember gave it: the banner, ember's
# exact command line, the memory map ember built, the initrd where ember put
# it, and memory initialisation complete. On these test hosts the stock
# kernel cannot finish booting (its kernel code runs emulated and meets
# instructions the emulator lacks; see ENVIRONMENT.md), so the run ends with
# ember's report of that, which is expected and checked too.
#
# Usage: tests/linux/debian-smoke.sh      (EMBER=path/to/ember)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
EMBER=${EMBER:-$root/build/ember}
out=${OUT_DIR:-$root/build/linux-smoke}
mkdir -p "$out"
mapfile -t files < <("$root/linux/debian-kernel.sh")
vmlinux=${files[1]}
initrd=${files[2]}
mem_mib=256
cmdline="console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 ember.smoke=$$"
log=$out/serial.log

echo "# kernel: $vmlinux"
start=$(date +%s)
set +e
timeout 300 "$EMBER" run --kernel "$vmlinux" --initrd "$initrd" --memory $mem_mib \
    --cpu-template baseline --cmdline "$cmdline" </dev/null >"$log" 2>&1
status=$?
set -e
echo "# ember ended with status $status after $(($(date +%s) - start)) s; log: $log"

n=0
fail=0
check() { # check DESCRIPTION COMMAND...
    n=$((n + 1))
    local what=$1
    shift
    if "$@"; then echo "ok $n - $what"; else echo "not ok $n - $what"; fail=1; fi
}
has() { grep -qF -- "$1" "$log"; }

initrd_size=$(stat -c %s "$initrd")
mem_end=$((mem_mib << 20))
rd_start=$(((mem_end - initrd_size) & ~4095))
rd_line=$(printf 'RAMDISK: [mem 0x%08x-0x%08x]' "$rd_start" $((mem_end - 1)))
e820_low='BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable'
e820_legacy='BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved'
e820_high=$(printf 'BIOS-e820: [mem 0x0000000000100000-0x%016x] usable' $((mem_end - 1)))

check "the kernel banner" grep -q "Linux version 6\.1" "$log"
check "ember's command line, exactly" has "Command line: $cmdline"
check "the e820 map ember built: low RAM" has "$e820_low"
check "the e820 map ember built: legacy area reserved" has "$e820_legacy"
check "the e820 map ember built: RAM from 1 MiB to $mem_mib MiB" has "$e820_high"
check "exactly three e820 entries" test "$(grep -c 'BIOS-e820:' "$log")" -eq 3
check "the initrd where ember put it ($rd_line)" has "$rd_line"
check "memory initialisation complete" grep -qE "Memory: [0-9]+K/[0-9]+K available" "$log"
# Either the guest got all the way (reboot: 0) or ember reported why it
# stopped; a timeout or a crash of ember is a failure.
check "ember ended cleanly (status $status)" test "$status" -eq 0 -o \( "$status" -ge 10 -a "$status" -le 20 \)
if [ "$status" -ne 0 ]; then
    check "ember reported the guest's failure" grep -q "ember: guest stopped on vCPU" "$log"
fi
echo "1..$n"
exit $fail
