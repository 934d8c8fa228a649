/* oae pump: the C hot path between an AF_PACKET socket and the link engine, plus the bare C
 * baseline (ping-pong and flood) that benchmarks compare it with.  Sockets are opened in
 * the calling thread's network namespace; the caller switches namespaces around the open. */
#ifndef OAE_PUMP_H
#define OAE_PUMP_H

#include <stddef.h>
#include <stdint.h>

#include "link.h"
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
/* CPU time of the calling thread, in nanoseconds. */
uint64_t oae_thread_cpu_ns(void);

/* Result of a baseline run.  Every run has a 32-bit id carried in its frames, so frames
 * left over from an earlier run are ignored. */
typedef struct oae_bench_result {
    uint64_t count;      /* round trips completed / frames counted */
    uint64_t sent;       /* frames sent */
    uint64_t retries;    /* pings re-sent after a lost frame */
    uint64_t ignored;    /* frames received that were not expected */
    uint64_t elapsed_ns; /* initiator/sender: whole run; flood receiver: first to last */
    uint64_t cpu_ns;     /* CPU time (user + system) of the calling thread over the run */
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
/* One-way flood: `count` frames (or until `max_ns`) in batches of 64, then STOP: each
 * batch with one sendmmsg, or (ring != 0) through a PACKET_TX_RING attached to fd with one
 * send() (csrc/txring.h; -EOPNOTSUPP style errors if the kernel refuses the ring). */
int oae_flood_send(int fd, const uint8_t *src, const uint8_t *dst, uint16_t ethertype,
                   uint32_t run, uint64_t count, uint64_t max_ns, int ring,
                   oae_bench_result *out);
/* Counting receiver for the flood (recvmmsg), until STOP or `max_ns`. */
int oae_flood_recv(int fd, uint16_t ethertype, uint32_t run, uint64_t max_ns, oae_bench_result *out);

/* ---- the pump: one link engine on one socket, run by one thread ----
 *
 * The thread receives (recv/recvmmsg), feeds the engine, fires its timers, offers queued
 * transfers, moves events out (log + durable registers first, when a state dir is set),
 * and sends (send/sendmmsg), under one mutex that the application-side calls below also
 * take.  The mutex is released while the durable registers are written (fdatasync of the
 * log, then the register file), so application calls never wait for a disk flush; the
 * engine is marked persisted only if no register moved meanwhile (else it is stored
 * again), and it sends nothing until then.  Waiting: busy-poll spins on a non-blocking
 * recv (sched_yield between tries).  Blocking mode, while the link is idle
 * (oae_link_idle(): discovering, or LIVE with idle pacing and nothing to settle), sleeps
 * in ppoll() on the socket and a wake-up eventfd that oae_pump_submit, set_epoch, events
 * (when the engine's events wait for room) and stop write, so new work goes out at once;
 * during a busy exchange it blocks in recv() like the bare C ping-pong (the next frame is
 * due within a round trip, and submissions are seen then), in ppoll() when an engine
 * timer is due within 8 ms, else bounded by SO_RCVTIMEO (jiffy resolution, at most
 * ~16 ms).  With beats of more than one record, the loop polls (non-blocking recvmmsg,
 * sched_yield) for the rest of a beat that has begun to arrive (up to 50 us after its
 * last frame), and for up to 50 us for the answer to a beat of several records it has
 * just sent, before it sleeps: both are due within microseconds, less than a sleeping
 * thread takes to wake. */

/* Event types the pump adds to the engine's OAE_EV_*. */
enum {
    OAE_PEV_ERROR = 64 /* the pump stopped on a socket error; info = errno */
};
/* Event flag the pump adds to the engine's OAE_EVF_*: handed out again after a restart
 * (logged before the crash, not yet acknowledged or released by the application). */
#define OAE_PEVF_REPLAYED 0x80

/* An engine event as handed to the application, with the cookie the application gave the
 * transfer when it submitted it (0 for incoming transfers, posted ones and outcomes after
 * a restart) and its key (0: none; kept in the log, so also after a restart). */
typedef struct oae_pump_event {
    oae_event ev;
    uint64_t cookie;
    uint64_t key;
} oae_pump_event;

typedef struct oae_pump_stats {
    uint64_t rx_calls, rx_frames, tx_calls, tx_frames, tx_errors;
    uint64_t wakeups, persists, log_records;
    uint64_t queued, submitted; /* transfers queued by the app / offered to the engine */
    uint64_t app_events, sunk;  /* events handed to the app / consumed by the pump (sink) */
    uint64_t cpu_ns;            /* CPU time used by the pump thread so far */
    uint64_t replayed;          /* events handed out again from the log after a restart */
    uint64_t restored_dups;     /* outcomes settled again after a restart, already logged */
    uint64_t restore_conflicts; /* ... that disagreed with the log (never, by the protocol) */
    uint64_t compactions;       /* times events.log was rewritten as its live records */
    uint64_t offers_paused;     /* 1 while post_limit posted transfers are open */
    int tid;                    /* kernel thread id of the running loop (0: not running),
                                   named "oae-pump" (for top -H, perf --tid) */
    int tx_ring;                /* 1: frames go out through a PACKET_TX_RING */
    uint8_t peer_mac[6];        /* source of the last accepted frame (all zero: none yet) */
} oae_pump_stats;

typedef struct oae_pump oae_pump;

/* Flags of oae_pump_new. */
#define OAE_PUMP_BUSY 1  /* spin (with sched_yield) instead of sleeping */
#define OAE_PUMP_SINK 2  /* consume DELIVERED events in the pump and release them at once */
#define OAE_PUMP_QUIET 4 /* do not hand COMMITTED events to the app (count them only) */
#define OAE_PUMP_NO_LOG 8 /* with a state dir: the durable registers only, no events.log (an
                             application that keeps its own record: the epoch runner);
                             nothing is handed out again after a restart */
#define OAE_PUMP_EARLY_CONTROL 16 /* hand CONTROL deliveries, and the outcomes of transfers
                             submitted with OAE_PUMP_EARLY_COOKIE in their cookie, to the
                             application before the store of the registers that count them
                             (never to the peer: it hears of them after the store): for an
                             application that takes one again after a crash unharmed (the
                             epoch runner), which then acts a store sooner.  Events stay in
                             order: only a run of such events and gate events at the head
                             goes early */
#define OAE_PUMP_EARLY_COOKIE 0x8000000000000000 /* bit 63 */
#define OAE_PUMP_TX_RING 32 /* send beats through a PACKET_TX_RING (see oae_pump_new) */

/* A pump on socket fd (kept open; the caller closes it after oae_pump_free) running a new
 * engine for cfg, restored from `restored` (may be NULL).  state_dir (may be NULL): where
 * the durable registers (`durable`) and the event log (`events.log`, csrc/evlog.h) are
 * written; it sets cfg->persist.  With restored registers the log is replayed first: what
 * the application had not acknowledged or released is handed out again (OAE_PEVF_REPLAYED)
 * before anything else, and outcomes it already holds are not reported twice; the log is
 * then rewritten as its live records.  With OAE_PUMP_TX_RING and beats of more than
 * one record, the pump attaches a PACKET_TX_RING to fd and sends every frame through it,
 * a burst with one send() (csrc/txring.h); where the kernel refuses one it sends with
 * send/sendmmsg as without the flag.  A socket with a ring sends only through it: do not
 * send on fd otherwise.  NULL on invalid config or error (errno set; EBADMSG: events.log
 * is damaged, not just torn at its end). */
oae_pump *oae_pump_new(int fd, const oae_link_config *cfg, const oae_link_durable *restored,
                       const char *state_dir, int flags);
/* Free a pump whose thread has returned.  Does not close fd. */
void oae_pump_free(oae_pump *p);
/* The loop; call from a dedicated thread.  Returns 0 after oae_pump_stop, or -errno on a
 * socket error that ends the link (the interface disappeared). */
int oae_pump_run(oae_pump *p);
/* Ask the loop to return (thread-safe, async-signal-safe); it does within one wake-up. */
void oae_pump_stop(oae_pump *p);
/* Readable (eventfd) while events are waiting for oae_pump_events. */
int oae_pump_event_fd(const oae_pump *p);
/* Take up to max waiting events (and reset the event fd when all are taken). */
size_t oae_pump_events(oae_pump *p, oae_pump_event *out, size_t max);
/* Queue n transfers for the pump to offer in order as the window allows: payload i is
 * lens[i] bytes at payloads + i*16; cookies cookie0, cookie0+1, ... (cookie0 = 0: all 0);
 * keys[i] the application's key of each (keys may be NULL: none), logged with the offer
 * and handed back with the outcome; flags OAE_F_CONTROL or 0, plus OAE_OFFER_GATED with
 * OAE_F_CONTROL when cfg->gates.  Returns n, -3 if a length is > 16 or the flags are
 * invalid, -ENOMEM. */
int oae_pump_submit(oae_pump *p, const uint8_t *payloads, const uint8_t *lens, size_t n,
                    uint8_t flags, uint64_t cookie0, const uint64_t *keys);
/* Transfers queued and not yet offered to the engine. */
size_t oae_pump_backlog(oae_pump *p);
/* The application consumed n delivered transfers, the last of them tid `upto`: room for
 * the receiver, and (with a state dir) every incoming tid <= upto is released for good:
 * the RELEASE record is written before the call returns (no sync: it survives a crash of
 * the process; the next register store syncs it), so it is never handed out again. */
void oae_pump_release(oae_pump *p, uint32_t n, uint32_t upto);
/* The application consumed the outcomes of outgoing tids lo..hi (`posted` of them of
 * transfers it submitted with cookie 0 in this process): the ACK record is written before
 * the call returns, as for a release; dropped from the log by its next compaction.
 * 0 or -ENOMEM. */
int oae_pump_ack(oae_pump *p, uint32_t lo, uint32_t hi, uint32_t posted);
/* At most n posted transfers (cookie 0) open at a time: offered and not yet acknowledged.
 * At the limit the pump offers nothing more (the queue is in order) until the application
 * acknowledges outcomes: bounded memory instead of dropped outcomes.  0: no limit. */
void oae_pump_set_post_limit(oae_pump *p, uint64_t n);
/* The highest key of an offer the durable registers count (without a state dir: of any
 * offer): every key above it was never offered. */
uint64_t oae_pump_last_key(oae_pump *p);
/* Compact events.log whenever it has grown by `bytes` since the last compaction (0: never;
 * default 8 MiB). */
void oae_pump_set_log_limit(oae_pump *p, uint64_t bytes);
void oae_pump_set_epoch(oae_pump *p, uint32_t epoch);
void oae_pump_stats_get(oae_pump *p, oae_link_stats *ls, oae_pump_stats *ps);
int oae_pump_transfer_state(oae_pump *p, int incoming, uint32_t tid);
/* Gated CONTROL transfers (cfg->gates; docs/protocol.md 7.11): the engine's
 * oae_link_hold/refuse/report/commit/reset under the pump's lock, waking the loop.  The
 * pump hands OAE_EV_OFFERED and OAE_EV_REFLECTED events (REFLECTED with the transfer's
 * cookie) to the application like the others; they are not logged (nothing durable). */
int oae_pump_hold(oae_pump *p, uint32_t tid);
int oae_pump_refuse(oae_pump *p, uint32_t tid);
int oae_pump_report(oae_pump *p, uint32_t tid);
int oae_pump_commit(oae_pump *p, uint32_t tid);
int oae_pump_reset(oae_pump *p);

/* cdef-end */

/* A consumer of the events that runs in the pump's own thread (the epoch runner): called
 * with the pump's lock released whenever a step of the loop has made events visible,
 * before that step's frames go out, so that what it decides on this link leaves with them
 * and no other thread is woken for it.  It takes care of the events it leaves (another of
 * its threads takes them): while it is set the event fd is not written.  NULL removes it,
 * waiting for a call in progress to return (never call that from the consumer itself). */
typedef void (*oae_pump_consumer)(void *arg, size_t index);
void oae_pump_set_consumer(oae_pump *p, oae_pump_consumer fn, void *arg, size_t index);

#endif
