#!/usr/bin/env bash
# vhost-user-blk: the blk-perf guest (guest/blk-perf.c, a poll-mode driver whose hot loop runs
# at CPL3) reading one 256 MiB raw image on ext4 (build/, page cache warm) through Debian's
# qemu-storage-daemon (a vhost-user-blk export), with ember's front-end beside QEMU's front-end,
# and beside ember's built-in virtio-blk on the same image. 4 KiB random reads at queue depth 1
# and 32, 128 KiB sequential reads at depth 16; no writes (the image stays the same for every
# run); and 4 KiB random reads at depth 1 taken by interrupt (randread-4k-qd1-irq: every
# request interrupts the guest, which looks at the used ring only when the interrupt came: the
# interrupt path, the daemon's call eventfd to the guest, is in every request's latency).
# Medians over interleaved runs, ratios ember / QEMU.
#
# Usage: bench/vhost_user.sh [-t MS] [-r RUNS] [-o OUT_DIR] [VMM...]
#   -t MS    time per workload (default 2000)
#   -r RUNS  runs per VMM, interleaved; the tables show medians (default 5)
#   VMM      ember-vhu (ember's vhost-user-blk, virtio-pci), qemu-vhu (QEMU's vhost-user-blk-pci
#            on q35 with qboot), ember-blk (ember's built-in virtio-blk, virtio-pci, io_uring on
#            its I/O thread); default: these three. Also ember-vhu-mmio and qemu-vhu-mmio
#            (microvm), and qemu-blk (QEMU's virtio-blk-pci, aio=io_uring).
# Environment: EMBER (default build/ember), QEMU (qemu-system-x86_64), QSD
#   (qemu-storage-daemon), QBOOT (/usr/share/qemu/qboot.rom), IMAGE (build/ember-vhu-bench.img:
#   on the file system of build/, ext4 here), WORKLOADS (a subset of the four, space-separated).
#
# The daemon: a fresh qemu-storage-daemon per run, the same command line for both front-ends:
# the file driver with aio=io_uring over the page cache, one queue, its main loop (no iothread).
# ember's guest RAM is a memfd (chosen because a vhost-user device is configured); QEMU's is
# memory-backend-memfd,share=on. Both front-ends offer 256-entry rings.
#
# Per request, in the run window only (read in the quiet periods the guest leaves around each
# workload, as bench/blk.sh does):
#   exits   KVM's exit counter of the VM summed over vCPUs (KVM's binary statistics through
#           LD_PRELOAD=kvmstat-preload.so and bench/kvmstat; debugfs is locked down here; root),
#           and the guest's own count of kicks (notifications it wrote; each is one exit, handled
#           in the kernel when it hits an ioeventfd)
#   VMM us  CPU time of the VMM's threads other than its vCPUs (/proc/PID/task/*/schedstat, ns;
#           ember's vCPU threads are vcpuN, QEMU's "CPU N/KVM" with -name debug-threads=on):
#           for a vhost-user device this is the front-end's cost and should be ~0; for
#           ember-blk it is the device's I/O thread. The vCPU spins at CPL3 all along, so
#           its time is the run's length and not shown.
#   QSD us  qemu-storage-daemon's CPU time, all its threads
# ember's log also says how many interrupts it relayed from the daemon's call eventfd to the
# guest: none are expected on virtio-pci, where the daemon is handed the MSI-X vector's KVM
# irqfd itself; on virtio-mmio (ember-vhu-mmio) each interrupt of the -irq workload is.
#
# Noise: the benchmark needs both CPUs (the vCPU spins, the daemon or ember's I/O thread serves);
# whatever else runs on the host (or steals from it, nested) cuts the figures by up to 4x here.
# So each workload's window also measures the CPU that other processes and steal took (from
# /proc/stat less the VMM's and the daemon's time); medians count only the runs where that was
# at most QUIET% (environment, default 25) of one CPU, and the table says how many did.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
QEMU=${QEMU:-qemu-system-x86_64}
QSD=${QSD:-qemu-storage-daemon}
QBOOT=${QBOOT:-/usr/share/qemu/qboot.rom}
IMAGE=${IMAGE:-$ROOT/build/ember-vhu-bench.img}
GUEST=$ROOT/build/guest/blk-perf.elf
RUN_MS=2000
SETTLE_MS=800 # quiet time around each workload: the counters are read in its middle
RUNS=5
OUT_DIR=$ROOT/build/bench-vhost-user
read -ra WORKLOADS <<<"${WORKLOADS:-randread-4k-qd1 randread-4k-qd32 seqread-128k-qd16 randread-4k-qd1-irq}"

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
[ ${#VMMS[@]} -gt 0 ] || VMMS=(ember-vhu qemu-vhu ember-blk)
for vmm in "${VMMS[@]}"; do
    case $vmm in
    ember-vhu | ember-vhu-mmio | qemu-vhu | qemu-vhu-mmio | ember-blk | qemu-blk) ;;
    *)
        echo "unknown VMM '$vmm'" >&2
        exit 2
        ;;
    esac
done
if ! command -v "$QSD" >/dev/null; then
    echo "# skipped: $QSD is not installed (Debian: qemu-system-common)"
    exit 0
fi

make -s -C "$ROOT" all >/dev/null
make -s -C "$ROOT/guest" O="$ROOT/build/guest" >/dev/null
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.results "$OUT_DIR"/*.raw "$OUT_DIR"/*.out "$OUT_DIR"/*.err "$OUT_DIR"/*.log

QSD_PID=
cleanup() {
    if [ -n "$QSD_PID" ]; then kill "$QSD_PID" 2>/dev/null || true; fi
    if [ "${MADE_IMAGE:-0}" = 1 ] && [ "${KEEP_IMAGE:-0}" != 1 ]; then rm -f "$IMAGE"; fi
}
trap cleanup EXIT
# Written (allocated) once, random so that no layer can shortcut zeroes.
if [ ! -f "$IMAGE" ] || [ "$(stat -c %s "$IMAGE")" != $((256 << 20)) ]; then
    head -c $((256 << 20)) /dev/urandom >"$IMAGE"
    MADE_IMAGE=1
fi

. "$ROOT/bench/counters.sh"
counters_build

SOCK=$OUT_DIR/qsd.sock
. "$ROOT/bench/qsd.sh"

QEMU_BASE=(-nodefaults -no-user-config -display none -enable-kvm -cpu "host,-arch-capabilities"
    -device "isa-debug-exit,iobase=0xf4,iosize=4" -m 128 -serial stdio -name "bench,debug-threads=on")
QEMU_SHARED=(-object "memory-backend-memfd,id=mem,size=128M,share=on" -machine memory-backend=mem
    -chardev "socket,id=c0,path=$SOCK")
QEMU_Q35=(-M q35)
[ -r "$QBOOT" ] && QEMU_Q35+=(-bios "$QBOOT")
QEMU_MICROVM=(-M "microvm,x-option-roms=off,rtc=off,acpi=off" -global virtio-mmio.force-legacy=false)

start_vmm() { # start_vmm VMM OUT -> VMM_PID
    local cmdline="console=ttyS0 perf_ms=$RUN_MS perf_settle_ms=$SETTLE_MS"
    cmdline="$cmdline perf_only=$(
        IFS=,
        echo "${WORKLOADS[*]}"
    )"
    if [ "$have_counters" = 1 ]; then export LD_PRELOAD=$PRELOAD; fi
    local ember=("$EMBER" run --kernel "$GUEST" --debug-exit --log-level info --cmdline "$cmdline")
    case $1 in
    ember-vhu) "${ember[@]}" --transport pci --drive "socket=$SOCK" </dev/null >"$2" 2>"$2.err" & ;;
    ember-vhu-mmio) "${ember[@]}" --transport mmio --drive "socket=$SOCK" </dev/null >"$2" 2>"$2.err" & ;;
    ember-blk) "${ember[@]}" --transport pci --drive "path=$IMAGE,cache=writeback,readonly=on" \
        </dev/null >"$2" 2>"$2.err" & ;;
    qemu-vhu)
        "$QEMU" "${QEMU_Q35[@]}" "${QEMU_BASE[@]}" "${QEMU_SHARED[@]}" \
            -device vhost-user-blk-pci,chardev=c0,num-queues=1,queue-size=256,disable-legacy=on \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-vhu-mmio)
        "$QEMU" "${QEMU_MICROVM[@]}" "${QEMU_BASE[@]}" "${QEMU_SHARED[@]}" \
            -device vhost-user-blk,chardev=c0,num-queues=1,queue-size=256 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-blk)
        "$QEMU" "${QEMU_Q35[@]}" "${QEMU_BASE[@]}" \
            -drive "file=$IMAGE,if=none,id=d0,format=raw,cache=writeback,aio=io_uring,readonly=on" \
            -device virtio-blk-pci,drive=d0,disable-legacy=on,queue-size=256 \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    esac
    VMM_PID=$!
    unset LD_PRELOAD
}


TICK_NS=$((1000000000 / $(getconf CLK_TCK)))
# snapshot VMM_PID -> "EXITS VMM_OWN_NS QSD_NS VMM_ALL_NS BUSY_TICKS STEAL_TICKS NOW_NS", x where
# not measured: BUSY (user, nice, system, irq, softirq; guest time is part of user) and STEAL
# are the host's, from /proc/stat, so that the CPU others used in the window can be told.
snapshot() {
    echo "$(kvm_exits "$1") $(cpu_ns "$1" own) $([ -n "$QSD_PID" ] && cpu_ns "$QSD_PID" all || echo x)" \
        "$(cpu_ns "$1" all) $(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat)" \
        "$(date +%s%N)"
}

# run_vmm VMM RUN: runs the guest, snapshots the counters around each workload, and writes
# "WORKLOAD IOS IOPS MBPS KICKS EXITS VMM_NS QSD_NS OTHERS% STEAL%" lines (deltas over the run
# window; x where not measured) to OUT_DIR/VMM.RUN.results.
run_vmm() {
    local vmm=$1 out=$OUT_DIR/$1.$2.out res=$OUT_DIR/$1.$2.results
    : >"$res"
    : >"$out"
    cat "$IMAGE" >/dev/null # the page cache warm, whoever ran before
    QSD_PID=
    [[ $vmm == *-vhu* ]] && start_qsd "$OUT_DIR/$vmm.$2.qsd.log"
    start_vmm "$vmm" "$out"
    local pid=$VMM_PID seen=0 deadline=$((SECONDS + 60 + 6 * RUN_MS / 1000))
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
            local name settle run before after
            read -r _ _ name settle run <<<"$(printf '%s\n' "$lines" | tail -n1)"
            settle=${settle#settle_ms=}
            run=${run#run_ms=}
            sleep "$(ms_to_s $((settle / 2)))"
            before=$(snapshot "$pid")
            sleep "$(ms_to_s $((settle + run)))"
            after=$(snapshot "$pid")
            echo "$name $before $after" >>"$res.raw"
        fi
        sleep 0.02
    done
    wait "$pid" || true
    stop_qsd
    local name ios iops mbps kicks
    while read -r name ios iops mbps kicks; do
        local d=() b a i
        read -ra b <<<"$(awk -v n="$name" '$1 == n {print $2, $3, $4, $5, $6, $7, $8}' "$res.raw" 2>/dev/null)"
        read -ra a <<<"$(awk -v n="$name" '$1 == n {print $9, $10, $11, $12, $13, $14, $15}' "$res.raw" 2>/dev/null)"
        for i in 0 1 2 3 4 5 6; do
            if [[ ${b[i]:-x} =~ ^[0-9]+$ && ${a[i]:-x} =~ ^[0-9]+$ ]]; then
                d+=($((a[i] - b[i])))
            else
                d+=(x)
            fi
        done
        # Others' share of the host in the window, in % of one CPU: busy time less the VMM's
        # and the daemon's, and steal time.
        local others=x steal=x
        if [[ ${d[3]} != x && ${d[4]} != x && ${d[6]} != x && ${d[6]} -gt 0 ]]; then
            local qsd=${d[2]}
            [ "$qsd" != x ] || qsd=0
            others=$(((d[4] * TICK_NS - d[3] - qsd) * 100 / d[6]))
            steal=$((d[5] * TICK_NS * 100 / d[6]))
        fi
        echo "$name $ios $iops $mbps $kicks ${d[0]} ${d[1]} ${d[2]} $others $steal" >>"$res"
    done < <(tr -d '\r' <"$out" | sed -nE \
        's/^blk-perf: result ([^ ]+) ios=([0-9]+) .*iops=([0-9]+) mbps=([0-9.]+) errors=0 kicks=([0-9]+).*/\1 \2 \3 \4 \5/p')
    rm -f "$res.raw"
    if ! tr -d '\r' <"$out" | grep -q '^ok 1 '; then
        echo "# $vmm run $2: the guest did not finish cleanly; see $out and $out.err" >&2
    fi
}

# Interleaved, and the order rotated each round, so that no VMM always runs first (after the
# image was read in) or right after the same other one.
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

printf '\n%s, %s; %s runs of %s ms each, interleaved; image %s (%s)\n' \
    "$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')" "$(nproc) CPUs" "$RUNS" "$RUN_MS" \
    "$IMAGE" "$(df --output=fstype "$IMAGE" | tail -n1)"
printf '%s; %s; %s\n' "$("$QEMU" --version | head -n1)" "$("$QSD" --version | head -n1)" \
    "ember $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "medians over the runs in whose window others (processes, steal) took <= ${QUIET:-25}% of a CPU"
echo "(runs: counted/all); the best run's IOPS beside them"
for w in "${WORKLOADS[@]}"; do
    printf '\n%-18s %5s %9s %9s %9s %9s %9s %10s %10s\n' "$w" runs IOPS best MB/s exits/req \
        kicks/req "VMM us/req" "QSD us/req"
    for vmm in "${VMMS[@]}"; do
        printf '%-18s %5s %9s %9s %9s %9s %9s %10s %10s\n' "$vmm" "$(counted "$vmm" "$w")" \
            "$(fmt 0 "$(median "$vmm" "$w" 3)")" \
            "$(fmt 0 "$(best "$vmm" "$w" 3)")" \
            "$(fmt 1 "$(median "$vmm" "$w" 4)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 6 2)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 5 2)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 7 2 1000)")" \
            "$(fmt 3 "$(median "$vmm" "$w" 8 2 1000)")"
    done
done

echo
echo "IOPS ratios, of medians (of bests) (target: ember's front-end >= QEMU's at every point):"
for w in "${WORKLOADS[@]}"; do
    printf '  %-18s' "$w"
    for pair in ember-vhu:qemu-vhu ember-vhu-mmio:qemu-vhu-mmio ember-vhu:ember-blk ember-blk:qemu-blk; do
        a=${pair%:*}
        b=${pair#*:}
        [[ " ${VMMS[*]} " == *" $a "* && " ${VMMS[*]} " == *" $b "* ]] || continue
        printf '  %s/%s %s (%s)' "$a" "$b" "$(ratio median "$a" "$b" "$w")" "$(ratio best "$a" "$b" "$w")"
    done
    echo
done

relayed=$(cat "$OUT_DIR"/ember-vhu*.out.err 2>/dev/null |
    sed -nE 's/.* ([0-9]+) interrupts relayed from the back-end.*/\1/p' | sort -n | tail -n1)
echo
echo "interrupts ember relayed from the daemon's call eventfd (largest over the runs): ${relayed:-0}"
