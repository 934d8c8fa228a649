/* oae link simulator (see linksim.h): two engines, an impaired wire, a virtual clock, and
 * an application per end that checks the AIT contract as it goes (and, with gates, makes
 * the gate decisions after random delays and checks the gate invariants). */
#include "linksim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEAP_MAX 8192
#define OUT_BATCH 256

/* heaps hold items that begin with (at, order): earliest first, ties in insertion order */
typedef struct pkt {
    uint64_t at, order;
    int to;
    uint8_t buf[OAE_FRAME_LEN];
} pkt;

/* an application decision due at `at` (gates): on OFFERED hold or refuse, on REFLECTED
 * commit or reset, on a CONTROL DELIVERED report; void if its process died meanwhile */
enum { D_OFFERED, D_REFLECTED, D_DELIVERED };
typedef struct decision {
    uint64_t at, order;
    int who, kind;
    uint32_t life, tid;
} decision;


typedef struct side {
    oae_link *l;
    oae_link_config cfg;
    oae_link_durable dur;
    int has_dur;
    uint64_t down_until;    /* crashed: frames to it are lost until then */
    uint32_t offered;       /* my tids 1..offered were assigned */
    uint8_t *outcome;       /* per my tid: 0 open, 1 committed, 2 aborted */
    uint8_t *got;           /* per peer tid: times delivered (durably, with the registers) */
    uint32_t last_delivered;
    uint32_t *pend;         /* delivered peer tids not yet covered by a finished write */
    size_t npend;
    uint32_t durable_last;  /* highest peer tid durably delivered */
    oae_link_durable snap;  /* the snapshot being written */
    int writing;
    uint64_t write_done;
    uint32_t unreleased;
    uint64_t next_release;
    uint64_t next_offer;    /* offer_ns: when this end offers its next transfer */
    uint32_t restarts;
    /* gates: what the application did (kept across restarts, as an oracle) */
    uint8_t *control, *gated; /* per my tid: offered CONTROL / gated */
    uint8_t *committed;     /* per my tid: my application committed it */
    uint8_t *held;          /* per peer tid: my application held it */
    uint32_t reported;      /* highest peer tid my application reported */
    uint32_t kind_tid;      /* the tid whose kind (control, gated) was drawn last */
} side;

typedef struct sim {
    const oae_sim_config *cfg;
    oae_sim_result *res;
    uint64_t rng, now, order;
    pkt *wire;              /* frames in flight (a heap) */
    size_t nwire;
    decision *todo;         /* application decisions (a heap) */
    size_t ntodo, todo_cap;
    side s[2];
} sim;

static uint64_t rnd(sim *m)
{
    m->rng ^= m->rng >> 12;
    m->rng ^= m->rng << 25;
    m->rng ^= m->rng >> 27;
    return m->rng * 0x2545F4914F6CDD1DULL;
}

static int chance(sim *m, uint32_t ppm) { return ppm && rnd(m) % 1000000u < ppm; }

static void violation(sim *m, const char *what, int side, uint32_t tid)
{
    if (m->res->violations++ == 0)
        snprintf(m->res->first_violation, sizeof m->res->first_violation,
                 "%s (end %c, tid %u, t=%llu ns)", what, side ? 'B' : 'A', tid,
                 (unsigned long long)m->now);
}

/* A binary min-heap of T by (at, order) in an array: NAME_push (returns -1 if full, the
 * item is not added) and NAME_pop.  Generated per type so that items move as structs. */
#define HEAP(T, NAME)                                                                      \
    static int NAME##_earlier(const T *a, const T *b)                                       \
    {                                                                                      \
        return a->at < b->at || (a->at == b->at && a->order < b->order);                   \
    }                                                                                      \
    static int NAME##_push(T *h, size_t *len, size_t cap, const T *x)                      \
    {                                                                                      \
        if (*len == cap)                                                                   \
            return -1;                                                                     \
        size_t i = (*len)++;                                                               \
        h[i] = *x;                                                                         \
        while (i > 0 && NAME##_earlier(&h[i], &h[(i - 1) / 2])) {                          \
            T t = h[i];                                                                    \
            h[i] = h[(i - 1) / 2];                                                         \
            h[(i - 1) / 2] = t;                                                            \
            i = (i - 1) / 2;                                                               \
        }                                                                                  \
        return 0;                                                                          \
    }                                                                                      \
    static void NAME##_pop(T *h, size_t *len, T *out)                                      \
    {                                                                                      \
        *out = h[0];                                                                       \
        h[0] = h[--*len];                                                                  \
        size_t i = 0;                                                                      \
        for (;;) {                                                                         \
            size_t l = 2 * i + 1, r = l + 1, s = i;                                        \
            if (l < *len && NAME##_earlier(&h[l], &h[s]))                                  \
                s = l;                                                                     \
            if (r < *len && NAME##_earlier(&h[r], &h[s]))                                  \
                s = r;                                                                     \
            if (s == i)                                                                    \
                break;                                                                     \
            T t = h[i];                                                                    \
            h[i] = h[s];                                                                   \
            h[s] = t;                                                                      \
            i = s;                                                                         \
        }                                                                                  \
    }

HEAP(pkt, wire)
HEAP(decision, todo)

static int wire_down(sim *m, uint64_t t)
{
    const oae_sim_config *c = m->cfg;
    return c->flap_every_ns && t % c->flap_every_ns >= c->flap_every_ns - c->flap_ns;
}

static void send_frame(sim *m, int from, const uint8_t *buf)
{
    const oae_sim_config *c = m->cfg;
    m->res->frames++;
    if (wire_down(m, m->now) || chance(m, c->loss_ppm)) {
        m->res->frames_lost++;
        return;
    }
    int copies = 1;
    if (chance(m, c->dup_ppm)) {
        copies = 2;
        m->res->frames_duplicated++;
    }
    for (int k = 0; k < copies; k++) {
        pkt p;
        p.to = !from;
        p.at = m->now + c->latency_ns;
        if (chance(m, c->reorder_ppm)) {
            uint64_t span = c->reorder_ns ? c->reorder_ns : 2 * c->latency_ns;
            p.at += 1 + rnd(m) % (span + 1);
            m->res->frames_reordered++;
        }
        p.order = m->order++;
        memcpy(p.buf, buf, OAE_FRAME_LEN);
        if (chance(m, c->corrupt_ppm)) {
            uint64_t bit = rnd(m) % (OAE_FRAME_LEN * 8);
            p.buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            m->res->frames_corrupted++;
        }
        if (wire_push(m->wire, &m->nwire, HEAP_MAX, &p) < 0)
            m->res->frames_lost++;
    }
}

static void payload_of(int from, uint32_t tid, uint8_t *p)
{
    p[0] = (uint8_t)from;
    for (int i = 0; i < 4; i++) {
        p[1 + i] = (uint8_t)(tid >> (24 - 8 * i));
        p[5 + i] = (uint8_t)(~tid >> (24 - 8 * i));
    }
}

static int is_payload(const oae_event *e, int from)
{
    uint8_t want[9];
    payload_of(from, e->tid, want);
    return e->length == 9 && memcmp(e->payload, want, 9) == 0;
}

/* my application's decision on an event, after a random delay */
static void schedule(sim *m, int who, int kind, uint32_t tid)
{
    decision d = {.at = m->now + (m->cfg->decide_ns ? rnd(m) % (m->cfg->decide_ns + 1) : 0),
                  .order = m->order++, .who = who, .kind = kind,
                  .life = m->s[who].restarts, .tid = tid};
    if (todo_push(m->todo, &m->ntodo, m->todo_cap, &d) < 0)
        violation(m, "decision queue full", who, tid);
}

static void decide(sim *m, const decision *d)
{
    side *s = &m->s[d->who];
    oae_sim_result *r = m->res;
    int rc;
    switch (d->kind) {
    case D_OFFERED:
        if (chance(m, m->cfg->refuse_ppm)) {
            rc = oae_link_refuse(s->l, d->tid);
            r->refusals += rc == 0;
        } else if ((rc = oae_link_hold(s->l, d->tid)) == 0) {
            s->held[d->tid] = 1;
            r->holds++;
        }
        break;
    case D_REFLECTED:
        if (chance(m, m->cfg->reset_ppm)) {
            rc = oae_link_reset(s->l, m->now);
            r->resets += rc == 0;
        } else if ((rc = oae_link_commit(s->l, d->tid)) == 0) {
            s->committed[d->tid] = 1;
            r->commits++;
        }
        break;
    default:
        if ((rc = oae_link_report(s->l, d->tid)) == 0) {
            if (d->tid > s->reported)
                s->reported = d->tid;
            r->reports++;
        }
        break;
    }
    /* too late (the link went down, a round settled it) is normal; invalid is not */
    if (rc == OAE_GATE_INVALID)
        violation(m, "a gate call on a transfer it was made for is invalid", d->who, d->tid);
}

static void settle_out(sim *m, int who, const oae_event *e, uint8_t outcome)
{
    side *s = &m->s[who];
    if (e->tid == 0 || e->tid > s->offered) {
        violation(m, "outcome for a tid never offered", who, e->tid);
        return;
    }
    if (e->flags & OAE_EVF_ROUND)
        m->res->round_outcomes++;
    else if (outcome == 1 && m->cfg->gates && s->control[e->tid] &&
             m->s[!who].reported < e->tid)
        violation(m, "committed before the receiver's application reported it", who, e->tid);
    uint8_t *o = &s->outcome[e->tid];
    if (*o && *o != outcome) {
        violation(m, "transfer settled both ways", who, e->tid);
        return;
    }
    if (*o) {
        if (!(e->flags & OAE_EVF_RESTORED))
            violation(m, "outcome reported twice", who, e->tid);
        m->res->renotified++;
        return;
    }
    *o = outcome;
    if (outcome == 1) {
        m->res->committed[who]++;
    } else {
        if (!(e->flags & OAE_EVF_RESTORED) && !is_payload(e, who))
            violation(m, "aborted transfer's payload not handed back", who, e->tid);
        m->res->aborted[who]++;
    }
}

/* The snapshot is on stable storage: the application's deliveries up to its in_delivered
 * become durable with it (the application stores both in one write). */
static void write_done(sim *m, int who)
{
    side *s = &m->s[who];
    s->dur = s->snap;
    s->has_dur = 1;
    s->writing = 0;
    size_t keep = 0;
    for (size_t i = 0; i < s->npend; i++) {
        uint32_t t = s->pend[i];
        if (t <= s->dur.in_delivered) {
            if (s->got[t]++)
                violation(m, "delivered twice", who, t);
            s->durable_last = t;
            m->res->delivered[!who]++;
        } else {
            s->pend[keep++] = t;
        }
    }
    s->npend = keep;
    oae_link_persisted(s->l);
}

static void handle_events(sim *m, int who)
{
    side *s = &m->s[who];
    oae_event ev[64];
    size_t n;
    while ((n = oae_link_poll_events(s->l, ev, 64)) > 0) {
        for (size_t i = 0; i < n; i++) {
            const oae_event *e = &ev[i];
            switch (e->type) {
            case OAE_EV_PERSIST:
                if (!s->writing) {
                    oae_link_durable_get(s->l, &s->snap);
                    s->writing = 1;
                    s->write_done = m->now + m->cfg->persist_ns;
                    if (m->cfg->persist_ns == 0)
                        write_done(m, who);
                }
                break;
            case OAE_EV_LINK_UP:
                m->res->links_up++;
                break;
            case OAE_EV_DELIVERED: {
                side *peer = &m->s[!who];
                if (!is_payload(e, !who))
                    violation(m, "delivered payload is not the transfer's", who, e->tid);
                else if (e->tid <= s->last_delivered || s->got[e->tid])
                    violation(m, "delivered twice or out of order", who, e->tid);
                s->last_delivered = e->tid;
                s->pend[s->npend++] = e->tid;
                s->unreleased++;
                if (m->cfg->gates && (e->data_flags & OAE_F_CONTROL)) {
                    if (!s->held[e->tid])
                        violation(m, "delivered a CONTROL transfer its application did not hold",
                                  who, e->tid);
                    if (peer->gated[e->tid] && !peer->committed[e->tid])
                        violation(m, "delivered a gated transfer the sender did not commit",
                                  who, e->tid);
                    schedule(m, who, D_DELIVERED, e->tid);
                }
                break;
            }
            case OAE_EV_OFFERED:
                if (!is_payload(e, !who) || !m->s[!who].control[e->tid])
                    violation(m, "offered is not the peer's CONTROL transfer", who, e->tid);
                schedule(m, who, D_OFFERED, e->tid);
                break;
            case OAE_EV_REFLECTED:
                if (!is_payload(e, who) || !s->gated[e->tid])
                    violation(m, "reflected is not my gated transfer", who, e->tid);
                else if (!m->s[!who].held[e->tid])
                    violation(m, "reflected a transfer the receiver's application did not hold",
                              who, e->tid);
                schedule(m, who, D_REFLECTED, e->tid);
                break;
            case OAE_EV_COMMITTED:
                settle_out(m, who, e, 1);
                break;
            case OAE_EV_ABORTED:
                settle_out(m, who, e, 2);
                break;
            default:
                break;
            }
        }
    }
}

static void start(sim *m, int who)
{
    side *s = &m->s[who];
    s->cfg.nonce = (who ? 0x20000000u : 0x10000000u) + ++s->restarts;
    s->l = oae_link_new(&s->cfg, s->has_dur ? &s->dur : NULL);
    if (!s->l)
        violation(m, "engine refused its own durable registers", who, 0);
}

static void crash(sim *m, int who)
{
    side *s = &m->s[who];
    oae_link_free(s->l);
    s->l = NULL;
    s->unreleased = 0;
    /* what was not yet written dies with the process: unfinished writes, deliveries they
     * would have covered, and offers whose tid was never stored (so never sent) */
    s->writing = 0;
    s->npend = 0;
    s->last_delivered = s->durable_last;
    uint32_t stored = s->has_dur ? s->dur.out_hi : 0;
    for (uint32_t t = stored + 1; t <= s->offered; t++) {
        /* such a tid never left (frames wait for the write): it can only have been
         * reversed locally, and its number will be used again */
        if (s->outcome[t] == 1)
            violation(m, "committed a tid that was never stored", who, t);
        if (s->outcome[t] == 2)
            m->res->aborted[who]--;
        s->outcome[t] = 0;
        s->control[t] = s->gated[t] = s->committed[t] = 0;
    }
    if (s->offered > stored) {
        m->res->offered[who] -= s->offered - stored;
        s->offered = stored;
    }
    s->down_until = m->now + 4 * m->cfg->latency_ns + 1;
    m->res->crashes++;
}

static void app_step(sim *m, int who)
{
    side *s = &m->s[who];
    const oae_sim_config *c = m->cfg;
    if (c->release_ns == 0) {
        oae_link_release(s->l, s->unreleased);
        s->unreleased = 0;
    } else {
        while (s->unreleased && m->now >= s->next_release) {
            oae_link_release(s->l, 1);
            s->unreleased--;
            s->next_release = m->now + c->release_ns;
        }
    }
    while (s->offered < c->transfers && m->now >= s->next_offer) {
        uint8_t p[9];
        uint32_t tid;
        payload_of(who, s->offered + 1, p);
        /* (drawn once per tid, so that an offer the engine cannot take yet keeps its kind) */
        uint32_t t = s->offered + 1;
        if (s->kind_tid != t) {
            s->kind_tid = t;
            s->control[t] = chance(m, c->control_ppm);
            s->gated[t] = s->control[t] && c->gates && chance(m, c->gated_ppm);
        }
        uint8_t flags = (s->control[t] ? OAE_F_CONTROL : 0) | (s->gated[t] ? OAE_OFFER_GATED : 0);
        int rc = oae_link_offer(s->l, p, 9, flags, &tid);
        if (rc != 0)
            break;
        if (tid != t) {
            violation(m, "tid not consecutive", who, tid);
            break;
        }
        s->offered = tid;
        m->res->offered[who]++;
        if (c->offer_ns) {
            s->next_offer = m->now + c->offer_ns / 2 + rnd(m) % c->offer_ns;
            break;
        }
    }
}

static int finished(sim *m)
{
    for (int w = 0; w < 2; w++) {
        side *s = &m->s[w];
        if (!s->l || s->offered < m->cfg->transfers)
            return 0;
        if (m->res->committed[w] + m->res->aborted[w] < s->offered)
            return 0;
        oae_link_stats st;
        oae_link_stats_get(s->l, &st);
        if (st.phase != OAE_PHASE_LIVE)
            return 0;
    }
    return 1;
}

static uint64_t next_time(sim *m)
{
    uint64_t t = UINT64_MAX;
    if (m->nwire)
        t = m->wire[0].at;
    if (m->ntodo && m->todo[0].at < t)
        t = m->todo[0].at;
    for (int w = 0; w < 2; w++) {
        side *s = &m->s[w];
        uint64_t u = s->l ? oae_link_next_timeout(s->l) : s->down_until;
        if (u < t)
            t = u;
        if (s->l && s->unreleased && m->cfg->release_ns && s->next_release < t)
            t = s->next_release;
        if (s->l && s->writing && s->write_done < t)
            t = s->write_done;
        if (s->l && m->cfg->offer_ns && s->offered < m->cfg->transfers &&
            s->next_offer > m->now && s->next_offer < t)
            t = s->next_offer; /* (an offer due but refused is retried at the next event) */
    }
    return t < m->now ? m->now : t;
}

int oae_sim_run(const oae_sim_config *c, oae_sim_result *res)
{
    memset(res, 0, sizeof *res);
    if (!c || c->transfers == 0 || c->latency_ns == 0 || c->max_virtual_ns == 0 ||
        (c->flap_every_ns && c->flap_ns >= c->flap_every_ns)) {
        snprintf(res->first_violation, sizeof res->first_violation, "invalid sim config");
        res->violations = 1;
        return -1;
    }
    sim m;
    memset(&m, 0, sizeof m);
    m.cfg = c;
    m.res = res;
    m.rng = c->seed * 0x9E3779B97F4A7C15ULL + 1;
    /* at most one OFFERED, REFLECTED and DELIVERED per tid and direction */
    m.todo_cap = c->gates ? 6 * (size_t)c->transfers + 64 : 0;
    m.wire = malloc(HEAP_MAX * sizeof *m.wire);
    m.todo = malloc((m.todo_cap ? m.todo_cap : 1) * sizeof *m.todo);
    int heaps = m.wire && m.todo;
    uint8_t *out = malloc(OUT_BATCH * OAE_FRAME_LEN);
    for (int w = 0; w < 2; w++) {
        side *s = &m.s[w];
        oae_link_config *k = &s->cfg;
        memset(k, 0, sizeof *k);
        uint8_t a[6] = {0x02, 0, 0, 0, 0, 0x0a}, b[6] = {0x02, 0, 0, 0, 0, 0x0b};
        memcpy(k->mac, w ? b : a, 6);
        k->window = c->window;
        k->beat = c->beat;
        k->rx_capacity = c->rx_capacity;
        k->rto_ns = c->rto_ns;
        k->dead_ns = c->dead_ns;
        k->hello_ns = c->hello_ns;
        k->idle_ns = c->idle_ns;
        k->has_key = c->has_key;
        for (int i = 0; i < 16; i++)
            k->key[i] = (uint8_t)(0xA0 + i);
        k->persist = 1;
        k->gates = c->gates;
        size_t n = (size_t)c->transfers + 2;
        s->outcome = calloc(n, 1);
        s->got = calloc(n, 1);
        s->pend = calloc(n, sizeof *s->pend);
        s->control = calloc(n, 1);
        s->gated = calloc(n, 1);
        s->committed = calloc(n, 1);
        s->held = calloc(n, 1);
    }
    int ok = heaps && out;
    for (int w = 0; w < 2; w++)
        ok = ok && m.s[w].outcome && m.s[w].got && m.s[w].pend && m.s[w].control &&
             m.s[w].gated && m.s[w].committed && m.s[w].held;
    if (ok) {
        start(&m, 0);
        start(&m, 1);
    }
    uint64_t next_flap_crash = c->crash_every_ns;
    int crash_who = 0;
    while (ok && !res->violations) {
        if (finished(&m))
            break;
        if (m.now > c->max_virtual_ns) {
            violation(&m, "did not settle every transfer in time", 0, 0);
            break;
        }
        /* the applications' decisions due now, then frames */
        while (m.ntodo && m.todo[0].at <= m.now) {
            decision d;
            todo_pop(m.todo, &m.ntodo, &d);
            if (m.s[d.who].l && d.life == m.s[d.who].restarts)
                decide(&m, &d);
        }
        while (m.nwire && m.wire[0].at <= m.now) {
            pkt p;
            wire_pop(m.wire, &m.nwire, &p);
            side *s = &m.s[p.to];
            if (!s->l || wire_down(&m, m.now)) {
                res->frames_lost++;
                continue;
            }
            oae_link_on_frame(s->l, p.buf, OAE_FRAME_LEN, m.now);
            if (c->crash_every_ns && m.now >= next_flap_crash && p.to == crash_who) {
                crash(&m, p.to); /* mid-batch: its unpolled events die with it */
                next_flap_crash = m.now + c->crash_every_ns;
                crash_who = !crash_who;
            }
        }
        for (int w = 0; w < 2; w++) {
            side *s = &m.s[w];
            if (!s->l) {
                if (m.now >= s->down_until)
                    start(&m, w);
                if (!s->l)
                    continue;
            }
            if (s->writing && m.now >= s->write_done)
                write_done(&m, w);
            if (oae_link_next_timeout(s->l) <= m.now)
                oae_link_on_timeout(s->l, m.now);
            handle_events(&m, w);
            app_step(&m, w);
            handle_events(&m, w);
            size_t n;
            while ((n = oae_link_poll_tx(s->l, out, OUT_BATCH, m.now)) > 0)
                for (size_t i = 0; i < n; i++)
                    send_frame(&m, w, out + i * OAE_FRAME_LEN);
        }
        m.now = next_time(&m);
    }
    if (ok && !res->violations) {
        /* both ends agree on every transfer */
        for (int w = 0; w < 2; w++) {
            side *s = &m.s[w], *peer = &m.s[!w];
            for (uint32_t t = 1; t <= s->offered; t++) {
                if (s->outcome[t] == 1 && peer->got[t] != 1)
                    violation(&m, "committed at the sender, not delivered once", w, t);
                if (s->outcome[t] == 2 && peer->got[t] != 0)
                    violation(&m, "aborted at the sender but delivered", w, t);
                if (s->outcome[t] == 0)
                    violation(&m, "left indefinite", w, t);
            }
        }
    }
    if (!ok && !res->violations)
        violation(&m, "out of memory", 0, 0);
    res->virtual_ns = m.now;
    res->flaps = c->flap_every_ns ? m.now / c->flap_every_ns : 0;
    for (int w = 0; w < 2; w++) {
        if (m.s[w].l)
            oae_link_stats_get(m.s[w].l, &res->stats[w]);
        oae_link_free(m.s[w].l);
        free(m.s[w].outcome);
        free(m.s[w].got);
        free(m.s[w].pend);
        free(m.s[w].control);
        free(m.s[w].gated);
        free(m.s[w].committed);
        free(m.s[w].held);
    }
    free(m.wire);
    free(m.todo);
    free(out);
    return res->violations ? -1 : 0;
}
