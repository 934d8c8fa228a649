/* oae pump: AF_PACKET socket setup and the batched receive/engine/send loop. */
#include "pump.h"
#include "durable.h"
#include "evlog.h"
#include "txring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>

static const uint8_t HELLO_GROUP[6] = {0x03, 0x0a, 0xe0, 0x00, 0x00, 0x01};

int oae_sock_open(const char *ifname, uint16_t ethertype, int flags, uint8_t *mac_out,
                  int *mtu_out)
{
    struct ifreq ifr;
    if (strlen(ifname) >= IFNAMSIZ)
        return -ENODEV;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ethertype));
    if (fd < 0)
        return -errno;
    int one = 1, rc;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
        goto fail;
    int ifindex = ifr.ifr_ifindex;
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
        goto fail;
    memcpy(mac_out, ifr.ifr_hwaddr.sa_data, 6);
    if (ioctl(fd, SIOCGIFMTU, &ifr) < 0)
        goto fail;
    *mtu_out = ifr.ifr_mtu;

    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ethertype);
    sll.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        goto fail;
    /* with several sockets on one interface, never read back what we sent ourselves */
    if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0)
        goto fail;
    /* real NICs filter unknown multicast: ask for the discovery group */
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = ifindex;
    mr.mr_type = PACKET_MR_MULTICAST;
    mr.mr_alen = 6;
    memcpy(mr.mr_address, HELLO_GROUP, 6);
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0)
        goto fail;
    int buf = 4 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    if ((flags & OAE_SOCK_BYPASS) &&
        setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
        goto fail;
    return fd;
fail:
    rc = -errno;
    close(fd);
    return rc;
}

int oae_sock_set_rcvtimeo(int fd, uint64_t ns)
{
    struct timeval tv = {.tv_sec = (time_t)(ns / 1000000000ull),
                         .tv_usec = (suseconds_t)(ns % 1000000000ull / 1000)};
    if (ns && !tv.tv_sec && !tv.tv_usec)
        tv.tv_usec = 1;
    return setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ? -errno : 0;
}

int oae_sock_close(int fd)
{
    return close(fd) < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------------------------- */
/* the pump                                                                              */
/* ------------------------------------------------------------------------------------- */

#define RX_BATCH 64
#define TX_BATCH 64
#define EV_BATCH 256
#define APP_RING (1u << 16)     /* events waiting for the application */
#define COOKIE_RING (2u * OAE_LINK_WINDOW_MAX)
#define WAIT_MIN_US 4096        /* SO_RCVTIMEO has jiffy resolution anyway */
#define WAIT_MAX_US 16384       /* also bounds how long oae_pump_stop takes */
#define BEAT_WAIT_NS 50000ull   /* how long to wait for the next frame of a beat */
#define ANSWER_WAIT_NS 50000ull /* how long to poll for the answer to a beat we sent */
#define NEAR_NS 8000000ull      /* timers closer than this are waited for with ppoll */
#define IDLE_WAIT_MAX_NS 250000000ull /* an idle loop's longest sleep (stop wakes it anyway) */
#define RING_WAIT_NS 1000000ull /* longest wait for a TX ring slot (a NIC's tx completion) */
#define LOGBUF_RECS 256         /* log records buffered before a write() */
#define LOG_LIMIT_DEFAULT (8u << 20) /* compact events.log after this many bytes of growth */

/* an outgoing tid open when the process restarted: what the log knows of it */
typedef struct restored_tid {
    uint64_t key;
    uint8_t logged; /* the type of its outcome record already in the log (0: none) */
    uint8_t len, data_flags;
    uint8_t payload[OAE_PAYLOAD_MAX];
} restored_tid;

typedef struct tid_range {
    uint32_t lo, hi;
} tid_range;

struct oae_pump {
    int fd, evfd, wakefd, flags;
    int gates; /* cfg->gates: gated submissions are valid */
    uint32_t beat;
    uint64_t wait_us; /* the receive timeout currently set (0: none yet) */
    int logfd;
    int log_dirty; /* events.log written since its last fdatasync (pump thread only) */
    int log_err;   /* a failed log write, reported by the next drain_events */
    char *durable_path, *log_path;
    uint64_t log_size;  /* bytes in events.log (pump thread) */
    uint64_t log_live;  /* its size after the last compaction */
    uint64_t log_limit; /* compact once it grew by this much (0: never) */
    int compacting;     /* the pump rewrites events.log (mu released): others must not write */
    oae_link *link;
    pthread_mutex_t mu;
    volatile int stop;
    int notified;
    int backed_up; /* the app ring filled up: events wait in the engine */
    int persist_pending; /* the engine asked for its registers to be stored */
    int sleeping;        /* the loop waits on wakefd too (the link is idle): wake it */
    int woken;           /* wakefd was written and not yet read */
    volatile int kick;   /* the application made work (seen by the busy-poll spin) */
    oae_pump_consumer consumer; /* takes events in the pump thread (under mu) */
    void *consumer_arg;
    size_t consumer_index;
    int consuming; /* the pump thread is calling the consumer */
    int deferred;  /* the loop calls the consumer before it sleeps: no event fd write */
    int running;         /* the loop runs: cpuclock is valid */
    clockid_t cpuclock;  /* CPU clock of the pump thread */
    uint64_t cpu_done;   /* CPU time of finished runs */
    /* application events: a ring, guarded by mu */
    oae_pump_event *app;
    uint32_t app_head, app_tail;
    /* events before app_vis may be taken: the durable state that covers them is stored */
    uint32_t app_vis;
    /* transfers queued by the application, not yet offered: a growable ring, under mu */
    uint8_t *q_payload, *q_len;
    uint64_t *q_cookie, *q_key;
    size_t q_cap, q_head, q_count;
    uint8_t *q_flags;
    /* posted transfers (cookie 0: their outcomes go to the application's stream) offered
     * and not yet acknowledged; at post_limit nothing more is offered (bounded memory) */
    uint64_t posted_open, post_limit;
    /* cookie and application key of each outstanding outgoing tid */
    uint64_t cookies[COOKIE_RING];
    uint64_t keys[COOKIE_RING];
    uint64_t key_logged, key_durable; /* highest key offered / in a stored OFFER record */
    /* the application's acknowledgements and releases, logged by the pump thread (mu) */
    tid_range *acks;
    size_t nacks, acks_cap;
    uint32_t release_to, release_logged; /* incoming tids <= release_to are released */
    /* after a restart: events handed out again from the log, then the open tids' table */
    oae_pump_event *replay;
    size_t replay_n, replay_next;
    uint32_t replay_unreleased; /* replayed deliveries (the engine does not count them) */
    restored_tid *rst;
    uint32_t rst_lo, rst_n; /* rst[i] is tid rst_lo + i */
    oae_pump_stats st;
    /* loop buffers (pump thread only) */
    uint8_t rx_buf[RX_BATCH][128];
    struct mmsghdr rx_msg[RX_BATCH];
    struct iovec rx_iov[RX_BATCH];
    uint8_t tx_buf[TX_BATCH][OAE_FRAME_LEN];
    struct mmsghdr tx_msg[TX_BATCH];
    struct iovec tx_iov[TX_BATCH];
    oae_txring ring; /* in use when st.tx_ring */
    oae_event evs[EV_BATCH];
    size_t nlog; /* records in logbuf */
    uint8_t logbuf[LOGBUF_RECS * OAE_LOG_REC_LEN];
};

/* ---- waking the loop ---- */

/* The application made work for the loop (mu held): a loop waiting on an idle link is
 * woken through wakefd; a loop in a busy exchange sees it at the next frame (within a
 * round trip), and the busy-poll spin sees `kick`.  Costs nothing but a store while the
 * link is busy. */
static void wake_pump(oae_pump *p)
{
    p->kick = 1;
    if (p->sleeping && !p->woken) {
        uint64_t one = 1;
        if (write(p->wakefd, &one, sizeof one) == sizeof one)
            p->woken = 1;
    }
}

/* ---- the event log (pump thread, mu held) ---- */

static void log_flush(oae_pump *p)
{
    if (!p->nlog)
        return;
    size_t len = p->nlog * OAE_LOG_REC_LEN;
    ssize_t w = write(p->logfd, p->logbuf, len);
    p->nlog = 0;
    p->log_dirty = 1;
    if (w > 0)
        p->log_size += (uint64_t)w;
    if (w != (ssize_t)len && !p->log_err)
        p->log_err = w < 0 ? -errno : -EIO;
}

static void log_add(oae_pump *p, const oae_log_record *r)
{
    if (p->logfd < 0)
        return;
    if (p->nlog == LOGBUF_RECS)
        log_flush(p);
    oae_log_encode(p->logbuf + p->nlog++ * OAE_LOG_REC_LEN, r);
    p->st.log_records++;
}

/* An engine event (DELIVERED, COMMITTED, ABORTED) as a log record. */
static void log_event(oae_pump *p, const oae_event *e, uint64_t key)
{
    oae_log_record r;
    memset(&r, 0, sizeof r);
    r.type = e->type;
    r.flags = e->flags & OAE_EVF_RESTORED;
    r.data_flags = e->data_flags;
    r.length = e->length;
    r.tid = e->tid;
    r.key = key;
    memcpy(r.payload, e->payload, OAE_PAYLOAD_MAX);
    log_add(p, &r);
}

/* The application's acknowledgements and releases since the last call, as records. */
static void log_marks(oae_pump *p)
{
    oae_log_record r;
    memset(&r, 0, sizeof r);
    r.type = OAE_LOG_ACK;
    for (size_t i = 0; i < p->nacks; i++) {
        r.tid = p->acks[i].lo;
        r.aux = p->acks[i].hi;
        log_add(p, &r);
    }
    p->nacks = 0;
    if (p->release_to > p->release_logged) {
        memset(&r, 0, sizeof r);
        r.type = OAE_LOG_RELEASE;
        r.tid = p->release_to;
        log_add(p, &r);
        p->release_logged = p->release_to;
    }
}

/* The application's acknowledgements and releases, written at once from its thread (mu
 * held; the pump's buffer is empty whenever mu is free), so that a crash of the process
 * right after the call cannot hand them out again.  Not while a compaction rewrites the
 * file: the pump writes them after it. */
static void log_marks_now(oae_pump *p)
{
    if (p->compacting || p->logfd < 0) /* (logfd is swapped while compacting) */
        return;
    log_marks(p);
    log_flush(p);
}

static int add_ack(oae_pump *p, uint32_t lo, uint32_t hi)
{
    if (!p->durable_path || (p->flags & OAE_PUMP_NO_LOG) || !lo || hi < lo)
        return 0;
    if (p->nacks) { /* consecutive acknowledgements make one record */
        tid_range *last = &p->acks[p->nacks - 1];
        if (last->hi != UINT32_MAX && lo == last->hi + 1) {
            last->hi = hi;
            return 0;
        }
    }
    if (p->nacks == p->acks_cap) {
        size_t cap = p->acks_cap ? 2 * p->acks_cap : 64;
        tid_range *a = realloc(p->acks, cap * sizeof *a);
        if (!a)
            return -ENOMEM;
        p->acks = a;
        p->acks_cap = cap;
    }
    p->acks[p->nacks++] = (tid_range){lo, hi};
    return 0;
}

/* The outgoing tid a restarted engine settles again (RESTORED), or NULL. */
static restored_tid *restored_of(oae_pump *p, uint32_t tid)
{
    return tid >= p->rst_lo && tid - p->rst_lo < p->rst_n ? &p->rst[tid - p->rst_lo] : NULL;
}

/* ---- queue of submitted transfers ---- */

static int q_grow(oae_pump *p)
{
    size_t cap = p->q_cap ? p->q_cap * 2 : 4096;
    uint8_t *pl = malloc(cap * OAE_PAYLOAD_MAX), *ln = malloc(cap), *fl = malloc(cap);
    uint64_t *ck = malloc(cap * sizeof *ck), *ky = malloc(cap * sizeof *ky);
    if (!pl || !ln || !fl || !ck || !ky) {
        free(pl); free(ln); free(fl); free(ck); free(ky);
        return -ENOMEM;
    }
    for (size_t i = 0; i < p->q_count; i++) {
        size_t j = (p->q_head + i) % p->q_cap;
        memcpy(pl + i * OAE_PAYLOAD_MAX, p->q_payload + j * OAE_PAYLOAD_MAX, OAE_PAYLOAD_MAX);
        ln[i] = p->q_len[j];
        fl[i] = p->q_flags[j];
        ck[i] = p->q_cookie[j];
        ky[i] = p->q_key[j];
    }
    free(p->q_payload); free(p->q_len); free(p->q_flags); free(p->q_cookie); free(p->q_key);
    p->q_payload = pl; p->q_len = ln; p->q_flags = fl; p->q_cookie = ck; p->q_key = ky;
    p->q_cap = cap;
    p->q_head = 0;
    return 0;
}

int oae_pump_submit(oae_pump *p, const uint8_t *payloads, const uint8_t *lens, size_t n,
                    uint8_t flags, uint64_t cookie0, const uint64_t *keys)
{
    for (size_t i = 0; i < n; i++)
        if (lens[i] > OAE_PAYLOAD_MAX)
            return -3;
    /* (the engine would refuse such an offer for ever, and the queue would never move) */
    if ((flags & OAE_OFFER_GATED) && (!p->gates || !(flags & OAE_F_CONTROL)))
        return -3;
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < n; i++) {
        if (p->q_count == p->q_cap && q_grow(p) < 0) {
            pthread_mutex_unlock(&p->mu);
            return -ENOMEM;
        }
        size_t j = (p->q_head + p->q_count) % p->q_cap;
        memset(p->q_payload + j * OAE_PAYLOAD_MAX, 0, OAE_PAYLOAD_MAX);
        memcpy(p->q_payload + j * OAE_PAYLOAD_MAX, payloads + i * OAE_PAYLOAD_MAX, lens[i]);
        p->q_len[j] = lens[i];
        p->q_flags[j] = flags;
        p->q_cookie[j] = cookie0 ? cookie0 + i : 0;
        p->q_key[j] = keys ? keys[i] : 0;
        p->q_count++;
    }
    p->st.queued += n;
    if (n)
        wake_pump(p);
    pthread_mutex_unlock(&p->mu);
    return (int)n;
}

size_t oae_pump_backlog(oae_pump *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->q_count;
    pthread_mutex_unlock(&p->mu);
    return n;
}

/* offer queued transfers while the engine takes them (mu held).  Not while the app ring
 * is full: the engine then keeps undrained COMMITTED events, and offering more could
 * reuse the cookie slot of a tid whose event has not been matched yet.  Not a posted
 * transfer while post_limit posted ones are open (in flight, or settled and not yet
 * acknowledged): nothing behind it either, the queue is in order.  An offer with a key is
 * logged (tid, key, payload): the persist that precedes its frame makes the record durable
 * (a keyless one is not: its persist then syncs no log, as before keys existed). */
static void offer_queued(oae_pump *p)
{
    p->st.offers_paused = 0;
    while (p->q_count && !p->backed_up) {
        size_t j = p->q_head;
        uint32_t tid;
        if (!p->q_cookie[j] && p->post_limit && p->posted_open >= p->post_limit) {
            p->st.offers_paused = 1;
            return;
        }
        int rc = oae_link_offer(p->link, p->q_payload + j * OAE_PAYLOAD_MAX, p->q_len[j],
                                p->q_flags[j], &tid);
        if (rc != 0)
            return; /* window full or link not LIVE: try again after the next frame */
        uint64_t key = p->q_key[j];
        p->posted_open += !p->q_cookie[j];
        p->cookies[tid % COOKIE_RING] = p->q_cookie[j];
        p->keys[tid % COOKIE_RING] = key;
        if (key > p->key_logged)
            p->key_logged = key;
        if (p->logfd >= 0 && key) {
            oae_log_record r;
            memset(&r, 0, sizeof r);
            r.type = OAE_LOG_OFFER;
            r.data_flags = p->q_flags[j];
            r.length = p->q_len[j];
            r.tid = tid;
            r.key = key;
            memcpy(r.payload, p->q_payload + j * OAE_PAYLOAD_MAX, OAE_PAYLOAD_MAX);
            log_add(p, &r);
        }
        p->q_head = (p->q_head + 1) % p->q_cap;
        p->q_count--;
        p->st.submitted++;
    }
}

/* ---- lifecycle ---- */

/* What the log of a restarted link owes the application (restored: the registers, whose
 * in_delivered is raised to the highest delivery logged before them): the outcomes not
 * acknowledged and the deliveries not released are handed out again, first; the open
 * tids, which the engine settles again, get their keys and payloads back, and those whose
 * outcome is already logged are not reported twice.  The log is then compacted to its
 * live records (also on a fresh link: a new log). */
static int open_log(oae_pump *p, oae_link_durable *restored)
{
    oae_log_state st;
    memset(&st, 0, sizeof st);
    oae_log_record head = {.type = OAE_LOG_HEAD};
    int rc = 0;
    if (restored) {
        uint8_t *buf;
        size_t len;
        rc = oae_log_read_file(p->log_path, &buf, &len);
        if (!rc) {
            rc = oae_log_replay(buf, len, restored, &st);
            free(buf);
        }
        if (rc)
            goto out;
        if (st.delivered_max > restored->in_delivered)
            restored->in_delivered = st.delivered_max;
        p->key_logged = p->key_durable = st.last_key;
        p->release_to = p->release_logged = st.released;
        p->rst_lo = restored->out_settled + 1;
        p->rst_n = restored->out_hi - restored->out_settled;
        p->rst = calloc(p->rst_n + 1, sizeof *p->rst);
        p->replay = calloc(st.n + 1, sizeof *p->replay);
        rc = -ENOMEM;
        if (!p->rst || !p->replay)
            goto out;
        for (size_t i = 0; i < st.n; i++) {
            const oae_log_record *r = &st.rec[i];
            int outcome = r->type == OAE_EV_COMMITTED || r->type == OAE_EV_ABORTED;
            restored_tid *t = outcome || r->type == OAE_LOG_OFFER ? restored_of(p, r->tid) : NULL;
            if (t && (r->type == OAE_LOG_OFFER || !t->logged)) {
                t->key = r->key;
                t->len = r->length;
                t->data_flags = r->data_flags;
                memcpy(t->payload, r->payload, OAE_PAYLOAD_MAX);
                if (r->type != OAE_LOG_OFFER)
                    t->logged = r->type;
            }
            if ((outcome && !(r->flags & OAE_LOGF_ACKED)) || r->type == OAE_EV_DELIVERED) {
                oae_pump_event *a = &p->replay[p->replay_n++];
                a->ev.type = r->type;
                a->ev.flags = (r->flags & OAE_EVF_RESTORED) | OAE_PEVF_REPLAYED;
                a->ev.data_flags = r->data_flags;
                a->ev.length = r->length;
                a->ev.tid = r->tid;
                memcpy(a->ev.payload, r->payload, OAE_PAYLOAD_MAX);
                a->key = r->key;
                p->replay_unreleased += r->type == OAE_EV_DELIVERED;
            }
        }
    } else {
        st.rec = &head;
        st.n = 1;
    }
    rc = oae_log_store(p->log_path, &st);
    if (!rc) {
        p->logfd = open(p->log_path, O_WRONLY | O_APPEND | O_CLOEXEC);
        rc = p->logfd < 0 ? -errno : 0;
    }
    p->log_size = p->log_live = st.n * OAE_LOG_REC_LEN;
out:
    if (restored)
        oae_log_state_free(&st);
    return rc;
}

/* Hand out the events replayed from the log, before any of the engine's (mu held). */
static void feed_replay(oae_pump *p)
{
    while (p->replay_next < p->replay_n && p->app_tail - p->app_head < APP_RING) {
        p->app[p->app_tail % APP_RING] = p->replay[p->replay_next++];
        p->app_tail++;
        p->st.app_events++;
        p->st.replayed++;
    }
    if (p->replay && p->replay_next == p->replay_n) {
        free(p->replay);
        p->replay = NULL;
    }
}

oae_pump *oae_pump_new(int fd, const oae_link_config *cfg, const oae_link_durable *restored,
                       const char *state_dir, int flags)
{
    oae_pump *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fd = fd;
    p->flags = flags;
    p->evfd = p->wakefd = p->logfd = -1;
    p->beat = cfg->beat;
    p->gates = cfg->gates;
    p->log_limit = LOG_LIMIT_DEFAULT;
    oae_link_config c = *cfg;
    c.persist = state_dir != NULL;
    oae_link_durable regs;
    if (restored)
        regs = *restored;
    int err = ENOMEM;
    p->app = calloc(APP_RING, sizeof *p->app);
    if (!p->app)
        goto fail;
    if (state_dir) {
        size_t n = strlen(state_dir) + 32;
        p->log_path = malloc(n);
        p->durable_path = malloc(n);
        if (!p->log_path || !p->durable_path)
            goto fail;
        snprintf(p->durable_path, n, "%s/durable", state_dir);
        snprintf(p->log_path, n, "%s/events.log", state_dir);
        int rc = flags & OAE_PUMP_NO_LOG ? 0 : open_log(p, restored ? &regs : NULL);
        if (rc) {
            err = -rc;
            goto fail;
        }
    }
    p->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->evfd < 0) {
        err = errno;
        goto fail;
    }
    p->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->wakefd < 0) {
        err = errno;
        goto fail;
    }
    p->link = oae_link_new(&c, restored ? &regs : NULL);
    if (!p->link) {
        err = EINVAL;
        goto fail;
    }
    pthread_mutex_init(&p->mu, NULL);
    for (int i = 0; i < RX_BATCH; i++) {
        p->rx_iov[i].iov_base = p->rx_buf[i];
        p->rx_iov[i].iov_len = sizeof p->rx_buf[i];
        p->rx_msg[i].msg_hdr.msg_iov = &p->rx_iov[i];
        p->rx_msg[i].msg_hdr.msg_iovlen = 1;
    }
    for (int i = 0; i < TX_BATCH; i++) {
        p->tx_iov[i].iov_base = p->tx_buf[i];
        p->tx_iov[i].iov_len = OAE_FRAME_LEN;
        p->tx_msg[i].msg_hdr.msg_iov = &p->tx_iov[i];
        p->tx_msg[i].msg_hdr.msg_iovlen = 1;
    }
    /* beats go out as bursts: through a TX ring if asked and the kernel offers one (a
     * single frame per exchange gains nothing from it) */
    if (c.beat > 1 && (flags & OAE_PUMP_TX_RING))
        p->st.tx_ring = oae_txring_open(&p->ring, fd) == 0;
    feed_replay(p);
    p->app_vis = p->app_tail; /* durable already */
    if (p->app_vis != p->app_head) {
        uint64_t one = 1;
        if (write(p->evfd, &one, sizeof one) == sizeof one)
            p->notified = 1;
    }
    return p;
fail:
    if (p->evfd >= 0) close(p->evfd);
    if (p->wakefd >= 0) close(p->wakefd);
    if (p->logfd >= 0) close(p->logfd);
    free(p->app);
    free(p->durable_path);
    free(p->log_path);
    free(p->replay);
    free(p->rst);
    free(p);
    errno = err;
    return NULL;
}

void oae_pump_free(oae_pump *p)
{
    if (!p)
        return;
    oae_txring_close(&p->ring);
    if (p->logfd >= 0) { /* acknowledgements and releases deferred by a compaction */
        log_marks(p);
        log_flush(p);
        if (fdatasync(p->logfd) < 0) { /* nothing to do: they are at least written */ }
        close(p->logfd);
    }
    oae_link_free(p->link);
    pthread_mutex_destroy(&p->mu);
    close(p->evfd);
    close(p->wakefd);
    free(p->app);
    free(p->durable_path);
    free(p->log_path);
    free(p->replay);
    free(p->rst);
    free(p->acks);
    free(p->q_payload); free(p->q_len); free(p->q_flags); free(p->q_cookie); free(p->q_key);
    free(p);
}

void oae_pump_stop(oae_pump *p)
{
    p->stop = 1; /* seen within one receive timeout (at most WAIT_MAX_US) */
    __sync_synchronize();
    uint64_t one = 1; /* and at once by a loop waiting on an idle link */
    if (write(p->wakefd, &one, sizeof one) < 0) { /* counter full: already woken */ }
}

int oae_pump_event_fd(const oae_pump *p)
{
    return p->evfd;
}

size_t oae_pump_events(oae_pump *p, oae_pump_event *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&p->mu);
    while (n < max && p->app_head != p->app_vis) {
        out[n++] = p->app[p->app_head % APP_RING];
        p->app_head++;
    }
    if (p->app_head == p->app_vis && p->notified) {
        uint64_t v;
        if (read(p->evfd, &v, sizeof v) < 0) { /* already reset */ }
        p->notified = 0;
    }
    if (p->backed_up && n)
        wake_pump(p); /* room again for the events waiting in the engine */
    pthread_mutex_unlock(&p->mu);
    return n;
}

void oae_pump_release(oae_pump *p, uint32_t n, uint32_t upto)
{
    pthread_mutex_lock(&p->mu);
    uint32_t replayed = n < p->replay_unreleased ? n : p->replay_unreleased;
    p->replay_unreleased -= replayed;
    oae_link_release(p->link, n - replayed);
    if (upto > p->release_to && p->durable_path) {
        p->release_to = upto;
        log_marks_now(p);
    }
    pthread_mutex_unlock(&p->mu);
}

int oae_pump_ack(oae_pump *p, uint32_t lo, uint32_t hi, uint32_t posted)
{
    pthread_mutex_lock(&p->mu);
    int rc = add_ack(p, lo, hi);
    log_marks_now(p);
    p->posted_open -= posted < p->posted_open ? posted : p->posted_open;
    if (posted && p->st.offers_paused)
        wake_pump(p);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void oae_pump_set_post_limit(oae_pump *p, uint64_t n)
{
    pthread_mutex_lock(&p->mu);
    p->post_limit = n;
    wake_pump(p);
    pthread_mutex_unlock(&p->mu);
}

uint64_t oae_pump_last_key(oae_pump *p)
{
    pthread_mutex_lock(&p->mu);
    uint64_t k = p->durable_path ? p->key_durable : p->key_logged;
    pthread_mutex_unlock(&p->mu);
    return k;
}

void oae_pump_set_log_limit(oae_pump *p, uint64_t bytes)
{
    pthread_mutex_lock(&p->mu);
    p->log_limit = bytes;
    pthread_mutex_unlock(&p->mu);
}

void oae_pump_set_epoch(oae_pump *p, uint32_t epoch)
{
    pthread_mutex_lock(&p->mu);
    oae_link_set_epoch(p->link, epoch);
    wake_pump(p); /* the registers must be stored, and a held token answered */
    pthread_mutex_unlock(&p->mu);
}

void oae_pump_stats_get(oae_pump *p, oae_link_stats *ls, oae_pump_stats *ps)
{
    pthread_mutex_lock(&p->mu);
    if (ls)
        oae_link_stats_get(p->link, ls);
    if (ps) {
        *ps = p->st;
        ps->cpu_ns = p->cpu_done;
        struct timespec ts;
        if (p->running && clock_gettime(p->cpuclock, &ts) == 0)
            ps->cpu_ns += (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    }
    pthread_mutex_unlock(&p->mu);
}

int oae_pump_transfer_state(oae_pump *p, int incoming, uint32_t tid)
{
    pthread_mutex_lock(&p->mu);
    int s = oae_link_transfer_state(p->link, incoming, tid);
    pthread_mutex_unlock(&p->mu);
    return s;
}

/* ---- gate decisions (docs/protocol.md 7.11) ---- */

/* One of the engine's gate calls under mu; a decision that took is new work. */
static int gate_call(oae_pump *p, int (*call)(oae_link *, uint32_t), uint32_t tid)
{
    pthread_mutex_lock(&p->mu);
    int rc = call(p->link, tid);
    if (rc == 0)
        wake_pump(p);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

int oae_pump_hold(oae_pump *p, uint32_t tid) { return gate_call(p, oae_link_hold, tid); }
int oae_pump_refuse(oae_pump *p, uint32_t tid) { return gate_call(p, oae_link_refuse, tid); }
int oae_pump_report(oae_pump *p, uint32_t tid) { return gate_call(p, oae_link_report, tid); }
int oae_pump_commit(oae_pump *p, uint32_t tid) { return gate_call(p, oae_link_commit, tid); }

/* (It may run while persist() has released mu: its LINK_DOWN needs no store and is drained
 * after the write, and it moves no durable register.) */
int oae_pump_reset(oae_pump *p)
{
    pthread_mutex_lock(&p->mu);
    int rc = oae_link_reset(p->link, oae_now_ns());
    if (rc == 0)
        wake_pump(p); /* a HELLO to send, a LINK_DOWN to hand over */
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* ---- the loop ---- */

/* Let the application take the events before `upto` (mu held). */
static void publish(oae_pump *p, uint32_t upto)
{
    p->app_vis = upto;
    if (p->app_vis != p->app_head && !p->notified && !p->deferred) {
        uint64_t one = 1;
        if (write(p->evfd, &one, sizeof one) == sizeof one)
            p->notified = 1;
    }
}

/* OAE_PUMP_EARLY_CONTROL: the end of the run of events at the head of those waiting for
 * a store that may go before it: CONTROL deliveries, gate events, and outcomes of
 * transfers submitted with OAE_PUMP_EARLY_COOKIE in their cookie (mu held). */
static uint32_t early_end(const oae_pump *p)
{
    uint32_t i = p->app_vis;
    for (; i != p->app_tail; i++) {
        const oae_pump_event *a = &p->app[i % APP_RING];
        uint8_t t = a->ev.type;
        int control = t == OAE_EV_DELIVERED && (a->ev.data_flags & OAE_F_CONTROL);
        int outcome = (t == OAE_EV_COMMITTED || t == OAE_EV_ABORTED) &&
                      (a->cookie & OAE_PUMP_EARLY_COOKIE);
        if (!control && !outcome && t != OAE_EV_OFFERED && t != OAE_EV_REFLECTED)
            break;
    }
    return i;
}

/* Move engine events to the log (written, not yet synced), the app ring or the sink;
 * returns -errno if the log could not be written (mu held).  The registers are stored by
 * persist(), outside mu.  Events replayed from the log after a restart go first; an
 * outcome the engine settles again after a restart (RESTORED) gets the key and payload its
 * OFFER record kept, and is dropped if the log already holds it (it was handed out before
 * the crash, and is handed out again only if it was not acknowledged). */
static int drain_events(oae_pump *p)
{
    int rc = 0;
    feed_replay(p);
    p->backed_up = p->replay != NULL;
    while (!p->backed_up) {
        uint32_t room = APP_RING - (p->app_tail - p->app_head);
        size_t max = room < EV_BATCH ? room : EV_BATCH;
        p->backed_up = !max;
        if (!max)
            break;
        size_t n = oae_link_poll_events(p->link, p->evs, max);
        if (!n)
            break;
        for (size_t i = 0; i < n; i++) {
            oae_event *e = &p->evs[i];
            uint64_t cookie = 0, key = 0;
            switch (e->type) {
            case OAE_EV_PERSIST:
                p->persist_pending = 1;
                continue;
            case OAE_EV_REFLECTED: /* not logged: a gate event changes nothing durable */
                cookie = p->cookies[e->tid % COOKIE_RING];
                break;
            case OAE_EV_COMMITTED:
            case OAE_EV_ABORTED:
                if (e->flags & OAE_EVF_RESTORED) {
                    restored_tid *t = restored_of(p, e->tid);
                    if (t && t->logged) {
                        p->st.restored_dups++;
                        p->st.restore_conflicts += t->logged != e->type;
                        continue;
                    }
                    if (t) {
                        key = t->key;
                        e->data_flags = t->data_flags;
                        if (e->type == OAE_EV_ABORTED) {
                            e->length = t->len;
                            memcpy(e->payload, t->payload, OAE_PAYLOAD_MAX);
                        }
                        t->logged = e->type;
                    }
                } else {
                    cookie = p->cookies[e->tid % COOKIE_RING];
                    key = p->keys[e->tid % COOKIE_RING];
                }
                /* fallthrough */
            case OAE_EV_DELIVERED:
                if (p->logfd >= 0)
                    log_event(p, e, key);
                break;
            default:
                break;
            }
            if (e->type == OAE_EV_DELIVERED && (p->flags & OAE_PUMP_SINK)) {
                oae_link_release(p->link, 1);
                if (p->logfd >= 0)
                    p->release_to = e->tid;
                p->st.sunk++;
                continue;
            }
            if (e->type == OAE_EV_COMMITTED && (p->flags & OAE_PUMP_QUIET)) {
                rc = rc ? rc : add_ack(p, e->tid, e->tid);
                if (!cookie && !(e->flags & OAE_EVF_RESTORED) && p->posted_open)
                    p->posted_open--;
                p->st.sunk++;
                continue;
            }
            oae_pump_event *a = &p->app[p->app_tail % APP_RING];
            a->ev = *e;
            a->cookie = cookie;
            a->key = key;
            p->app_tail++;
            p->st.app_events++;
        }
    }
    if (p->logfd >= 0) {
        log_marks(p);
        log_flush(p);
        rc = rc ? rc : p->log_err;
        p->log_err = 0;
    }
    /* a delivery the application may act on must be durable first: while a store is
     * pending, new events wait for persist() (as before the store left mu); a full ring
     * publishes at once, since the store itself waits for the application to drain it */
    if (rc || !p->durable_path || !p->persist_pending || p->backed_up)
        publish(p, p->app_tail);
    else if (p->flags & OAE_PUMP_EARLY_CONTROL)
        publish(p, early_end(p));
    return rc;
}

/* Rewrite events.log as its live records once it has grown by log_limit bytes since the
 * last compaction (pump thread, mu released: nobody else touches the log file).  d is the
 * snapshot just stored, which counts every record the log holds.  A failed rewrite leaves
 * the old log in place and is tried again after another log_limit; only a log that can
 * no longer be opened for appending is an error (-errno). */
static int compact(oae_pump *p, const oae_link_durable *d)
{
    uint8_t *buf;
    size_t len;
    oae_log_state st;
    memset(&st, 0, sizeof st);
    int rc = oae_log_read_file(p->log_path, &buf, &len);
    if (!rc) {
        rc = oae_log_replay(buf, len, d, &st);
        free(buf);
    }
    if (!rc)
        rc = oae_log_store(p->log_path, &st);
    uint64_t live = st.n * OAE_LOG_REC_LEN;
    oae_log_state_free(&st);
    if (rc) {
        p->log_live = p->log_size;
        return 0;
    }
    int fd = open(p->log_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    close(p->logfd);
    p->logfd = fd;
    p->log_size = p->log_live = live;
    p->st.compactions++;
    return 0;
}

/* Store the engine's durable registers if it asked (mu held on entry and on return, but
 * released during the file I/O, so that application calls do not wait for a whole
 * fdatasync).  The log must be stable before the registers that count what it holds, and
 * it must hold every event the engine has produced: the snapshot is taken under mu right
 * after drain_events() wrote every event (and every OFFER record) to the log, and while
 * the app ring is full (events still in the engine) the registers wait, and so does the
 * engine's sending.  Only the pump thread feeds frames and timers, so nothing but PERSIST
 * can be produced while mu is released; an application call that changes a register
 * meanwhile (a new epoch) moves the engine's generation, and oae_link_persisted() then
 * asks again rather than marking the newer state stored.  After a store the log may be
 * compacted (it holds nothing the snapshot does not count).  Returns -errno if the state
 * files failed, else how many times the registers were stored. */
static int persist(oae_pump *p)
{
    int stored = 0;
    for (int round = 0; round < 2; round++) {
        if (!p->persist_pending || !p->durable_path || p->backed_up)
            break;
        oae_link_durable d;
        oae_link_durable_get(p->link, &d);
        /* a persist that logged nothing (a keyless offer, a hold) costs the register store */
        uint32_t covered = p->app_tail; /* the events this snapshot makes durable */
        uint64_t key = p->key_logged;   /* and the keys of the offers it counts */
        int sync_log = p->logfd >= 0 && p->log_dirty;
        int compacting = p->log_limit && p->log_size >= p->log_limit + p->log_live;
        p->compacting = compacting;
        p->log_dirty = 0;
        pthread_mutex_unlock(&p->mu);
        int rc = 0;
        if (sync_log && fdatasync(p->logfd) < 0)
            rc = -errno;
        if (!rc)
            rc = oae_durable_store(p->durable_path, &d);
        if (!rc && compacting)
            rc = compact(p, &d);
        pthread_mutex_lock(&p->mu);
        p->compacting = 0;
        if (rc) {
            p->log_dirty |= sync_log;
            return rc;
        }
        p->persist_pending = 0;
        p->key_durable = key;
        p->st.persists++;
        publish(p, covered);
        oae_link_persisted(p->link); /* queues PERSIST again if the registers moved */
        rc = drain_events(p);
        if (rc)
            return rc;
        stored++;
    }
    return stored;
}

static void add_error_event(oae_pump *p, int err)
{
    pthread_mutex_lock(&p->mu);
    oae_pump_event *a = &p->app[p->app_tail % APP_RING];
    memset(a, 0, sizeof *a);
    a->ev.type = OAE_PEV_ERROR;
    a->ev.info = (uint32_t)err;
    p->app_tail++;
    publish(p, p->app_tail);
    pthread_mutex_unlock(&p->mu);
}

static int fatal_errno(int e)
{
    return e == ENODEV || e == ENXIO || e == EBADF;
}

/* 1 if frame i is one of ours in the middle of a beat (more records of it are coming).  A
 * beat is the sender's unreflected offers, or one plain token record when it has none
 * (docs/protocol.md 7.4): only an OFFER record short of the beat size can be followed by
 * more; a plain token (e.g. a receiver's answer, index 0 of a beat of 64) ends its beat. */
static int mid_beat(const oae_pump *p, int i)
{
    static const uint8_t sizes[4] = {1, 4, 16, 64};
    const uint8_t *f = p->rx_buf[i];
    if (p->rx_msg[i].msg_len != OAE_FRAME_LEN || f[14] >> 4 != OAE_VERSION ||
        (f[OAE_ETH_HLEN + 3] & 0x7F) != OAE_TR_OFFER)
        return 0;
    uint8_t beat = f[OAE_ETH_HLEN + 36];
    return (beat & 63) + 1 < sizes[beat >> 6];
}

/* The rest of a beat is on its way (the peer sent it in one sendmmsg): take it in the same
 * round, waiting up to BEAT_WAIT_NS after the last frame that came, so the engine answers
 * a whole beat at once (an answer to part of a beat makes the peer offer the rest again)
 * and the thread is woken once per beat rather than once per few frames. */
static int finish_beat(oae_pump *p, int k)
{
    uint64_t deadline = 0;
    while (k < RX_BATCH && mid_beat(p, k - 1)) {
        int m = recvmmsg(p->fd, p->rx_msg + k, RX_BATCH - k, MSG_DONTWAIT, NULL);
        p->st.rx_calls++;
        if (m > 0) {
            k += m;
            deadline = 0; /* progress: the peer is still sending this beat */
            continue;
        }
        uint64_t now = oae_now_ns();
        if (!deadline)
            deadline = now + BEAT_WAIT_NS;
        if (now >= deadline)
            break;
        sched_yield();
    }
    return k;
}

/* A beat of several records went out: its answer is due within the time the peer takes
 * to take in the beat's last records and answer (microseconds), far less than waking a
 * sleeping thread costs when the peer's answer has to wake it.  Poll for it until `until`
 * (or a timer, new work, stop), as finish_beat polls for the rest of a beat; then the
 * loop blocks as usual.  Returns recvmmsg's result, 0 if nothing came. */
static int await_answer(oae_pump *p, uint64_t until, uint64_t next)
{
    for (;;) {
        int m = recvmmsg(p->fd, p->rx_msg, RX_BATCH, MSG_DONTWAIT, NULL);
        p->st.rx_calls++;
        if (m > 0 || (m < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            return m;
        uint64_t now = oae_now_ns();
        if (now >= until || now >= next || p->kick || p->stop)
            return 0;
        sched_yield();
    }
}

/* Bound the next blocking receive by the engine's next timer: SO_RCVTIMEO, changed only
 * when the power-of-two bucket of the wait changes (no extra syscall per frame). */
static void set_wait(oae_pump *p, uint64_t next, uint64_t now)
{
    uint64_t us = next == UINT64_MAX ? WAIT_MAX_US : (next > now ? (next - now) / 1000 : 0);
    if (us < WAIT_MIN_US)
        us = WAIT_MIN_US;
    if (us > WAIT_MAX_US)
        us = WAIT_MAX_US;
    uint64_t bucket = 1ull << (63 - __builtin_clzll(us)); /* us >= WAIT_MIN_US > 0 */
    if (bucket != p->wait_us) {
        oae_sock_set_rcvtimeo(p->fd, bucket * 1000);
        p->wait_us = bucket;
    }
}

/* Hand the visible events to the consumer in this thread (mu held on entry and return,
 * released during the call), then take what it queued and decided on this link; a few
 * rounds, as its decisions may make more events.  `last`: the loop sleeps next; events
 * still waiting are signalled on the event fd if the consumer went meanwhile. */
static int consume(oae_pump *p, int last)
{
    int rc = 0;
    for (int round = 0; round < 4 && p->consumer && p->app_vis != p->app_head; round++) {
        uint32_t head = p->app_head;
        oae_pump_consumer fn = p->consumer; /* kept while `consuming` */
        void *arg = p->consumer_arg;
        size_t index = p->consumer_index;
        p->consuming = 1;
        pthread_mutex_unlock(&p->mu);
        fn(arg, index);
        pthread_mutex_lock(&p->mu);
        p->consuming = 0;
        offer_queued(p);
        rc = drain_events(p);
        if (rc || p->app_head == head)
            break; /* left to another thread, or the consumer is backed up */
    }
    if (last) {
        p->deferred = 0;
        if (!p->consumer)
            publish(p, p->app_vis);
    }
    return rc;
}

void oae_pump_set_consumer(oae_pump *p, oae_pump_consumer fn, void *arg, size_t index)
{
    pthread_mutex_lock(&p->mu);
    while (!fn && p->consuming) { /* a call in progress uses arg */
        pthread_mutex_unlock(&p->mu);
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&p->mu);
    }
    p->consumer = fn;
    p->consumer_arg = arg;
    p->consumer_index = index;
    pthread_mutex_unlock(&p->mu);
}

int oae_pump_run(oae_pump *p)
{
    int busy = p->flags & OAE_PUMP_BUSY;
    int batch_rx = p->beat > 1; /* beats arrive as bursts: take the rest of one at once */
    int rc = 0, dontwait = 1, near = 0, wakeable = 0;
    uint64_t next = UINT64_MAX, answer_by = 0;
    pthread_setname_np(pthread_self(), "oae-pump");
    pthread_mutex_lock(&p->mu);
    p->st.tid = (int)gettid();
    /* thread CPU clocks count from thread start: keep what this thread had before */
    uint64_t cpu0 = oae_thread_cpu_ns();
    p->running = pthread_getcpuclockid(pthread_self(), &p->cpuclock) == 0;
    p->cpu_done -= cpu0;
    pthread_mutex_unlock(&p->mu);
    while (!p->stop) {
        /* 1. receive: busy-poll and "more may be queued" look without waiting; an idle
         * link sleeps in ppoll on the socket and the wake-up eventfd (the application's
         * new work goes out at once); a timer due
         * soon is waited for with ppoll (precise, hrtimer); otherwise block in recv() like
         * the bare C ping-pong, bounded by SO_RCVTIMEO (which the kernel rounds up to a
         * jiffy, so only for timers far enough away that a jiffy late does not matter) */
        int k;
        if (busy && !batch_rx && !dontwait) {
            /* the spin of the bare C baseline: one recv, nothing else unless a frame came,
             * a timer is due or the application queued something */
            ssize_t n = recv(p->fd, p->rx_buf[0], sizeof p->rx_buf[0], MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
                oae_now_ns() < next && !p->q_count && !p->kick && !p->stop) {
                sched_yield(); /* ksoftirqd may be the one delivering our next frame */
                continue;
            }
            k = n < 0 ? -1 : 1;
            if (n >= 0)
                p->rx_msg[0].msg_len = (unsigned)n;
        } else if (busy || dontwait) {
            k = recvmmsg(p->fd, p->rx_msg, RX_BATCH, MSG_DONTWAIT, NULL);
        } else if (answer_by) {
            k = await_answer(p, answer_by, next);
            answer_by = 0; /* nothing within the wait: block from now on */
        } else if (wakeable || near) {
            /* a timer due soon, or an idle link: sleep until a frame or the next timer,
             * and on an idle link also until the application makes work (wakefd) */
            uint64_t now = oae_now_ns();
            uint64_t d = next <= now ? 0 : next - now;
            if (wakeable && d > IDLE_WAIT_MAX_NS)
                d = IDLE_WAIT_MAX_NS;
            struct timespec ts = {.tv_sec = (time_t)(d / 1000000000ull),
                                  .tv_nsec = (long)(d % 1000000000ull)};
            struct pollfd pf[2] = {{.fd = p->fd, .events = POLLIN},
                                   {.fd = p->wakefd, .events = POLLIN}};
            int r = ppoll(pf, wakeable ? 2 : 1, &ts, NULL);
            p->st.wakeups++;
            /* (a socket error also shows in revents: the receive reports it) */
            k = r > 0 && pf[0].revents ? recvmmsg(p->fd, p->rx_msg, RX_BATCH, MSG_DONTWAIT, NULL)
                                       : 0;
        } else {
            ssize_t n = recv(p->fd, p->rx_buf[0], sizeof p->rx_buf[0], 0);
            k = n < 0 ? -1 : 1;
            if (n >= 0) {
                p->rx_msg[0].msg_len = (unsigned)n;
                if (batch_rx) {
                    int m = recvmmsg(p->fd, p->rx_msg + 1, RX_BATCH - 1, MSG_DONTWAIT, NULL);
                    k += m > 0 ? m : 0;
                }
            }
            p->st.wakeups++;
        }
        p->st.rx_calls++;
        if (k < 0) {
            if (fatal_errno(errno)) {
                rc = -errno;
                break;
            }
            k = 0; /* EAGAIN: nothing queued or the wait ran out (a timer is due) */
        }
        if (batch_rx && k > 0)
            k = finish_beat(p, k);
        uint64_t now = oae_now_ns();
        pthread_mutex_lock(&p->mu);
        p->sleeping = 0;
        p->kick = 0;
        p->deferred = p->consumer != NULL; /* consume() below, before any sleep */
        if (p->woken) {
            uint64_t v;
            if (read(p->wakefd, &v, sizeof v) < 0) { /* already reset */ }
            p->woken = 0;
        }
        for (int i = 0; i < k; i++)
            if (oae_link_on_frame(p->link, p->rx_buf[i], p->rx_msg[i].msg_len, now) ==
                OAE_DROP_NONE)
                memcpy(p->st.peer_mac, p->rx_buf[i] + 6, 6);
        p->st.rx_frames += (uint64_t)k;
        /* 2. timers, new offers, events (and durable state), frames to send */
        if (oae_link_next_timeout(p->link) <= now)
            oae_link_on_timeout(p->link, now);
        offer_queued(p);
        rc = drain_events(p);
        if (!rc && p->deferred) /* deliveries that may go before the store (EARLY_CONTROL) */
            rc = consume(p, 0);
        int stored = rc ? 0 : persist(p);
        if (stored < 0)
            rc = stored;
        else if (stored)
            now = oae_now_ns(); /* the write took a while */
        if (p->deferred) {
            int crc = consume(p, 1);
            rc = rc ? rc : crc;
            now = oae_now_ns(); /* the consumer may have written its own record */
        }
        size_t ntx = rc ? 0 : oae_link_poll_tx(p->link, p->tx_buf[0], TX_BATCH, now);
        next = oae_link_next_timeout(p->link);
        if (p->persist_pending && !p->backed_up)
            next = 0; /* asked again (a register moved during the write): do not wait */
        /* an idle link may stay silent for long: wait where the application can wake us */
        wakeable = !busy && oae_link_idle(p->link);
        p->sleeping = wakeable;
        pthread_mutex_unlock(&p->mu);
        if (rc) /* the state dir failed: stop rather than run without durability */
            break;
        /* 3. send */
        size_t sent = 0;
        while (sent < ntx) {
            /* one frame: plain send(); sendmmsg yields the CPU after each message
             * (cond_resched), which costs a context switch per frame in a ping-pong */
            int m;
            if (p->st.tx_ring) {
                m = oae_txring_send(&p->ring, p->fd, p->tx_buf[sent], ntx - sent,
                                    OAE_FRAME_LEN, OAE_FRAME_LEN, RING_WAIT_NS);
                if (m < 0) {
                    errno = -m;
                    m = -1;
                } else if (m == 0) { /* no slot came free: lost, the engine copes */
                    p->st.tx_errors += ntx - sent;
                    p->st.tx_calls++;
                    break;
                }
            } else {
                m = ntx - sent == 1
                        ? (send(p->fd, p->tx_buf[sent], OAE_FRAME_LEN, 0) < 0 ? -1 : 1)
                        : sendmmsg(p->fd, p->tx_msg + sent, (unsigned)(ntx - sent), 0);
            }
            p->st.tx_calls++;
            if (m < 0) {
                if (errno == EINTR)
                    continue;
                if (fatal_errno(errno)) {
                    rc = -errno;
                    goto out;
                }
                p->st.tx_errors += ntx - sent; /* ENOBUFS, ENETDOWN: lost, the engine copes */
                break;
            }
            sent += (size_t)m;
        }
        p->st.tx_frames += sent;
        /* a full batch either way means more is likely waiting; a due timer must not wait
         * (`now` is from before the send: a timer found due a send later is fired then) */
        if (k > 0)
            answer_by = 0;
        if (sent > 1 && batch_rx && !busy) {
            now = oae_now_ns(); /* a beat's sendmmsg takes a while */
            answer_by = now + ANSWER_WAIT_NS;
        }
        dontwait = k == RX_BATCH || ntx == TX_BATCH || next <= now;
        if (busy) {
            if (!k && !ntx)
                sched_yield(); /* ksoftirqd may be the one delivering our next frame */
        } else if (!dontwait && !wakeable) {
            near = next != UINT64_MAX && next - now < NEAR_NS;
            set_wait(p, near ? UINT64_MAX : next, now);
        }
    }
out:
    pthread_mutex_lock(&p->mu);
    p->running = 0;
    p->st.tid = 0;
    p->cpu_done += oae_thread_cpu_ns();
    pthread_mutex_unlock(&p->mu);
    if (rc)
        add_error_event(p, -rc);
    return rc;
}
