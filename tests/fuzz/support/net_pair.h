/* A virtio-net backend for tests: frames cross a SOCK_SEQPACKET socketpair, one frame per
 * message; the test plays the host on the other end. */
#ifndef EMBER_TESTS_FUZZ_NET_PAIR_H
#define EMBER_TESTS_FUZZ_NET_PAIR_H

#include "backends/net.h"

#include <stdbool.h>

struct net_pair_options {
    bool vnet_hdr;        /* frames carry the 12-byte virtio-net header, as a tap's do */
    bool offloads;        /* takes TUN_F_* offloads */
    bool refuse_offloads; /* ... and then refuses every set_offloads */
    bool batch;           /* offers send_batch */
    int sndbuf;           /* SO_SNDBUF of the device's end (0: the kernel's); small = pushback */
};

/* Opens the pair; *host_fd (non-blocking) is the host's end, the caller's to close. */
int net_pair_open(struct net_backend *be, const struct net_pair_options *o, int *host_fd);

#endif
