#!/usr/bin/env python3
"""End-to-end tests of ember-jailer: guests booted in jails, driven over the API socket inside
them, as an unprivileged uid:gid; cgroup limits, namespaces, bad input, and clean-up.

Root (the jailer mounts, makes device nodes and changes users). Standard library only.
Usage: tests/jailer/test_jailer.py [-v] [NAME...]
Environment: EMBER, JAILER (default build/ember, build/ember-jailer), GUEST_DIR (build/guest),
JAIL_BASE (where jails are built; default build/jailer-tests).
Prints one line per test and ends with "jailer: N passed, N failed, N skipped". Every
directory, cgroup and namespace a test makes, or has the jailer make, is removed after it;
a test fails if the jailer left anything it did not own up to.
"""

import ctypes
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMBER = os.environ.get("EMBER", os.path.join(ROOT, "build", "ember"))
JAILER = os.environ.get("JAILER", os.path.join(ROOT, "build", "ember-jailer"))
GUEST_DIR = os.environ.get("GUEST_DIR", os.path.join(ROOT, "build", "guest"))
BASE = os.environ.get("JAIL_BASE", os.path.join(ROOT, "build", "jailer-tests"))
KEYBOARD = os.path.join(GUEST_DIR, "keyboard.elf")
HELLO = os.path.join(GUEST_DIR, "hello.elf")
MEMTOUCH = os.path.join(GUEST_DIR, "memtouch.elf")
# An unprivileged user and group with no entry in /etc/passwd: the jail needs none.
UID, GID = 60123, 60124
PATIENCE_S = 60
PID = os.getpid()
VERBOSE = False


class Failure(Exception):
    pass


class Skip(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def note(msg):
    """A line of what happened (not a check): printed as a TAP diagnostic."""
    print("# " + msg)
    sys.stdout.flush()


# ---- an HTTP client on a unix socket ----------------------------------------------------


class Response:
    def __init__(self, status, body):
        self.status = status
        self.body = body

    def json(self):
        return json.loads(self.body) if self.body else None

    def fault(self):
        return (self.json() or {}).get("fault_message", "")

    def __repr__(self):
        return "%d %s" % (self.status, self.body[:300])


def request(path, method, route, body=None):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(PATIENCE_S)
    try:
        s.connect(path)
        raw = json.dumps(body).encode() if body is not None else b""
        head = "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % (method, route, len(raw))
        s.sendall(head.encode() + raw)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        n = 0
        for line in lines[1:]:
            k, v = line.split(":", 1)
            if k.strip().lower() == "content-length":
                n = int(v)
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return Response(int(lines[0].split()[1]), rest[:n].decode())
    finally:
        s.close()


def expect(resp, status, what, fault_has=None):
    check(resp.status == status, "%s: expected %d, got %r" % (what, status, resp))
    if fault_has is not None:
        check(fault_has.lower() in resp.fault().lower(),
              "%s: fault_message %r lacks %r" % (what, resp.fault(), fault_has))


# ---- cgroups ----------------------------------------------------------------------------


def v1_mount(controller):
    with open("/proc/mounts") as f:
        for line in f:
            dev, d, typ, opts = line.split()[:4]
            if typ == "cgroup" and controller in opts.split(","):
                return d
    return None


def v2_mount():
    with open("/proc/mounts") as f:
        for line in f:
            dev, d, typ = line.split()[:3]
            if typ == "cgroup2":
                return d
    return None


def own_cgroup(controller):
    """This process's cgroup in a v1 hierarchy (controller) or v2 (None), without the leading /."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            n, ctls, path = line.rstrip("\n").split(":", 2)
            if (controller is None and n == "0" and ctls == "") or \
                    (controller is not None and controller in ctls.split(",")):
                return path.strip("/")
    return ""


def read(path):
    with open(path) as f:
        return f.read()


# ---- a jail -----------------------------------------------------------------------------


class Test:
    """What a test made, removed after it whatever happened: jails, cgroups, namespaces."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.jails = []
        self.cgroup_dirs = []  # removed deepest first
        self.undo = []  # callables, run last to first
        self.ids = 0

    def new_id(self):
        self.ids += 1
        return "jt-%d-%d" % (PID, self.ids)

    def parent_cgroup(self, controller):
        """A parent group for this test inside this process's own group of controller's
        hierarchy (so a limit stays inside whatever limits this process), removed after it."""
        own = own_cgroup(controller)
        parent = (own + "/" if own else "") + "ember-jailer-test-%d" % PID
        mount = v1_mount(controller) if controller else v2_mount()
        # Everything from the first level that does not exist yet is the test's to remove.
        levels = parent.split("/")
        for i in range(len(levels)):
            d = os.path.join(mount, *levels[:i + 1])
            if not os.path.isdir(d):
                for j in range(i, len(levels)):
                    self.cgroup_dirs.append(os.path.join(mount, *levels[:j + 1]))
                break
        return parent

    def v2_parent(self):
        """A parent group at the top of the v2 hierarchy (this process's own group holds
        processes, so no controller could be enabled below it), removed after the test with
        the controllers the jailer enabled at the top."""
        mount = v2_mount()
        parent = "ember-jailer-test-%d-v2" % PID
        top = os.path.join(mount, "cgroup.subtree_control")
        if parent not in [os.path.basename(d) for d in self.cgroup_dirs]:
            before = set(read(top).split())
            self.cgroup_dirs.append(os.path.join(mount, parent))

            def restore():
                for ctl in set(read(top).split()) - before:
                    with open(top, "w") as f:
                        f.write("-%s\n" % ctl)
            self.undo.append(restore)
        return parent

    def hierarchy(self, controller, versions=(1, 2)):
        """The first of versions whose hierarchy has controller, or Skip saying why none has."""
        reasons = []
        for v in versions:
            if v == 1:
                if v1_mount(controller):
                    return Hierarchy(1, controller, v1_mount(controller), self.parent_cgroup(controller))
                reasons.append("no cgroup v1 hierarchy has the %s controller" % controller)
            else:
                offered = v2_controllers()
                if controller in offered:
                    return Hierarchy(2, controller, v2_mount(), self.v2_parent())
                reasons.append("the cgroup v2 hierarchy offers %s, not %s" % (offered or "nothing", controller))
        raise Skip("; ".join(reasons))

    def cleanup(self):
        problems = []
        for j in self.jails:
            j.kill()
        for j in self.jails:
            shutil.rmtree(j.dir, ignore_errors=True)
        for d in sorted(set(self.cgroup_dirs), key=len, reverse=True):
            deadline = time.monotonic() + 10
            while os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError as ex:
                    if time.monotonic() > deadline:
                        problems.append("cannot remove cgroup %s: %s" % (d, ex))
                        break
                    time.sleep(0.05)
        for fn in reversed(self.undo):
            try:
                fn()
            except Exception as ex:  # noqa: BLE001 - report and go on cleaning
                problems.append(str(ex))
        return problems


class Hierarchy:
    """Where the jail's group for one controller goes, and the jailer's flags for it."""

    # The same limits under their names in each version.
    NAMES = {1: {"memory": "memory.limit_in_bytes", "pids": "pids.max"},
             2: {"memory": "memory.max", "pids": "pids.max"}}

    def __init__(self, version, controller, mount, parent):
        self.version, self.controller, self.mount, self.parent = version, controller, mount, parent

    def setting(self, value):
        return "%s=%s" % (self.NAMES[self.version][self.controller], value)

    def args(self, *settings):
        a = ["--cgroup-version", str(self.version), "--parent-cgroup", self.parent]
        for x in settings:
            a += ["--cgroup", x]
        return a

    def group(self, jid):
        return os.path.join(self.mount, self.parent, jid)


def v2_controllers():
    mount = v2_mount()
    return read(os.path.join(mount, "cgroup.controllers")).split() if mount else []


class Jail:
    def __init__(self, t, ember_args=(), jailer_args=(), jid=None, uid=UID, gid=GID,
                 exec_file=EMBER, wait_socket=True, sock="/run/ember.socket", pass_sock=True):
        self.t = t
        self.id = jid or t.new_id()
        self.dir = os.path.join(BASE, os.path.basename(exec_file), self.id)
        self.root = os.path.join(self.dir, "root")
        self.sock = os.path.join(self.root, sock.lstrip("/"))
        self.out_path = os.path.join(t.tmp, self.id + ".out")
        self.err_path = os.path.join(t.tmp, self.id + ".err")
        self.exec_name = os.path.basename(exec_file)
        self.cmd = [JAILER, "--id", self.id, "--exec-file", exec_file, "--uid", str(uid),
                    "--gid", str(gid), "--chroot-base-dir", BASE] + list(jailer_args) + \
                   ["--"] + (["--api-sock", sock] if pass_sock else []) + list(ember_args)
        if VERBOSE:
            note(" ".join(self.cmd))
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=self.err)
        t.jails.append(self)
        self._pid = None
        if wait_socket:
            self.wait_socket()

    def wait_socket(self):
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                if request(self.sock, "GET", "/").status == 200:
                    return
            except OSError:
                pass
            alive = self.proc.poll() is None or (self._pid_alive())
            if not alive or time.monotonic() > deadline:
                raise Failure("no API socket at %s (jailer status %r): %s" %
                              (self.sock, self.proc.poll(), self.stderr()))
            time.sleep(0.01)

    def _pid_alive(self):
        try:
            return os.path.exists("/proc/%d" % self.pid())
        except (OSError, ValueError):
            return False

    def pid(self):
        if self._pid is None:
            self._pid = int(read(os.path.join(self.root, self.exec_name + ".pid")))
        return self._pid

    def req(self, method, route, body=None):
        return request(self.sock, method, route, body)

    def put(self, route, body):
        return self.req("PUT", route, body)

    def link_in(self, path, name=None):
        """Puts a file into the jail as Firecracker's users do: a hard link (a copy across
        file systems), readable by the jail's user."""
        dst = os.path.join(self.root, name or os.path.basename(path))
        try:
            os.link(path, dst)
        except OSError:
            shutil.copyfile(path, dst)
        return "/" + os.path.basename(dst)

    def stdout(self):
        self.out.flush()
        return read(self.out_path)

    def stderr(self):
        self.err.flush()
        return read(self.err_path)

    def wait_output(self, text, timeout=PATIENCE_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout():
                return True
            if self.proc.poll() is not None and not self._pid_alive():
                break
            time.sleep(0.05)
        return text in self.stdout()

    def wait(self, timeout=PATIENCE_S):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise Failure("the jailed ember did not exit within %d s" % timeout)

    def ended(self):
        """Whether the jail's ember has exited (a zombie counts: once the jailer is gone,
        whoever adopted ember reaps it in its own time)."""
        try:
            return read("/proc/%d/stat" % self.pid()).rsplit(")", 1)[1].split()[0] in "ZX"
        except OSError:
            return True

    def wait_pid_gone(self, timeout=PATIENCE_S):
        deadline = time.monotonic() + timeout
        while not self.ended():
            check(time.monotonic() < deadline, "process %d still there after %d s" % (self.pid(), timeout))
            time.sleep(0.02)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            pid = self.pid()
            # The process the jail's pid file names, while it is still the jail's ember.
            if read("/proc/%d/cmdline" % pid).startswith("/%s\0--id\0%s\0" % (self.exec_name, self.id)):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def status_ids(pid):
    uids = gids = None
    nspid = None
    for line in read("/proc/%d/status" % pid).splitlines():
        if line.startswith("Uid:"):
            uids = [int(x) for x in line.split()[1:]]
        elif line.startswith("Gid:"):
            gids = [int(x) for x in line.split()[1:]]
        elif line.startswith("NSpid:"):
            nspid = [int(x) for x in line.split()[1:]]
    return uids, gids, nspid


def run_jailer(args, timeout=PATIENCE_S):
    return subprocess.run([JAILER] + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_clear_line(out, needle, what):
    lines = out.stderr.strip().splitlines()
    check(out.returncode == 2, "%s: exit status %d, expected 2: %r" % (what, out.returncode, out.stderr))
    check(len(lines) == 1 and lines[0].startswith("ember-jailer: ") and needle in lines[0],
          "%s: expected one line with %r, got %r" % (what, needle, out.stderr))


def boot_keyboard(j, mem_mib=32, extra=()):
    expect(j.put("/boot-source", {"kernel_image_path": j.link_in(KEYBOARD)}), 204, "boot-source")
    expect(j.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": mem_mib}), 204, "machine-config")
    for route, body in extra:
        expect(j.put(route, body), 204, "PUT " + route)
    expect(j.put("/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
    check(j.wait_output("tick 1"), "the guest runs in the jail: %r %r" % (j.stdout()[-300:], j.stderr()))


# ---- tests ------------------------------------------------------------------------------


def test_boot_unprivileged(t):
    """A guest boots in a jail as an unprivileged uid:gid, with the API socket, the kernel and
    a drive inside it; ember is in its own mount namespace and in the jail's cgroups."""
    try:
        cpuset = t.hierarchy("cpuset", (1,))
    except Skip as why:
        cpuset = None
        note("no cpuset group for this jail: %s" % why)
    j = Jail(t, ["--metrics-path", "/metrics.json"],
             cpuset.args("cpuset.mems=0", "cpuset.cpus=0") if cpuset else [])
    pid = j.pid()
    check(pid == j.proc.pid, "without forks the pid file names the jailer's own process: %d vs %d" %
          (pid, j.proc.pid))
    uids, gids, _ = status_ids(pid)
    check(uids == [UID] * 4 and gids == [GID] * 4, "ember runs as %d:%d: Uid %r Gid %r" % (UID, GID, uids, gids))
    groups = [l for l in read("/proc/%d/status" % pid).splitlines() if l.startswith("Groups:")]
    check(groups and groups[0].split()[1:] == [], "no supplementary groups: %r" % groups)
    check(os.readlink("/proc/%d/ns/mnt" % pid) != os.readlink("/proc/self/ns/mnt"),
          "ember is in a mount namespace of its own")
    nnp = [l for l in read("/proc/%d/status" % pid).splitlines() if l.startswith("NoNewPrivs:")]
    check(nnp and nnp[0].split()[1] == "1", "no new privileges: %r" % nnp)
    if cpuset:
        cg = read("/proc/%d/cgroup" % pid)
        check(":cpuset:/%s/%s\n" % (cpuset.parent, j.id) in cg, "ember is in the jail's cpuset group: %s" % cg)
        cs = cpuset.group(j.id)
        t.cgroup_dirs.append(cs)
        check(read(os.path.join(cs, "cpuset.cpus")).strip() == "0" and
              read(os.path.join(cs, "cpuset.mems")).strip() == "0", "cpuset values written")
    # What the jail holds: ember's copy, the loader and libraries, the nodes, all ember's.
    for dev, owner in (("dev/kvm", UID), ("dev/net/tun", UID), ("ember", UID), ("run", UID)):
        st = os.stat(os.path.join(j.root, dev))
        check(st.st_uid == owner and st.st_gid == GID, "%s owned by %d:%d" % (dev, st.st_uid, st.st_gid))
    check(os.stat(os.path.join(j.root, "dev/kvm")).st_rdev == os.stat("/dev/kvm").st_rdev,
          "/dev/kvm has the host's numbers")
    check(not os.path.exists(os.path.join(j.root, "old_root")), "no old root left in the jail")
    check(j.req("GET", "/").json()["id"] == j.id, "ember got --id from the jailer")
    drive = os.path.join(j.root, "rootfs.img")
    with open(drive, "wb") as f:
        f.truncate(1 << 20)
    os.chown(drive, UID, GID)
    boot_keyboard(j, extra=[("/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/rootfs.img",
                                                "is_root_device": True, "is_read_only": False})])
    expect(j.put("/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
    m = json.loads(read(os.path.join(j.root, "metrics.json")).splitlines()[-1])
    api = m["api_server"]
    wall, cpu = api.get("process_startup_time_us", 0), api.get("process_startup_time_cpu_us", 0)
    check(0 < wall < PATIENCE_S * 1e6 and 0 < cpu < PATIENCE_S * 1e6,
          "start-up times from the jailer's flags: %r" % api)
    note("jailer start to API listening: %d us, %d us of CPU" % (wall, cpu))
    check("block_rootfs" in m and m["vcpu"]["exits"] > 0, "the jailed machine's metrics: %r" % list(m))
    expect(j.put("/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
    status = j.wait()
    check(status == 0, "ember's exit status is the jailer's: %d: %s" % (status, j.stderr()))
    check("received Ctrl+Alt+Del" in j.stdout(), "the guest saw the keys: %r" % j.stdout()[-300:])



def thread_cpus(pid):
    """{tid: (name, Cpus_allowed_list)} of every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            name = read("/proc/%d/task/%s/comm" % (pid, tid)).strip()
            status = read("/proc/%d/task/%s/status" % (pid, tid))
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[int(tid)] = (name, line.split(":", 1)[1].strip())
    return out


def test_cpuset_and_cpu_placement(t):
    """The CPU placement within the jail's cpuset: a CPU outside it is refused (ember checks
    against the CPUs it started with, which the cpuset bounds); with both CPUs in it, the
    machine runs placed although the jail has no /proc to list ember's threads."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise Skip("CPU placement needs 2 CPUs, this process may run on %r" % allowed)
    vmm, vcpu = allowed[0], allowed[1]
    cpuset = t.hierarchy("cpuset", (1,))
    place = {"vcpu_count": 1, "mem_size_mib": 32, "cpu_placement": {"vmm": str(vmm), "vcpu": str(vcpu)}}
    j = Jail(t, [], cpuset.args("cpuset.mems=0", "cpuset.cpus=%d" % vmm))
    t.cgroup_dirs.append(cpuset.group(j.id))
    expect(j.put("/machine-config", place), 400, "a vCPU CPU outside the jail's cpuset",
           "CPU %d is not one ember may run on (its CPUs: %d)" % (vcpu, vmm))
    j.kill()
    j = Jail(t, [], cpuset.args("cpuset.mems=0", "cpuset.cpus=%d,%d" % (vmm, vcpu)))
    t.cgroup_dirs.append(cpuset.group(j.id))
    expect(j.put("/machine-config", place), 204, "the placement within the cpuset")
    expect(j.put("/entropy", {}), 204, "entropy")
    expect(j.put("/boot-source", {"kernel_image_path": j.link_in(KEYBOARD)}), 204, "boot-source")
    expect(j.put("/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
    check(j.wait_output("tick 1"), "the guest runs in the jail: %r %r" % (j.stdout()[-300:], j.stderr()))
    threads = thread_cpus(j.pid())
    for tid, (name, cpus) in threads.items():
        want = str(vcpu) if name.startswith("vcpu") else str(vmm)
        check(cpus == want, "thread %d (%s) runs on %s, not %s: %r" % (tid, name, cpus, want, threads))
    names = sorted(name for name, _ in threads.values())
    check("vcpu0" in names and "rng" in names, "the vCPU and the rng I/O thread were seen: %r" % names)
    j.kill()

def test_vhost_user_socket(t):
    """A vhost-user back-end for a jailed ember: it listens inside the jail (its socket in the
    chroot, owned by the jail's user), and the drive names the socket by its path in the jail."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "vhost_user"))
    import test_vhost_user as vhu  # its qemu-storage-daemon, guest and image check
    if not vhu.QSD:
        raise Skip("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
    j = Jail(t)
    d = vhu.Daemon(j.root)  # the image and the socket in the jail's directory
    try:
        os.chown(d.sock, UID, GID)
        expect(j.put("/boot-source", {"kernel_image_path": j.link_in(vhu.GUEST),
                                      "boot_args": "console=ttyS0 vub_sectors=%d" %
                                      (vhu.DISK_BYTES // vhu.SECTOR)}), 204, "boot-source")
        expect(j.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}), 204,
               "machine-config")
        expect(j.put("/drives/vub", {"drive_id": "vub", "is_root_device": False,
                                     "cache_type": "Writeback",
                                     "socket": "/" + os.path.basename(d.sock)}),
               204, "PUT /drives with the socket's path in the jail")
        expect(j.put("/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        deadline = time.monotonic() + PATIENCE_S
        while len(vhu.tap_lines(j.stdout())) < 9 and time.monotonic() < deadline:
            time.sleep(0.05)
        tap = vhu.tap_lines(j.stdout())
        check(len(tap) == 9 and all(x.startswith("ok ") for x in tap),
              "the jailed guest's disk checks: %r; %s" % (tap, j.stderr()[-500:]))
    finally:
        j.kill()
        d.stop()
    vhu.check_image(d.image, "jailed")


def test_installed_as_firecracker(t):
    """Kata Containers jails the file it was given as Firecracker under its own name and then
    looks for <base>/firecracker/<id>/root/firecracker.pid and .../run/firecracker.socket,
    passing no --api-sock. A copy (or hard link) of ember named firecracker gives both; a
    symbolic link is refused as Firecracker's jailer refuses it."""
    bindir = os.path.join(t.tmp, "bin")
    os.makedirs(bindir)
    fc = os.path.join(bindir, "firecracker")
    try:
        os.link(EMBER, fc)
    except OSError:
        shutil.copy2(EMBER, fc)
    link = os.path.join(bindir, "firecracker-link")
    os.symlink(EMBER, link)
    out = run_jailer(["--id", t.new_id(), "--exec-file", link, "--uid", str(UID), "--gid",
                      str(GID), "--chroot-base-dir", BASE])
    one_clear_line(out, "symbolic link", "a symbolic link as --exec-file")
    j = Jail(t, exec_file=fc, sock="/run/firecracker.socket", pass_sock=False)
    check(j.dir == os.path.join(BASE, "firecracker", j.id), "the jail is under firecracker/: %s" % j.dir)
    check(os.path.exists(os.path.join(j.root, "run", "firecracker.socket")),
          "the API socket has Firecracker's default name")
    check(j.pid() == j.proc.pid, "firecracker.pid names ember: %d vs %d" % (j.pid(), j.proc.pid))
    check(read("/proc/%d/cmdline" % j.pid()).startswith("/firecracker\0"), "ember runs as /firecracker")
    info = j.req("GET", "/").json()
    check(info["id"] == j.id and "+ember." in info["vmm_version"], "GET /: %r" % info)
    boot_keyboard(j)
    expect(j.put("/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
    check(j.wait() == 0, "ember ends with the guest: %s" % j.stderr())


def test_host_paths_unreachable(t):
    """Inside the jail only the jail's files exist: host paths to a kernel or drive fail."""
    j = Jail(t)
    for path in (KEYBOARD, "../../../.." + KEYBOARD, "/proc/self/exe"):
        expect(j.put("/boot-source", {"kernel_image_path": path}), 400, "kernel at host path " + path,
               "no such file")
    img = os.path.join(t.tmp, "host.img")
    with open(img, "wb") as f:
        f.truncate(1 << 20)
    os.chmod(t.tmp, 0o755)
    os.chmod(img, 0o666)
    expect(j.put("/drives/d", {"drive_id": "d", "path_on_host": img, "is_root_device": False,
                               "is_read_only": True}), 400, "drive at host path", "no such file")
    expect(j.put("/boot-source", {"kernel_image_path": j.link_in(KEYBOARD)}), 204,
           "the same kernel inside the jail")
    check(j.req("GET", "/").status == 200, "still serving")


def each_hierarchy(t, controller, run):
    """run(hierarchy) in each cgroup version that has controller; the others said skipped."""
    ran = []
    for version in (1, 2):
        try:
            h = t.hierarchy(controller, (version,))
        except Skip as why:
            note("SKIP cgroup v%d %s: %s" % (version, controller, why))
            continue
        run(h)
        ran.append(version)
    if not ran:
        raise Skip("no hierarchy has the %s controller" % controller)


def test_pids_max(t):
    """pids.max bites. At 1, ember cannot start the thread that will build the machine (it
    must exist before the API's seccomp filter goes on) and ends saying why; at 3 (ember, its
    teardown helper, that thread) the API serves but InstanceStart cannot start the vCPUs."""
    def run(h):
        j = Jail(t, [], h.args(h.setting(1)), wait_socket=False)
        group = h.group(j.id)
        t.cgroup_dirs.append(group)
        status = j.proc.wait(PATIENCE_S)
        check(status == 4, "ember under pids.max=1 ends with status 4, not %r" % status)
        check("Resource temporarily unavailable" in j.stderr(), "the reason is given: %r" % j.stderr())
        check("teardown helper" in j.stderr(), "the helper's failure is logged: %r" % j.stderr())
        events = read(os.path.join(group, "pids.events"))
        check(int(events.split()[1]) >= 1, "the pids controller counted the refusals: %r" % events)
        note("cgroup v%d pids.max=1: %s" % (h.version, j.stderr().strip().splitlines()[-1]))

        j = Jail(t, [], h.args(h.setting(3)))
        group = h.group(j.id)
        t.cgroup_dirs.append(group)
        check(read(os.path.join(group, "pids.max")).strip() == "3", "pids.max written")
        expect(j.put("/boot-source", {"kernel_image_path": j.link_in(KEYBOARD)}), 204, "boot-source")
        r = j.put("/actions", {"action_type": "InstanceStart"})
        expect(r, 400, "InstanceStart with pids.max=3", "cannot start")
        check("Resource temporarily unavailable" in r.fault(), "the reason is given: %r" % r.fault())
        note("cgroup v%d pids.max=3: %s" % (h.version, r.fault()))
        check(j.req("GET", "/").status == 200, "ember still serves its API")
        j.kill()
    each_hierarchy(t, "pids", run)


def memory_stats(h, group):
    """(times the limit was hit, OOM kills, peak usage or None) of a memory group."""
    if h.version == 1:
        oom = dict(l.split() for l in read(os.path.join(group, "memory.oom_control")).splitlines())
        return (int(read(os.path.join(group, "memory.failcnt"))), int(oom.get("oom_kill", 0)),
                int(read(os.path.join(group, "memory.max_usage_in_bytes"))))
    events = dict(l.split() for l in read(os.path.join(group, "memory.events")).splitlines())
    peak = os.path.join(group, "memory.peak")
    return (int(events.get("max", 0)), int(events.get("oom_kill", 0)),
            int(read(peak)) if os.path.exists(peak) else None)


def test_memory_limit(t):
    """A memory limit bites: a guest that touches more RAM than the limit allows is ended by
    the kernel; one that stays below runs to its end."""
    limit = 64 << 20

    def run(h):
        for touch_mib, should_fit in ((16, True), (None, False)):
            j = Jail(t, [], h.args(h.setting(limit)))
            group = h.group(j.id)
            t.cgroup_dirs.append(group)
            check(int(read(os.path.join(group, h.setting(0).split("=")[0]))) == limit, "limit written")
            boot = {"kernel_image_path": j.link_in(MEMTOUCH)}
            if touch_mib:
                boot["boot_args"] = "console=ttyS0 touch_mib=%d" % touch_mib
            expect(j.put("/boot-source", boot), 204, "boot-source")
            expect(j.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 256}), 204, "256 MiB guest")
            expect(j.put("/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
            status = j.wait()
            hits, oom_kills, peak = memory_stats(h, group)
            check(peak is None or peak <= limit, "usage stayed within the limit: %d" % (peak or 0))
            if should_fit:
                check(status == 0 and "ok 1 - touched 16 MiB" in j.stdout(),
                      "a guest within the limit ends well: %d %r %r" % (status, j.stdout()[-200:], j.stderr()))
                check(oom_kills == 0, "no OOM kill within the limit")
                continue
            touched = [l for l in j.stdout().splitlines() if l.startswith("# touched")]
            check(status != 0 and "ok 1" not in j.stdout(),
                  "a 256 MiB guest touching all its RAM under a 64 MiB limit must not finish: %d" % status)
            check(hits > 0, "the limit was hit")
            what = "cgroup v%d %s=%d, a 256 MiB guest touching all its RAM" % (h.version, h.setting(0).split("=")[0], limit)
            if status == -signal.SIGKILL:
                check(oom_kills >= 1, "an OOM kill was counted")
                note("%s: the cgroup's OOM killer ended ember (SIGKILL) after %s" %
                     (what, touched[-1][2:] if touched else "no progress line"))
            else:
                note("%s: ember ended with status %d: %s" % (what, status, j.stderr().strip()[-300:]))
    each_hierarchy(t, "memory", run)


def ip(*args, check_ok=True):
    out = subprocess.run(["ip"] + list(args), capture_output=True, text=True, timeout=PATIENCE_S)
    if check_ok and out.returncode != 0:
        raise Failure("ip %s: %s" % (" ".join(args), out.stderr.strip()))
    return out


def test_netns_tap(t):
    """A tap made in a network namespace is ember's with --netns, and not the host's."""
    if not shutil.which("ip"):
        raise Skip("no ip command (iproute2)")
    ns = "ember-jt-%d" % PID
    tap = "ejt%d" % (PID % 100000)
    ip("netns", "add", ns)
    t.undo.append(lambda: ip("netns", "del", ns, check_ok=False))
    ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "user", str(UID), "group", str(GID))
    ip("-n", ns, "link", "set", tap, "up")
    check(ip("link", "show", tap, check_ok=False).returncode != 0, "the tap is not in the host's namespace")
    check("NO-CARRIER" in ip("-n", ns, "link", "show", tap).stdout, "no carrier before ember attaches")
    j = Jail(t, [], ["--netns", "/var/run/netns/" + ns])
    check(os.readlink("/proc/%d/ns/net" % j.pid()) != os.readlink("/proc/self/ns/net"),
          "ember is in the jail's network namespace")
    boot_keyboard(j, extra=[("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap})])
    attached = False
    fd_dir = "/proc/%d/fdinfo" % j.pid()
    for fd in os.listdir(fd_dir):
        try:
            attached = attached or ("iff:\t%s\n" % tap) in read(os.path.join(fd_dir, fd))
        except OSError:
            pass
    check(attached, "ember holds the tap %s (fdinfo)" % tap)
    link = ip("-n", ns, "link", "show", tap).stdout
    check("LOWER_UP" in link and "NO-CARRIER" not in link, "carrier once ember holds the tap: %s" % link)
    check(ip("link", "show", tap, check_ok=False).returncode != 0, "still not in the host's namespace")
    # Without --netns the jail is in the host's namespace: no such tap, and ember may not make one.
    k = Jail(t)
    # As Firecracker, the tap is attached at its PUT, which is the request refused.
    r = k.put("/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": tap})
    expect(r, 400, "the tap from the host's namespace", tap)
    note("tap %s without --netns: %s" % (tap, r.fault()))


def test_same_id_refused(t):
    """A second jail with a live jail's id is refused, and so is one whose jail was not removed."""
    j = Jail(t)
    second = ["--id", j.id, "--exec-file", EMBER, "--uid", str(UID), "--gid", str(GID),
              "--chroot-base-dir", BASE]
    one_clear_line(run_jailer(second), "already exists", "a second jail with a live jail's id")
    check(j.req("GET", "/").json()["id"] == j.id, "the first jail still serves")
    check(os.path.exists(os.path.join(j.root, "run", "ember.socket")), "its socket is still there")
    j.kill()
    one_clear_line(run_jailer(second), "already exists", "a jail with an ended jail's id")
    check(os.path.isdir(j.root), "the ended jail's directory is the operator's to remove")


def test_bad_input(t):
    """Every bad flag, id, path, number or cgroup setting: one line, status 2, nothing left."""
    link = os.path.join(t.tmp, "ember-link")
    os.symlink(EMBER, link)
    noexec = os.path.join(t.tmp, "not-executable")
    shutil.copyfile(EMBER, noexec)
    os.chmod(noexec, 0o644)
    script = os.path.join(t.tmp, "script")
    with open(script, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o755)
    foreign = os.path.join(t.tmp, "foreign")
    with open(HELLO, "rb") as f:
        elf = bytearray(f.read())
    elf[18:20] = (183).to_bytes(2, "little")  # e_machine: AArch64
    with open(foreign, "wb") as f:
        f.write(elf)
    os.chmod(foreign, 0o755)
    try:
        pids = t.hierarchy("pids")
    except Skip as why:
        pids = None
        note("SKIP the cgroup file and value cases: %s" % why)
    jid = t.new_id()
    good = {"--id": jid, "--exec-file": EMBER, "--uid": str(UID), "--gid": str(GID),
            "--chroot-base-dir": BASE}

    def args(**changes):
        a = dict(good)
        extra = changes.pop("extra", [])
        for k, v in changes.items():
            k = "--" + k.replace("_", "-")
            if v is None:
                a.pop(k, None)
            else:
                a[k] = v
        return [x for kv in a.items() for x in kv] + extra

    cases = [
        (args(exec_file=link), "is a symbolic link"),
        (args(exec_file=os.path.join(t.tmp, "missing")), "No such file"),
        (args(exec_file=t.tmp), "not a regular file"),
        (args(exec_file=noexec), "not executable"),
        (args(exec_file=script), "not an ELF program"),
        (args(exec_file=foreign), "a program for another machine"),
        (args(uid="abc"), "--uid 'abc'"),
        (args(uid="-1"), "--uid '-1'"),
        (args(uid="4294967295"), "--uid '4294967295'"),
        (args(gid="1x"), "--gid '1x'"),
        (args(uid=None), "--uid is required"),
        (args(id="bad_id"), "--id 'bad_id'"),
        (args(id="a" * 65), "1 to 64"),
        (args(chroot_base_dir=os.path.join(t.tmp, "nope")), "No such file"),
        (args(extra=["--cgroup", "pids.max"]), "use FILE=VALUE"),
        (args(extra=["--cgroup", "../pids.max=1"]), "not a cgroup file name"),
        (args(extra=["--parent-cgroup", "../up"]), "--parent-cgroup '../up'"),
        (args(extra=["--cgroup-version", "3"]), "use 1 or 2"),
        (args(extra=["--resource-limit", "fsize=abc"]), "not a number"),
        (args(extra=["--resource-limit", "stack=1"]), "unknown resource 'stack'"),
        (args(extra=["--resource-limit", "no-file=99999999999"]), "at most /proc/sys/fs/nr_open"),
        (args(extra=["--netns", "/dev/null"]), "not a network namespace"),
        (args(extra=["--frobnicate"]), "unknown flag '--frobnicate'"),
        (args(extra=["--daemonize", "--daemonize"]), "given twice"),
        (args(extra=["stray"]), "unexpected argument 'stray'"),
    ]
    if pids:
        cases += [
            (args(extra=pids.args("pids.bogus=1")), "unknown cgroup file"),
            (args(extra=pids.args("nosuch.max=1")), "controller 'nosuch'"),
            (args(extra=pids.args("pids.max=lots")), "refused by the kernel"),
        ]
    jail_dir = os.path.join(BASE, "ember", jid)
    for argv, needle in cases:
        out = run_jailer(argv)
        one_clear_line(out, needle, " ".join(argv[-4:]))
        check(not os.path.exists(jail_dir), "%s: the jail directory was left: %s" % (needle, jail_dir))
        check(not pids or not os.path.exists(pids.group(jid)), "%s: the cgroup was left" % needle)
    # Nothing of the pids parent either, where the jailer made it.
    check(not pids or not os.path.exists(os.path.join(pids.mount, pids.parent)),
          "the parent cgroup the jailer made was removed")


def test_failure_midway(t):
    """A step fails after the jail and its cgroup were made: the jailer removes both, from
    inside the jail and from a forked child's failure too."""
    pids = t.hierarchy("pids")
    # pids.max=1 lets the jailer in but no second process: the fork for --daemonize and the
    # one into a new PID namespace fail, after the pivot into the jail.
    for extra, needle in ((["--daemonize"], "cannot fork"),
                          (["--new-pid-ns"], "cannot start a process in a new PID namespace")):
        jid = t.new_id()
        out = run_jailer(["--id", jid, "--exec-file", EMBER, "--uid", str(UID), "--gid", str(GID),
                          "--chroot-base-dir", BASE] + pids.args("pids.max=1") + extra)
        lines = out.stderr.strip().splitlines()
        check(out.returncode == 4 and len(lines) == 1 and needle in lines[0] and
              "Resource temporarily unavailable" in lines[0], "%s: %d %r" % (extra, out.returncode, out.stderr))
        check(not os.path.exists(os.path.join(BASE, "ember", jid)), "%s: the jail was removed" % extra)
        check(not os.path.exists(os.path.join(pids.mount, pids.parent)), "%s: the cgroups were removed" % extra)
    # no-file=3 leaves the jailer no new descriptor once inside the jail: the undo log holds
    # the ones it needs, opened before, so everything it made goes all the same.
    jid = t.new_id()
    jail_dir = os.path.join(BASE, "ember", jid)
    t.undo.append(lambda: shutil.rmtree(jail_dir, ignore_errors=True))
    out = run_jailer(["--id", jid, "--exec-file", EMBER, "--uid", str(UID), "--gid", str(GID),
                      "--chroot-base-dir", BASE, "--resource-limit", "no-file=3"])
    lines = out.stderr.strip().splitlines()
    check(out.returncode == 4 and len(lines) == 1 and "Too many open files" in lines[0],
          "reported: %d %r" % (out.returncode, out.stderr))
    check(not os.path.exists(jail_dir), "the jail was removed without a new descriptor")


def test_daemonize(t):
    """--daemonize: the jailer returns once ember runs, detached, on /dev/null; the pid file
    names it."""
    j = Jail(t, [], ["--daemonize"], wait_socket=False)
    status = j.proc.wait(PATIENCE_S)
    check(status == 0, "the jailer exits 0 once ember runs: %d %r" % (status, j.stderr()))
    j.wait_socket()
    pid = j.pid()
    check(pid != j.proc.pid, "ember is a grandchild")
    stat = read("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()
    ppid, sid, tty = int(stat[1]), int(stat[3]), int(stat[4])
    check(sid != os.getsid(0) and sid != pid, "a new session, not its leader: sid %d" % sid)
    check(tty == 0, "no controlling terminal")
    for fd in (0, 1, 2):
        check(os.readlink("/proc/%d/fd/%d" % (pid, fd)) == "/dev/null", "fd %d on /dev/null" % fd)
    uids, gids, _ = status_ids(pid)
    check(uids == [UID] * 4 and gids == [GID] * 4, "uid:gid %r %r" % (uids, gids))
    check(j.req("GET", "/").json()["id"] == j.id, "the daemon serves its API")
    note("daemonized ember: pid %d, parent %d" % (pid, ppid))
    os.kill(pid, signal.SIGTERM)
    j.wait_pid_gone()


def test_new_pid_ns(t):
    """--new-pid-ns: ember is process 1 of its own PID namespace; the pid file holds its pid
    in the host's namespace; with --daemonize as well."""
    for extra in (["--new-pid-ns"], ["--new-pid-ns", "--daemonize"]):
        j = Jail(t, [], extra, wait_socket=False)
        status = j.proc.wait(PATIENCE_S)
        check(status == 0, "%s: the jailer exits 0 once ember runs: %d %r" % (extra, status, j.stderr()))
        j.wait_socket()
        pid = j.pid()
        uids, _, nspid = status_ids(pid)
        check(nspid == [pid, 1], "%s: ember is pid 1 in its namespace: NSpid %r" % (extra, nspid))
        check(uids == [UID] * 4, "uid %r" % uids)
        check(os.readlink("/proc/%d/ns/pid" % pid) != os.readlink("/proc/self/ns/pid"), "a new PID namespace")
        check(j.req("GET", "/").json()["state"] == "Not started", "it serves its API")
        expect(j.put("/boot-source", {"kernel_image_path": j.link_in(KEYBOARD)}), 204, "boot-source")
        expect(j.put("/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        if "--daemonize" not in extra:
            check(j.wait_output("tick 1"), "the guest runs: %r" % j.stdout()[-200:])
        # Process 1 of a namespace takes only the signals it handles; ember stops on SIGTERM.
        os.kill(pid, signal.SIGTERM)
        j.wait_pid_gone()


def test_resource_limits(t):
    """--resource-limit: ember runs with the limits given, and no-file 2048 by default."""
    for extra, fsize, nofile in (([], "unlimited", "2048"),
                                 (["--resource-limit", "fsize=1048576", "--resource-limit", "no-file=512"],
                                  "1048576", "512")):
        j = Jail(t, [], extra)
        limits = read("/proc/%d/limits" % j.pid())
        line = lambda name: [l for l in limits.splitlines() if l.startswith(name)][0].split()
        check(line("Max file size")[3:5] == [fsize, fsize], "fsize: %r" % line("Max file size"))
        check(line("Max open files")[3:5] == [nofile, nofile], "no-file: %r" % line("Max open files"))
        j.kill()


def test_cgroup_v2(t):
    """cgroup v2 as far as this host allows: a group made with a controller enabled down to
    it, and an existing group joined as it is; missing controllers refused by name."""
    mount = v2_mount()
    if not mount:
        raise Skip("no cgroup v2 hierarchy mounted")
    offered = read(os.path.join(mount, "cgroup.controllers")).split()
    root_ctl = os.path.join(mount, "cgroup.subtree_control")
    # A controller missing here is refused by name, before anything is made.
    for ctl, setting in (("memory", "memory.max=64M"), ("pids", "pids.max=10")):
        if ctl in offered:
            continue
        jid = t.new_id()
        out = run_jailer(["--id", jid, "--exec-file", EMBER, "--uid", str(UID), "--gid", str(GID),
                          "--chroot-base-dir", BASE, "--cgroup-version", "2", "--cgroup", setting])
        one_clear_line(out, "controller '%s' is not available" % ctl, "v2 " + setting)
        check(not os.path.exists(os.path.join(BASE, "ember", jid)), "nothing made")
        note("SKIP cgroup v2 %s limit: this host's v2 hierarchy offers only %s" % (ctl, offered or "nothing"))
    # Joining an existing group (no --cgroup): Firecracker's rule for version 2.
    pre = "ember-jailer-test-%d-pre" % PID
    os.mkdir(os.path.join(mount, pre))
    t.cgroup_dirs.append(os.path.join(mount, pre))
    j = Jail(t, [], ["--cgroup-version", "2", "--parent-cgroup", pre])
    check("0::/%s\n" % pre in read("/proc/%d/cgroup" % j.pid()), "ember joined %s: %s" %
          (pre, read("/proc/%d/cgroup" % j.pid())))
    j.kill()
    if "hugetlb" not in offered:
        raise Skip("the v2 hierarchy offers no controller to set (%s)" % offered)
    sizes = sorted(d.split("-")[1] for d in os.listdir("/sys/kernel/mm/hugepages"))
    size = "2MB" if "2048kB" in sizes else None
    if not size:
        raise Skip("no 2 MiB huge pages for hugetlb.2MB.max")
    parent = t.v2_parent()  # the test hands back whatever the jailer enabled at the top
    was_on = "hugetlb" in read(root_ctl).split()
    # A failure after the jailer enabled the controller hands it back, groups removed.
    jid = t.new_id()
    out = run_jailer(["--id", jid, "--exec-file", EMBER, "--uid", str(UID), "--gid", str(GID),
                      "--chroot-base-dir", BASE, "--cgroup-version", "2", "--cgroup", "hugetlb.bogus=1",
                      "--parent-cgroup", parent])
    one_clear_line(out, "unknown cgroup file", "v2 hugetlb.bogus")
    check(not os.path.exists(os.path.join(mount, parent)), "the groups made were removed")
    check(("hugetlb" in read(root_ctl).split()) == was_on, "the top's controllers are as they were")
    j = Jail(t, [], ["--cgroup-version", "2", "--cgroup", "hugetlb.%s.max=0" % size, "--parent-cgroup", parent])
    group = os.path.join(mount, parent, j.id)
    t.cgroup_dirs.append(group)
    check("0::/%s/%s\n" % (parent, j.id) in read("/proc/%d/cgroup" % j.pid()), "ember is in the v2 group")
    check(read(os.path.join(group, "hugetlb.%s.max" % size)).strip() == "0", "hugetlb limit written")
    check("hugetlb" in read(os.path.join(mount, parent, "cgroup.subtree_control")).split() and
          "hugetlb" in read(root_ctl).split(), "hugetlb enabled down to the jail's group")


# ---- Kata Containers' jailed flow ---------------------------------------------------------
# What Kata's Firecracker drivers do around the jailer (kata-containers: the Go runtime's
# src/runtime/virtcontainers/fc.go, runtime-rs's src/runtime-rs/crates/hypervisor/src/
# firecracker/): they make <base>/firecracker/<id>/root themselves, bind-mount it on itself
# (shared, remounted without noexec), make root/run, bind-mount the kernel, the image and other
# files into it (before the jailer starts in the Go runtime, after it in runtime-rs), create
# empty placeholder drives there, run the jailer as 0:0 and, to clean up, unmount all of it and
# remove <base>/firecracker/<id> whole.


def mounts_under(path):
    """Mount points at or below path in this namespace, deepest first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def mount(*args):
    out = subprocess.run(["mount"] + list(args), capture_output=True, text=True)
    check(out.returncode == 0, "mount %s: %s" % (" ".join(args), out.stderr.strip()))


MS_NOSUID, MS_REMOUNT, MS_BIND, MS_RELATIME = 2, 32, 4096, 1 << 21


def remount_bind(path, flags):
    """mount(2) with MS_REMOUNT | MS_BIND and exactly flags, as Kata calls it (mount(8) would
    keep the options the mount has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(None, path.encode(), None, ctypes.c_ulong(MS_REMOUNT | MS_BIND | flags), None) != 0:
        raise Failure("remount %s: %s" % (path, os.strerror(ctypes.get_errno())))


def umount_lazy(path):
    """umount2(path, MNT_DETACH), Kata's umount_jail_resource: errors ignored, as Kata does."""
    return subprocess.run(["umount", "-l", path], capture_output=True).returncode == 0


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def firecracker_named(t):
    """ember as Kata's hypervisor path: a file named firecracker (a hard link or a copy)."""
    bindir = os.path.join(t.tmp, "bin")
    fc = os.path.join(bindir, "firecracker")
    if not os.path.exists(fc):
        os.makedirs(bindir)
        try:
            os.link(EMBER, fc)
        except OSError:
            shutil.copy2(EMBER, fc)
    return fc


class KataSandbox:
    """One sandbox's jail as Kata prepares it, and Kata's clean-up. The caller's files (the
    kernel, the image) live outside the jail, in the test's directory, and are checked intact
    after every failure and after the clean-up."""

    def __init__(self, t, base=BASE):
        self.t = t
        self.id = t.new_id()
        self.base = base
        self.vm_path = os.path.join(base, "firecracker", self.id)
        self.root = os.path.join(self.vm_path, "root")
        self.resources = []
        self.kernel_src = os.path.join(t.tmp, "vmlinux-" + self.id)
        shutil.copyfile(KEYBOARD, self.kernel_src)
        self.image_src = os.path.join(t.tmp, "kata-containers-" + self.id + ".img")
        with open(self.image_src, "wb") as f:
            f.write(os.urandom(1 << 20))
        self.sources = {p: digest(p) for p in (self.kernel_src, self.image_src)}
        self.proc = None
        t.undo.append(self.teardown)

    def prepare(self, remount_flags=0):
        """remount_jailer_with_exec (runtime-rs: no flags) / fcRemountJailerRootWithExec (Go:
        nosuid,relatime): the root bind-mounted on itself, shared, remounted without noexec
        (and nodev); then the run directory."""
        os.makedirs(self.root)
        mount("--bind", self.root, self.root)
        mount("--make-shared", self.root)
        remount_bind(self.root, remount_flags)
        os.makedirs(os.path.join(self.root, "run"), 0o750)

    def jail_resource(self, src, dst):
        """jail_resource / fcJailResource: src bind-mounted at root/dst (made first, a file or
        a directory as src is), slave; ember is given /dst."""
        target = os.path.join(self.root, dst)
        if os.path.isdir(src):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "a").close()
        mount("--bind", src, target)
        mount("--make-slave", target)
        self.resources.append(dst)
        return "/" + dst

    def placeholder(self, name):
        """An empty file in the root, for a drive Kata patches later."""
        open(os.path.join(self.root, name), "w").close()
        self.resources.append(name)

    def argv(self, fc, ember_args, extra=()):
        """runtime-rs's jailer command line (prepare_vmm); the Go runtime's differs in
        --daemonize and its arguments after --."""
        return [JAILER, "--id", self.id, "--gid", "0", "--uid", "0", "--exec-file", fc,
                "--chroot-base-dir", self.base] + list(extra) + ["--"] + list(ember_args)

    def start(self, argv):
        self.out_path = os.path.join(self.t.tmp, self.id + ".out")
        self.err_path = os.path.join(self.t.tmp, self.id + ".err")
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def wait_api(self, sock, state=None):
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                r = request(sock, "GET", "/")
                if r.status == 200 and (state is None or r.json()["state"] == state):
                    return r.json()
            except OSError:
                pass
            check(time.monotonic() < deadline and (self.proc.poll() is None or self.proc.returncode == 0),
                  "no API at %s (jailer status %r): %s" % (sock, self.proc.poll(), read(self.err_path)))
            time.sleep(0.01)

    def entries(self):
        return sorted(os.listdir(self.root))

    def check_sources(self, when):
        for path, before in self.sources.items():
            check(os.path.exists(path) and digest(path) == before, "%s: %s is intact" % (when, path))

    def clean_up(self):
        """cleanup_resource / cleanupJail: every resource unmounted (MNT_DETACH, errors
        ignored), then the root, then <base>/firecracker/<id> removed whole."""
        for name in self.resources:
            umount_lazy(os.path.join(self.root, name))
        umount_lazy(self.root)
        left = mounts_under(self.vm_path)
        check(not left, "Kata's unmounts leave nothing mounted in the jail: %r" % left)
        shutil.rmtree(self.vm_path)

    def teardown(self):
        """After the test whatever happened: no process, nothing mounted, nothing left."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for point in mounts_under(self.vm_path):
            umount_lazy(point)
        if not mounts_under(self.vm_path):
            shutil.rmtree(self.vm_path, ignore_errors=True)


def test_kata_runtime_rs(t):
    """runtime-rs's jailed flow: the jail prepared by Kata, the jailer run as 0:0 with
    --api-sock /run//fc.sock, the kernel and image bind-mounted into the running jail, a
    placeholder drive, the hybrid vsock socket; the guest runs; SIGKILL and Kata's clean-up
    leave the caller's files intact."""
    k = KataSandbox(t)
    k.prepare()
    k.start(k.argv(firecracker_named(t), ["--api-sock", "/run//fc.sock"]))
    sock = os.path.join(k.root, "run", "fc.sock")
    k.wait_api(sock)
    check(int(read(os.path.join(k.root, "firecracker.pid"))) == k.proc.pid,
          "firecracker.pid names the process Kata started")
    # prepare_vmm_resources: the mounts come after the jailer's pivot and must reach ember.
    kernel = k.jail_resource(k.kernel_src, "vmlinux")
    image = k.jail_resource(k.image_src, "rootfs")
    expect(request(sock, "PUT", "/boot-source",
                   {"kernel_image_path": kernel, "boot_args": "console=ttyS0 pci=off iommu=off"}),
           204, "boot-source (bind-mounted after the jailer started)")
    expect(request(sock, "PUT", "/machine-config", {"mem_size_mib": 32, "vcpu_count": 1}), 204,
           "machine-config")
    expect(request(sock, "PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": image,
                                                   "is_root_device": False, "is_read_only": True}),
           204, "the image's drive")
    k.placeholder("drive1")
    expect(request(sock, "PUT", "/drives/drive1", {"drive_id": "drive1", "path_on_host": "//drive1",
                                                   "is_root_device": False, "is_read_only": False}),
           204, "an empty placeholder drive")
    expect(request(sock, "PUT", "/vsock", {"guest_cid": 3, "uds_path": "kata.hvsock", "vsock_id": "root"}),
           204, "the hybrid vsock, a path relative to the jail's /")
    expect(request(sock, "PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
    deadline = time.monotonic() + PATIENCE_S
    while "tick 1" not in read(k.out_path) and time.monotonic() < deadline and k.proc.poll() is None:
        time.sleep(0.05)
    check("tick 1" in read(k.out_path), "the guest runs: %r %r" % (read(k.out_path)[-200:], read(k.err_path)))
    check(request(sock, "GET", "/").json()["state"] == "Running", "ember says Running")
    hvsock = os.path.join(k.root, "kata.hvsock")
    check(os.path.exists(hvsock) and (os.stat(hvsock).st_mode & 0o170000) == 0o140000,
          "the agent's socket is where Kata looks: <jail>/kata.hvsock")
    drives = {d["drive_id"]: d for d in request(sock, "GET", "/vm/config").json()["drives"]}
    check(drives["rootfs"]["path_on_host"] == "/rootfs" and drives["rootfs"]["is_read_only"] and
          "drive1" in drives, "the drives as Kata gave them: %r" % drives)
    k.proc.kill()  # stop_vm: tokio's Child::kill
    k.proc.wait()
    k.check_sources("after the stop")
    k.clean_up()
    k.check_sources("after Kata's clean-up")
    check(not os.path.exists(k.vm_path), "Kata removed the jail")


def test_kata_go_runtime(t):
    """The Go runtime's jailed flow: the kernel, image and configuration file bind-mounted
    before the jailer runs, placeholder drives, --daemonize and --config-file /fcConfig.json,
    the API at /run/firecracker.socket, ember's pid from firecracker.pid, SIGTERM, clean-up.
    Before that, two failed starts in the same prepared jail (one before, one after the pivot)
    leave every file and mount of Kata's as it was and nothing of the jailer's."""
    fc = firecracker_named(t)
    k = KataSandbox(t)
    k.prepare()
    kernel = k.jail_resource(k.kernel_src, "vmlinux")
    image = k.jail_resource(k.image_src, "rootfs")
    config = {
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k panic=1"},
        "drives": [{"drive_id": "rootfs", "path_on_host": image, "is_root_device": False,
                    "is_read_only": True},
                   {"drive_id": "drive_0", "path_on_host": "/drive_0", "is_root_device": False,
                    "is_read_only": False}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32, "smt": False},
        "vsock": {"guest_cid": 3, "uds_path": "/kata.hvsock", "vsock_id": "root"},
        "metrics": {"metrics_path": "/metrics.fifo"},
    }
    config_src = os.path.join(k.vm_path, "fcConfig.json")
    with open(config_src, "w") as f:
        json.dump(config, f)
    k.sources[config_src] = digest(config_src)
    config_path = k.jail_resource(config_src, "fcConfig.json")
    k.placeholder("drive_0")
    # fcListenToFifo: a FIFO beside the jail, opened for reading, bind-mounted into it.
    fifo_src = os.path.join(k.vm_path, "metrics.fifo")
    os.mkfifo(fifo_src)
    fifo = os.open(fifo_src, os.O_RDONLY | os.O_NONBLOCK)
    t.undo.append(lambda: os.close(fifo))
    k.jail_resource(fifo_src, "metrics.fifo")
    argv_args = ["--config-file", config_path]
    caller = k.entries()
    mounts = mounts_under(k.root)
    run_stat = os.stat(os.path.join(k.root, "run"))
    root_stat = os.stat(k.root)

    def unchanged(when):
        check(k.entries() == caller, "%s: the jail holds Kata's files only: %r" % (when, k.entries()))
        check(mounts_under(k.root) == mounts, "%s: Kata's mounts are all there" % when)
        for path, was in ((os.path.join(k.root, "run"), run_stat), (k.root, root_stat)):
            now = os.stat(path)
            check((now.st_mode, now.st_uid, now.st_gid) == (was.st_mode, was.st_uid, was.st_gid),
                  "%s: %s has its owner and mode back" % (when, path))
        k.check_sources(when)

    # A failure before the pivot: a limit the kernel refuses, after ember's copy is in.
    out = run_jailer(k.argv(fc, argv_args, ["--daemonize", "--resource-limit", "no-file=99999999999"])[1:])
    one_clear_line(out, "at most /proc/sys/fs/nr_open", "an impossible limit")
    unchanged("after a failure before the pivot")
    # One after it, in the jail: a pid file left from an earlier run, found once the
    # folders and device nodes are made.
    stale = os.path.join(k.root, "firecracker.pid")
    with open(stale, "w") as f:
        f.write("1")
    caller = k.entries()
    out = run_jailer(k.argv(fc, argv_args, ["--daemonize"])[1:])
    one_clear_line(out, "firecracker.pid is already there", "a stale pid file")
    check(read(stale) == "1", "the stale pid file is the caller's: left as it was")
    unchanged("after a failure in the jail")
    os.unlink(stale)
    caller = k.entries()
    # Now the start that works.
    k.start(k.argv(fc, argv_args, ["--daemonize"]))
    check(k.proc.wait(PATIENCE_S) == 0, "the jailer returns once ember runs: %s" % read(k.err_path))
    sock = os.path.join(k.root, "run", "firecracker.socket")
    k.wait_api(sock, "Running")
    pid = int(read(stale))
    check(read("/proc/%d/cmdline" % pid).startswith("/firecracker\0--id\0%s\0" % k.id),
          "firecracker.pid names the jailed ember: %d" % pid)
    os.chmod(os.path.join(k.root, "kata.hvsock"), 0o640)  # StartVM: others kept off the socket
    # The guest ran: its vCPU exits, in the metrics ember writes into Kata's FIFO.
    deadline = time.monotonic() + PATIENCE_S
    exits = 0
    while exits == 0 and time.monotonic() < deadline:
        expect(request(sock, "PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
        time.sleep(0.1)
        try:
            data = os.read(fifo, 1 << 20).decode()
        except BlockingIOError:
            data = ""
        for line in data.splitlines():
            exits = max(exits, json.loads(line)["vcpu"]["exits"])
    check(exits > 0, "the guest ran: its vCPU exits reach Kata's metrics FIFO")
    note("the Go runtime's jailed guest: %d vCPU exits" % exits)
    os.kill(pid, signal.SIGTERM)  # fcEnd
    deadline = time.monotonic() + PATIENCE_S
    while os.path.exists("/proc/%d" % pid) and \
            read("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()[0] not in "ZX":
        check(time.monotonic() < deadline, "ember ends on SIGTERM")
        time.sleep(0.02)
    k.check_sources("after the stop")
    k.clean_up()
    del k.sources[config_src]  # Kata's own, in <id>: its clean-up removes it
    k.check_sources("after Kata's clean-up")


def test_kata_symlink_refused(t):
    """A symbolic link planted in a prepared jail where the jailer makes or takes a directory
    (the <id> directory, the root's run or dev) is refused, with nothing followed: its target
    keeps its owner, mode and contents, and the jail holds what it held."""
    fc = firecracker_named(t)
    outside = os.path.join(t.tmp, "outside")
    os.makedirs(outside, 0o755)
    with open(os.path.join(outside, "precious"), "w") as f:
        f.write("keep")
    was = os.stat(outside)

    def untouched(what):
        now = os.stat(outside)
        check((now.st_mode, now.st_uid, now.st_gid) == (was.st_mode, was.st_uid, was.st_gid) and
              os.listdir(outside) == ["precious"] and read(os.path.join(outside, "precious")) == "keep",
              "%s: the link's target is untouched: %r" % (what, os.listdir(outside)))

    for name in ("run", "dev"):
        k = KataSandbox(t)
        os.makedirs(k.root)
        mount("--bind", k.root, k.root)
        mount("--make-shared", k.root)
        k.jail_resource(k.kernel_src, "vmlinux")
        os.symlink(outside, os.path.join(k.root, name))
        caller = k.entries()
        out = run_jailer(k.argv(fc, [])[1:])
        one_clear_line(out, "%s/%s is a symbolic link" % (k.root, name), "a link at root/" + name)
        check(k.entries() == caller and os.path.islink(os.path.join(k.root, name)),
              "root/%s: the jail holds what it held: %r" % (name, k.entries()))
        untouched("root/" + name)
        k.check_sources("root/" + name)
        k.clean_up()
    k = KataSandbox(t)
    os.makedirs(os.path.dirname(k.vm_path), exist_ok=True)
    os.symlink(outside, k.vm_path)
    out = run_jailer(k.argv(fc, [])[1:])
    one_clear_line(out, "%s is a symbolic link" % k.vm_path, "a link as the <id> directory")
    untouched("the <id> directory")
    check(os.path.islink(k.vm_path), "the link is left as it was")
    os.unlink(k.vm_path)


def test_kata_mount_point_refused(t):
    """A prepared jail whose run directory is a mount point (a host directory bind-mounted
    there) is refused: the jailer would make it the jail user's, mode 0700. The mounted
    directory keeps its owner and mode, the jail what it held."""
    fc = firecracker_named(t)
    outside = os.path.join(t.tmp, "host-run")
    os.makedirs(outside, 0o755)
    was = os.stat(outside)
    k = KataSandbox(t)
    k.prepare()
    k.jail_resource(outside, "run")
    caller = k.entries()
    out = run_jailer(k.argv(fc, [])[1:])
    one_clear_line(out, "%s/run is a mount point" % k.root, "a mount point at root/run")
    now = os.stat(outside)
    check((now.st_mode, now.st_uid, now.st_gid) == (was.st_mode, was.st_uid, was.st_gid),
          "the mounted directory keeps its owner and mode")
    check(k.entries() == caller, "the jail holds what it held: %r" % k.entries())
    k.check_sources("a mount point at root/run")
    k.clean_up()
    check(os.path.isdir(outside), "Kata's clean-up leaves the mounted directory")


def test_kata_run_base(t):
    """Kata's jails live under /run, a tmpfs mounted nosuid, nodev and noexec on most hosts (as
    here): a jail the jailer would make there is refused, device nodes and ember being useless
    on it, and nothing is left; the root Kata remounted without nodev and noexec (the Go
    runtime's nosuid,relatime) is taken, and ember serves its API from it."""
    run = os.path.join(t.tmp, "run")
    os.makedirs(run)
    mount("-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=755", "tmpfs", run)
    t.undo.append(lambda: umount_lazy(run))
    base = os.path.join(run, "kata")
    os.makedirs(base)
    fc = firecracker_named(t)
    out = run_jailer(["--id", t.new_id(), "--exec-file", fc, "--uid", "0", "--gid", "0",
                      "--chroot-base-dir", base])
    one_clear_line(out, "is on a file system mounted nodev", "a jail on a nodev, noexec /run")
    check(os.listdir(base) == [], "nothing left in the base: %r" % os.listdir(base))
    k = KataSandbox(t, base)
    k.prepare(MS_NOSUID | MS_RELATIME)
    k.start(k.argv(fc, ["--api-sock", "/run/fc.sock"]))
    info = k.wait_api(os.path.join(k.root, "run", "fc.sock"))
    check(info["id"] == k.id and info["state"] == "Not started", "ember serves from the jail: %r" % info)
    k.proc.kill()
    k.proc.wait()
    k.clean_up()
    k.check_sources("after Kata's clean-up")


TESTS = [
    test_boot_unprivileged, test_vhost_user_socket, test_installed_as_firecracker, test_host_paths_unreachable, test_pids_max, test_memory_limit,
    test_netns_tap, test_same_id_refused, test_bad_input, test_failure_midway, test_daemonize,
    test_new_pid_ns, test_resource_limits, test_cgroup_v2, test_kata_runtime_rs, test_kata_go_runtime,
    test_kata_symlink_refused, test_kata_mount_point_refused, test_kata_run_base,
    test_cpuset_and_cpu_placement,
]


def main():
    global VERBOSE
    args = sys.argv[1:]
    if "-v" in args:
        VERBOSE = True
        args.remove("-v")
    selected = [t for t in TESTS if not args or t.__name__ in args or t.__name__[5:] in args]
    for path in (EMBER, JAILER, KEYBOARD, HELLO, MEMTOUCH):
        if not os.path.exists(path):
            print("jailer: missing %s (build with make all guests)" % path)
            return 1
    if os.geteuid() != 0:
        print("1..0 # SKIP the jailer needs root")
        return 0
    os.makedirs(BASE, exist_ok=True)
    passed = failed = skipped = 0
    for n, test in enumerate(selected, 1):
        tmp = tempfile.mkdtemp(prefix="ember-jailer-")
        t = Test(tmp)
        start = time.monotonic()
        result = None
        try:
            test(t)
        except Skip as ex:
            result = ("skip", str(ex))
        except Exception as ex:  # noqa: BLE001 - a test's failure of any kind is reported
            result = ("fail", "%s: %s" % (type(ex).__name__, ex))
        problems = t.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        leftovers = [os.path.join(BASE, e, x) for e in os.listdir(BASE)
                     for x in os.listdir(os.path.join(BASE, e)) if ("jt-%d-" % PID) in x]
        if leftovers:
            problems.append("left in %s: %s" % (BASE, leftovers))
            for d in leftovers:
                if mounts_under(d):  # never remove through a mount
                    problems.append("still mounted in %s: %s" % (d, mounts_under(d)))
                else:
                    shutil.rmtree(d, ignore_errors=True)
        if problems and (result is None or result[0] != "fail"):
            result = ("fail", "clean-up: %s" % "; ".join(problems))
        if result is None:
            passed += 1
            print("ok %d - %s (%.1f s)" % (n, test.__name__, time.monotonic() - start))
        elif result[0] == "skip":
            skipped += 1
            print("ok %d - %s # SKIP %s" % (n, test.__name__, result[1]))
        else:
            failed += 1
            print("not ok %d - %s: %s" % (n, test.__name__, result[1]))
        sys.stdout.flush()
    for e in os.listdir(BASE):
        try:
            os.rmdir(os.path.join(BASE, e))
        except OSError:
            pass
    try:
        os.rmdir(BASE)
    except OSError:
        pass
    print("jailer: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
