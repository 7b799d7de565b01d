#!/usr/bin/env bash
# virtio-fs, ember beside QEMU with the same back-end: the Linux guest (linux/) mounts a share
# that Debian's virtiofsd serves (-o cache=none) through ember's vhost-user-fs device and
# through QEMU's (vhost-user-fs-device, guest RAM a shared memfd), and times, inside the guest
# (linux/initramfs/ember-fsbench.c): FILES file creates, a KIB KiB write in 128 KiB writes with
# fsync, and, after a page-cache drop, its read back. Same kernel, initramfs and virtiofsd,
# virtio-mmio, 2 vCPUs, runs interleaved (ember, QEMU, ember, ...); medians and ratios.
#   bench/virtiofs.sh [RUNS]      (default 3; ~1 min per pair here)
# Environment: FILES (default 100), KIB (default 8192). Needs root (as make test-linux).
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

for ((i = 1; i <= RUNS; i++)); do
    for vmm in ember qemu; do
        work=build/bench-virtiofs-$vmm-$i
        python3 tests/linux/ember_linux_test.py --vmm "$vmm" --transport mmio --kernel "$kernel" \
            --initrd "$initrd" --checks smp,fs --fs-bench "$FILES,$KIB" --work "$work" \
            >"$work.log" 2>&1 || true
        # "fsbench: 500 creates 812345 us, 16384 KiB written 2345678 us, read 1234567 us"
        line=$(grep -ho 'fsbench: .*' "$work/serial.log" | head -1 || true)
        fails=$(grep -c '^not ok' "$work.log" || true)
        c=$(sed -n 's/.* creates \([0-9]*\) us.*/\1/p' <<<"$line")
        w=$(sed -n 's/.* written \([0-9]*\) us.*/\1/p' <<<"$line")
        r=$(sed -n 's/.* read \([0-9]*\) us.*/\1/p' <<<"$line")
        echo "$vmm $i ${c:-nan} ${w:-nan} ${r:-nan} $fails" | tee -a "$out"
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
awk -v files="$FILES" -v kib="$KIB" -v cpu="$cpu" -v nproc="$(nproc)" '
function median(a, n,    i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
$3 != "nan" { k = ++n[$1]; cr[$1, k] = files / ($3 / 1e6); wr[$1, k] = kib * 1024 / $4; rd[$1, k] = kib * 1024 / $5 }
{ bad[$1] += $6 }
END {
    printf "\nvirtio-fs (virtiofsd -o cache=none), Linux guest, virtio-mmio, %s files, %d MiB file; %s, %s CPUs\n", files, kib / 1024, cpu, nproc
    printf "%-22s %12s %12s %8s\n", "median of runs", "ember", "QEMU", "ratio"
    split("creates/s write-MB/s read-MB/s", names, " ")
    for (m = 1; m <= 3; m++) {
        for (v in n) { split("", t); for (i = 1; i <= n[v]; i++) t[i] = (m == 1 ? cr[v, i] : m == 2 ? wr[v, i] : rd[v, i]); med[v] = median(t, n[v]) }
        printf "%-22s %12.1f %12.1f %7.2fx\n", names[m], med["ember"], med["qemu"], med["qemu"] ? med["ember"] / med["qemu"] : 0
    }
    printf "runs with figures: ember %d, QEMU %d; failed checks: ember %d, QEMU %d\n", n["ember"], n["qemu"], bad["ember"], bad["qemu"]
}' "$out" | tee -a "$out"
