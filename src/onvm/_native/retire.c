/* retire.c - taking a leaving NF out of the packet path, and waiting for the
 * packet path to drain, without polling.
 *
 * Theory of operation
 * -------------------
 * When an NF leaves (it stopped or it died), the manager first takes it out of
 * its service (onvm_service_set), so no new pick names it.  A worker or an NF
 * that picked it before may still be routing a burst to it, so its rings and
 * slots are reclaimed only after a grace period: every other active NF and every
 * running worker has finished the loop iteration it was in (its epoch moved) or
 * sleeps (a sleeper holds no pick).  Then the slots it held and its RX ring go
 * back to the pool (onvm_region_reclaim), and the manager waits until its TX
 * worker has drained its TX ring.  Only then may its NF slot be reused.
 *
 * Waiting: the manager stores 1 in the header's grace word and sleeps on it (a
 * futex).  Every loop iteration of an NF or a worker ends with onvm_grace_pass
 * (onvm_ring.h), which clears the word and wakes the manager when it was set;
 * the manager looks again and, if something is still pending, sets the word and
 * sleeps again.  So the manager wakes when the packet path moves and not
 * otherwise, and the packet path pays one load of a line that is written only
 * while the manager waits.  An NF may write anything into the region, clearing
 * the word without a wake-up included: each sleep is capped at WAIT_SLICE_NS and
 * the whole wait by the caller's timeout, so nothing an NF does stalls the
 * manager for longer.
 */
#include "onvm_mgr.h"

#include <stdlib.h>

#define WAIT_SLICE_NS 20000000ull /* a look at least this often, whatever an NF wrote */

struct pending {
    struct onvm_region *r;
    unsigned nf_count, worker_count;
    uint16_t nf[ONVM_MAX_NFS];
    uint32_t nf_epoch[ONVM_MAX_NFS];
    uint16_t worker[ONVM_MAX_WORKERS];
    uint32_t worker_epoch[ONVM_MAX_WORKERS];
};

/* Sleep until done(ctx) holds or the deadline passes; returns done(ctx). */
static int wait_until(struct onvm_region *r, int (*done)(void *), void *ctx, uint64_t deadline) {
    _Atomic uint32_t *word = &r->hdr->grace.waiting;
    for (;;) {
        /* seq_cst store pairs with the seq_cst epoch bump and load in
         * onvm_grace_pass: a participant that moves after done() looked either
         * left a new epoch for it or sees this store and wakes us. */
        atomic_store_explicit(word, 1, memory_order_seq_cst);
        int ok = done(ctx);
        uint64_t now = onvm_now_ns();
        if (ok || now >= deadline) {
            atomic_store_explicit(word, 0, ONVM_RELAXED);
            return ok;
        }
        uint64_t left = deadline - now;
        onvm_futex_wait(word, 1, (long)(left < WAIT_SLICE_NS ? left : WAIT_SLICE_NS));
    }
}

/* Drop from the pending lists whoever passed a loop iteration or sleeps. */
static int grace_done(void *arg) {
    struct pending *p = arg;
    struct onvm_region *r = p->r;
    unsigned k = 0;
    for (unsigned i = 0; i < p->nf_count; i++) {
        struct onvm_nf *nf = &r->nfs[p->nf[i]];
        int passed = atomic_load_explicit(&r->view[p->nf[i]].state, ONVM_ACQUIRE) != ONVM_NFS_ACTIVE ||
                     atomic_load_explicit(&nf->epoch, memory_order_seq_cst) != p->nf_epoch[i] ||
                     atomic_load_explicit(&nf->wait.sleeping, ONVM_RELAXED);
        if (!passed) {
            p->nf[k] = p->nf[i];
            p->nf_epoch[k++] = p->nf_epoch[i];
        }
    }
    p->nf_count = k;
    k = 0;
    for (unsigned i = 0; i < p->worker_count; i++) {
        struct onvm_worker *w = &r->workers[p->worker[i]];
        int passed = atomic_load_explicit(&w->epoch, memory_order_seq_cst) != p->worker_epoch[i] ||
                     atomic_load_explicit(&w->wait.sleeping, ONVM_RELAXED);
        if (!passed) {
            p->worker[k] = p->worker[i];
            p->worker_epoch[k++] = p->worker_epoch[i];
        }
    }
    p->worker_count = k;
    return p->nf_count == 0 && p->worker_count == 0;
}

struct tx_ring {
    struct onvm_ring *ring;
    uint32_t mask;
};

static int tx_empty(void *arg) {
    struct tx_ring *t = arg;
    return onvm_ring_count(t->ring, t->mask) == 0;
}

/* The rings of the NFs the manager still serves (a fenced NF's are not drained: they are reclaimed). */
static int rings_empty(void *arg) {
    struct onvm_region *r = arg;
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++) {
        if (atomic_load_explicit(&r->view[id].state, ONVM_ACQUIRE) == ONVM_NFS_FREE ||
            atomic_load_explicit(&r->view[id].fenced, ONVM_RELAXED))
            continue;
        if (onvm_ring_count(onvm_nf_ring(r, id, 0), r->ring_mask) ||
            onvm_ring_count(onvm_nf_ring(r, id, 1), r->ring_mask))
            return 0;
    }
    return 1;
}

int onvm_mgr_grace(struct onvm_mgr *m, unsigned skip_nf, uint64_t timeout_ns, unsigned *pending) {
    struct onvm_region *r = m->r;
    struct pending *p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->r = r;
    /* The snapshot comes after the change the caller made: an iteration that
     * ends after it began after the change or was under way during it. */
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++) {
        if (id == skip_nf || atomic_load_explicit(&r->view[id].state, ONVM_ACQUIRE) != ONVM_NFS_ACTIVE)
            continue;
        p->nf[p->nf_count] = (uint16_t)id;
        p->nf_epoch[p->nf_count++] = atomic_load_explicit(&r->nfs[id].epoch, memory_order_seq_cst);
    }
    for (unsigned w = 0; w < m->nrx + m->ntx; w++) {
        if (!m->workers[w].started)
            continue; /* no thread, no pick */
        p->worker[p->worker_count] = (uint16_t)w;
        p->worker_epoch[p->worker_count++] = atomic_load_explicit(&r->workers[w].epoch, memory_order_seq_cst);
    }
    int ok = wait_until(r, grace_done, p, onvm_now_ns() + timeout_ns);
    if (pending)
        *pending = p->nf_count + p->worker_count;
    struct onvm_grace_stall *st = &m->stalled; /* what the manager's log names */
    *st = (struct onvm_grace_stall){.nfs = p->nf_count, .workers = p->worker_count};
    for (unsigned i = 0; i < p->nf_count && i < ONVM_STALL_NAMED; i++)
        st->nf[i] = p->nf[i];
    for (unsigned i = 0; i < p->worker_count && i < ONVM_STALL_NAMED; i++)
        st->worker[i] = p->worker[i];
    free(p);
    return ok;
}

int onvm_mgr_retire_nf(struct onvm_mgr *m, unsigned nf_id, uint64_t grace_ns, uint64_t drain_ns,
                       struct onvm_retire_result *out) {
    struct onvm_region *r = m->r;
    memset(out, 0, sizeof *out);
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return -EINVAL;
    uint64_t t0 = onvm_now_ns();
    /* Release: a TX worker that sees DRAINING also sees the service without it;
     * producers waiting for it go on (onvm_bp.h). */
    onvm_nf_set_draining(r, nf_id);

    unsigned pending = 0;
    int ok = onvm_mgr_grace(m, nf_id, grace_ns, &pending);
    if (ok < 0)
        return ok;
    out->grace_ok = ok;
    out->pending = pending;
    out->grace_ns = onvm_now_ns() - t0;

    long n = onvm_region_reclaim(r, nf_id);
    if (n < 0)
        return (int)n;
    out->reclaimed = n;

    /* Its TX worker drains what it left in its TX ring (DRAINING is still served);
     * a fenced NF's TX ring is not read, and what it held there was reclaimed. */
    if (atomic_load_explicit(&r->view[nf_id].fenced, ONVM_RELAXED)) {
        out->drained = 1;
        return 0;
    }
    struct tx_ring tx = {onvm_nf_ring(r, nf_id, 1), r->ring_mask};
    onvm_mgr_kick(m);
    out->drained = wait_until(r, tx_empty, &tx, onvm_now_ns() + drain_ns);
    if (!out->drained) {
        /* Not sent in time (no TX worker runs): stop reading it, and take back what is left. */
        atomic_store_explicit(&r->view[nf_id].fenced, 1, ONVM_RELAXED);
        n = onvm_region_reclaim(r, nf_id);
        out->reclaimed += n > 0 ? n : 0;
    }
    return 0;
}

int onvm_mgr_wait_drained(struct onvm_mgr *m, uint64_t timeout_ns) {
    return wait_until(m->r, rings_empty, m->r, onvm_now_ns() + timeout_ns);
}
