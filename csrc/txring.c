/* oae TX ring: see txring.h. */
#include "txring.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/if_packet.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define RING_FRAME_SIZE 128u  /* a TPACKET_V2 header (32 bytes) and a 78-byte frame */
#define RING_BLOCK_SIZE 4096u
#define RING_BLOCKS 8u        /* 256 slots: room for a few bursts of 64 still held */
#define RING_DATA_OFF (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))

static struct tpacket2_hdr *slot(const oae_txring *r, unsigned i)
{
    return (struct tpacket2_hdr *)(r->map + (size_t)i * r->frame_size);
}

static uint32_t status(const struct tpacket2_hdr *h)
{
    return __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);
}

static void set_status(struct tpacket2_hdr *h, uint32_t s)
{
    __atomic_store_n(&h->tp_status, s, __ATOMIC_RELEASE);
}

int oae_txring_open(oae_txring *r, int fd)
{
    memset(r, 0, sizeof *r);
    int v = TPACKET_V2, one = 1;
    struct tpacket_req req = {.tp_block_size = RING_BLOCK_SIZE,
                              .tp_block_nr = RING_BLOCKS,
                              .tp_frame_size = RING_FRAME_SIZE,
                              .tp_frame_nr = RING_BLOCK_SIZE / RING_FRAME_SIZE * RING_BLOCKS};
    /* PACKET_LOSS: a frame the kernel cannot send is skipped, not left to block the ring */
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_LOSS, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof req) < 0)
        return -errno;
    size_t len = (size_t)req.tp_block_size * req.tp_block_nr;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        int rc = -errno;
        struct tpacket_req none;
        memset(&none, 0, sizeof none); /* detach it again: plain sends must keep working */
        setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &none, sizeof none);
        return rc;
    }
    r->map = map;
    r->map_len = len;
    r->frame_size = req.tp_frame_size;
    r->frame_nr = req.tp_frame_nr;
    return 0;
}

void oae_txring_close(oae_txring *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    memset(r, 0, sizeof *r);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wait until slot i is free again (the kernel frees a slot when the frame in it has been
 * transmitted: on a veth at once, on a NIC at its transmit completion). */
static int wait_free(oae_txring *r, int fd, unsigned i, uint64_t wait_ns)
{
    uint64_t deadline = 0;
    while (status(slot(r, i)) != TP_STATUS_AVAILABLE) {
        if (status(slot(r, i)) == TP_STATUS_WRONG_FORMAT) {
            set_status(slot(r, i), TP_STATUS_AVAILABLE); /* (not with PACKET_LOSS) */
            break;
        }
        uint64_t now = mono_ns();
        if (!deadline)
            deadline = now + wait_ns;
        if (now >= deadline)
            return 0;
        struct pollfd pf = {.fd = fd, .events = POLLOUT}; /* POLLOUT: the head slot is free */
        int ms = (int)((deadline - now + 999999) / 1000000);
        if (poll(&pf, 1, ms) < 0 && errno != EINTR)
            return 0;
    }
    return 1;
}

int oae_txring_send(oae_txring *r, int fd, const uint8_t *frames, size_t n, size_t stride,
                    size_t len, uint64_t wait_ns)
{
    if (len > r->frame_size - RING_DATA_OFF)
        return -EMSGSIZE;
    unsigned first = r->head;
    size_t queued = 0;
    for (; queued < n && queued < r->frame_nr; queued++) {
        unsigned i = (first + (unsigned)queued) % r->frame_nr;
        if (!wait_free(r, fd, i, wait_ns))
            break;
        struct tpacket2_hdr *h = slot(r, i);
        memcpy((uint8_t *)h + RING_DATA_OFF, frames + queued * stride, len);
        h->tp_len = (uint32_t)len;
        set_status(h, TP_STATUS_SEND_REQUEST);
    }
    if (!queued)
        return 0;
    r->head = (first + (unsigned)queued) % r->frame_nr;
    /* MSG_DONTWAIT: hand the frames over, do not wait for their transmit completions */
    ssize_t rc;
    do
        rc = send(fd, NULL, 0, MSG_DONTWAIT);
    while (rc < 0 && errno == EINTR);
    int err = rc < 0 ? errno : 0;
    /* frames an error left in the ring are dropped, so they cannot go out late with a
     * later burst; the kernel is not looking at the ring between sends */
    size_t sent = 0;
    for (size_t k = 0; k < queued; k++) {
        struct tpacket2_hdr *h = slot(r, (first + (unsigned)k) % r->frame_nr);
        if (status(h) == TP_STATUS_SEND_REQUEST || status(h) == TP_STATUS_WRONG_FORMAT)
            set_status(h, TP_STATUS_AVAILABLE);
        else
            sent++;
    }
    if (!sent && err && err != EAGAIN && err != ENOBUFS)
        return -err;
    return (int)sent;
}
