#!/usr/bin/env bash
# Runs the test guests (guest/) under QEMU -M microvm, the reference, and under ember, and
# checks for each: the exit status each VMM should give, every TAP line "ok", the same TAP
# lines from both VMMs, and for the guests that crash on purpose the report the VMM must give.
# The virtio guests run on both transports (tests/guest/virtio.sh says how).
#
# Usage: tests/guest/run.sh [-v] [CASE...]     (CASE: a name from the list printed with -l)
#   -v  print every guest's output, not only that of failed checks
#   -l  list the cases and exit
# Environment:
#   EMBER      ember binary (default build/ember); missing: the ember half is skipped, said so
#   QEMU       QEMU binary (default qemu-system-x86_64); missing: the QEMU half is skipped
#   QEMU_REFERENCE  off: the QEMU half is skipped, said so (the sanitizer pass: QEMU is the
#              same in every build of ember)
#   GUEST_DIR  guest images (default build/guest); they are (re)built there unless NO_BUILD=1
#   OUT_DIR    logs of every run (default build/guest-tests)
#   CC         compiler for the guests (default cc)
# Output: TAP ("ok N - vmm: case: check"), then "N passed, N failed, N skipped".
# Exit status: 0 when nothing failed.
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
QEMU=${QEMU:-qemu-system-x86_64}
GUEST_DIR=${GUEST_DIR:-$ROOT/build/guest}
OUT_DIR=${OUT_DIR:-$ROOT/build/guest-tests}
VERBOSE=0

# Status when a VMM ends through the debug-exit port: (value << 1) | 1.
DEBUG_EXIT_PASS=1 # guest wrote 0: every check passed
DEBUG_EXIT_FAIL=3 # guest wrote 1
TIMEOUT_STATUS=124
RUN_TIMEOUT=30
CRASH_WAIT=10 # seconds to wait for QEMU to print a KVM internal error

# -cpu host alone fails here: QEMU cannot set MSR_IA32_ARCH_CAPABILITIES (0x10a) on this KVM.
QEMU_BASE=(-nodefaults -no-user-config -display none -serial stdio -enable-kvm
    -cpu host,-arch-capabilities -device isa-debug-exit,iobase=0xf4,iosize=4)

# Clean-ups (temporary files, network namespaces) run when the script ends, however it ends.
EXIT_ACTIONS=()
at_exit() { EXIT_ACTIONS+=("$1"); }
run_exit_actions() {
    local a
    for a in ${EXIT_ACTIONS[@]+"${EXIT_ACTIONS[@]}"}; do eval "$a"; done
}
trap run_exit_actions EXIT
trap 'exit 130' INT TERM

test_count=0
passed=0
failed=0
skipped=0

report() { # report pass|fail|skip DESCRIPTION [REASON]
    test_count=$((test_count + 1))
    case $1 in
    pass)
        passed=$((passed + 1))
        echo "ok $test_count - $2"
        ;;
    fail)
        failed=$((failed + 1))
        echo "not ok $test_count - $2${3:+ ($3)}"
        ;;
    skip)
        skipped=$((skipped + 1))
        echo "ok $test_count - $2 # SKIP $3"
        ;;
    esac
}

show_log() { # show_log FILE...: the guest's output under a failed check
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "#   --- $(basename "$f")"
        tr -d '\r' <"$f" | sed 's/^/#   /'
    done
}

# FNV-1a (32-bit) of a string's bytes, as the bootcheck guest computes it.
fnv1a32() {
    local h=2166136261 b
    for b in $(printf '%s' "$1" | od -An -v -tu1); do
        h=$((((h ^ b) * 16777619) & 0xffffffff))
    done
    printf '0x%08x' "$h"
}

# The FNV-1a step over little-endian 32-bit words, last word zero-padded (od pads it).
word_hash32() {
    local h=2166136261 w
    for w in $(od -An -v -tu4 "$1"); do
        h=$((((h ^ w) * 16777619) & 0xffffffff))
    done
    printf '0x%08x' "$h"
}

tap_lines() {
    tr -d '\r' <"$1" | grep -E '^(ok |not ok |1\.\.[0-9]+$|Bail out!)'
}

# Every planned test reported once, in order, all ok; no bail-out.
check_tap_all_ok() { # check_tap_all_ok LOG -> prints the reason on failure
    local log=$1 plan count=0 line n
    plan=$(tr -d '\r' <"$log" | grep -E '^1\.\.[0-9]+$' | head -n1)
    if [ -z "$plan" ]; then
        echo "no TAP plan in the output"
        return 1
    fi
    if tr -d '\r' <"$log" | grep -q '^Bail out!'; then
        echo "guest bailed out"
        return 1
    fi
    while IFS= read -r line; do
        count=$((count + 1))
        n=$(printf '%s\n' "$line" | sed -E 's/^(not )?ok ([0-9]+).*/\2/')
        if [ "$n" != "$count" ]; then
            echo "test $count reported as number $n"
            return 1
        fi
        case $line in
        "not ok"*)
            echo "guest check failed: $line"
            return 1
            ;;
        esac
    done < <(tr -d '\r' <"$log" | grep -E '^(not )?ok [0-9]+')
    if [ "$count" != "${plan#1..}" ]; then
        echo "plan $plan, but $count tests reported"
        return 1
    fi
}

# For guests that crash on purpose: the plan came out, and no failure or bail-out after it.
check_tap_crash() {
    local log=$1
    if ! tr -d '\r' <"$log" | grep -qE '^1\.\.[0-9]+$'; then
        echo "no TAP plan in the output: the guest did not get to its crash"
        return 1
    fi
    if tr -d '\r' <"$log" | grep -qE '^(not ok|Bail out!)'; then
        echo "guest reports: $(tr -d '\r' <"$log" | grep -E '^(not ok|Bail out!)' | head -n1)"
        return 1
    fi
}

# ---- VMM availability ----------------------------------------------------------------------

have_qemu=1
qemu_missing=""
if [ "${QEMU_REFERENCE:-on}" = off ]; then
    have_qemu=0
    qemu_missing="QEMU_REFERENCE=off: the reference runs in make guest-test, not in each build of ember"
elif ! command -v "$QEMU" >/dev/null 2>&1; then
    have_qemu=0
    qemu_missing="QEMU not found ($QEMU)"
elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    have_qemu=0
    qemu_missing="/dev/kvm not accessible"
fi
have_ember=1
if [ ! -x "$EMBER" ]; then
    have_ember=0
fi

# ---- running one guest ---------------------------------------------------------------------

# run_qemu NAME ELF MACHINE_OPTS "QEMU ARGS..." CMDLINE [crash]
# Sets RUN_STATUS, RUN_OUT (serial output) and RUN_ERR (stderr).
run_qemu() {
    local name=$1 elf=$2 machine=$3 extra=$4 cmdline=$5 mode=${6:-}
    RUN_OUT=$OUT_DIR/$name.qemu.out
    RUN_ERR=$OUT_DIR/$name.qemu.err
    # shellcheck disable=SC2206 # extra holds plain words
    local args=(-M "microvm,x-option-roms=off,$machine" "${QEMU_BASE[@]}" $extra
        -kernel "$elf" -append "$cmdline")
    if [ "$mode" = crash ]; then
        # After a KVM internal error QEMU stops the guest but lives on: wait for the report,
        # then end it.
        : >"$RUN_ERR"
        timeout "$RUN_TIMEOUT" "$QEMU" "${args[@]}" </dev/null >"$RUN_OUT" 2>"$RUN_ERR" &
        local pid=$! waited=0
        while kill -0 "$pid" 2>/dev/null && ! grep -q 'KVM internal error' "$RUN_ERR" &&
            [ "$waited" -lt $((CRASH_WAIT * 20)) ]; do
            sleep 0.05
            waited=$((waited + 1))
        done
        kill "$pid" 2>/dev/null
        wait "$pid"
        RUN_STATUS=$?
    else
        timeout "$RUN_TIMEOUT" "$QEMU" "${args[@]}" </dev/null >"$RUN_OUT" 2>"$RUN_ERR"
        RUN_STATUS=$?
    fi
}

# run_ember NAME ELF "EMBER ARGS..." [CMDLINE]
run_ember() {
    local name=$1 elf=$2 extra=$3
    RUN_OUT=$OUT_DIR/$name.ember.out
    RUN_ERR=$OUT_DIR/$name.ember.err
    local args=(run --kernel "$elf")
    # shellcheck disable=SC2206 # extra holds plain words
    args+=($extra)
    if [ $# -ge 4 ]; then
        args+=(--cmdline "$4")
    fi
    timeout "$RUN_TIMEOUT" "$EMBER" "${args[@]}" </dev/null >"$RUN_OUT" 2>"$RUN_ERR"
    RUN_STATUS=$?
}

# ---- checks shared by the cases ------------------------------------------------------------

# expect_pass DESC: the guest ended through debug-exit 0 and every TAP line is ok.
expect_pass() {
    local desc=$1 why
    if [ "$RUN_STATUS" != "$DEBUG_EXIT_PASS" ]; then
        report fail "$desc" "exit status $RUN_STATUS, expected $DEBUG_EXIT_PASS (debug-exit 0)"
        show_log "$RUN_OUT" "$RUN_ERR"
    elif ! why=$(check_tap_all_ok "$RUN_OUT"); then
        report fail "$desc" "$why"
        show_log "$RUN_OUT" "$RUN_ERR"
    else
        report pass "$desc"
        [ "$VERBOSE" = 1 ] && show_log "$RUN_OUT" "$RUN_ERR"
    fi
}

# same_tap DESC REFERENCE_LOG: the TAP lines match those of the reference run.
same_tap() {
    local desc=$1 reference=$2
    if [ ! -s "$reference" ]; then
        report skip "$desc" "no QEMU reference output"
    elif diff <(tap_lines "$reference") <(tap_lines "$RUN_OUT") >"$RUN_OUT.tapdiff"; then
        report pass "$desc"
    else
        report fail "$desc" "TAP lines differ from QEMU's"
        sed 's/^/#   /' "$RUN_OUT.tapdiff"
    fi
}

# expect_crash DESC STDERR_REGEX: a VMM-reported crash, not a guest verdict nor a timeout.
# logged_events DEVICE LOG: how many guest errors ember's log accounts for on DEVICE (blk0,
# net0, rng, ...). Guest-triggered lines are rate limited: each line stands for itself plus the
# "(N more like this not logged)" it carries, and at exit a line "DEVICE: WHAT: N more like this
# not logged" gives what was suppressed since the last one.
logged_events() {
    awk -v dev="$1" '
        index($0, ": " dev ": ") == 0 || $0 !~ /(ERROR|WARN): / { next }
        match($0, /: [0-9]+ more like this not logged$/) {
            n = substr($0, RSTART + 2); sub(/ .*/, "", n); total += n; next
        }
        match($0, /\([0-9]+ more like this not logged\)$/) {
            n = substr($0, RSTART + 1); sub(/ .*/, "", n); total += n
        }
        { total += 1 }
        END { print total + 0 }' "$2"
}

expect_crash_ember() {
    local desc=$1 pattern=$2 why
    case $RUN_STATUS in
    "$DEBUG_EXIT_PASS" | "$DEBUG_EXIT_FAIL" | "$TIMEOUT_STATUS")
        report fail "$desc" "exit status $RUN_STATUS: the VM did not stop at the crash"
        show_log "$RUN_OUT" "$RUN_ERR"
        return
        ;;
    esac
    if ! grep -qiE "$pattern" "$RUN_ERR"; then
        report fail "$desc" "stderr does not match /$pattern/ (status $RUN_STATUS)"
        show_log "$RUN_OUT" "$RUN_ERR"
    elif ! why=$(check_tap_crash "$RUN_OUT"); then
        report fail "$desc" "$why"
        show_log "$RUN_OUT" "$RUN_ERR"
    else
        report pass "$desc (status $RUN_STATUS)"
        [ "$VERBOSE" = 1 ] && show_log "$RUN_OUT" "$RUN_ERR"
    fi
}

# X.elf, or X.bzImage for the guests also built as a bzImage (X-bz).
guest_image() {
    if [ -e "$GUEST_DIR/$1.bzImage" ]; then
        echo "$GUEST_DIR/$1.bzImage"
    else
        echo "$GUEST_DIR/$1.elf"
    fi
}

ember_skip_reason() {
    echo "ember not built ($EMBER missing)"
}

# ---- the cases -----------------------------------------------------------------------------

# hello: the demo; it powers off through the i8042, so the VMM exits 0 without --debug-exit.
# QEMU microvm has no i8042 unless asked for one (-device i8042); -no-reboot makes its reset
# end QEMU with status 0.
case_hello() {
    local expected="Hello from the ember demo guest!"
    local qemu_ref=""
    if [ "$have_qemu" = 1 ]; then
        run_qemu hello "$GUEST_DIR/hello.elf" rtc=off "-m 128 -device i8042 -no-reboot" \
            "console=ttyS0 reboot=k panic=1"
        qemu_ref=$RUN_OUT
        check_hello "qemu: hello: greets and powers off (status 0)" "$expected"
    else
        report skip "qemu: hello" "$qemu_missing"
    fi
    local elf
    for elf in hello hello-linux64 hello-bz; do
        if [ "$have_ember" = 1 ]; then
            run_ember "$elf" "$(guest_image "$elf")" ""
            check_hello "ember: $elf: greets and powers off (status 0)" "$expected"
            same_tap "ember: $elf: same TAP lines as QEMU" "$qemu_ref"
        else
            report skip "ember: $elf" "$(ember_skip_reason)"
        fi
    done
}

check_hello() {
    local desc=$1 expected=$2 why
    if [ "$RUN_STATUS" != 0 ]; then
        report fail "$desc" "exit status $RUN_STATUS, expected 0"
        show_log "$RUN_OUT" "$RUN_ERR"
    elif ! tr -d '\r' <"$RUN_OUT" | grep -qxF "$expected"; then
        report fail "$desc" "no greeting in the output"
        show_log "$RUN_OUT" "$RUN_ERR"
    elif ! why=$(check_tap_all_ok "$RUN_OUT"); then
        report fail "$desc" "$why"
        show_log "$RUN_OUT" "$RUN_ERR"
    else
        report pass "$desc"
        [ "$VERBOSE" = 1 ] && show_log "$RUN_OUT" "$RUN_ERR"
    fi
}

# A long command line with quotes, runs of spaces, every ASCII symbol but '"' outside the
# quotes, UTF-8 and a tab, to catch truncation, splitting and escaping on its way to the guest.
odd_cmdline_payload() {
    local long="" i
    for i in $(seq 1 24); do
        long="${long}segment$i-abcdefghij/"
    done
    printf '%s' "console=ttyS0 reboot=k panic=1 quoted=\"two  spaces and = signs\"" \
        " symbols=!#\$%&'()*+,-./:;<=>?@[\\]^_\`{|}~ utf8=grüße	tab=after" \
        " empty= \"=\" long=$long"
}

# bootcheck_case NAME MEM_MIB CPUS WITH_INITRD
bootcheck_case() {
    local name=$1 mem=$2 cpus=$3 with_initrd=$4
    local initrd="" initrd_args="" qemu_initrd=""
    if [ "$with_initrd" = 1 ]; then
        # 64 KiB + 3 bytes: the last word is partial on purpose.
        initrd=$OUT_DIR/initrd.bin
        [ -s "$initrd" ] || head -c 65539 /dev/urandom >"$initrd"
        initrd_args="initrd_size=$(stat -c %s "$initrd") initrd_sum=$(word_hash32 "$initrd")"
        qemu_initrd="-initrd $initrd"
    fi
    local payload cmdline
    payload="$(odd_cmdline_payload) expect_mem_mib=$mem expect_cpus=$cpus"
    payload="$payload expect_epoch=$(date +%s)${initrd_args:+ $initrd_args}"
    cmdline="$payload cmdline_sum=$(fnv1a32 "$payload")"

    local qemu_ref=""
    if [ "$have_qemu" = 1 ]; then
        run_qemu "$name" "$GUEST_DIR/bootcheck.elf" rtc=on "-m $mem -smp $cpus $qemu_initrd" \
            "$cmdline"
        qemu_ref=$RUN_OUT
        expect_pass "qemu: $name: all checks pass"
    else
        report skip "qemu: $name" "$qemu_missing"
    fi
    local elf
    for elf in bootcheck bootcheck-linux64 bootcheck-bz; do
        if [ "$have_ember" = 1 ]; then
            # The epoch moves on between runs: refresh it and the checksum.
            payload="$(odd_cmdline_payload) expect_mem_mib=$mem expect_cpus=$cpus"
            payload="$payload expect_epoch=$(date +%s)${initrd_args:+ $initrd_args}"
            cmdline="$payload cmdline_sum=$(fnv1a32 "$payload")"
            run_ember "$name-$elf" "$(guest_image "$elf")" \
                "--debug-exit --memory $mem --cpus $cpus${initrd:+ --initrd $initrd}" "$cmdline"
            expect_pass "ember: $name ($elf): all checks pass"
            same_tap "ember: $name ($elf): same TAP lines as QEMU" "$qemu_ref"
        else
            report skip "ember: $name ($elf)" "$(ember_skip_reason)"
        fi
    done
}

case_bootcheck() {
    bootcheck_case bootcheck 128 2 1
}

# More RAM than fits below the 32-bit MMIO hole: the map must split around it.
case_bootcheck_highmem() {
    bootcheck_case bootcheck-highmem 3584 1 0
}

# triple-fault: QEMU treats the shutdown as a reset; -no-reboot turns that into exit 0.
case_triple_fault() {
    if [ "$have_qemu" = 1 ]; then
        run_qemu triple-fault "$GUEST_DIR/triple-fault.elf" rtc=off "-m 128 -no-reboot" ""
        local why
        if [ "$RUN_STATUS" != 0 ]; then
            report fail "qemu: triple-fault: reset ends QEMU (status 0)" "status $RUN_STATUS"
            show_log "$RUN_OUT" "$RUN_ERR"
        elif ! why=$(check_tap_crash "$RUN_OUT"); then
            report fail "qemu: triple-fault: reset ends QEMU (status 0)" "$why"
            show_log "$RUN_OUT" "$RUN_ERR"
        else
            report pass "qemu: triple-fault: reset ends QEMU (status 0)"
        fi
    else
        report skip "qemu: triple-fault" "$qemu_missing"
    fi
    local elf
    for elf in triple-fault triple-fault-linux64; do
        if [ "$have_ember" = 1 ]; then
            run_ember "$elf" "$GUEST_DIR/$elf.elf" "--debug-exit"
            expect_crash_ember "ember: $elf: reported as a shutdown" 'shutdown|triple.fault'
        else
            report skip "ember: $elf" "$(ember_skip_reason)"
        fi
    done
}

# bad-insn: popcnt at CPL0, which this host's instruction emulator cannot run.
case_bad_insn() {
    if [ "$have_qemu" = 1 ]; then
        run_qemu bad-insn "$GUEST_DIR/bad-insn.elf" rtc=off "-m 128" "" crash
        local why desc="qemu: bad-insn: KVM internal error reported"
        if ! grep -q 'KVM internal error' "$RUN_ERR"; then
            report fail "$desc" "no 'KVM internal error' within ${CRASH_WAIT}s (status $RUN_STATUS)"
            show_log "$RUN_OUT" "$RUN_ERR"
        elif ! why=$(check_tap_crash "$RUN_OUT"); then
            report fail "$desc" "$why"
            show_log "$RUN_OUT" "$RUN_ERR"
        else
            report pass "$desc"
        fi
    else
        report skip "qemu: bad-insn" "$qemu_missing"
    fi
    local elf
    for elf in bad-insn bad-insn-linux64; do
        if [ "$have_ember" = 1 ]; then
            run_ember "$elf" "$GUEST_DIR/$elf.elf" "--debug-exit"
            expect_crash_ember "ember: $elf: reported as an internal error" \
                'internal.error|INTERNAL_ERROR'
        else
            report skip "ember: $elf" "$(ember_skip_reason)"
        fi
    done
}

# jitter: bench/jitter.sh's guest. Only the report's shape is checked, never its figures (they
# are the host's): the result line is there with every field, the loop ran, and the histogram's
# counts nest (each bucket holds the next). A jitter.ms= out of 1-60000 or not a number (one
# that would wrap around 64 bits too), or a jitter.settle_ms= over 10000, is refused with a
# bail-out and debug-exit 1.
JITTER_FIELDS=(ms iters max_gap_ns gaps_over_10us gt1us gt100us gt1ms stolen_us tsc_backwards)

check_jitter_report() { # check_jitter_report LOG MS -> prints the reason on failure
    local line f v
    line=$(tr -d '\r' <"$1" | grep -E '^jitter: ms=' | tail -n1)
    if [ -z "$line" ]; then
        echo "no 'jitter: ms=' line"
        return 1
    fi
    declare -A val
    for f in "${JITTER_FIELDS[@]}"; do
        v=$(printf '%s\n' "$line" | sed -nE "s/.* $f=([0-9]+)( .*)?$/\1/p")
        if [ -z "$v" ]; then
            echo "no $f= in '$line'"
            return 1
        fi
        val[$f]=$v
    done
    if [ "${val[ms]}" != "$2" ]; then
        echo "ms=${val[ms]}, asked for $2"
    elif [ "${val[iters]}" -le 0 ] || [ "${val[max_gap_ns]}" -le 0 ]; then
        echo "iters=${val[iters]} max_gap_ns=${val[max_gap_ns]}: the loop did not run"
    elif ! [ "${val[gt1us]}" -ge "${val[gaps_over_10us]}" ] ||
        ! [ "${val[gaps_over_10us]}" -ge "${val[gt100us]}" ] ||
        ! [ "${val[gt100us]}" -ge "${val[gt1ms]}" ]; then
        echo "buckets do not nest: $line"
    elif [ "${val[gt1ms]}" -gt 0 ] && [ "${val[max_gap_ns]}" -le 1000000 ]; then
        echo "a gap over 1 ms counted, but max_gap_ns=${val[max_gap_ns]}"
    elif [ "${val[gaps_over_10us]}" -gt 0 ] && [ "${val[stolen_us]}" -lt 10 ]; then
        echo "gaps over 10 us counted, but stolen_us=${val[stolen_us]}"
    else
        return 0
    fi
    return 1
}

jitter_report() { # jitter_report DESC MS: expect_pass, then the report's shape
    local why
    expect_pass "$1: passes"
    if ! why=$(check_jitter_report "$RUN_OUT" "$2"); then
        report fail "$1: report is well formed" "$why"
        show_log "$RUN_OUT" "$RUN_ERR"
    else
        report pass "$1: report is well formed"
    fi
}

case_jitter() {
    local ms=200 qemu_ref="" bad why
    if [ "$have_qemu" = 1 ]; then
        run_qemu jitter "$GUEST_DIR/jitter.elf" rtc=off "-m 128" "console=ttyS0 jitter.ms=$ms"
        qemu_ref=$RUN_OUT
        jitter_report "qemu: jitter" "$ms"
    else
        report skip "qemu: jitter" "$qemu_missing"
    fi
    if [ "$have_ember" != 1 ]; then
        report skip "ember: jitter" "$(ember_skip_reason)"
        return
    fi
    run_ember jitter "$GUEST_DIR/jitter.elf" "--debug-exit" "console=ttyS0 jitter.ms=$ms"
    jitter_report "ember: jitter" "$ms"
    same_tap "ember: jitter: same TAP lines as QEMU" "$qemu_ref"
    for bad in jitter.ms=0 jitter.ms=60001 jitter.ms=18446744073709551617 jitter.ms=2x \
        jitter.settle_ms=10001; do
        run_ember "jitter-bad-$bad" "$GUEST_DIR/jitter.elf" "--debug-exit" "console=ttyS0 $bad"
        why=""
        if [ "$RUN_STATUS" != "$DEBUG_EXIT_FAIL" ]; then
            why="exit status $RUN_STATUS, expected $DEBUG_EXIT_FAIL (debug-exit 1)"
        elif ! tr -d '\r' <"$RUN_OUT" | grep -qF "Bail out! $bad:"; then
            why="no bail-out naming $bad"
        elif tr -d '\r' <"$RUN_OUT" | grep -q '^jitter: '; then
            why="the loop ran anyway"
        fi
        if [ -n "$why" ]; then
            report fail "ember: jitter: $bad refused" "$why"
            show_log "$RUN_OUT" "$RUN_ERR"
        else
            report pass "ember: jitter: $bad refused"
        fi
    done
}

# shellcheck source=tests/guest/virtio.sh
. "$ROOT/tests/guest/virtio.sh"
# shellcheck source=tests/guest/net.sh
. "$ROOT/tests/guest/net.sh"
# shellcheck source=tests/guest/lifecycle.sh
. "$ROOT/tests/guest/lifecycle.sh"
# shellcheck source=tests/guest/resources.sh
. "$ROOT/tests/guest/resources.sh"
# shellcheck source=tests/guest/polling.sh
. "$ROOT/tests/guest/polling.sh"

ALL_CASES=(hello bootcheck bootcheck-highmem triple-fault bad-insn virtio-blk virtio-console
    virtio-rng virtio-hostile blk-perf virtio-net virtio-net-hostile net-rate net-vhost
    net-perf net-backpressure virtio-lifecycle rss-blk rss-net rss-vsock rss-console
    log-flood intx-shared bounds jitter placement-poll)

# ---- main ----------------------------------------------------------------------------------

cases=()
for arg in "$@"; do
    case $arg in
    -v) VERBOSE=1 ;;
    -l)
        printf '%s\n' "${ALL_CASES[@]}"
        exit 0
        ;;
    -h | --help)
        sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *) cases+=("$arg") ;;
    esac
done
[ ${#cases[@]} -gt 0 ] || cases=("${ALL_CASES[@]}")

mkdir -p "$OUT_DIR"
if [ "${NO_BUILD:-0}" != 1 ] &&
    ! make -s -C "$ROOT/guest" O="$GUEST_DIR" >"$OUT_DIR/build.log" 2>&1; then
    echo "Bail out! building the guests failed:"
    sed 's/^/#   /' "$OUT_DIR/build.log"
    exit 1
fi

[ "$have_qemu" = 1 ] || echo "# skip: QEMU half: $qemu_missing"
[ "$have_ember" = 1 ] || echo "skip: ember not built ($EMBER missing): the ember half is skipped"

start=$(date +%s%N)
for c in "${cases[@]}"; do
    case $c in
    hello) case_hello ;;
    bootcheck) case_bootcheck ;;
    bootcheck-highmem) case_bootcheck_highmem ;;
    triple-fault) case_triple_fault ;;
    bad-insn) case_bad_insn ;;
    virtio-blk) case_virtio_blk ;;
    virtio-console) case_virtio_console ;;
    virtio-rng) case_virtio_rng ;;
    virtio-hostile) case_virtio_hostile ;;
    blk-perf) case_blk_perf ;;
    virtio-net) case_virtio_net ;;
    virtio-net-hostile) case_virtio_net_hostile ;;
    net-rate) case_net_rate ;;
    net-vhost) case_net_vhost ;;
    net-perf) case_net_perf ;;
    net-backpressure) case_net_backpressure ;;
    virtio-lifecycle) case_virtio_lifecycle ;;
    rss-blk) case_rss_blk ;;
    rss-net) case_rss_net ;;
    rss-vsock) case_rss_vsock ;;
    rss-console) case_rss_console ;;
    log-flood) case_log_flood ;;
    intx-shared) case_intx_shared ;;
    bounds) case_bounds ;;
    jitter) case_jitter ;;
    placement-poll) case_placement_poll ;;
    *)
        echo "Bail out! unknown case '$c' (try -l)"
        exit 1
        ;;
    esac
done
echo "1..$test_count"
echo "# guest tests took $((($(date +%s%N) - start) / 1000000)) ms; logs in $OUT_DIR"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
