#!/usr/bin/env bash
# The API's cost: process start to an accepting API socket (wall time and
# the CPU time the process used by then, median of RUNS), and the latency
# of 1000 sequential GET / requests on one connection (p50, p99).
#   bench/api.sh [RUNS]        (default 101)
# Firecracker's published figure: 8 CPU ms to a ready API. Target: ember at
# most 2 CPU ms.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-101}
make --no-print-directory -s all build/apibench >/dev/null
build/apibench ready build/ember "$RUNS" | tee build/bench-api.txt
build/apibench latency build/ember 1000 | tee -a build/bench-api.txt
awk '/^ready:/ {
    for (i = 1; i <= NF; i++) if ($i == "CPU") cpu = $(i + 1)
    printf "\nCPU to a ready API: %.2f ms (Firecracker publishes 8 ms; target <= 2 ms): %s\n",
           cpu, cpu <= 2 ? "met" : "NOT met"
}' build/bench-api.txt
