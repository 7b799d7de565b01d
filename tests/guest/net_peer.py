#!/usr/bin/env python3
"""The host side of the virtio-net test guests, run inside their network namespace.

  net_peer.py --ip ADDR --port P --csum-port C --ifname TAP

- UDP echo on ADDR:P: every datagram goes back to its sender unchanged.
- Checksum verdicts on ADDR:C: a packet socket on TAP with PACKET_VNET_HDR reads each UDP
  datagram for port C together with the virtio-net header the VMM handed the tap. When the
  header says NEEDS_CSUM, the checksum is completed the way the kernel does (the ones'
  complement sum from csum_start to the end, stored at csum_start + csum_offset); the
  result must then be the datagram's correct UDP checksum. The verdict goes back to the
  sender from port C: "csum ok needs_csum start=S offset=O" or "csum bad ...".
- Drops of the echoed datagrams are avoided with a 4 MiB receive buffer.

Prints "net_peer: ready" once listening; runs until killed.
"""

import argparse
import select
import socket
import struct
import sys

SOL_PACKET = 263
PACKET_VNET_HDR = 15
SO_RCVBUFFORCE = 33
ETH_P_IP = 0x0800
VNET_HDR_LEN = 10  # struct virtio_net_hdr, as packet sockets give it
NEEDS_CSUM = 1


def ones_sum(data, s=0):
    if len(data) % 2:
        data = bytes(data) + b"\0"
    for (w,) in struct.iter_unpack("!H", data):
        s += w
    return s


def fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def verdict(pkt, port):
    """The verdict for one frame read with its virtio-net header, or None if it is not a UDP
    datagram for port."""
    if len(pkt) < VNET_HDR_LEN + 14 + 20 + 8:
        return None
    flags, _gso, _hlen, _gsize, start, offset = struct.unpack_from("<BBHHHH", pkt)
    f = bytearray(pkt[VNET_HDR_LEN:])
    if struct.unpack_from("!H", f, 12)[0] != ETH_P_IP:
        return None
    ihl = (f[14] & 15) * 4
    if f[14] >> 4 != 4 or f[23] != 17 or len(f) < 14 + ihl + 8:
        return None
    udp = 14 + ihl
    if struct.unpack_from("!H", f, udp + 2)[0] != port:
        return None
    src, dst = f[26:30], f[30:34]
    udp_len = struct.unpack_from("!H", f, udp + 4)[0]
    if udp + udp_len > len(f):
        return "csum bad: UDP length beyond the frame", src
    mode = "complete"
    if flags & NEEDS_CSUM:
        if start + offset + 2 > len(f):
            return f"csum bad: NEEDS_CSUM at {start}+{offset} outside the frame", src
        c = (~fold(ones_sum(f[start:])) & 0xFFFF) or 0xFFFF
        struct.pack_into("!H", f, start + offset, c)
        mode = f"needs_csum start={start} offset={offset}"
    got = struct.unpack_from("!H", f, udp + 6)[0]
    pseudo = ones_sum(src + dst) + 17 + udp_len
    seg = bytearray(f[udp:udp + udp_len])
    seg[6:8] = b"\0\0"
    want = (~fold(ones_sum(seg, pseudo)) & 0xFFFF) or 0xFFFF
    if got == want:
        return f"csum ok {mode} sum=0x{got:04x}", src
    return f"csum bad {mode}: 0x{got:04x}, the datagram's is 0x{want:04x}", src


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--csum-port", type=int, required=True)
    p.add_argument("--ifname", required=True)
    a = p.parse_args()

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
    echo.bind((a.ip, a.port))
    csum = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    csum.bind((a.ip, a.csum_port))
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    raw.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    raw.bind((a.ifname, ETH_P_IP))
    print("net_peer: ready", flush=True)
    while True:
        ready, _, _ = select.select([echo, csum, raw], [], [])
        if echo in ready:
            data, addr = echo.recvfrom(65536)
            echo.sendto(data, addr)
        if csum in ready:
            csum.recvfrom(65536)  # the datagram itself; the verdict comes from its frame
        if raw in ready:
            pkt = raw.recv(65536 + VNET_HDR_LEN)
            v = verdict(pkt, a.csum_port)
            if v:
                text, _src = v
                f = pkt[VNET_HDR_LEN:]
                ihl = (f[14] & 15) * 4
                sport = struct.unpack_from("!H", f, 14 + ihl)[0]
                print(f"net_peer: {text}", flush=True)
                csum.sendto(text.encode(), (socket.inet_ntoa(f[26:30]), sport))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
