/* oae epoch machine: the twin of oae/epoch/machine.py (see epoch.h).  Each function below
 * carries the name of its Python counterpart and follows it step by step; comments that
 * explain the protocol live there and in docs/convergence.md, not here. */
#include "epoch.h"
#include "bigend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct out_t { /* _Out */
    oae_epoch_wave wave;
    uint32_t tid;
    uint8_t has_tid, committed;
} out_t;

typedef struct in_t { /* _In */
    oae_epoch_wave wave;
    uint32_t tid, info;
    uint8_t held, delivered;
} in_t;

typedef struct link_t { /* _Link */
    uint32_t id;
    int up;
    int has_heard;
    uint32_t heard;
    uint32_t epoch;
    uint32_t n_out;
    out_t out[OAE_EPOCH_OUT_MAX]; /* in offer order */
    int has_offer_after;
    oae_epoch_wave offer_after; /* PROPOSE to send once our older offer is refused */
    uint32_t n_inc;
    in_t inc[OAE_EPOCH_INC_MAX];
    uint32_t delivered, ctl_delivered, reported;
    uint64_t unsettled_app, logged;
    uint64_t unsettled_ctl; /* our status messages to the peer this session, not settled */
} link_t;

typedef struct wave_t { /* _Wave; sets are bitmaps of link indices */
    oae_epoch_wave wave;
    int has_parent;
    uint32_t parent;
    uint64_t waiting, children, crossing, marked;
    int written, accepted;
} wave_t;

typedef struct deferred_t {
    oae_epoch_wave wave;
    uint64_t senders;
} deferred_t;

#define DEFERRED_MAX (OAE_EPOCH_LINKS_MAX * OAE_EPOCH_INC_MAX) /* one inc entry each */

struct oae_epoch {
    uint32_t node_id;
    oae_epoch_record rec;
    size_t n; /* links, ascending ids */
    link_t links[OAE_EPOCH_LINKS_MAX];
    int in_wave;
    wave_t wave;
    uint32_t n_deferred; /* in insertion order, as the Python dict */
    deferred_t deferred[DEFERRED_MAX];
    uint64_t done_from;
    int done_sent, converged_reported;
    oae_epoch_counters ctr;
    int failed;
    int err; /* raised during the current input */
    size_t n_act;
    oae_epoch_action act[OAE_EPOCH_ACTIONS_MAX];
    oae_epoch_action scratch; /* where actions past the bound go (the input then fails) */
    size_t n_pers;
    uint16_t pers_len[OAE_EPOCH_PERSISTS_MAX];
    uint8_t pers[OAE_EPOCH_PERSISTS_MAX][OAE_EPOCH_RECORD_MAX];
};

/* ------------------------------------------------------------------ waves, bytes */

static int wave_cmp(const oae_epoch_wave *a, const oae_epoch_wave *b)
{
    if (a->epoch != b->epoch)
        return a->epoch < b->epoch ? -1 : 1;
    if (a->attempt != b->attempt)
        return a->attempt < b->attempt ? -1 : 1;
    if (a->initiator != b->initiator)
        return a->initiator < b->initiator ? -1 : 1;
    return 0;
}

static int wave_eq(const oae_epoch_wave *a, const oae_epoch_wave *b)
{
    return wave_cmp(a, b) == 0;
}

static void put_wave(uint8_t *p, const oae_epoch_wave *w)
{
    put32(p, w->epoch);
    put32(p + 4, w->attempt);
    put32(p + 8, w->initiator);
}

static oae_epoch_wave get_wave(const uint8_t *p)
{
    oae_epoch_wave w = {get32(p), get32(p + 4), get32(p + 8)};
    return w;
}

/* messages.py: Message.encode / decode (0: ok, -1: MessageError) */
static void msg_encode(uint8_t *out, int kind, const oae_epoch_wave *w)
{
    out[0] = (uint8_t)(0xE0 | kind);
    put_wave(out + 1, w);
}

static int msg_decode(const uint8_t *p, size_t len, int *kind, oae_epoch_wave *w)
{
    if (len < 1 || (p[0] & 0xF0) != 0xE0)
        return -1;
    int k = p[0] & 0x0F;
    if (k != OAE_EPOCH_PROPOSE && k != OAE_EPOCH_ABORT && k != OAE_EPOCH_COMMIT &&
        k != OAE_EPOCH_PREPARED && k != OAE_EPOCH_DONE)
        return -1;
    if (len != OAE_EPOCH_MSG_LEN)
        return -1;
    *kind = k;
    *w = get_wave(p + 1);
    return 0;
}

/* ------------------------------------------------------------------ the record */

void oae_epoch_record_init(oae_epoch_record *r)
{
    memset(r, 0, sizeof *r);
    r->next_attempt = 1;
}

enum { F_TREE_PARENT = 1, F_PREPARED = 2, F_PREPARED_PARENT = 4, F_INITIATING = 8 };

size_t oae_epoch_record_encode(const oae_epoch_record *r, uint8_t *out)
{
    static const oae_epoch_wave none;
    memset(out, 0, OAE_EPOCH_RECORD_HDR);
    out[0] = OAE_EPOCH_RECORD_VERSION;
    out[1] = (uint8_t)((r->has_tree_parent ? F_TREE_PARENT : 0) |
                       (r->has_prepared ? F_PREPARED : 0) |
                       (r->has_prepared_parent ? F_PREPARED_PARENT : 0) |
                       (r->has_initiating ? F_INITIATING : 0));
    out[2] = (uint8_t)r->n_tree_children;
    out[3] = (uint8_t)r->n_committed_log;
    out[4] = (uint8_t)r->n_prepared_children;
    out[5] = (uint8_t)r->n_prepared_log;
    out[6] = (uint8_t)r->n_aborted;
    put_wave(out + 8, &r->committed);
    put32(out + 20, r->has_tree_parent ? r->tree_parent : 0);
    put_wave(out + 24, r->has_prepared ? &r->prepared : &none);
    put32(out + 36, r->has_prepared_parent ? r->prepared_parent : 0);
    put_wave(out + 40, r->has_initiating ? &r->initiating : &none);
    put64(out + 52, r->next_attempt);
    uint8_t *p = out + OAE_EPOCH_RECORD_HDR;
    for (uint32_t i = 0; i < r->n_tree_children; i++, p += 4)
        put32(p, r->tree_children[i]);
    for (uint32_t i = 0; i < r->n_committed_log; i++, p += 12) {
        put32(p, r->committed_log[i].link);
        put64(p + 4, r->committed_log[i].frames);
    }
    for (uint32_t i = 0; i < r->n_prepared_children; i++, p += 4)
        put32(p, r->prepared_children[i]);
    for (uint32_t i = 0; i < r->n_prepared_log; i++, p += 12) {
        put32(p, r->prepared_log[i].link);
        put64(p + 4, r->prepared_log[i].frames);
    }
    for (uint32_t i = 0; i < r->n_aborted; i++, p += 12)
        put_wave(p, &r->aborted[i]);
    return (size_t)(p - out);
}

static int ids_ascending(const uint32_t *a, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++)
        if (a[i - 1] >= a[i])
            return 0;
    return 1;
}

static int zero(const uint8_t *p, size_t n)
{
    while (n--)
        if (*p++)
            return 0;
    return 1;
}

int oae_epoch_record_decode(const uint8_t *buf, size_t len, oae_epoch_record *r)
{
    if (len < OAE_EPOCH_RECORD_HDR || buf[0] != OAE_EPOCH_RECORD_VERSION || buf[1] & ~0x0F ||
        buf[7])
        return OAE_EPOCH_ERECORD;
    for (int i = 2; i <= 6; i++)
        if (buf[i] > (i == 6 ? OAE_EPOCH_ABORTED_MAX : OAE_EPOCH_LINKS_MAX))
            return OAE_EPOCH_ERECORD;
    oae_epoch_record_init(r);
    r->n_tree_children = buf[2];
    r->n_committed_log = buf[3];
    r->n_prepared_children = buf[4];
    r->n_prepared_log = buf[5];
    r->n_aborted = buf[6];
    size_t want = OAE_EPOCH_RECORD_HDR + 4 * (r->n_tree_children + r->n_prepared_children) +
                  12 * (r->n_committed_log + r->n_prepared_log + r->n_aborted);
    if (len != want)
        return OAE_EPOCH_ERECORD;
    r->has_tree_parent = !!(buf[1] & F_TREE_PARENT);
    r->has_prepared = !!(buf[1] & F_PREPARED);
    r->has_prepared_parent = !!(buf[1] & F_PREPARED_PARENT);
    r->has_initiating = !!(buf[1] & F_INITIATING);
    /* absent fields are zero: one encoding per record */
    if ((!r->has_tree_parent && !zero(buf + 20, 4)) || (!r->has_prepared && !zero(buf + 24, 12)) ||
        (!r->has_prepared_parent && !zero(buf + 36, 4)) ||
        (!r->has_initiating && !zero(buf + 40, 12)))
        return OAE_EPOCH_ERECORD;
    r->committed = get_wave(buf + 8);
    r->tree_parent = get32(buf + 20);
    r->prepared = get_wave(buf + 24);
    r->prepared_parent = get32(buf + 36);
    r->initiating = get_wave(buf + 40);
    r->next_attempt = get64(buf + 52);
    const uint8_t *p = buf + OAE_EPOCH_RECORD_HDR;
    for (uint32_t i = 0; i < r->n_tree_children; i++, p += 4)
        r->tree_children[i] = get32(p);
    for (uint32_t i = 0; i < r->n_committed_log; i++, p += 12) {
        r->committed_log[i].link = get32(p);
        r->committed_log[i].frames = get64(p + 4);
    }
    for (uint32_t i = 0; i < r->n_prepared_children; i++, p += 4)
        r->prepared_children[i] = get32(p);
    for (uint32_t i = 0; i < r->n_prepared_log; i++, p += 12) {
        r->prepared_log[i].link = get32(p);
        r->prepared_log[i].frames = get64(p + 4);
    }
    for (uint32_t i = 0; i < r->n_aborted; i++, p += 12) {
        r->aborted[i] = get_wave(p);
        if (i && wave_cmp(&r->aborted[i - 1], &r->aborted[i]) >= 0)
            return OAE_EPOCH_ERECORD; /* a set: ascending, no repeats */
    }
    if (!ids_ascending(r->tree_children, r->n_tree_children) ||
        !ids_ascending(r->prepared_children, r->n_prepared_children))
        return OAE_EPOCH_ERECORD;
    return 0;
}

static int aborted_has(const oae_epoch_record *r, const oae_epoch_wave *w)
{
    for (uint32_t i = 0; i < r->n_aborted; i++)
        if (wave_eq(&r->aborted[i], w))
            return 1;
    return 0;
}

/* ------------------------------------------------------------------ plumbing */

static int idx(const oae_epoch *m, uint32_t id)
{
    size_t lo = 0, hi = m->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->links[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < m->n && m->links[lo].id == id ? (int)lo : -1;
}

static uint64_t bit(int i)
{
    return 1ull << i;
}

static oae_epoch_action *emit(oae_epoch *m, int type)
{
    oae_epoch_action *a = &m->scratch;
    if (m->n_act < OAE_EPOCH_ACTIONS_MAX)
        a = &m->act[m->n_act++];
    else if (!m->err)
        m->err = OAE_EPOCH_EFULL;
    memset(a, 0, sizeof *a);
    a->type = (uint8_t)type;
    return a;
}

static void emit_link(oae_epoch *m, int type, int i, uint32_t tid)
{
    oae_epoch_action *a = emit(m, type);
    a->link = m->links[i].id;
    a->tid = tid;
}

static void emit_wave(oae_epoch *m, int type, const oae_epoch_wave *w)
{
    emit(m, type)->wave = *w;
}

static void emit_offer(oae_epoch *m, int i, int kind, const oae_epoch_wave *w, int gated)
{
    oae_epoch_action *a = emit(m, OAE_EA_OFFER);
    a->link = m->links[i].id;
    a->gated = (uint8_t)gated;
    a->len = OAE_EPOCH_MSG_LEN;
    msg_encode(a->payload, kind, w);
}

/* _status */
static void status_msg(oae_epoch *m, int i, int kind, const oae_epoch_wave *w)
{
    m->links[i].unsettled_ctl++;
    emit_offer(m, i, kind, w, 0);
}

/* Persist(self.rec): the record as it is now */
static void persist(oae_epoch *m)
{
    oae_epoch_action *a = emit(m, OAE_EA_PERSIST);
    if (m->n_pers == OAE_EPOCH_PERSISTS_MAX) {
        if (!m->err)
            m->err = OAE_EPOCH_EFULL;
        return;
    }
    a->tid = (uint32_t)m->n_pers;
    m->pers_len[m->n_pers] = (uint16_t)oae_epoch_record_encode(&m->rec, m->pers[m->n_pers]);
    m->n_pers++;
}

/* remove element k of an array of *n elements of `size` bytes, keeping the order */
static void del_at(void *base, size_t size, uint32_t *n, size_t k)
{
    uint8_t *b = base;
    memmove(b + k * size, b + (k + 1) * size, (*n - k - 1) * size);
    (*n)--;
}

static out_t *out_of(link_t *ls, const oae_epoch_wave *w)
{
    for (uint32_t k = 0; k < ls->n_out; k++)
        if (wave_eq(&ls->out[k].wave, w))
            return &ls->out[k];
    return NULL;
}

static void out_remove(link_t *ls, out_t *o)
{
    del_at(ls->out, sizeof *o, &ls->n_out, (size_t)(o - ls->out));
}

static void out_append(oae_epoch *m, link_t *ls, const oae_epoch_wave *w)
{
    if (ls->n_out == OAE_EPOCH_OUT_MAX) {
        out_remove(ls, &ls->out[0]);
        m->ctr.out_forgotten++;
    }
    out_t *o = &ls->out[ls->n_out++];
    memset(o, 0, sizeof *o);
    o->wave = *w;
}

static in_t *inc_get(link_t *ls, const oae_epoch_wave *w)
{
    for (uint32_t k = 0; k < ls->n_inc; k++)
        if (wave_eq(&ls->inc[k].wave, w))
            return &ls->inc[k];
    return NULL;
}

static void inc_del(link_t *ls, in_t *e)
{
    del_at(ls->inc, sizeof *e, &ls->n_inc, (size_t)(e - ls->inc));
}

/* ls.inc[w] = inc; 0, or -1 if there is no room (entries of waves older than the
 * committed epoch, which nothing looks up again, make room first) */
static int inc_set(oae_epoch *m, link_t *ls, const in_t *e)
{
    in_t *x = inc_get(ls, &e->wave);
    if (!x) {
        for (uint32_t k = 0; ls->n_inc == OAE_EPOCH_INC_MAX && k < ls->n_inc;)
            if (ls->inc[k].wave.epoch < m->rec.committed.epoch)
                inc_del(ls, &ls->inc[k]);
            else
                k++;
        if (ls->n_inc == OAE_EPOCH_INC_MAX)
            return -1;
        x = &ls->inc[ls->n_inc++];
    }
    *x = *e;
    return 0;
}

static deferred_t *deferred_get(oae_epoch *m, const oae_epoch_wave *w)
{
    for (size_t k = 0; k < m->n_deferred; k++)
        if (wave_eq(&m->deferred[k].wave, w))
            return &m->deferred[k];
    return NULL;
}

static void deferred_pop(oae_epoch *m, const oae_epoch_wave *w)
{
    deferred_t *d = deferred_get(m, w);
    if (!d)
        return;
    del_at(m->deferred, sizeof *d, &m->n_deferred, (size_t)(d - m->deferred));
}

/* any(link in s for s in self.deferred.values()) */
static int deferred_from(const oae_epoch *m, int i)
{
    for (size_t k = 0; k < m->n_deferred; k++)
        if (m->deferred[k].senders & bit(i))
            return 1;
    return 0;
}

static int children_have(const oae_epoch_record *r, uint32_t id)
{
    for (uint32_t k = 0; k < r->n_tree_children; k++)
        if (r->tree_children[k] == id)
            return 1;
    return 0;
}

/* a bitmap of link indices as ascending ids (frozenset(...) in a record) */
static uint32_t ids_of(const oae_epoch *m, uint64_t set, uint32_t *out)
{
    uint32_t n = 0;
    for (size_t i = 0; i < m->n; i++)
        if (set & bit((int)i))
            out[n++] = m->links[i].id;
    return n;
}

static uint64_t next_epoch(const oae_epoch *m)
{
    return (uint64_t)m->rec.committed.epoch + 1;
}

/* ------------------------------------------------------------------ wave steps */

static void _abort(oae_epoch *m, const oae_epoch_wave *w);
static void _resume_deferred(oae_epoch *m);

/* _end_session */
static void _end_session(oae_epoch *m, int i)
{
    link_t *ls = &m->links[i];
    ls->up = 0;
    ls->has_heard = 0;
    ls->heard = 0;
    ls->has_offer_after = 0;
    ls->unsettled_ctl = 0;
    ls->n_out = 0;
    ls->n_inc = 0;
    if (m->rec.has_tree_parent && ls->id == m->rec.tree_parent)
        m->done_sent = 0;
    if (m->in_wave)
        m->wave.marked &= ~bit(i);
    size_t k = 0;
    for (size_t j = 0; j < m->n_deferred; j++) {
        m->deferred[j].senders &= ~bit(i);
        if (m->deferred[j].senders)
            m->deferred[k++] = m->deferred[j];
    }
    m->n_deferred = (uint32_t)k;
}

/* any(o.tid is None for o in ls.out) */
static int unreflected(const link_t *ls)
{
    for (uint32_t k = 0; k < ls->n_out; k++)
        if (!ls->out[k].has_tid)
            return 1;
    return 0;
}

/* _propose_to */
static void _propose_to(oae_epoch *m, int i, const oae_epoch_wave *w)
{
    link_t *ls = &m->links[i];
    ls->has_offer_after = 0;
    emit_offer(m, i, OAE_EPOCH_PROPOSE, w, 1);
    out_append(m, ls, w);
}

/* _join */
static void _join(oae_epoch *m, const oae_epoch_wave *w, int parent, uint64_t crossing)
{
    uint64_t others = 0;
    for (size_t i = 0; i < m->n; i++)
        if ((int)i != parent)
            others |= bit((int)i);
    wave_t *st = &m->wave;
    memset(st, 0, sizeof *st);
    st->wave = *w;
    st->has_parent = parent >= 0;
    st->parent = parent >= 0 ? m->links[parent].id : 0;
    st->waiting = others & ~crossing;
    st->crossing = crossing;
    st->marked = crossing | (parent >= 0 ? bit(parent) : 0);
    m->in_wave = 1;
    emit_wave(m, OAE_EA_CAPTURE, w);
    for (size_t i = 0; i < m->n; i++)
        m->links[i].logged = 0;
    for (size_t i = 0; i < m->n; i++) {
        link_t *ls = &m->links[i];
        if (!(others & bit((int)i)) || !ls->up)
            continue;
        if (unreflected(ls)) {
            ls->has_offer_after = 1;
            ls->offer_after = *w;
        } else {
            _propose_to(m, (int)i, w);
        }
    }
}

/* _closed */
static int _closed(oae_epoch *m, int i, const oae_epoch_wave *w)
{
    link_t *ls = &m->links[i];
    in_t *inc = inc_get(ls, w);
    if (!inc)
        return 0;
    int64_t upto = inc->info > ls->delivered ? inc->info : ls->delivered;
    return upto >= (int64_t)inc->tid - 1;
}

/* _hold_crossing */
static void _hold_crossing(oae_epoch *m, int i, const oae_epoch_wave *w)
{
    in_t *inc = inc_get(&m->links[i], w);
    if (inc && !inc->held) {
        inc->held = 1;
        emit_link(m, OAE_EA_HOLD, i, inc->tid);
    }
}

/* _commit */
static void _commit(oae_epoch *m, const oae_epoch_wave *w, const wave_t *st)
{
    oae_epoch_record *r = &m->rec;
    r->committed = *w;
    r->has_tree_parent = (uint8_t)st->has_parent;
    r->tree_parent = st->parent;
    r->n_tree_children = ids_of(m, st->children, r->tree_children);
    r->n_committed_log = r->n_prepared_log;
    memcpy(r->committed_log, r->prepared_log, sizeof r->prepared_log);
    r->has_prepared = 0;
    memset(&r->prepared, 0, sizeof r->prepared);
    r->has_prepared_parent = 0;
    r->prepared_parent = 0;
    r->n_prepared_children = 0;
    r->n_prepared_log = 0;
    r->has_initiating = 0;
    memset(&r->initiating, 0, sizeof r->initiating);
    r->n_aborted = 0;
    persist(m);
    m->in_wave = 0;
    m->done_from = 0;
    m->done_sent = 0;
    m->converged_reported = 0;
    for (size_t i = 0; i < m->n; i++) {
        link_t *ls = &m->links[i];
        if (!ls->up)
            continue;
        out_t *o = out_of(ls, w);
        in_t *inc = inc_get(ls, w);
        if (o && o->has_tid && !o->committed) {
            o->committed = 1;
            emit_link(m, OAE_EA_COMMIT, (int)i, o->tid);
        }
        if (inc)
            _hold_crossing(m, (int)i, w);
        if (!o && !inc)
            status_msg(m, (int)i, OAE_EPOCH_COMMIT, w);
    }
    _resume_deferred(m);
}

/* _abort */
static void _abort(oae_epoch *m, const oae_epoch_wave *w)
{
    oae_epoch_record *r = &m->rec;
    if (!aborted_has(r, w)) {
        uint32_t k = r->n_aborted;
        int keep = 1;
        if (k == OAE_EPOCH_ABORTED_MAX) { /* forget the lowest of the set (epoch.h) */
            m->ctr.aborted_forgotten++;
            keep = wave_cmp(w, &r->aborted[0]) > 0;
            if (keep) {
                memmove(&r->aborted[0], &r->aborted[1], (k - 1) * sizeof *w);
                k--;
            }
        }
        if (keep) {
            r->n_aborted = k + 1;
            while (k > 0 && wave_cmp(&r->aborted[k - 1], w) > 0) {
                r->aborted[k] = r->aborted[k - 1];
                k--;
            }
            r->aborted[k] = *w;
        }
    }
    if (r->has_initiating && wave_eq(&r->initiating, w)) {
        r->has_initiating = 0;
        memset(&r->initiating, 0, sizeof r->initiating);
    }
    if (r->has_prepared && wave_eq(&r->prepared, w)) {
        r->has_prepared = 0;
        memset(&r->prepared, 0, sizeof r->prepared);
        r->has_prepared_parent = 0;
        r->prepared_parent = 0;
        r->n_prepared_children = 0;
        r->n_prepared_log = 0;
    }
    persist(m);
    if (w->initiator == m->node_id) {
        oae_epoch_action *a = emit(m, OAE_EA_DECIDED);
        a->wave = *w;
        a->ok = 0;
    }
    if (m->in_wave && wave_eq(&m->wave.wave, w)) {
        emit_wave(m, OAE_EA_DISCARD, w);
        m->in_wave = 0;
    }
    for (size_t i = 0; i < m->n; i++) {
        link_t *ls = &m->links[i];
        if (!ls->up)
            continue;
        in_t *inc = inc_get(ls, w);
        out_t *o = out_of(ls, w);
        if (o && !o->has_tid && deferred_from(m, (int)i))
            continue;
        if (o || (inc && inc->held)) {
            emit_link(m, OAE_EA_RESET, (int)i, 0);
            _end_session(m, (int)i);
        } else if (inc) {
            emit_link(m, OAE_EA_REFUSE, (int)i, inc->tid);
            inc_del(ls, inc);
        } else {
            status_msg(m, (int)i, OAE_EPOCH_ABORT, w);
        }
    }
    deferred_pop(m, w);
    _resume_deferred(m);
}

/* _resume_deferred */
static void _resume_deferred(oae_epoch *m)
{
    if (m->in_wave || !m->n_deferred)
        return;
    size_t n = m->n_deferred;
    deferred_t pending[DEFERRED_MAX];
    memcpy(pending, m->deferred, n * sizeof *pending);
    m->n_deferred = 0;
    const deferred_t *best = NULL;
    for (size_t k = 0; k < n; k++) {
        const oae_epoch_wave *w = &pending[k].wave;
        if ((uint64_t)w->epoch == next_epoch(m) && !aborted_has(&m->rec, w) &&
            (!best || wave_cmp(w, &best->wave) > 0))
            best = &pending[k];
    }
    for (size_t k = 0; k < n; k++) {
        if (&pending[k] == best)
            continue;
        for (size_t i = 0; i < m->n; i++) {
            if (!(pending[k].senders & bit((int)i)))
                continue;
            in_t *inc = inc_get(&m->links[i], &pending[k].wave);
            if (inc) {
                uint32_t tid = inc->tid;
                inc_del(&m->links[i], inc);
                emit_link(m, OAE_EA_REFUSE, (int)i, tid);
            }
        }
    }
    if (best) {
        int parent = __builtin_ctzll(best->senders);
        _join(m, &best->wave, parent, best->senders & ~bit(parent));
    }
}

/* _progress; sets m->err (the Python machine's KeyError) if the parent's offer is gone */
static void _progress(oae_epoch *m)
{
    wave_t *st = &m->wave;
    if (!m->in_wave || st->accepted || st->waiting || !st->written)
        return;
    for (size_t i = 0; i < m->n; i++)
        if ((st->marked & bit((int)i)) && !_closed(m, (int)i, &st->wave))
            return;
    int p = st->has_parent ? idx(m, st->parent) : -1;
    if (st->has_parent && p < 0) {
        m->err = OAE_EPOCH_ESTATE;
        return;
    }
    if (p >= 0 && m->links[p].unsettled_app)
        return;
    st->accepted = 1;
    oae_epoch_record *r = &m->rec;
    r->n_prepared_log = 0;
    for (size_t i = 0; i < m->n; i++)
        if (m->links[i].logged) {
            r->prepared_log[r->n_prepared_log].link = m->links[i].id;
            r->prepared_log[r->n_prepared_log++].frames = m->links[i].logged;
        }
    if (!st->has_parent) {
        wave_t done = *st;
        _commit(m, &done.wave, &done);
        oae_epoch_action *a = emit(m, OAE_EA_DECIDED);
        a->wave = done.wave;
        a->ok = 1;
        return;
    }
    r->has_prepared = 1;
    r->prepared = st->wave;
    r->has_prepared_parent = 1;
    r->prepared_parent = st->parent;
    r->n_prepared_children = ids_of(m, st->children, r->prepared_children);
    persist(m);
    in_t *inc = inc_get(&m->links[p], &st->wave);
    if (!inc) {
        m->err = OAE_EPOCH_ESTATE;
        return;
    }
    inc->held = 1;
    emit_link(m, OAE_EA_HOLD, p, inc->tid);
}

/* _committed_by; sets m->err = ESAFETY (EpochSafetyError) */
static void _committed_by(oae_epoch *m, int i, const oae_epoch_wave *w)
{
    link_t *ls = &m->links[i];
    uint64_t c = m->rec.committed.epoch;
    if (ls->up && (!ls->has_heard || w->epoch > ls->heard)) {
        ls->has_heard = 1;
        ls->heard = w->epoch;
    }
    if ((uint64_t)w->epoch == c + 1) {
        wave_t *st = &m->wave;
        if (!m->in_wave || !wave_eq(&st->wave, w) || !st->accepted) {
            m->err = OAE_EPOCH_ESAFETY;
            return;
        }
        wave_t done = *st;
        _commit(m, &done.wave, &done);
    } else if ((uint64_t)w->epoch > c + 1) {
        m->err = OAE_EPOCH_ESAFETY;
    }
}

/* _on_propose */
static void _on_propose(oae_epoch *m, int i, const in_t *inc)
{
    const oae_epoch_wave *w = &inc->wave;
    link_t *ls = &m->links[i];
    wave_t *st = &m->wave;
    if ((uint64_t)w->epoch != next_epoch(m) || aborted_has(&m->rec, w)) {
        emit_link(m, OAE_EA_REFUSE, i, inc->tid);
    } else if (!m->in_wave) {
        if (inc_set(m, ls, inc) < 0)
            goto full;
        _join(m, w, i, 0);
    } else if (wave_eq(&st->wave, w)) {
        if (inc_set(m, ls, inc) < 0)
            goto full;
        st->crossing |= bit(i);
        st->marked |= bit(i);
        st->waiting &= ~bit(i);
        st->children &= ~bit(i);
    } else if (wave_cmp(w, &st->wave) < 0) {
        emit_link(m, OAE_EA_REFUSE, i, inc->tid);
    } else {
        deferred_t *d = deferred_get(m, w);
        if ((!d && m->n_deferred == DEFERRED_MAX) || inc_set(m, ls, inc) < 0)
            goto full;
        if (!d) {
            d = &m->deferred[m->n_deferred++];
            d->wave = *w;
            d->senders = 0;
        }
        d->senders |= bit(i);
    }
    return;
full:
    m->ctr.inc_refused++;
    emit_link(m, OAE_EA_REFUSE, i, inc->tid);
}

/* _finish */
static void _finish(oae_epoch *m)
{
    _progress(m);
    if (m->err)
        return;
    if (m->in_wave) {
        oae_epoch_wave w = m->wave.wave;
        for (size_t i = 0; i < m->n; i++) {
            link_t *ls = &m->links[i];
            if ((m->wave.crossing & bit((int)i)) && ls->up && !ls->unsettled_app &&
                !ls->unsettled_ctl)
                _hold_crossing(m, (int)i, &w);
        }
    }
    uint32_t c = m->rec.committed.epoch;
    int switched = 1;
    for (size_t i = 0; i < m->n; i++) {
        link_t *ls = &m->links[i];
        if (ls->up && ls->has_heard && ls->heard == c) {
            if (ls->epoch != c) {
                ls->epoch = c;
                oae_epoch_action *a = emit(m, OAE_EA_LINK_EPOCH);
                a->link = ls->id;
                a->epoch = c;
            }
        } else {
            switched = 0;
        }
    }
    int parent = m->rec.has_tree_parent ? idx(m, m->rec.tree_parent) : -1;
    int subset = 1;
    for (uint32_t k = 0; k < m->rec.n_tree_children; k++) {
        int j = idx(m, m->rec.tree_children[k]);
        if (j < 0 || !(m->done_from & bit(j)))
            subset = 0;
    }
    if (c && switched && subset) {
        if (!m->rec.has_tree_parent) {
            if (m->rec.committed.initiator == m->node_id && !m->converged_reported) {
                m->converged_reported = 1;
                emit_wave(m, OAE_EA_CONVERGED, &m->rec.committed);
            }
        } else if (!m->done_sent) {
            m->done_sent = 1;
            in_t *inc = inc_get(&m->links[parent], &m->rec.committed);
            if (!inc || !inc->delivered)
                status_msg(m, parent, OAE_EPOCH_DONE, &m->rec.committed);
        }
    }
    for (size_t i = 0; i < m->n; i++) {
        link_t *ls = &m->links[i];
        int64_t target = ls->ctl_delivered;
        if ((int)i == parent && !m->done_sent) {
            in_t *inc = inc_get(ls, &m->rec.committed);
            if (inc && inc->delivered && (int64_t)inc->tid - 1 < target)
                target = (int64_t)inc->tid - 1;
        }
        if (ls->up && target > ls->reported) {
            ls->reported = (uint32_t)target;
            emit_link(m, OAE_EA_REPORT, (int)i, (uint32_t)target);
        }
    }
}

/* ------------------------------------------------------------------ inputs */

/* Every input starts here: refuses a failed machine, clears the action list. */
static int begin(oae_epoch *m)
{
    if (m->failed)
        return m->failed;
    m->n_act = 0;
    m->n_pers = 0;
    m->err = 0;
    return 0;
}

/* Every input ends here: the action count, or the error raised (which fails the machine). */
static int end(oae_epoch *m)
{
    if (m->err) {
        m->failed = m->err;
        m->n_act = 0;
        return m->err;
    }
    return (int)m->n_act;
}

static int finish(oae_epoch *m)
{
    _finish(m);
    return end(m);
}

/* the link's index, or ELINK (the Python machine's KeyError, before any change) */
#define LINK_OR_RETURN(i, m, link)              \
    int i = idx(m, link);                       \
    if (i < 0)                                  \
        return OAE_EPOCH_ELINK

int oae_epoch_start(oae_epoch *m)
{
    int rc = begin(m);
    if (rc)
        return rc;
    const oae_epoch_record *r = &m->rec;
    if (r->has_initiating && (uint64_t)r->initiating.epoch == next_epoch(m)) {
        oae_epoch_wave w = r->initiating;
        _abort(m, &w);
    }
    return finish(m);
}

int oae_epoch_propose(oae_epoch *m, int *started, oae_epoch_wave *wave)
{
    int rc = begin(m);
    *started = 0;
    if (rc)
        return rc;
    if (m->in_wave || m->n_deferred)
        return 0;
    if (next_epoch(m) > UINT32_MAX || m->rec.next_attempt > UINT32_MAX)
        return OAE_EPOCH_ERANGE; /* Wave(...) raises MessageError: nothing changed */
    oae_epoch_wave w = {m->rec.committed.epoch + 1, (uint32_t)m->rec.next_attempt, m->node_id};
    m->rec.has_initiating = 1;
    m->rec.initiating = w;
    m->rec.next_attempt++;
    persist(m);
    _join(m, &w, -1, 0);
    *started = 1;
    *wave = w;
    return finish(m);
}

int oae_epoch_checkpoint_written(oae_epoch *m, const oae_epoch_wave *wave, int ok)
{
    int rc = begin(m);
    if (rc)
        return rc;
    wave_t *st = &m->wave;
    if (!m->in_wave || !wave_eq(&st->wave, wave) || st->written)
        return finish(m);
    if (!ok) {
        oae_epoch_wave w = *wave;
        _abort(m, &w);
        return finish(m);
    }
    st->written = 1;
    return finish(m);
}

int oae_epoch_link_up(oae_epoch *m, uint32_t link)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    m->links[i].up = 1;
    status_msg(m, i, OAE_EPOCH_COMMIT, &m->rec.committed);
    if (m->rec.has_prepared)
        status_msg(m, i, OAE_EPOCH_PREPARED, &m->rec.prepared);
    for (uint32_t k = 0; k < m->rec.n_aborted; k++)
        status_msg(m, i, OAE_EPOCH_ABORT, &m->rec.aborted[k]);
    if (m->in_wave && (m->wave.waiting & bit(i))) {
        oae_epoch_wave w = m->wave.wave;
        _propose_to(m, i, &w); /* it was down when we joined */
    }
    return finish(m);
}

int oae_epoch_link_down(oae_epoch *m, uint32_t link)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    if (!m->links[i].up)
        return 0;
    wave_t *st = &m->wave;
    int lost = m->in_wave && !st->accepted &&
               ((st->has_parent && st->parent == link) || (st->waiting & bit(i)) ||
                ((st->marked & bit(i)) && !_closed(m, i, &st->wave)));
    _end_session(m, i);
    if (lost) {
        oae_epoch_wave w = st->wave;
        _abort(m, &w);
    }
    return finish(m);
}

int oae_epoch_offered(oae_epoch *m, uint32_t link, uint32_t tid, const uint8_t *payload,
                      size_t len, uint32_t delivered)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    if (!m->links[i].up)
        return 0;
    int kind;
    oae_epoch_wave w;
    if (msg_decode(payload, len, &kind, &w) < 0) {
        m->ctr.bad_messages++;
        emit_link(m, OAE_EA_REFUSE, i, tid);
        return finish(m);
    }
    if (kind != OAE_EPOCH_PROPOSE) {
        emit_link(m, OAE_EA_HOLD, i, tid);
        return finish(m);
    }
    in_t inc = {w, tid, delivered, 0, 0};
    _on_propose(m, i, &inc);
    return finish(m);
}

int oae_epoch_reflected(oae_epoch *m, uint32_t link, uint32_t tid, const uint8_t *payload,
                        size_t len)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    link_t *ls = &m->links[i];
    int kind;
    oae_epoch_wave w;
    if (msg_decode(payload, len, &kind, &w) < 0)
        return 0;
    if (!ls->up)
        return 0;
    out_t *o = NULL;
    for (uint32_t k = 0; k < ls->n_out && !o; k++)
        if (wave_eq(&ls->out[k].wave, &w) && !ls->out[k].has_tid)
            o = &ls->out[k];
    if (!o) {
        out_append(m, ls, &w);
        o = &ls->out[ls->n_out - 1];
    }
    o->has_tid = 1;
    o->tid = tid;
    wave_t *st = &m->wave;
    if (wave_eq(&w, &m->rec.committed)) {
        emit_link(m, OAE_EA_COMMIT, i, tid);
        o->committed = 1;
    } else if (m->in_wave && wave_eq(&st->wave, &w)) {
        if (st->crossing & bit(i)) {
            _hold_crossing(m, i, &w);
        } else if (st->waiting & bit(i)) {
            st->children |= bit(i);
            st->waiting &= ~bit(i);
        }
    } else {
        emit_link(m, OAE_EA_RESET, i, 0); /* held although its wave aborted: only a round */
        _end_session(m, i);
    }
    return finish(m);
}

int oae_epoch_delivered(oae_epoch *m, uint32_t link, uint32_t tid, const uint8_t *payload,
                        size_t len)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    link_t *ls = &m->links[i];
    if (tid > ls->delivered)
        ls->delivered = tid;
    if (ls->up && tid > ls->ctl_delivered)
        ls->ctl_delivered = tid;
    int kind;
    oae_epoch_wave w;
    if (msg_decode(payload, len, &kind, &w) < 0) {
        m->ctr.bad_messages++;
        return finish(m);
    }
    if (kind == OAE_EPOCH_PROPOSE || kind == OAE_EPOCH_COMMIT) {
        if (kind == OAE_EPOCH_PROPOSE && ls->up) {
            in_t *inc = inc_get(ls, &w);
            if (inc && inc->tid == tid)
                inc->delivered = 1;
        }
        _committed_by(m, i, &w);
        if (m->err)
            return end(m);
    } else if (kind == OAE_EPOCH_PREPARED) {
        if (aborted_has(&m->rec, &w))
            status_msg(m, i, OAE_EPOCH_ABORT, &w);
        else if ((uint64_t)w.epoch == next_epoch(m) &&
                 (!m->in_wave || !wave_eq(&m->wave.wave, &w)))
            _abort(m, &w);
    } else if (kind == OAE_EPOCH_ABORT) {
        if ((uint64_t)w.epoch == next_epoch(m) && !aborted_has(&m->rec, &w))
            _abort(m, &w);
    } else if (kind == OAE_EPOCH_DONE && wave_eq(&w, &m->rec.committed)) {
        m->done_from |= bit(i);
    }
    return finish(m);
}

int oae_epoch_outcome(oae_epoch *m, uint32_t link, uint32_t tid, int committed,
                      const uint8_t *payload, size_t len, int by_round)
{
    int rc = begin(m);
    if (rc)
        return rc;
    if (by_round)
        return 0;
    LINK_OR_RETURN(i, m, link);
    link_t *ls = &m->links[i];
    out_t *o = NULL;
    for (uint32_t k = 0; k < ls->n_out && !o; k++)
        if (ls->out[k].has_tid && ls->out[k].tid == tid)
            o = &ls->out[k];
    if (!o && payload) {
        int kind;
        oae_epoch_wave w;
        if (msg_decode(payload, len, &kind, &w) < 0)
            return 0;
        if (kind != OAE_EPOCH_PROPOSE) {
            if (ls->unsettled_ctl)
                ls->unsettled_ctl--;
            if (!committed && ls->up)
                status_msg(m, i, kind, &w); /* reversed with a refused offer: say it again */
            return finish(m);
        }
        o = out_of(ls, &w);
    }
    if (!o)
        return 0;
    out_t gone = *o;
    out_remove(ls, o);
    if (ls->has_offer_after && !unreflected(ls)) {
        oae_epoch_wave w = ls->offer_after;
        _propose_to(m, i, &w);
    }
    if (committed) {
        if (ls->up && (!ls->has_heard || gone.wave.epoch > ls->heard)) {
            ls->has_heard = 1;
            ls->heard = gone.wave.epoch;
        }
        if (wave_eq(&gone.wave, &m->rec.committed) && children_have(&m->rec, link))
            m->done_from |= bit(i);
    } else if (m->in_wave && wave_eq(&m->wave.wave, &gone.wave)) {
        _abort(m, &gone.wave);
    }
    return finish(m);
}

int oae_epoch_app_frame(oae_epoch *m, uint32_t link, uint32_t tid, uint32_t tag,
                        int *accepted)
{
    int rc = begin(m);
    *accepted = 0;
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    link_t *ls = &m->links[i];
    if (tid > ls->delivered)
        ls->delivered = tid;
    if (tag != ls->epoch) {
        m->ctr.mixed_frames++;
        return finish(m);
    }
    if (m->in_wave && !m->wave.accepted && tag == m->rec.committed.epoch)
        ls->logged++;
    *accepted = 1;
    return finish(m);
}

int oae_epoch_app_sent(oae_epoch *m, uint32_t link)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    m->links[i].unsettled_app++;
    return 0;
}

int oae_epoch_app_settled(oae_epoch *m, uint32_t link)
{
    int rc = begin(m);
    if (rc)
        return rc;
    LINK_OR_RETURN(i, m, link);
    if (m->links[i].unsettled_app)
        m->links[i].unsettled_app--;
    return finish(m);
}

/* ------------------------------------------------------------------ lifecycle, queries */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

oae_epoch *oae_epoch_new(uint32_t node_id, const uint32_t *neighbours, size_t n,
                         const oae_epoch_record *record, int *err)
{
    uint32_t ids[OAE_EPOCH_LINKS_MAX];
    size_t k = 0;
    *err = 0;
    for (size_t i = 0; i < n; i++) {
        int dup = 0;
        for (size_t j = 0; j < k; j++)
            dup |= ids[j] == neighbours[i];
        if (dup)
            continue;
        if (k == OAE_EPOCH_LINKS_MAX) {
            *err = OAE_EPOCH_ELINK;
            return NULL;
        }
        ids[k++] = neighbours[i];
    }
    qsort(ids, k, sizeof *ids, cmp_u32);
    oae_epoch *m = calloc(1, sizeof *m);
    if (!m) {
        *err = -ENOMEM;
        return NULL;
    }
    m->node_id = node_id;
    m->n = k;
    if (record)
        m->rec = *record;
    else
        oae_epoch_record_init(&m->rec);
    const oae_epoch_record *r = &m->rec;
    for (size_t i = 0; i < k; i++) {
        m->links[i].id = ids[i];
        m->links[i].epoch = r->committed.epoch;
    }
    /* the record's parents and children must be links of this node */
    int bad = (r->has_tree_parent && idx(m, r->tree_parent) < 0) ||
              (r->has_prepared_parent && idx(m, r->prepared_parent) < 0) ||
              r->n_tree_children > OAE_EPOCH_LINKS_MAX ||
              r->n_prepared_children > OAE_EPOCH_LINKS_MAX ||
              r->n_committed_log > OAE_EPOCH_LINKS_MAX || r->n_prepared_log > OAE_EPOCH_LINKS_MAX ||
              r->n_aborted > OAE_EPOCH_ABORTED_MAX;
    for (uint32_t j = 0; !bad && j < r->n_tree_children; j++)
        bad = idx(m, r->tree_children[j]) < 0;
    uint64_t children = 0;
    for (uint32_t j = 0; !bad && j < r->n_prepared_children; j++) {
        int c = idx(m, r->prepared_children[j]);
        bad = c < 0;
        children |= bad ? 0 : bit(c);
    }
    if (bad) {
        free(m);
        *err = OAE_EPOCH_ERECORD;
        return NULL;
    }
    if (r->has_prepared) {
        m->in_wave = 1;
        m->wave.wave = r->prepared;
        m->wave.has_parent = r->has_prepared_parent;
        m->wave.parent = r->prepared_parent;
        m->wave.children = children;
        m->wave.written = 1;
        m->wave.accepted = 1;
    }
    return m;
}

void oae_epoch_free(oae_epoch *m)
{
    free(m);
}

const oae_epoch_action *oae_epoch_actions(const oae_epoch *m)
{
    return m->act;
}

const uint8_t *oae_epoch_persisted(const oae_epoch *m, uint32_t i, size_t *len)
{
    if (i >= m->n_pers) {
        *len = 0;
        return NULL;
    }
    *len = m->pers_len[i];
    return m->pers[i];
}

uint32_t oae_epoch_epoch(const oae_epoch *m)
{
    return m->rec.committed.epoch;
}

const oae_epoch_record *oae_epoch_record_get(const oae_epoch *m)
{
    return &m->rec;
}

int64_t oae_epoch_send_epoch(const oae_epoch *m, uint32_t link)
{
    int i = idx(m, link);
    if (i < 0)
        return -1;
    const link_t *ls = &m->links[i];
    uint32_t c = m->rec.committed.epoch;
    if (m->rec.has_tree_parent && link == m->rec.tree_parent && !m->done_sent)
        return -1; /* to the tree parent only after our DONE */
    if (!m->in_wave && ls->up && ls->has_heard && ls->heard == c)
        return c;
    return -1;
}

int oae_epoch_failed(const oae_epoch *m)
{
    return m->failed;
}

void oae_epoch_counters_get(const oae_epoch *m, oae_epoch_counters *out)
{
    *out = m->ctr;
}

void oae_epoch_wave_get(const oae_epoch *m, oae_epoch_wave_state *out)
{
    memset(out, 0, sizeof *out);
    if (!m->in_wave)
        return;
    const wave_t *st = &m->wave;
    out->active = 1;
    out->wave = st->wave;
    out->has_parent = st->has_parent;
    out->parent = st->parent;
    out->waiting = st->waiting;
    out->children = st->children;
    out->crossing = st->crossing;
    out->marked = st->marked;
    out->written = st->written;
    out->accepted = st->accepted;
}

size_t oae_epoch_links(const oae_epoch *m)
{
    return m->n;
}

int oae_epoch_link_get(const oae_epoch *m, size_t i, oae_epoch_link_state *out)
{
    if (i >= m->n)
        return -1;
    const link_t *ls = &m->links[i];
    out->id = ls->id;
    out->up = ls->up;
    out->has_heard = ls->has_heard;
    out->heard = ls->heard;
    out->epoch = ls->epoch;
    out->send_epoch = oae_epoch_send_epoch(m, ls->id);
    out->unsettled_app = ls->unsettled_app;
    out->logged = ls->logged;
    out->delivered = ls->delivered;
    out->ctl_delivered = ls->ctl_delivered;
    out->reported = ls->reported;
    return 0;
}

int oae_epoch_deferred_get(const oae_epoch *m, size_t i, oae_epoch_wave *wave,
                           uint64_t *senders)
{
    if (i >= m->n_deferred)
        return -1;
    *wave = m->deferred[i].wave;
    *senders = m->deferred[i].senders;
    return 0;
}
