/* region.c - create and attach the shared region; the packet pool; services,
 * chains and NF slots; reclaiming what a dead NF held. */
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

static void bind_tables(struct onvm_region *r) {
    struct onvm_header *h = r->hdr;
    r->meta = onvm_at(r, h->off_meta);
    r->slots = onvm_at(r, h->off_slots);
    r->slot_size = h->slot_size;
    r->pool_count = h->pool_count;
    r->nfs = onvm_at(r, h->off_nfs);
    r->services = onvm_at(r, h->off_services);
    r->chains = onvm_at(r, h->off_chains);
    r->ports = onvm_at(r, h->off_ports);
    r->workers = onvm_at(r, h->off_workers);
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
    if (p->pool_count < 64 || p->pool_count > (1u << 24))
        return fail(r, EINVAL, "pool size must be between 64 and 16777216 slots");
    if (p->slot_size < 256 + ONVM_HEADROOM || p->slot_size > 65536 || p->slot_size % 64)
        return fail(r, EINVAL, "slot size must be a multiple of 64 between 384 and 65536");
    if (!onvm_ring_size_ok(p->ring_size))
        return fail(r, EINVAL, "ring size must be a power of two");
    if (p->flow_count && ((p->flow_count & (p->flow_count - 1)) || p->flow_count > (1u << 26)))
        return fail(r, EINVAL, "flow table size must be 0 or a power of two up to 2^26");

    struct onvm_header tmp = {0};
    uint64_t off = ALIGN_UP(sizeof(struct onvm_header), 4096);
    tmp.off_nfs = off;
    off += ALIGN_UP(sizeof(struct onvm_nf) * ONVM_MAX_NFS, 64);
    tmp.off_services = off;
    off += ALIGN_UP(sizeof(struct onvm_service) * ONVM_MAX_SERVICES, 64);
    tmp.off_chains = off;
    off += ALIGN_UP(sizeof(struct onvm_chain) * ONVM_MAX_CHAINS, 64);
    tmp.off_ports = off;
    off += ALIGN_UP(sizeof(struct onvm_port_info) * ONVM_MAX_PORTS, 64);
    tmp.off_workers = off;
    off += ALIGN_UP(sizeof(struct onvm_worker) * ONVM_MAX_WORKERS, 64);
    tmp.off_rings = ALIGN_UP(off, 4096);
    tmp.ring_bytes = ALIGN_UP(onvm_ring_bytes(p->ring_size), 64);
    off = tmp.off_rings + tmp.ring_bytes * 2 * ONVM_MAX_NFS;
    tmp.off_meta = ALIGN_UP(off, 4096);
    off = tmp.off_meta + (uint64_t)p->pool_count * sizeof(struct onvm_meta);
    tmp.off_slots = ALIGN_UP(off, 4096);
    off = tmp.off_slots + (uint64_t)p->pool_count * p->slot_size;
    /* The flow table goes last: it may be large, and nothing names it by a 32-bit offset. */
    tmp.off_flows = ALIGN_UP(off, 4096);
    tmp.flow_count = p->flow_count;
    off = tmp.off_flows + (uint64_t)p->flow_count * sizeof(struct onvm_flow);
    tmp.off_flow_data = ALIGN_UP(off, 4096);
    off = tmp.off_flow_data + (uint64_t)p->flow_count * sizeof(struct onvm_flow_data);
    off = onvm_cap_layout(&tmp, ALIGN_UP(off, 4096), p->slot_size);
    /* The classifier reserves room for max_rules rules at the very end; only
     * what the rules in place use is ever resident (classify.c). */
    tmp.max_rules = p->max_rules ? p->max_rules : ONVM_RULES_DEFAULT;
    if (tmp.max_rules > ONVM_RULES_LIMIT)
        return fail(r, EINVAL, "at most %u rules", ONVM_RULES_LIMIT);
    tmp.off_cls = ALIGN_UP(off, 4096);
    uint64_t eager = tmp.off_cls + onvm_cls_eager_bytes(tmp.max_rules);
    off = tmp.off_cls + onvm_cls_bytes(tmp.max_rules);
    uint64_t total = ALIGN_UP(off, HUGE_ALIGN);
    if (tmp.off_rings + tmp.ring_bytes * 2 * ONVM_MAX_NFS > UINT32_MAX)
        return fail(r, EINVAL, "rings do not fit below 4 GiB; use a smaller ring size");

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
    /* Everything but the classifier's reserve is touched now (first touch
     * places the pool's pages); a file system too small fails here. */
    if (populate(fd, (uint8_t *)base, eager) != 0) {
        int e = errno;
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
    h->total_size = total;
    h->mgr_pid = getpid();
    h->pool_count = p->pool_count;
    h->slot_size = p->slot_size;
    h->ring_size = p->ring_size;
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
    bind_tables(r);
    onvm_cls_init(r, h->off_cls, h->max_rules);
    atomic_store(&h->free.head, ((uint64_t)0 << 32) | ONVM_SLOT_NIL);
    atomic_store(&h->free.count, 0);
    for (unsigned n = 1; n < ONVM_MAX_NFS; n++) {
        onvm_ring_init(onvm_nf_ring(r, n, 0), p->ring_size,
                       (uint32_t)((uint8_t *)&r->nfs[n].wait - r->base));
        onvm_ring_init(onvm_nf_ring(r, n, 1), p->ring_size, 0);
    }
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
    r->base = base;
    r->size = h.total_size;
    r->fd = fd;
    r->hdr = base;
    bind_tables(r);
    if (onvm_cls_bind(r) != 0) {
        onvm_region_detach(r);
        return fail(r, EPROTO, "region %s: its rule classifier lies outside the region", path);
    }
    return 0;
}

void onvm_region_detach(struct onvm_region *r) {
    onvm_cls_writer_free(r);
    if (r->base)
        munmap(r->base, r->size);
    if (r->fd >= 0)
        close(r->fd);
    r->base = NULL;
    r->fd = -1;
}

/* ---- pool ---------------------------------------------------------------- */

uint32_t onvm_pool_alloc_burst(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner) {
    struct onvm_freestack *fs = &r->hdr->free;
    /* Acquire pairs with the release CAS in onvm_pool_free_burst: the links
     * we walk were written before the push that published them. */
    uint64_t old = atomic_load_explicit(&fs->head, ONVM_ACQUIRE);
    for (;;) {
        uint32_t cur = (uint32_t)old;
        uint32_t k = 0;
        int torn = 0;
        while (cur != ONVM_SLOT_NIL && k < n) {
            if (cur >= r->pool_count) { /* link read from a slot popped under us */
                torn = 1;
                break;
            }
            out[k++] = cur;
            cur = atomic_load_explicit(&r->meta[cur].next_free, ONVM_RELAXED);
        }
        if (k == 0 && !torn)
            return 0;
        uint64_t next = ((old >> 32) + 1) << 32 | (torn ? ONVM_SLOT_NIL : cur);
        if (!torn && atomic_compare_exchange_weak_explicit(&fs->head, &old, next, ONVM_ACQUIRE,
                                                           ONVM_ACQUIRE)) {
            atomic_fetch_sub_explicit(&fs->count, k, ONVM_RELAXED);
            for (uint32_t i = 0; i < k; i++)
                atomic_store_explicit(&r->meta[out[i]].owner, owner, ONVM_RELAXED);
            return k;
        }
        if (torn)
            old = atomic_load_explicit(&fs->head, ONVM_ACQUIRE);
    }
}

void onvm_pool_free_burst(struct onvm_region *r, const uint32_t *idx, uint32_t n) {
    if (n == 0)
        return;
    struct onvm_freestack *fs = &r->hdr->free;
    for (uint32_t i = 0; i < n; i++) {
        atomic_store_explicit(&r->meta[idx[i]].owner, ONVM_OWNER_FREE, ONVM_RELAXED);
        if (i + 1 < n)
            atomic_store_explicit(&r->meta[idx[i]].next_free, idx[i + 1], ONVM_RELAXED);
    }
    uint64_t old = atomic_load_explicit(&fs->head, ONVM_RELAXED);
    uint64_t next;
    do {
        atomic_store_explicit(&r->meta[idx[n - 1]].next_free, (uint32_t)old, ONVM_RELAXED);
        next = ((old >> 32) + 1) << 32 | idx[0];
        /* Release publishes the links above to the acquire in alloc. */
    } while (!atomic_compare_exchange_weak_explicit(&fs->head, &old, next, ONVM_RELEASE,
                                                    ONVM_RELAXED));
    atomic_fetch_add_explicit(&fs->count, n, ONVM_RELAXED);
}

/* ---- services and chains -------------------------------------------------- */

void onvm_service_set(struct onvm_region *r, unsigned svc, const uint16_t *nf, const uint16_t *inst,
                      unsigned count, unsigned policy) {
    if (svc >= ONVM_MAX_SERVICES)
        return;
    struct onvm_service *s = &r->services[svc];
    uint32_t seq = atomic_load_explicit(&s->seq, ONVM_RELAXED);
    atomic_store_explicit(&s->seq, seq + 1, ONVM_RELAXED);
    /* Release fence orders the odd seq before the writes below (seqlock writer). */
    atomic_thread_fence(memory_order_release);
    if (count > ONVM_MAX_INSTANCES)
        count = ONVM_MAX_INSTANCES;
    for (unsigned i = 0; i < count; i++) {
        s->nf[i] = nf[i];
        s->inst[i] = inst[i];
    }
    s->count = (uint16_t)count;
    s->policy = (uint16_t)policy;
    /* Release pairs with the reader's acquire of seq in onvm_service_pick. */
    atomic_store_explicit(&s->seq, seq + 2, ONVM_RELEASE);
}

unsigned onvm_service_members(const struct onvm_region *r, unsigned svc, uint16_t *nf) {
    if (svc >= ONVM_MAX_SERVICES)
        return 0;
    struct onvm_service *s = &r->services[svc];
    for (;;) {
        /* Acquire pairs with the writer's release store of seq (onvm_service_set). */
        uint32_t s1 = atomic_load_explicit(&s->seq, ONVM_ACQUIRE);
        if (s1 & 1) {
            onvm_pause();
            continue;
        }
        unsigned count = s->count < ONVM_MAX_INSTANCES ? s->count : ONVM_MAX_INSTANCES;
        memcpy(nf, s->nf, count * sizeof *nf);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, ONVM_RELAXED) == s1)
            return count;
    }
}

static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

unsigned onvm_service_pick(const struct onvm_region *r, unsigned svc, uint32_t hash, uint32_t *rr,
                           unsigned *count_out) {
    if (svc >= ONVM_MAX_SERVICES)
        return 0;
    struct onvm_service *s = &r->services[svc];
    for (;;) {
        /* Acquire pairs with the writer's release store of seq. */
        uint32_t s1 = atomic_load_explicit(&s->seq, ONVM_ACQUIRE);
        if (s1 & 1) {
            onvm_pause();
            continue;
        }
        unsigned count = s->count < ONVM_MAX_INSTANCES ? s->count : ONVM_MAX_INSTANCES, pick = 0;
        if (count == 1) {
            pick = s->nf[0];
        } else if (count > 1 && s->policy == ONVM_POLICY_RR && rr) {
            pick = s->nf[(*rr)++ % count];
        } else if (count > 1 && s->policy == ONVM_POLICY_LEAST) {
            uint32_t best = UINT32_MAX;
            for (unsigned i = 0; i < count; i++) {
                uint32_t load = s->nf[i] < ONVM_MAX_NFS ? onvm_ring_count(onvm_nf_ring(r, s->nf[i], 0)) : UINT32_MAX;
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
        /* Acquire fence: the reads above complete before we recheck seq. */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, ONVM_RELAXED) == s1) {
            if (count_out)
                *count_out = count;
            return pick;
        }
    }
}

int onvm_chain_set(struct onvm_region *r, unsigned chain, const struct onvm_hop *hops, unsigned n,
                   const char *name) {
    if (chain >= ONVM_MAX_CHAINS || n > ONVM_MAX_HOPS)
        return -EINVAL;
    struct onvm_chain *c = &r->chains[chain];
    int same = c->count == n && memcmp(c->hops, hops, n * sizeof *hops) == 0;
    uint32_t seq = atomic_load_explicit(&c->seq, ONVM_RELAXED);
    atomic_store_explicit(&c->seq, seq + 1, ONVM_RELAXED);
    atomic_thread_fence(memory_order_release);
    for (unsigned i = 0; i < n; i++)
        c->hops[i] = hops[i];
    c->count = (uint8_t)n;
    onvm_set_text(c->name, sizeof c->name, name ? name : "");
    atomic_store_explicit(&c->seq, seq + 2, ONVM_RELEASE);
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
    for (;;) {
        uint32_t s1 = atomic_load_explicit(&c->seq, ONVM_ACQUIRE);
        if (s1 & 1) {
            onvm_pause();
            continue;
        }
        int found = idx < c->count;
        if (found)
            *out = c->hops[idx];
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&c->seq, ONVM_RELAXED) == s1)
            return found ? 0 : -ENOENT;
    }
}

/* ---- NF slots ------------------------------------------------------------- */

int onvm_nf_activate(struct onvm_region *r, unsigned nf_id, unsigned service, unsigned instance,
                     int pid, unsigned tx_worker, const char *name) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return -EINVAL;
    struct onvm_nf *nf = &r->nfs[nf_id];
    if (atomic_load(&nf->state) != ONVM_NFS_FREE)
        return -EBUSY;
    uint32_t rx_off = onvm_nf_ring_off(r, nf_id, 0), tx_off = onvm_nf_ring_off(r, nf_id, 1);
    struct onvm_ring *rx = onvm_nf_ring(r, nf_id, 0), *tx = onvm_nf_ring(r, nf_id, 1);
    onvm_ring_init(rx, r->hdr->ring_size, (uint32_t)((uint8_t *)&nf->wait - r->base));
    onvm_ring_init(tx, r->hdr->ring_size,
                   (uint32_t)((uint8_t *)&r->workers[tx_worker].wait - r->base));
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
    /* Release: an NF or worker that sees ACTIVE sees initialised rings. */
    atomic_store_explicit(&nf->state, ONVM_NFS_ACTIVE, ONVM_RELEASE);
    return 0;
}

void onvm_nf_set_draining(struct onvm_region *r, unsigned nf_id) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return;
    /* Release (seq_cst): a TX worker that sees DRAINING also sees the service without it. */
    atomic_store(&r->nfs[nf_id].state, ONVM_NFS_DRAINING);
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

static void repair_enqueue(struct onvm_region *r, struct onvm_nf *nf) {
    uint32_t ring_off = atomic_load(&nf->enq.ring_off);
    if (!ring_off || !atomic_load(&nf->enq.reserved))
        return;
    struct onvm_ring *ring = onvm_at(r, ring_off);
    uint32_t start = atomic_load(&nf->enq.start), n = atomic_load(&nf->enq.n);
    if ((uint64_t)ring_off < r->hdr->off_rings || n > ring->capacity)
        return;
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&ring->entries[(start + i) & ring->mask], ONVM_SLOT_SKIP,
                              ONVM_RELAXED);
    /* Producers ahead of the dead one publish first; then we publish its
     * voided reservation so the producers behind it can go on. */
    uint64_t deadline = onvm_now_ns() + 200000000ull;
    while (atomic_load_explicit(&ring->prod.tail, ONVM_ACQUIRE) != start) {
        if (onvm_now_ns() > deadline)
            return;
        sched_yield();
    }
    atomic_store_explicit(&ring->prod.tail, start + n, ONVM_RELEASE);
    atomic_store(&nf->enq.reserved, 0);
    atomic_store(&nf->enq.ring_off, 0);
}

static void mark_ring(const struct onvm_region *r, struct onvm_ring *ring, uint8_t *in_ring) {
    uint32_t h = atomic_load_explicit(&ring->cons.tail, ONVM_ACQUIRE);
    uint32_t t = atomic_load_explicit(&ring->prod.tail, ONVM_ACQUIRE);
    for (uint32_t i = h; i != t && (uint32_t)(i - h) <= ring->capacity; i++) {
        uint32_t v = atomic_load_explicit(&ring->entries[i & ring->mask], ONVM_RELAXED);
        if (v < r->pool_count)
            in_ring[v] = 1;
    }
}

/* Frees every slot stamped `stamp` that `skip` (when given) does not mark, in
 * index order; returns how many. */
static long free_stamped(struct onvm_region *r, uint16_t stamp, const uint8_t *skip) {
    uint32_t batch[256], nb = 0;
    long returned = 0;
    for (uint32_t i = 0; i < r->pool_count; i++) {
        /* Acquire pairs with the release of cons.tail by a consumer that
         * restamped the slot: if it left a ring after our scan, we see its
         * new owner here. */
        if (atomic_load_explicit(&r->meta[i].owner, ONVM_ACQUIRE) != stamp || (skip && skip[i]))
            continue;
        batch[nb++] = i;
        if (nb == 256) {
            onvm_pool_free_burst(r, batch, nb);
            returned += nb;
            nb = 0;
        }
    }
    onvm_pool_free_burst(r, batch, nb);
    return returned + nb;
}

long onvm_region_reclaim(struct onvm_region *r, unsigned nf_id) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return -EINVAL;
    struct onvm_nf *nf = &r->nfs[nf_id];
    long returned = 0;
    repair_enqueue(r, nf);

    /* Its RX ring: nobody will read it again. */
    struct onvm_ring *rx = onvm_nf_ring(r, nf_id, 0);
    uint32_t buf[256], k;
    while ((k = onvm_ring_dequeue_sc(rx, buf, 256, 0, r->meta, ONVM_OWNER_MGR)) > 0) {
        onvm_pool_free_burst(r, buf, k);
        returned += k;
    }
    onvm_bp_clear(r, rx); /* whoever still waits on it goes on */
    atomic_store(&nf->bp.blocked_on, 0);

    /* Slots still stamped with its id that no ring holds were in its hands. */
    uint8_t *in_ring = calloc(r->pool_count, 1);
    if (!in_ring)
        return -ENOMEM;
    for (unsigned n = 1; n < ONVM_MAX_NFS; n++) {
        if (atomic_load(&r->nfs[n].state) == ONVM_NFS_FREE)
            continue;
        mark_ring(r, onvm_nf_ring(r, n, 0), in_ring);
        mark_ring(r, onvm_nf_ring(r, n, 1), in_ring);
    }
    returned += free_stamped(r, (uint16_t)nf_id, in_ring);
    free(in_ring);
    return returned;
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
    long returned = free_stamped(r, ONVM_OWNER_PORT(port), NULL);
    for (unsigned w = 0; w < ONVM_MAX_WORKERS; w++)
        r->ports[port].by_worker[w].lent = 0;
    return returned;
}

void onvm_nf_release(struct onvm_region *r, unsigned nf_id) {
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return;
    atomic_store_explicit(&r->nfs[nf_id].state, ONVM_NFS_FREE, ONVM_RELEASE);
}
