/* libFuzzer target for the event log (csrc/evlog.c): arbitrary bytes as a log, replayed
 * against registers taken from the input.  Checks, besides ASan/UBSan: replay never fails
 * but for EBADMSG; the live records are HEAD first and then valid records of the input
 * that the registers still need; compaction is a fixed point (replaying the compacted log
 * gives the same records, last key, released and highest delivered tid); a torn tail is
 * never longer than the input.  Input: bytes 0..3 out_settled, 4..5 open tids
 * (out_hi - out_settled, bounded by the window maximum), then the log; a second mode
 * (byte 6 odd) builds the log from well-formed records, one per 12 input bytes, so the
 * fuzzer reaches the replay logic rather than the CRC. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "evlog.h"
#include "bigend.h"

#define FAIL(...)                                                                       \
    do {                                                                                \
        fprintf(stderr, "fuzz_evlog: " __VA_ARGS__);                                    \
        fprintf(stderr, " (line %d)\n", __LINE__);                                      \
        abort();                                                                        \
    } while (0)

static int same_record(const oae_log_record *a, const oae_log_record *b)
{
    return a->type == b->type && a->flags == b->flags && a->data_flags == b->data_flags &&
           a->length == b->length && a->tid == b->tid && a->aux == b->aux && a->key == b->key &&
           memcmp(a->payload, b->payload, sizeof a->payload) == 0;
}

/* one well-formed record per 12 input bytes: type, flags, tid (small), key, aux */
static size_t build_log(const uint8_t *in, size_t n, uint32_t base, uint8_t **out)
{
    static const uint8_t types[] = {OAE_EV_DELIVERED, OAE_EV_COMMITTED, OAE_EV_ABORTED,
                                    OAE_LOG_OFFER, OAE_LOG_ACK, OAE_LOG_RELEASE, OAE_LOG_HEAD};
    size_t k = n / 12;
    *out = malloc(k * OAE_LOG_REC_LEN + 1);
    for (size_t i = 0; i < k; i++) {
        const uint8_t *b = in + 12 * i;
        oae_log_record r;
        memset(&r, 0, sizeof r);
        r.type = types[b[0] % sizeof types];
        r.flags = b[1] & (OAE_EVF_RESTORED | OAE_LOGF_ACKED);
        r.length = b[2] % 17;
        memset(r.payload, b[3], r.length);
        r.tid = base + (uint32_t)(b[4] % 64) - 16;
        r.aux = r.tid + b[5] % 8;
        r.key = (uint64_t)get32(b + 6) * 3;
        r.data_flags = b[10] & 1;
        oae_log_encode(*out + i * OAE_LOG_REC_LEN, &r);
    }
    return k * OAE_LOG_REC_LEN;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 7)
        return 0;
    oae_link_durable regs;
    memset(&regs, 0, sizeof regs);
    regs.version = OAE_LINK_DURABLE_VERSION;
    regs.out_settled = get32(data) % 100000;
    regs.out_hi = regs.out_settled + ((uint32_t)data[4] << 8 | data[5]) % (OAE_LINK_WINDOW_MAX + 1);
    uint8_t *built = NULL;
    const uint8_t *log = data + 7;
    size_t len = size - 7;
    if (data[6] & 1) {
        len = build_log(data + 7, size - 7, regs.out_settled, &built);
        log = built;
    }

    oae_log_state st;
    int rc = oae_log_replay(log, len, &regs, &st);
    if (rc != 0 && rc != -22 /* EINVAL */ && rc != -74 /* EBADMSG */)
        FAIL("replay returned %d", rc);
    if (rc == 0) {
        if (st.n < 1 || st.rec[0].type != OAE_LOG_HEAD)
            FAIL("the live records do not start with HEAD");
        if (st.torn > len)
            FAIL("torn tail %zu longer than the log %zu", st.torn, len);
        for (size_t i = 1; i < st.n; i++) {
            const oae_log_record *r = &st.rec[i];
            int open = r->tid > regs.out_settled && r->tid <= regs.out_hi;
            if (r->type == OAE_LOG_OFFER && !open)
                FAIL("a live offer of tid %u outside the open tids", r->tid);
            if ((r->type == OAE_EV_COMMITTED || r->type == OAE_EV_ABORTED) && !open &&
                (r->flags & OAE_LOGF_ACKED))
                FAIL("an acknowledged settled outcome of tid %u kept", r->tid);
            if (r->type == OAE_EV_DELIVERED && r->tid <= st.released)
                FAIL("a released delivery of tid %u kept", r->tid);
            if (r->type == OAE_LOG_ACK || r->type == OAE_LOG_RELEASE || r->type == OAE_LOG_HEAD)
                FAIL("a record of type %u kept after HEAD", r->type);
        }
        /* compaction is a fixed point */
        uint8_t *img = malloc(st.n * OAE_LOG_REC_LEN);
        for (size_t i = 0; i < st.n; i++)
            oae_log_encode(img + i * OAE_LOG_REC_LEN, &st.rec[i]);
        oae_log_state again;
        if (oae_log_replay(img, st.n * OAE_LOG_REC_LEN, &regs, &again) != 0)
            FAIL("the compacted log does not replay");
        if (again.n != st.n || again.last_key != st.last_key ||
            again.released != st.released || again.delivered_max != st.delivered_max ||
            again.torn != 0)
            FAIL("compacting twice changes the log (%zu vs %zu records)", again.n, st.n);
        for (size_t i = 0; i < st.n; i++)
            if (!same_record(&again.rec[i], &st.rec[i]))
                FAIL("compacting twice changes record %zu", i);
        oae_log_state_free(&again);
        free(img);
    }
    oae_log_state_free(&st);
    free(built);
    return 0;
}
