/* libFuzzer target: the back-end's request channel (vhost_user_channel_serve), what a hostile
 * back-end sends on it. The input's first byte says whether reading the configuration again
 * succeeds; the rest is split into pieces (each a length byte, then that many bytes) written
 * to the back-end's end one at a time, the channel served after each, so that requests arrive
 * whole, in parts and many at once. Whatever the bytes: one configuration read at most per
 * serve and only for a notice read, the buffer never overflows, every answer the back-end
 * reads is well formed (an answer to a request it sent, 0 or 1), a broken channel stays
 * broken, and no descriptor leaks. The pure parser gets the raw bytes too. */
#include "vhost_user/proto.h"
#include "vhost_user/vhost_user.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int calls;
static int result;
static uint8_t answers[1 << 16];
static size_t answered; /* bytes of answers read, not yet checked */

static int config_changed(void *opaque)
{
    (void)opaque;
    calls++;
    return result;
}

/* Reads what ember answered; each answer is a whole reply with a u64 of 0 or 1. */
static void check_answers(int fd)
{
    uint8_t *buf = answers;
    size_t have = answered;
    for (;;) {
        ssize_t n = recv(fd, buf + have, sizeof(buf) - have, MSG_DONTWAIT);
        if (n <= 0)
            break;
        have += (size_t)n;
    }
    size_t off = 0;
    while (have - off >= sizeof(struct vhu_header) + 8) {
        struct vhu_header h;
        uint64_t v;
        memcpy(&h, buf + off, sizeof(h));
        memcpy(&v, buf + off + sizeof(h), sizeof(v));
        if (h.flags != (VHU_VERSION | VHU_FLAG_REPLY) || h.size != 8 || v > 1)
            abort();
        off += sizeof(h) + 8;
    }
    memmove(buf, buf + off, have - off);
    answered = have - off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vhu_header h;
    int len = vhu_parse_backend_request(data, size, &h);
    if (len > 0 && ((size_t)len > size || (size_t)len != sizeof(h) + h.size ||
                    h.size > VHU_BACKEND_MAX_PAYLOAD || (h.flags & VHU_FLAG_REPLY)))
        abort();
    if (size < 1)
        return 0;
    result = (data[0] & 1) ? -1 : 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
        abort();
    static struct vhost_user_channel ch;
    ch.fd = sv[0];
    ch.have = 0;
    answered = 0;
    size_t off = 1;
    bool broken = false;
    while (off < size && !broken) {
        size_t piece = data[off++];
        if (piece > size - off)
            piece = size - off;
        if (piece && send(sv[1], data + off, piece, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)piece)
            break;
        off += piece;
        /* Until it has read everything sent (a serve reads one buffer's worth). */
        for (unsigned round = 0; round < 64; round++) {
            struct vhost_user_channel_stats st;
            calls = 0;
            int r = vhost_user_channel_serve(&ch, config_changed, NULL, &st);
            if (calls > 1 || (calls && !st.config_changes) ||
                (st.config_changes && !calls && r == 0))
                abort();
            if (ch.have >= sizeof(ch.buf) || st.refused > st.requests ||
                st.config_changes > st.requests)
                abort();
            check_answers(sv[1]);
            if (r < 0) {
                broken = true;
                break;
            }
            char c;
            if (recv(ch.fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 && errno == EAGAIN)
                break;
        }
    }
    vhost_user_channel_close(&ch);
    if (ch.fd != -1 || ch.have)
        abort();
    close(sv[1]);
    return 0;
}
