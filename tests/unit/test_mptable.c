#include "arch/x86/layout.h"
#include "arch/x86/mptable.h"
#include "suites.h"

#include <string.h>

static uint8_t sum(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    for (size_t i = 0; i < n; i++)
        s += p[i];
    return s;
}

START_TEST(table_lists_cpus_ioapic_and_isa_irqs)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 16 << 20, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    struct mptable_params p = {.ncpus = 4,
                               .cpu_signature = 0xa50f00,
                               .cpu_features = 0x178bfbff,
                               .ioapic_addr = LAYOUT_IOAPIC,
                               .lapic_addr = LAYOUT_LAPIC};
    ck_assert_int_gt(mptable_write(&m, LAYOUT_MPTABLE, &p), 0);
    /* A guest scanning the BIOS area on 16-byte boundaries finds it. */
    const uint8_t *fp = NULL;
    for (uint64_t a = 0xf0000; a < 0x100000; a += 16) {
        const uint8_t *q = gpa_to_hva(&m, a, 16);
        if (memcmp(q, "_MP_", 4) == 0) {
            fp = q;
            break;
        }
    }
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(sum(fp, 16), 0);
    uint32_t table;
    memcpy(&table, fp + 4, 4);
    const uint8_t *hdr = gpa_to_hva(&m, table, 44);
    ck_assert_mem_eq(hdr, "PCMP", 4);
    uint16_t len, count;
    memcpy(&len, hdr + 4, 2);
    memcpy(&count, hdr + 34, 2);
    ck_assert_uint_eq(sum(hdr, len), 0);
    uint32_t lapic;
    memcpy(&lapic, hdr + 36, 4);
    ck_assert_uint_eq(lapic, LAYOUT_LAPIC);

    unsigned cpus = 0, bsps = 0, ioapics = 0, irq0_pin = 99, irqs = 0;
    uint8_t ioapic_id = 0xff;
    const uint8_t *e = hdr + 44;
    for (unsigned i = 0; i < count; i++) {
        switch (e[0]) {
        case 0:
            ck_assert_uint_eq(e[1], cpus); /* APIC ids 0..n-1 */
            ck_assert(e[3] & 1);
            bsps += (e[3] & 2) ? 1 : 0;
            cpus++;
            e += 20;
            break;
        case 2: {
            ioapics++;
            ioapic_id = e[1];
            uint32_t addr;
            memcpy(&addr, e + 4, 4);
            ck_assert_uint_eq(addr, LAYOUT_IOAPIC);
            e += 8;
            break;
        }
        case 3:
            irqs++;
            if (e[5] == 0)
                irq0_pin = e[7];
            ck_assert_uint_eq(e[6], ioapic_id);
            e += 8;
            break;
        default:
            e += 8;
            break;
        }
    }
    ck_assert_ptr_eq(e, hdr + len);
    ck_assert_uint_eq(cpus, 4);
    ck_assert_uint_eq(bsps, 1);
    ck_assert_uint_eq(ioapics, 1);
    ck_assert_uint_eq(ioapic_id, 4);
    ck_assert_uint_eq(irqs, 15);
    ck_assert_uint_eq(irq0_pin, 2); /* the PIT on pin 2, as KVM's routing has it */
    guest_memory_free(&m);
}
END_TEST

START_TEST(pci_slots_get_level_interrupts_on_bus_0)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 16 << 20, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    struct mptable_params p = {.ncpus = 1, .pci_slots = (1u << 1) | (1u << 9)};
    ck_assert_int_gt(mptable_write(&m, LAYOUT_MPTABLE, &p), 0);
    const uint8_t *hdr = gpa_to_hva(&m, LAYOUT_MPTABLE + 16, 44);
    uint16_t count;
    memcpy(&count, hdr + 34, 2);
    const uint8_t *e = hdr + 44;
    int pci_bus = -1, isa_bus = -1;
    unsigned pci_irqs = 0;
    for (unsigned i = 0; i < count; i++) {
        if (e[0] == 1 && memcmp(e + 2, "PCI", 3) == 0)
            pci_bus = e[1];
        if (e[0] == 1 && memcmp(e + 2, "ISA", 3) == 0)
            isa_bus = e[1];
        if (e[0] == 3 && e[4] == pci_bus) {
            uint16_t flags;
            memcpy(&flags, e + 2, 2);
            ck_assert_uint_eq(flags, 0x0f); /* active low, level */
            unsigned slot = e[5] >> 2;
            ck_assert(slot == 1 || slot == 9);
            ck_assert_uint_eq(e[7], 16 + slot % 8);
            pci_irqs++;
        }
        e += e[0] == 0 ? 20 : 8;
    }
    /* Guests take the MP bus id for the PCI bus number: it must be 0. */
    ck_assert_int_eq(pci_bus, 0);
    ck_assert_int_ne(isa_bus, 0);
    ck_assert_uint_eq(pci_irqs, 2);
    guest_memory_free(&m);
}
END_TEST

/* Without PCI, IOAPIC pins 16-23 are ISA lines too: Firecracker's virtio-mmio devices use
 * GSI 5-23, edge-triggered, and guests find them through these entries. */
START_TEST(isa_lines_up_to_23_without_pci)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 16 << 20, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    struct mptable_params p = {.ncpus = 1, .isa_irqs = MPTABLE_MAX_ISA_IRQS};
    ck_assert_int_gt(mptable_write(&m, LAYOUT_MPTABLE, &p), 0);
    const uint8_t *hdr = gpa_to_hva(&m, LAYOUT_MPTABLE + 16, 44);
    uint16_t count;
    memcpy(&count, hdr + 34, 2);
    const uint8_t *e = hdr + 44;
    int isa_bus = -1;
    uint32_t lines = 0;
    for (unsigned i = 0; i < count; i++) {
        if (e[0] == 1 && memcmp(e + 2, "ISA", 3) == 0)
            isa_bus = e[1];
        if (e[0] == 3 && e[4] == isa_bus) {
            uint16_t flags;
            memcpy(&flags, e + 2, 2);
            ck_assert_uint_eq(flags, 0); /* as the bus defines: edge, active high */
            ck_assert_uint_eq(e[7], e[5] == 0 ? 2 : e[5]);
            lines |= 1u << e[5];
        }
        e += e[0] == 0 ? 20 : 8;
    }
    ck_assert_uint_eq(lines, 0xfffffbu); /* 0-23 but the cascade (2) */
    /* With PCI devices those pins are their INTx lines. */
    p.pci_slots = 1u << 1;
    ck_assert_int_eq(mptable_write(&m, LAYOUT_MPTABLE, &p), -1);
    p.isa_irqs = 25;
    p.pci_slots = 0;
    ck_assert_int_eq(mptable_write(&m, LAYOUT_MPTABLE, &p), -1);
    guest_memory_free(&m);
}
END_TEST

START_TEST(cpu_count_limits)
{
    struct guest_memory m;
    ck_assert_int_eq(guest_memory_map(&m, 16 << 20, LAYOUT_MMIO_HOLE_START, LAYOUT_MMIO_HOLE_END),
                     0);
    struct mptable_params p = {.ncpus = 0};
    ck_assert_int_eq(mptable_write(&m, LAYOUT_MPTABLE, &p), -1);
    p.ncpus = MPTABLE_MAX_CPUS + 1;
    ck_assert_int_eq(mptable_write(&m, LAYOUT_MPTABLE, &p), -1);
    p.ncpus = MPTABLE_MAX_CPUS; /* the largest still fits in the BIOS area */
    ck_assert_int_gt(mptable_write(&m, LAYOUT_MPTABLE, &p), 0);
    guest_memory_free(&m);
}
END_TEST

Suite *mptable_suite(void)
{
    Suite *s = suite_create("mptable");
    TCase *t = tcase_create("write");
    tcase_add_test(t, table_lists_cpus_ioapic_and_isa_irqs);
    tcase_add_test(t, cpu_count_limits);
    tcase_add_test(t, pci_slots_get_level_interrupts_on_bus_0);
    tcase_add_test(t, isa_lines_up_to_23_without_pci);
    suite_add_tcase(s, t);
    return s;
}
