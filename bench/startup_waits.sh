#!/usr/bin/env bash
# Where the wall time of the hello guest's runs goes (bench/startup.sh's ember command):
# each thread's time on CPU, in run queues and asleep, the sleeps named by the kernel
# function they waited in, and the teardown helper's life after ember's exit. Needs root and
# perf (`perf sched record -g`, system-wide, for the runs only).
#   bench/startup_waits.sh [RUNS] [GAP_MS] [EMBER ARGS...]   (default 10 runs, 150 ms apart)
# GAP_MS 0: back to back, as a loop of short-lived machines runs them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-10}
GAP_MS=${2:-150}
shift $(($# < 2 ? $# : 2))
command -v perf >/dev/null || { echo "startup_waits: perf is not installed" >&2; exit 1; }
make --no-print-directory -s all guests >/dev/null
OUT=build/startup-waits
EMBER=${EMBER:-build/ember}
GAP=$(awk -v ms="$GAP_MS" 'BEGIN { printf "%.3f", ms / 1000 }')
read -r -a before < <(head -1 /proc/stat)
perf sched record -g -o "$OUT.data" -- bash -c '
    echo $$ >"$4"
    for i in $(seq "$1"); do
        "$3" run --kernel build/guest/hello.elf --memory 128 --cpus 1 "${@:5}" >/dev/null 2>&1
        sleep "$2"
    done' runs "$RUNS" "$GAP" "$EMBER" "$OUT.pid" "$@" >/dev/null 2>"$OUT.log"
read -r -a after < <(head -1 /proc/stat)
perf sched timehist -i "$OUT.data" -g --state --max-stack 12 >"$OUT.timehist" 2>>"$OUT.log"
perf script -i "$OUT.data" -F comm,pid,tid,event,trace 2>>"$OUT.log" | grep sched_process_fork >"$OUT.forks"
echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs;" \
    "$RUNS runs, ${GAP_MS} ms apart, ember ${*:-(no extra arguments)}"
awk -v b="${before[*]}" -v a="${after[*]}" 'BEGIN {
    split(b, x); split(a, y)
    busy = (y[2] + y[3] + y[4] + y[7] + y[8]) - (x[2] + x[3] + x[4] + x[7] + x[8])
    idle = (y[5] + y[6]) - (x[5] + x[6]); steal = y[9] - x[9]; total = busy + idle + steal
    if (total > 0)
        printf "# host over the recording: busy %.0f%%, steal %.1f%%, load average %s\n",
            100 * busy / total, 100 * steal / total, "'"$(cut -d' ' -f1-3 /proc/loadavg)"'"
}'
python3 bench/startup_waits.py "$OUT.timehist" "$OUT.forks" "$(cat "$OUT.pid")"
