/* onvm_mgr.h - the manager's native RX and TX workers. */
#ifndef ONVM_MGR_H
#define ONVM_MGR_H

#include <pthread.h>

#include "onvm_route.h"

struct onvm_mgr;

#define ONVM_RX_SEEN 4 /* chains remembered per port; more: the port is mixed */

/* RX: where a port's last burst went, to leave the port unread while that is congested. */
struct onvm_rx_seen {
    struct onvm_ring *ring[ONVM_ROUTE_FED]; /* first-hop rings it fed */
    uint16_t chain[ONVM_RX_SEEN];
    uint8_t nring;
    uint8_t n;
    uint8_t mixed; /* more chains than remembered: not held for its chains, early discard instead */
    uint8_t held;  /* left unread in the last round */
};

struct onvm_mgr_worker {
    struct onvm_mgr *mgr;
    unsigned id;    /* row in the region's worker table and port stats */
    unsigned index; /* among the workers of its role */
    int tx;         /* 0: RX worker, 1: TX worker */
    pthread_t thread;
    int started;
    struct onvm_route_ctx route;
    uint64_t act[ONVM_ACT_COUNT];
    uint64_t drops[ONVM_DROP_COUNT];
    uint64_t handed;
    uint32_t buf[ONVM_BURST_MAX];
    struct onvm_rx_seen seen[ONVM_MAX_PORTS];
};

struct onvm_mgr {
    struct onvm_region *r;
    struct onvm_port *ports[ONVM_MAX_PORTS];
    unsigned nrx, ntx;
    unsigned burst;
    _Atomic int stop;
    _Atomic int rx_paused; /* inputs wait (until the chain's NFs are up) */
    struct onvm_mgr_worker workers[ONVM_MAX_WORKERS];
};

int onvm_mgr_start(struct onvm_mgr *m);
void onvm_mgr_stop(struct onvm_mgr *m);
/* Wake every worker (after a port or NF change). */
void onvm_mgr_kick(struct onvm_mgr *m);

/* retire.c: an NF that left its service, taken out of the packet path. */
struct onvm_retire_result {
    long reclaimed;    /* slots returned to the pool: its RX ring and what it held */
    int grace_ok;      /* every other NF and worker passed an iteration in time */
    unsigned pending;  /* how many had not, when grace_ok is 0 */
    int drained;       /* its TX ring was emptied in time */
    uint64_t grace_ns; /* how long the grace period took */
};
/* Mark nf_id DRAINING, wait a grace period (at most grace_ns), reclaim its
 * slots, wait for its TX ring to drain (at most drain_ns).  The caller took it
 * out of its service first and releases its slot (onvm_nf_release) after. */
int onvm_mgr_retire_nf(struct onvm_mgr *m, unsigned nf_id, uint64_t grace_ns, uint64_t drain_ns,
                       struct onvm_retire_result *out);
/* Wait until every NF ring is empty; 1 if it happened within timeout_ns. */
int onvm_mgr_wait_drained(struct onvm_mgr *m, uint64_t timeout_ns);

#endif
