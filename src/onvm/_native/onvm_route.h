/* onvm_route.h - turn each packet's action into a destination and deliver a
 * burst there, grouped per destination.  Used by NF run loops (which deliver
 * to the next NF directly) and by the manager's workers (which also own ports). */
#ifndef ONVM_ROUTE_H
#define ONVM_ROUTE_H

#include "onvm_port.h"
#include "onvm_region.h"

#define ONVM_ROUTE_GROUPS 8

enum onvm_route_mode {
    ONVM_ROUTE_START = 0, /* fresh from a port: take hop 0 of the packet's chain */
    ONVM_ROUTE_META = 1,  /* follow meta->action / meta->dest */
};

struct onvm_route_group {
    int kind; /* 1 ring, 2 port */
    void *target;
    uint16_t to; /* a ring's consumer: an NF id, or the manager (0) for an NF's TX ring */
    uint32_t n;
    uint32_t slots[ONVM_BURST_MAX];
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
};

void onvm_route_burst(struct onvm_route_ctx *c, const uint32_t *slots, uint32_t n, int mode);

#endif
