/* Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI
 * finds its CPUs, its IOAPIC and how ISA interrupts are wired. */
#ifndef EMBER_ARCH_X86_MPTABLE_H
#define EMBER_ARCH_X86_MPTABLE_H

#include "vmm/memory.h"

#include <stdint.h>

#define MPTABLE_MAX_CPUS 254 /* 8-bit APIC ids; the IOAPIC takes the next id */

struct mptable_params {
    unsigned ncpus;
    uint32_t cpu_signature; /* CPUID 1 EAX */
    uint32_t cpu_features;  /* CPUID 1 EDX */
    uint64_t ioapic_addr;
    uint64_t lapic_addr;
    uint32_t pci_slots; /* bitmap of PCI bus 0 slots with a device (INTA) */
    /* ISA interrupt lines 0..isa_irqs-1 to list (0: the 16 of a PC); up to
     * 24 when no PCI device takes IOAPIC pins 16-23: virtio-mmio devices
     * use them as ISA lines, edge-triggered, as Firecracker's do. */
    unsigned isa_irqs;
};

/* Writes the floating pointer and configuration table at gpa (inside the
 * BIOS area, where guests scan for it). Returns the bytes used or -1. */
int mptable_write(const struct guest_memory *mem, uint64_t gpa, const struct mptable_params *p);

/* IOAPIC input that an ISA IRQ is wired to (IRQ 0, the PIT, to pin 2). */
#define MPTABLE_PCI_FIRST_PIN 16
#define MPTABLE_MAX_ISA_IRQS  24
unsigned mptable_isa_irq_to_pin(unsigned irq);

#endif
