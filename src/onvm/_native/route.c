/* route.c - resolve actions and deliver bursts, grouped per destination.
 *
 * A packet put into a ring is stamped in transit from this producer to the
 * ring's consumer before the ring publishes it (onvm_layout.h): the consumer
 * takes nothing else.  The manager decides whether an NF may receive from its
 * own view of the NF (onvm_nf_view), an NF from the NF's record in the region. */
#include "onvm_route.h"
#include "onvm_latency.h"

#include <errno.h>
#include <limits.h>

enum { GROUP_RING = 1, GROUP_PORT = 2 };

static void drop(struct onvm_route_ctx *c, uint32_t slot, int reason) {
    c->drops[reason]++;
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
        uint16_t stamp = ONVM_OWNER_TRANSIT(c->self_nf, g->to);
        for (uint32_t i = 0; i < done; i++) {
            /* Before the commit's release: the consumer sees the stamp with the entry. */
            atomic_store_explicit(&r->meta[g->slots[i]].owner, stamp, ONVM_RELAXED);
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
        for (uint32_t i = done; i < g->n; i++)
            drop(c, g->slots[i], ONVM_DROP_RING_FULL);
    } else {
        struct onvm_port *p = g->target;
        uint64_t bytes = 0;
        struct onvm_port_stats *st = &c->r->ports[p->id].by_worker[c->worker];
        /* before tx: the port frees the slots it sent */
        onvm_lat_sample_burst(&st->lat, c->r->meta, g->slots, g->n, onvm_now_ns());
        pthread_mutex_lock(&p->tx_lock);
        done = p->tx(p, c->r, g->slots, g->n, &bytes, st);
        pthread_mutex_unlock(&p->tx_lock);
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
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = slots[i];
        struct onvm_meta *m = &r->meta[s];
        unsigned action, dest;
        /* Only an NF holds packets; in the manager a HOLD is a bad action (default below). */
        if (mode == ONVM_ROUTE_META && c->self_nf && (m->action == ONVM_ACT_HOLD || (m->flags & ONVM_MF_HELD))) {
            m->flags |= ONVM_MF_HELD; /* held by the NF: it sends the packet on later */
            continue;
        }
        if (mode == ONVM_ROUTE_START || m->action == ONVM_ACT_NEXT) {
            struct onvm_hop hop;
            unsigned idx = mode == ONVM_ROUTE_START ? 0u : m->chain_idx + 1u;
            if (mode == ONVM_ROUTE_META)
                c->act[ONVM_ACT_NEXT]++;
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
                c->act[action]++;
        }
        if (c->self_nf)
            m->src_nf = (uint16_t)c->self_nf;
        switch (action) {
        case ONVM_ACT_DROP:
            drop(c, s, ONVM_DROP_ACTION);
            break;
        case ONVM_ACT_TONF: {
            struct onvm_ring *ring = one_ring;
            unsigned nf = one_nf;
            if (dest != one_dest) {
                unsigned count = 0;
                nf = onvm_service_pick(r, dest, m->flow_hash, &c->rr[dest % ONVM_MAX_SERVICES], &count);
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
                if (count == 1) { /* every flow picks it */
                    one_dest = dest;
                    one_ring = ring;
                    one_nf = nf;
                }
            }
            m->action = ONVM_ACT_TONF;
            m->dest = (uint16_t)dest;
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
    flush_all(c);
}
