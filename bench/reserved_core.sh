#!/usr/bin/env bash
# The reserved hypervisor core: virtio-blk served by polling from reserved host CPUs
# (`--cpu-placement vmm=R,vcpu=G`, its I/O threads polling the queues after work with kicks
# off) beside ember's default (kicks, the I/O thread wherever the scheduler puts it), QEMU's
# default (virtio-blk-pci in its main loop) and QEMU with its own polling (the drive on an
# iothread, poll-max-ns). The blk-perf guest (guest/blk-perf.c: its hot loop at CPL3, where
# guest code runs natively on these hosts; it kicks only when the device asks, through the event
# index, and polls the used ring) reads a 256 MiB raw image on ext4 (build/, page cache warm):
# 4 KiB random reads at queue depth 1 and 32.
#
# Usage: bench/reserved_core.sh [-t MS] [-r RUNS] [-o OUT_DIR] [VMM...]
#   -t MS    time per workload (default 2000)
#   -r RUNS  runs per VMM, interleaved, the order rotated each round (default 5)
#   VMM      ember, ember-reserved, qemu, qemu-poll (default: these four; virtio-pci, QEMU on
#            q35 with qboot), and ember-mmio, ember-mmio-reserved, qemu-mmio, qemu-mmio-poll
#            (virtio-mmio; QEMU's microvm); ember-vhu-reserved: ember placed as ember-reserved
#            with a vhost-user-blk disk served by qemu-storage-daemon on the reserved CPU, its
#            export on an iothread polling for up to QEMU_POLL_NS (the back-end polls instead
#            of ember: ember is on no data path; QSD's CPU is then in "R us")
# Environment: EMBER, QEMU, QBOOT, IMAGE (build/ember-reserved-bench.img), RESERVED (the host
#   CPU reserved for the VMM, default 1) and GUEST_CPU (the vCPU's, default 0); QEMU_POLL_NS
#   (QEMU's iothread poll-max-ns, default 32768, QEMU's own: the best of it, 262144
#   and 1048576 measured here, see README), WORKLOADS.
#
# Per request, in the run window (read in the quiet periods the guest leaves around it):
#   lat     the guest's mean and 99th percentile request latency (TSC, submission to used)
#   exits   KVM's exits of the VM (bench/counters.sh); kicks: the guest's notifications
#   VMM us  CPU time of the VMM's threads other than its vCPUs
#   G us    host CPU time on the vCPU's CPU that was not the guest's (/proc/stat: busy less
#           guest time; tick-coarse, 10 ms): host work on the guest's core
#   R us    host CPU time on the reserved CPU (everything that ran there: the VMM's threads
#           and anything else)
# and, after the run, while the guest spins without I/O (from 0.5 to about 0.8 of the quiet period
# after it): idle: the VMM's non-vCPU CPU time in ms per second, what polling costs when the
# guest is idle. Without a placement the vCPU and the VMM's threads go where the scheduler
# puts them, so G and R are then just the two CPUs' figures.
#
# Noise: runs in whose window other processes and steal took over QUIET% (default 25) of one
# CPU are left out of the medians (bench/stats.sh); the table says how many counted.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
QEMU=${QEMU:-qemu-system-x86_64}
QBOOT=${QBOOT:-/usr/share/qemu/qboot.rom}
IMAGE=${IMAGE:-$ROOT/build/ember-reserved-bench.img}
GUEST=$ROOT/build/guest/blk-perf.elf
RESERVED=${RESERVED:-1}
GUEST_CPU=${GUEST_CPU:-0}
QEMU_POLL_NS=${QEMU_POLL_NS:-32768}
QSD=${QSD:-qemu-storage-daemon}
RUN_MS=2000
SETTLE_MS=1000
RUNS=5
OUT_DIR=$ROOT/build/bench-reserved-core
read -ra WORKLOADS <<<"${WORKLOADS:-randread-4k-qd1 randread-4k-qd32}"

while getopts "t:r:o:h" opt; do
    case $opt in
    t) RUN_MS=$OPTARG ;;
    r) RUNS=$OPTARG ;;
    o) OUT_DIR=$OPTARG ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
    esac
done
shift $((OPTIND - 1))
[[ $RUN_MS =~ ^[1-9][0-9]*$ && $RUNS =~ ^[1-9][0-9]*$ ]] || {
    echo "-t and -r take positive integers" >&2
    exit 2
}
VMMS=("$@")
[ ${#VMMS[@]} -gt 0 ] || VMMS=(ember ember-reserved qemu qemu-poll)
for vmm in "${VMMS[@]}"; do
    case $vmm in
    ember | ember-reserved | qemu | qemu-poll | ember-mmio | ember-mmio-reserved | qemu-mmio | qemu-mmio-poll) ;;
    ember-vhu-reserved)
        command -v "$QSD" >/dev/null || {
            echo "# skipped: $QSD is not installed (Debian: qemu-system-common)"
            exit 0
        }
        ;;
    *)
        echo "unknown VMM '$vmm'" >&2
        exit 2
        ;;
    esac
done
if [ "$RESERVED" = "$GUEST_CPU" ] || ! taskset -pc "$RESERVED,$GUEST_CPU" $$ >/dev/null 2>&1; then
    echo "# skipped: needs two host CPUs, RESERVED=$RESERVED and GUEST_CPU=$GUEST_CPU"
    exit 0
fi

make -s -C "$ROOT" all >/dev/null
make -s -C "$ROOT/guest" O="$ROOT/build/guest" >/dev/null
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.results "$OUT_DIR"/*.raw "$OUT_DIR"/*.out "$OUT_DIR"/*.err

QSD_PID=
SOCK=$OUT_DIR/qsd.sock
. "$ROOT/bench/qsd.sh"
cleanup() {
    stop_qsd
    if [ "${MADE_IMAGE:-0}" = 1 ] && [ "${KEEP_IMAGE:-0}" != 1 ]; then rm -f "$IMAGE"; fi
}
trap cleanup EXIT
if [ ! -f "$IMAGE" ] || [ "$(stat -c %s "$IMAGE")" != $((256 << 20)) ]; then
    head -c $((256 << 20)) /dev/urandom >"$IMAGE"
    MADE_IMAGE=1
fi

. "$ROOT/bench/counters.sh"
counters_build

QEMU_BASE=(-nodefaults -no-user-config -display none -enable-kvm -cpu "host,-arch-capabilities"
    -device "isa-debug-exit,iobase=0xf4,iosize=4" -m 128 -serial stdio -name "bench,debug-threads=on")
QEMU_Q35=(-M q35)
[ -r "$QBOOT" ] && QEMU_Q35+=(-bios "$QBOOT")
QEMU_MICROVM=(-M "microvm,x-option-roms=off,rtc=off,acpi=off" -global virtio-mmio.force-legacy=false)
QEMU_DRIVE=(-drive "file=$IMAGE,if=none,id=d0,format=raw,cache=writeback,aio=io_uring,readonly=on")
QEMU_IOTHREAD=(-object "iothread,id=io0,poll-max-ns=$QEMU_POLL_NS")

start_vmm() { # start_vmm VMM OUT -> VMM_PID
    local cmdline="console=ttyS0 perf_ms=$RUN_MS perf_settle_ms=$SETTLE_MS"
    cmdline="$cmdline perf_only=$(
        IFS=,
        echo "${WORKLOADS[*]}"
    )"
    if [ "$have_counters" = 1 ]; then export LD_PRELOAD=$PRELOAD; fi
    local ember=("$EMBER" run --kernel "$GUEST" --debug-exit --cmdline "$cmdline"
        --drive "path=$IMAGE,cache=writeback,readonly=on")
    local placed=(--cpu-placement "vmm=$RESERVED,vcpu=$GUEST_CPU")
    case $1 in
    ember) "${ember[@]}" --transport pci </dev/null >"$2" 2>"$2.err" & ;;
    ember-reserved) "${ember[@]}" --transport pci "${placed[@]}" </dev/null >"$2" 2>"$2.err" & ;;
    ember-vhu-reserved)
        "$EMBER" run --kernel "$GUEST" --debug-exit --cmdline "$cmdline" --drive "socket=$SOCK" \
            --transport pci "${placed[@]}" </dev/null >"$2" 2>"$2.err" &
        ;;
    ember-mmio) "${ember[@]}" --transport mmio </dev/null >"$2" 2>"$2.err" & ;;
    ember-mmio-reserved) "${ember[@]}" --transport mmio "${placed[@]}" </dev/null >"$2" 2>"$2.err" & ;;
    qemu)
        "$QEMU" "${QEMU_Q35[@]}" "${QEMU_BASE[@]}" "${QEMU_DRIVE[@]}" \
            -device virtio-blk-pci,drive=d0,disable-legacy=on,queue-size=256 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-poll)
        "$QEMU" "${QEMU_Q35[@]}" "${QEMU_BASE[@]}" "${QEMU_DRIVE[@]}" "${QEMU_IOTHREAD[@]}" \
            -device virtio-blk-pci,drive=d0,disable-legacy=on,queue-size=256,iothread=io0 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-mmio)
        "$QEMU" "${QEMU_MICROVM[@]}" "${QEMU_BASE[@]}" "${QEMU_DRIVE[@]}" \
            -device virtio-blk-device,drive=d0 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-mmio-poll)
        "$QEMU" "${QEMU_MICROVM[@]}" "${QEMU_BASE[@]}" "${QEMU_DRIVE[@]}" "${QEMU_IOTHREAD[@]}" \
            -device virtio-blk-device,drive=d0,iothread=io0 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    esac
    VMM_PID=$!
    unset LD_PRELOAD
}

TICK_NS=$((1000000000 / $(getconf CLK_TCK)))
# cpu_ticks N -> "BUSY GUEST" of host CPU N from /proc/stat (busy: user nice system irq softirq
# steal excluded; guest time is part of user)
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8, $10 + $11}' /proc/stat
}
# snapshot PID -> "EXITS VMM_OWN_NS VMM_ALL_NS BUSY STEAL G_BUSY G_GUEST R_BUSY NOW_NS"
snapshot() {
    echo "$(kvm_exits "$1") $(cpu_ns "$1" own) $(cpu_ns "$1" all)" \
        "$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)" \
        "$(cpu_ticks "$GUEST_CPU") $(cpu_ticks "$RESERVED" | cut -d' ' -f1) $(date +%s%N)"
}

# run_vmm VMM RUN: writes "WORKLOAD IOS IOPS MBPS KICKS EXITS VMM_NS - OTHERS% STEAL% LAT_MEAN_NS
# LAT_P99_NS G_HOST_NS R_NS IDLE_VMM_NS IDLE_NS" lines to OUT_DIR/VMM.RUN.results.
run_vmm() {
    local vmm=$1 out=$OUT_DIR/$1.$2.out res=$OUT_DIR/$1.$2.results
    : >"$res"
    : >"$out"
    cat "$IMAGE" >/dev/null
    [ "$vmm" = ember-vhu-reserved ] && start_qsd "$out.qsd.log" "$RESERVED" "$QEMU_POLL_NS"
    start_vmm "$vmm" "$out"
    local pid=$VMM_PID seen=0 deadline=$((SECONDS + 60 + 6 * (RUN_MS + 2 * SETTLE_MS) / 1000))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -gt $deadline ]; then
            echo "# $vmm: no end in sight; stopping it" >&2
            kill "$pid"
            break
        fi
        local lines count
        lines=$(grep -a $'^blk-perf: begin [^ ]* settle_ms=[0-9]* run_ms=[0-9]*\r$' "$out" |
            tr -d '\r' || true)
        count=$(printf '%s' "$lines" | grep -c . || true)
        if [ "$count" -gt "$seen" ]; then
            seen=$count
            local name settle run before after idle
            read -r _ _ name settle run <<<"$(printf '%s\n' "$lines" | tail -n1)"
            settle=${settle#settle_ms=}
            run=${run#run_ms=}
            sleep "$(ms_to_s $((settle / 2)))"
            before=$(snapshot "$pid")
            sleep "$(ms_to_s $((settle + run)))"
            after=$(snapshot "$pid")
            sleep "$(ms_to_s $((settle * 30 / 100)))"
            idle=$(snapshot "$pid")
            echo "$name $before | $after | $idle" >>"$res.raw"
        fi
        sleep 0.02
    done
    wait "$pid" || true
    stop_qsd
    local name ios iops mbps kicks lmean lp99
    while read -r name ios iops mbps kicks lmean lp99; do
        local raw b a c d=() e=() i
        raw=$(awk -v n="$name" '$1 == n' "$res.raw" 2>/dev/null | tail -n1)
        IFS='|' read -r b a c <<<"${raw#* }"
        read -ra b <<<"$b"
        read -ra a <<<"$a"
        read -ra c <<<"$c"
        for i in 0 1 2 3 4 5 6 7 8; do
            if [[ ${b[i]:-x} =~ ^[0-9]+$ && ${a[i]:-x} =~ ^[0-9]+$ ]]; then d+=($((a[i] - b[i]))); else d+=(x); fi
            if [[ ${a[i]:-x} =~ ^[0-9]+$ && ${c[i]:-x} =~ ^[0-9]+$ ]]; then e+=($((c[i] - a[i]))); else e+=(x); fi
        done
        local others=x steal=x g_host=x r_ns=x
        if [[ ${d[3]} != x && ${d[8]} != x && ${d[8]} -gt 0 ]]; then
            others=$(((d[3] * TICK_NS - d[2]) * 100 / d[8]))
            steal=$((d[4] * TICK_NS * 100 / d[8]))
            g_host=$(((d[5] - d[6]) * TICK_NS))
            r_ns=$((d[7] * TICK_NS))
        fi
        echo "$name $ios $iops $mbps $kicks ${d[0]} ${d[1]} - $others $steal $lmean $lp99" \
            "$g_host $r_ns ${e[1]} ${e[8]}" >>"$res"
    done < <(tr -d '\r' <"$out" | sed -nE \
        's/^blk-perf: result ([^ ]+) ios=([0-9]+) .*iops=([0-9]+) mbps=([0-9.]+) errors=0 kicks=([0-9]+) lat_mean_ns=([0-9]+) lat_p99_ns=([0-9]+).*/\1 \2 \3 \4 \5 \6 \7/p')
    rm -f "$res.raw"
    if ! tr -d '\r' <"$out" | grep -q '^ok 1 '; then
        echo "# $vmm run $2: the guest did not finish cleanly; see $out and $out.err" >&2
    fi
}

for run in $(seq 1 "$RUNS"); do
    n=${#VMMS[@]}
    for ((k = 0; k < n; k++)); do
        vmm=${VMMS[$(((k + run - 1) % n))]}
        echo "# running $vmm ($run/$RUNS)" >&2
        run_vmm "$vmm" "$run"
    done
done

# ---- the tables -----------------------------------------------------------------------------
. "$ROOT/bench/stats.sh"

printf '\n%s, %s CPUs (vCPU on %s, reserved %s); %s runs of %s ms each, interleaved; image %s (%s)\n' \
    "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" "$(nproc)" "$GUEST_CPU" "$RESERVED" \
    "$RUNS" "$RUN_MS" "$IMAGE" "$(df --output=fstype "$IMAGE" | tail -n1)"
printf '%s; ember %s; QEMU iothread poll-max-ns=%s\n' "$("$QEMU" --version | head -n1)" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" "$QEMU_POLL_NS"
echo "medians over the runs in whose window others took <= ${QUIET:-25}% of a CPU (runs: counted/all)"
for w in "${WORKLOADS[@]}"; do
    printf '\n%-20s %5s %8s %8s %8s %8s %9s %9s %8s %8s %8s %8s\n' "$w" runs IOPS best "lat us" \
        "p99 us" exits/req kicks/req "VMM us" "G us" "R us" "idle ms/s"
    for vmm in "${VMMS[@]}"; do
        printf '%-20s %5s %8s %8s %8s %8s %9s %9s %8s %8s %8s %8s\n' "$vmm" "$(counted "$vmm" "$w")" \
            "$(fmt 0 "$(median "$vmm" "$w" 3)")" "$(fmt 0 "$(best "$vmm" "$w" 3)")" \
            "$(fmt 2 "$(median "$vmm" "$w" 11 0 1000)")" "$(fmt 2 "$(median "$vmm" "$w" 12 0 1000)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 6 2)")" "$(fmt 3 "$(median "$vmm" "$w" 5 2)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 7 2 1000)")" "$(fmt 3 "$(median "$vmm" "$w" 13 2 1000)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 14 2 1000)")" "$(fmt 2 "$(median "$vmm" "$w" 15 16 0.001)")"
    done
done

echo
echo "IOPS ratios, of medians (of bests):"
for w in "${WORKLOADS[@]}"; do
    printf '  %-18s' "$w"
    for pair in ember:qemu ember-reserved:qemu ember-reserved:qemu-poll ember-vhu-reserved:qemu-poll ember-mmio:qemu-mmio \
        ember-mmio-reserved:qemu-mmio ember-mmio-reserved:qemu-mmio-poll; do
        a=${pair%:*}
        b=${pair#*:}
        [[ " ${VMMS[*]} " == *" $a "* && " ${VMMS[*]} " == *" $b "* ]] || continue
        printf '  %s/%s %s (%s)' "$a" "$b" "$(ratio median "$a" "$b" "$w")" "$(ratio best "$a" "$b" "$w")"
    done
    echo
done
