#!/usr/bin/env python3
"""Saves a running QEMU's guest to a file the way bench/snapshot.sh restores it: QMP `stop`,
then `migrate "exec:cat > FILE"`, waiting for the migration to complete; prints
"save_ms=T total_ms=Q downtime_ms=D bytes=B" (T: from the migrate command to completion as this
client sees it; Q and D: QEMU's own figures), then `quit`s QEMU.

  bench/qmp-save.py QMP_SOCKET FILE [TIMEOUT_S]
"""

import json
import shlex
import socket
import sys
import time


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    sock_path, path = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) == 4 else 120.0
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
                sys.exit("qmp-save: QEMU closed the QMP connection during %s" % name)
            reply = json.loads(line)
            if "error" in reply:
                sys.exit("qmp-save: %s: %s" % (name, reply["error"].get("desc", reply)))
            if "return" in reply:
                return reply["return"]

    json.loads(f.readline())  # the greeting
    command("qmp_capabilities")
    command("stop")
    start = time.monotonic()
    command("migrate", uri="exec:cat > " + shlex.quote(path))
    deadline = start + timeout
    while True:
        info = command("query-migrate")
        status = info.get("status")
        if status == "completed":
            break
        if status in ("failed", "cancelled") or time.monotonic() > deadline:
            sys.exit("qmp-save: migration %s: %s" % (status or "timed out", info.get("error-desc", "")))
        time.sleep(0.002)
    save_ms = (time.monotonic() - start) * 1e3
    ram = info.get("ram", {})
    print("save_ms=%.1f total_ms=%d downtime_ms=%d bytes=%d" %
          (save_ms, info.get("total-time", -1), info.get("downtime", -1), ram.get("transferred", -1)))
    command("quit")


if __name__ == "__main__":
    main()
