#!/usr/bin/env bash
# Start-to-exit time and peak RSS of the hello guest (128 MiB, 1 vCPU),
# ember beside QEMU microvm booting the same ELF, interleaved runs.
#   bench/startup.sh [RUNS]        (default 21; QUIET=PERCENT, default 25)
# Targets (issue 2): ember at least 3x faster; ember's peak RSS at most 4 MiB.
# Start-up depends on the host's state (issue 15): on a busy host every
# sleep in the kernel (grace periods of memory slot and routing changes, the
# PIT worker's creation) ends in a run queue, and the VM's destruction waits
# for a normal SRCU grace period (kvm_free_pit, 5-12 ms). Hence the CPU and
# off-CPU medians, the host line (busy, steal, load) and the warning below;
# bench/startup_waits.sh shows where the time goes; README, Benchmarks, has
# the findings.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-21}
make --no-print-directory -s all guests build/runbench >/dev/null
GUEST=build/guest/hello.elf
QEMU=${QEMU:-qemu-system-x86_64}

# Both VMMs can leave the VM's destruction (SRCU grace periods in the
# kernel, one of them a normal one) to a helper process after they exit: ember does by default,
# QEMU with -async-teardown. Both ways are timed, with a pause between runs
# so that one run's leftover teardown does not slow the next.
QEMU_ARGS=(-M microvm,x-option-roms=off,rtc=off -nodefaults -no-user-config -display none
    -serial stdio -enable-kvm -cpu host,-arch-capabilities -m 128 -smp 1 -device i8042
    -no-reboot -kernel "$GUEST")
echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs"
build/runbench --runs "$RUNS" --warmup 2 --gap-ms 150 \
    ember -- build/ember run --kernel "$GUEST" --memory 128 --cpus 1 ';' \
    ember-sync -- build/ember run --kernel "$GUEST" --memory 128 --cpus 1 --sync-teardown ';' \
    qemu -- "$QEMU" "${QEMU_ARGS[@]}" ';' \
    qemu-async -- "$QEMU" "${QEMU_ARGS[@]}" -async-teardown | tee build/bench-startup.txt

awk -v quiet="${QUIET:-25}" '
$1 == "ember"      { ew = $2; er = $6; ec = $5; eo = $9 }
$1 == "host:"      { busy = $3 + 0; others = $8 + 0; steal = $10 + 0 }
$1 == "ember-sync" { sw = $2 }
$1 == "qemu"       { qw = $2; qr = $6 }
$1 == "qemu-async" { aw = $2 }
END {
    printf "\nember vs QEMU, both as they come: %.1fx faster start to exit (target >= 3x)\n", qw / ew
    printf "with asynchronous teardown on both: %.1fx; with it on neither: %.1fx\n", aw / ew, qw / sw
    printf "ember peak RSS %.2f MiB (target <= 4 MiB); QEMU %.2f MiB\n", er / 1024, qr / 1024
    printf "ember: %.1f ms on CPU, %.1f ms off CPU per run (medians)\n", ec, eo
    if (others > quiet || steal > 5)
        printf "WARNING: not a quiet host: other processes took %.0f%% of its CPUs, the hypervisor under it %.0f%% (steal); ember waits in run queues and for the grace periods of VM creation and destruction (see the header of bench/startup.sh): figures from this run are not comparable\n", others, steal
}' build/bench-startup.txt
