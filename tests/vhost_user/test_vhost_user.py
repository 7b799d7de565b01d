#!/usr/bin/env python3
"""vhost-user end to end: Debian's qemu-storage-daemon serves a disk image as a
vhost-user-blk export, and ember's front-end hands it a freestanding guest's rings
(guest/vhost-user-blk.c) on virtio-pci and virtio-mmio, from the command line and from
Firecracker's API (PUT /drives with `socket`). Debian's virtiofsd serves a directory as
virtio-fs (--fs, PUT /fs/{id}) to a guest that speaks FUSE (guest/virtio-fs.c): it reads a file
the test wrote, makes a directory and writes a file, which the test checks on the host.

The image starts with a known pattern (the 8-byte word at byte offset o is mix64(o ^ HOST_SEED));
the guest reads and checks it, writes its own pattern over [1 MiB, 3 MiB) and flushes; this test
then checks the image file block by block (512-byte sectors). Also: the daemon killed while the
guest does I/O (ember logs one line, the device needs a reset, ember keeps running and the guest
ends normally), snapshot and migration refused; the daemon killed and restarted under a guest
writing sequenced blocks (ember reconnects, the device resumes without a guest reset, every block
checked on the host) and killed for good (errors within the reconnection limit); a scripted
back-end offering INFLIGHT_SHMFD restarted; and back-ends that are absent or never answer (ember
fails at start within its reply timeout, never hangs).

Standard library only. Usage: tests/vhost_user/test_vhost_user.py [-v] [NAME...]
Environment: EMBER (default build/ember), GUEST_DIR (default build/guest), QSD (default
qemu-storage-daemon on PATH). Without qemu-storage-daemon the tests that need it are skipped with
the reason; the same for virtiofsd (VIRTIOFSD, default /usr/lib/qemu/virtiofsd) and for QEMU
(QEMU, default qemu-system-x86_64 on PATH: the reference front-end for virtio-fs). KEEP_TMP=1
keeps each test's directory (logs, images) for a look afterwards. Prints one
line per check and ends with "vhost-user: N passed, N failed, N skipped"; exits 1 if any check
failed.
"""

import json
import mmap
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "api"))
import test_api as api  # noqa: E402 - ember's API client and process helpers
from test_api import EMBER, GUEST_DIR, PATIENCE_S, Ember, Failure, check, expect  # noqa: E402

GUEST = os.path.join(GUEST_DIR, "vhost-user-blk.elf")
QSD = os.environ.get("QSD") or shutil.which("qemu-storage-daemon")
FS_GUEST = os.path.join(GUEST_DIR, "virtio-fs.elf")
VIRTIOFSD = os.environ.get("VIRTIOFSD") or "/usr/lib/qemu/virtiofsd"
# What guest/virtio-fs.c expects and writes.
FS_HOST_FILE, FS_HOST_TEXT = "from-host.txt", b"ember virtio-fs: written by the host\n"
FS_GUEST_DIR = "made-by-guest"
FS_GUEST_FILE, FS_GUEST_TEXT = "from-guest.txt", b"ember virtio-fs: written by the guest\n"
HOST_SEED = 0x686F73742D766275
GUEST_SEED = 0x67756573742D7662
DISK_BYTES = 4 << 20
WRITE_START, WRITE_LEN = 1 << 20, 2 << 20
SECTOR = 512
M64 = (1 << 64) - 1


class Skip(Exception):
    pass


def mix64(x):
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def pattern(offset, length, seed):
    return b"".join(struct.pack("<Q", mix64((offset + i) ^ seed)) for i in range(0, length, 8))


HOST_DATA = pattern(0, DISK_BYTES, HOST_SEED)
EXPECTED = HOST_DATA[:WRITE_START] + pattern(WRITE_START, WRITE_LEN, GUEST_SEED) + \
    HOST_DATA[WRITE_START + WRITE_LEN:]


def check_image(path, what):
    """The image, block by block: the guest's data where it wrote, the host's elsewhere."""
    with open(path, "rb") as f:
        data = f.read()
    check(len(data) == DISK_BYTES, "%s: the image is %d bytes, not %d" % (what, len(data), DISK_BYTES))
    bad = [i for i in range(DISK_BYTES // SECTOR)
           if data[i * SECTOR:(i + 1) * SECTOR] != EXPECTED[i * SECTOR:(i + 1) * SECTOR]]
    check(not bad, "%s: %d of %d blocks differ, the first at sector %d (%s)" %
          (what, len(bad), DISK_BYTES // SECTOR, bad[0] if bad else 0,
           "in the guest's range" if bad and WRITE_START <= bad[0] * SECTOR < WRITE_START + WRITE_LEN
           else "outside the guest's range"))


class Daemon:
    """qemu-storage-daemon exporting an image as vhost-user-blk on a unix socket."""

    def __init__(self, tmp, name="vub", queues=1, fresh=True):
        if not QSD:
            raise Skip("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
        self.image = os.path.join(tmp, name + ".img")
        if fresh:
            with open(self.image, "wb") as f:
                f.write(HOST_DATA)
        self.sock = os.path.join(tmp, name + ".sock")
        if not fresh and os.path.exists(self.sock):
            os.unlink(self.sock)  # left by the daemon killed before: wait for the new one's
        self.log = open(os.path.join(tmp, name + ".qsd.log"), "ab")
        self.proc = subprocess.Popen(
            [QSD, "--blockdev", "driver=file,node-name=f,filename=" + self.image,
             "--export", "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=%s,writable=on,"
             "num-queues=%d" % (self.sock, queues)], stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + PATIENCE_S
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failure("qemu-storage-daemon did not open %s" % self.sock)
            time.sleep(0.02)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def tap_lines(out):
    return [line.strip() for line in out.splitlines() if line.startswith("ok ") or line.startswith("not ok ")]


def check_guest(out, what, want=9):
    tap = tap_lines(out)
    check(len(tap) == want and all(t.startswith("ok ") for t in tap),
          "%s: the guest's checks: %r" % (what, tap))


def run_cli(tmp, transport, extra_cmdline="", drive_extra="", queues=1, log_level="info"):
    d = Daemon(tmp, queues=queues)
    try:
        cmd = [EMBER, "run", "--kernel", GUEST, "--debug-exit", "--transport", transport,
               "--drive", "socket=%s,id=vub%s" % (d.sock, drive_extra),
               "--cmdline", "console=ttyS0 vub_sectors=%d %s" % (DISK_BYTES // SECTOR, extra_cmdline),
               "--log-level", log_level]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    finally:
        d.stop()
    return d, p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def check_interrupt_path(err, transport, what):
    """virtio-pci with MSI-X: the back-end signals the vector's KVM irqfd itself, ember relays
    nothing (a masked vector's interrupt included: the guest's masking check reads it from the
    PBA); virtio-mmio: ember relays each interrupt (it sets the interrupt status)."""
    direct = re.search(r"interrupts of (\d+) ring\(s\) straight from the back-end to KVM", err)
    relayed = re.search(r"(\d+) interrupts relayed from the back-end", err)
    if transport == "pci":
        check(direct and not relayed, "%s: interrupts straight to KVM, none relayed: %s" % (what, err))
    else:
        check(relayed and not direct, "%s: interrupts relayed by ember: %s" % (what, err))


# Debian 12's qemu-storage-daemon and virtiofsd (libvhost-user, QEMU 7.2) offer
# CONFIGURE_MEM_SLOTS with 32 slots: ember gives them guest RAM by ADD_MEM_REG, said at debug level.
BY_REGION = "guest memory given by ADD_MEM_REG: 1 region(s), the back-end has 32 slots"


def test_cli_pci(tmp):
    """Also: guest RAM given to qemu-storage-daemon by ADD_MEM_REG (ember's debug line), once
    per connection: after the guest's reset, the next DRIVER_OK adds nothing."""
    d, status, out, err = run_cli(tmp, "pci", log_level="debug")
    check(status == 1, "exit status %d (the guest's debug-exit 0 is 1)\n%s" % (status, err))
    check_guest(out, "pci")
    check_interrupt_path(err, "pci", "blk pci")
    check(err.count(BY_REGION) == 1 and "the back-end has guest memory already" in err and
          "SET_MEM_TABLE" not in err,
          "guest memory given region by region: %r" % [line for line in err.splitlines() if "guest memory" in line])
    check("vhost-user back-end at %s, %d sectors" % (d.sock, DISK_BYTES // SECTOR) in err,
          "ember names the back-end and its capacity: %s" % err)
    check_image(d.image, "pci")


def test_cli_mmio(tmp):
    """Also a back-end with two queues (GET_QUEUE_NUM): the device has both, the guest uses one."""
    d, status, out, err = run_cli(tmp, "mmio", queues=2)
    check(status == 1, "exit status %d\n%s" % (status, err))
    check_guest(out, "mmio")
    check_interrupt_path(err, "mmio", "blk mmio")
    check("%d sectors, 2 queue(s)" % (DISK_BYTES // SECTOR) in err,
          "ember takes the back-end's two queues: %s" % err)
    check_image(d.image, "mmio")


def test_api_drive(tmp):
    """Firecracker's PUT /drives with `socket`; GET /vm/config shows it."""
    d = Daemon(tmp)
    e = None
    try:
        e = Ember(tmp, args=["--level", "Info"])
        img = os.path.join(tmp, "file.img")
        with open(img, "wb") as f:
            f.truncate(1 << 20)
        bad = [
            ({"drive_id": "v", "is_root_device": False, "socket": d.sock, "path_on_host": img},
             "exactly one"),
            ({"drive_id": "v", "is_root_device": False, "socket": d.sock, "is_read_only": True},
             "is_read_only"),
            ({"drive_id": "v", "is_root_device": False, "socket": d.sock, "io_engine": "Sync"},
             "io_engine"),
            ({"drive_id": "v", "is_root_device": False, "socket": d.sock,
              "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}, "rate_limiter"),
            ({"drive_id": "v", "is_root_device": False, "socket": img}, "not a socket"),
            ({"drive_id": "v", "is_root_device": False, "socket": os.path.join(tmp, "none")},
             "No such file"),
            ({"drive_id": "v", "is_root_device": False}, "path_on_host"),
            ({"drive_id": "v", "is_root_device": False, "socket": d.sock, "reconnect_s": 3601},
             "reconnect_s"),
            ({"drive_id": "v", "is_root_device": False, "socket": d.sock, "reconnect_s": -1},
             "reconnect_s"),
            ({"drive_id": "v", "is_root_device": False, "path_on_host": img, "reconnect_s": 5},
             "reconnect_s"),
        ]
        for body, msg in bad:
            expect(e.req("PUT", "/drives/v", body), 400, "PUT /drives %r" % body, msg)
        expect(e.req("PUT", "/boot-source", {
            "kernel_image_path": GUEST,
            "boot_args": "console=ttyS0 vub_sectors=%d" % (DISK_BYTES // SECTOR)}), 204, "boot source")
        expect(e.req("PUT", "/drives/vub", {"drive_id": "vub", "is_root_device": False,
                                            "cache_type": "Writeback", "socket": d.sock,
                                            "reconnect_s": 0}),
               204, "PUT /drives with socket")
        r = e.req("GET", "/vm/config")
        drive = r.json()["drives"][0]
        check(drive["socket"] == d.sock and drive["path_on_host"] is None and drive["reconnect_s"] == 0,
              "GET /vm/config shows the socket: %r" % drive)
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        # Without a debug-exit port the guest halts after its last check.
        deadline = time.monotonic() + PATIENCE_S
        while len(tap_lines(e.stdout())) < 9 and e.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        check_guest(e.stdout(), "API")
        # A PATCH with drive_id alone reads the back-end's configuration space again.
        expect(e.req("PATCH", "/drives/vub", {"drive_id": "vub"}), 204, "PATCH: refresh")
        expect(e.req("PATCH", "/drives/vub", {"drive_id": "vub", "path_on_host": img}), 400,
               "PATCH: a new path", "vhost-user back-end")
        check("configuration read again: %d sectors" % (DISK_BYTES // SECTOR) in e.stderr(),
              "the refresh is logged with the capacity: %s" % e.stderr()[-1000:])
    finally:
        if e:
            e.kill()
        d.stop()
    check_image(d.image, "API")


HUGE_MIB = 128  # the huge-page guest's RAM (as the other tests')


def huge_start(tmp, d):
    """An ember configured with huge pages and the daemon's drive; InstanceStart's answer."""
    e = Ember(tmp, args=["--level", "Info"])
    expect(e.req("PUT", "/boot-source", {
        "kernel_image_path": GUEST,
        "boot_args": "console=ttyS0 vub_sectors=%d" % (DISK_BYTES // SECTOR)}), 204, "boot source")
    expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": HUGE_MIB,
                                            "huge_pages": "2M"}), 204, "machine-config 2M")
    expect(e.req("PUT", "/drives/vub", {"drive_id": "vub", "is_root_device": False,
                                        "cache_type": "Writeback", "socket": d.sock}),
           204, "PUT /drives with socket")
    return e, e.req("PUT", "/actions", {"action_type": "InstanceStart"})


def test_huge_pages(tmp):
    """Huge pages with a vhost-user device: guest RAM a memfd from the hugetlbfs pool, shared
    with the back-end; a pool too small is named at InstanceStart."""
    path = "/proc/sys/vm/nr_hugepages"
    if not os.access(path, os.W_OK):
        raise Skip("cannot reserve huge pages (%s is not writable)" % path)
    with open(path) as f:
        before = int(f.read())
    d = Daemon(tmp)
    e = None
    try:
        # Whatever is free now, minus the guest's need, so that the pool is short.
        with open(path, "w") as f:
            f.write("0")
        e, r = huge_start(tmp, d)
        check(r.status == 400 and "reserve more" in r.fault(),
              "InstanceStart with an empty pool: %r" % r)
        e.kill()
        with open(path, "w") as f:
            f.write(str(HUGE_MIB // 2))
        with open(path) as f:
            if int(f.read()) < HUGE_MIB // 2:
                raise Skip("the host gave fewer than %d huge pages" % (HUGE_MIB // 2))
        e, r = huge_start(tmp, d)
        check(r.status == 204, "InstanceStart with %d huge pages reserved: %r" % (HUGE_MIB // 2, r))
        deadline = time.monotonic() + PATIENCE_S
        while len(tap_lines(e.stdout())) < 9 and e.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        check_guest(e.stdout(), "huge pages")
        with open("/proc/meminfo") as f:
            info = f.read()
        free, rsvd = (int(re.search(r"HugePages_%s:\s+(\d+)" % k, info).group(1))
                      for k in ("Free", "Rsvd"))
        # Reserved at the mapping, allocated as the guest (or the back-end) touches them.
        check(free == rsvd, "the guest's RAM holds or reserves all %d huge pages (%d free, %d "
              "of them reserved)" % (HUGE_MIB // 2, free, rsvd))
    finally:
        if e:
            e.kill()
        d.stop()
        with open(path, "w") as f:
            f.write(str(before))
    check_image(d.image, "huge pages")


def api_conn(path):
    return api.Conn(path)


def test_backend_killed(tmp):
    """The daemon dies while the guest reads: one log line, the device needs a reset, ember and
    the guest go on. Snapshots and migration were refused before."""
    d = Daemon(tmp)
    sock = os.path.join(tmp, "api.sock")
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--debug-exit", "--api-sock", sock,
                              "--drive", "socket=%s,id=vub,reconnect=0" % d.sock, "--cmdline",
                              "console=ttyS0 vub_sectors=%d vub_hold=1" % (DISK_BYTES // SECTOR)],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while b"# vub: holding" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest did not start holding: %s" % open(out_path, "rb").read().decode()[-2000:])
            time.sleep(0.05)
        c = api_conn(sock)
        try:
            expect(c.request("PATCH", "/vm", {"state": "Paused"}), 204, "pause")
            expect(c.request("PUT", "/snapshot/create", {
                "snapshot_path": os.path.join(tmp, "s"), "mem_file_path": os.path.join(tmp, "m")}),
                400, "snapshot of a machine with a vhost-user drive", "vhost-user device (blk0)")
            expect(c.request("PUT", "/migration/send", {"destination_url": "unix:" + os.path.join(tmp, "mig")}),
                   400, "migration of a machine with a vhost-user drive", "cannot migrate yet")
            expect(c.request("PATCH", "/vm", {"state": "Resumed"}), 204, "resume")
        finally:
            c.close()
        time.sleep(0.3)
        d.kill()
        try:
            status = p.wait(PATIENCE_S)
        except subprocess.TimeoutExpired:
            raise Failure("ember hangs after its back-end died")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        d.stop()
    out, err = open(out_path).read(), open(err_path).read()
    check(status == 1, "exit status %d (the guest's debug-exit 0 is 1): %s" % (status, err[-2000:]))
    check_guest(out, "back-end killed")
    lines = [line for line in err.splitlines() if "vhost-user back-end" in line and "closed its socket" in line]
    check(len(lines) == 1, "one log line says the back-end went away: %r" % err[-2000:])


BLOCK = 4096
STREAM_SEED = 0x73747265616D2D76


def stream_block(seq):
    """What guest/vhost-user-blk.c writes as sequence number seq."""
    return struct.pack("<Q", seq) + b"".join(
        struct.pack("<Q", mix64(((seq << 9) | j) ^ STREAM_SEED)) for j in range(1, BLOCK // 8))


def run_stream(tmp, restart, reconnect_s, seconds, kill_after=1.0, down_s=0.5):
    """The guest streams sequenced writes; the daemon is killed (SIGKILL) kill_after seconds
    in, and restarted on the same socket and image down_s later when restart is set."""
    d = Daemon(tmp)
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    cmdline = "console=ttyS0 vub_sectors=%d vub_stream=%d" % (DISK_BYTES // SECTOR, seconds)
    if not restart:
        cmdline += " vub_stream_fail=1"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--debug-exit", "--drive",
                              "socket=%s,id=vub,reconnect=%d" % (d.sock, reconnect_s), "--log-level", "info",
                              "--cmdline", cmdline],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    start = None
    try:
        deadline = time.monotonic() + PATIENCE_S
        while b"# vub: streaming" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest did not start streaming: %s" % open(out_path, "rb").read().decode()[-2000:])
            time.sleep(0.02)
        time.sleep(kill_after)
        d.kill()
        start = time.monotonic()
        if restart:
            time.sleep(down_s)
            d.stop()
            d = Daemon(tmp, fresh=False)
        try:
            status = p.wait(PATIENCE_S + seconds + reconnect_s)
        except subprocess.TimeoutExpired:
            raise Failure("ember hangs after its back-end died")
        took = time.monotonic() - start
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        d.stop()
    out, err = open(out_path).read(), open(err_path).read()
    check(status == 1, "exit status %d (the guest's debug-exit 0 is 1): %s" % (status, err[-2000:]))
    check_guest(out, "stream")
    m = re.search(r"# vub: stream writes=(\d+) errors=(\d+) needs_reset=(\d) sum=(\d+)", out)
    check(m is not None, "the guest's summary: %s" % out[-1500:])
    return d, out, err, [int(x) for x in m.groups()], took


def test_backend_restarted(tmp):
    """qemu-storage-daemon killed and restarted on the same socket while the guest writes
    sequenced blocks: ember reconnects, the device resumes without a guest reset, and every
    block holds the last write the guest completed there (no block stale, duplicated or torn),
    checked on the host block by block. Debian 12's daemon (QEMU 7.2) offers no
    INFLIGHT_SHMFD, so the writes it had taken fail with an I/O error (at most the guest's 16
    in flight), which the guest writes again."""
    d, out, err, (writes, errors, needs_reset, total), _ = run_stream(tmp, True, 10, 5)
    check(needs_reset == 0, "the device never needed a reset")
    check(errors <= 16, "%d writes failed, at most the 16 in flight may" % errors)
    lost = [line for line in err.splitlines() if "it closed its socket; reconnecting" in line]
    back = [line for line in err.splitlines() if "is back after" in line and "device resumed" in line]
    check(len(lost) == 1 and len(back) == 1,
          "one line says the back-end went away, one that it is back: %r" % err[-2000:])
    with open(d.image, "rb") as f:
        data = f.read()
    blocks = DISK_BYTES // BLOCK
    seqs = [struct.unpack_from("<Q", data, b * BLOCK)[0] for b in range(blocks)]
    bad = [b for b in range(blocks) if seqs[b] >= writes or data[b * BLOCK:(b + 1) * BLOCK] != stream_block(seqs[b])]
    check(not bad, "%d of %d blocks hold no whole write of the guest's, the first block %d" %
          (len(bad), blocks, bad[0] if bad else 0))
    check(sum(seqs) == total, "the blocks hold the last writes the guest completed (sum of sequence "
          "numbers %d, the guest's %d): none stale or duplicated" % (sum(seqs), total))
    check(len(set(seqs)) == blocks, "no write landed in two blocks")
    print("     %d writes, %d failed and written again, resumed: %s" % (writes, errors, back[0].split("WARN: ")[-1]))


def test_backend_never_returns(tmp):
    """qemu-storage-daemon killed for good: within reconnect=2 s the guest's writes fail with I/O
    errors and the device needs a reset; ember keeps running, says why, and ends normally."""
    _, out, err, (writes, errors, needs_reset, _), took = run_stream(tmp, False, 2, 30)
    check(needs_reset, "the device needs a reset once ember gave up (the guest saw %d errors before)" % errors)
    check(took < 2 + 5 + 10, "the guest's stream ended %.1f s after the kill" % took)
    why = [line for line in err.splitlines() if "not back in time" in line]
    check(len(why) == 1, "one line says the back-end did not come back: %r" % err[-2000:])


class ScriptedBlk:
    """A vhost-user-blk back-end in a thread that answers the set-up messages and never serves
    a ring, but offers INFLIGHT_SHMFD (Debian's qemu-storage-daemon does not): GET_INFLIGHT_FD
    gets a memfd. Each connection's requests are recorded; drop() closes the current one (the
    back-end died), after which the next connection is answered (restarted).
    memslots: offers CONFIGURE_MEM_SLOTS (answering GET_MAX_MEM_SLOTS with `slots`); every
    memory region it is given (ADD_MEM_REG or SET_MEM_TABLE) is recorded with what its
    descriptor held: its size (fstat) and whether the region maps (mmap). backend_req: offers
    BACKEND_REQ and keeps the channel's end (request() sends on it). sectors: the capacity
    GET_CONFIG says, changeable."""

    def __init__(self, tmp, memslots=False, slots=32, backend_req=False, name="inflight"):
        self.path = os.path.join(tmp, name + ".sock")
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(4)
        self.memslots, self.slots, self.backend_req = memslots, slots, backend_req
        self.sectors = DISK_BYTES // SECTOR
        self.conns, self.logs, self.inflight_fds = [], [], []
        self.regions = []  # per connection: [(message, padding, gpa, size, uaddr, offset, fd size, mapped)]
        self.channels = []  # per connection: the channel socket, or None
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def recv_exact(self, c, n, fds):
        data = b""
        while len(data) < n:
            msg, got, _, _ = socket.recv_fds(c, n - len(data), 8)
            if not msg:
                raise OSError("closed")
            data += msg
            fds.extend(got)
        return data

    def serve(self):
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            log, regions = [], []
            with self.lock:
                self.conns.append(c)
                self.logs.append(log)
                self.regions.append(regions)
                self.channels.append(None)
            try:
                self.answer(c, log, regions, len(self.conns) - 1)
            except OSError:
                pass

    @staticmethod
    def region(req, fd, padding, gpa, size, uaddr, offset):
        """A region as given, with what its descriptor holds."""
        fd_size = os.fstat(fd).st_size
        mapped = False
        try:
            m = mmap.mmap(fd, size + offset, mmap.MAP_SHARED, mmap.PROT_READ)
            m.close()
            mapped = True
        except (OSError, ValueError):
            pass
        return (req, padding, gpa, size, uaddr, offset, fd_size, mapped)

    def answer(self, c, log, regions, index):
        protocol = (1 << 3) | (1 << 9) | (1 << 12)  # REPLY_ACK, CONFIG, INFLIGHT_SHMFD
        if self.memslots:
            protocol |= 1 << 15
        if self.backend_req:
            protocol |= 1 << 5
        while True:
            fds = []
            req, flags, size = struct.unpack("<III", self.recv_exact(c, 12, fds))
            payload = self.recv_exact(c, size, fds) if size else b""
            with self.lock:
                log.append((req, len(fds)))
                if req == 37 and size == 40 and len(fds) == 1:  # ADD_MEM_REG
                    regions.append(self.region("ADD_MEM_REG", fds[0], *struct.unpack("<QQQQQ", payload)))
                elif req == 37:
                    regions.append(("ADD_MEM_REG", size, len(fds)))
                elif req == 5:  # SET_MEM_TABLE
                    n = struct.unpack_from("<I", payload)[0]
                    if size != 8 + 32 * n or len(fds) != n:
                        regions.append(("SET_MEM_TABLE", size, len(fds)))
                    for i in range(n if len(fds) == n else 0):
                        regions.append(self.region("SET_MEM_TABLE", fds[i], 0,
                                                   *struct.unpack_from("<QQQQ", payload, 8 + 32 * i)))
                if req == 21 and len(fds) == 1:  # SET_BACKEND_REQ_FD: the channel kept
                    self.channels[index] = socket.socket(fileno=os.dup(fds[0]))
            for fd in fds:
                os.close(fd)

            def reply(body, fds=()):
                data = struct.pack("<III", req, 0x5, len(body)) + body
                if fds:
                    socket.send_fds(c, [data], list(fds))
                else:
                    c.sendall(data)

            if req == 1:  # GET_FEATURES: VERSION_1, PROTOCOL_FEATURES
                reply(struct.pack("<Q", (1 << 32) | (1 << 30) | (1 << 9)))  # and FLUSH
            elif req == 15:  # GET_PROTOCOL_FEATURES
                reply(struct.pack("<Q", protocol))
            elif req == 24:  # GET_CONFIG: capacity only
                offset, length, cflags = struct.unpack_from("<III", payload)
                config = struct.pack("<Q", self.sectors).ljust(256, b"\0")
                reply(struct.pack("<III", offset, length, cflags) + config[offset:offset + length])
            elif req == 31:  # GET_INFLIGHT_FD
                fd = os.memfd_create("inflight")
                os.ftruncate(fd, 8192)
                with self.lock:
                    self.inflight_fds.append(fd)
                num_queues, queue_size = struct.unpack_from("<HH", payload, 16)
                reply(struct.pack("<QQHH", 8192, 0, num_queues, queue_size), [fd])
            elif req == 11:  # GET_VRING_BASE
                reply(struct.pack("<II", struct.unpack_from("<I", payload)[0], 0))
            elif req == 36:  # GET_MAX_MEM_SLOTS
                reply(struct.pack("<Q", self.slots))
            elif flags & 0x8:
                reply(struct.pack("<Q", 0))

    def log(self, i):
        with self.lock:
            return list(self.logs[i]) if i < len(self.logs) else []

    def given(self, i):
        with self.lock:
            return list(self.regions[i]) if i < len(self.regions) else []

    def channel(self, i):
        with self.lock:
            return self.channels[i] if i < len(self.channels) else None

    def drop(self):
        with self.lock:
            self.conns[-1].shutdown(socket.SHUT_RDWR)
            self.conns[-1].close()

    def close(self):
        self.srv.close()
        with self.lock:
            for fd in self.inflight_fds:
                os.close(fd)
            for ch in self.channels:
                if ch:
                    ch.close()


def run_scripted(tmp, b, extra_args=(), cmdline="", log_level="info"):
    """ember with the vhost-user-blk guest on scripted back-end b; its process and log paths,
    once the first back-end has its ring (SET_VRING_ENABLE)."""
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--log-level", log_level, "--drive",
                              "socket=%s,id=vub,reconnect=10" % b.path, "--cmdline",
                              "console=ttyS0 vub_sectors=%d %s" % (DISK_BYTES // SECTOR, cmdline)]
                             + list(extra_args), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    deadline = time.monotonic() + PATIENCE_S
    while not any(r == 18 for r, _ in b.log(0)):
        if p.poll() is not None or time.monotonic() > deadline:
            stop_ember(p)
            raise Failure("the back-end never got its ring: %s" % open(err_path).read()[-2000:])
        time.sleep(0.05)
    return p, out_path, err_path


def stop_ember(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(PATIENCE_S)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_inflight_reconnect(tmp):
    """A back-end that offers INFLIGHT_SHMFD (scripted: it answers the set-up, never serves the
    ring): at DRIVER_OK ember gets its inflight buffer (GET_INFLIGHT_FD, the memfd checked and
    mapped under the vhost_user seccomp filter) and hands it over (SET_INFLIGHT_FD); the
    back-end dies with the guest's reads in flight and a new one on the same socket gets the
    same buffer again (no GET_INFLIGHT_FD) and the rings, while the guest's device is never
    reset and no request is failed on its behalf."""
    b = ScriptedBlk(tmp)
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--log-level", "info", "--drive",
                              "socket=%s,id=vub,reconnect=10" % b.path, "--cmdline",
                              "console=ttyS0 vub_sectors=%d" % (DISK_BYTES // SECTOR)],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        def enabled(i):
            return any(r == 18 for r, _ in b.log(i))  # SET_VRING_ENABLE

        deadline = time.monotonic() + PATIENCE_S
        while not enabled(0):
            check(p.poll() is None and time.monotonic() < deadline,
                  "the first back-end never got its ring: %s" % open(err_path).read()[-2000:])
            time.sleep(0.05)
        first = b.log(0)
        reqs = [r for r, _ in first]
        check(31 in reqs and (32, 1) in first and reqs.index(31) < reqs.index(32) < reqs.index(8),
              "GET_INFLIGHT_FD, then SET_INFLIGHT_FD with its descriptor, before the ring: %r" % reqs)
        time.sleep(0.5)  # the guest's first read is in flight, unanswered
        check(p.poll() is None, "ember runs with the inflight buffer mapped: %s" % open(err_path).read()[-2000:])
        b.drop()
        while not enabled(1):
            check(p.poll() is None and time.monotonic() < deadline,
                  "no reconnection: %s" % open(err_path).read()[-2000:])
            time.sleep(0.05)
        second = b.log(1)
        reqs = [r for r, _ in second]
        check(31 not in reqs and (32, 1) in second and reqs.index(32) < reqs.index(8),
              "the new back-end gets the same buffer (SET_INFLIGHT_FD, no GET_INFLIGHT_FD): %r" % reqs)
        time.sleep(0.3)
        check(p.poll() is None, "ember runs on: %s" % open(err_path).read()[-2000:])
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(PATIENCE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        b.close()
    err = open(err_path).read()
    check("is back after" in err and "resubmitted" in err, "ember says the back-end is back: %r" % err[-2000:])
    check("request(s) in flight failed" not in err and "device stopped" not in err and "seccomp" not in err,
          "nothing failed, no seccomp violation: %r" % err[-2000:])


SLOTS_RAM_MIB = 4096  # guest RAM past the 32-bit hole: two regions


def check_regions(regions, how, what, ram_bytes):
    """The regions a back-end was given: all by `how`, each 4 KiB-aligned in a descriptor that
    holds it (fstat) and maps (mmap), all of guest RAM, one mapping's layout (user address -
    offset the same)."""
    check(regions and all(len(r) == 8 and r[0] == how for r in regions),
          "%s: guest memory given by %s, each region with one descriptor: %r" % (what, how, regions))
    for _, padding, gpa, size, uaddr, offset, fd_size, mapped in regions:
        check(padding == 0 and size > 0 and offset % 4096 == 0 and fd_size >= offset + size and mapped,
              "%s: region at 0x%x: padding %d, %d bytes at offset %d of a file of %d bytes, %s" %
              (what, gpa, padding, size, offset, fd_size, "mapped" if mapped else "not mappable"))
    check(sum(r[3] for r in regions) == ram_bytes,
          "%s: the regions hold %d bytes of guest RAM's %d" % (what, sum(r[3] for r in regions), ram_bytes))
    check(len({r[4] - r[5] for r in regions}) == 1, "%s: one mapping's regions: %r" % (what, regions))


def test_memslots(tmp):
    """A back-end offering CONFIGURE_MEM_SLOTS (scripted): GET_MAX_MEM_SLOTS at connection,
    then guest RAM (4 GiB: two regions around the 32-bit hole) as one acknowledged ADD_MEM_REG
    per region (padding, region, its memfd), never SET_MEM_TABLE; the back-end restarted gets
    them again."""
    b = ScriptedBlk(tmp, memslots=True)
    p = None
    try:
        p, _, err_path = run_scripted(tmp, b, ["--memory", str(SLOTS_RAM_MIB)])
        reqs = [r for r, _ in b.log(0)]
        check(36 in reqs and 37 in reqs and 5 not in reqs and reqs.index(36) < reqs.index(37) < reqs.index(8),
              "GET_MAX_MEM_SLOTS, then ADD_MEM_REG before the rings, no SET_MEM_TABLE: %r" % reqs)
        first = b.given(0)
        check(len(first) == 2, "two regions, two ADD_MEM_REG: %r" % first)
        check_regions(first, "ADD_MEM_REG", "first back-end", SLOTS_RAM_MIB << 20)
        b.drop()
        deadline = time.monotonic() + PATIENCE_S
        while not any(r == 18 for r, _ in b.log(1)):
            check(p.poll() is None and time.monotonic() < deadline,
                  "no reconnection: %s" % open(err_path).read()[-2000:])
            time.sleep(0.05)
        second = b.given(1)
        check_regions(second, "ADD_MEM_REG", "restarted back-end", SLOTS_RAM_MIB << 20)
        check([r[2:6] for r in second] == [r[2:6] for r in first],
              "the restarted back-end gets the same regions: %r, %r" % (first, second))
        check(p.poll() is None, "ember runs on: %s" % open(err_path).read()[-2000:])
        print("     ADD_MEM_REG: %s" % ", ".join("0x%x+0x%x at offset 0x%x" % (r[2], r[3], r[5]) for r in first))
    finally:
        if p:
            stop_ember(p)
        b.close()


def test_mem_table(tmp):
    """A back-end without CONFIGURE_MEM_SLOTS (scripted): guest RAM in one SET_MEM_TABLE, a
    descriptor per region, as before."""
    b = ScriptedBlk(tmp)
    p = None
    try:
        p, _, _ = run_scripted(tmp, b, ["--memory", str(SLOTS_RAM_MIB)])
        reqs = [r for r, _ in b.log(0)]
        check(5 in reqs and 36 not in reqs and 37 not in reqs and reqs.index(5) < reqs.index(8),
              "SET_MEM_TABLE before the rings, no GET_MAX_MEM_SLOTS nor ADD_MEM_REG: %r" % reqs)
        check_regions(b.given(0), "SET_MEM_TABLE", "SET_MEM_TABLE", SLOTS_RAM_MIB << 20)
        check(len(b.given(0)) == 2, "two regions: %r" % b.given(0))
    finally:
        if p:
            stop_ember(p)
        b.close()


def test_memslots_too_few(tmp):
    """A back-end with fewer memory slots than guest RAM has regions, or an answer past KVM's
    slot count: ember refuses it at start (status 2) with both numbers."""
    for slots, msg in ((1, "the back-end has 1 memory slot(s), guest RAM is 2 region(s)"),
                       (0, "0 memory slots (1 to 32764)"), (1 << 40, "memory slots (1 to 32764)")):
        sub = os.path.join(tmp, str(slots))
        os.mkdir(sub)
        b = ScriptedBlk(sub, memslots=True, slots=slots)
        try:
            r = subprocess.run([EMBER, "run", "--kernel", GUEST, "--memory", str(SLOTS_RAM_MIB), "--drive",
                                "socket=%s,id=x" % b.path], stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=PATIENCE_S)
        finally:
            b.close()
        err = r.stderr.decode(errors="replace")
        check(r.returncode == 2 and msg in err, "%d slots: status %d: %s" % (slots, r.returncode, err))


def recv_answer(ch, timeout=PATIENCE_S):
    ch.settimeout(timeout)
    data = b""
    while len(data) < 20:
        got = ch.recv(20 - len(data))
        if not got:
            raise Failure("the channel closed")
        data += got
    return struct.unpack("<IIIQ", data)


def proc_cpu_rss(pid):
    """ember's CPU time (s) and resident memory (KiB)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open("/proc/%d/status" % pid) as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return cpu, rss


RESIZED_SECTORS = 2 * DISK_BYTES // SECTOR


def test_config_change(tmp):
    """The back-end's request channel (scripted: BACKEND_REQ): its disk grows and it says so
    (CONFIG_CHANGE_MSG, asking for an answer): ember reads the configuration again, answers 0,
    and the guest, waiting, gets a configuration interrupt and the new capacity, without a
    PATCH. Then a flood of 200000 notices and unknown requests: served in bounded bites (the
    configuration read far fewer times than there were notices), one rate-limited line for the
    refusals, ember idle and no bigger afterwards, the channel still answering. A restarted
    back-end gets a channel of its own."""
    b = ScriptedBlk(tmp, backend_req=True)
    p = None
    try:
        p, out_path, err_path = run_scripted(tmp, b, cmdline="vub_resize=%d" % RESIZED_SECTORS)
        deadline = time.monotonic() + PATIENCE_S
        while b"# vub: waiting for a resize" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest does not wait: %s" % open(out_path).read()[-2000:])
            time.sleep(0.05)
        ch = b.channel(0)
        check(ch is not None, "the back-end got its channel (SET_BACKEND_REQ_FD with a descriptor): %r" % b.log(0))
        b.sectors = RESIZED_SECTORS
        ch.sendall(struct.pack("<III", 2, 0x1 | 0x8, 0))
        check(recv_answer(ch) == (2, 0x5, 8, 0), "ember answers the notice with 0")
        while "# vub: " + "a configuration interrupt" not in open(out_path).read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest saw no configuration interrupt: %s" % open(out_path).read()[-2000:])
            time.sleep(0.05)
        time.sleep(0.2)
        out = open(out_path).read()
        check("capacity %d sectors" % RESIZED_SECTORS in out and "ok 2 " in out,
              "the guest reads the new capacity: %s" % out[-1000:])
        check("configuration changed: %d sectors" % RESIZED_SECTORS in open(err_path).read(),
              "ember says so: %s" % open(err_path).read()[-1000:])

        configs = sum(1 for r, _ in b.log(0) if r == 24)
        cpu0, rss0 = proc_cpu_rss(p.pid)
        notices = 100000
        flood = (struct.pack("<III", 2, 0x1, 0) + struct.pack("<III", 77, 0x1, 4) + b"junk") * notices
        ch.settimeout(PATIENCE_S * 4)
        ch.sendall(flood)
        time.sleep(1)
        ch.sendall(struct.pack("<III", 2, 0x1 | 0x8, 0))
        check(recv_answer(ch) == (2, 0x5, 8, 0), "the channel answers after the flood")
        cpu1, rss1 = proc_cpu_rss(p.pid)
        time.sleep(2)
        cpu2, rss2 = proc_cpu_rss(p.pid)
        reads = sum(1 for r, _ in b.log(0) if r == 24) - configs
        print("     flood: %d notices and %d unknown requests in %.2f s of ember's CPU, %d configuration "
              "reads, RSS %d -> %d KiB" % (notices, notices, cpu1 - cpu0, reads, rss0, rss2))
        check(0 < reads < notices // 20, "the notices are coalesced: %d configuration reads" % reads)
        check(cpu2 - cpu1 < 0.2, "ember is idle after the flood (%.2f s of CPU in 2 s)" % (cpu2 - cpu1))
        check(rss2 - rss0 < 8 << 10, "ember's memory did not grow: %d -> %d KiB" % (rss0, rss2))
        err = open(err_path).read()
        refused = [line for line in err.splitlines() if "on its channel refused" in line]
        check(1 <= len(refused) <= 2 and "request 77" in refused[0],
              "one rate-limited line for the refusals: %r" % refused)
        b.drop()
        while b.channel(1) is None or not any(r == 18 for r, _ in b.log(1)):
            check(p.poll() is None and time.monotonic() < deadline + PATIENCE_S,
                  "no reconnection: %s" % open(err_path).read()[-2000:])
            time.sleep(0.05)
        b.channel(1).sendall(struct.pack("<III", 2, 0x1 | 0x8, 0))
        check(recv_answer(b.channel(1)) == (2, 0x5, 8, 0), "the restarted back-end's channel answers")
        check(p.poll() is None and "seccomp" not in open(err_path).read(),
              "ember runs on, no seccomp violation: %s" % open(err_path).read()[-2000:])
    finally:
        if p:
            stop_ember(p)
        b.close()


def test_qsd_resize(tmp):
    """qemu-storage-daemon's export resized (QMP block_resize on its monitor): with a daemon
    that tells its front-end (CONFIG_CHANGE_MSG), the guest gets the new capacity without a
    PATCH. Debian 12's (QEMU 7.2) sends nothing (and its GET_CONFIG keeps the old size), which
    this test detects and skips with the reason."""
    if not QSD:
        raise Skip("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
    image, sock, mon = (os.path.join(tmp, n) for n in ("vub.img", "vub.sock", "qmp.sock"))
    with open(image, "wb") as f:
        f.write(HOST_DATA)
    log = open(os.path.join(tmp, "qsd.log"), "wb")
    d = subprocess.Popen([QSD, "--chardev", "socket,id=m,path=%s,server=on,wait=off" % mon, "--monitor", "chardev=m",
                          "--blockdev", "driver=file,node-name=f,filename=" + image, "--export",
                          "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=%s,writable=on" % sock],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    p = None
    try:
        deadline = time.monotonic() + PATIENCE_S
        while not (os.path.exists(sock) and os.path.exists(mon)):
            check(d.poll() is None and time.monotonic() < deadline, "qemu-storage-daemon did not start")
            time.sleep(0.02)
        out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--log-level", "info", "--drive",
                                  "socket=%s,id=vub" % sock, "--cmdline", "console=ttyS0 vub_sectors=%d vub_resize=%d" %
                                  (DISK_BYTES // SECTOR, RESIZED_SECTORS)],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        while b"# vub: waiting for a resize" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest does not wait: %s" % open(out_path).read()[-2000:])
            time.sleep(0.05)
        q = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        q.settimeout(PATIENCE_S)
        q.connect(mon)
        f = q.makefile("rw")
        f.readline()
        for cmd in ({"execute": "qmp_capabilities"},
                    {"execute": "block_resize", "arguments": {"node-name": "f", "size": RESIZED_SECTORS * SECTOR}}):
            f.write(json.dumps(cmd) + "\n")
            f.flush()
            answer = json.loads(f.readline())
            check("return" in answer, "QMP %s: %r" % (cmd["execute"], answer))
        q.close()
        check(os.path.getsize(image) == RESIZED_SECTORS * SECTOR, "the image grew")
        until = time.monotonic() + 5
        while "# vub: a configuration interrupt" not in open(out_path).read() and time.monotonic() < until:
            time.sleep(0.05)
        out, err = open(out_path).read(), open(err_path).read()
        if "# vub: a configuration interrupt" not in out:
            check("configuration changed" not in err, "ember read a change the guest never saw: %s" % err[-1000:])
            raise Skip("this qemu-storage-daemon sends no CONFIG_CHANGE_MSG when its export is resized "
                       "(QEMU 7.2 does not); the request channel is tested with a scripted back-end "
                       "(config_change)")
        check("capacity %d sectors" % RESIZED_SECTORS in out, "the guest reads the new capacity: %s" % out[-1000:])
    finally:
        if p:
            stop_ember(p)
        if d.poll() is None:
            d.terminate()
            d.wait(10)
        log.close()


def test_no_backend(tmp):
    """Nobody listening: ember says so at start, usage error."""
    p = subprocess.run([EMBER, "run", "--kernel", GUEST, "--drive",
                        "socket=%s,id=x" % os.path.join(tmp, "nothing.sock")],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 2 and "cannot connect to the vhost-user back-end" in err,
          "status %d: %s" % (p.returncode, err))


def hostile_backend(tmp, name, behave):
    """A back-end that accepts and then does `behave(conn)`: ember must fail within its 5 s
    reply timeout with a message, never hang or crash."""
    path = os.path.join(tmp, name + ".sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    held = []

    def serve():
        try:
            conn, _ = srv.accept()
            held.append(conn)
            behave(conn)
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    start = time.monotonic()
    p = subprocess.run([EMBER, "run", "--kernel", GUEST, "--drive", "socket=%s,id=x" % path],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    took = time.monotonic() - start
    for c in held:
        c.close()
    srv.close()
    return p.returncode, p.stderr.decode(errors="replace"), took


def test_silent_backend(tmp):
    status, err, took = hostile_backend(tmp, "silent", lambda c: c.recv(4096) and time.sleep(15))
    check(status == 2 and "no answer within 5000 ms" in err, "status %d: %s" % (status, err))
    check(took < 12, "ember gave up after %.1f s" % took)


def test_garbage_backend(tmp):
    def garbage(c):
        c.recv(4096)
        # A reply to GET_FEATURES that claims 4 GiB of payload.
        c.sendall(struct.pack("<III", 1, 0x5, 0xFFFFFFFF) + b"x" * 64)
        time.sleep(2)
    status, err, _ = hostile_backend(tmp, "garbage", garbage)
    check(status == 2 and "4294967295 bytes of payload, not 8" in err, "status %d: %s" % (status, err))


def test_fd_passing_backend(tmp):
    def with_fds(c):
        c.recv(4096)
        r, w = os.pipe()
        socket.send_fds(c, [struct.pack("<IIIQ", 1, 0x5, 8, 1 << 32)], [r, w])
        os.close(r)
        os.close(w)
        time.sleep(2)
    status, err, _ = hostile_backend(tmp, "fds", with_fds)
    check(status == 2 and "descriptors" in err, "status %d: %s" % (status, err))


class Virtiofsd:
    """virtiofsd sharing a fresh directory (with FS_HOST_FILE in it) on a unix socket."""

    def __init__(self, tmp, name="vfs"):
        if not os.access(VIRTIOFSD, os.X_OK):
            raise Skip("%s is not installed (Debian: qemu-system-common)" % VIRTIOFSD)
        if os.geteuid() != 0:
            raise Skip("virtiofsd needs root here (its namespace sandbox)")
        self.dir = os.path.join(tmp, name + ".share")
        os.mkdir(self.dir)
        with open(os.path.join(self.dir, FS_HOST_FILE), "wb") as f:
            f.write(FS_HOST_TEXT)
        self.sock = os.path.join(tmp, name + ".sock")
        self.log_path = os.path.join(tmp, name + ".virtiofsd.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([VIRTIOFSD, "--socket-path=" + self.sock, "-o", "source=" + self.dir,
                                      "-o", "cache=none"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + PATIENCE_S
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failure("virtiofsd did not open %s: %s" % (self.sock, open(self.log_path).read()))
            time.sleep(0.02)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def check_host(self, what):
        """What the guest made, seen on the host."""
        check(os.path.isdir(os.path.join(self.dir, FS_GUEST_DIR)),
              "%s: the guest's directory is on the host: %r" % (what, os.listdir(self.dir)))
        path = os.path.join(self.dir, FS_GUEST_FILE)
        data = open(path, "rb").read() if os.path.exists(path) else None
        check(data == FS_GUEST_TEXT, "%s: the guest's file on the host holds %r" % (what, data))


FS_TAP = 9


def run_fs_cli(tmp, transport, fs_extra="", tag="share", log_level="info"):
    v = Virtiofsd(tmp)
    try:
        cmd = [EMBER, "run", "--kernel", FS_GUEST, "--debug-exit", "--transport", transport,
               "--fs", "tag=%s,socket=%s%s" % (tag, v.sock, fs_extra),
               "--cmdline", "console=ttyS0 vfs_tag=%s" % tag, "--log-level", log_level]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    finally:
        v.stop()
    return v, p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def test_fs_cli_pci(tmp):
    """Also: guest RAM given to virtiofsd by ADD_MEM_REG (ember's debug line)."""
    v, status, out, err = run_fs_cli(tmp, "pci", log_level="debug")
    check(status == 1, "exit status %d (the guest's debug-exit 0 is 1)\n%s" % (status, err))
    check_guest(out, "pci", FS_TAP)
    check_interrupt_path(err, "pci", "fs pci")
    check(BY_REGION in err and "SET_MEM_TABLE" not in err,
          "guest memory given region by region: %r" % [line for line in err.splitlines() if "guest memory" in line])
    check("virtio-fs 'share', vhost-user back-end at %s, 1 request queue(s)" % v.sock in err,
          "ember names the tag, the back-end and the queues: %s" % err)
    v.check_host("pci")


def test_fs_cli_mmio(tmp):
    """Also queues=1 given, and a tag of the full 36 bytes."""
    tag = "t" * 36
    v, status, out, err = run_fs_cli(tmp, "mmio", ",queues=1", tag=tag)
    check(status == 1, "exit status %d\n%s" % (status, err))
    check_guest(out, "mmio", FS_TAP)
    check_interrupt_path(err, "mmio", "fs mmio")
    v.check_host("mmio")


def test_fs_two_devices(tmp):
    """--fs is repeatable: two shares from two virtiofsd, each device with its tag; the guest
    uses the first."""
    v1, v2 = Virtiofsd(tmp, "one"), None
    try:
        v2 = Virtiofsd(tmp, "two")
        cmd = [EMBER, "run", "--kernel", FS_GUEST, "--debug-exit", "--transport", "pci",
               "--fs", "tag=one,socket=" + v1.sock, "--fs", "tag=two,socket=%s" % v2.sock,
               "--cmdline", "console=ttyS0 vfs_tag=one", "--log-level", "info"]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    finally:
        v1.stop()
        if v2:
            v2.stop()
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    check(p.returncode == 1, "exit status %d\n%s" % (p.returncode, err))
    check_guest(out, "two devices", FS_TAP)
    check("fs0: virtio-fs 'one'" in err and "fs1: virtio-fs 'two'" in err,
          "both devices made, in order: %s" % err)
    v1.check_host("two devices")
    check(sorted(os.listdir(v2.dir)) == [FS_HOST_FILE], "the second share untouched: %r" % os.listdir(v2.dir))


QEMU = os.environ.get("QEMU") or shutil.which("qemu-system-x86_64")
# Why the QEMU reference is skipped (None: it runs).
NO_QEMU = ("QEMU_REFERENCE=off: the reference runs in make vhost-user-test, not in each build of ember"
           if os.environ.get("QEMU_REFERENCE") == "off" else
           None if QEMU else "qemu-system-x86_64 is not installed")
QBOOT = "/usr/share/qemu/qboot.rom"


def qemu_reference_command(transport, sock, device, device_opts, kernel, append, netdev=()):
    """QEMU's command line for a reference run of a test guest whose vhost-user front-end is
    device (its name without the transport's suffix: virtio-net, vhost-user-fs) with device_opts,
    the back-end on unix socket sock as chardev "vu"; netdev: arguments before the device (a
    -netdev on that chardev). mmio: microvm; pci: q35, with qboot when installed. Guest RAM, 128
    MiB, is a shared memfd (the back-end maps it); the guest ends QEMU through isa-debug-exit."""
    if transport == "mmio":
        machine = ["-M", "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem",
                   "-global", "virtio-mmio.force-legacy=false"]
        suffix = "-device"
    else:
        machine = ["-M", "q35,memory-backend=mem"] + (["-bios", QBOOT] if os.path.exists(QBOOT) else [])
        suffix = "-pci"
    return [QEMU] + machine + [
        "-object", "memory-backend-memfd,id=mem,size=128M,share=on", "-m", "128M",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-enable-kvm",
        "-cpu", "host,-arch-capabilities", "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-chardev", "socket,id=vu,path=" + sock] + list(netdev) + [
        "-device", device + suffix + "," + device_opts, "-kernel", kernel, "-append", append]


def test_fs_qemu_reference(tmp):
    """The same guest under QEMU's vhost-user-fs front-end with the same virtiofsd, on each
    transport: ember's TAP lines are QEMU's."""
    if NO_QEMU:
        raise Skip(NO_QEMU)
    for transport in ("mmio", "pci"):
        sub = os.path.join(tmp, transport)
        os.mkdir(sub)
        v = Virtiofsd(sub)
        try:
            cmd = qemu_reference_command(transport, v.sock, "vhost-user-fs", "chardev=vu,tag=share",
                                         FS_GUEST, "console=ttyS0 vfs_tag=share")
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
        finally:
            v.stop()
        qemu_out = p.stdout.decode(errors="replace")
        qemu_tap = tap_lines(qemu_out)
        masked = "not ok 7 - MSI-X: a masked vector's interrupt waits in the PBA, arrives on unmask"
        if transport == "pci" and [t for t in qemu_tap if t.startswith("not ok")] == [masked]:
            # Seen on a loaded host: QEMU masks a vhost-user vector by sending the back-end a
            # new call fd, and an interrupt the back-end raised on the old one still arrives.
            # ember's relay keeps it pending (its own runs require this check); QEMU's line
            # is left out of the comparison, said here.
            print("# QEMU pci: %s (an interrupt while the vector was masked): not compared" % masked)
            qemu_tap = [t if t != masked else masked.replace("not ok", "ok", 1) for t in qemu_tap]
        else:
            check(p.returncode == 1, "QEMU %s: exit status %d: %s; guest: %s" %
                  (transport, p.returncode, p.stderr.decode()[-1000:], qemu_out[-1500:]))
        check(len(qemu_tap) == FS_TAP and all(t.startswith("ok ") for t in qemu_tap),
              "QEMU %s: the guest's checks: %r" % (transport, qemu_tap))
        v.check_host("QEMU " + transport)
        sub = os.path.join(tmp, transport + "-ember")
        os.mkdir(sub)
        v, status, out, err = run_fs_cli(sub, transport, tag="share")
        check(status == 1, "ember %s: exit status %d\n%s" % (transport, status, err))
        check(tap_lines(out) == qemu_tap, "%s: ember's TAP lines %r, QEMU's %r" %
              (transport, tap_lines(out), qemu_tap))
        v.check_host("ember " + transport)


def test_fs_too_many_queues(tmp):
    """virtiofsd serves 2 queues (GET_QUEUE_NUM): 2 request queues + hiprio are refused at start."""
    v, status, out, err = run_fs_cli(tmp, "pci", ",queues=2")
    check(status == 2 and "serves 2 queue(s): 2 request queue(s) and the high-priority queue need 3"
          in err, "status %d: %s" % (status, err))


def test_fs_cli_bad(tmp):
    """Bad --fs values: usage errors before anything starts."""
    sock = os.path.join(tmp, "none.sock")
    bad = [("tag=,socket=" + sock, "tag is empty"),
           ("tag=%s,socket=%s" % ("x" * 37, sock), "37 bytes long (at most 36)"),
           ("tag=a\tb,socket=" + sock, "printable ASCII"),
           ("tag=a,socket=%s,queues=0" % sock, "use 1 to 16"),
           ("tag=a,socket=%s,queues=17" % sock, "use 1 to 16"),
           ("tag=a,socket=%s,queues=x" % sock, "use 1 to 16"),
           ("socket=" + sock, "needs tag=NAME"),
           ("tag=a", "needs socket=PATH"),
           ("tag=a,socket=%s,cache=none" % sock, "unknown key 'cache'")]
    for spec, msg in bad:
        p = subprocess.run([EMBER, "run", "--kernel", FS_GUEST, "--fs", spec],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
        err = p.stderr.decode(errors="replace")
        check(p.returncode == 2 and msg in err, "--fs %r: status %d: %s" % (spec, p.returncode, err))
    p = subprocess.run([EMBER, "run", "--kernel", FS_GUEST, "--fs", "tag=a,socket=" + sock,
                        "--fs", "tag=a,socket=" + sock],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 2 and "another --fs has that tag" in err, "same tag twice: %s" % err)
    p = subprocess.run([EMBER, "run", "--kernel", FS_GUEST, "--fs", "tag=a,socket=" + sock],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
    err = p.stderr.decode(errors="replace")
    check(p.returncode == 2 and "cannot connect to the vhost-user back-end" in err,
          "nobody listening: %d %s" % (p.returncode, err))


def test_fs_api(tmp):
    """ember's own PUT /fs/{id}: bad values refused, GET /vm/config shows it, the guest runs."""
    v = Virtiofsd(tmp)
    e = None
    try:
        e = Ember(tmp, args=["--level", "Info"])
        plain = os.path.join(tmp, "plain")
        open(plain, "w").close()
        ok = {"fs_id": "share", "tag": "share", "socket": v.sock}
        bad = [
            (dict(ok, tag=""), "tag is empty"),
            (dict(ok, tag="y" * 37), "at most 36"),
            (dict(ok, tag="a b"), "printable ASCII"),
            (dict(ok, tag=7), "tag"),
            (dict(ok, num_queues=0), "must be 1 to 16"),
            (dict(ok, num_queues=17), "must be 1 to 16"),
            (dict(ok, num_queues=-1), "num_queues"),
            (dict(ok, num_queues=1.5), "num_queues"),
            (dict(ok, socket=plain), "not a socket"),
            (dict(ok, socket=os.path.join(tmp, "none")), "No such file"),
            (dict(ok, fs_id="other"), "differs"),
            (dict(ok, cache="none"), "cache"),
            ({"fs_id": "share", "socket": v.sock}, "missing field `tag`"),
            ({"fs_id": "share", "tag": "share"}, "missing field `socket`"),
        ]
        for body, msg in bad:
            expect(e.req("PUT", "/fs/share", body), 400, "PUT /fs %r" % body, msg)
        check("fs" not in e.req("GET", "/vm/config").json(), "no fs section before one is configured")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": FS_GUEST,
                                             "boot_args": "console=ttyS0 vfs_tag=share"}), 204, "boot source")
        expect(e.req("PUT", "/fs/share", dict(ok, num_queues=1, reconnect_s=3601)), 400,
               "PUT /fs with reconnect_s 3601", "reconnect_s")
        expect(e.req("PUT", "/fs/share", dict(ok, num_queues=1, reconnect_s=3)), 204, "PUT /fs")
        expect(e.req("PUT", "/fs/other", {"fs_id": "other", "tag": "share", "socket": v.sock}), 400,
               "a second fs with the same tag", "already")
        fs = e.req("GET", "/vm/config").json()["fs"]
        check(fs == [{"fs_id": "share", "tag": "share", "socket": v.sock, "num_queues": 1,
                      "reconnect_s": 3}],
              "GET /vm/config shows the fs: %r" % fs)
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        deadline = time.monotonic() + PATIENCE_S
        while len(tap_lines(e.stdout())) < FS_TAP and e.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        check_guest(e.stdout(), "API", FS_TAP)
        expect(e.req("PUT", "/fs/share", ok), 400, "PUT /fs after start")
    finally:
        if e:
            e.kill()
        v.stop()
    v.check_host("API")


def test_fs_config_file(tmp):
    """The configuration file's "fs" list (ember --no-api --config-file)."""
    v = Virtiofsd(tmp)
    cfg = os.path.join(tmp, "vm.json")
    with open(cfg, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": FS_GUEST, "boot_args": "console=ttyS0 vfs_tag=cf"},
                   "fs": [{"fs_id": "cf", "tag": "cf", "socket": v.sock, "num_queues": 1}]}, f)
    out_path = os.path.join(tmp, "ember.out")
    with open(out_path, "wb") as out:
        p = subprocess.Popen([EMBER, "--no-api", "--config-file", cfg], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        # Without a debug-exit port the guest halts after its last check.
        deadline = time.monotonic() + PATIENCE_S
        while len(tap_lines(open(out_path).read())) < FS_TAP and p.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        v.stop()
    check_guest(open(out_path).read(), "configuration file", FS_TAP)
    v.check_host("configuration file")


def test_fs_backend_killed(tmp, reconnect=0):
    """virtiofsd dies while the guest asks: one log line, the device needs a reset, ember and the
    guest go on. Snapshots and migration were refused before."""
    v = Virtiofsd(tmp)
    sock = os.path.join(tmp, "api.sock")
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", FS_GUEST, "--debug-exit", "--api-sock", sock,
                              "--fs", "tag=share,reconnect=%d,socket=%s" % (reconnect, v.sock), "--cmdline",
                              "console=ttyS0 vfs_tag=share vfs_hold=1"],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + PATIENCE_S
        while b"# vfs: holding" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest did not start holding: %s" % open(out_path, "rb").read().decode()[-2000:])
            time.sleep(0.05)
        c = api_conn(sock)
        try:
            expect(c.request("PATCH", "/vm", {"state": "Paused"}), 204, "pause")
            expect(c.request("PUT", "/snapshot/create", {
                "snapshot_path": os.path.join(tmp, "s"), "mem_file_path": os.path.join(tmp, "m")}),
                400, "snapshot of a machine with a virtio-fs device", "vhost-user device (fs0)")
            expect(c.request("PUT", "/migration/send", {"destination_url": "unix:" + os.path.join(tmp, "mig")}),
                   400, "migration of a machine with a virtio-fs device", "cannot migrate yet")
            expect(c.request("PATCH", "/vm", {"state": "Resumed"}), 204, "resume")
        finally:
            c.close()
        time.sleep(0.3)
        v.kill()
        try:
            status = p.wait(PATIENCE_S)
        except subprocess.TimeoutExpired:
            raise Failure("ember hangs after its back-end died")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        v.stop()
    out, err = open(out_path).read(), open(err_path).read()
    check(status == 1, "exit status %d (the guest's debug-exit 0 is 1): %s" % (status, err[-2000:]))
    check_guest(out, "back-end killed", FS_TAP)
    lines = [line for line in err.splitlines() if "vhost-user back-end" in line and "closed its socket" in line]
    if reconnect:
        # Killed with a request in flight: virtio-fs cannot fail it for the back-end, so the
        # device needs a reset at once; killed idle: not back within the limit.
        why = [line for line in err.splitlines() if "no INFLIGHT_SHMFD to resume them" in line or
               "not back in time" in line]
        check(len(why) == 1, "one log line says why the device needs a reset: %r" % err[-2000:])
    else:
        check(len(lines) == 1, "one log line says the back-end went away: %r" % err[-2000:])
    v.check_host("back-end killed")


def test_fs_backend_killed_reconnect(tmp):
    """The same with reconnect=2: the device needs a reset within the limit, one line says why."""
    test_fs_backend_killed(tmp, reconnect=2)


TESTS = [test_cli_pci, test_cli_mmio, test_api_drive, test_backend_killed, test_backend_restarted,
         test_backend_never_returns, test_inflight_reconnect, test_memslots, test_mem_table,
         test_memslots_too_few, test_config_change, test_qsd_resize, test_no_backend,
         test_silent_backend, test_garbage_backend, test_fd_passing_backend,
         test_fs_cli_pci, test_fs_cli_mmio, test_fs_two_devices, test_fs_qemu_reference,
         test_fs_too_many_queues, test_fs_cli_bad, test_fs_api,
         test_fs_config_file, test_fs_backend_killed, test_fs_backend_killed_reconnect, test_huge_pages]


def run_suite(name, tests, needed):
    """Runs the tests named on the command line (all without any; -v: the API's traffic), each
    in a temporary directory; a summary line; the exit status."""
    args = sys.argv[1:]
    if "-v" in args:
        api.VERBOSE = True
        args.remove("-v")
    selected = [t for t in tests if not args or t.__name__ in args or t.__name__[5:] in args]
    for path in needed:
        if not os.path.exists(path):
            print("%s: missing %s (build with make all guests)" % (name, path))
            return 1
    passed = failed = skipped = 0
    for test in selected:
        tmp = tempfile.mkdtemp(prefix="ember-%s-" % name)
        start = time.monotonic()
        try:
            test(tmp)
            print("ok   %s (%.1f s)" % (test.__name__, time.monotonic() - start))
            passed += 1
        except Skip as s:
            print("skip %s: %s" % (test.__name__, s))
            skipped += 1
        except (Failure, OSError, subprocess.TimeoutExpired) as f:
            print("FAIL %s: %s" % (test.__name__, f))
            failed += 1
        finally:
            if not os.environ.get("KEEP_TMP"):
                shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
    print("%s: %d passed, %d failed, %d skipped" % (name, passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_suite("vhost-user", TESTS, (EMBER, GUEST, FS_GUEST)))
