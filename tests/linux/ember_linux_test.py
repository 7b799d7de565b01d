#!/usr/bin/env python3
"""Boot ember's test Linux guest under a VMM and check its devices.

The guest is the kernel of linux/build-kernel.sh with the initramfs of
linux/build-initramfs.sh; its /init runs the checks named by ember.checks=
and prints TAP lines on the serial console (see linux/initramfs/init). This
harness prepares what the checks need on the host (disk images, a network
namespace with a tap device and an HTTP server, the hvc0 console socket,
vsock listeners), starts the VMM, drives hvc0 and vsock, checks the disk
image afterwards, and prints one TAP stream with the guest's checks and its
own, ending with a line "N passed, N failed, N skipped".

Under ember, hvc0 is ember's standard input and output (--console virtio),
vsock is ember's unix-socket protocol (--vsock); under QEMU, hvc0 is a
socket chardev and vsock needs vhost-vsock. Run as root (netns, tap).
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ALL_CHECKS = ["smp", "blk", "ro", "rng", "console", "net", "net2", "vsock", "mmds", "pmem", "fs"]
# mmds needs its own run: ember serves it in its API mode (Firecracker's configuration file,
# vmm_ember_config), which carries the net check's interface and nothing else here.
# fs needs virtiofsd: run.sh runs it on its own (with smp) where virtiofsd is installed.
DEFAULT_CHECKS = [c for c in ALL_CHECKS if c not in ("mmds", "fs")]
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
FS_TAG = "ember-fs"
FS_FILES = 32
FS_KIB = 256
MMDS_CHECKS = {"smp", "net", "mmds"}

# Host-specific, see shared ENVIRONMENT.md: this host's KVM is nested and
# emulates guest kernel code. QEMU's leaf-1 CPUID masks do not take effect
# here, hence the clearcpuid= on the kernel command line (QEMU only: ember
# masks CPUID in its CPU template).
QEMU_CPU = "host,-arch-capabilities,-cx16,-kvm-pv-ipi,-kvm-pv-unhalt,-kvm-pv-sched-yield"
QEMU_CMDLINE_EXTRA = "clearcpuid=151,141,308,297,580 noxsave nopvspin"
BASE_CMDLINE = "console=ttyS0 panic=-1 noreplace-smp rodata=off reboot=k"

NETNS_HOST_IP = "172.30.0.1"
NETNS_GUEST_IP = "172.30.0.2"
SLIRP_HOST_IP = "10.0.2.2"
SLIRP_GUEST_IP = "10.0.2.15"
HTTP_PORT = 18080
HTTP_PORT_USER = 18081  # net2: user-mode networking, server on the loopback
FWD_HOST_PORT = 18082  # net2: the VMM forwards the host's port to the guest's
FWD_GUEST_PORT = 8080
# net2 reaches that server by name: the guest asks slirp's DNS (10.0.2.3), which forwards to
# the nameserver in the VMM's /etc/resolv.conf. The VMM runs in a mount namespace of its own
# where that file says 127.0.0.1, and there dns_responder.py answers for this name with the
# address slirp maps to the host's loopback (127.0.0.1 would be the guest's own).
NET2_NAME = "ember-host.test"
SLIRP_DNS_IP = "10.0.2.3"
VSOCK_GUEST_CID = 3
VSOCK_HOST_PORT = 5100  # the guest connects here
VSOCK_GUEST_PORT = 5200  # the host connects here

# ember's CPU template names the features this host's KVM would not hide
# (it passes the real CPUID through); the kernel is then told to leave them
# alone. On a host where CPUID masking works ember names none and nothing is
# added. Feature name in ember's warning -> kernel parameter.
EMBER_LEAK_PARAMS = {"POPCNT": "clearcpuid=popcnt", "SMAP": "clearcpuid=smap",
                     "ERMS": "clearcpuid=erms", "FSRM": "clearcpuid=fsrm",
                     "CX16": "clearcpuid=cx16", "XSAVE": "noxsave", "FSGSBASE": "nofsgsbase",
                     "PV_UNHALT": "nopvspin", "kvmclock": "no-kvmclock"}


def log(msg):
    print(f"# {msg}", flush=True)


def blk_data(seed, kib):
    """The file the guest writes on the rw disk (same rule as its /init)."""
    unit = f"ember blk data, seed {seed}\n".encode()
    n = kib * 1024
    return (unit * (n // len(unit) + 1))[:n]


def fs_data(seed, kib):
    """The large file the guest writes on the virtio-fs share (same rule as its /init)."""
    unit = f"ember fs data, seed {seed}\n".encode()
    n = kib * 1024
    return (unit * (n // len(unit) + 1))[:n]


def vsock_pattern(n, x):
    """Byte i is (i*7 + (i>>10)) & 0xff, xor x (as ember-vsock.c)."""
    return bytes(((i * 7 + (i >> 10)) & 0xFF) ^ x for i in range(n))


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


class Results:
    def __init__(self):
        self.lines = []

    def add(self, ok, name, reason="", skip=False):
        self.lines.append((ok, name, reason, skip))

    def print(self):
        print(f"1..{len(self.lines)}")
        passed = failed = skipped = 0
        for i, (ok, name, reason, skip) in enumerate(self.lines, 1):
            if skip:
                skipped += 1
                print(f"ok {i} - {name} # SKIP {reason}")
            elif ok:
                passed += 1
                print(f"ok {i} - {name}")
            else:
                failed += 1
                print(f"not ok {i} - {name}" + (f" # {reason}" if reason else ""))
        print(f"{passed} passed, {failed} failed, {skipped} skipped")
        return failed == 0


class Setup:
    """Everything on the host side of one run."""

    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.checks = args.checks
        self.tag = f"{os.getpid()}"
        self.netns = None
        self.httpds = []
        self.resolv = None  # the resolv.conf the VMM sees (net2 by name)
        self.dns_log = None
        self.vsock_uds = None
        self.vsock_listener = None
        self.vsock_result = {}
        self.hvc_result = {}
        self.fwd_result = {}
        self.cmdline = {}
        self.skips = {}  # check -> reason
        self.metadata = None  # mmds: the --metadata file
        self.pmem = {}  # pmem: files, tokens, the read-only file's sha256
        self.virtiofsd = None  # fs: the back-end, its socket and shared directory
        self.fs_sock = self.fs_dir = self.fs_seed = None
        self.qsd = None  # blk with --blk-backend vhost-user: qemu-storage-daemon
        self.blk_sock = None
        self.testpmd = None  # net with --net vhost-user: dpdk-testpmd (icmpecho) and its socket
        self.vun_sock = self.vun_prefix = None

    # --- disks -------------------------------------------------------------
    def make_disks(self):
        if "blk" in self.checks:
            self.rw_img = os.path.join(self.work, "rw.img")
            with open(self.rw_img, "wb") as f:
                f.truncate(64 << 20)
            run(["mkfs.ext4", "-q", "-F", "-L", "ember-rw", self.rw_img])
            self.blk_seed = f"s{self.tag}"
            self.cmdline.update({"blk": "ember-rw", "blk_seed": self.blk_seed,
                                 "blk_kib": str(self.args.blk_kib)})
            if getattr(self.args, "blk_backend", "file") == "vhost-user":
                self.start_storage_daemon()
        if "ro" in self.checks:
            rodir = os.path.join(self.work, "ro")
            os.mkdir(rodir)
            self.ro_token = f"ro-{self.tag}"
            with open(os.path.join(rodir, "token"), "w") as f:
                f.write(self.ro_token + "\n")
            self.ro_img = os.path.join(self.work, "ro.img")
            with open(self.ro_img, "wb") as f:
                f.truncate(8 << 20)
            run(["mkfs.ext4", "-q", "-F", "-L", "ember-ro", "-d", rodir, self.ro_img])
            self.cmdline.update({"ro": "ember-ro", "ro_token": self.ro_token})

    def start_storage_daemon(self):
        """qemu-storage-daemon serves rw.img as a vhost-user-blk back-end; the guest finds
        the disk by the serial it answers with (its own, fixed)."""
        self.blk_sock = os.path.join(self.work, "vhost-user-blk.sock")
        log_path = os.path.join(self.work, "qemu-storage-daemon.log")
        self.qsd = subprocess.Popen(
            ["qemu-storage-daemon", "--blockdev",
             f"driver=file,node-name=rw,filename={self.rw_img}",
             "--export", "type=vhost-user-blk,id=rw,node-name=rw,addr.type=unix,"
             f"addr.path={self.blk_sock},writable=on"],
            stdin=subprocess.DEVNULL, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not os.path.exists(self.blk_sock):
            if self.qsd.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"qemu-storage-daemon did not listen on {self.blk_sock} "
                                   f"(see {log_path})")
            time.sleep(0.02)
        self.cmdline["blk"] = "vhost_user_blk"

    def make_fs(self):
        """A directory shared by virtiofsd (vhost-user-fs back-end), with the token the guest
        reads; the guest writes guest-dir/ and guest-big.bin there."""
        if "fs" not in self.checks:
            return
        if not os.access(VIRTIOFSD, os.X_OK):
            self.skips["fs"] = f"{VIRTIOFSD} is not installed (Debian: qemu-system-common)"
            return
        self.fs_dir = os.path.join(self.work, "share")
        os.mkdir(self.fs_dir)
        token = f"fs-{self.tag}"
        with open(os.path.join(self.fs_dir, "host-token"), "w") as f:
            f.write(token + "\n")
        self.fs_sock = os.path.join(self.work, "virtiofsd.sock")
        log_path = os.path.join(self.work, "virtiofsd.log")
        self.virtiofsd = subprocess.Popen(
            [VIRTIOFSD, f"--socket-path={self.fs_sock}", "-o", f"source={self.fs_dir}",
             "-o", "cache=none"],
            stdin=subprocess.DEVNULL, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not os.path.exists(self.fs_sock):
            if self.virtiofsd.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"virtiofsd did not listen on {self.fs_sock} (see {log_path})")
            time.sleep(0.02)
        self.fs_seed = f"fs{self.tag}"
        self.cmdline.update({"fs": FS_TAG, "fs_token": token, "fs_seed": self.fs_seed,
                             "fs_files": str(FS_FILES), "fs_kib": str(FS_KIB)})
        if getattr(self.args, "fs_bench", None):
            self.cmdline["fs_bench"] = self.args.fs_bench

    def stop_storage_daemon(self):
        """Ends the daemon (it has flushed what the guest synced) before the image is read."""
        if self.qsd and self.qsd.poll() is None:
            self.qsd.terminate()
            try:
                self.qsd.wait(10)
            except subprocess.TimeoutExpired:
                self.qsd.kill()
                self.qsd.wait()

    # --- pmem --------------------------------------------------------------
    def make_pmem(self):
        """A read-write file of 4 MiB and a read-only one of 2 MiB + 100 bytes (not a whole
        number of 2 MiB: the VMM rounds the device up), each starting with a token line."""
        if "pmem" not in self.checks:
            return
        if self.args.vmm == "qemu" and self.args.transport == "mmio":
            self.skips["pmem"] = "QEMU's virtio-pmem is a PCI device only (virtio-pmem-pci)"
            return
        pm = self.pmem
        pm["token"] = f"ember-pmem-{self.tag}"
        pm["write"] = f"ember-pmem-write-{self.tag}"
        pm["ro_token"] = f"ember-pmem-ro-{self.tag}"
        pm["rw"] = os.path.join(self.work, "pmem-rw.img")
        pm["ro"] = os.path.join(self.work, "pmem-ro.img")
        for path, size, token in ((pm["rw"], 4 << 20, pm["token"]),
                                  (pm["ro"], (2 << 20) + 100, pm["ro_token"])):
            with open(path, "wb") as f:
                f.truncate(size)
                f.write(token.encode() + b"\n")
        with open(pm["ro"], "rb") as f:
            pm["ro_sha"] = hashlib.sha256(f.read()).hexdigest()
        self.cmdline.update({"pmem_token": pm["token"], "pmem_write": pm["write"],
                             "pmem_ro_token": pm["ro_token"]})

    # --- network -----------------------------------------------------------
    def make_vhost_user_net(self):
        """dpdk-testpmd with a vhost PMD port in icmpecho mode: it answers ARP for any address
        and ICMP echo; the guest's net check pings through it (no HTTP)."""
        testpmd = shutil.which("dpdk-testpmd")
        if not testpmd:
            self.skips["net"] = "dpdk-testpmd is not installed (Debian: dpdk-dev)"
            return
        self.vun_sock = os.path.join(self.work, "vhost-user-net.sock")
        self.vun_prefix = f"ember-lt-{self.tag}"
        log_path = os.path.join(self.work, "testpmd.log")
        # No huge pages, both lcores on CPU 0, no PCI scan, no telemetry socket.
        self.testpmd = subprocess.Popen(
            [testpmd, "--no-pci", "--no-huge", "-m", "256", "--no-shconf", "--no-telemetry",
             "--file-prefix", self.vun_prefix, "--lcores", "0@0,1@0",
             "--vdev", f"net_vhost0,iface={self.vun_sock}", "--", "--forward-mode=icmpecho",
             "--auto-start", "--nb-cores=1", "--total-num-mbufs=4096"],
            stdin=subprocess.PIPE, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(self.vun_sock):
            if self.testpmd.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"testpmd did not listen on {self.vun_sock} (see {log_path})")
            time.sleep(0.05)
        self.cmdline.update({"net_ip": f"{NETNS_GUEST_IP}/24", "net_host": NETNS_HOST_IP})

    def stop_testpmd(self):
        if self.testpmd:
            if self.testpmd.poll() is None:
                try:
                    self.testpmd.stdin.write(b"\n")
                    self.testpmd.stdin.flush()
                    self.testpmd.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    self.testpmd.kill()
                    self.testpmd.wait()
            shutil.rmtree(os.path.join("/var/run/dpdk", self.vun_prefix), ignore_errors=True)
            self.testpmd = None

    def make_net(self):
        if "net" in self.checks and self.args.net == "vhost-user":
            return self.make_vhost_user_net()
        if "net" not in self.checks and "net2" not in self.checks:
            return
        www = os.path.join(self.work, "www")
        os.mkdir(www)
        data = os.urandom(self.args.net_kib * 1024)
        with open(os.path.join(www, "ember-net.bin"), "wb") as f:
            f.write(data)
        sha = hashlib.sha256(data).hexdigest()
        prefix = []
        if "net" in self.checks and self.args.net == "tap":
            self.netns = f"ember-lt-{self.tag}"
            run(["ip", "netns", "add", self.netns])
            for c in (["link", "set", "lo", "up"],
                      ["tuntap", "add", "dev", "tap0", "mode", "tap"],
                      ["addr", "add", f"{NETNS_HOST_IP}/24", "dev", "tap0"],
                      ["link", "set", "tap0", "up"]):
                run(["ip", "-n", self.netns] + c)
            # The VMM runs in the namespace too: its user-mode networking
            # (net2) reaches the namespace's loopback.
            prefix = ["ip", "netns", "exec", self.netns]
        busybox = shutil.which("busybox") or "/bin/busybox"
        servers = []
        if "net" in self.checks:
            if self.args.net == "tap":
                host, guest, bind = NETNS_HOST_IP, NETNS_GUEST_IP, NETNS_HOST_IP
            else:
                host, guest, bind = SLIRP_HOST_IP, SLIRP_GUEST_IP, "127.0.0.1"
            servers.append(f"{bind}:{HTTP_PORT}")
            self.cmdline.update({"net_ip": f"{guest}/24", "net_host": host,
                                 "net_port": str(HTTP_PORT), "net_file": "ember-net.bin",
                                 "net_sha256": sha})
        if "net2" in self.checks:
            if self.args.net == "user":
                self.skips["net2"] = "--net user already puts user-mode networking on eth0"
            else:
                servers.append(f"127.0.0.1:{HTTP_PORT_USER}")
                self.cmdline.update({"net2_ip": f"{SLIRP_GUEST_IP}/24",
                                     "net2_host": SLIRP_HOST_IP,
                                     "net2_port": str(HTTP_PORT_USER),
                                     "net2_file": "ember-net.bin", "net2_sha256": sha,
                                     "net2_serve": str(FWD_GUEST_PORT),
                                     "net2_serve_token": f"fwd-guest-{self.tag}",
                                     "net2_host_token": f"fwd-host-{self.tag}"})
                self.make_dns(prefix)
        self.httpds += [subprocess.Popen(prefix + [busybox, "httpd", "-f", "-p", addr, "-h", www],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                       for addr in servers]

    def make_mmds(self):
        if "mmds" not in self.checks:
            return
        if self.args.vmm != "ember":
            self.skips["mmds"] = "MMDS is Firecracker's metadata service, which QEMU does not have"
            return
        want = f"ami-{self.tag}"
        self.metadata = os.path.join(self.work, "metadata.json")
        with open(self.metadata, "w") as f:
            json.dump({"latest": {"meta-data": {"ami-id": want, "hostname": "ember-guest"}}}, f)
        self.cmdline.update({"mmds_version": self.args.mmds_version, "mmds_want": want})

    def connect_forward(self):
        """net2: once the guest listens, connect to the port the VMM forwards (from the VMM's
        network namespace), send the host's token, read the guest's."""
        script = (
            "import socket, sys, time\n"
            "port, token = int(sys.argv[1]), sys.argv[2].encode() + b'\\n'\n"
            "deadline = time.time() + 60\n"
            "while True:\n"
            "    data = b''\n"
            "    try:\n"
            "        with socket.create_connection(('127.0.0.1', port), timeout=30) as s:\n"
            "            s.sendall(token)\n"
            "            s.shutdown(socket.SHUT_WR)\n"
            "            while True:\n"
            "                d = s.recv(4096)\n"
            "                if not d:\n"
            "                    break\n"
            "                data += d\n"
            "    except OSError as e:\n"
            "        print('error:', e, file=sys.stderr)\n"
            "    if data or time.time() > deadline:\n"
            "        break\n"
            "    time.sleep(0.3)  # the guest's nc is not listening yet: the forward closed\n"
            "sys.stdout.write(data.decode(errors='replace'))\n")
        cmd = [sys.executable, "-c", script, str(FWD_HOST_PORT), f"fwd-host-{self.tag}"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=90)
            self.fwd_result["got"] = p.stdout.strip()
            self.fwd_result["error"] = p.stderr.strip()[-300:]
        except subprocess.TimeoutExpired:
            self.fwd_result["error"] = "no answer in 90 s"

    def make_dns(self, prefix):
        """A nameserver for NET2_NAME on the namespace's loopback, and the resolv.conf that
        points the VMM's slirp at it."""
        if not prefix:
            return  # no namespace: port 53 of the host's own loopback is not ours to take
        if not os.path.exists("/etc/resolv.conf"):
            log("net2: no /etc/resolv.conf to bind over; the guest reaches the host by address")
            return
        self.resolv = os.path.join(self.work, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("nameserver 127.0.0.1\n")
        self.dns_log = os.path.join(self.work, "dns.log")
        here = os.path.dirname(os.path.abspath(__file__))
        with open(self.dns_log, "w") as log_file:
            self.httpds.append(subprocess.Popen(
                prefix + [sys.executable, os.path.join(here, "dns_responder.py"),
                          "--listen", "127.0.0.1", "--port", "53", "--name", NET2_NAME,
                          "--address", SLIRP_HOST_IP], stdout=log_file, stderr=log_file))
        deadline = time.time() + 10
        while time.time() < deadline:
            with open(self.dns_log) as f:
                if "dns: ready" in f.read():
                    break
            time.sleep(0.05)
        self.cmdline.update({"net2_name": NET2_NAME, "net2_dns": SLIRP_DNS_IP})

    def dns_answers(self):
        """The A queries for NET2_NAME the nameserver answered."""
        if not self.dns_log:
            return 0
        with open(self.dns_log) as f:
            return sum(1 for line in f
                       if line.startswith(f"dns: {NET2_NAME} 1 -> {SLIRP_HOST_IP}"))

    def wrap(self, cmd):
        """The VMM's command: in its own mount namespace with our resolv.conf (net2 by name),
        in the network namespace."""
        if self.resolv:
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.resolv] + cmd
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return cmd

    # --- vsock -------------------------------------------------------------
    def make_vsock(self):
        if "vsock" not in self.checks:
            return
        reason = self.vsock_unsupported()
        if reason:
            self.skips["vsock"] = reason
            return
        self.cmdline.update({"vsock_port": str(VSOCK_HOST_PORT),
                             "vsock_listen": str(VSOCK_GUEST_PORT),
                             "vsock_bytes": str(self.args.vsock_bytes),
                             "vsock_conns": str(self.args.vsock_conns)})
        if self.args.vmm == "ember":
            # Guest connections to host port P arrive at <uds>_P.
            self.vsock_uds = os.path.join(self.work, "v.sock")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(f"{self.vsock_uds}_{VSOCK_HOST_PORT}")
        else:
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            s.bind((socket.VMADDR_CID_ANY, VSOCK_HOST_PORT))
        s.listen(self.args.vsock_conns)
        self.vsock_listener = s
        threading.Thread(target=self.vsock_host, daemon=True).start()

    def vsock_unsupported(self):
        if self.args.vmm == "qemu" and not os.path.exists("/dev/vhost-vsock"):
            return "QEMU needs vhost-vsock and /dev/vhost-vsock does not exist on this host"
        return None

    def vsock_connect_guest(self, deadline):
        """A connection to the guest's listening port; retried until the
        guest listens. ember: its unix socket and CONNECT/OK handshake."""
        while True:
            try:
                if self.args.vmm == "ember":
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.settimeout(30)
                    c.connect(self.vsock_uds)
                    c.sendall(f"CONNECT {VSOCK_GUEST_PORT}\n".encode())
                    line = b""
                    while not line.endswith(b"\n"):
                        d = c.recv(1)  # a byte at a time: the stream follows
                        if not d:
                            raise OSError("closed before OK (guest not listening yet)")
                        line += d
                    if not re.fullmatch(rb"OK \d+\n", line):
                        raise OSError(f"ember answered {line!r}")
                else:
                    c = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                    c.connect((VSOCK_GUEST_CID, VSOCK_GUEST_PORT))
                c.settimeout(self.args.timeout)
                return c
            except OSError:
                c.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def vsock_host(self):
        """Serves the guest's connections (guest->host), then opens the same
        number to the guest (host->guest), all streams side by side."""
        n, k = self.args.vsock_bytes, self.args.vsock_conns
        res = self.vsock_result
        ok = {}

        def serve(c, i):
            try:
                with c:
                    c.settimeout(self.args.timeout)
                    got = recv_to_eof(c)
                    ok[("g", i)] = got == vsock_pattern(n, 0)
                    c.sendall(vsock_pattern(n, 0xFF))
            except OSError as e:
                ok[("g", i)] = False
                res["error"] = f"guest->host {i}: {e}"

        def client(i, deadline):
            try:
                with self.vsock_connect_guest(deadline) as c:
                    c.sendall(vsock_pattern(n, 0))
                    c.shutdown(socket.SHUT_WR)
                    ok[("h", i)] = recv_to_eof(c) == vsock_pattern(n, 0xFF)
            except OSError as e:
                ok[("h", i)] = False
                res["error"] = f"host->guest {i}: {e}"

        try:
            self.vsock_listener.settimeout(self.args.timeout)
            ts = []
            for i in range(k):
                c, _ = self.vsock_listener.accept()
                ts.append(threading.Thread(target=serve, args=(c, i)))
                ts[-1].start()
            for t in ts:
                t.join()
            res["guest->host"] = all(ok.get(("g", i)) for i in range(k))
            deadline = time.time() + 60
            ts = [threading.Thread(target=client, args=(i, deadline)) for i in range(k)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            res["host->guest"] = all(ok.get(("h", i)) for i in range(k))
        except OSError as e:
            res["error"] = str(e)

    # --- console -----------------------------------------------------------
    def make_console(self):
        if "console" not in self.checks:
            return
        self.hvc_sock = os.path.join(self.work, "hvc0.sock")
        self.hvc_token = f"hvc-{self.tag}"
        self.cmdline["hvc_token"] = self.hvc_token

    def hvc_command(self):
        tok = self.hvc_token
        return f"echo ember-hvc-reply $((6*7)) {tok}; echo {tok} >/tmp/hvc.fifo; exit\n"

    def hvc_want(self):
        return f"ember-hvc-reply 42 {self.hvc_token}"

    def console_line(self, line, stdin):
        """ember: hvc0 output arrives among the serial lines on ember's
        stdout, and its input is ember's stdin."""
        res = self.hvc_result
        if "ready" not in res and "ember-hvc-ready" in line:
            res["ready"] = time.time()
            try:
                stdin.write(self.hvc_command().encode())
                stdin.flush()
            except OSError as e:
                res["error"] = f"writing to ember's stdin: {e}"
        elif "ready" in res and "reply" not in res and self.hvc_want() in line:
            res["reply"] = True
            res["time"] = time.time() - res["ready"]

    def drive_console(self):
        """Connect to the VMM's hvc0 socket, wait for the guest's shell, send
        a command, wait for its answer."""
        res = self.hvc_result
        t0 = time.time()
        s = None
        try:
            while s is None:
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(self.hvc_sock)
                except OSError:
                    s.close()
                    s = None
                    if time.time() - t0 > 30:
                        raise
                    time.sleep(0.1)
            s.settimeout(self.args.timeout)
            buf = b""
            while b"ember-hvc-ready" not in buf:
                d = s.recv(4096)
                if not d:
                    raise OSError("hvc0 closed before the shell said ember-hvc-ready")
                buf += d
            res["ready"] = time.time()
            s.sendall(self.hvc_command().encode())
            want = self.hvc_want().encode()
            buf = b""
            while want not in buf:
                d = s.recv(4096)
                if not d:
                    break
                buf += d
            res["reply"] = want in buf
            res["time"] = time.time() - res["ready"]
            res["raw"] = buf[-200:].decode(errors="replace")
        except OSError as e:
            res["error"] = str(e)
        finally:
            if s:
                s.close()

    def cleanup(self):
        self.stop_storage_daemon()
        self.stop_testpmd()
        if self.virtiofsd and self.virtiofsd.poll() is None:
            self.virtiofsd.kill()
            self.virtiofsd.wait()
        for h in self.httpds:
            h.kill()
            h.wait()
        if self.vsock_listener:
            self.vsock_listener.close()
        if self.netns:
            run(["ip", "netns", "del", self.netns], check=False)


def recv_to_eof(s):
    chunks = []
    while True:
        d = s.recv(65536)
        if not d:
            return b"".join(chunks)
        chunks.append(d)


# --- VMM command lines -------------------------------------------------------
def vmm_qemu(a, st, cmdline):
    """QEMU reference command line. mmio: microvm (virtio-mmio devices are
    announced on the kernel command line). pci: q35 without ACPI (the kernel
    has no ACPI; microvm's PCIe host is only described by ACPI). Under q35
    SeaBIOS runs first (emulated real mode: ~6 s here) and its MP table lists
    only the boot CPU on this host, so pci runs see 1 CPU."""
    if a.transport == "mmio":
        machine = ["-M", "microvm,x-option-roms=off,rtc=off,acpi=off",
                   "-global", "virtio-mmio.force-legacy=false"]
        dev = lambda name: f"virtio-{name}-device"  # noqa: E731
        serial_dev = "virtio-serial-device"
    else:
        machine = ["-M", "q35,acpi=off", "-global", "virtio-pci.disable-legacy=on"]
        dev = lambda name: f"virtio-{name}-pci"  # noqa: E731
        serial_dev = "virtio-serial-pci"
    cmd = ["qemu-system-x86_64"] + machine + [
        "-enable-kvm", "-cpu", QEMU_CPU, "-smp", str(a.cpus), "-m", f"{a.mem}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
        "-name", "ember-linux-test,debug-threads=on",  # vCPU threads named "CPU N/KVM"
        "-no-reboot", "-device", "i8042",
        "-kernel", a.kernel, "-initrd", a.initrd,
        "-append", f"{cmdline} {QEMU_CMDLINE_EXTRA}"]
    if st.blk_sock or st.fs_sock or st.vun_sock:  # vhost-user back-ends map guest RAM: shared
        cmd += ["-object", f"memory-backend-memfd,id=ram,size={a.mem}M,share=on",
                "-machine", "memory-backend=ram"]
    if st.fs_sock:
        if a.transport == "pci":
            # vhost-user-fs-pci is modern only: it has no disable-legacy for the global to set.
            i = cmd.index("virtio-pci.disable-legacy=on")
            del cmd[i - 1:i + 1]
        cmd += ["-chardev", f"socket,id=vfs,path={st.fs_sock}",
                "-device", f"vhost-user-fs-{'device' if a.transport == 'mmio' else 'pci'},"
                f"chardev=vfs,tag={FS_TAG}"]
    if "blk" in st.checks and st.blk_sock:
        vhost_dev = "vhost-user-blk" if a.transport == "mmio" else "vhost-user-blk-pci"
        cmd += ["-chardev", f"socket,id=vub,path={st.blk_sock}",
                "-device", f"{vhost_dev},chardev=vub"]
    elif "blk" in st.checks:
        cmd += ["-drive", f"file={st.rw_img},if=none,id=rw,format=raw,cache=unsafe",
                "-device", f"{dev('blk')},drive=rw,serial=ember-rw"]
    if "ro" in st.checks:
        cmd += ["-drive", f"file={st.ro_img},if=none,id=ro,format=raw,readonly=on",
                "-device", f"{dev('blk')},drive=ro,serial=ember-ro"]
    if "rng" in st.checks:
        cmd += ["-device", dev("rng")]
    if "console" in st.checks:
        cmd += ["-chardev", f"socket,id=hvc0,path={st.hvc_sock},server=on,wait=off",
                "-device", f"{serial_dev},max_ports=1", "-device", "virtconsole,chardev=hvc0"]
    if "net" in st.checks and st.vun_sock:
        cmd += ["-chardev", f"socket,id=vun,path={st.vun_sock}",
                "-netdev", "vhost-user,id=n0,chardev=vun", "-device", f"{dev('net')},netdev=n0"]
    elif "net" in st.checks and "net" not in st.skips:
        if a.net == "tap":
            cmd += ["-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no"]
        else:
            cmd += ["-netdev", "user,id=n0"]
        cmd += ["-device", f"{dev('net')},netdev=n0"]
    if "net2" in st.checks and "net2" not in st.skips:
        cmd += ["-netdev", f"user,id=n1,hostfwd=tcp::{FWD_HOST_PORT}-:{FWD_GUEST_PORT}",
                "-device", f"{dev('net')},netdev=n1"]
    if "vsock" in st.checks and "vsock" not in st.skips:
        cmd += ["-device", f"vhost-vsock-{'device' if a.transport == 'mmio' else 'pci'},"
                f"guest-cid={VSOCK_GUEST_CID}"]
    if "pmem" in st.checks and "pmem" not in st.skips:
        # virtio-pmem is a memory device: RAM gets hotplug slots and room above it. QEMU
        # takes a page-aligned size, so the read-only device is the file's first 2 MiB.
        cmd[cmd.index("-m") + 1] += ",slots=2,maxmem=1G"
        cmd += ["-object", f"memory-backend-file,id=pm0,share=on,mem-path={st.pmem['rw']},size=4M",
                "-device", "virtio-pmem-pci,memdev=pm0,id=vpm0",
                "-object", f"memory-backend-file,id=pm1,share=on,readonly=on,"
                f"mem-path={st.pmem['ro']},size=2M",
                "-device", "virtio-pmem-pci,memdev=pm1,id=vpm1"]
    return st.wrap(cmd)


def ember_host_workaround(a):
    """Kernel parameters for what ember's --cpu-template baseline could not
    hide on this host. ember names those features in a warning as soon as
    its vCPUs exist; a short probe run (killed right after) reads it. Prints
    what it adds and why; adds nothing where the host honours CPUID masks."""
    probe = subprocess.Popen([a.ember, "run", "--kernel", a.kernel, "--memory", "32",
                              "--cpu-template", "baseline", "--cmdline", "console=ttyS0"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    names = []
    # The warning comes within milliseconds (vCPUs are made before the guest
    # runs); where it never comes, a few seconds is proof enough.
    timer = threading.Timer(5, probe.kill)
    timer.start()
    try:
        for line in probe.stderr:
            m = re.search(r"keeps these features visible despite --cpu-template baseline: "
                          r"(.*?) \(", line)
            if m:
                names = m.group(1).split()
                break
    finally:
        timer.cancel()
        probe.kill()
        probe.wait()
    params = []
    clear = []
    other = []
    for name in names:
        p = EMBER_LEAK_PARAMS.get(name)
        if p and p.startswith("clearcpuid="):
            clear.append(p.split("=", 1)[1])
        elif p and p not in params:
            params.append(p)
        elif not p:
            other.append(name)
    if clear:
        params.append("clearcpuid=" + ",".join(clear))
    if names:
        log(f"ember: this host's KVM kept {' '.join(names)} visible despite --cpu-template "
            f"baseline (it passes the real CPUID through); host workaround, adding "
            f"'{' '.join(params)}' to the guest's command line"
            + (f" ({', '.join(other)}: nothing needed, the AVX family goes with XSAVE and "
               f"the kernel does not depend on the rest)" if other else ""))
    else:
        log("ember: --cpu-template baseline hid everything; no CPUID workaround needed")
    return " ".join(params)


def vmm_ember(a, st, cmdline):
    """ember: every device of the checks, on the chosen transport; hvc0 is
    ember's stdin/stdout (serial output still shown there)."""
    extra = ember_host_workaround(a)
    # info: ember's closing vsock counters are checked (see run_vm).
    cmd = [a.ember, "run", "--log-level", "info", "--kernel", a.kernel, "--initrd", a.initrd,
           "--memory", str(a.mem), "--cpus", str(a.cpus), "--cpu-template", "baseline",
           "--transport", a.transport, "--cmdline", f"{cmdline} {extra}".strip()]
    if st.fs_sock:
        cmd += ["--fs", f"tag={FS_TAG},socket={st.fs_sock}"]
    if "blk" in st.checks and st.blk_sock:
        cmd += ["--drive", f"socket={st.blk_sock},id=ember-rw"]
    elif "blk" in st.checks:
        cmd += ["--drive", f"path={st.rw_img},id=ember-rw"]
    if "ro" in st.checks:
        cmd += ["--drive", f"path={st.ro_img},id=ember-ro,readonly=on"]
    if "rng" in st.checks:
        cmd += ["--rng"]
    if "console" in st.checks:
        cmd += ["--console", "virtio"]
    if "net" in st.checks and st.vun_sock:
        cmd += ["--net", f"vhost-user={st.vun_sock}"]
    elif "net" in st.checks and "net" not in st.skips:
        cmd += ["--net", "tap=tap0" if a.net == "tap" else "user"]
    if "net2" in st.checks and "net2" not in st.skips:
        cmd += ["--net", f"user,hostfwd=tcp:{FWD_HOST_PORT}:{FWD_GUEST_PORT}"]
    if "vsock" in st.checks and "vsock" not in st.skips:
        cmd += ["--vsock", f"cid={VSOCK_GUEST_CID},uds={st.vsock_uds}"]
    if "pmem" in st.checks:
        cmd += ["--pmem", f"path={st.pmem['rw']},id=pmem_rw",
                "--pmem", f"path={st.pmem['ro']},id=pmem_ro,readonly=on"]
    return st.wrap(cmd)


def vmm_ember_config(a, st, cmdline):
    """ember in Firecracker's API mode, from a configuration file (as Firecracker's clients
    start it): the net check's tap as eth0, with MMDS on it, and the metadata from
    --metadata."""
    extra = ember_host_workaround(a)
    doc = {
        "boot-source": {"kernel_image_path": a.kernel, "initrd_path": a.initrd,
                        "boot_args": f"{cmdline} {extra}".strip()},
        "machine-config": {"vcpu_count": a.cpus, "mem_size_mib": a.mem, "cpu_template": "baseline"},
        "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
        "mmds-config": {"version": a.mmds_version, "network_interfaces": ["eth0"]},
    }
    path = os.path.join(st.work, "vm-config.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    cmd = [a.ember, "--no-api", "--config-file", path, "--metadata", st.metadata, "--level", "Info"]
    if a.transport == "pci":
        cmd.append("--enable-pci")
    return st.wrap(cmd)


# --- the run -----------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vmm", choices=["qemu", "ember"], default="qemu")
    p.add_argument("--transport", choices=["mmio", "pci"], default="mmio")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--checks", default=",".join(DEFAULT_CHECKS),
                   help="comma-separated, from: " + ",".join(ALL_CHECKS) +
                   " (mmds runs only with smp and net: ember serves it in its API mode)")
    p.add_argument("--mmds-version", choices=["V1", "V2"], default="V2",
                   help="mmds: the version ember serves")
    p.add_argument("--cpus", type=int, default=None,
                   help="vCPUs (default 2; QEMU over pci 1: see vmm_qemu)")
    p.add_argument("--mem", type=int, default=128, help="guest RAM in MiB")
    p.add_argument("--net", choices=["tap", "user", "vhost-user"], default="tap",
                   help="tap: tap0 in a new network namespace (root); user: the VMM's slirp; "
                   "vhost-user: dpdk-testpmd answering ARP and ping (icmpecho) through the "
                   "VMM's vhost-user net front-end (ping only)")
    p.add_argument("--blk-kib", type=int, default=64)
    p.add_argument("--fs-bench", metavar="FILES,KIB",
                   help="fs: also time FILES creates and a KIB KiB write and read in the share "
                        "(bench/virtiofs.sh reads the guest's '# fsbench:' line)")
    p.add_argument("--vmm-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the VMM only (bench/virtiofs.sh: LD_PRELOAD "
                        "of bench/kvmstat-preload.so); repeatable")
    p.add_argument("--blk-backend", choices=["file", "vhost-user"], default="file",
                   help="the rw disk: the image file, or qemu-storage-daemon serving it as a "
                        "vhost-user-blk back-end (guest RAM then shared)")
    p.add_argument("--net-kib", type=int, default=64)
    p.add_argument("--vsock-bytes", type=int, default=300000,
                   help="bytes each way per vsock stream (default: more than the 256 KiB "
                   "windows of both sides, so that credit updates must flow)")
    p.add_argument("--vsock-conns", type=int, default=3, help="vsock connections each way")
    p.add_argument("--ember", default=None, help="ember binary (default build/ember)")
    p.add_argument("--timeout", type=int, default=240, help="seconds for the whole VM run")
    p.add_argument("--work", help="keep images and logs in this directory")
    a = p.parse_args()
    a.checks = [c for c in a.checks.split(",") if c]
    for c in a.checks:
        if c not in ALL_CHECKS:
            p.error(f"unknown check {c}")
    if "mmds" in a.checks and (not set(a.checks) <= MMDS_CHECKS or "net" not in a.checks or
                               a.net != "tap"):
        p.error("mmds goes with net on a tap (its interface), and smp at most")
    if a.cpus is None:
        a.cpus = 1 if a.vmm == "qemu" and a.transport == "pci" else 2
    if a.ember is None:
        a.ember = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build",
                               "ember")
    a.ember = os.path.abspath(a.ember)

    a.kernel = os.path.abspath(a.kernel)
    a.initrd = os.path.abspath(a.initrd)
    if a.work:
        work = os.path.abspath(a.work)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    else:
        work = tempfile.mkdtemp(prefix="ember-linux-test-")
    st = Setup(a, work)
    res = Results()
    try:
        ok = run_vm(a, st, res, work)
    finally:
        st.cleanup()
    ok = res.print() and ok
    if not a.work:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work dir kept for a look (serial.log, images): {work}")
    sys.exit(0 if ok else 1)


def run_vm(a, st, res, work):
    st.make_disks()
    st.make_net()
    st.make_vsock()
    st.make_console()
    st.make_mmds()
    st.make_pmem()
    st.make_fs()
    guest_checks = [c for c in a.checks if c not in st.skips]
    st.cmdline.update({"checks": ",".join(guest_checks), "expect_cpus": str(a.cpus)})
    cmdline = BASE_CMDLINE + "".join(f" ember.{k}={v}" for k, v in st.cmdline.items())
    if a.vmm == "qemu":
        cmd = vmm_qemu(a, st, cmdline)
    elif "mmds" in guest_checks:
        cmd = vmm_ember_config(a, st, cmdline)
    else:
        cmd = vmm_ember(a, st, cmdline)
    log(f"work dir: {work}")
    log("vmm: " + " ".join(cmd))

    serial_log = open(os.path.join(work, "serial.log"), "w")
    t0 = time.time()
    hvc_stdin = a.vmm == "ember" and "console" in guest_checks
    vmm_env = dict(os.environ)
    for kv in a.vmm_env:
        name, _, value = kv.partition("=")
        vmm_env[name] = value
    vm = subprocess.Popen(cmd, stdin=subprocess.PIPE if hvc_stdin else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=vmm_env)
    # For benchmarks that read the VMM's counters while it runs (bench/virtiofs.sh).
    with open(os.path.join(work, "vmm.pid"), "w") as f:
        f.write(f"{vm.pid}\n")
    marks = {}
    guest = {}  # TAP number -> (ok, text)
    plan = None
    hvc_thread = None
    killed = []

    def watchdog():
        if vm.poll() is None:
            killed.append(True)
            # SIGTERM first: ember's exit lines say what its devices were left waiting for.
            vm.terminate()
            try:
                vm.wait(5)
            except subprocess.TimeoutExpired:
                vm.kill()

    timer = threading.Timer(a.timeout, watchdog)
    timer.start()
    if "console" in guest_checks and not hvc_stdin:
        hvc_thread = threading.Thread(target=st.drive_console, daemon=True)
        hvc_thread.start()
    fwd_thread = None
    tap_re = re.compile(r"^(not )?ok (\d+) - (.*)$")
    vsock_counters = None
    pmem_counters = {}  # ember's closing line per device: requests, msyncs, ..., read-only drops
    for raw in vm.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        t = time.time() - t0
        serial_log.write(f"{t:7.2f} {line}\n")
        serial_log.flush()
        if hvc_stdin:
            st.console_line(line, vm.stdin)
        if fwd_thread is None and "ember-init: net2 listening on port" in line:
            fwd_thread = threading.Thread(target=st.connect_forward, daemon=True)
            fwd_thread.start()
        for key, pat in (("banner", "Linux version"), ("init", "Run /init as init process"),
                         ("start", "ember-init: start"), ("done", "ember-init: done")):
            if key not in marks and pat in line:
                marks[key] = t
        m = tap_re.match(line)
        if m:
            guest[int(m.group(2))] = (m.group(1) is None, m.group(3), t)
            print(f"# {t:6.1f}s guest: {line}", flush=True)
        elif line.startswith("1..") and plan is None:
            plan = int(line[3:])
        elif line.startswith("# ") and not line.startswith("# console: shell"):
            print(f"# {t:6.1f}s guest {line}", flush=True)
        m = re.search(r"vsock: .*refused packets (\d+), credit violations (\d+), "
                      r"packets for unknown connections (\d+), RSTs dropped (\d+)", line)
        if m:
            vsock_counters = [int(x) for x in m.groups()]
            print(f"# {t:6.1f}s ember: {line[line.index('vsock: '):]}", flush=True)
        m = re.search(r"(pmem\d+): (\d+) requests answered with (\d+) msyncs \((\d+) failed\), "
                      r"(\d+) bad requests, (\d+) writes to read-only memory dropped", line)
        if m:
            pmem_counters[m.group(1)] = [int(x) for x in m.groups()[1:]]
            print(f"# {t:6.1f}s ember: {line[line.index(m.group(1) + ': '):]}", flush=True)
        if re.search(r"Kernel panic|KVM internal error|emulation failure", line):
            print(f"# {t:6.1f}s serial: {line}", flush=True)
    rc = vm.wait()
    timer.cancel()
    if vm.stdin:
        vm.stdin.close()
    total = time.time() - t0
    serial_log.close()
    if hvc_thread:
        hvc_thread.join(5)
    if fwd_thread:
        fwd_thread.join(5)

    # Guest checks, in the order they ran.
    for i, c in enumerate(guest_checks, 1):
        if i in guest:
            ok, text, t = guest[i]
            name, _, reason = text.partition(" # ")
            res.add(ok, f"{a.vmm}/{a.transport}: guest {name} (at {t:.1f} s)", reason)
        else:
            res.add(False, f"{a.vmm}/{a.transport}: guest {c}", "no TAP line from the guest")
    for c, reason in st.skips.items():
        res.add(True, f"{a.vmm}/{a.transport}: {c}", reason, skip=True)

    # Host-side checks.
    pre = f"{a.vmm}/{a.transport}: host"
    if "blk" in guest_checks:
        st.stop_storage_daemon()
        check_blk_image(st, res, pre, a)
    if "net2" in guest_checks and st.dns_log:
        n = st.dns_answers()
        res.add(n > 0, f"{pre} its nameserver answered the guest's A queries for {NET2_NAME} "
                f"({n}), which slirp forwarded from {SLIRP_DNS_IP}",
                "no query arrived: see dns.log in the work directory")
    if "net2" in guest_checks and "net2_serve" in st.cmdline:
        f = st.fwd_result
        want = st.cmdline["net2_serve_token"]
        res.add(f.get("got") == want,
                f"{pre} connected to the VMM's forwarded port {FWD_HOST_PORT} and read the "
                f"guest's token from port {FWD_GUEST_PORT}",
                f"read {f.get('got')!r}, expected {want!r} {f.get('error', '')}")
    if "console" in guest_checks:
        h = st.hvc_result
        if h.get("reply"):
            res.add(True, f"{pre} read the hvc0 shell's answer ({h['time']:.2f} s after ready)")
        else:
            why = h.get("error")
            if not why and "ready" not in h:
                why = "the guest's ember-hvc-ready never reached the host"
            elif not why:
                why = (f"command sent {h['ready'] - t0:.1f} s after the VMM started, "
                       f"no 'ember-hvc-reply 42' in {h.get('raw', '')!r}")
            res.add(False, f"{pre} hvc0 answer", why)
    if "vsock" in guest_checks:
        v = st.vsock_result
        ok = v.get("guest->host") and v.get("host->guest")
        res.add(bool(ok), f"{pre} vsock: {a.vsock_conns} streams each way matched "
                f"({a.vsock_bytes} bytes each)", v.get("error", repr(v)))
        if a.vmm == "ember":
            res.add(vsock_counters == [0, 0, 0, 0],
                    f"{pre} ember's vsock refused no packet of the guest's and dropped no RST",
                    "no counters from ember" if vsock_counters is None else
                    "refused %d, credit violations %d, unknown connections %d, RSTs dropped %d"
                    % tuple(vsock_counters))
    if "fs" in guest_checks:
        check_fs_share(st, res, pre)
    if "pmem" in guest_checks:
        check_pmem_files(st, res, pre)
        if a.vmm == "ember":
            rw, ro = pmem_counters.get("pmem0"), pmem_counters.get("pmem1")
            res.add(bool(rw and rw[0] >= 1 and rw[1] >= 1 and rw[2] == 0 and rw[3] == 0),
                    f"{pre} ember answered the guest's FLUSH requests on the read-write pmem "
                    f"with msync, none failed or bad", f"counters {pmem_counters!r}")
            res.add(bool(ro and ro[4] >= 1 and ro[3] == 0),
                    f"{pre} ember dropped the guest's writes to the read-only pmem",
                    f"counters {pmem_counters!r}")
    if "done" in marks and rc == 0 and not killed:
        res.add(True, f"{pre} reboot -f ended the VMM with status 0 "
                f"({total - marks['done']:.2f} s after the last check)")
    else:
        why = "killed after --timeout" if killed else f"exit status {rc}"
        res.add(False, f"{pre} reboot -f ends the VMM with status 0",
                why + ("" if "done" in marks else ", /init never finished"))
    if plan is not None and plan != len(guest_checks):
        res.add(False, f"{pre} guest plan", f"guest planned {plan}, expected {len(guest_checks)}")

    timings = ", ".join(f"{k} {v:.1f} s" for k, v in marks.items())
    log(f"timings from VMM start: {timings}, exit {total:.1f} s")
    return True


def check_pmem_files(st, res, pre):
    pm = st.pmem
    with open(pm["rw"], "rb") as f:
        head = f.read(4096 + 256)
    want = pm["write"].encode() + b"\n"
    res.add(head.startswith(pm["token"].encode() + b"\n") and head[4096:4096 + len(want)] == want,
            f"{pre} the read-write pmem file holds the guest's write at offset 4096",
            f"read {head[4096:4096 + len(want) + 8]!r}, expected {want!r}")
    with open(pm["ro"], "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    res.add(sha == pm["ro_sha"], f"{pre} the read-only pmem file is unchanged",
            f"sha256 {sha}, was {pm['ro_sha']}")


def check_fs_share(st, res, pre):
    """What the guest wrote to the virtio-fs share, as the host sees it."""
    d = os.path.join(st.fs_dir, "guest-dir")
    bad = []
    for n in range(FS_FILES):
        try:
            with open(os.path.join(d, f"f{n}")) as f:
                got = f.read()
        except OSError as e:
            got = str(e)
        if got != f"ember fs file {n} seed {st.fs_seed}\n":
            bad.append(f"f{n}: {got[:60]!r}")
    res.add(os.path.isdir(d) and not bad,
            f"{pre} the share has the guest's directory and its {FS_FILES} files",
            "; ".join(bad[:3]) or "no guest-dir")
    want = hashlib.sha256(fs_data(st.fs_seed, FS_KIB)).hexdigest()
    try:
        with open(os.path.join(st.fs_dir, "guest-big.bin"), "rb") as f:
            got = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        got = str(e)
    res.add(got == want, f"{pre} the share's guest-big.bin has the guest's {FS_KIB} KiB",
            f"sha256 {got[:16]}, expected {want[:16]}")


def check_blk_image(st, res, pre, a):
    want = hashlib.sha256(blk_data(st.blk_seed, a.blk_kib)).hexdigest()
    r = subprocess.run(["debugfs", "-R", "cat /ember-data.bin", st.rw_img],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    got = hashlib.sha256(r.stdout).hexdigest()
    res.add(got == want, f"{pre} ember-data.bin in the image has the guest's data",
            f"sha256 {got} in the image, expected {want}")
    r = subprocess.run(["debugfs", "-R", "cat /ember-hello.txt", st.rw_img],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    hello = r.stdout.decode(errors="replace").strip()
    res.add(hello == f"ember {st.blk_seed}", f"{pre} ember-hello.txt in the image",
            f"read {hello!r}")
    r = run(["e2fsck", "-fn", st.rw_img], check=False)
    res.add(r.returncode == 0, f"{pre} e2fsck -fn finds the image clean",
            r.stdout.strip().splitlines()[-1] if r.stdout.strip() else f"status {r.returncode}")


if __name__ == "__main__":
    main()
