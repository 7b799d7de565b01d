#!/usr/bin/env bash
# Guest-core noise: how often, and for how long, a vCPU loses its host CPU while another VM on
# the same host does I/O, without and with ember's reserved-core placement. Two ember VMs at once
# on this 2-CPU host:
#   A  the jitter guest (guest/jitter.c): a TSC loop at CPL3 (native here), interrupts off, no
#      exits, which reports the largest gap between two consecutive reads, the gaps over 10 us and
#      their sum (time its vCPU did not run);
#   B  the blk-perf guest (guest/blk-perf.c): 4 KiB random reads at queue depth 32 (a CPL3
#      poll-mode driver) on a virtio-blk drive, a 128 MiB file in build/ (page cache), started
#      first and still reading when A's loop ends (its IOPS is over its own run).
# Scenarios, side by side, both in every round (which goes first alternates):
#   default  no --cpu-placement: the host's scheduler puts every thread where it likes;
#   placed   A --cpu-placement vmm=1,vcpu=0, B confined to CPU 1 (taskset -c 1: ember refuses a
#            placement whose vmm and vcpu sets overlap, and B has only CPU 1 left): CPU 0 runs A's
#            vCPU and no other thread of either ember (other processes may still run there).
# From the host, in a window that holds A's whole loop and nothing but CPL3 spinning (it opens
# and closes in the guest's quiet spins around the loop, jitter.settle_ms=): A's vCPU thread's
# run delay (time runnable but not running) and timeslices (/proc/PID/task/TID/schedstat), its
# voluntary and involuntary context switches (.../status) and migrations (.../sched); the time
# other work got on A's CPU: its busy time in /proc/stat (user+nice+system+irq+softirq, 10 ms
# ticks, so +-20 ms) less A's vCPU's run time there, and its steal (time the host's own
# hypervisor took the CPU away, which no placement here can prevent); where A's and B's vCPUs
# were (their threads' CPU, /proc/.../stat field 39, sampled every 10 ms). "A's CPU" is CPU 0
# when placed; unplaced, each CPU weighted by how often A's vCPU was seen there. The sampling
# runs on CPU 1 (taskset) in both scenarios. Medians over the rounds.
#
# Usage: bench/jitter.sh [-t MS] [-r ROUNDS] [-o OUT_DIR]
#   -t MS      A's measured loop, 1-60000 (default 2000)
#   -r ROUNDS  rounds (default 5)
#   -o DIR     logs and per-round results (default build/bench-jitter)
# Environment: EMBER (default build/ember), IMAGE (default build/jitter-bench.img; one this script
#   made is removed at the end unless KEEP_IMAGE=1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
IMAGE=${IMAGE:-$ROOT/build/jitter-bench.img}
GUESTS=$ROOT/build/guest
RUN_MS=2000
ROUNDS=5
OUT_DIR=$ROOT/build/bench-jitter
SETTLE_MS=300     # A's quiet spins before and after its loop; the window opens halfway into one
B_MARGIN_MS=2000  # B reads this much longer than A's spins and loop: A's boot, slow polling
SAMPLE_S=0.01     # where the vCPUs are, every 10 ms
WAIT_S=30         # for a guest's line to appear

while getopts "t:r:o:h" opt; do
    case $opt in
    t) RUN_MS=$OPTARG ;;
    r) ROUNDS=$OPTARG ;;
    o) OUT_DIR=$OPTARG ;;
    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 2
        ;;
    esac
done
if ! [[ $RUN_MS =~ ^[0-9]+$ ]] || [ "$RUN_MS" -lt 1 ] || [ "$RUN_MS" -gt 60000 ]; then
    echo "-t: milliseconds from 1 to 60000, not '$RUN_MS'" >&2
    exit 2
fi
if ! [[ $ROUNDS =~ ^[0-9]+$ ]] || [ "$ROUNDS" -lt 1 ] || [ "$ROUNDS" -gt 100 ]; then
    echo "-r: rounds from 1 to 100, not '$ROUNDS'" >&2
    exit 2
fi
if ! command -v taskset >/dev/null; then
    echo "bench/jitter.sh needs taskset (util-linux)" >&2
    exit 2
fi
if [ "$(nproc --all)" -lt 2 ]; then
    echo "bench/jitter.sh needs 2 host CPUs (it places A's vCPU on CPU 0, the rest on CPU 1)" >&2
    exit 2
fi

make -s -C "$ROOT" all >/dev/null
make -s -C "$ROOT/guest" O="$GUESTS" >/dev/null
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/*.result "$OUT_DIR"/*.raw "$OUT_DIR"/*.out "$OUT_DIR"/*.err

. "$ROOT/bench/counters.sh"

# The VMs this script started, ended whatever way it ends; and the image it made.
STARTED=()
cleanup() {
    local p
    for p in ${STARTED[@]+"${STARTED[@]}"}; do kill "$p" 2>/dev/null || true; done
    if [ "${MADE_IMAGE:-0}" = 1 ] && [ "${KEEP_IMAGE:-0}" != 1 ]; then rm -f "$IMAGE"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Written out (not sparse) and read once, so that B's reads come from the page cache.
if [ ! -f "$IMAGE" ] || [ "$(stat -c %s "$IMAGE")" != $((128 << 20)) ]; then
    dd if=/dev/zero of="$IMAGE" bs=1M count=128 status=none
    MADE_IMAGE=1
fi
cat "$IMAGE" >/dev/null


# wait_line FILE REGEX PID: until FILE has a whole line (serial lines end in \r) matching REGEX;
# false if PID ends or WAIT_S passes first.
wait_line() {
    local deadline=$((SECONDS + WAIT_S))
    until grep -qaE "$2"$'\r$' "$1"; do
        kill -0 "$3" 2>/dev/null || return 1
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.01
    done
}

# cpu_ticks: "cpuN BUSY STEAL" for each host CPU, from /proc/stat (clock ticks).
cpu_ticks() {
    awk '$1 ~ /^cpu[0-9]+$/ {print $1, $2 + $3 + $4 + $7 + $8, $9}' /proc/stat
}

# monitor A_PID A_TID B_PID B_TID A_OUT: the host-side window, on CPU 1. Prints raw lines:
#   start/end RUN_NS DELAY_NS SLICES VOLUNTARY INVOLUNTARY MIGRATIONS   (A's vCPU)
#   start/end cpuN BUSY STEAL                                           (/proc/stat)
#   bown START_NS END_NS                    (B's threads other than its vCPU: CPU time)
#   window NS; seen a|b cpuN COUNT (samples); overran 0|1 (A's result line already out at the end)
monitor() {
    local a_pid=$1 a_tid=$2 b_pid=$3 b_tid=$4 a_out=$5 line f
    taskset -pc 1 "$BASHPID" >/dev/null
    declare -A seen_a=() seen_b=()
    wait_line "$a_out" '^jitter: begin ms=[0-9]+ settle_ms=[0-9]+ tsc_khz=[0-9]+' "$a_pid" || return 1
    sleep "$(ms_to_s $((SETTLE_MS / 2)))"
    local t0=${EPOCHREALTIME/./} b0
    echo "start $(thread_sched "$a_pid" "$a_tid")"
    cpu_ticks | sed 's/^/start /'
    b0=$(cpu_ns "$b_pid" own)
    local deadline=$((t0 + (RUN_MS + SETTLE_MS) * 1000))
    while [ "${EPOCHREALTIME/./}" -lt "$deadline" ]; do
        if read -r line <"/proc/$a_pid/task/$a_tid/stat" 2>/dev/null; then
            read -ra f <<<"${line##*) }"
            seen_a[cpu${f[36]}]=$((${seen_a[cpu${f[36]}]:-0} + 1))
        fi
        if read -r line <"/proc/$b_pid/task/$b_tid/stat" 2>/dev/null; then
            read -ra f <<<"${line##*) }"
            seen_b[cpu${f[36]}]=$((${seen_b[cpu${f[36]}]:-0} + 1))
        fi
        sleep "$SAMPLE_S"
    done
    local t1=${EPOCHREALTIME/./}
    echo "end $(thread_sched "$a_pid" "$a_tid")"
    cpu_ticks | sed 's/^/end /'
    echo "bown $b0 $(cpu_ns "$b_pid" own)"
    echo "window $(((t1 - t0) * 1000))"
    for f in "${!seen_a[@]}"; do echo "seen a $f ${seen_a[$f]}"; done
    for f in "${!seen_b[@]}"; do echo "seen b $f ${seen_b[$f]}"; done
    echo "overran $(grep -qa '^jitter: ms=' "$a_out" && echo 1 || echo 0)"
    echo "b_alive $(kill -0 "$b_pid" 2>/dev/null && echo 1 || echo 0)"
}

# run_scenario SCENARIO ROUND: B, then A, the window; writes OUT_DIR/SCENARIO.ROUND.result
# (key=value) or says why it could not.
run_scenario() {
    local sc=$1 round=$2 tag=$1.$2 a_place=() b_place=()
    local a_out=$OUT_DIR/$tag.a.out b_out=$OUT_DIR/$tag.b.out raw=$OUT_DIR/$tag.raw
    if [ "$sc" = placed ]; then
        # shellcheck disable=SC2054 # one argument, commas and all
        a_place=(--cpu-placement vmm=1,vcpu=0)
        b_place=(taskset -c 1)
    fi
    : >"$a_out"
    : >"$b_out"
    ${b_place[@]+"${b_place[@]}"} "$EMBER" run --kernel "$GUESTS/blk-perf.elf" --debug-exit \
        --drive "path=$IMAGE" --cmdline "console=ttyS0 perf_only=randread-4k-qd32 \
perf_ms=$((RUN_MS + 2 * SETTLE_MS + B_MARGIN_MS)) perf_settle_ms=0" \
        </dev/null >"$b_out" 2>"$b_out.err" &
    local b_pid=$!
    STARTED+=("$b_pid")
    if ! wait_line "$b_out" '^blk-perf: begin randread-4k-qd32 .*' "$b_pid"; then
        echo "# $tag: B never began its reads; see $b_out" >&2
        kill "$b_pid" 2>/dev/null || true
        wait "$b_pid" 2>/dev/null || true
        return
    fi
    "$EMBER" run --kernel "$GUESTS/jitter.elf" --debug-exit ${a_place[@]+"${a_place[@]}"} \
        --cmdline "console=ttyS0 jitter.ms=$RUN_MS jitter.settle_ms=$SETTLE_MS" \
        </dev/null >"$a_out" 2>"$a_out.err" &
    local a_pid=$! a_tid="" b_tid i
    STARTED+=("$a_pid")
    b_tid=$(vcpu_tid "$b_pid" 0)
    for i in $(seq 1 500); do
        a_tid=$(vcpu_tid "$a_pid" 0)
        [ -z "$a_tid" ] || break
        kill -0 "$a_pid" 2>/dev/null || break
        sleep 0.01
    done
    if [ -z "$a_tid" ] || [ -z "$b_tid" ] ||
        ! (monitor "$a_pid" "$a_tid" "$b_pid" "$b_tid" "$a_out" >"$raw"); then
        echo "# $tag: the window was not measured (A's or B's vCPU missing, or A never began); see $a_out" >&2
    fi
    local a_status=0 b_status=0
    wait "$a_pid" || a_status=$?
    wait "$b_pid" || b_status=$?
    if [ "$a_status" != 1 ] || [ "$b_status" != 1 ]; then
        echo "# $tag: A exited with $a_status, B with $b_status (1 is a clean end); see $OUT_DIR/$tag.*" >&2
        return
    fi
    local result iops
    result=$(tr -d '\r' <"$a_out" | grep -m1 '^jitter: ms=' || true)
    iops=$(tr -d '\r' <"$b_out" | sed -nE 's/^blk-perf: result randread-4k-qd32 .* iops=([0-9]+) .*/\1/p')
    if [ -z "$result" ] || ! grep -q '^start [0-9]' "$raw" || ! grep -q '^end [0-9]' "$raw"; then
        echo "# $tag: no result from A, or its vCPU's statistics not read; see $a_out, $raw" >&2
        return
    fi
    # Per round: the guest's figures, and the window's deltas. A's CPU share of each CPU is
    # the fraction of samples that found its vCPU there.
    awk -v result="$result" -v iops="${iops:-0}" -v hz="$(getconf CLK_TCK)" '
        $1 == "start" && $2 ~ /^cpu/ { busy0[$2] = $3; steal0[$2] = $4; next }
        $1 == "end" && $2 ~ /^cpu/ { busy1[$2] = $3; steal1[$2] = $4; next }
        $1 == "start" { split($0, s0); next }
        $1 == "end" { split($0, s1); next }
        $1 == "bown" { bown = ($3 - $2) / 1e6 }
        $1 == "window" { window = $2 / 1e6 }
        $1 == "seen" { seen[$2, $3] = $4; total[$2] += $4 }
        $1 == "overran" { overran = $2 }
        $1 == "b_alive" { b_alive = $2 }
        END {
            n = split(result, kv, " ")
            for (i = 2; i <= n; i++) { split(kv[i], p, "="); g[p[1]] = p[2] }
            run = (s1[2] - s0[2]) / 1e6
            others = 0; steal = 0
            for (c in busy0) {
                f = total["a"] ? seen["a", c] / total["a"] : 0
                others += f * ((busy1[c] - busy0[c]) * 1000 / hz - run * f)
                steal += f * (steal1[c] - steal0[c]) * 1000 / hz
            }
            migr = (s0[7] == "x" || s1[7] == "x") ? "x" : s1[7] - s0[7]
            printf "max_gap_us=%.1f gaps_over_10us=%d stolen_ms=%.1f run_delay_ms=%.2f",
                g["max_gap_ns"] / 1000, g["gaps_over_10us"], g["stolen_us"] / 1000,
                (s1[3] - s0[3]) / 1e6
            printf " timeslices=%d voluntary=%d involuntary=%d migrations=%s", s1[4] - s0[4],
                s1[5] - s0[5], s1[6] - s0[6], migr
            printf " others_ms=%.0f steal_ms=%.0f a_on_cpu0_pct=%.0f b_on_cpu0_pct=%.0f",
                others, steal, total["a"] ? 100 * seen["a", "cpu0"] / total["a"] : 0,
                total["b"] ? 100 * seen["b", "cpu0"] / total["b"] : 0
            printf " b_vmm_ms=%.1f b_iops=%d window_ms=%.0f overran=%d b_alive=%d\n", bown,
                iops, window, overran, b_alive
        }' "$raw" >"$OUT_DIR/$tag.result"
    if grep -q 'overran=1' "$OUT_DIR/$tag.result"; then
        echo "# $tag: the window closed after A's loop had ended (a slow poll): round left out" >&2
        mv "$OUT_DIR/$tag.result" "$OUT_DIR/$tag.result.bad"
    elif grep -q 'b_alive=0' "$OUT_DIR/$tag.result"; then
        echo "# $tag: B had finished before A's window closed: round left out" >&2
        mv "$OUT_DIR/$tag.result" "$OUT_DIR/$tag.result.bad"
    fi
}

echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc --all) CPUs," \
    "kernel $(uname -r); A's loop $RUN_MS ms, $ROUNDS rounds" >&2
SCENARIOS=(default placed)
for round in $(seq 1 "$ROUNDS"); do
    order=("${SCENARIOS[@]}")
    [ $((round % 2)) = 0 ] && order=(placed default)
    for sc in "${order[@]}"; do
        echo "# round $round/$ROUNDS: $sc" >&2
        run_scenario "$sc" "$round"
    done
done

# ---- the table: medians over the rounds ----------------------------------------------------

ROWS=(max_gap_us "A: largest gap (us)"
    gaps_over_10us "A: gaps over 10 us"
    stolen_ms "A: time in gaps over 10 us (ms)"
    run_delay_ms "A's vCPU: run delay (ms)"
    timeslices "A's vCPU: timeslices"
    voluntary "A's vCPU: voluntary switches"
    involuntary "A's vCPU: involuntary switches"
    migrations "A's vCPU: migrations"
    others_ms "A's CPU: others' time (ms, +-20)"
    steal_ms "A's CPU: steal (ms, +-20)"
    a_on_cpu0_pct "A's vCPU on CPU 0 (% samples)"
    b_on_cpu0_pct "B's vCPU on CPU 0 (% samples)"
    b_vmm_ms "B's VMM threads' CPU (ms)"
    b_iops "B: 4 KiB QD32 IOPS"
    window_ms "window (ms)")

median() { # median SCENARIO KEY -> the median over the rounds' results, or -
    cat "$OUT_DIR/$1".*.result 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | sort -g |
        awk '{v[NR] = $1} END {
            if (!NR) { print "-"; exit }
            if (v[1] == "x") { print "x"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print (m == int(m) ? sprintf("%d", m) : sprintf("%.2f", m))
        }'
}

echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc --all) CPUs"
echo "A: jitter guest, $RUN_MS ms loop at CPL3; B: blk-perf, 4 KiB random reads at QD32"
rounds() { # rounds SCENARIO -> how many rounds gave a result
    local f n=0
    for f in "$OUT_DIR/$1".*.result; do [ -e "$f" ] && n=$((n + 1)); done
    echo "$n"
}
printf '%-34s | %12s | %12s\n' "median over rounds" "default ($(rounds default))" \
    "placed ($(rounds placed))"
for ((i = 0; i < ${#ROWS[@]}; i += 2)); do
    printf '%-34s | %12s | %12s\n' "${ROWS[i + 1]}" "$(median default "${ROWS[i]}")" \
        "$(median placed "${ROWS[i]}")"
done
echo "(per-round results: $OUT_DIR/*.result; placed: A --cpu-placement vmm=1,vcpu=0," \
    "B taskset -c 1)"
