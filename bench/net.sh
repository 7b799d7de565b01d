#!/usr/bin/env bash
# virtio-net packet rates: the net-perf guest (guest/net-perf.c, a poll-mode driver whose hot
# loop runs at CPL3) under ember (virtio-pci and virtio-mmio) and QEMU (q35 with qboot for
# virtio-pci, microvm for virtio-mmio; -netdev tap,vhost=off: QEMU's own user-space virtio-net),
# on a tap in a network namespace made for the run, and KVM's exit counters per packet.
#
# Usage: bench/net.sh [-t MS] [-r RUNS] [-o OUT_DIR] [VMM...]
#   -t MS    time per workload (default 2000)
#   -r RUNS  runs per VMM, interleaved; the table shows each workload's best (default 1)
#   VMM      ember-pci ember-mmio qemu-pci qemu-mmio (default: all four); ember-pci-reserved and
#            ember-mmio-reserved: ember placing its threads itself as PIN does (--cpu-placement
#            vmm=IO_CPU,vcpu=VCPU_CPU), its I/O threads then polling the rings
# Environment: EMBER (default build/ember), QEMU (qemu-system-x86_64), QBOOT
#   (/usr/share/qemu/qboot.rom), NETGEN_NICE (the generator's nice value, default 19),
#   PIN (1: pin threads as below, the default; 0: leave them to the scheduler),
#   EMBER_NET_OPTS (appended to ember's --net, e.g. ",tx-pps=100000").
# Needs root (network namespace, tap, packet socket).
#
# Workloads (frame sizes without the virtio-net header and without an FCS):
#   tx-64, tx-1500  the guest keeps its transmit queue full of frames for the tap's MAC with an
#                   ethertype nobody handles; the host counts what the tap received (its
#                   rx_packets), the guest what the device gave back;
#   rx-64, rx-1500  bench/netgen (an AF_PACKET socket on the tap, sendmmsg of 64 frames at a
#                   time, no qdisc) injects frames for the guest's MAC as fast as the kernel
#                   takes them, from the guest's "begin" line to the end of the workload; the
#                   guest counts what it received in its timed window; the tap's tx_dropped
#                   counts what the VMM did not read in time;
#   bidi-64         both at once: the guest keeps transmitting as in tx-64 while netgen injects
#                   as in rx-64; the guest counts both ways. Shows that neither direction starves
#                   the other.
# Exits: as bench/blk.sh, KVM's binary statistics (kvmstat-preload.so in the VMM, read with
# bench/kvmstat) in the quiet periods the guest leaves around each workload, divided by the
# frames the guest counted. Host CPU per packet: the CPU time of the VMM's threads other than
# the vCPU (/proc/PID/task/*/stat) over the same period, divided by the frames.
#
# Two host CPUs carry the spinning vCPU, the VMM's other threads and, for rx, the generator.
# Left to the scheduler, the vCPU loses its CPU now and then, its receive ring fills and the
# figures swing by 50% from run to run; so the vCPU thread (ember "vcpu0", QEMU "CPU 0/KVM"
# with -name debug-threads=on) gets CPU 1 to itself and everything else shares CPU 0, where
# the generator runs at the lowest priority (nice 19): it fills the time the VMM leaves.
# Other load on the machine still shows: use -r and compare interleaved runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
QEMU=${QEMU:-qemu-system-x86_64}
QBOOT=${QBOOT:-/usr/share/qemu/qboot.rom}
NETGEN_NICE=${NETGEN_NICE:-19}
PIN=${PIN:-1}
VCPU_CPU=1
IO_CPU=0
[ "$(nproc)" -ge 2 ] || PIN=0
GUEST=$ROOT/build/guest/net-perf.elf
RUN_MS=2000
SETTLE_MS=1000 # quiet time around each workload: the counters are read in its middle
RUNS=1
OUT_DIR=$ROOT/build/bench-net
COUNTERS=(exits mmio_exits io_exits irq_exits halt_exits irq_injections)
GUEST_MAC=52:54:00:00:00:42
TAP=tap0
WORKLOADS=(tx-64 tx-1500 rx-64 rx-1500 bidi-64)

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
VMMS=("$@")
[ ${#VMMS[@]} -gt 0 ] || VMMS=(ember-pci ember-mmio qemu-pci qemu-mmio)
if [ "$(id -u)" != 0 ]; then
    echo "bench/net.sh needs root (network namespace, tap, packet socket)" >&2
    exit 2
fi

make -s -C "$ROOT" all >/dev/null
make -s -C "$ROOT/guest" O="$ROOT/build/guest" >/dev/null
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.results "$OUT_DIR"/*.raw "$OUT_DIR"/*.out "$OUT_DIR"/*.err "$OUT_DIR"/*.gen

NETGEN=$ROOT/build/netgen
cc -std=c11 -Wall -Wextra -Werror -O2 -o "$NETGEN" "$ROOT/bench/netgen.c"
. "$ROOT/bench/counters.sh"
counters_build

# The namespace and its tap: no address (nothing is routed), IPv6 off (no chatter).
NS=ember-bench-$$
GEN_PID=""
cleanup() {
    [ -z "$GEN_PID" ] || kill "$GEN_PID" 2>/dev/null || true
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev "$TAP" mode tap
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link set "$TAP" up
HOST_MAC=$(ip -n "$NS" -o link show "$TAP" | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')

QEMU_BASE=(-name debug-threads=on -nodefaults -no-user-config -display none -enable-kvm
    -cpu host,-arch-capabilities
    -device isa-debug-exit,iobase=0xf4,iosize=4 -m 128 -serial stdio
    -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no,vhost=off")

start_vmm() { # start_vmm VMM OUT -> VMM_PID
    local cmdline="console=ttyS0 perf_ms=$RUN_MS perf_settle_ms=$SETTLE_MS net_host_mac=$HOST_MAC"
    [ -z "${PERF_ONLY:-}" ] || cmdline="$cmdline perf_only=$PERF_ONLY"
    if [ "$have_counters" = 1 ]; then export LD_PRELOAD=$PRELOAD; fi
    case $1 in
    ember-pci | ember-mmio | ember-pci-reserved | ember-mmio-reserved)
        local transport=${1#ember-} placed=()
        transport=${transport%-reserved}
        [[ $1 == *-reserved ]] && placed=(--cpu-placement "vmm=$IO_CPU,vcpu=$VCPU_CPU")
        ip netns exec "$NS" "$EMBER" run --kernel "$GUEST" --debug-exit \
            --transport "$transport" --log-level info "${placed[@]}" \
            --net "tap=$TAP,mac=$GUEST_MAC${EMBER_NET_OPTS:-}" \
            --cmdline "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-pci)
        local bios=()
        [ -r "$QBOOT" ] && bios=(-bios "$QBOOT")
        ip netns exec "$NS" "$QEMU" -M q35 "${bios[@]}" "${QEMU_BASE[@]}" \
            -device "virtio-net-pci,netdev=n0,mac=$GUEST_MAC,disable-legacy=on" \
            -kernel "$GUEST" -append "$cmdline" </dev/null >"$2" 2>"$2.err" &
        ;;
    qemu-mmio)
        ip netns exec "$NS" "$QEMU" -M microvm,x-option-roms=off,rtc=off,acpi=off \
            "${QEMU_BASE[@]}" -global virtio-mmio.force-legacy=false \
            -device "virtio-net-device,netdev=n0,mac=$GUEST_MAC" \
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

now_ms() { echo $(($(date +%s%N) / 1000000)); }

sleep_until() { # sleep_until MS (a now_ms time)
    local left=$(($1 - $(now_ms)))
    [ "$left" -le 0 ] || sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
}

is_vcpu() { # is_vcpu COMM
    case $1 in vcpu* | "CPU "*/KVM) return 0 ;; *) return 1 ;; esac
}

# The vCPU thread on VCPU_CPU alone, every other thread of the VMM on IO_CPU.
pin_threads() { # pin_threads PID
    [ "$PIN" = 1 ] || return 0
    local t comm
    for t in /proc/"$1"/task/*; do
        comm=$(cat "$t/comm" 2>/dev/null) || continue
        if is_vcpu "$comm"; then
            taskset -pc "$VCPU_CPU" "${t##*/}" >/dev/null
        else
            taskset -pc "$IO_CPU" "${t##*/}" >/dev/null
        fi
    done
}

# Clock ticks of CPU time used by the VMM's threads other than the vCPU (one process: the
# snapshots must be quick).
io_ticks() { # io_ticks PID
    awk '{ comm = $0; sub(/^[0-9]+ \(/, "", comm); sub(/\) [A-Z] .*/, "", comm)
           rest = $0; sub(/.*\) /, "", rest); split(rest, f, " ")
           if (comm !~ /^vcpu/ && comm !~ /^CPU .*\/KVM$/) total += f[12] + f[13] }
         END { print total + 0 }' /proc/"$1"/task/*/stat 2>/dev/null || echo -
}

# "exits mmio_exits ... tap_rx tap_tx tap_tx_dropped io_ticks": KVM's counters (if readable),
# the tap's statistics and the VMM's CPU time outside the vCPU, one number each.
read_counters() { # read_counters PID
    local c stats values=()
    if [ "$have_counters" = 1 ] && stats=$("$KVMSTAT" "$1" 2>/dev/null); then
        for c in "${COUNTERS[@]}"; do
            values+=("$(echo "$stats" | awk -v c="$c" '$1 == c {print $2}' | grep . || echo 0)")
        done
    else
        for c in "${COUNTERS[@]}"; do values+=(-); done
    fi
    # The tap's counters through the VMM's own view of its namespace (no process to start).
    local tap
    tap=$(awk -v t="$TAP" '{ sub(":", " ") } $1 == t { print $3, $11, $13 }' \
        /proc/"$1"/net/dev 2>/dev/null)
    # shellcheck disable=SC2206 # three numbers
    values+=(${tap:-- - -})
    values+=("$(io_ticks "$1")")
    echo "${values[*]}"
}

start_gen() { # start_gen SIZE OUT
    local pin=()
    [ "$PIN" = 1 ] && pin=(taskset -c "$IO_CPU")
    ip netns exec "$NS" ${pin[@]+"${pin[@]}"} nice -n "$NETGEN_NICE" "$NETGEN" -i "$TAP" \
        -s "$1" -d "$GUEST_MAC" >"$2" 2>&1 &
    GEN_PID=$!
}

stop_gen() {
    [ -n "$GEN_PID" ] || return 0
    kill -INT "$GEN_PID" 2>/dev/null || true
    wait "$GEN_PID" 2>/dev/null || true
    GEN_PID=""
}

# run_vmm VMM RUN: runs the guest, snapshots the counters around each workload, and writes
# "WORKLOAD FRAMES PPS KICKS OTHER | DELTAS... | GEN_PPS" lines to OUT_DIR/VMM.RUN.results.
run_vmm() {
    local vmm=$1 out=$OUT_DIR/$1.$2.out res=$OUT_DIR/$1.$2.results
    : >"$res"
    : >"$out"
    start_vmm "$vmm" "$out"
    local pid=$VMM_PID seen=0 deadline=$((SECONDS + 60 + 8 * RUN_MS / 1000)) pinned=0
    while kill -0 "$pid" 2>/dev/null; do
        # Every thread exists once the guest has set its device up.
        if [ "$pinned" = 0 ] && grep -aq '^net-perf: device ' "$out"; then
            pin_threads "$pid"
            pinned=1
        fi
        if [ $SECONDS -gt $deadline ]; then
            echo "# $vmm: no end in sight; stopping it" >&2
            kill "$pid"
            break
        fi
        local lines count
        lines=$(grep -a $'^net-perf: begin [^ ]* settle_ms=[0-9]* run_ms=[0-9]*\r$' "$out" |
            tr -d '\r' || true)
        count=$(printf '%s' "$lines" | grep -c . || true)
        if [ "$count" -gt "$seen" ]; then
            seen=$count
            local line name settle run before after gen="" begin
            begin=$(now_ms)
            line=$(printf '%s\n' "$lines" | tail -n1)
            read -r _ _ name settle run <<<"$line"
            settle=${settle#settle_ms=}
            run=${run#run_ms=}
            case $name in rx-* | bidi-*) start_gen "${name#*-}" "$OUT_DIR/$vmm.$2.$name.gen" ;; esac
            # Halfway into the quiet time before the run and into the one after, counted from
            # when the line was seen (the snapshots take time of their own).
            sleep_until $((begin + settle / 2))
            before=$(read_counters "$pid")
            sleep_until $((begin + settle * 3 / 2 + run))
            after=$(read_counters "$pid")
            if [ -n "$GEN_PID" ]; then
                stop_gen
                gen=$(sed -n 's/.*(\([0-9]*\) pps).*/\1/p' "$OUT_DIR/$vmm.$2.$name.gen")
            fi
            echo "$name $before | $after | ${gen:--}" >>"$res.raw"
        fi
        sleep 0.02
    done
    wait "$pid" || true
    stop_gen
    local name frames pps kicks other rx
    while read -r name frames pps kicks other rx; do
        local raw deltas="" b a i gen
        raw=$(grep "^$name " "$res.raw" 2>/dev/null | tail -n1 || true)
        read -ra b <<<"$(echo "$raw" | cut -d'|' -f1 | cut -d' ' -f2-)"
        read -ra a <<<"$(echo "$raw" | cut -d'|' -f2)"
        gen=$(echo "$raw" | cut -d'|' -f3 | tr -d ' ')
        if [ ${#b[@]} = ${#a[@]} ] && [ ${#a[@]} -gt 0 ]; then
            for i in "${!a[@]}"; do
                if [ "${a[i]}" = - ] || [ "${b[i]}" = - ]; then
                    deltas="$deltas -"
                else
                    deltas="$deltas $((a[i] - b[i]))"
                fi
            done
        else
            echo "# $vmm: $name: counters not read in time" >&2
        fi
        echo "$name $frames $pps $kicks $other |$deltas | ${gen:--} ${rx:--}" >>"$res"
    done < <(tr -d '\r' <"$out" | sed -nE \
        's/^net-perf: result ([^ ]+) frames=([0-9]+) .* pps=([0-9]+) .*kicks=([0-9]+) other=([0-9]+)( rx_frames=([0-9]+))?.*/\1 \2 \3 \4 \5 \7/p')
    rm -f "$res.raw"
    if ! tr -d '\r' <"$out" | grep -q '^ok 1 '; then
        echo "# $vmm run $2: the guest did not finish cleanly; see $out" >&2
    fi
}

for run in $(seq 1 "$RUNS"); do
    for vmm in "${VMMS[@]}"; do
        echo "# running $vmm ($run/$RUNS)" >&2
        run_vmm "$vmm" "$run"
    done
done

# ---- the table ------------------------------------------------------------------------------

best() { # best VMM WORKLOAD -> the result line with the highest pps over the runs
    cat "$OUT_DIR/$1".*.results 2>/dev/null | awk -v w="$2" '$1 == w' | sort -k3,3n | tail -n1 || true
}

# Field positions in a result line: name frames pps kicks other | exits... tap_rx tap_tx
# tap_tx_dropped io_ticks | gen rx_frames
NC=${#COUNTERS[@]}
TAP_RX=$((6 + NC)) TAP_TX=$((7 + NC)) TAP_DROP=$((8 + NC)) IO_TICKS=$((9 + NC)) GEN=$((11 + NC))
RX_FRAMES=$((12 + NC))
TICK_US=$((1000000 / $(getconf CLK_TCK)))
field() { # field LINE INDEX (0-based over the whitespace-split words)
    local f
    read -ra f <<<"$1"
    echo "${f[$2]:-}"
}
per() { # per A B [SCALE] -> A*SCALE/B with 2 decimals, or "-"
    if [ -z "$1" ] || [ "$1" = - ] || [ -z "$2" ] || [ "$2" = 0 ]; then
        echo -
    else
        awk "BEGIN {printf \"%.2f\", $1 * ${3:-1} / $2}"
    fi
}

printf '\n%-8s' ""
for vmm in "${VMMS[@]}"; do printf ' | %-27s' "$vmm"; done
printf '\n%-8s' "workload"
for vmm in "${VMMS[@]}"; do printf ' | %8s %8s %9s' pps exits/pk "cpu us/pk"; done
echo
for w in "${WORKLOADS[@]}"; do
    printf '%-8s' "$w"
    for vmm in "${VMMS[@]}"; do
        line=$(best "$vmm" "$w")
        if [ -z "$line" ]; then
            printf ' | %8s %8s %9s' - - -
            continue
        fi
        frames=$(field "$line" 1)
        printf ' | %8s %8s %9s' "$(field "$line" 2)" "$(per "$(field "$line" 6)" "$frames")" \
            "$(per "$(field "$line" $IO_TICKS)" "$frames" "$TICK_US")"
    done
    echo
done
echo
echo "pps: frames per second the guest counted in its timed window; exits/pk: KVM exits per"
echo "frame; cpu us/pk: CPU time of the VMM's threads other than the vCPU per frame (the VMM's"
echo "own cost on the host, kernel included). Frames counted on the tap over the workload and"
echo "its quiet periods:"
for w in "${WORKLOADS[@]}"; do
    for vmm in "${VMMS[@]}"; do
        line=$(best "$vmm" "$w")
        [ -n "$line" ] || continue
        case $w in
        tx-*)
            printf '  %-8s %-11s guest sent %s, the tap received %s\n' "$w" "$vmm" \
                "$(field "$line" 1)" "$(field "$line" $TAP_RX)"
            ;;
        rx-*)
            tx=$(field "$line" $TAP_TX)
            drop=$(field "$line" $TAP_DROP)
            printf '  %-8s %-11s offered %s (netgen: %s pps taken), the VMM read %s, the tap dropped %s; the guest counted %s (+%s of another size)\n' \
                "$w" "$vmm" "$((tx + drop))" "$(field "$line" $GEN)" "$tx" "$drop" \
                "$(field "$line" 1)" "$(field "$line" 4)"
            ;;
        bidi-*)
            printf '  %-8s %-11s guest sent %s (the tap received %s) and received %s of the %s netgen offered\n' \
                "$w" "$vmm" "$(field "$line" 1)" "$(field "$line" $TAP_RX)" \
                "$(field "$line" $RX_FRAMES)" "$(($(field "$line" $TAP_TX) + $(field "$line" $TAP_DROP)))"
            ;;
        esac
    done
done
echo
echo "ember / QEMU packets per second (ember-TRANSPORT-reserved: ember's own placement with polling):"
for w in "${WORKLOADS[@]}"; do
    printf '  %-8s' "$w"
    for t in pci mmio pci-reserved mmio-reserved; do
        e=$(best "ember-$t" "$w" | awk '{print $3}')
        q=$(best "qemu-${t%-reserved}" "$w" | awk '{print $3}')
        if [ -n "$e" ] && [ -n "$q" ] && [ "$q" != 0 ]; then
            printf '  %s %.2fx' "$t" "$(awk "BEGIN {print $e / $q}")"
        fi
    done
    echo
done
if [ "$have_counters" = 1 ]; then
    echo
    echo "KVM exits per frame (${COUNTERS[*]}), and the guest's kicks per frame:"
    for w in "${WORKLOADS[@]}"; do
        for vmm in "${VMMS[@]}"; do
            line=$(best "$vmm" "$w")
            [ -n "$line" ] || continue
            read -ra f <<<"$line"
            printf '  %-8s %-11s' "$w" "$vmm"
            for i in "${!COUNTERS[@]}"; do
                printf ' %s=%s' "${COUNTERS[$i]}" "$(per "${f[$((6 + i))]:-}" "${f[1]}")"
            done
            printf ' kicks=%s\n' "$(per "${f[3]}" "${f[1]}")"
        done
    done
fi
echo
echo "target: ember >= 1.2x QEMU's packets per second at 64 bytes:"
for t in pci mmio; do
    for w in tx-64 rx-64; do
        e=$(best "ember-$t" "$w" | awk '{print $3}')
        q=$(best "qemu-$t" "$w" | awk '{print $3}')
        if [ -n "$e" ] && [ -n "$q" ] && [ "$q" != 0 ]; then
            printf '  virtio-%s %s: %.2fx\n' "$t" "$w" "$(awk "BEGIN {print $e / $q}")"
        fi
    done
done
