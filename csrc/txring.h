/* oae TX ring: bursts of frames sent through a PACKET_TX_RING (PACKET_MMAP, TPACKET_V2)
 * shared with the kernel: the frames are written into the ring and one send() hands them
 * all over, instead of sendmmsg's copy of one message header and iovec per frame.
 *
 * Once a ring is attached, every send on that socket goes through it (the kernel ignores
 * the buffer of a plain send), so a socket either has a ring for all its frames or none.
 * Not part of the cffi API: used by pump.c and the ring flood of pingpong.c. */
#ifndef OAE_TXRING_H
#define OAE_TXRING_H

#include <stddef.h>
#include <stdint.h>

typedef struct oae_txring {
    uint8_t *map;         /* the ring, mmap'ed from the socket */
    size_t map_len;
    unsigned frame_size;  /* bytes per slot */
    unsigned frame_nr;    /* slots */
    unsigned head;        /* next slot to fill */
} oae_txring;

/* Attach a TX ring to fd (a bound AF_PACKET socket that has none yet).  0, or -errno if
 * the kernel refuses (the socket is then unchanged and plain sends work as before). */
int oae_txring_open(oae_txring *r, int fd);
/* Unmap the ring (the socket keeps it until it is closed). */
void oae_txring_close(oae_txring *r);
/* Send n frames of len bytes each, `stride` bytes apart in `frames`, with one send().
 * Waits (poll, up to wait_ns) while the slots are still held by the kernel (frames of the
 * previous burst not yet transmitted).  Returns how many frames the kernel took, or
 * -errno (nothing sent); frames it could not send (an error stopped the burst, no slot
 * came free in time) are dropped, as a full socket buffer would drop them. */
int oae_txring_send(oae_txring *r, int fd, const uint8_t *frames, size_t n, size_t stride,
                    size_t len, uint64_t wait_ns);

#endif
