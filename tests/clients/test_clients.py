#!/usr/bin/env python3
"""Firecracker's clients against ember: each client's own sequence, replayed byte for byte.

Standard library only. Usage: tests/clients/test_clients.py [NAME...]
Environment: EMBER (default build/ember), GUEST_DIR (default build/guest).
Prints one TAP line per step ("ok N - CLIENT: STEP") and ends with
"clients: N passed, N failed, N skipped". A client whose step fails stops there.

Where each sequence comes from (the requests, their order, headers and bodies were read
from these sources; nothing here is copied from them):

- firecracker-containerd through firecracker-go-sdk:
  firecracker-microvm/firecracker-go-sdk @ 6fb280e993d4516ee6d5d20238572fe8752bc7ca:
  machine.go (Start, startVMM/waitForSocket, setupLogging, setupMetrics, createMachine +
  refreshMachineConfiguration, createBootSource, attachDrive, createNetworkInterface,
  addVsock, setMmdsConfig, startInstance, SetMetadata, UpdateMetadata, GetMetadata,
  UpdateGuestDrive, PauseVM, ResumeVM, DescribeInstanceInfo, Shutdown -> sendCtrlAltDel),
  handlers.go (defaultFcInitHandlerList), firecracker.go (PatchGuestDriveByID),
  drives.go (DrivesBuilder: the root drive is "root_drive"), command_builder.go
  (--api-sock first), client_transports.go (net/http Transport dialing the unix socket,
  host "localhost"), vsock/dial.go ("CONNECT <port>\\n", answer starting "OK "),
  client/models/*.go (field order and omitempty of every body);
  go-openapi/runtime @ v0.24.0 (357afc4b06befbc6da1177a1eaf9579c99ab6d5a), the module
  version go.mod names: client/request.go (the body is a bytes.Buffer, so Content-Length;
  Content-Type only with a body), client/runtime.go (Accept from the operation),
  json.go (json.Encoder, SetEscapeHTML(false): the body ends with a newline).
  firecracker-microvm/firecracker-containerd @ be68640a5d2237f5b427c37c1f5809ec154126c5:
  runtime/service.go (createVM, buildVMConfiguration: FIFOs made with mkfifo and named in
  PUT /logger and /metrics, vsock "agent_api" with no CID set, relative socket paths;
  SetVMMetadata/UpdateVMMetadata as json.RawMessage; PauseVM/ResumeVM; terminate ->
  DescribeInstanceInfo), runtime/helpers.go (machine config: 1 vCPU, 128 MiB, smt false),
  config/config.go (kernel args, cpu_template T2), internal/cpu_template.go (T2 only on
  Intel), runtime/drive_handler.go (stub drives: magic bytes, length, id, padded to 512
  bytes; drive ids base32 of the stub file name; PATCH with the real image),
  runtime/noop_jailer.go (--id VMID after --api-sock), internal/common.go (file names).
- Kata Containers, kata-containers/kata-containers @ 7c6ba40c54ea29b459b4997cff948caaba4e658b:
  Go runtime src/runtime/virtcontainers/fc.go (--version parsed as semver >= 0.21.1,
  non-jailed launch "--api-sock <root>/run/firecracker.socket --config-file fcConfig.json",
  the configuration file written with json.MarshalIndent(tab), GET / until "Running",
  rootfs + 8 empty placeholder drives drive_0..drive_7, vsock "root" CID 3 on kata.hvsock,
  NICs with empty rate limiters, the logger/metrics FIFOs Kata reads, PATCH /drives
  hot-swap onto the placeholder's own path, SIGTERM at stop),
  src/runtime/virtcontainers/types/fcConfig.go, src/runtime/virtcontainers/hypervisor.go
  (root parameters), src/runtime/config/configuration-fc.toml.in (2048 MiB, 1 vCPU);
  Rust runtime-rs src/runtime-rs/crates/hypervisor/src/firecracker/{inner.rs,
  inner_hypervisor.rs, inner_device.rs, fc_api.rs} (no version check, "--api-sock
  <vm>/run/fc.sock", hyper over hyperlocal with Accept/Content-Type set, serde_json bodies
  (sorted keys), boot-source, machine-config, rootfs, drive1..drive5, vsock twice, NIC,
  InstanceStart, PATCH /drives with "rate_limiter": null, SIGKILL at stop),
  src/libs/kata-types/src/config/hypervisor/rate_limiter.rs (None when unlimited).
- flintlock, liquidmetal-dev/flintlock @ 71121229036dd3732ce6d1620323de0e23d07cf0:
  infrastructure/microvm/firecracker/create.go (launch line), config.go and types.go (the
  configuration file: smt on amd64, mmds-config always, vsock "guest-agent", logger at
  Debug with level and origin), state.go (file names, json.MarshalIndent with one space;
  metadata values base64-decoded), provider.go (State: the pid file and signal 0;
  Delete: SIGHUP, then wait), pkg/defaults/defaults.go.

go_request was checked against the real client once: firecracker-go-sdk v1.0.0 (the newest
tag that builds with this machine's Go 1.19), built in GOPATH mode from Debian's golang-*
packages (go-openapi runtime 0.23.3), ran Start, PauseVM, ResumeVM, UpdateGuestDrive and
Shutdown against ember through a relaying socket; every request it sent matched
go_request's bytes for the same call, all on one connection. With the Linux guest the same
build's Start, UpdateGuestDrive (the guest then mounted the image), vsock.DialContext (CONNECT,
OK, a stream each way, guest CID 0), PauseVM, ResumeVM, Shutdown and Wait all succeeded.
"""

import base64
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import shutil
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "api"))
import test_api as api  # noqa: E402 - ember's API test helpers (Conn, Ember, check, ...)

from test_api import Failure, Skip, check, PATIENCE_S  # noqa: E402

# Absolute: ember runs in the client's directory, where relative paths would not resolve.
EMBER = os.path.abspath(api.EMBER)
KEYBOARD = os.path.abspath(api.KEYBOARD)
HELLO = os.path.abspath(api.HELLO)

# ---- what the clients' HTTP stacks put on the wire ------------------------------------


def go_json(obj, indent=None, escape_html=False):
    """encoding/json's bytes for obj, whose dicts are already in the Go struct's field order
    (maps: sorted keys, as Go sorts them). json.Marshal/MarshalIndent escape <, > and &;
    the go-openapi producer turns that off. Non-ASCII stays as it is in both."""
    if indent is None:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    else:
        text = json.dumps(obj, indent=indent, separators=(",", ": "), ensure_ascii=False)
    if escape_html:
        text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def go_request(method, path, body=None):
    """A go-openapi operation sent by net/http: request line, Host, User-Agent, Content-Length
    (only with a body), the header map in sorted order (Accept, Content-Type), then the
    Transport's Accept-Encoding. The body is json.Encoder output: a trailing newline."""
    raw = (go_json(body) + "\n").encode() if body is not None else b""
    head = "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Go-http-client/1.1\r\n" % (method, path)
    if body is not None:
        head += "Content-Length: %d\r\n" % len(raw)
    head += "Accept: application/json\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    head += "Accept-Encoding: gzip\r\n\r\n"
    return head.encode() + raw


def hyper_request(method, path, body, sock_path):
    """runtime-rs: hyper's HTTP/1 client over hyperlocal. Headers in insertion order with
    lowercase names: the two the request builder sets, the Host the legacy client adds
    (hyperlocal's authority: the socket path in hex, port 0), the Content-Length of the
    encoder. Bodies are serde_json's to_string: no spaces, keys sorted."""
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    host = sock_path.encode().hex()
    head = ("%s %s HTTP/1.1\r\naccept: application/json\r\ncontent-type: application/json\r\n"
            "host: %s:0\r\ncontent-length: %d\r\n\r\n" % (method, path, host, len(raw)))
    return head.encode() + raw


# ---- reporting -------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.n = 0
        self.passed = self.failed = self.skipped = 0

    def ok(self, client, step):
        self.n += 1
        self.passed += 1
        print("ok %d - %s: %s" % (self.n, client, step), flush=True)

    def not_ok(self, client, step, why):
        self.n += 1
        self.failed += 1
        print("not ok %d - %s: %s: %s" % (self.n, client, step, why), flush=True)

    def skip(self, client, step, why):
        self.n += 1
        self.skipped += 1
        print("ok %d - %s: %s # SKIP %s" % (self.n, client, step, why), flush=True)


REPORT = Report()


class Flow:
    """One client's run: steps are reported as they pass; the first failure ends the flow."""

    current = None  # the flow running now, for the report of its failure

    def __init__(self, client):
        self.client = client
        self.step_name = None
        Flow.current = self

    def step(self, name):
        self.step_name = name

    def passed(self, name=None):
        REPORT.ok(self.client, name or self.step_name)
        self.step_name = None

    def skip(self, name, why):
        REPORT.skip(self.client, name, why)

    def note(self, text):
        print("# %s: %s" % (self.client, text), flush=True)


class Wire:
    """One keep-alive connection as the client's HTTP stack keeps it: dialed at the first
    request, reused for every later one. Checks that each answer is one a Go or hyper
    client takes: HTTP/1.1, a Content-Length (or 204), no Connection: close, JSON bodies."""

    def __init__(self, flow, sock_path, encode):
        self.flow = flow
        self.sock_path = sock_path
        self.encode = encode
        self.conn = None
        self.requests = 0
        self.connections = 0

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def send(self, method, path, body=None, status=204, step=None, fault_has=None):
        step = step or "%s %s" % (method, path)
        self.flow.step(step)
        if self.conn is None:
            self.conn = api.Conn(self.sock_path)
            self.connections += 1
        self.conn.send_raw(self.encode(method, path, body))
        self.requests += 1
        r = self.conn.read_response()
        check(r.status == status, "expected %d, got %r" % (status, r))
        check(r.headers.get("connection", "").lower() != "close", "the server closes the connection")
        if r.status == 204:
            check(r.body == "", "a 204 with a body: %r" % r.body)
        else:
            check("content-length" in r.headers, "no Content-Length")
            if r.body:
                check(r.headers.get("content-type", "").startswith("application/json"),
                      "content type %r" % r.headers.get("content-type"))
                r.json()
        if fault_has is not None:
            check(fault_has.lower() in r.fault().lower(), "fault %r lacks %r" % (r.fault(), fault_has))
        self.flow.passed("%s -> %d" % (step, r.status))
        return r


# ---- processes -------------------------------------------------------------------------


class Vmm:
    """ember started as a client starts Firecracker: its own argument list and directory."""

    def __init__(self, tmp, args, cwd=None, name="vmm"):
        self.out_path = os.path.join(tmp, name + ".out")
        self.err_path = os.path.join(tmp, name + ".err")
        self.out = open(self.out_path, "wb")
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([EMBER] + list(args), cwd=cwd or tmp, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=self.err)
        self.pid = self.proc.pid

    def stdout(self):
        self.out.flush()
        with open(self.out_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr(self):
        self.err.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=PATIENCE_S):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_output(self, text, timeout=PATIENCE_S):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stdout():
                return True
            if not self.alive():
                return text in self.stdout()
            time.sleep(0.05)
        return False

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_for_file(path, vmm, timeout=PATIENCE_S):
    """The SDK's waitForSocket: stat every 10 ms until the socket exists."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        check(vmm.alive(), "ember ended before its socket appeared: %s" % vmm.stderr())
        check(time.monotonic() < deadline, "no socket %s after %d s" % (path, timeout))
        time.sleep(0.01)


def holds_inode(pid, path):
    """Whether process pid has a descriptor open on the file path names now."""
    want = os.stat(path)
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            st = os.stat(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return True
    return False


def make_file(path, size=0, content=b""):
    with open(path, "wb") as f:
        f.write(content)
        f.truncate(max(size, len(content)))
    return path


def tap_name(prefix):
    return "%s%d" % (prefix, os.getpid() % 100000)


def can_make_taps():
    if os.geteuid() != 0:
        return "not root: no tap can be made"
    try:
        os.close(api.hold_tap(tap_name("clprobe")))
    except OSError as ex:
        return "cannot make a tap here (%s)" % ex
    return None


def intel_host():
    with open("/proc/cpuinfo") as f:
        for line in f:
            m = re.match(r"^vendor_id\s*:\s*(.+)$", line)
            if m:
                return m.group(1).strip() == "GenuineIntel"
    return False


def fifo_reader(path):
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def drain(fd):
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


# ---- firecracker-containerd (firecracker-go-sdk) -----------------------------------------

FCC_MAGIC = bytes([214, 244, 216, 245, 215, 177, 177, 177])


def fcc_drive_id(stub_path):
    """Stub drive ids: base32 of the stub's file name, no padding."""
    return base64.b32encode(os.path.basename(stub_path).encode()).decode().rstrip("=")


def fcc_stub(path):
    """A stub drive as newStubDrive writes it: magic, the id's length, the id; padded to a
    whole 512-byte sector."""
    drive_id = fcc_drive_id(path)
    content = FCC_MAGIC + bytes([len(drive_id)]) + drive_id.encode()
    size = (len(content) + 511) // 512 * 512
    make_file(path, size, content)
    return drive_id


def test_firecracker_containerd(tmp):
    """CreateVM -> Machine.Start (the SDK's handler chain), then the shim's later calls:
    drive-mount and container stub drives patched, metadata set and updated, pause,
    resume, and the SDK's Shutdown (SendCtrlAltDel)."""
    f = Flow("firecracker-containerd")
    shim = tmp  # the shim's directory is its working directory: paths in requests are relative
    vm_id = "fc-ctrd-vm-%d" % (os.getpid() % 10000)
    log_fifo = os.path.join(shim, "fc-logs.fifo")
    metrics_fifo = os.path.join(shim, "fc-metrics.fifo")
    os.mkfifo(log_fifo, 0o700)
    os.mkfifo(metrics_fifo, 0o700)
    rootfs = make_file(os.path.join(tmp, "default-rootfs.img"), 1 << 20)
    ctr_stub = os.path.join(shim, "ctrstub0")
    mnt_stub = os.path.join(shim, "drivemntstub0")
    ctr_id = fcc_stub(ctr_stub)
    mnt_id = fcc_stub(mnt_stub)
    ctr_image = make_file(os.path.join(tmp, "container-rootfs.img"), 2 << 20, b"container rootfs")
    mnt_image = make_file(os.path.join(tmp, "drive-mount.img"), 1 << 20, b"drive mount")
    no_tap = can_make_taps()
    tap = tap_name("fcctap")

    vmm = Vmm(tmp, ["--api-sock", "firecracker.sock", "--id", vm_id], cwd=shim, name="fcc")
    wire = Wire(f, os.path.join(shim, "firecracker.sock"), go_request)
    try:
        f.step("launch: firecracker --api-sock firecracker.sock --id %s (relative path)" % vm_id)
        wait_for_file(os.path.join(shim, "firecracker.sock"), vmm)
        f.passed()
        r = wire.send("GET", "/machine-config", status=200, step="waitForSocket: GET /machine-config")
        check(r.json().get("vcpu_count") == 1 and r.json().get("mem_size_mib") == 128, "%r" % r.json())
        # BootstrapLoggingHandler: FIFOs nobody reads yet.
        wire.send("PUT", "/logger", {"log_path": log_fifo, "show_level": True, "show_log_origin": False},
                  step="PUT /logger (a FIFO nobody reads)")
        wire.send("PUT", "/metrics", {"metrics_path": metrics_fifo}, step="PUT /metrics (a FIFO nobody reads)")
        machine = {"mem_size_mib": 128, "smt": False, "vcpu_count": 1}
        if intel_host():
            machine = {"cpu_template": "T2", "mem_size_mib": 128, "smt": False, "vcpu_count": 1}
        else:
            f.note("not an Intel host: firecracker-containerd leaves cpu_template out")
        r = wire.send("PUT", "/machine-config", machine,
                      step="PUT /machine-config %s" % ("T2" if "cpu_template" in machine else "(no template)"))
        r = wire.send("GET", "/machine-config", status=200, step="refreshMachineConfiguration: GET /machine-config")
        got = r.json()
        check(got.get("cpu_template", "None") == machine.get("cpu_template", "None") and got["vcpu_count"] == 1
              and got["mem_size_mib"] == 128 and got.get("smt") is False, "machine config %r" % got)
        wire.send("PUT", "/boot-source", {"boot_args": "console=ttyS0 noapic reboot=k panic=1 pci=off nomodules rw",
                                          "kernel_image_path": KEYBOARD})
        wire.send("PUT", "/drives/root_drive", {"drive_id": "root_drive", "is_read_only": True,
                                                "is_root_device": True, "path_on_host": rootfs})
        wire.send("PUT", "/drives/" + ctr_id, {"drive_id": ctr_id, "is_read_only": False, "is_root_device": False,
                                               "path_on_host": ctr_stub}, step="PUT /drives/<ctrstub0> (stub)")
        wire.send("PUT", "/drives/" + mnt_id, {"drive_id": mnt_id, "is_read_only": True, "is_root_device": False,
                                               "path_on_host": mnt_stub}, step="PUT /drives/<drivemntstub0> (stub)")
        if no_tap:
            f.skip("PUT /network-interfaces/1", no_tap)
        else:
            wire.send("PUT", "/network-interfaces/1", {"guest_mac": "AA:FC:00:00:00:01", "host_dev_name": tap,
                                                       "iface_id": "1"})
        # No CID: firecracker-containerd leaves VsockDevice.CID at 0 and the SDK sends it.
        wire.send("PUT", "/vsock", {"guest_cid": 0, "uds_path": "firecracker.vsock", "vsock_id": "agent_api"},
                  step="PUT /vsock (guest_cid 0, relative uds_path)")
        f.step("the vsock socket is bound at its PUT, relative to ember's directory")
        check(stat.S_ISSOCK(os.stat(os.path.join(shim, "firecracker.vsock")).st_mode), "no socket")
        f.passed()
        if no_tap:
            f.skip("PUT /mmds/config", "the SDK sends it only with an interface allowed MMDS: " + no_tap)
        else:
            wire.send("PUT", "/mmds/config", {"network_interfaces": ["1"], "version": "V1"})
        wire.send("PUT", "/actions", {"action_type": "InstanceStart"})
        f.step("the guest runs")
        check(vmm.wait_output("tick 1"), "no tick: %r %s" % (vmm.stdout()[-300:], vmm.stderr()[-500:]))
        f.passed()
        log_fd = fifo_reader(log_fifo)  # the shim's captureFifoToFile opens it later
        metrics_fd = fifo_reader(metrics_fifo)
        try:
            # The agent dial: CONNECT to its port. The keyboard guest has no vsock driver, so
            # nothing may answer OK; the Linux flow does the whole handshake.
            # Before the guest drives the device Firecracker does not poll the socket at all
            # (its vsock registers the backend's events at activation): the connection is
            # accepted by the kernel and nothing answers. ember answers nothing either; the
            # SDK's dial gives up on the attempt after its ack timeout and tries again.
            f.step("vsock dial: CONNECT 10789 before the guest drives vsock: no answer")
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(PATIENCE_S)
            c.connect(os.path.join(shim, "firecracker.vsock"))
            c.sendall(b"CONNECT 10789\n")
            c.settimeout(3)
            try:
                answer = c.recv(64)
            except socket.timeout:
                answer = None
            c.close()
            check(answer is None, "an answer from a guest without a vsock driver: %r" % answer)
            f.passed()
            # mountDrives: the drive-mount stub gets its image, then the container's.
            wire.send("PATCH", "/drives/" + mnt_id, {"drive_id": mnt_id, "path_on_host": mnt_image},
                      step="PATCH /drives/<drivemntstub0> -> image")
            f.step("ember now holds the drive-mount image open")
            check(holds_inode(vmm.pid, mnt_image), "no descriptor on %s" % mnt_image)
            f.passed()
            # Without an interface allowed MMDS (no tap) the SDK sent no /mmds/config; Firecracker
            # v1.14 still makes the data store at the first request after start (its runtime
            # controller's locked_mmds_or_default; later releases refuse it), so does ember.
            wire.send("PUT", "/mmds", json.loads('{"latest":{"meta-data":{"instance-id":"%s"}}}' % vm_id),
                      step="SetVMMetadata: PUT /mmds" + (" (no MMDS configured)" if no_tap else ""))
            wire.send("PATCH", "/drives/" + ctr_id, {"drive_id": ctr_id, "path_on_host": ctr_image},
                      step="container stub: PATCH /drives/<ctrstub0> -> rootfs image")
            f.step("ember now holds the container image open, not the stub")
            check(holds_inode(vmm.pid, ctr_image) and not holds_inode(vmm.pid, ctr_stub),
                  "descriptors of %d do not follow the PATCH" % vmm.pid)
            f.passed()
            wire.send("PATCH", "/mmds", {"latest": {"meta-data": {"task": "ctr1"}}},
                      step="UpdateVMMetadata: PATCH /mmds")
            r = wire.send("GET", "/mmds", status=200, step="GetVMMetadata: GET /mmds")
            check(r.json() == {"latest": {"meta-data": {"instance-id": vm_id, "task": "ctr1"}}}, "%r" % r.json())
            wire.send("PATCH", "/vm", {"state": "Paused"}, step="PauseVM: PATCH /vm Paused")
            r = wire.send("GET", "/", status=200, step="isPaused: GET /")
            check(r.json().get("state") == "Paused" and r.json().get("id") == vm_id, "%r" % r.json())
            wire.send("PATCH", "/vm", {"state": "Resumed"}, step="ResumeVM: PATCH /vm Resumed")
            r = wire.send("GET", "/", status=200, step="terminate: DescribeInstanceInfo GET /")
            check(r.json().get("state") == "Running", "%r" % r.json())
            f.step("the log FIFO, opened late, gets ember's lines")
            deadline = time.monotonic() + PATIENCE_S
            text = b""
            while vm_id.encode() not in text and time.monotonic() < deadline:
                wire.conn.send_raw(go_request("GET", "/"))  # something to log about, if ember logs requests
                wire.conn.read_response()
                text += drain(log_fd)
                time.sleep(0.1)
            f.passed("the log FIFO, opened late, gets ember's lines" if vm_id.encode() in text else
                     "the log FIFO, opened late: nothing logged at this level (%d bytes)" % len(text))
            wire.send("PUT", "/actions", {"action_type": "SendCtrlAltDel"},
                      step="Shutdown: PUT /actions SendCtrlAltDel")
            f.step("the guest takes Ctrl+Alt+Del and ember exits 0")
            status = vmm.wait()
            check(status == 0 and "ok 1" in vmm.stdout(), "status %r: %s" % (status, vmm.stderr()[-500:]))
            f.passed()
            f.step("one keep-alive connection carried every request")
            check(wire.connections == 1, "%d connections" % wire.connections)
            f.passed("one keep-alive connection carried all %d requests" % wire.requests)
            tail = drain(metrics_fd)
            if tail:
                f.step("metrics lines on the FIFO are JSON")
                for line in tail.decode().splitlines():
                    json.loads(line)
                f.passed()
        finally:
            os.close(log_fd)
            os.close(metrics_fd)
    finally:
        wire.close()
        vmm.kill()
    return f


def linux_guest():
    """The test kernel and initramfs (tests/linux), built or cached; None with the reason."""
    paths = []
    for script in ("build-kernel.sh", "build-initramfs.sh"):
        out = subprocess.run([os.path.join(api.ROOT, "linux", script)], capture_output=True, text=True,
                             timeout=1800)
        path = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if out.returncode != 0 or not os.path.exists(path):
            return None, "linux/%s failed: %s" % (script, out.stderr.strip()[-300:])
        paths.append(path)
    return paths, None


def test_firecracker_containerd_linux(tmp):
    """The same SDK sequence with a Linux guest, for what only a real guest shows: the
    drive-mount stub patched to an ext4 image that the guest then mounts and reads, and the
    agent's vsock handshake (CONNECT <port> / OK <port>) with a guest that listens. The guest
    is the tests/linux initramfs (its ro and vsock checks) given through the SDK's initrd_path;
    firecracker-containerd itself boots a root drive. Linux has no keyboard driver here, so
    SendCtrlAltDel is answered and the guest ends by itself (reboot -f)."""
    f = Flow("firecracker-containerd (Linux guest)")
    if not shutil.which("mkfs.ext4"):
        raise Skip("no mkfs.ext4 (e2fsprogs) for the drive-mount image")
    f.step("the test kernel and initramfs")
    paths, why = linux_guest()
    if not paths:
        raise Skip(why)
    kernel, initrd = paths
    f.passed()
    sys.path.insert(0, os.path.join(api.ROOT, "tests", "linux"))
    import ember_linux_test as linux  # noqa: E402 - the Linux test's host-side helpers

    class Probe:
        ember = EMBER
    Probe.kernel = kernel
    workaround = linux.ember_host_workaround(Probe)
    shim = tmp
    vm_id = "fc-ctrd-linux-%d" % (os.getpid() % 10000)
    os.mkfifo(os.path.join(shim, "fc-logs.fifo"), 0o700)
    os.mkfifo(os.path.join(shim, "fc-metrics.fifo"), 0o700)
    rootfs = make_file(os.path.join(tmp, "default-rootfs.img"), 1 << 20)
    ctr_stub, mnt_stub = os.path.join(shim, "ctrstub0"), os.path.join(shim, "drivemntstub0")
    ctr_id, mnt_id = fcc_stub(ctr_stub), fcc_stub(mnt_stub)
    token = "fcc-%d" % os.getpid()
    content = os.path.join(tmp, "mnt")
    os.mkdir(content)
    with open(os.path.join(content, "token"), "w") as fh:
        fh.write(token + "\n")
    mnt_image = make_file(os.path.join(tmp, "drive-mount.img"), 8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", content, mnt_image], check=True, capture_output=True)
    nbytes = 65536
    # The guest's connection to host port 5100 arrives at <uds_path>_5100.
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(shim, "firecracker.vsock_5100"))
    listener.listen(1)
    boot_args = ("console=ttyS0 panic=-1 noreplace-smp rodata=off reboot=k ember.checks=ro,vsock ember.ro=vdc "
                 "ember.ro_token=%s ember.vsock_port=5100 ember.vsock_listen=5200 ember.vsock_bytes=%d %s"
                 % (token, nbytes, workaround)).strip()
    vmm = Vmm(tmp, ["--api-sock", "firecracker.sock", "--id", vm_id], cwd=shim, name="fcc-linux")
    wire = Wire(f, os.path.join(shim, "firecracker.sock"), go_request)
    try:
        wait_for_file(os.path.join(shim, "firecracker.sock"), vmm)
        wire.send("GET", "/machine-config", status=200, step="waitForSocket: GET /machine-config")
        wire.send("PUT", "/logger", {"log_path": os.path.join(shim, "fc-logs.fifo"), "show_level": True,
                                     "show_log_origin": False})
        wire.send("PUT", "/metrics", {"metrics_path": os.path.join(shim, "fc-metrics.fifo")})
        machine = {"mem_size_mib": 128, "smt": False, "vcpu_count": 1}
        if intel_host():
            machine = {"cpu_template": "T2", "mem_size_mib": 128, "smt": False, "vcpu_count": 1}
        wire.send("PUT", "/machine-config", machine)
        wire.send("GET", "/machine-config", status=200)
        wire.send("PUT", "/boot-source", {"boot_args": boot_args, "initrd_path": initrd, "kernel_image_path": kernel})
        wire.send("PUT", "/drives/root_drive", {"drive_id": "root_drive", "is_read_only": True,
                                                "is_root_device": True, "path_on_host": rootfs})
        wire.send("PUT", "/drives/" + ctr_id, {"drive_id": ctr_id, "is_read_only": False, "is_root_device": False,
                                               "path_on_host": ctr_stub}, step="PUT /drives/<ctrstub0> (stub)")
        wire.send("PUT", "/drives/" + mnt_id, {"drive_id": mnt_id, "is_read_only": True, "is_root_device": False,
                                               "path_on_host": mnt_stub}, step="PUT /drives/<drivemntstub0> (stub)")
        wire.send("PUT", "/vsock", {"guest_cid": 0, "uds_path": "firecracker.vsock", "vsock_id": "agent_api"},
                  step="PUT /vsock (guest_cid 0)")
        wire.send("PUT", "/actions", {"action_type": "InstanceStart"})
        wire.send("PATCH", "/drives/" + mnt_id, {"drive_id": mnt_id, "path_on_host": mnt_image},
                  step="mountDrives: PATCH /drives/<drivemntstub0> -> ext4 image")
        # No interface allowed MMDS, so the SDK sent no /mmds/config: Firecracker v1.14 makes
        # the data store at this first request after start (later releases refuse it).
        wire.send("PUT", "/mmds", {"latest": {"meta-data": {"instance-id": vm_id}}},
                  step="SetVMMetadata without MMDS configured: PUT /mmds")
        r = wire.send("GET", "/mmds", status=200, step="GetVMMetadata: GET /mmds")
        check(r.json() == {"latest": {"meta-data": {"instance-id": vm_id}}}, "%r" % r.json())
        # The guest's agent-side program connects out first (guest -> host)...
        f.step("guest -> host vsock stream on <uds_path>_5100")
        listener.settimeout(180)
        try:
            c, _ = listener.accept()
        except socket.timeout:
            raise Failure("no connection from the guest in 180 s; its console: %s %s"
                          % (vmm.stdout()[-1500:], vmm.stderr()[-500:]))
        with c:
            c.settimeout(PATIENCE_S)
            check(linux.recv_to_eof(c) == linux.vsock_pattern(nbytes, 0), "the guest's bytes differ")
            c.sendall(linux.vsock_pattern(nbytes, 0xFF))
        f.passed()
        # ...then listens: the shim's dial, retried as vsock.DialContext retries.
        f.step("vsock dial: CONNECT 5200 until OK, then a stream each way")
        deadline = time.monotonic() + PATIENCE_S
        while True:
            c = socket.socket(socket.AF_UNIX)
            c.settimeout(PATIENCE_S)
            c.connect(os.path.join(shim, "firecracker.vsock"))
            c.sendall(b"CONNECT 5200\n")
            line = b""
            while not line.endswith(b"\n"):
                d = c.recv(1)
                if not d:
                    break
                line += d
            if line.startswith(b"OK "):
                break
            c.close()
            check(time.monotonic() < deadline, "no OK: last answer %r" % line)
            time.sleep(0.1)
        with c:
            check(re.fullmatch(rb"OK \d+\n", line), "answer %r" % line)
            c.sendall(linux.vsock_pattern(nbytes, 0))
            c.shutdown(socket.SHUT_WR)
            check(linux.recv_to_eof(c) == linux.vsock_pattern(nbytes, 0xFF), "the guest's answer differs")
        f.passed()
        wire.send("PATCH", "/vm", {"state": "Paused"}, step="PauseVM: PATCH /vm Paused")
        r = wire.send("GET", "/", status=200, step="isPaused: GET /")
        check(r.json().get("state") == "Paused", "%r" % r.json())
        wire.send("PATCH", "/vm", {"state": "Resumed"}, step="ResumeVM: PATCH /vm Resumed")
        wire.send("PUT", "/actions", {"action_type": "SendCtrlAltDel"}, step="Shutdown: PUT /actions SendCtrlAltDel")
        f.step("the guest's checks pass and it ends (reboot -f), ember exits 0")
        status = vmm.wait(180)
        out = vmm.stdout()
        check(status == 0, "status %r: %s %s" % (status, out[-800:], vmm.stderr()[-500:]))
        check(re.search(r"^ok 1 - ro: .*'%s'" % re.escape(token), out, re.M), "ro: %s" % out[-800:])
        check(re.search(r"^ok 2 - vsock", out, re.M), "vsock: %s" % out[-800:])
        f.passed()
    finally:
        listener.close()
        wire.close()
        vmm.kill()
    return f


# ---- Kata Containers, Go runtime (fc.go) --------------------------------------------------

KATA_BOOT_ARGS = ("root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4 pci=off reboot=k "
                  "panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off 8250.nr_uarts=0 "
                  "agent.log_vport=1025")


# The metrics groups and fields Kata's fc_metrics.go (FirecrackerMetrics) unmarshals, every
# field a uint64: a line where one of them is not an object, or a field not a non-negative
# integer, fails Kata's json.Unmarshal. Unknown keys are ignored, missing ones read as 0.
KATA_METRICS = {
    "api_server": "process_startup_time_us process_startup_time_cpu_us sync_response_fails "
                  "sync_vmm_send_timeout_count",
    "block": "activate_fails cfg_fails no_avail_buffer event_fails execute_fails invalid_reqs_count flush_count "
             "queue_event_count rate_limiter_event_count update_count update_fails read_bytes write_bytes "
             "read_count write_count rate_limiter_throttled_events",
    "get_api_requests": "instance_info_count instance_info_fails machine_cfg_count machine_cfg_fails",
    "i8042": "error_count missed_read_count missed_write_count read_count reset_count write_count",
    "latencies_us": "full_create_snapshot diff_create_snapshot load_snapshot pause_vm resume_vm "
                    "vmm_full_create_snapshot vmm_diff_create_snapshot vmm_load_snapshot vmm_pause_vm vmm_resume_vm",
    "logger": "missed_metrics_count metrics_fails missed_log_count log_fails",
    "mmds": "rx_accepted rx_accepted_err rx_accepted_unusual rx_bad_eth rx_count tx_bytes tx_count tx_errors "
            "tx_frames connections_created connections_destroyed",
    "net": "activate_fails cfg_fails mac_address_updates no_rx_avail_buffer no_tx_avail_buffer event_fails "
           "rx_queue_event_count rx_event_rate_limiter_count rx_partial_writes rx_rate_limiter_throttled "
           "rx_tap_event_count rx_bytes_count rx_packets_count rx_fails rx_count tap_read_fails tap_write_fails "
           "tx_bytes_count tx_malformed_frames tx_fails tx_count tx_packets_count tx_partial_reads "
           "tx_queue_event_count tx_rate_limiter_event_count tx_rate_limiter_throttled tx_spoofed_mac_count",
    "patch_api_requests": "drive_count drive_fails network_count network_fails machine_cfg_count machine_cfg_fails",
    "put_api_requests": "actions_count actions_fails boot_source_count boot_source_fails drive_count drive_fails "
                        "logger_count logger_fails machine_cfg_count machine_cfg_fails metrics_count "
                        "metrics_fails network_count network_fails",
    "rtc": "error_count missed_read_count missed_write_count",
    "seccomp": "num_faults",
    "vcpu": "exit_io_in exit_io_out exit_mmio_read exit_mmio_write failures filter_cpuid",
    "vmm": "device_events panic_count",
    "uart": "error_count flush_count missed_read_count missed_write_count read_count write_count",
    "signals": "sigbus sigsegv",
    "vsock": "activate_fails cfg_fails rx_queue_event_fails tx_queue_event_fails ev_queue_event_fails "
             "muxer_event_fails conn_event_fails rx_queue_event_count tx_queue_event_count rx_bytes_count "
             "tx_bytes_count rx_packets_count tx_packets_count conns_added conns_killed conns_removed "
             "killq_resync tx_flush_fails tx_write_fails rx_read_fails",
}


def kata_metrics_problems(line):
    """What in one metrics line would make Kata's unmarshalling fail, and the fields it
    reads that the line lacks."""
    doc = json.loads(line)
    check(isinstance(doc, dict), "a metrics line that is not an object: %r" % line[:200])
    bad, missing = [], []
    for group, fields in KATA_METRICS.items():
        if group not in doc:
            missing.append(group)
            continue
        if not isinstance(doc[group], dict):
            bad.append("%s is %s" % (group, type(doc[group]).__name__))
            continue
        for field in fields.split():
            v = doc[group].get(field)
            if v is None:
                missing.append("%s.%s" % (group, field))
            elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
                bad.append("%s.%s = %r" % (group, field, v))
    return bad, missing


def test_kata_go(tmp):
    f = Flow("kata fc.go")
    sandbox = "kata%d" % (os.getpid() % 10000)
    vm_path = os.path.join(tmp, "vc", "firecracker", sandbox)
    jailer_root = os.path.join(vm_path, "root")
    os.makedirs(os.path.join(jailer_root, "run"))
    socket_path = os.path.join(jailer_root, "run", "firecracker.socket")
    hvsock = os.path.join(jailer_root, "kata.hvsock")
    f.step("checkVersion: ember --version")
    out = subprocess.run([EMBER, "--version"], capture_output=True, text=True, timeout=PATIENCE_S)
    check(out.returncode == 0, "--version: %d %r" % (out.returncode, out.stderr))
    f.passed("checkVersion: ember --version -> %s" % api.kata_version(out.stdout))
    # fcJailResource bind-mounts each resource at <root>/<name>; links stand in for the mounts.
    os.symlink(KEYBOARD, os.path.join(jailer_root, "vmlinux"))
    image = make_file(os.path.join(tmp, "kata-containers.img"), 1 << 20)
    os.symlink(image, os.path.join(jailer_root, "rootfs"))
    fifos = {}
    for name in ("logs.fifo", "metrics.fifo"):
        os.mkfifo(os.path.join(vm_path, name), 0o600)
        fifos[name] = fifo_reader(os.path.join(vm_path, name))  # Kata reads both from the start
        os.symlink(os.path.join(vm_path, name), os.path.join(jailer_root, name))
    drives = [{"drive_id": "rootfs", "is_read_only": True, "is_root_device": False,
               "path_on_host": os.path.join(jailer_root, "rootfs")}]
    for i in range(8):  # the drive pool: empty placeholder files
        path = make_file(os.path.join(jailer_root, "drive_%d" % i))
        drives.append({"drive_id": "drive_%d" % i, "is_read_only": False, "is_root_device": False,
                       "path_on_host": path})
    doc = {
        "boot-source": {"boot_args": KATA_BOOT_ARGS, "kernel_image_path": os.path.join(jailer_root, "vmlinux")},
        "machine-config": {"mem_size_mib": 2048, "smt": False, "vcpu_count": 1},
        "vsock": {"guest_cid": 3, "uds_path": hvsock, "vsock_id": "root"},
        "logger": {"level": "Error", "log_path": os.path.join(jailer_root, "logs.fifo")},
        "metrics": {"metrics_path": os.path.join(jailer_root, "metrics.fifo")},
        "drives": drives,
    }
    no_tap = can_make_taps()
    if no_tap:
        f.skip("network-interfaces in the configuration file", no_tap)
    else:
        doc["network-interfaces"] = [{"guest_mac": "02:00:ca:fe:00:01", "host_dev_name": tap_name("katatap"),
                                      "iface_id": "eth0", "rx_rate_limiter": {}, "tx_rate_limiter": {}}]
    config_path = os.path.join(vm_path, "fcConfig.json")
    with open(config_path, "w") as fh:
        fh.write(go_json(doc, indent="\t", escape_html=True))
    os.symlink(config_path, os.path.join(jailer_root, "fcConfig.json"))
    vmm = Vmm(tmp, ["--api-sock", socket_path, "--config-file", os.path.join(jailer_root, "fcConfig.json")],
              name="kata-go")
    wire = Wire(f, socket_path, go_request)
    try:
        f.step("launch: --api-sock <root>/run/firecracker.socket --config-file <root>/fcConfig.json")
        wait_for_file(socket_path, vmm)
        f.passed()
        # waitVMMRunning: GET / every 10 ms until "Running".
        deadline = time.monotonic() + PATIENCE_S
        while True:
            r = wire.send("GET", "/", status=200, step="waitVMMRunning: GET /")
            if r.json().get("state") == "Running":
                break
            check(time.monotonic() < deadline, "not Running: %r" % r.json())
            time.sleep(0.01)
        f.step("chmod 0640 <root>/kata.hvsock (the vsock socket exists)")
        os.chmod(hvsock, 0o640)
        check(stat.S_ISSOCK(os.stat(hvsock).st_mode), "not a socket")
        f.passed()
        f.step("the guest runs")
        check(vmm.wait_output("tick 1"), "no tick: %r %s" % (vmm.stdout()[-300:], vmm.stderr()[-500:]))
        f.passed()
        r = wire.send("GET", "/vm/config", status=200, step="GET /vm/config: rootfs + 8 pool drives")
        check([d["drive_id"] for d in r.json()["drives"]] == [d["drive_id"] for d in drives], "%r" % r.json()["drives"])
        # hotplugBlockDevice: the container image is bind-mounted onto the placeholder's own
        # path, so the PATCH names the same path; ember must open it again. A rename over the
        # placeholder stands in for the mount.
        ctr = make_file(os.path.join(tmp, "ctr0.img"), 4 << 20, b"container 0")
        placeholder = os.path.join(jailer_root, "drive_0")
        saved = placeholder + ".placeholder"
        os.rename(placeholder, saved)
        os.link(ctr, placeholder)
        wire.send("PATCH", "/drives/drive_0", {"drive_id": "drive_0", "path_on_host": placeholder},
                  step="hotplug: PATCH /drives/drive_0 (same path, image mounted over it)")
        f.step("ember holds the container image open after the PATCH")
        check(holds_inode(vmm.pid, ctr), "the drive still reads the placeholder")
        f.passed()
        os.unlink(placeholder)
        os.rename(saved, placeholder)
        wire.send("PATCH", "/drives/drive_0", {"drive_id": "drive_0", "path_on_host": placeholder},
                  step="hot-unplug: PATCH /drives/drive_0 back to the placeholder")
        f.step("ember holds the placeholder again")
        check(holds_inode(vmm.pid, placeholder) and not holds_inode(vmm.pid, ctr), "still on the image")
        f.passed()
        f.step("StopVM: SIGTERM, ember exits within fcStopSandboxTimeout (15 s)")
        vmm.proc.send_signal(signal.SIGTERM)
        status = vmm.wait(15)
        check(status is not None, "still running 15 s after SIGTERM")
        # ember's status for a stop by signal N is 128+N (README); anything else, a sanitizer's
        # report say, fails here although Kata itself only waits.
        check(status == 128 + signal.SIGTERM, "status %r: %s" % (status, vmm.stderr()[-500:]))
        f.passed("StopVM: SIGTERM, ember exits (status %d)" % status)
        for name, fd in fifos.items():
            data = drain(fd)
            if name == "metrics.fifo":
                f.step("metrics lines unmarshal into Kata's FirecrackerMetrics")
                lines = data.decode().splitlines()
                check(lines, "no metrics line on the FIFO Kata reads")
                for line in lines:
                    bad, missing = kata_metrics_problems(line)
                    check(not bad, "fields Kata cannot unmarshal: %s" % ", ".join(bad))
                    check(not missing, "fields Kata reads that the line lacks: %s" % " ".join(missing))
                f.passed("%d metrics lines unmarshal into Kata's FirecrackerMetrics, every field "
                         "it reads there" % len(lines))
            os.close(fd)
    finally:
        wire.close()
        vmm.kill()
    return f


# ---- Kata Containers, Rust runtime-rs -------------------------------------------------------


def test_kata_rs(tmp):
    f = Flow("kata runtime-rs")
    sandbox = "krs%d" % (os.getpid() % 10000)
    vm_path = os.path.join(tmp, "kata", sandbox)
    run_dir = os.path.join(vm_path, "run")
    os.makedirs(run_dir)
    asock = os.path.join(run_dir, "fc.sock")
    image = make_file(os.path.join(tmp, "kata-containers.img"), 1 << 20)
    vmm = Vmm(tmp, ["--api-sock", asock], name="kata-rs")
    wire = Wire(f, asock, lambda m, p, b: hyper_request(m, p, b, asock))
    try:
        f.step("launch: --api-sock <vm>/run/fc.sock; first request retried every 10 ms")
        wait_for_file(asock, vmm)
        f.passed()
        wire.send("PUT", "/boot-source", {"boot_args": "pci=off iommu=off root=/dev/vda1 rootflags=data=ordered,"
                                          "errors=remount-ro ro rootfstype=ext4", "kernel_image_path": KEYBOARD})
        wire.send("PUT", "/machine-config", {"mem_size_mib": 2048, "vcpu_count": 1})
        wire.send("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_read_only": True, "is_root_device": False,
                                            "path_on_host": image})
        root = os.path.join(vm_path, "root")
        os.makedirs(root)
        for i in range(1, 6):
            path = make_file(os.path.join(root, "drive%d" % i))
            wire.send("PUT", "/drives/drive%d" % i, {"drive_id": "drive%d" % i, "is_read_only": False,
                                                     "is_root_device": False, "path_on_host": path},
                      step="PUT /drives/drive%d (empty placeholder)" % i)
        hvsock = os.path.join(vm_path, "kata.hvsock")
        body = {"guest_cid": 3, "uds_path": hvsock, "vsock_id": "root"}
        wire.send("PUT", "/vsock", body, step="prepare_hvsock: PUT /vsock")
        wire.send("PUT", "/vsock", body, step="add_hvsock (pending device): PUT /vsock again")
        no_tap = can_make_taps()
        if no_tap:
            f.skip("PUT /network-interfaces/<id>", no_tap)
        else:
            wire.send("PUT", "/network-interfaces/a1b2c3d4", {"guest_mac": "02:00:ca:fe:00:02",
                                                              "host_dev_name": tap_name("krstap"),
                                                              "iface_id": "a1b2c3d4"})
        wire.send("PUT", "/actions", {"action_type": "InstanceStart"})
        f.step("the guest runs")
        check(vmm.wait_output("tick 1"), "no tick: %r %s" % (vmm.stdout()[-300:], vmm.stderr()[-500:]))
        f.passed()
        ctr = make_file(os.path.join(tmp, "ctr1.img"), 4 << 20, b"container 1")
        wire.send("PATCH", "/drives/drive1", {"drive_id": "drive1", "path_on_host": ctr, "rate_limiter": None},
                  step="hotplug_block_device: PATCH /drives/drive1 (rate_limiter null)")
        f.step("ember holds the container image open")
        check(holds_inode(vmm.pid, ctr), "no descriptor on the image")
        f.passed()
        f.step("stop_vm: SIGKILL")
        vmm.proc.send_signal(signal.SIGKILL)
        check(vmm.wait(PATIENCE_S) == -signal.SIGKILL, "not killed")
        f.passed()
    finally:
        wire.close()
        vmm.kill()
    return f


# ---- flintlock ------------------------------------------------------------------------------

BOOT_TIME_LINE = re.compile(r"Guest-boot-time =\s+(\d+) us\s+(\d+) ms,\s+(\d+) CPU us\s+(\d+) CPU ms")


def flintlock_files(tmp, state, kernel, boot_args, tap):
    """create.go's state directory: firecracker.cfg and metadata.json (json.MarshalIndent,
    one space), the configuration in VmmConfig's field order."""
    os.makedirs(state, exist_ok=True)
    root = make_file(os.path.join(tmp, "root.img"), 1 << 20)
    doc = {
        "drives": [{"drive_id": "root", "path_on_host": root, "is_root_device": True, "is_read_only": False,
                    "cache_type": "Unsafe"}],
        "boot-source": {"kernel_image_path": kernel, "boot_args": boot_args},
        "logger": {"log_path": os.path.join(state, "firecracker.log"), "level": "Debug", "show_level": True,
                   "show_log_origin": True},
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": True, "track_dirty_pages": False},
        "metrics": {"metrics_path": os.path.join(state, "firecracker.metrics")},
        "mmds-config": {"version": "V1"},
        "network-interfaces": [],
        "vsock": {"vsock_id": "guest-agent", "guest_cid": 3, "uds_path": os.path.join(state, "guest-agent.vsock")},
    }
    if tap:
        doc["mmds-config"]["network_interfaces"] = ["eth0"]
        doc["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": tap, "guest_mac": "02:00:00:f1:00:01"}]
    cfg = os.path.join(state, "firecracker.cfg")
    with open(cfg, "w") as fh:
        fh.write(go_json(doc, indent=" ", escape_html=True))
    meta = os.path.join(state, "metadata.json")
    latest = {"meta-data": "instance_id: ns1/vm1\nlocal_hostname: vm1\n", "user-data": "#cloud-config\n",
              "vendor-data": "#cloud-config\n"}
    with open(meta, "w") as fh:
        fh.write(go_json({"latest": latest}, indent=" ", escape_html=True))
    return cfg, meta


def test_flintlock(tmp):
    """create.go: `--id UID --boot-timer --no-api --config-file F --metadata M`, stdout and
    stderr to files, the pid in firecracker.pid; State: the pid answers signal 0; Delete:
    SIGHUP and wait."""
    f = Flow("flintlock")
    uid = "01HQ4V9A3M6Q2W1E8R7T5Y0U9I"
    no_tap = can_make_taps()
    tap = None if no_tap else tap_name("fltap")
    if no_tap:
        # flintlock writes mmds-config for every machine, network_interfaces only when one
        # interface allows metadata requests. Without, Firecracker refuses the file (the field
        # is required), and so does ember: flintlock cannot start such a machine either way.
        f.step("mmds-config without network_interfaces: refused as Firecracker refuses it")
        state = os.path.join(tmp, "vm", "ns1", "vm1", uid)
        cfg, meta = flintlock_files(tmp, state, HELLO, "console=ttyS0", None)
        out = subprocess.run([EMBER, "--id", uid, "--boot-timer", "--no-api", "--config-file", cfg,
                              "--metadata", meta], capture_output=True, text=True, timeout=PATIENCE_S)
        check(out.returncode != 0 and "network_interfaces" in out.stderr, "%d %r" % (out.returncode, out.stderr))
        f.passed()
        raise Skip("flintlock's machines need an interface allowed MMDS, a tap: " + no_tap)
    # First the hello guest: it signals the boot timer and powers off.
    state = os.path.join(tmp, "vm", "ns1", "vm1", uid)
    cfg, meta = flintlock_files(tmp, state, HELLO,
                                "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp "
                                "i8042.dumbkbd ds=nocloud-net;s=http://169.254.169.254/latest/ "
                                "boot_timer=0xc0000000", tap)
    args = ["--id", uid, "--boot-timer", "--no-api", "--config-file", cfg, "--metadata", meta]
    vmm = Vmm(tmp, args, name="flintlock-hello")
    try:
        f.step("launch line, config file and metadata: the guest boots and ends, status 0")
        status = vmm.wait()
        check(status == 0 and "ok 1 - hello" in vmm.stdout(), "status %r: %s" % (status, vmm.stderr()[-600:]))
        f.passed()
    finally:
        vmm.kill()
    f.step("--boot-timer: the boot time line in the log, naming the instance")
    with open(os.path.join(state, "firecracker.log")) as fh:
        text = fh.read()
    m = BOOT_TIME_LINE.search(text)
    check(m and int(m.group(2)) == int(m.group(1)) // 1000 and int(m.group(4)) == int(m.group(3)) // 1000,
          "the boot time line: %r" % text[-600:])
    check(uid in text, "log lines name the instance: %r" % text[-300:])
    f.passed()
    f.step("without --boot-timer the guest's signal is not logged")
    vmm = Vmm(tmp, ["--id", uid, "--no-api", "--config-file", cfg, "--metadata", meta], name="flintlock-no-timer")
    try:
        check(vmm.wait() == 0, "no boot timer: %s" % vmm.stderr()[-300:])
    finally:
        vmm.kill()
    with open(os.path.join(state, "firecracker.log")) as fh:
        check(len(BOOT_TIME_LINE.findall(fh.read())) == 1, "a second boot time line")
    f.passed()
    # The metadata is checked at start: not JSON, or beyond the data store's limit (the API's
    # largest body, as in Firecracker), ends ember with one line before anything runs.
    for i, (content, msg) in enumerate([("{latest", "not valid JSON"), (json.dumps({"k": "x" * 60000}), "limit"),
                                        (None, "cannot open")]):
        f.step("a bad --metadata file (%s): status 2 and one line" % msg)
        bad = os.path.join(tmp, "bad-meta-%d.json" % i)
        if content is not None:
            with open(bad, "w") as fh:
                fh.write(content)
        out = subprocess.run([EMBER, "--no-api", "--config-file", cfg, "--metadata", bad],
                             capture_output=True, text=True, timeout=PATIENCE_S)
        lines = out.stderr.strip().splitlines()
        check(out.returncode == 2 and len(lines) == 1 and msg in lines[0] and "--metadata" in lines[0],
              "%d %r" % (out.returncode, out.stderr))
        f.passed()
    # Firecracker's snapshot queries: a file that is no snapshot is refused, saying why; the
    # version ember writes is printed as Firecracker prints its own.
    f.step("--describe-snapshot of a file that is no snapshot: refused, saying so")
    junk = os.path.join(tmp, "state")
    with open(junk, "w") as fh:
        fh.write("not a snapshot\n")
    out = subprocess.run([EMBER, "--describe-snapshot", junk], capture_output=True, text=True,
                         timeout=PATIENCE_S)
    check(out.returncode == 2 and "--describe-snapshot" in out.stderr and out.stdout == "",
          "%d %r" % (out.returncode, out.stderr))
    f.passed()
    f.step("--snapshot-version: the format version, as Firecracker prints its own")
    out = subprocess.run([EMBER, "--snapshot-version"], capture_output=True, text=True,
                         timeout=PATIENCE_S)
    check(out.returncode == 0 and re.fullmatch(r"v\d+\.\d+\.\d+\n", out.stdout),
          "%d %r %r" % (out.returncode, out.stdout, out.stderr))
    f.passed()
    # Then a guest that stays up: the state flintlock reads, and Delete.
    shutil.rmtree(state)
    cfg, meta = flintlock_files(tmp, state, KEYBOARD, "console=ttyS0 reboot=k panic=1 pci=off", tap)
    with open(os.path.join(state, "firecracker.stdout"), "ab") as out, \
            open(os.path.join(state, "firecracker.stderr"), "ab") as err:
        proc = subprocess.Popen([EMBER] + args, stdin=subprocess.PIPE, stdout=out, stderr=err)
    proc.stdin.close()
    pid_file = os.path.join(state, "firecracker.pid")
    with open(pid_file, "w") as fh:
        fh.write(str(proc.pid))
    try:
        f.step("the guest runs (firecracker.stdout)")
        deadline = time.monotonic() + PATIENCE_S
        while True:
            with open(os.path.join(state, "firecracker.stdout"), "rb") as fh:
                if b"tick 1" in fh.read():
                    break
            check(proc.poll() is None, "ember ended: %r" % open(os.path.join(state, "firecracker.stderr")).read())
            check(time.monotonic() < deadline, "no tick")
            time.sleep(0.05)
        f.passed()
        f.step("State: the pid in firecracker.pid answers signal 0 (Running)")
        with open(pid_file) as fh:
            os.kill(int(fh.read()), 0)
        f.passed()
        f.step("Delete: SIGHUP, ember exits")
        os.kill(proc.pid, signal.SIGHUP)
        try:
            proc.wait(PATIENCE_S)
        except subprocess.TimeoutExpired:
            raise Failure("still running after SIGHUP")
        check(proc.returncode == 128 + signal.SIGHUP, "status %r" % proc.returncode)
        f.passed("Delete: SIGHUP, ember exits (status %d)" % proc.returncode)
        f.step("State afterwards: signal 0 fails (Pending)")
        try:
            os.kill(proc.pid, 0)
            gone = False
        except ProcessLookupError:
            gone = True
        check(gone, "the pid still answers")
        f.passed()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return f


# ---- main -----------------------------------------------------------------------------------

TESTS = [test_firecracker_containerd, test_firecracker_containerd_linux, test_kata_go, test_kata_rs, test_flintlock]


def main():
    args = sys.argv[1:]
    selected = [t for t in TESTS if not args or t.__name__ in args or t.__name__[5:] in args]
    for path in (EMBER, HELLO, KEYBOARD):
        if not os.path.exists(path):
            print("clients: missing %s (build with make all guests)" % path)
            return 1
    for test in selected:
        tmp = tempfile.mkdtemp(prefix="ember-clients-")
        Flow.current = None
        flow_name = test.__name__[5:]
        start = time.monotonic()
        try:
            test(tmp)
            print("# %s: done in %.1f s" % (flow_name, time.monotonic() - start), flush=True)
        except Skip as ex:
            REPORT.skip(flow_name, "the whole flow", str(ex))
        except Exception as ex:  # noqa: BLE001 - a step's failure of any kind is reported
            flow = Flow.current
            REPORT.not_ok(flow.client if flow else flow_name, (flow and flow.step_name) or "setup",
                          "%s: %s" % (type(ex).__name__, ex))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("clients: %d passed, %d failed, %d skipped" % (REPORT.passed, REPORT.failed, REPORT.skipped))
    return 1 if REPORT.failed else 0


if __name__ == "__main__":
    sys.exit(main())
