# The resource cases of tests/guest/run.sh (sourced by it after virtio.sh and net.sh; uses their
# helpers): what a hostile guest can make the VMM spend, measured from the host.
#
#   rss-blk      the virtio-resources guest's large misaligned reads from a cache=none disk
#                (O_DIRECT, so ember must bounce them) into a 256 MiB guest, all buffers on
#                one: 2 at once of up to 512 MiB, as many buffers of as many bytes as the
#                disk allows; then 2 at once of 32 buffers of 32 MiB, past size_max if the
#                disk has one
#   rss-net      its transmit queue kept full of 1514- and 65550-byte frames on a tap with a
#                64 KiB send buffer behind a 20 Mbit/s link (net.sh's net-backpressure set-up)
#   rss-vsock    300 connections to a host program that accepts and never reads, data on each
#                as far as the credit goes, then beyond it (ember only: QEMU needs vhost-vsock)
#   rss-console  8 MiB through virtio-console while the VMM's standard output is not read for
#                RES_CONSOLE_STALL seconds (1)
#   log-flood    the virtio-log-flood guest: 50,000 status writes that take bits away and 50,000
#                notifications of a queue that does not exist on each of virtio-blk and -rng,
#                1,000 malformed requests and 1,000 refused negotiations on each; ember's log
#                must hold per device and kind at most what its rate limit lets through in the
#                time the run took (the first line, one per 5 s, the count at exit), however
#                fast or slow this machine, and its metrics must count the lines it left out
#                (logger.missed_log_count)
#   intx-shared  the virtio-intx-shared guest with nine virtio-pci disks, more than the eight
#                INTx lines: two functions on one line, one deasserts, the other's interrupt
#                must still come
#   bounds       the virtio-bounds guest: offsets and lengths that overflow, the last entry of
#                a table and the one after, rings at the end of RAM and near 2^64
#
# In each, the guest checks that every request ends and that the device works after a reset;
# tests/guest/proc_watch.py samples the VMM every 100 ms: its peak RSS (VmHWM) must not exceed
# the guest RAM it touched (the RSS of that mapping) by more than RES_RSS_EXCESS_MIB. QEMU runs
# the same guest as the reference for its TAP lines; its peak RSS is printed, not judged.

RES_RSS_EXCESS_MIB=${RES_RSS_EXCESS_MIB:-64}
# What ember's virtio-vsock may hold by design on top of that: 256 connections, each with a
# 256 KiB buffer of what the guest sent and the host program has not read (rss-vsock only).
RES_RSS_VSOCK_BUFFERS_MIB=${RES_RSS_VSOCK_BUFFERS_MIB:-64}
RES_LOG_INTERVAL_S=5 # LOG_LIMIT_INTERVAL_MS in src/util/log.h
RES_MEM_MIB=256
RES_TIMEOUT=60
RES_CONSOLE_STALL=1
RES_VSOCK_PORT=5000
RES_IDLE_MS=300 # the guest halts this long before it exits: the last samples see it quiet
RES_DIR=""

res_tmp() {
    if [ -z "$RES_DIR" ]; then
        # Short: vsock socket paths must fit a sockaddr_un.
        RES_DIR=$(mktemp -d /tmp/ember-res.XXXXXX)
        at_exit 'rm -rf "$RES_DIR"'
    fi
}

# A directory on a filesystem that takes O_DIRECT (not tmpfs), or nothing.
res_direct_dir() {
    local d
    for d in ${RES_DIRECT_DIR:-} "$OUT_DIR" /var/tmp /tmp; do
        [ -d "$d" ] && [ -w "$d" ] || continue
        if dd if=/dev/zero of="$d/.odirect-probe" bs=4096 count=1 oflag=direct status=none \
            2>/dev/null; then
            rm -f "$d/.odirect-probe"
            echo "$d"
            return 0
        fi
        rm -f "$d/.odirect-probe"
    done
    return 1
}

# res_start VMM NAME TRANSPORT CMDLINE ARGS...: starts the VMM in the background (standard
# output to RES_STDOUT, default RUN_OUT) with guest RAM RES_MEM_MIB, and proc_watch.py on it.
# Sets RUN_OUT, RUN_ERR, RES_PID; res_wait finishes the run.
res_start() {
    local vmm=$1 name=$2 t=$3 cmdline=$4
    shift 4
    RUN_OUT=$OUT_DIR/$name.$vmm-$t.out
    RUN_ERR=$OUT_DIR/$name.$vmm-$t.err
    RES_WATCH=$OUT_DIR/$name.$vmm-$t.watch
    local stdout=${RES_STDOUT:-$RUN_OUT}
    : >"$RUN_OUT"
    if [ "$vmm" = qemu ]; then
        local machine=()
        mapfile -t machine < <(qemu_machine "$t")
        local serial=(-serial stdio)
        case " $* " in *" -serial "*) serial=() ;; esac
        ${VMM_PREFIX[@]+"${VMM_PREFIX[@]}"} "$QEMU" "${machine[@]}" -nodefaults -no-user-config \
            -display none -enable-kvm -cpu host,-arch-capabilities \
            -device isa-debug-exit,iobase=0xf4,iosize=4 -m "$RES_MEM_MIB" "${serial[@]}" "$@" \
            -kernel "$GUEST_DIR/$name.elf" -append "$cmdline" </dev/null >"$stdout" 2>"$RUN_ERR" &
    else
        ${VMM_PREFIX[@]+"${VMM_PREFIX[@]}"} "$EMBER" run --kernel "$GUEST_DIR/$name.elf" \
            --debug-exit --memory "$RES_MEM_MIB" --transport "$t" --cmdline "$cmdline" "$@" \
            </dev/null >"$stdout" 2>"$RUN_ERR" &
    fi
    RES_PID=$!
    python3 "$ROOT/tests/guest/proc_watch.py" --pid "$RES_PID" --ram-mib "$RES_MEM_MIB" \
        --serial "$RUN_OUT" --timeout "$RES_TIMEOUT" >"$RES_WATCH" 2>&1 &
    RES_WATCH_PID=$!
}

# Waits for the VMM (the watcher ends it after RES_TIMEOUT) and the watcher: RUN_STATUS, and
# RES_PEAK_KB, RES_GUEST_KB, RES_EXCESS_KB from the watcher's report.
res_wait() {
    wait "$RES_PID"
    RUN_STATUS=$?
    wait "$RES_WATCH_PID"
    RES_PEAK_KB=$(awk '$1 == "peak_kb" {print $2}' "$RES_WATCH")
    RES_GUEST_KB=$(awk '$1 == "guest_ram_kb" {print $2}' "$RES_WATCH")
    RES_EXCESS_KB=$(awk '$1 == "excess_kb" {print $2}' "$RES_WATCH")
}

mib() { awk -v k="${1:-0}" 'BEGIN {printf "%.1f", k / 1024}'; }

# res_check_rss DESC [EXTRA_MIB]: ember's peak RSS beyond the guest RAM it touched is within
# the bound (plus EXTRA_MIB).
res_check_rss() {
    local desc=$1 bound=$((RES_RSS_EXCESS_MIB + ${2:-0})) figures
    figures="peak $(mib "$RES_PEAK_KB") MiB, guest RAM touched $(mib "$RES_GUEST_KB") MiB,"
    figures="$figures the rest $(mib "$RES_EXCESS_KB") MiB"
    if grep -q __asan_init "$EMBER" 2>/dev/null; then
        # Its shadow memory and the quarantine of freed blocks are the sanitizer's, not ember's.
        report skip "$desc" "ember is built with AddressSanitizer ($figures)"
    elif [ -z "$RES_PEAK_KB" ] || [ "${RES_PEAK_KB:-0}" = 0 ]; then
        report fail "$desc" "no RSS sample (the VMM went before the first one?)"
        show_log "$RES_WATCH"
    elif [ "$RES_EXCESS_KB" -le $((bound * 1024)) ]; then
        report pass "$desc: at most guest RAM + $bound MiB ($figures)"
    else
        report fail "$desc: at most guest RAM + $bound MiB" "$figures"
    fi
}

res_note_rss() { # a QEMU run's figures, for comparison
    echo "#   $1: peak RSS $(mib "$RES_PEAK_KB") MiB (guest RAM touched $(mib "$RES_GUEST_KB") MiB)"
}

# ---- rss-blk -------------------------------------------------------------------------------

RES_BLK_IMAGE=""
RES_BLK_MIB=1024 # the image's size, less 1 MiB: the largest read
RES_BLK_WITHIN_MIB=512

# The image: 1 GiB + 1 MiB, sparse but for the first and the last sector of every MiB, whose
# first 8 bytes hold the sector's number (little-endian); unchanged means those stamps, the
# size and the allocated blocks.
res_blk_image() {
    [ -z "$RES_BLK_IMAGE" ] || return 0
    local dir
    dir=$(res_direct_dir) || return 1
    RES_BLK_IMAGE=$(mktemp "$dir/ember-rss-blk.XXXXXX")
    at_exit 'rm -f "$RES_BLK_IMAGE"'
    python3 -c '
import os, struct, sys
mib = int(sys.argv[2])
with open(sys.argv[1], "r+b") as f:
    f.truncate((mib + 1) << 20)
    for m in range(mib + 1):
        for sector in (m * 2048, m * 2048 + 2047):
            f.seek(sector * 512)
            f.write(struct.pack("<Q", sector))
    os.fsync(f.fileno())' "$RES_BLK_IMAGE" "$RES_BLK_MIB"
}

res_blk_fingerprint() {
    python3 -c '
import hashlib, sys
h = hashlib.sha1()
with open(sys.argv[1], "rb") as f:
    m = 0
    while True:
        f.seek(m << 20)
        first = f.read(512)
        if not first:
            break
        f.seek((m << 20) + 2047 * 512)
        h.update(first + f.read(512))
        m += 1
print(h.hexdigest())' "$RES_BLK_IMAGE"
    stat -c '%s %b' "$RES_BLK_IMAGE"
}

rss_blk_run() {
    local vmm=$1 t=$2 before
    before=$(res_blk_fingerprint)
    local cmdline="console=ttyS0 res_part=blk res_read_mib=$RES_BLK_WITHIN_MIB res_requests=2"
    cmdline="$cmdline idle_ms=$RES_IDLE_MS"
    if [ "$vmm" = qemu ]; then
        res_start qemu virtio-resources "$t" "$cmdline" \
            -drive "file=$RES_BLK_IMAGE,if=none,id=d0,format=raw,cache=none,aio=io_uring" \
            -device "$(qemu_dev "$t" blk),drive=d0"
    else
        res_start ember virtio-resources "$t" "$cmdline" --drive "path=$RES_BLK_IMAGE,cache=none"
    fi
    res_wait
    expect_pass "$vmm: rss-blk ($t): every large read ends, the disk works after a reset"
    if [ "$(res_blk_fingerprint)" = "$before" ]; then
        report pass "$vmm: rss-blk ($t): the image is unchanged by the reads"
    else
        report fail "$vmm: rss-blk ($t): the image is unchanged by the reads" \
            "was $before, now $(res_blk_fingerprint)"
    fi
    if [ "$vmm" = ember ]; then
        res_check_rss "ember: rss-blk ($t): peak RSS"
    else
        res_note_rss "qemu: rss-blk ($t)"
    fi
}

case_rss_blk() {
    if ! res_blk_image; then
        report skip "rss-blk" "no writable directory here takes O_DIRECT (tmpfs does not)"
        return 0
    fi
    echo "# rss-blk: image $RES_BLK_IMAGE ($(stat -f -c %T "$RES_BLK_IMAGE"))"
    virtio_runs rss-blk rss_blk_run
}

# ---- rss-net -------------------------------------------------------------------------------

rss_net_run() {
    local vmm=$1 t=$2
    # nobody's MAC: the bridge floods the frames to the slow link
    local cmdline="console=ttyS0 res_part=net net_host_mac=02:00:00:00:00:99 res_net_ms=500"
    cmdline="$cmdline idle_ms=$RES_IDLE_MS"
    if [ "$vmm" = qemu ]; then
        res_start qemu virtio-resources "$t" "$cmdline" -netdev \
            "tap,id=n0,ifname=$NET_BP_TAP,script=no,downscript=no,vhost=off,sndbuf=$NET_BP_SNDBUF" \
            -device "$(qemu_dev "$t" net),netdev=n0,mac=$NET_MAC"
    else
        res_start ember virtio-resources "$t" "$cmdline" \
            --net "tap=$NET_BP_TAP,mac=$NET_MAC,sndbuf=$NET_BP_SNDBUF"
    fi
    res_wait
    expect_pass "$vmm: rss-net ($t): every frame of a full transmit queue comes back used"
    if [ "$vmm" = ember ]; then
        res_check_rss "ember: rss-net ($t): peak RSS"
    else
        res_note_rss "qemu: rss-net ($t)"
    fi
}

case_rss_net() {
    net_prepare "rss-net" || return 0
    if ! command -v tc >/dev/null 2>&1; then
        report skip "rss-net" "tc(8) not found (iproute2)"
        return 0
    fi
    if ! net_bp_setup; then
        report skip "rss-net" "$NET_SETUP_ERROR"
        return 0
    fi
    virtio_runs rss-net rss_net_run
}

# ---- rss-vsock -----------------------------------------------------------------------------

# A host program on PATH_PORT that accepts every connection and never reads from it.
res_vsock_listener() { # res_vsock_listener SOCKET_PATH READY_FILE
    exec python3 - "$1" "$2" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(1024)
open(sys.argv[2], "w").write("ready\n")
held = []
while True:
    c, _ = s.accept()
    held.append(c)
EOF
}

rss_vsock_run() {
    local t=$1 uds=$RES_DIR/vsock.sock
    rm -f "$uds" "${uds}_$RES_VSOCK_PORT" "$RES_DIR/listener.ready"
    res_vsock_listener "${uds}_$RES_VSOCK_PORT" "$RES_DIR/listener.ready" &
    local listener=$! _
    for _ in $(seq 1 100); do
        [ -s "$RES_DIR/listener.ready" ] && break
        sleep 0.02
    done
    local cmdline="console=ttyS0 res_part=vsock vsock_port=$RES_VSOCK_PORT vsock_conns=300"
    res_start ember virtio-resources "$t" "$cmdline idle_ms=$RES_IDLE_MS" \
        --vsock "cid=3,uds=$uds" --log-level info
    res_wait
    kill "$listener" 2>/dev/null
    wait "$listener" 2>/dev/null
    expect_pass "ember: rss-vsock ($t): connections answered, credit kept, a reset works"
    res_check_rss "ember: rss-vsock ($t): peak RSS" "$RES_RSS_VSOCK_BUFFERS_MIB"
}

case_rss_vsock() {
    if [ "$have_qemu" = 1 ]; then
        if [ -c /dev/vhost-vsock ]; then
            report skip "qemu: rss-vsock" "the QEMU half is not written (vhost-vsock's host side)"
        else
            report skip "qemu: rss-vsock" "QEMU's virtio-vsock needs /dev/vhost-vsock"
        fi
    fi
    if [ "$have_ember" != 1 ]; then
        report skip "ember: rss-vsock" "$(ember_skip_reason)"
        return 0
    fi
    res_tmp
    local t
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        rss_vsock_run "$t"
    done
}

# ---- rss-console ---------------------------------------------------------------------------

RES_CONSOLE_MIB=8

rss_console_run() {
    local vmm=$1 t=$2 fifo=$RES_DIR/console.fifo
    local cmdline="console=ttyS0 res_part=console res_console_mib=$RES_CONSOLE_MIB"
    cmdline="$cmdline idle_ms=$RES_IDLE_MS"
    rm -f "$fifo"
    mkfifo "$fifo"
    local out=$OUT_DIR/virtio-resources.$vmm-$t.out
    # The reader opens the pipe at once but reads nothing for RES_CONSOLE_STALL seconds.
    (
        exec 3<"$fifo"
        sleep "$RES_CONSOLE_STALL"
        cat <&3 >"$out.console"
    ) &
    local reader=$!
    if [ "$vmm" = qemu ]; then
        local serial=$out.serial
        RES_STDOUT=$fifo res_start qemu virtio-resources "$t" "$cmdline" \
            -serial "file:$serial" -chardev stdio,id=con0,signal=off \
            -device "$(qemu_dev "$t" serial)" -device virtconsole,chardev=con0
        # The watcher looks for the idle lines in the serial output.
    else
        RES_STDOUT=$fifo res_start ember virtio-resources "$t" "$cmdline" --console virtio
    fi
    res_wait
    wait "$reader"
    if [ "$vmm" = qemu ]; then
        cat "$out.serial" "$out.console" >"$RUN_OUT"
    else
        cp "$out.console" "$RUN_OUT"
    fi
    expect_pass "$vmm: rss-console ($t): the flood goes out while stdout stalls, a reset works"
    local lines want=$((RES_CONSOLE_MIB * 1024 * 1024 / 64))
    lines=$(grep -c '^console flood [0-9]* [a-z]*$' "$out.console")
    if [ "$vmm" = qemu ]; then
        # QEMU's virtconsole drops what its stdio chardev does not take at once.
        echo "#   qemu: rss-console ($t): $lines of $want lines reached stdout"
    elif [ "$lines" = "$want" ]; then
        report pass "$vmm: rss-console ($t): all $want lines reached stdout"
    else
        report fail "$vmm: rss-console ($t): all $want lines reached stdout" "$lines did"
    fi
    if [ "$vmm" = ember ]; then
        res_check_rss "ember: rss-console ($t): peak RSS"
    else
        res_note_rss "qemu: rss-console ($t)"
    fi
}

case_rss_console() {
    res_tmp
    virtio_runs rss-console rss_console_run
}

# ---- log-flood -----------------------------------------------------------------------------

# QEMU resets a device in ~8 ms here: smaller floods there, where only the guest's
# verdicts count.
RES_FLOOD_QEMU="flood_status=5000 flood_notify=5000 flood_bad=100"

# Whether a TAP run is over: its plan and as many results, or a bail-out.
tap_complete() {
    local plan n
    plan=$(tr -d '\r' <"$1" | grep -E '^1\.\.[0-9]+$' | head -n1)
    tr -d '\r' <"$1" | grep -q '^Bail out!' && return 0
    [ -n "$plan" ] || return 1
    n=$(tr -d '\r' <"$1" | grep -cE '^(not )?ok [0-9]+')
    [ "$n" = "${plan#1..}" ]
}

# ember in configuration-file mode, the one that writes metrics; it has no debug-exit port,
# so the run ends with SIGTERM once the guest has reported every test.
log_flood_ember() {
    local t=$1 cfg=$RES_DIR/log-flood-$t.json
    RUN_OUT=$OUT_DIR/virtio-log-flood.ember-$t.out
    RUN_ERR=$OUT_DIR/virtio-log-flood.ember-$t.err
    RES_METRICS=$OUT_DIR/virtio-log-flood.ember-$t.metrics
    rm -f "$RES_METRICS"
    printf '%s\n' \
        "{\"boot-source\": {\"kernel_image_path\": \"$GUEST_DIR/virtio-log-flood.elf\"," \
        "                 \"boot_args\": \"console=ttyS0\"}," \
        " \"drives\": [{\"drive_id\": \"disk\", \"path_on_host\": \"$RES_DIR/log-flood.img\"," \
        "             \"is_root_device\": false, \"is_read_only\": false}]," \
        " \"machine-config\": {\"vcpu_count\": 1, \"mem_size_mib\": 128}," \
        " \"entropy\": {}}" >"$cfg"
    local pci=()
    [ "$t" = pci ] && pci=(--enable-pci)
    "$EMBER" --config-file "$cfg" --no-api --metrics-path "$RES_METRICS" "${pci[@]}" \
        </dev/null >"$RUN_OUT" 2>"$RUN_ERR" &
    local pid=$! waited=0 started
    started=$(date +%s)
    while kill -0 "$pid" 2>/dev/null && ! tap_complete "$RUN_OUT" &&
        [ $waited -lt $((RES_TIMEOUT * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -TERM "$pid" 2>/dev/null
    wait "$pid"
    RUN_STATUS=$?
    RES_RUN_SECONDS=$(($(date +%s) - started + 1))
}

# Sum of a metric over every line of a metrics file (each line holds changes), or nothing
# when no line has it.
metric_sum() { # metric_sum FILE SECTION KEY
    python3 -c '
import json, sys
total, seen = 0, False
for line in open(sys.argv[1]):
    try:
        v = json.loads(line).get(sys.argv[2], {}).get(sys.argv[3])
    except ValueError:
        continue
    if isinstance(v, int):
        total, seen = total + v, True
print(total if seen else "")' "$@" 2>/dev/null
}

log_flood_run() {
    local vmm=$1 t=$2
    if [ "$vmm" = qemu ]; then
        run_vqemu virtio-log-flood "$t" "" "console=ttyS0 $RES_FLOOD_QEMU" \
            -drive "file=$RES_DIR/log-flood.img,if=none,id=d0,format=raw" \
            -device "$(qemu_dev "$t" blk),drive=d0" \
            -object rng-random,id=rng0,filename=/dev/urandom -device "$(qemu_dev "$t" rng),rng=rng0"
        expect_pass "qemu: log-flood ($t): every device survives the floods"
        return 0
    fi
    log_flood_ember "$t"
    local why desc="ember: log-flood ($t): every device survives the floods"
    if ! why=$(check_tap_all_ok "$RUN_OUT"); then
        report fail "$desc" "$why (status $RUN_STATUS)"
        show_log "$RUN_OUT"
        sed -n '1,20p' "$RUN_ERR" | sed 's/^/#   /'
    else
        report pass "$desc (ended by SIGTERM after the last test: no debug-exit port here)"
    fi
    # The guest's timings, the log's size.
    local lines bytes
    lines=$(grep -c . "$RUN_ERR")
    bytes=$(stat -c %s "$RUN_ERR")
    tr -d '\r' <"$RUN_OUT" | sed -n 's/^# log-flood: /#   /p'
    tr -d '\r' <"$RUN_OUT" | awk '
        / status writes taking bits away in / {sw += $4; sms += $(NF - 4)}
        / notifications of a queue that does not exist in / {nw += $4; nms += $(NF - 1)}
        END {printf "#   in all: %d status writes in %d ms, %d notifications in %d ms\n", sw, sms, nw, nms}'
    echo "#   ember's log: $lines lines, $bytes bytes"
    # Per device and kind, at most what the rate limit lets through in the run's time: the first
    # line, one per interval, the count at exit. Four kinds on each device.
    local per_kind=$((2 + (RES_RUN_SECONDS + RES_LOG_INTERVAL_S - 1) / RES_LOG_INTERVAL_S))
    local dev n max=$((4 * per_kind)) bad=""
    for dev in blk0 rng; do
        n=$(grep -cE "(ERROR|WARN|INFO): $dev: " "$RUN_ERR")
        echo "#   $dev: $n lines"
        [ "$n" -le "$max" ] || bad="$bad $dev: $n lines;"
    done
    if [ -z "$bad" ] && [ "$lines" -le $((2 * max + 4)) ]; then
        report pass "ember: log-flood ($t): at most $per_kind log lines per device and kind in ${RES_RUN_SECONDS} s ($lines lines, $bytes bytes)"
    else
        report fail "ember: log-flood ($t): at most $per_kind log lines per device and kind in ${RES_RUN_SECONDS} s" \
            "${bad:-} $lines lines, $bytes bytes in all"
        cut -d' ' -f3- "$RUN_ERR" | sed -E 's/0x[0-9a-f]+|[0-9]+/N/g' | sort | uniq -c |
            sort -rn | head -n 10 | sed 's/^/#   /'
    fi
    local missed
    missed=$(metric_sum "$RES_METRICS" logger missed_log_count)
    if [ -z "$missed" ]; then
        report fail "ember: log-flood ($t): metrics count the lines left out" \
            "no logger.missed_log_count in $(grep -c . "$RES_METRICS" 2>/dev/null || echo 0) metrics lines"
    elif [ "$missed" -gt 0 ]; then
        report pass "ember: log-flood ($t): metrics count the lines left out (logger.missed_log_count $missed)"
    else
        report fail "ember: log-flood ($t): metrics count the lines left out" \
            "logger.missed_log_count is $missed"
    fi
}

case_log_flood() {
    res_tmp
    [ -s "$RES_DIR/log-flood.img" ] || head -c 65536 /dev/urandom >"$RES_DIR/log-flood.img"
    virtio_runs log-flood log_flood_run
}

# ---- intx-shared ---------------------------------------------------------------------------

# Nine disks, more functions than INTx lines, under both VMMs. ember gives slot s the line
# GSI 16 + s % 8 (slots 1 and 9 share GSI 17); QEMU's q35 routes INTA# of slot s through the
# ICH9's PIRQ registers (four of its lines serve all nine slots here). The guest finds each
# function's IOAPIC pin itself, raising its interrupt alone.
RES_INTX_DISKS=9

intx_run() {
    local vmm=$1 t=$2 i args=()
    for i in $(seq 1 "$RES_INTX_DISKS"); do
        [ -s "$RES_DIR/intx-$i.img" ] || head -c 4096 /dev/zero >"$RES_DIR/intx-$i.img"
        if [ "$vmm" = qemu ]; then
            args+=(-drive "file=$RES_DIR/intx-$i.img,if=none,id=d$i,format=raw"
                -device "$(qemu_dev "$t" blk),drive=d$i")
        else
            args+=(--drive "path=$RES_DIR/intx-$i.img")
        fi
    done
    if [ "$vmm" = qemu ]; then
        run_vqemu virtio-intx-shared "$t" "" "console=ttyS0" "${args[@]}"
    else
        run_vember virtio-intx-shared "$t" "" "console=ttyS0" "${args[@]}"
    fi
    expect_pass "$vmm: intx-shared ($t): a shared INTx line stays up while a function on it is pending"
}

case_intx_shared() {
    res_tmp
    local VIRTIO_TRANSPORTS=(pci) # INTx is virtio-pci's
    virtio_runs intx-shared intx_run
}

# ---- bounds --------------------------------------------------------------------------------

# What QEMU 7.2 does otherwise (found with this guest; it skips them under QEMU, bounds_skip=):
#   window-bar      it ignores cap.bar of the PCI_CFG window: a write "to BAR 6" at the status
#                   register's offset reaches the status register (and resets the device);
#   select-beyond   a queue_select (QueueSel) beyond its maximum is ignored: queue 0 stays
#                   selected and takes the writes meant for the absent queue;
#   avail-past-ram  without EVENT_IDX it sizes the avail ring without used_event (4 + 2 x size
#                   bytes), so a ring whose used_event alone lies past RAM is fine to it.
QEMU_BOUNDS_SKIP=window-bar,select-beyond,avail-past-ram

bounds_run() {
    local vmm=$1 t=$2
    [ -s "$RES_DIR/bounds.img" ] || head -c 65536 /dev/urandom >"$RES_DIR/bounds.img"
    if [ "$vmm" = qemu ]; then
        run_vqemu virtio-bounds "$t" "" "console=ttyS0 bounds_skip=$QEMU_BOUNDS_SKIP" \
            -drive "file=$RES_DIR/bounds.img,if=none,id=d0,format=raw" \
            -device "$(qemu_dev "$t" blk),drive=d0" \
            -object rng-random,id=rng0,filename=/dev/urandom -device "$(qemu_dev "$t" rng),rng=rng0"
    else
        run_vember virtio-bounds "$t" "" "console=ttyS0" --drive "path=$RES_DIR/bounds.img" --rng
    fi
    expect_pass "$vmm: bounds ($t): edges read 0 or all-ones, nothing crashes, the disk recovers"
}

case_bounds() {
    res_tmp
    virtio_runs bounds bounds_run bounds_skip
}
