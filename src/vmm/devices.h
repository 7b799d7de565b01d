/* Assembling the machine's virtio devices: models, transports (MMIO
 * windows and IRQs, or PCI slots), and the kernel command line entries
 * that announce virtio-mmio devices. */
#ifndef EMBER_VMM_DEVICES_H
#define EMBER_VMM_DEVICES_H

#include "virtio/device.h"
#include "virtio/mmio.h"
#include "virtio/pci.h"

struct vm;
struct vm_config;

struct vm_virtio {
    struct virtio_dev *dev;
    void *model;
    void (*destroy)(void *model);
    bool on_pci;
    bool vhost_user;      /* the data path is a vhost-user back-end's (model: vhost_user_blk,
                             vhost_user_fs or vhost_user_net) */
    const char *drive_id; /* a drive's id (the configuration's), NULL for other devices */
    struct virtio_mmio mmio;
    struct virtio_pci pci;
};

/* Maps every pmem file and places it in guest physical memory above RAM
 * (a KVM memory slot each, read-only ones read-only). Call after RAM's
 * slots and before the irqchip. */
int vm_create_pmem_regions(struct vm *vm);
/* Creates every virtio device the configuration asks for and builds
 * vm->full_cmdline. Call after memory and the irqchip exist. */
int vm_create_virtio_devices(struct vm *vm);
void vm_destroy_virtio_devices(struct vm *vm);
/* Every drive's image lock released (held false) or taken again: a live migration on one
 * host hands the images over. Stops at the first failure. */
int vm_set_drive_locks(struct vm *vm, bool held);
/* The descriptors a live migration on one host hands over, so that the new ember need not
 * open what this one holds (a tap attaches to one process; the vsock socket is bound here):
 * the tap of interface index (its position in the configuration), the vsock listener; -1
 * where there is none. */
int vm_net_tap_fd(const struct vm *vm, unsigned index);
int vm_vsock_listen_fd(const struct vm *vm);
/* The vsock socket handed over is this ember's alone now (the migration succeeded): its
 * path is removed when the device ends. */
void vm_vsock_own_path(struct vm *vm);
/* The first vhost-user device's name, NULL without one: snapshots and live migration refuse
 * such a machine (the back-end's state is not ember's to save). */
const char *vm_vhost_user_device(const struct vm *vm);
/* Whether the configuration asks for a vhost-user device (guest memory must be shared). */
bool vm_config_wants_vhost_user(const struct vm_config *cfg);
/* PCI slots in use (bitmap), for the MP table's interrupt entries. */
uint32_t vm_pci_slots(const struct vm *vm);

#endif
