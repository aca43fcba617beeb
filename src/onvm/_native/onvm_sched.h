/* onvm_sched.h - when packet-path threads give way, and which CPU they run on.
 *
 * Spinning.  A consumer whose ring runs dry polls a while before it sleeps on
 * its futex (onvm_ring.h): under steady load the next burst usually comes
 * before a sleep and a wake-up would be over.  But the thread that will fill
 * the ring may be queued on this very CPU (a consumer we just woke, placed
 * wake-affine, or everything packed onto one CPU by the manager), and a plain
 * spin would keep it off the CPU until the spin ends.  So every 16th empty
 * poll yields, and a runnable neighbour waits one short spell at most.
 *
 * Packing.  The manager may ask an NF or a worker to run on one CPU
 * (onvm/manager/packing.py): at low load it packs the whole pipeline onto one
 * CPU, because a hand-off to a thread on an idle CPU waits for that CPU to wake
 * (about 45 us on a VM whose idle vCPUs halt), while on a busy one it costs a
 * context switch.  The request is a word in the region, 1 + the CPU or 0 for
 * "where you were": the thread follows it from its own loop, so it works
 * whatever process or container the thread lives in.  The manager judges the
 * load by the time threads spend on bursts (busy_ns in the region), not by
 * their CPU time, which spinning inflates.
 */
#ifndef ONVM_SCHED_H
#define ONVM_SCHED_H

#include <sched.h>
#include <stdint.h>

#include "onvm_ring.h"

/* One empty poll of a spinning consumer (idle counts them from 1). */
static inline void onvm_idle_poll(unsigned idle) {
    if ((idle & 15) == 1)
        sched_yield();
    else
        onvm_pause();
}

/* How long a consumer spins before it sleeps follows its load.  Work arrives
 * soon for a thread that was busy most of the last window: spinning saves a
 * sleep and a wake-up.  A thread that was mostly idle would only spin away
 * CPU time that the busy threads on its CPU need: it sleeps almost at once.
 * So the CPU is shared by the work each thread has, not by how long each one
 * polls an empty ring.  The window is ONVM_SPIN_WINDOW_NS of the thread's own
 * clock; busy is its busy_ns counter (packing's load). */
#define ONVM_SPIN_WINDOW_NS 10000000ull
#define ONVM_SPIN_MIN 16

struct onvm_spin {
    uint64_t since;     /* start of the window */
    uint64_t busy_then; /* busy_ns at its start */
    unsigned polls;     /* the spin budget, in empty polls */
};

static inline void onvm_spin_init(struct onvm_spin *s, unsigned max) {
    s->since = 0;
    s->busy_then = 0;
    s->polls = max;
}

/* The spin budget for an idle spell beginning now (max: a fully busy thread's). */
static inline unsigned onvm_spin_budget(struct onvm_spin *s, uint64_t now, uint64_t busy_ns, unsigned max) {
    if (now - s->since >= ONVM_SPIN_WINDOW_NS) {
        uint64_t span = now - s->since, busy = busy_ns - s->busy_then;
        unsigned polls = s->since ? (unsigned)((uint64_t)max * (busy < span ? busy : span) / span) : max;
        s->polls = polls < ONVM_SPIN_MIN ? ONVM_SPIN_MIN : polls;
        s->since = now;
        s->busy_then = busy_ns;
    }
    return s->polls;
}

/* cpu_now when the kernel refused the CPU asked for (a container's cpuset). */
#define ONVM_CPU_REFUSED UINT32_MAX

struct onvm_cpu_follow {
    cpu_set_t home; /* the thread's mask when it started: request 0 */
    uint32_t seen;  /* the last request acted on, so a refusal is tried once */
};

static inline void onvm_cpu_follow_init(struct onvm_cpu_follow *f, _Atomic uint32_t *now) {
    if (sched_getaffinity(0, sizeof f->home, &f->home) != 0)
        CPU_ZERO(&f->home);
    f->seen = 0;
    atomic_store_explicit(now, 0, ONVM_RELAXED);
}

/* Call from the thread's loop: moves it when the request changed.  One
 * relaxed load when it did not; the manager writes want rarely. */
static inline void onvm_cpu_follow(struct onvm_cpu_follow *f, _Atomic uint32_t *want, _Atomic uint32_t *now) {
    uint32_t w = atomic_load_explicit(want, ONVM_RELAXED);
    if (w == f->seen)
        return;
    f->seen = w;
    cpu_set_t one, *set = &f->home;
    if (w) {
        CPU_ZERO(&one);
        if (w <= CPU_SETSIZE)
            CPU_SET(w - 1, &one);
        set = &one;
    }
    /* An empty set (a CPU out of range, no home mask) is refused like any other. */
    int rc = sched_setaffinity(0, sizeof *set, set);
    atomic_store_explicit(now, rc == 0 ? w : ONVM_CPU_REFUSED, ONVM_RELAXED);
}

#endif
