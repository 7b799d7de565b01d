#!/usr/bin/env python3
"""Snapshot, restore and live-migrate ember's test Linux guest, rerunning its checks each time.

The guest (linux/build-kernel.sh, linux/build-initramfs.sh) boots once under
`ember run --api-sock` with ember.snapshot=1: its /init runs the checks (smp, blk, rng,
console, net, vsock), prints "ember-init: snapshot point" and waits for a request through
the hvc0 shell to run them again with new parameters (a new blk seed and console token).
Then, without the guest ever booting again:

  source     the boot's checks; pause, Full snapshot; resume and a rerun on the same
             process; pause, Diff snapshot (ember run --track-dirty-pages)
  migration  `ember migrate` of the running guest to a fresh `ember --api-sock`, a rerun
             there
  restore-K  K = 1..N: a fresh ember in the same network namespace, PUT /snapshot/load of
             the Full snapshot with resume_vm (a vsock_override for a new socket), a rerun
  diff       the same from the Diff snapshot, its memory file merged onto the Full one's
             with ember-snapshot-merge

Each round's guest TAP lines become this test's lines, with the host's own checks: the
disk image holds that round's data (debugfs, e2fsck), the hvc0 shell's reply arrived on
ember's stdout, the vsock streams matched both ways. A restore's time runs from the load
request to the guest's first line after it. Run as root (a network namespace and a tap);
imports the Linux harness, ember_linux_test.py, for the host side.

Should the migration fail, the guest must still run on the source: a rerun there instead.
"""

import argparse
import http.client
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ember_linux_test as elt  # noqa: E402

CHECKS = ["smp", "blk", "rng", "console", "net", "vsock"]
MARKER = "ember-init: snapshot point"
TAP_RE = re.compile(r"^(not )?ok (\d+) - (.*)$")


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def api(sock, method, path, body=None, timeout=60):
    """One request; (status, body text)."""
    c = UnixHTTP(sock, timeout)
    try:
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def wait_socket(path, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            try:
                api(path, "GET", "/", timeout=5)
                return True
            except OSError:
                pass
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


class SnapSetup(elt.Setup):
    """The harness's host side; the hvc0 shell stays alive for the reruns' requests."""

    def hvc_command(self):
        tok = self.hvc_token
        return f"echo ember-hvc-reply $((6*7)) {tok}; echo {tok} >/tmp/hvc.fifo\n"

    def start_vsock(self, uds):
        """A new listener for the guest's connections (at uds_PORT) and a new host thread
        for this round; host->guest connections go to uds."""
        if self.vsock_listener:
            self.vsock_listener.close()
        self.vsock_uds = uds
        path = f"{uds}_{elt.VSOCK_HOST_PORT}"
        if os.path.exists(path):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.listen(self.args.vsock_conns)
        self.vsock_listener = s
        self.vsock_result = {}
        self.vsock_thread = threading.Thread(target=self.vsock_host, daemon=True)
        self.vsock_thread.start()


class Ember:
    """One ember process: stdout lines (serial and hvc0) into a queue and the serial log,
    stderr into its own log."""

    def __init__(self, name, cmd, work, t0):
        self.name = name
        self.t0 = t0
        self.log = open(os.path.join(work, f"serial-{name}.log"), "w")
        self.errpath = os.path.join(work, f"stderr-{name}.log")
        self.err = open(self.errpath, "w")
        self.lines = queue.Queue()
        self.on_line = None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err)
        threading.Thread(target=self.reader, daemon=True).start()

    def reader(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            t = time.time()
            self.log.write(f"{t - self.t0:8.2f} {line}\n")
            self.log.flush()
            if self.on_line:
                self.on_line(line)
            self.lines.put((t, line))
        self.lines.put((time.time(), None))

    def send(self, text):
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()

    def stderr_tail(self, n=6):
        try:
            with open(self.errpath, errors="replace") as f:
                return " | ".join(line.strip() for line in f.readlines()[-n:])
        except OSError:
            return ""


class Test:
    def __init__(self, a, st, res, work):
        self.a, self.st, self.res, self.work = a, st, res, work
        self.t0 = time.time()
        self.seq = 0
        self.timings = []

    def log(self, msg):
        elt.log(f"{time.time() - self.t0:6.1f}s {msg}")

    # --- one round of checks ----------------------------------------------
    def collect(self, vm, label, timeout):
        """The guest's lines up to the marker: (first line time, {n: (ok, text)}, plan,
        marker seen, hvc reply seen)."""
        guest, plan, first, marker, reply = {}, None, None, False, False
        want = f"ember-hvc-reply 42 {self.st.hvc_token}"
        deadline = time.time() + timeout
        while True:
            try:
                t, line = vm.lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                break
            if line is None:
                break
            first = first or t
            # The hvc0 shell's prompt (busybox: "/ # " and a cursor query) has no newline:
            # the serial line after it shares its line on ember's stdout.
            line = re.sub(r"^.*\x1b\[6n", "", line)
            if want in line:
                reply = True
            m = TAP_RE.match(line)
            if m:
                guest[int(m.group(2))] = (m.group(1) is None, m.group(3))
                print(f"# {t - self.t0:6.1f}s {label}: {line}", flush=True)
            elif line.startswith("1.."):
                plan = int(line[3:]) if line[3:].isdigit() else None
            elif re.search(r"Kernel panic|KVM internal error|emulation failure|Oops", line):
                print(f"# {t - self.t0:6.1f}s {label} serial: {line}", flush=True)
            if MARKER in line:
                marker = True
                break
            if time.time() > deadline:
                break
        return first, guest, plan, marker, reply

    def round(self, vm, label, request, timeout=None, t_start=None):
        """Runs one round: sends the rerun request (none for the boot), checks the guest's
        TAP lines and the host's view. Returns the time of the guest's first line, or None
        when the guest did not reach the snapshot point again: its later lines would be
        taken for the next round's, so the caller gives that machine up."""
        st = self.st
        timeout = timeout or self.a.round_timeout
        if request:
            self.seq += 1
            st.blk_seed = f"s{st.tag}r{self.seq}"
            st.hvc_token = f"hvc-{st.tag}-r{self.seq}"
            line = f"blk_seed={st.blk_seed} hvc_token={st.hvc_token}"
            vm.send(f"echo ember-hvc-reply $((6*7)) {st.hvc_token}; "
                    f"echo '{line}' >/tmp/hvc.fifo\n")
        sent = time.time()
        first, guest, plan, marker, reply = self.collect(vm, label, timeout)
        if request and first:
            # For comparison with a restore's: the same request to a guest that was running.
            self.log(f"{label}: the guest's first line {(first - sent) * 1000:.0f} ms after "
                     "the request was sent")
        res = self.res
        for i, c in enumerate(CHECKS, 1):
            if i in guest:
                ok, text = guest[i]
                name, _, reason = text.partition(" # ")
                res.add(ok, f"{label}: guest {name}", reason)
            else:
                res.add(False, f"{label}: guest {c}", "no TAP line from the guest"
                        + (f" (ember: {vm.stderr_tail()})" if vm.proc.poll() is not None else ""))
        if plan is not None and plan != len(CHECKS):
            res.add(False, f"{label}: guest plan", f"{plan}, expected {len(CHECKS)}")
        res.add(marker, f"{label}: the guest reached the snapshot point again",
                f"no '{MARKER}' within {timeout} s; ember: {vm.stderr_tail()}")
        h = st.hvc_result if not request else {"reply": reply}
        res.add(bool(h.get("reply")) or reply,
                f"{label}: host read the hvc0 shell's reply ({st.hvc_token})",
                h.get("error", "no 'ember-hvc-reply 42' on ember's stdout"))
        st.vsock_thread.join(30)
        v = st.vsock_result
        res.add(bool(v.get("guest->host") and v.get("host->guest")),
                f"{label}: host vsock: {self.a.vsock_conns} streams each way matched "
                f"({self.a.vsock_bytes} bytes each)", v.get("error", repr(v)))
        return first if marker else None

    def finish(self, vm, label):
        """Ends the machine from inside: `reboot -f` through the hvc0 shell must end ember
        with status 0, and ember's closing vsock counters show nothing refused."""
        if vm.proc.poll() is not None:
            return
        try:
            vm.send("reboot -f\n")
            rc = vm.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired) as e:
            rc = f"none ({e})"
        self.res.add(rc == 0, f"{label}: reboot -f through the hvc0 shell ended ember with "
                     "status 0", f"status {rc}; ember: {vm.stderr_tail()}")
        vm.kill()
        counters = None
        with open(vm.errpath, errors="replace") as f:
            for line in f:
                m = re.search(r"vsock: .*refused packets (\d+), credit violations (\d+), "
                              r"packets for unknown connections (\d+), RSTs dropped (\d+)", line)
                if m:
                    counters = [int(x) for x in m.groups()]
        self.res.add(counters == [0, 0, 0, 0],
                     f"{label}: ember's vsock refused no packet of the guest's and dropped no RST",
                     "no counters from ember" if counters is None else
                     "refused %d, credit violations %d, unknown connections %d, RSTs dropped %d"
                     % tuple(counters))

    def check_image(self, label):
        elt.check_blk_image(self.st, self.res, f"{label}: host", self.a)

    # --- processes ------------------------------------------------------------
    def api_ok(self, sock, method, path, body, what, timeout=120):
        try:
            status, text = api(sock, method, path, body, timeout=timeout)
        except OSError as e:
            status, text = 0, str(e)
        ok = status == 204
        self.res.add(ok, what, f"HTTP {status}: {text.strip()[:300]}")
        return ok

    def fresh(self, name):
        sock = os.path.join(self.work, f"api-{name}.sock")
        cmd = self.st.wrap([self.a.ember, "--api-sock", sock, "--level", "Info",
                            "--id", name])
        vm = Ember(name, cmd, self.work, self.t0)
        if not wait_socket(sock, vm.proc):
            self.res.add(False, f"{name}: ember's API socket", vm.stderr_tail())
            vm.kill()
            return None, sock
        return vm, sock

    def restore(self, label, state, mem):
        """A fresh ember loads (state, mem) and resumes; one rerun (restore-1 also takes NMIs
        and reruns again); the image checked.

        On hosts whose KVM ignores the restored TSC (this project's test machines: ember warns)
        the guest sees the time since the snapshot pass at once, and its RCU reports a stall,
        with NMI backtraces: the kernel must take NMIs, which is why the baseline CPU template
        hides FSGSBASE (with it the NMI entry runs LSL, which this host cannot emulate)."""
        vm, sock = self.fresh(label)
        if not vm:
            return
        uds = os.path.join(self.work, f"v-{label}.sock")
        self.st.start_vsock(uds)
        body = {"snapshot_path": state,
                "mem_backend": {"backend_type": "File", "backend_path": mem},
                "resume_vm": True, "vsock_override": {"uds_path": uds}}
        t = time.time()
        ok = self.api_ok(sock, "PUT", "/snapshot/load", body,
                         f"{label}: PUT /snapshot/load with resume_vm")
        t_loaded = time.time()
        if ok:
            first = self.round(vm, label, request=True)
            if first:
                self.timings.append((label, t_loaded - t, first - t))
                self.log(f"{label}: load answered in {(t_loaded - t) * 1000:.0f} ms, the "
                         f"guest's first line {(first - t) * 1000:.0f} ms after the request")
                if label == "restore-1" and self.nmi(vm, sock, label):
                    self.st.start_vsock(uds)
                    first = self.round(vm, f"{label} after NMIs", request=True)
                if first:
                    self.finish(vm, label)
        vm.kill()
        if ok:
            self.check_image(label)

    def nmi(self, vm, sock, label):
        """PUT /vm/nmi: each vCPU of the restored kernel takes an NMI it does not expect,
        says so (an emergency message, so printed), and runs on."""
        if not self.api_ok(sock, "PUT", "/vm/nmi", {}, f"{label}: PUT /vm/nmi"):
            return False
        want = set(range(self.a.cpus))
        seen = set()
        deadline = time.time() + 60
        while seen != want and time.time() < deadline and vm.proc.poll() is None:
            with open(vm.log.name, errors="replace") as f:
                seen = {int(m.group(1)) for m in
                        re.finditer(r"NMI received for unknown reason \w+ on CPU (\d+)", f.read())}
            time.sleep(0.2)
        self.res.add(seen == want, f"{label}: the guest's kernel took an NMI on each of its "
                     f"{self.a.cpus} vCPUs and said so",
                     f"NMI reported on CPUs {sorted(seen)}; ember: {vm.stderr_tail()}")
        # Those lines came before the next round's request: not its answer.
        while not vm.lines.empty():
            vm.lines.get_nowait()
        return seen == want

    # --- the run ---------------------------------------------------------------
    def run(self):
        a, st, work = self.a, self.st, self.work
        st.make_disks()
        st.make_net()
        st.make_console()
        st.cmdline.update({"vsock_port": str(elt.VSOCK_HOST_PORT),
                           "vsock_listen": str(elt.VSOCK_GUEST_PORT),
                           "vsock_bytes": str(a.vsock_bytes),
                           "vsock_conns": str(a.vsock_conns),
                           "checks": ",".join(CHECKS), "expect_cpus": str(a.cpus),
                           "snapshot": "1"})
        uds = os.path.join(work, "v-source.sock")
        st.start_vsock(uds)
        cmdline = elt.BASE_CMDLINE + "".join(f" ember.{k}={v}" for k, v in st.cmdline.items())
        extra = elt.ember_host_workaround(a)
        sock = os.path.join(work, "api-source.sock")
        cmd = st.wrap([a.ember, "run", "--log-level", "info", "--kernel", a.kernel,
                       "--initrd", a.initrd, "--memory", str(a.mem), "--cpus", str(a.cpus),
                       "--cpu-template", "baseline", "--transport", a.transport,
                       "--cmdline", f"{cmdline} {extra}".strip(),
                       "--drive", f"path={st.rw_img},id=ember-rw", "--rng",
                       "--console", "virtio", "--net", "tap=tap0",
                       "--vsock", f"cid={elt.VSOCK_GUEST_CID},uds={uds}",
                       "--api-sock", sock, "--track-dirty-pages"])
        self.log("work dir: " + work)
        self.log("source: " + " ".join(cmd))
        src = Ember("source", cmd, work, self.t0)
        src.on_line = lambda line: st.console_line(line, src.proc.stdin)
        try:
            self.source(src, sock)
        finally:
            src.kill()

        full = (os.path.join(work, "full.state"), os.path.join(work, "full.mem"))
        diff = (os.path.join(work, "diff.state"), os.path.join(work, "diff.mem"))
        if not all(os.path.exists(p) for p in full):
            return
        time.sleep(a.restore_gap)
        for k in range(1, a.restores + 1):
            self.restore(f"restore-{k}", *full)
        if all(os.path.exists(p) for p in diff):
            merged = os.path.join(work, "merged.mem")
            shutil.copyfile(full[1], merged)
            r = elt.run([a.merge, merged, diff[1]], check=False)
            self.res.add(r.returncode == 0, "diff: ember-snapshot-merge onto the Full memory",
                         r.stdout.strip()[-300:])
            if r.returncode == 0:
                self.restore("diff", diff[0], merged)

    def source(self, src, sock):
        a, st, res = self.a, self.st, self.res
        if not wait_socket(sock, src.proc, 30):
            res.add(False, "source: ember run --api-sock serves its API", src.stderr_tail())
            return
        if not self.round(src, "source boot", request=False, timeout=a.boot_timeout):
            return
        if a.only_migration:
            return self.migrate(src, sock)  # (ends the source)
        full = (os.path.join(self.work, "full.state"), os.path.join(self.work, "full.mem"))
        if not self.api_ok(sock, "PATCH", "/vm", {"state": "Paused"}, "source: pause"):
            return
        t = time.time()
        ok = self.api_ok(sock, "PUT", "/snapshot/create",
                         {"snapshot_type": "Full", "snapshot_path": full[0],
                          "mem_file_path": full[1]}, "source: Full snapshot")
        self.log(f"source: Full snapshot in {(time.time() - t) * 1000:.0f} ms")
        if not ok:
            return
        self.check_image("source boot")
        # The same process goes on after its snapshot; its next pages go to a Diff.
        if not self.api_ok(sock, "PATCH", "/vm", {"state": "Resumed"}, "source: resume"):
            return
        st.start_vsock(st.vsock_uds)
        if not self.round(src, "source rerun", request=True):
            return
        self.check_image("source rerun")
        if self.api_ok(sock, "PATCH", "/vm", {"state": "Paused"}, "source: pause again"):
            t = time.time()
            self.api_ok(sock, "PUT", "/snapshot/create",
                        {"snapshot_type": "Diff",
                         "snapshot_path": os.path.join(self.work, "diff.state"),
                         "mem_file_path": os.path.join(self.work, "diff.mem")},
                        "source: Diff snapshot")
            self.log(f"source: Diff snapshot in {(time.time() - t) * 1000:.0f} ms, its "
                     f"memory file holds {self.allocated(os.path.join(self.work, 'diff.mem'))}")
            if not self.api_ok(sock, "PATCH", "/vm", {"state": "Resumed"},
                               "source: resume after the Diff snapshot"):
                return
        if a.no_migration:
            return self.finish(src, "source")
        self.migrate(src, sock)

    def allocated(self, path):
        try:
            return f"{os.stat(path).st_blocks * 512} bytes"
        except OSError:
            return "none"

    def migrate(self, src, sock):
        """The running guest moves to a fresh ember; a rerun there."""
        a, st, res = self.a, self.st, self.res
        dst, dsock = self.fresh("migrated")
        if not dst:
            return
        url = f"unix:{os.path.join(self.work, 'migrate.sock')}"
        t = time.time()
        r = subprocess.run([a.ember, "migrate", "--from", sock, "--to", dsock, "--url", url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=300)
        took = time.time() - t
        out = r.stdout.strip()
        self.log(f"migration: ember migrate took {took * 1000:.0f} ms, status {r.returncode}")
        res.add(r.returncode == 0, f"migration: ember migrate of the running guest ({took:.2f} s)",
                f"status {r.returncode}: {out[-400:]}; source: {src.stderr_tail()}; "
                f"destination: {dst.stderr_tail()}")
        if r.returncode == 0:
            try:
                src.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            res.add(src.proc.poll() == 0, "migration: the source ended with status 0",
                    f"status {src.proc.poll()}")
            # The guest's vsock device now belongs to the destination, on the same socket.
            st.start_vsock(st.vsock_uds)
            if self.round(dst, "migrated", request=True):
                self.finish(dst, "migrated")
        else:
            # A failed migration leaves the machine running on the source as before.
            st.start_vsock(st.vsock_uds)
            if self.round(src, "source after the failed migration", request=True):
                self.finish(src, "source")
        dst.kill()
        self.check_image("migrated" if r.returncode == 0 else "source after the failed migration")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--vmm", choices=["ember"], default="ember", help="ember only (run.sh's)")
    p.add_argument("--transport", choices=["mmio", "pci"], default="mmio")
    p.add_argument("--restores", type=int, default=3, help="restores of the Full snapshot")
    p.add_argument("--restore-gap", type=float, default=0,
                   help="seconds to wait between the Full snapshot and its first restore "
                        "(the guest's clock may see them pass: see restore())")
    p.add_argument("--no-migration", action="store_true", help="skip the live migration")
    p.add_argument("--only-migration", action="store_true",
                   help="boot and migrate: no snapshots, no restores")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--mem", type=int, default=128, help="guest RAM in MiB")
    p.add_argument("--blk-kib", type=int, default=64)
    p.add_argument("--net-kib", type=int, default=64)
    p.add_argument("--vsock-bytes", type=int, default=300000,
                   help="bytes each way per vsock stream (more than the 256 KiB windows)")
    p.add_argument("--vsock-conns", type=int, default=2, help="vsock connections each way")
    p.add_argument("--boot-timeout", type=int, default=360, help="seconds for boot and checks")
    p.add_argument("--round-timeout", type=int, default=240, help="seconds for each rerun")
    p.add_argument("--ember", default=None, help="ember binary (default build/ember)")
    p.add_argument("--work", help="keep images and logs in this directory")
    a = p.parse_args()
    build = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build")
    a.ember = os.path.abspath(a.ember or os.path.join(build, "ember"))
    a.merge = os.path.join(os.path.dirname(a.ember), "ember-snapshot-merge")
    a.kernel, a.initrd = os.path.abspath(a.kernel), os.path.abspath(a.initrd)
    # What Setup reads.
    a.vmm, a.net, a.checks, a.timeout = "ember", "tap", CHECKS, a.round_timeout
    if os.geteuid() != 0:
        print("1..0 # SKIP needs root (a network namespace and a tap device)")
        return
    if a.work:
        work = os.path.abspath(a.work)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
    else:
        work = tempfile.mkdtemp(prefix="ember-snapshot-test-")
    st = SnapSetup(a, work)
    res = elt.Results()
    t = Test(a, st, res, work)
    try:
        t.run()
    finally:
        st.cleanup()
    for label, loaded, first in t.timings:
        elt.log(f"restore time {label}: load answered {loaded * 1000:.0f} ms, guest's first "
                f"line {first * 1000:.0f} ms after the load request")
    ok = res.print()
    if not a.work:
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            elt.log(f"work dir kept for a look (serial-*.log, stderr-*.log, images): {work}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
