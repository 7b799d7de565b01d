#!/usr/bin/env python3
"""vhost-user-net end to end against DPDK's testpmd (Debian package dpdk-dev): a vhost PMD port
(net_vhost0) forwarding in macswap mode sends every frame back with its MAC addresses swapped.
The freestanding guest guest/vhost-user-net.c sends frames with a sequence number and a pattern
and checks each echo (one at a time, bursts of 128 with a kick every 16, 60 to 1514 bytes), on
virtio-pci and virtio-mmio, with ember as the client (testpmd listens) and as the server (ember
listens, testpmd connects with client=1). QEMU's vhost-user net front-end runs the same guest
against the same testpmd as the reference. Also: PUT /network-interfaces with ember's fields
`vhost_user_socket` and `vhost_user_mode`, the configuration file, bad options refused, a
back-end that is absent (client) or never connects (server), an extra connection refused in
server mode, and testpmd killed under traffic and started again in each mode (ember reconnects,
the guest's traffic resumes without a reset).

testpmd runs without huge pages (--no-huge -m 256, a 4096-mbuf pool), its two lcores on CPU 0,
no PCI scan, no telemetry, its runtime directory under /var/run/dpdk removed afterwards: the
host is left as it was. Its forwarding lcore polls (a CPU busy while a test runs).

Standard library only. Usage: tests/vhost_user/test_vhost_user_net.py [-v] [NAME...]
Environment: EMBER, GUEST_DIR (as test_vhost_user.py), TESTPMD (default dpdk-testpmd on PATH),
QEMU (default qemu-system-x86_64 on PATH). Without testpmd every test that needs it is skipped
with the reason. Ends with "vhost-user-net: N passed, N failed, N skipped"; exits 1 if any check
failed.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "api"))
import test_api as api  # noqa: E402
from test_api import EMBER, GUEST_DIR, PATIENCE_S, Ember, Failure, check, expect  # noqa: E402
from test_vhost_user import NO_QEMU, QEMU, Skip, qemu_reference_command, run_suite, tap_lines  # noqa: E402

GUEST = os.path.join(GUEST_DIR, "vhost-user-net.elf")
TESTPMD = os.environ.get("TESTPMD") or shutil.which("dpdk-testpmd")
MAC = "52:54:00:12:34:56"
NTAP = 8  # the guest's checks
DPDK_RUN = "/var/run/dpdk"
# A guest's whole run: its CPL0 code is emulated here, and testpmd's polling lcore and other
# tests share the two CPUs.
GUEST_S = 2 * PATIENCE_S
# The runs that test how the device is set up (server mode, the API, the configuration file)
# send bursts of 64 frames, not 256: the data path is the client-mode runs' and QEMU's, and
# each echo waits for an interrupt, which the CPL0 emulator here delivers slowly.
SHORT_BURST = "vun_burst=64"


class Testpmd:
    """dpdk-testpmd with one vhost-user port, macswap forwarding. client: it connects to path
    (ember listens); otherwise it listens there."""

    def __init__(self, tmp, path, client=False, name="testpmd"):
        if not TESTPMD:
            raise Skip("dpdk-testpmd is not installed (Debian: dpdk-dev)")
        self.path, self.client = path, client
        self.prefix = "ember-vun-%d-%d" % (os.getpid(), int(time.monotonic() * 1000) % 1000000)
        self.had_run_dir = os.path.isdir(DPDK_RUN)
        self.log_path = os.path.join(tmp, name + ".log")
        self.log = open(self.log_path, "ab")
        if not client and os.path.exists(path):
            os.unlink(path)  # left by one killed before
        vdev = "net_vhost0,iface=%s%s" % (path, ",client=1" if client else "")
        self.proc = subprocess.Popen(
            [TESTPMD, "--no-pci", "--no-huge", "-m", "256", "--no-shconf", "--no-telemetry",
             "--file-prefix", self.prefix, "--lcores", "0@0,1@0", "--vdev", vdev, "--",
             "--forward-mode=macswap", "--auto-start", "--nb-cores=1", "--total-num-mbufs=4096"],
            stdin=subprocess.PIPE, stdout=self.log, stderr=self.log)
        # Listening: ready once the socket is there. Connecting (client=1): it retries every
        # second until ember listens, nothing to wait for. (Its stdout is block-buffered in a
        # file: no line to wait for.)
        deadline = time.monotonic() + PATIENCE_S
        while not client and not os.path.exists(path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Failure("testpmd did not listen on %s: %s" %
                              (path, open(self.log_path, "rb").read().decode()[-1500:]))
            time.sleep(0.05)
        check(self.proc.poll() is None, "testpmd runs: %s" % open(self.log_path, "rb").read().decode()[-1500:])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"\n")
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdin:
            self.proc.stdin.close()
        self.log.close()
        shutil.rmtree(os.path.join(DPDK_RUN, self.prefix), ignore_errors=True)
        if not self.had_run_dir:
            try:
                os.rmdir(DPDK_RUN)
            except OSError:
                pass


def check_guest(out, what):
    tap = tap_lines(out)
    check(len(tap) == NTAP and all(t.startswith("ok ") for t in tap),
          "%s: the guest's checks: %r\n%s" % (what, tap, out[-1500:]))
    return tap


def run_ember(tmp, transport, sock, mode, extra_cmdline="", net_extra="", timeout=None):
    cmd = [EMBER, "run", "--kernel", GUEST, "--debug-exit", "--transport", transport,
           "--net", "vhost-user=%s,mode=%s,mac=%s%s" % (sock, mode, MAC, net_extra),
           "--cmdline", "console=ttyS0 vun_mac=%s %s" % (MAC, extra_cmdline), "--log-level", "info"]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout or GUEST_S)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def cli_run(tmp, transport, mode):
    sock = os.path.join(tmp, "vun.sock")
    if mode == "client":
        t = Testpmd(tmp, sock)
        try:
            status, out, err = run_ember(tmp, transport, sock, mode)
        finally:
            t.stop()
    else:
        # ember listens first; testpmd (client=1) connects when the socket is there.
        cmd = [EMBER, "run", "--kernel", GUEST, "--debug-exit", "--transport", transport,
               "--net", "vhost-user=%s,mode=server,mac=%s" % (sock, MAC),
               "--cmdline", "console=ttyS0 vun_mac=%s %s" % (MAC, SHORT_BURST), "--log-level", "info"]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t = None
        try:
            deadline = time.monotonic() + 5
            while not os.path.exists(sock) and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            check(os.path.exists(sock), "ember made the socket %s" % sock)
            t = Testpmd(tmp, sock, client=True)
            o, e = p.communicate(timeout=GUEST_S)
            status, out, err = p.returncode, o.decode(errors="replace"), e.decode(errors="replace")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            if t:
                t.stop()
        check(not os.path.exists(sock), "ember removed its socket file at exit")
    check(status == 1, "%s %s: exit status %d (the guest's debug-exit 0 is 1)\n%s" %
          (transport, mode, status, err[-2000:]))
    tap = check_guest(out, "%s %s" % (transport, mode))
    m = re.search(r"features (0x[0-9a-f]+) of the back-end's (0x[0-9a-f]+)", err)
    check(m is not None, "ember logs the features: %s" % err[-1500:])
    offered, backend = int(m.group(1), 16), int(m.group(2), 16)
    for bit, name in ((17, "CTRL_VQ"), (22, "MQ"), (34, "RING_PACKED"), (33, "ACCESS_PLATFORM")):
        check(not offered & (1 << bit), "%s is not offered to the guest (the back-end's 0x%x)" % (name, backend))
    check(offered & (1 << 5) and offered & (1 << 16), "MAC and STATUS are offered (ember's own)")
    return tap, out, err


def test_cli_client_pci(tmp):
    cli_run(tmp, "pci", "client")


def test_cli_client_mmio(tmp):
    cli_run(tmp, "mmio", "client")


def test_cli_server_pci(tmp):
    cli_run(tmp, "pci", "server")


def test_cli_server_mmio(tmp):
    cli_run(tmp, "mmio", "server")


def test_qemu_reference(tmp):
    """The same guest under QEMU's vhost-user net front-end (-netdev vhost-user) with testpmd, on
    each transport: QEMU's TAP lines are ember's."""
    if NO_QEMU:
        raise Skip(NO_QEMU)
    for transport in ("mmio", "pci"):
        sub = os.path.join(tmp, transport)
        os.mkdir(sub)
        sock = os.path.join(sub, "vun.sock")
        t = Testpmd(sub, sock)
        try:
            cmd = qemu_reference_command(transport, sock, "virtio-net", "netdev=n0,mac=" + MAC, GUEST,
                                         "console=ttyS0 vun_mac=" + MAC,
                                         netdev=["-netdev", "vhost-user,id=n0,chardev=vu"])
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=GUEST_S)
        finally:
            t.stop()
        qemu_out = p.stdout.decode(errors="replace")
        check(p.returncode == 1, "QEMU %s: exit status %d: %s; guest: %s" %
              (transport, p.returncode, p.stderr.decode()[-1000:], qemu_out[-1500:]))
        qemu_tap = check_guest(qemu_out, "QEMU " + transport)
        sub = os.path.join(tmp, transport + "-ember")
        os.mkdir(sub)
        tap, _, _ = cli_run(sub, transport, "client")
        check(tap == qemu_tap, "%s: ember's TAP lines %r, QEMU's %r" % (transport, tap, qemu_tap))


def test_no_backend_client(tmp):
    """Nobody listens: ember fails at start at once, naming the socket."""
    status, _, err = run_ember(tmp, "pci", os.path.join(tmp, "none.sock"), "client")
    check(status == 2 and "cannot connect to the vhost-user back-end" in err, "status %d: %s" % (status, err))


def test_no_backend_server(tmp):
    """Nobody connects: ember waits 10 s, then fails with the reason and removes its socket."""
    sock = os.path.join(tmp, "vun.sock")
    start = time.monotonic()
    status, _, err = run_ember(tmp, "pci", sock, "server")
    took = time.monotonic() - start
    check(status == 2 and "no vhost-user back-end connected to %s within 10 s" % sock in err,
          "status %d: %s" % (status, err))
    check(9 <= took < 20, "ember gave up after %.1f s" % took)
    check(not os.path.exists(sock), "the socket file is gone")


def test_server_path_taken(tmp):
    """Server mode never removes what is not a stale socket: a file, or a socket someone listens on."""
    plain = os.path.join(tmp, "plain")
    open(plain, "w").close()
    status, _, err = run_ember(tmp, "pci", plain, "server")
    check(status == 2 and "exists and is not a socket" in err, "a file: status %d: %s" % (status, err))
    check(os.path.exists(plain), "the file is still there")
    live = os.path.join(tmp, "live.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(live)
    s.listen(1)
    try:
        status, _, err = run_ember(tmp, "pci", live, "server")
    finally:
        s.close()
    check(status == 2 and "another process listens on" in err, "a live socket: status %d: %s" % (status, err))
    check(os.path.exists(live), "the live socket is still there")


def test_cli_bad(tmp):
    """Bad --net vhost-user values: usage errors before anything starts."""
    sock = os.path.join(tmp, "x.sock")
    bad = [("vhost-user=%s,mode=both" % sock, "use client or server"),
           ("vhost-user=%s,tap=tap0" % sock, "does not apply to a vhost-user interface"),
           ("vhost-user=%s,rx-bw=1M" % sock, "does not apply to a vhost-user interface"),
           ("tx-pps=10,vhost-user=%s" % sock, "rate limits"),
           ("vhost-user=%s,vhost=on" % sock, "does not apply"),
           ("vhost-user=%s,queues=2" % sock, "one queue pair"),
           ("vhost-user=%s,reconnect=3601" % sock, "reconnect"),
           ("vhost-user=", "vhost-user= is empty"),
           ("tap=tap0,mode=server", "are for a vhost-user interface"),
           ("user,reconnect=3", "are for a vhost-user interface")]
    for spec, msg in bad:
        p = subprocess.run([EMBER, "run", "--kernel", GUEST, "--net", spec], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=PATIENCE_S)
        err = p.stderr.decode(errors="replace")
        check(p.returncode == 2 and msg in err, "--net %s: status %d: %s" % (spec, p.returncode, err))


def test_server_extra_connection(tmp):
    """Server mode: while testpmd is served, another connection is accepted and closed at once
    (one back-end at a time), with one log line; the guest's traffic is unharmed."""
    sock = os.path.join(tmp, "vun.sock")
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--debug-exit", "--net",
                              "vhost-user=%s,mode=server,mac=%s" % (sock, MAC), "--log-level", "info",
                              "--cmdline", "console=ttyS0 vun_mac=%s vun_resume=20" % MAC],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    t = None
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        t = Testpmd(tmp, sock, client=True)
        deadline = time.monotonic() + PATIENCE_S
        while b"# vun: streaming" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest did not start streaming: %s" % open(out_path, "rb").read().decode()[-2000:])
            time.sleep(0.05)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(sock)
        try:
            got = c.recv(16)
        except ConnectionResetError:
            got = b""
        c.close()
        check(got == b"", "the extra connection was closed (got %r)" % got)
        # The guest's resume check needs a loss: the back-end is restarted (as in
        # backend_restarted_server), which also shows the listener still serves.
        time.sleep(0.5)
        t.kill()
        t.stop()
        time.sleep(0.5)
        t = Testpmd(tmp, sock, client=True, name="testpmd2")
        status = p.wait(GUEST_S + 20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if t:
            t.stop()
    out, err = open(out_path).read(), open(err_path).read()
    check(status == 1, "exit status %d: %s" % (status, err[-2000:]))
    check_guest(out, "extra connection")
    refused = [line for line in err.splitlines() if "connection(s) to %s refused" % sock in line]
    check(len(refused) == 1 and "already" in refused[0], "one line says it was refused: %r" % err[-2000:])


def restart_run(tmp, mode, transport="pci"):
    """The guest streams frames; testpmd is killed (SIGKILL) a second in and started again 1 s
    later; ember reconnects (client) or accepts it again (server)."""
    sock = os.path.join(tmp, "vun.sock")
    server = mode == "server"
    t = None if server else Testpmd(tmp, sock)
    out_path, err_path = os.path.join(tmp, "ember.out"), os.path.join(tmp, "ember.err")
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = subprocess.Popen([EMBER, "run", "--kernel", GUEST, "--debug-exit", "--transport", transport,
                              "--net", "vhost-user=%s,mode=%s,mac=%s,reconnect=20" % (sock, mode, MAC),
                              "--log-level", "info",
                              "--cmdline", "console=ttyS0 vun_mac=%s vun_resume=40" % MAC],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        if server:
            deadline = time.monotonic() + 5
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.02)
            t = Testpmd(tmp, sock, client=True)
        deadline = time.monotonic() + PATIENCE_S
        while b"# vun: streaming" not in open(out_path, "rb").read():
            check(p.poll() is None and time.monotonic() < deadline,
                  "the guest did not start streaming: %s" % open(out_path, "rb").read().decode()[-2000:])
            time.sleep(0.05)
        time.sleep(1)
        t.kill()
        t.stop()
        check(p.poll() is None, "ember runs on without its back-end")
        time.sleep(1)
        check(p.poll() is None, "ember runs on without its back-end")
        t = Testpmd(tmp, sock, client=server, name="testpmd2")
        try:
            status = p.wait(GUEST_S + 40)
        except subprocess.TimeoutExpired:
            raise Failure("ember hangs after its back-end came back")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if t:
            t.stop()
    out, err = open(out_path).read(), open(err_path).read()
    check(status == 1, "exit status %d (the guest's debug-exit 0 is 1): %s" % (status, err[-2000:]))
    check_guest(out, "back-end restarted (%s)" % mode)
    lost = [line for line in err.splitlines() if "closed its socket; reconnecting" in line]
    back = [line for line in err.splitlines() if "is back after" in line and "device resumed" in line]
    check(len(lost) == 1 and len(back) == 1,
          "one line says the back-end went away, one that it is back: %r" % err[-2000:])
    m = re.search(r"# (\d+ frames echoed, \d+ lost over \d+ ms, then \d+ in a row)", out)
    print("     %s: %s; %s" % (mode, m.group(1) if m else "?", back[0].split("WARN: ")[-1]))


def test_backend_restarted_client(tmp):
    restart_run(tmp, "client")


def test_backend_restarted_server(tmp):
    restart_run(tmp, "server", "mmio")


def test_api(tmp):
    """PUT /network-interfaces with vhost_user_socket: bad bodies refused, GET /vm/config shows
    it, the guest runs; PATCH, snapshots and migration refused."""
    sock = os.path.join(tmp, "vun.sock")
    t = Testpmd(tmp, sock)
    e = None
    try:
        e = Ember(tmp, args=["--level", "Info"])
        plain = os.path.join(tmp, "plain")
        open(plain, "w").close()
        ok = {"iface_id": "eth0", "vhost_user_socket": sock, "guest_mac": MAC}
        limiter = {"bandwidth": {"size": 1000, "refill_time": 100}}
        bad = [
            (dict(ok, host_dev_name="tap0"), "exactly one"),
            ({"iface_id": "eth0"}, "exactly one"),
            (dict(ok, rx_rate_limiter=limiter), "rx_rate_limiter"),
            (dict(ok, tx_rate_limiter=limiter), "tx_rate_limiter"),
            (dict(ok, mtu=1500), "mtu"),
            (dict(ok, vhost_user_mode="both"), "vhost_user_mode"),
            (dict(ok, vhost_user_socket=plain), "not a socket"),
            (dict(ok, vhost_user_socket=os.path.join(tmp, "none")), "No such file"),
            (dict(ok, vhost_user_socket=plain, vhost_user_mode="server"), "not a socket"),
            (dict(ok, vhost_user_socket=""), "empty"),
            (dict(ok, vhost_user_socket=7), "vhost_user_socket"),
            (dict(ok, reconnect_s=3601), "reconnect_s"),
            ({"iface_id": "eth0", "host_dev_name": "tap0", "vhost_user_mode": "client"}, "vhost_user_mode"),
        ]
        for body, msg in bad:
            expect(e.req("PUT", "/network-interfaces/eth0", body), 400, "PUT /network-interfaces %r" % body, msg)
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": GUEST,
                                             "boot_args": "console=ttyS0 %s vun_mac=%s" % (SHORT_BURST, MAC)}), 204, "boot source")
        expect(e.req("PUT", "/network-interfaces/eth0", dict(ok, reconnect_s=3)), 204, "PUT with vhost_user_socket")
        expect(e.req("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "vhost_user_socket": sock}), 400,
               "a second interface on the same socket", "already used")
        net = e.req("GET", "/vm/config").json()["network-interfaces"]
        check(net == [{"iface_id": "eth0", "host_dev_name": None, "vhost_user_socket": sock,
                       "vhost_user_mode": "client", "reconnect_s": 3, "guest_mac": MAC, "mtu": None,
                       "rx_rate_limiter": None, "tx_rate_limiter": None}],
              "GET /vm/config shows the interface: %r" % net)
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        deadline = time.monotonic() + GUEST_S
        while len(tap_lines(e.stdout())) < NTAP and e.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        check_guest(e.stdout(), "API")
        expect(e.req("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "rx_rate_limiter": limiter}),
               400, "PATCH of a vhost-user interface", "vhost-user back-end")
        expect(e.req("PATCH", "/vm", {"state": "Paused"}), 204, "pause")
        expect(e.req("PUT", "/snapshot/create", {
            "snapshot_path": os.path.join(tmp, "s"), "mem_file_path": os.path.join(tmp, "m")}),
            400, "snapshot of a machine with a vhost-user interface", "vhost-user device (net0)")
        expect(e.req("PUT", "/migration/send", {"destination_url": "unix:" + os.path.join(tmp, "mig")}),
               400, "migration of a machine with a vhost-user interface", "cannot migrate yet")
    finally:
        if e:
            e.kill()
        t.stop()


def test_api_server(tmp):
    """PUT /network-interfaces in server mode: testpmd (client=1) started first keeps trying;
    InstanceStart makes the socket and waits for it; the guest runs; the socket file goes
    with ember."""
    sock = os.path.join(tmp, "vun.sock")
    t = Testpmd(tmp, sock, client=True)
    e = None
    try:
        e = Ember(tmp, args=["--level", "Info"])
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": GUEST,
                                             "boot_args": "console=ttyS0 %s vun_mac=%s" % (SHORT_BURST, MAC)}), 204, "boot source")
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "vhost_user_socket": sock,
                                                          "vhost_user_mode": "server", "guest_mac": MAC}),
               204, "PUT in server mode")
        check(not os.path.exists(sock), "no socket before InstanceStart")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        deadline = time.monotonic() + GUEST_S
        while len(tap_lines(e.stdout())) < NTAP and e.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        check_guest(e.stdout(), "API server mode")
        net = e.req("GET", "/vm/config").json()["network-interfaces"][0]
        check(net["vhost_user_mode"] == "server" and net["reconnect_s"] == 10, "GET /vm/config: %r" % net)
    finally:
        if e:
            e.kill()
        t.stop()


def test_config_file(tmp):
    """The configuration file's network-interfaces with vhost_user_socket, server mode."""
    sock = os.path.join(tmp, "vun.sock")
    cfg = os.path.join(tmp, "vm.json")
    with open(cfg, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": GUEST, "boot_args": "console=ttyS0 %s vun_mac=%s" % (SHORT_BURST, MAC)},
                   "network-interfaces": [{"iface_id": "eth0", "vhost_user_socket": sock,
                                           "vhost_user_mode": "server", "guest_mac": MAC}]}, f)
    out_path = os.path.join(tmp, "ember.out")
    with open(out_path, "wb") as out:
        p = subprocess.Popen([EMBER, "--no-api", "--config-file", cfg], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT)
    t = None
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        t = Testpmd(tmp, sock, client=True)
        # Without a debug-exit port the guest halts after its last check.
        deadline = time.monotonic() + GUEST_S
        while len(tap_lines(open(out_path).read())) < NTAP and p.poll() is None and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        p.wait()
        if t:
            t.stop()
    check_guest(open(out_path).read(), "configuration file")
    check(not os.path.exists(sock), "ember removed its socket file at exit")


TESTS = [test_cli_bad, test_no_backend_client, test_server_path_taken, test_cli_client_pci,
         test_cli_client_mmio, test_cli_server_pci, test_cli_server_mmio, test_qemu_reference,
         test_api, test_api_server, test_config_file, test_server_extra_connection, test_backend_restarted_client,
         test_backend_restarted_server, test_no_backend_server]


if __name__ == "__main__":
    sys.exit(run_suite("vhost-user-net", TESTS, (EMBER, GUEST)))
