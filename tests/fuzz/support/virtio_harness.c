#include "virtio_harness.h"

#include "util/eventloop.h"

#include <unistd.h>

const char *const kind_names[KIND_COUNT] = {"blk", "net", "console", "rng", "vsock", "pmem"};

struct virtio_dev *vh_dev(struct virtio_harness *vh)
{
    switch (vh->kind) {
    case BLK:
        vh->dev = &vh->u.blk.dev;
        break;
    case NET:
        vh->dev = &vh->u.net.dev;
        break;
    case CONSOLE:
        vh->dev = &vh->u.console.dev;
        break;
    case RNG:
        vh->dev = &vh->u.rng.dev;
        break;
    case PMEM:
        vh->dev = &vh->u.pmem.dev;
        break;
    default:
        vh->dev = &vh->u.vsock.dev;
        break;
    }
    vh->dev_made = true;
    return vh->dev;
}

int vh_take_loop(struct virtio_harness *vh)
{
    /* iothread_call() runs inline once the thread is not running. */
    iothread_stop(&vh->dev->io);
    if (event_loop_init(&vh->dev->io.loop) < 0)
        return -1;
    vh->loop_made = true;
    return 0;
}

void vh_buses_init(struct virtio_harness *vh)
{
    bus_init(&vh->mmio, "mmio");
    bus_init(&vh->pio, "pio");
    vh->transport_made = true;
}

int vh_transport_init(struct virtio_harness *vh)
{
    if (!vh->pci) {
        if (virtio_mmio_init(&vh->vmmio, vh->dev, -1, MMIO_BASE, 5) < 0)
            return -1;
        return bus_register(&vh->mmio, MMIO_BASE, VIRTIO_MMIO_WINDOW, virtio_mmio_io, &vh->vmmio,
                            vh->dev->name);
    }
    if (pci_bus_init(&vh->pcibus, &vh->pio, &vh->mmio, PCI_WINDOW_START, PCI_WINDOW_END) < 0)
        return -1;
    return virtio_pci_init(&vh->vpci, vh->dev, &vh->pcibus, NULL, -1);
}

void vh_transport_destroy(struct virtio_harness *vh)
{
    if (vh->pci) {
        virtio_pci_destroy(&vh->vpci);
        pci_bus_destroy(&vh->pcibus);
    } else {
        virtio_mmio_destroy(&vh->vmmio);
    }
    bus_destroy(&vh->mmio);
    bus_destroy(&vh->pio);
}

static void destroy_device(struct virtio_harness *vh)
{
    switch (vh->kind) {
    case BLK:
        virtio_blk_destroy(&vh->u.blk);
        break;
    case NET:
        virtio_net_destroy(&vh->u.net);
        break;
    case CONSOLE:
        virtio_console_destroy(&vh->u.console);
        break;
    case RNG:
        virtio_rng_destroy(&vh->u.rng);
        break;
    case PMEM:
        virtio_pmem_destroy(&vh->u.pmem);
        break;
    default:
        virtio_vsock_destroy(&vh->u.vsock);
        break;
    }
}

void vh_end(struct virtio_harness *vh)
{
    if (vh->transport_made)
        vh_transport_destroy(vh);
    if (vh->dev_made)
        destroy_device(vh);
    if (vh->loop_made)
        event_loop_destroy(&vh->dev->io.loop);
    if (vh->net_host_fd >= 0)
        close(vh->net_host_fd);
    vh->net_host_fd = -1;
}

int vh_loop_round(struct virtio_harness *vh, int timeout_ms)
{
    struct iothread *io = &vh->dev->io;
    int n = event_loop_run_once(&io->loop, timeout_ms);
    if (n < 0)
        return -1;
    int next = io->idle ? io->idle(io->idle_opaque) : -1;
    return n > 0 || next == 0;
}
