/* onvm_region.h - a process's handle on the shared region, the packet pool and
 * the tables in it.  Slow-path calls return 0 or -errno and never exit. */
#ifndef ONVM_REGION_H
#define ONVM_REGION_H

#include <stddef.h>
#include <string.h>

#include "onvm_layout.h"
#include "onvm_ring.h"

struct onvm_flow_entry;

/* Why the manager fenced an NF off (fence.c). */
enum onvm_fault {
    ONVM_FAULT_NONE = 0,
    ONVM_FAULT_SLOT,    /* its TX ring named no slot of the pool, or one not handed to the manager */
    ONVM_FAULT_RECORD,  /* a packet it sent has a length or offset outside its slot */
    ONVM_FAULT_STALL,   /* it held a ring reservation without completing it */
    ONVM_FAULT_FLAG,    /* it kept its RX ring flagged congested while the ring was not */
    ONVM_FAULT_COUNT
};

/* The manager's own view of an NF slot, in its private memory: no NF can change
 * it.  The manager's packet path and its reclaim read this, never the NF's record
 * in the region (which the NF may have overwritten).  Unused in an NF process. */
struct onvm_nf_view {
    _Atomic uint32_t state;     /* enum onvm_nf_slot_state, as the manager set it */
    _Atomic uint32_t fenced;    /* broke the rules: nothing more is taken from or sent to it */
    uint32_t tx_worker;         /* row of the TX worker that drains its TX ring */
    uint32_t tx_head;           /* that worker's read position in the NF's TX ring */
    _Atomic uint64_t faults;    /* entries or records of it that failed validation */
    _Atomic uint32_t fault_why; /* enum onvm_fault of the first */
    uint32_t told;              /* fence.c: what the audit has reported of it */
    uint64_t stuck_head, stuck_tail, stuck_since; /* fence.c: its RX ring, not moving since */
    uint64_t flagged_since;                       /* fence.c: flagged congested while it was not */
};

/* A process's handle.  Everything an address or a bound is computed from is
 * copied here from the header when the region is made or mapped, and checked:
 * nothing in the region can change it afterwards. */
struct onvm_region {
    uint8_t *base;
    size_t size;
    int fd;
    int owner;    /* created (and will unlink) this region */
    int replaced; /* create found a stale or foreign file at the path and removed it */
    struct onvm_header *hdr;
    struct onvm_meta *meta;
    uint8_t *slots;
    uint32_t slot_size;
    uint32_t pool_count;
    uint32_t ring_size, ring_mask;
    uint64_t off_rings, ring_bytes;
    uint32_t flow_count; /* flow table entries: 0 or a power of two */
    struct onvm_flow_entry *flows;
    struct onvm_nf *nfs;
    struct onvm_service *services;
    struct onvm_chain *chains;
    struct onvm_port_info *ports;
    struct onvm_worker *workers;
    struct onvm_capture *captures; /* the capture table, then each one's records (onvm_capture.h) */
    uint32_t cap_records, cap_rec_size;
    struct onvm_trace *trace;
    uint32_t free_stacks, stack_span; /* the pool's free stacks and the slots each one's span holds */
    _Atomic uint64_t broken_links;  /* free-stack links found pointing nowhere or into slots in use */
    _Atomic uint64_t table_stalls;  /* table reads that gave up on a sequence left odd */
    struct onvm_nf_view view[ONVM_MAX_NFS];
    /* The rule classifier (onvm_flow.h), where this process found it when it
     * created or attached the region: readers bound what they read by these,
     * never by what the region says now. */
    uint64_t cls_ctl, cls_tuples, cls_images[2], cls_groups[2], cls_rules, cls_hits;
    uint32_t cls_max_rules, cls_max_slots;
    struct onvm_cls_writer *clsw; /* the manager's private side of the classifier */
    char errmsg[256];
    /* Packets RX found by the fast path (flowtable.c), in this process: a line for each
     * RX worker (by its pool home), so that no two of them add to one. */
    struct {
        _Atomic uint64_t n;
        uint64_t pad[7];
    } rx_fast[ONVM_FREE_STACKS];
};

struct onvm_region_params {
    uint32_t pool_count;
    uint32_t slot_size;
    uint32_t ring_size;
    uint32_t flow_count; /* flow table entries: 0 or a power of two */
    uint32_t max_rules;  /* rule slots reserved (0: ONVM_RULES_DEFAULT) */
    uint32_t free_stacks; /* free stacks, one per RX worker (0: one) */
    const char *name;
};

int onvm_region_create(struct onvm_region *r, const char *path, const struct onvm_region_params *p);
/* mapguard.c: a SIGBUS in a registered mapping (its file was cut short) puts zero
 * pages over the part past the file's end instead of killing the process. */
void onvm_guard_map(void *base, size_t size, int fd);
void onvm_guard_file_closed(void *base); /* the mapping stays, its file descriptor is gone */
void onvm_guard_unmap(void *base);       /* call before munmap */
int onvm_region_damaged(const struct onvm_region *r);
extern _Atomic int onvm_guard_tripped; /* some mapping of this process was damaged */
int onvm_region_attach(struct onvm_region *r, const char *path);
void onvm_region_detach(struct onvm_region *r);

/* Text into a fixed field of the region: at most size - 1 bytes, cut before a UTF-8
 * character that would not fit whole (a reader never sees half a character), the rest
 * of the field zeroed.  Callers pass valid UTF-8 (Python's "s" format gives it). */
static inline void onvm_set_text(char *dst, size_t size, const char *src) {
    size_t n = strnlen(src, size - 1);
    if (src[n] != '\0')
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) /* src[n] continues a character */
            n--;
    memcpy(dst, src, n);
    memset(dst + n, 0, size - n);
}

static inline void *onvm_at(const struct onvm_region *r, uint64_t off) {
    return off ? (void *)(r->base + off) : NULL;
}

static inline uint8_t *onvm_slot_data(const struct onvm_region *r, uint32_t idx) {
    return r->slots + (size_t)idx * r->slot_size + r->meta[idx].data_off;
}

/* A packet record whose bytes lie inside its slot: all a reader needs to trust it
 * (header offsets are checked against len where they are used). */
static inline int onvm_meta_fits(uint32_t slot_size, uint32_t data_off, uint32_t len) {
    return (uint64_t)data_off + len <= slot_size; /* a sum of two 32-bit values cannot wrap */
}

static inline int onvm_meta_sane(const struct onvm_region *r, uint32_t data_off, uint32_t len) {
    return onvm_meta_fits(r->slot_size, data_off, len);
}

/* Slot idx's record copied once, if idx is in the pool and the record is sane; the
 * bytes are then at *data.  For readers of slots another process may write. */
static inline int onvm_slot_view(const struct onvm_region *r, uint64_t idx, struct onvm_meta *m,
                                 uint8_t **data) {
    if (idx >= r->pool_count)
        return 0;
    memcpy((void *)m, (const void *)&r->meta[idx], sizeof *m);
    if (!onvm_meta_sane(r, m->data_off, m->len))
        return 0;
    *data = r->slots + (size_t)idx * r->slot_size + m->data_off;
    return 1;
}

static inline uint32_t onvm_slot_room(const struct onvm_region *r) {
    return r->slot_size - ONVM_HEADROOM;
}

/* Where NF nf_id's RX (tx == 0) or TX ring lives: inline, the packet path asks per packet. */
static inline uint32_t onvm_nf_ring_off(const struct onvm_region *r, unsigned nf_id, int tx) {
    return (uint32_t)(r->off_rings + r->ring_bytes * (2u * nf_id + (tx ? 1u : 0u)));
}

static inline struct onvm_ring *onvm_nf_ring(const struct onvm_region *r, unsigned nf_id, int tx) {
    return (struct onvm_ring *)(r->base + onvm_nf_ring_off(r, nf_id, tx));
}

/* ---- pool ---- */
/* Up to n free slots, stamped owner.  Bounded whatever the free stack holds: a link
 * out of the pool ends the stack, a slot not stamped free is not handed out. */
uint32_t onvm_pool_alloc_burst(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner);
/* The calling thread's own free stack (0 until set; returns the one before): its
 * allocations take from it first, then from the others in turn.  RX worker i sets i
 * (onvm_layout.h). */
unsigned onvm_pool_set_home(unsigned stack);
unsigned onvm_pool_home(void); /* this thread's (0 unless set) */
/* Stamps the slots (which the caller holds) free and pushes them. */
void onvm_pool_free_burst(struct onvm_region *r, const uint32_t *idx, uint32_t n);
/* Pushes slots stamped free already, each to its span's stack, linked in the order
 * given (n >= 1). */
void onvm_pool_push(struct onvm_region *r, const uint32_t *idx, uint32_t n);
/* Once port's device holds nothing any more (its queues and rings are gone):
 * frees every slot still stamped as lent to the port and zeroes the port's
 * lent counts (onvm_port.h).  Returns how many slots came back. */
long onvm_port_reclaim(struct onvm_region *r, unsigned port);
/* Slots lent to port's device now, and to every port's (sums of the workers' rows). */
int64_t onvm_port_lent(const struct onvm_region *r, unsigned port);
int64_t onvm_pool_lent(const struct onvm_region *r);

/* ---- seqlocks of the tables the manager writes (services, chains) ----
 *
 * An odd sequence is a write under way, normally for well under a microsecond.
 * A reader waits for it a bounded time (spins, then yields) and gives up after
 * ONVM_SEQ_WAIT_NS, so a sequence left odd (a writer gone, or anything that maps
 * the region writing over it) costs a drop, never a stuck thread.  A writer
 * starts from the next even value, so its write heals a sequence left odd. */
#define ONVM_SEQ_SPINS 128u
#define ONVM_SEQ_WAIT_NS 2000000ull

struct onvm_seq_read {
    unsigned tries;
    uint64_t since;
};

/* Returns 1 with the even sequence in *s1, or 0: give up. */
static inline int onvm_seq_begin(_Atomic uint32_t *seq, uint32_t *s1, struct onvm_seq_read *rd) {
    for (;;) {
        if (rd->tries >= ONVM_SEQ_SPINS) { /* past the spins, every look is timed */
            uint64_t now = onvm_now_ns();
            if (!rd->since)
                rd->since = now;
            else if (now - rd->since > ONVM_SEQ_WAIT_NS)
                return 0;
        }
        /* Acquire pairs with the writer's release store of the even sequence. */
        uint32_t s = atomic_load_explicit(seq, ONVM_ACQUIRE);
        if (!(s & 1)) {
            *s1 = s;
            return 1;
        }
        if (++rd->tries < ONVM_SEQ_SPINS)
            onvm_pause();
        else
            sched_yield();
    }
}

/* 1 if nothing was written while the caller read (its copy holds). */
static inline int onvm_seq_end(_Atomic uint32_t *seq, uint32_t s1, struct onvm_seq_read *rd) {
    /* Acquire fence: the reads before complete before we look at seq again. */
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(seq, ONVM_RELAXED) == s1)
        return 1;
    rd->tries++;
    return 0;
}

/* Writer: the odd value to store first (the next even value after seq, plus one). */
static inline uint32_t onvm_seq_write_begin(_Atomic uint32_t *seq) {
    uint32_t s = atomic_load_explicit(seq, ONVM_RELAXED);
    s += s & 1;
    atomic_store_explicit(seq, s + 1, ONVM_RELAXED);
    /* Release fence orders the odd seq before the writes that follow. */
    atomic_thread_fence(memory_order_release);
    return s + 1;
}

static inline void onvm_seq_write_end(_Atomic uint32_t *seq, uint32_t odd) {
    /* Release pairs with the readers' acquire of seq. */
    atomic_store_explicit(seq, odd + 1, ONVM_RELEASE);
}

/* What the sweep stores in the counter of the epoch it closes (onvm_layout.h).  Counts
 * that arrive for that epoch later still land there (pushes and allocations keep their
 * one fetch-add), but a few bursts move it nowhere near a real count: anything below
 * half of it reads as nothing. */
#define ONVM_FREE_CLOSED (INT64_MIN / 2)

static inline int64_t onvm_free_count_of(int64_t v) { return v < ONVM_FREE_CLOSED / 2 ? 0 : v; }

static inline int64_t onvm_pool_free_count(const struct onvm_region *r) {
    int64_t n = 0;
    for (uint32_t i = 0; i < r->free_stacks; i++) {
        const struct onvm_freestack *fs = &r->hdr->free[i];
        n += onvm_free_count_of(atomic_load_explicit(&fs->count[0], ONVM_RELAXED)) +
             onvm_free_count_of(atomic_load_explicit(&fs->count[1], ONVM_RELAXED));
    }
    return n;
}

/* The free stack's head after old: the tag moves on, its epoch (the low bit) stays. */
static inline uint64_t onvm_free_head(uint64_t old, uint32_t top) { return ((old >> 32) + 2) << 32 | top; }

/* The counter of the epoch a head value belongs to. */
static inline _Atomic int64_t *onvm_free_counter(struct onvm_freestack *fs, uint64_t head) {
    return &fs->count[(head >> 32) & 1u];
}

/* Count n slots in (out, when negative) under the epoch of head, the head value the
 * caller's CAS replaced.  If the sweep closed that epoch meanwhile, its walk counted the
 * stack as it found it, this change included, and the count lands where nobody reads it. */
static inline void onvm_free_count_add(struct onvm_freestack *fs, uint64_t head, int64_t n) {
    atomic_fetch_add_explicit(onvm_free_counter(fs, head), n, ONVM_RELAXED);
}

/* A fresh packet's metadata: inline, RX drivers call it per packet. */
static inline void onvm_slot_reset(struct onvm_region *r, uint32_t idx) {
    struct onvm_meta *m = &r->meta[idx];
    m->len = 0;
    m->flow_hash = 0;
    m->rx_ns = 0;
    m->in_port = 0;
    m->dest = 0;
    m->src_nf = 0;
    m->action = ONVM_ACT_NEXT;
    m->chain_idx = 0;
    m->flags = 0;
    m->l3_type = 0;
    m->l4_proto = 0;
    m->l3_off = 0;
    m->l4_off = 0;
    m->chain_id = 0;
    m->data_off = ONVM_HEADROOM;
}

/* ---- services and chains (manager writes, everyone reads) ---- */
void onvm_service_set(struct onvm_region *r, unsigned svc, const uint16_t *nf, const uint16_t *inst,
                      unsigned count, unsigned policy);
/* Load-balancing policies, listed once (see ONVM_ACTIONS in onvm_layout.h). */
#define ONVM_POLICIES(X)                                                                           \
    X(HASH, "hash")          /* rendezvous hashing of the symmetric flow hash: flow affinity */    \
    X(RR, "round-robin")     /* round-robin, per producer (*rr is the producer's counter) */       \
    X(LEAST, "least-loaded") /* the instance whose RX ring holds the fewest packets */      \
    X(LOCAL, "local")        /* RX worker i's packets to instance i % count (NFs': hash) */

enum onvm_policy {
#define ONVM_X_ENUM(id, name) ONVM_POLICY_##id,
    ONVM_POLICIES(ONVM_X_ENUM)
#undef ONVM_X_ENUM
    ONVM_POLICY_COUNT
};
/* An instance of svc for a flow (0: none); *same_out, when given, says whether every
 * flow this caller asks about gets the same one now (one instance, or the local policy
 * asked by an RX worker).  rx: 1 + the index of the RX worker that asks (the local
 * policy's answer depends on it), 0 for anyone else. */
unsigned onvm_service_pick(const struct onvm_region *r, unsigned svc, uint32_t hash, uint32_t *rr, unsigned rx,
                           int *same_out);
/* onvm_service_pick's answer when the service could not be read in time (a sequence
 * left odd): no NF id, and not 0 either, so that it is told from "no instance". */
#define ONVM_PICK_STUCK 0xffffu
/* The NF ids of svc's instances (a consistent copy, up to ONVM_MAX_INSTANCES); returns how many. */
unsigned onvm_service_members(const struct onvm_region *r, unsigned svc, uint16_t *nf);
int onvm_chain_set(struct onvm_region *r, unsigned chain, const struct onvm_hop *hops, unsigned n,
                   const char *name);
/* 0 with hop idx of chain; -ENOENT past its end; -EINVAL for no such chain; -EAGAIN when the
 * chain was being written for too long to read (a sequence left odd). */
int onvm_chain_hop(const struct onvm_region *r, unsigned chain, unsigned idx, struct onvm_hop *out);

/* ---- NF slots (manager only) ---- */
int onvm_nf_activate(struct onvm_region *r, unsigned nf_id, unsigned service, unsigned instance,
                     int pid, unsigned tx_worker, const char *name);
/* It receives nothing more; producers waiting on its RX ring are released. */
void onvm_nf_set_draining(struct onvm_region *r, unsigned nf_id);
void onvm_nf_request_stop(struct onvm_region *r, unsigned nf_id);
/* Both the region's record and the manager's view. */
void onvm_nf_set_state(struct onvm_region *r, unsigned nf_id, unsigned state);
/* After an NF is gone (out of its service, a grace period passed): return to the
 * pool every slot it held, every slot in transit to it, and every slot in transit
 * from it that no live ring holds (an enqueue it left before writing its entry).
 * Nothing is read from its rings or its record.  Returns the number of slots returned. */
long onvm_region_reclaim(struct onvm_region *r, unsigned nf_id);
/* Mark in in_ring the slots a ring holds between its consumer's tail and its
 * producers' head: published, or written and waiting for a reservation before
 * them to complete (at most a ring's worth, whatever the ring says). */
void onvm_ring_mark(const struct onvm_region *r, struct onvm_ring *ring, uint8_t *in_ring);
void onvm_nf_release(struct onvm_region *r, unsigned nf_id);

/* Where a packet-path thread takes packets: up to n (at most ONVM_BURST_MAX) from
 * ring for consumer me, from position *head.  An entry counts only if it names a
 * slot of the pool whose stamp is in transit to want (under want_mask, see
 * onvm_layout.h); the rest are left alone and count in *bad_slot.  A slot handed
 * over properly is stamped me before the dequeue is published; if its record lies
 * outside its slot it is freed and counts in *bad_rec.  Returns how many went into
 * out.  One pass over the entries and their records (each record's line is read
 * once), inline, so that the consumer's constants fold into the loop. */
static inline uint32_t onvm_take(struct onvm_region *r, struct onvm_ring *ring, uint32_t *head, uint32_t *out,
                                 uint32_t n, uint16_t want_mask, uint16_t want, uint16_t me, uint32_t *bad_slot,
                                 uint32_t *bad_rec) {
    /* In locals: the build does not assume strict aliasing, so each store below would
     * otherwise reload them from the region's descriptor, per packet. */
    const uint32_t mask = r->ring_mask, pool = r->pool_count, slot_size = r->slot_size;
    struct onvm_meta *const meta = r->meta;
    _Atomic uint32_t *const entries = ring->entries;
    uint32_t h = *head;
    /* Acquire pairs with the producers' release of prod.tail: their entries and stamps. */
    uint32_t avail = ONVM_RING_POS(atomic_load_explicit(&ring->prod.tail, ONVM_ACQUIRE)) - h;
    if (avail > mask)
        avail = mask; /* a producer that wrote nonsense: a ring's worth at most */
    if (n > ONVM_BURST_MAX)
        n = ONVM_BURST_MAX;
    if (n > avail)
        n = avail;
    if (n == 0)
        return 0;
    uint32_t k = 0, nb = 0, refused = 0, drop[ONVM_BURST_MAX];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t v = atomic_load_explicit(&entries[(h + i) & mask], ONVM_RELAXED);
        if (ONVM_UNLIKELY(v >= pool)) {
            refused++;
            continue;
        }
        struct onvm_meta *m = &meta[v];
        if (ONVM_UNLIKELY((atomic_load_explicit(&m->owner, ONVM_RELAXED) & want_mask) != want)) {
            refused++;
            continue;
        }
        atomic_store_explicit(&m->owner, me, ONVM_RELAXED);
        if (ONVM_LIKELY(onvm_meta_fits(slot_size, m->data_off, m->len)))
            out[k++] = v;
        else
            drop[nb++] = v;
    }
    *head = h + n;
    atomic_store_explicit(&ring->cons.head, h + n, ONVM_RELAXED);
    /* Release: our stamps and our reads of the entries happen before producers
     * (acquire of cons.tail) may overwrite them, and before the reclaim scan reads stamps. */
    atomic_store_explicit(&ring->cons.tail, h + n, ONVM_RELEASE);
    if (ONVM_UNLIKELY(refused | nb)) {
        *bad_slot += refused;
        *bad_rec += nb;
        if (nb)
            onvm_pool_free_burst(r, drop, nb);
    }
    return k;
}

/* fence.c: the manager's packet path found what NF nf_id handed over invalid (why:
 * enum onvm_fault): count it, remember why, and take nothing more from it.  The
 * manager's audit then stops the NF and reclaims what it held. */
void onvm_fault(struct onvm_region *r, unsigned nf_id, unsigned why, uint64_t count);

#endif
