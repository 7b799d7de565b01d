#!/usr/bin/env bash
# virtio-blk throughput: the blk-perf guest (guest/blk-perf.c, a poll-mode driver whose hot
# loop runs at CPL3) under ember (virtio-pci and virtio-mmio) and QEMU (q35 with qboot for
# virtio-pci, microvm for virtio-mmio), on one 256 MiB raw image in tmpfs, and KVM's exit
# counters per request.
#
# Usage: bench/blk.sh [-t MS] [-r RUNS] [-o OUT_DIR] [-c writeback|none] [-m BYTES] [VMM...]
#   -t MS    time per workload (default 2000)
#   -r RUNS  runs per VMM, interleaved; the table shows each workload's best (default 1)
#   -c none  both VMMs open the image with O_DIRECT (cache=none), so the figures include the
#            host's disk; the image then lives in build/ (tmpfs refuses O_DIRECT)
#   -m BYTES the guest's buffers start BYTES (1-4095) past a page boundary: with -c none, below
#            the storage's alignment, each VMM copies every request through bounce buffers
#   VMM      ember-pci ember-mmio qemu-pci qemu-mmio (default: all four); ember-pci-noseccomp
#            and ember-mmio-noseccomp run ember with --no-seccomp, qemu-pci-sandbox QEMU with
#            -sandbox on (its own seccomp filter): the filters' cost (bench/seccomp.sh)
# Environment: EMBER (default build/ember), QEMU (qemu-system-x86_64), QBOOT
#   (/usr/share/qemu/qboot.rom), IMAGE (/dev/shm/ember-blk-bench.img, or
#   build/ember-blk-bench.img with -c none).
#
# Both VMMs use io_uring and, by default, the host page cache: ember --drive (cache=writeback,
# its io_uring backend on its per-device I/O thread); QEMU -drive cache=writeback,aio=io_uring
# in its main loop (with -object iothread it measured slower here, 2 host CPUs). QEMU's
# virtio-pci runs on q35, whose firmware is qboot (SeaBIOS takes ~4 s to reach the guest, all of
# it emulated).
#
# Exits: KVM's counters for the VM (exits, mmio_exits, io_exits, ... summed over the vCPUs)
# are read in the quiet periods the guest leaves before and after each workload (it spins at
# CPL3 for settle_ms, which makes no exits) and divided by the requests the guest completed.
# debugfs (/sys/kernel/debug/kvm/PID-FD/) is locked down on these hosts ("debugfs access is
# restricted"), so they come from KVM's binary statistics instead: each VMM runs with
# LD_PRELOAD=kvmstat-preload.so, which opens the statistics descriptors inside it (KVM answers
# no other process), and bench/kvmstat copies them out with pidfd_getfd() (needs root).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
QEMU=${QEMU:-qemu-system-x86_64}
QBOOT=${QBOOT:-/usr/share/qemu/qboot.rom}
CACHE=writeback
MISALIGN=0
GUEST=$ROOT/build/guest/blk-perf.elf
RUN_MS=2000
SETTLE_MS=800 # quiet time around each workload: the counters are read in its middle
RUNS=1
WORKLOADS=(randread-4k-qd1 randread-4k-qd32 seqread-128k-qd16 seqwrite-128k-qd16)
OUT_DIR=$ROOT/build/bench-blk
COUNTERS=(exits mmio_exits io_exits irq_exits halt_exits irq_injections)

while getopts "t:r:o:c:m:h" opt; do
    case $opt in
    t) RUN_MS=$OPTARG ;;
    r) RUNS=$OPTARG ;;
    o) OUT_DIR=$OPTARG ;;
    c) CACHE=$OPTARG ;;
    m) MISALIGN=$OPTARG ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
    esac
done
shift $((OPTIND - 1))
case $CACHE in
writeback) IMAGE=${IMAGE:-/dev/shm/ember-blk-bench.img} ;;
none) IMAGE=${IMAGE:-$ROOT/build/ember-blk-bench.img} ;;
*)
    echo "-c: writeback or none, not '$CACHE'" >&2
    exit 2
    ;;
esac
VMMS=("$@")
[ ${#VMMS[@]} -gt 0 ] || VMMS=(ember-pci ember-mmio qemu-pci qemu-mmio)

make -s -C "$ROOT" all >/dev/null
make -s -C "$ROOT/guest" O="$ROOT/build/guest" >/dev/null
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.results "$OUT_DIR"/*.raw "$OUT_DIR"/*.out "$OUT_DIR"/*.err

# The image: allocated up front, so that no run pays for tmpfs page allocation. One that this
# script made goes away at the end (256 MiB of RAM), unless KEEP_IMAGE=1.
if [ ! -f "$IMAGE" ] || [ "$(stat -c %s "$IMAGE")" != $((256 << 20)) ]; then
    dd if=/dev/zero of="$IMAGE" bs=1M count=256 status=none
    [ "${KEEP_IMAGE:-0}" = 1 ] || trap 'rm -f "$IMAGE"' EXIT
fi

. "$ROOT/bench/counters.sh"
counters_build

QEMU_BASE=(-nodefaults -no-user-config -display none -enable-kvm -cpu host,-arch-capabilities
    -device isa-debug-exit,iobase=0xf4,iosize=4 -m 128 -serial stdio)
QEMU_DRIVE=(-drive "file=$IMAGE,if=none,id=d0,format=raw,cache=$CACHE,aio=io_uring")

start_vmm() { # start_vmm VMM OUT -> VMM_PID
    local cmdline="console=ttyS0 perf_ms=$RUN_MS perf_settle_ms=$SETTLE_MS perf_misalign=$MISALIGN perf_only=$(IFS=,; echo "${WORKLOADS[*]}")"
    if [ "$have_counters" = 1 ]; then export LD_PRELOAD=$PRELOAD; fi
    case $1 in
    ember-pci | ember-mmio | ember-pci-noseccomp | ember-mmio-noseccomp)
        local transport=${1#ember-} filters=()
        transport=${transport%-noseccomp}
        [[ $1 == *-noseccomp ]] && filters=(--no-seccomp)
        "$EMBER" run --kernel "$GUEST" --debug-exit --transport "$transport" "${filters[@]}" \
            --drive "path=$IMAGE,cache=$CACHE${EMBER_DRIVE_OPTS:-}" --cmdline "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-pci | qemu-pci-sandbox)
        local bios=() sandbox=()
        [ -r "$QBOOT" ] && bios=(-bios "$QBOOT")
        [ "$1" = qemu-pci-sandbox ] && sandbox=(-sandbox on)
        "$QEMU" -M q35 "${bios[@]}" "${sandbox[@]}" "${QEMU_BASE[@]}" "${QEMU_DRIVE[@]}" \
            -device virtio-blk-pci,drive=d0,disable-legacy=on \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-mmio)
        "$QEMU" -M microvm,x-option-roms=off,rtc=off,acpi=off "${QEMU_BASE[@]}" \
            -global virtio-mmio.force-legacy=false "${QEMU_DRIVE[@]}" \
            -device virtio-blk-device,drive=d0 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    *)
        echo "unknown VMM $1" >&2
        exit 2
        ;;
    esac
    VMM_PID=$!
    unset LD_PRELOAD
}


read_counters() { # read_counters PID -> "exits mmio_exits ..." (one number each), or nothing
    local c stats values=()
    stats=$("$KVMSTAT" "$1" 2>/dev/null) || return 0
    for c in "${COUNTERS[@]}"; do
        values+=("$(echo "$stats" | awk -v c="$c" '$1 == c {print $2}' | grep . || echo 0)")
    done
    echo "${values[*]}"
}

# run_vmm VMM RUN: runs the guest, snapshots the counters around each workload, and writes
# "WORKLOAD IOS IOPS MBPS EXITS..." lines (exit deltas) to OUT_DIR/VMM.RUN.results.
run_vmm() {
    local vmm=$1 out=$OUT_DIR/$1.$2.out res=$OUT_DIR/$1.$2.results
    : >"$res"
    : >"$out"
    start_vmm "$vmm" "$out"
    local pid=$VMM_PID seen=0 deadline=$((SECONDS + 60 + 8 * RUN_MS / 1000))
    declare -A before
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -gt $deadline ]; then
            echo "# $vmm: no end in sight; stopping it" >&2
            kill "$pid"
            break
        fi
        # Only whole lines: the serial port ends them with "\r\n", the file may end mid-line.
        local lines count
        lines=$(grep -a $'^blk-perf: begin [^ ]* settle_ms=[0-9]* run_ms=[0-9]*\r$' "$out" |
            tr -d '\r' || true)
        count=$(printf '%s' "$lines" | grep -c . || true)
        if [ "$count" -gt "$seen" ]; then
            seen=$count
            local line name settle run
            line=$(printf '%s\n' "$lines" | tail -n1)
            read -r _ _ name settle run <<<"$line"
            settle=${settle#settle_ms=}
            run=${run#run_ms=}
            # Halfway into the quiet time before the run, and halfway into the one after.
            sleep "$(ms_to_s $((settle / 2)))"
            before[$name]=$([ "$have_counters" = 1 ] && read_counters "$pid" || echo "")
            sleep "$(ms_to_s $((settle + run)))"
            local after
            after=$([ "$have_counters" = 1 ] && read_counters "$pid" || echo "")
            echo "$name ${before[$name]:-} | $after" >>"$res.raw"
        fi
        sleep 0.02
    done
    wait "$pid" || true
    # Join the guest's results with the counter deltas.
    local name ios iops mbps
    while read -r name ios iops mbps; do
        local raw deltas="" b a i
        raw=$(grep "^$name " "$res.raw" 2>/dev/null | tail -n1 || true)
        if [ -n "$raw" ] && [ "$have_counters" = 1 ]; then
            read -ra b <<<"$(echo "$raw" | sed -E 's/^[^ |]+ ?(.*)\|.*/\1/')"
            read -ra a <<<"$(echo "$raw" | sed -E 's/.*\| ?//')"
            # A snapshot that missed its quiet period (the VMM already gone) counts for nothing.
            if [ ${#b[@]} = ${#COUNTERS[@]} ] && [ ${#a[@]} = ${#COUNTERS[@]} ]; then
                for i in "${!COUNTERS[@]}"; do
                    deltas="$deltas $((a[i] - b[i]))"
                done
            else
                echo "# $vmm: $name: counters not read in time" >&2
            fi
        fi
        echo "$name $ios $iops $mbps$deltas" >>"$res"
    done < <(tr -d '\r' <"$out" | sed -nE \
        's/^blk-perf: result ([^ ]+) ios=([0-9]+) .*iops=([0-9]+) mbps=([0-9.]+).*/\1 \2 \3 \4/p')
    rm -f "$res.raw"
    if ! tr -d '\r' <"$out" | grep -q '^ok 1 '; then
        echo "# $vmm run $2: the guest did not finish cleanly; see $out" >&2
    fi
}

# Runs interleaved, so that a change in the host's load hits every VMM alike.
for run in $(seq 1 "$RUNS"); do
    for vmm in "${VMMS[@]}"; do
        echo "# running $vmm ($run/$RUNS)" >&2
        run_vmm "$vmm" "$run"
    done
done

# ---- the table ------------------------------------------------------------------------------

best() { # best VMM WORKLOAD -> the result line with the highest IOPS over the runs
    cat "$OUT_DIR/$1".*.results 2>/dev/null | awk -v w="$2" '$1 == w' | sort -k3,3n | tail -n1 || true
}

printf '\ncache=%s, guest buffers %s bytes past a page boundary, image %s\n' "$CACHE" "$MISALIGN" "$IMAGE"
printf '\n%-19s' ""
for vmm in "${VMMS[@]}"; do printf ' | %-27s' "$vmm"; done
printf '\n%-19s' "workload"
for vmm in "${VMMS[@]}"; do printf ' | %8s %8s %9s' IOPS MB/s exits/req; done
echo
for w in "${WORKLOADS[@]}"; do
    printf '%-19s' "$w"
    for vmm in "${VMMS[@]}"; do
        line=$(best "$vmm" "$w")
        if [ -z "$line" ]; then
            printf ' | %8s %8s %9s' - - -
            continue
        fi
        read -r _ ios iops mbps exits _ <<<"$line"
        per=$([ -n "${exits:-}" ] && awk "BEGIN {printf \"%.3f\", $exits / $ios}" || echo "n/a")
        printf ' | %8s %8s %9s' "$iops" "$mbps" "$per"
    done
    echo
done
echo
echo "ember / QEMU IOPS:"
for w in "${WORKLOADS[@]}"; do
    printf '  %-20s' "$w"
    for t in pci mmio; do
        e=$(best "ember-$t" "$w" | awk '{print $3}')
        q=$(best "qemu-$t" "$w" | awk '{print $3}')
        if [ -n "$e" ] && [ -n "$q" ] && [ "$q" != 0 ]; then
            printf '  %s %.2fx' "$t" "$(awk "BEGIN {print $e / $q}")"
        fi
    done
    echo
done

if [ "$have_counters" = 1 ]; then
    echo
    echo "KVM exits per request (${COUNTERS[*]}):"
    for w in "${WORKLOADS[@]}"; do
        for vmm in "${VMMS[@]}"; do
            line=$(best "$vmm" "$w")
            [ -n "$line" ] || continue
            read -ra f <<<"$line"
            printf '  %-20s %-11s' "$w" "$vmm"
            if [ ${#f[@]} -lt $((4 + ${#COUNTERS[@]})) ]; then
                echo " n/a"
                continue
            fi
            for i in "${!COUNTERS[@]}"; do
                printf ' %s=%s' "${COUNTERS[$i]}" \
                    "$(awk "BEGIN {printf \"%.3f\", ${f[$((4 + i))]:-0} / ${f[1]}}")"
            done
            echo
        done
    done
fi
target=$(best ember-pci randread-4k-qd32 | awk '{print $3}')
qemu=$(best qemu-pci randread-4k-qd32 | awk '{print $3}')
if [ -n "$target" ] && [ -n "$qemu" ]; then
    echo
    echo "target: ember >= 1.2x QEMU IOPS at 4 KiB QD32 (virtio-pci):" \
        "$(awk "BEGIN {printf \"%.2fx\", $target / $qemu}")"
fi
