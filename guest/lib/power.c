/* Ending the VM: the debug-exit port for test results, the i8042 for a clean power-off. */
#include "guest.h"
#include "io.h"

#define I8042_STATUS      0x64
#define I8042_COMMAND     0x64
#define I8042_INPUT_FULL  0x02
#define I8042_PULSE_RESET 0xfe

_Noreturn void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

_Noreturn void debug_exit(uint8_t value)
{
    outb(DEBUG_EXIT_PORT, value);
    /* No debug-exit device: nothing else can report the result, so stop here. */
    halt_forever();
}

void i8042_reset(void)
{
    /* A missing controller reads 0xff (input buffer "full"): bound the wait. */
    for (int i = 0; i < 1000 && (inb(I8042_STATUS) & I8042_INPUT_FULL); i++)
        ;
    outb(I8042_COMMAND, I8042_PULSE_RESET);
    /* A VMM may act on the reset a little later: give it ~1000 port reads before returning. */
    for (int i = 0; i < 1000; i++)
        inb(I8042_STATUS);
}
