# Sourced by the benchmarks that read a running VMM's counters (bench/blk.sh, net.sh,
# vhost_user.sh, virtiofs.sh); ROOT is the repository.
#
# KVM's exit counters: where debugfs is locked down, KVM answers KVM_GET_STATS_FD only to the
# process that created the VM, so the VMM runs with LD_PRELOAD=$PRELOAD (kvmstat-preload.so,
# which opens the statistics descriptors inside it) and $KVMSTAT PID copies them out with
# pidfd_getfd() (root). counters_build sets have_counters to 1 when both are built.
KVMSTAT=$ROOT/build/kvmstat
PRELOAD=$ROOT/build/kvmstat-preload.so
have_counters=0

counters_build() {
    if cc -std=c11 -Wall -Wextra -Werror -O2 -o "$KVMSTAT" "$ROOT/bench/kvmstat.c" &&
        cc -std=c11 -Wall -Wextra -Werror -O2 -shared -fPIC -o "$PRELOAD" \
            "$ROOT/bench/kvmstat-preload.c" -ldl; then
        have_counters=1
    else
        echo "# cannot build bench/kvmstat: exits not measured"
    fi
}

# kvm_exits PID: the VM's exits summed over its vCPUs, or x when not measured.
kvm_exits() {
    local exits=
    [ "$have_counters" = 1 ] && exits=$("$KVMSTAT" "$1" 2>/dev/null | awk '$1 == "exits" {print $2}' || true)
    echo "${exits:-x}"
}

# cpu_ns PID own|all: CPU time (ns) of the process's threads, all of them or all but its vCPUs
# (ember's vCPU threads are vcpuN, QEMU's "CPU N/KVM" with -name ...,debug-threads=on).
cpu_ns() {
    local t comm ns sum=0
    for t in /proc/"$1"/task/*; do
        comm=$(cat "$t/comm" 2>/dev/null) || continue
        if [ "$2" = own ] && [[ $comm =~ ^vcpu[0-9]+$|^CPU\ [0-9]+/KVM$ ]]; then continue; fi
        read -r ns _ <"$t/schedstat" 2>/dev/null || continue
        sum=$((sum + ns))
    done
    echo "$sum"
}

ms_to_s() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
