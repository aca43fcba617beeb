/* onvm_region.h - a process's handle on the shared region, the packet pool and
 * the tables in it.  Slow-path calls return 0 or -errno and never exit. */
#ifndef ONVM_REGION_H
#define ONVM_REGION_H

#include <stddef.h>

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
    char errmsg[256];
};

struct onvm_region_params {
    uint32_t pool_count;
    uint32_t slot_size;
    uint32_t ring_size;
    uint32_t flow_count; /* flow table entries: 0 or a power of two */
    const char *name;
};

int onvm_region_create(struct onvm_region *r, const char *path, const struct onvm_region_params *p);
/* mapguard.c: a SIGBUS in a registered mapping (its file was cut short) puts zero
 * pages over the part past the file's end instead of killing the process. */
void onvm_guard_map(void *base, size_t size, int fd);
void onvm_guard_file_closed(void *base); /* the mapping stays, its file descriptor is gone */
void onvm_guard_unmap(void *base);       /* call before munmap */
int onvm_region_damaged(const struct onvm_region *r);
extern _Atomic int onvm_guard_tripped; /* some mapping of this process was damaged */
int onvm_region_attach(struct onvm_region *r, const char *path);
void onvm_region_detach(struct onvm_region *r);

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
int64_t onvm_pool_free_count(const struct onvm_region *r);
void onvm_slot_reset(struct onvm_region *r, uint32_t idx);
/* Once port's device holds nothing any more (its queues and rings are gone):
 * frees every slot still stamped as lent to the port and zeroes the port's
 * lent counts (onvm_port.h).  Returns how many slots came back. */
long onvm_port_reclaim(struct onvm_region *r, unsigned port);
/* Slots lent to port's device now, and to every port's (sums of the workers' rows). */
int64_t onvm_port_lent(const struct onvm_region *r, unsigned port);
int64_t onvm_pool_lent(const struct onvm_region *r);

/* ---- services and chains (manager writes, everyone reads) ---- */
void onvm_service_set(struct onvm_region *r, unsigned svc, const uint16_t *nf, const uint16_t *inst,
                      unsigned count, unsigned policy);
enum onvm_policy {
    ONVM_POLICY_HASH = 0,  /* rendezvous hashing of the symmetric flow hash: flow affinity */
    ONVM_POLICY_RR = 1,    /* round-robin, per producer (*rr is the producer's counter) */
    ONVM_POLICY_LEAST = 2, /* the instance whose RX ring holds the fewest packets */
};
/* Returns an NF id for a packet of the service, 0 if the service has none. */
/* An instance of svc for a flow (0: none); *count_out, when given, gets the number of
 * instances the pick saw (1: every flow gets the same one). */
unsigned onvm_service_pick(const struct onvm_region *r, unsigned svc, uint32_t hash, uint32_t *rr,
                           unsigned *count_out);
int onvm_chain_set(struct onvm_region *r, unsigned chain, const struct onvm_hop *hops, unsigned n,
                   const char *name);
int onvm_chain_hop(const struct onvm_region *r, unsigned chain, unsigned idx, struct onvm_hop *out);

/* ---- NF slots (manager only) ---- */
int onvm_nf_activate(struct onvm_region *r, unsigned nf_id, unsigned service, unsigned instance,
                     int pid, unsigned tx_worker, const char *name);
void onvm_nf_request_stop(struct onvm_region *r, unsigned nf_id);
/* After an NF is gone: repair a half-done enqueue it left, drain its RX ring,
 * return the slots it held.  Returns the number of slots returned. */
long onvm_region_reclaim(struct onvm_region *r, unsigned nf_id);
void onvm_nf_release(struct onvm_region *r, unsigned nf_id);

#endif
