#include "arch/x86/mptable.h"

#include "util/error.h"

#include <string.h>

#define MP_SPEC_REV 4
/* PCI must be MP bus 0: guests equate MP bus ids with PCI bus numbers. */
#define PCI_BUS_ID    0
#define ISA_BUS_ID    1
#define IRQ_FLAGS_PCI 0x0f /* active low, level triggered */

enum { MP_PROCESSOR, MP_BUS, MP_IOAPIC, MP_INTSRC, MP_LINTSRC };
enum { MP_IRQ_INT = 0, MP_IRQ_NMI = 1, MP_IRQ_EXTINT = 3 };

struct __attribute__((packed)) mp_floating_pointer {
    char signature[4];
    uint32_t config_table;
    uint8_t length; /* in 16-byte units */
    uint8_t spec_rev;
    uint8_t checksum;
    uint8_t feature[5];
};

struct __attribute__((packed)) mp_config_header {
    char signature[4];
    uint16_t length;
    uint8_t spec_rev;
    uint8_t checksum;
    char oem[8];
    char product[12];
    uint32_t oem_table;
    uint16_t oem_table_size;
    uint16_t entry_count;
    uint32_t lapic_addr;
    uint16_t ext_length;
    uint8_t ext_checksum;
    uint8_t reserved;
};

struct __attribute__((packed)) mp_processor {
    uint8_t type;
    uint8_t apic_id;
    uint8_t apic_version;
    uint8_t flags; /* bit 0 enabled, bit 1 bootstrap processor */
    uint32_t signature;
    uint32_t features;
    uint32_t reserved[2];
};

struct __attribute__((packed)) mp_bus {
    uint8_t type;
    uint8_t bus_id;
    char bus_type[6];
};

struct __attribute__((packed)) mp_ioapic {
    uint8_t type;
    uint8_t apic_id;
    uint8_t apic_version;
    uint8_t flags;
    uint32_t addr;
};

struct __attribute__((packed)) mp_irq {
    uint8_t type;
    uint8_t irq_type;
    uint16_t flags; /* polarity/trigger; 0 = as the bus defines */
    uint8_t src_bus;
    uint8_t src_irq;
    uint8_t dst_apic;
    uint8_t dst_pin;
};

static uint8_t checksum(const void *p, size_t len)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < len; i++)
        sum += ((const uint8_t *)p)[i];
    return (uint8_t)-sum;
}

unsigned mptable_isa_irq_to_pin(unsigned irq)
{
    return irq == 0 ? 2 : irq;
}

int mptable_write(const struct guest_memory *mem, uint64_t gpa, const struct mptable_params *p)
{
    if (p->ncpus == 0 || p->ncpus > MPTABLE_MAX_CPUS)
        return error_set("MP table supports 1 to %d CPUs, not %u", MPTABLE_MAX_CPUS, p->ncpus);
    unsigned isa_irqs = p->isa_irqs ? p->isa_irqs : 16;
    if (isa_irqs < 16 || isa_irqs > MPTABLE_MAX_ISA_IRQS ||
        (p->pci_slots && isa_irqs > MPTABLE_PCI_FIRST_PIN))
        return error_set("MP table: %u ISA interrupt lines (16 to %d, 16 with PCI devices)",
                         isa_irqs, MPTABLE_MAX_ISA_IRQS);
    size_t size = sizeof(struct mp_floating_pointer) + sizeof(struct mp_config_header) +
                  p->ncpus * sizeof(struct mp_processor) + sizeof(struct mp_bus) +
                  sizeof(struct mp_bus) + sizeof(struct mp_ioapic) +
                  MPTABLE_MAX_ISA_IRQS * sizeof(struct mp_irq) + 32 * sizeof(struct mp_irq) +
                  2 * sizeof(struct mp_irq);
    uint8_t *base = gpa_to_hva(mem, gpa, size);
    if (!base)
        return error_set("no guest memory for the MP table at 0x%llx", (unsigned long long)gpa);
    memset(base, 0, size);

    struct mp_floating_pointer *fp = (void *)base;
    struct mp_config_header *hdr = (void *)(fp + 1);
    uint8_t *cursor = (uint8_t *)(hdr + 1);
    uint16_t entries = 0;
    uint8_t ioapic_id = (uint8_t)p->ncpus;

    for (unsigned i = 0; i < p->ncpus; i++) {
        struct mp_processor cpu = {
            .type = MP_PROCESSOR,
            .apic_id = (uint8_t)i,
            .apic_version = 0x14,
            .flags = (uint8_t)(1 | (i == 0 ? 2 : 0)),
            .signature = p->cpu_signature,
            .features = p->cpu_features,
        };
        memcpy(cursor, &cpu, sizeof(cpu));
        cursor += sizeof(cpu);
        entries++;
    }
    struct mp_bus isa = {.type = MP_BUS, .bus_id = ISA_BUS_ID};
    memcpy(isa.bus_type, "ISA   ", 6);
    memcpy(cursor, &isa, sizeof(isa));
    cursor += sizeof(isa);
    entries++;
    if (p->pci_slots) {
        struct mp_bus pci = {.type = MP_BUS, .bus_id = PCI_BUS_ID};
        memcpy(pci.bus_type, "PCI   ", 6);
        memcpy(cursor, &pci, sizeof(pci));
        cursor += sizeof(pci);
        entries++;
    }
    struct mp_ioapic ioapic = {.type = MP_IOAPIC,
                               .apic_id = ioapic_id,
                               .apic_version = 0x11,
                               .flags = 1,
                               .addr = (uint32_t)p->ioapic_addr};
    memcpy(cursor, &ioapic, sizeof(ioapic));
    cursor += sizeof(ioapic);
    entries++;
    for (unsigned irq = 0; irq < isa_irqs; irq++) {
        if (irq == 2)
            continue; /* the PIC cascade: nothing to route */
        struct mp_irq e = {.type = MP_INTSRC,
                           .irq_type = MP_IRQ_INT,
                           .src_bus = ISA_BUS_ID,
                           .src_irq = (uint8_t)irq,
                           .dst_apic = ioapic_id,
                           .dst_pin = (uint8_t)mptable_isa_irq_to_pin(irq)};
        memcpy(cursor, &e, sizeof(e));
        cursor += sizeof(e);
        entries++;
    }
    for (unsigned slot = 0; slot < 32; slot++) {
        if (!(p->pci_slots >> slot & 1))
            continue;
        /* INTA of each slot, swizzled over pins 16-23. */
        struct mp_irq e = {.type = MP_INTSRC,
                           .irq_type = MP_IRQ_INT,
                           .flags = IRQ_FLAGS_PCI,
                           .src_bus = PCI_BUS_ID,
                           .src_irq = (uint8_t)(slot << 2),
                           .dst_apic = ioapic_id,
                           .dst_pin = (uint8_t)(MPTABLE_PCI_FIRST_PIN + slot % 8)};
        memcpy(cursor, &e, sizeof(e));
        cursor += sizeof(e);
        entries++;
    }
    /* LINT0 receives the PIC (virtual wire), LINT1 NMIs, on every CPU. */
    struct mp_irq lint0 = {.type = MP_LINTSRC,
                           .irq_type = MP_IRQ_EXTINT,
                           .src_bus = ISA_BUS_ID,
                           .dst_apic = 0xff,
                           .dst_pin = 0};
    struct mp_irq lint1 = {.type = MP_LINTSRC,
                           .irq_type = MP_IRQ_NMI,
                           .src_bus = ISA_BUS_ID,
                           .dst_apic = 0xff,
                           .dst_pin = 1};
    memcpy(cursor, &lint0, sizeof(lint0));
    cursor += sizeof(lint0);
    memcpy(cursor, &lint1, sizeof(lint1));
    cursor += sizeof(lint1);
    entries += 2;

    memcpy(hdr->signature, "PCMP", 4);
    hdr->length = (uint16_t)(cursor - (uint8_t *)hdr);
    hdr->spec_rev = MP_SPEC_REV;
    memcpy(hdr->oem, "EMBER   ", 8);
    memcpy(hdr->product, "EMBER VM    ", 12);
    hdr->entry_count = entries;
    hdr->lapic_addr = (uint32_t)p->lapic_addr;
    hdr->checksum = checksum(hdr, hdr->length);

    memcpy(fp->signature, "_MP_", 4);
    fp->config_table = (uint32_t)(gpa + sizeof(*fp));
    fp->length = 1;
    fp->spec_rev = MP_SPEC_REV;
    fp->checksum = checksum(fp, sizeof(*fp));
    return (int)(cursor - base);
}
