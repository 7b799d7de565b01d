#!/usr/bin/env python3
"""The host side of the virtio-lifecycle test guest, for the whole run of the case.

  lifecycle_peer.py --uds PATH --connect-port P --listen-port Q [--beacon ADDR:PORT]

- Host connections into the guest, through the VMM's vsock unix socket (Firecracker's host
  protocol): every 100 ms a new attempt connects to PATH, writes "CONNECT P\\n" and waits up to
  1.5 s for "OK <n>\\n"; then it writes "ping K\\n" and expects "pong K\\n" within 2 s. Each
  answered attempt prints "host-connect ok K". Attempts overlap: the guest answers only now
  and then, and a VMM that is not running yet, or that the guest keeps busy, just makes them
  fail (they are counted, printed at the end).
- PATH_Q: a unix socket the guest reaches by connecting to host port Q; it echoes every byte
  back until the guest closes.
- With --beacon, a UDP datagram to ADDR:PORT (a broadcast address) every 20 ms, so that frames
  keep arriving at the guest's network device (run it in the tap's network namespace).

Prints "lifecycle_peer: ready" once listening; runs until killed (SIGTERM prints the counts).
"""

import argparse
import asyncio
import os
import signal
import socket
import sys

ATTEMPT_EVERY = 0.1
OK_WAIT = 1.5
PONG_WAIT = 2.0
BEACON_EVERY = 0.02

counts = {"ok": 0, "refused": 0, "no-ok": 0, "no-pong": 0, "echo-connections": 0}


def say(line):
    print(line, flush=True)


async def attempt(path, port, k):
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        counts["refused"] += 1
        return
    try:
        writer.write(b"CONNECT %d\n" % port)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), OK_WAIT)
        if not line.startswith(b"OK "):
            counts["no-ok"] += 1
            return
        writer.write(b"ping %d\n" % k)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), PONG_WAIT)
        if line == b"pong %d\n" % k:
            counts["ok"] += 1
            say("host-connect ok %d" % k)
        else:
            counts["no-pong"] += 1
    except (asyncio.TimeoutError, OSError):
        counts["no-ok"] += 1
    finally:
        writer.close()


async def connector(path, port):
    k = 0
    while True:
        k += 1
        asyncio.ensure_future(attempt(path, port, k))
        await asyncio.sleep(ATTEMPT_EVERY)


async def echo(reader, writer):
    counts["echo-connections"] += 1
    try:
        while True:
            data = await reader.read(4096)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def beacon(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setblocking(False)
    n = 0
    while True:
        n += 1
        try:
            s.sendto(b"virtio-lifecycle beacon %d" % n, (addr, port))
        except OSError:
            pass
        await asyncio.sleep(BEACON_EVERY)


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uds", required=True)
    p.add_argument("--connect-port", type=int, required=True)
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--beacon")
    a = p.parse_args()
    listen_path = "%s_%d" % (a.uds, a.listen_port)
    if os.path.exists(listen_path):
        os.unlink(listen_path)
    server = await asyncio.start_unix_server(echo, path=listen_path)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    tasks = [asyncio.ensure_future(connector(a.uds, a.connect_port))]
    if a.beacon:
        addr, port = a.beacon.rsplit(":", 1)
        tasks.append(asyncio.ensure_future(beacon(addr, int(port))))
    say("lifecycle_peer: ready")
    await stop
    for t in tasks:
        t.cancel()
    server.close()
    os.unlink(listen_path)
    say("lifecycle_peer: " + ", ".join("%s %d" % kv for kv in counts.items()))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
