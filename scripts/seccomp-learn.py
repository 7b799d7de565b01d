#!/usr/bin/env python3
"""What ember's threads call beyond their seccomp filters while a command runs.

    make SECCOMP_LEARN=1                     # build/seccomp-learn/ember: filters that log
    scripts/seccomp-learn.py -- COMMAND ...  # e.g. make SECCOMP_LEARN=1 guest-test

In a learning build a system call outside its thread's filter is carried out
and reported by the kernel (SCMP_ACT_LOG: an audit record with the thread's
name, which the learning build sets to "sc-KIND", and the call's number). This
script receives those records for the duration of COMMAND by standing in as
the audit daemon (netlink; the kernel's own log would rate-limit them), then
prints, per thread kind, each system call and how often it came. Root.
-o FILE also appends the raw records to FILE."""
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter

NETLINK_AUDIT = 9
AUDIT_SET = 1001
AUDIT_SECCOMP = 1326
AUDIT_STATUS_PID, AUDIT_STATUS_BACKLOG_LIMIT = 0x4, 0x10


def audit_set(sock, pid, backlog):
    # struct audit_status: mask enabled failure pid rate_limit backlog_limit lost backlog
    # feature_bitmap backlog_wait_time
    payload = struct.pack("=10I", AUDIT_STATUS_PID | AUDIT_STATUS_BACKLOG_LIMIT, 0, 0, pid, 0,
                          backlog, 0, 0, 0, 0)
    sock.send(struct.pack("=IHHII", 16 + len(payload), AUDIT_SET, 0x5, 1, 0) + payload)


def syscall_names():
    hdr = subprocess.run(["sh", "-c", "echo '#include <sys/syscall.h>' | cc -dM -E -"],
                         capture_output=True, text=True).stdout
    return {int(m.group(2)): m.group(1) for m in re.finditer(r"#define __NR_(\w+) (\d+)", hdr)}


def main():
    args = sys.argv[1:]
    raw_out = None
    if args[:1] == ["-o"]:
        raw_out, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.exit(__doc__)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
    sock.bind((0, 0))
    audit_set(sock, os.getpid(), 8192)
    records = []
    done = threading.Event()

    def listen():
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                d = sock.recv(65536)
            except socket.timeout:
                continue
            off = 0
            while off + 16 <= len(d):
                ln, ty = struct.unpack_from("=IH", d, off)
                if ty == AUDIT_SECCOMP:
                    records.append(d[off + 16:off + ln].decode(errors="replace").rstrip("\0"))
                off += max((ln + 3) & ~3, 16)

    t = threading.Thread(target=listen)
    t.start()
    try:
        status = subprocess.call(args)
    finally:
        done.set()
        t.join()
        audit_set(sock, 0, 64)
    if raw_out:
        with open(raw_out, "a") as f:
            f.write("\n".join(records) + "\n")
    names = syscall_names()
    seen = Counter()
    for r in records:
        comm = re.search(r'comm="([^"]*)"', r)
        nr = re.search(r" syscall=(\d+)", r)
        if comm and nr:
            c = comm.group(1)
            kind = c[3:] if c.startswith("sc-") else re.sub(r"\d+$", "", c)
            seen[(kind, int(nr.group(1)))] += 1
    if not seen:
        print("seccomp-learn: no system call outside the filters was reported")
    for (kind, nr), n in sorted(seen.items()):
        print(f"{kind:14} {names.get(nr, '?'):24} {nr:4}  x{n}")
    sys.exit(status)


if __name__ == "__main__":
    main()
