/* fence.c - what the manager does about an NF that breaks the rules, and about
 * damage in the region that the packet path cannot repair as it goes.
 *
 * Theory of operation
 * -------------------
 * An NF may write anything into its own rings, its record and the slots it
 * holds (and, having the region mapped, anywhere else).  The packet path copes
 * as it goes: every ring entry is validated when it is taken (onvm_ring.h),
 * table reads are bounded (onvm_region.h), the free stack is walked with care
 * (region.c).  What it cannot settle by itself comes here:
 *
 *  - Faults.  When the manager's TX worker takes something invalid from an NF's
 *    TX ring (a slot not handed over, a record outside its slot), onvm_fault()
 *    counts it and fences the NF at once: the manager takes nothing more from
 *    it and sends it nothing more.  The audit reports it once, and the manager's
 *    Python side stops the NF's process and reclaims what it held.
 *  - Stalls.  A producer that reserved room in a ring and never completes (a
 *    process stopped half way, a crash) holds the ring up: its consumer sees
 *    nothing past the reservation.  Nobody waits on it (onvm_ring.h), but the
 *    ring must be published again.  When both of a ring's producer words have
 *    not moved for ONVM_STALL_NS while they differ, every reservation made
 *    before has had that long to complete, and the ones still open never will:
 *    the audit fences the NFs whose reservation record names the ring and a
 *    start between those two words, and moves the ring's tail to its head with
 *    one CAS.  A reservation made after that snapshot completes as usual: the
 *    tail's count then matches the head's.
 *    Entries of an abandoned reservation that were never written hold stale
 *    slot indices; consumers refuse them (their stamps do not match), so that
 *    costs nothing but those packets.
 *  - Congestion flags.  A ring's consumer clears its congested flag once it has
 *    drained the ring to the low watermark (onvm_bp.h), and the NFs that feed
 *    it wait while it is set.  A flag still set on a ring at or below the low
 *    watermark after ONVM_STALL_NS holds its producers up for nothing: the
 *    audit clears it, which lets them go on, and fences the consumer unless
 *    it waits for a congested ring itself (another NF's, or its own TX ring:
 *    then it does not drain its own).
 *  - Tables.  A sequence word of a chain or a service left odd for
 *    ONVM_STALL_NS is made even again (readers give up on it after a bound
 *    anyway; this lets them read it again), and reported.
 *  - A free stack's head naming no slot is reported (allocations get nothing
 *    from such a stack; see onvm_pool_alloc_burst).
 *
 * Sweeping.  An NF may write over the ownership stamp of a slot it holds: free,
 * the manager's, another NF's, nothing at all.  Fenced off (killed) then, it
 * leaves slots that its reclaim cannot name and that nobody will ever free.
 * onvm_mgr_sweep() finds them.  A slot stamped for an NF that is gone, in
 * transit to a ring that does not hold it, the manager's (which holds a slot
 * for one loop iteration only) or with no stamp at all is a suspect; if it is
 * still one, unchanged (stamp and RX time), after a grace period, nobody holds
 * it.  A slot stamped free but in no free stack is found by taking each stack
 * whole (one CAS: it is ours while we walk it; allocations find it empty
 * meanwhile), walking it and putting it back, twice, a grace period apart, so
 * that a free under way at the first look is in a stack at the second.  The
 * sweep runs after a fence, on the manager's thread, and frees nothing when the
 * grace period does not complete in time (the manager sweeps again later); a
 * slot freed by mistake would in any case be refused by the consumer it was in
 * transit to (its stamp no longer matches), and the allocator hands out only
 * slots stamped free.
 *
 * The audit runs on the manager's own thread, twice a second; it reads the
 * region, writes only the words named above and the manager's private view of
 * each NF (onvm_nf_view), which no NF can touch.
 */
#include "onvm_bp.h"
#include "onvm_flow.h"
#include "onvm_mgr.h"

#include <stdlib.h>

enum { TOLD_FAULT = 1 };

void onvm_fault(struct onvm_region *r, unsigned nf_id, unsigned why, uint64_t count) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return;
    struct onvm_nf_view *v = &r->view[nf_id];
    atomic_fetch_add_explicit(&v->faults, count, ONVM_RELAXED);
    uint32_t none = ONVM_FAULT_NONE;
    atomic_compare_exchange_strong_explicit(&v->fault_why, &none, why, ONVM_RELAXED, ONVM_RELAXED);
    atomic_store_explicit(&v->fenced, 1, ONVM_RELAXED);
}

/* A table's sequence word: reset it once it has been odd and still for ONVM_STALL_NS. */
static int watch_seq(_Atomic uint32_t *seq, struct onvm_seq_watch *w, uint64_t now) {
    uint32_t s = atomic_load_explicit(seq, ONVM_RELAXED);
    if (!(s & 1)) {
        w->since = 0;
        return 0;
    }
    if (!w->since || w->seen != s) {
        w->seen = s;
        w->since = now;
        return 0;
    }
    if (now - w->since < ONVM_STALL_NS)
        return 0;
    w->since = 0;
    /* Even again (unless a writer moved it meanwhile): readers read what it holds,
     * and the table's next write rewrites it. */
    return atomic_compare_exchange_strong_explicit(seq, &s, s + 1, ONVM_RELEASE, ONVM_RELAXED);
}

static void emit(struct onvm_audit_event *out, int max, int *k, uint32_t kind, uint32_t nf, uint32_t peer,
                 uint32_t why, uint64_t count) {
    if (*k < max)
        out[(*k)++] = (struct onvm_audit_event){kind, nf, peer, why, count};
}

/* NF id's RX ring has not moved: fence whoever holds a reservation of it, publish it again.
 * Only a reservation between the tail and the head seen a stall ago holds the ring up: one
 * that begins at that head or past it was made since (a producer reserving just as we
 * look), and completes as usual. */
static void unstick(struct onvm_region *r, unsigned id, struct onvm_audit_event *out, int max, int *k) {
    struct onvm_nf_view *v = &r->view[id];
    uint32_t ring_off = onvm_nf_ring_off(r, id, 0);
    uint32_t t0 = ONVM_RING_POS(v->stuck_tail), held = ONVM_RING_POS(v->stuck_head) - t0;
    for (unsigned p = 1; p < ONVM_MAX_NFS; p++) {
        struct onvm_nf *nf = &r->nfs[p];
        if (atomic_load_explicit(&r->view[p].state, ONVM_ACQUIRE) == ONVM_NFS_FREE ||
            atomic_load_explicit(&nf->enq.ring_off, ONVM_RELAXED) != ring_off ||
            /* Acquire pairs with onvm_ring_mp_reserve's release: start is this reservation's. */
            !atomic_load_explicit(&nf->enq.reserved, ONVM_ACQUIRE) ||
            atomic_load_explicit(&nf->enq.start, ONVM_RELAXED) - t0 >= held)
            continue;
        if (!atomic_load_explicit(&r->view[p].fenced, ONVM_RELAXED))
            emit(out, max, k, ONVM_AUDIT_STALL, p, id, ONVM_FAULT_STALL, 1);
        onvm_fault(r, p, ONVM_FAULT_STALL, 1);
        r->view[p].told |= TOLD_FAULT; /* reported as a stall just now */
    }
    struct onvm_ring *ring = onvm_nf_ring(r, id, 0);
    uint64_t t = v->stuck_tail, h = v->stuck_head;
    /* Release: the entries of the reservations it covers were written (or never will be). */
    if (atomic_compare_exchange_strong_explicit(&ring->prod.tail, &t, h, ONVM_RELEASE, ONVM_RELAXED)) {
        emit(out, max, k, ONVM_AUDIT_RING, 0, id, 0, (uint32_t)(ONVM_RING_POS(h) - ONVM_RING_POS(t)));
        onvm_waiter_kick(&r->nfs[id].wait);
    }
    v->stuck_since = 0;
}

int onvm_mgr_audit(struct onvm_mgr *m, struct onvm_audit_event *out, int max) {
    struct onvm_region *r = m->r;
    uint64_t now = onvm_now_ns();
    int k = 0;
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++) {
        struct onvm_nf_view *v = &r->view[id];
        if (atomic_load_explicit(&v->state, ONVM_ACQUIRE) == ONVM_NFS_FREE) {
            v->stuck_since = 0;
            continue;
        }
        uint32_t why = atomic_load_explicit(&v->fault_why, ONVM_RELAXED);
        if (why != ONVM_FAULT_NONE && !(v->told & TOLD_FAULT)) {
            v->told |= TOLD_FAULT;
            emit(out, max, &k, ONVM_AUDIT_FAULT, id, 0, why, atomic_load_explicit(&v->faults, ONVM_RELAXED));
        }
        if (atomic_load_explicit(&v->fenced, ONVM_RELAXED))
            continue; /* what it receives is reclaimed with it */
        struct onvm_ring *ring = onvm_nf_ring(r, id, 0);
        if (!onvm_bp_congested(ring) || onvm_ring_count(ring, r->ring_mask) > r->ring_size / 4) {
            v->flagged_since = 0;
        } else if (!v->flagged_since) {
            v->flagged_since = now;
        } else if (now - v->flagged_since >= ONVM_STALL_NS) {
            onvm_bp_clear(r, ring); /* its producers go on */
            v->flagged_since = 0;
            /* A consumer that waits for a congested ring itself does not drain its own
             * (onvm_bp.h): clearing its flag is all there is to do.  It names the NF it
             * waits for; waiting for its TX ring (the manager), it names none. */
            if (!atomic_load_explicit(&r->nfs[id].bp.blocked_on, ONVM_RELAXED) &&
                !onvm_bp_congested(onvm_nf_ring(r, id, 1))) {
                onvm_fault(r, id, ONVM_FAULT_FLAG, 1);
                v->told |= TOLD_FAULT;
                emit(out, max, &k, ONVM_AUDIT_FAULT, id, 0, ONVM_FAULT_FLAG, 1);
                continue;
            }
        }
        uint64_t t = atomic_load_explicit(&ring->prod.tail, ONVM_ACQUIRE);
        uint64_t h = atomic_load_explicit(&ring->prod.head, ONVM_ACQUIRE);
        if (h == t) {
            v->stuck_since = 0;
        } else if (!v->stuck_since || h != v->stuck_head || t != v->stuck_tail) {
            v->stuck_head = h;
            v->stuck_tail = t;
            v->stuck_since = now;
        } else if (now - v->stuck_since >= ONVM_STALL_NS) {
            unstick(r, id, out, max, &k);
        }
    }
    for (unsigned c = 0; c < ONVM_MAX_CHAINS; c++)
        if (watch_seq(&r->chains[c].seq, &m->seq_chain[c], now))
            emit(out, max, &k, ONVM_AUDIT_TABLE, 0, c, 0, 1);
    for (unsigned s = 0; s < ONVM_MAX_SERVICES; s++)
        if (watch_seq(&r->services[s].seq, &m->seq_service[s], now))
            emit(out, max, &k, ONVM_AUDIT_TABLE, 0, s, 1, 1);
    for (uint32_t i = 0; i < r->free_stacks; i++) {
        uint32_t top = (uint32_t)atomic_load_explicit(&r->hdr->free[i].head, ONVM_RELAXED);
        if (top != ONVM_SLOT_NIL && top >= r->pool_count) {
            if (!m->told_pool)
                emit(out, max, &k, ONVM_AUDIT_POOL, 0, i, 0, top);
            m->told_pool = 1;
        }
    }
    return k;
}

/* ---- the sweep ------------------------------------------------------------ */

static int nf_live(const struct onvm_region *r, unsigned id) {
    return id > 0 && id < ONVM_MAX_NFS &&
           atomic_load_explicit(&r->view[id].state, ONVM_ACQUIRE) != ONVM_NFS_FREE;
}

/* What the rings of live NFs hold now: RX rings (their consumer an NF), TX rings (the manager). */
static void mark_live_rings(const struct onvm_region *r, uint8_t *in_ring) {
    memset(in_ring, 0, r->pool_count);
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++) {
        if (!nf_live(r, id))
            continue;
        onvm_ring_mark(r, onvm_nf_ring(r, id, 0), in_ring);
        onvm_ring_mark(r, onvm_nf_ring(r, id, 1), in_ring);
    }
}

/* Could nobody be holding a slot with stamp o (in_ring: a live ring holds it)? */
static int suspect(const struct onvm_region *r, uint16_t o, int in_ring) {
    if (o == ONVM_OWNER_FREE)
        return 0; /* the free stack's: walked apart */
    if (o >= ONVM_OWNER_PORT_BASE) /* lent to a port's device, if it lends any (its close reclaims them) */
        return o - ONVM_OWNER_PORT_BASE >= ONVM_MAX_PORTS || onvm_port_lent(r, o - ONVM_OWNER_PORT_BASE) <= 0;
    if (o == ONVM_OWNER_MGR)
        return 1;
    if (o < ONVM_MAX_NFS)
        return !nf_live(r, o);
    if (ONVM_IS_TRANSIT(o))
        return !in_ring || ((o & 63u) != ONVM_OWNER_MGR && !nf_live(r, o & 63u));
    return 1; /* no such stamp */
}

struct chain {
    uint32_t *slot;
    uint32_t n;
};

/* Take the free stack whole (repeatedly, for what is pushed meanwhile), mark what it
 * holds, and keep the walked slots in c to put back.  A link out of the pool, into a
 * slot not stamped free or into one met already ends a walk (what follows is lost to
 * the stack: the sweep brings back what of it is free).  flip: the first take also
 * starts a new epoch of the free count and closes the old one (onvm_layout.h). */
static void take_stack(struct onvm_region *r, struct onvm_freestack *fs, uint8_t *in_stack, struct chain *c,
                       int flip) {
    for (int round = 0; round < 8; round++) {
        uint64_t old = atomic_load_explicit(&fs->head, ONVM_ACQUIRE), next;
        const int flipping = round == 0 && flip;
        unsigned epoch = (unsigned)(old >> 32) & 1u; /* only the sweep changes it */
        if (flipping) /* nobody counts in the new epoch before the CAS below */
            atomic_store_explicit(&fs->count[epoch ^ 1u], 0, ONVM_RELAXED);
        /* Acquire pairs with the pushes' release: the links below were written before. */
        do
            next = flipping ? ((old >> 32) + 1) << 32 | ONVM_SLOT_NIL : onvm_free_head(old, ONVM_SLOT_NIL);
        while (!atomic_compare_exchange_weak_explicit(&fs->head, &old, next, ONVM_ACQUIRE, ONVM_ACQUIRE));
        /* Whatever was done in the old epoch, counted or not yet, is in the stack we
         * hold now or out of it for good: the walk below counts it in the new epoch. */
        if (flipping)
            atomic_store_explicit(&fs->count[epoch], ONVM_FREE_CLOSED, ONVM_RELAXED);
        uint32_t cur = (uint32_t)old, walked = 0;
        if (cur == ONVM_SLOT_NIL)
            break;
        while (cur < r->pool_count && !in_stack[cur] && c->n < r->pool_count &&
               atomic_load_explicit(&r->meta[cur].owner, ONVM_RELAXED) == ONVM_OWNER_FREE) {
            in_stack[cur] = 1;
            c->slot[c->n++] = cur;
            walked++;
            cur = atomic_load_explicit(&r->meta[cur].next_free, ONVM_RELAXED);
        }
        /* Pushed back below: count them out now, the push counts them in again. */
        onvm_free_count_add(fs, old, -(int64_t)walked);
    }
}

/* Every free stack taken as above, into one c. */
static void take_stacks(struct onvm_region *r, uint8_t *in_stack, struct chain *c, int flip) {
    for (uint32_t i = 0; i < r->free_stacks; i++)
        take_stack(r, &r->hdr->free[i], in_stack, c, flip);
}

long onvm_mgr_sweep(struct onvm_mgr *m, uint64_t grace_ns, int settle) {
    /* Tried again after one was put off: only once the packet path has moved on.
     * The first look takes the free stack whole (allocations find it empty while
     * we walk it); taking it twice a second for as long as a stall lasts, only to
     * free nothing, would cost the packet path for nothing. */
    if (settle) {
        int ok = onvm_mgr_grace(m, 0, grace_ns, NULL);
        if (ok <= 0)
            return ok < 0 ? ok : -EAGAIN;
    }
    struct onvm_region *r = m->r;
    uint32_t n = r->pool_count;
    uint8_t *mark = calloc(n, 1);
    uint32_t *cand = malloc(sizeof(uint32_t) * n);
    uint16_t *stamp = malloc(sizeof(uint16_t) * n);
    uint64_t *rx = malloc(sizeof(uint64_t) * n);
    struct chain back = {malloc(sizeof(uint32_t) * n), 0};
    long found = -ENOMEM;
    if (!mark || !cand || !stamp || !rx || !back.slot)
        goto out;

    /* Stamps that name nobody: suspects now, orphans if unchanged after a grace period. */
    uint32_t nc = 0;
    mark_live_rings(r, mark);
    for (uint32_t s = 0; s < n; s++) {
        uint16_t o = atomic_load_explicit(&r->meta[s].owner, ONVM_ACQUIRE);
        if (suspect(r, o, mark[s])) {
            cand[nc] = s;
            stamp[nc] = o;
            rx[nc++] = r->meta[s].rx_ns;
        }
    }
    /* Slots stamped free that the stack does not hold. */
    memset(mark, 0, n);
    take_stacks(r, mark, &back, 0);
    if (back.n)
        onvm_pool_push(r, back.slot, back.n);
    uint32_t nf = 0, *freed = back.slot; /* reused: the walk is pushed back already */
    for (uint32_t s = 0; s < n; s++)
        if (!mark[s] && atomic_load_explicit(&r->meta[s].owner, ONVM_RELAXED) == ONVM_OWNER_FREE)
            freed[nf++] = s;

    /* Unchanged after a grace period, and only then: a participant that has not
     * passed a loop iteration may be half way through a free of the slots stamped
     * free, or about to publish a slot stamped in transit.  Taken now, such a slot
     * would be pushed twice.  Nothing is freed; the caller sweeps again later. */
    int ok = onvm_mgr_grace(m, 0, grace_ns, NULL);
    if (ok <= 0) {
        found = ok < 0 ? ok : -EAGAIN;
        goto out;
    }

    uint32_t k = 0;
    mark_live_rings(r, mark);
    for (uint32_t i = 0; i < nc; i++) {
        uint32_t s = cand[i];
        uint16_t o = atomic_load_explicit(&r->meta[s].owner, ONVM_ACQUIRE);
        if (o == stamp[i] && r->meta[s].rx_ns == rx[i] && suspect(r, o, mark[s]))
            cand[k++] = s;
    }
    /* A free under way at the first look is in the stack now: look again.  This look
     * also makes the free count exact again.  Damage to the stack (a link out of the
     * pool, a cycle) cuts it, and the count still has what was cut off, which the
     * free below counts a second time.  So the take starts a new epoch of the count in
     * its CAS and closes the old one: what anyone did under the old epoch is in the
     * stack the take holds, or out of it for good, whether it was counted yet or not.
     * The walk is pushed back, counted in the new epoch; a count that arrives later
     * for the old epoch (a push or an allocation held up between its CAS and its
     * count, however long, by preemption or by an NF that stopped there) goes unread. */
    memset(mark, 0, n);
    struct chain again = {(uint32_t *)rx, 0}; /* rx is done with: n u64 hold n u32 */
    take_stacks(r, mark, &again, 1);
    if (again.n)
        onvm_pool_push(r, again.slot, again.n);
    for (uint32_t i = 0; i < nf; i++)
        if (!mark[freed[i]] && atomic_load_explicit(&r->meta[freed[i]].owner, ONVM_RELAXED) == ONVM_OWNER_FREE)
            cand[k++] = freed[i];
    if (k)
        onvm_pool_free_burst(r, cand, k);
    found = k;
out:
    free(mark);
    free(cand);
    free(stamp);
    free(rx);
    free(back.slot);
    return found;
}
