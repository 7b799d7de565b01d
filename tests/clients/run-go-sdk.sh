#!/usr/bin/env bash
# Runs the real firecracker-go-sdk against ember: tests/clients/go/fcsdk_start.go, built
# with Debian's Go and golang-*-dev packages (GOPATH mode, nothing downloaded), configures
# and drives a VM as firecracker-containerd does (see the program's header), with ember
# started under the name `firecracker`.
#
# The SDK's source is not packaged by Debian. Give it in FC_GO_SDK_SRC: a source tree, or
# a git directory (bare or not) from which FC_GO_SDK_REV is taken (default: the commit
# firecracker-containerd's go.mod pins). Without it, the usual GOPATH places are tried.
# What is missing (Go, a Debian package, the SDK's source, /dev/kvm) makes the test skip
# with the reason printed; it never passes without running.
#
# Usage: tests/clients/run-go-sdk.sh
# Environment: EMBER (default build/ember), GUEST_DIR (default build/guest),
#   FC_GO_SDK_SRC, FC_GO_SDK_REV, GOCACHE (Go's build cache; default Go's own).
# Output: TAP. Root adds a tap in a network namespace (MMDS V2 through it, a static IP).
# Exit status: 0 when nothing failed (a skip included).
set -u

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
EMBER=${EMBER:-$ROOT/build/ember}
GUEST_DIR=${GUEST_DIR:-$ROOT/build/guest}
# firecracker-containerd's go.mod: github.com/firecracker-microvm/firecracker-go-sdk
# v1.0.1-0.20250818195323-ed6ff32aa924.
FC_GO_SDK_REV=${FC_GO_SDK_REV:-ed6ff32aa924402ee3700933d5c7cc47237afa11}
SDK_IMPORT=github.com/firecracker-microvm/firecracker-go-sdk
# scripts/install-deps.sh go-sdk installs the Debian packages that hold what the SDK and the
# program import.
INSTALL_HINT="scripts/install-deps.sh go-sdk installs them"

skip() {
    echo "1..0 # SKIP firecracker-go-sdk: $*"
    exit 0
}

command -v go >/dev/null || skip "no Go toolchain ($INSTALL_HINT)"
[ -d /usr/share/gocode/src ] || skip "no Debian Go libraries in /usr/share/gocode ($INSTALL_HINT)"
[ -x "$EMBER" ] || skip "no ember binary at $EMBER (make)"
[ -f "$GUEST_DIR/keyboard.elf" ] || skip "no keyboard guest in $GUEST_DIR (make guests)"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm is not usable here"

TMP=$(mktemp -d /tmp/ember-fcsdk-XXXXXX)
NETNS=
cleanup() {
    [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# The SDK's source: a tree, or a revision of a git directory.
sdk_tree=
candidates=("${FC_GO_SDK_SRC:-}")
[ -n "${FC_GO_SDK_SRC:-}" ] ||
    candidates=("${GOPATH:-$HOME/go}/src/$SDK_IMPORT" "/usr/local/src/firecracker-go-sdk")
for src in "${candidates[@]}"; do
    [ -n "$src" ] && [ -e "$src" ] || continue
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
export GO111MODULE=off GOFLAGS= GOPATH="$TMP/gopath:/usr/share/gocode" GOPROXY=off
PROGRAM=$ROOT/tests/clients/go/fcsdk_start.go
missing=$(cd "$TMP" && go list -e -deps -f '{{if .Error}}{{.ImportPath}}{{end}}' "$PROGRAM" 2>&1 | sort -u)
[ -z "$missing" ] || skip "Go packages missing:" $missing "($INSTALL_HINT)"
if ! build_log=$(cd "$TMP" && go build -o "$TMP/fcsdk_start" "$PROGRAM" 2>&1); then
    echo "not ok 1 - firecracker-go-sdk builds against Debian's Go libraries"
    sed 's/^/#   /' <<<"$build_log"
    echo "1..1"
    exit 1
fi

# The runtime starts the binary its configuration names; ember answers to `firecracker`.
ln -s "$(cd "$(dirname "$EMBER")" && pwd)/$(basename "$EMBER")" "$TMP/firecracker"
mkdir "$TMP/vm"
netns_args=()
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && ip netns add "ember-fcsdk-$$" 2>/dev/null; then
    NETNS=ember-fcsdk-$$
    netns_args=(-netns "/var/run/netns/$NETNS")
fi
echo "# firecracker-go-sdk from $sdk_tree; $(go version)"
timeout 300 "$TMP/fcsdk_start" -vmm "$TMP/firecracker" -kernel "$GUEST_DIR/keyboard.elf" \
    -dir "$TMP/vm" "${netns_args[@]}"
status=$?
if [ $status -ne 0 ] && [ -f "$TMP/vm/sdk.log" ]; then
    echo "# the SDK's log (last 40 lines):"
    tail -n 40 "$TMP/vm/sdk.log" | sed 's/^/#   /'
fi
exit $status
