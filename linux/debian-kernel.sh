#!/bin/bash
# Fetch Debian's stock cloud kernel and make a bootable test pair of it: the
# uncompressed vmlinux (ELF, for a PVH boot) and a busybox initramfs that
# loads the kernel's virtio modules and starts a shell.
#
# Usage: linux/debian-kernel.sh [--force]
#   Prints three lines on stdout: the paths of vmlinuz, vmlinux and
#   initramfs.cpio, all under build/linux/debian/<kernel version>/.
#   The .deb is fetched with `apt-get download` (nothing is installed).
#   Cached: a rerun with the same package version only prints the paths.
#
# The initramfs /init (written below) mounts proc/sys/dev, insmods
#   virtio_ring virtio virtio_mmio virtio_pci_* virtio_pci virtio_blk
#   failover net_failover virtio_net virtio_console rng-core virtio-rng
# (passing the virtio_mmio.device= arguments of the kernel command line to
# virtio_mmio, since insmod does not read them), prints the virtio devices
# it sees, and then starts a shell on the console, or reboots when the
# command line has ember.reboot=1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${EMBER_LINUX_BUILD:-$root/build/linux}/debian
force=0
meta=linux-image-cloud-amd64
for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "debian-kernel.sh: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

log() { echo "debian-kernel: $*" >&2; }
die() {
    echo "debian-kernel: error: $*" >&2
    exit 1
}

pkgs=(busybox-static kmod cpio xz-utils gzip zstd lz4 bzip2 lzop binutils)
missing=()
for p in "${pkgs[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $st == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing packages: ${missing[*]}; run as root or install them"
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; } ||
        die "apt-get could not install: ${missing[*]}"
fi

# The metapackage names the real image package in its Depends.
ver=$(apt-cache policy "$meta" 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ -z $ver || $ver == "(none)" ]]; then
    apt-get update -q >&2 || true
    ver=$(apt-cache policy "$meta" | awk '/Candidate:/ {print $2}')
fi
[[ -n $ver && $ver != "(none)" ]] || die "apt knows no package $meta"
image=$(apt-cache depends "$meta=$ver" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n $image ]] || die "cannot tell which linux-image package $meta $ver depends on"
kver=${image#linux-image-}
dir=$out/$kver
if ((!force)) && [[ -s $dir/vmlinux && -s $dir/initramfs.cpio && -s $dir/info ]] &&
    grep -qx "package $image $ver" "$dir/info"; then
    printf '%s\n' "$dir/vmlinuz" "$dir/vmlinux" "$dir/initramfs.cpio"
    exit 0
fi

rm -rf "$dir"
mkdir -p "$dir/deb"
log "downloading $image $ver"
(cd "$dir/deb" && apt-get download -q "$image=$ver" >&2) ||
    die "apt-get download $image=$ver failed"
deb=$(ls "$dir"/deb/*.deb)
dpkg-deb -x "$deb" "$dir/pkg"
cp "$dir/pkg/boot/vmlinuz-$kver" "$dir/vmlinuz"
cp "$dir/pkg/boot/config-$kver" "$dir/config"

# --- vmlinux out of the bzImage ----------------------------------------------
# Boot protocol header: setup_sects at 0x1f1 (0 means 4); the protected-mode
# part starts at (setup_sects + 1) * 512; payload_offset (0x248) and
# payload_length (0x24c) locate the compressed kernel inside it.
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
bz=$dir/vmlinuz
[[ $(od -An -c -j $((0x202)) -N4 "$bz" | tr -d ' ') == HdrS ]] || die "$bz is not a bzImage"
sects=$(u8 "$bz" $((0x1f1)))
((sects)) || sects=4
poff=$((($sects + 1) * 512 + $(u32 "$bz" $((0x248)))))
plen=$(u32 "$bz" $((0x24c)))
magic=$(od -An -tx1 -j "$poff" -N6 "$bz" | tr -d ' \n')
case $magic in
1f8b*) tool="gzip -dc" name=gzip ;;
fd377a585a00) tool="xz -dc --single-stream" name=xz ;;
28b52ffd*) tool="zstd -dc" name=zstd ;;
425a68*) tool="bzip2 -dc" name=bzip2 ;;
5d0000*) tool="xz -dc --format=lzma" name=lzma ;;
02214c18*) tool="lz4 -dc" name=lz4 ;;
894c5a4f*) tool="lzop -dc" name=lzo ;;
*) die "unknown compressed payload magic $magic at offset $poff of $bz" ;;
esac
log "payload: $name, $plen bytes at offset $poff"
tail -c +$((poff + 1)) "$bz" | head -c "$plen" | $tool >"$dir/vmlinux" 2>/dev/null || true
[[ $(od -An -c -N4 "$dir/vmlinux" | tr -d ' ') == 177ELF ]] ||
    die "decompressing the $name payload of $bz gave no ELF file"
if readelf -n "$dir/vmlinux" | grep -q 'Xen.*(0x00000012)'; then
    pvh="yes (XEN_ELFNOTE_PHYS32_ENTRY)"
else
    pvh="no"
fi
log "vmlinux: $(stat -c %s "$dir/vmlinux") bytes, PVH entry note: $pvh"

# --- initramfs ---------------------------------------------------------------
mods=(virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_blk failover net_failover virtio_net virtio_console rng-core virtio-rng)
mdir=$dir/pkg/lib/modules/$kver
depmod -b "$dir/pkg" "$kver"
stage=$dir/root
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,lib/modules}
cp /bin/busybox "$stage/bin/"
for a in sh mount insmod ls cat reboot dmesg sleep mkdir uname; do ln -s busybox "$stage/bin/$a"; done
order=()
declare -A seen=()
add_mod() { # $1: module name; adds its dependencies first (modules.dep)
    local m=$1 path dep
    path=$(awk -F: -v n="$m" '{p=$1; sub(/.*\//, "", p); sub(/\.ko.*$/, "", p);
        q=p; gsub(/-/, "_", q); if (p == n || q == n) {print $0; exit}}' "$mdir/modules.dep")
    if [[ -z $path ]]; then
        grep -qE "/${m//_/[-_]}\.ko" "$mdir/modules.builtin" && return 0
        die "module $m is neither in modules.dep nor built in"
    fi
    for dep in ${path#*:}; do
        dep=${dep##*/}
        add_mod "${dep%%.ko*}"
    done
    path=${path%%:*}
    [[ -n ${seen[$path]:-} ]] && return 0
    seen[$path]=1
    order+=("$path")
}
for m in "${mods[@]}"; do add_mod "$m"; done
: >"$stage/lib/modules/order"
for p in "${order[@]}"; do
    cp "$mdir/$p" "$stage/lib/modules/"
    echo "${p##*/}" >>"$stage/lib/modules/order"
done
cat >"$stage/init" <<'EOF'
#!/bin/sh
# ember: test /init for Debian's stock kernel (made by linux/debian-kernel.sh)
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
read -r cmdline </proc/cmdline
mmio=
for w in $cmdline; do
    case $w in virtio_mmio.device=*) mmio="$mmio device=${w#*=}" ;; esac
done
echo "ember-debian: /init started, loading modules"
while read -r m; do
    case $m in
    virtio_mmio.ko) insmod /lib/modules/$m $mmio ;;
    *) insmod /lib/modules/$m ;;
    esac || echo "ember-debian: insmod $m failed"
done </lib/modules/order
echo "ember-debian: modules loaded"
ls /sys/bus/virtio/devices /sys/block
case " $cmdline " in *" ember.reboot=1 "*) reboot -f ;; esac
echo "ember-debian: shell on the console"
exec sh
EOF
chmod 755 "$stage/init"
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible >"$dir/initramfs.cpio")
rm -rf "$stage" "$dir/pkg"
{
    echo "package $image $ver"
    echo "payload $name"
    echo "pvh $pvh"
    echo "modules ${order[*]##*/}"
} >"$dir/info"
printf '%s\n' "$dir/vmlinuz" "$dir/vmlinux" "$dir/initramfs.cpio"
