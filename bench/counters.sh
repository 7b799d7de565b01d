# Sourced by the benchmarks that read a running VMM's counters (bench/blk.sh, net.sh,
# vhost_user.sh, virtiofs.sh, jitter.sh); ROOT is the repository.
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

# vcpu_tid PID N: the thread id of ember's vCPU N (thread name vcpuN), or nothing.
vcpu_tid() {
    local t comm
    for t in /proc/"$1"/task/*; do
        read -r comm <"$t/comm" 2>/dev/null || continue
        if [ "$comm" = "vcpu$2" ]; then
            echo "${t##*/}"
            return
        fi
    done
}

# thread_sched PID TID: "RUN_NS DELAY_NS TIMESLICES VOLUNTARY INVOLUNTARY MIGRATIONS" of one
# thread: its time on a CPU, its time runnable but waiting for one, and how many times it was
# given one (/proc/PID/task/TID/schedstat), its context switches (status) and its moves between
# CPUs (sched, se.nr_migrations; x where the kernel has no such file). Nothing once it is gone.
thread_sched() {
    local dir=/proc/$1/task/$2 run delay slices key value vol=x invol=x migrations=x
    read -r run delay slices <"$dir/schedstat" 2>/dev/null || return 0
    while read -r key value; do
        case $key in
        voluntary_ctxt_switches:) vol=$value ;;
        nonvoluntary_ctxt_switches:) invol=$value ;;
        esac
    done <"$dir/status" 2>/dev/null
    if [ -r "$dir/sched" ]; then
        migrations=$(awk '$1 == "se.nr_migrations" {print $3}' "$dir/sched" 2>/dev/null)
    fi
    echo "$run $delay $slices $vol $invol ${migrations:-x}"
}

ms_to_s() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }
