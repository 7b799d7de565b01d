#!/usr/bin/env bash
# Runs the real firecracker-go-sdk against ember: tests/clients/go/fcsdk_start.go, built
# with Debian's Go and golang-*-dev packages (GOPATH mode, nothing downloaded), configures
# and drives a VM as firecracker-containerd does (see the program's header), with ember
# started under the name `firecracker`; as root, tests/clients/go/fcsdk_jailer.go then starts
# one through the SDK's jailer mode, with ember-jailer as `jailer`.
#
# The SDK's source is not packaged by Debian. Give it in FC_GO_SDK_SRC: a source tree, or
# a git directory (bare or not) from which FC_GO_SDK_REV is taken (default: the commit
# firecracker-containerd's go.mod pins). Without it, the usual GOPATH places are tried.
# What is missing (Go, a Debian package, the SDK's source, /dev/kvm) makes the test skip
# with the reason printed; it never passes without running.
#
# Usage: tests/clients/run-go-sdk.sh
# Environment: EMBER (default build/ember), JAILER (default ember-jailer beside it),
#   GUEST_DIR (default build/guest), FC_GO_SDK_SRC, FC_GO_SDK_REV, JAIL_UID (default 40123),
#   GOCACHE (Go's build cache; default Go's own).
# Output: TAP. Root adds a tap in a network namespace (MMDS V2 through it, a static IP) and
# the SDK's jailer mode (tests/clients/go/fcsdk_jailer.go) with ember-jailer as `jailer`.
# Exit status: 0 when nothing failed (a skip included).
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
JAILER=${JAILER:-$(dirname "$EMBER")/ember-jailer}
JAIL_UID=${JAIL_UID:-40123} # the user ember runs as in the jail (any unused one)
GUEST_DIR=${GUEST_DIR:-$ROOT/build/guest}
# firecracker-containerd's go.mod: github.com/firecracker-microvm/firecracker-go-sdk
# v1.0.1-0.20250818195323-ed6ff32aa924.
FC_GO_SDK_REV=${FC_GO_SDK_REV:-ed6ff32aa924402ee3700933d5c7cc47237afa11}
SDK_IMPORT=github.com/firecracker-microvm/firecracker-go-sdk
# scripts/install-deps.sh go-sdk installs the Debian packages that hold what the SDK and the
# program import.
INSTALL_HINT="scripts/install-deps.sh go-sdk installs them"

indent() { sed 's/^/#   /'; } # text as TAP comments

skip() {
    echo "1..0 # SKIP firecracker-go-sdk: $*"
    exit 0
}

command -v go >/dev/null || skip "no Go toolchain ($INSTALL_HINT)"
[ -d /usr/share/gocode/src ] || skip "no Debian Go libraries in /usr/share/gocode ($INSTALL_HINT)"
[ -x "$EMBER" ] || skip "no ember binary at $EMBER (make)"
for guest in vsock-agent keyboard; do
    [ -f "$GUEST_DIR/$guest.elf" ] || skip "no $guest guest in $GUEST_DIR (make guests)"
done
{ [ -r /dev/kvm ] && [ -w /dev/kvm ]; } || skip "/dev/kvm is not usable here"

TMP=$(mktemp -d /tmp/ember-fcsdk-XXXXXX)
NETNS=
CGROUP_PARENT=
cleanup() {
    [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null
    # ember's cgroups outlive it, as Firecracker's do: the one who asked for them removes them.
    if [ -n "$CGROUP_PARENT" ]; then
        for dir in /sys/fs/cgroup/*/"$CGROUP_PARENT"; do
            [ -d "$dir" ] || continue
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                rmdir "$dir"/*/ 2>/dev/null
                rmdir "$dir" 2>/dev/null && break
                sleep 0.2
            done
            [ -d "$dir" ] && echo "# left behind: $dir"
        done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# The SDK's source: a tree, or a revision of a git directory.
sdk_tree=
candidates=("${FC_GO_SDK_SRC:-}")
[ -n "${FC_GO_SDK_SRC:-}" ] ||
    candidates=("${GOPATH:-$HOME/go}/src/$SDK_IMPORT" "/usr/local/src/firecracker-go-sdk")
for src in "${candidates[@]}"; do
    if [ -z "$src" ] || [ ! -e "$src" ]; then continue; fi
    if [ -f "$src/machine.go" ] && [ -d "$src/client/models" ]; then
        sdk_tree=$src
    elif git --git-dir="$src" rev-parse --verify -q "$FC_GO_SDK_REV^{commit}" >/dev/null 2>&1 ||
        git --git-dir="$src/.git" rev-parse --verify -q "$FC_GO_SDK_REV^{commit}" >/dev/null 2>&1; then
        gitdir=$src
        [ -d "$src/.git" ] && gitdir=$src/.git
        mkdir -p "$TMP/sdk"
        git --git-dir="$gitdir" archive "$FC_GO_SDK_REV" | tar -x -C "$TMP/sdk" ||
            skip "cannot extract $FC_GO_SDK_REV from $gitdir"
        sdk_tree=$TMP/sdk
    elif [ -n "${FC_GO_SDK_SRC:-}" ]; then
        skip "FC_GO_SDK_SRC=$src is neither the SDK's source tree nor a git directory with $FC_GO_SDK_REV"
    fi
    [ -n "$sdk_tree" ] && break
done
[ -n "$sdk_tree" ] || skip "its source is not in Debian and was not found: set FC_GO_SDK_SRC to a" \
    "checkout of https://github.com/firecracker-microvm/firecracker-go-sdk (or its git directory)"

# GOPATH mode: the SDK under its import path, everything else from Debian's tree. The SDK's
# go.mod (Go 1.23, newer module versions) is not used; Debian's versions build it.
mkdir -p "$TMP/gopath/src/$(dirname "$SDK_IMPORT")"
ln -s "$(cd "$sdk_tree" && pwd)" "$TMP/gopath/src/$SDK_IMPORT"
export GO111MODULE=off GOFLAGS='' GOPATH="$TMP/gopath:/usr/share/gocode" GOPROXY=off
GO_DIR=$ROOT/tests/clients/go
missing=$(cd "$TMP" && go list -e -deps -f '{{if .Error}}{{.ImportPath}}{{end}}' \
    "$GO_DIR/fcsdk_start.go" "$GO_DIR/common.go" 2>&1 | sort -u)
[ -z "$missing" ] || skip "Go packages missing: ${missing//$'\n'/ } ($INSTALL_HINT)"
for prog in fcsdk_start fcsdk_jailer; do
    if ! build_log=$(cd "$TMP" && go build -o "$TMP/$prog" "$GO_DIR/$prog.go" "$GO_DIR/common.go" 2>&1); then
        echo "not ok 1 - firecracker-go-sdk and $prog build against Debian's Go libraries"
        indent <<<"$build_log"
        echo "1..1"
        exit 1
    fi
done

# Each program numbers its own TAP lines: one stream, numbered through, one plan at the end.
count=0
failed=0
tap_through() {
    local line
    while IFS= read -r line; do
        case "$line" in
        "ok "[0-9]* | "not ok "[0-9]*)
            count=$((count + 1))
            [[ $line == not* ]] && failed=$((failed + 1))
            sed -E "s/^(not ok|ok) [0-9]+/\1 $count/" <<<"$line"
            ;;
        1..[0-9]*) ;;
        "# exit status "*)
            # A program that ended badly without a failed check (killed, bailed out) fails too.
            if [ "${line#\# exit status }" != 0 ] && [ $failed -eq $before ]; then
                count=$((count + 1))
                failed=$((failed + 1))
                echo "not ok $count - the program ended with status ${line#\# exit status }"
            fi
            ;;
        "Bail out!"*) echo "# ${line#Bail out! } (the program stopped)" ;; # the next one still runs
        *) echo "$line" ;;
        esac
    done
}
show_log() { # FILE: the SDK's log, after a failure
    [ -f "$1" ] || return 0
    echo "# the SDK's log (last 40 lines of $(basename "$1")):"
    tail -n 40 "$1" | indent
}
echo "# firecracker-go-sdk from $sdk_tree; $(go version)"

# 1. As firecracker-containerd runs it: the VMM started by the SDK through WithProcessRunner.
# The runtime starts the binary its configuration names; ember answers to `firecracker`.
ln -s "$(cd "$(dirname "$EMBER")" && pwd)/$(basename "$EMBER")" "$TMP/firecracker"
mkdir "$TMP/vm"
netns_args=()
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && ip netns add "ember-fcsdk-$$" 2>/dev/null; then
    NETNS=ember-fcsdk-$$
    netns_args=(-netns "/var/run/netns/$NETNS")
fi
before=$failed
tap_through < <(timeout 300 "$TMP/fcsdk_start" -vmm "$TMP/firecracker" \
    -kernel "$GUEST_DIR/vsock-agent.elf" -dir "$TMP/vm" "${netns_args[@]}"; echo "# exit status $?")
[ $failed -eq $before ] || show_log "$TMP/vm/sdk.log"

# 2. The SDK's jailer mode, with ember-jailer as `jailer` (root: chroot, cgroups, users).
if [ "$(id -u)" != 0 ]; then
    count=$((count + 1))
    echo "ok $count - the SDK's jailer mode # SKIP needs root"
elif [ ! -x "$JAILER" ]; then
    count=$((count + 1))
    echo "ok $count - the SDK's jailer mode # SKIP no ember-jailer at $JAILER (make)"
else
    # The jail's files are hard links: the kernel, ember and the jails share one file system.
    mkdir -p "$TMP/jail/bin"
    cp "$EMBER" "$TMP/jail/bin/firecracker" # a regular file, as the jailer wants
    ln -s "$(cd "$(dirname "$JAILER")" && pwd)/$(basename "$JAILER")" "$TMP/jail/bin/jailer"
    cp "$GUEST_DIR/keyboard.elf" "$TMP/jail/keyboard.elf"
    CGROUP_PARENT=ember-fcsdk-$$
    before=$failed
    tap_through < <(timeout 300 "$TMP/fcsdk_jailer" -jailer "$TMP/jail/bin/jailer" \
        -exec-file "$TMP/jail/bin/firecracker" -kernel "$TMP/jail/keyboard.elf" -dir "$TMP/jail" \
        -id fcsdk-jailed -uid "$JAIL_UID" -parent-cgroup "$CGROUP_PARENT"
        echo "# exit status $?")
    [ $failed -eq $before ] || show_log "$TMP/jail/sdk-jailer.log"
fi
echo "1..$count"
[ $failed -eq 0 ]
