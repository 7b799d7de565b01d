/* libFuzzer target: the vhost-user front-end's reading of a back-end's replies. The input is
 * what a hostile back-end sends, queued in a socketpair whose far end then stops writing; the
 * front-end runs its handshake and the messages a device start and stop make. Whatever the
 * bytes, every call returns (no wait: the stream ends), no descriptor leaks, and a connection
 * that failed stays failed. The pure checks get the raw bytes too (GET_INFLIGHT_FD's reply
 * with a descriptor count and a file size, GET_MAX_MEM_SLOTS' answer). With CONFIGURE_MEM_SLOTS
 * agreed, guest memory (a memfd of two regions) is given by ADD_MEM_REG, the slots asked
 * first. */
#include "vhost_user/proto.h"
#include "vhost_user/vhost_user.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Guest RAM shared with the "back-end": two regions around a hole, made once. */
static struct guest_memory *memory(void)
{
    static struct guest_memory mem;
    static bool made;
    if (!made && guest_memory_map_memfd(&mem, 2 << 20, 1 << 20, 3 << 20) < 0)
        abort();
    made = true;
    return &mem;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= sizeof(struct vhu_header)) {
        struct vhu_header h;
        memcpy(&h, data, sizeof(h));
        vhu_check_reply_header(&h, VHU_GET_CONFIG, h.size);
        struct vhu_config c = {0};
        memcpy(&c, data, size < sizeof(c) ? size : sizeof(c));
        vhu_check_config_reply(&c, 0, 60);
        struct vhu_vring_state s;
        memcpy(&s, data, sizeof(s));
        vhu_check_vring_base_reply(&s, 0);
    }
    if (size >= 9) {
        /* GET_MAX_MEM_SLOTS' answer for up to 255 regions: whatever is accepted has room for
         * them and stays within KVM's slot count. */
        uint64_t slots;
        memcpy(&slots, data, sizeof(slots));
        unsigned needed = data[8];
        if (vhu_check_max_mem_slots(slots, needed) == 0 &&
            (slots == 0 || slots < needed || slots > VHU_MAX_MEM_SLOTS_LIMIT))
            abort();
    }
    if (size >= sizeof(struct vhu_inflight) + 9) {
        /* GET_INFLIGHT_FD's reply, its descriptor count and its file's size from the input:
         * whatever is accepted is a bounded buffer the file holds. */
        struct vhu_inflight in;
        uint64_t file;
        memcpy(&in, data, sizeof(in));
        memcpy(&file, data + sizeof(in), sizeof(file));
        int nfds = data[sizeof(in) + 8] % 4;
        if (vhu_check_inflight_reply(&in, nfds, file) == 0 &&
            (nfds != 1 || in.mmap_size == 0 || in.mmap_size > VHU_INFLIGHT_MAX ||
             in.mmap_offset % 4096 || in.mmap_offset + in.mmap_size > file ||
             in.mmap_offset + in.mmap_size < in.mmap_offset))
            abort();
    }

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        abort();
    size_t off = 0;
    while (off < size) {
        ssize_t n = send(sv[1], data + off, size - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    shutdown(sv[1], SHUT_WR);
    struct vhost_user vu;
    if (vhost_user_from_fd(&vu, "fuzz", sv[0], 50) < 0)
        abort();
    uint64_t wanted = (1ULL << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIG) | (1ULL << VHOST_USER_PROTOCOL_F_MQ) |
                      (1ULL << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
                      (1ULL << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
    if (vhost_user_handshake(&vu, wanted) == 0) {
        if (vu.protocol_features & ~wanted)
            abort();
        uint8_t config[60];
        uint64_t n;
        unsigned base;
        vhost_user_get_config(&vu, 0, config, sizeof(config));
        if (vhost_user_get_queue_num(&vu, &n) == 0 && (n == 0 || n > 0xffff))
            abort();
        vhost_user_set_features(&vu, 1ULL << 32);
        if (vhost_user_has_protocol(&vu, VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS)) {
            /* The slots checked before any region goes; never more regions than given. */
            bool by_region;
            const struct guest_memory *mem = memory();
            int r = vhost_user_give_memory(&vu, mem, &by_region);
            if (!by_region || vu.nmem_added > mem->nregions ||
                (vu.nmem_added && (vu.max_mem_slots < mem->nregions ||
                                   vu.max_mem_slots > VHU_MAX_MEM_SLOTS_LIMIT)) ||
                (r == 0 && vu.nmem_added != mem->nregions))
                abort();
        }
        /* A stream carries no descriptor: a reply, whatever it says, is refused, and
         * nothing is left mapped or open. */
        struct vhost_user_inflight inflight;
        if (vhost_user_get_inflight_fd(&vu, 1, 256, &inflight) == 0)
            abort();
        if (inflight.fd >= 0 || inflight.addr)
            abort();
        vhost_user_set_vring_num(&vu, 0, 256);
        vhost_user_set_vring_base(&vu, 0, 0);
        vhost_user_set_vring_enable(&vu, 0, true);
        if (vhost_user_get_vring_base(&vu, 0, &base) == 0 && base > 0xffff)
            abort();
        vhost_user_set_config(&vu, 32, config, 1);
    }
    /* A failed connection refuses everything after. */
    if (vu.broken && vhost_user_set_owner(&vu) == 0)
        abort();
    vhost_user_close(&vu);
    close(sv[1]);
    return 0;
}
