#!/bin/bash
# Build ember's test initramfs: Debian's busybox-static, the /init of
# linux/initramfs/init and its freestanding helpers linux/initramfs/ember-vsock.c
# (the vsock check) and ember-fsbench.c (bench/virtiofs.sh),
# as an uncompressed newc cpio archive.
#
# Usage: linux/build-initramfs.sh [--gzip] [--force]
#   Prints the path of the archive on stdout.
#   --gzip also writes a gzip-compressed copy (for measurements only: the
#          kernel's inflate runs emulated on the nested test hosts, and a
#          1 MB gzip archive took 43 s to unpack there against 2.7 s for
#          the 2 MB uncompressed one).
#   Cached under build/linux/initramfs/<key>/, keyed by the busybox
#   version, the compiler and the files above; EMBER_LINUX_BUILD=<dir> puts
#   everything in <dir> instead of build/linux.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${EMBER_LINUX_BUILD:-$root/build/linux}
gz=0
force=0
for arg in "$@"; do
    case $arg in
    --gzip) gz=1 ;;
    --force) force=1 ;;
    -h | --help)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build-initramfs.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

die() {
    echo "build-initramfs: error: $*" >&2
    exit 1
}

pkgs=(busybox-static gcc binutils libc6-dev linux-libc-dev cpio gzip)
missing=()
for p in "${pkgs[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $st == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing packages: ${missing[*]}; run as root or install them"
    echo "build-initramfs: installing: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; } ||
        die "apt-get could not install: ${missing[*]}"
fi

busybox=/bin/busybox
[[ -x $busybox ]] || die "$busybox missing although busybox-static is installed"
readelf -l "$busybox" | grep -q INTERP && die "$busybox is not a static binary"

# The applets /init uses, and a few for a person at the debug shell
# (ember.noreboot=1). Each link costs a little unpacking time at boot.
applets=(sh mount umount sync cmp od timeout ifconfig ping wget sha256sum reboot poweroff
    kill cat ls mkdir rm dmesg ip ps mknod sleep uname hexdump dd nc wc)

key=$(
    {
        echo "busybox $(dpkg-query -W -f='${Version}' busybox-static)"
        echo "gcc $(gcc -dumpfullversion)"
        echo "applets ${applets[*]}"
        cat "$here/initramfs/init" "$here/initramfs/freestanding.h" \
            "$here/initramfs/ember-vsock.c" "$here/initramfs/ember-fsbench.c" "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
result=$out/initramfs/$key
if ((!force)) && [[ -s $result/initramfs.cpio ]] && { ((!gz)) || [[ -s $result/initramfs.cpio.gz ]]; }; then
    echo "$result/initramfs.cpio"
    exit 0
fi

tmp=$out/initramfs/$key.tmp
rm -rf "$tmp"
stage=$tmp/root
mkdir -p "$stage"/{bin,dev,etc,proc,sys,tmp,mnt,ro,fs}
cp "$busybox" "$stage/bin/busybox"
for a in "${applets[@]}"; do
    ln -s busybox "$stage/bin/$a"
done
install -m 0755 "$here/initramfs/init" "$stage/init"
for helper in ember-vsock ember-fsbench; do
    gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie \
        -fno-asynchronous-unwind-tables -fno-builtin -O2 -Wall -Wextra -Werror -s \
        -Wl,--build-id=none -o "$stage/bin/$helper" "$here/initramfs/$helper.c"
done
cat >"$stage/etc/fstab" <<'EOF'
proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
EOF
mkfifo "$stage/tmp/hvc.fifo"
# The kernel opens /dev/console for /init before devtmpfs is mounted.
mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true

(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible >"$tmp/initramfs.cpio")
((gz)) && gzip -9 -n -c "$tmp/initramfs.cpio" >"$tmp/initramfs.cpio.gz"
rm -rf "$stage" "$result"
mv "$tmp" "$result"
ln -sfn "initramfs/$key/initramfs.cpio" "$out/initramfs.cpio"
echo "$result/initramfs.cpio"
