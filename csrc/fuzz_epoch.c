/* libFuzzer target for the epoch machine (build: make -C csrc fuzz_epoch; docs/fuzzing.md).
 *
 * The input is a script for one node.  Byte 0: bits 0-2 the number of neighbours - 1 (their
 * ids are 10, 20, ...; id 5 is a stranger), bit 3 a record follows (a length byte, then
 * that many bytes, fed to the decoder: if they decode, the machine starts from them).
 * Then each op byte (its low nibble picks the input, the high nibble and the next bytes
 * its arguments) is one input: propose, checkpoint_written, link_up/down, offered,
 * reflected, delivered, outcome (with or without payload, by a round or not), app_frame,
 * app_sent, app_settled, start.  Payloads are either a well-formed epoch message of a
 * nearby wave (so the machine gets deep) or raw bytes.  After every input the target
 * checks: the return is an action count within the bound or a documented error; a failed
 * machine stays failed; every action is well-formed and names a neighbour; a Hold or
 * Refuse names a tid offered on that link, a Commit a tid reflected on it, a Report no
 * more than what was delivered on it (the machine never invents a tid); every persisted
 * record decodes and encodes back to the same bytes, and the committed epoch never goes
 * back; send_epoch is the committed epoch or hold.  A violation aborts (a crash for
 * libFuzzer), as do ASan/UBSan findings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "epoch.h"

#define CHECK(c)                                                                           \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "invariant failed: %s (line %d)\n", #c, __LINE__);              \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define LINKS 8
#define TIDS 64 /* tids the script can name: 0..63 */

typedef struct script {
    const uint8_t *p;
    size_t n;
} script;

static uint8_t take(script *s)
{
    if (!s->n)
        return 0;
    s->n--;
    return *s->p++;
}

typedef struct node {
    oae_epoch *m;
    uint32_t ids[LINKS];
    size_t n;
    uint64_t offered[LINKS];   /* bitmap of tids offered on each link */
    uint64_t reflected[LINKS]; /* tids reflected on each link */
    uint32_t delivered[LINKS]; /* highest tid delivered on each link */
    uint32_t committed;        /* the committed epoch, never going back */
} node;

static int link_of(const node *d, uint32_t id)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->ids[i] == id)
            return (int)i;
    return -1;
}

/* A neighbour (or, one time in eight, the stranger 5). */
static uint32_t pick_link(const node *d, uint8_t b)
{
    return (b & 7) == 7 ? 5 : d->ids[(b >> 3) % d->n];
}

/* A payload: a message of a wave near the committed epoch, or raw bytes. */
static size_t payload(const node *d, script *s, uint8_t *out)
{
    uint8_t b = take(s);
    if (b & 0x80) {
        size_t len = b & 0x0F;
        if (len > 16)
            len = 16;
        for (size_t i = 0; i < len; i++)
            out[i] = take(s);
        return len;
    }
    static const uint8_t kinds[8] = {1, 1, 1, 4, 5, 5, 6, 7};
    static const uint32_t ahead[4] = {0, 1, 1, 2}; /* mostly the next epoch */
    uint32_t e = d->committed + ahead[b & 3];
    uint8_t a = take(s);
    out[0] = (uint8_t)(0xE0 | kinds[(b >> 2) & 7]);
    uint32_t w[3] = {e, (uint32_t)(a & 3), d->ids[(a >> 2) % d->n]};
    if ((a >> 5) == 7)
        w[2] = 0; /* this node's own waves */
    for (int k = 0; k < 3; k++)
        for (int j = 0; j < 4; j++)
            out[1 + 4 * k + j] = (uint8_t)(w[k] >> (24 - 8 * j));
    return OAE_EPOCH_MSG_LEN;
}

static void check_actions(node *d, int rc)
{
    oae_epoch *m = d->m;
    CHECK(rc <= OAE_EPOCH_ACTIONS_MAX);
    if (rc < 0) {
        CHECK(rc == OAE_EPOCH_ELINK || rc == OAE_EPOCH_ESAFETY || rc == OAE_EPOCH_ERANGE ||
              rc == OAE_EPOCH_EFULL || rc == OAE_EPOCH_ESTATE);
        return;
    }
    const oae_epoch_action *a = oae_epoch_actions(m);
    for (int k = 0; k < rc; k++) {
        CHECK(a[k].type >= OAE_EA_OFFER && a[k].type <= OAE_EA_CONVERGED);
        int i = link_of(d, a[k].link);
        uint32_t t = a[k].tid;
        switch (a[k].type) {
        case OAE_EA_OFFER:
            CHECK(i >= 0 && a[k].len <= 16);
            break;
        case OAE_EA_HOLD:
        case OAE_EA_REFUSE:
            CHECK(i >= 0 && t < TIDS && (d->offered[i] >> t & 1));
            break;
        case OAE_EA_COMMIT:
            CHECK(i >= 0 && t < TIDS && (d->reflected[i] >> t & 1));
            break;
        case OAE_EA_REPORT:
            CHECK(i >= 0 && t <= d->delivered[i]);
            break;
        case OAE_EA_RESET:
        case OAE_EA_LINK_EPOCH:
            CHECK(i >= 0);
            break;
        case OAE_EA_PERSIST: {
            size_t len;
            const uint8_t *rec = oae_epoch_persisted(m, t, &len);
            CHECK(rec && len <= OAE_EPOCH_RECORD_MAX);
            oae_epoch_record r;
            CHECK(oae_epoch_record_decode(rec, len, &r) == 0);
            uint8_t again[OAE_EPOCH_RECORD_MAX];
            CHECK(oae_epoch_record_encode(&r, again) == len && !memcmp(again, rec, len));
            CHECK(r.committed.epoch >= d->committed); /* never rolled back */
            d->committed = r.committed.epoch;
            break;
        }
        default:
            break;
        }
    }
    CHECK(oae_epoch_epoch(m) == d->committed);
    for (size_t i = 0; i < d->n; i++) {
        int64_t e = oae_epoch_send_epoch(m, d->ids[i]);
        CHECK(e == -1 || e == d->committed);
    }
}

static void step(node *d, script *s)
{
    oae_epoch *m = d->m;
    uint8_t op = take(s);
    uint8_t arg = take(s);
    uint32_t link = pick_link(d, arg);
    int i = link_of(d, link);
    uint32_t tid = take(s) % TIDS;
    uint8_t buf[16];
    size_t len;
    int rc = 0, x;
    int was_failed = oae_epoch_failed(m);
    oae_epoch_wave w;
    switch (op & 15) {
    case 0:
        rc = oae_epoch_propose(m, &x, &w);
        break;
    case 1: { /* the current wave (if any) or a nearby one */
        oae_epoch_wave_state st;
        oae_epoch_wave_get(m, &st);
        w = st.active && !(arg & 1) ? st.wave
                                    : (oae_epoch_wave){d->committed + 1, arg >> 6, 0};
        rc = oae_epoch_checkpoint_written(m, &w, !(op & 0x10));
        break;
    }
    case 2:
        rc = oae_epoch_link_up(m, link);
        break;
    case 3:
        rc = oae_epoch_link_down(m, link);
        break;
    case 4:
    case 5: /* offers are frequent: every wave needs them */
        len = payload(d, s, buf);
        if (i >= 0)
            d->offered[i] |= 1ull << tid;
        rc = oae_epoch_offered(m, link, tid, buf, len, take(s) % TIDS);
        break;
    case 6:
        if (i >= 0)
            d->reflected[i] |= 1ull << tid;
        len = payload(d, s, buf);
        rc = oae_epoch_reflected(m, link, tid, buf, len);
        break;
    case 7:
    case 8:
        len = payload(d, s, buf);
        if (i >= 0 && tid > d->delivered[i])
            d->delivered[i] = tid;
        rc = oae_epoch_delivered(m, link, tid, buf, len);
        break;
    case 9:
        len = payload(d, s, buf);
        rc = oae_epoch_outcome(m, link, tid, op >> 4 & 1, (op & 0x20) ? NULL : buf, len,
                               op >> 6 & 1);
        break;
    case 10:
        if (i >= 0 && tid > d->delivered[i])
            d->delivered[i] = tid; /* an application frame moves delivered too */
        rc = oae_epoch_app_frame(m, link, tid, d->committed - (op >> 4 & 1), &x);
        break;
    case 11:
        rc = oae_epoch_app_sent(m, link);
        break;
    case 12:
        rc = oae_epoch_app_settled(m, link);
        break;
    case 13:
        rc = oae_epoch_start(m);
        break;
    default: /* every link up */
        for (size_t k = 0; k < d->n && rc >= 0; k++) {
            rc = oae_epoch_link_up(m, d->ids[k]);
            check_actions(d, rc);
        }
        return;
    }
    if (was_failed)
        CHECK(rc == was_failed); /* a failed machine stays failed */
    check_actions(d, rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    script s = {data, size};
    uint8_t cfg = take(&s);
    node d;
    memset(&d, 0, sizeof d);
    d.n = (size_t)(cfg & 7) + 1;
    for (size_t i = 0; i < d.n; i++)
        d.ids[d.n - 1 - i] = (uint32_t)(10 * (i + 1)); /* given out of order */
    oae_epoch_record rec, *r = NULL;
    if (cfg & 8) {
        uint8_t len = take(&s);
        size_t have = len < s.n ? len : s.n;
        if (oae_epoch_record_decode(s.p, have, &rec) == 0) {
            uint8_t again[OAE_EPOCH_RECORD_MAX];
            CHECK(oae_epoch_record_encode(&rec, again) == have && !memcmp(again, s.p, have));
            r = &rec;
        }
        s.p += have;
        s.n -= have;
    }
    int err;
    d.m = oae_epoch_new(0, d.ids, d.n, r, &err);
    if (!d.m) {
        CHECK(err == OAE_EPOCH_ERECORD);
        return 0;
    }
    d.committed = oae_epoch_epoch(d.m);
    check_actions(&d, oae_epoch_start(d.m));
    while (s.n)
        step(&d, &s);
    oae_epoch_free(d.m);
    return 0;
}
