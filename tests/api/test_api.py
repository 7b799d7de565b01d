#!/usr/bin/env python3
"""End-to-end tests of ember's API (Firecracker's routes) over its unix socket.

Standard library only. Usage: tests/api/test_api.py [-v] [NAME...]
Environment: EMBER (default build/ember), GUEST_DIR (default build/guest).
Prints one line per check and ends with "api: N passed, N failed, N skipped".
"""

import glob
import json
import re
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBER = os.environ.get("EMBER", os.path.join(ROOT, "build", "ember"))
GUEST_DIR = os.environ.get("GUEST_DIR", os.path.join(ROOT, "build", "guest"))
HELLO = os.path.join(GUEST_DIR, "hello.elf")
KEYBOARD = os.path.join(GUEST_DIR, "keyboard.elf")
CPUID_GUEST = os.path.join(GUEST_DIR, "cpuid.elf")
VERBOSE = False
REQUEST_TIMEOUT_S = 5  # the server's deadline for one request
MAX_CONNECTIONS = 32  # the connections the server keeps open
# How long a test waits for something that must happen. Waits end as soon as their condition
# holds, so a generous bound costs nothing on a fast machine and keeps a slow or loaded one green.
PATIENCE_S = 60


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


# ---- a client -----------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body) if self.body else None

    def fault(self):
        return (self.json() or {}).get("fault_message", "")

    def __repr__(self):
        return "%d %s" % (self.status, self.body[:300])


class Conn:
    """One keep-alive connection; reads responses with Content-Length framing."""

    def __init__(self, path, timeout=PATIENCE_S):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def read_response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return Response(status, headers, body.decode())

    def closed_by_peer(self, wait=PATIENCE_S):
        """Reads until the server closes the connection; False if it is still open after wait s."""
        self.sock.settimeout(wait)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def request(self, method, path, body=None, raw_body=None, headers=None):
        if raw_body is None and body is not None:
            raw_body = json.dumps(body).encode()
        raw_body = raw_body or b""
        head = "%s %s HTTP/1.1\r\nHost: localhost\r\n" % (method, path)
        for k, v in (headers or {}).items():
            head += "%s: %s\r\n" % (k, v)
        if raw_body or method in ("PUT", "PATCH"):
            head += "Content-Length: %d\r\n" % len(raw_body)
        self.send_raw(head.encode() + b"\r\n" + raw_body)
        return self.read_response()


def encode_request(method, path, body):
    raw = json.dumps(body).encode() if body is not None else b""
    head = "%s %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (method, path, len(raw))
    return head.encode() + raw


# ---- an ember process -------------------------------------------------------------------


class Ember:
    def __init__(self, tmp, args=(), api=True, name="ember"):
        self.sock = os.path.join(tmp, name + ".sock")
        self.out_path = os.path.join(tmp, name + ".out")
        self.err_path = os.path.join(tmp, name + ".err")
        cmd = [EMBER]
        if api:
            cmd += ["--api-sock", self.sock]
        cmd += list(args)
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err)
        if api:
            # Callers give ember a machine that stays up (or none): a guest that ends by itself
            # could take the socket away before this connects.
            deadline = time.monotonic() + PATIENCE_S
            while True:
                try:
                    Conn(self.sock, timeout=PATIENCE_S).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        raise Failure("ember did not open its API socket (exit status %r): %s" %
                                      (self.proc.returncode, self.stderr()))
                    time.sleep(0.01)
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            self._conn = Conn(self.sock)
        return self._conn

    def req(self, method, path, body=None, **kw):
        try:
            return self.conn.request(method, path, body, **kw)
        except (EOFError, OSError):
            self._conn = None
            raise

    def stdout(self):
        self.out.flush()
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr(self):
        self.err.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def wait(self, timeout=PATIENCE_S):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure("ember did not exit within %d s" % timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self):
        return self.proc.poll() is None

    def wait_output(self, text, timeout=PATIENCE_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout():
                return True
            if not self.alive():
                break
            time.sleep(0.05)
        return False


def expect(resp, status, what, fault_has=None):
    check(resp.status == status, "%s: expected %d, got %r" % (what, status, resp))
    if fault_has is not None:
        check(fault_has.lower() in resp.fault().lower(),
              "%s: fault_message %r lacks %r" % (what, resp.fault(), fault_has))


def serving(e, what="after a bad request"):
    """The API still answers on a fresh connection."""
    c = Conn(e.sock)
    try:
        r = c.request("GET", "/")
        check(r.status == 200, "the API stopped answering %s: %r" % (what, r))
    finally:
        c.close()


# ---- tests ------------------------------------------------------------------------------


def test_instance_info(tmp):
    e = Ember(tmp, ["--id", "vm-7"])
    try:
        r = e.req("GET", "/")
        expect(r, 200, "GET /")
        info = r.json()
        check(info["id"] == "vm-7" and info["state"] == "Not started", "GET /: %r" % info)
        check("vmm_version" in info and "app_name" in info, "GET /: %r" % info)
        check(r.headers.get("content-type") == "application/json", "content type %r" % r.headers)
        expect(e.req("GET", "/version"), 200, "GET /version")
        check("firecracker_version" in e.req("GET", "/version").json(), "version body")
    finally:
        e.kill()


SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
                    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
                    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")


def kata_version(output):
    """Kata Containers' fc.go: the second space-separated word of the first line, one leading
    'v' trimmed, must be a semantic version (blang/semver) of at least 0.21.1."""
    fields = output.split("\n")[0].split(" ")
    check(len(fields) > 1, "--version's first line has no second word: %r" % output)
    version = fields[1].strip()
    version = version[1:] if version.startswith("v") else version
    m = SEMVER.match(version)
    check(m, "not a semantic version: %r" % version)
    core = tuple(int(x) for x in m.group(1, 2, 3))
    check(core >= (0, 21, 1) and not (core == (0, 21, 1) and m.group(4)),
          "version %s is below Kata's minimum 0.21.1" % version)
    return version


def test_names_and_versions(tmp):
    """make install puts ember and ember-jailer, and the names Firecracker's clients run them by,
    under DESTDIR/PREFIX; every version ember gives passes Kata's check and names ember."""
    build = os.path.relpath(os.path.dirname(os.path.abspath(EMBER)), ROOT)
    dest = os.path.join(tmp, "dest")
    out = subprocess.run(["make", "-s", "-C", ROOT, "install", "BUILD=" + build, "DESTDIR=" + dest,
                          "PREFIX=/usr"], capture_output=True, text=True, timeout=600)
    check(out.returncode == 0, "make install: %s" % out.stderr)
    bindir = os.path.join(dest, "usr", "bin")
    for name in ("ember", "ember-jailer"):
        path = os.path.join(bindir, name)
        check(os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.X_OK),
              "%s installed" % name)
    check(os.readlink(os.path.join(bindir, "firecracker")) == "ember", "firecracker -> ember")
    check(os.readlink(os.path.join(bindir, "jailer")) == "ember-jailer", "jailer -> ember-jailer")
    versions = {}
    for name in ("ember", "firecracker", "jailer", "ember-jailer"):
        out = subprocess.run([os.path.join(bindir, name), "--version"], capture_output=True,
                             text=True, timeout=PATIENCE_S)
        check(out.returncode == 0, "%s --version: %d %r" % (name, out.returncode, out.stderr))
        versions[name] = kata_version(out.stdout)
        check(out.stdout.split("\n")[0].startswith("ember") and "+ember." in versions[name],
              "%s --version names ember: %r" % (name, out.stdout))
    check(len(set(versions.values())) == 1, "one version everywhere: %r" % versions)
    e = Ember(tmp, ["--id", "vm-8"])
    try:
        check(e.req("GET", "/version").json() == {"firecracker_version": versions["ember"]},
              "GET /version gives --version's: %r" % e.req("GET", "/version").body)
        info = e.req("GET", "/").json()
        check(info["vmm_version"] == versions["ember"] and info["app_name"] == "ember",
              "GET / gives --version's: %r" % info)
    finally:
        e.kill()


def test_machine_config(tmp):
    e = Ember(tmp)
    try:
        mc = e.req("GET", "/machine-config").json()
        check(mc["vcpu_count"] == 1 and mc["mem_size_mib"] == 128 and mc["smt"] is False, "defaults %r" % mc)
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}), 204, "PUT")
        mc = e.req("GET", "/machine-config").json()
        check(mc["vcpu_count"] == 2 and mc["mem_size_mib"] == 256, "after PUT %r" % mc)
        expect(e.req("PATCH", "/machine-config", {"mem_size_mib": 64}), 204, "PATCH")
        mc = e.req("GET", "/machine-config").json()
        check(mc["vcpu_count"] == 2 and mc["mem_size_mib"] == 64, "after PATCH %r" % mc)
        for tmpl in ("None", "host", "baseline"):
            expect(e.req("PATCH", "/machine-config", {"cpu_template": tmpl}), 204, "template " + tmpl)
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "smt": False,
                                                 "track_dirty_pages": False, "huge_pages": "None"}),
               204, "PUT with every default")
        bad = [
            ({"vcpu_count": 0, "mem_size_mib": 128}, "vcpu_count"),
            ({"vcpu_count": 33, "mem_size_mib": 128}, "vcpu_count"),
            ({"vcpu_count": 1.5, "mem_size_mib": 128}, "vcpu_count"),
            ({"vcpu_count": "2", "mem_size_mib": 128}, "vcpu_count"),
            ({"vcpu_count": 1, "mem_size_mib": 0}, "mem_size_mib"),
            ({"vcpu_count": 1}, "mem_size_mib"),
            ({"mem_size_mib": 128}, "vcpu_count"),
            ({"vcpu_count": 3, "mem_size_mib": 128, "smt": True}, "1 or an even number if SMT is enabled"),
            ({"vcpu_count": 1, "mem_size_mib": 127, "huge_pages": "2M"}, "multiple of the 2 MiB"),
            ({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}, "huge_pages"),
            ({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T3"}, "unknown"),
            ({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "t2"}, "unknown"),
            ({"vcpu_count": 1, "mem_size_mib": 128, "frobnicate": 1}, "unknown field"),
        ]
        for body, msg in bad:
            expect(e.req("PUT", "/machine-config", body), 400, "PUT %r" % body, msg)
        mc = e.req("GET", "/machine-config").json()
        check(mc["vcpu_count"] == 1 and mc["mem_size_mib"] == 128, "a rejected PUT changed %r" % mc)
        expect(e.req("PUT", "/machine-config", raw_body=b"[1,2]"), 400, "array body")
        serving(e)
    finally:
        e.kill()


# What each static template decides, as Firecracker defines it: (leaf, subleaf, register,
# mask, value); the bits of mask are the template's, the rest the host's.
T2_DECIDES = [
    (0x1, 0, "eax", 0x0fff3fff, 0x000306f2), (0x1, 0, "ecx", 0x0004cdfc, 0),
    (0x1, 0, "edx", 0xe8641080, 0x00001080), (0x7, 0, "ebx", 0xffefda14, 0x00000200),
    (0x7, 0, "ecx", 0x40415f5e, 0), (0x7, 0, "edx", 0x0000011c, 0),
    (0xd, 0, "eax", 0x000002f8, 0), (0xd, 1, "eax", 0x0000000e, 0),
]
TEMPLATE_DECIDES = {
    "C3": [(0x1, 0, "eax", 0x0fff3fff, 0x000306e4), (0x1, 0, "ecx", 0x0040dd3c, 0),
           (0x1, 0, "edx", 0xa8641080, 0x00001080), (0x7, 0, "ebx", 0xffafdd3c, 0),
           (0x7, 0, "ecx", 0x4041481e, 0), (0x7, 0, "edx", 0x0000000c, 0),
           (0xd, 0, "eax", 0x000002f8, 0), (0xd, 1, "eax", 0x0000000e, 0),
           (0x80000001, 0, "ecx", 0x00000120, 0), (0x80000001, 0, "edx", 0x04000000, 0)],
    "T2": T2_DECIDES + [(0x80000001, 0, "ecx", 0x20000100, 0), (0x80000001, 0, "edx", 0x04000000, 0),
                        (0x80000008, 0, "ebx", 0x00000200, 0)],
    "T2CL": T2_DECIDES + [(0x80000001, 0, "ecx", 0x200001c0, 0), (0x80000001, 0, "edx", 0x07c00000, 0),
                          (0x80000008, 0, "ebx", 0x00000200, 0)],
    "T2A": T2_DECIDES + [(0x80000001, 0, "ecx", 0x200001c4, 0), (0x80000001, 0, "edx", 0x06400000, 0),
                         (0x80000008, 0, "ebx", 0x001c0205, 0x001c0004)],
}
TEMPLATE_DECIDES["T2S"] = TEMPLATE_DECIDES["T2"]
# IA32_ARCH_CAPABILITIES (0x10a): mask, value
TEMPLATE_MSR = {"T2S": (0xffffffffffffffff, 0x0c0a0c4c), "T2CL": (0xffffffffe2f51e00, 0)}
REGS = ("eax", "ebx", "ecx", "edx")


def host_vendor():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                return line.split(":")[1].strip()
    return ""


def boot_cpuid_guest(tmp, name, configure, boot_args=""):
    """Boots the cpuid guest after configure(e) shaped the machine; returns what the guest
    printed ({(leaf, subleaf): [eax, ebx, ecx, edx]}, {msr: value}, TAP lines) and the
    bits ember said this host does not apply ({(leaf, subleaf, reg): bits})."""
    e = Ember(tmp, name=name)
    try:
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": CPUID_GUEST,
                                              "boot_args": "console=ttyS0 idle_ms=300 " + boot_args}),
               204, name + ": boot source")
        configure(e)
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, name + ": InstanceStart")
        status = e.wait()
        out, err = e.stdout(), e.stderr()
        check(status == 0, "%s: exit status %d\n%s" % (name, status, err))
    finally:
        e.kill()
    leaves, msrs, tap = {}, {}, []
    for line in out.splitlines():
        words = line.split()
        if line.startswith("# cpuid 0x") and "eax=" in line:
            leaf, sub = words[2].rstrip(":").split(".")
            leaves[(int(leaf, 16), int(sub))] = [int(w.split("=")[1], 16) for w in words[3:7]]
        elif line.startswith("# msr 0x") and len(words) == 4:
            msrs[int(words[2].rstrip(":"), 16)] = int(words[3], 16)
        elif line.startswith("ok ") or line.startswith("not ok "):
            tap.append(line)
    leaked = {}
    for line in err.splitlines():
        if "does not give the guest these CPUID bits" in line:
            items = line.split(": ", 2)[2].split(" (")[0].split()
            for i in range(0, len(items) - 2, 3):
                leaf, sub = items[i].split(".")
                leaked[(int(leaf, 16), int(sub), items[i + 1])] = int(items[i + 2], 16)
    check(tap and all(t.startswith("ok ") for t in tap), "%s: the guest's checks: %r" % (name, tap))
    return leaves, msrs, leaked


def check_decided(name, decides, leaves, leaked):
    """Every bit the template decides is as it says in the guest, but for those ember named
    as kept by this host (said, not failed: the host's doing, and ember reports it)."""
    kept, verified = [], 0
    for leaf, sub, reg, mask, value in decides:
        regs = leaves.get((leaf, sub))
        check(regs is not None, "%s: the guest printed no leaf %#x.%d" % (name, leaf, sub))
        host_bits = leaked.get((leaf, sub, reg), 0)
        check(host_bits & ~mask == 0, "%s: ember names bits the template leaves alone %#x" % (name, host_bits))
        got = regs[REGS.index(reg)]
        want_mask = mask & ~host_bits
        check(got & want_mask == value & want_mask,
              "%s: leaf %#x.%d %s = %#x: bits %#x should be %#x" % (name, leaf, sub, reg, got, want_mask,
                                                                     value & want_mask))
        # What ember read back from KVM is what the guest's CPUID instruction returns.
        check((got ^ value) & host_bits == host_bits,
              "%s: leaf %#x.%d %s = %#x: ember named %#x as kept by the host" % (name, leaf, sub, reg, got,
                                                                                 host_bits))
        verified += bin(want_mask).count("1")
        if host_bits:
            kept.append("%#x.%d %s %#x" % (leaf, sub, reg, host_bits))
    check(verified > 0, "%s: this host applies none of the template's bits" % name)
    if kept:
        print("# %s: this host keeps its own value in %s (ember warned)" % (name, ", ".join(kept)))
    return len(decides)


def test_cpu_templates_in_guest(tmp):
    if not os.path.exists(CPUID_GUEST):
        raise Skip("no %s (make -C guest)" % CPUID_GUEST)
    intel = host_vendor() == "GenuineIntel"
    for tmpl in ("C3", "T2", "T2S", "T2CL", "T2A"):
        own_vendor = (tmpl == "T2A") != intel
        if not own_vendor:
            e = Ember(tmp, name="wrong-" + tmpl)
            try:
                expect(e.req("PUT", "/boot-source", {"kernel_image_path": CPUID_GUEST}), 204, "boot source")
                expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64,
                                                         "cpu_template": tmpl}), 204, tmpl + " accepted at PUT")
                expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 400,
                       tmpl + " on the other vendor", "CPU vendor mismatched between actual CPU and CPU template")
                serving(e)
            finally:
                e.kill()
            continue
        leaves, msrs, leaked = boot_cpuid_guest(tmp, tmpl, lambda e, t=tmpl: expect(
            e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": t}),
            204, t + ": machine-config"))
        check_decided(tmpl, TEMPLATE_DECIDES[tmpl], leaves, leaked)
        if tmpl in TEMPLATE_MSR:
            mask, value = TEMPLATE_MSR[tmpl]
            check(0x10a in msrs, "%s: the guest read no IA32_ARCH_CAPABILITIES" % tmpl)
            check(msrs[0x10a] & mask == value, "%s: IA32_ARCH_CAPABILITIES %#x" % (tmpl, msrs[0x10a]))
    # Without a template the guest sees the host's version fields, not T2's.
    leaves, _, _ = boot_cpuid_guest(tmp, "none", lambda e: None)
    check(leaves[(1, 0)][0] & 0x0fff3fff != 0x000306f2 or host_vendor() != "GenuineIntel",
          "no template, yet the T2 signature")


def test_custom_cpu_config_in_guest(tmp):
    if not os.path.exists(CPUID_GUEST):
        raise Skip("no %s (make -C guest)" % CPUID_GUEST)
    template = {
        "kvm_capabilities": ["!1"],
        "cpuid_modifiers": [
            # stepping 0xa, whatever the host's
            {"leaf": "0x1", "subleaf": "0x0", "flags": 0,
             "modifiers": [{"register": "eax", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxx1010"}]},
            # the CLFLUSH line size field set to 16 (x 8 bytes), the brand index cleared
            {"leaf": "0x1", "subleaf": "0x0", "flags": 0,
             "modifiers": [{"register": "ebx", "bitmap": "0b0001_0000_0000_0000"}]},
            {"leaf": "0x7", "subleaf": "0x0", "flags": 1,
             "modifiers": [{"register": "ebx", "bitmap": "0b0xxxxxxxxxxxxxx0xxxxxxxxxxxxxxxx"}]},
        ],
        "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}],
    }

    def configure(e):
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}),
               204, "a static template first")
        bad = [
            ({"vcpu_features": [{"index": 0, "bitmap": "0b1"}]}, "vcpu_features"),
            ({"cpuid_modifiers": [{"leaf": "0x4fffffff", "subleaf": "0x0", "flags": 0, "modifiers": [
                {"register": "eax", "bitmap": "0b1"}]}]}, "leaf 0x4fffffff"),
            ({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                {"register": "eax", "bitmap": "0b12"}]}]}, "bitmap"),
            ({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                {"register": "eax", "bitmap": "0b" + "1" * 33}]}]}, "more than 32 bits"),
            ({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
                {"register": "r8", "bitmap": "0b1"}]}]}, "register"),
            ({"cpuid_modifiers": [{"leaf": "1", "subleaf": "0x0", "flags": 0, "modifiers": []}]}, "prefix"),
            ({"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b" + "1" * 65}]}, "more than 64 bits"),
            ({"kvm_capabilities": ["one"]}, "kvm capability"),
        ]
        for body, msg in bad:
            expect(e.req("PUT", "/cpu-config", body), 400, "PUT /cpu-config %r" % body, msg)
        expect(e.req("GET", "/cpu-config"), 400, "GET /cpu-config", "invalid request method")
        expect(e.req("PUT", "/cpu-config", template), 204, "PUT /cpu-config")
        # The custom template took the static one's place; a PUT without cpu_template keeps it.
        check("cpu_template" not in e.req("GET", "/machine-config").json(), "T2 still shown")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}), 204, "PUT again")

    leaves, msrs, leaked = boot_cpuid_guest(tmp, "custom", configure)
    decides = [(0x1, 0, "eax", 0xf, 0xa), (0x1, 0, "ebx", 0xffff, 0x1000), (0x7, 0, "ebx", 0x80010000, 0)]
    check_decided("custom", decides, leaves, leaked)
    check(0x10a not in msrs or msrs[0x10a] & 1 == 0, "RDCL_NO left set: %r" % msrs)
    # T2 no longer applies: the host's version fields (but the custom stepping) show.
    check(leaves[(1, 0)][0] & 0x0ffffff0 != 0x000306f0 or host_vendor() != "GenuineIntel",
          "T2's signature after the custom template replaced it")
    # What only InstanceStart can find out: a capability KVM lacks, an MSR it does not know.
    for body, msg in [({"kvm_capabilities": ["4000000"]}, "Missing KVM capabilities: 0x3d0900"),
                      ({"msr_modifiers": [{"addr": "0x4b564dff", "bitmap": "0b1"}]},
                       "MSR entry not supported by KVM: Register Address: 0x4b564dff")]:
        e = Ember(tmp, name="custom-at-start")
        try:
            expect(e.req("PUT", "/boot-source", {"kernel_image_path": CPUID_GUEST}), 204, "boot source")
            expect(e.req("PUT", "/cpu-config", body), 204, "PUT /cpu-config %r" % body)
            expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 400, "start with %r" % body, msg)
            serving(e)
        finally:
            e.kill()
    # A custom template cannot be set once the machine runs.
    e = Ember(tmp, name="custom-after-start")
    try:
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        expect(e.req("PUT", "/cpu-config", template), 400, "PUT /cpu-config after start",
               "before the machine starts")
    finally:
        e.kill()


def test_smt_and_machine_config_rules(tmp):
    if not os.path.exists(CPUID_GUEST):
        raise Skip("no %s (make -C guest)" % CPUID_GUEST)
    e = Ember(tmp, name="rules")
    try:
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "T2"}),
               204, "T2 (firecracker-containerd's default on Intel)")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 4, "mem_size_mib": 64}), 204, "PUT without template")
        check(e.req("GET", "/machine-config").json().get("cpu_template") == "T2", "template kept across PUT")
        expect(e.req("PATCH", "/machine-config", {}), 400, "empty PATCH", "Empty PATCH request.")
        expect(e.req("PATCH", "/machine-config", {"smt": True, "vcpu_count": 3}), 400, "smt with 3 vCPUs",
               "1 or an even number if SMT is enabled")
        expect(e.req("PATCH", "/machine-config", {"smt": True}), 204, "smt with 4 vCPUs")
        expect(e.req("PATCH", "/machine-config", {"vcpu_count": 5}), 400, "5 vCPUs with smt", "SMT")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "smt": True}), 204,
               "smt with one vCPU")
        expect(e.req("PATCH", "/machine-config", {"cpu_template": "None"}), 204, "template None")
        check("cpu_template" not in e.req("GET", "/machine-config").json(), "None shown as absent")
        serving(e)
    finally:
        e.kill()
    # The cache topology: Intel's deterministic cache leaf 4 (cores per package, threads sharing
    # L1); AMD has no leaf 4 (its caches are leaf 0x8000001d, left as the host's) but says the
    # threads of a core in 0x8000001e (with TOPOEXT).
    with open("/proc/cpuinfo") as f:
        cpuinfo = f.read()
    amd = "AuthenticAMD" in cpuinfo
    if amd:
        topoext = " topoext" in cpuinfo
        smt_cache = ["0x8000001e.0.b:0xff00:0x100"] if topoext else []
        no_smt_cache = ["0x8000001e.0.b:0xff00:0"] if topoext else []
    else:
        smt_cache = ["4.0.a:0xfc000000:0", "4.0.a:0x3ffc000:0x4000"]
        no_smt_cache = ["4.0.a:0xfc000000:0x4000000", "4.0.a:0x3ffc000:0"]
    # Two vCPUs as the two threads of one core.
    expect_topology = ",".join([
        "0xb.0.b:0xffff:2", "0xb.0.a:0x1f:1", "0xb.0.c:0xff00:0x100",
        "0xb.1.b:0xffff:2", "0xb.1.c:0xff00:0x200",
        "1.0.b:0xff0000:0x20000", "1.0.d:0x10000000:0x10000000",
    ] + smt_cache)
    boot_cpuid_guest(tmp, "smt", lambda e: expect(
        e.req("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64, "smt": True}), 204, "smt"),
        boot_args="cpuid_expect=" + expect_topology)
    # Without smt: two cores of one thread each.
    expect_topology = ",".join(["0xb.0.b:0xffff:1", "0xb.0.a:0x1f:0"] + no_smt_cache)
    boot_cpuid_guest(tmp, "no-smt", lambda e: expect(
        e.req("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64}), 204, "no smt"),
        boot_args="cpuid_expect=" + expect_topology)
def meminfo(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def test_machine_config_as_firecracker(tmp):
    """track_dirty_pages is kept; a size the host cannot back is accepted at PUT and refused at
    InstanceStart (Firecracker's order); huge_pages 2M takes guest RAM from the host's hugetlbfs
    pool, whose absence InstanceStart names. The test reserves the pool's pages itself and puts
    the old count back."""
    e = Ember(tmp)
    try:
        expect(e.req("PATCH", "/machine-config", {}), 400, "empty PATCH", "empty PATCH")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 1 << 40,
                                                 "track_dirty_pages": True}), 204, "1 TiB at PUT")
        mc = e.req("GET", "/vm/config").json()["machine-config"]
        check(mc["track_dirty_pages"] is True and mc["mem_size_mib"] == 1 << 40, "kept: %r" % mc)
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 400, "1 TiB at start",
               "more than this host's")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32,
                                                 "huge_pages": "2M"}), 204, "2M")
        check(e.req("GET", "/machine-config").json()["huge_pages"] == "2M", "2M shown")
        expect(e.req("PATCH", "/machine-config", {"mem_size_mib": 33}), 400, "33 MiB of 2 MiB pages",
               "multiple of the 2 MiB")
        free = meminfo("HugePages_Free")
        if free is None:
            raise Skip("this kernel has no hugetlbfs (no HugePages_Free in /proc/meminfo)")
        if free - (meminfo("HugePages_Rsvd") or 0) < 16:
            r = e.req("PUT", "/actions", {"action_type": "InstanceStart"})
            expect(r, 400, "2M without reserved pages", "huge pages")
            check("nr_hugepages" in r.fault(), "the error says where to reserve them: %r" % r.fault())
            serving(e, "after a start that failed")
    finally:
        e.kill()
    nr = "/proc/sys/vm/nr_hugepages"
    with open(nr) as f:
        old = int(f.read())
    try:
        try:
            with open(nr, "w") as f:
                f.write(str(old + 16))
        except OSError as ex:
            raise Skip("cannot reserve huge pages (%s)" % ex)
        if meminfo("HugePages_Free") - (meminfo("HugePages_Rsvd") or 0) < 16:
            raise Skip("the host gave only %d of 16 huge pages asked for" % meminfo("HugePages_Free"))
        e = Ember(tmp, name="huge")
        try:
            expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
            expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32,
                                                     "huge_pages": "2M"}), 204, "2M")
            expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "start with 2M pages")
            check(e.wait_output("tick 1"), "the guest runs on huge pages: %r" % e.stdout()[-300:])
            with open("/proc/%d/smaps" % e.proc.pid) as f:
                smaps = f.read()
            mappings, cur = [], None
            for line in smaps.splitlines():
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    cur = {}
                    mappings.append(cur)
                elif cur is not None and ":" in line:
                    k, v = line.split(":", 1)
                    cur[k] = v.strip()
            check(any(m.get("Size") == "32768 kB" and m.get("KernelPageSize") == "2048 kB"
                      for m in mappings), "a 32 MiB mapping of 2 MiB pages in ember")
            expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
            check(e.wait() == 0, "the guest ended: %s" % e.stderr())
        finally:
            e.kill()
    finally:
        with open(nr, "w") as f:
            f.write(str(old))


def test_boot_source(tmp):
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": HELLO, "boot_args": "console=ttyS0"}),
               204, "valid")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": HELLO, "initrd_path": HELLO}), 204,
               "with initrd")
        expect(e.req("PUT", "/boot-source", {"boot_args": "x"}), 400, "no kernel", "kernel_image_path")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": "/nonexistent/k"}), 400, "missing file",
               "/nonexistent/k")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": 5}), 400, "number", "string")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": HELLO, "x": 1}), 400, "unknown field",
               "unknown field")
        cfg = e.req("GET", "/vm/config").json()
        check(cfg["boot-source"]["kernel_image_path"] == HELLO, "vm/config %r" % cfg)
        check(cfg["boot-source"].get("initrd_path") == HELLO, "vm/config initrd %r" % cfg)
    finally:
        e.kill()


def make_image(tmp, name, size):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_drives(tmp):
    e = Ember(tmp)
    root = make_image(tmp, "root.img", 1 << 20)
    data = make_image(tmp, "data.img", 2 << 20)
    try:
        rl = {"bandwidth": {"size": 1048576, "one_time_burst": 4096, "refill_time": 100},
              "ops": {"size": 100, "refill_time": 1000}}
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": root,
                                                "is_root_device": True, "is_read_only": False,
                                                "partuuid": "0eaa91a0-01"}), 204, "root drive")
        expect(e.req("PUT", "/drives/data", {"drive_id": "data", "path_on_host": data, "is_root_device": False,
                                              "is_read_only": True, "cache_type": "Writeback",
                                              "io_engine": "Async", "rate_limiter": rl}), 204, "data drive")
        expect(e.req("PUT", "/drives/data", {"drive_id": "data", "path_on_host": data, "is_root_device": False,
                                              "is_read_only": True, "cache_type": "Writeback",
                                              "io_engine": "Async", "rate_limiter": rl}), 204, "same again")
        drives = e.req("GET", "/vm/config").json()["drives"]
        check(len(drives) == 2, "two drives %r" % drives)
        d = [x for x in drives if x["drive_id"] == "data"][0]
        check(d["cache_type"] == "Writeback" and d["io_engine"] == "Async" and d["is_read_only"], "%r" % d)
        check(d["rate_limiter"]["bandwidth"]["size"] == 1048576, "rate limiter %r" % d)
        r = [x for x in drives if x["drive_id"] == "rootfs"][0]
        check(r["cache_type"] == "Unsafe" and r["io_engine"] == "Sync" and r["partuuid"] == "0eaa91a0-01",
              "defaults %r" % r)
        bad = [
            ("/drives/other", {"drive_id": "x", "path_on_host": data, "is_root_device": False}, "differs"),
            ("/drives/second", {"drive_id": "second", "path_on_host": data, "is_root_device": True},
             "root device"),
            ("/drives/x", {"drive_id": "x", "is_root_device": False}, "path_on_host"),
            ("/drives/x", {"drive_id": "x", "path_on_host": data}, "is_root_device"),
            ("/drives/x", {"drive_id": "x", "path_on_host": "/nonexistent", "is_root_device": False},
             "/nonexistent"),
            ("/drives/x", {"drive_id": "x", "path_on_host": data, "is_root_device": False,
                           "cache_type": "None"}, "cache_type"),
            ("/drives/x", {"drive_id": "x", "path_on_host": data, "is_root_device": False,
                           "io_engine": "Turbo"}, "io_engine"),
            ("/drives/x", {"drive_id": "x", "path_on_host": data, "is_root_device": False,
                           "rate_limiter": {"bandwidth": {"size": 1}}}, "refill_time"),
            ("/drives/x", {"drive_id": "x", "path_on_host": data, "is_root_device": False,
                           "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1}}}, "size"),
            ("/drives/x", {"drive_id": "x", "path_on_host": data, "is_root_device": False,
                           "socket": "/tmp/vhost"}, "exactly one"),
            ("/drives/b%20d", {"drive_id": "b%20d", "path_on_host": data, "is_root_device": False}, "id"),
        ]
        for path, body, msg in bad:
            expect(e.req("PUT", path, body), 400, "PUT %s %r" % (path, body), msg)
        expect(e.req("PATCH", "/drives/data", {"drive_id": "data", "path_on_host": root}), 400,
               "PATCH before start", "InstanceStart")
        expect(e.req("PUT", "/drives/", {"drive_id": "", "path_on_host": data, "is_root_device": False}),
               400, "empty id in the path", "invalid request")
        serving(e)
    finally:
        e.kill()


def test_network_interfaces(tmp):
    e = Ember(tmp)
    try:
        tap = "embertap%d" % (os.getpid() % 10000)
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap,
                                                          "guest_mac": "06:00:AC:10:00:02"}), 204, "valid")
        bad = [
            ("/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": tap}, "already used"),
            ("/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "zz"},
             "guest_mac"),
            ("/network-interfaces/eth1", {"iface_id": "eth2", "host_dev_name": "tap1"}, "differs"),
            ("/network-interfaces/eth1", {"iface_id": "eth1"}, "host_dev_name"),
        ]
        for path, body, msg in bad:
            expect(e.req("PUT", path, body), 400, "PUT %r" % body, msg)
        nets = e.req("GET", "/vm/config").json()["network-interfaces"]
        check(len(nets) == 1 and nets[0]["host_dev_name"] == tap, "%r" % nets)
        limiter = {"bandwidth": {"size": 125000, "refill_time": 100}, "ops": {"size": 1000, "refill_time": 1000}}
        log = os.path.join(tmp, "ember.log")
        expect(e.req("PUT", "/logger", {"log_path": log, "level": "Info"}), 204, "logger")
        metrics = os.path.join(tmp, "metrics.json")
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 204, "metrics")
        expect(e.req("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": limiter}),
               400, "PATCH before start", "InstanceStart")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        # The interface becomes a virtio-net device on that tap (created as root).
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait_output("tick 1"), "the guest runs: %r %s" % (e.stdout(), e.stderr()))
        expect(e.req("PATCH", "/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": limiter,
                                                            "rx_rate_limiter": limiter}), 204, "PATCH limits")
        net = e.req("GET", "/vm/config").json()["network-interfaces"][0]
        check(net.get("tx_rate_limiter", {}).get("bandwidth", {}).get("size") == 125000 and
              net.get("rx_rate_limiter", {}).get("ops", {}).get("size") == 1000, "new limits shown: %r" % net)
        bad_patches = [
            ("/network-interfaces/eth9", {"iface_id": "eth9", "tx_rate_limiter": limiter}, "eth9"),
            ("/network-interfaces/eth0", {"iface_id": "eth1"}, "differs"),
            ("/network-interfaces/eth0", {"iface_id": "eth0", "guest_mac": "06:00:AC:10:00:03"}, "guest_mac"),
            ("/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 1}}},
             "refill_time"),
        ]
        for path, body, msg in bad_patches:
            expect(e.req("PATCH", path, body), 400, "PATCH %r" % body, msg)
        with open(log) as f:
            text = f.read()
        check("network interface 'eth0': new rate limits in force" in text, "logged: %s" % text[-600:])
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "flush")
        with open(metrics) as f:
            line = json.loads(f.read().splitlines()[-1])
        fields = ("rx_packets_count", "rx_bytes_count", "rx_dropped_count", "rx_tap_dropped_count",
                  "tx_packets_count", "tx_bytes_count", "tx_dropped_count", "tx_waits_for_room",
                  "poll_hits", "poll_races")
        check(all(isinstance(line.get(k, {}).get(f), (int, float)) for k in ("net_eth0", "net") for f in fields),
              "network metrics per interface and in total: %r" % {k: line.get(k) for k in ("net_eth0", "net")})
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        status = e.wait()
        check(status == 0, "the guest ran with a network interface: %r %s" % (status, e.stderr()))
    finally:
        e.kill()


def test_nineteen_mmio_devices(tmp):
    """As many virtio-mmio devices as Firecracker has interrupt lines for (GSI 5-23): Kata's
    layout grown to the limit, a root drive and placeholder drives, a network interface,
    entropy and vsock. The virtio-blk guest drives the root drive (read-only, the first line)
    and the last drive (writable, on an IOAPIC pin above 15); the 20th device is refused at its
    PUT with a clear error."""
    guest = os.path.join(GUEST_DIR, "virtio-blk.elf")
    rootfs = os.path.join(tmp, "rootfs.img")
    with open(rootfs, "wb") as f:
        f.write(os.urandom(1 << 20))
    ro_sum = subprocess.run(["cksum"], stdin=open(rootfs, "rb"), capture_output=True,
                            text=True).stdout.split()[0]
    sectors = 16384  # 8 MiB, as the guest suite uses
    data = make_image(tmp, "data.img", sectors * 512)
    e = Ember(tmp)
    try:
        args = ("console=ttyS0 reboot=k panic=1 blk_id=data ro_id=rootfs blk_queues=1 "
                "blk_sectors=%d ro_cksum=%s" % (sectors, ro_sum))
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": guest, "boot_args": args}), 204,
               "boot source")
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": rootfs,
                                               "is_root_device": True, "is_read_only": True}), 204, "rootfs")
        for i in range(14):
            path = make_image(tmp, "drive_%d.img" % i, 4096)
            expect(e.req("PUT", "/drives/drive_%d" % i,
                         {"drive_id": "drive_%d" % i, "path_on_host": path, "is_root_device": False,
                          "is_read_only": True}), 204, "placeholder drive %d" % i)
        expect(e.req("PUT", "/drives/data", {"drive_id": "data", "path_on_host": data,
                                             "is_root_device": False, "is_read_only": False,
                                             "cache_type": "Writeback"}), 204, "data")
        tap = "embermm%d" % (os.getpid() % 10000)
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap}),
               204, "eth0")
        expect(e.req("PUT", "/entropy", {}), 204, "entropy")
        expect(e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": os.path.join(tmp, "v.sock")}),
               204, "vsock")
        expect(e.req("PUT", "/network-interfaces/eth1", {"iface_id": "eth1", "host_dev_name": tap + "b"}),
               400, "the 20th device", "interrupt line")
        expect(e.req("PUT", "/pmem/p20", {"id": "p20", "path_on_host": make_pmem_file(tmp, "p.img", 4096)}),
               400, "a pmem device as the 20th", "interrupt line")
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": rootfs,
                                               "is_root_device": True, "is_read_only": True}), 204,
               "replacing a drive adds no device")
        cfg = e.req("GET", "/vm/config").json()
        check(len(cfg["drives"]) == 16 and len(cfg["network-interfaces"]) == 1, "the configuration")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        deadline = time.monotonic() + 300
        while "# blk-checksum" not in e.stdout() and e.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        out = e.stdout()
        irqs = sorted(int(x) for x in re.findall(r"virtio: mmio@0x[0-9a-f]+ irq (\d+)", out))
        check(irqs == list(range(5, 24)), "19 devices on lines 5-23: %r" % irqs)
        check("not ok" not in out and "ok 1 - two virtio-blk drives found" in out and
              "# blk-checksum" in out, "the guest's checks: %s" % out[-2000:])
        with open(data, "rb") as f:
            host = subprocess.run(["cksum"], stdin=f, capture_output=True, text=True).stdout.split()
        line = re.findall(r"# blk-checksum: (\d+) (\d+)", out)
        check(line and list(line[-1]) == host[:2], "the data drive on pin 23: guest %r, file %r" % (line, host))
    finally:
        e.kill()
        if VERBOSE:
            print(e.stdout()[:6000])
    # ember run says the same for a 20th device on virtio-mmio.
    cmd = [EMBER, "run", "--kernel", HELLO, "--transport", "mmio", "--rng", "--console", "virtio",
           "--vsock", "cid=3,uds=" + os.path.join(tmp, "run-v.sock"),
           "--net", "tap=embermr%d" % (os.getpid() % 10000)]
    for i in range(16):
        cmd += ["--drive", "path=%s,readonly=on" % make_image(tmp, "run_%d.img" % i, 4096)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=PATIENCE_S, stdin=subprocess.DEVNULL)
    check(out.returncode != 0 and "too many virtio-mmio devices" in out.stderr and "at most 19" in out.stderr,
          "a 20th virtio-mmio device: %d %r" % (out.returncode, out.stderr))


FIRECRACKER_BOOT_ARGS = ("reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux "
                         "i8042.dumbkbd swiotlb=noforce")


def test_firecracker_request_rules(tmp):
    """What Firecracker's API server does with the request itself: query strings, slashes around
    the path, absolute-form targets, a GET with a body, ids in paths, the Deprecation header,
    and GET /vm/config field for field."""
    e = Ember(tmp)
    try:
        expect(e.req("GET", "/machine-config?verbose=1"), 200, "a query string")
        expect(e.req("GET", "/machine-config/"), 200, "a trailing slash")
        expect(e.req("PATCH", "//machine-config//", {"vcpu_count": 2}), 204, "slashes around")
        c = Conn(e.sock)
        c.send_raw(b"PUT http://localhost/machine-config HTTP/1.1\r\nContent-Length: 38\r\n\r\n"
                   b'{"vcpu_count": 1, "mem_size_mib": 64}\n')
        expect(c.read_response(), 204, "an absolute-form target")
        c.send_raw(b"GET http://localhost HTTP/1.1\r\n\r\n")
        expect(c.read_response(), 200, "an absolute-form target without a path")
        c.close()
        expect(e.req("GET", "/machine-config", raw_body=b"{}"), 400, "GET with a body",
               "GET request cannot have a body")
        image = make_image(tmp, "d.img", 4096)
        for bad in ("a-b", "a.b", "x" * 65):
            expect(e.req("PUT", "/drives/" + bad, {"drive_id": bad, "path_on_host": image,
                                                    "is_root_device": False}), 400, "drive id %r" % bad,
                   "alphanumeric characters and underscores")
        expect(e.req("PUT", "/drives/Data_1", {"drive_id": "Data_1", "path_on_host": image,
                                                "is_root_device": False}), 204, "letters, digits, _")
        expect(e.req("PUT", "/network-interfaces/eth-0", {"iface_id": "eth-0", "host_dev_name": "t0"}),
               400, "interface id", "alphanumeric")
        r = e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None"})
        expect(r, 204, "a deprecated field")
        check(r.headers.get("deprecation") == "true", "Deprecation header: %r" % r.headers)
        r = e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64})
        check("deprecation" not in r.headers, "no Deprecation header without the field: %r" % r.headers)
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": HELLO}), 204, "boot source")
        cfg = e.req("GET", "/vm/config").json()
        check(list(cfg) == ["balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config",
                            "metrics", "mmds-config", "network-interfaces", "vsock", "entropy", "pmem",
                            "memory-hotplug"], "sections as Firecracker's: %r" % list(cfg))
        check(cfg["boot-source"] == {"kernel_image_path": HELLO, "initrd_path": None, "boot_args": None},
              "boot-source %r" % cfg["boot-source"])
        check(cfg["drives"] == [{"drive_id": "Data_1", "partuuid": None, "is_root_device": False,
                                 "cache_type": "Unsafe", "is_read_only": False, "path_on_host": image,
                                 "rate_limiter": None, "io_engine": "Sync", "socket": None}],
              "drives %r" % cfg["drives"])
        check(cfg["machine-config"] == {"vcpu_count": 1, "mem_size_mib": 64, "smt": False,
                                        "track_dirty_pages": False, "huge_pages": "None"},
              "machine-config %r" % cfg["machine-config"])
        check(cfg["pmem"] == [] and all(cfg[k] is None for k in ("balloon", "cpu-config", "logger", "metrics",
                                                                   "mmds-config", "vsock", "entropy")),
              "empty sections %r" % cfg)
        expect(e.req("PUT", "/entropy", {"rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}), 204,
               "entropy")
        check(e.req("GET", "/vm/config").json()["entropy"] ==
              {"rate_limiter": {"bandwidth": None, "ops": {"size": 10, "one_time_burst": None,
                                                           "refill_time": 100}}},
              "rate limiter shape %r" % e.req("GET", "/vm/config").json()["entropy"])
        # GET /vm/config's answer is a configuration file Firecracker and ember take back.
        path = write_config(tmp, e.req("GET", "/vm/config").json(), "round-trip.json")
        # Without boot_args the kernel gets Firecracker's default command line.
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait() == 0, "the hello guest ran: %s" % e.stderr())
        check("command line: " + FIRECRACKER_BOOT_ARGS in e.stdout(), "default boot args: %r" % e.stdout())
    finally:
        e.kill()
    e = Ember(tmp, ["--no-api", "--config-file", path], api=False, name="round-trip")
    check(e.wait() == 0, "GET /vm/config's document boots: %s" % e.stderr())


def test_serial_out(tmp):
    """PUT /serial sends the serial port's output to a file (Firecracker's serial_out_path),
    opened at the request, so a bad path is refused there; a FIFO nobody reads opens too."""
    out = os.path.join(tmp, "serial.out")
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/serial", {"serial_out_path": os.path.join(tmp, "no", "such")}), 400,
               "a missing directory", "cannot open")
        expect(e.req("PUT", "/serial", {"serial_out_path": out, "colour": 1}), 400, "unknown field",
               "unknown field")
        expect(e.req("PUT", "/serial", {"serial_out_path": out,
                                        "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}),
               400, "rate limiter", "not supported yet")
        expect(e.req("GET", "/serial"), 400, "GET /serial", "invalid request method")
        fifo = os.path.join(tmp, "serial.fifo")
        os.mkfifo(fifo)
        expect(e.req("PUT", "/serial", {"serial_out_path": fifo}), 204, "a FIFO without a reader")
        expect(e.req("PUT", "/serial", {"serial_out_path": out}), 204, "a file (replaces the FIFO)")
        # The keyboard guest stays up until Ctrl+Alt+Del, so the request after start finds
        # ember still there (a guest that ends by itself could take the socket away first).
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD, "boot_args": "console=ttyS0"}),
               204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        expect(e.req("PUT", "/serial", {"serial_out_path": out}), 400, "after start", "InstanceStart")
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline and "waiting for Ctrl+Alt+Del" not in open(out).read():
            time.sleep(0.05)
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "the guest ended: %s" % e.stderr())
        with open(out) as f:
            text = f.read()
        check("waiting for Ctrl+Alt+Del" in text and "ok 1 - received Ctrl+Alt+Del" in text,
              "the guest's output in the file: %r" % text[-300:])
        check("Ctrl+Alt+Del" not in e.stdout(), "nothing on stdout: %r" % e.stdout()[-300:])
    finally:
        e.kill()
    # The configuration file takes the same section.
    doc = {"boot-source": {"kernel_image_path": HELLO, "boot_args": "console=ttyS0"},
           "serial": {"serial_out_path": os.path.join(tmp, "cfg-serial.out")}}
    e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, doc, "serial.json")], api=False,
              name="cfg-serial")
    check(e.wait() == 0, "config file with serial: %s" % e.stderr())
    with open(os.path.join(tmp, "cfg-serial.out")) as f:
        check("ok 1 - hello" in f.read(), "serial section of a configuration file")


def hold_tap(name):
    """Attaches tap `name` (creating it, as root) and returns the descriptor holding it."""
    import fcntl
    import struct
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))  # TUNSETIFF: TAP, NO_PI
    except OSError:
        os.close(fd)
        raise
    return fd


def test_taps_and_vsock_at_put(tmp):
    """As Firecracker, PUT /network-interfaces attaches its tap and PUT /vsock binds its socket,
    so that what cannot be done fails that request rather than InstanceStart."""
    busy = "emberbusy%d" % (os.getpid() % 1000)
    try:
        held = hold_tap(busy)
    except OSError as ex:
        raise Skip("cannot make a tap here (%s)" % ex)
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": busy}), 400,
               "a tap another process holds", "in use")
        free = "emberfree%d" % (os.getpid() % 1000)
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": free}), 204,
               "a tap ember may make")
        check(os.path.exists("/sys/class/net/" + free), "the tap exists after its PUT")
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": free,
                                                          "guest_mac": "06:00:00:00:00:01"}), 204,
               "the same interface again keeps its tap")
        uds = os.path.join(tmp, "v.sock")
        expect(e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": os.path.join(tmp, "no", "v.sock")}), 400,
               "a socket in a missing directory", "bind")
        plain = os.path.join(tmp, "plain")
        open(plain, "w").close()
        expect(e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": plain}), 400, "a file in the way",
               "not a socket")
        expect(e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": uds}), 204, "vsock")
        check(stat.S_ISSOCK(os.stat(uds).st_mode), "the socket exists after its PUT")
        expect(e.req("PUT", "/vsock", {"guest_cid": 4, "uds_path": uds}), 204, "the same path again")
        uds2 = os.path.join(tmp, "v2.sock")
        expect(e.req("PUT", "/vsock", {"guest_cid": 4, "uds_path": uds2}), 204, "another path")
        check(stat.S_ISSOCK(os.stat(uds2).st_mode) and not os.path.exists(uds), "the old socket is gone")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait_output("tick 1"), "the guest runs: %r" % e.stdout()[-300:])
        # The host side of vsock answers on the socket bound at the PUT.
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(PATIENCE_S)
        c.connect(uds2)
        c.sendall(b"CONNECT 1234\n")
        c.close()
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "the guest ended: %s" % e.stderr())
        check(not os.path.exists(uds2), "the socket is removed at the end")
    finally:
        e.kill()
        os.close(held)


def test_logger_metrics(tmp):
    e = Ember(tmp)
    log = os.path.join(tmp, "ember.log")
    metrics = os.path.join(tmp, "metrics.json")
    try:
        expect(e.req("PUT", "/logger", {"log_path": log, "level": "Loud"}), 400, "bad level", "level")
        expect(e.req("PUT", "/logger", {"log_path": log, "level": "Debug", "show_level": True,
                                         "show_log_origin": True}), 204, "logger")
        e.req("GET", "/machine-config")
        with open(log) as f:
            text = f.read()
        check("DEBUG" in text and "api.c:" in text, "log lines with level and origin: %r" % text[-400:])
        expect(e.req("PUT", "/logger", {"level": "Off"}), 204, "logger off")
        expect(e.req("PUT", "/metrics", {}), 400, "no path", "metrics_path")
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 204, "metrics")
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 400, "twice", "already")
        e.req("GET", "/nonexistent")
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 400, "flush before start",
               "before starting")
        start_keyboard(e)
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "flush")
        with open(metrics) as f:
            lines = [json.loads(x) for x in f.read().splitlines()]
        check(len(lines) == 1, "one metrics line: %r" % lines)
        api = lines[0]["api_server"]
        check(api.get("PUT /metrics", {}).get("204") == 1 and api.get("PUT /metrics", {}).get("400") == 2 and
              api.get("PUT /actions", {}).get("400") == 1,
              "requests by route and status: %r" % api)
        check(api.get("other", {}).get("400") == 1, "unknown paths counted as other: %r" % api)
        check("utc_timestamp_ms" in lines[0], "timestamp")
        check(all(isinstance(lines[0].get("logger", {}).get(k), (int, float))
                  for k in ("missed_log_count", "log_fails", "metrics_fails")), "logger group %r" % lines[0])
        # Malformed requests are logged with a rate limit: of five in a row one line is written,
        # and the metrics count the four held back.
        for _ in range(5):
            c = Conn(e.sock)
            c.send_raw(b"BOGUS\r\n\r\n")
            check(c.closed_by_peer(), "a malformed request closes its connection")
            c.close()
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "flush after malformed")
        with open(metrics) as f:
            after = json.loads(f.read().splitlines()[1])
        check(after["api_server"].get("requests_malformed_count") == 5 and
              after["logger"]["missed_log_count"] >= 4,
              "malformed requests counted, their log lines held back counted: %r" % after)
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "flush again")
        with open(metrics) as f:
            second = json.loads(f.read().splitlines()[2])
        check(second["api_server"].get("PUT /metrics", {}).get("204") == 0,
              "counters are changes since the last flush: %r" % second)
    finally:
        e.kill()


def test_metrics_fifo_and_signals(tmp):
    # FIFOs nobody reads yet, as firecracker-containerd names them: opened (read-write,
    # non-blocking, as Firecracker does), never blocking ember; lines that do not fit are dropped
    # whole and counted.
    fifo = os.path.join(tmp, "metrics.fifo")
    log_fifo = os.path.join(tmp, "log.fifo")
    os.mkfifo(fifo)
    os.mkfifo(log_fifo)
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/logger", {"log_path": log_fifo, "level": "Debug"}), 204,
               "log FIFO without a reader")
        expect(e.req("PUT", "/metrics", {"metrics_path": fifo}), 204, "metrics FIFO without a reader")
        start_keyboard(e)
        flushed = dropped = 0
        while dropped == 0 and flushed < 5000:
            r = e.req("PUT", "/actions", {"action_type": "FlushMetrics"})
            if r.status == 204:
                flushed += 1
            else:
                expect(r, 400, "flush to a full FIFO", "FIFO is full")
                dropped += 1
        check(flushed > 0 and dropped == 1, "lines written until the FIFO filled: %d, %d" % (flushed, dropped))
        for _ in range(3):
            expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 400, "still full", "FIFO is full")
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

        def drain():
            data = b""
            while True:
                try:
                    chunk = os.read(reader, 65536)
                except BlockingIOError:
                    return data
                if not chunk:
                    return data
                data += chunk

        try:
            # A line the full FIFO took in part is finished before the next one, so the reader
            # gets whole lines only.
            data = drain()
            expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "flush once read")
            lines = (data + drain()).decode().split("\n")
            check(lines[-1] == "" and len(lines) - 1 == flushed + 1,
                  "%d whole lines in the FIFO, %d flushed" % (len(lines) - 1, flushed + 1))
            parsed = [json.loads(line) for line in lines[:-1]]
            check(all("api_server" in p for p in parsed), "FIFO lines")
            last = parsed[-1]
            check(last["logger"]["metrics_fails"] == 4 and
                  last["api_server"]["PUT /actions"]["400"] == 4,
                  "dropped lines counted, their changes carried to the next line: %r" % last["logger"])
        finally:
            os.close(reader)
        log_reader = os.open(log_fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            text = os.read(log_reader, 1 << 20).decode()
            check("FlushMetrics" in text or "/actions" in text, "log lines in the FIFO: %r" % text[-300:])
        finally:
            os.close(log_reader)
        # SIGTERM before the machine starts: exit status 128 + 15, socket removed.
        e.proc.terminate()
        check(e.wait() == 128 + 15, "status after SIGTERM")
        check(not os.path.exists(e.sock), "socket removed after SIGTERM")
    finally:
        e.kill()
    # SIGTERM while a machine runs: it is stopped, same status.
    e = Ember(tmp, name="running")
    try:
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "start")
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "guest up")
        e.proc.terminate()
        check(e.wait() == 128 + 15, "status after SIGTERM of a running machine")
    finally:
        e.kill()


def test_entropy_vsock(tmp):
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/entropy", {}), 204, "entropy")
        expect(e.req("PUT", "/entropy", {"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}),
               204, "entropy with limiter")
        check(e.req("GET", "/vm/config").json()["entropy"]["rate_limiter"]["bandwidth"]["size"] == 1000,
              "stored")
        expect(e.req("PUT", "/entropy", {"rate": 5}), 400, "unknown field", "unknown field")
        vsock_path = os.path.join(tmp, "v.sock")
        r = e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": vsock_path, "vsock_id": "vs0"})
        expect(r, 204, "vsock")
        # vsock_id is deprecated in Firecracker: the answer says so.
        check(r.headers.get("deprecation") == "true", "vsock_id: Deprecation header: %r" % r.headers)
        vs = e.req("GET", "/vm/config").json()["vsock"]
        check(vs == {"guest_cid": 3, "uds_path": vsock_path, "vsock_id": "vs0"}, "vsock stored: %r" % vs)
        r = e.req("PUT", "/vsock", {"guest_cid": 3, "uds_path": vsock_path})
        check(r.status == 204 and "deprecation" not in r.headers, "vsock without vsock_id: %r" % r)
        # Any 32-bit CID, as Firecracker takes it: firecracker-containerd sends 0.
        expect(e.req("PUT", "/vsock", {"guest_cid": 0, "uds_path": vsock_path}), 204, "vsock cid 0")
        vs = e.req("GET", "/vm/config").json()["vsock"]
        check(vs["guest_cid"] == 0, "vsock cid 0 stored: %r" % vs)
        expect(e.req("PUT", "/vsock", {"guest_cid": 4294967296, "uds_path": vsock_path}), 400,
               "vsock cid beyond 32 bits", "guest_cid")
    finally:
        e.kill()


UNSUPPORTED = [
    ("GET", "/balloon", None), ("PUT", "/balloon", {"amount_mib": 1, "deflate_on_oom": True}),
    ("PATCH", "/balloon", {"amount_mib": 1}), ("GET", "/balloon/statistics", None),
    ("PATCH", "/balloon/statistics", {"stats_polling_interval_s": 1}),
    ("PATCH", "/balloon/hinting/start", {}), ("GET", "/balloon/hinting/status", None),
    ("PATCH", "/balloon/hinting/stop", {}),
    ("GET", "/hotplug/memory", None), ("PUT", "/hotplug/memory", {"total_size_mib": 128}),
    ("PATCH", "/hotplug/memory", {"requested_size_mib": 128}),
]


def make_pmem_file(tmp, name, size, data=b""):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(data)
    return path


def test_pmem(tmp):
    """PUT /pmem/{id} with Firecracker's body and rules, the pmem section of GET /vm/config,
    PATCH /pmem/{id} after start (rate limiter), the pmem metrics groups, and a guest started
    with pmem devices mapped above its RAM."""
    p0 = make_pmem_file(tmp, "p0.img", (3 << 20) + 5, b"ember pmem")
    p1 = make_pmem_file(tmp, "p1.img", 2 << 20)
    empty = make_pmem_file(tmp, "empty.img", 0)
    metrics = os.path.join(tmp, "pmem-metrics.json")
    rl = {"bandwidth": None, "ops": {"size": 10, "one_time_burst": None, "refill_time": 1000}}
    e = Ember(tmp, ["--level", "Info"])
    try:
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 204, "metrics")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD,
                                             "boot_args": "console=ttyS0 reboot=k panic=1"}), 204, "boot")
        expect(e.req("PUT", "/pmem/p0", {"id": "p0", "path_on_host": p0, "root_device": True,
                                         "read_only": False, "rate_limiter": rl}), 204, "root pmem")
        expect(e.req("PUT", "/pmem/p1", {"id": "p1", "path_on_host": p1, "read_only": True}), 204,
               "read-only pmem, defaults")
        expect(e.req("PUT", "/pmem/p1", {"id": "p1", "path_on_host": p1, "read_only": True}), 204,
               "the same again replaces it")
        cfg = e.req("GET", "/vm/config").json()
        check(cfg["pmem"] == [
            {"id": "p0", "path_on_host": p0, "root_device": True, "read_only": False, "rate_limiter": rl},
            {"id": "p1", "path_on_host": p1, "root_device": False, "read_only": True, "rate_limiter": None}],
            "pmem in Firecracker's shape, in order: %r" % cfg["pmem"])
        image = make_image(tmp, "d.img", 4096)
        bad = [
            ("/pmem/other", {"id": "x", "path_on_host": p1}, "differs"),
            ("/pmem/x", {"id": "x"}, "missing field `path_on_host`"),
            ("/pmem/x", {"path_on_host": p1}, "missing field `id`"),
            ("/pmem/x", {"id": "x", "path_on_host": p1, "size": 1}, "unknown field `size`"),
            ("/pmem/x", {"id": "x", "path_on_host": p1, "read_only": "yes"}, "read_only"),
            ("/pmem/x", {"id": "x", "path_on_host": 7}, "path_on_host"),
            ("/pmem/x", {"id": "x", "path_on_host": "/nonexistent/p"}, "/nonexistent/p"),
            ("/pmem/x", {"id": "x", "path_on_host": tmp}, "not a regular file"),
            ("/pmem/x", {"id": "x", "path_on_host": empty}, "empty"),
            ("/pmem/x", {"id": "x", "path_on_host": p1, "rate_limiter": {"ops": {"size": 1}}},
             "refill_time"),
            ("/pmem/x", {"id": "x", "path_on_host": p1, "root_device": True},
             "Pmem config error: A root pmem device already exist"),
            ("/pmem/a-b", {"id": "a-b", "path_on_host": p1}, "alphanumeric"),
            ("/drives/root", {"drive_id": "root", "path_on_host": image, "is_root_device": True},
             "Drive config error: Attempt to add block as a root device while the root device defined "
             "as a pmem device"),
        ]
        for path, body, msg in bad:
            expect(e.req("PUT", path, body), 400, "PUT %s %r" % (path, body), msg)
        expect(e.req("PUT", "/pmem/p0", {"id": "p0", "path_on_host": p0, "root_device": True}), 204,
               "the root pmem replaced by itself")
        # The other way round: a root drive first, then a root pmem.
        expect(e.req("PUT", "/pmem/p0", {"id": "p0", "path_on_host": p0, "rate_limiter": rl}), 204,
               "p0 no longer root")
        expect(e.req("PUT", "/drives/root", {"drive_id": "root", "path_on_host": image,
                                             "is_root_device": True}), 204, "root drive")
        expect(e.req("PUT", "/pmem/p1", {"id": "p1", "path_on_host": p1, "root_device": True}), 400,
               "a root pmem beside a root drive",
               "Pmem config error: Attempt to add pmem as a root device while the root device defined "
               "as a block device")
        expect(e.req("PATCH", "/pmem/p0", {"id": "p0", "rate_limiter": rl}), 400, "PATCH before start",
               "InstanceStart")
        expect(e.req("PATCH", "/pmem/p0", {"id": "p0", "path_on_host": p1}), 400, "PATCH of the path",
               "unknown field `path_on_host`")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r" % e.stdout())
        log = e.stderr()
        m = re.search(r"pmem0: \S+, (\d+) bytes at 0x([0-9a-f]+) \((\d+) MiB\), read-write", log)
        check(m and int(m.group(1)) == (3 << 20) + 5 and int(m.group(3)) == 4
              and int(m.group(2), 16) >= 1 << 32 and int(m.group(2), 16) % (2 << 20) == 0,
              "pmem0 mapped whole, rounded up to 2 MiB, above RAM and the hole: %r" % log)
        m1 = re.search(r"pmem1: \S+, \d+ bytes at 0x([0-9a-f]+) \(2 MiB\), read-only", log)
        check(m and m1 and int(m1.group(1), 16) == int(m.group(2), 16) + (4 << 20),
              "pmem1 right after pmem0: %r" % log)
        expect(e.req("PUT", "/pmem/p2", {"id": "p2", "path_on_host": p1}), 400, "PUT after start",
               "before the machine starts")
        expect(e.req("PATCH", "/pmem/p0", {"id": "p0", "rate_limiter": {"ops": {"size": 5, "refill_time": 100}}}),
               204, "PATCH the rate limiter")
        check(e.req("GET", "/vm/config").json()["pmem"][0]["rate_limiter"]["ops"]["size"] == 5,
              "the new limit shown")
        expect(e.req("PATCH", "/pmem/nope", {"id": "nope"}), 400, "PATCH of an unknown device",
               "Unable to patch the pmem device")
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
        with open(metrics) as f:
            line = json.loads(f.read().splitlines()[-1])
        fields = {"activate_fails", "cfg_fails", "event_fails", "queue_event_count",
                  "rate_limiter_throttled_events", "rate_limiter_event_count"}
        check(all(fields <= set(line.get(k, {})) for k in ("pmem", "pmem_p0", "pmem_p1")),
              "pmem metrics groups: %r" % {k: v for k, v in line.items() if k.startswith("pmem")})
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "the guest ended: %s" % e.stderr())
    finally:
        e.kill()
    # The configuration file's pmem section, and its root device rules.
    doc = {"boot-source": {"kernel_image_path": HELLO, "boot_args": "console=ttyS0 reboot=k panic=1"},
           "pmem": [{"id": "root", "path_on_host": p0, "root_device": True, "read_only": True}]}
    e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, doc, "pmem.json")], api=False,
              name="pmem-file")
    status = e.wait()
    check(status == 0 and re.search(r"command line: .*root=/dev/pmem0 ro", e.stdout()),
          "a root pmem from the file: %d %r %s" % (status, e.stdout(), e.stderr()))
    bad_doc = dict(doc, drives=[{"drive_id": "r", "path_on_host": image, "is_root_device": True}])
    e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, bad_doc, "pmem-bad.json")], api=False,
              name="pmem-bad")
    status = e.wait()
    check(status == 2 and "Attempt to add pmem as a root device" in e.stderr(),
          "a root pmem and a root drive in one file: %d %r" % (status, e.stderr()))


def test_unsupported_and_unknown_routes(tmp):
    e = Ember(tmp)
    try:
        for method, path, body in UNSUPPORTED:
            expect(e.req(method, path, body), 400, "%s %s" % (method, path), "does not support")
        for method, path in [("GET", "/nope"), ("DELETE", "/"), ("POST", "/actions"), ("GET", "/actions"),
                             ("PUT", "/"), ("GET", "/boot-source"), ("PUT", "/machine-config/x"),
                             ("GET", "/drives/a/b"), ("DELETE", "/mmds")]:
            expect(e.req(method, path, {"x": 1} if method != "GET" else None), 400,
                   "%s %s" % (method, path), "invalid request method and/or path")
        expect(e.req("PUT", "/machine-config", raw_body=b""), 400, "empty body", "empty")
        expect(e.req("PUT", "/machine-config", raw_body=b"{\"vcpu_count\": "), 400, "bad JSON", "JSON")
        expect(e.req("PUT", "/actions", {"action_type": "Explode"}), 400, "unknown action", "action_type")
        expect(e.req("PATCH", "/vm", {"state": "Paused"}), 400, "pause before start", "InstanceStart")
        expect(e.req("PATCH", "/vm", {"state": "Sleeping"}), 400, "unknown state", "state")
        expect(e.req("PUT", "/vm/nmi", {}), 400, "NMI before start", "InstanceStart")
        expect(e.req("PUT", "/vm/nmi", {"vcpu": 0}), 400, "NMI with fields", "empty object")
        expect(e.req("GET", "/vm/nmi"), 400, "GET /vm/nmi", "invalid request method and/or path")
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 400, "Ctrl+Alt+Del before start",
               "InstanceStart")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 400, "start without a kernel",
               "boot")
        serving(e)
    finally:
        e.kill()

MMDS_NOT_INIT = "MMDS error: The MMDS data store is not initialized."
MMDS_TOO_BIG = "MMDS limit exceeded error: The MMDS patch request doesn't fit."


def test_mmds_routes(tmp):
    """PUT/PATCH/GET /mmds and PUT /mmds/config with Firecracker's statuses and messages."""
    e = Ember(tmp, ["--mmds-size-limit", "200"])
    try:
        r = e.req("GET", "/mmds")
        check(r.status == 200 and r.json() == {}, "GET /mmds before any PUT: %r" % r)
        expect(e.req("PATCH", "/mmds", {"a": 1}), 400, "PATCH before PUT", MMDS_NOT_INIT)
        doc = {"latest": {"meta-data": {"ami-id": "ami-1", "reservation-id": "r-1"}}, "b": [1, 2]}
        expect(e.req("PUT", "/mmds", doc), 204, "PUT /mmds")
        r = e.req("GET", "/mmds")
        check(r.status == 200 and r.json() == doc, "GET /mmds: %r" % r)
        check(r.body.index('"b"') < r.body.index('"latest"'), "keys sorted: %r" % r.body)
        # RFC 7396: null removes, objects merge, anything else replaces.
        expect(e.req("PATCH", "/mmds", {"latest": {"meta-data": {"ami-id": None, "x": "y"}}, "b": "c"}),
               204, "PATCH /mmds")
        want = {"latest": {"meta-data": {"reservation-id": "r-1", "x": "y"}}, "b": "c"}
        check(e.req("GET", "/mmds").json() == want, "merged: %r" % e.req("GET", "/mmds"))
        # The size limit (--mmds-size-limit 200), checked on the result; nothing changes.
        expect(e.req("PUT", "/mmds", {"k": "v" * 300}), 413, "PUT over the limit", MMDS_TOO_BIG)
        expect(e.req("PATCH", "/mmds", {"k": "v" * 300}), 413, "PATCH over the limit", MMDS_TOO_BIG)
        check(e.req("GET", "/mmds").json() == want, "unchanged after 413s")
        expect(e.req("PUT", "/mmds", raw_body=b"{nope"), 400, "bad JSON", "JSON")
        expect(e.req("DELETE", "/mmds", None), 400, "DELETE", "invalid request method and/or path")
        expect(e.req("GET", "/mmds/config"), 400, "GET /mmds/config", "invalid request method and/or path")
        # /mmds/config: Firecracker's checks in its order, with its words ("MMMDS" included).
        prefix = "MMMDS config error: "
        expect(e.req("PUT", "/mmds/config", {"network_interfaces": ["eth0"]}), 400, "unknown interface",
               prefix + "The list of network interface IDs provided contains at least one ID that does "
               "not correspond to any existing network interface.")
        tap = "embermm%d" % (os.getpid() % 10000)
        expect(e.req("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap}), 204,
               "interface")
        expect(e.req("PUT", "/mmds/config", {"network_interfaces": []}), 400, "empty list",
               prefix + "The list of network interface IDs that allow forwarding MMDS requests is empty.")
        for addr in ("169.254.0.7", "169.254.255.1", "10.0.0.1", "1.1.1.1"):
            expect(e.req("PUT", "/mmds/config", {"network_interfaces": ["eth0"], "ipv4_address": addr}), 400,
                   "address %s" % addr, prefix + "The MMDS IPv4 address is not link local.")
        for body, msg in [({"network_interfaces": ["eth0"], "ipv4_address": "169.254.1"}, "IPv4"),
                          ({"network_interfaces": ["eth0"], "ipv4_address": "169.254.01.1"}, "IPv4"),
                          ({"network_interfaces": ["eth0"], "version": "V3"}, "version"),
                          ({"network_interfaces": "eth0"}, "network_interfaces"),
                          ({"version": "V2"}, "network_interfaces"),
                          ({"network_interfaces": ["eth0"], "imds_compat": "yes"}, "imds_compat"),
                          ({"network_interfaces": ["eth0"], "frob": 1}, "unknown field")]:
            expect(e.req("PUT", "/mmds/config", body), 400, "PUT /mmds/config %r" % body, msg)
        check(e.req("GET", "/vm/config").json()["mmds-config"] is None, "no mmds-config yet")
        r = e.req("PUT", "/mmds/config", {"network_interfaces": ["eth0"], "version": "V2",
                                          "ipv4_address": "169.254.170.2", "imds_compat": True})
        expect(r, 204, "valid config")
        check("deprecation" not in r.headers, "V2 is not deprecated: %r" % r.headers)
        shown = e.req("GET", "/vm/config").json()["mmds-config"]
        check(shown == {"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.170.2",
                        "imds_compat": True}, "GET /vm/config shows it: %r" % shown)
        r = e.req("PUT", "/mmds/config", {"network_interfaces": ["eth0"]})
        expect(r, 204, "again, defaults")
        # V1 (the default) is deprecated in Firecracker: the answer says so.
        check(r.headers.get("deprecation") == "true", "V1: Deprecation header: %r" % r.headers)
        shown = e.req("GET", "/vm/config").json()["mmds-config"]
        check(shown == {"version": "V1", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254",
                        "imds_compat": False}, "defaults: %r" % shown)
        # After start: the store keeps working, the configuration is fixed.
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r %s" % (e.stdout(), e.stderr()))
        expect(e.req("PATCH", "/mmds", {"b": None}), 204, "PATCH after start")
        check(e.req("GET", "/mmds").json() == {"latest": {"meta-data": {"reservation-id": "r-1", "x": "y"}}},
              "GET after start")
        expect(e.req("PUT", "/mmds/config", {"network_interfaces": ["eth0"]}), 400, "config after start",
               "InstanceStart")
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "exit: %s" % e.stderr())
    finally:
        e.kill()
    # A machine started without any MMDS request still has its store, as in Firecracker:
    # empty, not initialized until a PUT.
    e = Ember(tmp, [], name="no-mmds")
    try:
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.req("GET", "/mmds").json() == {}, "GET /mmds without MMDS: empty")
        expect(e.req("PATCH", "/mmds", {"a": 1}), 400, "PATCH /mmds before a PUT", MMDS_NOT_INIT)
        expect(e.req("PUT", "/mmds", {"a": 1}), 204, "PUT /mmds after a start without MMDS")
        expect(e.req("PATCH", "/mmds", {"b": 2}), 204, "PATCH /mmds after that PUT")
        check(e.req("GET", "/mmds").json() == {"a": 1, "b": 2}, "GET /mmds after PUT and PATCH")
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r %s" % (e.stdout(), e.stderr()))
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "exit: %s" % e.stderr())
    finally:
        e.kill()


def test_mmds_flags_and_config_file(tmp):
    """--metadata, --mmds-size-limit (its default follows --http-api-max-payload-size) and the
    configuration file's mmds-config section."""
    meta = os.path.join(tmp, "meta.json")
    with open(meta, "w") as f:
        json.dump({"latest": {"user-data": "hello"}}, f)
    e = Ember(tmp, ["--metadata", meta], name="meta")
    try:
        check(e.req("GET", "/mmds").json() == {"latest": {"user-data": "hello"}}, "--metadata loaded")
        expect(e.req("PATCH", "/mmds", {"latest": {"x": "1"}}), 204, "PATCH after --metadata")
    finally:
        e.kill()
    e = Ember(tmp, ["--http-api-max-payload-size", "100000"], name="big")
    try:
        expect(e.req("PUT", "/mmds", {"k": "v" * 60000}), 204, "limit follows the payload size")
        expect(e.req("PATCH", "/mmds", {"j": "v" * 40000}), 413, "but no further", MMDS_TOO_BIG)
    finally:
        e.kill()
    bad_meta = os.path.join(tmp, "bad.json")
    with open(bad_meta, "w") as f:
        f.write("{not json")
    for args, msg in [(["--metadata", bad_meta], "not valid JSON"),
                      (["--metadata", os.path.join(tmp, "missing.json")], "cannot open"),
                      (["--metadata", meta, "--mmds-size-limit", "10"], "size limit"),
                      (["--mmds-size-limit", "lots"], "--mmds-size-limit")]:
        out = subprocess.run([EMBER, "--api-sock", os.path.join(tmp, "x.sock")] + args, capture_output=True,
                             text=True, timeout=PATIENCE_S)
        check(out.returncode == 2 and msg in out.stderr, "%r: %d %r" % (args, out.returncode, out.stderr))
    tap = "embermc%d" % (os.getpid() % 10000)
    doc = {"boot-source": {"kernel_image_path": KEYBOARD},
           "network-interfaces": [{"iface_id": "eth0", "host_dev_name": tap}],
           "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]}}
    e = Ember(tmp, ["--config-file", write_config(tmp, doc), "--metadata", meta], name="cfg")
    try:
        shown = e.req("GET", "/vm/config").json()["mmds-config"]
        check(shown == {"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254",
                        "imds_compat": False}, "mmds-config from the file: %r" % shown)
        check(e.req("GET", "/mmds").json() == {"latest": {"user-data": "hello"}}, "metadata with a config file")
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r %s" % (e.stdout(), e.stderr()))
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "exit: %s" % e.stderr())
    finally:
        e.kill()
    for i, (section, msg) in enumerate([({"network_interfaces": ["eth9"]}, "does not correspond"),
                                        ({"network_interfaces": ["eth0"], "ipv4_address": "8.8.8.8"},
                                         "not link local")]):
        bad = dict(doc, **{"mmds-config": section})
        e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, bad, "bad%d.json" % i)], api=False,
                  name="badcfg%d" % i)
        status = e.wait()
        check(status == 2 and msg in e.stderr(), "bad mmds-config %d: %d %r" % (i, status, e.stderr()))



def test_mmds_guest(tmp):
    """The guest side, from guest/mmds.c (raw frames, its own TCP): ARP, V1 and V2 answers,
    out-of-order and duplicate segments, a zero window, RSTs, an oversized head, a flood. None
    of its frames reaches the tap: all go to MMDS (ember's metrics). V2 runs with a CPU
    placement where the host has CPUs 0 and 1, so that MMDS's detour also meets the polling
    transmit path."""
    if os.geteuid() != 0:
        raise Skip("needs root (a tap)")
    guest = os.path.join(GUEST_DIR, "mmds.elf")
    meta = os.path.join(tmp, "meta.json")
    with open(meta, "w") as f:
        json.dump({"latest": {"meta-data": {"ami-id": "ami-12345678", "hostname": "mmds-guest"}}}, f)
    for version in ("V1", "V2"):
        metrics = os.path.join(tmp, "metrics-%s.json" % version)
        tap = "embermg%d" % (os.getpid() % 10000)
        doc = {"boot-source": {"kernel_image_path": guest,
                               "boot_args": "console=ttyS0 mmds_version=%s" % version},
               "network-interfaces": [{"iface_id": "eth0", "host_dev_name": tap,
                                       "guest_mac": "52:54:00:12:34:56"}],
               "mmds-config": {"version": version, "network_interfaces": ["eth0"]},
               "metrics": {"metrics_path": metrics}}
        if version == "V2" and {0, 1} <= os.sched_getaffinity(0):
            doc["machine-config"] = {"vcpu_count": 1, "mem_size_mib": 128,
                                     "cpu_placement": {"vmm": "1", "vcpu": "0"}}
        e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, doc, "mmds-%s.json" % version),
                        "--metadata", meta], api=False, name="mmds-" + version)
        status = e.wait()
        out = e.stdout()
        lines = [l for l in out.splitlines() if l.startswith(("ok ", "not ok "))]
        check(status == 0 and len(lines) == 11 and not any(l.startswith("not ok") for l in lines),
              "mmds guest, %s: status %d\n%s\n%s" % (version, status, out, e.stderr()))
        totals = {}
        with open(metrics) as f:
            for line in f:
                for group in ("mmds", "net_eth0"):
                    for k, v in json.loads(line).get(group, {}).items():
                        if isinstance(v, int):  # not the latency aggregates
                            totals[(group, k)] = totals.get((group, k), 0) + v
        check(totals[("net_eth0", "tx_packets_count")] == 0 and totals[("net_eth0", "tx_dropped_count")] == 0,
              "%s: no guest frame reached the tap: %r" % (version, totals))
        check(totals[("mmds", "rx_accepted")] >= 300 and totals[("mmds", "connections_created")] >= 200 and
              totals[("mmds", "rx_accepted_err")] >= 60 and
              totals[("mmds", "tx_frames")] == totals[("net_eth0", "rx_packets_count")],
              "%s: the mmds metrics count the guest's traffic: %r" % (version, totals))
        if version == "V2":
            check(totals[("mmds", "rx_no_token")] >= 1, "V2 counted the GET without a token")
        if "machine-config" in doc:
            print("#   mmds guest, %s, polling: found work %d times, %d as it stopped" %
                  (version, totals[("net_eth0", "poll_hits")], totals[("net_eth0", "poll_races")]))


def test_lifecycle(tmp):
    root = make_image(tmp, "root.img", 1 << 20)
    bigger = make_image(tmp, "bigger.img", 4 << 20)
    metrics = os.path.join(tmp, "m.json")
    e = Ember(tmp, ["--level", "Info"])
    try:
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 204, "metrics")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 64}), 204, "machine")
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": root,
                                                "is_root_device": True, "is_read_only": False}), 204, "drive")
        expect(e.req("PUT", "/entropy", {}), 204, "entropy")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.req("GET", "/").json()["state"] == "Running", "state Running")
        check(e.wait_output("tick 1"), "the guest runs: %r" % e.stdout())
        after_start = [
            ("PUT", "/boot-source", {"kernel_image_path": HELLO}),
            ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 64}),
            ("PATCH", "/machine-config", {"vcpu_count": 2}),
            ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": root, "is_root_device": True}),
            ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0"}),
            ("PUT", "/logger", {"level": "Debug"}),
            ("PUT", "/metrics", {"metrics_path": metrics}),
            ("PUT", "/entropy", {}),
            ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/v"}),
            ("PUT", "/actions", {"action_type": "InstanceStart"}),
        ]
        for method, path, body in after_start:
            expect(e.req(method, path, body), 400, "%s %s after start" % (method, path), "before the machine starts")
        check(e.req("GET", "/machine-config").json()["mem_size_mib"] == 64, "machine-config after start")
        expect(e.req("PATCH", "/vm", {"state": "Paused"}), 204, "pause")
        check(e.req("GET", "/").json()["state"] == "Paused", "state Paused")
        # The pause is answered once every vCPU has parked, and the guest's output is written
        # from its vCPU: what is in the file now is all it printed. Its PIT ticks every second;
        # three seconds would show ticks had it run.
        before = e.stdout().count("tick")
        time.sleep(3)
        check(e.stdout().count("tick") == before, "the guest ran while paused")
        expect(e.req("PATCH", "/vm", {"state": "Paused"}), 204, "pause twice")
        expect(e.req("PATCH", "/vm", {"state": "Resumed"}), 204, "resume")
        check(e.req("GET", "/").json()["state"] == "Running", "state Running again")
        check(e.wait_output("tick %d" % (before + 1)), "the guest runs after resume")
        expect(e.req("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": bigger}), 204,
               "PATCH path_on_host")
        check(e.req("GET", "/vm/config").json()["drives"][0]["path_on_host"] == bigger, "new path shown")
        expect(e.req("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/nonexistent"}), 400,
               "PATCH to a missing file", "/nonexistent")
        expect(e.req("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "rate_limiter": {
            "bandwidth": {"size": 1000, "refill_time": 10}}}), 204, "PATCH rate_limiter")
        expect(e.req("PATCH", "/drives/nosuch", {"drive_id": "nosuch", "path_on_host": bigger}), 400,
               "PATCH unknown drive", "nosuch")
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "flush")
        with open(metrics) as f:
            line = json.loads(f.read().splitlines()[-1])
        check(line["vcpu"]["exits"] > 0 and "block" in line and "uart" in line and "entropy" in line,
              "machine metrics %r" % line)
        check(line["uart"]["tx_bytes"] > 0, "serial bytes counted %r" % line["uart"])
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        status = e.wait()
        check(status == 0, "exit status after Ctrl+Alt+Del: %d\n%s" % (status, e.stderr()))
        check("received Ctrl+Alt+Del" in e.stdout(), "the guest saw the keys: %r" % e.stdout()[-300:])
        check(not os.path.exists(e.sock), "socket removed at exit")
        with open(metrics) as f:
            check(len(f.read().splitlines()) == 2, "metrics flushed at exit")
    finally:
        e.kill()


def test_concurrent_clients(tmp):
    e = Ember(tmp)
    errors = []

    def client(n):
        try:
            c = Conn(e.sock)
            for i in range(40):
                if i % 4 == 3:
                    r = c.request("PATCH", "/machine-config", {"vcpu_count": 1 + (n + i) % 4})
                    if r.status != 204:
                        errors.append(r)
                else:
                    r = c.request("GET", "/" if i % 2 else "/machine-config")
                    if r.status != 200 or not r.json():
                        errors.append(r)
            c.close()
        except Exception as ex:  # noqa: BLE001 - every failure is reported
            errors.append(repr(ex))

    try:
        threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(PATIENCE_S)
        check(not any(t.is_alive() for t in threads), "clients still waiting after %d s" % PATIENCE_S)
        check(not errors, "%d errors, first: %r" % (len(errors), errors[:1]))
        if VERBOSE:
            print("# 32 clients x 40 requests in %.2f s" % (time.monotonic() - start))
        serving(e)
    finally:
        e.kill()


def test_http_robustness(tmp):
    e = Ember(tmp)
    try:
        def bad(raw, status, what):
            c = Conn(e.sock)
            c.send_raw(raw)
            r = c.read_response()
            expect(r, status, what)
            check(c.closed_by_peer(), "%s: connection left open" % what)
            c.close()
            serving(e, "after " + what)

        bad(b"garbage\r\n\r\n", 400, "garbage request line")
        bad(b"GET / HTTP/2.0\r\n\r\n", 400, "HTTP/2.0")
        bad(b"GET noslash HTTP/1.1\r\n\r\n", 400, "target without /")
        bad(b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "header without a colon")
        bad(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "space in a header name")
        bad(b"PUT /vm HTTP/1.1\r\nContent-Length: 12x\r\n\r\n", 400, "bad Content-Length")
        bad(b"PUT /vm HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400, "two lengths")
        bad(b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 501, "chunked")
        bad(b"PUT /vm HTTP/1.1\r\nContent-Length: 51201\r\n\r\n", 400, "body over the limit")
        bad(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n", 400, "long request line")
        bad(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 1500 + b"\r\n" * 1 +
            b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(10)) + b"\r\n", 400, "huge headers")
        bad(b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(100)) + b"\r\n", 400,
            "too many headers")
        bad(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, "control character in a value")
        bad(b"\x00\xff\xfe\r\n\r\n", 400, "binary junk")

        # A body at the limit is read whole (and judged as JSON).
        c = Conn(e.sock)
        head = b'{"vcpu_count": 1, "mem_size_mib": 128'
        body = head + b" " * (51200 - len(head) - 1) + b"}"
        check(len(body) == 51200, "test body size")
        r = c.request("PUT", "/machine-config", raw_body=body)
        expect(r, 204, "a body of exactly 51200 bytes")
        c.close()

        # Pipelined: ten requests in one write, ten answers in order.
        c = Conn(e.sock)
        reqs = b""
        for i in range(10):
            reqs += encode_request("PATCH", "/machine-config", {"vcpu_count": i + 1})
            reqs += encode_request("GET", "/machine-config", None)
        c.send_raw(reqs)
        for i in range(10):
            expect(c.read_response(), 204, "pipelined PATCH %d" % i)
            r = c.read_response()
            check(r.status == 200 and r.json()["vcpu_count"] == i + 1, "pipelined GET %d in order: %r" % (i, r))
        c.close()

        # Byte by byte, within the deadline: a request split over many reads.
        c = Conn(e.sock)
        for b in encode_request("PATCH", "/machine-config", {"vcpu_count": 3}):
            c.send_raw(bytes([b]))
            time.sleep(0.001)
        expect(c.read_response(), 204, "request sent byte by byte")
        c.close()

        # Expect: 100-continue, as curl sends for larger bodies.
        c = Conn(e.sock)
        raw = json.dumps({"vcpu_count": 2, "mem_size_mib": 128}).encode()
        c.send_raw(b"PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(raw))
        expect(c.read_response(), 100, "100 Continue")
        c.send_raw(raw)
        expect(c.read_response(), 204, "body after 100 Continue")
        c.close()

        # Connection: close and HTTP/1.0 end the connection after the answer.
        for req in (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n"):
            c = Conn(e.sock)
            c.send_raw(req)
            expect(c.read_response(), 200, req.decode().split("\r\n")[0])
            check(c.closed_by_peer(), "closed after Connection: close / HTTP/1.0")
            c.close()

        # A client that dribbles and stops is dropped; others are served meanwhile.
        # The server's clock starts when it reads the first byte, after t0: the drop cannot
        # come sooner than REQUEST_TIMEOUT_S after t0, however fast or slow the machine.
        t0 = time.monotonic()
        slow = Conn(e.sock)
        slow.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"vcpu")
        idle = Conn(e.sock)  # connected, sends nothing: allowed to stay
        for _ in range(5):
            serving(e, "while a slow client holds a connection")
        dropped = slow.closed_by_peer()
        check(dropped, "a slow client was not dropped within %d s" % PATIENCE_S)
        check(time.monotonic() - t0 >= REQUEST_TIMEOUT_S, "the slow client was dropped too early")
        r = idle.request("GET", "/")
        expect(r, 200, "an idle keep-alive connection still works")
        idle.close()

        # A peer that goes away mid-request, and one that half-closes after sending.
        c = Conn(e.sock)
        c.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        c.close()
        c = Conn(e.sock)
        c.send_raw(encode_request("GET", "/", None))
        c.sock.shutdown(socket.SHUT_WR)
        expect(c.read_response(), 200, "answer after the client half-closed")
        c.close()

        # As many connections as the server keeps, held open, each served.
        conns = [Conn(e.sock) for _ in range(MAX_CONNECTIONS)]
        for c in conns:
            expect(c.request("GET", "/"), 200, "one of %d open connections" % MAX_CONNECTIONS)
        for c in conns:
            c.close()
        serving(e, "at the end")
        check(e.alive(), "ember died")
    finally:
        e.kill()


def keyboard_config(tmp):
    """A configuration file that starts the keyboard guest (it idles until Ctrl+Alt+Del): as
    in Firecracker, FlushMetrics needs a started machine, and one started from the file costs
    the tests that count requests and connections none of either."""
    path = os.path.join(tmp, "keyboard.json")
    with open(path, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": KEYBOARD, "boot_args": "console=ttyS0"},
                   "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}, f)
    return path


def start_keyboard(e):
    expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
    expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")


def flush_metrics(sock, path):
    """FlushMetrics on a connection of its own; the api_server group of the line written."""
    c = Conn(sock)
    try:
        expect(c.request("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
    finally:
        c.close()
    with open(path) as f:
        return json.loads(f.read().splitlines()[-1])["api_server"]


def test_idle_timeout(tmp):
    metrics = os.path.join(tmp, "metrics.json")
    idle_s, request_s = 1.0, 2.0
    e = Ember(tmp, ["--http-api-idle-timeout-ms", "%d" % (idle_s * 1000),
                    "--http-api-request-timeout-ms", "%d" % (request_s * 1000), "--metrics-path", metrics,
                    "--config-file", keyboard_config(tmp)])
    try:
        # The idle clock starts after the answer, which is after t0: the close cannot come
        # sooner than idle_s after t0.
        t0 = time.monotonic()
        idle = Conn(e.sock)
        expect(idle.request("GET", "/"), 200, "a request before idling")
        # A request in progress is not idle: this one is cut off by the request timeout, with
        # a 408, not closed silently by the idle timeout that falls due before it.
        busy = Conn(e.sock)
        busy.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{")
        check(idle.closed_by_peer(), "an idle connection stayed open for %d s" % PATIENCE_S)
        elapsed = time.monotonic() - t0
        check(elapsed >= idle_s, "an idle connection was closed after %.2f s, before its time" % elapsed)
        expect(busy.read_response(), 408, "a partial request outlives the idle timeout")
        check(busy.closed_by_peer(), "closed after the 408")
        check(time.monotonic() - t0 >= request_s, "the 408 came before the request timeout")
        for c in (idle, busy):
            c.close()
        api = flush_metrics(e.sock, metrics)
        check(api.get("connections_idle_timeout_count") == 1 and
              api.get("connections_request_timeout_count") == 1,
              "idle and request timeouts counted: %r" % api)
        serving(e, "after the timeouts")
    finally:
        e.kill()


def test_connection_bound(tmp):
    metrics = os.path.join(tmp, "metrics.json")
    # Requests in progress must outlast the test, however slow the machine.
    e = Ember(tmp, ["--http-api-request-timeout-ms", "%d" % (PATIENCE_S * 1000), "--metrics-path", metrics,
                    "--config-file", keyboard_config(tmp),
                    "--level", "Info"])
    conns = []
    try:
        # Every connection answered once (so the server has taken each), then given a request in
        # progress: none is idle, so the server has nothing to make room with.
        for i in range(MAX_CONNECTIONS):
            c = Conn(e.sock)
            conns.append(c)
            expect(c.request("GET", "/"), 200, "connection %d" % i)
        for c in conns:
            c.send_raw(b"GET /machine-config HTTP/1.1\r\n")
        # The next client gets Firecracker's answer to a full server: 503, Connection: close,
        # a JSON body with an "error", and the connection closed.
        extra = Conn(e.sock)
        r = extra.read_response()
        expect(r, 503, "a client beyond %d connections" % MAX_CONNECTIONS)
        check(r.headers.get("connection") == "close", "503 with Connection: close: %r" % r.headers)
        check(r.headers.get("content-type") == "application/json" and r.json().get("error"),
              "503 body: %r" % r.body)
        check(extra.closed_by_peer(), "the refused connection was left open")
        extra.close()
        # One finishes its request and is idle: a newcomer is let in in its place.
        conns[5].send_raw(b"\r\n")
        expect(conns[5].read_response(), 200, "the request completed")
        newcomer = Conn(e.sock)
        expect(newcomer.request("GET", "/"), 200, "a newcomer admitted by closing an idle connection")
        check(conns[5].closed_by_peer(), "the idle connection was not the one closed")
        for c in conns[:3]:
            c.send_raw(b"\r\n")
            expect(c.read_response(), 200, "the other requests in progress were kept")
        for c in conns + [newcomer]:
            c.close()
        conns = []
        api = flush_metrics(e.sock, metrics)
        check(api.get("connections_refused_count") == 1 and api.get("connections_evicted_count") == 1,
              "refusals and evictions counted: %r" % api)
        # Admitted: the start-up probe, the MAX_CONNECTIONS, the newcomer and the metrics' own.
        check(api.get("connections_accepted_count") == MAX_CONNECTIONS + 3,
              "admitted connections counted: %r" % api)
        err = e.stderr()
        check(err.count("refused a client") == 1 and err.count("to admit a new client") == 1,
              "one log line per kind: %r" % err[-800:])
    finally:
        for c in conns:
            c.close()
        e.kill()


def test_idle_holder_does_not_lock_out(tmp):
    metrics = os.path.join(tmp, "metrics.json")
    e = Ember(tmp, ["--metrics-path", metrics, "--config-file", keyboard_config(tmp)])
    conns = []
    try:
        # A client holds every connection the server keeps, idle: each newcomer (kept open, so
        # that the server stays full) is let in in place of the connection idle longest.
        for i in range(MAX_CONNECTIONS):
            c = Conn(e.sock)
            conns.append(c)
            expect(c.request("GET", "/"), 200, "idle holder %d" % i)
        newcomers = []
        for i in range(3):
            c = Conn(e.sock)
            newcomers.append(c)
            expect(c.request("GET", "/"), 200, "newcomer %d while idle connections fill the server" % i)
            check(conns[i].closed_by_peer(), "the connection idle longest was not the one closed (%d)" % i)
        conns += newcomers
        expect(conns[3].request("GET", "/"), 200, "the holder's other connections are kept")
        for c in conns:
            c.close()
        conns = []
        api = flush_metrics(e.sock, metrics)
        check(api.get("connections_evicted_count") == 3 and api.get("connections_refused_count") == 0,
              "evictions counted: %r" % api)
    finally:
        for c in conns:
            c.close()
        e.kill()


def test_pipelined_burst_does_not_starve(tmp):
    # Long deadlines: the burst's client reads its answers only after the other client is done.
    e = Ember(tmp, ["--http-api-request-timeout-ms", "%d" % (PATIENCE_S * 1000)])
    burst_n = 20000
    one = b"GET / HTTP/1.1\r\n\r\n"
    greedy = Conn(e.sock)
    sender = threading.Thread(target=lambda: greedy.send_raw(one * burst_n))
    try:
        sender.start()
        # The server answers the burst a few requests at a time and stops reading it while its
        # answers go unread; the other client is served meanwhile, whatever the machine's speed.
        other = Conn(e.sock)
        for i in range(20):
            expect(other.request("GET", "/machine-config"), 200, "a request while a burst waits (%d)" % i)
        other.close()
        for i in range(burst_n):
            r = greedy.read_response()
            check(r.status == 200, "burst answer %d: %r" % (i, r))
        sender.join(PATIENCE_S)
        check(not sender.is_alive(), "the burst was not read whole")
    finally:
        greedy.close()
        e.kill()


def test_flood_does_not_starve(tmp):
    # Long deadlines: a thread reads the flood's answers, however slowly a loaded machine runs it.
    e = Ember(tmp, ["--http-api-request-timeout-ms", "%d" % (PATIENCE_S * 1000)])
    stop = threading.Event()
    counts = {"sent": 0, "answered": 0, "bad": 0, "errors": []}
    flooder = Conn(e.sock)

    def flood():
        # Pipelines without pause until told to stop; the last request closes the connection.
        try:
            while not stop.is_set():
                flooder.send_raw(b"GET / HTTP/1.1\r\n\r\n" * 64)
                counts["sent"] += 64
            flooder.send_raw(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            counts["sent"] += 1
        except Exception as ex:  # noqa: BLE001 - reported by the test
            counts["errors"].append(repr(ex))

    def drain():
        try:
            while True:
                r = flooder.read_response()
                counts["answered"] += 1
                counts["bad"] += r.status != 200
        except EOFError:
            pass
        except Exception as ex:  # noqa: BLE001 - reported by the test
            counts["errors"].append(repr(ex))

    threads = [threading.Thread(target=flood), threading.Thread(target=drain)]
    try:
        for t in threads:
            t.start()
        other = Conn(e.sock)
        for i in range(40):
            expect(other.request("GET", "/machine-config"), 200, "a request during a flood (%d)" % i)
        other.close()
    finally:
        stop.set()
        for t in threads:
            t.join(PATIENCE_S)
        flooder.close()
        e.kill()
    if VERBOSE:
        print("# flood: %d requests answered while the other client made 40" % counts["answered"])
    check(not any(t.is_alive() for t in threads), "the flood did not end")
    check(not counts["errors"] and counts["answered"] == counts["sent"] and counts["bad"] == 0,
          "the flood's answers: %r" % counts)


def test_dribbler_does_not_starve(tmp):
    request_s = 2.0
    e = Ember(tmp, ["--http-api-request-timeout-ms", "%d" % (request_s * 1000)])
    try:
        # One byte every 2 ms or more: the request, 4 KB, cannot be whole before its deadline,
        # and the bytes that keep coming do not extend it.
        t0 = time.monotonic()
        dribbler = Conn(e.sock)
        other = Conn(e.sock)
        body = b"PUT /machine-config HTTP/1.1\r\nContent-Length: 4000\r\n\r\n" + b" " * 4000
        served = 0
        for i, b in enumerate(body):
            try:
                dribbler.send_raw(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break  # cut off: the answer waits to be read below
            if i % 8 == 0 and served < 40:
                expect(other.request("GET", "/"), 200, "a request beside a dribbler (%d)" % served)
                served += 1
            time.sleep(0.002)
        # A slow machine may have cut the dribbler off before all 40 were asked: the rest now.
        while served < 40:
            expect(other.request("GET", "/"), 200, "a request after a dribbler (%d)" % served)
            served += 1
        expect(dribbler.read_response(), 408, "the dribbler cut off at its deadline")
        check(time.monotonic() - t0 >= request_s, "the dribbler was cut off before its deadline")
        check(dribbler.closed_by_peer(), "the dribbler's connection left open")
        serving(e, "after the dribbler")
        dribbler.close()
        other.close()
    finally:
        e.kill()


def test_max_payload_flag(tmp):
    e = Ember(tmp, ["--http-api-max-payload-size", "100"])
    try:
        c = Conn(e.sock)
        r = c.request("PUT", "/boot-source", {"kernel_image_path": "/" + "k" * 150})
        expect(r, 400, "body over a 100-byte limit", "larger than the limit")
        c.close()
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}), 204, "small body")
    finally:
        e.kill()


def test_getting_started_with_curl(tmp):
    if not shutil.which("curl"):
        raise Skip("curl is not installed")
    rootfs = make_image(tmp, "rootfs.ext4", 8 << 20)
    logfile = os.path.join(tmp, "firecracker.log")
    open(logfile, "w").close()
    e = Ember(tmp)
    sock = e.sock
    try:
        # The sequence of Firecracker's getting-started guide, word for word but for the paths.
        steps = [
            ["curl", "-X", "PUT", "--unix-socket", sock, "--data",
             json.dumps({"log_path": logfile, "level": "Debug", "show_level": True, "show_log_origin": True}),
             "http://localhost/logger"],
            ["curl", "-X", "PUT", "--unix-socket", sock, "--data",
             json.dumps({"kernel_image_path": HELLO, "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}),
             "http://localhost/boot-source"],
            ["curl", "-X", "PUT", "--unix-socket", sock, "--data",
             json.dumps({"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": True,
                         "is_read_only": False}),
             "http://localhost/drives/rootfs"],
            ["curl", "-X", "PUT", "--unix-socket", sock, "--data",
             json.dumps({"vcpu_count": 2, "mem_size_mib": 256}), "http://localhost/machine-config"],
            ["curl", "-X", "PUT", "--unix-socket", sock, "--data", '{"action_type": "InstanceStart"}',
             "http://localhost/actions"],
        ]
        for cmd in steps:
            out = subprocess.run(cmd + ["-s", "-w", "%{http_code}"], capture_output=True, text=True, timeout=PATIENCE_S)
            check(out.stdout.endswith("204"), "%s -> %r %r" % (cmd[-1], out.stdout, out.stderr))
        status = e.wait()
        check(status == 0, "the guest ends the machine: status %d\n%s" % (status, e.stderr()))
        check("ok 1 - hello" in e.stdout(), "guest output %r" % e.stdout())
        with open(logfile) as f:
            check("machine started" in f.read(), "the log file has the start")
    finally:
        e.kill()


def write_config(tmp, doc, name="vm.json"):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def subset_of(want, got):
    """Whether every key and value of want is in got (lists element by element)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and subset_of(v, got[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(want) == len(got) and all(map(subset_of, want, got))
    return want == got


def test_config_file(tmp):
    rootfs = make_image(tmp, "rootfs.ext4", 1 << 20)
    metrics = os.path.join(tmp, "cfg-metrics.json")
    doc = {
        "boot-source": {"kernel_image_path": KEYBOARD, "boot_args": "console=ttyS0 reboot=k panic=1"},
        "drives": [{"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": True,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "metrics": {"metrics_path": metrics},
        "entropy": {},
    }
    cfg = write_config(tmp, doc)
    # With the API: boots at once and the socket serves while the machine runs. The keyboard
    # guest runs until Ctrl+Alt+Del, so the machine cannot end before the test has looked.
    e = Ember(tmp, ["--config-file", cfg], name="with-api")
    try:
        info = e.req("GET", "/").json()
        check(info["state"] == "Running", "GET / after --config-file: %r" % info)
        shown = e.req("GET", "/vm/config").json()
        # Firecracker's shape: the process's logger and metrics are not the machine's (null).
        machine = {k: v for k, v in doc.items() if k not in ("logger", "metrics")}
        check(subset_of(machine, shown) and shown["metrics"] is None,
              "GET /vm/config %r lacks the file's %r" % (shown, machine))
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r" % e.stdout())
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        status = e.wait()
        check(status == 0 and "ok 1 - received Ctrl+Alt+Del" in e.stdout(),
              "--config-file boot: %d %r %s" % (status, e.stdout(), e.stderr()))
    finally:
        e.kill()
    check(os.path.exists(metrics) and os.path.getsize(metrics) > 0, "metrics from the config file")
    # Without it: the hello guest powers off by itself.
    hello_doc = dict(doc, **{"boot-source": {"kernel_image_path": HELLO,
                                             "boot_args": "console=ttyS0 reboot=k panic=1"}})
    e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, hello_doc, "hello.json")], api=False,
              name="no-api")
    status = e.wait()
    check(status == 0 and "ok 1 - hello" in e.stdout(), "--no-api boot: %d %s" % (status, e.stderr()))
    # Invalid documents: the same validation as the API, exit status 2.
    bad_docs = [
        ({"drives": []}, "boot-source"),
        (dict(doc, **{"machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}), "vcpu_count"),
        (dict(doc, **{"balloon": {"amount_mib": 1, "deflate_on_oom": False}}), "not supported"),
        (dict(doc, **{"vsock": {"guest_cid": -1, "uds_path": "/tmp/v"}}), "guest_cid"),
        (dict(doc, **{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "x" * 20}]}),
         "host_dev_name"),
        (dict(doc, frobnicate=1), "unknown field"),
    ]
    for i, (bad, msg) in enumerate(bad_docs):
        path = write_config(tmp, bad, "bad%d.json" % i)
        e = Ember(tmp, ["--no-api", "--config-file", path], api=False, name="bad%d" % i)
        status = e.wait()
        check(status == 2 and msg in e.stderr(), "bad config %d: status %d, %r" % (i, status, e.stderr()))
    path = os.path.join(tmp, "notjson.json")
    with open(path, "w") as f:
        f.write("{boot-source")
    e = Ember(tmp, ["--no-api", "--config-file", path], api=False, name="notjson")
    check(e.wait() == 2 and "JSON" in e.stderr(), "invalid JSON: %r" % e.stderr())


def test_teardown_helper_holds_only_the_vm(tmp):
    """The teardown helper (which destroys the VM after ember's exit) keeps only the VM's
    descriptor, its socket to ember and ember's pidfd, none of ember's other files: once a client has waited
    for ember, the API socket, taps, images and pipes are free, as with Firecracker."""
    e = Ember(tmp, ["--config-file", keyboard_config(tmp)])
    try:
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r" % e.stdout())
        helpers = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(os.path.dirname(stat) + "/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if int(fields[1]) == e.proc.pid and comm == "ember-teardown":
                helpers.append(os.path.dirname(stat))
        check(len(helpers) == 1, "one teardown helper: %r" % helpers)
        targets = sorted(os.readlink(os.path.join(helpers[0], "fd", fd))
                         for fd in os.listdir(os.path.join(helpers[0], "fd")))
        # and ember's pidfd, to outlive the last thread of ember's group (util/teardown.c)
        kinds = sorted("vm" if t == "anon_inode:kvm-vm" else "socket" if t.startswith("socket:")
                       else "pidfd" if "pidfd" in t else t for t in targets)
        check(kinds == ["pidfd", "socket", "vm"], "the helper holds %r" % targets)
        for fd in os.listdir(os.path.join(helpers[0], "fd")):
            if "pidfd" in os.readlink(os.path.join(helpers[0], "fd", fd)):
                with open(os.path.join(helpers[0], "fdinfo", fd)) as f:
                    pid_line = [l.split() for l in f if l.startswith("Pid:")]
                check(pid_line == [["Pid:", str(e.proc.pid)]], "the helper's pidfd is ember's: %r" % pid_line)
    finally:
        e.kill()
    # Waited for: nothing listens on the socket any more.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(e.sock)
        raise Failure("the API socket of a dead ember still accepts connections")
    except ConnectionRefusedError:
        pass
    except FileNotFoundError:
        pass
    finally:
        s.close()


def test_pci_off_without_pci(tmp):
    """Without a PCI bus the kernel is told `pci=off` (as Firecracker tells it), once, after the
    user's arguments and the virtio-mmio devices; with --enable-pci it is not."""
    def command_line(name, boot_args, flags=()):
        doc = {"boot-source": {"kernel_image_path": HELLO, "boot_args": boot_args},
               "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "entropy": {}}
        e = Ember(tmp, ["--no-api", "--config-file", write_config(tmp, doc, name + ".json")] + list(flags),
                  api=False, name=name)
        status = e.wait()
        line = [l for l in e.stdout().splitlines() if "command line: " in l]
        check(status == 0 and len(line) == 1, "%s: status %d, %r %s" % (name, status, e.stdout(), e.stderr()))
        return line[0].split("command line: ", 1)[1].split()

    words = command_line("mmio", "console=ttyS0")
    check(words.count("pci=off") == 1 and words.index("pci=off") > words.index("console=ttyS0") and
          any(w.startswith("virtio_mmio.device=") for w in words), "virtio-mmio: %r" % words)
    words = command_line("user-said", "console=ttyS0 pci=off")
    check(words.count("pci=off") == 1, "pci=off given by the user is not repeated: %r" % words)
    words = command_line("pci", "console=ttyS0", ["--enable-pci"])
    check("pci=off" not in words and not any(w.startswith("virtio_mmio.device=") for w in words),
          "with --enable-pci: %r" % words)


def test_flags(tmp):
    for args, msg in [(["--no-api"], "--config-file"), (["--id", "bad id!"], "--id"),
                      (["--level", "loud"], "log level"),
                      (["--seccomp-filter", os.path.join(tmp, "missing.json")], "cannot open"),
                      (["--http-api-max-payload-size", "x"], "payload"),
                      (["--http-api-request-timeout-ms", "0"], "milliseconds"),
                      (["--http-api-idle-timeout-ms", "86400001"], "milliseconds")]:
        out = subprocess.run([EMBER] + args, capture_output=True, text=True, timeout=PATIENCE_S)
        check(out.returncode == 2 and msg in out.stderr, "%r: %d %r" % (args, out.returncode, out.stderr))
    out = subprocess.run([EMBER, "--help"], capture_output=True, text=True, timeout=PATIENCE_S)
    for flag in ("--api-sock", "--config-file", "--no-api", "--id", "--level", "--log-path",
                 "--metrics-path", "--http-api-max-payload-size", "--http-api-request-timeout-ms",
                 "--http-api-idle-timeout-ms", "--no-seccomp", "--seccomp-filter"):
        check(flag in out.stdout, "--help lacks " + flag)
    # Jailer-style flags are accepted.
    e = Ember(tmp, ["--id", "jailed-1", "--start-time-us", "123", "--start-time-cpu-us", "4",
                    "--no-seccomp"], name="jailer")
    try:
        check(e.req("GET", "/").json()["id"] == "jailed-1", "instance id")
        # A second ember on a live socket refuses; a stale socket file is replaced.
        out = subprocess.run([EMBER, "--api-sock", e.sock], capture_output=True, text=True, timeout=PATIENCE_S)
        check(out.returncode != 0 and "in use" in out.stderr, "second ember: %r" % out.stderr)
    finally:
        e.kill()
    stale = os.path.join(tmp, "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()
    e = Ember(tmp, [], name="stale")  # replaces that file; killed, it leaves its own behind
    e.kill()
    # The file is stale once nothing listens on it: ember's teardown helper, which shares its
    # files, may hold the socket a moment longer than ember itself.
    deadline = time.monotonic() + PATIENCE_S
    while True:
        probe = socket.socket(socket.AF_UNIX)
        probe.settimeout(1)
        try:
            probe.connect(stale)
        except ConnectionRefusedError:
            break
        except socket.timeout:
            pass  # still listening, its backlog full
        finally:
            probe.close()
        check(time.monotonic() < deadline, "a killed ember's socket still listens after %d s" % PATIENCE_S)
        time.sleep(0.01)
    p = subprocess.Popen([EMBER, "--api-sock", stale], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ok = False
        while time.monotonic() < deadline and not ok and p.poll() is None:
            try:
                c = Conn(stale)
                ok = c.request("GET", "/").status == 200
                c.close()
            except OSError:
                time.sleep(0.01)
    finally:
        p.kill()
        _, err = p.communicate()
    check(ok, "ember did not replace a stale socket file: %s" % err.decode(errors="replace"))


class Skip(Exception):
    pass


# ---- CPU placement ------------------------------------------------------------------------


def placement_cpus():
    """Two CPUs this process may run on (the first for ember's own threads, the second for the
    vCPU), or a Skip."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise Skip("CPU placement needs 2 CPUs to run on, this process has %r" % allowed)
    return allowed[0], allowed[1]


def cpus_of_list(text):
    out = set()
    for item in text.split(","):
        lo, _, hi = item.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def thread_cpus(pid):
    """{tid: (name, set of CPUs)} for every thread of pid (those that end meanwhile left out)."""
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/comm" % (pid, tid)) as f:
                name = f.read().strip()
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                status = f.read()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[int(tid)] = (name, cpus_of_list(line.split(":", 1)[1].strip()))
    return out


def teardown_helper_of(pid):
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(os.path.dirname(stat) + "/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if int(fields[1]) == pid and comm == "ember-teardown":
            return int(os.path.basename(os.path.dirname(stat)))
    return None


def check_placed(pid, vmm, vcpus, what):
    """Every vCPU thread on its CPU, every other thread (and the teardown helper) on vmm.
    Returns the names of the threads seen."""
    threads = thread_cpus(pid)
    helper = teardown_helper_of(pid)
    if helper is not None:
        threads.update({helper: (name, cpus) for name, cpus in thread_cpus(helper).values()})
    for tid, (name, cpus) in threads.items():
        m = re.fullmatch(r"vcpu(\d+)", name)
        want = {vcpus[int(m.group(1))]} if m else {vmm}
        check(cpus == want, "%s: thread %d (%s) runs on %s, not %s" %
              (what, tid, name, sorted(cpus), sorted(want)))
    return sorted(name for name, _ in threads.values())


def test_cpu_placement_api(tmp):
    """machine-config's `cpu_placement` (ember's own): shown by GET only when set, cleared by a
    PUT without it, kept by a PATCH; bad sets refused with 400; and a machine started with it
    has every thread where it says."""
    vmm, vcpu = placement_cpus()
    e = Ember(tmp)
    try:
        mc = e.req("GET", "/machine-config").json()
        check("cpu_placement" not in mc, "no placement unless set: %r" % mc)
        place = {"vmm": str(vmm), "vcpu": str(vcpu)}
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32,
                                                 "cpu_placement": place}), 204, "PUT with cpu_placement")
        mc = e.req("GET", "/machine-config").json()
        shown = dict(place, poll_us=1000)  # the I/O threads' polling bound: its default
        check(mc.get("cpu_placement") == shown, "GET shows the placement: %r" % mc)
        expect(e.req("PATCH", "/machine-config", {"mem_size_mib": 64}), 204, "PATCH keeps it")
        check(e.req("GET", "/machine-config").json().get("cpu_placement") == shown, "kept by PATCH")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32,
                                                 "cpu_placement": dict(place, poll_us=0)}), 204,
               "PUT with polling off")
        mc = e.req("GET", "/machine-config").json()
        check(mc.get("cpu_placement") == dict(place, poll_us=0), "GET shows polling off: %r" % mc)
        expect(e.req("PATCH", "/machine-config", {"vcpu_count": 2}), 400,
               "PATCH vcpu_count away from the placement", "one host CPU per vCPU")
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32}), 204, "PUT without")
        check("cpu_placement" not in e.req("GET", "/machine-config").json(), "a PUT without it clears it")
        gone = max(os.sched_getaffinity(0)) + 1000
        bad = [
            ({"vmm": str(vmm), "vcpu": str(vmm)}, "must not overlap"),
            ({"vmm": "%d,%d" % (vmm, vcpu), "vcpu": str(vcpu)}, "must not overlap"),
            ({"vmm": str(vmm), "vcpu": "%d,%d" % (vcpu, vcpu)}, "listed twice"),
            ({"vmm": str(vmm), "vcpu": str(gone)}, "does not exist"),
            ({"vmm": str(vmm), "vcpu": "%d-%d" % (vcpu, vcpu + 1)}, "one host CPU per vCPU"),
            ({"vmm": "", "vcpu": str(vcpu)}, "empty"),
            ({"vmm": "0-", "vcpu": str(vcpu)}, "empty"),
            ({"vmm": "x", "vcpu": str(vcpu)}, "not a CPU number"),
            ({"vmm": "2-1", "vcpu": str(vcpu)}, "goes down"),
            ({"vmm": "99999", "vcpu": str(vcpu)}, "below"),
            ({"vmm": str(vmm)}, "vcpu"),
            ({"vmm": vmm, "vcpu": str(vcpu)}, "must be a string"),
            ({"vmm": str(vmm), "vcpu": str(vcpu), "poll": "on"}, "unknown field"),
            ({"vmm": str(vmm), "vcpu": str(vcpu), "poll_us": -1}, "whole number"),
            ({"vmm": str(vmm), "vcpu": str(vcpu), "poll_us": 1000001}, "whole number"),
            ({"vmm": str(vmm), "vcpu": str(vcpu), "poll_us": 2.5}, "whole number"),
            ({"vmm": str(vmm), "vcpu": str(vcpu), "poll_us": "5"}, "whole number"),
            ("0", "must be a JSON object"),
        ]
        for place_bad, msg in bad:
            expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32,
                                                     "cpu_placement": place_bad}),
                   400, "cpu_placement %r" % place_bad, msg)
        check("cpu_placement" not in e.req("GET", "/machine-config").json(), "a refused PUT changed it")
        # A machine started with it: the keyboard guest idles, the entropy device's I/O thread
        # beside it.
        expect(e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32,
                                                 "cpu_placement": place}), 204, "PUT again")
        expect(e.req("PUT", "/entropy", {}), 204, "entropy")
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD,
                                              "boot_args": "console=ttyS0"}), 204, "boot source")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait_output("waiting for Ctrl+Alt+Del"), "the guest runs: %r" % e.stdout())
        names = check_placed(e.proc.pid, vmm, [vcpu], "API")
        check("vcpu0" in names and "rng" in names and "ember-teardown" in names,
              "the vCPU, the rng I/O thread and the teardown helper were seen: %r" % names)
        vc = e.req("GET", "/vm/config").json()
        check(vc["machine-config"].get("cpu_placement") == dict(place, poll_us=1000),
              "in /vm/config: %r" % vc)
    finally:
        e.kill()


def test_cpu_placement_run(tmp):
    """`ember run --cpu-placement`: the virtio-blk guest fills and checks its disk while every
    sample of ember's threads (the I/O threads, io_uring workers and KVM's own worker
    included) finds the vCPU on its CPU and all else on the reserved one; bad sets refused."""
    vmm, vcpu = placement_cpus()
    guest = os.path.join(GUEST_DIR, "virtio-blk.elf")
    if not os.path.exists(guest):
        raise Skip("no %s (make guests)" % guest)
    for spec, msg in [("vmm=%d,vcpu=%d" % (vmm, vmm), "must not overlap"),
                      ("vmm=%d,vcpu=%d,%d" % (vmm, vcpu, vcpu), "listed twice"),
                      ("vmm=%d" % vmm, "no vcpu CPUs"),
                      ("vmm=%d,vcpu=%d,polling=on" % (vmm, vcpu), "unknown key"),
                      ("vmm=%d,vcpu=%d,poll=on" % (vmm, vcpu), "polling bound"),
                      ("vmm=%d,vcpu=%d,poll=0" % (vmm, vcpu), "polling bound"),
                      ("vmm=%d,vcpu=%d,poll=1000001" % (vmm, vcpu), "polling bound"),
                      ("vmm=%d,vcpu=%d,poll=5,poll=6" % (vmm, vcpu), "given twice"),
                      ("vmm=%d,vcpu=%d,poll=5,6" % (vmm, vcpu), "not part of a CPU list"),
                      ("vmm=%d,vcpu=%d" % (vmm, max(os.sched_getaffinity(0)) + 1000), "does not exist")]:
        r = subprocess.run([EMBER, "run", "--kernel", HELLO, "--cpu-placement", spec],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=PATIENCE_S)
        check(r.returncode == 2 and msg in r.stderr.decode(),
              "--cpu-placement %s: status %d, %r" % (spec, r.returncode, r.stderr))
    r = subprocess.run([EMBER, "run", "--kernel", HELLO, "--cpus", "2", "--cpu-placement",
                        "vmm=%d,vcpu=%d" % (vmm, vcpu)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=PATIENCE_S)
    check(r.returncode == 2 and "one host CPU per vCPU" in r.stderr.decode(), "2 vCPUs, 1 CPU: %r" % r.stderr)
    disk = make_image(tmp, "disk.img", 8 << 20)
    ro = os.path.join(tmp, "ro.img")
    with open(ro, "wb") as f:
        f.write(os.urandom(1 << 20))
    ro_sum = subprocess.run(["cksum"], stdin=open(ro, "rb"), capture_output=True).stdout.split()[0].decode()
    cmdline = ("console=ttyS0 blk_id=d0 ro_id=r0 blk_queues=2 blk_sectors=16384 ro_cksum=%s" % ro_sum)
    e = Ember(tmp, ["run", "--kernel", guest, "--debug-exit", "--cmdline", cmdline,
                    "--drive", "path=%s,id=d0,queues=2" % disk, "--drive", "path=%s,id=r0,readonly=on" % ro,
                    "--cpu-placement", "vmm=%d,vcpu=%d" % (vmm, vcpu)], api=False)
    try:
        check(e.wait_output("virtio-blk", timeout=PATIENCE_S), "the guest starts: %r" % e.stdout())
        seen = set()
        while e.alive():
            seen.update(check_placed(e.proc.pid, vmm, [vcpu], "run"))
            time.sleep(0.01)
        status = e.wait()
        check(status == 1 and "not ok" not in e.stdout(), "the guest passes (%d): %r" % (status, e.stdout()[-500:]))
        check({"vcpu0", "blk0", "blk1", "ember-teardown"} <= seen, "threads seen: %r" % sorted(seen))
    finally:
        e.kill()


TESTS = [
    test_instance_info, test_names_and_versions, test_machine_config,
    test_machine_config_as_firecracker, test_boot_source, test_drives, test_network_interfaces,
    test_nineteen_mmio_devices, test_firecracker_request_rules, test_serial_out,
    test_taps_and_vsock_at_put, test_logger_metrics, test_metrics_fifo_and_signals, test_entropy_vsock, test_pmem, test_unsupported_and_unknown_routes, test_lifecycle,
    test_concurrent_clients, test_http_robustness, test_idle_timeout, test_connection_bound,
    test_idle_holder_does_not_lock_out,
    test_pipelined_burst_does_not_starve, test_flood_does_not_starve,
    test_dribbler_does_not_starve, test_max_payload_flag, test_getting_started_with_curl,
    test_config_file, test_teardown_helper_holds_only_the_vm, test_pci_off_without_pci, test_flags, test_cpu_templates_in_guest,
    test_custom_cpu_config_in_guest, test_smt_and_machine_config_rules, test_mmds_routes,
    test_mmds_flags_and_config_file, test_mmds_guest, test_cpu_placement_api, test_cpu_placement_run,
]


def run_tests(tests, label, needed, args):
    """Runs the tests named in args (all without names; -v for verbose), each in a fresh
    temporary directory, and prints TAP and a total line; 1 if any failed."""
    global VERBOSE
    args = list(args)
    if "-v" in args:
        VERBOSE = True
        args.remove("-v")
    selected = [t for t in tests if not args or t.__name__ in args or t.__name__[5:] in args]
    for path in needed:
        if not os.path.exists(path):
            print("%s: missing %s (build with make all guests)" % (label, path))
            return 1
    passed = failed = skipped = 0
    for n, test in enumerate(selected, 1):
        tmp = tempfile.mkdtemp(prefix="ember-%s-" % label)
        start = time.monotonic()
        try:
            test(tmp)
            passed += 1
            print("ok %d - %s (%.1f s)" % (n, test.__name__, time.monotonic() - start))
        except Skip as ex:
            skipped += 1
            print("ok %d - %s # SKIP %s" % (n, test.__name__, ex))
        except Exception as ex:  # noqa: BLE001 - a test's failure of any kind is reported
            failed += 1
            print("not ok %d - %s: %s: %s" % (n, test.__name__, type(ex).__name__, ex))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()
    print("%s: %d passed, %d failed, %d skipped" % (label, passed, failed, skipped))
    return 1 if failed else 0


def main():
    return run_tests(TESTS, "api", (EMBER, HELLO, KEYBOARD), sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
