/* oae pump: the C hot path between an AF_PACKET socket and the link engine, plus the bare C
 * baseline (ping-pong and flood) that benchmarks compare it with.  Sockets are opened in
 * the calling thread's network namespace; the caller switches namespaces around the open. */
#ifndef OAE_PUMP_H
#define OAE_PUMP_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* cdef-begin */
#define OAE_SOCK_BYPASS 1 /* PACKET_QDISC_BYPASS: faster, but local captures miss sent frames */

/* Open an AF_PACKET raw socket bound to interface `ifname` and `ethertype`, joined to the
 * HELLO discovery group, ignoring its own outgoing frames.  Writes the interface MAC to
 * mac_out[6] and its MTU to *mtu_out.  Returns the fd, or -errno (-ENODEV: no such
 * interface). */
int oae_sock_open(const char *ifname, uint16_t ethertype, int flags, uint8_t *mac_out,
                  int *mtu_out);
/* Bound blocking receives on fd to `ns` nanoseconds (SO_RCVTIMEO); 0 = unbounded. */
int oae_sock_set_rcvtimeo(int fd, uint64_t ns);
int oae_sock_close(int fd);
/* CLOCK_MONOTONIC in nanoseconds: the `now` handed to the engine. */
uint64_t oae_now_ns(void);

/* Result of a baseline run.  Every run has a 32-bit id carried in its frames, so frames
 * left over from an earlier run are ignored. */
typedef struct oae_bench_result {
    uint64_t count;      /* round trips completed / frames counted */
    uint64_t sent;       /* frames sent */
    uint64_t retries;    /* pings re-sent after a lost frame */
    uint64_t ignored;    /* frames received that were not expected */
    uint64_t elapsed_ns; /* initiator/sender: whole run; flood receiver: first to last */
    int err;             /* 0 or an errno */
} oae_bench_result;

/* Ping-pong: the initiator sends `count` pings (one outstanding) and waits for each pong;
 * busy != 0 spins on MSG_DONTWAIT, else blocks (bounded by SO_RCVTIMEO).  Ends after
 * `count` round trips or `max_ns`, then sends STOP to the responder.  Returns 0 or -errno. */
int oae_pingpong_initiate(int fd, const uint8_t *src, const uint8_t *dst, uint16_t ethertype,
                          uint32_t run, uint64_t count, uint64_t max_ns, int busy, oae_bench_result *out);
/* Ping-pong responder: echoes pings until STOP or `max_ns`. */
int oae_pingpong_respond(int fd, uint16_t ethertype, uint32_t run, uint64_t max_ns, int busy,
                         oae_bench_result *out);
/* One-way flood: `count` frames (or until `max_ns`) in sendmmsg batches of 64, then STOP. */
int oae_flood_send(int fd, const uint8_t *src, const uint8_t *dst, uint16_t ethertype,
                   uint32_t run, uint64_t count, uint64_t max_ns, oae_bench_result *out);
/* Counting receiver for the flood (recvmmsg), until STOP or `max_ns`. */
int oae_flood_recv(int fd, uint16_t ethertype, uint32_t run, uint64_t max_ns, oae_bench_result *out);
/* cdef-end */

#endif
