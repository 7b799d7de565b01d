/* Asynchronous teardown: a helper process that shares ember's address
 * space and file table and only waits for ember to die. Whatever ember
 * leaves open (the KVM file descriptors, guest memory) is then released by
 * the kernel when the helper exits, after ember's own exit has been
 * reported. Destroying a VM waits for several RCU grace periods, which on
 * some hosts makes it the longest part of a short-lived machine's life. */
#ifndef EMBER_UTIL_TEARDOWN_H
#define EMBER_UTIL_TEARDOWN_H

#include <stdbool.h>

/* Starts the helper. Call before any other thread exists. */
int async_teardown_start(void);
bool async_teardown_active(void);

#endif
