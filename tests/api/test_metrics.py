#!/usr/bin/env python3
"""ember's metrics lines in Firecracker's schema (tests/api/firecracker_metrics_schema.json):
every group and field on every line, with its JSON type; counters as changes since the line
before, gauges as they stand; the counters the tests' requests and guests must have moved;
and the names Kata Containers' parser decodes.

Environment and helpers as tests/api/test_api.py (run by `make api-test`)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_api  # noqa: E402
from test_api import GUEST_DIR, KEYBOARD, Ember, Skip, check, expect, make_image  # noqa: E402

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "firecracker_metrics_schema.json")
with open(SCHEMA_PATH) as f:
    SCHEMA = json.load(f)

# The fields Kata Containers' Go runtime decodes a line into (its FirecrackerMetrics structure,
# src/runtime/virtcontainers/fc_metrics.go, read there and listed here by group). A name
# missing from a line leaves Kata's field at 0 without an error, so each is checked present.
KATA_FIELDS = {
    "api_server": ["process_startup_time_us", "process_startup_time_cpu_us", "sync_response_fails",
                   "sync_vmm_send_timeout_count"],
    "block": ["activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails",
              "invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count",
              "update_count", "update_fails", "read_bytes", "write_bytes", "read_count", "write_count",
              "rate_limiter_throttled_events"],
    "get_api_requests": ["instance_info_count", "instance_info_fails", "machine_cfg_count",
                         "machine_cfg_fails"],
    "i8042": ["error_count", "missed_read_count", "missed_write_count", "read_count", "reset_count",
              "write_count"],
    "latencies_us": ["full_create_snapshot", "diff_create_snapshot", "load_snapshot", "pause_vm",
                     "resume_vm", "vmm_full_create_snapshot", "vmm_diff_create_snapshot",
                     "vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm"],
    "logger": ["missed_metrics_count", "metrics_fails", "missed_log_count", "log_fails"],
    "mmds": ["rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth", "rx_count",
             "tx_bytes", "tx_count", "tx_errors", "tx_frames", "connections_created",
             "connections_destroyed"],
    "net": ["activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer",
            "no_tx_avail_buffer", "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count",
            "rx_partial_writes", "rx_rate_limiter_throttled", "rx_tap_event_count", "rx_bytes_count",
            "rx_packets_count", "rx_fails", "rx_count", "tap_read_fails", "tap_write_fails",
            "tx_bytes_count", "tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count",
            "tx_partial_reads", "tx_queue_event_count", "tx_rate_limiter_event_count",
            "tx_rate_limiter_throttled", "tx_spoofed_mac_count"],
    "patch_api_requests": ["drive_count", "drive_fails", "network_count", "network_fails",
                           "machine_cfg_count", "machine_cfg_fails"],
    "put_api_requests": ["actions_count", "actions_fails", "boot_source_count", "boot_source_fails",
                         "drive_count", "drive_fails", "logger_count", "logger_fails",
                         "machine_cfg_count", "machine_cfg_fails", "metrics_count", "metrics_fails",
                         "network_count", "network_fails"],
    "rtc": ["error_count", "missed_read_count", "missed_write_count"],
    "seccomp": ["num_faults"],
    "vcpu": ["exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write", "failures",
             "filter_cpuid"],
    "vmm": ["device_events", "panic_count"],
    "uart": ["error_count", "flush_count", "missed_read_count", "missed_write_count", "read_count",
             "write_count"],
    "signals": ["sigbus", "sigsegv"],
    "vsock": ["activate_fails", "cfg_fails", "rx_queue_event_fails", "tx_queue_event_fails",
              "ev_queue_event_fails", "muxer_event_fails", "conn_event_fails", "rx_queue_event_count",
              "tx_queue_event_count", "rx_bytes_count", "tx_bytes_count", "rx_packets_count",
              "tx_packets_count", "conns_added", "conns_killed", "conns_removed", "killq_resync",
              "tx_flush_fails", "tx_write_fails", "rx_read_fails"],
}

# Kata reads lines with Go's bufio.Scanner, whose default limit is 64 KiB a line.
KATA_MAX_LINE = 64 * 1024
U64_MAX = (1 << 64) - 1


def schema_groups():
    """group -> {field: "inc" | "gauge" | {sub: kind}}: Firecracker's and the older names."""
    groups = {g: dict(fields) for g, fields in SCHEMA["groups"].items()}
    for g, fields in SCHEMA["older_names"].items():
        groups.setdefault(g, {}).update(fields)
    return groups


def is_u64(v):
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= U64_MAX


def check_fields(where, obj, fields):
    check(isinstance(obj, dict), "%s: not an object: %r" % (where, obj))
    for name, kind in fields.items():
        check(name in obj, "%s.%s missing" % (where, name))
        if isinstance(kind, dict):
            check_fields("%s.%s" % (where, name), obj[name], kind)
        else:
            check(is_u64(obj[name]), "%s.%s: %r is not an unsigned integer" % (where, name, obj[name]))


def check_line(text, devices=()):
    """One line: whole JSON, integers only (Go's uint64 fields take no exponent or fraction),
    short enough for Kata's reader, every schema group and field, Kata's names, and the
    per-device groups of the devices given (("block", "rootfs"), ...)."""
    check(len(text) + 1 <= KATA_MAX_LINE, "a line of %d bytes: over Kata's 64 KiB" % len(text))
    check(not re.search(r'[0-9][.eE][-+0-9]', text), "a number with a fraction or exponent: %s" % text[:200])
    line = json.loads(text)
    check(is_u64(line.get("utc_timestamp_ms")), "utc_timestamp_ms: %r" % line.get("utc_timestamp_ms"))
    check(abs(line["utc_timestamp_ms"] - time.time() * 1000) < 600000, "utc_timestamp_ms is not now")
    for group, fields in schema_groups().items():
        check(group in line, "group %s missing" % group)
        check_fields(group, line[group], fields)
    for group, names in KATA_FIELDS.items():
        for name in names:
            check(is_u64(line.get(group, {}).get(name)), "Kata's %s.%s: %r" % (group, name, line.get(group)))
    for prefix, kind in SCHEMA["per_device"].items():
        for dev_kind, dev_id in devices:
            if dev_kind == kind:
                check_fields(prefix + dev_id, line.get(prefix + dev_id), schema_groups()[kind])
    return line


def read_lines(path, devices_after=None):
    """Every line of the metrics file, checked; devices_after: (index of the first line
    written after start, devices)."""
    with open(path) as f:
        texts = f.read().split("\n")
    check(texts[-1] == "", "the file ends with a whole line")
    lines = []
    for i, text in enumerate(texts[:-1]):
        devices = devices_after[1] if devices_after and i >= devices_after[0] else ()
        lines.append(check_line(text, devices))
    return lines


def counters(fields, prefix=""):
    """The schema's counter (inc) fields, dotted."""
    out = []
    for name, kind in fields.items():
        if isinstance(kind, dict):
            out += counters(kind, prefix + name + ".")
        elif kind == "inc":
            out.append(prefix + name)
    return out


def value(line, group, dotted):
    v = line[group]
    for part in dotted.split("."):
        v = v[part]
    return v


def total(lines, group, field):
    return sum(value(l, group, field) for l in lines)


def test_schema_requests_and_deltas(tmp):
    """Requests of every kind, a started keyboard guest with a drive, pmem and entropy, pause and
    resume, a drive swapped and one refused, three flushes and the exit line."""
    metrics = os.path.join(tmp, "metrics.json")
    root = make_image(tmp, "root.img", 1 << 20)
    other = make_image(tmp, "other.img", 2 << 20)
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 204, "metrics")
        check(e.req("GET", "/").status == 200, "GET /")
        check(e.req("GET", "/version").status == 200, "GET /version")
        check(e.req("GET", "/machine-config").status == 200, "GET /machine-config")
        r = e.req("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 32, "cpu_template": "None"})
        expect(r, 204, "machine-config with cpu_template")
        check(r.headers.get("deprecation") == "true", "cpu_template: Deprecation header %r" % r.headers)
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": KEYBOARD}), 204, "boot source")
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": root,
                                               "is_root_device": True, "is_read_only": False}), 204, "drive")
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": root,
                                               "is_root_device": True, "is_read_only": False}), 204,
               "the drive again")
        expect(e.req("PUT", "/drives/bad", {"drive_id": "other"}), 400, "a drive refused")
        expect(e.req("PUT", "/entropy", {}), 204, "entropy")
        pmem = test_api.make_pmem_file(tmp, "p0.img", 2 << 20)
        expect(e.req("PUT", "/pmem/p0", {"id": "p0", "path_on_host": pmem}), 204, "pmem")
        r = e.req("PUT", "/mmds/config", {"network_interfaces": ["eth0"]})
        # No eth0 here: refused (counted as a failed PUT /mmds request).
        check(r.status == 400, "mmds config naming a missing interface: %r" % r)
        expect(e.req("PUT", "/mmds", {"latest": {"id": "x"}}), 204, "PUT /mmds")
        expect(e.req("PATCH", "/mmds", {"latest": {"more": 1}}), 204, "PATCH /mmds")
        check(e.req("GET", "/mmds").status == 200, "GET /mmds")
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 400, "flush before start")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        check(e.wait_output("tick 1"), "the guest runs: %r" % e.stdout())
        expect(e.req("PATCH", "/vm", {"state": "Paused"}), 204, "pause")
        expect(e.req("PATCH", "/vm", {"state": "Resumed"}), 204, "resume")
        expect(e.req("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": other}), 204,
               "PATCH the drive's file")
        expect(e.req("PATCH", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": "/nonexistent"}), 400,
               "PATCH to a missing file")
        for _ in range(3):
            expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
        expect(e.req("PUT", "/actions", {"action_type": "SendCtrlAltDel"}), 204, "Ctrl+Alt+Del")
        check(e.wait() == 0, "exit status: %s" % e.stderr())
    finally:
        e.kill()
    devices = [("block", "rootfs"), ("pmem", "p0")]
    # Nothing writes a line before the first FlushMetrics here (the timer's minute never
    # passes): every line is from after start.
    lines = read_lines(metrics, (0, devices))
    check(len(lines) == 4, "three flushes and the exit line: %d lines" % len(lines))
    first, second, third, last = lines
    want = {
        ("get_api_requests", "instance_info_count"): 1,
        ("get_api_requests", "vmm_version_count"): 1,
        ("get_api_requests", "machine_cfg_count"): 1,
        ("get_api_requests", "mmds_count"): 1,
        ("put_api_requests", "metrics_count"): 1,
        ("put_api_requests", "machine_cfg_count"): 1,
        ("put_api_requests", "boot_source_count"): 1,
        ("put_api_requests", "drive_count"): 3,
        ("put_api_requests", "drive_fails"): 1,
        ("put_api_requests", "mmds_count"): 2,
        ("put_api_requests", "mmds_fails"): 1,
        ("put_api_requests", "actions_count"): 2,
        ("put_api_requests", "actions_fails"): 1,
        ("put_api_requests", "pmem_count"): 1,
        ("patch_api_requests", "mmds_count"): 1,
        ("patch_api_requests", "drive_count"): 2,
        ("patch_api_requests", "drive_fails"): 1,
        ("deprecated_api", "deprecated_http_api_calls"): 1,
        ("block_rootfs", "update_count"): 1,
        ("block_rootfs", "update_fails"): 1,
        ("block", "update_count"): 1,
    }
    for (group, field), n in want.items():
        check(first[group][field] == n, "first line %s.%s: %r, want %d" % (group, field, first[group][field], n))
    # Changes since the line before: the second line repeats none of the first line's
    # requests; it counts only the first FlushMetrics (counted once answered).
    for group in ("get_api_requests", "put_api_requests", "patch_api_requests", "deprecated_api"):
        for field, v in second[group].items():
            expected = 1 if (group, field) == ("put_api_requests", "actions_count") else 0
            check(v == expected, "second line %s.%s: %r, want %d" % (group, field, v, expected))
    check(second["block_rootfs"]["update_count"] == 0, "the drive's update is not repeated")
    # Every counter of the schema, summed over the lines, is what the process counted: the
    # sum of the deltas never falls below a line's own figure (no negative or repeated
    # values), and a third flush right after the second has no requests but the flush.
    for group, fields in schema_groups().items():
        for field in counters(fields):
            for l in lines:
                check(is_u64(value(l, group, field)), "%s.%s" % (group, field))
    check(third["put_api_requests"]["actions_count"] == 1, "third line counts the second flush only")
    # Gauges stand: the start-up figures and latencies are the same in every line.
    for group in ("latencies_us", "api_server"):
        for field, kind in SCHEMA["groups"][group].items():
            check(kind == "gauge", "schema: %s.%s is a gauge" % (group, field))
            check(len({l[group][field] for l in lines}) == 1, "%s.%s changes: %r" %
                  (group, field, [l[group][field] for l in lines]))
    lat = first["latencies_us"]
    check(lat["pause_vm"] > 0 and lat["resume_vm"] > 0 and 0 < lat["vmm_pause_vm"] <= lat["pause_vm"] and
          0 < lat["vmm_resume_vm"] <= lat["resume_vm"], "pause and resume measured: %r" % lat)
    check(lat["full_create_snapshot"] == 0 and lat["load_snapshot"] == 0, "no snapshot was taken: %r" % lat)
    # The guest: it printed (serial port writes), read the keyboard, and powered off through
    # the keyboard controller's reset line, which only the exit line can report.
    check(total(lines, "vcpu", "exit_io_out") > 0 and total(lines, "vcpu", "exit_io_in") > 0,
          "port I/O exits counted: %r" % [l["vcpu"] for l in lines])
    check(total(lines, "uart", "write_count") >= len("ok 1"), "serial output counted")
    check(total(lines, "i8042", "read_count") > 0 and total(lines, "i8042", "reset_count") == 1 and
          last["i8042"]["reset_count"] == 1, "keyboard reads and the reset: %r" % [l["i8042"] for l in lines])
    check(total(lines, "vcpu", "failures") == 0, "no vCPU failure")
    check(all(l["seccomp"]["num_faults"] == 0 for l in lines), "no seccomp fault")


def test_block_guest(tmp):
    """The virtio-blk guest on a read-only root drive and a writable one, to its end: the
    device counters under Firecracker's names, per drive and in total."""
    guest = os.path.join(GUEST_DIR, "virtio-blk.elf")
    if not os.path.exists(guest):
        raise Skip("no %s" % guest)
    metrics = os.path.join(tmp, "metrics.json")
    rootfs = os.path.join(tmp, "rootfs.img")
    with open(rootfs, "wb") as f:
        f.write(os.urandom(1 << 20))
    ro_sum = subprocess.run(["cksum"], stdin=open(rootfs, "rb"), capture_output=True,
                            text=True).stdout.split()[0]
    sectors = 16384
    data = make_image(tmp, "data.img", sectors * 512)
    e = Ember(tmp)
    try:
        expect(e.req("PUT", "/metrics", {"metrics_path": metrics}), 204, "metrics")
        args = ("console=ttyS0 reboot=k panic=1 blk_id=data ro_id=rootfs blk_queues=1 "
                "blk_sectors=%d ro_cksum=%s" % (sectors, ro_sum))
        expect(e.req("PUT", "/boot-source", {"kernel_image_path": guest, "boot_args": args}), 204, "boot")
        expect(e.req("PUT", "/drives/rootfs", {"drive_id": "rootfs", "path_on_host": rootfs,
                                               "is_root_device": True, "is_read_only": True}), 204, "rootfs")
        expect(e.req("PUT", "/drives/data", {"drive_id": "data", "path_on_host": data,
                                             "is_root_device": False, "is_read_only": False,
                                             "cache_type": "Writeback"}), 204, "data")
        expect(e.req("PUT", "/actions", {"action_type": "InstanceStart"}), 204, "InstanceStart")
        # The guest's last line; it then waits (no exit device under the API).
        deadline = time.monotonic() + 300
        while "# blk-checksum" not in e.stdout() and e.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        out = e.stdout()
        check("# blk-checksum" in out and "not ok" not in out, "the guest's checks: %s\n%s" %
              (out[-2000:], e.stderr()))
        expect(e.req("PUT", "/actions", {"action_type": "FlushMetrics"}), 204, "FlushMetrics")
    finally:
        e.kill()
    lines = read_lines(metrics, (0, [("block", "rootfs"), ("block", "data")]))
    check(len(lines) == 1, "the flush's line: %d lines" % len(lines))

    def t(group, field):
        return total(lines, group, field)

    check(t("block_data", "write_count") > 0 and t("block_data", "write_bytes") >= 512 * t("block_data", "write_count"),
          "writes to the data drive: %r" % lines[-1]["block_data"])
    check(t("block_data", "read_count") > 0 and t("block_data", "read_bytes") > 0, "reads of the data drive")
    check(t("block_data", "flush_count") >= 1, "the guest's flush")
    check(t("block_rootfs", "read_count") > 0 and t("block_rootfs", "write_count") == 0,
          "the read-only drive read, never written: %r" % lines[-1]["block_rootfs"])
    # Requests past the end of the disk fail with an I/O error: the host executed and failed
    # them (execute_fails), they were not malformed.
    check(t("block_data", "execute_fails") >= 2, "requests beyond the capacity: %r" % lines[-1]["block_data"])
    for field in counters(SCHEMA["groups"]["block"]):
        if "." in field:
            continue
        check(t("block", field) == t("block_data", field) + t("block_rootfs", field),
              "block.%s is the drives' sum" % field)
    check(t("block", "queue_event_count") > 0, "queue notifications counted")
    # Each read and write timed from the ring to its completion: the read-only drive has no
    # write time; the data drive's reads and writes took some.
    data_agg, ro_agg = lines[-1]["block_data"], lines[-1]["block_rootfs"]
    check(t("block_data", "read_agg.sum_us") > 0 and t("block_data", "write_agg.sum_us") > 0 and
          0 < data_agg["read_agg"]["max_us"] <= t("block_data", "read_agg.sum_us") and
          data_agg["write_agg"]["min_us"] <= data_agg["write_agg"]["max_us"],
          "block_data read/write times: %r %r" % (data_agg["read_agg"], data_agg["write_agg"]))
    check(ro_agg["write_agg"] == {"min_us": 0, "max_us": 0, "sum_us": 0} and
          t("block_rootfs", "read_agg.sum_us") > 0, "block_rootfs times: %r" % ro_agg)
    check(lines[-1]["block"]["read_agg"]["max_us"] == max(data_agg["read_agg"]["max_us"],
                                                          ro_agg["read_agg"]["max_us"]),
          "the aggregate's longest read is the drives' longest")
    check(t("interrupts", "triggers") > 0, "interrupts counted")
    check(t("vcpu", "exit_mmio_write") > 0 and t("vcpu", "exit_mmio_read") > 0,
          "virtio-mmio register exits counted: %r" % lines[-1]["vcpu"])
    check(t("block", "activate_fails") == 0 and t("vcpu", "failures") == 0, "no failure counted")
    # The time the exits took (microseconds, rounded down): the least no more than the most,
    # which the sum includes; the serial port's writes and the devices' activations take some.
    for kind in ("exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write"):
        agg = lines[-1]["vcpu"][kind + "_agg"]
        check(agg["min_us"] <= agg["max_us"] <= t("vcpu", kind + "_agg.sum_us"),
              "vcpu.%s_agg %r for %d exits" % (kind, agg, t("vcpu", kind)))
    check(t("vcpu", "exit_io_out_agg.sum_us") > 0 and t("vcpu", "exit_mmio_write_agg.sum_us") > 0,
          "exits took no time: %r" % lines[-1]["vcpu"])


def test_sighup_in_the_last_line(tmp):
    """SIGHUP stops ember (128 + 1) and the line written at the end reports it."""
    metrics = os.path.join(tmp, "metrics.json")
    e = Ember(tmp, ["--metrics-path", metrics])
    try:
        e.proc.send_signal(signal.SIGHUP)
        status = e.wait()
        check(status == 128 + signal.SIGHUP, "exit status %r" % status)
    finally:
        e.kill()
    lines = read_lines(metrics)
    check(lines and lines[-1]["signals"]["sighup"] == 1 and lines[-1]["signals"]["sigsegv"] == 0,
          "signals of the last line: %r" % (lines[-1]["signals"] if lines else None))


def test_sigpipe_counted(tmp):
    """The guest's serial output to a pipe nobody reads any more: each write raises SIGPIPE,
    counted (signals.sigpipe), and fails; the console gives up (uart.error_count 1), the guest
    runs to its end."""
    metrics = os.path.join(tmp, "metrics.json")
    config = os.path.join(tmp, "vm.json")
    with open(config, "w") as f:
        json.dump({"boot-source": {"kernel_image_path": test_api.HELLO, "boot_args": "console=ttyS0"},
                   "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}}, f)
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(os.path.join(tmp, "err"), "wb") as err:
        p = subprocess.Popen([test_api.EMBER, "--no-api", "--config-file", config, "--metrics-path", metrics],
                             stdin=subprocess.DEVNULL, stdout=write_end, stderr=err)
        os.close(write_end)
        try:
            status = p.wait(test_api.PATIENCE_S)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    check(status == 0, "exit status %r" % status)
    lines = read_lines(metrics)
    check(total(lines, "signals", "sigpipe") >= 1 and total(lines, "uart", "error_count") == 1 and
          total(lines, "uart", "write_count") > 0,
          "SIGPIPE and the failed write counted: %r %r" % (lines[-1]["signals"], lines[-1]["uart"]))


TESTS = [test_schema_requests_and_deltas, test_block_guest, test_sighup_in_the_last_line,
         test_sigpipe_counted]


def main():
    return test_api.run_tests(TESTS, "metrics", (test_api.EMBER, KEYBOARD), sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
