/* oae epoch runner: the node's epoch machine stepped by its link pumps' threads (epochrun.h). */
#include "epochrun.h"
#include "bigend.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ the slot file */
/* oae/epoch/durable.py SlotFile: the file is 2*S bytes (S a multiple of 4096), slot 0 at 0
 * and slot 1 at S, each a frame: magic "OAEP", format 1 (u16), 0 (u16), sequence number
 * (u64), length (u32), CRC32 (zlib's) of those 20 bytes and the payload, the payload. */

#define SLOT_BLOCK 4096
#define SLOT_HDR 20
#define SLOT_FRAME 24
#define SLOT_FORMAT 1
#define SLOT_READ_MAX (1u << 20) /* larger files are not of this layout: rewritten */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* zlib.crc32(data, crc) */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

typedef struct slotfile {
    char *path;
    int fd;          /* -1 until the first write */
    uint64_t size;   /* S */
    uint64_t newest; /* offset of the newest slot */
    uint64_t seq;    /* its sequence number */
} slotfile;

static size_t frame(uint8_t *out, uint64_t seq, const uint8_t *payload, size_t len)
{
    memcpy(out, "OAEP", 4);
    put16(out + 4, SLOT_FORMAT);
    put16(out + 6, 0);
    put32(out + 8, (uint32_t)(seq >> 32));
    put32(out + 12, (uint32_t)seq);
    put32(out + 16, (uint32_t)len);
    put32(out + SLOT_HDR, crc32_update(crc32_update(0, out, SLOT_HDR), payload, len));
    memcpy(out + SLOT_FRAME, payload, len);
    return SLOT_FRAME + len;
}

/* the sequence number of the valid frame at off (1), or 0 if it is not one */
static int unframe(const uint8_t *d, uint64_t off, uint64_t limit, uint64_t *seq)
{
    if (off + SLOT_FRAME > limit || memcmp(d + off, "OAEP", 4) ||
        get32(d + off + 4) != (uint32_t)SLOT_FORMAT << 16)
        return 0;
    uint32_t len = get32(d + off + 16);
    if (off + SLOT_FRAME + len > limit)
        return 0;
    uint32_t crc = crc32_update(crc32_update(0, d + off, SLOT_HDR), d + off + SLOT_FRAME, len);
    if (crc != get32(d + off + SLOT_HDR))
        return 0;
    *seq = get64(d + off + 8);
    return 1;
}

static int newer(uint64_t a, uint64_t b)
{
    uint64_t d = a - b;
    return d != 0 && d < (1ull << 63);
}

static int fsync_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return -ENOMEM;
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = 0;
    int fd = open(slash ? dir : ".", O_RDONLY | O_CLOEXEC);
    free(dir);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

/* A new file with the record in slot 0, put in place atomically (temp file, fdatasync,
 * rename, directory fsync); the slots have room for the record to double. */
static int slot_create(slotfile *f, uint64_t seq, const uint8_t *payload, size_t len)
{
    uint64_t s = (2 * (SLOT_FRAME + len) + SLOT_BLOCK - 1) / SLOT_BLOCK * SLOT_BLOCK;
    if (s < SLOT_BLOCK)
        s = SLOT_BLOCK;
    uint8_t *img = calloc(2, s);
    size_t n = strlen(f->path) + 5;
    char *tmp = malloc(n);
    int rc = 0;
    if (!img || !tmp) {
        rc = -ENOMEM;
        goto out;
    }
    snprintf(tmp, n, "%s.tmp", f->path);
    frame(img, seq, payload, len);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    if (write(fd, img, 2 * s) != (ssize_t)(2 * s))
        rc = errno ? -errno : -EIO;
    else if (fdatasync(fd) < 0)
        rc = -errno;
    close(fd);
    if (!rc && rename(tmp, f->path) < 0)
        rc = -errno;
    if (!rc)
        rc = fsync_dir(f->path);
    if (!rc) {
        if (f->fd >= 0)
            close(f->fd);
        f->fd = open(f->path, O_RDWR | O_CLOEXEC);
        rc = f->fd < 0 ? -errno : 0;
        f->size = s;
        f->newest = 0;
        f->seq = seq;
    }
out:
    free(img);
    free(tmp);
    return rc;
}

/* Open the file and find its newest slot; 0, or 1 if it must be created (missing, or not
 * of this layout: an older JSON file, a damaged one), or -errno. */
static int slot_open(slotfile *f, uint64_t *seq)
{
    *seq = 1;
    f->fd = open(f->path, O_RDWR | O_CLOEXEC);
    if (f->fd < 0)
        return errno == ENOENT ? 1 : -errno;
    struct stat st;
    if (fstat(f->fd, &st) < 0)
        return -errno;
    uint64_t size = (uint64_t)st.st_size, s = size / 2;
    if (size > SLOT_READ_MAX || s < SLOT_BLOCK || s % SLOT_BLOCK || size != 2 * s)
        return 1;
    uint8_t *d = malloc(size);
    if (!d)
        return -ENOMEM;
    int rc = pread(f->fd, d, size, 0) == (ssize_t)size ? 1 : -EIO;
    int have = 0;
    for (uint64_t off = 0; rc == 1 && off <= s; off += s) {
        uint64_t q;
        if (unframe(d, off, off + s, &q) && (!have || newer(q, f->seq))) {
            have = 1;
            f->newest = off;
            f->seq = q;
        }
    }
    free(d);
    if (rc < 0)
        return rc;
    f->size = s;
    if (have)
        *seq = f->seq + 1;
    return have ? 0 : 1;
}

static int slot_write(slotfile *f, const uint8_t *payload, size_t len)
{
    uint64_t seq = f->seq + 1;
    if (f->fd < 0) {
        int rc = slot_open(f, &seq);
        if (rc != 0)
            return rc < 0 ? rc : slot_create(f, seq, payload, len);
    }
    if (SLOT_FRAME + len > f->size)
        return slot_create(f, seq, payload, len);
    uint8_t img[SLOT_FRAME + OAE_EPOCH_RECORD_MAX];
    if (len > OAE_EPOCH_RECORD_MAX) /* not a record of ours: the slow path */
        return slot_create(f, seq, payload, len);
    size_t n = frame(img, seq, payload, len);
    uint64_t off = f->newest == 0 ? f->size : 0;
    if (pwrite(f->fd, img, n, (off_t)off) != (ssize_t)n)
        return errno ? -errno : -EIO;
    if (fdatasync(f->fd) < 0)
        return -errno;
    f->newest = off;
    f->seq = seq;
    return 0;
}

int oae_slotfile_store(const char *path, const uint8_t *payload, size_t len)
{
    slotfile f = {(char *)path, -1, 0, 0, 0};
    int rc = slot_write(&f, payload, len);
    if (f.fd >= 0)
        close(f.fd);
    return rc;
}

/* ------------------------------------------------------------------ the runner */

#define RING (1u << 14)     /* events waiting for the application */
#define PUMP_BATCH 256      /* pump events taken at once */
#define ROOM_PER_INPUT 8    /* runner events one input may publish, at most */
#define CMDS 256
#define CONTROL_COOKIE OAE_PUMP_EARLY_COOKIE /* the runner's own CONTROL transfers: their
                                                outcomes may come before the link's store */
#define CTL_RING (1u << 14)   /* CONTROL log entries */
#define SENT_AT 4096          /* submit instants of the last CONTROL transfers, by number */
#define REFLECTED_MAX 16      /* per link: payloads of our last reflected wave transfers */

enum { CMD_PROPOSE = 1, CMD_CHECKPOINT = 2 };

typedef struct reflected_t { /* a wave transfer of ours the peer held: its payload */
    uint32_t tid;
    uint8_t payload[16], len;
} reflected_t;

typedef struct command {
    int type;
    uint64_t request;
    oae_epoch_wave wave;
    int ok;
} command;

#define LOG_AFFIX 64 /* room for the text around the epoch in a log line, NUL included */

struct oae_epochrun {
    oae_epoch *m;
    uint32_t node_id;
    size_t n;
    uint32_t ids[OAE_EPOCH_LINKS_MAX];
    oae_pump *pumps[OAE_EPOCH_LINKS_MAX];
    int flags;
    int cmdfd, evfd;
    pthread_mutex_t mu;
    /* held for a whole step (an input and all its actions, a record write included) by
     * the thread taking it, the runner's or a pump's: one step at a time, in order;
     * taken before mu */
    pthread_mutex_t step_mu;
    uint64_t ready; /* pumps whose events wait for the thread stepping (bit i: pump i) */
    volatile int stop;
    int failed;   /* the error that stopped it */
    int stepping; /* a record is being written: sends are held */
    int watch;    /* the application waits for a change (oae_epochrun_watch, a held send) */
    int changed;  /* a step ran since the last CHANGED */
    int backed_up; /* the ring had no room: the application's take wakes us */
    uint32_t epoch_seen; /* the committed epoch (durable), as the runner last saw it */
    int watch_epoch;     /* the application waits for epoch_seen to move (OAE_ER_EPOCH) */
    int log_fd;          /* -1, or where each new committed epoch is logged (one line) */
    char log_prefix[LOG_AFFIX], log_suffix[LOG_AFFIX];
    /* commands, under mu */
    command cmd[CMDS];
    uint32_t cmd_head, cmd_tail;
    /* events, under mu */
    oae_epochrun_event *ring;
    uint32_t head, tail;
    int notified;
    slotfile store;
    uint64_t control_seq;
    /* the CONTROL log, under mu */
    oae_epochrun_ctl *ctl;
    uint32_t ctl_head, ctl_tail;
    uint64_t sent_at[SENT_AT]; /* 0: a gated transfer (not timed) */
    reflected_t reflected[OAE_EPOCH_LINKS_MAX][REFLECTED_MAX]; /* (runner thread only) */
    oae_epochrun_stats st;
    int running;
    clockid_t cpuclock;
    /* runner thread only */
    oae_pump_event pev[PUMP_BATCH];
    uint32_t release_n, release_upto; /* deliveries consumed in the batch being drained */
    oae_epoch_action acts[OAE_EPOCH_ACTIONS_MAX]; /* the list being performed */
    oae_epochrun_event seen[OAE_EPOCH_ACTIONS_MAX]; /* its observations, published after */
};

static int link_index(const oae_epochrun *r, uint32_t id)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->ids[i] == id)
            return (int)i;
    return -1;
}

static void kick(int fd)
{
    uint64_t one = 1;
    if (write(fd, &one, sizeof one) < 0) { /* counter full: already readable */ }
}

static uint32_t ring_room(const oae_epochrun *r)
{
    return RING - (r->tail - r->head);
}

/* a new event at the end of the ring (mu held; room is checked before taking input) */
static oae_epochrun_event *publish(oae_epochrun *r, int type)
{
    oae_epochrun_event *e = &r->ring[r->tail++ % RING];
    memset(e, 0, sizeof *e);
    e->type = (uint8_t)type;
    e->at_ns = oae_now_ns();
    if (!r->notified) {
        kick(r->evfd);
        r->notified = 1;
    }
    return e;
}

static oae_epochrun_ctl *control_log(oae_epochrun *r, int kind, uint32_t link, uint64_t at)
{
    if (r->ctl_tail - r->ctl_head == CTL_RING) {
        r->ctl_head++;
        r->st.control_log_lost++;
    }
    oae_epochrun_ctl *c = &r->ctl[r->ctl_tail++ % CTL_RING];
    memset(c, 0, sizeof *c);
    c->kind = (uint8_t)kind;
    c->link = link;
    c->at_ns = at;
    return c;
}

/* a leg in the CONTROL log: this node's action (acted, logged just before it is taken, so
 * the peer never logs its arrival earlier) or the peer's arriving */
static void log_leg(oae_epochrun *r, int kind, int acted, uint32_t link, uint32_t tid,
                    const uint8_t *payload, uint8_t len)
{
    oae_epochrun_ctl *c = control_log(r, kind, link, oae_now_ns());
    c->acted = (uint8_t)acted;
    c->tid = tid;
    c->len = len;
    if (len)
        memcpy(c->payload, payload, len);
}

static void publish_wave(oae_epochrun *r, int type, const oae_epoch_wave *w, int ok)
{
    oae_epochrun_event *e = publish(r, type);
    e->wave = *w;
    e->ok = (uint8_t)ok;
}

/* Stop for good on the machine's error (io = 0) or the record store's -errno (io = 1). */
static void fail_as(oae_epochrun *r, int err, int io)
{
    if (r->failed)
        return;
    r->failed = err;
    oae_epochrun_event *e = publish(r, OAE_ER_FAILED);
    e->info = err;
    e->ok = (uint8_t)io;
    r->stop = 1;
}

static void fail(oae_epochrun *r, int err)
{
    fail_as(r, err, 0);
}

/* Is the Persist at k superseded by a later one of the same list, with no action between
 * them that the outside world sees before the later record is durable? */
static int superseded(const oae_epoch_action *a, int k, int n)
{
    for (int j = k + 1; j < n; j++) {
        switch (a[j].type) {
        case OAE_EA_PERSIST:
            return 1;
        case OAE_EA_CAPTURE:
        case OAE_EA_DISCARD:
        case OAE_EA_DECIDED:
        case OAE_EA_CONVERGED:
            continue; /* published after the list, so after the later record anyway */
        default:
            return 0;
        }
    }
    return 0;
}

static int persist(oae_epochrun *r, uint32_t i)
{
    size_t len;
    const uint8_t *rec = oae_epoch_persisted(r->m, i, &len);
    uint8_t copy[OAE_EPOCH_RECORD_MAX];
    memcpy(copy, rec, len);
    r->stepping = 1;
    pthread_mutex_unlock(&r->mu);
    uint64_t t0 = oae_now_ns();
    int rc = slot_write(&r->store, copy, len);
    uint64_t dt = oae_now_ns() - t0;
    pthread_mutex_lock(&r->mu);
    r->stepping = 0;
    r->st.persists++;
    r->st.persist_ns += dt;
    return rc;
}

/* The committed epoch moved (its record is durable): the log line, written here so that
 * nobody else is woken per transition, and OAE_ER_EPOCH only if the application waits. */
static void new_epoch(oae_epochrun *r)
{
    r->epoch_seen = oae_epoch_epoch(r->m);
    if (r->log_fd >= 0) {
        char line[3 * LOG_AFFIX];
        int n = snprintf(line, sizeof line, "%s%u%s", r->log_prefix, r->epoch_seen,
                         r->log_suffix);
        if (write(r->log_fd, line, (size_t)n) < 0) { /* a log that is gone: not ours to fix */ }
    }
    if (r->watch_epoch) {
        r->watch_epoch = 0;
        publish_wave(r, OAE_ER_EPOCH, &oae_epoch_record_get(r->m)->committed, 1);
    }
}

/* Perform the n actions of the machine's last input, in order (mu held).  Observations
 * (Capture, Discard, Decided, Converged, a new committed epoch) are published after the
 * whole list, when every record of it is durable; a Capture with no application
 * checkpoint is answered at once, as the next input.  Returns 0, or the error that
 * failed the runner. */
static int perform(oae_epochrun *r, int n);

/* After an input: count it, mark the machine changed (`quiet`: only if it acted), and
 * perform its actions; or fail the runner on the machine's error. */
static int input_done(oae_epochrun *r, int rc, int quiet)
{
    r->st.steps++;
    if (rc < 0) {
        fail(r, rc);
        return rc;
    }
    if (rc > 0 || !quiet)
        r->changed = 1;
    return perform(r, rc);
}

static int perform(oae_epochrun *r, int n)
{
    oae_epoch_action *acts = r->acts; /* the next input overwrites the machine's list */
    memcpy(acts, oae_epoch_actions(r->m), (size_t)n * sizeof *acts);
    int seen = 0, captured = 0;
    oae_epoch_wave capture = {0, 0, 0};
    for (int k = 0; k < n; k++) {
        const oae_epoch_action *a = &acts[k];
        int i = link_index(r, a->link);
        oae_pump *p = i >= 0 ? r->pumps[i] : NULL;
        r->st.actions++;
        switch (a->type) {
        case OAE_EA_OFFER: {
            uint8_t len = a->len;
            uint8_t f = OAE_F_CONTROL | (a->gated ? OAE_OFFER_GATED : 0);
            uint64_t seq = ++r->control_seq, now = oae_now_ns();
            if (a->gated) /* logged before it leaves: the peer's arrival is logged later */
                log_leg(r, OAE_ERC_OFFER, 1, a->link, 0, a->payload, len);
            if (oae_pump_submit(p, a->payload, &len, 1, f, CONTROL_COOKIE | seq, NULL) < 0) {
                fail_as(r, -ENOMEM, 1);
                return r->failed;
            }
            r->sent_at[seq % SENT_AT] = a->gated ? 0 : now;
            break;
        }
        /* a decision the link can no longer take (it went down meanwhile) is taken by
         * the link's next round: the machine learns it from the link's events */
        case OAE_EA_HOLD:
            log_leg(r, OAE_ERC_HOLD, 1, a->link, a->tid, NULL, 0);
            oae_pump_hold(p, a->tid);
            break;
        case OAE_EA_REFUSE:
            oae_pump_refuse(p, a->tid);
            break;
        case OAE_EA_COMMIT: {
            const reflected_t *x = &r->reflected[i][a->tid % REFLECTED_MAX];
            int known = x->tid == a->tid;
            log_leg(r, OAE_ERC_COMMIT, 1, a->link, a->tid, x->payload, known ? x->len : 0);
            oae_pump_commit(p, a->tid);
            break;
        }
        case OAE_EA_REPORT:
            log_leg(r, OAE_ERC_REPORT, 1, a->link, a->tid, NULL, 0);
            oae_pump_report(p, a->tid);
            break;
        case OAE_EA_RESET:
            oae_pump_reset(p);
            break;
        case OAE_EA_PERSIST:
            if (!superseded(acts, k, n)) {
                int rc = persist(r, a->tid);
                if (rc < 0) {
                    fail_as(r, rc, 1);
                    return rc;
                }
            }
            break;
        case OAE_EA_LINK_EPOCH:
            oae_pump_set_epoch(p, a->epoch);
            break;
        case OAE_EA_CAPTURE:
            if (!(r->flags & OAE_EPOCHRUN_CHECKPOINT)) {
                captured = 1;
                capture = a->wave;
                break;
            }
            /* fallthrough */
        case OAE_EA_DISCARD:
        case OAE_EA_DECIDED:
        case OAE_EA_CONVERGED: {
            static const uint8_t type[] = {
                [OAE_EA_CAPTURE] = OAE_ER_CAPTURE, [OAE_EA_DISCARD] = OAE_ER_DISCARD,
                [OAE_EA_DECIDED] = OAE_ER_DECIDED, [OAE_EA_CONVERGED] = OAE_ER_CONVERGED};
            oae_epochrun_event *e = &r->seen[seen++];
            memset(e, 0, sizeof *e);
            e->type = type[a->type];
            e->wave = a->wave;
            e->ok = a->type == OAE_EA_DECIDED ? a->ok : 1;
            break;
        }
        default:
            break;
        }
    }
    for (int k = 0; k < seen; k++)
        publish_wave(r, r->seen[k].type, &r->seen[k].wave, r->seen[k].ok);
    if (oae_epoch_epoch(r->m) != r->epoch_seen)
        new_epoch(r);
    if (captured)
        return input_done(r, oae_epoch_checkpoint_written(r->m, &capture, 1), 0);
    return 0;
}

/* A delivery of the pump being drained that nobody else will see: released with the
 * batch (room for the peer; with a state dir, never handed out again). */
static void consumed(oae_epochrun *r, uint32_t tid)
{
    r->release_n++;
    if (tid > r->release_upto)
        r->release_upto = tid;
}

/* One event of pump i (mu held). */
static int on_pump_event(oae_epochrun *r, size_t i, const oae_pump_event *pe)
{
    oae_epoch *m = r->m;
    const oae_event *e = &pe->ev;
    uint32_t id = r->ids[i];
    int control = (e->data_flags & OAE_F_CONTROL) != 0;
    int mine = (pe->cookie & CONTROL_COOKIE) != 0; /* an outcome of a runner CONTROL offer */
    int rc = 0, accepted;
    switch (e->type) {
    case OAE_EV_LINK_UP:
        rc = input_done(r, oae_epoch_link_up(m, id), 0);
        break;
    case OAE_EV_LINK_DOWN:
    case OAE_PEV_ERROR: /* the pump stopped: the link is gone for good */
        rc = input_done(r, oae_epoch_link_down(m, id), 0);
        break;
    case OAE_EV_OFFERED:
        r->st.control_in++;
        log_leg(r, OAE_ERC_OFFER, 0, id, e->tid, e->payload, e->length);
        return input_done(r, oae_epoch_offered(m, id, e->tid, e->payload, e->length, e->info),
                          0);
    case OAE_EV_REFLECTED: {
        r->st.control_in++;
        reflected_t *x = &r->reflected[i][e->tid % REFLECTED_MAX];
        x->tid = e->tid;
        x->len = e->length;
        memcpy(x->payload, e->payload, e->length);
        log_leg(r, OAE_ERC_HOLD, 0, id, e->tid, NULL, 0);
        return input_done(r, oae_epoch_reflected(m, id, e->tid, e->payload, e->length), 0);
    }
    case OAE_EV_DELIVERED:
        if (control) {
            r->st.control_in++;
            consumed(r, e->tid);
            log_leg(r, OAE_ERC_COMMIT, 0, id, e->tid, e->payload, e->length);
            return input_done(r, oae_epoch_delivered(m, id, e->tid, e->payload, e->length), 0);
        }
        accepted = 0;
        if (e->length >= OAE_EPOCHRUN_TAG_LEN)
            rc = input_done(r, oae_epoch_app_frame(m, id, e->tid, get32(e->payload), &accepted),
                            1);
        if (!accepted) {
            r->st.mixed_frames++;
            consumed(r, e->tid);
            return rc;
        }
        r->st.app_frames++;
        break;
    case OAE_EV_COMMITTED:
    case OAE_EV_ABORTED:
        if (mine) {
            r->st.control_in++;
            oae_pump_ack(r->pumps[i], e->tid, e->tid, 0); /* never handed out again */
            uint64_t now = oae_now_ns();
            uint64_t sent = r->sent_at[(pe->cookie & ~CONTROL_COOKIE) % SENT_AT];
            if (sent) /* a status message (wave transfers' outcomes time the wave) */
                control_log(r, OAE_ERC_SETTLED, id, now)->took_ns = now - sent;
            else if (e->type == OAE_EV_COMMITTED && !(e->flags & OAE_EVF_ROUND))
                log_leg(r, OAE_ERC_REPORT, 0, id, e->tid, NULL, 0);
            const uint8_t *payload = e->length ? e->payload : NULL;
            return input_done(r, oae_epoch_outcome(m, id, e->tid, e->type == OAE_EV_COMMITTED,
                                                   payload, e->length,
                                                   (e->flags & OAE_EVF_ROUND) != 0),
                              0);
        }
        if (pe->cookie) /* an application transfer of this life (restored ones are not) */
            rc = input_done(r, oae_epoch_app_settled(m, id), 1);
        break;
    default:
        break;
    }
    /* the link's own event, for its Link object */
    oae_epochrun_event *out = publish(r, OAE_ER_LINK);
    out->link = id;
    out->pe = *pe;
    return rc;
}

static int run_command(oae_epochrun *r, const command *c)
{
    if (c->type == CMD_PROPOSE) {
        int started = 0;
        oae_epoch_wave w = {0, 0, 0};
        int rc = oae_epoch_propose(r->m, &started, &w);
        oae_epochrun_event *e = publish(r, OAE_ER_PROPOSED);
        e->request = c->request;
        e->ok = (uint8_t)(rc >= 0 && started);
        e->wave = w;
        e->info = rc < 0 ? rc : 0;
        if (rc == OAE_EPOCH_ERANGE) /* nothing changed: the application is told */
            return 0;
        return input_done(r, rc, 0);
    }
    return input_done(r, oae_epoch_checkpoint_written(r->m, &c->wave, c->ok), 0);
}

oae_epochrun *oae_epochrun_new(uint32_t node_id, const uint32_t *ids, oae_pump *const *pumps,
                               size_t n, const uint8_t *record, size_t len,
                               const char *record_path, int flags, int *err)
{
    oae_epoch_record rec;
    *err = 0;
    if (n > OAE_EPOCH_LINKS_MAX) {
        *err = OAE_EPOCH_ELINK;
        return NULL;
    }
    if (record && oae_epoch_record_decode(record, len, &rec) != 0) {
        *err = OAE_EPOCH_ERECORD;
        return NULL;
    }
    oae_epochrun *r = calloc(1, sizeof *r);
    if (!r) {
        *err = -ENOMEM;
        return NULL;
    }
    r->cmdfd = r->evfd = r->store.fd = r->log_fd = -1;
    r->node_id = node_id;
    r->n = n;
    r->flags = flags;
    for (size_t i = 0; i < n; i++) {
        r->ids[i] = ids[i];
        r->pumps[i] = pumps[i];
        if (link_index(r, ids[i]) != (int)i) {
            *err = OAE_EPOCH_ELINK; /* the same neighbour twice */
            goto fail;
        }
    }
    r->m = oae_epoch_new(node_id, ids, n, record ? &rec : NULL, err);
    if (!r->m)
        goto fail;
    r->epoch_seen = oae_epoch_epoch(r->m);
    r->ring = calloc(RING, sizeof *r->ring);
    r->ctl = calloc(CTL_RING, sizeof *r->ctl);
    r->store.path = strdup(record_path);
    r->cmdfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    r->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!r->ring || !r->ctl || !r->store.path || r->cmdfd < 0 || r->evfd < 0) {
        *err = r->cmdfd < 0 || r->evfd < 0 ? -errno : -ENOMEM;
        goto fail;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->step_mu, NULL);
    return r;
fail:
    oae_epoch_free(r->m);
    free(r->ring);
    free(r->ctl);
    free(r->store.path);
    if (r->cmdfd >= 0)
        close(r->cmdfd);
    if (r->evfd >= 0)
        close(r->evfd);
    free(r);
    return NULL;
}

void oae_epochrun_free(oae_epochrun *r)
{
    if (!r)
        return;
    oae_epoch_free(r->m);
    pthread_mutex_destroy(&r->mu);
    pthread_mutex_destroy(&r->step_mu);
    close(r->cmdfd);
    close(r->evfd);
    if (r->store.fd >= 0)
        close(r->store.fd);
    free(r->store.path);
    free(r->ring);
    free(r->ctl);
    free(r);
}

void oae_epochrun_stop(oae_epochrun *r)
{
    r->stop = 1;
    __sync_synchronize();
    kick(r->cmdfd);
}

/* room in the ring for the events of one more batch of inputs (mu held) */
static int room_for(oae_epochrun *r, uint32_t inputs)
{
    r->backed_up = ring_room(r) < inputs * ROOM_PER_INPUT + 2; /* + CHANGED, FAILED */
    return !r->backed_up;
}

/* CHANGED for a waiter, once per batch of inputs (mu held). */
static void changed(oae_epochrun *r)
{
    if (r->changed && r->watch) {
        publish(r, OAE_ER_CHANGED);
        r->changed = r->watch = 0;
    }
}

/* A batch of pump i's events, while the ring has room for what they make (step_mu and mu
 * held); events left while it is full are taken by the runner's thread later.  A full
 * batch marks the pump ready again: more may be waiting. */
static void take_events(oae_epochrun *r, size_t i)
{
    if (r->failed || r->stop || !room_for(r, PUMP_BATCH))
        return;
    size_t got = oae_pump_events(r->pumps[i], r->pev, PUMP_BATCH);
    r->release_n = r->release_upto = 0;
    for (size_t e = 0; e < got && !r->failed; e++)
        on_pump_event(r, i, &r->pev[e]);
    if (r->release_n)
        oae_pump_release(r->pumps[i], r->release_n, r->release_upto);
    if (got == PUMP_BATCH)
        __atomic_or_fetch(&r->ready, 1ull << i, __ATOMIC_SEQ_CST);
}

/* The events of every pump marked ready (step_mu and mu held). */
static void take_ready(oae_epochrun *r)
{
    uint64_t m;
    while ((m = __atomic_exchange_n(&r->ready, 0, __ATOMIC_SEQ_CST)))
        for (size_t i = 0; i < r->n; i++)
            if (m & (1ull << i))
                take_events(r, i);
}

/* End a step: release mu and step_mu, and step again for the pumps marked ready
 * meanwhile, whose threads found step_mu taken and left their events to us. */
static void end_step(oae_epochrun *r)
{
    for (;;) {
        changed(r);
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_unlock(&r->step_mu);
        if (!__atomic_load_n(&r->ready, __ATOMIC_SEQ_CST) || pthread_mutex_trylock(&r->step_mu))
            return;
        pthread_mutex_lock(&r->mu);
        take_ready(r);
    }
}

/* The per-hop path: pump i's own thread hands over its events as soon as they are
 * visible (oae_pump_set_consumer), so a leg is decided, recorded and answered without
 * waking this runner's thread, which stays for commands and for events left while the
 * ring was full.  A pump that finds another thread stepping does not wait for it: that
 * thread takes its events before it lets go (end_step). */
static void pump_ready(void *arg, size_t i)
{
    oae_epochrun *r = arg;
    __atomic_or_fetch(&r->ready, 1ull << i, __ATOMIC_SEQ_CST);
    if (pthread_mutex_trylock(&r->step_mu))
        return;
    pthread_mutex_lock(&r->mu);
    take_ready(r);
    end_step(r);
}

int oae_epochrun_run(oae_epochrun *r)
{
    struct pollfd pf[OAE_EPOCH_LINKS_MAX + 1];
    pthread_setname_np(pthread_self(), "oae-epochrun"); /* for top -H, perf --tid */
    pthread_mutex_lock(&r->step_mu);
    pthread_mutex_lock(&r->mu);
    uint64_t cpu0 = oae_thread_cpu_ns();
    r->running = pthread_getcpuclockid(pthread_self(), &r->cpuclock) == 0;
    r->st.cpu_ns -= cpu0;
    r->epoch_seen = oae_epoch_epoch(r->m);
    for (size_t i = 0; i < r->n; i++) /* every link end carries the committed epoch */
        oae_pump_set_epoch(r->pumps[i], r->epoch_seen);
    input_done(r, oae_epoch_start(r->m), 0);
    for (size_t i = 0; i < r->n; i++) /* from now on the pumps' threads step the machine */
        oae_pump_set_consumer(r->pumps[i], pump_ready, r, i);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_unlock(&r->step_mu);
    while (!r->stop) {
        /* wait for a command, or for events of a pump while there is room for them */
        nfds_t k = 0;
        pf[k++] = (struct pollfd){.fd = r->cmdfd, .events = POLLIN};
        pthread_mutex_lock(&r->mu);
        int room = room_for(r, PUMP_BATCH);
        pthread_mutex_unlock(&r->mu);
        for (size_t i = 0; room && i < r->n; i++)
            pf[k++] = (struct pollfd){.fd = oae_pump_event_fd(r->pumps[i]), .events = POLLIN};
        if (ppoll(pf, k, NULL, NULL) < 0 && errno != EINTR) {
            int err = -errno;
            pthread_mutex_lock(&r->mu);
            fail_as(r, err, 1);
            pthread_mutex_unlock(&r->mu);
            break;
        }
        r->st.wakeups++;
        uint64_t v;
        if (pf[0].revents && read(r->cmdfd, &v, sizeof v) < 0) { /* already reset */ }
        pthread_mutex_lock(&r->step_mu);
        pthread_mutex_lock(&r->mu);
        while (!r->failed && r->cmd_head != r->cmd_tail && room_for(r, 1)) {
            command c = r->cmd[r->cmd_head++ % CMDS];
            run_command(r, &c);
        }
        /* every pump, signalled or not: events its thread left while the ring was full */
        for (size_t i = 0; i < r->n; i++)
            take_events(r, i);
        take_ready(r);
        end_step(r);
    }
    for (size_t i = 0; i < r->n; i++) /* (mu released: a call may be waiting for it) */
        oae_pump_set_consumer(r->pumps[i], NULL, NULL, 0);
    pthread_mutex_lock(&r->mu);
    r->running = 0;
    r->st.cpu_ns += oae_thread_cpu_ns();
    int rc = r->failed;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int oae_epochrun_event_fd(const oae_epochrun *r)
{
    return r->evfd;
}

size_t oae_epochrun_events(oae_epochrun *r, oae_epochrun_event *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    while (n < max && r->head != r->tail)
        out[n++] = r->ring[r->head++ % RING];
    if (r->head == r->tail && r->notified) {
        uint64_t v;
        if (read(r->evfd, &v, sizeof v) < 0) { /* already reset */ }
        r->notified = 0;
    }
    if (r->backed_up && n)
        kick(r->cmdfd); /* room again: the runner takes pump events again */
    pthread_mutex_unlock(&r->mu);
    return n;
}

static int command_push(oae_epochrun *r, const command *c)
{
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    if (r->failed || r->stop)
        rc = OAE_EPOCHRUN_STOPPED;
    else if (r->cmd_tail - r->cmd_head == CMDS)
        rc = -EAGAIN;
    else
        r->cmd[r->cmd_tail++ % CMDS] = *c;
    pthread_mutex_unlock(&r->mu);
    if (!rc)
        kick(r->cmdfd);
    return rc;
}

int oae_epochrun_propose(oae_epochrun *r, uint64_t request)
{
    command c = {CMD_PROPOSE, request, {0, 0, 0}, 0};
    return command_push(r, &c);
}

int oae_epochrun_checkpoint_written(oae_epochrun *r, const oae_epoch_wave *wave, int ok)
{
    command c = {CMD_CHECKPOINT, 0, *wave, ok};
    return command_push(r, &c);
}

/* (mu held) */
static void watch_locked(oae_epochrun *r)
{
    r->watch = 1;
    if (r->changed) { /* it moved since the last CHANGED: say so now */
        publish(r, OAE_ER_CHANGED);
        r->changed = r->watch = 0;
    }
}

int64_t oae_epochrun_send(oae_epochrun *r, uint32_t link, const uint8_t *payloads,
                          const uint8_t *lens, size_t n, uint64_t cookie0)
{
    uint8_t buf[64 * 16], blen[64];
    int i = link_index(r, link);
    if (i < 0)
        return OAE_EPOCHRUN_NOLINK;
    for (size_t k = 0; k < n; k++)
        if (lens[k] > 16 - OAE_EPOCHRUN_TAG_LEN)
            return OAE_EPOCHRUN_TOOLONG;
    pthread_mutex_lock(&r->mu);
    int64_t tag = r->failed || r->stop ? OAE_EPOCHRUN_STOPPED : OAE_EPOCHRUN_HELD;
    if (!r->failed && !r->stop && !r->stepping)
        tag = oae_epoch_send_epoch(r->m, link);
    if (tag < 0) {
        if (tag == OAE_EPOCHRUN_HELD)
            watch_locked(r);
        r->st.held_sends += tag == OAE_EPOCHRUN_HELD;
        pthread_mutex_unlock(&r->mu);
        return tag;
    }
    for (size_t done = 0; done < n;) {
        size_t b = n - done < 64 ? n - done : 64;
        for (size_t k = 0; k < b; k++) {
            uint8_t *p = buf + 16 * k;
            put32(p, (uint32_t)tag);
            memcpy(p + OAE_EPOCHRUN_TAG_LEN, payloads + 16 * (done + k), lens[done + k]);
            blen[k] = (uint8_t)(lens[done + k] + OAE_EPOCHRUN_TAG_LEN);
        }
        if (oae_pump_submit(r->pumps[i], buf, blen, b, 0, cookie0 + done, NULL) < 0) {
            pthread_mutex_unlock(&r->mu);
            return -ENOMEM; /* the first `done` went out: the caller's outcomes tell */
        }
        for (size_t k = 0; k < b; k++)
            oae_epoch_app_sent(r->m, link);
        done += b;
    }
    r->st.app_sent += n;
    pthread_mutex_unlock(&r->mu);
    return tag;
}

uint32_t oae_epochrun_epoch(oae_epochrun *r)
{
    pthread_mutex_lock(&r->mu);
    uint32_t e = r->epoch_seen;
    pthread_mutex_unlock(&r->mu);
    return e;
}

void oae_epochrun_watch_epoch(oae_epochrun *r, uint32_t known)
{
    pthread_mutex_lock(&r->mu);
    if (r->epoch_seen != known)
        publish_wave(r, OAE_ER_EPOCH, &oae_epoch_record_get(r->m)->committed, 1);
    else
        r->watch_epoch = 1;
    pthread_mutex_unlock(&r->mu);
}

int oae_epochrun_log_epochs(oae_epochrun *r, int fd, const char *prefix, const char *suffix)
{
    if (strlen(prefix) >= LOG_AFFIX || strlen(suffix) >= LOG_AFFIX)
        return -EINVAL;
    pthread_mutex_lock(&r->mu);
    r->log_fd = fd;
    strcpy(r->log_prefix, prefix);
    strcpy(r->log_suffix, suffix);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

void oae_epochrun_watch(oae_epochrun *r)
{
    pthread_mutex_lock(&r->mu);
    watch_locked(r);
    pthread_mutex_unlock(&r->mu);
}

size_t oae_epochrun_control_log(oae_epochrun *r, oae_epochrun_ctl *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&r->mu);
    while (n < max && r->ctl_head != r->ctl_tail)
        out[n++] = r->ctl[r->ctl_head++ % CTL_RING];
    pthread_mutex_unlock(&r->mu);
    return n;
}

const oae_epoch *oae_epochrun_lock(oae_epochrun *r)
{
    pthread_mutex_lock(&r->mu);
    return r->m;
}

void oae_epochrun_unlock(oae_epochrun *r)
{
    pthread_mutex_unlock(&r->mu);
}

int oae_epochrun_ready(oae_epochrun *r)
{
    pthread_mutex_lock(&r->mu);
    int ready = 1;
    oae_epoch_link_state ls;
    for (size_t i = 0; oae_epoch_link_get(r->m, i, &ls) == 0; i++)
        ready &= ls.up && ls.has_heard;
    pthread_mutex_unlock(&r->mu);
    return ready;
}

void oae_epochrun_stats_get(oae_epochrun *r, oae_epochrun_stats *out)
{
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    struct timespec ts;
    if (r->running && clock_gettime(r->cpuclock, &ts) == 0)
        out->cpu_ns += (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    pthread_mutex_unlock(&r->mu);
}
