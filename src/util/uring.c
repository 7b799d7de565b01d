#include "util/uring.h"

#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_OPS 16

/* Debian's liburing 2.3 declares io_uring_register_restrictions() and
 * io_uring_enable_rings() but does not export them. */
static int ring_register(struct io_uring *ring, unsigned op, const void *arg, unsigned n)
{
    return syscall(__NR_io_uring_register, ring->ring_fd, op, arg, n) < 0 ? -errno : 0;
}

int uring_init_restricted(struct io_uring *ring, unsigned entries, const uint8_t *ops,
                          unsigned nops, int event_fd)
{
    if (nops > MAX_OPS)
        return -EINVAL;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_R_DISABLED;
    int r = io_uring_queue_init_params(entries, ring, &p);
    if (r < 0)
        return r;
    struct io_uring_restriction res[MAX_OPS];
    memset(res, 0, sizeof(res));
    for (unsigned i = 0; i < nops; i++) {
        res[i].opcode = IORING_RESTRICTION_SQE_OP;
        res[i].sqe_op = ops[i];
    }
    r = ring_register(ring, IORING_REGISTER_RESTRICTIONS, res, nops);
    if (r == 0 && event_fd >= 0)
        r = io_uring_register_eventfd(ring, event_fd);
    if (r == 0)
        r = ring_register(ring, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (r < 0)
        io_uring_queue_exit(ring);
    return r;
}
