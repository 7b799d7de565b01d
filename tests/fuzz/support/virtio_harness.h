/* One virtio device model (blk, net, console, rng, vsock, pmem) on its transport (virtio-mmio,
 * or virtio-pci on a PCI bus of its own), made and run by a fuzzer without KVM: the device's
 * I/O thread is stopped and the harness runs its event loop itself, so that iothread_call()
 * runs inline and a failure reproduces from its input alone. Each fuzzer makes the model with
 * the options its input says; this holds what is the same for all. */
#ifndef EMBER_TESTS_FUZZ_VIRTIO_HARNESS_H
#define EMBER_TESTS_FUZZ_VIRTIO_HARNESS_H

#include "arch/x86/layout.h"
#include "bus/bus.h"
#include "bus/pci.h"
#include "virtio/blk.h"
#include "virtio/console.h"
#include "virtio/mmio.h"
#include "virtio/net.h"
#include "virtio/pci.h"
#include "virtio/pmem.h"
#include "virtio/rng.h"
#include "virtio/vsock.h"

#include <stdbool.h>

#define MMIO_BASE        LAYOUT_VIRTIO_MMIO_BASE
#define PCI_WINDOW_START 0xe0000000ULL
#define PCI_WINDOW_END   0xfec00000ULL

enum kind { BLK, NET, CONSOLE, RNG, VSOCK, PMEM, KIND_COUNT };
extern const char *const kind_names[KIND_COUNT];

struct virtio_harness {
    enum kind kind;
    bool pci;
    union {
        struct virtio_blk blk;
        struct virtio_net net;
        struct virtio_console console;
        struct virtio_rng rng;
        struct virtio_vsock vsock;
        struct virtio_pmem pmem;
    } u;
    struct virtio_dev *dev;
    bool dev_made, loop_made, transport_made;
    struct bus mmio, pio;
    struct pci_bus pcibus;
    struct virtio_pci vpci;
    struct virtio_mmio vmmio;
    int net_host_fd; /* a net device's host end (support/net_pair.h), or -1 */
};

/* Points vh->dev at the kind's model, about to be made: what vh_end destroys from here on. */
struct virtio_dev *vh_dev(struct virtio_harness *vh);

/* After the model is made: its I/O thread stopped, its loop made anew for the harness to run.
 * -1 if the loop cannot be made. */
int vh_take_loop(struct virtio_harness *vh);

/* The transport in two steps, so that a fuzzer can put more on the buses first: the MMIO and
 * port buses, then the transport on them (virtio-mmio at MMIO_BASE, or virtio-pci). */
void vh_buses_init(struct virtio_harness *vh);
int vh_transport_init(struct virtio_harness *vh);
void vh_transport_destroy(struct virtio_harness *vh);

/* Destroys whatever was made: transport, model, loop, the net host end (set to -1). */
void vh_end(struct virtio_harness *vh);

/* One round as the I/O thread runs it: events (waiting up to timeout_ms), then the idle hook.
 * 1 if anything ran or the idle hook wants another round at once, 0 if not, -1 if the loop
 * failed. */
int vh_loop_round(struct virtio_harness *vh, int timeout_ms);

#endif
