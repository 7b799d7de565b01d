#!/bin/sh
# Lists instructions in guest images that the CPL0 emulator of ember's nested test hosts
# rejects (KVM_EXIT_INTERNAL_ERROR) or that hang the vCPU, and fails if there are any.
# Code in functions whose name starts with "deliberately_" is exempt: bad-insn needs one.
set -eu
status=0
for elf in "$@"; do
    found=$(objdump -d --no-show-raw-insn "$elf" | awk '
        /^[0-9a-f]+ <.*>:$/ { fn = $2; next }
        fn ~ /^<deliberately_/ { next }
        /\t(lock cmpxchg16b|cmpxchg16b|xrstor|xrstors|xrstor64|popcnt|clac|stac|fwait|wait|int3|vmmcall|vmcall)( |$)/ {
            print "  " fn " " $0
        }')
    if [ -n "$found" ]; then
        echo "$elf: instructions the CPL0 emulator cannot run:" >&2
        echo "$found" >&2
        status=1
    fi
done
exit $status
