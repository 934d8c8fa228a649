/* oae link engine: the bilateral link state machine and exactly-once AIT, sans I/O.
 *
 * The machine takes received frames and the current time, and hands back frames to send,
 * events, and the next instant it wants to be woken at.  It never reads a clock, never
 * makes a syscall and allocates only in oae_link_new (and when its event queue must grow).
 * Normative behaviour: docs/protocol.md section 7 onward.
 *
 * Calling pattern of a pump (one thread per link, or one thread for many links):
 *   for each received frame:   oae_link_on_frame(l, frame, len, now)
 *   if now >= next_timeout:    oae_link_on_timeout(l, now)
 *   n = oae_link_poll_tx(l, out, max, now)          -> send n frames of 78 bytes
 *   m = oae_link_poll_events(l, ev, max)            -> hand events to the application
 * An OAE_EV_PERSIST event asks the caller to store oae_link_durable() durably and then
 * call oae_link_persisted(); until then poll_tx sends nothing (config.persist != 0).
 *
 * Gated CONTROL transfers (config.gates != 0, docs/protocol.md section 7.11): the application
 * decides when an incoming CONTROL transfer is held (oae_link_hold / oae_link_refuse after
 * OAE_EV_OFFERED) and reported (oae_link_report after OAE_EV_DELIVERED), and when an
 * outgoing one offered with OAE_OFFER_GATED is committed (oae_link_commit after
 * OAE_EV_REFLECTED); oae_link_reset makes both ends reconcile, aborting undecided ones.
 */
#ifndef OAE_LINK_H
#define OAE_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* cdef-begin */
#define OAE_LINK_WINDOW_MAX 4096
#define OAE_LINK_DURABLE_VERSION 1

/* events */
enum {
    OAE_EV_LINK_UP = 1,   /* reconciled, LIVE; info = peer nonce */
    OAE_EV_LINK_DOWN = 2, /* liveness timer expired or peer restarted; info = reason */
    OAE_EV_DELIVERED = 3, /* receiver: transfer tid committed and delivered (exactly once) */
    OAE_EV_COMMITTED = 4, /* sender: tid delivered by the peer; the copy is freed */
    OAE_EV_ABORTED = 5,   /* sender: tid reversed; payload (if known) is handed back */
    OAE_EV_PERSIST = 6,   /* durable registers changed: store oae_link_durable(), then
                             call oae_link_persisted() */
    OAE_EV_OFFERED = 7,   /* gates, receiver: CONTROL transfer tid (payload) waits for
                             oae_link_hold or oae_link_refuse; info = in_delivered then */
    OAE_EV_REFLECTED = 8  /* gates, sender: the peer holds gated transfer tid (payload):
                             it waits for oae_link_commit */
};

/* LINK_DOWN reasons (event info) */
enum { OAE_DOWN_DEAD = 1, OAE_DOWN_PEER_RESTART = 2, OAE_DOWN_PEER_LOST = 3,
       OAE_DOWN_RESET = 4 /* oae_link_reset */ };

/* event flags */
#define OAE_EVF_RESTORED 0x01 /* outcome settled after a restart: the payload was lost */
#define OAE_EVF_ROUND 0x02    /* gates: outcome decided by a reconciliation round, not by
                                 the peer's delivery report */

/* oae_link_offer flag (never sent): a gated CONTROL transfer, committed only by
 * oae_link_commit (needs OAE_F_CONTROL and config.gates) */
#define OAE_OFFER_GATED 0x80

/* results of oae_link_hold/refuse/commit/report/reset (0: done) */
enum {
    OAE_GATE_NOT_NOW = -1,   /* the transfer is not in the state the call needs (not the
                                pending offer, not reflected, already released, settled) */
    OAE_GATE_NOT_LIVE = -2,  /* the link is not LIVE (reset: not LIVE or RECONCILE) */
    OAE_GATE_INVALID = -3    /* gates off, or the tid was never a gated transfer of mine */
};

/* why a received frame was dropped (index into oae_link_stats.drops) */
enum {
    OAE_DROP_NONE = 0,
    /* 1..15: the codec's OAE_E_* decode errors (malformed, wrong version, bad check...) */
    OAE_DROP_NOT_MINE = 16,   /* destination is neither my MAC nor the discovery group */
    OAE_DROP_SELF = 17,       /* my own frame looped back */
    OAE_DROP_FOREIGN = 18,    /* source MAC is not the bound / configured peer */
    OAE_DROP_SESSION = 19,    /* nonce is not the peer's current session (and not a HELLO) */
    OAE_DROP_REPLAY = 20,     /* seq already seen, or left of the 64-wide replay window */
    OAE_DROP_STALE = 21,      /* seq from before the current (re)connection round */
    OAE_DROP_UNEXPECTED = 22, /* opcode/phase not valid in my current phase */
    OAE_DROP_BOGUS = 23,      /* registers impossible for this link (e.g. held > my highest tid) */
    OAE_DROP_COUNT = 24
};

typedef struct oae_link_config {
    uint8_t mac[6];
    uint8_t peer_mac[6];
    int has_peer;           /* 1: only this peer may bind */
    uint16_t ethertype;     /* 0 = OAE_ETHERTYPE_DEFAULT */
    int has_key;
    uint8_t key[16];
    uint32_t nonce;         /* session nonce, non-zero (random per process in production) */
    uint32_t window;        /* transfers in flight per direction, 1..OAE_LINK_WINDOW_MAX */
    uint32_t beat;          /* records per exchange: 1, 4, 16 or 64 */
    uint32_t rx_capacity;   /* held + delivered-but-not-released transfers before REFUSE */
    uint64_t rto_ns;        /* re-offer the token when no new beat arrived for this long */
    uint64_t dead_ns;       /* declare the link failed after this long with nothing accepted */
    uint64_t hello_ns;      /* HELLO period while discovering */
    uint64_t idle_ns;       /* answer delay when neither side has anything to settle (0 = none) */
    uint32_t epoch;         /* the link's committed epoch (records carry it) */
    int persist;            /* 1: emit PERSIST and hold frames until oae_link_persisted() */
    int gates;              /* 1: the application holds, reports and commits CONTROL
                               transfers (docs/protocol.md section 7.11) */
    int volatile_epoch;     /* 1: the epoch is not a durable register (no PERSIST when it
                               changes): the application keeps it and sets it again after
                               a restart (the epoch runner, docs/convergence.md 11.11) */
} oae_link_config;

/* Registers that must survive a crash for exactly-once across restarts. */
typedef struct oae_link_durable {
    uint32_t version;       /* OAE_LINK_DURABLE_VERSION */
    uint8_t peer_mac[6];
    uint8_t has_peer;
    uint32_t out_hi;        /* highest tid ever assigned in my outgoing direction */
    uint32_t out_settled;   /* every outgoing tid <= this has been reported settled */
    uint32_t abort_lo;      /* outgoing tids abort_lo..abort_hi were reversed (0,0: none) */
    uint32_t abort_hi;
    uint32_t in_delivered;  /* incoming: every tid <= this is delivered or skipped */
    uint32_t epoch;
} oae_link_durable;

typedef struct oae_event {
    uint8_t type;           /* OAE_EV_* */
    uint8_t flags;          /* OAE_EVF_* */
    uint8_t data_flags;     /* the transfer's OAE_F_CONTROL bit */
    uint8_t length;         /* payload bytes */
    uint32_t tid;
    uint32_t info;
    uint8_t payload[16];
} oae_event;

typedef struct oae_link_stats {
    uint64_t frames_in, frames_accepted, frames_out;
    uint64_t drops[24];     /* indexed by OAE_DROP_* / OAE_E_* */
    uint64_t offers_dup, offers_gap, offers_refused, offers_wrong_epoch;
    uint64_t delivered, committed, aborted;
    uint64_t timeouts_rto, links_up, links_down, reconciles;
    uint64_t wakes;         /* beats sent at once for new work while the token was away */
    uint64_t offers_pending; /* gates: re-offers of the offer the application decides on */
    uint32_t phase;         /* OAE_PHASE_* */
    uint32_t out_hi, out_commit, out_peer_held, out_settled;
    uint32_t in_held, in_delivered, in_released, in_refusing;
    uint32_t peer_nonce;
    uint32_t in_offered;    /* gates: in_held + 1 while that offer waits for hold/refuse */
    uint32_t in_reported;   /* gates: delivered_upto of TOKEN records (<= in_delivered) */
} oae_link_stats;

/* One row of the link-phase transition table (docs/protocol.md section 7.2 is generated
 * from it, and the tests check that the engine never changes phase outside it). */
typedef struct oae_link_transition {
    uint8_t from, to;       /* OAE_PHASE_* */
    const char *trigger;
} oae_link_transition;

typedef struct oae_link oae_link;

/* Bytes oae_link_new allocates for a config (the window sizes the rings); 0 if invalid. */
size_t oae_link_size(const oae_link_config *cfg);
/* A new machine in DISCOVER; restored = NULL for a fresh link, or the last durable registers
 * after a crash.  NULL on an invalid config or restored record, or out of memory. */
oae_link *oae_link_new(const oae_link_config *cfg, const oae_link_durable *restored);
void oae_link_free(oae_link *l);

/* Feed one received frame; returns OAE_DROP_NONE if accepted, else the drop reason. */
int oae_link_on_frame(oae_link *l, const uint8_t *frame, size_t len, uint64_t now_ns);
/* Write up to max_frames frames of OAE_FRAME_LEN bytes each into out; returns how many. */
size_t oae_link_poll_tx(oae_link *l, uint8_t *out, size_t max_frames, uint64_t now_ns);
/* Move up to max queued events into out (oldest first); returns how many. */
size_t oae_link_poll_events(oae_link *l, oae_event *out, size_t max);
/* Absolute time of the next timer (ns); UINT64_MAX if none. */
uint64_t oae_link_next_timeout(const oae_link *l);
/* Fire every timer that is due at now_ns. */
void oae_link_on_timeout(oae_link *l, uint64_t now_ns);

/* Queue a transfer (0..16 bytes; flags: OAE_F_CONTROL or 0, plus OAE_OFFER_GATED with
 * OAE_F_CONTROL when config.gates).  Returns 0 and its tid, or -1 window full / waiting for
 * a reversal to settle, -2 link not LIVE, -3 bad argument. */
int oae_link_offer(oae_link *l, const uint8_t *payload, size_t len, uint8_t flags,
                   uint32_t *tid_out);
/* The application consumed n delivered transfers: room for the receiver (backpressure). */
void oae_link_release(oae_link *l, uint32_t n);
/* Change the epoch carried in records (the epoch layer calls this after its own AIT). */
void oae_link_set_epoch(oae_link *l, uint32_t epoch);
/* 1 while the peer may stay silent for longer than a round trip: DISCOVER, or LIVE with
 * idle pacing (idle_ns > 0) and nothing to settle.  A pump then waits so that application
 * calls (offers, a new epoch) can wake it; otherwise the next frame is due within a round
 * trip and it may simply block on the socket. */
int oae_link_idle(const oae_link *l);

/* Gated CONTROL transfers (config.gates; docs/protocol.md section 7.11).  Each returns 0 or
 * an OAE_GATE_* error, and changes nothing on an error.
 * Receiver: hold (reflect) or refuse (reverse, as backpressure does) the pending offer tid
 * of an OAE_EV_OFFERED event; report every delivered tid <= tid to the peer (its
 * COMMITTED; cumulative, 0 if already reported, in any phase). */
int oae_link_hold(oae_link *l, uint32_t tid);
int oae_link_refuse(oae_link *l, uint32_t tid);
int oae_link_report(oae_link *l, uint32_t tid);
/* Sender: let the peer deliver gated transfer tid (after its OAE_EV_REFLECTED). */
int oae_link_commit(oae_link *l, uint32_t tid);
/* From LIVE or RECONCILE: LINK_DOWN (OAE_DOWN_RESET) if up, back to DISCOVER and a HELLO at
 * once; both ends reconcile, and the round aborts every undecided gated transfer.  Works
 * with gates off too. */
int oae_link_reset(oae_link *l, uint64_t now_ns);

void oae_link_stats_get(const oae_link *l, oae_link_stats *out);
/* Snapshot of the durable registers (remembers which snapshot was taken). */
void oae_link_durable_get(const oae_link *l, oae_link_durable *out);
/* The last snapshot from oae_link_durable_get is on stable storage. */
void oae_link_persisted(oae_link *l);
/* AIT state (OAE_ST_*) of outgoing transfer tid as this end sees it (IDLE: unknown/settled
 * long ago); incoming = 1 asks about the peer's transfer tid. */
int oae_link_transfer_state(const oae_link *l, int incoming, uint32_t tid);
/* The phase transition table; returns the number of rows. */
size_t oae_link_transitions(const oae_link_transition **table);
/* cdef-end */

#endif
