/* poolrace.c - the pool's allocation under threads, for tests.
 *
 * pool_race() makes the free stack burst - 1 slots and then a slot that links
 * to itself (what an NF that writes over a slot it let go can do,
 * onvm_pool_alloc_burst), then lets two threads allocate a burst each at once,
 * round after round.  The first to move the head takes the burst - 1 slots and
 * the slot, the other the slot again and again; each stamps what it took after
 * its CAS on the head, and the slot must go to exactly one of them.
 * Part of the hooks module (hooks.c). */
#include "onvm_hooks.h"

#include <pthread.h>

struct race {
    struct onvm_region *r;
    uint32_t slot, rounds, burst;
    uint32_t before[ONVM_BURST_MAX]; /* the slots above it */
    _Atomic uint32_t go, done; /* the round the other thread may start, and the one it finished */
    _Atomic int took;          /* the other thread got the slot in its round */
};

static int race_took(struct race *x, uint16_t owner) {
    uint32_t out[ONVM_BURST_MAX];
    uint32_t n = onvm_core->pool_alloc_burst(x->r, out, x->burst, owner);
    for (uint32_t i = 0; i < n; i++)
        if (out[i] == x->slot)
            return 1;
    return 0;
}

static void *race_other(void *arg) {
    struct race *x = arg;
    for (uint32_t round = 1; round <= x->rounds; round++) {
        while (atomic_load_explicit(&x->go, ONVM_ACQUIRE) != round)
            onvm_pause();
        atomic_store_explicit(&x->took, race_took(x, 2), ONVM_RELAXED);
        atomic_store_explicit(&x->done, round, ONVM_RELEASE);
    }
    return NULL;
}

/* pool_race(region, rounds, burst=8) -> {"rounds", "first", "second", "both"}: how many rounds
 * each thread got the slot in, and in how many both did.  The region's pool is used up. */
static PyObject *mod_pool_race(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned rounds, burst = 8;
    if (!PyArg_ParseTuple(args, "OI|I", &region, &rounds, &burst))
        return NULL;
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return NULL;
    if (burst < 2 || burst > ONVM_BURST_MAX)
        return PyErr_Format(PyExc_ValueError, "burst must be 2..%d", ONVM_BURST_MAX);
    struct race x = {.r = r, .rounds = rounds, .burst = burst};
    if (onvm_core->pool_alloc_burst(r, &x.slot, 1, 1) != 1 ||
        onvm_core->pool_alloc_burst(r, x.before, burst - 1, 1) != burst - 1)
        return PyErr_Format(PyExc_ValueError, "the pool has fewer than %u slots free", burst);
    uint32_t first = 0, second = 0, both = 0;
    pthread_t other;
    int started;
    Py_BEGIN_ALLOW_THREADS started = pthread_create(&other, NULL, race_other, &x) == 0;
    struct onvm_freestack *fs = &r->hdr->free[0]; /* this thread's home: it allocates from it */
    struct onvm_meta *m = &r->meta[x.slot];
    for (uint32_t round = 1; started && round <= rounds; round++) {
        for (uint32_t i = 0; i < burst - 1; i++) {
            struct onvm_meta *b = &r->meta[x.before[i]];
            atomic_store_explicit(&b->run, 0, ONVM_RELAXED);
            atomic_store_explicit(&b->next_free, i + 2 < burst ? x.before[i + 1] : x.slot, ONVM_RELAXED);
            atomic_store_explicit(&b->owner, ONVM_OWNER_FREE, ONVM_RELAXED);
        }
        atomic_store_explicit(&m->run, 0, ONVM_RELAXED);
        atomic_store_explicit(&m->next_free, x.slot, ONVM_RELAXED);
        atomic_store_explicit(&m->owner, ONVM_OWNER_FREE, ONVM_RELAXED);
        atomic_store_explicit(&fs->head, onvm_free_head(atomic_load(&fs->head), x.before[0]), ONVM_RELEASE);
        atomic_store_explicit(&x.go, round, ONVM_RELEASE);
        int mine = race_took(&x, 1);
        while (atomic_load_explicit(&x.done, ONVM_ACQUIRE) != round)
            onvm_pause();
        int theirs = atomic_load_explicit(&x.took, ONVM_RELAXED);
        first += (uint32_t)mine;
        second += (uint32_t)theirs;
        both += (uint32_t)(mine && theirs);
    }
    if (started)
        pthread_join(other, NULL);
    Py_END_ALLOW_THREADS if (!started) return PyErr_Format(PyExc_OSError, "could not start a thread");
    return Py_BuildValue("{s:I,s:I,s:I,s:I}", "rounds", rounds, "first", first, "second", second, "both", both);
}

static PyMethodDef poolrace_functions[] = {
    {"pool_race", mod_pool_race, METH_VARARGS,
     "pool_race(region, rounds, burst=8) -> counts: two allocators and a slot in the free stack twice"},
    {NULL}};

int onvm_poolrace_register(PyObject *module) { return PyModule_AddFunctions(module, poolrace_functions); }
