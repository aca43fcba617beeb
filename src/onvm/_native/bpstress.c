/* bpstress.c - the backpressure protocol (onvm_bp.h) under threads, for tests.
 *
 * bp_stress() runs producer threads posing as NFs 1..P that feed the RX ring
 * of NF P+1, and a consumer thread posing as that NF, with the packet path's
 * own functions: producers wait while the ring is congested, the consumer
 * clears it at the low watermark and sleeps when the ring is empty.  Every
 * sleep has a long timeout; a sleep that runs into it means a wake-up was lost
 * (nobody else keeps the others from moving), and the test fails on it.
 * Part of the hooks module (hooks.c).
 */
#include "onvm_hooks.h"

#include <pthread.h>

#define STRESS_SLEEP_NS 2000000000L

struct stress {
    struct onvm_region *r;
    struct onvm_ring *ring;
    unsigned producers, consumer, burst;
    uint32_t items; /* per producer */
    _Atomic uint64_t waits, sleeps, timeouts, full;
    _Atomic int abandon; /* a wake-up was lost: everyone stops */
};

struct stress_thread {
    struct stress *s;
    unsigned id;
    uint64_t rng;
    uint32_t received, errors;
};

static uint32_t rnd(struct stress_thread *t, uint32_t below) {
    t->rng ^= t->rng << 13;
    t->rng ^= t->rng >> 7;
    t->rng ^= t->rng << 17;
    return (uint32_t)(t->rng % below);
}

static void spin(struct stress_thread *t, uint32_t most) {
    for (uint32_t i = rnd(t, most + 1); i > 0; i--)
        onvm_pause();
}

/* Sleep on w; a sleep that runs into its timeout stops the run. */
static void stress_sleep(struct stress *s, struct onvm_waiter *w) {
    uint64_t t0 = onvm_now_ns();
    atomic_fetch_add(&s->sleeps, 1);
    onvm_waiter_sleep(w, STRESS_SLEEP_NS);
    if (onvm_now_ns() - t0 >= (uint64_t)STRESS_SLEEP_NS) {
        atomic_fetch_add(&s->timeouts, 1);
        atomic_store(&s->abandon, 1);
        for (unsigned id = 1; id <= s->consumer; id++)
            onvm_waiter_wake(&s->r->nfs[id].wait);
    }
}

static void *stress_produce(void *arg) {
    struct stress_thread *t = arg;
    struct stress *s = t->s;
    struct onvm_waiter *w = &s->r->nfs[t->id].wait;
    struct onvm_waiter *cw = &s->r->nfs[s->consumer].wait;
    uint32_t buf[ONVM_BURST_MAX], sent = 0;
    while (sent < s->items && !atomic_load_explicit(&s->abandon, ONVM_RELAXED)) {
        if (onvm_bp_congested(s->ring)) {
            atomic_fetch_add(&s->waits, 1);
            spin(t, 64);
            onvm_waiter_prepare(w);
            if (onvm_bp_wait_on(s->ring, 1ull << t->id))
                stress_sleep(s, w);
            else
                onvm_waiter_cancel(w);
            continue;
        }
        uint32_t k = 1 + rnd(t, s->burst);
        if (k > s->items - sent)
            k = s->items - sent;
        for (uint32_t i = 0; i < k; i++)
            buf[i] = (uint32_t)(t->id - 1) << 24 | (sent + i);
        uint32_t done = onvm_ring_enqueue_mp(s->ring, s->r->ring_mask, buf, k, 0, NULL, 0);
        if (done)
            onvm_waiter_kick(cw);
        onvm_bp_pushed(s->r, s->ring);
        if (done < k)
            atomic_fetch_add(&s->full, 1); /* the rest goes again, after a wait */
        sent += done;
    }
    return NULL;
}

static void *stress_consume(void *arg) {
    struct stress_thread *t = arg;
    struct stress *s = t->s;
    struct onvm_waiter *w = &s->r->nfs[s->consumer].wait;
    uint32_t buf[ONVM_BURST_MAX], next[ONVM_MAX_NFS] = {0}, total = s->producers * s->items;
    uint32_t head = atomic_load_explicit(&s->ring->cons.head, ONVM_RELAXED);
    unsigned idle = 0;
    while (t->received < total && !atomic_load_explicit(&s->abandon, ONVM_RELAXED)) {
        uint32_t k = onvm_ring_dequeue_sc(s->ring, s->r->ring_mask, &head, buf, 1 + rnd(t, s->burst), 0);
        onvm_bp_drained(s->r, s->ring);
        for (uint32_t i = 0; i < k; i++) {
            uint32_t p = buf[i] >> 24, seq = buf[i] & 0xffffff;
            if (p >= s->producers || seq != next[p])
                t->errors++;
            else
                next[p]++;
        }
        t->received += k;
        if (k) {
            idle = 0;
            spin(t, 256); /* a slow consumer: the ring fills, producers wait */
            continue;
        }
        if (++idle < 1 + rnd(t, 32)) {
            onvm_pause();
            continue;
        }
        idle = 0;
        onvm_waiter_prepare(w);
        onvm_bp_drained(s->r, s->ring);
        if (onvm_ring_count(s->ring, s->r->ring_mask))
            onvm_waiter_cancel(w);
        else
            stress_sleep(s, w);
    }
    return NULL;
}

/* bp_stress(region, producers, items, burst=32, seed=1) -> dict.  NFs
 * 1..producers+1 must be active in the region (their waiters are used). */
static PyObject *mod_bp_stress(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned np, items, burst = 32;
    unsigned long long seed = 1;
    if (!PyArg_ParseTuple(args, "OII|IK", &region, &np, &items, &burst, &seed))
        return NULL;
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return NULL;
    if (np < 1 || np > 8 || items >= (1u << 24) || burst < 1 || burst > ONVM_BURST_MAX)
        return PyErr_Format(PyExc_ValueError, "1-8 producers, < 2^24 items each, burst 1..%d", ONVM_BURST_MAX);
    for (unsigned id = 1; id <= np + 1; id++)
        if (atomic_load(&r->nfs[id].state) != ONVM_NFS_ACTIVE)
            return PyErr_Format(PyExc_ValueError, "NF %u is not active", id);
    struct stress s = {.r = r, .ring = onvm_nf_ring(r, np + 1, 0), .producers = np, .consumer = np + 1,
                       .burst = burst, .items = items};
    struct stress_thread th[9];
    pthread_t tid[9];
    uint64_t t0 = onvm_now_ns();
    unsigned started = 0;
    Py_BEGIN_ALLOW_THREADS for (unsigned i = 0; i <= np; i++) {
        th[i] = (struct stress_thread){&s, i < np ? i + 1 : np + 1, seed * 0x9e3779b97f4a7c15ull + i + 1, 0, 0};
        if (pthread_create(&tid[i], NULL, i < np ? stress_produce : stress_consume, &th[i]) != 0)
            break;
        started++;
    }
    for (unsigned i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    Py_END_ALLOW_THREADS if (started <= np) return PyErr_Format(PyExc_OSError, "could not start the threads");
    return Py_BuildValue("{s:I,s:I,s:K,s:K,s:K,s:K,s:d,s:O}", "received", th[np].received, "errors",
                         th[np].errors, "waits", (unsigned long long)s.waits, "sleeps",
                         (unsigned long long)s.sleeps, "timeouts", (unsigned long long)s.timeouts, "full",
                         (unsigned long long)s.full, "seconds", (double)(onvm_now_ns() - t0) / 1e9,
                         "congested", onvm_bp_congested(s.ring) ? Py_True : Py_False);
}

static PyMethodDef bpstress_functions[] = {
    {"bp_stress", mod_bp_stress, METH_VARARGS,
     "bp_stress(region, producers, items, burst=32, seed=1) -> counts: the backpressure protocol under threads"},
    {NULL}};

int onvm_bpstress_register(PyObject *module) { return PyModule_AddFunctions(module, bpstress_functions); }
