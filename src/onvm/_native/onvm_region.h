/* onvm_region.h - a process's handle on the shared region, the packet pool and
 * the tables in it.  Slow-path calls return 0 or -errno and never exit. */
#ifndef ONVM_REGION_H
#define ONVM_REGION_H

#include <stddef.h>
#include <string.h>

#include "onvm_layout.h"
#include "onvm_ring.h"

struct onvm_region {
    uint8_t *base;
    size_t size;
    int fd;
    int owner;    /* created (and will unlink) this region */
    int replaced; /* create found a stale or foreign file at the path and removed it */
    struct onvm_header *hdr;
    struct onvm_meta *meta;
    uint8_t *slots;
    uint32_t slot_size;
    uint32_t pool_count;
    struct onvm_nf *nfs;
    struct onvm_service *services;
    struct onvm_chain *chains;
    struct onvm_port_info *ports;
    struct onvm_worker *workers;
    /* The rule classifier (onvm_flow.h), where this process found it when it
     * created or attached the region: readers bound what they read by these,
     * never by what the region says now. */
    uint64_t cls_ctl, cls_tuples, cls_images[2], cls_groups[2], cls_rules, cls_hits;
    uint32_t cls_max_rules, cls_max_slots;
    struct onvm_cls_writer *clsw; /* the manager's private side of the classifier */
    char errmsg[256];
};

struct onvm_region_params {
    uint32_t pool_count;
    uint32_t slot_size;
    uint32_t ring_size;
    uint32_t flow_count; /* flow table entries: 0 or a power of two */
    uint32_t max_rules;  /* rule slots reserved (0: ONVM_RULES_DEFAULT) */
    const char *name;
};

int onvm_region_create(struct onvm_region *r, const char *path, const struct onvm_region_params *p);
int onvm_region_attach(struct onvm_region *r, const char *path);
void onvm_region_detach(struct onvm_region *r);

/* Text into a fixed field of the region: at most size - 1 bytes, cut before a UTF-8
 * character that would not fit whole (a reader never sees half a character), the rest
 * of the field zeroed.  Callers pass valid UTF-8 (Python's "s" format gives it). */
static inline void onvm_set_text(char *dst, size_t size, const char *src) {
    size_t n = strnlen(src, size - 1);
    if (src[n] != '\0')
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) /* src[n] continues a character */
            n--;
    memcpy(dst, src, n);
    memset(dst + n, 0, size - n);
}

static inline void *onvm_at(const struct onvm_region *r, uint64_t off) {
    return off ? (void *)(r->base + off) : NULL;
}

static inline uint8_t *onvm_slot_data(const struct onvm_region *r, uint32_t idx) {
    return r->slots + (size_t)idx * r->slot_size + r->meta[idx].data_off;
}

static inline uint32_t onvm_slot_room(const struct onvm_region *r) {
    return r->slot_size - ONVM_HEADROOM;
}

/* NF ring k (0 = rx, 1 = tx) of NF id */
/* Where NF nf_id's RX (tx == 0) or TX ring lives: inline, the packet path asks per packet. */
static inline uint32_t onvm_nf_ring_off(const struct onvm_region *r, unsigned nf_id, int tx) {
    return (uint32_t)(r->hdr->off_rings + r->hdr->ring_bytes * (2u * nf_id + (tx ? 1u : 0u)));
}

static inline struct onvm_ring *onvm_nf_ring(const struct onvm_region *r, unsigned nf_id, int tx) {
    return (struct onvm_ring *)(r->base + onvm_nf_ring_off(r, nf_id, tx));
}

/* ---- pool ---- */
uint32_t onvm_pool_alloc_burst(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner);
void onvm_pool_free_burst(struct onvm_region *r, const uint32_t *idx, uint32_t n);
/* Once port's device holds nothing any more (its queues and rings are gone):
 * frees every slot still stamped as lent to the port and zeroes the port's
 * lent counts (onvm_port.h).  Returns how many slots came back. */
long onvm_port_reclaim(struct onvm_region *r, unsigned port);
/* Slots lent to port's device now, and to every port's (sums of the workers' rows). */
int64_t onvm_port_lent(const struct onvm_region *r, unsigned port);
int64_t onvm_pool_lent(const struct onvm_region *r);

static inline int64_t onvm_pool_free_count(const struct onvm_region *r) {
    return atomic_load_explicit(&r->hdr->free.count, ONVM_RELAXED);
}

/* A fresh packet's metadata: inline, RX drivers call it per packet. */
static inline void onvm_slot_reset(struct onvm_region *r, uint32_t idx) {
    struct onvm_meta *m = &r->meta[idx];
    m->len = 0;
    m->flow_hash = 0;
    m->rx_ns = 0;
    m->in_port = 0;
    m->dest = 0;
    m->src_nf = 0;
    m->action = ONVM_ACT_NEXT;
    m->chain_idx = 0;
    m->flags = 0;
    m->l3_type = 0;
    m->l4_proto = 0;
    m->l3_off = 0;
    m->l4_off = 0;
    m->chain_id = 0;
    m->data_off = ONVM_HEADROOM;
}

/* ---- services and chains (manager writes, everyone reads) ---- */
void onvm_service_set(struct onvm_region *r, unsigned svc, const uint16_t *nf, const uint16_t *inst,
                      unsigned count, unsigned policy);
/* Load-balancing policies, listed once (see ONVM_ACTIONS in onvm_layout.h). */
#define ONVM_POLICIES(X)                                                                           \
    X(HASH, "hash")          /* rendezvous hashing of the symmetric flow hash: flow affinity */    \
    X(RR, "round-robin")     /* round-robin, per producer (*rr is the producer's counter) */       \
    X(LEAST, "least-loaded") /* the instance whose RX ring holds the fewest packets */

enum onvm_policy {
#define ONVM_X_ENUM(id, name) ONVM_POLICY_##id,
    ONVM_POLICIES(ONVM_X_ENUM)
#undef ONVM_X_ENUM
    ONVM_POLICY_COUNT
};
/* Returns an NF id for a packet of the service, 0 if the service has none. */
/* An instance of svc for a flow (0: none); *count_out, when given, gets the number of
 * instances the pick saw (1: every flow gets the same one). */
unsigned onvm_service_pick(const struct onvm_region *r, unsigned svc, uint32_t hash, uint32_t *rr,
                           unsigned *count_out);
/* The NF ids of svc's instances (a consistent copy, up to ONVM_MAX_INSTANCES); returns how many. */
unsigned onvm_service_members(const struct onvm_region *r, unsigned svc, uint16_t *nf);
int onvm_chain_set(struct onvm_region *r, unsigned chain, const struct onvm_hop *hops, unsigned n,
                   const char *name);
int onvm_chain_hop(const struct onvm_region *r, unsigned chain, unsigned idx, struct onvm_hop *out);

/* ---- NF slots (manager only) ---- */
int onvm_nf_activate(struct onvm_region *r, unsigned nf_id, unsigned service, unsigned instance,
                     int pid, unsigned tx_worker, const char *name);
/* It receives nothing more; producers waiting on its RX ring are released. */
void onvm_nf_set_draining(struct onvm_region *r, unsigned nf_id);
void onvm_nf_request_stop(struct onvm_region *r, unsigned nf_id);
/* After an NF is gone: repair a half-done enqueue it left, drain its RX ring,
 * return the slots it held.  Returns the number of slots returned. */
long onvm_region_reclaim(struct onvm_region *r, unsigned nf_id);
void onvm_nf_release(struct onvm_region *r, unsigned nf_id);

#endif
