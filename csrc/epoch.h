/* oae epoch machine: the per-node machine of the bilateral convergence protocol on gated
 * links, sans I/O.  The line-by-line twin of oae/epoch/machine.py (the oracle: read them
 * side by side; functions and steps have the same names and order), plus the binary
 * durable record that C and oae/epoch/durable.py both read and write.
 *
 * Inputs are calls (oae_epoch_offered, ...); each returns how many actions it produced (or
 * a negative OAE_EPOCH_E*), and oae_epoch_actions() points at them, valid until the next
 * input.  The caller performs them in order; a Persist (its record is
 * oae_epoch_persisted(m, action->tid)) must be durable before any later action of the list.
 * Links are named by the neighbour's node id.  Never reads a clock, never does I/O, never
 * allocates after oae_epoch_new.
 *
 * Fixed sizes and what happens at each bound (the Python machine has none; realistic runs
 * stay far below them, and every bound reached is counted in oae_epoch_counters):
 *  - OAE_EPOCH_LINKS_MAX links per node: oae_epoch_new refuses more.
 *  - OAE_EPOCH_ABORTED_MAX aborted waves of the next epoch in the record: adding one more
 *    forgets the lowest (`aborted_forgotten`).  Safe: a wave commits only by its
 *    initiator's decision in the life that proposed it, and an aborted wave's initiator
 *    has left it for good; a forgotten wave that comes back is joined and aborted again.
 *  - OAE_EPOCH_OUT_MAX of our wave transfers per link session (a new one per wave, freed
 *    by its outcome): a join on a full link forgets the oldest (`out_forgotten`; its
 *    report then moves nothing: at worst a Converged is not reported).
 *  - OAE_EPOCH_INC_MAX of the peer's wave transfers per link session (the engine has at
 *    most one pending offer per link; entries of waves older than the committed one are
 *    dropped first): an offer that finds no room is refused (`inc_refused`).
 *  - OAE_EPOCH_ACTIONS_MAX actions and OAE_EPOCH_PERSISTS_MAX records per input (about
 *    8 per link reach the worst case): beyond them the machine fails (OAE_EPOCH_EFULL). */
#ifndef OAE_EPOCH_H
#define OAE_EPOCH_H

#include <stddef.h>
#include <stdint.h>

/* cdef-begin */
#define OAE_EPOCH_LINKS_MAX 64
#define OAE_EPOCH_ABORTED_MAX 64
#define OAE_EPOCH_OUT_MAX 16
#define OAE_EPOCH_INC_MAX 8
#define OAE_EPOCH_ACTIONS_MAX 1024
#define OAE_EPOCH_PERSISTS_MAX 16
#define OAE_EPOCH_MSG_LEN 13       /* an epoch message: 0xE0|kind, epoch, attempt, initiator */
#define OAE_EPOCH_RECORD_VERSION 1
#define OAE_EPOCH_RECORD_HDR 60    /* fixed part of the binary record */
#define OAE_EPOCH_RECORD_MAX 2876  /* the largest binary record (every array full) */

/* errors (negative returns) */
enum {
    OAE_EPOCH_ELINK = -1,   /* not a neighbour of this node */
    OAE_EPOCH_ESAFETY = -2, /* the safety argument was contradicted (EpochSafetyError); the
                               machine is failed: every later input returns this */
    OAE_EPOCH_ERANGE = -3,  /* propose: epoch or attempt would not fit in 32 bits */
    OAE_EPOCH_EFULL = -4,   /* an input produced more than ACTIONS_MAX/PERSISTS_MAX: failed */
    OAE_EPOCH_ESTATE = -5,  /* an input impossible in the machine's state (the Python machine
                               raises KeyError): failed */
    OAE_EPOCH_ERECORD = -6  /* a record that does not decode, or names a parent/child that
                               is not a neighbour */
};

/* message kinds (oae/epoch/messages.py Kind) */
enum {
    OAE_EPOCH_PROPOSE = 1,
    OAE_EPOCH_ABORT = 4,
    OAE_EPOCH_COMMIT = 5,
    OAE_EPOCH_PREPARED = 6,
    OAE_EPOCH_DONE = 7
};

/* action types (oae/epoch/machine.py Action) */
enum {
    OAE_EA_OFFER = 1,     /* link, payload[len], gated */
    OAE_EA_HOLD = 2,      /* link, tid */
    OAE_EA_REFUSE = 3,    /* link, tid */
    OAE_EA_COMMIT = 4,    /* link, tid */
    OAE_EA_REPORT = 5,    /* link, tid */
    OAE_EA_RESET = 6,     /* link */
    OAE_EA_PERSIST = 7,   /* tid: index for oae_epoch_persisted */
    OAE_EA_CAPTURE = 8,   /* wave */
    OAE_EA_DISCARD = 9,   /* wave */
    OAE_EA_LINK_EPOCH = 10, /* link, epoch */
    OAE_EA_DECIDED = 11,  /* wave, ok (1 committed) */
    OAE_EA_CONVERGED = 12 /* wave */
};

/* A wave (epoch, attempt, initiator), ordered by that tuple. */
typedef struct oae_epoch_wave {
    uint32_t epoch, attempt, initiator;
} oae_epoch_wave;

typedef struct oae_epoch_action {
    uint8_t type;      /* OAE_EA_* */
    uint8_t gated;     /* Offer: the wave transfer */
    uint8_t ok;        /* Decided: committed */
    uint8_t len;       /* Offer: payload bytes */
    uint32_t link;     /* the neighbour's node id */
    uint32_t tid;      /* Hold Refuse Commit Report; Persist: its record's index */
    uint32_t epoch;    /* LinkEpoch */
    oae_epoch_wave wave;
    uint8_t payload[16];
} oae_epoch_action;

/* (neighbour, frames) of a channel log */
typedef struct oae_epoch_logent {
    uint32_t link;
    uint64_t frames;
} oae_epoch_logent;

/* The durable record (oae/epoch/durable.py DurableRecord); sets sorted ascending. */
typedef struct oae_epoch_record {
    oae_epoch_wave committed;
    uint8_t has_tree_parent, has_prepared, has_prepared_parent, has_initiating;
    uint32_t tree_parent;
    oae_epoch_wave prepared;
    uint32_t prepared_parent;
    oae_epoch_wave initiating;
    uint64_t next_attempt;
    uint32_t n_tree_children, n_committed_log, n_prepared_children, n_prepared_log, n_aborted;
    uint32_t tree_children[OAE_EPOCH_LINKS_MAX];
    oae_epoch_logent committed_log[OAE_EPOCH_LINKS_MAX];
    uint32_t prepared_children[OAE_EPOCH_LINKS_MAX];
    oae_epoch_logent prepared_log[OAE_EPOCH_LINKS_MAX];
    oae_epoch_wave aborted[OAE_EPOCH_ABORTED_MAX];
} oae_epoch_record;

/* The genesis record (committed epoch 0, next_attempt 1). */
void oae_epoch_record_init(oae_epoch_record *r);
/* Binary encoding (docs/convergence.md §5): returns its length (<= OAE_EPOCH_RECORD_MAX). */
size_t oae_epoch_record_encode(const oae_epoch_record *r, uint8_t *out);
/* 0, or OAE_EPOCH_ERECORD if buf is not exactly one valid, canonical record. */
int oae_epoch_record_decode(const uint8_t *buf, size_t len, oae_epoch_record *out);

typedef struct oae_epoch_counters {
    uint64_t mixed_frames, bad_messages;
    uint64_t aborted_forgotten, out_forgotten, inc_refused;
} oae_epoch_counters;

/* The node's wave, for status (sets are bitmaps over link indices, see oae_epoch_link_id). */
typedef struct oae_epoch_wave_state {
    int active;
    oae_epoch_wave wave;
    int has_parent;
    uint32_t parent;
    uint64_t waiting, children, crossing, marked;
    int written, accepted;
} oae_epoch_wave_state;

typedef struct oae_epoch_link_state {
    uint32_t id;
    int up, has_heard;
    uint32_t heard, epoch;
    int64_t send_epoch; /* -1: hold */
    uint64_t unsettled_app, logged;
    uint32_t delivered, ctl_delivered, reported;
} oae_epoch_link_state;

typedef struct oae_epoch oae_epoch;

/* A machine for node_id with the given neighbours (any order, duplicates ignored) from
 * record (NULL: genesis).  NULL with *err = OAE_EPOCH_ELINK (more than LINKS_MAX
 * neighbours), OAE_EPOCH_ERECORD (its parents or children are not all neighbours) or -12
 * (out of memory). */
oae_epoch *oae_epoch_new(uint32_t node_id, const uint32_t *neighbours, size_t n,
                         const oae_epoch_record *record, int *err);
void oae_epoch_free(oae_epoch *m);

/* Inputs: each returns the number of actions, or a negative OAE_EPOCH_E*. */
int oae_epoch_start(oae_epoch *m);
/* *started = 1 and *wave set if a wave started (0: already in one). */
int oae_epoch_propose(oae_epoch *m, int *started, oae_epoch_wave *wave);
int oae_epoch_checkpoint_written(oae_epoch *m, const oae_epoch_wave *wave, int ok);
int oae_epoch_link_up(oae_epoch *m, uint32_t link);
int oae_epoch_link_down(oae_epoch *m, uint32_t link);
int oae_epoch_offered(oae_epoch *m, uint32_t link, uint32_t tid, const uint8_t *payload,
                      size_t len, uint32_t delivered);
/* payload: the reflected transfer's (PROPOSE of its wave) */
int oae_epoch_reflected(oae_epoch *m, uint32_t link, uint32_t tid, const uint8_t *payload,
                        size_t len);
int oae_epoch_delivered(oae_epoch *m, uint32_t link, uint32_t tid, const uint8_t *payload,
                        size_t len);
/* payload NULL: none known (Python None) */
int oae_epoch_outcome(oae_epoch *m, uint32_t link, uint32_t tid, int committed,
                      const uint8_t *payload, size_t len, int by_round);
/* *accepted = 1, or 0 for a mixed-epoch frame (counted) */
int oae_epoch_app_frame(oae_epoch *m, uint32_t link, uint32_t tid, uint32_t tag,
                        int *accepted);
int oae_epoch_app_sent(oae_epoch *m, uint32_t link); /* 0 (no actions) or ELINK */
int oae_epoch_app_settled(oae_epoch *m, uint32_t link);

/* The actions of the last input, and the record of its Persist action number i. */
const oae_epoch_action *oae_epoch_actions(const oae_epoch *m);
const uint8_t *oae_epoch_persisted(const oae_epoch *m, uint32_t i, size_t *len);

/* Queries */
uint32_t oae_epoch_epoch(const oae_epoch *m);
const oae_epoch_record *oae_epoch_record_get(const oae_epoch *m);
/* -1: hold application frames (or not a neighbour) */
int64_t oae_epoch_send_epoch(const oae_epoch *m, uint32_t link);
int oae_epoch_failed(const oae_epoch *m); /* 0, or the error that failed it */
void oae_epoch_counters_get(const oae_epoch *m, oae_epoch_counters *out);
void oae_epoch_wave_get(const oae_epoch *m, oae_epoch_wave_state *out);
size_t oae_epoch_links(const oae_epoch *m);
/* link index i (0 .. links-1, ascending ids): its id and state; -1 if out of range */
int oae_epoch_link_get(const oae_epoch *m, size_t i, oae_epoch_link_state *out);
/* deferred wave i (insertion order) and its senders (bitmap of link indices); -1 past end */
int oae_epoch_deferred_get(const oae_epoch *m, size_t i, oae_epoch_wave *wave,
                           uint64_t *senders);
/* cdef-end */

#endif
