/* onvm_bp.h - backpressure: ring watermarks, producers that wait, and what RX does.
 *
 * Theory of operation
 * -------------------
 * Under overload, work done on a packet that a full ring further on throws
 * away is lost twice: the packet, and the CPU that a slower NF needed.  So
 * every NF ring has two watermarks (onvm_ring_init: high = size/2, low =
 * size/4) and a congested flag:
 *
 *   - a producer sets it when an enqueue leaves the ring at or above high
 *     (onvm_bp_pushed);
 *   - the consumer clears it when a dequeue, or an empty poll, finds the ring
 *     at or below low, and wakes the producers that sleep on it
 *     (onvm_bp_drained).
 *
 * Producers look at the flag before they take new work, never while they
 * deliver.  An NF checks the rings it fed in its last burst before it dequeues
 * the next one (onvm_route_blocked): while one is congested it takes nothing,
 * so its own RX ring fills and its producers stop in turn.  An RX worker
 * checks the chains its port's last burst took before it reads the port
 * (onvm_chain_check): while they are congested the port is left unread and
 * its packets wait where waiting is free (the kernel's ring, the pcap file, a
 * gen port that does not generate, or counts them as missed when it is paced).
 * Packets of a congested chain that RX reads anyway (a port whose traffic
 * takes several chains) are dropped at once, before any NF works on them
 * (selective early discard).  What has been handled when a ring congests is
 * delivered into the headroom above high, so a late drop needs more
 * producers than ring_size / 2 / burst pushing at once.
 *
 * Waiting without a lost wake-up.  A producer sleeps on its own futex word
 * (its struct onvm_waiter), which also carries every other reason to wake it
 * (stop, messages, packets for it).  Before it sleeps it sets its bit in the
 * ring's waiting mask and reads the flag again; the consumer clears the flag
 * and then takes the mask, and kicks every waiter in it.  Both are seq_cst
 * read-modify-writes, so either the consumer sees the bit or the producer sees
 * the flag cleared; the producer flagged itself sleeping before it set the
 * bit, so the kick finds it.  A producer sets the flag and then reads the
 * consumer's position: if the consumer drained to low before the flag
 * appeared, the producer clears it itself.
 *
 * Cycles.  NFs may feed each other in a loop (speed_tester through a chain
 * back to itself).  Each waiting NF names the NF it waits for in
 * bp.blocked_on, stored before it looks along the names; a wait that would
 * close a loop is not started, so a loop of full rings keeps moving.
 */
#ifndef ONVM_BP_H
#define ONVM_BP_H

#include "onvm_region.h"

#define ONVM_BP_WORKERS 1ull /* waiting-mask bit of the manager's RX workers */

static inline int onvm_bp_congested(const struct onvm_ring *ring) {
    return atomic_load_explicit(&((struct onvm_ring *)ring)->congested, ONVM_RELAXED) != 0;
}

/* Wake the producers named in a waiting mask. */
static inline void onvm_bp_wake(struct onvm_region *r, uint64_t mask) {
    if (mask & ONVM_BP_WORKERS)
        for (unsigned i = 0; i < ONVM_MAX_WORKERS; i++)
            if (r->workers[i].role == 0)
                onvm_waiter_kick(&r->workers[i].wait);
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++)
        if (mask & (1ull << id))
            onvm_waiter_kick(&r->nfs[id].wait);
}

/* Clear the flag and wake whoever waits on it. */
static inline void onvm_bp_clear(struct onvm_region *r, struct onvm_ring *ring) {
    /* seq_cst: ordered before the exchange of waiting below, which pairs with
     * a waiting producer's fetch_or and reload of the flag (onvm_bp_wait_on). */
    if (!atomic_exchange(&ring->congested, 0))
        return;
    uint64_t mask = atomic_exchange(&ring->waiting, 0);
    if (mask && r) /* a ring outside a region (tests) has nobody to wake */
        onvm_bp_wake(r, mask);
}

/* A ring's geometry and watermarks: a region's rings from the process's own copy
 * of the layout (an NF may write anything into its rings), a private ring (r NULL,
 * tests) from the ring itself. */
struct onvm_bp_marks {
    uint32_t mask, high, low;
};

static inline struct onvm_bp_marks onvm_bp_marks(const struct onvm_region *r, const struct onvm_ring *ring) {
    if (r)
        return (struct onvm_bp_marks){r->ring_mask, r->ring_size / 2, r->ring_size / 4};
    return (struct onvm_bp_marks){ring->mask, ring->high, ring->low};
}

/* Producer, after an enqueue into ring: congested at or above high. */
static inline void onvm_bp_pushed(struct onvm_region *r, struct onvm_ring *ring) {
    struct onvm_bp_marks k = onvm_bp_marks(r, ring);
    if (onvm_bp_congested(ring) || onvm_ring_count(ring, k.mask) < k.high)
        return;
    /* seq_cst, then a full fence: the consumer's position read below is
     * newer than our flag, pairing with the fence before the consumer's check
     * of the flag (onvm_bp_drained after onvm_waiter_prepare). */
    atomic_exchange(&ring->congested, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (onvm_ring_count(ring, k.mask) <= k.low) /* it drained before our flag was visible */
        onvm_bp_clear(r, ring);
}

/* Consumer, after a dequeue or an empty poll of its ring. */
static inline void onvm_bp_drained(struct onvm_region *r, struct onvm_ring *ring) {
    if (onvm_bp_congested(ring)) {
        struct onvm_bp_marks k = onvm_bp_marks(r, ring);
        if (onvm_ring_count(ring, k.mask) <= k.low)
            onvm_bp_clear(r, ring);
    }
}

/* Producer about to sleep (after onvm_waiter_prepare): register bit on ring;
 * returns nonzero while the ring is still congested (sleep), 0 if it cleared. */
static inline int onvm_bp_wait_on(struct onvm_ring *ring, uint64_t bit) {
    /* seq_cst pair with onvm_bp_clear's exchanges: it sees our bit, or we see the flag cleared. */
    atomic_fetch_or(&ring->waiting, bit);
    return atomic_load(&ring->congested) != 0;
}

/* The NF whose RX ring ring is (0 for a TX ring, whose consumer is a TX worker,
 * or anything that is not an NF ring). */
static inline unsigned onvm_ring_consumer_nf(const struct onvm_region *r, const struct onvm_ring *ring) {
    uint64_t off = (uint64_t)((const uint8_t *)ring - r->base);
    if (off < r->off_rings)
        return 0;
    uint64_t k = (off - r->off_rings) / r->ring_bytes;
    return (k & 1) || k / 2 >= ONVM_MAX_NFS ? 0 : (unsigned)(k / 2);
}

/* Would self waiting for NF owner close a loop of waiting NFs?  Call after
 * storing self's own bp.blocked_on (seq_cst), so that of two NFs closing a
 * loop at once, the later one sees it. */
static inline int onvm_bp_cycle(const struct onvm_region *r, unsigned self, unsigned owner) {
    for (unsigned steps = 0; steps < ONVM_MAX_NFS && owner && owner < ONVM_MAX_NFS; steps++) {
        if (owner == self)
            return 1;
        /* seq_cst: pairs with each waiter's store of its own blocked_on. */
        owner = atomic_load(&r->nfs[owner].bp.blocked_on);
    }
    return 0;
}

/* A chain's state for RX (onvm_chain_check). */
enum { ONVM_CHAIN_OK = 0, ONVM_CHAIN_CONGESTED = 1, ONVM_CHAIN_BROKEN = 2 };

struct onvm_chain_verdict {
    int state;
    unsigned hop; /* the hop at fault */
    unsigned nf;  /* an instance of it (congested), for attribution */
};

/* A chain is congested when, at some hop, every running instance's RX ring is;
 * broken when a hop's service has no running instance.  With bit nonzero,
 * registers bit on the congested rings found (before sleeping). */
int onvm_chain_check(struct onvm_region *r, unsigned chain, uint64_t bit, struct onvm_chain_verdict *v);

#endif
