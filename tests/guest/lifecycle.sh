# The virtio-lifecycle case of tests/guest/run.sh (sourced by it, after virtio.sh and net.sh;
# uses their helpers).
#
# guest/virtio-lifecycle.c with every virtio device attached at once: a disk with two queues,
# a network device on net.sh's tap (when the namespace can be made), a console whose input
# keeps trickling in, an entropy device and (ember only) a vsock device. It runs once per
# device (lifecycle_only=DEVICE) on each transport, under QEMU and under ember, so that one
# device's failure does not hide the others'. tests/guest/lifecycle_peer.py is the host side
# for the whole case: it connects into the guest through ember's vsock socket every 100 ms,
# echoes what the guest sends to its listening port, and sends UDP broadcasts on the tap.
#
# Checks of each run: the exit status and every TAP line ok (the same lines as QEMU's, where
# QEMU skipped what it does differently); the disk image unchanged but for sectors 8-15, which
# hold what the guest last wrote there; no console line from a request the device had to
# refuse. ember runs also: log lines rate limited per device and kind of violation (one, then
# at most one every few seconds with the count held back), no sanitizer report, and every host connection the
# guest says it answered was answered on the host side.

LC_LISTEN_PORT=5000 # the guest listens there: the peer connects
LC_ECHO_PORT=6000   # the peer echoes there
LC_DEAD_PORT=6999   # nobody listens there
LC_BEACON_PORT=7999
LC_CID=3
LC_DEVICES=(blk net console rng vsock)
LC_TIMEOUT=120
LC_NEVER_PRINTED="virtio-lifecycle: this line must never reach the console"
LC_PEER_PID=""
LC_NET=0
LC_NET_WHY=""
# A variant of the ember runs (polling.sh): its name in the checks and log files, and ember's
# extra arguments.
LC_VARIANT=""
LC_EMBER_ARGS=()

# What QEMU 7.2 does differently (the guest skips it under QEMU, lifecycle_skip=):
#   vsock          QEMU's virtio-vsock is vhost-vsock: its host side is AF_VSOCK, not ember's
#                  unix socket protocol, and it needs /dev/vhost-vsock; QEMU gets no vsock
#                  device here;
#   clear-bits     a status write that clears DRIVER_OK, FEATURES_OK or ACKNOWLEDGE is stored
#                  as written: no NEEDS_RESET, no configuration interrupt (the specification
#                  forbids the driver to clear bits and leaves the device's answer open; ember
#                  refuses the write and needs a reset);
#   regs-live      queue registers written while live are taken (virtio-pci reads the new
#                  values back; enable 0 is ignored): ember ignores them while live;
#   queue-size,    an activation with a queue of size 48, or with rings at 1 TiB, is accepted
#   rings-outside  (as in virtio-hostile): no NEEDS_RESET;
#   bus-master     bus mastering turned off while live stops nothing and sets no NEEDS_RESET.
QEMU_LIFECYCLE_SKIP=vsock,clear-bits,regs-live,queue-size,rings-outside,bus-master

lifecycle_stop_peer() {
    [ -n "$LC_PEER_PID" ] || return 0
    kill "$LC_PEER_PID" 2>/dev/null
    wait "$LC_PEER_PID" 2>/dev/null
    LC_PEER_PID=""
}

# The network namespace (net.sh) when it can be had, and the peer; false when the peer
# cannot run.
lifecycle_start_peer() {
    LC_NET_WHY=$(net_missing)
    if [ -z "$LC_NET_WHY" ] && ! net_setup; then
        LC_NET_WHY="network namespace: $NET_SETUP_ERROR"
    fi
    LC_NET=0
    [ -n "$LC_NET_WHY" ] || LC_NET=1
    command -v python3 >/dev/null 2>&1 || return 1
    local prefix=() beacon=()
    if [ "$LC_NET" = 1 ]; then
        prefix=(ip netns exec "$NET_NS")
        beacon=(--beacon "${NET_HOST_IP%.*}.255:$LC_BEACON_PORT")
    fi
    local log=$OUT_DIR/lifecycle-peer.log
    ${prefix[@]+"${prefix[@]}"} python3 "$ROOT/tests/guest/lifecycle_peer.py" \
        --uds "$VT_DIR/lc-vsock" --connect-port "$LC_LISTEN_PORT" \
        --listen-port "$LC_ECHO_PORT" ${beacon[@]+"${beacon[@]}"} >"$log" 2>&1 &
    LC_PEER_PID=$!
    at_exit lifecycle_stop_peer
    local _
    for _ in $(seq 1 100); do
        grep -q '^lifecycle_peer: ready' "$log" && return 0
        sleep 0.05
    done
    return 1
}

lifecycle_cmdline() { # lifecycle_cmdline DEVICE EXTRA...
    local dev=$1
    shift
    local c="console=ttyS0 lifecycle_only=$dev vsock_listen_port=$LC_LISTEN_PORT"
    c="$c vsock_echo_port=$LC_ECHO_PORT vsock_dead_port=$LC_DEAD_PORT"
    if [ "$LC_NET" = 1 ]; then
        c="$c net_mac=$NET_MAC net_ip=$NET_GUEST_IP net_host_ip=$NET_HOST_IP"
        c="$c net_host_mac=$NET_HOST_MAC net_port=$NET_PORT"
    else
        c="$c lifecycle_absent=net"
    fi
    echo "$c $*"
}

# The image checks: sectors 8-15 as the guest last wrote them, everything else as it was.
lifecycle_disk_checks() { # VMM TRANSPORT DEVICE DISK
    local desc="$1: virtio-lifecycle $3 ($2)" disk=$4 orig=$VT_DIR/lifecycle.img line host
    if cmp -s <(head -c 4096 "$disk") <(head -c 4096 "$orig") &&
        cmp -s <(tail -c +8193 "$disk") <(tail -c +8193 "$orig"); then
        report pass "$desc: disk image unchanged outside sectors 8-15"
    else
        report fail "$desc: disk image unchanged outside sectors 8-15" \
            "$(cmp "$disk" "$orig" | head -n1)"
    fi
    line=$(tr -d '\r' <"$RUN_OUT" | sed -n 's/^# lifecycle-blk-data: //p' | tail -n1)
    host=$(dd if="$disk" bs=512 skip=8 count=8 status=none | cksum)
    if [ -n "$line" ] && [ "$line" = "$host" ]; then
        report pass "$desc: sectors 8-15 hold what the guest wrote last"
    else
        report fail "$desc: sectors 8-15 hold what the guest wrote last" \
            "guest ${line:-printed nothing}, image $host"
    fi
}

# ember's log: a device's line of one kind at most once every LC_LOG_INTERVAL seconds (its
# rate limit: the first line, then one every few seconds with the count of those held back,
# "(N more like this not logged)"); the count lines written at exit do not count. A kind is
# the message with its numbers and that count taken out.
LC_LOG_INTERVAL=4.5

lifecycle_log_checks() { # TRANSPORT DEVICE
    local desc="ember: virtio-lifecycle $2 ($1)" crowded
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$RUN_ERR"; then
        report fail "$desc: no sanitizer report" "$(grep -m1 -E 'Sanitizer|runtime error' "$RUN_ERR")"
    else
        report pass "$desc: no sanitizer report"
    fi
    crowded=$(grep -E '(WARN|ERROR): ' "$RUN_ERR" | grep -vE ': [0-9]+ more like this not logged$' |
        awk -v gap="$LC_LOG_INTERVAL" '
            {
                t = 0 # no time stamp: every repeat is too soon
                if (match($0, /T[0-9][0-9]:[0-9][0-9]:[0-9][0-9](\.[0-9]+)?/)) {
                    split(substr($0, RSTART + 1, RLENGTH - 1), hms, ":")
                    t = hms[1] * 3600 + hms[2] * 60 + hms[3]
                }
                kind = $0
                sub(/^.*(WARN|ERROR): /, "", kind)
                sub(/ \([0-9]+ more like this not logged\)$/, "", kind)
                gsub(/0x[0-9a-fA-F]+/, "0xN", kind)
                gsub(/[0-9]+/, "N", kind)
                if ((kind in last) && t >= last[kind] && t - last[kind] < gap)
                    print kind
                last[kind] = t
            }' | sort | uniq -c)
    if [ -z "$crowded" ]; then
        report pass "$desc: log lines rate limited per device and kind ($(grep -cE '(WARN|ERROR): ' "$RUN_ERR") lines)"
    else
        report fail "$desc: log lines rate limited per device and kind" \
            "$(printf '%s' "$crowded" | head -n3 | tr '\n' ';')"
        grep -E '(WARN|ERROR): ' "$RUN_ERR" | head -n 20 | sed 's/^/#   /'
    fi
    local k missing=""
    for k in $(tr -d '\r' <"$RUN_OUT" | sed -n 's/^# vsock: host connection \([0-9]*\) answered$/\1/p'); do
        grep -qx "host-connect ok $k" "$OUT_DIR/lifecycle-peer.log" || missing="$missing $k"
    done
    if [ -z "$missing" ]; then
        report pass "$desc: the host side got every answer the guest sent"
    else
        report fail "$desc: the host side got every answer the guest sent" "not:$missing"
    fi
}

lifecycle_run() { # VMM TRANSPORT DEVICE
    local vmm=$1 t=$2 dev=$3 name=virtio-lifecycle
    local label=$dev${LC_VARIANT:+ $LC_VARIANT} tag=$dev${LC_VARIANT:+-$LC_VARIANT}
    local disk=$VT_DIR/lifecycle-$vmm-$t-$tag.img
    cp "$VT_DIR/lifecycle.img" "$disk"
    local RUN_TIMEOUT=$LC_TIMEOUT
    local net_args=()
    if [ "$vmm" = qemu ]; then
        [ "$LC_NET" = 1 ] && net_args=(-netdev
            "tap,id=n0,ifname=$NET_TAP,script=no,downscript=no,vhost=off"
            -device "$(qemu_dev "$t" net),netdev=n0,mac=$NET_MAC")
        local serial=$OUT_DIR/$name-$dev.qemu-$t.serial
        run_vqemu "$name" "$t" trickle "$(lifecycle_cmdline "$dev" \
            "lifecycle_skip=$QEMU_LIFECYCLE_SKIP")" -serial "file:$serial" \
            -drive "file=$disk,if=none,id=d0,format=raw" \
            -device "$(qemu_dev "$t" blk),drive=d0,num-queues=2" \
            -object rng-random,id=rng0,filename=/dev/urandom \
            -device "$(qemu_dev "$t" rng),rng=rng0" \
            -chardev stdio,id=con0,signal=off \
            -device "$(qemu_dev "$t" serial)" -device virtconsole,chardev=con0 \
            ${net_args[@]+"${net_args[@]}"}
        cat "$serial" "$RUN_OUT" >"$OUT_DIR/$name-$dev.qemu-$t.out"
        mv "$RUN_ERR" "$OUT_DIR/$name-$dev.qemu-$t.err"
        RUN_OUT=$OUT_DIR/$name-$dev.qemu-$t.out
        RUN_ERR=$OUT_DIR/$name-$dev.qemu-$t.err
    else
        [ "$LC_NET" = 1 ] && net_args=(--net "tap=$NET_TAP,mac=$NET_MAC")
        run_vember "$name" "$t" trickle "$(lifecycle_cmdline "$dev")" \
            --drive "path=$disk,queues=2" --rng --console virtio \
            --vsock "cid=$LC_CID,uds=$VT_DIR/lc-vsock" ${net_args[@]+"${net_args[@]}"} \
            ${LC_EMBER_ARGS[@]+"${LC_EMBER_ARGS[@]}"}
        mv "$RUN_OUT" "$OUT_DIR/$name-$tag.ember-$t.out"
        mv "$RUN_ERR" "$OUT_DIR/$name-$tag.ember-$t.err"
        RUN_OUT=$OUT_DIR/$name-$tag.ember-$t.out
        RUN_ERR=$OUT_DIR/$name-$tag.ember-$t.err
    fi
    local took
    took=$(tr -d '\r' <"$RUN_OUT" | grep -c '^ok \|^not ok ')
    expect_pass "$vmm: virtio-lifecycle $label ($t): every case passes ($took TAP lines)"
    lifecycle_disk_checks "$vmm" "$t" "$label" "$disk"
    if grep -qF "$LC_NEVER_PRINTED" "$RUN_OUT"; then
        report fail "$vmm: virtio-lifecycle $label ($t): no console line from a refused request" \
            "it was printed"
    else
        report pass "$vmm: virtio-lifecycle $label ($t): no console line from a refused request"
    fi
    if [ "$vmm" = ember ]; then
        sleep 0.2 # the peer logs the last answer it read
        lifecycle_log_checks "$t" "$label"
    fi
}

case_virtio_lifecycle() {
    virtio_tmp
    head -c $((1024 * 1024)) /dev/urandom >"$VT_DIR/lifecycle.img"
    if ! lifecycle_start_peer; then
        report skip "virtio-lifecycle" "the host side (tests/guest/lifecycle_peer.py, python3) did not start"
        lifecycle_stop_peer
        return 0
    fi
    [ "$LC_NET" = 1 ] || echo "# virtio-lifecycle: no network device: $LC_NET_WHY"
    [ "$have_qemu" = 1 ] && echo "# virtio-lifecycle: QEMU gets no vsock device (its vsock is" \
        "vhost-vsock, AF_VSOCK on the host$([ -c /dev/vhost-vsock ] || echo ", and /dev/vhost-vsock does not exist here"))"
    local t dev ref start
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        for dev in "${LC_DEVICES[@]}"; do
            ref=""
            if [ "$have_qemu" = 1 ]; then
                start=$(date +%s%N)
                lifecycle_run qemu "$t" "$dev"
                echo "# qemu: virtio-lifecycle $dev ($t) took $((($(date +%s%N) - start) / 1000000)) ms"
                ref=$RUN_OUT.unskipped
                sed 's/ # SKIP in lifecycle_skip=.*//' "$RUN_OUT" >"$ref"
            else
                report skip "qemu: virtio-lifecycle $dev ($t)" "$qemu_missing"
            fi
            if [ "$have_ember" = 1 ]; then
                start=$(date +%s%N)
                lifecycle_run ember "$t" "$dev"
                echo "# ember: virtio-lifecycle $dev ($t) took $((($(date +%s%N) - start) / 1000000)) ms"
                same_tap "ember: virtio-lifecycle $dev ($t): same TAP lines as QEMU" "$ref"
            else
                report skip "ember: virtio-lifecycle $dev ($t)" "$(ember_skip_reason)"
            fi
        done
    done
    lifecycle_stop_peer
}
