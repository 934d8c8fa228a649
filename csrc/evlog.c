/* oae event log: record codec, replay against the durable registers, compaction. */
#include "evlog.h"
#include "bigend.h"
#include "durable.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#define MAGIC 0x4Du    /* 'M': this format */
#define V1_MAGIC 0x4Cu /* 'L': the first format (40 bytes, no keys, no acknowledgements) */

/* A record (OAE_LOG_REC_LEN = 48 bytes, big-endian):
 *   0 magic 'M'  1 type  2 flags  3 data_flags  4 length  5..7 zero  8 tid  12 aux
 *   16 key (u64)  24 payload[16]  40..43 zero  44 CRC32C of bytes 0..43
 * The first format: 0 magic 'L'  1 type  2 flags  3 data_flags  4 length  5..7 zero  8 tid
 *   12 info  16 payload[16]  32 CRC32C of bytes 0..31  36..39 zero */

void oae_log_encode(uint8_t *r, const oae_log_record *in)
{
    memset(r, 0, OAE_LOG_REC_LEN);
    r[0] = MAGIC; r[1] = in->type; r[2] = in->flags; r[3] = in->data_flags;
    r[4] = in->length;
    put32(r + 8, in->tid);
    put32(r + 12, in->aux);
    put32(r + 16, (uint32_t)(in->key >> 32));
    put32(r + 20, (uint32_t)in->key);
    memcpy(r + 24, in->payload, OAE_PAYLOAD_MAX);
    put32(r + 44, oae_crc32c(r, 44));
}

static int known_type(uint8_t t)
{
    return t == OAE_EV_DELIVERED || t == OAE_EV_COMMITTED || t == OAE_EV_ABORTED ||
           (t >= OAE_LOG_OFFER && t <= OAE_LOG_HEAD);
}

static int zero(const uint8_t *p, size_t n)
{
    while (n--)
        if (*p++)
            return 0;
    return 1;
}

size_t oae_log_decode(const uint8_t *r, size_t len, oae_log_record *out)
{
    memset(out, 0, sizeof *out);
    if (len >= OAE_LOG_REC_LEN && r[0] == MAGIC) {
        if (get32(r + 44) != oae_crc32c(r, 44) || r[4] > OAE_PAYLOAD_MAX ||
            !known_type(r[1]) || !zero(r + 5, 3) || !zero(r + 40, 4))
            return 0;
        out->type = r[1]; out->flags = r[2]; out->data_flags = r[3]; out->length = r[4];
        out->tid = get32(r + 8);
        out->aux = get32(r + 12);
        out->key = (uint64_t)get32(r + 16) << 32 | get32(r + 20);
        memcpy(out->payload, r + 24, OAE_PAYLOAD_MAX);
        return OAE_LOG_REC_LEN;
    }
    if (len >= OAE_LOG_V1_REC_LEN && r[0] == V1_MAGIC) {
        if (get32(r + 32) != oae_crc32c(r, 32) || r[4] > OAE_PAYLOAD_MAX ||
            (r[1] != OAE_EV_DELIVERED && r[1] != OAE_EV_COMMITTED && r[1] != OAE_EV_ABORTED))
            return 0;
        out->type = r[1]; out->flags = r[2]; out->data_flags = r[3]; out->length = r[4];
        out->tid = get32(r + 8);
        memcpy(out->payload, r + 16, OAE_PAYLOAD_MAX);
        if (out->type != OAE_EV_DELIVERED)
            out->flags |= OAE_LOGF_ACKED; /* handed out under the first format's contract */
        return OAE_LOG_V1_REC_LEN;
    }
    return 0;
}

void oae_log_state_free(oae_log_state *st)
{
    free(st->rec);
    st->rec = NULL;
    st->n = 0;
}

typedef struct range {
    uint32_t lo, hi;
} range;

static int range_cmp(const void *a, const void *b)
{
    const range *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

/* sort and merge acknowledged ranges in place; returns how many remain */
static size_t merge_ranges(range *r, size_t n)
{
    if (!n)
        return 0;
    qsort(r, n, sizeof *r, range_cmp);
    size_t m = 0;
    for (size_t i = 1; i < n; i++) {
        if (r[i].lo <= r[m].hi || (r[m].hi != UINT32_MAX && r[i].lo == r[m].hi + 1)) {
            if (r[i].hi > r[m].hi)
                r[m].hi = r[i].hi;
        } else {
            r[++m] = r[i];
        }
    }
    return m + 1;
}

static int covered(const range *r, size_t n, uint32_t tid)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (r[mid].hi < tid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && r[lo].lo <= tid;
}

/* 1 if any valid record starts somewhere in buf[from..len): the invalid one at `from` is
 * damage, not a torn tail (a crash only tears the end of the log) */
static int valid_after(const uint8_t *buf, size_t len, size_t from)
{
    oae_log_record r;
    for (size_t o = from + 1; o + OAE_LOG_V1_REC_LEN <= len; o++)
        if ((buf[o] == MAGIC || buf[o] == V1_MAGIC) && oae_log_decode(buf + o, len - o, &r))
            return 1;
    return 0;
}

static int is_outcome(uint8_t t)
{
    return t == OAE_EV_COMMITTED || t == OAE_EV_ABORTED;
}

int oae_log_replay(const uint8_t *buf, size_t len, const oae_link_durable *regs,
                   oae_log_state *st)
{
    memset(st, 0, sizeof *st);
    uint32_t lo = regs->out_settled, hi = regs->out_hi; /* open tids: (lo, hi] */
    if (hi < lo || hi - lo > OAE_LINK_WINDOW_MAX)
        return -EINVAL;
    size_t cap = len / OAE_LOG_V1_REC_LEN + 1;
    oae_log_record *all = malloc(cap * sizeof *all);
    uint8_t *v1 = malloc(cap);
    range *acks = malloc(cap * sizeof *acks);
    size_t nopen = hi - lo;
    long *offer_at = malloc((nopen + 1) * sizeof *offer_at);
    long *outcome_at = malloc((nopen + 1) * sizeof *outcome_at);
    int rc = -ENOMEM;
    if (!all || !v1 || !acks || !offer_at || !outcome_at)
        goto out;
    for (size_t i = 0; i < nopen; i++)
        offer_at[i] = outcome_at[i] = -1;

    /* 1. decode; an invalid record ends the log if nothing valid follows it */
    size_t n = 0, nacks = 0, off = 0;
    while (off < len) {
        size_t k = oae_log_decode(buf + off, len - off, &all[n]);
        if (!k) {
            if (valid_after(buf, len, off)) {
                rc = -EBADMSG;
                goto out;
            }
            st->torn = len - off;
            break;
        }
        v1[n++] = k == OAE_LOG_V1_REC_LEN;
        off += k;
    }

    /* 2. what the records say, against the registers */
    for (size_t i = 0; i < n; i++) {
        oae_log_record *r = &all[i];
        int open = r->tid > lo && r->tid <= hi;
        switch (r->type) {
        case OAE_LOG_HEAD:
            if (r->key > st->last_key) st->last_key = r->key;
            if (r->tid > st->released) st->released = r->tid;
            if (r->aux > st->delivered_max) st->delivered_max = r->aux;
            break;
        case OAE_LOG_OFFER:
            if (r->tid == 0 || r->tid > hi)
                break; /* never revealed: the tid is offered again after the restart */
            if (r->key > st->last_key)
                st->last_key = r->key;
            if (open)
                offer_at[r->tid - lo - 1] = (long)i;
            break;
        case OAE_EV_COMMITTED:
        case OAE_EV_ABORTED:
            if (r->key > st->last_key && r->tid <= hi)
                st->last_key = r->key;
            if (open && outcome_at[r->tid - lo - 1] < 0)
                outcome_at[r->tid - lo - 1] = (long)i;
            break;
        case OAE_LOG_ACK:
            if (r->tid && r->tid <= r->aux)
                acks[nacks++] = (range){r->tid, r->aux};
            break;
        case OAE_LOG_RELEASE:
            if (r->tid > st->released) st->released = r->tid;
            break;
        case OAE_EV_DELIVERED:
            if (r->tid > st->delivered_max) st->delivered_max = r->tid;
            if (v1[i] && r->tid > st->released) /* the first format had no releases */
                st->released = r->tid;
            break;
        default:
            break;
        }
    }
    nacks = merge_ranges(acks, nacks);

    /* 3. the live records: HEAD, then in log order */
    st->rec = malloc((n + 1) * sizeof *st->rec);
    if (!st->rec)
        goto out;
    oae_log_record *h = &st->rec[st->n++];
    memset(h, 0, sizeof *h);
    h->type = OAE_LOG_HEAD;
    h->key = st->last_key;
    h->tid = st->released;
    h->aux = st->delivered_max;
    for (size_t i = 0; i < n; i++) {
        oae_log_record r = all[i];
        int open = r.tid > lo && r.tid <= hi;
        int live = 0;
        if (r.type == OAE_LOG_OFFER) {
            live = open && offer_at[r.tid - lo - 1] == (long)i &&
                   outcome_at[r.tid - lo - 1] < 0;
        } else if (is_outcome(r.type)) {
            if (covered(acks, nacks, r.tid))
                r.flags |= OAE_LOGF_ACKED;
            if (open)
                live = outcome_at[r.tid - lo - 1] == (long)i; /* the engine settles it again */
            else
                live = r.tid <= lo && r.tid && !(r.flags & OAE_LOGF_ACKED);
        } else if (r.type == OAE_EV_DELIVERED) {
            live = r.tid > st->released;
        }
        if (live)
            st->rec[st->n++] = r;
    }
    rc = 0;
out:
    free(all);
    free(v1);
    free(acks);
    free(offer_at);
    free(outcome_at);
    return rc;
}

int oae_log_store(const char *path, const oae_log_state *st)
{
    uint8_t *img = malloc(st->n * OAE_LOG_REC_LEN + 1);
    if (!img)
        return -ENOMEM;
    for (size_t i = 0; i < st->n; i++)
        oae_log_encode(img + i * OAE_LOG_REC_LEN, &st->rec[i]);
    int rc = oae_file_replace(path, img, st->n * OAE_LOG_REC_LEN);
    free(img);
    return rc;
}

int oae_log_read_file(const char *path, uint8_t **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -errno;
    struct stat sb;
    int rc = 0;
    if (fstat(fd, &sb) < 0) {
        rc = -errno;
        goto out;
    }
    size_t want = (size_t)sb.st_size;
    *buf = malloc(want + 1);
    if (!*buf) {
        rc = -ENOMEM;
        goto out;
    }
    while (*len < want) {
        ssize_t r = read(fd, *buf + *len, want - *len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            break;
        }
        if (r == 0)
            break; /* shrank meanwhile: take what is there */
        *len += (size_t)r;
    }
out:
    close(fd);
    if (rc) {
        free(*buf);
        *buf = NULL;
        *len = 0;
    }
    return rc;
}
