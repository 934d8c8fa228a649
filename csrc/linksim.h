/* oae link simulator: two link engines joined by a seeded, impaired in-memory network on
 * a virtual clock, with an application on each end that offers transfers, consumes
 * deliveries and checks the exactly-once contract.  Used by tests and `oae bench engine`;
 * it runs the whole scenario in C so that 100,000-transfer runs take seconds. */
#ifndef OAE_LINKSIM_H
#define OAE_LINKSIM_H

#include <stdint.h>

#include "link.h"

/* cdef-begin */
typedef struct oae_sim_config {
    uint64_t seed;
    uint32_t transfers;        /* transfers offered in each direction */
    uint32_t loss_ppm, dup_ppm, reorder_ppm, corrupt_ppm; /* per million frames */
    uint64_t latency_ns;       /* one-way delay */
    uint64_t reorder_ns;       /* a reordered frame is held back up to this long (0: 2x latency) */
    uint64_t flap_every_ns;    /* 0: no flaps; else the wire goes dead this often ... */
    uint64_t flap_ns;          /* ... for this long */
    uint64_t crash_every_ns;   /* 0: no crashes; else one end (alternately) restarts from its
                                  durable registers this often */
    uint64_t release_ns;       /* 0: deliveries consumed at once; else one per this period */
    uint64_t persist_ns;       /* how long storing the durable registers takes (0: at once) */
    uint32_t window, beat, rx_capacity;
    uint64_t rto_ns, dead_ns, hello_ns;
    int has_key;
    uint64_t max_virtual_ns;   /* give up (and report a violation) after this much time */
    uint64_t idle_ns;          /* the engines' idle pacing (0: none) */
    uint64_t offer_ns;         /* 0: offer as fast as the window allows; else one transfer
                                  per end about this often (random phase), so that the link
                                  goes idle between transfers */
    /* gated CONTROL transfers (docs/protocol.md 7.11): with gates, each application holds
     * (or refuses) every incoming CONTROL offer, reports every CONTROL delivery and commits
     * (or resets the link instead) every gated transfer of its own, each after a random
     * delay; the checks then include the gate invariants of docs/protocol.md 7.10 */
    int gates;
    uint32_t control_ppm;      /* transfers offered as CONTROL ... */
    uint32_t gated_ppm;        /* ... and of those, offered gated (with gates) */
    uint32_t refuse_ppm;       /* a pending offer is refused instead of held */
    uint32_t reset_ppm;        /* a reflected gated transfer resets the link instead */
    uint64_t decide_ns;        /* each decision comes up to this long after its event */
} oae_sim_config;

typedef struct oae_sim_result {
    uint64_t offered[2], committed[2], aborted[2], delivered[2]; /* [0]: A->B, [1]: B->A */
    uint64_t renotified;       /* settled outcomes repeated after a restart (same outcome) */
    uint64_t frames, frames_lost, frames_duplicated, frames_reordered, frames_corrupted;
    uint64_t flaps, crashes, links_up, virtual_ns;
    uint64_t holds, refusals, commits, reports, resets; /* application decisions taken */
    uint64_t round_outcomes;   /* outcomes flagged OAE_EVF_ROUND (decided by a round) */
    uint64_t violations;
    char first_violation[160];
    oae_link_stats stats[2];
} oae_sim_result;

/* Run a scenario to completion; returns 0 if the contract held, -1 otherwise (also for an
 * invalid config: see first_violation). */
int oae_sim_run(const oae_sim_config *cfg, oae_sim_result *res);
/* cdef-end */

#endif
