/* region.c - create and attach the shared region; the packet pool; services,
 * chains and NF slots; reclaiming what an NF that left held. */
#define _GNU_SOURCE
#include "onvm_region.h"
#include "onvm_bp.h"
#include "onvm_flow.h"
#include "onvm_capture.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define ALIGN_UP(x, a) (((x) + ((uint64_t)(a)-1)) & ~((uint64_t)(a)-1))
#define HUGE_ALIGN (2u << 20)

static int fail(struct onvm_region *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct onvm_region *r, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof r->errmsg, fmt, ap);
    va_end(ap);
    return -err;
}

/* Reserve and touch the first len bytes of the mapping. */
static int populate(int fd, uint8_t *base, uint64_t len) {
    if (fallocate(fd, 0, 0, (off_t)len) != 0 && errno != EOPNOTSUPP)
        return -1;
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
    if (madvise(base, len, MADV_POPULATE_WRITE) == 0)
        return 0;
    for (uint64_t off = 0; off < len; off += 4096) /* kernels before 5.14 */
        ((volatile uint8_t *)base)[off] = 0;
    return 0;
}

/* Where everything goes for these parameters: the one place the layout is decided.
 * attach recomputes it from the header's parameters and requires the header's
 * offsets to match, so no offset in the header can point anywhere else.  *eager:
 * the bytes from the start that are resident from creation on (all but the
 * classifier's reserve). */
static int compute_layout(struct onvm_region *r, const struct onvm_region_params *p, struct onvm_header *tmp,
                          uint64_t *eager) {
    if (p->pool_count < 64 || p->pool_count > (1u << 24))
        return fail(r, EINVAL, "pool size must be between 64 and 16777216 slots");
    if (p->slot_size < 256 + ONVM_HEADROOM || p->slot_size > 65536 || p->slot_size % 64)
        return fail(r, EINVAL, "slot size must be a multiple of 64 between 384 and 65536");
    if (!onvm_ring_size_ok(p->ring_size))
        return fail(r, EINVAL, "ring size must be a power of two");
    if (p->flow_count && ((p->flow_count & (p->flow_count - 1)) || p->flow_count > (1u << 26)))
        return fail(r, EINVAL, "flow table size must be 0 or a power of two up to 2^26");
    if (p->free_stacks > ONVM_FREE_STACKS)
        return fail(r, EINVAL, "free stacks must be between 1 and %d", ONVM_FREE_STACKS);
    memset(tmp, 0, sizeof *tmp);
    tmp->free_stacks = p->free_stacks ? p->free_stacks : 1;
    uint64_t off = ALIGN_UP(sizeof(struct onvm_header), 4096);
    tmp->off_nfs = off;
    off += ALIGN_UP(sizeof(struct onvm_nf) * ONVM_MAX_NFS, 64);
    tmp->off_services = off;
    off += ALIGN_UP(sizeof(struct onvm_service) * ONVM_MAX_SERVICES, 64);
    tmp->off_chains = off;
    off += ALIGN_UP(sizeof(struct onvm_chain) * ONVM_MAX_CHAINS, 64);
    tmp->off_ports = off;
    off += ALIGN_UP(sizeof(struct onvm_port_info) * ONVM_MAX_PORTS, 64);
    tmp->off_workers = off;
    off += ALIGN_UP(sizeof(struct onvm_worker) * ONVM_MAX_WORKERS, 64);
    tmp->off_rings = ALIGN_UP(off, 4096);
    tmp->ring_bytes = ALIGN_UP(onvm_ring_bytes(p->ring_size), 64);
    off = tmp->off_rings + tmp->ring_bytes * 2 * ONVM_MAX_NFS;
    tmp->off_meta = ALIGN_UP(off, 4096);
    off = tmp->off_meta + (uint64_t)p->pool_count * sizeof(struct onvm_meta);
    tmp->off_slots = ALIGN_UP(off, 4096);
    off = tmp->off_slots + (uint64_t)p->pool_count * p->slot_size;
    /* The flow table goes last: it may be large, and nothing names it by a 32-bit offset. */
    tmp->off_flows = ALIGN_UP(off, 4096);
    tmp->flow_count = p->flow_count;
    off = tmp->off_flows + (uint64_t)p->flow_count * sizeof(struct onvm_flow_entry);
    off = onvm_cap_layout(tmp, ALIGN_UP(off, 4096), p->slot_size);
    /* The classifier reserves room for max_rules rules at the very end; only
     * what the rules in place use is ever resident (classify.c). */
    tmp->max_rules = p->max_rules ? p->max_rules : ONVM_RULES_DEFAULT;
    if (tmp->max_rules > ONVM_RULES_LIMIT)
        return fail(r, EINVAL, "at most %u rules", ONVM_RULES_LIMIT);
    tmp->off_cls = ALIGN_UP(off, 4096);
    *eager = tmp->off_cls + onvm_cls_eager_bytes(tmp->max_rules);
    off = tmp->off_cls + onvm_cls_bytes(tmp->max_rules);
    tmp->total_size = ALIGN_UP(off, HUGE_ALIGN);
    tmp->pool_count = p->pool_count;
    tmp->slot_size = p->slot_size;
    tmp->ring_size = p->ring_size;
    if (tmp->off_rings + tmp->ring_bytes * 2 * ONVM_MAX_NFS > UINT32_MAX)
        return fail(r, EINVAL, "rings do not fit below 4 GiB; use a smaller ring size");
    return 0;
}

/* The process's own copy of the geometry; everything after this uses it, not the header. */
static void bind_tables(struct onvm_region *r, const struct onvm_header *h) {
    r->meta = onvm_at(r, h->off_meta);
    r->slots = onvm_at(r, h->off_slots);
    r->slot_size = h->slot_size;
    r->pool_count = h->pool_count;
    r->free_stacks = h->free_stacks; /* 1..ONVM_FREE_STACKS: compute_layout checked it */
    r->stack_span = (h->pool_count + h->free_stacks - 1) / h->free_stacks;
    r->ring_size = h->ring_size;
    r->ring_mask = h->ring_size - 1;
    r->off_rings = h->off_rings;
    r->ring_bytes = h->ring_bytes;
    r->flow_count = h->flow_count;
    r->flows = onvm_at(r, h->off_flows);
    r->nfs = onvm_at(r, h->off_nfs);
    r->services = onvm_at(r, h->off_services);
    r->chains = onvm_at(r, h->off_chains);
    r->ports = onvm_at(r, h->off_ports);
    r->workers = onvm_at(r, h->off_workers);
    r->captures = onvm_at(r, h->off_captures);
    r->cap_records = h->cap_records;
    r->cap_rec_size = h->cap_rec_size;
    r->trace = onvm_at(r, h->off_trace);
}

/* Does fd still have the name path? */
static int named(int fd, const char *path) {
    struct stat a, b;
    return fstat(fd, &a) == 0 && lstat(path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* A new region file at path: always a fresh inode made here (O_EXCL, never through a
 * symlink), mode 0600, owned by us and locked.  Nothing another process opened or
 * mapped before can be the region.  The manager holds the exclusive lock for its
 * whole life: a file at path whose lock is held is a running manager's (EBUSY);
 * anything else there (a stale region, a symlink, a file planted by someone) is
 * unlinked while we hold its lock, and we create again.  Two managers starting at
 * once: whichever holds the lock on the file the name finally points to wins. */
static int create_fresh(struct onvm_region *r, const char *path, int *fd_out) {
    for (int attempt = 0; attempt < 16; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            struct stat st;
            errno = 0;
            /* Locked before anyone else could lock it, and still under its name. */
            if (flock(fd, LOCK_EX | LOCK_NB) != 0 || !named(fd, path)) {
                close(fd);
                continue;
            }
            if (fchmod(fd, 0600) != 0 || fstat(fd, &st) != 0 || st.st_uid != geteuid() ||
                (st.st_mode & 07777) != 0600 || !S_ISREG(st.st_mode) || st.st_nlink != 1) {
                int e = errno ? errno : EPERM;
                unlink(path);
                close(fd);
                return fail(r, e, "cannot make region file %s private (mode 0600, ours, one link)", path);
            }
            *fd_out = fd;
            return 0;
        }
        if (errno != EEXIST)
            return fail(r, errno, "cannot create region file %s", path);
        int old = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (old < 0) {
            if (errno == ENOENT)
                continue; /* gone meanwhile */
            /* A symlink (ELOOP) or a file we may not even read: not a region of ours. */
            if (unlink(path) != 0 && errno != ENOENT)
                return fail(r, errno, "%s is in the way of the region file and cannot be removed", path);
            r->replaced = 1;
            continue;
        }
        if (flock(old, LOCK_EX | LOCK_NB) != 0) {
            int e = errno;
            close(old);
            if (e == EWOULDBLOCK)
                return fail(r, EBUSY, "region %s belongs to a manager that is still running", path);
            return fail(r, e, "cannot lock region file %s", path);
        }
        /* Nobody runs on it: remove the name while we hold the lock, then create anew. */
        if (named(old, path) && unlink(path) != 0 && errno != ENOENT) {
            int e = errno;
            close(old);
            return fail(r, e, "cannot remove the stale region file %s", path);
        }
        r->replaced = 1;
        close(old);
    }
    return fail(r, EBUSY, "region %s keeps being replaced by another process", path);
}

int onvm_region_create(struct onvm_region *r, const char *path, const struct onvm_region_params *p) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    struct onvm_header tmp;
    uint64_t eager;
    int lrc = compute_layout(r, p, &tmp, &eager);
    if (lrc)
        return lrc;
    uint64_t total = tmp.total_size;

    int fd = -1, rc = create_fresh(r, path, &fd);
    if (rc)
        return rc;
    if (ftruncate(fd, (off_t)total) != 0) {
        int e = errno;
        close(fd);
        unlink(path);
        return fail(r, e, "cannot size region file %s (out of memory in its file system?)", path);
    }
    void *base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        unlink(path);
        return fail(r, e, "cannot map region file %s", path);
    }
    onvm_guard_map(base, total, fd);
    /* Everything but the classifier's reserve is touched now (first touch
     * places the pool's pages); a file system too small fails here. */
    if (populate(fd, (uint8_t *)base, eager) != 0) {
        int e = errno;
        onvm_guard_unmap(base);
        munmap(base, total);
        close(fd);
        unlink(path);
        return fail(r, e, "cannot fill region file %s (out of memory in its file system?)", path);
    }
    r->base = base;
    r->size = total;
    r->fd = fd;
    r->owner = 1;
    r->hdr = base;
    *r->hdr = tmp;
    struct onvm_header *h = r->hdr;
    h->version = ONVM_LAYOUT_VERSION;
    h->header_size = sizeof(struct onvm_header);
    h->mgr_pid = getpid();
    h->sizeof_meta = sizeof(struct onvm_meta);
    h->sizeof_nf = sizeof(struct onvm_nf);
    h->sizeof_ring = sizeof(struct onvm_ring);
    h->max_nfs = ONVM_MAX_NFS;
    h->max_services = ONVM_MAX_SERVICES;
    h->max_ports = ONVM_MAX_PORTS;
    h->max_workers = ONVM_MAX_WORKERS;
    h->max_chains = ONVM_MAX_CHAINS;
    h->max_hops = ONVM_MAX_HOPS;
    onvm_set_text(h->name, sizeof h->name, p->name ? p->name : "");
    bind_tables(r, &tmp);
    onvm_cls_init(r, h->off_cls, h->max_rules);
    for (unsigned i = 0; i < ONVM_FREE_STACKS; i++) {
        atomic_store(&h->free[i].head, ((uint64_t)0 << 32) | ONVM_SLOT_NIL);
        atomic_store(&h->free[i].count[0], 0);
        atomic_store(&h->free[i].count[1], ONVM_FREE_CLOSED); /* the sweep opens it (fence.c) */
    }
    for (unsigned n = 1; n < ONVM_MAX_NFS; n++) {
        onvm_ring_init(onvm_nf_ring(r, n, 0), p->ring_size,
                       (uint32_t)((uint8_t *)&r->nfs[n].wait - r->base));
        onvm_ring_init(onvm_nf_ring(r, n, 1), p->ring_size, 0);
    }
    for (uint32_t i = 0; i < p->pool_count; i++) /* not free yet: the pushes below make them so */
        atomic_store_explicit(&r->meta[i].owner, ONVM_OWNER_MGR, ONVM_RELAXED);
    onvm_cap_init(r);
    /* Push slots in reverse so that slot 0 is handed out first. */
    uint32_t batch[256];
    for (uint32_t top = p->pool_count; top > 0;) {
        uint32_t k = top < 256 ? top : 256;
        top -= k;
        for (uint32_t i = 0; i < k; i++)
            batch[i] = top + i;
        onvm_pool_free_burst(r, batch, k);
    }
    /* Magic last: an NF that attaches early sees no half-built region. */
    atomic_thread_fence(memory_order_release);
    h->magic = ONVM_MAGIC;
    return 0;
}

int onvm_region_attach(struct onvm_region *r, const char *path) {
    memset(r, 0, sizeof *r);
    r->fd = -1;
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return fail(r, ENOENT, "no region at %s: is the manager running?", path);
        return fail(r, errno, "cannot open region %s", path);
    }
    if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
        /* Nobody holds the manager's exclusive lock. */
        flock(fd, LOCK_UN);
        close(fd);
        return fail(r, ESTALE, "region %s was left by a manager that is no longer running", path);
    }
    struct onvm_header h;
    ssize_t got = pread(fd, &h, sizeof h, 0);
    if (got < (ssize_t)offsetof(struct onvm_header, total_size) + 8 || h.magic != ONVM_MAGIC) {
        close(fd);
        return fail(r, EPROTO, "%s is not a pyonvm region (bad magic)", path);
    }
    if (h.version != ONVM_LAYOUT_VERSION || got < (ssize_t)sizeof h ||
        h.header_size != sizeof(struct onvm_header) || h.sizeof_meta != sizeof(struct onvm_meta) ||
        h.sizeof_nf != sizeof(struct onvm_nf) || h.sizeof_ring != sizeof(struct onvm_ring) ||
        h.max_nfs != ONVM_MAX_NFS || h.max_services != ONVM_MAX_SERVICES ||
        h.max_ports != ONVM_MAX_PORTS || h.max_workers != ONVM_MAX_WORKERS ||
        h.max_chains != ONVM_MAX_CHAINS || h.max_hops != ONVM_MAX_HOPS) {
        close(fd);
        return fail(r, EPROTO,
                    "%s has layout version %u; this build speaks version %u: rebuild the NF against "
                    "the manager's pyonvm", path, h.version, ONVM_LAYOUT_VERSION);
    }
    /* The offsets must be exactly what the parameters give: a header that says
     * anything else (damaged, or written by someone) maps nothing. */
    struct onvm_region_params want = {.pool_count = h.pool_count, .slot_size = h.slot_size,
                                      .ring_size = h.ring_size, .flow_count = h.flow_count,
                                      .max_rules = h.max_rules, .free_stacks = h.free_stacks};
    struct onvm_header lay;
    uint64_t eager;
    if (compute_layout(r, &want, &lay, &eager) != 0 || lay.max_rules != h.max_rules ||
        lay.free_stacks != h.free_stacks ||
        lay.total_size != h.total_size || lay.off_nfs != h.off_nfs || lay.off_services != h.off_services ||
        lay.off_chains != h.off_chains || lay.off_ports != h.off_ports || lay.off_workers != h.off_workers ||
        lay.off_rings != h.off_rings || lay.ring_bytes != h.ring_bytes || lay.off_meta != h.off_meta ||
        lay.off_slots != h.off_slots || lay.off_flows != h.off_flows ||
        lay.off_cls != h.off_cls || lay.off_captures != h.off_captures || lay.cap_records != h.cap_records ||
        lay.cap_rec_size != h.cap_rec_size || lay.off_trace != h.off_trace) {
        close(fd);
        return fail(r, EPROTO, "region %s has a damaged header: its offsets do not follow from its sizes", path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (uint64_t)st.st_size < h.total_size) {
        close(fd);
        return fail(r, EPROTO, "region %s is shorter than its header says", path);
    }
    void *base = mmap(NULL, h.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        return fail(r, e, "cannot map region %s", path);
    }
    onvm_guard_map(base, h.total_size, fd);
    r->base = base;
    r->size = h.total_size;
    r->fd = fd;
    r->hdr = base;
    bind_tables(r, &lay);
    if (onvm_cls_bind(r) != 0) {
        onvm_region_detach(r);
        return fail(r, EPROTO, "region %s: its rule classifier lies outside the region", path);
    }
    return 0;
}

void onvm_region_detach(struct onvm_region *r) {
    onvm_cls_writer_free(r);
    if (r->base) {
        onvm_guard_unmap(r->base);
        munmap(r->base, r->size);
    }
    if (r->fd >= 0)
        close(r->fd);
    r->base = NULL;
    r->fd = -1;
}

/* ---- pool ---------------------------------------------------------------- */

/* Runs.  Walking the stack link by link is a chain of dependent loads, each of a
 * line that the CPU which freed the slot last wrote: with RX and TX workers on
 * different CPUs it was most of what an allocation cost.  So a push also writes
 * the indices of every RUN_MAX slots it links (a run) into the data of the run's
 * last slot, which leaves the stack last, and gives each slot of the run its place
 * in it (meta run: the last slot, the position, the run's length).  An allocation
 * at any slot of a run reads the indices that follow it there, loads that do not
 * wait on each other, then the link of the last one it takes.  A run is checked
 * like a link (its indices name slots of the pool; at the slot's position stands
 * the slot, after it the slot's own link) and is only a shortcut: the links are
 * there too, and the sweep and the fence walk those. */
#define RUN_MAX 64u /* 256 bytes of indices, within the smallest slot */

static inline uint32_t *run_of(const struct onvm_region *r, uint32_t slot) {
    return (uint32_t *)(r->slots + (size_t)slot * r->slot_size);
}

static inline uint64_t run_word(uint32_t last, uint32_t pos, uint32_t len) {
    return (uint64_t)last | (uint64_t)pos << 32 | (uint64_t)len << 48;
}

/* Up to want slots of the run cur stands in, from cur on, into out; 0 if there is
 * no run to take (fewer than two slots) or it does not hold. */
static inline uint32_t take_run(const struct onvm_region *r, uint32_t cur, uint32_t want, uint32_t *out) {
    uint64_t w = atomic_load_explicit(&r->meta[cur].run, ONVM_RELAXED);
    uint32_t last = (uint32_t)w, pos = (uint32_t)(w >> 32) & 0xffffu, len = (uint32_t)(w >> 48);
    if (len > RUN_MAX || pos + 1 >= len || last >= r->pool_count)
        return 0;
    uint32_t take = len - pos < want ? len - pos : want;
    if (take < 2)
        return 0;
    const uint32_t *a = run_of(r, last) + pos;
    if (a[0] != cur || a[1] != atomic_load_explicit(&r->meta[cur].next_free, ONVM_RELAXED))
        return 0;
    for (uint32_t j = 0; j < take; j++) {
        uint32_t v = a[j];
        if (v >= r->pool_count)
            return 0;
        out[j] = v;
    }
    return take;
}

/* The free stack is in the region, so anything that maps it may have damaged it.
 * alloc walks at most n links and trusts a link only if it names a slot of the
 * pool: one that does not ends the stack there (the CAS that takes the prefix
 * cuts it off, so nobody walks into it again).  After the CAS, a slot not stamped
 * free (a link into a slot in use, or a cycle) is not handed out.  Every loop is
 * bounded; an allocation that cannot get anything returns 0. */
static uint32_t alloc_from(struct onvm_region *r, struct onvm_freestack *fs, uint32_t *out, uint32_t n,
                           uint16_t owner) {
    /* Acquire pairs with the release CAS in onvm_pool_free_burst: the links
     * we walk were written before the push that published them. */
    uint64_t old = atomic_load_explicit(&fs->head, ONVM_ACQUIRE);
    for (unsigned tries = 0; tries < ONVM_RING_TRIES; tries++) {
        uint32_t cur = (uint32_t)old, k = 0;
        int broken = 0;
        while (cur != ONVM_SLOT_NIL && k < n) {
            if (cur >= r->pool_count) {
                broken = 1;
                break;
            }
            uint32_t took = take_run(r, cur, n - k, out + k);
            if (took) {
                k += took;
                cur = atomic_load_explicit(&r->meta[out[k - 1]].next_free, ONVM_RELAXED);
                continue;
            }
            out[k++] = cur;
            cur = atomic_load_explicit(&r->meta[cur].next_free, ONVM_RELAXED);
        }
        if (k == 0 && !broken)
            return 0;
        uint64_t next = onvm_free_head(old, broken ? ONVM_SLOT_NIL : cur);
        /* If head (and its tag) did not move, nobody pushed or popped meanwhile, so
         * the links we read were stable: a broken one is damage, not a race. */
        if (!atomic_compare_exchange_weak_explicit(&fs->head, &old, next, ONVM_ACQUIRE, ONVM_ACQUIRE))
            continue;
        if (broken)
            atomic_fetch_add_explicit(&r->broken_links, 1, ONVM_RELAXED);
        uint32_t got = 0;
        for (uint32_t i = 0; i < k; i++) {
            _Atomic uint16_t *o = &r->meta[out[i]].owner;
            /* A CAS, not a load and a store: a slot in the stack twice (damage) can be in
             * what two allocators took at once, and only one of them may have it. */
            uint16_t free_ = ONVM_OWNER_FREE;
            if (!atomic_compare_exchange_strong_explicit(o, &free_, owner, ONVM_RELAXED, ONVM_RELAXED)) {
                atomic_fetch_add_explicit(&r->broken_links, 1, ONVM_RELAXED);
                continue; /* in use (a link into it was damage), or met twice */
            }
            out[got++] = out[i];
        }
        onvm_free_count_add(fs, old, -(int64_t)got);
        if (got)
            return got;
        /* Nothing free in what we took: the stack runs through slots in use (a cycle).
         * Cut it; what is free beyond the cut comes back with the manager's sweep. */
        old = atomic_load_explicit(&fs->head, ONVM_ACQUIRE);
        if (!broken && (uint32_t)old != ONVM_SLOT_NIL &&
            atomic_compare_exchange_strong_explicit(&fs->head, &old, onvm_free_head(old, ONVM_SLOT_NIL),
                                                    ONVM_ACQUIRE, ONVM_ACQUIRE))
            atomic_fetch_add_explicit(&r->broken_links, 1, ONVM_RELAXED);
        return 0;
    }
    return 0;
}

static _Thread_local unsigned pool_home;

unsigned onvm_pool_home(void) { return pool_home; }

unsigned onvm_pool_set_home(unsigned stack) {
    unsigned was = pool_home;
    pool_home = stack;
    return was;
}

uint32_t onvm_pool_alloc_burst(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner) {
    const uint32_t stacks = r->free_stacks;
    if (stacks == 1)
        return alloc_from(r, &r->hdr->free[0], out, n, owner);
    const uint32_t home = pool_home < stacks ? pool_home : pool_home % stacks;
    uint32_t got = alloc_from(r, &r->hdr->free[home], out, n, owner);
    for (uint32_t i = 1; i < stacks && got < n; i++)
        got += alloc_from(r, &r->hdr->free[(home + i) % stacks], out + got, n - got, owner);
    return got;
}

/* n slots that all go to the stack fs, linked in the order given. */
static void push_to(struct onvm_region *r, struct onvm_freestack *fs, const uint32_t *idx, uint32_t n) {
    for (uint32_t c = 0; c < n; c += RUN_MAX) { /* runs: see above */
        uint32_t len = n - c < RUN_MAX ? n - c : RUN_MAX, last = idx[c + len - 1];
        if (len > 1)
            memcpy(run_of(r, last), idx + c, len * sizeof *idx);
        for (uint32_t i = c; i < c + len; i++) {
            atomic_store_explicit(&r->meta[idx[i]].run, len > 1 ? run_word(last, i - c, len) : 0, ONVM_RELAXED);
            if (i + 1 < n)
                atomic_store_explicit(&r->meta[idx[i]].next_free, idx[i + 1], ONVM_RELAXED);
        }
    }
    uint64_t old = atomic_load_explicit(&fs->head, ONVM_RELAXED);
    uint64_t next;
    do {
        atomic_store_explicit(&r->meta[idx[n - 1]].next_free, (uint32_t)old, ONVM_RELAXED);
        next = onvm_free_head(old, idx[0]);
        /* Release publishes the links above to the acquire in alloc. */
    } while (!atomic_compare_exchange_weak_explicit(&fs->head, &old, next, ONVM_RELEASE, ONVM_RELAXED));
    onvm_free_count_add(fs, old, n);
}

#define PUSH_PART 64 /* slots gathered per push, when a burst spans stacks */

void onvm_pool_push(struct onvm_region *r, const uint32_t *idx, uint32_t n) {
    if (r->free_stacks == 1) {
        push_to(r, &r->hdr->free[0], idx, n);
        return;
    }
    const uint32_t span = r->stack_span, home = idx[0] / span, lo = home * span;
    uint32_t i = 1;
    while (i < n && idx[i] - lo < span) /* in the first slot's span (unsigned: below it wraps) */
        i++;
    if (i == n) { /* one stack: the common case (a burst that one RX worker allocated) */
        push_to(r, &r->hdr->free[home], idx, n);
        return;
    }
    /* Each stack's slots in the order given, gathered from the end in parts, so that
     * the part pushed last (on top) is the first: the stack ends up as if they had
     * been pushed at once. */
    uint32_t part[PUSH_PART];
    for (uint32_t k = 0; k < r->free_stacks; k++) {
        uint32_t len = 0, from = k * span;
        for (i = n; i-- > 0;) {
            if (idx[i] - from >= span) /* not in stack k's span */
                continue;
            part[PUSH_PART - 1 - len++] = idx[i];
            if (len == PUSH_PART) {
                push_to(r, &r->hdr->free[k], part, PUSH_PART);
                len = 0;
            }
        }
        if (len)
            push_to(r, &r->hdr->free[k], part + PUSH_PART - len, len);
    }
}

void onvm_pool_free_burst(struct onvm_region *r, const uint32_t *idx, uint32_t n) {
    /* The caller holds these slots (it took them validated, or the reclaim scan picked
     * them by stamp), whatever their stamp says now: an NF may have written over the
     * stamp of a slot it held.  A slot pushed twice all the same is handed out once
     * (see onvm_pool_alloc_burst). */
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&r->meta[idx[i]].owner, ONVM_OWNER_FREE, ONVM_RELAXED);
    if (n)
        onvm_pool_push(r, idx, n);
}

/* ---- services and chains -------------------------------------------------- */

void onvm_service_set(struct onvm_region *r, unsigned svc, const uint16_t *nf, const uint16_t *inst,
                      unsigned count, unsigned policy) {
    if (svc >= ONVM_MAX_SERVICES)
        return;
    struct onvm_service *s = &r->services[svc];
    uint32_t odd = onvm_seq_write_begin(&s->seq);
    if (count > ONVM_MAX_INSTANCES)
        count = ONVM_MAX_INSTANCES;
    for (unsigned i = 0; i < count; i++) {
        s->nf[i] = nf[i];
        s->inst[i] = inst[i];
    }
    s->count = (uint16_t)count;
    s->policy = (uint16_t)policy;
    onvm_seq_write_end(&s->seq, odd);
}

unsigned onvm_service_members(const struct onvm_region *r, unsigned svc, uint16_t *nf) {
    if (svc >= ONVM_MAX_SERVICES)
        return 0;
    struct onvm_service *s = &r->services[svc];
    struct onvm_seq_read rd = {0};
    uint32_t s1;
    while (onvm_seq_begin(&s->seq, &s1, &rd)) {
        unsigned count = s->count < ONVM_MAX_INSTANCES ? s->count : ONVM_MAX_INSTANCES;
        memcpy(nf, s->nf, count * sizeof *nf);
        if (onvm_seq_end(&s->seq, s1, &rd))
            return count;
    }
    atomic_fetch_add_explicit(&((struct onvm_region *)r)->table_stalls, 1, ONVM_RELAXED);
    return 0; /* unreadable in time: no instance, as far as this reader can tell */
}

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

unsigned onvm_service_pick(const struct onvm_region *r, unsigned svc, uint32_t hash, uint32_t *rr, unsigned rx,
                           int *same_out) {
    if (svc >= ONVM_MAX_SERVICES)
        return 0;
    struct onvm_service *s = &r->services[svc];
    struct onvm_seq_read rd = {0};
    uint32_t s1;
    while (onvm_seq_begin(&s->seq, &s1, &rd)) {
        unsigned count = s->count < ONVM_MAX_INSTANCES ? s->count : ONVM_MAX_INSTANCES, pick = 0;
        int same = count == 1;
        if (count == 1) {
            pick = s->nf[0];
        } else if (count > 1 && s->policy == ONVM_POLICY_RR && rr) {
            pick = s->nf[(*rr)++ % count];
        } else if (count > 1 && s->policy == ONVM_POLICY_LOCAL && rx) {
            /* A flow stays with the RX worker that reads it (one port, or one queue of a
             * port that spreads flows over queues by their hash, as RSS does), and so
             * with one instance: the pipeline that worker feeds (onvm_layout.h). */
            pick = s->nf[(rx - 1) % count];
            same = 1;
        } else if (count > 1 && s->policy == ONVM_POLICY_LEAST) {
            uint32_t best = UINT32_MAX;
            for (unsigned i = 0; i < count; i++) {
                uint32_t load = s->nf[i] < ONVM_MAX_NFS ? onvm_ring_count(onvm_nf_ring(r, s->nf[i], 0), r->ring_mask)
                                                        : UINT32_MAX;
                if (load < best) {
                    best = load;
                    pick = s->nf[i];
                }
            }
        } else if (count > 1) {
            /* Rendezvous hashing: the instance with the highest score wins, so
             * adding or removing an instance moves only the flows it gains
             * or loses. */
            uint32_t best = 0;
            for (unsigned i = 0; i < count; i++) {
                uint32_t score = mix32(hash ^ (0x9e3779b9u * (s->inst[i] + 1u)));
                if (i == 0 || score > best) {
                    best = score;
                    pick = s->nf[i];
                }
            }
        }
        if (onvm_seq_end(&s->seq, s1, &rd)) {
            if (same_out)
                *same_out = same;
            return pick < ONVM_MAX_NFS ? pick : 0; /* a table written over names no NF */
        }
    }
    atomic_fetch_add_explicit(&((struct onvm_region *)r)->table_stalls, 1, ONVM_RELAXED);
    return ONVM_PICK_STUCK;
}

int onvm_chain_set(struct onvm_region *r, unsigned chain, const struct onvm_hop *hops, unsigned n,
                   const char *name) {
    if (chain >= ONVM_MAX_CHAINS || n > ONVM_MAX_HOPS)
        return -EINVAL;
    struct onvm_chain *c = &r->chains[chain];
    int same = c->count == n && memcmp(c->hops, hops, n * sizeof *hops) == 0;
    uint32_t odd = onvm_seq_write_begin(&c->seq);
    for (unsigned i = 0; i < n; i++)
        c->hops[i] = hops[i];
    c->count = (uint8_t)n;
    onvm_set_text(c->name, sizeof c->name, name ? name : "");
    onvm_seq_write_end(&c->seq, odd);
    for (unsigned i = 0; !same && i < ONVM_MAX_HOPS; i++) { /* counters of the chain as it is now */
        atomic_store_explicit(&c->drops[i].early, 0, ONVM_RELAXED);
        atomic_store_explicit(&c->drops[i].late, 0, ONVM_RELAXED);
    }
    return 0;
}

int onvm_chain_hop(const struct onvm_region *r, unsigned chain, unsigned idx, struct onvm_hop *out) {
    if (chain >= ONVM_MAX_CHAINS)
        return -EINVAL;
    struct onvm_chain *c = &r->chains[chain];
    struct onvm_seq_read rd = {0};
    uint32_t s1;
    while (onvm_seq_begin(&c->seq, &s1, &rd)) {
        int found = idx < c->count && idx < ONVM_MAX_HOPS;
        if (found)
            *out = c->hops[idx];
        if (onvm_seq_end(&c->seq, s1, &rd))
            return found ? 0 : -ENOENT;
    }
    atomic_fetch_add_explicit(&((struct onvm_region *)r)->table_stalls, 1, ONVM_RELAXED);
    return -EAGAIN;
}

/* ---- NF slots ------------------------------------------------------------- */

int onvm_nf_activate(struct onvm_region *r, unsigned nf_id, unsigned service, unsigned instance,
                     int pid, unsigned tx_worker, const char *name) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS || tx_worker >= ONVM_MAX_WORKERS)
        return -EINVAL;
    struct onvm_nf *nf = &r->nfs[nf_id];
    struct onvm_nf_view *v = &r->view[nf_id];
    if (atomic_load(&v->state) != ONVM_NFS_FREE)
        return -EBUSY;
    uint32_t rx_off = onvm_nf_ring_off(r, nf_id, 0), tx_off = onvm_nf_ring_off(r, nf_id, 1);
    struct onvm_ring *rx = onvm_nf_ring(r, nf_id, 0), *tx = onvm_nf_ring(r, nf_id, 1);
    onvm_ring_init(rx, r->ring_size, (uint32_t)((uint8_t *)&nf->wait - r->base));
    onvm_ring_init(tx, r->ring_size, (uint32_t)((uint8_t *)&r->workers[tx_worker].wait - r->base));
    memset(&nf->stats, 0, sizeof nf->stats);
    memset((void *)&nf->enq, 0, sizeof nf->enq);
    atomic_store(&nf->cpu.want, 0);
    atomic_store(&nf->cpu.now, 0);
    nf->service = (uint16_t)service;
    nf->instance = (uint16_t)instance;
    nf->pid = pid;
    nf->rx_ring_off = rx_off;
    nf->tx_ring_off = tx_off;
    nf->tx_worker = tx_worker;
    atomic_store(&nf->stop, 0);
    atomic_store(&nf->epoch, 0);
    atomic_store(&nf->wait.sleeping, 0);
    onvm_set_text(nf->name, sizeof nf->name, name ? name : "");
    v->tx_worker = tx_worker;
    v->tx_head = 0;
    v->told = 0;
    v->stuck_since = 0;
    v->flagged_since = 0;
    atomic_store(&v->faults, 0);
    atomic_store(&v->fault_why, ONVM_FAULT_NONE);
    atomic_store(&v->fenced, 0);
    onvm_nf_set_state(r, nf_id, ONVM_NFS_ACTIVE);
    return 0;
}

void onvm_nf_set_state(struct onvm_region *r, unsigned nf_id, unsigned state) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return;
    /* Release: whoever sees the state sees what was set up before (rings, the view). */
    atomic_store_explicit(&r->view[nf_id].state, state, ONVM_RELEASE);
    atomic_store_explicit(&r->nfs[nf_id].state, state, ONVM_RELEASE);
}

void onvm_nf_set_draining(struct onvm_region *r, unsigned nf_id) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return;
    onvm_nf_set_state(r, nf_id, ONVM_NFS_DRAINING);
    /* Producers waiting for it must not wait for an NF that will not drain
     * its ring: they go on, and the chain's packets go to the instances left
     * or are dropped at RX (no instance). */
    onvm_bp_clear(r, onvm_nf_ring(r, nf_id, 0));
}

void onvm_nf_request_stop(struct onvm_region *r, unsigned nf_id) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return;
    atomic_store(&r->nfs[nf_id].stop, 1);
    onvm_waiter_wake(&r->nfs[nf_id].wait);
}

void onvm_ring_mark(const struct onvm_region *r, struct onvm_ring *ring, uint8_t *in_ring) {
    uint32_t from = atomic_load_explicit(&ring->cons.tail, ONVM_ACQUIRE);
    /* Up to the head, not the tail: a completed reservation behind one still open is
     * written but not yet published, and its consumer takes it once the open one
     * completes (or the audit publishes the ring).  Entries of reservations not yet
     * written hold stale indices: marking them only keeps a slot out of a reclaim. */
    uint32_t to = ONVM_RING_POS(atomic_load_explicit(&ring->prod.head, ONVM_ACQUIRE));
    uint32_t n = to - from <= r->ring_mask ? to - from : r->ring_mask;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = atomic_load_explicit(&ring->entries[(from + i) & r->ring_mask], ONVM_RELAXED);
        if (v < r->pool_count)
            in_ring[v] = 1;
    }
}

/* Slots found by a scan, freed 256 at a time. */
struct free_batch {
    uint32_t slot[256];
    uint32_t n;
    long freed;
};

static void batch_flush(struct onvm_region *r, struct free_batch *b) {
    onvm_pool_free_burst(r, b->slot, b->n);
    b->freed += b->n;
    b->n = 0;
}

static void batch_add(struct onvm_region *r, struct free_batch *b, uint32_t s) {
    b->slot[b->n++] = s;
    if (b->n == 256)
        batch_flush(r, b);
}

long onvm_region_reclaim(struct onvm_region *r, unsigned nf_id) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return -EINVAL;
    /* Whoever still waits on its RX ring goes on (onvm_bp.h). */
    onvm_bp_clear(r, onvm_nf_ring(r, nf_id, 0));
    atomic_store(&r->nfs[nf_id].bp.blocked_on, 0);
    uint8_t *in_ring = calloc(r->pool_count, 1);
    if (!in_ring)
        return -ENOMEM;
    /* Rings someone will still read: the RX rings of the other live NFs, and this
     * NF's TX ring while the manager drains it (it left without being fenced). */
    for (unsigned n = 1; n < ONVM_MAX_NFS; n++) {
        struct onvm_nf_view *v = &r->view[n];
        if (atomic_load_explicit(&v->state, ONVM_ACQUIRE) == ONVM_NFS_FREE || atomic_load(&v->fenced))
            continue;
        onvm_ring_mark(r, onvm_nf_ring(r, n, n == nf_id), in_ring);
    }
    struct free_batch b = {.n = 0, .freed = 0};
    for (uint32_t i = 0; i < r->pool_count; i++) {
        /* Acquire pairs with the release of cons.tail by a consumer that
         * restamped the slot: if it left a ring after our scan, we see its
         * new owner here. */
        uint16_t o = atomic_load_explicit(&r->meta[i].owner, ONVM_ACQUIRE);
        int transit = ONVM_IS_TRANSIT(o);
        if (o == nf_id || (transit && (o & 63u) == nf_id) ||
            (transit && ONVM_TRANSIT_FROM(o) == nf_id && !in_ring[i]))
            batch_add(r, &b, i);
    }
    batch_flush(r, &b);
    free(in_ring);
    return b.freed;
}

int64_t onvm_port_lent(const struct onvm_region *r, unsigned port) {
    int64_t lent = 0;
    for (unsigned w = 0; port < ONVM_MAX_PORTS && w < ONVM_MAX_WORKERS; w++)
        lent += r->ports[port].by_worker[w].lent;
    return lent;
}

int64_t onvm_pool_lent(const struct onvm_region *r) {
    int64_t lent = 0;
    for (unsigned p = 0; p < ONVM_MAX_PORTS; p++)
        lent += onvm_port_lent(r, p);
    return lent;
}

long onvm_port_reclaim(struct onvm_region *r, unsigned port) {
    if (port >= ONVM_MAX_PORTS)
        return -EINVAL;
    uint16_t stamp = ONVM_OWNER_PORT(port);
    struct free_batch b = {.n = 0, .freed = 0};
    for (uint32_t i = 0; i < r->pool_count; i++)
        if (atomic_load_explicit(&r->meta[i].owner, ONVM_RELAXED) == stamp)
            batch_add(r, &b, i);
    batch_flush(r, &b);
    for (unsigned w = 0; w < ONVM_MAX_WORKERS; w++)
        r->ports[port].by_worker[w].lent = 0;
    return b.freed;
}

void onvm_nf_release(struct onvm_region *r, unsigned nf_id) {
    onvm_nf_set_state(r, nf_id, ONVM_NFS_FREE);
}
