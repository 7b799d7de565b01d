#!/usr/bin/env python3
"""QEMU's side of bench/snapshot.sh, through QMP:

  bench/qmp-migrate.py save QMP_SOCKET FILE [RUNS]
      `stop`, then RUNS times (default 1) `migrate "exec:cat > FILE"` (what `-incoming
      "exec:cat FILE"` restores; FILE removed before each), then `quit`
  bench/qmp-migrate.py live QMP_SOCKET URI
      `migrate URI` with the guest running (live migration to a QEMU started with
      `-incoming URI`); the source is left paused, as QEMU leaves it

Each migration is waited for and printed as "migrate_ms=T total_ms=Q downtime_ms=D bytes=B": T
from the migrate command to completion as this client sees it, Q and D QEMU's own figures.
QEMU's default bandwidth limit (128 MiB/s) is lifted first, as ember has none.
"""

import json
import os
import shlex
import socket
import sys
import time

NO_LIMIT = 100 << 30  # bytes/s


def main():
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in ("save", "live"):
        sys.exit(__doc__)
    mode, sock_path, target = sys.argv[1], sys.argv[2], sys.argv[3]
    runs = int(sys.argv[4]) if len(sys.argv) == 5 and mode == "save" else 1
    timeout = 120.0
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    f = s.makefile("rw")

    def command(name, **args):
        f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        f.flush()
        while True:
            line = f.readline()
            if not line:
                sys.exit("qmp-migrate: QEMU closed the QMP connection during %s" % name)
            reply = json.loads(line)
            if "error" in reply:
                sys.exit("qmp-migrate: %s: %s" % (name, reply["error"].get("desc", reply)))
            if "return" in reply:
                return reply["return"]

    json.loads(f.readline())  # the greeting
    command("qmp_capabilities")
    command("migrate-set-parameters", **{"max-bandwidth": NO_LIMIT})
    if mode == "save":
        command("stop")
    for run in range(runs):
        if mode == "save":
            if run:
                # QEMU refuses to migrate a guest its last migration paused: run it again first
                command("cont")
                command("stop")
            if os.path.exists(target):
                os.unlink(target)
            migrate(command, "exec:cat > " + shlex.quote(target), timeout)
        else:
            migrate(command, target, timeout)
    if mode == "save":
        command("quit")


def migrate(command, uri, timeout):
    start = time.monotonic()
    command("migrate", uri=uri)
    deadline = start + timeout
    while True:
        info = command("query-migrate")
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            sys.exit("qmp-migrate: migration %s: %s" % (status or "timed out", info.get("error-desc", "")))
        time.sleep(0.002)
    migrate_ms = (time.monotonic() - start) * 1e3
    ram = info.get("ram", {})
    print("migrate_ms=%.1f total_ms=%d downtime_ms=%d bytes=%d" %
          (migrate_ms, info.get("total-time", -1), info.get("downtime", -1), ram.get("transferred", -1)))
    sys.stdout.flush()

if __name__ == "__main__":
    main()
