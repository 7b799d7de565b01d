#!/usr/bin/env bash
# Resource bounds under hostile guests, measured: each hostile test guest runs under ember
# (and, where it can, under QEMU for comparison), and tests/guest/proc_watch.py samples the
# VMM every 100 ms until it exits:
#   - peak RSS (VmHWM), the guest RAM it was given, the part of it the guest touched (the
#     RSS of that mapping) and the rest: what the VMM itself held at its peak;
#   - each ember thread's CPU time (utime + stime from /proc/PID/task/*/stat, by name);
#   - the idle check: after its attacks every guest halts for IDLE_MS (idle_ms=, woken by a
#     100 ms timer only); no ember thread may use more than IDLE_CPU_MAX_MS of CPU meanwhile
#     (no thread spins while its device is idle).
# It prints a table and exits non-zero only if a bound is broken.
#
# Usage: bench/hostile.sh [-t pci|mmio] [-i IDLE_MS] [-n] [WORKLOAD...]
#   -t  the virtio transport (default pci; intx-shared is virtio-pci's and runs on pci)
#   -i  the idle window (default 2000 ms)
#   -n  ember only (no QEMU runs)
#   WORKLOAD: see -h's list (default: all)
# Environment: EMBER (build/ember), QEMU (qemu-system-x86_64), QBOOT.
# Needs root for the network workloads (a namespace with taps); they are left out otherwise.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
QEMU=${QEMU:-qemu-system-x86_64}
GUEST_DIR=$ROOT/build/guest
OUT_DIR=$ROOT/build/bench-hostile

# The bounds, fixed: ember's peak RSS may exceed the guest RAM the guest touched by
# RSS_EXCESS_MIB (what the VMM needs for itself, its buffers and its threads' stacks) - plus
# VSOCK_BUFFERS_MIB under the vsock workload, what 256 connections of 256 KiB may hold by
# design; and no ember thread may use more than IDLE_CPU_MAX_MS of CPU in the idle window
# (the clock tick is 10 ms: a thread that spins uses the whole window).
RSS_EXCESS_MIB=64
VSOCK_BUFFERS_MIB=64
IDLE_CPU_MAX_MS=50

TRANSPORT=pci
IDLE_MS=2000
WITH_QEMU=1
while getopts "t:i:nh" opt; do
    case $opt in
    t) TRANSPORT=$OPTARG ;;
    i) IDLE_MS=$OPTARG ;;
    n) WITH_QEMU=0 ;;
    *)
        sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        echo "workloads: rss-blk rss-net rss-vsock rss-console log-flood intx-shared bounds" \
            "virtio-hostile virtio-net-hostile lifecycle-blk lifecycle-console lifecycle-rng"
        exit 2
        ;;
    esac
done
shift $((OPTIND - 1))
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(rss-blk rss-net rss-vsock rss-console log-flood
    intx-shared bounds virtio-hostile virtio-net-hostile lifecycle-blk lifecycle-console
    lifecycle-rng)

make --no-print-directory -s -C "$ROOT" all guests >/dev/null || exit 1
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.out "$OUT_DIR"/*.err "$OUT_DIR"/*.watch

# The guest tests' helpers: QEMU machines and devices, the network namespace, the O_DIRECT
# directory, the vsock listener, QEMU's skip lists.
EXIT_ACTIONS=()
at_exit() { EXIT_ACTIONS+=("$1"); }
run_exit_actions() {
    local a
    for a in ${EXIT_ACTIONS[@]+"${EXIT_ACTIONS[@]}"}; do eval "$a"; done
}
trap run_exit_actions EXIT
trap 'exit 130' INT TERM
report() { :; }
VIRTIO_TRANSPORTS=("$TRANSPORT")
# shellcheck source=tests/guest/virtio.sh
. "$ROOT/tests/guest/virtio.sh"
# shellcheck source=tests/guest/net.sh
. "$ROOT/tests/guest/net.sh"
# shellcheck source=tests/guest/resources.sh
. "$ROOT/tests/guest/resources.sh"
if [ -e "$ROOT/tests/guest/lifecycle.sh" ]; then
    # shellcheck source=/dev/null
    . "$ROOT/tests/guest/lifecycle.sh"
fi

RES_CONSOLE_STALL=2 # the guest tests stall for less
TMP=$(mktemp -d /tmp/ember-hostile.XXXXXX)
at_exit 'rm -rf "$TMP"'
NET_OK=0
NET_WHY=$(net_missing)
if [ -z "$NET_WHY" ] && net_setup && command -v tc >/dev/null 2>&1 && net_bp_setup; then
    NET_OK=1
else
    NET_WHY=${NET_WHY:-${NET_SETUP_ERROR:-tc(8) not found}}
fi
VMM_PREFIX=()
NETNS=()
[ "$NET_OK" = 1 ] && NETNS=(ip netns exec "$NET_NS")

# ---- one run ----------------------------------------------------------------------------------

# run VMM NAME MEM_MIB STDIN STDOUT CMDLINE VMM-ARGS...: the guest NAME.elf under the VMM,
# watched; the watcher's report goes to $OUT_DIR/$RUN_ID.$VMM.watch. STDIN: a file or
# "trickle"; STDOUT: a file or FIFO. The command runs in the namespace when PREFIX is set.
PREFIX=()
run() {
    local vmm=$1 name=$2 mem=$3 input=$4 stdout=$5 cmdline=$6
    shift 6
    local base=$OUT_DIR/$RUN_ID.$vmm
    if [ "$vmm" = qemu ]; then
        local machine=()
        mapfile -t machine < <(qemu_machine "$TRANSPORT")
        local serial=(-serial stdio)
        case " $* " in *" -serial "*) serial=() ;; esac
        ${PREFIX[@]+"${PREFIX[@]}"} "$QEMU" "${machine[@]}" -nodefaults -no-user-config \
            -display none -enable-kvm -cpu host,-arch-capabilities \
            -device isa-debug-exit,iobase=0xf4,iosize=4 -m "$mem" "${serial[@]}" "$@" \
            -kernel "$GUEST_DIR/$name.elf" -append "$cmdline" \
            < <(run_input "$input") >"$stdout" 2>"$base.err" &
    else
        ${PREFIX[@]+"${PREFIX[@]}"} "$EMBER" run --kernel "$GUEST_DIR/$name.elf" --debug-exit \
            --memory "$mem" --transport "$TRANSPORT" --cmdline "$cmdline" "$@" \
            < <(run_input "$input") >"$stdout" 2>"$base.err" &
    fi
    local pid=$!
    python3 "$ROOT/tests/guest/proc_watch.py" --pid "$pid" --ram-mib "$mem" \
        --serial "${SERIAL:-$stdout}" --timeout 180 >"$base.watch" 2>&1
    wait "$pid"
    echo "$?" >"$base.status"
}

# A guest whose standard output is a pipe nobody reads for RES_CONSOLE_STALL seconds.
run_stalled() { # run_stalled VMM NAME MEM CMDLINE ARGS...
    local vmm=$1 fifo=$TMP/stdout.fifo out=$OUT_DIR/$RUN_ID.$1.out
    rm -f "$fifo"
    mkfifo "$fifo"
    (
        exec 3<"$fifo"
        sleep "$RES_CONSOLE_STALL"
        cat <&3 >"$out"
    ) &
    local reader=$!
    SERIAL=${SERIAL:-$out} run "$vmm" "$2" "$3" "" "$fifo" "$4" "${@:5}"
    wait "$reader"
}

# ---- the workloads ----------------------------------------------------------------------------

IDLE="idle_ms=$IDLE_MS"

# workload NAME: runs it under ember (and QEMU); false when it cannot run here (WHY says why).
workload() {
    local w=$1 vmm
    WHY=""
    RUN_ID=$w
    local vmms=(ember)
    [ "$WITH_QEMU" = 1 ] && vmms+=(qemu)
    case $w in
    rss-blk)
        if ! res_blk_image; then
            WHY="no directory here takes O_DIRECT"
            return 1
        fi
        local img=$RES_BLK_IMAGE
        local c="console=ttyS0 res_part=blk res_read_mib=$RES_BLK_WITHIN_MIB res_requests=2 $IDLE"
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                run qemu virtio-resources "$RES_MEM_MIB" "" "$OUT_DIR/$w.qemu.out" "$c" \
                    -drive "file=$img,if=none,id=d0,format=raw,cache=none,aio=io_uring" \
                    -device "$(qemu_dev "$TRANSPORT" blk),drive=d0"
            else
                run ember virtio-resources "$RES_MEM_MIB" "" "$OUT_DIR/$w.ember.out" "$c" \
                    --drive "path=$img,cache=none"
            fi
        done
        ;;
    rss-net)
        if [ "$NET_OK" != 1 ]; then
            WHY=$NET_WHY
            return 1
        fi
        local c="console=ttyS0 res_part=net net_host_mac=02:00:00:00:00:99 res_net_ms=1000 $IDLE"
        PREFIX=("${NETNS[@]}")
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                run qemu virtio-resources "$RES_MEM_MIB" "" "$OUT_DIR/$w.qemu.out" "$c" -netdev \
                    "tap,id=n0,ifname=$NET_BP_TAP,script=no,downscript=no,vhost=off,sndbuf=$NET_BP_SNDBUF" \
                    -device "$(qemu_dev "$TRANSPORT" net),netdev=n0,mac=$NET_MAC"
            else
                run ember virtio-resources "$RES_MEM_MIB" "" "$OUT_DIR/$w.ember.out" "$c" \
                    --net "tap=$NET_BP_TAP,mac=$NET_MAC,sndbuf=$NET_BP_SNDBUF"
            fi
        done
        PREFIX=()
        ;;
    rss-vsock)
        local uds=$TMP/vsock.sock
        rm -f "$uds" "${uds}_$RES_VSOCK_PORT" "$TMP/listener.ready"
        res_vsock_listener "${uds}_$RES_VSOCK_PORT" "$TMP/listener.ready" &
        local listener=$! _
        for _ in $(seq 1 100); do
            [ -s "$TMP/listener.ready" ] && break
            sleep 0.02
        done
        run ember virtio-resources "$RES_MEM_MIB" "" "$OUT_DIR/$w.ember.out" \
            "console=ttyS0 res_part=vsock vsock_port=$RES_VSOCK_PORT vsock_conns=300 $IDLE" \
            --vsock "cid=3,uds=$uds"
        kill "$listener" 2>/dev/null
        wait "$listener" 2>/dev/null
        ;;
    rss-console)
        local c="console=ttyS0 res_part=console res_console_mib=$RES_CONSOLE_MIB $IDLE"
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                SERIAL=$OUT_DIR/$w.qemu.serial run_stalled qemu virtio-resources "$RES_MEM_MIB" \
                    "$c" -serial "file:$OUT_DIR/$w.qemu.serial" \
                    -chardev stdio,id=con0,signal=off \
                    -device "$(qemu_dev "$TRANSPORT" serial)" -device virtconsole,chardev=con0
            else
                run_stalled ember virtio-resources "$RES_MEM_MIB" "$c" --console virtio
            fi
        done
        ;;
    log-flood | bounds)
        local name=virtio-$w extra=""
        [ "$w" = bounds ] && name=virtio-bounds
        head -c 65536 /dev/urandom >"$TMP/$w.img"
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                [ "$w" = log-flood ] && extra=$RES_FLOOD_QEMU
                [ "$w" = bounds ] && extra="bounds_skip=$QEMU_BOUNDS_SKIP"
                run qemu "$name" 128 "" "$OUT_DIR/$w.qemu.out" "console=ttyS0 $extra $IDLE" \
                    -drive "file=$TMP/$w.img,if=none,id=d0,format=raw" \
                    -device "$(qemu_dev "$TRANSPORT" blk),drive=d0" \
                    -object rng-random,id=rng0,filename=/dev/urandom \
                    -device "$(qemu_dev "$TRANSPORT" rng),rng=rng0"
            else
                run ember "$name" 128 "" "$OUT_DIR/$w.ember.out" "console=ttyS0 $IDLE" \
                    --drive "path=$TMP/$w.img" --rng
            fi
        done
        ;;
    intx-shared)
        local i qargs=() eargs=() saved=$TRANSPORT
        TRANSPORT=pci
        for i in $(seq 1 "$RES_INTX_DISKS"); do
            head -c 4096 /dev/zero >"$TMP/intx-$i.img"
            qargs+=(-drive "file=$TMP/intx-$i.img,if=none,id=d$i,format=raw"
                -device "$(qemu_dev pci blk),drive=d$i")
            eargs+=(--drive "path=$TMP/intx-$i.img")
        done
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                run qemu virtio-intx-shared 128 "" "$OUT_DIR/$w.qemu.out" "console=ttyS0 $IDLE" \
                    "${qargs[@]}"
            else
                run ember virtio-intx-shared 128 "" "$OUT_DIR/$w.ember.out" "console=ttyS0 $IDLE" \
                    "${eargs[@]}"
            fi
        done
        TRANSPORT=$saved
        ;;
    virtio-hostile)
        head -c $((1024 * 1024)) /dev/urandom >"$TMP/hostile.img"
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                SERIAL=$OUT_DIR/$w.qemu.serial run qemu virtio-hostile 128 trickle \
                    "$OUT_DIR/$w.qemu.out" "console=ttyS0 hostile_skip=$QEMU_HOSTILE_SKIP $IDLE" \
                    -serial "file:$OUT_DIR/$w.qemu.serial" \
                    -drive "file=$TMP/hostile.img,if=none,id=d0,format=raw" \
                    -device "$(qemu_dev "$TRANSPORT" blk),drive=d0" \
                    -object rng-random,id=rng0,filename=/dev/urandom \
                    -device "$(qemu_dev "$TRANSPORT" rng),rng=rng0" \
                    -chardev stdio,id=con0,signal=off \
                    -device "$(qemu_dev "$TRANSPORT" serial)" -device virtconsole,chardev=con0
            else
                run ember virtio-hostile 128 trickle "$OUT_DIR/$w.ember.out" "console=ttyS0 $IDLE" \
                    --drive "path=$TMP/hostile.img" --rng --console virtio
            fi
        done
        ;;
    virtio-net-hostile)
        if [ "$NET_OK" != 1 ]; then
            WHY=$NET_WHY
            return 1
        fi
        PREFIX=("${NETNS[@]}")
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                run qemu virtio-net-hostile 128 "" "$OUT_DIR/$w.qemu.out" \
                    "$(net_cmdline "net_skip=$QEMU_NET_HOSTILE_SKIP $IDLE")" \
                    -netdev "tap,id=n0,ifname=$NET_TAP,script=no,downscript=no,vhost=off" \
                    -device "$(qemu_dev "$TRANSPORT" net),netdev=n0,mac=$NET_MAC"
            else
                run ember virtio-net-hostile 128 "" "$OUT_DIR/$w.ember.out" \
                    "$(net_cmdline "$IDLE")" --net "tap=$NET_TAP,mac=$NET_MAC"
            fi
        done
        PREFIX=()
        ;;
    lifecycle-*)
        # The life-cycle guest, one device at a time, without the network and vsock devices
        # (their host sides are the guest test's).
        if [ ! -e "$GUEST_DIR/virtio-lifecycle.elf" ]; then
            WHY="no life-cycle guest (guest/virtio-lifecycle.c) here"
            return 1
        fi
        local dev=${w#lifecycle-}
        head -c $((1024 * 1024)) /dev/urandom >"$TMP/lifecycle.img"
        local c="console=ttyS0 lifecycle_only=$dev lifecycle_absent=net"
        for vmm in "${vmms[@]}"; do
            if [ "$vmm" = qemu ]; then
                SERIAL=$OUT_DIR/$w.qemu.serial run qemu virtio-lifecycle 128 trickle \
                    "$OUT_DIR/$w.qemu.out" \
                    "$c lifecycle_skip=${QEMU_LIFECYCLE_SKIP:-vsock} $IDLE" \
                    -serial "file:$OUT_DIR/$w.qemu.serial" \
                    -drive "file=$TMP/lifecycle.img,if=none,id=d0,format=raw" \
                    -device "$(qemu_dev "$TRANSPORT" blk),drive=d0,num-queues=2" \
                    -object rng-random,id=rng0,filename=/dev/urandom \
                    -device "$(qemu_dev "$TRANSPORT" rng),rng=rng0" \
                    -chardev stdio,id=con0,signal=off \
                    -device "$(qemu_dev "$TRANSPORT" serial)" -device virtconsole,chardev=con0
            else
                run ember virtio-lifecycle 128 trickle "$OUT_DIR/$w.ember.out" \
                    "$c lifecycle_skip=vsock $IDLE" --drive "path=$TMP/lifecycle.img,queues=2" \
                    --rng --console virtio
            fi
        done
        ;;
    *)
        WHY="unknown workload"
        return 1
        ;;
    esac
    return 0
}

# ---- the table --------------------------------------------------------------------------------

field() { awk -v k="$2" '$1 == k {print $2}' "$1" 2>/dev/null; }
mib() { awk -v k="${1:-0}" 'BEGIN {printf "%.1f", k / 1024}'; }

echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); transport $TRANSPORT;" \
    "idle window $IDLE_MS ms"
echo "# bounds: ember's peak RSS <= guest RAM touched + $RSS_EXCESS_MIB MiB (vsock: +" \
    "$VSOCK_BUFFERS_MIB MiB more); each ember thread <= $IDLE_CPU_MAX_MS ms CPU while idle"
broken=0
start=$(date +%s%N)
rows=()
for w in "${WORKLOADS[@]}"; do
    t0=$(date +%s%N)
    if ! workload "$w"; then
        rows+=("$(printf '%-19s %s' "$w" "skipped: $WHY")")
        continue
    fi
    secs=$(awk -v n=$(($(date +%s%N) - t0)) 'BEGIN {printf "%.1f", n / 1e9}')
    e=$OUT_DIR/$w.ember.watch q=$OUT_DIR/$w.qemu.watch
    peak=$(field "$e" peak_kb)
    guest=$(field "$e" guest_ram_kb)
    excess=$(field "$e" excess_kb)
    mem=$RES_MEM_MIB
    case $w in rss-*) ;; *) mem=128 ;; esac
    bound=$RSS_EXCESS_MIB
    [ "$w" = rss-vsock ] && bound=$((RSS_EXCESS_MIB + VSOCK_BUFFERS_MIB))
    verdict=ok
    if [ -z "$peak" ]; then
        verdict="no samples"
        broken=1
    elif [ "$excess" -gt $((bound * 1024)) ]; then
        verdict="RSS BOUND BROKEN"
        broken=1
    fi
    window=$(field "$e" idle_window_ms)
    idle_max=$(awk 'BEGIN {m = -1} $1 == "idle" && $3 > m {m = $3; n = $2} END {if (n != "") print m " " n}' "$e")
    if [ -z "$window" ]; then
        idle_text="no idle window"
        [ "$verdict" = ok ] && verdict="guest did not reach its idle window"
    else
        idle_text="${idle_max% *} ms ${idle_max#* } (of $window)"
        if [ "${idle_max% *}" -gt "$IDLE_CPU_MAX_MS" ]; then
            verdict="IDLE BOUND BROKEN"
            broken=1
        fi
    fi
    qpeak=$(field "$q" peak_kb)
    status=$(cat "$OUT_DIR/$w.ember.status" 2>/dev/null)
    [ "$status" = 1 ] || verdict="$verdict; guest status $status"
    rows+=("$(printf '%-19s %8s %6s %8s %8s %6s  %-26s %8s %6s  %s' "$w" "$(mib "$peak")" "$mem" \
        "$(mib "$guest")" "$(mib "$excess")" "$bound" "$idle_text" \
        "${qpeak:+$(mib "$qpeak")}" "$secs" "$verdict")")
    rows+=("$(printf '%-19s threads (CPU ms): %s' "" \
        "$(awk '$1 == "thread" {printf "%s %s, ", $2, $3}' "$e" | sed 's/, $//')")")
done
echo
printf '%-19s %8s %6s %8s %8s %6s  %-26s %8s %6s  %s\n' workload "peak" "RAM" "touched" \
    "rest" "bound" "idle: busiest thread" "QEMU" "time" "verdict"
printf '%-19s %8s %6s %8s %8s %6s  %-26s %8s %6s\n' "" MiB MiB MiB MiB MiB "" "peak MiB" s
printf '%s\n' "${rows[@]}"
echo
echo "# took $((($(date +%s%N) - start) / 1000000000)) s; VMM output and samples in $OUT_DIR"
if [ "$broken" = 1 ]; then
    echo "a bound is broken"
    exit 1
fi
