#!/usr/bin/env python3
"""Snapshots end to end, through Firecracker's API: a running guest is paused, saved, killed and
restored into new ember processes, which must continue it exactly where it was.

The guest is guest/snapcount.c: every vCPU increments its own counter and counts its own LAPIC
timer ticks, the BSP verifies and rewrites a pattern over pages spread across RAM round after
round, and every ~100 ms it prints one line with all of it. A restored machine must print lines
that continue the saved ones (same round or later, counters and ticks larger, not reset), keep
every vCPU counting and ticking, and never print MISMATCH (a page lost or stale).

Standard library only. Usage: tests/snapshot/test_snapshot.py [-v] [NAME...]
Environment: EMBER (default build/ember), GUEST_DIR (default build/guest), EMBER_SNAPSHOT_MERGE
(default ember-snapshot-merge next to EMBER), EMBER_UFFD_HANDLER (default ember-uffd-handler next
to EMBER), SNAPSHOT_TMP (where snapshot files go; default /dev/shm if writable, else the
temporary directory).
Prints one line per check and ends with "snapshot: N passed, N failed, N skipped"; exits 1 if
any check failed.
"""

import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "api"))
import test_api as api  # noqa: E402 - ember's API client and process helpers
from test_api import EMBER, GUEST_DIR, PATIENCE_S, Ember, Failure, Skip, check, expect  # noqa: E402

SNAPCOUNT = os.path.join(GUEST_DIR, "snapcount.elf")
TOOL_DIR = os.path.dirname(os.path.abspath(EMBER))
SNAPSHOT_MERGE = os.environ.get("EMBER_SNAPSHOT_MERGE", os.path.join(TOOL_DIR, "ember-snapshot-merge"))
UFFD_HANDLER = os.environ.get("EMBER_UFFD_HANDLER", os.path.join(TOOL_DIR, "ember-uffd-handler"))
MEM_MIB = 128  # the guest's pages reach above 64 MiB
PAGES = 1024
TICKS_PER_LINE = 10  # the guest prints at every 10th tick of its BSP
MIN_ROUNDS = 3  # rounds a guest completes before it is saved: a reset would show
AFTER_RESTORE_ROUNDS = 2  # rounds after a restore: every page verified once more at least
LINES_AFTER_RESTORE = 3
# Snapshot files go to memory (tmpfs) when there is one: on the test hosts' ext4 the unlink of a
# memory file, its pages spread over 128 MiB, takes ~3 s once it has been written back.
SCRATCH = os.environ.get("SNAPSHOT_TMP") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)

# Snapshot state file header (docs/snapshot-format.md)
SNAP_MAGIC = b"EMBERSNP"
VERSION_OFFSET = 8
TRAILER = 8

# ---- the guest's output ------------------------------------------------------------------

STATUS_RE = re.compile(r"^snapcount: round (\d+)((?: cpu\d+=\d+ ticks\d+=\d+)+) nmis=(\d+) tsc=(\d+) ok\r?$", re.M)
PAIR_RE = re.compile(r" cpu(\d+)=(\d+) ticks(\d+)=(\d+)")
START_RE = re.compile(r"^snapcount: start cpus=(\d+) pages=(\d+) first=0x([0-9a-f]+) last=0x([0-9a-f]+)", re.M)
TROUBLE_RE = re.compile(r"^.*(?:snapcount: (?:MISMATCH|FAIL)|# exception|Bail out).*$", re.M)


class Status:
    def __init__(self, m):
        self.round = int(m.group(1))
        pairs = PAIR_RE.findall(m.group(2))
        self.counts = [int(c) for _, c, _, _ in pairs]
        self.ticks = [int(t) for _, _, _, t in pairs]
        self.nmis = int(m.group(3))
        self.tsc = int(m.group(4))
        self.text = m.group(0).strip()

    def __repr__(self):
        return self.text


def statuses(text):
    return [Status(m) for m in STATUS_RE.finditer(text)]


def trouble(text):
    m = TROUBLE_RE.search(text)
    return m.group(0).strip() if m else None


def tail(text, n=400):
    return text[-n:].replace("\r", "")


# Mirrors pattern_base() in guest/snapcount.c: word w of page i after round r.
M64 = (1 << 64) - 1
PATTERN_STEP = 0x9e3779b97f4a7c15


def mix64(x):
    x ^= x >> 30
    x = (x * 0xbf58476d1ce4e5b9) & M64
    x ^= x >> 27
    x = (x * 0x94d049bb133111eb) & M64
    return x ^ (x >> 31)


def pattern_base(rnd, index):
    return mix64(((rnd * 0x100000001b3) & M64) ^ ((index << 40) & M64) ^ 0x5eed)


# ---- the state file's CRC-64/XZ ----------------------------------------------------------

def _crc64_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xc96c5795d7870f42 if c & 1 else c >> 1
        table.append(c)
    return table


CRC64_TABLE = _crc64_table()


def crc64(data):
    crc = M64
    for b in data:
        crc = CRC64_TABLE[(crc ^ b) & 0xff] ^ (crc >> 8)
    return crc ^ M64


# ---- machines ----------------------------------------------------------------------------


SANITIZER_RE = re.compile(r"ERROR: (?:Address|Leak|Thread|Memory)Sanitizer|runtime error:")


class Case:
    """One check's temporary directory and the processes it started (all ended after it)."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.embers = []
        self.procs = []

    def path(self, name):
        return os.path.join(self.tmp, name)

    def ember(self, name):
        e = Ember(self.tmp, name=name)
        self.embers.append(e)
        return e

    def popen(self, cmd, name):
        out = open(self.path(name + ".log"), "wb")
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        p.log_path = out.name
        out.close()
        self.procs.append(p)
        return p

    def close(self):
        """Ends every process; returns what a sanitizer reported in any ember's stderr."""
        # SIGTERM first: ember stops cleanly, so that LeakSanitizer looks at a sanitizer build.
        for e in self.embers:
            if e.alive():
                e.proc.terminate()
        deadline = time.monotonic() + 10
        for e in self.embers:
            try:
                e.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            e.kill()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for e in self.embers:
            m = SANITIZER_RE.search(e.stderr())
            if m:
                return "%s: %s" % (e.err_path, e.stderr()[m.start():m.start() + 600])
        return None


def boot(case, name, cpus, track_dirty=None, mem=MEM_MIB):
    e = case.ember(name)
    expect(e.req("PUT", "/boot-source", {"kernel_image_path": SNAPCOUNT,
                                         "boot_args": "console=ttyS0 snap_pages=%d" % PAGES}),
           204, "boot-source")
    config = {"vcpu_count": cpus, "mem_size_mib": mem}
    if track_dirty is not None:
        config["track_dirty_pages"] = track_dirty
    expect(e.req("PUT", "/machine-config", config), 204, "machine-config %r" % config)
    expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
    return e


def wait_status(e, pred, what, since=0, timeout=PATIENCE_S):
    """The first status line (in e's output from offset since) for which pred holds."""
    deadline = time.monotonic() + timeout
    while True:
        out = e.stdout()[since:]
        bad = trouble(out)
        if bad:
            raise Failure("%s: the guest says %r" % (what, bad))
        for s in statuses(out):
            if pred(s):
                return s
        if not e.alive():
            raise Failure("%s: ember exited (%r); stderr: %s; guest: %s" %
                          (what, e.proc.returncode, tail(e.stderr()), tail(out)))
        if time.monotonic() > deadline:
            raise Failure("%s: not within %d s; guest: %s" % (what, timeout, tail(out)))
        time.sleep(0.05)


def pause(e):
    expect(e.req("PATCH", "/vm", {"state": "Paused"}), 204, "pause")


def resume(e):
    expect(e.req("PATCH", "/vm", {"state": "Resumed"}), 204, "resume")


class Saved:
    """A snapshot and what the guest had printed when it was taken."""

    def __init__(self, state, mem, status, cpus, out):
        self.state, self.mem, self.status, self.cpus, self.out = state, mem, status, cpus, out
        m = START_RE.search(out)  # absent from a restored machine's output
        self.first_page, self.last_page = (int(m.group(3), 16), int(m.group(4), 16)) if m else (None, None)


def running(case, name, cpus, track_dirty=None):
    """A machine booted and past MIN_ROUNDS rounds."""
    e = boot(case, name, cpus, track_dirty)
    wait_status(e, lambda s: s.round >= MIN_ROUNDS, "%d vCPU(s): %d rounds" % (cpus, MIN_ROUNDS))
    return e


def take(case, e, cpus, kind="Full", prefix="snap", paused=False):
    """Pauses e (unless told it is paused) and saves it; e stays paused."""
    if not paused:
        pause(e)
    out = e.stdout()  # the pause is answered once every vCPU has parked: nothing more comes
    lines = statuses(out)
    last = lines[-1] if lines else None  # a machine loaded and not yet resumed printed nothing
    state, mem = case.path(prefix + ".state"), case.path(prefix + ".mem")
    expect(e.req("PUT", "/snapshot/create", {"snapshot_type": kind, "snapshot_path": state,
                                             "mem_file_path": mem}), 204, "%s snapshot" % kind)
    check(os.path.isfile(state) and os.path.isfile(mem), "%s snapshot: files written" % kind)
    check(os.path.getsize(mem) == MEM_MIB << 20,
          "%s snapshot: memory file of %d bytes for %d MiB of RAM" % (kind, os.path.getsize(mem), MEM_MIB))
    return Saved(state, mem, last, cpus, out)


def snapshot(case, cpus, track_dirty=None, name="source"):
    """Boots, runs, saves a Full snapshot and kills the source."""
    e = running(case, name, cpus, track_dirty)
    saved = take(case, e, cpus)
    e.kill()
    return saved


def load_body(saved, resume_vm=True, backend="File", backend_path=None, **extra):
    body = {"snapshot_path": saved.state,
            "mem_backend": {"backend_type": backend, "backend_path": backend_path or saved.mem},
            "resume_vm": resume_vm}
    body.update(extra)
    return body


def restore(case, saved, name, resume_vm=True, **kw):
    e = case.ember(name)
    expect(e.req("PUT", "/snapshot/load", load_body(saved, resume_vm, **kw)), 204, "snapshot/load")
    return e


def verify_continues(e, saved, what, since=0):
    """e's output from since continues saved.status: the same machine, running, intact."""
    base = saved.status
    # The guest may have run on between its last line and the save: the first line after it
    # tells where it was, and whole rounds after that one verified every page restored.
    first = wait_status(e, lambda s: True, "%s: a status line" % what, since)
    wait_status(e, lambda s: s.round >= first.round + AFTER_RESTORE_ROUNDS, "%s: rounds continue" % what, since)
    lines = []
    deadline = time.monotonic() + PATIENCE_S
    while len(lines) < LINES_AFTER_RESTORE + 1:
        out = e.stdout()[since:]
        lines = statuses(out)
        check(not trouble(out), "%s: the guest says %r" % (what, trouble(out)))
        check(e.alive(), "%s: ember exited: %s" % (what, tail(e.stderr())))
        check(time.monotonic() < deadline, "%s: %d status lines in %d s" % (what, len(lines), PATIENCE_S))
        time.sleep(0.05)
    first, last = lines[0], lines[-1]
    for s in lines:
        check(len(s.counts) == saved.cpus, "%s: %d vCPUs in %r" % (what, saved.cpus, s))
    # The BSP prints at every 10th tick: the first whole line after the save is the next one,
    # or the one after if the save cut a line in half (the rest of it comes first).
    step = first.ticks[0] - base.ticks[0]
    check(step in (TICKS_PER_LINE, 2 * TICKS_PER_LINE),
          "%s: ticks continue: saved %r, then %r" % (what, base, first))
    check(first.round >= base.round, "%s: round went back: saved %r, then %r" % (what, base, first))
    for a, b in zip(lines, lines[1:]):
        check(b.round >= a.round and b.ticks[0] == a.ticks[0] + TICKS_PER_LINE,
              "%s: lines out of order: %r then %r" % (what, a, b))
    for i in range(saved.cpus):
        check(first.counts[i] >= base.counts[i] and first.ticks[i] >= base.ticks[i],
              "%s: cpu%d reset: saved %r, then %r" % (what, i, base, first))
        check(last.counts[i] > first.counts[i] and last.ticks[i] > first.ticks[i],
              "%s: cpu%d stopped: %r ... %r" % (what, i, first, last))
    return last


# ---- checks ------------------------------------------------------------------------------


def full_restore(case, cpus, resume_vm=True):
    saved = snapshot(case, cpus)
    e = restore(case, saved, "restored", resume_vm)
    if not resume_vm:
        state = e.req("GET", "/").json().get("state")
        check(state == "Paused", "loaded with resume_vm false: state %r, not Paused" % state)
        time.sleep(0.3)
        check(not statuses(e.stdout()), "the guest ran before PATCH /vm Resumed: %s" % tail(e.stdout()))
        resume(e)
    state = e.req("GET", "/").json().get("state")
    check(state == "Running", "restored: state %r, not Running" % state)
    verify_continues(e, saved, "restored")


def test_full_1cpu(case):
    full_restore(case, 1)


def test_full_2cpus(case):
    full_restore(case, 2)


def test_full_4cpus(case):
    full_restore(case, 4)


def test_full_paused_then_resumed(case):
    full_restore(case, 2, resume_vm=False)


TSC_GAP_S = 3  # between the save and the restore of test_tsc_after_a_gap
TSC_WARNING = "ignored the restored guest TSC"


def test_tsc_after_a_gap(case):
    """The guest's TSC continues from its snapshot, or ember says that this host's KVM ignored
    the TSC it restored (the guest then sees the gap pass at once), and the guest says the same."""
    saved = snapshot(case, 1)
    khz = int(re.search(r"tsc_khz=(\d+)", saved.out).group(1))
    time.sleep(TSC_GAP_S)
    e = restore(case, saved, "restored")
    first = wait_status(e, lambda s: True, "restored: a status line")
    ahead_s = (first.tsc - saved.status.tsc) / (khz * 1000.0)
    warned = TSC_WARNING in e.stderr()
    what = "the guest's TSC moved %.2f s over one status line (%d s after the save)" % (ahead_s, TSC_GAP_S)
    if warned:
        check(ahead_s >= TSC_GAP_S - 0.5, "ember warned that the TSC was ignored, yet %s" % what)
        print("# this host's KVM ignores a restored TSC, and ember said so: %s" % what)
    else:
        check(0 <= ahead_s < 1, "ember did not warn, yet %s" % what)


def test_nmi(case):
    """PUT /vm/nmi: every vCPU takes one NMI, running or paused, and one queued on a paused
    machine is saved with it and taken after the restore."""
    e = running(case, "source", 2)
    expect(e.req("PUT", "/vm/nmi", {}), 204, "PUT /vm/nmi on a running machine")
    wait_status(e, lambda s: s.nmis == 2, "running: the NMI on both vCPUs")
    pause(e)
    expect(e.req("PUT", "/vm/nmi", {}), 204, "PUT /vm/nmi on a paused machine")
    saved = take(case, e, 2, paused=True)
    check(saved.status.nmis == 2, "paused: no NMI taken before the resume: %r" % saved.status)
    e.kill()
    r = restore(case, saved, "restored")
    wait_status(r, lambda s: s.nmis == 4, "restored: the queued NMI on both vCPUs")
    verify_continues(r, saved, "restored")


def test_restore_five_times(case):
    saved = snapshot(case, 2)
    for n in range(5):
        e = restore(case, saved, "restored%d" % n)
        verify_continues(e, saved, "restore %d of 5" % (n + 1))
        e.kill()


def test_two_clones_in_parallel(case):
    saved = snapshot(case, 2)
    clones = [case.ember("clone%d" % n) for n in range(2)]
    results = [None, None]

    def load(n):
        try:
            results[n] = clones[n].req("PUT", "/snapshot/load", load_body(saved))
        except Exception as ex:  # noqa: BLE001 - reported below
            results[n] = ex

    threads = [threading.Thread(target=load, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(2):
        check(getattr(results[n], "status", None) == 204, "clone %d: load: %r" % (n, results[n]))
    for n in range(2):
        verify_continues(clones[n], saved, "clone %d" % n)
    for n in range(2):
        check(clones[n].alive(), "clone %d still runs after the other's checks" % n)


def test_source_continues(case):
    e = running(case, "source", 2)
    saved = take(case, e, 2)
    since = len(e.stdout())
    resume(e)
    verify_continues(e, saved, "the source, resumed", since)
    # A second snapshot of the same machine, later, over the first one's files, restores too.
    saved2 = take(case, e, 2)
    e.kill()
    check(saved2.status.round > saved.status.round, "second snapshot: %r after %r" % (saved2.status, saved.status))
    verify_continues(restore(case, saved2, "restored"), saved2, "restored from the second snapshot")


def test_saved_again_before_resuming(case):
    """A machine loaded paused and saved again at once gives a snapshot equal in effect: the
    restored copy of the copy continues from the first save."""
    saved = snapshot(case, 2)
    state, mem = case.path("again.state"), case.path("again.mem")
    # The create right behind the load, pipelined: a load with resume_vm false is answered with
    # the machine paused, and a client may go on at once. Three times: it is a race to lose.
    for n in range(3):
        e = case.ember("loaded%d" % n)
        e.conn.send_raw(api.encode_request("PUT", "/snapshot/load", load_body(saved, resume_vm=False)) +
                        api.encode_request("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": state,
                                                                       "mem_file_path": mem}))
        expect(e.conn.read_response(), 204, "snapshot/load, resume_vm false (%d)" % n)
        expect(e.conn.read_response(), 204, "snapshot/create right after the load (%d)" % n)
        check(not statuses(e.stdout()), "the loaded machine printed before it ran: %s" % tail(e.stdout()))
        e.kill()
    again = Saved(state, mem, saved.status, 2, "")
    verify_continues(restore(case, again, "restored"), again, "restored from the copy of the copy")


def test_load_options(case):
    """clock_realtime and track_dirty_pages at load are taken; the machine continues."""
    saved = snapshot(case, 2)
    e = restore(case, saved, "restored", clock_realtime=True, track_dirty_pages=True)
    verify_continues(e, saved, "restored with clock_realtime and track_dirty_pages")


def test_snapshot_of_restored(case):
    """A restored machine is saved again, and that snapshot restores too."""
    saved = snapshot(case, 2)
    e = restore(case, saved, "restored")
    verify_continues(e, saved, "restored")
    again = take(case, e, 2, prefix="again")
    e.kill()
    check(again.status.round > saved.status.round, "saved again later: %r after %r" % (again.status, saved.status))
    verify_continues(restore(case, again, "restored-again"), again, "restored from the second generation")


def device_snapshot(case):
    """A machine with a drive, vsock and a tap, saved; its tap and socket are moved at load by
    vsock_override and network_overrides."""
    try:
        tap_a, tap_b = "embsnpa%d" % (os.getpid() % 10000), "embsnpb%d" % (os.getpid() % 10000)
        os.close(api.hold_tap(tap_b))  # a tap can be made here
    except OSError as ex:
        raise Skip("cannot make a tap here (%s)" % ex)
    drive = api.make_image(case.tmp, "disk.img", 1 << 20)
    uds_a, uds_b = case.path("a.vsock"), case.path("b.vsock")
    e = case.ember("source")
    expect(e.req("PUT", "/drives/data", {"drive_id": "data", "path_on_host": drive, "is_root_device": False,
                                         "is_read_only": False}), 204, "drive")
    expect(e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": uds_a}), 204, "vsock")
    expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap_a}), 204, "tap")
    expect(e.req("PUT", "/boot-source", {"kernel_image_path": SNAPCOUNT,
                                         "boot_args": "console=ttyS0 snap_pages=%d" % PAGES}), 204, "boot-source")
    expect(e.req("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": MEM_MIB}), 204, "machine-config")
    expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
    wait_status(e, lambda s: s.round >= MIN_ROUNDS, "with devices: %d rounds" % MIN_ROUNDS)
    saved = take(case, e, 2)
    e.kill()  # it holds the drive's lock
    saved.drive, saved.tap, saved.uds = drive, tap_b, uds_b
    r = case.ember("restored")
    expect(r.req("PUT", "/snapshot/load", load_body(saved, network_overrides=[
        {"iface_id": "eth0", "host_dev_name": tap_b}], vsock_override={"uds_path": uds_b})), 204,
        "load with overrides")
    return saved, r


def test_devices_and_overrides(case):
    saved, r = device_snapshot(case)
    check(os.path.exists(saved.uds) and stat.S_ISSOCK(os.stat(saved.uds).st_mode),
          "the vsock socket at the override's path")
    check(os.path.exists("/sys/class/net/" + saved.tap), "the tap of the override exists")
    verify_continues(r, saved, "restored with devices")


def test_config_after_load(case):
    """GET /machine-config and /vm/config describe the machine the snapshot brought, as
    Firecracker's do after a load."""
    saved, r = device_snapshot(case)
    machine = r.req("GET", "/machine-config").json() or {}
    check(machine.get("vcpu_count") == 2 and machine.get("mem_size_mib") == MEM_MIB,
          "GET /machine-config after a load of 2 vCPUs, %d MiB: %r" % (MEM_MIB, machine))
    config = r.req("GET", "/vm/config").json() or {}
    check([d.get("path_on_host") for d in config.get("drives") or []] == [saved.drive],
          "GET /vm/config: the drive: %r" % config.get("drives"))
    nets = config.get("network-interfaces") or []
    check([n.get("host_dev_name") for n in nets] == [saved.tap], "GET /vm/config: the new tap: %r" % nets)
    check((config.get("vsock") or {}).get("uds_path") == saved.uds,
          "GET /vm/config: the new vsock socket: %r" % config.get("vsock"))


def test_memory_file_layout_and_corruption(case):
    """The memory file holds the guest's pages at their guest-physical offsets, and a page
    changed there is caught by the guest: its MISMATCH check is live."""
    saved = snapshot(case, 1)
    check(saved.first_page is not None, "the guest's start line: %s" % tail(saved.out))
    found = []
    with open(saved.mem, "r+b") as f:
        for index, addr in ((0, saved.first_page), (PAGES - 1, saved.last_page)):
            f.seek(addr)
            words = struct.unpack("<512Q", f.read(4096))
            base = words[0]
            check(all(words[w] == (base + w * PATTERN_STEP) & M64 for w in range(512)),
                  "page 0x%x in the memory file holds no pattern" % addr)
            # The guest may have run some rounds between its last line and the pause.
            rounds = [r for r in range(saved.status.round, saved.status.round + 200000)
                      if pattern_base(r, index) == base]
            check(rounds, "page 0x%x holds no round of page %d's pattern at or after round %d" %
                  (addr, index, saved.status.round))
            found.append((addr, rounds[0]))
            f.seek(addr)
            f.write(struct.pack("<512Q", *((w ^ 0xff) for w in words)))
    e = restore(case, saved, "restored")
    deadline = time.monotonic() + PATIENCE_S
    whole = re.compile(r"^.*snapcount: (?:MISMATCH|FAIL).*\n", re.M)  # a line printed in full
    while not whole.search(e.stdout()):
        check(time.monotonic() < deadline and e.alive(),
              "no MISMATCH from a corrupted memory file: %s" % tail(e.stdout()))
        time.sleep(0.05)
    bad = whole.search(e.stdout()).group(0).strip()
    check("MISMATCH page 0x%x" % found[0][0] in bad or "MISMATCH page 0x%x" % found[1][0] in bad,
          "the guest names a corrupted page (%s): %r" % (", ".join("0x%x" % a for a, _ in found), bad))


def merge_tool():
    if not os.access(SNAPSHOT_MERGE, os.X_OK):
        raise Skip("no diff-merge tool at %s (EMBER_SNAPSHOT_MERGE=)" % SNAPSHOT_MERGE)
    return SNAPSHOT_MERGE


def diff_snapshots(case):
    """A Full snapshot, then the machine runs on and a Diff snapshot is taken."""
    e = running(case, "source", 2, track_dirty=True)
    base = take(case, e, 2, "Full", "base")
    since = len(e.stdout())
    resume(e)
    wait_status(e, lambda s: s.round >= base.status.round + 5, "the source runs on after the Full snapshot", since)
    diff = take(case, e, 2, "Diff", "diff")
    e.kill()
    return base, diff


IMAGE_START = 0x100000  # guest/guest.ld: the image's first page, code


def read_page(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(4096)


def test_diff_merged(case):
    tool = merge_tool()
    base, diff = diff_snapshots(case)
    # The guest's code page was written at boot only; its pattern pages, in every round.
    check(any(read_page(base.mem, IMAGE_START)), "the Full memory file holds the guest's code")
    check(not any(read_page(diff.mem, IMAGE_START)),
          "the Diff memory file holds a page unchanged since the Full snapshot (the guest's code)")
    check(any(read_page(diff.mem, diff.first_page)),
          "the Diff memory file lacks page 0x%x, written in every round" % diff.first_page)
    diff.mem = merge(tool, case, base.mem, [diff])
    verify_continues(restore(case, diff, "restored"), diff, "restored from base + diff")


def merge(tool, case, base_mem, diffs, name="merged.mem"):
    """A copy of base_mem with the Diffs merged onto it, oldest first."""
    merged = case.path(name)
    shutil.copyfile(base_mem, merged)
    cmd = [tool, merged] + [d.mem for d in diffs]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=PATIENCE_S)
    check(r.returncode == 0, "%s: status %d: %s" % (" ".join(cmd), r.returncode, r.stdout.decode(errors="replace")))
    return merged


def test_diff_chain(case):
    """Full, then two Diffs: both merged in order onto the Full one restore the last."""
    tool = merge_tool()
    e = running(case, "source", 2, track_dirty=True)
    base = take(case, e, 2, "Full", "base")
    diffs = []
    for n in range(2):
        since = len(e.stdout())
        resume(e)
        wait_status(e, lambda s: True, "the source runs on (%d)" % n, since)
        diffs.append(take(case, e, 2, "Diff", "diff%d" % n))
    e.kill()
    last = diffs[-1]
    last.mem = merge(tool, case, base.mem, diffs)
    verify_continues(restore(case, last, "restored"), last, "restored from base + 2 diffs")


def test_diff_of_restored(case):
    """A machine restored with track_dirty_pages takes a Diff against the memory file it came
    from; merged onto a copy of that file, it restores."""
    tool = merge_tool()
    saved = snapshot(case, 2)
    e = restore(case, saved, "restored", track_dirty_pages=True)
    verify_continues(e, saved, "restored with dirty tracking")
    diff = take(case, e, 2, "Diff", "diff")
    e.kill()
    diff.mem = merge(tool, case, saved.mem, [diff])
    verify_continues(restore(case, diff, "restored-again"), diff, "restored from its Diff")


def test_diff_needs_tracking(case):
    e = running(case, "source", 1)
    pause(e)
    r = e.req("PUT", "/snapshot/create", {"snapshot_type": "Diff", "snapshot_path": case.path("s"),
                                          "mem_file_path": case.path("m")})
    expect(r, 400, "a Diff snapshot without dirty page tracking", "track_dirty_pages")
    still_there(e, "Paused", "after a refused Diff")
    since = len(e.stdout())
    resume(e)
    wait_status(e, lambda s: True, "the guest runs after a refused Diff", since=since)


def test_diff_alone_is_not_enough(case):
    """The Diff state over the Full memory file alone (no merge) must be caught: the pages the
    machine wrote after the Full snapshot are what the Diff holds."""
    base, diff = diff_snapshots(case)
    diff.mem = base.mem
    e = restore(case, diff, "restored")
    deadline = time.monotonic() + PATIENCE_S
    while "MISMATCH" not in e.stdout():
        check(time.monotonic() < deadline and e.alive(),
              "no MISMATCH with the Diff's pages missing: %s" % tail(e.stdout()))
        time.sleep(0.05)


def test_live_migration(case):
    """ember migrate of the running SMP guest to a new ember: the source ends, every vCPU's
    counter and timer and the memory pattern carry on at the destination."""
    cpus = 2
    src = running(case, "source", cpus)
    dst = case.ember("destination")
    url = "unix:" + case.path("migration.sock")
    r = subprocess.run([EMBER, "migrate", "--from", src.sock, "--to", dst.sock, "--url", url,
                        "--timeout-s", "60"], capture_output=True, text=True, timeout=2 * PATIENCE_S)
    check(r.returncode == 0, "ember migrate: status %d: %s %s" % (r.returncode, r.stdout, r.stderr))
    status = src.wait()
    check(status == 0, "the source ended with status %r: %s" % (status, tail(src.stderr())))
    out = src.stdout()
    lines = statuses(out)
    check(lines, "the source printed no status line")
    verify_continues(dst, Saved(None, None, lines[-1], cpus, out), "migrated")


def uffd(case, mode):
    if not os.access(UFFD_HANDLER, os.X_OK):
        raise Skip("no userfaultfd handler at %s (EMBER_UFFD_HANDLER=)" % UFFD_HANDLER)
    if not os.path.exists("/dev/userfaultfd") and os.geteuid() != 0:
        raise Skip("userfaultfd needs root or /dev/userfaultfd")
    saved = snapshot(case, 2)
    sock = case.path("uffd.sock")
    handler = case.popen([UFFD_HANDLER, "--socket", sock, "--mem-file", saved.mem, "--mode", mode], "uffd-" + mode)
    deadline = time.monotonic() + PATIENCE_S
    while not os.path.exists(sock):
        check(handler.poll() is None, "the uffd handler exited (%r): %s" % (handler.returncode, open(handler.log_path).read()[-400:]))
        check(time.monotonic() < deadline, "the uffd handler made no socket at %s" % sock)
        time.sleep(0.02)
    e = restore(case, saved, "restored", backend="Uffd", backend_path=sock)
    verify_continues(e, saved, "restored through userfaultfd (%s)" % mode)
    check(handler.poll() is None, "the uffd handler still serves: %s" % open(handler.log_path).read()[-400:])
    pause(e)
    r = e.req("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": case.path("s"),
                                          "mem_file_path": case.path("m")})
    expect(r, 400, "a snapshot of a machine whose memory the handler serves")
    check(r.fault(), "the refusal says why: %r" % r)
    since = len(e.stdout())
    resume(e)
    wait_status(e, lambda s: True, "the guest runs after the refused snapshot", since=since)
    # Once ember is gone the handler ends and prints its counts: the pages came through it.
    e.proc.terminate()
    e.wait()
    try:
        handler.wait(PATIENCE_S)
    except subprocess.TimeoutExpired:
        raise Failure("the uffd handler did not end when ember did")
    log = open(handler.log_path).read()
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", log))
    served = counts.get("copied", 0) if mode == "on-demand" else counts.get("bulk_copied", 0)
    check(served >= PAGES, "the handler (%s) filled the guest's %d pages from the memory file: %r" %
          (mode, PAGES, log[-400:]))


def test_uffd_on_demand(case):
    uffd(case, "on-demand")


def test_uffd_all_at_once(case):
    uffd(case, "all-at-once")


# ---- refusals: each leaves the process as it was ------------------------------------------


def still_there(e, state, what):
    """e answers on a fresh connection, with the state it had before the refusal."""
    api.serving(e, what)
    got = e.req("GET", "/").json().get("state")
    check(got == state, "%s: state %r, not %r" % (what, got, state))


def test_create_not_started(case):
    e = case.ember("fresh")
    r = e.req("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": case.path("s"),
                                          "mem_file_path": case.path("m")})
    expect(r, 400, "snapshot/create before InstanceStart")
    check(re.search(r"start|paused|running", r.fault(), re.I), "fault_message names the problem: %r" % r.fault())
    check(not os.path.exists(case.path("s")), "no state file written")
    still_there(e, "Not started", "after create before start")


def test_create_not_paused(case):
    e = running(case, "source", 1)
    r = e.req("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": case.path("s"),
                                          "mem_file_path": case.path("m")})
    expect(r, 400, "snapshot/create while running", "paused")
    still_there(e, "Running", "after create while running")
    check(not os.path.exists(case.path("s")), "no state file written")
    wait_status(e, lambda s: True, "the guest runs on", since=len(e.stdout()))


def test_create_bad_path(case):
    e = running(case, "source", 1)
    pause(e)
    bad = case.path("no/such/dir/state")
    r = e.req("PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": bad,
                                          "mem_file_path": case.path("m")})
    expect(r, 400, "snapshot/create into a missing directory", bad)
    still_there(e, "Paused", "after a failed create")
    since = len(e.stdout())
    resume(e)
    wait_status(e, lambda s: True, "the guest runs after a failed create", since=since)


def test_create_bad_requests(case):
    e = running(case, "source", 1)
    pause(e)
    for body, what in (
            ({"snapshot_type": "Bogus", "snapshot_path": case.path("s"), "mem_file_path": case.path("m")}, "Bogus"),
            ({"snapshot_type": "Full", "mem_file_path": case.path("m")}, "snapshot_path"),
            ({"snapshot_type": "Full", "snapshot_path": case.path("s")}, "mem_file_path")):
        r = e.req("PUT", "/snapshot/create", body)
        expect(r, 400, "snapshot/create %r" % body)
        check(what.lower() in r.fault().lower(), "fault_message names %s: %r" % (what, r.fault()))
    r = e.req("PATCH", "/vm", {"state": "Sleeping"})
    expect(r, 400, "PATCH /vm Sleeping")
    still_there(e, "Paused", "after bad requests")


# One good snapshot serves every refused load; made once, copied per check.
_good = {}


def good_snapshot(case):
    if "saved" not in _good:
        if "error" in _good:
            raise Failure("no snapshot to start from: %s" % _good["error"])
        d = tempfile.mkdtemp(prefix="ember-snapshot-good-", dir=SCRATCH)
        _good["dir"] = d
        c = Case(d)
        try:
            _good["saved"] = snapshot(c, 1)
        except Failure as ex:
            _good["error"] = ex
            raise
        finally:
            report = c.close()
        if report:
            raise Failure("a sanitizer reported: %s" % report)
    s = _good["saved"]
    state = case.path("good.state")
    shutil.copyfile(s.state, state)
    return Saved(state, s.mem, s.status, s.cpus, s.out)


def refused_load(case, saved, what, fault_has, **kw):
    e = case.ember("target")
    r = e.req("PUT", "/snapshot/load", load_body(saved, **kw))
    expect(r, 400, "load of %s" % what)
    check(any(f.lower() in r.fault().lower() for f in fault_has),
          "load of %s: fault_message %r names none of %r" % (what, r.fault(), fault_has))
    still_there(e, "Not started", "after the load of %s" % what)
    return e


def patched_state(case, saved, name, patch):
    with open(saved.state, "rb") as f:
        data = bytearray(f.read())
    patch(data)
    path = case.path(name)
    with open(path, "wb") as f:
        f.write(data)
    saved.state = path
    return saved


def test_load_after_machine_config(case):
    saved = good_snapshot(case)
    e = case.ember("target")
    config = {"vcpu_count": 1, "mem_size_mib": MEM_MIB}
    expect(e.req("PUT", "/machine-config", config), 204, "machine-config")
    r = e.req("PUT", "/snapshot/load", load_body(saved))
    expect(r, 400, "load after PUT /machine-config")
    check(re.search(r"config|load|snapshot|before", r.fault(), re.I), "fault_message names the problem: %r" % r.fault())
    still_there(e, "Not started", "after a load refused")
    got = e.req("GET", "/machine-config").json()
    check(got["vcpu_count"] == 1 and got["mem_size_mib"] == MEM_MIB, "machine-config kept: %r" % got)


def test_load_truncated(case):
    saved = good_snapshot(case)
    patched_state(case, saved, "truncated.state", lambda d: d.__delitem__(slice(len(d) // 2, None)))
    refused_load(case, saved, "a truncated state file", ["truncated"])


def test_load_flipped_byte(case):
    saved = good_snapshot(case)

    def flip(d):
        d[len(d) // 2] ^= 0x40

    patched_state(case, saved, "flipped.state", flip)
    refused_load(case, saved, "a state file with a flipped byte", ["checksum"])


def test_load_bad_magic(case):
    saved = good_snapshot(case)

    def magic(d):
        d[0:8] = b"NOTEMBER"

    patched_state(case, saved, "magic.state", magic)
    refused_load(case, saved, "a state file with a wrong magic", ["magic", "not an ember snapshot"])


def test_load_other_version(case):
    saved = good_snapshot(case)

    def version(d):
        check(d[:8] == SNAP_MAGIC, "the state file starts with %r" % SNAP_MAGIC)
        check(crc64(b"123456789") == 0x995dc9bbdf1939fa, "this test's CRC-64/XZ")
        check(struct.unpack_from("<Q", d, len(d) - TRAILER)[0] == crc64(bytes(d[:-TRAILER])),
              "the state file's trailer is the CRC-64 of the rest")
        mine = struct.unpack_from("<I", d, VERSION_OFFSET)[0]
        struct.pack_into("<I", d, VERSION_OFFSET, mine + 1)
        # A valid checksum: only the version is wrong.
        struct.pack_into("<Q", d, len(d) - TRAILER, crc64(bytes(d[:-TRAILER])))

    patched_state(case, saved, "version.state", version)
    refused_load(case, saved, "a state file of another format version", ["version"])


def test_load_short_memory_file(case):
    saved = good_snapshot(case)
    short = case.path("short.mem")
    with open(saved.mem, "rb") as src, open(short, "wb") as dst:
        dst.write(src.read((MEM_MIB << 20) // 2))
    saved.mem = short
    refused_load(case, saved, "a memory file shorter than guest RAM", ["short", "size", "smaller", "bytes"])


def test_load_missing_memory_file(case):
    saved = good_snapshot(case)
    saved.mem = case.path("missing.mem")
    refused_load(case, saved, "a missing memory file", [saved.mem])


def test_load_directory_as_state(case):
    saved = good_snapshot(case)
    saved.state = case.tmp
    refused_load(case, saved, "a directory as snapshot_path", ["director", "regular file", case.tmp])


def test_load_missing_state(case):
    saved = good_snapshot(case)
    saved.state = case.path("missing.state")
    refused_load(case, saved, "a missing state file", [saved.state])


def test_load_vsock_override_without_vsock(case):
    saved = good_snapshot(case)
    refused_load(case, saved, "a vsock override for a snapshot without vsock", ["vsock"],
                 vsock_override={"uds_path": case.path("v.sock")})


def test_load_bad_requests(case):
    saved = good_snapshot(case)
    e = case.ember("target")
    for body, what in (
            ({"snapshot_path": saved.state, "mem_backend": {"backend_type": "Bogus", "backend_path": saved.mem}}, "Bogus"),
            ({"snapshot_path": saved.state}, "mem_backend"),
            ({"mem_backend": {"backend_type": "File", "backend_path": saved.mem}}, "snapshot_path")):
        r = e.req("PUT", "/snapshot/load", body)
        expect(r, 400, "snapshot/load %r" % body)
        check(what.lower() in r.fault().lower(), "fault_message names %s: %r" % (what, r.fault()))
    still_there(e, "Not started", "after bad load requests")


def test_load_unknown_network_override(case):
    saved = good_snapshot(case)
    refused_load(case, saved, "a network override for an interface the snapshot lacks", ["eth7"],
                 network_overrides=[{"iface_id": "eth7", "host_dev_name": "tap7"}])


def test_second_load(case):
    saved = good_snapshot(case)
    e = restore(case, saved, "restored")
    r = e.req("PUT", "/snapshot/load", load_body(saved))
    expect(r, 400, "a second snapshot/load")
    check(r.fault(), "a second load: fault_message says why: %r" % r)
    check(e.req("GET", "/").json().get("state") == "Running", "still running after a second load")
    verify_continues(e, saved, "after a refused second load")


# ---- --describe-snapshot ----------------------------------------------------------------


def describe(path):
    return subprocess.run([EMBER, "--describe-snapshot", path], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=PATIENCE_S)


def test_describe_snapshot(case):
    saved = good_snapshot(case)
    with open(saved.state, "rb") as f:
        version = struct.unpack_from("<I", f.read(12), VERSION_OFFSET)[0]
    r = describe(saved.state)
    out = r.stdout.decode(errors="replace").strip()
    check(r.returncode == 0, "--describe-snapshot: status %d: %s" % (r.returncode, r.stderr.decode(errors="replace")))
    first = out.splitlines()[0] if out else ""
    m = re.fullmatch(r"v?(\d+)(?:\.\d+){0,2}", first)
    check(m and int(m.group(1)) == version, "--describe-snapshot prints version %d first: %r" % (version, out))


def test_describe_bad_snapshot(case):
    saved = good_snapshot(case)
    patched_state(case, saved, "magic.state", lambda d: d.__setitem__(slice(0, 8), b"NOTEMBER"))
    r = describe(saved.state)
    err = r.stderr.decode(errors="replace")
    check(r.returncode != 0, "--describe-snapshot of a bad file: status 0, printed %r" % r.stdout)
    check("magic" in err or "not an ember snapshot" in err, "--describe-snapshot names the problem: %r" % err)
    r = describe(case.path("missing"))
    check(r.returncode != 0 and case.path("missing") in r.stderr.decode(errors="replace"),
          "--describe-snapshot of a missing file: status %d, %r" % (r.returncode, r.stderr))


TESTS = [
    test_full_1cpu, test_full_2cpus, test_full_4cpus, test_full_paused_then_resumed,
    test_tsc_after_a_gap, test_nmi, test_restore_five_times, test_two_clones_in_parallel, test_source_continues, test_load_options,
    test_snapshot_of_restored, test_saved_again_before_resuming,
    test_devices_and_overrides, test_config_after_load,
    test_memory_file_layout_and_corruption, test_diff_merged, test_diff_chain, test_diff_of_restored,
    test_diff_needs_tracking, test_diff_alone_is_not_enough,
    test_uffd_on_demand, test_uffd_all_at_once, test_live_migration,
    test_create_not_started, test_create_not_paused, test_create_bad_path, test_create_bad_requests,
    test_load_after_machine_config, test_load_truncated, test_load_flipped_byte, test_load_bad_magic,
    test_load_other_version, test_load_short_memory_file, test_load_missing_memory_file,
    test_load_directory_as_state, test_load_missing_state, test_load_bad_requests,
    test_load_unknown_network_override, test_load_vsock_override_without_vsock, test_second_load,
    test_describe_snapshot, test_describe_bad_snapshot,
]


def main():
    args = sys.argv[1:]
    if "-v" in args:
        api.VERBOSE = True
        args.remove("-v")
    selected = [t for t in TESTS if not args or t.__name__ in args or t.__name__[5:] in args]
    for path in (EMBER, SNAPCOUNT):
        if not os.path.exists(path):
            print("snapshot: missing %s (build with make all guests)" % path)
            return 1
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("snapshot: no usable /dev/kvm")
        return 1
    passed = failed = skipped = 0
    try:
        for n, test in enumerate(selected, 1):
            tmp = tempfile.mkdtemp(prefix="ember-snapshot-", dir=SCRATCH)
            case = Case(tmp)
            start = time.monotonic()
            try:
                try:
                    test(case)
                finally:
                    report = case.close()
                if report:
                    raise Failure("a sanitizer reported: %s" % report)
                passed += 1
                print("ok %d - %s (%.1f s)" % (n, test.__name__[5:], time.monotonic() - start))
            except Skip as ex:
                skipped += 1
                print("ok %d - %s # SKIP %s" % (n, test.__name__[5:], ex))
            except Exception as ex:  # noqa: BLE001 - a check's failure of any kind is reported
                failed += 1
                print("not ok %d - %s: %s: %s" % (n, test.__name__[5:], type(ex).__name__, ex))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            sys.stdout.flush()
    finally:
        if "dir" in _good:
            shutil.rmtree(_good["dir"], ignore_errors=True)
    print("snapshot: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
