#!/usr/bin/env python3
"""Watches a VMM process until it exits: its peak RSS, the RSS of its guest RAM, and each
thread's CPU time, sampled every --interval seconds from /proc.

    proc_watch.py --pid PID [--ram-mib N] [--serial FILE] [--interval 0.1] [--timeout S]

--ram-mib: the guest RAM is the run of adjacent anonymous mappings of exactly that size
(smaps); its RSS is what the guest touched. --timeout: SIGTERM the process after S seconds. --serial: the guest's output; the window between its lines
"# idle: halting" and "# idle: done" (lib/idle.c) is the idle window, whose per-thread CPU
time is reported apart.

Prints, once the process is gone (the last sample before it went stands for the end):
    peak_kb N            VmHWM
    guest_ram_kb N       RSS of the guest RAM mapping at its largest (0: not found)
    excess_kb N          the largest VmRSS - guest RAM RSS of one sample, and VmHWM - the
                         largest guest RAM RSS if that is larger
    samples N
    thread NAME CPU_MS   utime + stime of each thread (threads of one name are summed)
    idle_window_ms N     (only with an idle window)
    idle NAME CPU_MS     CPU time each thread used inside the idle window
"""
import argparse
import os
import re
import signal
import sys
import time

TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return None


def status_kb(pid, key):
    text = read(f"/proc/{pid}/status")
    if text is None:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


def guest_ram_kb(pid, ram_kb):
    """RSS of the guest RAM: adjacent private anonymous mappings that together are exactly
    ram_kb long (madvise() splits it in several; a thread's stack may sit right below), or
    None."""
    text = read(f"/proc/{pid}/smaps")
    if text is None or not ram_kb:
        return None
    head = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\d+)\s*(.*)$")
    runs, run, vma = [], [], None  # run: [(start, end, rss_kb)] of adjacent anonymous mappings
    for line in text.splitlines():
        m = head.match(line)
        if m:
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            anon = m.group(3).startswith("rw") and m.group(4) == "0" and not m.group(5)
            if not anon or not run or run[-1][1] != start:
                if run:
                    runs.append(run)
                run = []
            vma = [start, end, 0] if anon else None
            if vma:
                run.append(vma)
        elif line.startswith("Rss:") and vma is not None:
            vma[2] = int(line.split()[1])
    if run:
        runs.append(run)
    best = None
    for run in runs:
        for i in range(len(run)):
            size = rss = 0
            for start, end, kb in run[i:]:
                size += (end - start) // 1024
                rss += kb
                if size >= ram_kb:
                    break
            if size == ram_kb:
                best = rss if best is None else max(best, rss)
    return best


def thread_times(pid):
    """{tid: (name, cpu_ms)} of every thread now."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        stat = read(f"/proc/{pid}/task/{tid}/stat")
        if not stat:
            continue
        # comm is in parentheses and may hold spaces; the fields after it are plain.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        out[tid] = (name, (utime + stime) * TICK_MS)
    return out


def by_name(times):
    sums = {}
    for name, ms in times.values():
        sums[name] = sums.get(name, 0.0) + ms
    return sums


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--ram-mib", type=int, default=0)
    ap.add_argument("--serial")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=0, help="SIGTERM the process after this")
    a = ap.parse_args()
    ram_kb = a.ram_mib * 1024
    peak = guest_max = excess = samples = 0
    threads = {}  # tid -> (name, cpu_ms), the last seen
    idle_start = idle_end = None  # (time, threads) at the window's edges
    last = None
    started = time.monotonic()
    while True:
        if a.timeout and time.monotonic() - started > a.timeout:
            try:
                os.kill(a.pid, signal.SIGTERM)
            except OSError:
                pass
            print(f"timeout after {a.timeout:.0f} s: sent SIGTERM", file=sys.stderr)
            a.timeout = 0
        hwm = status_kb(a.pid, "VmHWM")
        rss = status_kb(a.pid, "VmRSS")
        if hwm is None:
            break  # gone (or a zombie: no memory left to read)
        guest = guest_ram_kb(a.pid, ram_kb)
        now_threads = thread_times(a.pid)
        samples += 1
        peak = max(peak, hwm)
        if guest is not None:
            guest_max = max(guest_max, guest)
            if rss is not None:
                excess = max(excess, rss - guest)
        threads.update(now_threads)
        now = (time.monotonic(), dict(threads))
        if a.serial and (idle_start is None or idle_end is None):
            out = read(a.serial) or ""
            if idle_start is None and "# idle: halting" in out:
                idle_start = now
            elif idle_start is not None and "# idle: done" in out:
                idle_end = last  # the last sample inside the window
        last = now
        time.sleep(a.interval)
    if idle_start is not None and idle_end is None:
        idle_end = last
    excess = max(excess, peak - guest_max) if guest_max else excess
    print(f"peak_kb {peak}")
    print(f"guest_ram_kb {guest_max}")
    print(f"excess_kb {excess if guest_max else peak}")
    print(f"samples {samples}")
    for name, ms in sorted(by_name(threads).items()):
        print(f"thread {name.replace(' ', '_')} {ms:.0f}")
    if idle_start and idle_end and idle_end[0] > idle_start[0]:
        print(f"idle_window_ms {(idle_end[0] - idle_start[0]) * 1000:.0f}")
        before = idle_start[1]
        deltas = {}
        for tid, (name, ms) in idle_end[1].items():
            base = before.get(tid, (name, 0.0))[1]
            deltas[name] = deltas.get(name, 0.0) + ms - base
        for name, ms in sorted(deltas.items()):
            print(f"idle {name.replace(' ', '_')} {ms:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
