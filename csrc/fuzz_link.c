/* libFuzzer target for the link engine (build: make -C csrc fuzz_link; docs/fuzzing.md).
 *
 * The input is a script: byte 0 picks the configuration, then each op byte picks an action
 * on engine A, which talks to an honest engine B: raw attacker frames, mutated copies of
 * B's real frames, time steps, offers (plain, CONTROL, gated), releases, exchanges (with
 * loss), crash-restarts from the durable registers, and with gates the applications'
 * decisions (hold, refuse, report, commit; right or wrong tids) and resets.  After every
 * step the engines' invariants are checked, and every outcome is checked against the other
 * end (the attacker has no key, so A and B must still agree on every transfer, and the gate
 * rules hold); a violation aborts (a crash for libFuzzer), as do ASan/UBSan findings. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "link.h"

#define CHECK(c)                                                                           \
    do {                                                                                   \
        if (!(c)) {                                                                        \
            fprintf(stderr, "invariant failed: %s (line %d)\n", #c, __LINE__);              \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define TRACKED 4096
#define DELIVERED 1 /* by the receiver */
#define COMMITTED 2 /* reported to the sender */
#define ABORTED 4   /* reported to the sender */
#define CONTROL 8   /* offered as CONTROL */
#define GATED 16    /* offered gated */
#define HELD 32     /* the receiver's application held it */
#define RELEASED 64 /* the sender's application committed it */

typedef struct end {
    oae_link *l;
    oae_link_config cfg;
    oae_link_durable dur;
    int has_dur;
    uint32_t last_delivered;
    uint8_t last_frame[OAE_FRAME_LEN];
    int has_frame;
    uint8_t *fate; /* per tid of this end's outgoing direction */
    uint32_t reflected; /* the last gated tid of mine the peer held (REFLECTED) */
    uint32_t reported;  /* the highest peer tid my application reported */
    struct end *peer;
} end;

static void check(end *e)
{
    oae_link_stats s;
    oae_link_stats_get(e->l, &s);
    CHECK(s.out_settled <= s.out_commit && s.out_commit <= s.out_hi);
    CHECK(s.out_peer_held <= s.out_hi);
    CHECK(s.in_delivered <= s.in_held);
    CHECK(s.in_released <= s.in_delivered);
    CHECK(s.out_hi - s.out_settled <= e->cfg.window);
    CHECK(s.phase >= OAE_PHASE_DISCOVER && s.phase <= OAE_PHASE_LIVE);
}

static void drain(end *e)
{
    oae_event ev[32];
    size_t n;
    while ((n = oae_link_poll_events(e->l, ev, 32)) > 0) {
        for (size_t i = 0; i < n; i++) {
            CHECK(ev[i].type >= OAE_EV_LINK_UP && ev[i].type <= OAE_EV_REFLECTED);
            CHECK(ev[i].length <= OAE_PAYLOAD_MAX);
            uint32_t t = ev[i].tid;
            int gates = e->cfg.gates;
            if (ev[i].type == OAE_EV_DELIVERED) {
                CHECK(t > e->last_delivered); /* exactly once, in order */
                e->last_delivered = t;
                if (t < TRACKED) {
                    uint8_t f = e->peer->fate[t];
                    CHECK(!(f & ABORTED)); /* never deliver a reversed one */
                    /* gates: held only by hold(), delivered only after commit() */
                    CHECK(!gates || !(f & CONTROL) || (f & HELD));
                    CHECK(!(f & GATED) || (f & RELEASED));
                    e->peer->fate[t] |= DELIVERED;
                }
            } else if (ev[i].type == OAE_EV_OFFERED) {
                CHECK(gates && t < TRACKED && (e->peer->fate[t] & CONTROL));
            } else if (ev[i].type == OAE_EV_REFLECTED) {
                CHECK(t < TRACKED && (e->fate[t] & GATED) && (e->fate[t] & HELD));
                e->reflected = t;
            } else if (ev[i].type == OAE_EV_COMMITTED && t < TRACKED) {
                CHECK(e->fate[t] & DELIVERED); /* only after the peer delivered it */
                CHECK(!(e->fate[t] & ABORTED));
                /* gates: reported by the peer's application, or decided by a round */
                CHECK(!gates || !(e->fate[t] & CONTROL) || (ev[i].flags & OAE_EVF_ROUND) ||
                      e->peer->reported >= t);
                e->fate[t] |= COMMITTED;
            } else if (ev[i].type == OAE_EV_ABORTED && t < TRACKED) {
                CHECK(!(e->fate[t] & (DELIVERED | COMMITTED)));
                e->fate[t] |= ABORTED;
            } else if (ev[i].type == OAE_EV_PERSIST) {
                oae_link_durable_get(e->l, &e->dur);
                e->has_dur = 1;
                oae_link_persisted(e->l);
            }
        }
    }
    check(e);
}

static void restart(end *e, uint32_t nonce)
{
    oae_link_free(e->l);
    e->cfg.nonce = nonce;
    e->l = oae_link_new(&e->cfg, e->has_dur ? &e->dur : NULL);
    CHECK(e->l != NULL); /* an engine always accepts its own durable registers */
}

static uint64_t now;

/* The application of end e decides: `what` 0 hold, 1 refuse, 2 report, 3 commit, each on
 * the tid it is for, or (wrong != 0) on one next to it. */
static void decide(end *e, int what, int wrong)
{
    oae_link_stats s;
    oae_link_stats_get(e->l, &s);
    uint32_t t = what < 2 ? s.in_offered : what == 2 ? s.in_delivered : e->reflected;
    t += wrong ? (uint32_t)(wrong - 2) : 0;
    int rc;
    if (what == 0) {
        rc = oae_link_hold(e->l, t);
        if (rc == 0 && t < TRACKED)
            e->peer->fate[t] |= HELD;
    } else if (what == 1) {
        rc = oae_link_refuse(e->l, t);
    } else if (what == 2) {
        rc = oae_link_report(e->l, t);
        if (rc == 0 && t > e->reported)
            e->reported = t;
    } else {
        rc = oae_link_commit(e->l, t);
        if (rc == 0 && t < TRACKED)
            e->fate[t] |= RELEASED;
    }
    CHECK(rc <= 0 && rc >= OAE_GATE_INVALID);
    CHECK(rc != OAE_GATE_INVALID || !e->cfg.gates || what == 3);
    drain(e);
}

/* Move frames from one end to the other; `keep` is a bitmask of which to deliver. */
static void exchange(end *from, end *to, uint8_t keep)
{
    uint8_t buf[8 * OAE_FRAME_LEN];
    size_t n = oae_link_poll_tx(from->l, buf, 8, now);
    for (size_t i = 0; i < n; i++) {
        memcpy(from->last_frame, buf + i * OAE_FRAME_LEN, OAE_FRAME_LEN);
        from->has_frame = 1;
        if (keep & (1u << i))
            oae_link_on_frame(to->l, buf + i * OAE_FRAME_LEN, OAE_FRAME_LEN, now);
    }
    drain(from);
    drain(to);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static const uint32_t beats[4] = {1, 4, 16, 64};
    end a, b;
    static uint8_t fate_a[TRACKED], fate_b[TRACKED];
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(fate_a, 0, sizeof fate_a);
    memset(fate_b, 0, sizeof fate_b);
    a.fate = fate_a;
    b.fate = fate_b;
    a.peer = &b;
    b.peer = &a;
    uint8_t mode = data[0];
    for (int w = 0; w < 2; w++) {
        oae_link_config *c = w ? &b.cfg : &a.cfg;
        uint8_t mac[6] = {0x02, 0, 0, 0, 0, (uint8_t)(w ? 0x0b : 0x0a)};
        memcpy(c->mac, mac, 6);
        c->nonce = w ? 200 : 100;
        c->window = 1u + 5u * ((mode >> 4) & 3);
        c->beat = beats[mode & 3];
        c->rx_capacity = 1u + ((mode >> 2) & 3);
        c->gates = (mode >> 6) & 1;
        c->rto_ns = 50;
        c->dead_ns = 1000;
        c->hello_ns = 100;
        c->idle_ns = (mode & 0x80) ? 10 : 0;
        c->has_key = 1;
        memset(c->key, 0x5a, 16);
        c->persist = 1;
    }
    now = 0;
    a.l = oae_link_new(&a.cfg, NULL);
    b.l = oae_link_new(&b.cfg, NULL);
    CHECK(a.l && b.l);
    uint32_t restarts = 0;
    size_t i = 1;
    while (i < size) {
        uint8_t op = data[i++];
        uint8_t arg = i < size ? data[i] : 0;
        switch (op % 12) {
        case 0: { /* raw attacker bytes as a frame */
            size_t len = arg % 81;
            i++;
            if (len > size - i)
                len = size - i;
            oae_link_on_frame(a.l, data + i, len, now);
            i += len;
            drain(&a);
            break;
        }
        case 1: /* a real frame of B, mutated: one byte changed, possibly re-sent */
            if (b.has_frame && i + 1 < size) {
                uint8_t f[OAE_FRAME_LEN];
                memcpy(f, b.last_frame, OAE_FRAME_LEN);
                f[data[i] % OAE_FRAME_LEN] ^= data[i + 1];
                oae_link_on_frame(a.l, f, OAE_FRAME_LEN, now);
                i += 2;
                drain(&a);
            }
            break;
        case 2: /* replay B's last real frame unchanged */
            if (b.has_frame)
                oae_link_on_frame(a.l, b.last_frame, OAE_FRAME_LEN, now);
            drain(&a);
            break;
        case 3: /* time passes */
            now += 1 + (uint64_t)arg * 8;
            i++;
            if (oae_link_next_timeout(a.l) <= now)
                oae_link_on_timeout(a.l, now);
            if (oae_link_next_timeout(b.l) <= now)
                oae_link_on_timeout(b.l, now);
            drain(&a);
            drain(&b);
            break;
        case 4: { /* offers: A's CONTROL if bit 0 (gated if bit 7), B's if bit 1 (bit 6) */
            uint8_t p[16];
            memset(p, arg, sizeof p);
            for (int w = 0; w < 2; w++) {
                end *e = w ? &b : &a;
                uint8_t f = 0;
                if (arg & (1u << w))
                    f = OAE_F_CONTROL | ((e->cfg.gates && (arg & (0x80u >> w))) ? OAE_OFFER_GATED
                                                                              : 0);
                uint32_t tid;
                if (oae_link_offer(e->l, p, (arg >> w) % 17, f, &tid) == 0 && tid < TRACKED)
                    e->fate[tid] = (uint8_t)(((f & OAE_F_CONTROL) ? CONTROL : 0) |
                                             ((f & OAE_OFFER_GATED) ? GATED : 0));
                drain(e);
            }
            i++;
            break;
        }
        case 5:
            oae_link_release(a.l, arg % 4);
            oae_link_release(b.l, arg % 3);
            if (arg & 0x40) { /* a new epoch (may wake an idle-paced link) */
                oae_link_set_epoch(a.l, arg >> 7);
                oae_link_set_epoch(b.l, arg >> 7);
            }
            CHECK(oae_link_idle(a.l) == 0 || oae_link_idle(a.l) == 1);
            i++;
            break;
        case 6: /* honest exchange with loss given by the argument bits */
            exchange(&a, &b, arg);
            exchange(&b, &a, (uint8_t)~arg);
            i++;
            break;
        case 7: /* crash-restart from the durable registers (the gates start clean) */
            if (arg & 1) {
                restart(&a, 1000 + ++restarts);
                a.last_delivered = a.has_dur ? a.dur.in_delivered : 0;
                a.reflected = 0;
            } else {
                restart(&b, 2000 + ++restarts);
                b.last_delivered = b.has_dur ? b.dur.in_delivered : 0;
                b.reflected = 0;
            }
            i++;
            break;
        case 9: /* the applications decide: A on bits 0-1, B on bits 2-3, wrong tids 4-6 */
            decide(&a, arg & 3, (arg >> 4) & 3);
            decide(&b, (arg >> 2) & 3, (arg >> 6) & 3);
            i++;
            break;
        case 10: /* a reset of A or B, then a clean exchange */
            CHECK(oae_link_reset((arg & 1) ? a.l : b.l, now) <= 0);
            drain(&a);
            drain(&b);
            exchange(&a, &b, 0xFF);
            exchange(&b, &a, 0xFF);
            i++;
            break;
        case 11: /* every decision right at once at both ends, then an exchange */
            for (int what = 0; what < 4; what++) {
                if (what == 1)
                    continue;
                decide(&a, what, 0);
                decide(&b, what, 0);
            }
            now += 5;
            exchange(&a, &b, 0xFF);
            exchange(&b, &a, 0xFF);
            break;
        default: /* several clean exchanges to get deep into LIVE */
            for (int k = 0; k < 4; k++) {
                now += 5;
                exchange(&a, &b, 0xFF);
                exchange(&b, &a, 0xFF);
            }
            break;
        }
    }
    oae_link_free(a.l);
    oae_link_free(b.l);
    return 0;
}
