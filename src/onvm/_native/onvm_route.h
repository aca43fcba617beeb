/* onvm_route.h - turn each packet's action into a destination and deliver a
 * burst there, grouped per destination.  Used by NF run loops (which deliver
 * to the next NF directly) and by the manager's workers (which also own ports). */
#ifndef ONVM_ROUTE_H
#define ONVM_ROUTE_H

#include "onvm_bp.h"
#include "onvm_port.h"
#include "onvm_region.h"

#define ONVM_ROUTE_GROUPS 8
#define ONVM_ROUTE_FED 8    /* rings an NF remembers feeding, for backpressure */
#define ONVM_ROUTE_TALLIES 8

enum onvm_route_mode {
    ONVM_ROUTE_START = 0, /* fresh from a port: take hop 0 of the packet's chain */
    ONVM_ROUTE_META = 1,  /* follow meta->action / meta->dest */
};

struct onvm_route_group {
    int kind; /* 1 ring, 2 port */
    void *target;
    uint16_t to;    /* a ring's consumer: an NF id, or the manager (0) for an NF's TX ring */
    uint16_t stamp; /* a ring's: its slots are in transit from this producer to `to` */
    uint32_t n;
    uint32_t slots[ONVM_BURST_MAX];
};

/* Drops counted per chain hop (and, early, per NF), added to the region a burst at a time. */
struct onvm_route_tally {
    uint16_t chain;
    uint8_t hop;
    uint8_t late; /* 0: early (at RX), 1: late (after an NF) */
    uint16_t nf;  /* early: the congested NF, 0 for none */
    uint32_t n;
};

/* RX: a chain's verdict (onvm_chain_check), computed at most once per stamp. */
struct onvm_route_verdict {
    uint32_t stamp;
    uint8_t state;
    uint8_t hop;
    uint16_t nf;
};

struct onvm_route_ctx {
    struct onvm_region *r;
    unsigned self_nf;               /* 0 for the manager */
    struct onvm_enq_record *rec;    /* the NF's enqueue record, NULL in the manager */
    struct onvm_ring *tx_ring;      /* NF: where OUT packets go (the manager sends them) */
    struct onvm_waiter *tx_waiter;  /* NF: the TX worker that drains it */
    struct onvm_port **ports;       /* manager: the port table */
    unsigned worker;                /* manager: this worker's row in port stats */
    uint64_t *act;                  /* [ONVM_ACT_COUNT] actions taken */
    uint64_t *drops;                /* [ONVM_DROP_COUNT] */
    uint64_t *tx;                   /* packets handed onward */
    struct onvm_route_group groups[ONVM_ROUTE_GROUPS];
    unsigned ngroups;
    uint32_t nfree;
    uint32_t freebuf[ONVM_BURST_MAX];
    uint32_t rr[ONVM_MAX_SERVICES]; /* round-robin position per service, this producer's own */
    uint64_t *late;                 /* NF: packets it handled that were then dropped (stats.late) */
    struct onvm_ring *fed[ONVM_ROUTE_FED]; /* rings fed since the owner last looked (backpressure) */
    unsigned nfed;
    struct onvm_route_tally tally[ONVM_ROUTE_TALLIES];
    unsigned ntally;
    int early_discard; /* RX: drop packets of congested chains before any NF (selective early discard) */
    uint32_t stamp;    /* RX: verdicts older than this are computed again */
    struct onvm_route_verdict verdict[ONVM_MAX_CHAINS];
    unsigned rx; /* RX worker i: i + 1 (service picks depend on it); 0 elsewhere */
};

void onvm_route_burst(struct onvm_route_ctx *c, const uint32_t *slots, uint32_t n, int mode);

/* RX: the chain's verdict for this stamp (ONVM_CHAIN_*; see onvm_bp.h). */
const struct onvm_route_verdict *onvm_route_verdict(struct onvm_route_ctx *c, unsigned chain);

/* NF: a ring it fed since the last call that is congested and that it may
 * wait for (not its own, closing no loop of waiting NFs), or NULL.  Stores
 * bp.blocked_on accordingly. */
struct onvm_ring *onvm_route_blocked(struct onvm_route_ctx *c);

#endif
