#!/usr/bin/env python3
"""A DNS server for one name, for the user-mode networking check (Python standard library).

  dns_responder.py --listen 127.0.0.1 --port 53 --name ember-host.test --address 10.0.2.2

Answers A queries for NAME with ADDRESS, AAAA queries for NAME with no record (NOERROR, so
that a resolver does not wait for one), and everything else with NXDOMAIN. Prints
"dns: ready" once listening and "dns: QNAME TYPE -> ANSWER" per query; runs until killed.
"""

import argparse
import socket
import struct

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3


def parse_question(msg):
    """(id, flags, qname, qtype, qclass, end of the question) of a query, or None."""
    if len(msg) < 12:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", msg)
    if flags & 0x8000 or qdcount != 1:
        return None
    labels, i = [], 12
    while True:
        if i >= len(msg):
            return None
        n = msg[i]
        i += 1
        if n == 0:
            break
        if n > 63 or i + n > len(msg):
            return None
        labels.append(msg[i:i + n].decode("ascii", "replace"))
        i += n
    if i + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack_from("!HH", msg, i)
    return qid, flags, ".".join(labels), qtype, qclass, i + 4


def answer(msg, name, address):
    q = parse_question(msg)
    if q is None:
        if len(msg) >= 2:
            return msg[:2] + struct.pack("!HHHHH", 0x8000 | FORMERR, 0, 0, 0, 0), "malformed"
        return None, "malformed"
    qid, flags, qname, qtype, qclass, end = q
    question = msg[12:end]
    rd = flags & 0x0100
    if qname.lower().rstrip(".") != name.lower() or qclass != CLASS_IN:
        head = struct.pack("!HHHHHH", qid, 0x8180 | rd | NXDOMAIN, 1, 0, 0, 0)
        return head + question, f"{qname} {qtype} -> NXDOMAIN"
    records = b""
    what = "no record"
    if qtype == TYPE_A:
        # A pointer to the name in the question (offset 12), class IN, TTL 60, the address.
        records = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 60, 4) + \
            socket.inet_aton(address)
        what = address
    head = struct.pack("!HHHHHH", qid, 0x8580 | rd | NOERROR, 1, 1 if records else 0, 0, 0)
    return head + question + records, f"{qname} {qtype} -> {what}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--name", required=True)
    p.add_argument("--address", required=True)
    a = p.parse_args()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a.listen, a.port))
    print("dns: ready", flush=True)
    while True:
        msg, peer = s.recvfrom(4096)
        reply, text = answer(msg, a.name, a.address)
        print(f"dns: {text}", flush=True)
        if reply:
            s.sendto(reply, peer)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
