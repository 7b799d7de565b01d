#!/usr/bin/env bash
# ember-jailer's cost: from the start of the jailer to ember's API socket answering
# GET / (the first connection that gets 200), beside plain ember started the same way;
# one instance at a time, then N started together. The jails run as an unprivileged
# uid:gid, without and with cgroups (a cpuset and a pids group, cgroup v1). Firecracker
# measures the same in its jailer start-up test (test_jailer_startup: the jailer's start to
# the exec of a stand-in program that prints the time, 1, 5 and 10 jailers at once).
#   bench/jailer.sh [-r RUNS] [-p N]      (default 40 runs, N = 10)
# Root. Medians, 90th percentiles and maxima in ms; figures vary between machines, so
# compare the rows of one run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=40
PAR=10
while getopts "r:p:" opt; do
    case $opt in
    r) RUNS=$OPTARG ;;
    p) PAR=$OPTARG ;;
    *) echo "usage: bench/jailer.sh [-r RUNS] [-p N]" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "bench/jailer.sh: needs root (the jailer mounts, makes device nodes, changes users)" >&2
    exit 1
fi
make --no-print-directory -s all build/jailbench >/dev/null
BASE=$ROOT/build/jailbench-base.$$
CG=ember-jailbench-$$
cleanup() {
    rm -rf "$BASE"
    for c in cpuset pids; do
        [ -d "/sys/fs/cgroup/$c/$CG" ] && rmdir "/sys/fs/cgroup/$c/$CG"
    done
    return 0
}
trap cleanup EXIT
mkdir -p "$BASE"
OUT=build/bench-jailer.txt
{
    echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores"
    echo "start to a ready API socket (GET / answered):"
    for par in 1 "$PAR"; do
        build/jailbench plain build/ember "$BASE" "$RUNS" "$par"
        build/jailbench jailer build/ember "$BASE" "$RUNS" "$par" build/ember-jailer
        if [ -d /sys/fs/cgroup/cpuset ] && [ -d /sys/fs/cgroup/pids ]; then
            build/jailbench jailer build/ember "$BASE" "$RUNS" "$par" build/ember-jailer "$CG"
        fi
    done
} | tee "$OUT"
