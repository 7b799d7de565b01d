# The virtio-net cases of tests/guest/run.sh (sourced by it, after virtio.sh; uses their helpers).
#
# The VMMs run inside a network namespace made for the run (`ip netns add`), attached to a tap
# there that has an address (NET_HOST_IP); tests/guest/net_peer.py runs in the namespace too: a
# UDP echo server and a checksum checker reading the tap with its virtio-net headers. QEMU is
# the reference: -netdev tap,vhost=off with virtio-net-device (microvm) or virtio-net-pci (q35).
# Needs root, ip(8), python3 and /dev/net/tun; each case says which is missing and skips.
#
#   virtio-net          ARP, UDP echoes of 60-1514-byte frames (mergeable and not), checksum
#                       offload, a burst; ember's counters show no drop
#   virtio-net-hostile  malformed transmit frames: dropped and counted by ember, nothing passed
#                       on, the device keeps working
#   net-rate            ember --net tap=..,tx-pps=N: the guest times its frames, the host counts
#                       them on the tap
#   net-vhost           vhost=on fails clearly without /dev/vhost-net, vhost=auto falls back
#                       and says so (with /dev/vhost-net: the guest passes over vhost-net)
#   net-perf            bench/net.sh's guest, its transmit workloads for 50 ms each
#   net-backpressure    a tap behind a 20 Mbit/s link with a 64 KiB send buffer (sndbuf=): the
#                       guest's frames wait for room and all arrive

NET_NS=""
NET_TAP=tap0
NET_HOST_IP=10.77.0.1
NET_GUEST_IP=10.77.0.2
NET_PORT=7777 # UDP echo; NET_PORT+1 answers with checksum verdicts
NET_MAC=52:54:00:12:34:56
NET_HOST_MAC=""
NET_RATE_PPS=2000

# What QEMU 7.2 does differently (found with these guests; they skip it under QEMU, net_skip=):
#   num-buffers  without MRG_RXBUF it leaves num_buffers 0 in VERSION_1 headers, where the
#                specification (5.1.6.4.1) says 1;
#   no-header    a chain shorter than the 12-byte header: "virtio-net header incorrect",
#                NEEDS_RESET (a reset brings the device back);
#   huge         a 65552-byte frame goes to the tap; the host kernel trims the padding after
#                the datagram and the echo server answers;
#   flags        unknown header flags go to the tap, whose kernel ignores them: echoed;
#   writable     a writable buffer after the frame is left out and the frame sent: echoed.
QEMU_NET_SKIP=num-buffers
QEMU_NET_HOSTILE_SKIP=no-header,huge,flags,writable

# Why the network cases cannot run here, or nothing.
net_missing() {
    if [ "$(id -u)" != 0 ]; then
        echo "needs root (network namespace, tap)"
    elif ! command -v ip >/dev/null 2>&1; then
        echo "ip(8) not found (iproute2)"
    elif ! command -v python3 >/dev/null 2>&1; then
        echo "python3 not found (the host's echo server)"
    elif [ ! -c /dev/net/tun ]; then
        echo "/dev/net/tun does not exist"
    fi
}

net_cleanup() {
    [ -n "$NET_NS" ] || return 0
    ip netns pids "$NET_NS" 2>/dev/null | xargs -r kill 2>/dev/null
    ip netns del "$NET_NS" 2>/dev/null
    NET_NS=""
}

# The namespace, its tap and the peer, once per run of the script. False (with NET_SETUP_ERROR)
# when something fails.
net_setup() {
    [ -z "$NET_NS" ] || return 0
    NET_NS=ember-gt-$$
    at_exit net_cleanup
    local c
    if ! ip netns add "$NET_NS" 2>"$OUT_DIR/net-setup.err"; then
        NET_SETUP_ERROR="ip netns add: $(cat "$OUT_DIR/net-setup.err")"
        NET_NS=""
        return 1
    fi
    for c in "link set lo up" "tuntap add dev $NET_TAP mode tap" \
        "addr add $NET_HOST_IP/24 dev $NET_TAP" "link set $NET_TAP up"; do
        # shellcheck disable=SC2086 # c holds plain words
        if ! ip -n "$NET_NS" $c 2>"$OUT_DIR/net-setup.err"; then
            NET_SETUP_ERROR="ip $c: $(cat "$OUT_DIR/net-setup.err")"
            return 1
        fi
    done
    # No IPv6 chatter (router solicitations, DAD) and no IGMP reports (a bridge sent one as a
    # port came up) among the frames the cases count.
    ip netns exec "$NET_NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 \
        net.ipv6.conf.default.disable_ipv6=1 net.ipv4.igmp_link_local_mcast_reports=0 2>/dev/null
    NET_HOST_MAC=$(ip -n "$NET_NS" -o link show "$NET_TAP" |
        sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
    ip netns exec "$NET_NS" python3 "$ROOT/tests/guest/net_peer.py" --ip "$NET_HOST_IP" \
        --port "$NET_PORT" --csum-port $((NET_PORT + 1)) --ifname "$NET_TAP" \
        >"$OUT_DIR/net-peer.log" 2>&1 &
    local _
    for _ in $(seq 1 100); do
        grep -q '^net_peer: ready' "$OUT_DIR/net-peer.log" && break
        sleep 0.05
    done
    if ! grep -q '^net_peer: ready' "$OUT_DIR/net-peer.log"; then
        NET_SETUP_ERROR="the echo server did not start: $(tail -n1 "$OUT_DIR/net-peer.log")"
        return 1
    fi
    VMM_PREFIX=(ip netns exec "$NET_NS")
}

net_cmdline() { # net_cmdline EXTRA...: the guests' parameters
    echo "console=ttyS0 net_mac=$NET_MAC net_ip=$NET_GUEST_IP net_host_ip=$NET_HOST_IP" \
        "net_host_mac=$NET_HOST_MAC net_port=$NET_PORT $*"
}

# net_prepare CASE: sets up the namespace, or reports the case skipped; false when skipped.
net_prepare() {
    local why
    why=$(net_missing)
    if [ -z "$why" ] && ! net_setup; then
        why="network namespace: $NET_SETUP_ERROR"
    fi
    if [ -n "$why" ]; then
        report skip "$1" "$why"
        return 1
    fi
}

run_net_qemu() { # run_net_qemu NAME TRANSPORT CMDLINE
    run_vqemu "$1" "$2" "" "$3" \
        -netdev "tap,id=n0,ifname=$NET_TAP,script=no,downscript=no,vhost=off" \
        -device "$(qemu_dev "$2" net),netdev=n0,mac=$NET_MAC"
}

run_net_ember() { # run_net_ember NAME TRANSPORT CMDLINE NET-OPTIONS [EMBER-ARGS...]
    local name=$1 t=$2 cmdline=$3 opts=$4
    shift 4
    run_vember "$name" "$t" "" "$cmdline" --log-level info \
        --net "tap=$NET_TAP,mac=$NET_MAC${opts:+,$opts}" "$@"
}

# The four runs of a guest, QEMU's (with its skips unskipped) the reference for ember's TAP.
net_runs() { # net_runs NAME FN
    local name=$1 fn=$2 t ref
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        ref=""
        if [ "$have_qemu" = 1 ]; then
            "$fn" qemu "$t"
            ref=$RUN_OUT.unskipped
            sed 's/ # SKIP in net_skip=.*//' "$RUN_OUT" >"$ref"
        else
            report skip "qemu: $name ($t)" "$qemu_missing"
        fi
        if [ "$have_ember" = 1 ]; then
            "$fn" ember "$t"
            same_tap "ember: $name ($t): same TAP lines as QEMU" "$ref"
        else
            report skip "ember: $name ($t)" "$(ember_skip_reason)"
        fi
    done
}

# ember's closing counters line: "net0: received R frames, B bytes, D dropped; sent ..." ->
# "RX_FRAMES RX_DROPPED TX_FRAMES TX_DROPPED", or nothing.
net_counters() {
    sed -nE 's/.*net0: received ([0-9]+) frames, [0-9]+ bytes, ([0-9]+) dropped; sent ([0-9]+) frames, [0-9]+ bytes, ([0-9]+) dropped.*/\1 \2 \3 \4/p' \
        "$RUN_ERR" | tail -n1
}

# ---- virtio-net ----------------------------------------------------------------------------

net_run() { # net_run VMM TRANSPORT
    local vmm=$1 t=$2
    if [ "$vmm" = qemu ]; then
        run_net_qemu virtio-net "$t" "$(net_cmdline "net_skip=$QEMU_NET_SKIP")"
    else
        run_net_ember virtio-net "$t" "$(net_cmdline)" ""
    fi
    expect_pass "$vmm: virtio-net ($t): all checks pass"
    [ "$vmm" = ember ] || return 0
    local rx rx_drop tx tx_drop
    read -r rx rx_drop tx tx_drop <<<"$(net_counters)"
    if [ -z "${tx:-}" ]; then
        report fail "ember: virtio-net ($t): counters" "no counters line in ember's log"
        show_log "$RUN_ERR"
    elif [ "$rx_drop" = 0 ] && [ "$tx_drop" = 0 ] && [ "$tx" -gt 0 ] && [ "$rx" -gt 0 ]; then
        report pass "ember: virtio-net ($t): counters: $tx frames sent, $rx received, none dropped"
    else
        report fail "ember: virtio-net ($t): counters" \
            "sent $tx ($tx_drop dropped), received $rx ($rx_drop dropped)"
    fi
}

case_virtio_net() {
    net_prepare "virtio-net" || return 0
    net_runs virtio-net net_run
}

# ---- virtio-net-hostile --------------------------------------------------------------------

net_hostile_run() {
    local vmm=$1 t=$2
    if [ "$vmm" = qemu ]; then
        run_net_qemu virtio-net-hostile "$t" "$(net_cmdline "net_skip=$QEMU_NET_HOSTILE_SKIP")"
    else
        run_net_ember virtio-net-hostile "$t" "$(net_cmdline)" ""
    fi
    expect_pass "$vmm: virtio-net-hostile ($t): every malformed frame stopped, device works"
    [ "$vmm" = ember ] || return 0
    # Each attack is one dropped frame, counted; the log accounts for each (a line, or a count
    # its rate limit held back) and says nothing else.
    local attacks rx rx_drop tx tx_drop logged others
    attacks=$(tr -d '\r' <"$RUN_OUT" | grep -c '^# hostile: ')
    read -r rx rx_drop tx tx_drop <<<"$(net_counters)"
    logged=$(logged_events net0 "$RUN_ERR")
    others=$(grep -E '(WARN|ERROR): ' "$RUN_ERR" | grep -cv 'WARN: net0: dropp')
    if [ "${tx_drop:-}" = "$attacks" ] && [ "$logged" = "$attacks" ] && [ "$others" = 0 ] &&
        grep -q 'WARN: net0: dropping a frame: ' "$RUN_ERR"; then
        report pass "ember: virtio-net-hostile ($t): $attacks frames dropped and counted, each accounted for in the log, nothing else"
    else
        report fail "ember: virtio-net-hostile ($t): drops counted and accounted for in the log" \
            "$attacks attacks, ${tx_drop:-no} drops counted, $logged logged, $others other lines"
        sed 's/^/#   /' "$RUN_ERR"
    fi
}

case_virtio_net_hostile() {
    net_prepare "virtio-net-hostile" || return 0
    net_runs virtio-net-hostile net_hostile_run
}

# ---- net-rate ------------------------------------------------------------------------------

tap_rx_packets() {
    ip netns exec "$NET_NS" cat "/sys/class/net/$NET_TAP/statistics/rx_packets"
}

case_net_rate() {
    net_prepare "net-rate" || return 0
    if [ "$have_qemu" = 1 ]; then
        report skip "qemu: net-rate" "QEMU's virtio-net has no transmit rate limit to compare"
    fi
    if [ "$have_ember" != 1 ]; then
        report skip "ember: net-rate" "$(ember_skip_reason)"
        return 0
    fi
    local t before after line
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        before=$(tap_rx_packets)
        run_net_ember virtio-net "$t" "$(net_cmdline "net_tx_pps=$NET_RATE_PPS")" \
            "tx-pps=$NET_RATE_PPS"
        after=$(tap_rx_packets)
        expect_pass "ember: net-rate ($t): tx-pps=$NET_RATE_PPS: the guest's frames go at the limit"
        line=$(tr -d '\r' <"$RUN_OUT" | grep '^net-rate: ' | tail -n1)
        [ -n "$line" ] && echo "#   $line"
        # The guest sent 2N frames; nothing else crosses the tap meanwhile (IPv6 is off).
        if [ $((after - before)) = $((2 * NET_RATE_PPS)) ]; then
            report pass "ember: net-rate ($t): the tap received all $((2 * NET_RATE_PPS)) frames"
        else
            report fail "ember: net-rate ($t): the tap received all $((2 * NET_RATE_PPS)) frames" \
                "it counted $((after - before))"
        fi
    done
}

# ---- net-vhost -----------------------------------------------------------------------------

case_net_vhost() {
    net_prepare "net-vhost" || return 0
    if [ "$have_ember" != 1 ]; then
        report skip "ember: net-vhost" "$(ember_skip_reason)"
        return 0
    fi
    local t=mmio
    if [ -c /dev/vhost-net ]; then
        run_net_ember virtio-net "$t" "$(net_cmdline)" "vhost=on"
        expect_pass "ember: net-vhost: vhost=on: all virtio-net checks pass over vhost-net"
        return 0
    fi
    report skip "ember: net-vhost: the kernel's data path" "/dev/vhost-net does not exist here"
    run_net_ember virtio-net "$t" "$(net_cmdline)" "vhost=on"
    local desc="ember: net-vhost: vhost=on without /dev/vhost-net fails at start, saying why"
    if [ "$RUN_STATUS" = 2 ] && grep -q 'vhost=on: /dev/vhost-net: No such file or directory' \
        "$RUN_ERR" && ! tr -d '\r' <"$RUN_OUT" | grep -q '^1\.\.'; then
        report pass "$desc ($(tail -n1 "$RUN_ERR"))"
    else
        report fail "$desc" "status $RUN_STATUS"
        show_log "$RUN_OUT" "$RUN_ERR"
    fi
    run_net_ember virtio-net "$t" "$(net_cmdline)" "vhost=auto"
    expect_pass "ember: net-vhost: vhost=auto: all virtio-net checks pass in user space"
    if grep -q 'INFO: net0: vhost-net unavailable (/dev/vhost-net: No such file or directory);' \
        "$RUN_ERR"; then
        report pass "ember: net-vhost: vhost=auto logs the fallback to user space"
    else
        report fail "ember: net-vhost: vhost=auto logs the fallback" "no such line in the log"
        show_log "$RUN_ERR"
    fi
}

# ---- net-perf (a smoke run of bench/net.sh's guest: the transmit workloads) ----------------

net_perf_run() {
    local vmm=$1 t=$2
    local cmdline="console=ttyS0 perf_ms=50 perf_settle_ms=0 perf_only=tx-64,tx-1500"
    cmdline="$cmdline net_host_mac=$NET_HOST_MAC"
    if [ "$vmm" = qemu ]; then
        run_net_qemu net-perf "$t" "$cmdline"
    else
        run_net_ember net-perf "$t" "$cmdline" ""
    fi
    expect_pass "$vmm: net-perf ($t): the transmit workloads run (50 ms each)"
}

case_net_perf() {
    net_prepare "net-perf" || return 0
    net_runs net-perf net_perf_run
}

# ---- net-backpressure ----------------------------------------------------------------------

# A second tap, bridged to a veth pair whose far end is behind a 20 Mbit/s token bucket (tbf):
# the guest sends faster than that, the tap's send buffer (sndbuf=) fills, and the VMM must
# hold the guest's frames back, not drop them: every frame reaches the far end.
NET_BP_TAP=tap1
NET_BP_SNDBUF=65536

net_bp_setup() {
    [ -z "${NET_BP_READY:-}" ] || return 0
    local c
    for c in "tuntap add dev $NET_BP_TAP mode tap" "link add br1 type bridge" \
        "link add veth0 type veth peer name veth1" "link set $NET_BP_TAP master br1" \
        "link set veth0 master br1"; do
        # shellcheck disable=SC2086 # c holds plain words
        ip -n "$NET_NS" $c 2>"$OUT_DIR/net-setup.err" || {
            NET_SETUP_ERROR="ip $c: $(cat "$OUT_DIR/net-setup.err")"
            return 1
        }
    done
    if ! ip netns exec "$NET_NS" tc qdisc add dev veth0 root tbf rate 20mbit burst 10kb \
        latency 400ms 2>"$OUT_DIR/net-setup.err"; then
        NET_SETUP_ERROR="tc qdisc add ... tbf: $(cat "$OUT_DIR/net-setup.err")"
        return 1
    fi
    for c in $NET_BP_TAP br1 veth0 veth1; do
        ip -n "$NET_NS" link set "$c" up
    done
    NET_BP_READY=1
}

veth1_rx_packets() {
    ip netns exec "$NET_NS" cat /sys/class/net/veth1/statistics/rx_packets
}

net_bp_run() {
    local vmm=$1 t=$2 before after sent
    local cmdline="console=ttyS0 perf_ms=500 perf_settle_ms=0 perf_only=tx-1500"
    cmdline="$cmdline net_host_mac=02:00:00:00:00:99" # nobody's: the bridge floods it
    before=$(veth1_rx_packets)
    if [ "$vmm" = qemu ]; then
        run_vqemu net-perf "$t" "" "$cmdline" -netdev \
            "tap,id=n0,ifname=$NET_BP_TAP,script=no,downscript=no,vhost=off,sndbuf=$NET_BP_SNDBUF" \
            -device "$(qemu_dev "$t" net),netdev=n0,mac=$NET_MAC"
    else
        run_vember net-perf "$t" "" "$cmdline" --log-level info \
            --net "tap=$NET_BP_TAP,mac=$NET_MAC,sndbuf=$NET_BP_SNDBUF"
    fi
    expect_pass "$vmm: net-backpressure ($t): the guest's frames all sent"
    sent=$(tr -d '\r' <"$RUN_OUT" | sed -n 's/^net-perf: result tx-1500 frames=\([0-9]*\).*/\1/p')
    # The last frames written may still wait in the link's queue (up to the 64 KiB the tap
    # lets through, ~26 ms at 20 Mbit/s) when the VMM has gone: count until they are across
    # or the count has stood still for half a second.
    local last=-1 still=0 tries=0
    after=$(veth1_rx_packets)
    while [ -n "$sent" ] && [ $((after - before)) -lt "$sent" ] && [ $still -lt 10 ] &&
        [ $tries -lt 100 ]; do
        sleep 0.05
        last=$after
        after=$(veth1_rx_packets)
        if [ "$after" = "$last" ]; then still=$((still + 1)); else still=0; fi
        tries=$((tries + 1))
    done
    if [ -n "$sent" ] && [ $((after - before)) = "$sent" ]; then
        report pass "$vmm: net-backpressure ($t): all $sent frames crossed the 20 Mbit/s link"
    else
        report fail "$vmm: net-backpressure ($t): lossless" \
            "the guest sent ${sent:-?} frames, $((after - before)) crossed the link"
    fi
    [ "$vmm" = ember ] || return 0
    local waits
    waits=$(sed -n 's/.*net0: received .*; \([0-9]*\) waits for room on the host side.*/\1/p' \
        "$RUN_ERR" | tail -n1)
    if [ "${waits:-0}" -gt 0 ] && grep -q 'bytes, 0 dropped; [0-9]* waits' "$RUN_ERR"; then
        report pass "ember: net-backpressure ($t): the tap was full $waits times, nothing dropped"
    else
        report fail "ember: net-backpressure ($t): waits for room" "${waits:-no} waits logged"
        show_log "$RUN_ERR"
    fi
}

case_net_backpressure() {
    net_prepare "net-backpressure" || return 0
    if ! command -v tc >/dev/null 2>&1; then
        report skip "net-backpressure" "tc(8) not found (iproute2)"
        return 0
    fi
    if ! net_bp_setup; then
        report skip "net-backpressure" "$NET_SETUP_ERROR"
        return 0
    fi
    local t
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        if [ "$have_qemu" = 1 ]; then
            net_bp_run qemu "$t"
        else
            report skip "qemu: net-backpressure ($t)" "$qemu_missing"
        fi
        if [ "$have_ember" = 1 ]; then
            net_bp_run ember "$t"
        else
            report skip "ember: net-backpressure ($t)" "$(ember_skip_reason)"
        fi
    done
}
