/*
 * netgen: injects Ethernet frames into a network interface as fast as the kernel takes them,
 * for bench/net.sh's receive workloads. On a tap, what is "sent" on the interface is what the
 * process attached to the tap (the VMM) reads.
 *
 *   netgen -i IFNAME -s SIZE [-d DST_MAC] [-b BATCH]
 *
 * An AF_PACKET socket bound to the interface, PACKET_QDISC_BYPASS (straight to the driver, no
 * queueing discipline), sendmmsg() of BATCH copies of one frame (default 64): SIZE bytes,
 * ethertype 0x88b5, to DST_MAC (default broadcast). Frames the driver refuses (a tap whose
 * reader lags drops them: ENOBUFS) are counted and the sending goes on. Runs until SIGINT or
 * SIGTERM, then prints "netgen: sent N frames in S s (P pps), refused R".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH   1024
#define ETH_P_LOCAL 0x88b5

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_mac(const char *s, unsigned char mac[6])
{
    unsigned b[6];
    char tail;
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) !=
        6)
        return -1;
    for (int i = 0; i < 6; i++)
        mac[i] = (unsigned char)b[i];
    return 0;
}

int main(int argc, char **argv)
{
    const char *ifname = NULL;
    unsigned size = 64, batch = 64;
    unsigned char dst[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    int opt;
    while ((opt = getopt(argc, argv, "i:s:d:b:")) != -1) {
        switch (opt) {
        case 'i':
            ifname = optarg;
            break;
        case 's':
            size = (unsigned)atoi(optarg);
            break;
        case 'd':
            if (parse_mac(optarg, dst) < 0) {
                fprintf(stderr, "netgen: '%s' is not a MAC address\n", optarg);
                return 2;
            }
            break;
        case 'b':
            batch = (unsigned)atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: netgen -i IFNAME -s SIZE [-d DST_MAC] [-b BATCH]\n");
            return 2;
        }
    }
    if (!ifname || size < 14 || size > 9000 || batch < 1 || batch > MAX_BATCH) {
        fprintf(stderr, "usage: netgen -i IFNAME -s SIZE(14-9000) [-d DST_MAC] [-b 1-%d]\n",
                MAX_BATCH);
        return 2;
    }
    unsigned ifindex = if_nametoindex(ifname);
    if (!ifindex) {
        fprintf(stderr, "netgen: no interface %s\n", ifname);
        return 1;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0); /* protocol 0: send only, receive nothing */
    if (fd < 0) {
        perror("netgen: socket(AF_PACKET)");
        return 1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) < 0)
        perror("netgen: PACKET_QDISC_BYPASS (going through the qdisc)");
    struct sockaddr_ll addr = {
        .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_LOCAL), .sll_ifindex = (int)ifindex};
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("netgen: bind");
        return 1;
    }
    static unsigned char frame[9000];
    memcpy(frame, dst, 6);
    memcpy(frame + 6, "\x02\x00\x00\x00\x00\x02", 6);
    frame[12] = ETH_P_LOCAL >> 8;
    frame[13] = ETH_P_LOCAL & 0xff;
    for (unsigned i = 14; i < size; i++)
        frame[i] = (unsigned char)i;
    static struct mmsghdr msgs[MAX_BATCH];
    struct iovec iov = {.iov_base = frame, .iov_len = size};
    for (unsigned i = 0; i < batch; i++)
        msgs[i].msg_hdr = (struct msghdr){.msg_iov = &iov, .msg_iovlen = 1};
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    unsigned long long sent = 0, refused = 0;
    double start = now_s();
    while (!stop) {
        int r = sendmmsg(fd, msgs, batch, 0);
        if (r > 0) {
            sent += (unsigned)r;
            if ((unsigned)r < batch)
                refused++; /* the one that stopped the batch */
        } else if (r < 0 && (errno == ENOBUFS || errno == EAGAIN)) {
            refused++;
        } else if (r < 0 && errno != EINTR) {
            perror("netgen: sendmmsg");
            return 1;
        }
    }
    double secs = now_s() - start;
    printf("netgen: sent %llu frames in %.3f s (%.0f pps), refused %llu\n", sent, secs,
           secs > 0 ? sent / secs : 0, refused);
    return 0;
}
