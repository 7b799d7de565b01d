# The placement-poll case of tests/guest/run.sh (sourced by it, after net.sh and lifecycle.sh;
# uses their helpers).
#
# The polling of a CPU placement, end to end, for virtio-net and virtio-vsock (ember only: QEMU
# has no such mode to compare with). `--cpu-placement vmm=1,vcpu=0` puts every I/O thread on
# host CPU 1, where it polls its rings after work with kicks off (README, "CPU placement"), and
# the vCPU alone on CPU 0. On each transport:
#   virtio-net        the virtio-net guest on net.sh's tap: every check passes, no frame dropped
#   virtio-lifecycle  the lifecycle guest's vsock part (lifecycle.sh: its peer connects into
#                     the guest and echoes what the guest sends), every device polling
# ember's closing lines must say how often polling found work (they report it with the
# polling code in place; the counts themselves depend on the host's timing and are printed).
# Needs host CPUs 0 and 1 to be ones ember may run on; skips, saying so, otherwise.

POLL_PLACEMENT=vmm=1,vcpu=0

# Whether host CPU $1 is in this shell's affinity (what ember will be allowed).
cpu_allowed() {
    local list item lo hi
    list=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)
    IFS=, read -ra items <<<"$list"
    for item in ${items[@]+"${items[@]}"}; do
        lo=${item%-*}
        hi=${item#*-}
        [ "$1" -ge "$lo" ] && [ "$1" -le "$hi" ] && return 0
    done
    return 1
}

# Why the case cannot run here, or nothing.
poll_missing() {
    if [ "$(nproc 2>/dev/null || echo 1)" -lt 2 ]; then
        echo "needs 2 host CPUs (--cpu-placement $POLL_PLACEMENT); this host gives $(nproc 2>/dev/null || echo 1)"
    elif ! cpu_allowed 0 || ! cpu_allowed 1; then
        echo "needs host CPUs 0 and 1 (--cpu-placement $POLL_PLACEMENT); allowed here:" \
            "$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status)"
    fi
}

# poll_counts DESC DEVICE_PATTERN: ember's closing line for the device says how often polling
# found work ("...; polling found work N times, M of them as it stopped").
poll_counts() {
    local desc=$1 line
    line=$(grep -E "$2" "$RUN_ERR" | grep -oE 'polling found work [0-9]+ times, [0-9]+ of them as it stopped' |
        tail -n1)
    if [ -n "$line" ]; then
        report pass "$desc: $line"
    else
        report fail "$desc: polling counted" "no closing line with the polling counts"
        show_log "$RUN_ERR"
    fi
}

poll_net_run() { # poll_net_run TRANSPORT
    local t=$1 rx rx_drop tx tx_drop desc="ember: placement-poll: virtio-net ($1)"
    run_net_ember virtio-net "$t" "$(net_cmdline)" "" --cpu-placement "$POLL_PLACEMENT"
    mv "$RUN_OUT" "$OUT_DIR/placement-poll-net.ember-$t.out"
    mv "$RUN_ERR" "$OUT_DIR/placement-poll-net.ember-$t.err"
    RUN_OUT=$OUT_DIR/placement-poll-net.ember-$t.out
    RUN_ERR=$OUT_DIR/placement-poll-net.ember-$t.err
    expect_pass "$desc: all checks pass"
    read -r rx rx_drop tx tx_drop <<<"$(net_counters)"
    if [ -n "${tx:-}" ] && [ "$rx_drop" = 0 ] && [ "$tx_drop" = 0 ] && [ "$tx" -gt 0 ] &&
        [ "$rx" -gt 0 ]; then
        report pass "$desc: $tx frames sent, $rx received, none dropped"
    else
        report fail "$desc: counters" "sent ${tx:-?} (${tx_drop:-?} dropped), received ${rx:-?} (${rx_drop:-?} dropped)"
        show_log "$RUN_ERR"
    fi
    poll_counts "$desc" 'INFO: net0: received'
}

case_placement_poll() {
    local why t
    why=$(poll_missing)
    if [ -n "$why" ]; then
        report skip "ember: placement-poll" "$why"
        return 0
    fi
    if [ "$have_ember" != 1 ]; then
        report skip "ember: placement-poll" "$(ember_skip_reason)"
        return 0
    fi
    if net_prepare "ember: placement-poll: virtio-net"; then
        for t in "${VIRTIO_TRANSPORTS[@]}"; do
            poll_net_run "$t"
        done
    fi
    virtio_tmp
    [ -s "$VT_DIR/lifecycle.img" ] || head -c $((1024 * 1024)) /dev/urandom >"$VT_DIR/lifecycle.img"
    if ! lifecycle_start_peer; then
        report skip "ember: placement-poll: virtio-lifecycle vsock" \
            "the host side (tests/guest/lifecycle_peer.py, python3) did not start"
        lifecycle_stop_peer
        return 0
    fi
    local LC_VARIANT=polling
    local LC_EMBER_ARGS=(--cpu-placement "$POLL_PLACEMENT" --log-level info)
    for t in "${VIRTIO_TRANSPORTS[@]}"; do
        lifecycle_run ember "$t" vsock
        poll_counts "ember: virtio-lifecycle vsock polling ($t): vsock" 'INFO: vsock: [0-9]+ connections'
    done
    lifecycle_stop_peer
}
