/* onvm_ring.h - bounded lock-free rings of slot indices, and the sleep/wake protocol.
 *
 * Naming follows the contract: _sp/_mp single/multi producer, _sc single
 * consumer, _burst takes up to n, _bulk all n or nothing.  The fast path never
 * fails: it returns how many entries it moved.
 *
 * Indices run freely over uint32_t and wrap; entries[i & mask] holds index i.
 * Usable capacity is size - 1 (= mask) so that a full ring differs from an
 * empty one at a glance in a dump, as in DPDK.
 *
 * Every function takes the ring's mask from its caller: a process uses its own
 * copy of the geometry, never the one in the ring, which the ring's consumer
 * (any NF, for its own rings) could have overwritten.  For the same reason every
 * position read from the ring is bounded by the mask before it is trusted.
 *
 * Multi-producer enqueue (DPDK's "relaxed tail sync"): a producer reserves
 * room with a CAS on prod.head = {position, count of reservations}, fills its
 * entries, then counts itself done with a CAS on prod.tail = {position, count
 * of completions}; whoever completes the last outstanding reservation moves the
 * tail's position to the head's.  Producers never wait for each other, so one
 * that stops half way (SIGSTOP, a debugger, a crash) cannot freeze the others:
 * its ring just stops delivering until the manager repairs it (fence.c).  A
 * reservation is also recorded, when the caller gives a record, so that the
 * manager can tell who holds a ring up.
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

/* Branch hints for the packet path: what an honest peer never does is unlikely. */
#define ONVM_LIKELY(x) __builtin_expect(!!(x), 1)
#define ONVM_UNLIKELY(x) __builtin_expect(!!(x), 0)

#define ONVM_RELAXED memory_order_relaxed
#define ONVM_ACQUIRE memory_order_acquire
#define ONVM_RELEASE memory_order_release

#define ONVM_RING_POS(v) ((uint32_t)(v))
#define ONVM_RING_CNT(v) ((uint32_t)((v) >> 32))
#define ONVM_RING_PACK(pos, cnt) ((uint64_t)(cnt) << 32 | (uint32_t)(pos))
/* CAS attempts before a producer gives up on a ring (only a ring that something
 * scribbles on takes that many; an honest one settles within a few). */
#define ONVM_RING_TRIES 256u

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

/* Entries published and not yet consumed (at most mask, whatever the ring says). */
static inline uint32_t onvm_ring_count(const struct onvm_ring *r, uint32_t mask) {
    struct onvm_ring *w = (struct onvm_ring *)r;
    uint32_t t = ONVM_RING_POS(atomic_load_explicit(&w->prod.tail, ONVM_ACQUIRE));
    uint32_t h = atomic_load_explicit(&w->cons.tail, ONVM_ACQUIRE);
    uint32_t c = t - h;
    return c > mask ? mask : c;
}

static inline uint32_t onvm_ring_free_count(const struct onvm_ring *r, uint32_t mask) {
    return mask - onvm_ring_count(r, mask);
}

/* Room after the producer position head: 0 when the consumer's tail makes no sense. */
static inline uint32_t onvm_ring_room(struct onvm_ring *r, uint32_t mask, uint32_t head) {
    /* Acquire pairs with the consumer's release store of cons.tail: the entries
     * it freed are no longer read once we see them free. */
    uint32_t free_entries = mask + atomic_load_explicit(&r->cons.tail, ONVM_ACQUIRE) - head;
    return free_entries <= mask ? free_entries : 0;
}

static inline void onvm_ring_put(struct onvm_ring *r, uint32_t mask, uint32_t pos, uint32_t v) {
    atomic_store_explicit(&r->entries[pos & mask], v, ONVM_RELAXED);
}

/* ---- single producer: reserve, put, commit ---- */

static inline uint32_t onvm_ring_sp_reserve(struct onvm_ring *r, uint32_t mask, uint32_t n, int bulk,
                                            uint32_t *pos) {
    uint32_t head = ONVM_RING_POS(atomic_load_explicit(&r->prod.head, ONVM_RELAXED));
    uint32_t room = onvm_ring_room(r, mask, head);
    if (n > room)
        n = bulk ? 0 : room;
    *pos = head;
    return n;
}

static inline void onvm_ring_sp_commit(struct onvm_ring *r, uint32_t pos, uint32_t n) {
    atomic_store_explicit(&r->prod.head, ONVM_RING_PACK(pos + n, 0), ONVM_RELAXED);
    /* Release publishes the entries put before to the consumer's acquire load of prod.tail. */
    atomic_store_explicit(&r->prod.tail, ONVM_RING_PACK(pos + n, 0), ONVM_RELEASE);
}

/* Where a multi-producer enqueue records its reservation, so that the manager
 * can tell who holds a ring up (fence.c). */
struct onvm_enq_record {
    _Atomic uint32_t ring_off;
    _Atomic uint32_t start;
    _Atomic uint32_t n;
    _Atomic uint32_t reserved;
};

/* ---- multi producer: reserve, put, commit ---- */

static inline uint32_t onvm_ring_mp_reserve(struct onvm_ring *r, uint32_t mask, uint32_t n, int bulk,
                                            uint32_t *pos, struct onvm_enq_record *rec, uint32_t ring_off) {
    uint64_t oh = atomic_load_explicit(&r->prod.head, ONVM_RELAXED);
    if (rec)
        atomic_store_explicit(&rec->ring_off, ring_off, ONVM_RELAXED);
    for (unsigned tries = 0; tries < ONVM_RING_TRIES; tries++) {
        uint32_t room = onvm_ring_room(r, mask, ONVM_RING_POS(oh));
        uint32_t want = n > room ? (bulk ? 0 : room) : n;
        if (want == 0)
            break;
        uint64_t nh = ONVM_RING_PACK(ONVM_RING_POS(oh) + want, ONVM_RING_CNT(oh) + 1);
        /* Relaxed CAS: the reservation publishes nothing; the commit does. */
        if (atomic_compare_exchange_weak_explicit(&r->prod.head, &oh, nh, ONVM_RELAXED, ONVM_RELAXED)) {
            if (rec) {
                atomic_store_explicit(&rec->start, ONVM_RING_POS(oh), ONVM_RELAXED);
                atomic_store_explicit(&rec->n, want, ONVM_RELAXED);
                /* Release: the audit that reads reserved reads this start (fence.c). */
                atomic_store_explicit(&rec->reserved, 1, ONVM_RELEASE);
            }
            *pos = ONVM_RING_POS(oh);
            return want;
        }
    }
    if (rec)
        atomic_store_explicit(&rec->ring_off, 0, ONVM_RELAXED);
    return 0;
}

static inline void onvm_ring_mp_commit(struct onvm_ring *r, struct onvm_enq_record *rec) {
    uint64_t ot = atomic_load_explicit(&r->prod.tail, ONVM_ACQUIRE);
    for (unsigned tries = 0; tries < 16 * ONVM_RING_TRIES; tries++) {
        uint64_t h = atomic_load_explicit(&r->prod.head, ONVM_RELAXED);
        uint32_t cnt = ONVM_RING_CNT(ot) + 1;
        uint64_t nt = ONVM_RING_PACK(cnt == ONVM_RING_CNT(h) ? ONVM_RING_POS(h) : ONVM_RING_POS(ot), cnt);
        /* Release publishes our entries to the consumer's acquire of prod.tail, and
         * (a release sequence of RMWs) the entries of completions before ours;
         * acquire on failure re-reads a tail that other completions published. */
        if (atomic_compare_exchange_weak_explicit(&r->prod.tail, &ot, nt, ONVM_RELEASE, ONVM_ACQUIRE))
            break;
    }
    /* Given up only on a ring that something scribbles on: the slots we put there are
     * stamped in transit to its consumer, and come back when it is reclaimed. */
    if (rec) {
        atomic_store_explicit(&rec->reserved, 0, ONVM_RELAXED);
        atomic_store_explicit(&rec->ring_off, 0, ONVM_RELEASE);
    }
}

/* All in one, for callers that stamp nothing (tests, a private ring). */
static inline uint32_t onvm_ring_enqueue_sp(struct onvm_ring *r, uint32_t mask, const uint32_t *obj, uint32_t n,
                                            int bulk) {
    uint32_t pos;
    n = onvm_ring_sp_reserve(r, mask, n, bulk, &pos);
    for (uint32_t i = 0; i < n; i++)
        onvm_ring_put(r, mask, pos + i, obj[i]);
    if (n)
        onvm_ring_sp_commit(r, pos, n);
    return n;
}

static inline uint32_t onvm_ring_enqueue_mp(struct onvm_ring *r, uint32_t mask, const uint32_t *obj, uint32_t n,
                                            int bulk, struct onvm_enq_record *rec, uint32_t ring_off) {
    uint32_t pos;
    n = onvm_ring_mp_reserve(r, mask, n, bulk, &pos, rec, ring_off);
    for (uint32_t i = 0; i < n; i++)
        onvm_ring_put(r, mask, pos + i, obj[i]);
    if (n)
        onvm_ring_mp_commit(r, rec);
    return n;
}

/* ---- single consumer ---- */

/* Up to n entries from position *head, as they are (a private ring of tests). */
static inline uint32_t onvm_ring_dequeue_sc(struct onvm_ring *r, uint32_t mask, uint32_t *head, uint32_t *out,
                                            uint32_t n, int bulk) {
    uint32_t h = *head;
    /* Acquire pairs with the producers' release of prod.tail. */
    uint32_t avail = ONVM_RING_POS(atomic_load_explicit(&r->prod.tail, ONVM_ACQUIRE)) - h;
    if (avail > mask)
        avail = mask; /* a producer that wrote nonsense: a ring's worth at most */
    if (n > avail)
        n = bulk ? 0 : avail;
    for (uint32_t i = 0; i < n; i++)
        out[i] = atomic_load_explicit(&r->entries[(h + i) & mask], ONVM_RELAXED);
    if (n) {
        *head = h + n;
        atomic_store_explicit(&r->cons.head, h + n, ONVM_RELAXED);
        /* Release: our reads of the entries happen before producers (acquire of
         * cons.tail) may overwrite them. */
        atomic_store_explicit(&r->cons.tail, h + n, ONVM_RELEASE);
    }
    return n;
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
