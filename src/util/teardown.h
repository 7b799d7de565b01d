/* Asynchronous teardown: a helper process that shares ember's address
 * space (not its files) and only waits for ember to die, holding the VM's
 * descriptor ember hands it. Guest memory and the VM are then released by
 * the kernel when the helper exits, after ember's own exit has been
 * reported; ember's other files close with ember. Destroying a VM waits for several RCU grace
 * periods, which on some hosts makes it the longest part of a short-lived machine's life. */
#ifndef EMBER_UTIL_TEARDOWN_H
#define EMBER_UTIL_TEARDOWN_H

#include <stdbool.h>

/* Starts the helper. Call before any other thread exists. */
int async_teardown_start(void);
/* Hands the helper a copy of `fd` (the VM's) to hold until ember is gone. */
void async_teardown_keep(int fd);
bool async_teardown_active(void);
/* The helper's process id (ember moves it with its own threads: vmm/placement.h), or -1. */
int async_teardown_pid(void);

#endif
