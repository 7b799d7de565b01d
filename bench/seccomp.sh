#!/usr/bin/env bash
# What the seccomp filters cost: ember with its filters (the default) and with --no-seccomp,
# beside QEMU without and with its own filter (-sandbox on), in the same run.
#   1. start to exit of the hello guest (128 MiB, 1 vCPU), interleaved runs (build/runbench);
#   2. virtio-blk 4 KiB random reads at queue depth 32 (and the other blk-perf workloads),
#      interleaved, best of RUNS (bench/blk.sh).
#
#   bench/seccomp.sh [RUNS]        (default: 21 start-ups, 2 blk runs per VMM)
# Expected: the filters' cost is within the noise of these machines.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-21}
BLK_RUNS=${BLK_RUNS:-2}
make --no-print-directory -s all guests build/runbench >/dev/null
GUEST=build/guest/hello.elf
QEMU=${QEMU:-qemu-system-x86_64}
OUT=build/bench-seccomp
mkdir -p "$OUT"

echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs"
echo "# start to exit of the hello guest, $RUNS runs each, interleaved"
QEMU_ARGS=(-M microvm,x-option-roms=off,rtc=off -nodefaults -no-user-config -display none
    -serial stdio -enable-kvm -cpu host,-arch-capabilities -m 128 -smp 1 -device i8042
    -no-reboot -kernel "$GUEST")
build/runbench --runs "$RUNS" --warmup 2 --gap-ms 150 \
    ember -- build/ember run --kernel "$GUEST" --memory 128 --cpus 1 ';' \
    ember-noseccomp -- build/ember run --kernel "$GUEST" --memory 128 --cpus 1 --no-seccomp ';' \
    qemu -- "$QEMU" "${QEMU_ARGS[@]}" ';' \
    qemu-sandbox -- "$QEMU" "${QEMU_ARGS[@]}" -sandbox on | tee "$OUT/startup.txt"

echo
echo "# virtio-blk (virtio-pci), $BLK_RUNS runs each, interleaved; best run per workload"
bench/blk.sh -r "$BLK_RUNS" -o "$OUT/blk" ember-pci ember-pci-noseccomp qemu-pci qemu-pci-sandbox |
    tee "$OUT/blk.txt"

iops() { # iops VMM WORKLOAD: the best run's IOPS
    cat "$OUT/blk/$1".*.results 2>/dev/null | awk -v w="$2" '$1 == w {print $3}' | sort -n | tail -n1 || true
}
echo
awk '
$1 == "ember"           { e = $2 }
$1 == "ember-noseccomp" { en = $2 }
$1 == "qemu"            { q = $2 }
$1 == "qemu-sandbox"    { qs = $2 }
END {
    printf "start to exit (median): ember with filters / without: %.3f (%.2f ms vs %.2f ms)\n", e / en, e, en
    printf "                        QEMU -sandbox on / off:       %.3f (%.2f ms vs %.2f ms)\n", qs / q, qs, q
    printf "                        ember with filters vs QEMU -sandbox on: %.1fx faster\n", qs / e
}' "$OUT/startup.txt"
for w in randread-4k-qd32 randread-4k-qd1; do
    on=$(iops ember-pci $w)
    off=$(iops ember-pci-noseccomp $w)
    q=$(iops qemu-pci $w)
    qs=$(iops qemu-pci-sandbox $w)
    if [ -n "$on" ] && [ -n "$off" ] && [ -n "$q" ] && [ -n "$qs" ]; then
        awk -v w="$w" -v on="$on" -v off="$off" -v q="$q" -v qs="$qs" 'BEGIN {
            printf "%s IOPS: ember with filters / without: %.3f (%d vs %d); QEMU -sandbox on / off: %.3f (%d vs %d); ember vs QEMU, both filtered: %.2fx\n",
                w, on / off, on, off, qs / q, qs, q, on / qs }'
    else
        echo "$w: a run gave no figure (see $OUT/blk)"
    fi
done
