/* The demo guest: greets, then powers off through the i8042 so the VMM exits with status 0.
 * With boot_timer=ADDR on the command line it first signals "booted" to Firecracker's boot
 * timer device there (the byte 123), as a real guest's init would. */
#include "guest.h"
#include "io.h"

void guest_main(void)
{
    uint64_t boot_timer;
    if (cmdline_get_u64("boot_timer", &boot_timer))
        mmio_write8(boot_timer, 123);
    printf("Hello from the ember demo guest!\n");
    printf("# booted via %s, command line: %s\n", boot_info.protocol_name, boot_info.cmdline);
    printf("1..1\nok 1 - hello\n");
    i8042_reset();
    /* Still running: no i8042 (QEMU microvm has none). End through debug-exit instead. */
    diag("no i8042 reset happened, ending through the debug-exit port");
    debug_exit(0);
}
