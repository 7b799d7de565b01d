#!/usr/bin/env python3
"""Live migration end to end: a guest writing its disk without a pause is migrated back and
forth between ember processes (unix socket, TCP, local mode), an SMP guest dirtying memory
goes through several pre-copy rounds, and bad peers, bad requests and bad streams are
refused with the source still running. docs/migration.md describes what is tested.

Standard library only; reuses tests/api/test_api.py's helpers.
Usage: tests/migration/test_migration.py [-v] [NAME...]
Environment: EMBER (default build/ember), GUEST_DIR (default build/guest).
"""

import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "api"))
import test_api as api  # noqa: E402
from test_api import Conn, Ember, Failure, Skip, check, expect  # noqa: E402

WRITER = os.path.join(api.GUEST_DIR, "migwriter.elf")
PATIENCE_S = api.PATIENCE_S

# The guest's disk: blocks of 512 bytes, as guest/migwriter.c writes them.
BLOCK = 512
DISK_BLOCKS = 2048
FLUSH_EVERY = 16
MAGIC = 0x4554495257474947
PATTERN_STEP = 0x9e3779b97f4a7c15
FNV64_OFFSET = 0xcbf29ce484222325
FNV64_PRIME = 0x100000001b3
M64 = (1 << 64) - 1

# The protocol (docs/migration.md), for the fake peers.
PROTO_MAGIC = 0x474d454d
HELLO, READY, MEMORY, MEMFD, STATE, DONE, ERROR = 1, 2, 3, 4, 5, 6, 7

FLUSHED = re.compile(r"migwriter: flushed (\d+) dirtied (\d+)")
MIGRATED = re.compile(r"migrated to (\S+): (\d+) rounds, (\d+) pages, (\d+) ms in all, "
                      r"guest stopped for (\d+) us")


def log(msg):
    print("# " + msg)
    sys.stdout.flush()


# ---- the writer guest -----------------------------------------------------------------------


def make_disk(tmp, name="disk.img"):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.truncate(DISK_BLOCKS * BLOCK)
    return path


def cmdline(extra=""):
    return ("console=ttyS0 flush_every=%d blocks=%d %s" % (FLUSH_EVERY, DISK_BLOCKS, extra)).strip()


def wait_api(e):
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            Conn(e.sock).close()
            return e
        except OSError:
            if not e.alive() or time.monotonic() > deadline:
                e.kill()
                raise Failure("ember did not open its API socket (status %r): %s" %
                              (e.proc.returncode, e.stderr()))
            time.sleep(0.01)


def run_writer(tmp, name, disk, memory="64,shared=on", cpus=1, extra=""):
    """ember run with the writer guest and an API socket (the source of a migration)."""
    sock = os.path.join(tmp, name + ".sock")
    args = ["run", "--kernel", WRITER, "--drive", "path=" + disk, "--memory", memory,
            "--cpus", str(cpus), "--debug-exit", "--log-level", "info", "--api-sock", sock,
            "--cmdline", cmdline(extra)]
    return wait_api(Ember(tmp, args, api=False, name=name))


def api_writer(tmp, name, disk, cpus=1, mem_mib=64, extra=""):
    """An ember configured through the API (metrics file and all), then started."""
    metrics = os.path.join(tmp, name + ".metrics")
    e = Ember(tmp, ["--level", "Info", "--metrics-path", metrics], name=name)
    e.metrics = metrics
    expect(e.req("PUT", "/boot-source", {"kernel_image_path": WRITER, "boot_args": cmdline(extra)}),
           204, "boot source")
    expect(e.req("PUT", "/machine-config", {"vcpu_count": cpus, "mem_size_mib": mem_mib}), 204,
           "machine-config")
    expect(e.req("PUT", "/drives/disk", {"drive_id": "disk", "path_on_host": disk,
                                         "is_root_device": False, "is_read_only": False}),
           204, "drive")
    expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
    return e


def destination(tmp, name):
    metrics = os.path.join(tmp, name + ".metrics")
    e = Ember(tmp, ["--level", "Info", "--metrics-path", metrics], name=name)
    e.metrics = metrics
    return e


def flushed(e):
    return [int(m.group(1)) for m in FLUSHED.finditer(e.stdout())]


def guest_failed(e):
    out = e.stdout()
    return "MISMATCH" in out or "FAIL" in out or "Bail out" in out


def wait_progress(e, beyond, what, timeout=30):
    """The guest in e reports writes flushed beyond `beyond`; the last count reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check(not guest_failed(e), "%s: the guest failed: %s" % (what, e.stdout()[-600:]))
        f = flushed(e)
        if f and f[-1] > beyond:
            return f[-1]
        check(e.alive(), "%s: ember ended (status %r): %s" % (what, e.proc.returncode, e.stderr()[-800:]))
        time.sleep(0.02)
    raise Failure("%s: no progress beyond %d flushed writes in %d s: %s" %
                  (what, beyond, timeout, e.stdout()[-300:]))


def state(e):
    c = Conn(e.sock)
    try:
        r = c.request("GET", "/")
        expect(r, 200, "GET /")
        return r.json()["state"]
    finally:
        c.close()


def still_running(e, what):
    """The source kept its machine: GET / says Running and the guest goes on writing."""
    check(e.alive(), "%s: the source ended (status %r): %s" % (what, e.proc.returncode, e.stderr()[-800:]))
    st = state(e)
    check(st == "Running", "%s: the source's state is %r, not Running" % (what, st))
    last = (flushed(e) or [0])[-1]
    wait_progress(e, last + FLUSH_EVERY, what + " (the source's guest after)")


def block_hash(words):
    h = FNV64_OFFSET
    for w in words[:63]:
        h = ((h ^ w) * FNV64_PRIME) & M64
    return h


def check_image(path, done, slack):
    """Every write the guest reported flushed (0..done-1) is in the image, each in its block,
    the latest one for each block: nothing lost, nothing out of order. Writes after `done`
    (at most slack of them) may have landed too, whole and in their place."""
    with open(path, "rb") as f:
        data = f.read()
    check(len(data) == DISK_BLOCKS * BLOCK, "image size %d" % len(data))
    check(done >= DISK_BLOCKS, "the guest wrote only %d blocks (the test wants the disk wrapped)" % done)
    newer = 0
    for b in range(DISK_BLOCKS):
        w = struct.unpack_from("<64Q", data, b * BLOCK)
        want = b + (done - 1 - b) // DISK_BLOCKS * DISK_BLOCKS  # the last flushed write of b
        seq = w[1]
        where = "block %d (expected write %d)" % (b, want)
        check(w[0] == MAGIC, "%s: no header (word 0 0x%x)" % (where, w[0]))
        check(w[63] == block_hash(w), "%s: checksum wrong (write %d)" % (where, seq))
        check(w[2] == b and seq % DISK_BLOCKS == b, "%s: holds write %d of block %d" % (where, seq, w[2]))
        check(w[3] == seq // DISK_BLOCKS, "%s: pass %d for write %d" % (where, w[3], seq))
        for i in range(4, 63):
            pw = (((seq + 1) * PATTERN_STEP) & M64) ^ (i << 48 | i)
            check(w[i] == pw, "%s: write %d word %d is 0x%x, not 0x%x" % (where, seq, i, w[i], pw))
        check(seq >= want, "%s: holds the older write %d: a flushed write was lost" % (where, seq))
        check(seq < done + slack, "%s: holds write %d, beyond anything the guest reached (%d)" %
              (where, seq, done + slack))
        newer += seq > want
    return newer


def continuous(outputs, what):
    """The guest's serial output, joined over the processes it ran in, counts flushed writes
    up without a gap or a repeat: the guest went on where it was after every hop."""
    joined = "".join(outputs)
    counts = [int(m.group(1)) for m in FLUSHED.finditer(joined)]
    check(counts, "%s: no progress lines" % what)
    for a, b in zip(counts, counts[1:]):
        check(b == a + FLUSH_EVERY, "%s: progress went from %d to %d" % (what, a, b))
    check(counts[0] == FLUSH_EVERY, "%s: the first line says %d" % (what, counts[0]))
    return counts[-1]


# ---- migrating -----------------------------------------------------------------------------


def put(sock, path, body, timeout=PATIENCE_S + 130):
    c = Conn(sock, timeout=timeout)
    try:
        return c.request("PUT", path, body)
    finally:
        c.close()


def migrate(src, dst, url, local=False, timeout_s=60, **send):
    """PUT /migration/receive on dst (in a thread), PUT /migration/send on src; both answers."""
    answer = {}

    def receive():
        try:
            answer["recv"] = put(dst.sock, "/migration/receive", {"receiver_url": url, "timeout_s": timeout_s})
        except Exception as ex:  # noqa: BLE001 - reported by the caller
            answer["recv_error"] = ex

    t = threading.Thread(target=receive)
    t.start()
    body = {"destination_url": url, "timeout_s": timeout_s, "local": local}
    body.update(send)
    start = time.monotonic()
    s = put(src.sock, "/migration/send", body)
    took = time.monotonic() - start
    t.join(PATIENCE_S + 130)
    check("recv_error" not in answer, "receive: %r" % answer.get("recv_error"))
    return s, answer.get("recv"), took


def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metrics_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def flush_metrics(e):
    c = Conn(e.sock)
    try:
        expect(c.request("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
    finally:
        c.close()
    return metrics_lines(e.metrics)[-1]["migration"]


# ---- tests -----------------------------------------------------------------------------------


def test_ping_pong(tmp):
    """Ten hops between two alternating embers while the guest writes: local mode first (its
    RAM is a memfd, handed over), then copies over unix sockets and TCP."""
    disk = make_disk(tmp)
    modes = ["local", "local", "unix", "unix", "tcp", "unix", "unix", "tcp", "unix", "unix"]
    src = run_writer(tmp, "vm0", disk)
    outputs = []
    downtimes = []
    procs = [src]
    try:
        last = wait_progress(src, 2 * FLUSH_EVERY, "boot")
        total_start = time.monotonic()
        for hop, mode in enumerate(modes, 1):
            dst = destination(tmp, "vm%d" % hop)
            procs.append(dst)
            if mode == "tcp":
                url = "tcp:127.0.0.1:%d" % free_tcp_port()
            else:
                url = "unix:" + os.path.join(tmp, "m%d.sock" % hop)
            before = (flushed(src) or [0])[-1]
            what = "hop %d (%s)" % (hop, mode)
            if mode == "tcp":
                # ember migrate drives both sides (the source may connect before the
                # destination listens: it retries).
                start = time.monotonic()
                cli = subprocess.run([api.EMBER, "migrate", "--from", src.sock, "--to", dst.sock, "--url", url,
                                      "--timeout-s", "60"], capture_output=True, text=True, timeout=PATIENCE_S + 90)
                took = time.monotonic() - start
                check(cli.returncode == 0 and "migrated:" in cli.stdout,
                      "%s: ember migrate: status %d: %s %s" % (what, cli.returncode, cli.stdout, cli.stderr))
            else:
                s, r, took = migrate(src, dst, url, local=(mode == "local"))
                expect(s, 204, what + ": send")
                expect(r, 204, what + ": receive")
            status = src.wait()
            check(status == 0, "%s: the source ended with status %d" % (what, status))
            m = MIGRATED.search(src.stderr())
            check(m, "%s: the source did not log the migration: %s" % (what, src.stderr()[-500:]))
            rounds, pages, total_ms, down_us = (int(m.group(i)) for i in range(2, 6))
            check(state(dst) == "Running", what + ": the destination is not Running")
            last = wait_progress(dst, before + FLUSH_EVERY, what + ": the guest after the hop")
            log("%s: %.3f s for the request, %d ms in all, %d rounds, %d pages, guest stopped %.1f ms"
                % (what, took, total_ms, rounds, pages, down_us / 1000))
            if mode == "local":
                check(pages == 0 and rounds == 0, "%s: local mode copied %d pages in %d rounds" % (what, pages, rounds))
            else:
                check(rounds >= 1 and pages > 0, "%s: %d rounds, %d pages" % (what, rounds, pages))
            outputs.append(src.stdout())
            downtimes.append((mode, down_us, total_ms))
            src = dst
        log("10 hops in %.2f s; guest stopped (ms): %s" % (time.monotonic() - total_start, ", ".join(
            "%s %.1f" % (mode, us / 1000) for mode, us, _ in downtimes)))
        for kind in ("local", "unix", "tcp"):
            d = [us for mode, us, _ in downtimes if mode == kind]
            t = [ms for mode, _, ms in downtimes if mode == kind]
            log("%s: %d hops, guest stopped %.1f ms on average (at most %.1f), %.0f ms in all on average"
                % (kind, len(d), sum(d) / len(d) / 1000, max(d) / 1000, sum(t) / len(t)))
        # Enough writes to wrap over the disk, then the last process ends (as a crash would).
        wait_progress(src, max(last, DISK_BLOCKS + FLUSH_EVERY), "before the image check", timeout=60)
        src.kill()
        outputs.append(src.stdout())
        done = continuous(outputs, "the guest's progress over the hops")
        newer = check_image(disk, done, 2 * FLUSH_EVERY + 1)
        log("image holds all %d flushed writes (%d blocks with a later write)" % (done, newer))
    finally:
        for p in procs:
            p.kill()


def wait_metrics(e, cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        lines = [ln["migration"] for ln in metrics_lines(e.metrics) if "migration" in ln]
        if lines and cond(lines):
            return lines
        check(time.monotonic() < deadline, "%s: metrics %r" % (what, lines[-3:]))
        time.sleep(0.05)


DIRTY_MIB = 64


def smp_migration(tmp, name, rate, **send):
    disk = make_disk(tmp, name + ".img")
    src = api_writer(tmp, name + "-src", disk, cpus=2, mem_mib=128,
                     extra="dirty_rate=%d dirty_mib=%d" % (rate, DIRTY_MIB))
    dst = destination(tmp, name + "-dst")
    try:
        check(src.wait_output("migwriter: dirtier cpus=2"), "the dirtier did not start: %s" % src.stdout()[-300:])
        # Once the dirtier went over all its region, the first pass copies all of it (long
        # enough, even on a loaded host, for the dirtier to dirty more than 1 ms's worth).
        deadline = time.monotonic() + PATIENCE_S
        while True:
            wait_progress(src, (flushed(src) or [0])[-1], "boot")
            dirtied_before = int(FLUSHED.findall(src.stdout())[-1][1])
            if dirtied_before >= DIRTY_MIB * 256:
                break
            check(time.monotonic() < deadline, "the dirtier got to %d pages only" % dirtied_before)
        url = "unix:" + os.path.join(tmp, name + ".sock")
        s, r, took = migrate(src, dst, url, **send)
        expect(s, 204, name + ": send")
        expect(r, 204, name + ": receive")
        check(src.wait() == 0, name + ": the source's status")
        lines = wait_metrics(src, lambda ls: ls[-1]["completed"] >= 1, name + ": the last line")
        # A line per pass (total_us still 0), then one when the machine runs there (the
        # downtime known), then the counts.
        passes = [ln for ln in lines if ln["total_us"] == 0]
        final = lines[-1]
        check(lines[len(passes)]["downtime_us"] > 0, "%s: no line after the last pass: %r" % (name, lines))
        log("%s: %d passes in the metrics; final %s; %.3f s" % (name, len(passes), final, took))
        check([p["rounds"] for p in passes] == list(range(1, len(passes) + 1)),
              "%s: a metrics line per pass, rounds counting up: %r" % (name, passes))
        check(final["rounds"] == len(passes), "%s: %d rounds, %d pass lines" % (name, final["rounds"], len(passes)))
        check(final["failed"] == 0 and final["completed"] == 1, "%s: %r" % (name, final))
        check(final["pages_sent"] >= passes[0]["pages_sent"] > 0, "%s: pages %r" % (name, final))
        check(final["bytes_sent"] > final["pages_sent"] * 4096, "%s: bytes %r" % (name, final))
        check(0 < final["downtime_us"] < final["total_us"] <= took * 1e6 + 1000,
              "%s: downtime %d us, total %d us, request %.3f s" % (name, final["downtime_us"], final["total_us"], took))
        check(final["bandwidth_bytes_per_s"] > 0, "%s: bandwidth %r" % (name, final))
        # The destination counts what it received.
        got = flush_metrics(dst)
        check(got["completed"] == 1 and got["failed"] == 0 and got["pages_sent"] == final["pages_sent"],
              "%s: the destination's migration group %r (source sent %d pages)" % (name, got, final["pages_sent"]))
        # The guest, both vCPUs, goes on: writes and dirtied pages both count up.
        deadline = time.monotonic() + 30
        while True:
            last = wait_progress(dst, (flushed(dst) or [0])[-1], name + ": after")
            dirtied_after = int(FLUSHED.findall(dst.stdout())[-1][1])
            if dirtied_after > dirtied_before:
                break
            check(time.monotonic() < deadline, "%s: the dirtier stopped (%d, then %d for 30 s)" %
                  (name, dirtied_before, dirtied_after))
        continuous([src.stdout(), dst.stdout()], name)
        dst.kill()
        check_image(disk, last, 2 * FLUSH_EVERY + 1) if last >= DISK_BLOCKS else None
        return passes, final
    finally:
        src.kill()
        dst.kill()


def test_smp_precopy_converges(tmp):
    """Two vCPUs, one dirtying 20000 pages a second: with a 1 ms downtime target the first
    pass leaves too much, later ones less, until what is left fits."""
    passes, final = smp_migration(tmp, "converge", 20000, downtime_ms=1)
    check(final["rounds"] > 1, "only %d round(s): the dirtier did not make a second pass needed" % final["rounds"])
    check(final["rounds"] < 30, "it never converged: %r" % final)
    # ember's estimate, in whole milliseconds as it computes it.
    left_ms = final["dirty_pages"] * 4096 * 1000 // final["bandwidth_bytes_per_s"]
    check(left_ms <= 1, "stopped with %d ms of dirty pages left (target 1 ms), rounds %d" % (left_ms, final["rounds"]))


def test_smp_precopy_max_rounds(tmp):
    """The same dirtier with max_rounds 1: the first pass leaves more than 1 ms of pages,
    and the guest is stopped anyway."""
    passes, final = smp_migration(tmp, "maxrounds", 20000, downtime_ms=1, max_rounds=1)
    check(final["rounds"] == 1, "%d rounds with max_rounds 1" % final["rounds"])
    # Not rounded down: 1.5 ms of pages left is more than the 1 ms asked for.
    left_ms = final["dirty_pages"] * 4096 * 1000 / final["bandwidth_bytes_per_s"]
    check(left_ms > 1, "the last pass left %.2f ms of pages: it converged, max_rounds was not what stopped it" % left_ms)
    log("maxrounds: stopped with %d dirty pages (%.2f ms at the measured bandwidth)" % (final["dirty_pages"], left_ms))


def test_metrics_default_downtime(tmp):
    """An API-configured machine (one vCPU, default downtime): the metrics file gets the
    migration group per pass, plausible figures, completed 1."""
    disk = make_disk(tmp)
    src = api_writer(tmp, "src", disk)
    dst = destination(tmp, "dst")
    try:
        wait_progress(src, 2 * FLUSH_EVERY, "boot")
        s, r, took = migrate(src, dst, "unix:" + os.path.join(tmp, "m.sock"))
        expect(s, 204, "send")
        expect(r, 204, "receive")
        check(src.wait() == 0, "the source's status")
        lines = wait_metrics(src, lambda ls: ls[-1]["completed"] >= 1, "the last line")
        final = lines[-1]
        keys = {"rounds", "pages_sent", "bytes_sent", "dirty_pages", "bandwidth_bytes_per_s",
                "downtime_us", "total_us", "completed", "failed"}
        check(set(final) == keys, "migration group fields %r" % sorted(final))
        check(final["rounds"] >= 1 and final["pages_sent"] > 0 and final["completed"] == 1 and final["failed"] == 0,
              "figures %r" % final)
        # The guest's image and stack at least were sent, and no more than RAM.
        check(final["pages_sent"] <= 64 * 256 * final["rounds"] + 64 * 256, "pages %r" % final)
        check(0 < final["downtime_us"] < final["total_us"], "times %r" % final)
        log("default downtime: %s (request %.3f s)" % (final, took))
        wait_progress(dst, (flushed(src) or [0])[-1] + FLUSH_EVERY, "the guest after")
    finally:
        src.kill()
        dst.kill()


# ---- the source refuses, or its peer fails: it keeps running ------------------------------------


class FakeDestination:
    """Listens on a unix socket; `behave(conn)` plays the destination's part."""

    def __init__(self, path, behave):
        self.path = path
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(path)
        self.lsock.listen(1)
        self.lsock.settimeout(PATIENCE_S)
        self.behave = behave
        self.seen = b""
        self.error = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        try:
            conn, _ = self.lsock.accept()
            conn.settimeout(PATIENCE_S)
            try:
                self.behave(self, conn)
            finally:
                conn.close()
        except Exception as ex:  # noqa: BLE001 - reported by the test
            self.error = ex
        finally:
            self.lsock.close()

    def read(self, conn, n):
        while len(self.seen) < n:
            chunk = conn.recv(65536)
            if not chunk:
                break
            self.seen += chunk
        return self.seen[:n]

    def join(self):
        self.thread.join(PATIENCE_S)
        check(self.error is None, "fake destination: %r" % self.error)


def header(kind, length, magic=PROTO_MAGIC):
    return struct.pack("<IIQ", magic, kind, length)


def hello(ram, ncpus=1, local=0, version=1):
    return header(HELLO, 24) + struct.pack("<IIQII", version, ncpus, ram, local, 0)


def test_source_failures(tmp):
    """Each failure answers 400 naming the problem; the source keeps its machine running."""
    disk = make_disk(tmp)
    src = run_writer(tmp, "src", disk)
    try:
        wait_progress(src, 2 * FLUSH_EVERY, "boot")

        def send(what, body, status, fault_has):
            start = time.monotonic()
            r = put(src.sock, "/migration/send", body)
            expect(r, status, what, fault_has)
            log("%s: %d in %.2f s: %s" % (what, r.status, time.monotonic() - start, r.fault()))
            still_running(src, what)

        # Nobody listens: the source retries until its timeout, then gives up.
        start = time.monotonic()
        send("no destination", {"destination_url": "unix:" + os.path.join(tmp, "nobody.sock"), "timeout_s": 2},
             400, "connect")
        check(time.monotonic() - start > 1.5, "a missing destination was not retried until the timeout")
        port = free_tcp_port()
        start = time.monotonic()
        send("no destination (tcp)", {"destination_url": "tcp:127.0.0.1:%d" % port, "timeout_s": 2},
             400, "connect")
        check(time.monotonic() - start > 1.5, "a refused TCP connection was not retried until the timeout")

        # A destination that takes HELLO and hangs up.
        def hang_up(f, conn):
            f.read(conn, 40)

        f = FakeDestination(os.path.join(tmp, "hangup.sock"), hang_up)
        send("destination hangs up", {"destination_url": "unix:" + f.path, "timeout_s": 10}, 400, "closed")
        f.join()
        check(f.seen[:16] == header(HELLO, 24), "the source's HELLO: %r" % f.seen[:40])
        version, ncpus, ram, local, _ = struct.unpack("<IIQII", f.seen[16:40])
        check(version == 1, "HELLO's version %d" % version)
        check(ncpus == 1 and ram == 64 << 20 and local == 0, "HELLO says %d vCPUs, %d bytes, local %d" % (ncpus, ram, local))

        # A destination that answers garbage.
        def garbage(f, conn):
            f.read(conn, 40)
            conn.sendall(b"this is no migration stream at all\n")
            time.sleep(0.5)

        f = FakeDestination(os.path.join(tmp, "garbage.sock"), garbage)
        send("destination answers garbage", {"destination_url": "unix:" + f.path, "timeout_s": 10}, 400,
             "not an ember migration stream")
        f.join()

        # A destination that says READY, takes some memory and hangs up mid-copy: the source
        # had its dirty log on and a pass under way.
        def ready_then_close(f, conn):
            f.read(conn, 40)
            conn.sendall(header(READY, 0))
            f.read(conn, 40 + (1 << 20))

        f = FakeDestination(os.path.join(tmp, "midcopy.sock"), ready_then_close)
        send("destination hangs up mid-copy", {"destination_url": "unix:" + f.path, "timeout_s": 10}, 400,
             "keeps running")
        f.join()

        # A destination that refuses with ERROR: its words reach the answer.
        def refuse(f, conn):
            f.read(conn, 40)
            why = b"no room for you here"
            conn.sendall(header(ERROR, len(why)) + why)
            time.sleep(0.5)

        f = FakeDestination(os.path.join(tmp, "refuse.sock"), refuse)
        send("destination refuses", {"destination_url": "unix:" + f.path, "timeout_s": 10}, 400,
             "no room for you here")
        f.join()

        # A destination that never answers HELLO: the deadline ends it.
        def silent(f, conn):
            f.read(conn, 40)
            time.sleep(4)

        f = FakeDestination(os.path.join(tmp, "silent.sock"), silent)
        send("destination silent", {"destination_url": "unix:" + f.path, "timeout_s": 2}, 400, "timed out")
        f.join()

        # A destination that takes everything, the state too, and hangs up instead of DONE:
        # the source had released its drive's lock for the destination; it takes it back.
        def no_done(f, conn):
            f.read(conn, 40)
            conn.sendall(header(READY, 0))
            while True:
                head = conn.recv(16, socket.MSG_WAITALL)
                check(len(head) == 16, "the stream ended before the state")
                magic, kind, length = struct.unpack("<IIQ", head)
                left = length
                while left:
                    chunk = conn.recv(min(left, 1 << 20))
                    check(chunk, "the stream ended inside a message")
                    left -= len(chunk)
                if kind == STATE:
                    f.state_seen = True
                    return

        f = FakeDestination(os.path.join(tmp, "nodone.sock"), no_done)
        send("destination hangs up after the state", {"destination_url": "unix:" + f.path, "timeout_s": 10},
             400, "keeps running")
        f.join()
        check(getattr(f, "state_seen", False), "the fake destination never got the state")
        with open(disk, "rb") as img:
            try:
                fcntl.flock(img, fcntl.LOCK_EX | fcntl.LOCK_NB)
                raise Failure("the source did not take its drive's lock back")
            except BlockingIOError:
                pass

        # Local mode over TCP.
        send("local over tcp", {"destination_url": "tcp:127.0.0.1:%d" % port, "local": True}, 400, "not TCP")
        # Bad requests.
        send("bad url", {"destination_url": "ftp://somewhere"}, 400, "unix:PATH or tcp:HOST:PORT")
        send("host name", {"destination_url": "tcp:localhost:%d" % port, "timeout_s": 2}, 400, "localhost")
        send("no url", {"timeout_s": 2}, 400, "destination_url")
        send("unknown field", {"destination_url": "unix:/x", "speed": 1}, 400, "speed")
        send("zero timeout", {"destination_url": "unix:/x", "timeout_s": 0}, 400, "timeout_s")
    finally:
        src.kill()


def test_migrate_command_failure(tmp):
    """ember migrate reports both sides' answers and fails when the destination refuses;
    the source keeps running."""
    disk = make_disk(tmp)
    src = run_writer(tmp, "src", disk)
    dst = Ember(tmp, [], name="dst")
    try:
        wait_progress(src, FLUSH_EVERY, "boot")
        expect(dst.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}), 204, "machine-config")
        cli = subprocess.run([api.EMBER, "migrate", "--from", src.sock, "--to", dst.sock, "--url",
                              "unix:" + os.path.join(tmp, "m.sock"), "--timeout-s", "2"],
                             capture_output=True, text=True, timeout=PATIENCE_S)
        check(cli.returncode == 1, "ember migrate's status %d: %s" % (cli.returncode, cli.stderr))
        check("destination %s: 400" % dst.sock in cli.stderr and "nothing was configured" in cli.stderr,
              "ember migrate's report of the destination: %r" % cli.stderr)
        check("source %s: 400" % src.sock in cli.stderr and "keeps running" in cli.stderr,
              "ember migrate's report of the source: %r" % cli.stderr)
        still_running(src, "after ember migrate failed")
        cli = subprocess.run([api.EMBER, "migrate", "--from", src.sock, "--to", dst.sock],
                             capture_output=True, text=True, timeout=PATIENCE_S)
        check(cli.returncode == 2 and "usage" in cli.stderr, "ember migrate without --url: %d %r" %
              (cli.returncode, cli.stderr))
    finally:
        src.kill()
        dst.kill()


def test_local_needs_shared_memory(tmp):
    disk = make_disk(tmp)
    src = run_writer(tmp, "src", disk, memory="64")
    try:
        wait_progress(src, FLUSH_EVERY, "boot")
        r = put(src.sock, "/migration/send", {"destination_url": "unix:" + os.path.join(tmp, "m.sock"), "local": True})
        expect(r, 400, "local without shared memory", "shared=on")
        still_running(src, "local without shared memory")
    finally:
        src.kill()


def test_send_before_start(tmp):
    e = Ember(tmp, [])
    try:
        r = e.req("PUT", "/migration/send", {"destination_url": "unix:" + os.path.join(tmp, "m.sock")})
        expect(r, 400, "send before InstanceStart", "InstanceStart")
        check(state(e) == "Not started", "state after")
    finally:
        e.kill()


def test_receive_refusals(tmp):
    """Receive only in a fresh process, at a usable URL."""
    e = Ember(tmp, [])
    try:
        for url, has in (("ftp://x", "unix:PATH or tcp:HOST:PORT"), ("unix:", "unix socket path"),
                         ("tcp:127.0.0.1:99999", "port"), ("tcp:127.0.0.1", "tcp:HOST:PORT"),
                         ("unix:" + "x" * 200, "unix socket path"),
                         ("unix:" + os.path.join(tmp, "nodir", "m.sock"), "cannot listen")):
            expect(e.req("PUT", "/migration/receive", {"receiver_url": url, "timeout_s": 1}), 400,
                   "receive at %r" % url, has)
        expect(e.req("PUT", "/migration/receive", {"timeout_s": 1}), 400, "no url", "receiver_url")
        # Nobody comes: the deadline.
        start = time.monotonic()
        expect(e.req("PUT", "/migration/receive", {"receiver_url": "unix:" + os.path.join(tmp, "m.sock"),
                                                   "timeout_s": 1}), 400, "nobody comes", "timed out")
        check(time.monotonic() - start < 10, "the receive waited %.1f s for 1" % (time.monotonic() - start))
        check(not os.path.exists(os.path.join(tmp, "m.sock")), "the listening socket's file was left behind")
        check(state(e) == "Not started", "state after the refusals")
        # Configured: refused.
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}), 204, "machine-config")
        expect(e.req("PUT", "/migration/receive", {"receiver_url": "unix:" + os.path.join(tmp, "n.sock")}),
               400, "configured destination", "nothing was configured")
    finally:
        e.kill()
    # A running machine: refused.
    disk = make_disk(tmp)
    src = api_writer(tmp, "running", disk)
    try:
        expect(src.req("PUT", "/migration/receive", {"receiver_url": "unix:" + os.path.join(tmp, "r.sock")}),
               400, "running destination", "exists already")
        still_running(src, "receive on a running machine")
    finally:
        src.kill()


class FakeSource:
    """Connects to a destination's receiver socket and plays the source's part."""

    def __init__(self, path):
        deadline = time.monotonic() + PATIENCE_S
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                check(time.monotonic() < deadline, "the destination never listened at %s" % path)
                time.sleep(0.01)
        self.sock.settimeout(PATIENCE_S)

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the destination gave up already: its answer says why

    def reply(self):
        """The next message: (type, payload), or None when the destination closed."""
        buf = b""
        try:
            while len(buf) < 16:
                chunk = self.sock.recv(16 - len(buf))
                if not chunk:
                    return None
                buf += chunk
            magic, kind, length = struct.unpack("<IIQ", buf)
            check(magic == PROTO_MAGIC, "the destination's magic 0x%x" % magic)
            payload = b""
            while len(payload) < length:
                chunk = self.sock.recv(length - len(payload))
                if not chunk:
                    break
                payload += chunk
            return kind, payload
        except ConnectionResetError:
            return None

    def close(self):
        self.sock.close()


def real_state(tmp):
    """A real machine's state file (a Full snapshot of the writer, paused), for corrupting."""
    disk = make_disk(tmp, "snap.img")
    e = api_writer(tmp, "snap", disk)
    try:
        wait_progress(e, FLUSH_EVERY, "boot")
        expect(e.req("PATCH", "/vm", {"state": "Paused"}), 204, "pause")
        path, mem = os.path.join(tmp, "state"), os.path.join(tmp, "mem")
        expect(e.req("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": path,
                                                 "mem_file_path": mem}), 204, "snapshot")
        with open(path, "rb") as f:
            return f.read()
    finally:
        e.kill()


def test_fake_sources(tmp):
    """A destination fed a bad stream answers ERROR, its request 400 naming the problem, and
    stays a fresh process: the next (real) migration into it works."""
    ram = 64 << 20
    page = b"\xa5" * 4096
    good = real_state(tmp)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xff
    dst = destination(tmp, "dst")
    cases = [
        ("bad magic", lambda: [header(HELLO, 24, magic=0x12345678) + b"\0" * 24], False,
         "not an ember migration stream"),
        ("absurd RAM", lambda: [hello(1 << 60)], False, "announces"),
        ("RAM not whole MiB", lambda: [hello(ram + 4096)], False, "announces"),
        ("no vCPUs", lambda: [hello(ram, ncpus=0)], False, "announces"),
        ("1000 vCPUs", lambda: [hello(ram, ncpus=1000)], False, "announces"),
        ("version 2", lambda: [hello(ram, version=2)], False, "version 2"),
        ("HELLO too long", lambda: [header(HELLO, 1 << 40)], False, "not HELLO"),
        ("MEMORY first", lambda: [header(MEMORY, 8 + 4096) + struct.pack("<Q", 0) + page], False, "not HELLO"),
        ("memory past RAM", lambda: [header(MEMORY, 8 + 4096) + struct.pack("<Q", ram) + page], True,
         "outside guest RAM"),
        ("memory straddling the end", lambda: [header(MEMORY, 8 + 8192) + struct.pack("<Q", ram - 4096) + page * 2],
         True, "outside guest RAM"),
        ("memory unaligned", lambda: [header(MEMORY, 8 + 4096) + struct.pack("<Q", 100) + page], True,
         "outside guest RAM"),
        ("memory chunk too big", lambda: [header(MEMORY, 8 + (5 << 20))], True, "memory message"),
        ("unknown message", lambda: [header(99, 0)], True, "unexpected message 99"),
        ("MEMFD without local", lambda: [header(MEMFD, 0)], True, "shared memory"),
        ("state too big", lambda: [header(STATE, 1 << 40)], True, "state of"),
        ("garbage state", lambda: [header(MEMORY, 8 + 4096) + struct.pack("<Q", 0) + page,
                                   header(STATE, 4096) + os.urandom(4096)], True, ""),
        ("truncated state", lambda: [header(MEMORY, 8 + 4096) + struct.pack("<Q", 0) + page,
                                     header(STATE, len(good) // 2) + good[:len(good) // 2]], True, ""),
        ("state with a flipped byte", lambda: [header(STATE, len(flipped)) + bytes(flipped)], True, ""),
        ("state for another RAM size", lambda: [header(STATE, len(good)) + good], "hello32", "not 64 MiB"),
        ("state for another vCPU count", lambda: [header(STATE, len(good)) + good], "hello2cpu",
         "1 vCPUs, 2 were announced"),
        ("state whose drive is gone", lambda: [header(STATE, len(good)) + good], "nodisk", "cannot open drive"),
        ("source gives up", lambda: [header(ERROR, 9) + b"sorry now"], True, "sorry now"),
        ("source vanishes", lambda: [header(MEMORY, 8 + 4096) + struct.pack("<Q", 0)], True, "closed"),
    ]
    try:
        for n, (what, msgs, hello_first, has) in enumerate(cases):
            path = os.path.join(tmp, "fs%d.sock" % n)
            answer = {}
            t = threading.Thread(target=lambda: answer.update(
                r=put(dst.sock, "/migration/receive", {"receiver_url": "unix:" + path, "timeout_s": 5})))
            t.start()
            fs = FakeSource(path)
            replies = []
            if hello_first == "nodisk":
                os.rename(os.path.join(tmp, "snap.img"), os.path.join(tmp, "snap.img.away"))
            if hello_first:
                fs.send(hello(32 << 20) if hello_first == "hello32" else
                        hello(ram, ncpus=2) if hello_first == "hello2cpu" else hello(ram))
                replies.append(fs.reply())
                check(replies[0] == (READY, b""), "%s: the answer to a good HELLO: %r" % (what, replies[0]))
            for m in msgs():
                fs.send(m)
            if what == "source vanishes":
                fs.sock.shutdown(socket.SHUT_WR)
            rep = fs.reply()
            fs.close()
            t.join(PATIENCE_S)
            r = answer.get("r")
            check(r is not None, "%s: the receive request never answered" % what)
            expect(r, 400, what, has)
            if what not in ("source gives up", "source vanishes"):
                check(rep is not None and rep[0] == ERROR, "%s: the destination's last message %r" % (what, rep))
                check(rep[1].decode(errors="replace") in r.fault(),
                      "%s: ERROR %r vs the answer %r" % (what, rep[1], r.fault()))
            log("%s: %s" % (what, r.fault()))
            if hello_first == "nodisk":
                os.rename(os.path.join(tmp, "snap.img.away"), os.path.join(tmp, "snap.img"))
            check(state(dst) == "Not started", "%s: the destination's state after: %r" % (what, state(dst)))
        # The process is still a fresh destination: a real migration into it.
        disk = make_disk(tmp)
        src = run_writer(tmp, "src", disk)
        try:
            wait_progress(src, FLUSH_EVERY, "boot")
            s, r, _ = migrate(src, dst, "unix:" + os.path.join(tmp, "real.sock"))
            expect(r, 204, "a real migration after the failed ones: receive")
            expect(s, 204, "a real migration after the failed ones: send")
            check(src.wait() == 0, "the source's status")
            wait_progress(dst, (flushed(src) or [0])[-1] + FLUSH_EVERY, "the guest after")
            continuous([src.stdout(), dst.stdout()], "after the failed ones")
            # FlushMetrics needs a machine: the failures are counted now.
            m = flush_metrics(dst)
            check(m["failed"] == len(cases) and m["completed"] == 1,
                  "the destination's migration group after %d failures and a success: %r" % (len(cases), m))
        finally:
            src.kill()
    finally:
        dst.kill()


TESTS = [
    test_ping_pong, test_smp_precopy_converges, test_smp_precopy_max_rounds,
    test_metrics_default_downtime, test_source_failures, test_local_needs_shared_memory,
    test_send_before_start, test_receive_refusals, test_fake_sources, test_migrate_command_failure,
]


def traced(test):
    """An unexpected exception names where it came from (run_tests prints only its text)."""
    def run(tmp):
        try:
            test(tmp)
        except (Failure, Skip):
            raise
        except Exception as ex:  # noqa: BLE001 - reported with its place
            where = traceback.extract_tb(ex.__traceback__)[-3:]
            raise Failure("%s: %s at %s" % (type(ex).__name__, ex, "; ".join(
                "%s:%d %s" % (os.path.basename(f.filename), f.lineno, f.line) for f in where)))
    run.__name__ = test.__name__
    return run


def main():
    if not os.path.exists("/dev/kvm"):
        print("migration: skipped, no /dev/kvm")
        return 0
    return api.run_tests([traced(t) for t in TESTS], "migration", (api.EMBER, WRITER), sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
