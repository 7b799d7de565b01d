"""Firecracker's API, as the conformance test (test_conformance.py) walks it.

Written for ember from Firecracker's own sources at release v1.14.0 (the release whose API
ember answers, FIRECRACKER_API in the Makefile), commit FIRECRACKER_COMMIT: the OpenAPI
description (src/firecracker/swagger/firecracker.yaml) for the paths, methods and bodies, the
request parsers (src/firecracker/src/api_server/parsed_request.rs, request/*.rs) and the
controllers (src/vmm/src/rpc_interface.rs, vmm_config/*.rs) for the status each request gets.

What those sources say, in short:
- success is 204 (no body) or 200 (a JSON body); every error is 400 with a JSON body
  {"fault_message": "..."}, except a PUT or PATCH of the metadata store past its size limit
  (413, same body). No other status comes from the API layer: no 404, no 405.
- the body is parsed first: an unknown field (every body type but the metrics one and a rate
  limiter's token bucket denies them), a missing required field, a wrong type, a value outside
  its enum or its integer type, malformed JSON: 400. A PUT or PATCH without a body is 400
  ("Empty PUT request."), so is a GET with one, and a method a path does not have
  ("Invalid request method and/or path").
- then the state: configuration routes are refused after InstanceStart, run-time ones
  (PATCH /vm, PATCH /drives and /network-interfaces, FlushMetrics, SendCtrlAltDel, snapshot
  create, balloon updates and statistics, memory hotplug status and updates) before it: 400.
- the HTTP layer itself knows GET, PUT and PATCH only: any other method is 400 with a body
  that is not the fault_message shape (`{ "error": "..." }`).

Each case below is one request: the state it is sent in ("pre": before InstanceStart, "post":
after), method, path, a name for the body variant, the body, and the status Firecracker gives.
Where ember answers otherwise on purpose, `ember` is its status and `why` the reason; those
are the deliberate differences, printed as such by the test. Strings starting with "@" in a
body are filled in by the test (files it makes, the tap, the kernel).
"""

FIRECRACKER_RELEASE = "v1.14.0"
FIRECRACKER_COMMIT = "7137308817dc65e2ae85a39269bd09f3884f662d"

# Every path of the OpenAPI description of that release and its methods.
ROUTES = {
    "/": ("GET",),
    "/actions": ("PUT",),
    "/balloon": ("GET", "PUT", "PATCH"),
    "/balloon/statistics": ("GET", "PATCH"),
    "/balloon/hinting/start": ("PATCH",),
    "/balloon/hinting/status": ("GET",),
    "/balloon/hinting/stop": ("PATCH",),
    "/boot-source": ("PUT",),
    "/cpu-config": ("PUT",),
    "/drives/{drive_id}": ("PUT", "PATCH"),
    "/pmem/{id}": ("PUT",),
    "/logger": ("PUT",),
    "/machine-config": ("GET", "PUT", "PATCH"),
    "/metrics": ("PUT",),
    "/mmds": ("GET", "PUT", "PATCH"),
    "/mmds/config": ("PUT",),
    "/entropy": ("PUT",),
    "/serial": ("PUT",),
    "/hotplug/memory": ("GET", "PUT", "PATCH"),
    "/network-interfaces/{iface_id}": ("PUT", "PATCH"),
    "/snapshot/create": ("PUT",),
    "/snapshot/load": ("PUT",),
    "/version": ("GET",),
    "/vm": ("PATCH",),
    "/vm/config": ("GET",),
    "/vsock": ("PUT",),
}

# Routes of Firecracker's later releases (after v1.14) that ember serves already: Firecracker
# v1.14 answers them as a path and method it does not have (400).
LATER_ROUTES = {
    "/pmem/{id}": ("PATCH",),
}

# Routes ember deliberately does not serve (yet): it answers every request on them with 400
# and "ember does not support ... yet". Where Firecracker would succeed, the case says so.
UNSUPPORTED = {
    "/balloon": "no virtio-balloon device in ember yet",
    "/balloon/statistics": "no virtio-balloon device in ember yet",
    "/balloon/hinting/start": "no virtio-balloon device in ember yet",
    "/balloon/hinting/status": "no virtio-balloon device in ember yet",
    "/balloon/hinting/stop": "no virtio-balloon device in ember yet",
    "/hotplug/memory": "no virtio-mem device (memory hotplug) in ember yet",
}

NO_BALLOON = UNSUPPORTED["/balloon"]
NO_HOTPLUG = UNSUPPORTED["/hotplug/memory"]
LATER_FIELD = ("a field Firecracker's later releases add (its OpenAPI description after v1.14); "
               "ember takes it already, Firecracker v1.14 denies it as unknown")
NOT_FC_SHAPE = ("Firecracker's HTTP layer answers what it refuses itself (a method it does not know, "
                "a body past the payload limit) with 400 and "
                "{ \"error\": ... } (not even JSON); ember answers with the fault_message shape "
                "every other error has")
UNKNOWN_DENIED = ("Firecracker's parser denies unknown fields in every body but this one (the metrics "
                  "body, a rate limiter's token bucket), where it drops them; ember denies them "
                  "everywhere, so that a misspelt field (one_time_brust) is refused, not ignored")
SERIAL_AT_PUT = ("Firecracker v1.14 keeps serial_out_path and opens it at InstanceStart (which then "
                 "fails); ember opens it at the request, so that a bad path fails there, as a bad "
                 "log_path or metrics_path does in both")
LATER_ROUTE = ("a route Firecracker's later releases add (its OpenAPI description after v1.14); "
               "ember serves it already, Firecracker v1.14 does not have it")
STRICT_PATH = ("Firecracker routes by the first path segment and ignores the rest (GET "
               "/mmds/anything reads the store); ember refuses a path the API does not have")

TOKEN_BUCKET = {"size": 1048576, "refill_time": 100}
RATE_LIMITER = {"bandwidth": TOKEN_BUCKET, "ops": {"size": 1000, "one_time_burst": 10, "refill_time": 1000}}
RAW_EMPTY = b""  # no body at all (Content-Length: 0)
RAW_MALFORMED = b'{"a": '


class Case:
    def __init__(self, state, method, path, variant, body=None, firecracker=400, ember=None, why=None,
                 needs=(), fresh=False, raw=None, request_rule=False, deprecated=False):
        self.state, self.method, self.path, self.variant = state, method, path, variant
        self.body, self.raw = body, raw
        self.firecracker = firecracker
        self.ember = firecracker if ember is None else ember
        self.why = why  # set only for a deliberate difference
        # "tap": a host tap ember may attach; "pmem": ember took the valid PUT /pmem
        self.needs = tuple(needs)
        self.fresh = fresh  # sent to an ember of its own (a request that can succeed only once)
        # A rule of requests in general (a method or path the API does not have, a GET with a
        # body), not an answer of the route: README's table does not list its status.
        self.request_rule = request_rule
        # Firecracker answers with "Deprecation: true" (the body uses a deprecated field).
        self.deprecated = deprecated

    @property
    def deliberate(self):
        return self.ember != self.firecracker or self.why is not None

    def name(self):
        return "%s %s %s %s" % (self.state, self.method, self.path, self.variant)


def body_cases(state, method, path, valid, ok, bad, valid_extra=None, statuses=None):
    """The common variants of one route with a JSON body: `valid` answered `ok` in this state
    (400 where the state refuses it; valid_extra: more Case arguments for it); `bad` adds the
    route's own invalid variants (name, body). Every variant but the valid one is 400 in
    Firecracker, in either state, unless `statuses` (variant: status) says otherwise."""
    statuses = statuses or {}
    cases = [Case(state, method, path, "valid", valid, ok, **(valid_extra or {}))]
    cases += [Case(state, method, path, n, b, statuses.get(n, 400)) for n, b in bad]
    cases.append(Case(state, method, path, "empty body", raw=RAW_EMPTY))
    cases.append(Case(state, method, path, "malformed JSON", raw=RAW_MALFORMED))
    # A JSON string, not an array: serde fills a struct from an array field by field, so
    # Firecracker takes some arrays.
    cases.append(Case(state, method, path, "not an object", "text", statuses.get("not an object", 400)))
    return cases


def with_field(body, **fields):
    out = dict(body)
    out.update(fields)
    return out


def without(body, field):
    return {k: v for k, v in body.items() if k != field}


# ---- the bodies ---------------------------------------------------------------------------

BOOT = {"kernel_image_path": "@KERNEL", "boot_args": "console=ttyS0 reboot=k panic=1"}
DRIVE = {"drive_id": "rootfs", "path_on_host": "@IMAGE", "is_root_device": True, "is_read_only": False}
DRIVE_PATCH = {"drive_id": "rootfs", "path_on_host": "@IMAGE2"}
NET = {"iface_id": "eth0", "host_dev_name": "@TAP", "guest_mac": "06:00:ac:10:00:02"}
NET_PATCH = {"iface_id": "eth0", "rx_rate_limiter": RATE_LIMITER}
MACHINE = {"vcpu_count": 1, "mem_size_mib": 32}
CPU_CONFIG = {"kvm_capabilities": [], "cpuid_modifiers": [], "msr_modifiers": []}
LOGGER = {"log_path": "@TMP/ember.log", "level": "Info", "show_level": True, "show_log_origin": False}
METRICS = {"metrics_path": "@TMP/metrics.json"}
VSOCK = {"guest_cid": 3, "uds_path": "@TMP/vsock.sock"}
SERIAL = {"serial_out_path": "@TMP/serial.out"}
MMDS_CONFIG = {"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "169.254.169.254"}
BALLOON = {"amount_mib": 0, "deflate_on_oom": False, "stats_polling_interval_s": 0}
PMEM = {"id": "pmem0", "path_on_host": "@PMEM", "root_device": False, "read_only": False}
PMEM_PATCH = {"id": "pmem0", "rate_limiter": RATE_LIMITER}
SNAPSHOT_CREATE = {"snapshot_type": "Full", "snapshot_path": "@TMP/vm.snap", "mem_file_path": "@TMP/vm.mem"}
SNAPSHOT_LOAD = {"snapshot_path": "@TMP/missing.snap",
                 "mem_backend": {"backend_type": "File", "backend_path": "@TMP/missing.mem"}}
HOTPLUG = {"total_size_mib": 1024}
BIG_METADATA = {"latest": {"blob": "x" * 5000}}  # the test starts ember with a 4 KiB store
MMDS_SIZE_LIMIT = 4096
# Any JSON document is metadata (a string too); past the store's limit: 413.
MMDS_STATUSES = {"over the size limit": 413, "not an object": 204}


def wrong_method_cases(state):
    """A method the OpenAPI description does not give a path: 400 in Firecracker."""
    cases = [
        Case(state, "PATCH", "/", "wrong method", {"a": 1}),
        Case(state, "PUT", "/version", "wrong method", {"a": 1}),
        Case(state, "GET", "/actions", "wrong method"),
        Case(state, "GET", "/boot-source", "wrong method"),
        Case(state, "GET", "/cpu-config", "wrong method"),
        Case(state, "GET", "/drives/rootfs", "wrong method"),
        Case(state, "GET", "/network-interfaces/eth0", "wrong method"),
        Case(state, "GET", "/logger", "wrong method"),
        Case(state, "PATCH", "/metrics", "wrong method", {"metrics_path": "x"}),
        Case(state, "GET", "/entropy", "wrong method"),
        Case(state, "GET", "/serial", "wrong method"),
        Case(state, "GET", "/vsock", "wrong method"),
        Case(state, "GET", "/vm", "wrong method"),
        Case(state, "PUT", "/vm/config", "wrong method", {"a": 1}),
        Case(state, "GET", "/snapshot/create", "wrong method"),
        Case(state, "PUT", "/nonexistent", "unknown path", {"a": 1}),
        Case(state, "GET", "/nonexistent", "unknown path"),
        Case(state, "DELETE", "/", "method the HTTP layer does not know", why=NOT_FC_SHAPE),
        Case(state, "POST", "/actions", "method the HTTP layer does not know",
             {"action_type": "InstanceStart"}, why=NOT_FC_SHAPE),
        Case(state, "GET", "/", "GET with a body", raw=b'{"a": 1}'),
        # Past the API's largest body (51200 bytes unless --http-api-max-payload-size).
        Case(state, "PUT", "/mmds", "body past the payload limit", {"blob": "x" * 60000}, why=NOT_FC_SHAPE),
        Case(state, "GET", "/mmds/nonexistent", "extra path segment", firecracker=200, ember=400,
             why=STRICT_PATH),
    ]
    for case in cases:
        case.request_rule = True
    return cases


# ---- before InstanceStart -----------------------------------------------------------------

PRE = []
PRE += [Case("pre", "GET", p, "valid", firecracker=200) for p in ("/", "/version", "/machine-config", "/vm/config")]
PRE += body_cases("pre", "PUT", "/boot-source", BOOT, 204, [
    ("unknown field", with_field(BOOT, kernel_args="x")),
    ("missing kernel_image_path", without(BOOT, "kernel_image_path")),
    ("wrong type", with_field(BOOT, boot_args=7)),
    ("kernel file missing", with_field(BOOT, kernel_image_path="@TMP/no-such-kernel")),
])
PRE.append(Case("pre", "PUT", "/boot-source", "null optional fields",
                with_field(BOOT, initrd_path=None, boot_args=None), 204))
PRE.append(Case("pre", "PUT", "/boot-source", "initrd file missing",
                with_field(BOOT, initrd_path="@TMP/no-such-initrd")))
# The kernel is opened here, read at InstanceStart.
PRE.append(Case("pre", "PUT", "/boot-source", "a file that is no kernel", with_field(BOOT, kernel_image_path="@IMAGE"),
                204))
PRE.append(Case("pre", "PUT", "/boot-source", "valid again", BOOT, 204))
PRE += body_cases("pre", "PUT", "/machine-config", MACHINE, 204, [
    ("unknown field", with_field(MACHINE, cpu_count=1)),
    ("missing mem_size_mib", without(MACHINE, "mem_size_mib")),
    ("missing vcpu_count", without(MACHINE, "vcpu_count")),
    ("wrong type", with_field(MACHINE, vcpu_count="1")),
    ("vcpu_count 0", with_field(MACHINE, vcpu_count=0)),
    ("vcpu_count 33", with_field(MACHINE, vcpu_count=33)),
    ("vcpu_count past u8", with_field(MACHINE, vcpu_count=256)),
    ("mem_size_mib 0", with_field(MACHINE, mem_size_mib=0)),
    ("unknown huge_pages", with_field(MACHINE, huge_pages="1G")),
    ("unknown cpu_template", with_field(MACHINE, cpu_template="T9")),
    ("odd vcpu_count with smt", with_field(MACHINE, vcpu_count=3, smt=True)),
])
# The host's memory is not checked before InstanceStart.
PRE.append(Case("pre", "PUT", "/machine-config", "more memory than the host has",
                with_field(MACHINE, mem_size_mib=1 << 24), 204))
PRE.append(Case("pre", "PUT", "/machine-config", "vcpu_count 32 (the most)", with_field(MACHINE, vcpu_count=32), 204))
PRE.append(Case("pre", "PUT", "/machine-config", "smt with 2 vCPUs", with_field(MACHINE, vcpu_count=2, smt=True), 204))
# Any static template is taken at PUT; a host of the other vendor refuses it at InstanceStart.
PRE += [Case("pre", "PUT", "/machine-config", "cpu_template %s (deprecated)" % t, with_field(MACHINE, cpu_template=t),
             204, deprecated=True) for t in ("C3", "T2", "T2S", "T2CL", "T2A")]
PRE.append(Case("pre", "PUT", "/machine-config", "huge_pages Transparent",
                with_field(MACHINE, huge_pages="Transparent"), 400, ember=204, why=LATER_FIELD))
PRE.append(Case("pre", "PUT", "/machine-config", "every field (cpu_template is deprecated)", with_field(
    MACHINE, smt=False, track_dirty_pages=False, huge_pages="None", cpu_template="None"), 204, deprecated=True))
PRE += body_cases("pre", "PATCH", "/machine-config", {"mem_size_mib": 32}, 204, [
    ("unknown field", {"mem_size_mib": 32, "memory": 1}),
    ("nothing to change", {}),
    ("wrong type", {"vcpu_count": True}),
    ("vcpu_count 0", {"vcpu_count": 0}),
])
PRE.append(Case("pre", "PATCH", "/machine-config", "cpu_template (deprecated)", {"cpu_template": "None"}, 204,
                deprecated=True))
PRE += body_cases("pre", "PUT", "/cpu-config", CPU_CONFIG, 204, [
    ("unknown field", with_field(CPU_CONFIG, vcpu_features=[])),
    ("wrong type", with_field(CPU_CONFIG, cpuid_modifiers=5)),
    ("modifier without leaf", with_field(CPU_CONFIG, cpuid_modifiers=[
        {"subleaf": "0x0", "flags": 0, "modifiers": []}])),
    ("unknown register", with_field(CPU_CONFIG, cpuid_modifiers=[
        {"leaf": "0x1", "subleaf": "0x0", "flags": 0,
         "modifiers": [{"register": "fax", "bitmap": "0bxxxx"}]}])),
])
PRE.append(Case("pre", "PUT", "/cpu-config", "no field (every list empty)", {}, 204))
PRE += body_cases("pre", "PUT", "/drives/rootfs", DRIVE, 204, [
    ("unknown field", with_field(DRIVE, is_root=True)),
    ("missing is_root_device", without(DRIVE, "is_root_device")),
    ("missing drive_id", without(DRIVE, "drive_id")),
    ("wrong type", with_field(DRIVE, is_read_only="no")),
    ("unknown cache_type", with_field(DRIVE, cache_type="Fast")),
    ("unknown io_engine", with_field(DRIVE, io_engine="Turbo")),
    ("id differs from the path", with_field(DRIVE, drive_id="other")),
    ("image file missing", with_field(DRIVE, path_on_host="@TMP/no-such-image")),
    ("unknown field in rate_limiter", with_field(DRIVE, rate_limiter={"bytes": TOKEN_BUCKET})),
])
PRE.append(Case("pre", "PUT", "/drives/rootfs", "null optional fields", with_field(
    DRIVE, partuuid=None, is_read_only=None, rate_limiter=None, io_engine=None), 204))
PRE.append(Case("pre", "PUT", "/drives/rootfs", "unknown field in a token bucket", with_field(
    DRIVE, rate_limiter={"bandwidth": with_field(TOKEN_BUCKET, burst=1)}), 204, ember=400, why=UNKNOWN_DENIED))
PRE.append(Case("pre", "PUT", "/drives/rootfs", "every field", with_field(
    DRIVE, partuuid=None, cache_type="Writeback", io_engine="Sync", rate_limiter=RATE_LIMITER), 204))
PRE.append(Case("pre", "PUT", "/drives/bad-id", "id with a dash", with_field(DRIVE, drive_id="bad-id")))
PRE.append(Case("pre", "PUT", "/drives/rootfs", "image is a directory", with_field(DRIVE, path_on_host="@TMP")))
PRE.append(Case("pre", "PUT", "/drives/data", "a second drive", with_field(
    DRIVE, drive_id="data", path_on_host="@IMAGE2", is_root_device=False), 204))
PRE.append(Case("pre", "PUT", "/drives/data", "a second root device", with_field(
    DRIVE, drive_id="data", path_on_host="@IMAGE2")))
PRE += body_cases("pre", "PATCH", "/drives/rootfs", DRIVE_PATCH, 400, [
    ("unknown field", with_field(DRIVE_PATCH, is_read_only=True)),
    ("missing drive_id", without(DRIVE_PATCH, "drive_id")),
])
PRE += body_cases("pre", "PUT", "/network-interfaces/eth0", NET, 204, [
    ("unknown field", with_field(NET, host_dev="x")),
    ("missing host_dev_name", without(NET, "host_dev_name")),
    ("missing iface_id", without(NET, "iface_id")),
    ("wrong type", with_field(NET, host_dev_name=5)),
    ("malformed guest_mac", with_field(NET, guest_mac="06:00:zz")),
    ("id differs from the path", with_field(NET, iface_id="eth1")),
], valid_extra={"needs": ("tap",)})
PRE.append(Case("pre", "PUT", "/network-interfaces/eth0", "mtu", with_field(NET, mtu=1500), 400, ember=204,
                why=LATER_FIELD, needs=("tap",)))
PRE.append(Case("pre", "PUT", "/network-interfaces/eth0", "null optional fields", with_field(
    NET, guest_mac=None, rx_rate_limiter=None, tx_rate_limiter=None), 204, needs=("tap",)))
PRE += body_cases("pre", "PATCH", "/network-interfaces/eth0", NET_PATCH, 400, [
    ("unknown field", with_field(NET_PATCH, host_dev_name="x")),
    ("missing iface_id", without(NET_PATCH, "iface_id")),
])
PRE += body_cases("pre", "PUT", "/logger", LOGGER, 204, [
    ("unknown field", with_field(LOGGER, colour=True)),
    ("wrong type", with_field(LOGGER, show_level="yes")),
    ("unknown level", with_field(LOGGER, level="Loud")),
])
PRE.append(Case("pre", "PUT", "/logger", "level in other case", {"level": "warning"}, 204))
PRE.append(Case("pre", "PUT", "/logger", "no field", {}, 204))
PRE.append(Case("pre", "PUT", "/logger", "log_path in no directory", {"log_path": "@TMP/no/such/dir/log"}))
PRE.append(Case("pre", "PUT", "/logger", "module filter and level Trace", {"level": "Trace", "module": "api"}, 204))
PRE += body_cases("pre", "PUT", "/metrics", METRICS, 204, [
    ("missing metrics_path", {}),
    ("wrong type", {"metrics_path": 5}),
])
PRE.append(Case("pre", "PUT", "/metrics", "a second time", METRICS))
PRE.append(Case("pre", "PUT", "/metrics", "metrics_path in no directory", {"metrics_path": "@TMP/no/such/dir/m"},
                fresh=True))
PRE.append(Case("pre", "PUT", "/metrics", "unknown field", with_field(METRICS, every_s=5), 204, ember=400,
                why=UNKNOWN_DENIED, fresh=True))
PRE += body_cases("pre", "PUT", "/entropy", {"rate_limiter": RATE_LIMITER}, 204, [
    ("unknown field", {"rate": 1}),
    ("wrong type", {"rate_limiter": 5}),
])
PRE.append(Case("pre", "PUT", "/entropy", "no field", {}, 204))
# A bucket of size 0 or refill time 0 limits nothing.
PRE.append(Case("pre", "PUT", "/entropy", "empty token bucket", {"rate_limiter": {
    "bandwidth": {"size": 0, "refill_time": 0}, "ops": {"size": 100, "refill_time": 0}}}, 204))
PRE += body_cases("pre", "PUT", "/serial", SERIAL, 204, [
    ("unknown field", with_field(SERIAL, serial_in_path="x")),
    # Firecracker's later releases add it; ember refuses it as v1.14 does (not done yet).
    ("rate_limiter", with_field(SERIAL, rate_limiter=TOKEN_BUCKET)),
    ("wrong type", {"serial_out_path": 5}),
])
PRE.append(Case("pre", "PUT", "/serial", "no field", {}, 204))
PRE.append(Case("pre", "PUT", "/serial", "serial_out_path in no directory", {"serial_out_path": "@TMP/no/such/dir/s"},
                204, ember=400, why=SERIAL_AT_PUT))
PRE += body_cases("pre", "PUT", "/vsock", VSOCK, 204, [
    ("unknown field", with_field(VSOCK, port=5)),
    ("missing uds_path", without(VSOCK, "uds_path")),
    ("missing guest_cid", without(VSOCK, "guest_cid")),
    ("wrong type", with_field(VSOCK, guest_cid="3")),
    ("guest_cid negative", with_field(VSOCK, guest_cid=-1)),
])
PRE.append(Case("pre", "PUT", "/vsock", "uds_path in no directory", with_field(VSOCK, uds_path="@TMP/no/such/dir/v")))
PRE.append(Case("pre", "PUT", "/vsock", "vsock_id (deprecated)", with_field(VSOCK, vsock_id="vsock0"), 204,
                deprecated=True))
PRE += [
    Case("pre", "GET", "/mmds", "before any PUT", firecracker=200),
    Case("pre", "PATCH", "/mmds", "before any PUT", {"a": 1}),
]
PRE += body_cases("pre", "PUT", "/mmds", {"latest": {"meta-data": {"instance-id": "i-1"}}}, 204, [
    ("over the size limit", BIG_METADATA),
], statuses=MMDS_STATUSES)
PRE += body_cases("pre", "PATCH", "/mmds", {"latest": {"meta-data": {"ami-id": "ami-1"}}}, 204, [
    ("over the size limit", BIG_METADATA),
], statuses=MMDS_STATUSES)
PRE.append(Case("pre", "GET", "/mmds", "after PUT", firecracker=200))
PRE += body_cases("pre", "PUT", "/mmds/config", MMDS_CONFIG, 204, [
    ("unknown field", with_field(MMDS_CONFIG, port=80)),
    ("missing network_interfaces", without(MMDS_CONFIG, "network_interfaces")),
    ("wrong type", with_field(MMDS_CONFIG, network_interfaces="eth0")),
    ("unknown version", with_field(MMDS_CONFIG, version="V3")),
    ("address not link-local", with_field(MMDS_CONFIG, ipv4_address="10.0.0.1")),
    ("interface not configured", with_field(MMDS_CONFIG, network_interfaces=["eth9"])),
    ("no interface", with_field(MMDS_CONFIG, network_interfaces=[])),
], valid_extra={"needs": ("tap",)})
PRE += [Case("pre", "PUT", "/mmds/config", "V1 (deprecated)", with_field(MMDS_CONFIG, version="V1"), 204,
             needs=("tap",), deprecated=True),
        Case("pre", "PUT", "/mmds/config", "no version: V1 (deprecated)", without(MMDS_CONFIG, "version"), 204,
             needs=("tap",), deprecated=True)]
PRE += body_cases("pre", "PUT", "/pmem/pmem0", PMEM, 204, [
    ("unknown field", with_field(PMEM, size_mib=2)),
    ("missing path_on_host", without(PMEM, "path_on_host")),
    ("missing id", without(PMEM, "id")),
    ("wrong type", with_field(PMEM, read_only="no")),
    ("id differs from the path", with_field(PMEM, id="pmem1")),
    ("backing file missing", with_field(PMEM, path_on_host="@TMP/no-such-file")),
])
PRE.append(Case("pre", "PUT", "/pmem/pmem0", "rate_limiter", with_field(PMEM, rate_limiter=RATE_LIMITER), 400,
                ember=204, why=LATER_FIELD))
PRE += body_cases("pre", "PATCH", "/pmem/pmem0", PMEM_PATCH, 400, [
    ("unknown field", with_field(PMEM_PATCH, path_on_host="x")),
])
PRE += body_cases("pre", "PUT", "/balloon", BALLOON, 204, [
    ("unknown field", with_field(BALLOON, size_mib=1)),
    ("missing deflate_on_oom", without(BALLOON, "deflate_on_oom")),
    ("wrong type", with_field(BALLOON, amount_mib="1")),
    ("amount_mib negative", with_field(BALLOON, amount_mib=-1)),
], valid_extra={"ember": 400, "why": NO_BALLOON})
PRE += [
    Case("pre", "GET", "/balloon", "after PUT", firecracker=200, ember=400, why=NO_BALLOON),
    Case("pre", "PATCH", "/balloon", "valid", {"amount_mib": 1}),
    Case("pre", "PATCH", "/balloon", "unknown field", {"amount_mib": 1, "deflate": True}),
    Case("pre", "PATCH", "/balloon", "empty body", raw=RAW_EMPTY),
    Case("pre", "GET", "/balloon/statistics", "valid"),
    Case("pre", "PATCH", "/balloon/statistics", "valid", {"stats_polling_interval_s": 1}),
    Case("pre", "PATCH", "/balloon/statistics", "unknown field", {"stats_polling_interval_s": 1, "x": 1}),
    Case("pre", "PATCH", "/balloon/hinting/start", "valid", {"acknowledge_on_stop": True}),
    Case("pre", "GET", "/balloon/hinting/status", "valid"),
    Case("pre", "PATCH", "/balloon/hinting/stop", "valid", {}),
]
PRE += body_cases("pre", "PUT", "/hotplug/memory", HOTPLUG, 204, [
    ("unknown field", with_field(HOTPLUG, size_mib=1)),
    ("missing total_size_mib", {"block_size_mib": 2}),
    ("wrong type", {"total_size_mib": "1024"}),
    ("block size not a power of two", with_field(HOTPLUG, block_size_mib=3)),
], valid_extra={"ember": 400, "why": NO_HOTPLUG})
PRE += [
    Case("pre", "GET", "/hotplug/memory", "valid"),
    Case("pre", "PATCH", "/hotplug/memory", "valid", {"requested_size_mib": 128}),
    Case("pre", "PATCH", "/hotplug/memory", "unknown field", {"requested_size_mib": 128, "x": 1}),
    Case("pre", "PUT", "/snapshot/create", "valid", SNAPSHOT_CREATE),
    Case("pre", "PUT", "/snapshot/create", "unknown field", with_field(SNAPSHOT_CREATE, compress=True)),
    Case("pre", "PUT", "/snapshot/create", "unknown snapshot_type", with_field(SNAPSHOT_CREATE, snapshot_type="Half")),
    # After the configuration above Firecracker refuses a load ("not allowed after configuring
    # boot-specific resources"), whatever the files.
    Case("pre", "PUT", "/snapshot/load", "valid", SNAPSHOT_LOAD),
    Case("pre", "PUT", "/snapshot/load", "unknown field", with_field(SNAPSHOT_LOAD, resume=True)),
    Case("pre", "PUT", "/snapshot/load", "missing snapshot_path", without(SNAPSHOT_LOAD, "snapshot_path")),
    Case("pre", "PUT", "/snapshot/load", "no memory backend", without(SNAPSHOT_LOAD, "mem_backend")),
    Case("pre", "PUT", "/snapshot/load", "both memory backends",
         with_field(SNAPSHOT_LOAD, mem_file_path="@TMP/missing.mem")),
    Case("pre", "PUT", "/snapshot/load", "empty body", raw=RAW_EMPTY),
]
PRE += body_cases("pre", "PATCH", "/vm", {"state": "Paused"}, 400, [
    ("unknown field", {"state": "Paused", "now": True}),
    ("unknown state", {"state": "Sleeping"}),
    ("missing state", {}),
])
PRE += body_cases("pre", "PUT", "/actions", {"action_type": "FlushMetrics"}, 400, [
    ("SendCtrlAltDel", {"action_type": "SendCtrlAltDel"}),
    ("unknown field", {"action_type": "FlushMetrics", "now": True}),
    ("unknown action", {"action_type": "Reboot"}),
    ("missing action_type", {}),
    ("wrong type", {"action_type": 1}),
])
PRE += wrong_method_cases("pre")

# What the machine the "post" cases run against is set up with, before InstanceStart (each
# request checked as it is sent): a drive and, where a tap can be had, an interface, so that
# their run-time updates have something to update; metrics, so that FlushMetrics writes.
SETUP = [
    ("PUT", "/boot-source", BOOT, ()),
    ("PUT", "/machine-config", MACHINE, ()),
    ("PUT", "/drives/rootfs", DRIVE, ()),
    ("PUT", "/network-interfaces/eth0", NET, ("tap",)),
    ("PUT", "/pmem/pmem0", PMEM, ("pmem",)),
    ("PUT", "/metrics", METRICS, ()),
]
START = Case("pre", "PUT", "/actions", "InstanceStart", {"action_type": "InstanceStart"}, 204)

# ---- after InstanceStart ------------------------------------------------------------------

POST = []
POST += [Case("post", "GET", p, "valid", firecracker=200) for p in ("/", "/version", "/machine-config", "/vm/config")]
for method, path, body in [("PUT", "/boot-source", BOOT), ("PUT", "/machine-config", MACHINE),
                           ("PATCH", "/machine-config", {"mem_size_mib": 32}), ("PUT", "/cpu-config", CPU_CONFIG),
                           ("PUT", "/drives/rootfs", DRIVE), ("PUT", "/network-interfaces/eth0", NET),
                           ("PUT", "/logger", LOGGER), ("PUT", "/metrics", METRICS),
                           ("PUT", "/entropy", {}), ("PUT", "/serial", SERIAL), ("PUT", "/vsock", VSOCK),
                           ("PUT", "/mmds/config", MMDS_CONFIG), ("PUT", "/pmem/pmem0", PMEM),
                           ("PUT", "/actions", {"action_type": "InstanceStart"})]:
    # Configuration is over: refused whatever the body (the parse comes first, 400 either way).
    POST.append(Case("post", method, path, "valid (configuration is over)", body))
    POST.append(Case("post", method, path, "empty body", raw=RAW_EMPTY))
POST.append(Case("post", "PUT", "/logger", "unknown field", with_field(LOGGER, colour=True)))
POST += body_cases("post", "PATCH", "/drives/rootfs", DRIVE_PATCH, 204, [
    ("unknown field", with_field(DRIVE_PATCH, is_read_only=True)),
    ("missing drive_id", without(DRIVE_PATCH, "drive_id")),
    ("wrong type", with_field(DRIVE_PATCH, path_on_host=5)),
    ("id differs from the path", with_field(DRIVE_PATCH, drive_id="other")),
    ("image file missing", with_field(DRIVE_PATCH, path_on_host="@TMP/no-such-image")),
])
POST.append(Case("post", "PATCH", "/drives/rootfs", "rate_limiter",
                 {"drive_id": "rootfs", "rate_limiter": RATE_LIMITER}, 204))
POST.append(Case("post", "PATCH", "/drives/rootfs", "unknown field in a token bucket",
                 {"drive_id": "rootfs", "rate_limiter": {"ops": with_field(TOKEN_BUCKET, burst=1)}}, 204,
                 ember=400, why=UNKNOWN_DENIED))
POST.append(Case("post", "PATCH", "/drives/nosuch", "no such drive", with_field(DRIVE_PATCH, drive_id="nosuch")))
# Nothing to change is a vhost-user drive's refresh: a virtio-blk drive refuses it.
POST.append(Case("post", "PATCH", "/drives/rootfs", "nothing to change", {"drive_id": "rootfs"}))
POST.append(Case("post", "PATCH", "/drives/rootfs", "empty rate_limiter (changes nothing)",
                 {"drive_id": "rootfs", "rate_limiter": {}}, 204))
POST += body_cases("post", "PATCH", "/network-interfaces/eth0", NET_PATCH, 204, [
    ("unknown field", with_field(NET_PATCH, host_dev_name="x")),
    ("missing iface_id", without(NET_PATCH, "iface_id")),
    ("wrong type", with_field(NET_PATCH, tx_rate_limiter=5)),
    ("id differs from the path", with_field(NET_PATCH, iface_id="eth1")),
], valid_extra={"needs": ("tap",)})
POST += [
    Case("post", "PATCH", "/pmem/pmem0", "valid", PMEM_PATCH, 400, ember=204, why=LATER_ROUTE, needs=("pmem",)),
    Case("post", "PATCH", "/pmem/pmem0", "unknown field", with_field(PMEM_PATCH, read_only=True)),
    Case("post", "PATCH", "/pmem/nosuch", "no such device", with_field(PMEM_PATCH, id="nosuch")),
    Case("post", "PATCH", "/pmem/pmem0", "empty body", raw=RAW_EMPTY),
]
POST.append(Case("post", "PATCH", "/network-interfaces/nosuch", "no such interface",
                 with_field(NET_PATCH, iface_id="nosuch")))
POST.append(Case("post", "PATCH", "/network-interfaces/eth0", "nothing to change", {"iface_id": "eth0"}, 204,
                 needs=("tap",)))
POST += [
    # Started without MMDS: Firecracker makes the store at the first request all the same.
    Case("post", "GET", "/mmds", "started without MMDS", firecracker=200),
    Case("post", "PATCH", "/mmds", "before any PUT", {"a": 1}),
    Case("post", "PUT", "/mmds", "valid", {"latest": {"meta-data": {"instance-id": "i-1"}}}, 204),
    Case("post", "PATCH", "/mmds", "valid", {"latest": {"meta-data": {"ami-id": "ami-1"}}}, 204),
    Case("post", "PATCH", "/mmds", "over the size limit", BIG_METADATA, 413),
    Case("post", "PUT", "/mmds", "malformed JSON", raw=RAW_MALFORMED),
    Case("post", "GET", "/mmds", "after PUT", firecracker=200),
]
POST += body_cases("post", "PUT", "/actions", {"action_type": "FlushMetrics"}, 204, [
    ("unknown field", {"action_type": "FlushMetrics", "now": True}),
    ("unknown action", {"action_type": "Reboot"}),
    ("missing action_type", {}),
])
POST += [
    Case("post", "PUT", "/balloon", "valid", BALLOON),
    # The machine has no balloon device: Firecracker answers each of these 400 too.
    Case("post", "GET", "/balloon", "no balloon device"),
    Case("post", "PATCH", "/balloon", "no balloon device", {"amount_mib": 1}),
    Case("post", "PATCH", "/balloon", "unknown field", {"amount_mib": 1, "x": 1}),
    Case("post", "GET", "/balloon/statistics", "no balloon device"),
    Case("post", "PATCH", "/balloon/statistics", "no balloon device", {"stats_polling_interval_s": 1}),
    Case("post", "PATCH", "/balloon/hinting/start", "no balloon device", {}),
    Case("post", "GET", "/balloon/hinting/status", "no balloon device"),
    Case("post", "PATCH", "/balloon/hinting/stop", "no balloon device", {}),
    Case("post", "PUT", "/hotplug/memory", "valid (configuration is over)", HOTPLUG),
    Case("post", "GET", "/hotplug/memory", "no memory hotplug device"),
    Case("post", "PATCH", "/hotplug/memory", "no memory hotplug device", {"requested_size_mib": 128}),
    Case("post", "PUT", "/snapshot/load", "valid (configuration is over)", SNAPSHOT_LOAD),
    # A running machine cannot be saved: its vCPUs refuse to give their state.
    Case("post", "PUT", "/snapshot/create", "while running", SNAPSHOT_CREATE),
    Case("post", "PUT", "/snapshot/create", "unknown field", with_field(SNAPSHOT_CREATE, compress=True)),
    Case("post", "PUT", "/snapshot/create", "missing mem_file_path", without(SNAPSHOT_CREATE, "mem_file_path")),
]
POST.append(Case("post", "PATCH", "/vm", "Resumed while running", {"state": "Resumed"}, 204))
POST += body_cases("post", "PATCH", "/vm", {"state": "Paused"}, 204, [
    ("unknown field", {"state": "Paused", "now": True}),
    ("unknown state", {"state": "Sleeping"}),
    ("missing state", {}),
    ("wrong type", {"state": 1}),
])
POST += [
    Case("post", "PATCH", "/vm", "Paused again", {"state": "Paused"}, 204),
    Case("post", "PUT", "/snapshot/create", "while paused", SNAPSHOT_CREATE, 204),

    Case("post", "PATCH", "/vm", "Resumed", {"state": "Resumed"}, 204),
]
POST += wrong_method_cases("post")
# Last: the keyboard guest reboots on Ctrl+Alt+Del, and ember ends with it.
POST.append(Case("post", "PUT", "/actions", "SendCtrlAltDel", {"action_type": "SendCtrlAltDel"}, 204))
# The snapshot made while paused, loaded by a new process (where nothing was configured) once
# the machine above has ended and let go of its disk images (ember locks them).
POST.append(Case("post", "PUT", "/snapshot/load", "the snapshot made, in a new process",
                 {"snapshot_path": "@TMP/vm.snap",
                  "mem_backend": {"backend_type": "File", "backend_path": "@TMP/vm.mem"},
                  "resume_vm": True}, 204, fresh=True))
