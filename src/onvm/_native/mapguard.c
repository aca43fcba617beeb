/* mapguard.c - a region file cut short under a live mapping costs no process its life.
 *
 * Theory of operation
 * -------------------
 * Every process that maps a region (the manager, each NF) could be killed by
 * SIGBUS the moment anyone with write access truncates the file: the pages past
 * the new end are gone, and the next touch of one faults.  So each mapping is
 * registered here, and a SIGBUS handler looks at the faulting address.  Inside a
 * registered mapping, it puts private zero pages over the part of the mapping
 * past the file's end (MAP_FIXED), marks the mapping damaged and returns: the
 * faulting access is retried and reads zeros.  The owner of the mapping sees the
 * mark (onvm_region_damaged) and leaves: the manager stops, an NF's run loop
 * ends.  A SIGBUS anywhere else goes to whatever handler was there before, or
 * to the default action.
 *
 * The table is fixed-size and lock-free for the handler's sake: a slot is
 * claimed with a CAS on its base and released by storing 0, and the handler
 * only loads.  Zero pages go in at 2 MiB granularity, which suits both tmpfs and
 * hugetlbfs mappings (a region's size is a multiple of 2 MiB).
 */
#define _GNU_SOURCE
#include "onvm_region.h"

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define GUARD_SLOTS 64
#define GUARD_ALIGN ((uintptr_t)2 << 20)
#define CLAIMED ((uintptr_t)1) /* a slot being filled in: no mapping starts at address 1 */

static struct {
    _Atomic uintptr_t base; /* 0: free */
    _Atomic size_t size;
    _Atomic int fd; /* -1 once the file is closed (a mapping kept for Python's buffers) */
    _Atomic int damaged;
} guards[GUARD_SLOTS];

_Atomic int onvm_guard_tripped; /* some mapping of this process was damaged */
static struct sigaction prev_bus;
static pthread_once_t installed = PTHREAD_ONCE_INIT;

static void chain(int sig, siginfo_t *si, void *uc) {
    if (prev_bus.sa_flags & SA_SIGINFO) {
        prev_bus.sa_sigaction(sig, si, uc);
        return;
    }
    if (prev_bus.sa_handler != SIG_DFL && prev_bus.sa_handler != SIG_IGN) {
        prev_bus.sa_handler(sig);
        return;
    }
    /* The default action, delivered once this handler returns (SIGBUS is blocked here). */
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
    uintptr_t at = (uintptr_t)si->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t base = atomic_load_explicit(&guards[i].base, memory_order_acquire);
        size_t size = atomic_load_explicit(&guards[i].size, memory_order_relaxed);
        if (base <= CLAIMED || at < base || at >= base + size)
            continue;
        int saved = errno;
        uintptr_t from = (at - base) & ~(GUARD_ALIGN - 1);
        struct stat st;
        int fd = atomic_load_explicit(&guards[i].fd, memory_order_relaxed);
        if (fd >= 0 && fstat(fd, &st) == 0 && (uintptr_t)st.st_size < from)
            from = (uintptr_t)st.st_size & ~(GUARD_ALIGN - 1); /* all of what is gone, at once */
        void *m = mmap((void *)(base + from), size - from, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        errno = saved;
        if (m == MAP_FAILED)
            break; /* nothing to read in its place: the default action */
        atomic_store_explicit(&guards[i].damaged, 1, memory_order_relaxed);
        atomic_store_explicit(&onvm_guard_tripped, 1, memory_order_relaxed);
        return;
    }
    chain(sig, si, uc);
}

static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &prev_bus);
}

void onvm_guard_map(void *base, size_t size, int fd) {
    pthread_once(&installed, install);
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t free_slot = 0;
        if (!atomic_compare_exchange_strong_explicit(&guards[i].base, &free_slot, CLAIMED,
                                                     memory_order_relaxed, memory_order_relaxed))
            continue;
        atomic_store_explicit(&guards[i].size, size, memory_order_relaxed);
        atomic_store_explicit(&guards[i].fd, fd, memory_order_relaxed);
        atomic_store_explicit(&guards[i].damaged, 0, memory_order_relaxed);
        /* Release: the handler that finds this base also finds its size and fd. */
        atomic_store_explicit(&guards[i].base, (uintptr_t)base, memory_order_release);
        return;
    }
    /* more mappings than slots: this one is unguarded */
}

static int find(void *base) {
    for (int i = 0; base && i < GUARD_SLOTS; i++)
        if (atomic_load_explicit(&guards[i].base, memory_order_relaxed) == (uintptr_t)base)
            return i;
    return -1;
}

void onvm_guard_file_closed(void *base) {
    int i = find(base);
    if (i >= 0)
        atomic_store_explicit(&guards[i].fd, -1, memory_order_relaxed);
}

void onvm_guard_unmap(void *base) {
    int i = find(base);
    if (i >= 0)
        atomic_store_explicit(&guards[i].base, 0, memory_order_release);
}

int onvm_region_damaged(const struct onvm_region *r) {
    int i = find(r->base);
    return i >= 0 && atomic_load_explicit(&guards[i].damaged, memory_order_relaxed);
}
