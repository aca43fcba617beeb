/* route.c - resolve actions and deliver bursts, grouped per destination.
 *
 * A packet put into a ring is stamped in transit from this producer to the
 * ring's consumer before the ring publishes it (onvm_layout.h): the consumer
 * takes nothing else.  The manager decides whether an NF may receive from its
 * own view of the NF (onvm_nf_view), an NF from the NF's record in the region. */
#include "onvm_route.h"
#include "onvm_capture.h"
#include "onvm_latency.h"

#include <errno.h>
#include <limits.h>

enum { GROUP_RING = 1, GROUP_PORT = 2 };

static void flush_tallies(struct onvm_route_ctx *c) {
    struct onvm_region *r = c->r;
    for (unsigned i = 0; i < c->ntally; i++) {
        struct onvm_route_tally *t = &c->tally[i];
        /* Relaxed adds: counters, read by the manager's stats. */
        if (t->chain < ONVM_MAX_CHAINS && t->hop < ONVM_MAX_HOPS) {
            struct onvm_hop_drops *d = &r->chains[t->chain].drops[t->hop];
            atomic_fetch_add_explicit(t->late ? &d->late : &d->early, t->n, ONVM_RELAXED);
        }
        if (t->nf && t->nf < ONVM_MAX_NFS)
            atomic_fetch_add_explicit(&r->nfs[t->nf].bp.early, t->n, ONVM_RELAXED);
    }
    c->ntally = 0;
}

static void tally(struct onvm_route_ctx *c, unsigned chain, unsigned hop, int late, unsigned nf) {
    for (unsigned i = 0; i < c->ntally; i++) {
        struct onvm_route_tally *t = &c->tally[i];
        if (t->chain == chain && t->hop == hop && t->late == late && t->nf == nf) {
            t->n++;
            return;
        }
    }
    if (c->ntally == ONVM_ROUTE_TALLIES)
        flush_tallies(c);
    c->tally[c->ntally++] = (struct onvm_route_tally){(uint16_t)chain, (uint8_t)hop, (uint8_t)late, (uint16_t)nf, 1};
}

static void drop(struct onvm_route_ctx *c, uint32_t slot, int reason) {
    c->drops[reason]++;
    if (c->r->meta[slot].flags & ONVM_MF_TRACED)
        onvm_trace_event(c->r, slot, ONVM_TEV_DROP, c->self_nf, 0, (unsigned)reason);
    if (c->self_nf && (reason == ONVM_DROP_RING_FULL || reason == ONVM_DROP_NO_DEST)) {
        /* An NF handled it, and then it could not go on: work lost (a late drop). */
        struct onvm_meta *m = &c->r->meta[slot];
        (*c->late)++;
        tally(c, m->chain_id, m->from_hop, 1, 0);
    }
    c->freebuf[c->nfree++] = slot;
    if (c->nfree == ONVM_BURST_MAX) {
        onvm_pool_free_burst(c->r, c->freebuf, c->nfree);
        c->nfree = 0;
    }
}

static void flush_group(struct onvm_route_ctx *c, struct onvm_route_group *g) {
    uint32_t done = 0;
    if (g->n == 0)
        return;
    if (g->kind == GROUP_RING) {
        struct onvm_region *r = c->r;
        struct onvm_ring *ring = g->target;
        uint32_t pos, mask = r->ring_mask;
        int sp = ring == c->tx_ring;
        done = sp ? onvm_ring_sp_reserve(ring, mask, g->n, 0, &pos)
                  : onvm_ring_mp_reserve(ring, mask, g->n, 0, &pos, c->rec, (uint32_t)((uint8_t *)ring - r->base));
        /* In transit to the ring's consumer: only the slots the ring has room for, and
         * before the commit's release, so the consumer sees the stamp with the entry.  A
         * slot the ring cannot take keeps its sender's stamp until it is freed below, so
         * a consumer reading a stale entry that names it (a ring whose positions were
         * written over) is refused it. */
        for (uint32_t i = 0; i < done; i++) {
            atomic_store_explicit(&r->meta[g->slots[i]].owner, g->stamp, ONVM_RELAXED);
            onvm_ring_put(ring, mask, pos + i, g->slots[i]);
        }
        if (done) {
            if (sp)
                onvm_ring_sp_commit(ring, pos, done);
            else
                onvm_ring_mp_commit(ring, c->rec);
            /* The consumer's waiter from what we know of it, never from the ring. */
            struct onvm_waiter *w = g->to ? &r->nfs[g->to].wait : c->tx_waiter;
            if (w)
                onvm_waiter_kick(w);
        }
        onvm_bp_pushed(r, ring);
        unsigned k = 0;
        while (k < c->nfed && c->fed[k] != ring)
            k++;
        if (k == c->nfed && k < ONVM_ROUTE_FED)
            c->fed[c->nfed++] = ring;
        for (uint32_t i = done; i < g->n; i++)
            drop(c, g->slots[i], ONVM_DROP_RING_FULL);
    } else {
        struct onvm_port *p = g->target;
        uint64_t bytes = 0;
        struct onvm_port_stats *st = &c->r->ports[p->id].by_worker[c->worker];
        /* before tx: the port frees the slots it sent */
        onvm_lat_sample_burst(&st->lat, c->r->meta, g->slots, g->n, onvm_now_ns());
        uint32_t tap = atomic_load_explicit(&p->tap, ONVM_RELAXED) >> ONVM_CAP_TX_SHIFT;
        if (tap) /* a capture watches what the port sends */
            onvm_cap_burst(c->r, tap, g->slots, g->n, 0);
        if (p->tx_mt) {
            done = p->tx(p, c->r, g->slots, g->n, &bytes, st);
        } else {
            pthread_mutex_lock(&p->tx_lock);
            done = p->tx(p, c->r, g->slots, g->n, &bytes, st);
            pthread_mutex_unlock(&p->tx_lock);
        }
        st->tx += done;
        st->tx_bytes += bytes;
        st->drops[ONVM_DROP_PORT] += g->n - done;
        c->drops[ONVM_DROP_PORT] += g->n - done;
    }
    *c->tx += done;
    g->n = 0;
}

static void flush_all(struct onvm_route_ctx *c) {
    for (unsigned i = 0; i < c->ngroups; i++)
        flush_group(c, &c->groups[i]);
    c->ngroups = 0;
    if (c->nfree) {
        onvm_pool_free_burst(c->r, c->freebuf, c->nfree);
        c->nfree = 0;
    }
    if (c->ntally)
        flush_tallies(c);
}

const struct onvm_route_verdict *onvm_route_verdict(struct onvm_route_ctx *c, unsigned chain) {
    static const struct onvm_route_verdict none = {0, ONVM_CHAIN_OK, 0, 0};
    if (chain >= ONVM_MAX_CHAINS)
        return &none; /* no such chain: routing counts it */
    struct onvm_route_verdict *v = &c->verdict[chain];
    if (v->stamp != c->stamp) {
        struct onvm_chain_verdict cv;
        onvm_chain_check(c->r, chain, 0, &cv);
        *v = (struct onvm_route_verdict){c->stamp, (uint8_t)cv.state, (uint8_t)cv.hop, (uint16_t)cv.nf};
    }
    return v;
}

struct onvm_ring *onvm_route_blocked(struct onvm_route_ctx *c) {
    struct onvm_region *r = c->r;
    struct onvm_nf *self = &r->nfs[c->self_nf];
    unsigned k = 0;
    for (unsigned i = 0; i < c->nfed; i++) /* keep only the congested ones */
        if (onvm_bp_congested(c->fed[i]))
            c->fed[k++] = c->fed[i];
    c->nfed = k;
    for (unsigned i = 0; i < c->nfed; i++) {
        struct onvm_ring *ring = c->fed[i];
        unsigned owner = onvm_ring_consumer_nf(r, ring);
        if (owner == c->self_nf)
            continue; /* its own RX ring: only it can drain that */
        /* seq_cst: the loop check below, or that of an NF closing the loop
         * with us, sees this store (onvm_bp_cycle); a value already there was
         * stored so before an earlier check. */
        if (atomic_load_explicit(&self->bp.blocked_on, ONVM_RELAXED) != owner)
            atomic_store(&self->bp.blocked_on, owner);
        if (owner && onvm_bp_cycle(r, c->self_nf, owner))
            continue;
        return ring;
    }
    if (atomic_load_explicit(&self->bp.blocked_on, ONVM_RELAXED))
        atomic_store_explicit(&self->bp.blocked_on, 0, ONVM_RELAXED);
    return NULL;
}

int onvm_chain_check(struct onvm_region *r, unsigned chain, uint64_t bit, struct onvm_chain_verdict *v) {
    struct onvm_hop hops[ONVM_MAX_HOPS];
    unsigned n = 0;
    *v = (struct onvm_chain_verdict){ONVM_CHAIN_OK, 0, 0};
    while (n < ONVM_MAX_HOPS && onvm_chain_hop(r, chain, n, &hops[n]) == 0)
        n++;
    for (unsigned h = 0; h < n; h++) {
        unsigned svc = hops[h].dest;
        if (hops[h].action != ONVM_ACT_TONF || svc >= ONVM_MAX_SERVICES)
            continue; /* ports never congest; bad hops are routing's to count */
        uint16_t nf[ONVM_MAX_INSTANCES];
        unsigned count = onvm_service_members(r, svc, nf);
        unsigned running = 0, congested = 0, first = 0;
        for (unsigned i = 0; i < count; i++) {
            if (nf[i] == 0 || nf[i] >= ONVM_MAX_NFS ||
                atomic_load_explicit(&r->nfs[nf[i]].state, ONVM_ACQUIRE) != ONVM_NFS_ACTIVE)
                continue;
            running++;
            struct onvm_ring *ring = onvm_nf_ring(r, nf[i], 0);
            if (bit ? onvm_bp_wait_on(ring, bit) : onvm_bp_congested(ring)) {
                congested++;
                first = first ? first : nf[i];
            }
        }
        if (running == 0) {
            *v = (struct onvm_chain_verdict){ONVM_CHAIN_BROKEN, h, 0};
            return v->state;
        }
        if (congested == running) {
            *v = (struct onvm_chain_verdict){ONVM_CHAIN_CONGESTED, h, first};
            return v->state;
        }
    }
    return v->state;
}

static inline void add(struct onvm_route_ctx *c, int kind, void *target, unsigned to, uint32_t slot) {
    struct onvm_route_group *g = NULL;
    for (unsigned i = 0; i < c->ngroups; i++) {
        if (c->groups[i].target == target) {
            g = &c->groups[i];
            break;
        }
    }
    if (!g) {
        if (c->ngroups == ONVM_ROUTE_GROUPS) {
            for (unsigned i = 0; i < c->ngroups; i++)
                flush_group(c, &c->groups[i]);
            c->ngroups = 0;
        }
        g = &c->groups[c->ngroups++];
        g->kind = kind;
        g->target = target;
        g->to = (uint16_t)to;
        g->stamp = ONVM_OWNER_TRANSIT(c->self_nf, to);
        g->n = 0;
    }
    g->slots[g->n++] = slot;
    if (g->n == ONVM_BURST_MAX)
        flush_group(c, g);
}

void onvm_route_burst(struct onvm_route_ctx *c, const uint32_t *slots, uint32_t n, int mode) {
    struct onvm_region *r = c->r;
    /* The last service with one instance this burst sent to, and that NF's ring.
     * Packets of a burst mostly go to one place; reusing the pick spares each a
     * service read and a read of the NF's state line, which its owner writes on
     * every loop.  A service that changes during the burst is seen from the next
     * one on; an NF that leaves is reclaimed only after a grace period, which
     * waits for this loop iteration to end (Manager._grace). */
    unsigned one_dest = UINT_MAX, one_nf = 0;
    struct onvm_ring *one_ring = NULL;
    /* Loop invariants in locals and the action counts on the stack: the build does
     * not assume strict aliasing, so every store into a record or a counter of the
     * region would otherwise reload them, per packet. */
    struct onvm_meta *const meta = r->meta;
    const unsigned self_nf = c->self_nf;
    uint64_t act[ONVM_ACT_COUNT] = {0};
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = slots[i];
        struct onvm_meta *m = &meta[s];
        unsigned action, dest;
        /* Only an NF holds packets; in the manager a HOLD is a bad action (default below). */
        if (mode == ONVM_ROUTE_META && self_nf && (m->action == ONVM_ACT_HOLD || (m->flags & ONVM_MF_HELD))) {
            m->flags |= ONVM_MF_HELD; /* held by the NF: it sends the packet on later */
            continue;
        }
        if (c->early_discard) { /* RX: a chain congested further on takes nothing new */
            const struct onvm_route_verdict *v = onvm_route_verdict(c, m->chain_id);
            if (v->state != ONVM_CHAIN_OK) {
                drop(c, s, v->state == ONVM_CHAIN_CONGESTED ? ONVM_DROP_EARLY : ONVM_DROP_NO_DEST);
                tally(c, m->chain_id, v->hop, 0, v->nf);
                continue;
            }
        }
        m->from_hop = m->chain_idx;
        if (mode == ONVM_ROUTE_START || m->action == ONVM_ACT_NEXT) {
            struct onvm_hop hop;
            unsigned idx = mode == ONVM_ROUTE_START ? 0u : m->chain_idx + 1u;
            if (mode == ONVM_ROUTE_META)
                act[ONVM_ACT_NEXT]++;
            int rc = onvm_chain_hop(r, m->chain_id, idx, &hop);
            if (rc != 0) {
                drop(c, s, rc == -EAGAIN ? ONVM_DROP_INVALID : ONVM_DROP_CHAIN_END);
                continue;
            }
            m->chain_idx = (uint8_t)idx;
            action = hop.action;
            dest = hop.dest;
            if (action == ONVM_ACT_NEXT) {
                drop(c, s, ONVM_DROP_BAD_ACTION);
                continue;
            }
        } else {
            action = m->action;
            dest = m->dest;
            if (action < ONVM_ACT_COUNT)
                act[action]++;
        }
        if (self_nf)
            m->src_nf = (uint16_t)self_nf;
        switch (action) {
        case ONVM_ACT_DROP:
            drop(c, s, ONVM_DROP_ACTION);
            break;
        case ONVM_ACT_TONF: {
            struct onvm_ring *ring = one_ring;
            unsigned nf = one_nf;
            if (dest != one_dest) {
                int same = 0;
                nf = onvm_service_pick(r, dest, m->flow_hash, &c->rr[dest % ONVM_MAX_SERVICES], c->rx, &same);
                if (nf == ONVM_PICK_STUCK) {
                    drop(c, s, ONVM_DROP_INVALID);
                    break;
                }
                /* The manager asks its own view (and never sends to a fenced NF). */
                int active = c->self_nf ? atomic_load_explicit(&r->nfs[nf].state, ONVM_ACQUIRE) == ONVM_NFS_ACTIVE
                                        : atomic_load_explicit(&r->view[nf].state, ONVM_ACQUIRE) == ONVM_NFS_ACTIVE &&
                                              !atomic_load_explicit(&r->view[nf].fenced, ONVM_RELAXED);
                if (nf == 0 || !active) {
                    drop(c, s, dest < ONVM_MAX_SERVICES ? ONVM_DROP_NO_DEST : ONVM_DROP_BAD_ACTION);
                    break;
                }
                ring = onvm_nf_ring(r, nf, 0);
                if (same) { /* every flow picks it (for this producer): the rest of the burst asks no more */
                    one_dest = dest;
                    one_ring = ring;
                    one_nf = nf;
                }
            }
            m->action = ONVM_ACT_TONF;
            m->dest = (uint16_t)dest;
            if (m->flags & ONVM_MF_TRACED) /* onvm trace: a flag of the line read above */
                onvm_trace_event(r, s, ONVM_TEV_HOP, self_nf, nf, 0);
            add(c, GROUP_RING, ring, nf, s);
            break;
        }
        case ONVM_ACT_OUT:
            if (dest >= ONVM_MAX_PORTS) {
                drop(c, s, ONVM_DROP_BAD_ACTION);
                break;
            }
            m->action = ONVM_ACT_OUT;
            m->dest = (uint16_t)dest;
            if (m->flags & ONVM_MF_TRACED)
                onvm_trace_event(r, s, ONVM_TEV_HOP, self_nf, 0, 0);
            if (c->self_nf) {
                add(c, GROUP_RING, c->tx_ring, ONVM_OWNER_MGR, s); /* the manager owns ports */
            } else if (!c->ports || !c->ports[dest] || !c->ports[dest]->tx) {
                drop(c, s, ONVM_DROP_NO_DEST);
            } else {
                add(c, GROUP_PORT, c->ports[dest], 0, s);
            }
            break;
        default:
            drop(c, s, ONVM_DROP_BAD_ACTION);
        }
    }
    if (mode == ONVM_ROUTE_META)
        for (unsigned a = 0; a < ONVM_ACT_COUNT; a++)
            c->act[a] += act[a];
    flush_all(c);
}
