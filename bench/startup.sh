#!/usr/bin/env bash
# Start-to-exit time and peak RSS of the hello guest (128 MiB, 1 vCPU),
# ember beside QEMU microvm booting the same ELF, interleaved runs.
#   bench/startup.sh [RUNS]        (default 21)
# Targets (issue 2): ember at least 3x faster; ember's peak RSS at most 4 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-21}
make --no-print-directory -s all guests build/runbench >/dev/null
GUEST=build/guest/hello.elf
QEMU=${QEMU:-qemu-system-x86_64}

# QEMU needs an i8042 for the guest's reset, and -no-reboot to exit on it.
build/runbench --runs "$RUNS" --warmup 2 \
    ember -- build/ember run --kernel "$GUEST" --memory 128 --cpus 1 ';' \
    qemu -- "$QEMU" -M microvm,x-option-roms=off,rtc=off -nodefaults -no-user-config \
        -display none -serial stdio -enable-kvm -cpu host,-arch-capabilities \
        -m 128 -smp 1 -device i8042 -no-reboot -kernel "$GUEST" | tee build/bench-startup.txt

awk '
/^ember / { ew = $2; er = $6 }
/^qemu /  { qw = $2; qr = $6 }
END {
    printf "\nember is %.1fx faster than QEMU start to exit (target >= 3x)\n", qw / ew
    printf "ember peak RSS %.2f MiB (target <= 4 MiB); QEMU %.2f MiB\n", er / 1024, qr / 1024
}' build/bench-startup.txt
