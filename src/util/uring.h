/* io_uring rings that can do only what ember asks of them. A ring's
 * operations are not system calls, so a thread's seccomp filter cannot see
 * them: a ring is therefore created disabled, told the operations it may
 * carry (IORING_REGISTER_RESTRICTIONS), given its completion eventfd, and
 * only then enabled. No io_uring_register(2) operation is allowed after
 * that, and a thread that uses a ring may not make new ones (its filter). */
#ifndef EMBER_UTIL_URING_H
#define EMBER_UTIL_URING_H

#include <liburing.h>
#include <stdint.h>

/* ops: IORING_OP_* the ring may carry; event_fd (or -1) is signalled on
 * every completion. Returns 0 or -errno (the ring is then not set up). */
int uring_init_restricted(struct io_uring *ring, unsigned entries, const uint8_t *ops,
                          unsigned nops, int event_fd);

#endif
