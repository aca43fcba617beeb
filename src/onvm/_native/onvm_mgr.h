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

/* A sequence word of a table the audit watches (fence.c): its value and since when. */
struct onvm_seq_watch {
    uint32_t seen;
    uint64_t since;
};

/* Who had not passed a loop iteration when a grace period last timed out
 * (onvm_mgr_grace; emptied when one completes): how many NFs and workers, and
 * the first ONVM_STALL_NAMED of each (NF ids; worker rows, RX workers first). */
#define ONVM_STALL_NAMED 8
struct onvm_grace_stall {
    unsigned nfs, workers;
    uint32_t nf[ONVM_STALL_NAMED], worker[ONVM_STALL_NAMED];
};

struct onvm_mgr {
    struct onvm_region *r;
    struct onvm_port *ports[ONVM_MAX_PORTS];
    unsigned nrx, ntx;
    unsigned burst;
    _Atomic int stop;
    _Atomic int rx_paused; /* inputs wait (until the chain's NFs are up) */
    struct onvm_mgr_worker workers[ONVM_MAX_WORKERS];
    /* fence.c: the audit's memory of the tables' sequence words */
    struct onvm_seq_watch seq_chain[ONVM_MAX_CHAINS], seq_service[ONVM_MAX_SERVICES];
    int told_pool; /* the damaged free stack was reported */
    struct onvm_grace_stall stalled; /* retire.c: written and read under the manager's control lock */
};

int onvm_mgr_start(struct onvm_mgr *m);
void onvm_mgr_stop(struct onvm_mgr *m);
/* Wake every worker (after a port or NF change). */
void onvm_mgr_kick(struct onvm_mgr *m);

/* fence.c: what the manager's audit found, for its Python side to act on. */
enum onvm_audit_kind {
    ONVM_AUDIT_FAULT = 1, /* NF nf handed over something invalid (why: enum onvm_fault): fence it */
    ONVM_AUDIT_STALL,     /* NF nf held a reservation of NF peer's RX ring a second or more: fence it */
    ONVM_AUDIT_RING,      /* NF peer's RX ring was held up a second or more: published again */
    ONVM_AUDIT_TABLE,     /* a table's sequence word stayed odd a second or more: reset (why: chain
                           * 0 or service 1; peer: which) */
    ONVM_AUDIT_POOL,      /* a free stack's head (peer: which) names no slot: allocations get nothing from it */
};

struct onvm_audit_event {
    uint32_t kind;
    uint32_t nf;
    uint32_t peer;
    uint32_t why;
    uint64_t count;
};

/* One look at the region for what the packet path cannot fix itself; at most max
 * events go to out.  Call it from one thread, often (the manager does twice a
 * second): a stall is acted on once it has lasted ONVM_STALL_NS. */
#define ONVM_STALL_NS 1000000000ull
int onvm_mgr_audit(struct onvm_mgr *m, struct onvm_audit_event *out, int max);
/* Return to the pool the slots nobody can free any more: their stamp names no live
 * holder, or says free while the free stack does not hold them (an NF wrote over the
 * stamps of slots it held, then was fenced off).  Takes a grace period of at most
 * grace_ns (settle: one more first, and nothing looked at unless it completes; for a
 * sweep tried again).  Returns how many came back; -EAGAIN, with nothing freed, when
 * the grace period did not complete in time; or -errno. */
long onvm_mgr_sweep(struct onvm_mgr *m, uint64_t grace_ns, int settle);

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
/* A grace period: wait until every active NF but skip_nf and every running worker has
 * passed a loop iteration or sleeps (at most timeout_ns); 1 if they all did, 0 if not,
 * -errno.  *pending, when given, gets how many had not. */
int onvm_mgr_grace(struct onvm_mgr *m, unsigned skip_nf, uint64_t timeout_ns, unsigned *pending);
/* Wait until every NF ring is empty; 1 if it happened within timeout_ns. */
int onvm_mgr_wait_drained(struct onvm_mgr *m, uint64_t timeout_ns);

#endif
