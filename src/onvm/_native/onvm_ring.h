/* onvm_ring.h - bounded lock-free rings of slot indices, and the sleep/wake protocol.
 *
 * Naming follows the contract: _sp/_mp single/multi producer, _sc single
 * consumer, _burst takes up to n, _bulk all n or nothing.  The fast path never
 * fails: it returns how many entries it moved.
 *
 * Indices run freely over uint32_t and wrap; entries[i & mask] holds index i.
 * Usable capacity is size - 1 so that a full ring differs from an empty one at
 * a glance in a dump, as in DPDK.
 */
#ifndef ONVM_RING_H
#define ONVM_RING_H

#include <errno.h>
#include <stdint.h>
#include <linux/futex.h>
#include <sched.h>
#include <stddef.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "onvm_layout.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define onvm_pause() _mm_pause()
#elif defined(__aarch64__)
#define onvm_pause() __asm__ __volatile__("yield")
#else
#define onvm_pause() ((void)0)
#endif

#define ONVM_RELAXED memory_order_relaxed
#define ONVM_ACQUIRE memory_order_acquire
#define ONVM_RELEASE memory_order_release

static inline size_t onvm_ring_bytes(uint32_t size) {
    return sizeof(struct onvm_ring) + (size_t)size * sizeof(uint32_t);
}

static inline int onvm_ring_size_ok(uint32_t size) {
    return size >= 2 && size <= (1u << 24) && (size & (size - 1)) == 0;
}

static inline void onvm_ring_init(struct onvm_ring *r, uint32_t size, uint32_t waiter_off) {
    memset(r, 0, onvm_ring_bytes(size));
    r->size = size;
    r->mask = size - 1;
    r->capacity = size - 1;
    r->waiter_off = waiter_off;
    /* Backpressure watermarks (onvm_bp.h): the half above high is headroom for
     * bursts already handled when the ring filled, so they are not dropped. */
    r->high = size / 2;
    r->low = size / 4;
}

static inline uint32_t onvm_ring_count(const struct onvm_ring *r) {
    uint32_t t = atomic_load_explicit(&((struct onvm_ring *)r)->prod.tail, ONVM_ACQUIRE);
    uint32_t h = atomic_load_explicit(&((struct onvm_ring *)r)->cons.tail, ONVM_ACQUIRE);
    uint32_t c = t - h;
    return c > r->capacity ? r->capacity : c;
}

static inline uint32_t onvm_ring_free_count(const struct onvm_ring *r) {
    return r->capacity - onvm_ring_count(r);
}

static inline void onvm_ring_copy_in(struct onvm_ring *r, uint32_t head, const uint32_t *obj,
                                     uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&r->entries[(head + i) & r->mask], obj[i], ONVM_RELAXED);
}

/* Single producer.  bulk != 0: all n or nothing. */
static inline uint32_t onvm_ring_enqueue_sp(struct onvm_ring *r, const uint32_t *obj, uint32_t n,
                                            int bulk) {
    uint32_t head = atomic_load_explicit(&r->prod.head, ONVM_RELAXED);
    /* Acquire pairs with the consumer's release store of cons.tail: the slots
     * it freed are no longer read once we see them free. */
    uint32_t cons_tail = atomic_load_explicit(&r->cons.tail, ONVM_ACQUIRE);
    uint32_t free_entries = r->capacity + cons_tail - head;
    if (n > free_entries) {
        if (bulk)
            return 0;
        n = free_entries;
    }
    if (n == 0)
        return 0;
    onvm_ring_copy_in(r, head, obj, n);
    atomic_store_explicit(&r->prod.head, head + n, ONVM_RELAXED);
    /* Release publishes the entries written above to the consumer's acquire
     * load of prod.tail. */
    atomic_store_explicit(&r->prod.tail, head + n, ONVM_RELEASE);
    return n;
}

/* Where a multi-producer enqueue records its reservation, so that the manager
 * can finish it if the producer dies half-way (see onvm_region_reclaim). */
struct onvm_enq_record {
    _Atomic uint32_t ring_off;
    _Atomic uint32_t start;
    _Atomic uint32_t n;
    _Atomic uint32_t reserved;
};

/* Multi producer: reserve with a CAS on prod.head, fill, then publish in
 * reservation order. */
static inline uint32_t onvm_ring_enqueue_mp(struct onvm_ring *r, const uint32_t *obj, uint32_t n,
                                            int bulk, struct onvm_enq_record *rec,
                                            uint32_t ring_off) {
    uint32_t head, next;
    if (rec)
        atomic_store_explicit(&rec->ring_off, ring_off, ONVM_RELAXED);
    head = atomic_load_explicit(&r->prod.head, ONVM_RELAXED);
    for (;;) {
        /* Acquire pairs with the consumer's release of cons.tail (as in _sp). */
        uint32_t cons_tail = atomic_load_explicit(&r->cons.tail, ONVM_ACQUIRE);
        uint32_t free_entries = r->capacity + cons_tail - head;
        uint32_t want = n;
        if (want > free_entries) {
            if (bulk) {
                want = 0;
            } else {
                want = free_entries;
            }
        }
        if (want == 0) {
            if (rec)
                atomic_store_explicit(&rec->ring_off, 0, ONVM_RELAXED);
            return 0;
        }
        next = head + want;
        /* Relaxed CAS: the reservation itself publishes nothing; the tail
         * store below does. */
        if (atomic_compare_exchange_weak_explicit(&r->prod.head, &head, next, ONVM_RELAXED,
                                                  ONVM_RELAXED)) {
            n = want;
            break;
        }
    }
    if (rec) {
        atomic_store_explicit(&rec->start, head, ONVM_RELAXED);
        atomic_store_explicit(&rec->n, n, ONVM_RELAXED);
        atomic_store_explicit(&rec->reserved, 1, ONVM_RELEASE);
    }
    onvm_ring_copy_in(r, head, obj, n);
    /* Earlier reservations publish first.  A preempted producer ahead of us
     * would make us spin for a whole time slice on a busy machine: yield. */
    unsigned spins = 0;
    while (atomic_load_explicit(&r->prod.tail, ONVM_RELAXED) != head) {
        if (++spins < 64)
            onvm_pause();
        else
            sched_yield();
    }
    /* Release publishes our entries to the consumer's acquire of prod.tail. */
    atomic_store_explicit(&r->prod.tail, next, ONVM_RELEASE);
    if (rec) {
        atomic_store_explicit(&rec->reserved, 0, ONVM_RELAXED);
        atomic_store_explicit(&rec->ring_off, 0, ONVM_RELEASE);
    }
    return n;
}

/* Single consumer.  When meta is given, each dequeued slot is stamped with
 * owner before the dequeue is published (the reclaim scan relies on it).
 * Entries voided by crash repair (ONVM_SLOT_SKIP) are dropped silently. */
static inline uint32_t onvm_ring_dequeue_sc(struct onvm_ring *r, uint32_t *out, uint32_t n, int bulk,
                                            struct onvm_meta *meta, uint16_t owner) {
    uint32_t head = atomic_load_explicit(&r->cons.head, ONVM_RELAXED);
    /* Acquire pairs with the producer's release store of prod.tail. */
    uint32_t prod_tail = atomic_load_explicit(&r->prod.tail, ONVM_ACQUIRE);
    uint32_t avail = prod_tail - head;
    if (n > avail) {
        if (bulk)
            return 0;
        n = avail;
    }
    if (n == 0)
        return 0;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = atomic_load_explicit(&r->entries[(head + i) & r->mask], ONVM_RELAXED);
        if (v == ONVM_SLOT_SKIP)
            continue;
        if (meta)
            atomic_store_explicit(&meta[v].owner, owner, ONVM_RELAXED);
        out[k++] = v;
    }
    atomic_store_explicit(&r->cons.head, head + n, ONVM_RELAXED);
    /* Release: our stamps and our reads of the entries happen before the
     * producers (acquire of cons.tail) may overwrite them. */
    atomic_store_explicit(&r->cons.tail, head + n, ONVM_RELEASE);
    return k;
}

/* ---- sleeping and waking ------------------------------------------------ */

static inline void onvm_futex_wait(_Atomic uint32_t *addr, uint32_t val, long timeout_ns) {
    struct timespec ts = {timeout_ns / 1000000000L, timeout_ns % 1000000000L};
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, val, timeout_ns >= 0 ? &ts : NULL, NULL, 0);
}

static inline void onvm_futex_wake(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Producer side: call after publishing work for the waiter's owner. */
static inline void onvm_waiter_kick(struct onvm_waiter *w) {
    /* Full fence pairs with the one in onvm_waiter_prepare: either we see the
     * sleeping flag, or the consumer's recheck sees our entries. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&w->sleeping, ONVM_RELAXED) &&
        atomic_exchange_explicit(&w->sleeping, 0, ONVM_RELAXED)) {
        w->wakeups++;
        onvm_futex_wake(&w->sleeping);
    }
}

/* Consumer side: flag, then the caller rechecks its rings, then sleeps. */
static inline void onvm_waiter_prepare(struct onvm_waiter *w) {
    atomic_store_explicit(&w->sleeping, 1, ONVM_RELAXED);
    atomic_thread_fence(memory_order_seq_cst);
}

static inline void onvm_waiter_sleep(struct onvm_waiter *w, long timeout_ns) {
    w->sleeps++;
    onvm_futex_wait(&w->sleeping, 1, timeout_ns);
    atomic_store_explicit(&w->sleeping, 0, ONVM_RELAXED);
}

static inline void onvm_waiter_cancel(struct onvm_waiter *w) {
    atomic_store_explicit(&w->sleeping, 0, ONVM_RELAXED);
}

/* A packet-path loop iteration is over: if the manager waits for one (a grace
 * period, a ring to drain; see retire.c), wake it to look again.  The caller
 * bumped its epoch with a seq_cst RMW just before: with the seq_cst load here
 * and the manager's seq_cst store of waiting before it reads the epochs, either
 * the manager sees the new epoch or this sees waiting set (on x86 both are the
 * instructions a relaxed bump and load would be). */
static inline void onvm_grace_pass(struct onvm_header *h) {
    if (atomic_load_explicit(&h->grace.waiting, memory_order_seq_cst) &&
        atomic_exchange_explicit(&h->grace.waiting, 0, ONVM_RELAXED))
        syscall(SYS_futex, (uint32_t *)&h->grace.waiting, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

/* Unconditional wake, for stop requests. */
static inline void onvm_waiter_wake(struct onvm_waiter *w) {
    atomic_store_explicit(&w->sleeping, 0, ONVM_RELAXED);
    onvm_futex_wake(&w->sleeping);
}

static inline uint64_t onvm_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
