#!/usr/bin/env bash
# virtio-fs, ember beside QEMU with the same back-end: the Linux guest (linux/) mounts a share
# that Debian's virtiofsd serves (-o cache=none) through ember's vhost-user-fs device and
# through QEMU's (vhost-user-fs-device, guest RAM a shared memfd), and times, inside the guest
# (linux/initramfs/ember-fsbench.c): FILES file creates, a KIB KiB write in 128 KiB writes with
# fsync, and, after a page-cache drop, its read back. Same kernel, initramfs and virtiofsd,
# virtio-mmio, 2 vCPUs, runs interleaved (ember, QEMU, ember, ...); medians and ratios.
#   bench/virtiofs.sh [RUNS]      (default 3; ~1 min per pair here)
# Environment: FILES (default 100), KIB (default 8192). Needs root (as make test-linux).
# Between the guest's "# fsbench: begin" and its result line the script also reads the VMM's
# counters (bench/counters.sh): KVM exits (all vCPUs) and the CPU time of the VMM's threads other
# than its vCPUs, i.e. what the front-end costs while virtiofsd does the work (ember relays the
# mmio interrupts; its other threads are idle), and virtiofsd's CPU time.
# The guest's kernel code is emulated on the nested test hosts: both VMMs pay that alike, so
# read the ratios, not the absolute rates.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-3}
FILES=${FILES:-100}
KIB=${KIB:-8192}
if [[ ! -x /usr/lib/qemu/virtiofsd ]]; then
    echo "virtiofs bench: /usr/lib/qemu/virtiofsd is not installed (Debian: qemu-system-common)"
    exit 1
fi
make --no-print-directory -s all >/dev/null
kernel=$(linux/build-kernel.sh)
initrd=$(linux/build-initramfs.sh)
out=build/bench-virtiofs.txt
: >"$out"
. bench/counters.sh
counters_build

# counters VMM_PID HARNESS_PID -> "EXITS VMM_OWN_NS VIRTIOFSD_NS" (x where not measured); the
# harness (tests/linux/ember_linux_test.py) starts virtiofsd.
counters() {
    local fsd ns=0 p
    fsd=$(pgrep -f -P "$2" virtiofsd || true)
    for p in $fsd; do ns=$((ns + $(cpu_ns "$p" all))); done
    [ -n "$fsd" ] || ns=x
    echo "$(kvm_exits "$1") $(cpu_ns "$1" own) $ns"
}

for ((i = 1; i <= RUNS; i++)); do
    for vmm in ember qemu; do
        work=build/bench-virtiofs-$vmm-$i
        rm -rf "$work"
        env=()
        [ "$have_counters" = 1 ] && env=(--vmm-env "LD_PRELOAD=$PRELOAD")
        python3 tests/linux/ember_linux_test.py --vmm "$vmm" --transport mmio --kernel "$kernel" \
            --initrd "$initrd" --checks smp,fs --fs-bench "$FILES,$KIB" --work "$work" "${env[@]}" \
            >"$work.log" 2>&1 &
        harness=$!
        before="" after=""
        while kill -0 "$harness" 2>/dev/null; do
            pid=$(cat "$work/vmm.pid" 2>/dev/null || true)
            if [ -z "$before" ] && grep -q '# fsbench: begin' "$work/serial.log" 2>/dev/null; then
                before=$(counters "$pid" "$harness")
            elif [ -n "$before" ] && [ -z "$after" ] &&
                grep -q 'fsbench: [0-9]' "$work/serial.log" 2>/dev/null; then
                after=$(counters "$pid" "$harness")
            fi
            sleep 0.05
        done
        wait "$harness" || true
        deltas="x x x"
        if [ -n "$before" ] && [ -n "$after" ]; then
            read -ra b <<<"$before"
            read -ra a <<<"$after"
            deltas=""
            for k in 0 1 2; do
                if [[ ${a[k]} =~ ^[0-9]+$ && ${b[k]} =~ ^[0-9]+$ ]]; then
                    deltas="$deltas $((a[k] - b[k]))"
                else
                    deltas="$deltas x"
                fi
            done
        fi
        # "fsbench: 500 creates 812345 us, 16384 KiB written 2345678 us, read 1234567 us"
        line=$(grep -ho 'fsbench: [0-9].*' "$work/serial.log" | head -1 || true)
        fails=$(grep -c '^not ok' "$work.log" || true)
        c=$(sed -n 's/.* creates \([0-9]*\) us.*/\1/p' <<<"$line")
        w=$(sed -n 's/.* written \([0-9]*\) us.*/\1/p' <<<"$line")
        r=$(sed -n 's/.* read \([0-9]*\) us.*/\1/p' <<<"$line")
        echo "$vmm $i ${c:-nan} ${w:-nan} ${r:-nan} $fails $deltas" | tee -a "$out"
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
awk -v files="$FILES" -v kib="$KIB" -v cpu="$cpu" -v nproc="$(nproc)" '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
$3 != "nan" { k = ++n[$1]; cr[$1, k] = files / ($3 / 1e6); wr[$1, k] = kib * 1024 / $4; rd[$1, k] = kib * 1024 / $5
               us = $3 + $4 + $5
               if ($7 ~ /^[0-9]+$/) { ne[$1]++; ex[$1, ne[$1]] = $7 / (us / 1e6) }
               if ($8 ~ /^[0-9]+$/) { nv[$1]++; vc[$1, nv[$1]] = $8 / 1e6 / (us / 1e6) }
               if ($9 ~ /^[0-9]+$/) { nd[$1]++; dc[$1, nd[$1]] = $9 / 1e6 / (us / 1e6) } }
{ bad[$1] += $6 }
END {
    printf "\nvirtio-fs (virtiofsd -o cache=none), Linux guest, virtio-mmio, %s files, %d MiB file; %s, %s CPUs\n", files, kib / 1024, cpu, nproc
    printf "%-22s %12s %12s %8s\n", "median of runs", "ember", "QEMU", "ratio"
    split("creates/s write-MB/s read-MB/s", names, " ")
    for (m = 1; m <= 3; m++) {
        for (v in n) { split("", t); for (i = 1; i <= n[v]; i++) t[i] = (m == 1 ? cr[v, i] : m == 2 ? wr[v, i] : rd[v, i]); med[v] = median(t, n[v]) }
        printf "%-22s %12.1f %12.1f %7.2fx\n", names[m], med["ember"], med["qemu"], med["qemu"] ? med["ember"] / med["qemu"] : 0
    }
    printf "%-22s %12s %12s\n", "during the workload", "ember", "QEMU"
    for (m = 1; m <= 3; m++) {
        for (v in n) {
            split("", t); c = m == 1 ? ne[v] : m == 2 ? nv[v] : nd[v]
            for (i = 1; i <= c; i++) t[i] = (m == 1 ? ex[v, i] : m == 2 ? vc[v, i] : dc[v, i])
            med[v] = c ? sprintf("%.1f", median(t, c)) : "-"
        }
        printf "%-22s %12s %12s\n", m == 1 ? "KVM exits/s" : m == 2 ? "VMM CPU ms/s (no vCPU)" : "virtiofsd CPU ms/s", med["ember"], med["qemu"]
    }
    printf "runs with figures: ember %d, QEMU %d; failed checks: ember %d, QEMU %d\n", n["ember"], n["qemu"], bad["ember"], bad["qemu"]
}' "$out" | tee -a "$out"
