/* C entry on the BSP: bring up what every guest needs, then run the guest. */
#include "guest.h"

_Noreturn void guest_start(int protocol, uint64_t info_addr);

_Noreturn void guest_start(int protocol, uint64_t info_addr)
{
    serial_init();
    idt_init();
    boot_info_parse(protocol, info_addr);
    /* Remap the PIC away from the exception vectors before anything enables interrupts. */
    pic_init();
    guest_main();
    bail_out("guest_main returned");
}
