#!/bin/bash
# Build ember's guest kernel: an uncompressed x86_64 vmlinux (PVH ELF note)
# from Debian's linux-source package, configured as tinyconfig + the fragment
# linux/config/ember.config, with the host-specific patches of linux/patches.
#
# Usage: linux/build-kernel.sh [--force]
#   Prints the path of the vmlinux on stdout (progress goes to stderr).
#   The result is cached under build/linux/kernel/<key>/, keyed by the
#   linux-source version, the compiler, the fragment, the patches and this
#   script; a rerun with nothing changed only prints the cached path.
#   EMBER_LINUX_BUILD=<dir> puts everything in <dir> instead of build/linux.
#   Finished kernels are also kept, under the same key, in a cache of the
#   machine's (EMBER_LINUX_CACHE, default /var/cache/ember/linux-kernel as
#   root, else ~/.cache/ember/linux-kernel; "none" turns it off), so that a
#   fresh clone (CI) reuses a kernel built from the same inputs instead of
#   spending a quarter of an hour rebuilding it; --force rebuilds anyway.
#
# Needs root only when packages are missing (it installs them with apt-get).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${EMBER_LINUX_BUILD:-$root/build/linux}
fragment=$here/config/ember.config
patches=("$here"/patches/*.patch)
force=0

for arg in "$@"; do
    case $arg in
    --force) force=1 ;;
    -h | --help)
        sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "build-kernel.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

log() { echo "build-kernel: $*" >&2; }
die() {
    echo "build-kernel: error: $*" >&2
    exit 1
}

# --- packages -------------------------------------------------------------
# bc, bison, flex, libelf-dev and libssl-dev are what the kernel's build
# itself asks for (objtool needs libelf); cpio/xz-utils for the source
# tarball and the headers step; python3 is not needed for vmlinux.
pkgs=(linux-source build-essential bc bison flex libelf-dev libssl-dev xz-utils cpio
    kmod)
missing=()
for p in "${pkgs[@]}"; do
    st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
    [[ $st == ii* ]] || missing+=("$p")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing packages: ${missing[*]}; run as root or install them"
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; } ||
        die "apt-get could not install: ${missing[*]}"
fi

# The newest linux-source-X.Y tarball that a package installed.
tarball=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -n 1 || true)
[[ -n $tarball ]] || die "no /usr/src/linux-source-*.tar.xz after installing linux-source"
srcpkg=$(dpkg-query -S "$tarball" | cut -d: -f1)
srcver=$(dpkg-query -W -f='${Version}' "$srcpkg")
srcname=$(basename "$tarball" .tar.xz)

# --- cache key ------------------------------------------------------------
key=$(
    {
        echo "source $srcpkg $srcver"
        echo "gcc $(gcc -dumpfullversion)"
        echo "fragment"
        cat "$fragment"
        for p in "${patches[@]}"; do
            echo "patch $(basename "$p")"
            cat "$p"
        done
        echo "script"
        cat "${BASH_SOURCE[0]}"
    } | sha256sum | cut -c1-16
)
result=$out/kernel/$key
if ((!force)) && [[ -s $result/vmlinux ]]; then
    echo "$result/vmlinux"
    exit 0
fi

# --- the machine's cache ----------------------------------------------------
if [[ -n ${EMBER_LINUX_CACHE:-} ]]; then
    cache=$EMBER_LINUX_CACHE
elif ((EUID == 0)); then
    cache=/var/cache/ember/linux-kernel
else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/ember/linux-kernel
fi
[[ $cache == none ]] && cache=
if ((!force)) && [[ -n $cache && -s $cache/$key/vmlinux && -s $cache/$key/config ]]; then
    log "kernel $key from the machine's cache $cache (same source, compiler, fragment, patches and script)"
    mkdir -p "$out/kernel"
    rm -rf "$result.tmp"
    cp -r "$cache/$key" "$result.tmp"
    rm -rf "$result"
    mv "$result.tmp" "$result"
    ln -sfn "kernel/$key/vmlinux" "$out/vmlinux"
    echo "$result/vmlinux"
    exit 0
fi

# --- source tree ----------------------------------------------------------
# build/linux/src/<name> is unpacked once per linux-source version; patches
# are swapped in and out in place so that a small change rebuilds little.
src=$out/src/$srcname
applied=$out/src/applied
obj=$out/obj
mkdir -p "$out/src" "$out/kernel" "$out/logs"

if [[ ! -f $out/src/version || $(cat "$out/src/version") != "$srcpkg $srcver" ]]; then
    log "unpacking $tarball ($srcpkg $srcver)"
    rm -rf "$out/src" "$obj"
    mkdir -p "$out/src"
    tar -C "$out/src" -xf "$tarball"
    [[ -d $src ]] || die "$tarball did not unpack to $srcname/"
    mkdir -p "$applied"
    echo "$srcpkg $srcver" >"$out/src/version"
fi

same_patches=1
if [[ -d $applied ]]; then
    mapfile -t old < <(ls "$applied" 2>/dev/null)
    if ((${#old[@]} != ${#patches[@]})); then
        same_patches=0
    else
        for p in "${patches[@]}"; do
            cmp -s "$p" "$applied/$(basename "$p")" || same_patches=0
        done
    fi
else
    same_patches=0
fi
if ((!same_patches)); then
    mapfile -t old < <(ls "$applied" 2>/dev/null | sort -r)
    for p in "${old[@]}"; do
        log "reverting $p"
        patch -d "$src" -p1 -R -s <"$applied/$p" ||
            die "cannot revert $p; remove $out/src and rerun"
        rm "$applied/$p"
    done
    mkdir -p "$applied"
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$src" -p1 -s --no-backup-if-mismatch <"$p" ||
            die "patch $(basename "$p") does not apply to $srcpkg $srcver"
        cp "$p" "$applied/"
    done
fi

# --- configuration --------------------------------------------------------
mkdir -p "$obj"
kmake() { make -C "$src" O="$obj" "$@"; }
log "configuring: tinyconfig + $(basename "$fragment")"
kmake -s tinyconfig >"$out/logs/config.log" 2>&1 ||
    die "make tinyconfig failed, see $out/logs/config.log"
(cd "$src" && scripts/kconfig/merge_config.sh -m -O "$obj" "$obj/.config" "$fragment") \
    >>"$out/logs/config.log" 2>&1 || die "merge_config.sh failed, see $out/logs/config.log"
kmake -s olddefconfig >>"$out/logs/config.log" 2>&1 ||
    die "make olddefconfig failed, see $out/logs/config.log"

# Every line of the fragment must have survived Kconfig's dependency rules.
bad=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF -- "$line" "$obj/.config" || {
            got=$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$obj/.config" || echo "absent")
            bad+=("$line (got: $got)")
        }
    elif [[ $line =~ ^\#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        got=$(grep -E "^${BASH_REMATCH[1]}=" "$obj/.config" || true)
        [[ -z $got ]] || bad+=("$line (got: $got)")
    fi
done <"$fragment"
if ((${#bad[@]})); then
    echo "build-kernel: error: options of $fragment that did not end up in .config:" >&2
    printf '  %s\n' "${bad[@]}" >&2
    exit 1
fi

# --- build ----------------------------------------------------------------
jobs=$(nproc)
log "building vmlinux with make -j$jobs (a fresh build takes a few minutes)"
start=$SECONDS
if ! kmake -j"$jobs" vmlinux >"$out/logs/build.log" 2>&1; then
    tail -n 40 "$out/logs/build.log" >&2
    die "kernel build failed, full log: $out/logs/build.log"
fi
log "built in $((SECONDS - start)) s"

readelf -n "$obj/vmlinux" | grep -q 'Xen.*(0x00000012)' ||
    die "$obj/vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"

rm -rf "$result.tmp"
mkdir -p "$result.tmp"
cp "$obj/vmlinux" "$result.tmp/vmlinux"
cp "$obj/.config" "$result.tmp/config"
printf 'source %s %s\ngcc %s\n' "$srcpkg" "$srcver" "$(gcc -dumpfullversion)" >"$result.tmp/info"
rm -rf "$result"
mv "$result.tmp" "$result"
ln -sfn "kernel/$key/vmlinux" "$out/vmlinux"
if [[ -n $cache ]]; then
    # Best effort: a cache that cannot be written only means the next clone builds again.
    if mkdir -p "$cache" 2>/dev/null && rm -rf "$cache/$key.tmp" && cp -r "$result" "$cache/$key.tmp" 2>/dev/null; then
        rm -rf "${cache:?}/$key"
        mv "$cache/$key.tmp" "$cache/$key" && log "kept in the machine's cache: $cache/$key"
    else
        log "could not keep the kernel in $cache (next time it is built again)"
    fi
fi
echo "$result/vmlinux"
