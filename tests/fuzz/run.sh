#!/bin/bash
# Runs libFuzzer targets for a while each, several at a time (`make fuzz`).
#
#   tests/fuzz/run.sh FUZZ_BUILD SECONDS JOBS NAME...
#
# Each target runs for SECONDS with its corpus (FUZZ_BUILD/corpus-NAME, kept between runs),
# its seeds (tests/fuzz/seeds/NAME, or $FUZZ_BOOT_SEEDS for fuzz_boot) and its dictionary
# (tests/fuzz/NAME.dict) when there are any; JOBS targets run at once. Each target's summary
# (and the report of anything it found) is printed when it ends; the whole log stays in
# FUZZ_BUILD/NAME.log. Exits 1 if any target found something.
set -u
build=$1 seconds=$2 jobs=$3
shift 3

run_one() {
    local f=$1 args=()
    mkdir -p "$build/corpus-$f"
    if [ -d "tests/fuzz/seeds/$f" ]; then
        args+=("tests/fuzz/seeds/$f")
    elif [ "$f" = fuzz_boot ] && [ -n "${FUZZ_BOOT_SEEDS:-}" ]; then
        args+=("$FUZZ_BOOT_SEEDS")
    fi
    local dict=()
    [ -f "tests/fuzz/$f.dict" ] && dict=("-dict=tests/fuzz/$f.dict")
    # -timeout: an input that hangs is a finding, reported in seconds, not after 20 minutes.
    "$build/$f" -max_total_time="$seconds" -timeout=20 -print_final_stats=1 -max_len=65536 "${dict[@]}" \
        -artifact_prefix="$build/$f-" "$build/corpus-$f" "${args[@]}" >"$build/$f.log" 2>&1
}

report() {
    local f=$1 status=$2
    echo "fuzz: $f for $seconds s: $([ "$status" = 0 ] && echo ok || echo "FAILED ($status)")"
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY)|ERROR|invariant|Test unit written" \
        "$build/$f.log"
}

declare -A pid_of
failed=0
for f in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n
    done
    run_one "$f" &
    pid_of[$f]=$!
done
for f in "$@"; do
    wait "${pid_of[$f]}"
    status=$?
    report "$f" "$status"
    [ "$status" = 0 ] || failed=1
done
exit $failed
