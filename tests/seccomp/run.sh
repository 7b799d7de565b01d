#!/bin/bash
# Proves the seccomp filters hold inside real ember threads: for each thread
# kind, a test-only preload library (tests/seccomp/trigger.c) makes that
# thread attempt a forbidden system call once its filter is on, and ember
# must end with status 148 and a line naming the thread's kind and the call.
# Also: the violation's metrics line, --seccomp-filter policies replacing
# ember's own filter for a kind, and policy files ember refuses.
#
#   EMBER=build/ember GUEST_DIR=build/guest TRIGGER=build/seccomp-trigger.so tests/seccomp/run.sh
#
# Prints TAP; exit status 0 when every check passed. Needs /dev/kvm and, for
# the slirp thread, libslirp.
set -u

EMBER=${EMBER:-build/ember}
GUEST_DIR=${GUEST_DIR:-build/guest}
TRIGGER=${TRIGGER:-build/seccomp-trigger.so}
GUEST=$GUEST_DIR/keyboard.elf # runs until Ctrl+Alt+Del: ember lives until it is stopped
VIOLATION=148
TERM_STATUS=143 # 128 + SIGTERM
WAIT_S=20

tmp=$(mktemp -d /tmp/ember-seccomp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
n=0 failed=0

report() { # ok|fail DESC [WHY]
    n=$((n + 1))
    if [ "$1" = ok ]; then
        echo "ok $n - $2"
    else
        failed=$((failed + 1))
        echo "not ok $n - $2${3:+ # $3}"
    fi
}

for f in "$EMBER" "$GUEST" "$TRIGGER"; do
    [ -e "$f" ] || { echo "Bail out! missing $f (make all guests $TRIGGER)"; exit 1; }
done

truncate -s 1M "$tmp/disk.img"

# A vhost-user device's thread needs a back-end: Debian's qemu-storage-daemon, when there.
qsd_pid=
QSD=$(command -v qemu-storage-daemon)
if [ -n "$QSD" ]; then
    truncate -s 1M "$tmp/vub.img"
    "$QSD" --blockdev "driver=file,node-name=f,filename=$tmp/vub.img" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$tmp/vub.sock,writable=on" \
        </dev/null >"$tmp/qsd.log" 2>&1 &
    qsd_pid=$!
    for _ in $(seq 100); do [ -S "$tmp/vub.sock" ] && break; sleep 0.05; done
fi
trap '[ -n "$qsd_pid" ] && kill "$qsd_pid" 2>/dev/null; rm -rf "$tmp"' EXIT
printf 'console input that epoll cannot watch\n' >"$tmp/stdin.txt"

# The ember command line that starts a thread of each kind.
args_for() {
    case $1 in
    main | vcpu | teardown) echo "" ;;
    blk) echo "--drive path=$tmp/disk.img" ;;
    net | slirp) echo "--net user" ;;
    console) echo "--console virtio" ;;
    rng) echo "--rng" ;;
    vsock) echo "--vsock cid=3,uds=$tmp/vsock.sock" ;;
    vhost_user) echo "--drive socket=$tmp/vub.sock" ;;
    stdin) echo "" ;;
    esac
}

# run_ember NAME STDIN TRIGGER ARGS...: ember under the preload, stopped by
# SIGTERM after WAIT_S if it is still alive (a thread that never reaches its
# trigger). Sets status, err (stderr file).
run_ember() {
    local name=$1 input=$2 spec=$3
    shift 3
    err=$tmp/$name.err
    rm -f "$tmp/vsock.sock"*
    EMBER_SECCOMP_TRIGGER=$spec LD_PRELOAD=$(realpath "$TRIGGER") \
        timeout --preserve-status -s TERM "$WAIT_S" "$EMBER" "$@" <"$input" >"$tmp/$name.out" 2>"$err"
    status=$?
}

# expect_violation DESC KIND CALL_NAME: status 148, the report names both.
expect_violation() {
    local desc=$1 kind=$2 call=$3 line
    line=$(grep -m1 "ember: seccomp: thread" "$err")
    if ! grep -q "seccomp-trigger: attempting" "$err"; then
        report fail "$desc" "the thread never made the call (status $status)"
    elif grep -q "seccomp-trigger: the forbidden call returned" "$err"; then
        report fail "$desc" "the call went through (status $status)"
    elif [ "$status" != "$VIOLATION" ]; then
        report fail "$desc" "status $status, expected $VIOLATION: $(tail -2 "$err" | tr '\n' ' ')"
    elif [[ $line != *"($kind) made a forbidden system call: $call ("* ]]; then
        report fail "$desc" "report: '$line'"
    else
        report ok "$desc"
    fi
}

# The system call each attempt makes, as the report names it.
call_name() {
    case $1 in
    open | create) echo openat ;;
    execve) echo execve ;;
    socket-inet) echo socket ;;
    ptrace) echo ptrace ;;
    kvm-create-vm) echo ioctl ;;
    clone-process) echo clone ;;
    esac
}

kinds=(main vcpu blk net console rng vsock slirp stdin teardown)
if [ -S "$tmp/vub.sock" ]; then
    kinds+=(vhost_user)
else
    report ok "vhost_user: its filter # SKIP no qemu-storage-daemon to serve as the back-end"
fi

# The thread a kind's trigger names: a vhost-user drive's I/O thread is blkN too.
thread_of() {
    case $1 in
    vhost_user) echo blk ;;
    *) echo "$1" ;;
    esac
}
calls=(open execve socket-inet ptrace kvm-create-vm clone-process)

# Without a trigger each configuration lives until stopped: the filters
# allow what starting it takes.
for kind in "${kinds[@]}"; do
    input=/dev/null
    [ "$kind" = stdin ] && input=$tmp/stdin.txt
    # shellcheck disable=SC2046 # args_for gives plain words
    WAIT_S=2 run_ember "$kind-alive" "$input" "" run --kernel "$GUEST" $(args_for "$kind")
    if [ "$status" = "$TERM_STATUS" ] && ! grep -q "seccomp:" "$err"; then
        report ok "$kind: ember runs under its filters until stopped"
    else
        report fail "$kind: ember runs under its filters until stopped" \
            "status $status: $(tail -2 "$err" | tr '\n' ' ')"
    fi
done

for kind in "${kinds[@]}"; do
    input=/dev/null
    [ "$kind" = stdin ] && input=$tmp/stdin.txt
    for call in "${calls[@]}"; do
        # User networking is the one thread that opens internet sockets, and
        # reads /etc/resolv.conf for its DNS forwarder; the main thread opens
        # existing files (PATCH /drives): neither may create one.
        [ "$kind" = slirp ] && [ "$call" = socket-inet ] && continue
        if [ "$kind" = main ] || [ "$kind" = slirp ]; then
            [ "$call" = open ] && call=create
        fi
        # shellcheck disable=SC2046
        run_ember "$kind-$call" "$input" "$(thread_of "$kind"):$call" run --kernel "$GUEST" \
            $(args_for "$kind")
        expect_violation "$kind: $call is refused and ends ember" "$kind" "$(call_name "$call")"
    done
done

# The main thread in API mode: before InstanceStart (preboot), and once the
# machine runs (a configuration file starts it before the loop). The
# violation's metrics line counts it.
cat >"$tmp/config.json" <<EOF
{"boot-source": {"kernel_image_path": "$GUEST"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}
EOF
for mode in preboot main; do
    metrics=$tmp/$mode-metrics.json
    : >"$metrics"
    if [ "$mode" = preboot ]; then
        run_ember "api-$mode" /dev/null main:execve --api-sock "$tmp/api.sock" --metrics-path "$metrics"
    else
        run_ember "api-$mode" /dev/null main:execve --no-api --config-file "$tmp/config.json" \
            --metrics-path "$metrics"
    fi
    expect_violation "API mode, $mode: execve is refused and ends ember" "$mode" execve
    last=$(tail -n1 "$metrics")
    if [[ $last == *'"seccomp":{"num_faults":1}'* ]]; then
        report ok "API mode, $mode: the last metrics line counts the violation"
    else
        report fail "API mode, $mode: the last metrics line counts the violation" "'$last'"
    fi
done

# --seccomp-filter: a policy file replaces ember's filter for the kinds it
# names. One that lets the vCPU open files: the attempt goes through and
# ember lives on; one that refuses only openat there: the report names it.
policy() { # DEFAULT FILTER_ACTION RULES
    printf '{"vcpu": {"default_action": "%s", "filter_action": "%s", "filter": [%s]}}\n' "$@"
}
policy allow trap "" >"$tmp/vcpu-open.json"
WAIT_S=2 run_ember policy-allows /dev/null vcpu:open run --seccomp-filter "$tmp/vcpu-open.json" \
    --kernel "$GUEST"
if [ "$status" = "$TERM_STATUS" ] && grep -q "the forbidden call returned" "$err"; then
    report ok "--seccomp-filter: a policy that allows the vCPU's open is followed"
else
    report fail "--seccomp-filter: a policy that allows the vCPU's open is followed" "status $status"
fi
policy allow trap '{"syscall": "openat", "comment": "nothing else"}' >"$tmp/vcpu-no-open.json"
run_ember policy-refuses /dev/null vcpu:open run --seccomp-filter "$tmp/vcpu-no-open.json" \
    --kernel "$GUEST"
expect_violation "--seccomp-filter: a policy that refuses the vCPU's openat ends ember" vcpu openat
# Firecracker's categories: "vcpu" is the vCPUs'; "vmm" is the I/O threads'
# (Firecracker runs its devices on its vmm thread).
printf '{"vmm": {"default_action": "allow", "filter_action": "trap", "filter": [{"syscall": "getrandom"}]}}\n' \
    >"$tmp/vmm.json"
run_ember policy-vmm /dev/null rng:open run --seccomp-filter "$tmp/vmm.json" --kernel "$GUEST" --rng
if [ "$status" = "$TERM_STATUS" ] && grep -q "the forbidden call returned" "$err"; then
    report ok "--seccomp-filter: Firecracker's vmm category applies to the I/O threads"
else
    report fail "--seccomp-filter: Firecracker's vmm category applies to the I/O threads" \
        "status $status: $(tail -1 "$err")"
fi

# Files ember cannot take: one line and status 2, before anything starts.
printf '\x01\x02binary\x00' >"$tmp/bad-binary.bpf"
printf '{"vcpu": ' >"$tmp/bad-json.json"
policy trap allow '{"syscall": "no_such_call"}' >"$tmp/bad-syscall.json"
policy refuse allow '' >"$tmp/bad-action.json"
policy trap allow '{"syscall": "ioctl", "args": [{"index": 7, "type": "dword", "op": "eq", "val": 1}]}' \
    >"$tmp/bad-index.json"
policy trap allow '{"syscall": "close", "args": [{"index": 0, "type": "qword", "op": "ge", "val": 3}, {"index": 0, "type": "qword", "op": "lt", "val": 1024}]}' \
    >"$tmp/bad-same-argument.json"
for bad in missing bad-binary.bpf bad-json.json bad-syscall.json bad-action.json bad-index.json \
    bad-same-argument.json; do
    out=$("$EMBER" run --seccomp-filter "$tmp/$bad" --kernel "$GUEST" 2>&1 </dev/null)
    status=$?
    lines=$(printf '%s\n' "$out" | wc -l)
    if [ "$status" = 2 ] && [ "$lines" = 1 ] && [[ $out == *"--seccomp-filter"* ]]; then
        report ok "--seccomp-filter $bad: refused with one line ($out)"
    else
        report fail "--seccomp-filter $bad: refused with one line" "status $status: $out"
    fi
done

echo "1..$n"
echo "seccomp: $((n - failed)) passed, $failed failed"
[ "$failed" = 0 ]
