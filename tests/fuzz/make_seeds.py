#!/usr/bin/env python3
"""Writes the seeds of fuzz_devices (tests/fuzz/seeds/fuzz_devices/): for every device on
both transports, a driver that sets the device up and does real I/O, and the host's side of
it. The byte format is described at the top of tests/fuzz/fuzz_devices.c.

    make_seeds.py [DIR]                  fuzz_devices' seeds (into DIR)
    make_seeds.py --from-targets BUILD   the seeds ember's own code writes: snapshot sections
                                         saved by the devices, a state file and migration
                                         streams, each written by its target built in BUILD
                                         (`make fuzz-build`: build/fuzz) when run with
                                         EMBER_FUZZ_WRITE_SEEDS; regress-* seeds are kept."""
import os
import struct
import subprocess
import sys

# Targets that write their own seeds (the formats are ember's snapshot writer's).
SELF_SEEDING = ("fuzz_snapshot_restore", "fuzz_migration_receive")

BLK, NET, CONSOLE, RNG, VSOCK, PMEM = range(6)
(INIT, STATUS, REG_WRITE, REG_READ, QUEUE_REG, FEATURES, CONFIG, CHAIN, KICK, RUN, WAIT,
 MEM, HOST, PCI_CONFIG, PCI_COMMAND, PCI_BAR, MSIX, CFG_WINDOW, RESET) = range(19)

KICK_AFTER = 0x02
INDIRECT = 0x01
HIGH_REGION = 0x20
THREE_BUFFERS = 0x40


def u8(*v):
    return bytes(v)


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def header(dev, pci, opt=0, limits=0, one_region=False):
    return u8(dev | (8 if pci else 0) | (16 if one_region else 0)) + u16(opt) + u8(limits)


def init(pci, packed=False, qmask=0xffff, size_sel=0, ring_sel=0, driver_ok=True):
    feat = 0 if packed else 1  # bit 0: no packed rings
    misc = (2 if pci else 0) | (0 if driver_ok else 1)  # MSI-X vectors on PCI
    return u8(INIT, feat) + u16(qmask) + u8(size_sel, ring_sel, misc)


def chain(q, flags, *body):
    return u8(CHAIN, q, flags) + b"".join(body)


def data(n, seed=0):
    return bytes((i * 13 + seed) & 0xff for i in range(n))


def blk(pci, packed=False):
    s = header(BLK, pci)
    s += init(pci, packed)
    # write 1 sector at 0, read it back, flush, get-id, discard, write-zeroes
    s += chain(0, KICK_AFTER, u8(1, 0, 1), data(64, 1))
    s += chain(0, KICK_AFTER | THREE_BUFFERS, u8(0, 0, 2))
    s += chain(0, KICK_AFTER, u8(2, 0, 0))
    s += chain(0, KICK_AFTER | INDIRECT, u8(3, 0, 1))
    s += chain(0, KICK_AFTER | HIGH_REGION, u8(4, 0, 0), u8(2, 1, 0))
    s += chain(0, KICK_AFTER, u8(5, 4, 0), u8(0, 2, 1))
    return s


def blk_limited(pci):
    # io_uring, two queues, an operations limit: the throttle timer has to run.
    opt = (1 << 3) | (1 << 5)
    s = header(BLK, pci, opt, limits=0x40 | (1 << 3))
    s += init(pci)
    for i in range(4):
        s += chain(i & 1, KICK_AFTER, u8(0, i, 1))
    s += u8(WAIT, 10) + u8(WAIT, 10)
    return s


def net(pci, packed=False):
    s = header(NET, pci, opt=1 | 2)  # frames with the virtio-net header, offloads
    s += init(pci, packed)
    for _ in range(4):
        s += chain(0, KICK_AFTER, u8(7))  # 1526-byte receive buffers
    s += chain(1, KICK_AFTER, u8(0, 3), data(60, 2))  # a 64-byte frame
    s += chain(1, KICK_AFTER | 0x80, u8(6, 7), data(60, 3))  # TSO, header apart
    s += u8(HOST, 1)  # the host reads them
    s += u8(HOST, 0, 3) + data(40, 4)  # a frame from the host
    s += u8(HOST, 0, 7) + data(40, 5)
    return s


def net_limited(pci):
    s = header(NET, pci, opt=0x10 | 8, limits=0x80 | 1)  # small send buffer, batches
    s += init(pci)
    for _ in range(3):
        s += chain(0, KICK_AFTER, u8(8))
    for i in range(6):
        s += chain(1, KICK_AFTER, u8(0, 8), data(60, i))
    s += u8(HOST, 3, 5) + u8(WAIT, 10) + u8(HOST, 1) + u8(WAIT, 10)
    return s


def console(pci, packed=False):
    s = header(CONSOLE, pci)
    s += init(pci, packed)
    s += chain(1, KICK_AFTER, u8(4), data(32, 6))  # output
    s += chain(0, KICK_AFTER, u8(3))  # a receive buffer
    s += u8(HOST, 0, 20) + data(21, 7)  # input
    return s


def rng(pci, packed=False):
    s = header(RNG, pci, opt=3 | 4)  # 10^6 bytes/s, bursts of 512: the timer runs
    s += init(pci, packed)
    s += chain(0, KICK_AFTER, u8(5))
    s += chain(0, KICK_AFTER | THREE_BUFFERS, u8(8))
    s += u8(WAIT, 19)
    return s


def vsock(pci, packed=False):
    s = header(VSOCK, pci)
    s += init(pci, packed)
    for _ in range(4):
        s += chain(0, KICK_AFTER, u8(9))  # 4140-byte receive buffers
    # The guest connects to host port 1 (PATH_1), the host program accepts and answers.
    s += chain(1, KICK_AFTER, u8(0, 0))  # REQUEST 1024 -> 1
    s += u8(HOST, 4, 0, 0)  # accept on PATH_1
    s += chain(1, KICK_AFTER, u8(0x82, 0), u8(3), data(64, 8))  # RW, 64 bytes
    s += u8(HOST, 5, 0, 3) + data(64, 9)  # the host program writes back
    s += u8(HOST, 7, 0)  # and reads
    # A host program connects to guest port 1024; the guest accepts.
    s += u8(HOST, 0, 0, 0)  # "CONNECT 1024\n"
    s += chain(1, KICK_AFTER, u8(1, 2 << 2))  # RESPONSE 1024 -> 2^30
    s += u8(HOST, 1, 0, 3) + data(64, 10)
    s += chain(1, KICK_AFTER, u8(0x82, 2 << 2), u8(3), data(64, 11))
    s += chain(1, KICK_AFTER, u8(4, 0))  # CREDIT_REQUEST
    s += chain(1, KICK_AFTER, u8(5 | 3 << 3, 0))  # SHUTDOWN both ways
    s += chain(1, KICK_AFTER, u8(6, 2 << 2))  # RST
    return s


def pmem(pci, packed=False):
    """A 3 MiB read-write file: FLUSHes (two in one batch), an unknown type and a writable
    header (answered EIO), then an answer with no room (the device needs a reset)."""
    s = header(PMEM, pci, opt=3 << 1)
    s += init(pci, packed)
    s += chain(0, KICK_AFTER, u8(0))
    s += chain(0, 0, u8(0)) + chain(0, KICK_AFTER | THREE_BUFFERS, u8(0))
    s += chain(0, KICK_AFTER | 0x80, u8(0), u32(7))
    s += chain(0, KICK_AFTER, u8(4))
    s += chain(0, KICK_AFTER, u8(2, 0))  # a 1-byte answer buffer
    return s


def pmem_read_only_limited(pci):
    """A read-only file of 2 MiB + 1 under a flush rate limit: the timer runs, the limit is
    replaced, a vCPU's write to the mapping is dropped."""
    s = header(PMEM, pci, opt=1 | 2 << 1, limits=0x09)
    s += init(pci)
    for _ in range(3):
        s += chain(0, KICK_AFTER, u8(0))
    s += u8(WAIT, 19)
    s += u8(HOST, 2) + u32(0x10) + u8(3)  # an 8-byte write at 0x1000
    s += u8(HOST, 1, 0xc0)  # no limits any more
    s += chain(0, KICK_AFTER, u8(0))
    return s


def blk_merged(pci):
    """Adjacent reads and writes queued before one kick: merged into larger I/Os."""
    s = header(BLK, pci)
    s += init(pci)
    for sector in range(4):
        s += chain(0, 0, u8(1, sector, 1), data(64, sector))
    s += u8(KICK, 0)
    for sector in range(4):
        s += chain(0, 0, u8(0, sector, 1))
    s += u8(KICK, 0)
    return s


def vsock_buffered(pci):
    """The host program does not read while the guest sends more than its socket holds:
    ember buffers within its credit, then flushes once the program reads; the program then
    ends its side of the stream."""
    s = header(VSOCK, pci)
    s += init(pci)
    for _ in range(4):
        s += chain(0, KICK_AFTER, u8(9))
    s += chain(1, KICK_AFTER, u8(0, 0))  # REQUEST 1024 -> 1
    s += u8(HOST, 4, 0, 0)  # accepted on PATH_1
    for i in range(5):
        s += chain(1, KICK_AFTER | (HIGH_REGION if i & 1 else 0), u8(0x82, 0), u8(12),
                   data(64, i))  # 64 KiB each
    s += u8(HOST, 7, 0)  # the program reads: room again
    s += u8(HOST, 3, 0, 2)  # and shuts its writing side
    for _ in range(2):
        s += chain(0, KICK_AFTER, u8(9))
    return s


def pci_extras(dev):
    """BAR moved with decoding off, MSI-X masked and unmasked, INTx, the PCI_CFG window."""
    s = header(dev, True)
    s += init(True)
    s += u8(PCI_BAR, 0x81)  # BAR 0 to 0xe0008000
    s += u8(MSIX, 1, 0) + u32(0xc000)  # enabled, function masked
    s += chain(0, KICK_AFTER, {BLK: u8(0, 0, 1), NET: u8(7), RNG: u8(5)}[dev])
    s += u8(MSIX, 1, 0) + u32(0x8000)  # unmasked: pending vectors fire
    s += u8(MSIX, 2, 0) + u32(0)  # PBA
    s += u8(PCI_COMMAND) + u16(0x0406)  # INTx disabled
    s += u8(CFG_WINDOW, 0x00) + u16(0x14)  # status byte through the window
    s += u8(PCI_COMMAND) + u16(0x0002)  # bus mastering off while live
    return s


def from_targets(build):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
    for name in SELF_SEEDING:
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        env = dict(os.environ, EMBER_FUZZ_WRITE_SEEDS=out)
        subprocess.run([os.path.join(build, name), "-runs=0"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        print(f"{name}: {len(os.listdir(out))} seeds in {out}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--from-targets":
        from_targets(sys.argv[2])
        return
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "seeds", "fuzz_devices")
    os.makedirs(out, exist_ok=True)
    seeds = {}
    for pci in (False, True):
        t = "pci" if pci else "mmio"
        for name, fn in (("blk", blk), ("net", net), ("console", console), ("rng", rng),
                         ("vsock", vsock), ("pmem", pmem)):
            seeds[f"{name}-{t}"] = fn(pci)
            seeds[f"{name}-{t}-packed"] = fn(pci, packed=True)
        seeds[f"blk-{t}-limited"] = blk_limited(pci)
        seeds[f"net-{t}-limited"] = net_limited(pci)
        seeds[f"blk-{t}-merged"] = blk_merged(pci)
        seeds[f"vsock-{t}-buffered"] = vsock_buffered(pci)
        seeds[f"pmem-{t}-read-only-limited"] = pmem_read_only_limited(pci)
    for dev, name in ((BLK, "blk"), (NET, "net"), (RNG, "rng")):
        seeds[f"{name}-pci-extras"] = pci_extras(dev)
    for name, blob in sorted(seeds.items()):
        with open(os.path.join(out, name), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
