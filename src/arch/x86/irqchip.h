/* The in-kernel interrupt controllers (PIC, IOAPIC, LAPIC), the PIT, and
 * the GSI routing table that wires device interrupts to them. */
#ifndef EMBER_ARCH_X86_IRQCHIP_H
#define EMBER_ARCH_X86_IRQCHIP_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define IRQCHIP_IOAPIC_PINS 24
/* GSIs from here up carry MSIs. */
#define IRQCHIP_FIRST_MSI_GSI 24

struct irqchip {
    int vm_fd;
    pthread_mutex_t lock;
    struct kvm_irq_routing *routes;
    unsigned capacity;
    unsigned next_msi_gsi;
    /* Until irqchip_finish_setup: routes are collected, not handed to KVM one by one. */
    bool setting_up;
    /* Per IOAPIC pin, the sources holding a shared level-triggered line high. */
    uint64_t line_sources[IRQCHIP_IOAPIC_PINS];
};

/* Creates the irqchip and PIT, sets KVM's private x86 pages, and prepares
 * the routing: ISA IRQ n to PIC input n and IOAPIC pin n, except the PIT
 * (GSI 0), which reaches IOAPIC pin 2 as on a PC; GSI 16-23 to pins 16-23.
 * The routes, with the MSI routes the devices add meanwhile, reach KVM at
 * irqchip_finish_setup, in one KVM_SET_GSI_ROUTING: each call waits for an
 * SRCU grace period, and a wait costs a trip through the run queue on a busy host. */
int irqchip_create(struct irqchip *chip, int vm_fd);
/* Hands the routes to KVM; call before the vCPUs run. */
int irqchip_finish_setup(struct irqchip *chip);
void irqchip_destroy(struct irqchip *chip);
/* Sets a line-based interrupt (GSI) high or low. */
int irqchip_set_line(struct irqchip *chip, unsigned gsi, int level);
/* For a level-triggered line that several devices share (PCI INTx): source
 * (below 64, unique among the line's users) asserts or releases it, and the
 * line stays high while any source holds it. KVM keeps one level per line
 * for all of user space, so the sharing has to be resolved here. */
int irqchip_set_shared_line(struct irqchip *chip, unsigned gsi, unsigned source, bool level);
/* Allocates a GSI that delivers the given MSI; returns it or -1. During setup the route
 * reaches KVM with the others at irqchip_finish_setup. */
int irqchip_add_msi_route(struct irqchip *chip, uint64_t addr, uint32_t data);
/* Changes an MSI route without handing the table to KVM yet (each hand-over costs KVM a grace
 * period): a restore stages every vector, a guest's MSI-X entry waits until it is unmasked
 * (virtio/pci.c), then one commit. */
int irqchip_stage_msi_route(struct irqchip *chip, unsigned gsi, uint64_t addr, uint32_t data);
int irqchip_commit_routes(struct irqchip *chip);

#endif
