#!/usr/bin/env bash
# Wall time of a Linux boot, ember beside QEMU microvm: from the VMM
# process's start to the guest's /init ("Run /init as init process") and
# to the end of its checks ("ember-init: done"), then to the VMM's exit.
# Same kernel and initramfs (linux/), same memory and vCPUs, same checks,
# virtio-mmio on both; runs interleaved (ember, QEMU, ember, ...).
#   bench/linux-boot.sh [RUNS]     (default 3; ~1 min per pair here)
# Environment: CHECKS (default smp,blk,ro,rng,console: what both VMMs
# have without root networking), MEM (128), CPUS (2).
# Each VMM gets what this host needs (see tests/linux/ember_linux_test.py):
# QEMU its -cpu masks and clearcpuid=; ember --cpu-template baseline plus
# the kernel parameters for the features it says the host would not hide.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RUNS=${1:-3}
CHECKS=${CHECKS:-smp,blk,ro,rng,console}
MEM=${MEM:-128}
CPUS=${CPUS:-2}
make --no-print-directory -s all >/dev/null
kernel=$(linux/build-kernel.sh)
initrd=$(linux/build-initramfs.sh)
out=build/bench-linux-boot.txt
: >"$out"

for ((i = 1; i <= RUNS; i++)); do
    for vmm in ember qemu; do
        line=$(python3 tests/linux/ember_linux_test.py --vmm "$vmm" --transport mmio \
            --kernel "$kernel" --initrd "$initrd" --checks "$CHECKS" --mem "$MEM" \
            --cpus "$CPUS" 2>&1 | tee "build/bench-linux-boot-$vmm-$i.log" |
            grep '^# timings from VMM start:' || true)
        fails=$(grep -c '^not ok' "build/bench-linux-boot-$vmm-$i.log" || true)
        # "# timings from VMM start: banner 5.1 s, init 22.3 s, start .., done 29.3 s, exit 29.8 s"
        init=$(sed -n 's/.* init \([0-9.]*\) s.*/\1/p' <<<"$line")
        done_=$(sed -n 's/.* done \([0-9.]*\) s.*/\1/p' <<<"$line")
        exit_=$(sed -n 's/.* exit \([0-9.]*\) s.*/\1/p' <<<"$line")
        echo "$vmm $i ${init:-nan} ${done_:-nan} ${exit_:-nan} $fails" | tee -a "$out"
    done
done

awk -v checks="$CHECKS" -v mem="$MEM" -v cpus="$CPUS" '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ n[$1]++; init[$1, n[$1]] = $3; dn[$1, n[$1]] = $4; ex[$1, n[$1]] = $5; bad[$1] += $6 }
END {
    printf "\nLinux boot, virtio-mmio, %s MiB, %s vCPUs, checks %s; seconds from VMM start\n", mem, cpus, checks
    printf "%-4s  %8s %8s  %8s %8s  %8s %8s\n", "run", "ember", "QEMU", "ember", "QEMU", "ember", "QEMU"
    printf "%-4s  %17s  %17s  %17s\n", "", "to /init", "to checks done", "to VMM exit"
    for (i = 1; i <= n["ember"]; i++)
        printf "%-4d  %8.1f %8.1f  %8.1f %8.1f  %8.1f %8.1f\n", i, init["ember", i], init["qemu", i],
               dn["ember", i], dn["qemu", i], ex["ember", i], ex["qemu", i]
    for (v in n) for (i = 1; i <= n[v]; i++) { a1[v, i] = init[v, i]; a2[v, i] = dn[v, i]; a3[v, i] = ex[v, i] }
    split("", t); for (i = 1; i <= n["ember"]; i++) t[i] = init["ember", i]; ei = median(t, n["ember"])
    split("", t); for (i = 1; i <= n["qemu"]; i++) t[i] = init["qemu", i]; qi = median(t, n["qemu"])
    split("", t); for (i = 1; i <= n["ember"]; i++) t[i] = dn["ember", i]; ed = median(t, n["ember"])
    split("", t); for (i = 1; i <= n["qemu"]; i++) t[i] = dn["qemu", i]; qd = median(t, n["qemu"])
    split("", t); for (i = 1; i <= n["ember"]; i++) t[i] = ex["ember", i]; ee = median(t, n["ember"])
    split("", t); for (i = 1; i <= n["qemu"]; i++) t[i] = ex["qemu", i]; qe = median(t, n["qemu"])
    printf "%-4s  %8.1f %8.1f  %8.1f %8.1f  %8.1f %8.1f\n", "med", ei, qi, ed, qd, ee, qe
    printf "%-4s  %17s  %17s  %17s\n", "ratio", sprintf("%.2f", ei / qi), sprintf("%.2f", ed / qd), sprintf("%.2f", ee / qe)
    printf "(ratio = ember / QEMU; below 1 means ember is faster; failed checks: ember %d, QEMU %d)\n", bad["ember"], bad["qemu"]
}' "$out"
