/* oae link engine: see link.h (API) and docs/protocol.md sections 7+ (normative).
 *
 * One struct per link.  Everything the machine knows is in it; it never reads a clock and
 * never does I/O.  oae/model/link.py is a line-by-line Python twin used as a test oracle:
 * any change here must be made there too (tests/test_link_diff.py compares them).
 */
#include "link.h"

#include <stdlib.h>
#include <string.h>

#define NEVER UINT64_MAX
#define T_APPLIED OAE_TR_REFLECT /* RECONCILE record: "I applied your registers" */

static const uint8_t GROUP[6] = {0x03, 0x0a, 0xe0, 0x00, 0x00, 0x01};

/* gate of an outgoing transfer (gates): none, waiting for oae_link_commit, released */
enum { GATE_NONE = 0, GATE_CLOSED = 1, GATE_OPEN = 2 };

typedef struct out_slot {
    uint8_t state, flags, len, gate;
    uint8_t payload[OAE_PAYLOAD_MAX];
} out_slot;

typedef struct in_slot {
    uint32_t tid;                 /* the tid held in this slot (0: an offer not held) */
    uint8_t flags, len;
    uint8_t payload[OAE_PAYLOAD_MAX];
} in_slot;

struct oae_link {
    oae_link_config cfg;
    uint8_t phase;
    int bound, up;
    int confirmed;                /* the bound peer completed a round with me (or was stored) */
    int quiet;                    /* restarted: silent for dead_ns from the first `now` seen */
    uint64_t quiet_until;         /* 0 until the first `now` is seen */
    uint8_t peer_mac[6];
    uint32_t peer_nonce;
    uint32_t seq;                 /* last seq I sent */
    uint32_t rx_max, floor;       /* replay window top; first peer seq of this round */
    uint64_t rx_bits;             /* bit i: rx_max - i seen */
    uint8_t peer_half[4];
    int got_any;
    uint64_t t_hello, t_rto, t_dead, t_answer;
    int owe_hello, owe_reconcile;
    uint32_t answered;            /* start seq of the last peer beat I answered */
    uint32_t peer_round_seq;      /* highest peer RECONCILE/TOKEN seq seen this round */
    /* outgoing direction (my transfers) */
    uint32_t out_hi, out_commit, out_peer_held, out_settled, abort_lo, abort_hi;
    uint32_t out_known;           /* slots above this tid hold data from this process */
    /* incoming direction (the peer's transfers) */
    uint32_t in_held, in_delivered, in_commit, in_unreleased, refusing;
    uint32_t in_offered, in_reported; /* gates: pending offer; reported deliveries */
    uint32_t sent_held, sent_delivered, sent_commit, sent_refusing; /* in my last beat */
    /* the current reconciliation round */
    uint32_t rec_hi, rec_commit, rec_dfinal;
    int applied, settled, skip_pending;
    /* persistence */
    uint64_t gen, snap_gen;
    int dirty;
    out_slot *out;
    in_slot *in;
    oae_event *ev;
    size_t ev_head, ev_len, ev_cap;
    oae_link_stats st;
};

/* ---- the phase transition table (what the code below does, as data) ---------------- */

static const oae_link_transition TRANSITIONS[] = {
    {OAE_PHASE_DISCOVER, OAE_PHASE_DISCOVER, "hello_ns elapsed / HELLO to the group"},
    {OAE_PHASE_DISCOVER, OAE_PHASE_RECONCILE, "HELLO from the peer / bind it, new round"},
    {OAE_PHASE_RECONCILE, OAE_PHASE_RECONCILE,
     "RECONCILE record / apply its registers, answer; HELLO of a new peer session or of a "
     "peer back in discovery / new round"},
    {OAE_PHASE_RECONCILE, OAE_PHASE_LIVE,
     "RECONCILE record and both sides applied / settle, LINK_UP"},
    {OAE_PHASE_RECONCILE, OAE_PHASE_DISCOVER, "dead_ns with nothing accepted"},
    {OAE_PHASE_RECONCILE, OAE_PHASE_DISCOVER, "reset() / HELLO to the group"},
    {OAE_PHASE_LIVE, OAE_PHASE_LIVE, "TOKEN beat / settle registers, answer with one beat"},
    {OAE_PHASE_LIVE, OAE_PHASE_RECONCILE,
     "HELLO of a new peer session or of a peer back in discovery / LINK_DOWN, new round"},
    {OAE_PHASE_LIVE, OAE_PHASE_DISCOVER,
     "dead_ns with nothing accepted / LINK_DOWN, open transfers INDEFINITE"},
    {OAE_PHASE_LIVE, OAE_PHASE_DISCOVER,
     "reset() / LINK_DOWN, open transfers INDEFINITE, HELLO to the group"},
};

size_t oae_link_transitions(const oae_link_transition **table)
{
    *table = TRANSITIONS;
    return sizeof TRANSITIONS / sizeof TRANSITIONS[0];
}

/* ---- helpers ---------------------------------------------------------------------- */

static int valid_config(const oae_link_config *c)
{
    return c && c->nonce != 0 && c->window >= 1 && c->window <= OAE_LINK_WINDOW_MAX &&
           (c->beat == 1 || c->beat == 4 || c->beat == 16 || c->beat == 64) &&
           c->rx_capacity >= 1 && c->rto_ns > 0 && c->dead_ns > 0 && c->hello_ns > 0;
}

size_t oae_link_size(const oae_link_config *cfg)
{
    if (!valid_config(cfg))
        return 0;
    return sizeof(oae_link) + cfg->window * (sizeof(out_slot) + sizeof(in_slot));
}

static void copy_payload(oae_event *e, uint8_t flags, uint8_t len, const uint8_t *payload)
{
    e->data_flags = flags;
    e->length = len;
    memcpy(e->payload, payload, len);
}

static oae_event *push(oae_link *l, uint8_t type, uint32_t tid)
{
    if (l->ev_len == l->ev_cap) {
        if (l->ev_head > 0) {
            memmove(l->ev, l->ev + l->ev_head, (l->ev_len - l->ev_head) * sizeof *l->ev);
            l->ev_len -= l->ev_head;
            l->ev_head = 0;
        } else {
            size_t cap = l->ev_cap * 2;
            oae_event *ev = realloc(l->ev, cap * sizeof *ev);
            if (!ev)
                abort(); /* events must never be lost; out of memory is fatal */
            l->ev = ev;
            l->ev_cap = cap;
        }
    }
    oae_event *e = &l->ev[l->ev_len++];
    memset(e, 0, sizeof *e);
    e->type = type;
    e->tid = tid;
    return e;
}

/* A durable register changed: it must reach stable storage before the next frame. */
static void durable_changed(oae_link *l)
{
    l->gen++;
    if (l->cfg.persist && !l->dirty) {
        l->dirty = 1;
        push(l, OAE_EV_PERSIST, 0);
    }
}

static out_slot *oslot(oae_link *l, uint32_t tid) { return &l->out[tid % l->cfg.window]; }
static in_slot *islot(oae_link *l, uint32_t tid) { return &l->in[tid % l->cfg.window]; }

/* Report every delivered or skipped tid after in_reported, up to the first delivered
 * CONTROL transfer the application has not reported (gates; without gates everything
 * delivered is reported).  A tid more than `window` above in_reported was never held (the
 * receiver holds nothing further), so the scan stops there (docs/protocol.md 7.11). */
static void advance_report(oae_link *l)
{
    if (l->cfg.gates) {
        uint32_t lim = l->in_delivered - l->in_reported > l->cfg.window
                           ? l->in_reported + l->cfg.window
                           : l->in_delivered;
        for (uint32_t t = l->in_reported + 1; t <= lim; t++) {
            const in_slot *s = islot(l, t);
            if (s->tid == t && (s->flags & OAE_F_CONTROL)) {
                l->in_reported = t - 1;
                return;
            }
        }
    }
    l->in_reported = l->in_delivered;
}

/* Deliver every held tid up to `upto`, in order (the receiver's second-round-trip step);
 * returns whether anything was delivered. */
static int deliver_held(oae_link *l, uint32_t upto)
{
    int any = 0;
    while (l->in_delivered < upto) {
        uint32_t t = ++l->in_delivered;
        in_slot *s = islot(l, t);
        copy_payload(push(l, OAE_EV_DELIVERED, t), s->flags, s->len, s->payload);
        l->in_unreleased++;
        l->st.delivered++;
        any = 1;
    }
    if (any)
        advance_report(l);
    return any;
}

static int in_abort(const oae_link *l, uint32_t tid)
{
    return l->abort_hi != 0 && tid >= l->abort_lo && tid <= l->abort_hi;
}

static int is_leader(const oae_link *l)
{
    int c = memcmp(l->cfg.mac, l->peer_mac, 6);
    return c > 0 || (c == 0 && l->cfg.nonce > l->peer_nonce);
}

static uint32_t reported_delivered(const oae_link *l)
{
    return l->skip_pending ? l->rec_dfinal : l->in_delivered;
}

static uint32_t reported_held(const oae_link *l)
{
    return l->skip_pending ? l->rec_dfinal : l->in_held;
}

/* delivered_upto of TOKEN records: not past a delivery the application has not reported */
static uint32_t token_delivered(const oae_link *l)
{
    uint32_t d = reported_delivered(l);
    return l->in_reported < d ? l->in_reported : d;
}

/* An outgoing gated transfer the application has not committed (gates): out_commit stops
 * below it.  Transfers restored after a restart are not known here (their slots are empty);
 * rec_commit() treats them as closed. */
static int gate_closed(oae_link *l, uint32_t tid)
{
    const out_slot *s = oslot(l, tid);
    return tid > l->out_known && s->gate == GATE_CLOSED && s->state != OAE_ST_ABORTED;
}

/* Raise out_commit to what the peer holds, but never past a closed gate. */
static void advance_commit(oae_link *l)
{
    if (!l->cfg.gates) {
        if (l->out_peer_held > l->out_commit)
            l->out_commit = l->out_peer_held;
        return;
    }
    while (l->out_commit < l->out_peer_held && !gate_closed(l, l->out_commit + 1))
        l->out_commit++;
}

/* The commit_upto of a round's RECONCILE records: rec_hi, but below every undecided gated
 * transfer, and (gates) below every transfer restored after a restart, which may have been
 * gated: the receiver delivers only what the sender's application committed. */
static uint32_t rec_commit(oae_link *l)
{
    if (!l->cfg.gates)
        return l->rec_hi;
    if (l->out_known > l->out_settled)
        return l->out_settled;
    for (uint32_t t = l->out_settled + 1; t <= l->rec_hi && t != 0; t++)
        if (gate_closed(l, t))
            return t - 1;
    return l->rec_hi;
}

/* ---- life cycle ------------------------------------------------------------------- */

oae_link *oae_link_new(const oae_link_config *cfg, const oae_link_durable *restored)
{
    if (!valid_config(cfg))
        return NULL;
    if (restored && (restored->version != OAE_LINK_DURABLE_VERSION ||
                     restored->out_settled > restored->out_hi ||
                     restored->abort_lo > restored->abort_hi ||
                     restored->abort_hi > restored->out_hi ||
                     (restored->abort_hi != 0 && restored->abort_lo == 0) ||
                     restored->out_hi - restored->out_settled > cfg->window))
        return NULL;
    oae_link *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->cfg = *cfg;
    if (!l->cfg.ethertype)
        l->cfg.ethertype = OAE_ETHERTYPE_DEFAULT;
    l->out = calloc(cfg->window, sizeof *l->out);
    l->in = calloc(cfg->window, sizeof *l->in);
    l->ev_cap = 64;
    l->ev = malloc(l->ev_cap * sizeof *l->ev);
    if (!l->out || !l->in || !l->ev) {
        oae_link_free(l);
        return NULL;
    }
    l->phase = OAE_PHASE_DISCOVER;
    l->t_hello = 0;
    l->t_rto = l->t_dead = l->t_answer = NEVER;
    l->snap_gen = UINT64_MAX;
    if (cfg->has_peer) {
        memcpy(l->peer_mac, cfg->peer_mac, 6);
    }
    if (restored) {
        if (restored->has_peer) {
            l->bound = l->confirmed = 1;
            memcpy(l->peer_mac, restored->peer_mac, 6);
        }
        l->out_hi = l->out_commit = l->out_peer_held = restored->out_hi;
        l->out_settled = restored->out_settled;
        l->abort_lo = restored->abort_lo;
        l->abort_hi = restored->abort_hi;
        l->out_known = restored->out_hi;
        l->in_held = l->in_delivered = l->in_commit = restored->in_delivered;
        l->cfg.epoch = restored->epoch;
        l->quiet = 1;
    }
    l->in_offered = l->in_reported = l->in_held;
    l->sent_held = l->in_held;
    l->sent_delivered = l->in_delivered;
    l->sent_commit = l->out_commit;
    return l;
}

void oae_link_free(oae_link *l)
{
    if (!l)
        return;
    free(l->out);
    free(l->in);
    free(l->ev);
    free(l);
}

/* ---- the round: discovery -> reconciliation --------------------------------------- */

static void link_down(oae_link *l, uint32_t reason)
{
    if (l->up) {
        l->up = 0;
        l->st.links_down++;
        push(l, OAE_EV_LINK_DOWN, 0)->info = reason;
    }
}

/* A HELLO from the peer starts a new round: both ends reconcile their registers. */
static void new_round(oae_link *l, const oae_frame_hdr *h, const oae_record *r, uint64_t now)
{
    if (l->bound && r->nonce != l->peer_nonce && l->peer_nonce != 0)
        link_down(l, OAE_DOWN_PEER_RESTART);
    else
        link_down(l, OAE_DOWN_PEER_LOST);
    if (!l->bound) {
        /* the Ethernet header is not covered by the check: a corrupted source MAC must not
         * capture the link, so the binding only becomes durable once a round completes */
        l->bound = 1;
        l->confirmed = 0;
        memcpy(l->peer_mac, h->src, 6);
    }
    if (r->nonce != l->peer_nonce) {
        l->peer_nonce = r->nonce;
        l->rx_max = r->seq;
        l->rx_bits = 1;
        l->answered = 0;
    }
    l->floor = r->seq;
    l->peer_round_seq = 0;
    l->phase = OAE_PHASE_RECONCILE;
    l->applied = l->settled = 0;
    l->rec_hi = l->out_hi;
    l->rec_commit = rec_commit(l);
    l->owe_hello = r->phase == OAE_PHASE_DISCOVER;
    l->owe_reconcile = 0;
    l->t_hello = l->t_rto = NEVER;
    l->t_answer = now;
    l->st.reconciles++;
}

/* Receiver half of reconciliation: deliver what the peer committed, discard the rest,
 * skip past every tid the peer ever assigned.  Done once per round. */
static void apply(oae_link *l, const oae_record *r)
{
    deliver_held(l, r->commit_upto < l->in_held ? r->commit_upto : l->in_held);
    if (!l->skip_pending)
        l->rec_dfinal = l->in_delivered;
    l->in_held = l->in_delivered;
    if (r->tid > l->in_delivered) {
        l->in_held = l->in_delivered = r->tid;
        l->skip_pending = 1;
    }
    l->in_commit = l->in_delivered;
    l->refusing = 0;
    /* the round settles everything: no pending offer, every delivery reported */
    l->in_offered = l->in_reported = l->in_held;
    l->applied = 1;
    durable_changed(l);
}

/* Sender half: the peer's final delivered_upto decides every tid of my direction. */
static void settle(oae_link *l, uint32_t dfinal)
{
    /* with gates the application tells such outcomes from the peer's reports */
    uint8_t round = l->cfg.gates ? OAE_EVF_ROUND : 0;
    for (uint32_t t = l->out_settled + 1; t <= l->rec_hi && t != 0; t++) {
        out_slot *s = oslot(l, t);
        int known = t > l->out_known;
        if (known && s->state == OAE_ST_ABORTED)
            continue;
        if (!known && in_abort(l, t)) {
            push(l, OAE_EV_ABORTED, t)->flags = OAE_EVF_RESTORED | round;
            l->st.aborted++;
            continue;
        }
        if (t <= dfinal) {
            oae_event *e = push(l, OAE_EV_COMMITTED, t);
            e->flags = round | (known ? 0 : OAE_EVF_RESTORED);
            if (known)
                s->state = OAE_ST_COMMITTED;
            l->st.committed++;
        } else {
            oae_event *e = push(l, OAE_EV_ABORTED, t);
            e->flags = round;
            if (known) {
                copy_payload(e, s->flags, s->len, s->payload);
                s->state = OAE_ST_ABORTED;
            } else {
                e->flags |= OAE_EVF_RESTORED;
            }
            l->st.aborted++;
        }
    }
    l->out_settled = l->out_commit = l->out_peer_held = l->rec_hi;
    l->abort_lo = l->abort_hi = 0;
    l->settled = 1;
    durable_changed(l);
}

static void go_live(oae_link *l, const oae_record *r, uint64_t now)
{
    l->phase = OAE_PHASE_LIVE;
    l->up = 1;
    if (!l->confirmed) {
        l->confirmed = 1;
        durable_changed(l);
    }
    l->st.links_up++;
    push(l, OAE_EV_LINK_UP, 0)->info = l->peer_nonce;
    /* a peer still reconciling needs my APPLIED record; a LIVE peer waits for my token */
    l->owe_reconcile = r->phase == OAE_PHASE_RECONCILE;
    l->answered = r->seq - r->beat_index;
    l->t_rto = NEVER;
    l->t_answer = now;
}

/* ---- receiving -------------------------------------------------------------------- */

static void deliver_upto(oae_link *l, uint32_t c)
{
    if (c > l->in_commit)
        l->in_commit = c;
    int changed = deliver_held(l, l->in_commit < l->in_held ? l->in_commit : l->in_held);
    if (l->in_commit > l->in_held) {
        /* the peer settled tids I never held as aborted (it reversed them): skip them */
        l->in_held = l->in_delivered = l->in_offered = l->in_commit;
        if (l->refusing && l->refusing <= l->in_commit)
            l->refusing = 0;
        advance_report(l);
        changed = 1;
    }
    if (changed)
        durable_changed(l);
}

static void take_offer(oae_link *l, const oae_record *r)
{
    uint32_t t = r->tid;
    if (t <= l->in_held) {
        l->st.offers_dup++;
    } else if (t != l->in_held + 1) {
        l->st.offers_gap++;
    } else if (l->refusing) {
        l->st.offers_refused++;
    } else if (r->epoch != l->cfg.epoch && !(r->flags & OAE_F_CONTROL)) {
        l->st.offers_wrong_epoch++;
    } else if ((l->in_held - l->in_delivered) + l->in_unreleased >= l->cfg.rx_capacity ||
               t - l->in_reported > l->cfg.window) {
        l->refusing = t;
        l->st.offers_refused++;
    } else if (t == l->in_offered) {
        l->st.offers_pending++; /* its application has not decided yet */
    } else {
        in_slot *s = islot(l, t);
        s->flags = r->flags & OAE_F_CONTROL;
        s->len = r->length;
        memcpy(s->payload, r->payload, OAE_PAYLOAD_MAX);
        l->in_offered = t;
        if (l->cfg.gates && (s->flags & OAE_F_CONTROL)) {
            s->tid = 0; /* held only by oae_link_hold */
            oae_event *e = push(l, OAE_EV_OFFERED, t);
            copy_payload(e, s->flags, s->len, s->payload);
            e->info = l->in_delivered; /* tids in (info, t) are held, not yet delivered */
        } else {
            s->tid = t;
            l->in_held = t;
        }
    }
}

static void sender_side(oae_link *l, const oae_record *r)
{
    if (r->held_upto > l->out_peer_held) {
        for (uint32_t t = l->out_peer_held + 1; t <= r->held_upto; t++) {
            out_slot *s = oslot(l, t);
            if (s->state == OAE_ST_TENTATIVE)
                s->state = OAE_ST_REFLECTING;
            if (gate_closed(l, t))
                copy_payload(push(l, OAE_EV_REFLECTED, t), s->flags, s->len, s->payload);
        }
        l->out_peer_held = r->held_upto;
    }
    advance_commit(l);
    uint32_t refused = r->held_upto + 1;
    /* (out_commit < out_peer_held: a closed gate below the refused tid holds the reversal
     * back until the application commits it; the peer repeats REFUSE in every record) */
    if ((r->flags & OAE_F_REFUSE) && refused > l->out_commit && refused <= l->out_hi &&
        l->out_peer_held < refused && l->out_commit >= l->out_peer_held) {
        /* reversal: every tid the peer has not held goes back to the application */
        for (uint32_t t = refused; t <= l->out_hi; t++) {
            out_slot *s = oslot(l, t);
            copy_payload(push(l, OAE_EV_ABORTED, t), s->flags, s->len, s->payload);
            s->state = OAE_ST_ABORTED;
            l->st.aborted++;
        }
        l->abort_lo = refused;
        l->abort_hi = l->out_hi;
        l->out_commit = l->out_hi;
        durable_changed(l);
    }
    if (r->delivered_upto > l->out_settled) {
        for (uint32_t t = l->out_settled + 1; t <= r->delivered_upto; t++) {
            out_slot *s = oslot(l, t);
            if (in_abort(l, t))
                continue;
            s->state = OAE_ST_COMMITTED;
            push(l, OAE_EV_COMMITTED, t);
            l->st.committed++;
        }
        l->out_settled = r->delivered_upto;
        if (l->abort_hi && l->out_settled >= l->abort_hi)
            l->abort_lo = l->abort_hi = 0;
    }
}

static int busy(const oae_link *l)
{
    return l->out_hi > l->out_settled || l->in_held > l->in_delivered ||
           reported_held(l) != l->sent_held || token_delivered(l) != l->sent_delivered;
}

/* Gates: my application has a decision to make (a pending offer, an unreported delivery,
 * a reflected gated transfer not committed). */
static int waiting(const oae_link *l)
{
    return l->cfg.gates && (l->in_offered > l->in_held || l->in_reported < l->in_delivered ||
                            l->out_commit < l->out_peer_held);
}

/* My next beat would tell the peer something my last one did not (a register, a refusal). */
static int news(const oae_link *l)
{
    return reported_held(l) != l->sent_held || token_delivered(l) != l->sent_delivered ||
           l->out_commit != l->sent_commit || l->refusing != l->sent_refusing;
}

/* Idle pacing: a LIVE end with nothing to settle delays its answer by idle_ns, but only the
 * leader does; the follower answers at once.  Unequal holds make a second token merge: it
 * reaches the leader while the leader holds the first one (docs/protocol.md 7.4).  With
 * gates, an end whose application has a decision to make holds too, leader or follower,
 * while its answer would carry no news: the exchange waits on that application, not on the
 * wire, and the decision sends at once (docs/protocol.md 7.11). */
static int paces(const oae_link *l)
{
    return l->phase == OAE_PHASE_LIVE && l->cfg.idle_ns &&
           ((!busy(l) && is_leader(l)) || (waiting(l) && !news(l)));
}

/* A new beat from the peer owes one answer: the token alternates. */
static void owe_answer(oae_link *l, const oae_record *r, uint64_t now)
{
    uint32_t start = r->seq - r->beat_index;
    if (start <= l->answered)
        return;
    l->answered = start;
    l->t_rto = NEVER;
    uint64_t at = paces(l) ? now + l->cfg.idle_ns : now;
    if (at < l->t_answer)
        l->t_answer = at;
}

static int bogus(const oae_link *l, const oae_record *r)
{
    if (r->opcode == OAE_OP_RECONCILE)
        return r->commit_upto > r->tid || r->delivered_upto > l->rec_hi ||
               r->held_upto > l->rec_hi;
    /* TOKEN */
    return r->held_upto > l->out_hi || r->delivered_upto > r->held_upto ||
           r->delivered_upto > l->out_commit ||
           (r->transition == OAE_TR_OFFER && (r->tid == 0 || r->direction != 0));
}

/* A restarted engine stays silent for dead_ns, so that every frame of its previous life
 * (and every frame the peer sent to it) has left the wire before it speaks again: a frame
 * lives less than dead_ns (docs/protocol.md 7.8). */
static int quiet(oae_link *l, uint64_t now)
{
    if (!l->quiet)
        return 0;
    if (l->quiet_until == 0)
        l->quiet_until = now + l->cfg.dead_ns;
    if (now < l->quiet_until)
        return 1;
    l->quiet = 0;
    return 0;
}

static int drop(oae_link *l, int why)
{
    l->st.drops[why]++;
    return why;
}

int oae_link_on_frame(oae_link *l, const uint8_t *frame, size_t len, uint64_t now)
{
    oae_frame_hdr h;
    oae_record r;
    l->st.frames_in++;
    if (quiet(l, now))
        return drop(l, OAE_DROP_STALE);
    int code = oae_frame_decode(frame, len, l->cfg.ethertype, l->cfg.has_key ? l->cfg.key : NULL,
                                &h, &r, NULL);
    if (code != OAE_OK)
        return drop(l, code);
    int to_group = memcmp(h.dst, GROUP, 6) == 0;
    if (memcmp(h.dst, l->cfg.mac, 6) != 0 && !(to_group && r.opcode == OAE_OP_HELLO))
        return drop(l, OAE_DROP_NOT_MINE);
    if (memcmp(h.src, l->cfg.mac, 6) == 0 && r.nonce == l->cfg.nonce)
        return drop(l, OAE_DROP_SELF);
    if ((l->cfg.has_peer || l->bound) && memcmp(h.src, l->peer_mac, 6) != 0)
        return drop(l, OAE_DROP_FOREIGN);
    int same = l->bound && l->peer_nonce != 0 && r.nonce == l->peer_nonce;
    if (!same && r.opcode != OAE_OP_HELLO)
        return drop(l, OAE_DROP_SESSION);
    uint64_t bit = 0;
    if (same) {
        if (r.seq < l->floor)
            return drop(l, OAE_DROP_STALE);
        if (r.seq > l->rx_max) {
            bit = 0;
        } else {
            uint32_t back = l->rx_max - r.seq;
            if (back >= 64 || (l->rx_bits >> back) & 1)
                return drop(l, OAE_DROP_REPLAY);
            bit = (uint64_t)1 << back;
        }
    }
    /* which opcodes each phase takes */
    switch (r.opcode) {
    case OAE_OP_HELLO:
        if (r.phase == OAE_PHASE_LIVE)
            return drop(l, OAE_DROP_UNEXPECTED);
        break;
    case OAE_OP_RECONCILE:
        if (l->phase == OAE_PHASE_DISCOVER || r.phase == OAE_PHASE_DISCOVER)
            return drop(l, OAE_DROP_UNEXPECTED);
        if (bogus(l, &r))
            return drop(l, OAE_DROP_BOGUS);
        break;
    case OAE_OP_TOKEN:
        if (l->phase != OAE_PHASE_LIVE || r.phase != OAE_PHASE_LIVE)
            return drop(l, OAE_DROP_UNEXPECTED);
        if (bogus(l, &r))
            return drop(l, OAE_DROP_BOGUS);
        break;
    default:
        return drop(l, OAE_DROP_UNEXPECTED);
    }
    /* accepted */
    if (same) {
        if (r.seq > l->rx_max) {
            uint32_t shift = r.seq - l->rx_max;
            l->rx_bits = shift >= 64 ? 0 : l->rx_bits << shift;
            l->rx_bits |= 1;
            l->rx_max = r.seq;
        } else {
            l->rx_bits |= bit;
        }
    }
    l->st.frames_accepted++;
    memcpy(l->peer_half, frame + OAE_ETH_HLEN, 4);
    l->got_any = 1;
    if (l->phase != OAE_PHASE_DISCOVER)
        l->t_dead = now + l->cfg.dead_ns;

    switch (r.opcode) {
    case OAE_OP_HELLO:
        if (!same || l->phase == OAE_PHASE_DISCOVER ||
            (r.phase == OAE_PHASE_DISCOVER && l->peer_round_seq != 0 &&
             r.seq > l->peer_round_seq)) {
            /* the peer is new, or went back to discovery after taking part in our round */
            new_round(l, &h, &r, now);
            l->t_dead = now + l->cfg.dead_ns;
        } else if (r.phase == OAE_PHASE_DISCOVER && l->peer_round_seq == 0) {
            l->owe_hello = 1; /* it has not heard my answer yet */
        }
        break;
    case OAE_OP_RECONCILE:
        if (r.seq > l->peer_round_seq)
            l->peer_round_seq = r.seq;
        if (!l->applied)
            apply(l, &r);
        if (!l->settled && r.transition == T_APPLIED)
            settle(l, r.delivered_upto);
        if (l->phase == OAE_PHASE_RECONCILE && l->applied && l->settled) {
            go_live(l, &r, now);
        } else if (l->phase == OAE_PHASE_RECONCILE) {
            owe_answer(l, &r, now);
        } else if (r.phase == OAE_PHASE_RECONCILE) {
            l->owe_reconcile = 1;
            owe_answer(l, &r, now);
        } else if (is_leader(l)) {
            owe_answer(l, &r, now); /* both LIVE: the leader alone starts the token */
        }
        break;
    case OAE_OP_TOKEN:
        if (r.seq > l->peer_round_seq)
            l->peer_round_seq = r.seq;
        if (l->skip_pending) {
            /* the peer is LIVE, so it has settled with my final delivered_upto */
            l->skip_pending = 0;
            durable_changed(l);
        }
        deliver_upto(l, r.commit_upto);
        if (r.transition == OAE_TR_OFFER)
            take_offer(l, &r);
        sender_side(l, &r);
        owe_answer(l, &r, now);
        break;
    }
    return OAE_DROP_NONE;
}

/* ---- timers ----------------------------------------------------------------------- */

uint64_t oae_link_next_timeout(const oae_link *l)
{
    if (l->quiet)
        return l->quiet_until; /* 0 until the first `now` is seen: call on_timeout */
    /* frames wait for oae_link_persisted(), which is the caller's own wake-up */
    int held = l->cfg.persist && l->dirty;
    uint64_t t = held ? NEVER : l->t_answer;
    if (l->phase == OAE_PHASE_DISCOVER) {
        if (!held && l->t_hello < t)
            t = l->t_hello;
    } else {
        if (l->t_rto < t)
            t = l->t_rto;
        if (l->t_dead < t)
            t = l->t_dead;
    }
    return t;
}

void oae_link_on_timeout(oae_link *l, uint64_t now)
{
    if (quiet(l, now) || l->phase == OAE_PHASE_DISCOVER)
        return;
    if (now >= l->t_dead) {
        /* timers declare failure, never success: every open transfer is now INDEFINITE */
        link_down(l, OAE_DOWN_DEAD);
        if (!l->confirmed) {
            l->bound = 0; /* never reconciled with it: maybe a corrupted address */
            l->peer_nonce = 0;
        }
        l->phase = OAE_PHASE_DISCOVER;
        l->t_hello = now;
        l->t_rto = l->t_dead = l->t_answer = NEVER;
        l->owe_hello = l->owe_reconcile = 0;
        return;
    }
    if (now >= l->t_rto) {
        l->st.timeouts_rto++;
        l->t_rto = NEVER;
        if (now < l->t_answer)
            l->t_answer = now;
    }
}

/* ---- sending ---------------------------------------------------------------------- */

static void emit(oae_link *l, uint8_t *out, const uint8_t *dst, oae_record *r)
{
    oae_frame_hdr h;
    memcpy(h.dst, dst, 6);
    memcpy(h.src, l->cfg.mac, 6);
    h.ethertype = l->cfg.ethertype;
    r->phase = l->phase;
    memcpy(r->peer_half, l->peer_half, 4);
    r->epoch = l->cfg.epoch;
    r->seq = ++l->seq;
    r->nonce = l->cfg.nonce;
    r->sack = l->got_any ? 0xFF : 0x00;
    oae_frame_encode(&h, r, l->cfg.has_key ? l->cfg.key : NULL, out);
    l->st.frames_out++;
}

static void base_record(oae_record *r, uint8_t opcode)
{
    memset(r, 0, sizeof *r);
    r->opcode = opcode;
    r->beat_size = 1;
}

size_t oae_link_poll_tx(oae_link *l, uint8_t *out, size_t max, uint64_t now)
{
    size_t n = 0;
    oae_record r;
    if (quiet(l, now) || (l->cfg.persist && l->dirty))
        return 0;
    if (l->owe_hello && n < max) {
        base_record(&r, OAE_OP_HELLO);
        emit(l, out + n++ * OAE_FRAME_LEN, GROUP, &r);
        l->owe_hello = 0;
    }
    if (l->phase == OAE_PHASE_DISCOVER) {
        if (now >= l->t_hello && n < max) {
            base_record(&r, OAE_OP_HELLO);
            emit(l, out + n++ * OAE_FRAME_LEN, GROUP, &r);
            l->t_hello = now + l->cfg.hello_ns;
        }
        return n;
    }
    if (now < l->t_answer || n >= max)
        return n;
    if (l->phase == OAE_PHASE_RECONCILE || l->owe_reconcile) {
        base_record(&r, OAE_OP_RECONCILE);
        r.tid = l->rec_hi;
        r.commit_upto = l->rec_commit;
        r.held_upto = reported_held(l);
        r.delivered_upto = reported_delivered(l);
        if (l->applied) {
            r.transition = T_APPLIED;
            r.direction = 1;
        }
        emit(l, out + n++ * OAE_FRAME_LEN, l->peer_mac, &r);
        l->owe_reconcile = 0;
    } else {
        /* a LIVE beat: the offers the peer has not held yet, then plain token records */
        uint32_t beat = l->cfg.beat;
        uint32_t t = l->out_peer_held;
        uint32_t sent = 0;
        do {
            base_record(&r, OAE_OP_TOKEN);
            r.beat_size = (uint8_t)beat;
            r.beat_index = (uint8_t)sent;
            while (t < l->out_hi && oslot(l, t + 1)->state == OAE_ST_ABORTED)
                t++;
            if (t < l->out_hi) {
                out_slot *s = oslot(l, ++t);
                r.tid = t;
                r.state = OAE_ST_TENTATIVE;
                r.transition = OAE_TR_OFFER;
                r.length = s->len;
                r.flags = s->flags;
                memcpy(r.payload, s->payload, s->len);
            } else if (l->refusing) {
                r.tid = l->refusing;
                r.state = OAE_ST_ABORTED;
                r.transition = OAE_TR_REVERSE;
                r.direction = 1;
            }
            if (l->refusing)
                r.flags |= OAE_F_REFUSE;
            r.commit_upto = l->out_commit;
            r.held_upto = reported_held(l);
            r.delivered_upto = token_delivered(l);
            emit(l, out + n++ * OAE_FRAME_LEN, l->peer_mac, &r);
            sent++;
        } while (sent < beat && n < max && t < l->out_hi);
        l->sent_held = reported_held(l);
        l->sent_delivered = token_delivered(l);
        l->sent_commit = l->out_commit;
        l->sent_refusing = l->refusing;
    }
    l->t_answer = NEVER;
    l->t_rto = now + l->cfg.rto_ns;
    return n;
}

size_t oae_link_poll_events(oae_link *l, oae_event *out, size_t max)
{
    size_t n = l->ev_len - l->ev_head;
    if (n == 0)
        return 0;
    if (n > max)
        n = max;
    memcpy(out, l->ev + l->ev_head, n * sizeof *out);
    l->ev_head += n;
    if (l->ev_head == l->ev_len)
        l->ev_head = l->ev_len = 0;
    return n;
}

/* ---- application side ------------------------------------------------------------- */

/* New work from the application (an offer, a new epoch, a gate decision) must not wait
 * for idle pacing.  If I hold the token, I answer now.  If the token is away (my beat awaits
 * its answer), the peer may be holding my beat for idle_ns: `beat` then sends a new beat at
 * once, as a re-offer timeout would; the peer sees a new beat with news and answers at once.
 * Offers ask for it at the follower of a link that was idle (the leader may be pacing);
 * gate decisions always (the peer may be waiting on its own application).  A token this
 * creates (the peer's held answer may already be on its way) merges at the next hold
 * (docs/protocol.md 7.4, 7.11). */
static void wake(oae_link *l, int beat)
{
    if (l->t_answer != NEVER) {
        l->t_answer = 0;
    } else if (beat && l->phase == OAE_PHASE_LIVE && l->cfg.idle_ns && l->t_rto != NEVER) {
        l->t_rto = NEVER;
        l->t_answer = 0;
        l->st.wakes++;
    }
}

int oae_link_offer(oae_link *l, const uint8_t *payload, size_t len, uint8_t flags,
                   uint32_t *tid_out)
{
    int gated = (flags & OAE_OFFER_GATED) != 0;
    flags &= (uint8_t)~OAE_OFFER_GATED;
    if (len > OAE_PAYLOAD_MAX || (flags & ~OAE_F_CONTROL) || (len && !payload) ||
        (gated && (!l->cfg.gates || !(flags & OAE_F_CONTROL))))
        return -3;
    if (l->phase != OAE_PHASE_LIVE)
        return -2;
    if (l->out_hi - l->out_settled >= l->cfg.window || l->out_hi == UINT32_MAX ||
        (l->abort_hi && l->out_settled < l->abort_hi))
        return -1;
    int beat = !busy(l) && !waiting(l) && !is_leader(l);
    uint32_t t = ++l->out_hi;
    out_slot *s = oslot(l, t);
    s->state = OAE_ST_TENTATIVE;
    s->flags = flags;
    s->gate = gated ? GATE_CLOSED : GATE_NONE;
    s->len = (uint8_t)len;
    memset(s->payload, 0, OAE_PAYLOAD_MAX);
    if (len)
        memcpy(s->payload, payload, len);
    if (tid_out)
        *tid_out = t;
    wake(l, beat);
    durable_changed(l);
    return 0;
}

void oae_link_release(oae_link *l, uint32_t n)
{
    l->in_unreleased -= n < l->in_unreleased ? n : l->in_unreleased;
}

void oae_link_set_epoch(oae_link *l, uint32_t epoch)
{
    if (epoch != l->cfg.epoch) {
        /* a peer may be re-offering transfers of this epoch: do not hold the token */
        if (l->phase == OAE_PHASE_LIVE && l->t_answer != NEVER)
            l->t_answer = 0;
        l->cfg.epoch = epoch;
        if (!l->cfg.volatile_epoch)
            durable_changed(l);
    }
}

int oae_link_idle(const oae_link *l)
{
    if (l->phase == OAE_PHASE_DISCOVER)
        return 1;
    /* with gates the peer holds its answer while its application decides, which this end
     * cannot see: a gated link always waits where the application can wake it */
    return l->phase == OAE_PHASE_LIVE && l->cfg.idle_ns && (!busy(l) || l->cfg.gates);
}

/* ---- gated CONTROL transfers and reset (docs/protocol.md 7.11) -------------------- */

/* 0 if tid is the offer the application decides on (gates, LIVE), else why not */
static int check_pending(const oae_link *l, uint32_t tid)
{
    if (!l->cfg.gates)
        return OAE_GATE_INVALID;
    if (l->phase != OAE_PHASE_LIVE)
        return OAE_GATE_NOT_LIVE;
    if (!(l->in_offered > l->in_held && tid == l->in_offered))
        return OAE_GATE_NOT_NOW;
    return 0;
}

int oae_link_hold(oae_link *l, uint32_t tid)
{
    int rc = check_pending(l, tid);
    if (rc)
        return rc;
    islot(l, tid)->tid = tid;
    l->in_held = tid;
    wake(l, 1);
    return 0;
}

int oae_link_refuse(oae_link *l, uint32_t tid)
{
    int rc = check_pending(l, tid);
    if (rc)
        return rc;
    l->refusing = tid; /* sticky REFUSE: the sender reverses tid and every later one */
    l->in_offered = l->in_held;
    wake(l, 1);
    return 0;
}

int oae_link_report(oae_link *l, uint32_t tid)
{
    if (!l->cfg.gates)
        return OAE_GATE_INVALID;
    if (tid > l->in_delivered)
        return OAE_GATE_NOT_NOW;
    if (tid <= l->in_reported)
        return 0;
    l->in_reported = tid;
    advance_report(l);
    wake(l, 1);
    return 0;
}

int oae_link_commit(oae_link *l, uint32_t tid)
{
    if (!l->cfg.gates || tid == 0 || tid > l->out_hi)
        return OAE_GATE_INVALID;
    if (l->phase != OAE_PHASE_LIVE)
        return OAE_GATE_NOT_LIVE;
    if (tid <= l->out_settled)
        return OAE_GATE_NOT_NOW; /* settled (and maybe forgotten) */
    out_slot *s = oslot(l, tid);
    if (tid <= l->out_known || s->gate == GATE_NONE)
        return OAE_GATE_INVALID;
    if (!gate_closed(l, tid) || tid > l->out_peer_held)
        return OAE_GATE_NOT_NOW; /* released, reversed, or not reflected yet */
    s->gate = GATE_OPEN;
    advance_commit(l);
    wake(l, 1);
    return 0;
}

int oae_link_reset(oae_link *l, uint64_t now)
{
    if (l->phase == OAE_PHASE_DISCOVER)
        return OAE_GATE_NOT_LIVE;
    link_down(l, OAE_DOWN_RESET);
    l->phase = OAE_PHASE_DISCOVER;
    l->t_hello = now;
    l->t_rto = l->t_dead = l->t_answer = NEVER;
    l->owe_hello = l->owe_reconcile = 0;
    return 0;
}

void oae_link_stats_get(const oae_link *l, oae_link_stats *o)
{
    *o = l->st;
    o->phase = l->phase;
    o->out_hi = l->out_hi;
    o->out_commit = l->out_commit;
    o->out_peer_held = l->out_peer_held;
    o->out_settled = l->out_settled;
    o->in_held = l->in_held;
    o->in_delivered = l->in_delivered;
    o->in_released = l->in_delivered - l->in_unreleased;
    o->in_refusing = l->refusing;
    o->peer_nonce = l->peer_nonce;
    o->in_offered = l->in_offered;
    o->in_reported = l->in_reported;
}

void oae_link_durable_get(const oae_link *l, oae_link_durable *d)
{
    memset(d, 0, sizeof *d);
    d->version = OAE_LINK_DURABLE_VERSION;
    d->has_peer = (uint8_t)(l->bound && l->confirmed);
    memcpy(d->peer_mac, l->peer_mac, 6);
    d->out_hi = l->out_hi;
    d->out_settled = l->out_settled;
    d->abort_lo = l->abort_lo;
    d->abort_hi = l->abort_hi;
    d->in_delivered = reported_delivered(l);
    d->epoch = l->cfg.epoch;
    ((oae_link *)l)->snap_gen = l->gen;
}

void oae_link_persisted(oae_link *l)
{
    if (!l->dirty)
        return;
    if (l->snap_gen == l->gen)
        l->dirty = 0;
    else
        push(l, OAE_EV_PERSIST, 0);
}

int oae_link_transfer_state(const oae_link *l, int incoming, uint32_t tid)
{
    int live = l->phase == OAE_PHASE_LIVE;
    if (incoming) {
        if (tid == 0 || tid > l->in_held)
            return OAE_ST_IDLE;
        if (tid <= reported_delivered(l))
            return OAE_ST_COMMITTED;
        return live ? OAE_ST_TENTATIVE : OAE_ST_INDEFINITE;
    }
    if (tid == 0 || tid > l->out_hi || l->out_hi - tid >= l->cfg.window)
        return OAE_ST_IDLE; /* never assigned, or settled so long ago that it is forgotten */
    if (in_abort(l, tid))
        return OAE_ST_ABORTED;
    if (tid <= l->out_known) /* assigned before a restart: the outcome is not kept */
        return tid <= l->out_settled ? OAE_ST_IDLE : OAE_ST_INDEFINITE;
    uint8_t st = l->out[tid % l->cfg.window].state;
    if (!live && tid > l->out_settled && st != OAE_ST_ABORTED)
        return OAE_ST_INDEFINITE;
    return st;
}
