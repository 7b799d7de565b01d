# The virtio cases of tests/guest/run.sh (sourced by it; uses its report/check helpers).
#
# Each virtio guest runs four times: under QEMU and under ember, each with virtio-mmio and with
# virtio-pci. The QEMU run of a transport is the reference for ember's TAP lines.
#   QEMU virtio-mmio: -M microvm,acpi=off (it appends virtio_mmio.device= to the command line)
#                     with -global virtio-mmio.force-legacy=false (version 2 devices).
#   QEMU virtio-pci:  -M q35 with qboot (-bios qboot.rom), which starts a PVH ELF in ~0.15 s
#                     here; SeaBIOS takes ~4 s (its real-mode code runs emulated). qboot leaves
#                     BARs unassigned: the guest places them itself.
# Disk images live in a temporary directory; the harness compares their cksum with what the
# guest reports and checks that read-only and attacked images do not change.

VIRTIO_TRANSPORTS=(mmio pci)
QBOOT=${QBOOT:-/usr/share/qemu/qboot.rom}
VT_DIR=""
VMM_PREFIX=() # a command the VMMs run under (net.sh: ip netns exec NS)

virtio_tmp() {
    if [ -z "$VT_DIR" ]; then
        VT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ember-virtio.XXXXXX")
        at_exit 'rm -rf "$VT_DIR"'
    fi
}

qemu_machine() { # qemu_machine TRANSPORT -> machine arguments, one per line
    if [ "$1" = mmio ]; then
        printf '%s\n' -M microvm,x-option-roms=off,rtc=off,acpi=off \
            -global virtio-mmio.force-legacy=false
    elif [ -r "$QBOOT" ]; then
        printf '%s\n' -M q35 -bios "$QBOOT"
    else
        printf '%s\n' -M q35 # SeaBIOS: slow but works
    fi
}

qemu_dev() { # qemu_dev TRANSPORT KIND -> the -device driver name for it
    if [ "$1" = mmio ]; then
        echo "virtio-$2-device"
    else
        echo "virtio-$2-pci,disable-legacy=on"
    fi
}

# Console input that keeps coming, a line every 20 ms, until the reader goes away.
trickle_input() {
    local i=0
    while printf 'trickled input line %d\n' "$i" 2>/dev/null; do
        i=$((i + 1))
        sleep 0.02
    done
}

# Standard input for a run: a file, "trickle" (trickle_input) or "" (none).
run_input() {
    case $1 in
    "") cat /dev/null ;;
    trickle) trickle_input ;;
    *) cat "$1" ;;
    esac
}

# run_vqemu NAME TRANSPORT INPUT CMDLINE QEMU-ARGS...: INPUT as run_input takes it.
# QEMU is the reference: a run in which one of the guest's checks failed is run once more, and
# the log says so (its timing-bound checks, such as the entropy device's rate, fail now and then
# when the machine is loaded); ember is never rerun.
run_vqemu() {
    run_vqemu_once "$@"
    if [ "$RUN_STATUS" != "$DEBUG_EXIT_PASS" ] && tr -d '\r' <"$RUN_OUT" | grep -q '^not ok'; then
        echo "# QEMU's $1 ($2) reference run failed ($(tr -d '\r' <"$RUN_OUT" | grep -m1 '^not ok')): run once more"
        cp "$RUN_OUT" "$RUN_OUT.first"
        run_vqemu_once "$@"
    fi
}

# The console case passes its own stdio chardev and serial; the others get -serial stdio.
run_vqemu_once() {
    local name=$1 transport=$2 input=$3 cmdline=$4
    shift 4
    RUN_OUT=$OUT_DIR/$name.qemu-$transport.out
    RUN_ERR=$OUT_DIR/$name.qemu-$transport.err
    local machine=()
    mapfile -t machine < <(qemu_machine "$transport")
    local serial=(-serial stdio)
    case " $* " in *" -serial "*) serial=() ;; esac
    ${VMM_PREFIX[@]+"${VMM_PREFIX[@]}"} timeout "$RUN_TIMEOUT" "$QEMU" "${machine[@]}" -nodefaults -no-user-config -display none \
        -enable-kvm -cpu host,-arch-capabilities -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -m 128 "${serial[@]}" "$@" -kernel "$GUEST_DIR/$name.elf" -append "$cmdline" \
        < <(run_input "$input") >"$RUN_OUT" 2>"$RUN_ERR"
    RUN_STATUS=$?
}

# run_vember NAME TRANSPORT INPUT CMDLINE EMBER-ARGS...
run_vember() {
    local name=$1 transport=$2 input=$3 cmdline=$4
    shift 4
    RUN_OUT=$OUT_DIR/$name.ember-$transport.out
    RUN_ERR=$OUT_DIR/$name.ember-$transport.err
    ${VMM_PREFIX[@]+"${VMM_PREFIX[@]}"} timeout "$RUN_TIMEOUT" "$EMBER" run \
        --kernel "$GUEST_DIR/$name.elf" --debug-exit \
        --transport "$transport" --cmdline "$cmdline" "$@" \
        < <(run_input "$input") >"$RUN_OUT" 2>"$RUN_ERR"
    RUN_STATUS=$?
}

# virtio_runs NAME FN [SKIP_KEY]: calls FN VMM TRANSPORT for each of the four runs, or reports
# the skip; FN runs the guest and checks what is particular to it. expect_pass and same_tap
# follow. With SKIP_KEY (e.g. hostile_skip), what QEMU's run skipped through that command-line
# list compares as if it had passed there.
virtio_runs() {
    local name=$1 fn=$2 skip_key=${3:-} t ref
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        ref=""
        if [ "$have_qemu" = 1 ]; then
            "$fn" qemu "$t"
            ref=$RUN_OUT
        else
            report skip "qemu: $name ($t)" "$qemu_missing"
        fi
        if [ "$have_ember" = 1 ]; then
            "$fn" ember "$t"
            if [ -n "$skip_key" ] && [ -s "$ref" ]; then
                sed "s/ # SKIP in $skip_key=.*//" "$ref" >"$ref.unskipped"
                ref=$ref.unskipped
            fi
            same_tap "ember: $name ($t): same TAP lines as QEMU" "$ref"
        else
            report skip "ember: $name ($t)" "$(ember_skip_reason)"
        fi
    done
}

# expect_line DESC TEXT: the run's standard output holds the line TEXT.
expect_line() {
    if tr -d '\r' <"$RUN_OUT" | grep -qxF -- "$2"; then
        report pass "$1"
    else
        report fail "$1" "no line \"$2\" in the output"
        show_log "$RUN_OUT" "$RUN_ERR"
    fi
}

# ---- virtio-blk ----------------------------------------------------------------------------

BLK_SECTORS=16384 # 8 MiB
BLK_ID=ember-disk0
RO_ID=ember-ro

blk_run() { # blk_run VMM TRANSPORT
    local vmm=$1 t=$2 disk=$VT_DIR/disk-$1-$2.img ro=$VT_DIR/ro.img
    rm -f "$disk"
    truncate -s $((BLK_SECTORS * 512)) "$disk"
    local ro_sum
    ro_sum=$(cksum <"$ro" | cut -d' ' -f1)
    local cmdline="console=ttyS0 blk_id=$BLK_ID ro_id=$RO_ID blk_queues=2"
    cmdline="$cmdline blk_sectors=$BLK_SECTORS ro_cksum=$ro_sum"
    if [ "$vmm" = qemu ]; then
        run_vqemu virtio-blk "$t" "" "$cmdline" \
            -drive "file=$disk,if=none,id=d0,format=raw,cache=writeback,aio=io_uring" \
            -device "$(qemu_dev "$t" blk),drive=d0,serial=$BLK_ID,num-queues=2" \
            -drive "file=$ro,if=none,id=d1,format=raw,readonly=on" \
            -device "$(qemu_dev "$t" blk),drive=d1,serial=$RO_ID"
    else
        run_vember virtio-blk "$t" "" "$cmdline" \
            --drive "path=$disk,id=$BLK_ID,queues=2" --drive "path=$ro,id=$RO_ID,readonly=on"
    fi
    expect_pass "$vmm: virtio-blk ($t): all checks pass"
    # The guest's cksum of the final contents against the image file.
    local line host
    line=$(tr -d '\r' <"$RUN_OUT" | sed -n 's/^# blk-checksum: //p' | tail -n1)
    host=$(cksum <"$disk" | cut -d' ' -f1,2)
    if [ -z "$line" ]; then
        report fail "$vmm: virtio-blk ($t): image checksum" "the guest printed no blk-checksum"
    elif [ "$line" = "$host" ]; then
        report pass "$vmm: virtio-blk ($t): image file cksum matches the guest's ($host)"
    else
        report fail "$vmm: virtio-blk ($t): image checksum" "guest $line, file $host"
    fi
    if [ "$(cksum <"$ro" | cut -d' ' -f1)" = "$ro_sum" ]; then
        report pass "$vmm: virtio-blk ($t): read-only image unchanged"
    else
        report fail "$vmm: virtio-blk ($t): read-only image unchanged" "it changed"
    fi
}

case_virtio_blk() {
    virtio_tmp
    head -c $((1024 * 1024)) /dev/urandom >"$VT_DIR/ro.img"
    virtio_runs virtio-blk blk_run
}

# ---- virtio-console ------------------------------------------------------------------------

CONSOLE_INPUT="ember console line: 12 spaces  and = signs"

console_run() {
    local vmm=$1 t=$2 input=$VT_DIR/console-input bulk=$VT_DIR/console-bulk
    # A line, then 20 KiB of text: more than the guest's buffers and ember's 4 KiB input
    # buffer hold, so input has to wait for the guest.
    [ -s "$bulk" ] || head -c 15360 /dev/urandom | base64 -w 76 >"$bulk"
    { printf '%s\n' "$CONSOLE_INPUT"; cat "$bulk"; } >"$input"
    local cmdline="console=ttyS0 console_input=\"$CONSOLE_INPUT\""
    cmdline="$cmdline console_bulk_len=$(stat -c %s "$bulk")"
    cmdline="$cmdline console_bulk_cksum=$(cksum <"$bulk" | cut -d' ' -f1)"
    if [ "$vmm" = qemu ]; then
        # Serial to a file, the console port on stdio. (A mux chardev sharing stdio between
        # them lost input here: it passed the port "ember cons" and then only the newline.)
        local serial=$OUT_DIR/virtio-console.qemu-$t.serial
        run_vqemu virtio-console "$t" "$input" "$cmdline" -serial "file:$serial" \
            -chardev stdio,id=char0,signal=off \
            -device "$(qemu_dev "$t" serial)" -device virtconsole,chardev=char0
        cat "$serial" "$RUN_OUT" >"$RUN_OUT.all"
        RUN_OUT=$RUN_OUT.all
    else
        run_vember virtio-console "$t" "$input" "$cmdline" --console virtio
    fi
    expect_pass "$vmm: virtio-console ($t): all checks pass"
    expect_line "$vmm: virtio-console ($t): guest output on stdout" \
        "virtio-console: hello from the guest"
    expect_line "$vmm: virtio-console ($t): input echoed on stdout" \
        "virtio-console echo: $CONSOLE_INPUT"
}

case_virtio_console() {
    virtio_tmp
    virtio_runs virtio-console console_run
}

# ---- virtio-rng ----------------------------------------------------------------------------

RNG_RATE=32768 # bytes per second: the guest times rate/2 bytes after draining a burst

rng_run() {
    local vmm=$1 t=$2 cmdline="console=ttyS0 rng_rate=$RNG_RATE"
    if [ "$vmm" = qemu ]; then
        # QEMU limits per period: the same rate in quarter-second steps.
        run_vqemu virtio-rng "$t" "" "$cmdline" \
            -object rng-random,id=rng0,filename=/dev/urandom \
            -device "$(qemu_dev "$t" rng),rng=rng0,max-bytes=$((RNG_RATE / 4)),period=250"
    else
        run_vember virtio-rng "$t" "" "$cmdline" --rng-rate "$RNG_RATE"
    fi
    expect_pass "$vmm: virtio-rng ($t): all checks pass"
}

case_virtio_rng() {
    virtio_runs virtio-rng rng_run
}

# ---- virtio-hostile ------------------------------------------------------------------------

# What QEMU 7.2 does with the attacks it does not flag (found with this guest; the guest skips
# them under QEMU, with hostile_skip=):
#   outside            a buffer at 1 TiB goes through a bounce buffer and the request completes:
#                      on the disk the write lands (sector 0 changes); no NEEDS_RESET anywhere;
#   rings-outside      rings at 1 TiB are accepted: no NEEDS_RESET;
#   queue-size         split queues of any size are accepted (no power-of-two check);
#   blk:avail-jump     virtio-blk pops past the jump and runs the write in ring slot 0 (and
#                      the zero heads after it) before "Virtqueue size exceeded";
#   rng:huge-len       flagged ("bogus descriptor"), but only after ~11 s of mapping 4 GiB;
#   rng:indirect-nested, console:indirect-nested, console:avail-jump: not flagged;
#   features           FEATURES_OK stays set for a feature the device did not offer (QEMU drops
#                      the bit) and for a driver without VERSION_1 on a modern-only device.
# Everything else QEMU flags (stderr "Looped descriptor", "Desc next is 259", ...), sets
# NEEDS_RESET, raises the configuration interrupt and recovers after a reset.
QEMU_HOSTILE_SKIP=outside,rings-outside,queue-size,blk:avail-jump,rng:huge-len
QEMU_HOSTILE_SKIP=$QEMU_HOSTILE_SKIP,rng:indirect-nested,console:indirect-nested
QEMU_HOSTILE_SKIP=$QEMU_HOSTILE_SKIP,console:avail-jump,features

hostile_run() {
    local vmm=$1 t=$2 disk=$VT_DIR/hostile-$1-$2.img
    cp "$VT_DIR/hostile.img" "$disk"
    local before
    before=$(cksum <"$disk")
    # Console input keeps arriving throughout (a receive queue left disabled must not matter).
    if [ "$vmm" = qemu ]; then
        local serial=$OUT_DIR/virtio-hostile.qemu-$t.serial
        run_vqemu virtio-hostile "$t" trickle "console=ttyS0 hostile_skip=$QEMU_HOSTILE_SKIP" \
            -serial "file:$serial" \
            -drive "file=$disk,if=none,id=d0,format=raw" -device "$(qemu_dev "$t" blk),drive=d0" \
            -object rng-random,id=rng0,filename=/dev/urandom \
            -device "$(qemu_dev "$t" rng),rng=rng0" \
            -chardev stdio,id=con0,signal=off \
            -device "$(qemu_dev "$t" serial)" -device virtconsole,chardev=con0
        cat "$serial" "$RUN_OUT" >"$RUN_OUT.all"
        RUN_OUT=$RUN_OUT.all
    else
        run_vember virtio-hostile "$t" trickle "console=ttyS0" --drive "path=$disk" --rng \
            --console virtio
    fi
    expect_pass "$vmm: virtio-hostile ($t): every attack flagged and survived"
    if [ "$(cksum <"$disk")" = "$before" ]; then
        report pass "$vmm: virtio-hostile ($t): disk image unchanged by the attacks"
    else
        report fail "$vmm: virtio-hostile ($t): disk image unchanged by the attacks" \
            "its cksum changed"
    fi
    [ "$vmm" = ember ] || return 0
    # ember accounts for each violation in its log: a line, or a count of lines its rate limit
    # held back; nothing else is logged.
    local dev name attacks logged bad=""
    for dev in blk:blk0 rng:rng console:console; do
        name=${dev%%:*}
        attacks=$(tr -d '\r' <"$RUN_OUT" | grep -c "^# hostile: $name: ")
        logged=$(logged_events "${dev#*:}" "$RUN_ERR")
        [ "$attacks" = "$logged" ] || bad="$bad $name: $attacks attacks, $logged logged;"
    done
    if [ -z "$bad" ] && [ "$(grep -cvE '(ERROR|WARN): (blk0|rng|console): ' "$RUN_ERR")" = 0 ]; then
        report pass "ember: virtio-hostile ($t): each violation accounted for in the log, nothing else"
    else
        report fail "ember: virtio-hostile ($t): each violation accounted for in the log" "${bad:-other lines}"
        sed 's/^/#   /' "$RUN_ERR"
    fi
}

case_virtio_hostile() {
    virtio_tmp
    head -c $((1024 * 1024)) /dev/urandom >"$VT_DIR/hostile.img"
    virtio_runs virtio-hostile hostile_run hostile_skip
}

# ---- blk-perf (a smoke run of bench/blk.sh's guest) ----------------------------------------

perf_run() {
    local vmm=$1 t=$2 disk=$VT_DIR/perf.img cmdline="console=ttyS0 perf_ms=50 perf_settle_ms=0"
    [ -s "$disk" ] || truncate -s 32M "$disk"
    if [ "$vmm" = qemu ]; then
        run_vqemu blk-perf "$t" "" "$cmdline" \
            -drive "file=$disk,if=none,id=d0,format=raw,cache=writeback,aio=io_uring" \
            -device "$(qemu_dev "$t" blk),drive=d0"
    else
        run_vember blk-perf "$t" "" "$cmdline" --drive "path=$disk"
    fi
    expect_pass "$vmm: blk-perf ($t): every workload runs (50 ms each)"
}

case_blk_perf() {
    virtio_tmp
    virtio_runs blk-perf perf_run
}
