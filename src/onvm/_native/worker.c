/* worker.c - manager RX and TX worker threads.  They never touch Python.
 *
 * RX worker i serves the input ports whose id % nrx == i, and queue i of the
 * ports with several RX queues (onvm_port.h): it pulls a burst,
 * parses each packet once (offsets, flow hash) and sends it to hop 0 of its
 * chain.  TX worker j drains the TX rings of the NFs assigned to it and does
 * what their actions say, which for OUT means transmitting on a port.
 * Both poll while there is work and sleep on their futex when there is none.
 */
#define _GNU_SOURCE
#include "onvm_capture.h"
#include "onvm_flow.h"
#include "onvm_latency.h"
#include "onvm_mgr.h"
#include "onvm_parse.h"
#include "onvm_sched.h"

#include <poll.h>

#define SPIN_POLLS 256
#define HELD_POLLS 16 /* every port held: a congested ring drains by a quarter before it clears */
#define MAX_SLEEP_NS 1000000000L /* a kick (stop, pause, grace period) wakes it sooner */
#define FD_SLEEP_NS 10000000L
#define TIMED_SLEEP_NS 1000000L
#define HELD_SLEEP_NS 10000000L  /* a held paced port counts what it misses at least this often */
#define HELD_FD_SLEEP_NS 200000L /* ppoll cannot see a congested chain clear: look this often */

static void idle_wait(struct onvm_mgr_worker *w, long sleep_ns, int held);

/* Does RX worker w read port p, and which of its queues (*q)? */
static int rx_serves(struct onvm_mgr_worker *w, struct onvm_port *p, unsigned id, unsigned *q) {
    if (!p || (!p->rx && !p->rxq))
        return 0;
    if (p->nrxq > 1) {
        *q = w->index;
        return w->index < p->nrxq;
    }
    *q = 0;
    return id % w->mgr->nrx == w->index;
}

/* Is port id to be left unread (onvm_bp.h)?  When its last burst took one
 * chain: while a first-hop ring it fed is congested (replicas: no packet is
 * read for a full ring), or the chain is congested further on.  When it took
 * several: only while all of them are congested; packets of the congested ones
 * are dropped at RX instead (selective early discard), the others go on.  A
 * port that keeps every packet (a file, port->keep_all) is left unread while any
 * chain it fed is congested, and its packets are never discarded early.  With
 * bit, looks afresh and registers bit on the congested rings, before the worker
 * sleeps; otherwise uses this round's verdicts. */
static int rx_held(struct onvm_mgr_worker *w, unsigned id, uint64_t bit) {
    struct onvm_rx_seen *sn = &w->seen[id];
    int keep_all = w->mgr->ports[id]->keep_all; /* a file: held while any of its chains is congested */
    if (sn->n == 0 || (sn->mixed && !keep_all))
        return 0;
    for (unsigned k = 0; (sn->n == 1 || keep_all) && k < sn->nring; k++)
        if (bit ? onvm_bp_wait_on(sn->ring[k], bit) : onvm_bp_congested(sn->ring[k]))
            return 1;
    for (unsigned k = 0; k < sn->n; k++) {
        struct onvm_chain_verdict v;
        int state = bit ? onvm_chain_check(w->mgr->r, sn->chain[k], bit, &v)
                        : onvm_route_verdict(&w->route, sn->chain[k])->state;
        if (keep_all && state == ONVM_CHAIN_CONGESTED)
            return 1;
        if (!keep_all && state != ONVM_CHAIN_CONGESTED)
            return 0;
    }
    return !keep_all;
}

/* Remember the chains of a burst (onvm_rx_seen). */
static void rx_note_chains(struct onvm_rx_seen *sn, struct onvm_meta **metas, uint32_t n) {
    unsigned last = UINT32_MAX;
    sn->n = 0;
    sn->mixed = 0;
    for (uint32_t i = 0; i < n && !sn->mixed; i++) {
        unsigned c = metas[i]->chain_id, k = 0;
        if (c == last)
            continue;
        last = c;
        while (k < sn->n && sn->chain[k] != c)
            k++;
        if (k < sn->n)
            continue;
        if (sn->n == ONVM_RX_SEEN)
            sn->mixed = 1;
        else
            sn->chain[sn->n++] = (uint16_t)c;
    }
}

/* What a paced port missed goes into the port's drops, in this worker's row. */
static void rx_count_missed(struct onvm_port *p, struct onvm_port_stats *st) {
    if (p->pace.missed != p->missed_counted) {
        st->drops[ONVM_DROP_MISSED] += p->pace.missed - p->missed_counted;
        p->missed_counted = p->pace.missed;
    }
}

/* The descriptors an idle RX worker sleeps on (kernel-backed ports it is not
 * holding); returns how many. */
static int rx_fds(struct onvm_mgr_worker *w, struct pollfd *fds) {
    int n = 0;
    for (unsigned id = 0; id < ONVM_MAX_PORTS; id++) {
        struct onvm_port *p = w->mgr->ports[id];
        unsigned q;
        if (rx_serves(w, p, id, &q) && p->rxq && p->rx_fd[q] >= 0 && !w->seen[id].held) {
            fds[n].fd = p->rx_fd[q];
            fds[n].events = POLLIN;
            fds[n].revents = 0;
            n++;
        }
    }
    return n;
}

/* now: the loop's clock reading for this iteration.  *held: a port was left
 * unread (2: a paced one, which counts what it misses while held). */
static int rx_poll(struct onvm_mgr_worker *w, uint64_t now, uint64_t *next_due, int *held) {
    struct onvm_mgr *m = w->mgr;
    struct onvm_region *r = m->r;
    int busy = 0;
    if (atomic_load_explicit(&m->rx_paused, ONVM_RELAXED))
        return 0;
    w->route.stamp++; /* chain verdicts are taken afresh once a round */
    for (unsigned id = 0; id < ONVM_MAX_PORTS; id++) {
        struct onvm_port *p = m->ports[id];
        unsigned q = 0;
        if (!rx_serves(w, p, id, &q) || atomic_load_explicit(&p->rx_done, ONVM_RELAXED))
            continue;
        struct onvm_port_stats *st = &r->ports[id].by_worker[w->id];
        struct onvm_rx_seen *sn = &w->seen[id];
        if (rx_held(w, id, 0)) { /* its packets wait in the port, where that is free */
            if (!sn->held)
                r->workers[w->id].held++;
            sn->held = 1;
            *held |= p->pace.rate_pps ? 2 : 1;
            onvm_port_held(p, now);
            rx_count_missed(p, st);
            if (atomic_load_explicit(&p->rx_done, ONVM_RELAXED))
                r->ports[id].rx_done = 1;
            continue;
        }
        sn->held = 0;
        uint32_t n = p->rxq ? p->rxq(p, q, r, w->buf, m->burst, now, next_due, st)
                            : p->rx(p, r, w->buf, m->burst, now, next_due);
        rx_count_missed(p, st);
        if (atomic_load_explicit(&p->rx_done, ONVM_RELAXED))
            r->ports[id].rx_done = 1;
        if (n == 0)
            continue;
        busy = 1;
        uint64_t bytes = 0;
        struct onvm_meta *metas[ONVM_BURST_MAX];
        const uint8_t *datas[ONVM_BURST_MAX];
        for (uint32_t i = 0; i < n; i++) {
            metas[i] = &r->meta[w->buf[i]];
            datas[i] = onvm_slot_data(r, w->buf[i]);
            onvm_parse(metas[i], datas[i], metas[i]->len);
            bytes += metas[i]->len;
        }
        onvm_classify_burst(r, metas, datas, n, now); /* flow table, rules, default chain */
        uint32_t tap = atomic_load_explicit(&p->tap, ONVM_RELAXED) & ONVM_CAP_RX_MASK;
        if (tap) /* a capture watches what the port receives (one load when none does) */
            onvm_cap_burst(r, tap, w->buf, n, 0);
        /* Acquire pairs with onvm_trace_arm's release: the filter and count are written. */
        if (atomic_load_explicit(&onvm_trace(r)->armed, ONVM_ACQUIRE))
            onvm_trace_rx(r, w->buf, n, now); /* marks the packets it takes: routing records their hops */
        rx_note_chains(sn, metas, n);
        st->rx += n;
        st->rx_bytes += bytes;
        uint64_t before[ONVM_DROP_COUNT];
        memcpy(before, w->drops, sizeof before);
        w->route.early_discard = !p->keep_all; /* a file's packets wait instead (rx_held) */
        onvm_route_burst(&w->route, w->buf, n, ONVM_ROUTE_START);
        memcpy(sn->ring, w->route.fed, w->route.nfed * sizeof *sn->ring);
        sn->nring = (uint8_t)w->route.nfed;
        w->route.nfed = 0;
        /* What the first hop refused counts against the input port. */
        for (int k = 0; k < ONVM_DROP_COUNT; k++)
            if (k != ONVM_DROP_PORT)
                st->drops[k] += w->drops[k] - before[k];
    }
    return busy;
}

/* The NFs whose TX ring worker w drains, by the manager's own view (an NF's
 * record in the region says what the NF wrote, not what the manager decided). */
static inline int tx_serves(struct onvm_mgr_worker *w, const struct onvm_nf_view *v) {
    return atomic_load_explicit(&v->state, ONVM_ACQUIRE) != ONVM_NFS_FREE &&
           !atomic_load_explicit(&v->fenced, ONVM_RELAXED) && v->tx_worker == w->id;
}

static int tx_poll(struct onvm_mgr_worker *w) {
    struct onvm_mgr *m = w->mgr;
    struct onvm_region *r = m->r;
    int busy = 0;
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++) {
        struct onvm_nf_view *v = &r->view[id];
        if (!tx_serves(w, v))
            continue;
        /* Only what the NF handed to the manager: slots in transit from it to us. */
        struct onvm_ring *ring = onvm_nf_ring(r, id, 1);
        uint32_t bad_slot = 0, bad_rec = 0;
        uint32_t n = onvm_take(r, ring, &v->tx_head, w->buf, m->burst, 0xffffu,
                               ONVM_OWNER_TRANSIT(id, ONVM_OWNER_MGR), ONVM_OWNER_MGR, &bad_slot, &bad_rec);
        if (bad_slot | bad_rec) {
            w->drops[ONVM_DROP_INVALID] += bad_slot + bad_rec;
            onvm_fault(r, id, bad_slot ? ONVM_FAULT_SLOT : ONVM_FAULT_RECORD, bad_slot + bad_rec);
        }
        onvm_bp_drained(r, ring); /* the NF may wait for its TX ring to drain */
        if (n == 0)
            continue;
        busy = 1;
        r->workers[w->id].packets += n;
        onvm_route_burst(&w->route, w->buf, n, ONVM_ROUTE_META);
    }
    return busy;
}

/* After onvm_waiter_prepare: work queued meanwhile?  Also clears a TX ring's
 * congested flag set as we drained it (onvm_bp.h). */
static int tx_pending(struct onvm_mgr_worker *w) {
    struct onvm_region *r = w->mgr->r;
    for (unsigned id = 1; id < ONVM_MAX_NFS; id++) {
        if (!tx_serves(w, &r->view[id]))
            continue;
        struct onvm_ring *ring = onvm_nf_ring(r, id, 1);
        onvm_bp_drained(r, ring);
        if (onvm_ring_count(ring, r->ring_mask))
            return 1;
    }
    return 0;
}

/* After onvm_waiter_prepare: has a held port's chain cleared?  Registers the
 * worker on the congested rings it still finds. */
static int rx_released(struct onvm_mgr_worker *w) {
    for (unsigned id = 0; id < ONVM_MAX_PORTS; id++)
        if (w->seen[id].held && !rx_held(w, id, ONVM_BP_WORKERS))
            return 1;
    return 0;
}

static void *worker_main(void *arg) {
    struct onvm_mgr_worker *w = arg;
    struct onvm_mgr *m = w->mgr;
    struct onvm_worker *shared = &m->r->workers[w->id];
    unsigned idle = 0, spin_budget = SPIN_POLLS;
    struct onvm_spin spin;
    onvm_spin_init(&spin, SPIN_POLLS);
    char name[16]; /* shown by top -H and in /proc/PID/task/TID/comm */
    snprintf(name, sizeof name, "onvm-%s%u", w->tx ? "tx" : "rx", w->index);
    pthread_setname_np(pthread_self(), name);
    onvm_pool_set_home(w->tx ? 0 : w->index); /* RX worker i allocates from free stack i first */
    struct onvm_cpu_follow cpu;
    onvm_cpu_follow_init(&cpu, &shared->cpu_now);
    while (!atomic_load_explicit(&m->stop, ONVM_ACQUIRE)) {
        onvm_cpu_follow(&cpu, &shared->cpu_want, &shared->cpu_now);
        uint64_t next_due = UINT64_MAX, t0 = onvm_now_ns();
        int held = 0;
        int busy = w->tx ? tx_poll(w) : rx_poll(w, t0, &next_due, &held);
        /* seq_cst pairs with the manager's store in onvm_grace_pass's protocol. */
        atomic_fetch_add_explicit(&shared->epoch, 1, memory_order_seq_cst);
        onvm_grace_pass(m->r->hdr);
        shared->loops++;
        if (busy) {
            shared->busy_loops++;
            shared->busy_ns += onvm_now_ns() - t0;
            idle = 0;
            continue;
        }
        if (++idle == 1)
            spin_budget = held ? HELD_POLLS : onvm_spin_budget(&spin, t0, shared->busy_ns, SPIN_POLLS);
        if (idle < spin_budget) {
            onvm_idle_poll(idle);
            continue;
        }
        long sleep_ns = MAX_SLEEP_NS;
        if (next_due != UINT64_MAX) {
            uint64_t now = onvm_now_ns();
            sleep_ns = next_due > now ? (long)(next_due - now) : 0;
            if (sleep_ns > MAX_SLEEP_NS)
                sleep_ns = MAX_SLEEP_NS;
        }
        if ((held & 2) && sleep_ns > HELD_SLEEP_NS)
            sleep_ns = HELD_SLEEP_NS;
        idle_wait(w, sleep_ns, held);
        idle = 0;
    }
    return NULL;
}

static void idle_wait(struct onvm_mgr_worker *w, long sleep_ns, int held) {
    struct onvm_worker *shared = &w->mgr->r->workers[w->id];
    if (sleep_ns <= 0)
        return;
    if (sleep_ns < 50000) { /* a paced port is due soon: cheaper to spin */
        uint64_t until = onvm_now_ns() + (uint64_t)sleep_ns;
        while (onvm_now_ns() < until)
            onvm_pause();
        return;
    }
    struct pollfd fds[ONVM_MAX_PORTS];
    /* A port due again within TIMED_SLEEP_NS (pacing, an empty pool) gets a
     * timed sleep: its descriptor may be readable already. */
    int nfds = w->tx || sleep_ns < TIMED_SLEEP_NS || atomic_load(&w->mgr->rx_paused) ? 0 : rx_fds(w, fds);
    if (nfds) {
        /* Kernel-backed ports wake us through their descriptors; a kick
         * (pause, stop) is seen within FD_SLEEP_NS, a held port's chain
         * clearing within HELD_FD_SLEEP_NS. */
        if (sleep_ns > FD_SLEEP_NS)
            sleep_ns = FD_SLEEP_NS;
        if (held && sleep_ns > HELD_FD_SLEEP_NS)
            sleep_ns = HELD_FD_SLEEP_NS;
        struct timespec ts = {sleep_ns / 1000000000L, sleep_ns % 1000000000L};
        shared->wait.sleeps++;
        ppoll(fds, (nfds_t)nfds, &ts, NULL);
        return;
    }
    onvm_waiter_prepare(&shared->wait);
    if ((w->tx ? tx_pending(w) : held && rx_released(w)) || atomic_load(&w->mgr->stop)) {
        onvm_waiter_cancel(&shared->wait);
        return;
    }
    onvm_waiter_sleep(&shared->wait, sleep_ns);
}

int onvm_mgr_start(struct onvm_mgr *m) {
    unsigned total = m->nrx + m->ntx;
    if (m->nrx < 1 || m->ntx < 1 || total > ONVM_MAX_WORKERS)
        return -EINVAL;
    if (m->burst == 0 || m->burst > ONVM_BURST_MAX)
        m->burst = 64;
    atomic_store(&m->stop, 0);
    for (unsigned i = 0; i < total; i++) {
        struct onvm_mgr_worker *w = &m->workers[i];
        memset(w, 0, sizeof *w);
        w->mgr = m;
        w->id = i;
        w->tx = i >= m->nrx;
        w->index = w->tx ? i - m->nrx : i;
        m->r->workers[i].role = (uint32_t)w->tx;
        w->route.r = m->r;
        w->route.ports = m->ports;
        w->route.worker = i;
        w->route.rx = w->tx ? 0 : w->index + 1;
        w->route.act = w->act;
        w->route.drops = w->drops;
        w->route.tx = &w->handed;
        w->route.early_discard = !w->tx;
    }
    for (unsigned i = 0; i < total; i++) {
        struct onvm_mgr_worker *w = &m->workers[i];
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            onvm_mgr_stop(m);
            return -rc;
        }
        w->started = 1;
    }
    return 0;
}

void onvm_mgr_kick(struct onvm_mgr *m) {
    for (unsigned i = 0; i < m->nrx + m->ntx; i++)
        onvm_waiter_wake(&m->r->workers[i].wait);
}

void onvm_mgr_stop(struct onvm_mgr *m) {
    atomic_store_explicit(&m->stop, 1, ONVM_RELEASE);
    for (unsigned i = 0; i < m->nrx + m->ntx; i++) {
        struct onvm_mgr_worker *w = &m->workers[i];
        if (!w->started)
            continue;
        onvm_waiter_wake(&m->r->workers[i].wait);
        pthread_join(w->thread, NULL);
        w->started = 0;
    }
}
