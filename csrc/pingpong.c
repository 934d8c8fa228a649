/* The bare C baseline on an AF_PACKET socket: a ping-pong of 78-byte frames (blocking and
 * busy-poll) and a one-way sendmmsg flood with a counting receiver.  Benchmarks compare the
 * link engine against these figures, measured in the same run on the same link.
 *
 * Baseline frames are not oae records: they carry a magic, a kind and a sequence number in
 * the first payload bytes, so that a stray frame can never be mistaken for one of ours. */
#include "pump.h"
#include "txring.h"

#include <errno.h>
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#define PP_MAGIC 0x4F414542u /* "OAEB" */
enum { PP_PING = 1, PP_PONG = 2, PP_STOP = 3, PP_FLOOD = 4 };
#define PP_BATCH 64

uint64_t oae_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t oae_thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pp_build(uint8_t *f, const uint8_t *src, const uint8_t *dst, uint16_t ethertype,
                     uint32_t run, uint8_t kind, uint64_t seq)
{
    memset(f, 0, OAE_FRAME_LEN);
    memcpy(f, dst, 6);
    memcpy(f + 6, src, 6);
    f[12] = (uint8_t)(ethertype >> 8);
    f[13] = (uint8_t)ethertype;
    uint32_t m = PP_MAGIC;
    f[14] = (uint8_t)(m >> 24); f[15] = (uint8_t)(m >> 16);
    f[16] = (uint8_t)(m >> 8);  f[17] = (uint8_t)m;
    f[18] = kind;
    for (int i = 0; i < 8; i++)
        f[19 + i] = (uint8_t)(seq >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        f[27 + i] = (uint8_t)(run >> (24 - 8 * i));
}

/* kind of a baseline frame of run `run`, 0 if the frame is not one (a stale frame of an
 * earlier run included) */
static int pp_parse(const uint8_t *f, ssize_t n, uint16_t ethertype, uint32_t run,
                    uint64_t *seq)
{
    if (n != OAE_FRAME_LEN || f[12] != (uint8_t)(ethertype >> 8) ||
        f[13] != (uint8_t)ethertype)
        return 0;
    uint32_t m = (uint32_t)f[14] << 24 | (uint32_t)f[15] << 16 | (uint32_t)f[16] << 8 | f[17];
    uint32_t r = (uint32_t)f[27] << 24 | (uint32_t)f[28] << 16 | (uint32_t)f[29] << 8 | f[30];
    if (m != PP_MAGIC || r != run)
        return 0;
    uint64_t s = 0;
    for (int i = 0; i < 8; i++)
        s = s << 8 | f[19 + i];
    *seq = s;
    return f[18];
}

/* One receive: busy (MSG_DONTWAIT in a spin) or blocking (the socket's SO_RCVTIMEO bounds
 * the wait).  Returns the length, 0 on timeout/nothing, -errno on error. */
static ssize_t pp_recv(int fd, uint8_t *buf, size_t len, int busy, uint64_t deadline)
{
    for (;;) {
        ssize_t n = recv(fd, buf, len, busy ? MSG_DONTWAIT | MSG_TRUNC : MSG_TRUNC);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        if (!busy || oae_now_ns() >= deadline)
            return 0;
        /* let ksoftirqd (which may be delivering our frame) and others run on this core */
        sched_yield();
    }
}

static int pp_send(int fd, const uint8_t *f)
{
    for (;;) {
        ssize_t n = send(fd, f, OAE_FRAME_LEN, 0);
        if (n == OAE_FRAME_LEN)
            return 0;
        if (n < 0 && (errno == EINTR || errno == ENOBUFS || errno == EAGAIN))
            continue;
        return n < 0 ? -errno : -EIO;
    }
}

int oae_pingpong_initiate(int fd, const uint8_t *src, const uint8_t *dst, uint16_t ethertype,
                          uint32_t run, uint64_t count, uint64_t max_ns, int busy, oae_bench_result *out)
{
    uint8_t tx[OAE_FRAME_LEN], rx[2048];
    uint64_t seq, got;
    memset(out, 0, sizeof *out);
    uint64_t c0 = oae_thread_cpu_ns(), t0 = oae_now_ns(), deadline = t0 + max_ns;
    int rc = 0;
    for (seq = 1; seq <= count; seq++) {
        pp_build(tx, src, dst, ethertype, run, PP_PING, seq);
        if ((rc = pp_send(fd, tx)) < 0)
            goto done;
        out->sent++;
        for (;;) {
            uint64_t now = oae_now_ns();
            if (now >= deadline)
                goto done;
            /* a slice of the deadline, so a lost frame is re-sent instead of stalling */
            ssize_t n = pp_recv(fd, rx, sizeof rx, busy, now + 20000000ull);
            if (n < 0) { rc = (int)n; goto done; }
            if (n == 0) {  /* lost: send again (same seq) */
                if ((rc = pp_send(fd, tx)) < 0)
                    goto done;
                out->sent++;
                out->retries++;
                continue;
            }
            if (pp_parse(rx, n, ethertype, run, &got) == PP_PONG && got == seq)
                break;
            out->ignored++;
        }
        out->count++;
    }
done:
    out->elapsed_ns = oae_now_ns() - t0;
    out->cpu_ns = oae_thread_cpu_ns() - c0;
    pp_build(tx, src, dst, ethertype, run, PP_STOP, 0);
    for (int i = 0; i < 3; i++)
        pp_send(fd, tx);
    out->err = rc < 0 ? -rc : 0;
    return rc;
}

int oae_pingpong_respond(int fd, uint16_t ethertype, uint32_t run, uint64_t max_ns, int busy,
                         oae_bench_result *out)
{
    uint8_t rx[2048], tx[OAE_FRAME_LEN];
    uint64_t seq;
    memset(out, 0, sizeof *out);
    uint64_t c0 = oae_thread_cpu_ns(), t0 = oae_now_ns(), deadline = t0 + max_ns;
    int rc = 0;
    while (oae_now_ns() < deadline) {
        ssize_t n = pp_recv(fd, rx, sizeof rx, busy, deadline);
        if (n < 0) { rc = (int)n; break; }
        if (n == 0)
            continue;
        int kind = pp_parse(rx, n, ethertype, run, &seq);
        if (kind == PP_STOP)
            break;
        if (kind != PP_PING) {
            out->ignored++;
            continue;
        }
        pp_build(tx, rx + 0, rx + 6, ethertype, run, PP_PONG, seq); /* src = our MAC (their dst) */
        if ((rc = pp_send(fd, tx)) < 0)
            break;
        out->count++;
        out->sent++;
    }
    out->elapsed_ns = oae_now_ns() - t0;
    out->cpu_ns = oae_thread_cpu_ns() - c0;
    out->err = rc < 0 ? -rc : 0;
    return rc;
}

int oae_flood_send(int fd, const uint8_t *src, const uint8_t *dst, uint16_t ethertype,
                   uint32_t run, uint64_t count, uint64_t max_ns, int ring,
                   oae_bench_result *out)
{
    static __thread uint8_t frames[PP_BATCH][OAE_FRAME_LEN];
    struct mmsghdr msgs[PP_BATCH];
    struct iovec iov[PP_BATCH];
    oae_txring tx;
    memset(out, 0, sizeof *out);
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < PP_BATCH; i++) {
        iov[i].iov_base = frames[i];
        iov[i].iov_len = OAE_FRAME_LEN;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int rc = ring ? oae_txring_open(&tx, fd) : 0;
    if (rc < 0) {
        out->err = -rc;
        return rc;
    }
    uint64_t c0 = oae_thread_cpu_ns(), t0 = oae_now_ns(), deadline = t0 + max_ns, seq = 1;
    while (out->sent < count && oae_now_ns() < deadline) {
        unsigned n = (unsigned)((count - out->sent) < PP_BATCH ? count - out->sent : PP_BATCH);
        for (unsigned i = 0; i < n; i++)
            pp_build(frames[i], src, dst, ethertype, run, PP_FLOOD, seq + i);
        int k = ring ? oae_txring_send(&tx, fd, frames[0], n, OAE_FRAME_LEN, OAE_FRAME_LEN,
                                       1000000000ull)
                     : sendmmsg(fd, msgs, n, 0);
        if (k < 0) {
            int e = ring ? -k : errno;
            if (e == EINTR || e == ENOBUFS || e == EAGAIN)
                continue;
            rc = -e;
            break;
        }
        out->sent += (uint64_t)k;
        seq += (uint64_t)k;
    }
    out->elapsed_ns = oae_now_ns() - t0;
    out->cpu_ns = oae_thread_cpu_ns() - c0;
    out->count = out->sent;
    uint8_t stop[OAE_FRAME_LEN];
    pp_build(stop, src, dst, ethertype, run, PP_STOP, 0);
    for (int i = 0; i < 3; i++) {
        if (ring) /* a socket with a ring sends only through it */
            oae_txring_send(&tx, fd, stop, 1, OAE_FRAME_LEN, OAE_FRAME_LEN, 1000000000ull);
        else
            pp_send(fd, stop);
    }
    if (ring)
        oae_txring_close(&tx);
    out->err = rc < 0 ? -rc : 0;
    return rc;
}

int oae_flood_recv(int fd, uint16_t ethertype, uint32_t run, uint64_t max_ns, oae_bench_result *out)
{
    static __thread uint8_t bufs[PP_BATCH][128];
    struct mmsghdr msgs[PP_BATCH];
    struct iovec iov[PP_BATCH];
    memset(out, 0, sizeof *out);
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < PP_BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = sizeof bufs[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t c0 = oae_thread_cpu_ns(), t0 = oae_now_ns(), deadline = t0 + max_ns, first = 0, last = 0;
    int rc = 0, stop = 0;
    while (!stop && oae_now_ns() < deadline) {
        /* blocking with the socket's SO_RCVTIMEO, then drain what is queued */
        int k = recvmmsg(fd, msgs, PP_BATCH, MSG_WAITFORONE, NULL);
        if (k < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            rc = -errno;
            break;
        }
        uint64_t now = oae_now_ns();
        for (int i = 0; i < k; i++) {
            uint64_t seq;
            int kind = pp_parse(bufs[i], msgs[i].msg_len, ethertype, run, &seq);
            if (kind == PP_FLOOD) {
                if (!first)
                    first = now;
                last = now;
                out->count++;
            } else if (kind == PP_STOP) {
                stop = 1;
            } else {
                out->ignored++;
            }
        }
    }
    out->elapsed_ns = last > first ? last - first : 0;
    out->cpu_ns = oae_thread_cpu_ns() - c0;
    out->err = rc < 0 ? -rc : 0;
    return rc;
}
