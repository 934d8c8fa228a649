/* oae epoch runner: a node's epoch layer run in C, so that a wave's leg is decided, made
 * durable and answered without a trip through Python (docs/convergence.md §11).  It is a
 * client of the pumps' public API (pump.h) exactly as the Python runtime is: it takes the
 * pumps' events, feeds the CONTROL ones and the link changes to the epoch machine
 * (epoch.h) and performs its actions in order: Offer -> oae_pump_submit (gated flag),
 * Hold/Refuse/Commit/Report/Reset -> the pump's gate calls, Persist -> the binary record
 * written to the node's slot file and fdatasync'ed before any later action, LinkEpoch ->
 * oae_pump_set_epoch, Capture -> checkpoint_written at once (or, with
 * OAE_EPOCHRUN_CHECKPOINT, handed to the application, whose answer comes back as a
 * command), Decided/Converged -> events with their oae_now_ns instants.
 *
 * Threads: a link's events are taken in its pump's own thread (oae_pump_set_consumer), as
 * soon as the pump has made them visible and before that pump step's frames leave: a leg
 * costs no wake-up of another thread unless its action is on another link.  The runner's
 * own thread (oae_epochrun_run) starts the machine, runs commands (propose, checkpoint
 * answers) and takes the events left while the event ring was full.  One step (an input
 * and all its actions) runs at a time, whichever thread takes it; a pump that finds a
 * step in progress leaves its events to the thread running it, which takes them before
 * it lets go.
 *
 * Everything else a link produces (LINK_UP/DOWN, application deliveries and outcomes,
 * errors) is re-published unchanged, with the link's id, for the application's Link
 * object (the Link must not take its pump's events itself).  Application frames go out
 * through oae_epochrun_send, which tags them with the link end's epoch (4 bytes,
 * big-endian) under the runner's lock; a delivered frame whose tag is not the epoch of
 * its link end is counted and dropped here, never re-published.  What the runner consumes
 * it settles with the pump: deliveries (CONTROL ones, dropped frames) are released with
 * the batch they came in, the outcomes of its own CONTROL transfers acknowledged.
 *
 * Locking: `step_mu` is held for a whole step; `mu` guards the machine, the command queue
 * and the event ring, and is released during a record's fdatasync, when `stepping` makes
 * oae_epochrun_send answer "held" (a frame must not leave under an epoch whose record is
 * not durable yet).  Lock order: step_mu, mu, then a pump's own mutex (inside the pump
 * calls; a pump calls its consumer with its own mutex released). */
#ifndef OAE_EPOCHRUN_H
#define OAE_EPOCHRUN_H

#include <stddef.h>
#include <stdint.h>

#include "epoch.h"
#include "pump.h"

/* cdef-begin */
#define OAE_EPOCHRUN_CHECKPOINT 1 /* Capture waits for oae_epochrun_checkpoint_written */
#define OAE_EPOCHRUN_TAG_LEN 4    /* the epoch tag in front of every application payload */

/* event types */
enum {
    OAE_ER_LINK = 1,      /* pe: an event of link `link` for its Link object */
    OAE_ER_PROPOSED = 2,  /* answer to oae_epochrun_propose(request): ok = a wave started */
    OAE_ER_CAPTURE = 3,   /* wave: snapshot the application state now (checkpoint flag) */
    OAE_ER_DISCARD = 4,   /* wave: its capture is void (the wave aborted) */
    OAE_ER_DECIDED = 5,   /* wave, ok = committed (at the initiator) */
    OAE_ER_CONVERGED = 6, /* wave: Conv known (at the initiator) */
    OAE_ER_EPOCH = 7,     /* wave: this node committed it (durably); only once asked
                             (oae_epochrun_watch_epoch), so that nobody is woken per
                             transition */
    OAE_ER_CHANGED = 8,   /* the machine moved (since the last CHANGED): held sends may go,
                             status and readiness too; only once asked (oae_epochrun_watch,
                             or a held send), so that nobody is woken at every step */
    OAE_ER_FAILED = 9     /* the runner stopped: info the machine's OAE_EPOCH_E* (ok = 0), or
                             -errno of the record store, a pump or ppoll (ok = 1) */
};

/* oae_epochrun_send's answers besides the tag */
enum {
    OAE_EPOCHRUN_HELD = -1,    /* not now: the link end is changing epoch (wait for CHANGED) */
    OAE_EPOCHRUN_NOLINK = -2,  /* not a neighbour */
    OAE_EPOCHRUN_TOOLONG = -3, /* payload longer than 16 - OAE_EPOCHRUN_TAG_LEN */
    OAE_EPOCHRUN_STOPPED = -4  /* the runner failed or stopped */
};

typedef struct oae_epochrun_event {
    uint8_t type;      /* OAE_ER_* */
    uint8_t ok;
    uint32_t link;     /* the neighbour's id (OAE_ER_LINK) */
    int32_t info;
    uint64_t request;  /* OAE_ER_PROPOSED */
    uint64_t at_ns;    /* oae_now_ns() when it happened */
    oae_epoch_wave wave;
    oae_pump_event pe; /* OAE_ER_LINK */
} oae_epochrun_event;

/* The CONTROL log, for measurement: each leg of the wave transfers, where this node acted
 * (its offer, hold, commit or report) and where the peer's action arrived (OFFERED,
 * REFLECTED, the delivery, the COMMITTED outcome), so a leg's one-way time is the
 * difference between the two nodes' entries (matched by payload for offers, by tid for
 * the rest); and how long the runner's status messages took (a wave transfer's outcome
 * is its DONE leg: it times the wave).  A bounded ring: the oldest entries give way. */
enum {
    OAE_ERC_OFFER = 1,
    OAE_ERC_HOLD = 2,
    OAE_ERC_COMMIT = 3,
    OAE_ERC_REPORT = 4,
    OAE_ERC_SETTLED = 5 /* a status message to `link` got its outcome after took_ns */
};

typedef struct oae_epochrun_ctl {
    uint8_t kind;  /* OAE_ERC_* */
    uint8_t acted; /* legs: 1 this node's action, 0 the peer's arriving */
    uint8_t len;
    uint32_t link;
    uint32_t tid;
    uint64_t at_ns;
    uint64_t took_ns;
    uint8_t payload[16];
} oae_epochrun_ctl;

typedef struct oae_epochrun_stats {
    uint64_t steps;        /* machine inputs */
    uint64_t actions;      /* actions performed */
    uint64_t persists;     /* records written (a record followed by a newer one with no
                              link action between them is not written) */
    uint64_t persist_ns;   /* time in those writes (pwrite + fdatasync) */
    uint64_t control_in;   /* CONTROL events taken (offered, reflected, delivered, outcomes) */
    uint64_t app_frames;   /* application frames delivered and re-published */
    uint64_t mixed_frames; /* application frames dropped: tag not the link end's epoch */
    uint64_t app_sent;     /* application frames sent through oae_epochrun_send */
    uint64_t held_sends;   /* oae_epochrun_send answers HELD */
    uint64_t wakeups;
    uint64_t control_log_lost; /* CONTROL log entries overwritten before they were taken */
    uint64_t cpu_ns;       /* CPU time of the runner thread so far */
} oae_epochrun_stats;

typedef struct oae_epochrun oae_epochrun;

/* A runner for node_id over n links (neighbour ids[i] on pumps[i], pumps opened with
 * gates and not consumed by anyone else), starting from `record` (the binary record,
 * len bytes; NULL for genesis), which it keeps in the slot file at record_path (the
 * layout of oae/epoch/durable.py's SlotFile; created on the first write if missing).
 * NULL with *err: an OAE_EPOCH_E* of the machine, or -errno. */
oae_epochrun *oae_epochrun_new(uint32_t node_id, const uint32_t *ids, oae_pump *const *pumps,
                               size_t n, const uint8_t *record, size_t len,
                               const char *record_path, int flags, int *err);
/* Free a runner whose thread has returned (the pumps are the caller's). */
void oae_epochrun_free(oae_epochrun *r);
/* The thread: start the machine, hand the pumps' events to their own threads, then serve
 * until oae_epochrun_stop (the pumps must outlive it: it takes its consumer back from each
 * before it returns).  Returns 0, or the error that stopped it (also published as
 * OAE_ER_FAILED). */
int oae_epochrun_run(oae_epochrun *r);
void oae_epochrun_stop(oae_epochrun *r);
/* Readable while events wait for oae_epochrun_events. */
int oae_epochrun_event_fd(const oae_epochrun *r);
size_t oae_epochrun_events(oae_epochrun *r, oae_epochrun_event *out, size_t max);

/* Commands (answered through events). */
int oae_epochrun_propose(oae_epochrun *r, uint64_t request);
int oae_epochrun_checkpoint_written(oae_epochrun *r, const oae_epoch_wave *wave, int ok);
/* Send n application payloads (lens[i] bytes at payloads + 16 * i) to `link`, cookies
 * cookie0, cookie0 + 1, ..., each tagged with the link end's epoch: returns the tag, or
 * OAE_EPOCHRUN_HELD / NOLINK / TOOLONG / STOPPED (nothing sent), or -ENOMEM. */
int64_t oae_epochrun_send(oae_epochrun *r, uint32_t link, const uint8_t *payloads,
                          const uint8_t *lens, size_t n, uint64_t cookie0);

/* Ask for one OAE_ER_CHANGED at the machine's next move (at once if it moved since the
 * last CHANGED). */
void oae_epochrun_watch(oae_epochrun *r);
/* The committed epoch (durable) as of the runner's last step. */
uint32_t oae_epochrun_epoch(oae_epochrun *r);
/* Ask for one OAE_ER_EPOCH when the committed epoch is no longer `known` (at once if it
 * already is not). */
void oae_epochrun_watch_epoch(oae_epochrun *r, uint32_t known);
/* From now on write "<prefix><epoch><suffix>" to fd (-1: nowhere) at each new committed
 * epoch, once its record is durable: the node's log, without waking the application.
 * -EINVAL if prefix or suffix is 64 bytes or longer. */
int oae_epochrun_log_epochs(oae_epochrun *r, int fd, const char *prefix, const char *suffix);

/* Queries.  lock/unlock bracket reads of the machine (oae_epoch_* queries) from another
 * thread; the runner never holds the lock across a disk write. */
const oae_epoch *oae_epochrun_lock(oae_epochrun *r);
void oae_epochrun_unlock(oae_epochrun *r);
/* Take up to max entries of the CONTROL log, oldest first. */
size_t oae_epochrun_control_log(oae_epochrun *r, oae_epochrun_ctl *out, size_t max);
/* 1 when every link is up and has told this node its committed epoch */
int oae_epochrun_ready(oae_epochrun *r);
void oae_epochrun_stats_get(oae_epochrun *r, oae_epochrun_stats *out);

/* The slot file the runner keeps its record in, for tests and tools: write `len` bytes
 * as the newest record of the file at path (two slots, one fdatasync; created if
 * missing or not of this layout).  0 or -errno. */
int oae_slotfile_store(const char *path, const uint8_t *payload, size_t len);
/* cdef-end */

#endif
