/* flowtable.c - the exact-match flow table and RX classification.
 * See the theory of operation in onvm_flow.h; the rules are in classify.c. */
#include "onvm_flow.h"
#include "onvm_parse.h"

int onvm_flow_key_of(const struct onvm_meta *m, const uint8_t *data, struct onvm_flow_key *key) {
    return onvm_flow_key_within(m, data, UINT32_MAX, key); /* the parser's own record: the checks fold away */
}

static uint32_t fold(const uint8_t *a, int ipver) {
    if (ipver == 4)
        return (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    uint32_t x = 0;
    for (int i = 0; i < 16; i += 4)
        x = x * 0x9e3779b1u ^ ((uint32_t)a[i] << 24 | (uint32_t)a[i + 1] << 16 | (uint32_t)a[i + 2] << 8 | a[i + 3]);
    return x;
}

static inline uint32_t mix_port(uint32_t h, uint16_t in_port, uint16_t vlan) {
    return h ^ (uint32_t)in_port * 0x85ebca6bu ^ (uint32_t)vlan * 0xc2b2ae35u;
}

static inline uint32_t with_port(uint32_t h, const struct onvm_flow_key *k) { return mix_port(h, k->in_port, k->vlan); }

/* The same symmetric hash for both directions of a flow, so a flow and its
 * reply sit near each other; the key itself stays directional.  For IPv4 it is
 * the packet's own flow hash (onvm_parse) mixed with the in-port and VLAN, so
 * RX does not compute it twice (onvm_classify_burst). */
uint32_t onvm_flow_key_hash(const struct onvm_flow_key *k) {
    return with_port(onvm_flow_hash(fold(k->src, k->ipver), fold(k->dst, k->ipver), k->sport, k->dport, k->proto),
                     k);
}

static inline uint64_t word(const struct onvm_flow_key *k, unsigned i) {
    uint64_t w;
    memcpy(&w, (const uint8_t *)k + 8 * i, 8);
    return w;
}

/* Word by word, in registers: the key is 42 bytes, five words and the VLAN. */
static inline int key_eq(const struct onvm_flow_key *a, const struct onvm_flow_key *b) {
    return ((word(a, 0) ^ word(b, 0)) | (word(a, 1) ^ word(b, 1)) | (word(a, 2) ^ word(b, 2)) |
            (word(a, 3) ^ word(b, 3)) | (word(a, 4) ^ word(b, 4)) | (uint64_t)(a->vlan ^ b->vlan)) == 0;
}

/* The 32-bit millisecond clock of deadlines: compared by signed difference, so
 * it may wrap (every 49 days) as long as no timeout exceeds ONVM_TIMEOUT_MAX_MS. */
static inline uint32_t ms32(uint64_t ns) { return (uint32_t)(ns / 1000000ull); }

static inline int expired_at(const struct onvm_flow *f, uint32_t now_ms) {
    return f->deadline_ms && (int32_t)(now_ms - f->deadline_ms) >= 0;
}

static inline int expired(const struct onvm_flow *f, uint64_t now) { return expired_at(f, ms32(now)); }

static inline uint32_t clamp_timeout(uint32_t ms) { return ms > ONVM_TIMEOUT_MAX_MS ? ONVM_TIMEOUT_MAX_MS : ms; }

/* The earlier of the idle and the hard deadline, in milliseconds (ms32 of a time
 * plus whole milliseconds is ms32 of the time plus those milliseconds, so this is
 * exact); 0: none.  The two are compared by signed difference: while the entry
 * lives, they lie within ONVM_TIMEOUT_MAX_MS of each other. */
static inline uint32_t deadline(const struct onvm_flow_data *d, uint32_t now_ms) {
    uint32_t when = d->idle_ms ? now_ms + clamp_timeout(d->idle_ms) : 0;
    if (d->hard_ms) {
        uint32_t hard = ms32(d->created_ns) + clamp_timeout(d->hard_ms);
        if (!d->idle_ms || (int32_t)(hard - when) < 0)
            when = hard;
    } else if (!d->idle_ms) {
        return 0;
    }
    return when ? when : 1;
}

/* Find key's entry (expired or not); returns its index or -1, *seq gets its
 * sequence.  When room is given, *room gets the first entry of the window an
 * insert could take (empty, deleted or expired), or stays -1. */
static long find(struct onvm_region *r, const struct onvm_flow_key *key, uint32_t hash, uint32_t *seq, long *room,
                 uint32_t now_ms) {
    uint32_t mask = r->flow_count - 1;
    for (uint32_t p = 0; p < ONVM_FLOW_PROBE; p++) {
        uint32_t i = (hash + p) & mask;
        struct onvm_flow *f = onvm_flow_at(r, i);
        for (int tries = 0; tries < 4; tries++) {
            /* Acquire pairs with the writer's release of the even sequence. */
            uint32_t s1 = atomic_load_explicit(&f->seq, ONVM_ACQUIRE);
            if (s1 & 1) {
                onvm_pause();
                continue;
            }
            uint32_t state = f->state;
            int match = state == ONVM_FLOW_VALID && key_eq(&f->key, key);
            int free_ = state != ONVM_FLOW_VALID || expired_at(f, now_ms);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&f->seq, ONVM_RELAXED) != s1)
                continue;
            if (match) {
                *seq = s1;
                return (long)i;
            }
            if (free_ && room && *room < 0)
                *room = (long)i;
            if (state == ONVM_FLOW_EMPTY)
                return -1;
            break;
        }
    }
    return -1;
}

static int claim(struct onvm_flow *f, uint32_t *seq) {
    uint32_t s = atomic_load_explicit(&f->seq, ONVM_RELAXED);
    if (s & 1)
        return 0;
    /* Acquire: we see the previous writer's fields before overwriting them. */
    if (!atomic_compare_exchange_strong_explicit(&f->seq, &s, s + 1, ONVM_ACQUIRE, ONVM_RELAXED))
        return 0;
    *seq = s + 1;
    return 1;
}

/* Claim f only if it is still at sequence `seen` (nobody wrote it since we read it). */
static int claim_at(struct onvm_flow *f, uint32_t seen) {
    /* Acquire: as claim(). */
    return atomic_compare_exchange_strong_explicit(&f->seq, &seen, seen + 1, ONVM_ACQUIRE, ONVM_RELAXED);
}

static void publish(struct onvm_flow *f, uint32_t seq) {
    /* Release publishes both parts of the entry to readers' acquire of seq. */
    atomic_store_explicit(&f->seq, seq + 1, ONVM_RELEASE);
}

static void remove_entry(struct onvm_region *r, struct onvm_flow *f, uint32_t seq) {
    f->state = ONVM_FLOW_DELETED;
    publish(f, seq);
    atomic_fetch_sub(&r->hdr->flows_used, 1);
}

/* Write a fresh entry into f (claimed), counters from zero. */
static void fill(struct onvm_flow *f, const struct onvm_flow_key *key, uint16_t chain,
                 uint8_t origin, uint32_t rule, uint32_t version, uint32_t idle_ms, uint32_t hard_ms, uint64_t now) {
    struct onvm_flow_data *d = onvm_flow_data_of(f);
    f->key = *key;
    d->created_ns = now;
    d->last_ns = now;
    d->packets = 0;
    d->bytes = 0;
    d->idle_ms = idle_ms;
    d->hard_ms = hard_ms;
    f->deadline_ms = deadline(d, ms32(now));
    f->chain = chain;
    f->origin = origin;
    f->rule = rule;
    f->version = version;
    f->state = ONVM_FLOW_VALID;
}

/* Take entry i (claimed) for a new flow: what it held leaves now. */
static void take(struct onvm_region *r, struct onvm_flow *f, uint64_t now) {
    if (f->state == ONVM_FLOW_VALID) {
        if (expired(f, now))
            atomic_fetch_add(&r->hdr->flows_expired, 1);
    } else {
        atomic_fetch_add(&r->hdr->flows_used, 1);
    }
    atomic_fetch_add(&r->hdr->flows_installed, 1);
}

/* ---- what the rules say ----------------------------------------------------- */

static inline uint16_t port_default(struct onvm_region *r, uint16_t in_port) {
    uint16_t c = in_port < ONVM_MAX_PORTS ? onvm_cls(r)->port_chain[in_port] : 0;
    return c < ONVM_MAX_CHAINS ? c : 0;
}

/* A classifier answer as an entry would hold it. */
struct decision {
    uint16_t chain;
    uint8_t origin;
    uint32_t rule, version, idle_ms, hard_ms;
};

static int decide(struct onvm_region *r, const struct onvm_flow_key *key, struct decision *d) {
    struct onvm_cls_result res;
    if (onvm_cls_lookup(r, key, &res) < 0)
        return -1;
    uint32_t idle_default = clamp_timeout(onvm_cls(r)->default_idle_ms);
    d->version = res.version;
    if (res.slot >= 0) {
        d->origin = ONVM_FLOW_BY_RULE;
        d->rule = (uint32_t)res.slot + 1;
        d->chain = res.chain < ONVM_MAX_CHAINS ? res.chain : 0;
        d->idle_ms = res.idle_ms == ONVM_IDLE_DEFAULT ? idle_default : clamp_timeout(res.idle_ms);
        d->hard_ms = clamp_timeout(res.hard_ms);
    } else {
        d->origin = ONVM_FLOW_BY_DEFAULT;
        d->rule = 0;
        d->chain = port_default(r, key->in_port);
        d->idle_ms = idle_default;
        d->hard_ms = 0;
    }
    return 0;
}

static inline int same_decision(const struct onvm_flow *f, const struct decision *d) {
    return f->origin == d->origin && f->rule == d->rule && f->chain == d->chain;
}

/* Is entry f (a copy) what the rules say now?  Explicit entries always are. */
static int current(struct onvm_region *r, const struct onvm_flow *f) {
    if (!onvm_cached_origin(f->origin))
        return 1;
    uint32_t v = atomic_load_explicit(&onvm_cls(r)->version, ONVM_ACQUIRE);
    if (f->version == v || onvm_cls_still_current(r, &f->key, f->origin, f->rule, f->version))
        return 1;
    struct decision d;
    return decide(r, &f->key, &d) == 0 && same_decision(f, &d);
}

/* Move f's version on to v if nobody wrote f since we read it at `seen`. */
static void mark_current(struct onvm_flow *f, uint32_t seen, uint32_t v) {
    if (claim_at(f, seen)) {
        f->version = v;
        publish(f, seen + 1);
    }
}

/* ---- the API's side ----------------------------------------------------------- */

int onvm_flow_read(struct onvm_region *r, uint32_t i, uint64_t now, struct onvm_flow_entry *out) {
    struct onvm_flow *f = onvm_flow_at(r, i);
    for (int tries = 0; tries < 8; tries++) {
        uint32_t s1 = atomic_load_explicit(&f->seq, ONVM_ACQUIRE);
        if (s1 & 1)
            continue;
        memcpy((uint8_t *)&out->f + sizeof f->seq, (uint8_t *)f + sizeof f->seq, sizeof *f - sizeof f->seq);
        out->d = *onvm_flow_data_of(f);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&f->seq, ONVM_RELAXED) == s1)
            return out->f.state == ONVM_FLOW_VALID && !expired(&out->f, now) && current(r, &out->f) ? 0
                                                                                                  : -ENOENT;
    }
    return -EAGAIN;
}

int onvm_flow_get(struct onvm_region *r, const struct onvm_flow_key *key, uint64_t now, int defaults,
                  struct onvm_flow_entry *out) {
    if (!r->flow_count)
        return -ENOENT;
    uint32_t seq;
    long i = find(r, key, onvm_flow_key_hash(key), &seq, NULL, ms32(now));
    if (i < 0)
        return -ENOENT;
    int rc = onvm_flow_read(r, (uint32_t)i, now, out);
    if (rc != 0)
        return rc;
    if (!key_eq(&out->f.key, key) || (!defaults && out->f.origin == ONVM_FLOW_BY_DEFAULT))
        return -ENOENT;
    return 0;
}

/* The cached result in key's window idle longest, to make way for an explicit entry. */
static long victim(struct onvm_region *r, uint32_t hash) {
    uint32_t mask = r->flow_count - 1;
    long best = -1;
    uint64_t oldest = UINT64_MAX;
    for (uint32_t p = 0; p < ONVM_FLOW_PROBE; p++) {
        uint32_t i = (hash + p) & mask;
        struct onvm_flow *f = onvm_flow_at(r, i);
        if (f->state != ONVM_FLOW_VALID || !onvm_cached_origin(f->origin))
            continue;
        uint64_t last = onvm_flow_data_of(f)->last_ns; /* the counter line: only a cached result's */
        if (last < oldest) {
            oldest = last;
            best = (long)i;
        }
    }
    return best;
}

/* Other entries of key in its window (two writers raced to insert it) go. */
static void dedupe(struct onvm_region *r, const struct onvm_flow_key *key, uint32_t hash, long keep) {
    uint32_t mask = r->flow_count - 1, seq;
    for (uint32_t p = 0; p < ONVM_FLOW_PROBE; p++) {
        uint32_t i = (hash + p) & mask;
        struct onvm_flow *f = onvm_flow_at(r, i);
        if (i == keep || f->state != ONVM_FLOW_VALID || !key_eq(&f->key, key))
            continue;
        if (claim(f, &seq)) {
            if (f->state == ONVM_FLOW_VALID && key_eq(&f->key, key))
                remove_entry(r, f, seq);
            else
                publish(f, seq);
        }
    }
}

int onvm_flow_put(struct onvm_region *r, const struct onvm_flow_key *key, uint16_t chain, uint32_t idle_ms,
                  uint32_t hard_ms, uint8_t origin, uint64_t now) {
    if (!r->flow_count)
        return -ENOSPC;
    if (idle_ms > ONVM_TIMEOUT_MAX_MS || hard_ms > ONVM_TIMEOUT_MAX_MS)
        return -EINVAL;
    uint32_t hash = onvm_flow_key_hash(key), seq;
    for (int attempt = 0; attempt < 8; attempt++) {
        long room = -1;
        long i = find(r, key, hash, &seq, &room, ms32(now));
        if (i >= 0) { /* the flow has an entry: it now says this */
            struct onvm_flow *f = onvm_flow_at(r, (uint32_t)i);
            if (!claim(f, &seq))
                continue;
            if (f->state != ONVM_FLOW_VALID || !key_eq(&f->key, key)) {
                publish(f, seq);
                continue;
            }
            if (expired(f, now) || onvm_cached_origin(f->origin)) {
                atomic_fetch_add(&r->hdr->flows_installed, 1);
                fill(f, key, chain, origin, 0, 0, idle_ms, hard_ms, now);
            } else { /* an explicit entry changed: its counters stay */
                struct onvm_flow_data *d = onvm_flow_data_of(f);
                d->idle_ms = idle_ms;
                d->hard_ms = hard_ms;
                d->last_ns = now;
                f->deadline_ms = deadline(d, ms32(now));
                f->chain = chain;
                f->origin = origin;
            }
            publish(f, seq);
            dedupe(r, key, hash, i);
            return (int)i;
        }
        int evict = 0;
        if (room < 0) {
            room = victim(r, hash);
            evict = 1;
        }
        if (room < 0)
            break;
        struct onvm_flow *f = onvm_flow_at(r, (uint32_t)room);
        if (!claim(f, &seq))
            continue;
        int ok = evict ? f->state == ONVM_FLOW_VALID && onvm_cached_origin(f->origin)
                       : f->state != ONVM_FLOW_VALID || expired(f, now);
        if (!ok) {
            publish(f, seq);
            continue;
        }
        if (evict)
            atomic_fetch_add(&r->hdr->flows_evicted, 1);
        take(r, f, now);
        fill(f, key, chain, origin, 0, 0, idle_ms, hard_ms, now);
        publish(f, seq);
        dedupe(r, key, hash, room);
        return (int)room;
    }
    atomic_fetch_add(&r->hdr->flows_full, 1);
    return -ENOSPC;
}

int onvm_flow_del(struct onvm_region *r, const struct onvm_flow_key *key) {
    if (!r->flow_count)
        return -ENOENT;
    uint64_t now = onvm_now_ns();
    for (int attempt = 0; attempt < 8; attempt++) {
        uint32_t seq;
        long i = find(r, key, onvm_flow_key_hash(key), &seq, NULL, ms32(now));
        if (i < 0)
            return -ENOENT;
        struct onvm_flow *f = onvm_flow_at(r, (uint32_t)i);
        if (!claim(f, &seq))
            continue;
        if (f->state != ONVM_FLOW_VALID || !key_eq(&f->key, key)) {
            publish(f, seq);
            continue;
        }
        remove_entry(r, f, seq);
        return 0;
    }
    return -EAGAIN;
}

uint32_t onvm_flow_expire(struct onvm_region *r, uint32_t start, uint32_t n, uint64_t now) {
    uint32_t count = r->flow_count, removed = 0, seq;
    for (uint32_t k = 0; k < n && count; k++) {
        struct onvm_flow *f = onvm_flow_at(r, (start + k) & (count - 1));
        uint32_t s1 = atomic_load_explicit(&f->seq, ONVM_ACQUIRE);
        if ((s1 & 1) || f->state != ONVM_FLOW_VALID)
            continue;
        int dead = expired(f, now);
        if (!dead && onvm_cached_origin(f->origin)) {
            uint32_t v = atomic_load_explicit(&onvm_cls(r)->version, ONVM_ACQUIRE);
            struct onvm_flow copy = *f;
            atomic_thread_fence(memory_order_acquire);
            if (copy.version == v || atomic_load_explicit(&f->seq, ONVM_RELAXED) != s1)
                continue;
            if (current(r, &copy)) { /* still right: later checks start from here */
                mark_current(f, s1, v);
                continue;
            }
            dead = 2;
        }
        if (!dead || !claim(f, &seq))
            continue;
        if (f->state == ONVM_FLOW_VALID && (seq == s1 + 1 || expired(f, now))) {
            remove_entry(r, f, seq);
            atomic_fetch_add(dead == 2 ? &r->hdr->flows_changed : &r->hdr->flows_expired, 1);
            removed++;
        } else {
            publish(f, seq);
        }
    }
    return removed;
}

static inline int flushed(const struct onvm_flow *f, int chain, int cached_only) {
    return f->state == ONVM_FLOW_VALID && (chain < 0 || f->chain == chain) &&
           (!cached_only || onvm_cached_origin(f->origin));
}

uint32_t onvm_flow_flush(struct onvm_region *r, int chain, int cached_only) {
    uint32_t removed = 0, seq;
    for (uint32_t i = 0; i < r->flow_count; i++) {
        struct onvm_flow *f = onvm_flow_at(r, i);
        if (!flushed(f, chain, cached_only))
            continue;
        if (!claim(f, &seq))
            continue;
        if (flushed(f, chain, cached_only)) {
            remove_entry(r, f, seq);
            removed++;
        } else {
            publish(f, seq);
        }
    }
    return removed;
}

/* ---- RX ------------------------------------------------------------------------ */

/* What RX reads once a burst, and the header counters it adds to once a burst:
 * those lines are shared with the sweep and the API, so they are not touched
 * per packet. */
struct rx_burst {
    uint64_t now;
    uint32_t now_ms;
    uint32_t version; /* the rules' version at the start of the burst */
    int caching;      /* 0: no rules and no port defaults, so every flow takes the default chain */
    int32_t used;
    uint32_t installed, expired, changed, full, fast;
};

static inline void rx_begin(struct onvm_region *r, struct rx_burst *b, uint64_t now) {
    *b = (struct rx_burst){.now = now, .now_ms = ms32(now)};
    /* Acquire pairs with the writer's release of version: the log and images it names are there. */
    struct onvm_cls_ctl *c = onvm_cls(r);
    b->version = atomic_load_explicit(&c->version, ONVM_ACQUIRE);
    b->caching = !onvm_cls_empty(c); /* as new as that version, at least */
}

static void rx_end(struct onvm_region *r, const struct rx_burst *b) {
    struct onvm_header *h = r->hdr;
    /* Relaxed: statistics; flows_used only decides whether RX looks anything up at all. */
    if (b->used)
        atomic_fetch_add_explicit(&h->flows_used, b->used, ONVM_RELAXED);
    if (b->installed)
        atomic_fetch_add_explicit(&h->flows_installed, b->installed, ONVM_RELAXED);
    if (b->expired)
        atomic_fetch_add_explicit(&h->flows_expired, b->expired, ONVM_RELAXED);
    if (b->changed)
        atomic_fetch_add_explicit(&h->flows_changed, b->changed, ONVM_RELAXED);
    if (b->full)
        atomic_fetch_add_explicit(&h->flows_full, b->full, ONVM_RELAXED);
    if (b->fast)
        atomic_fetch_add_explicit(&r->rx_fast[onvm_pool_home() % ONVM_FREE_STACKS].n, b->fast, ONVM_RELAXED);
}

/* A hit: count the packet and move an idle deadline on (the RX worker owns the flow). */
static inline void hit(struct onvm_region *r, long i, const struct onvm_meta *m, const struct rx_burst *b) {
    struct onvm_flow *f = onvm_flow_at(r, (uint32_t)i);
    struct onvm_flow_data *d = onvm_flow_data_of(f);
    d->packets++;
    d->bytes += m->len;
    d->last_ns = b->now;
    if (d->idle_ms) {
        uint32_t when = deadline(d, b->now_ms);
        if (f->deadline_ms != when) /* it moves once a millisecond: no store the rest of the time */
            f->deadline_ms = when;
    }
}

static void classify_key(struct onvm_region *r, struct onvm_meta *m, const struct onvm_flow_key *key,
                         uint32_t hash, struct rx_burst *b) {
    uint32_t v = b->version, seq;
    long room = -1;
    long i = find(r, key, hash, &seq, &room, b->now_ms);
    int was_live = 0;
    if (i >= 0) {
        struct onvm_flow *f = onvm_flow_at(r, (uint32_t)i);
        uint16_t chain = f->chain;
        uint8_t origin = f->origin;
        uint32_t rule = f->rule, ver = f->version;
        int dead = expired_at(f, b->now_ms);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&f->seq, ONVM_RELAXED) != seq) {
            i = -1; /* changed under us: classify afresh, leave it be */
        } else if (!b->caching && onvm_cached_origin(origin)) {
            /* No rules and no port defaults: the answer is the default chain (chain_id is
             * 0 already), and an entry saying so would only keep RX looking the table up
             * (nothing_to_look_up): it goes. */
            if (claim_at(f, seq))
                remove_entry(r, f, seq + 1);
            return;
        } else if (!dead) {
            if (!onvm_cached_origin(origin) || ver == v || (int32_t)(ver - v) > 0) {
                hit(r, i, m, b);
                m->chain_id = chain;
                return;
            }
            if (onvm_cls_still_current(r, key, origin, rule, ver)) {
                mark_current(f, seq, v);
                hit(r, i, m, b);
                m->chain_id = chain;
                return;
            }
            was_live = 1;
        }
    }
    if (!b->caching)
        return; /* the default chain (chain_id is 0 already), uncached */
    struct decision d;
    if (decide(r, key, &d) < 0)
        return; /* the images would not hold still: the default chain, uncached */
    m->chain_id = d.chain;
    if (d.rule)
        atomic_fetch_add_explicit(&onvm_rule_hits(r)[d.rule - 1], 1, ONVM_RELAXED);
    long at = i >= 0 ? i : room;
    if (at < 0) {
        b->full++;
        return;
    }
    struct onvm_flow *f = onvm_flow_at(r, (uint32_t)at);
    if (i >= 0 && was_live && same_decision(f, &d)) { /* the same answer: the entry and its counters stay */
        mark_current(f, seq, d.version);
        hit(r, at, m, b);
        return;
    }
    uint32_t s;
    if (i >= 0) { /* the flow's own entry, expired or outdated: rewritten */
        if (!claim_at(f, seq))
            return; /* someone else is writing it: the next packet tries again */
        s = seq + 1;
        if (was_live)
            b->changed++;
        else
            b->expired++;
    } else {
        if (!claim(f, &s))
            return;
        if (f->state == ONVM_FLOW_VALID && !expired_at(f, b->now_ms)) {
            publish(f, s); /* taken since we looked */
            return;
        }
        if (f->state == ONVM_FLOW_VALID)
            b->expired++;
        else
            b->used++;
    }
    b->installed++;
    fill(f, key, d.chain, d.origin, d.rule, d.version, d.idle_ms, d.hard_ms, b->now);
    publish(f, s);
    hit(r, at, m, b); /* count this first packet too */
}

static inline int nothing_to_look_up(struct onvm_region *r) {
    return !r->flow_count ||
           (atomic_load_explicit(&r->hdr->flows_used, ONVM_RELAXED) <= 0 && onvm_cls_empty(onvm_cls(r)));
}

/* ---- RX's fast path: an established IPv4 flow found where its hash points ---------
 *
 * Most packets belong to a flow whose entry sits at the first place of its probe window,
 * is live and, if a cached result, as new as the rules.  For an IPv4 packet the words of
 * its key are put together in registers from the parsed packet and compared with the
 * entry's, instead of building the 42-byte key and searching the window; anything else
 * (another place in the window, an expired, outdated or half-written entry, a miss)
 * takes the full path (classify_key), which decides the same for those packets. */

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define FAST_PATH 1
#else
#define FAST_PATH 0 /* the words below are laid out for a little-endian key */
#endif
static_assert(offsetof(struct onvm_flow_key, sport) == 32 && offsetof(struct onvm_flow_key, dport) == 34 &&
                  offsetof(struct onvm_flow_key, in_port) == 36 && offsetof(struct onvm_flow_key, proto) == 38 &&
                  offsetof(struct onvm_flow_key, ipver) == 39 && offsetof(struct onvm_flow_key, vlan) == 40,
              "the fast path's key words");

/* An IPv4 key as words 0, 2 and 4 of struct onvm_flow_key and its VLAN (words 1 and 3,
 * the rest of the addresses, are zero), for what onvm_flow_key_of would build. */
struct key4 {
    uint64_t w0, w2, w4;
    uint16_t vlan;
};

static inline int key4_of(const struct onvm_meta *m, const uint8_t *data, struct key4 *k) {
    if (!FAST_PATH || m->l3_type != ONVM_L3_IPV4)
        return 0;
    const uint8_t *ip = data + m->l3_off;
    uint32_t src, dst;
    uint16_t sport, dport;
    memcpy(&src, ip + 12, 4);
    memcpy(&dst, ip + 16, 4);
    onvm_flow_ports(m, data, UINT32_MAX, &sport, &dport); /* the parser's own record, as onvm_flow_key_of */
    k->w0 = src;
    k->w2 = dst;
    k->w4 = sport | (uint64_t)dport << 16 | (uint64_t)m->in_port << 32 | (uint64_t)m->l4_proto << 48 |
            (uint64_t)4 << 56;
    k->vlan = onvm_flow_vlan(m);
    return 1;
}

/* The whole key, for the full path: the words in place, without reading the packet again. */
static inline void key4_full(const struct key4 *k, struct onvm_flow_key *key) {
    const uint64_t w[5] = {k->w0, 0, k->w2, 0, k->w4};
    memcpy(key, w, sizeof w);
    key->vlan = k->vlan;
}

static inline int key4_eq(const struct onvm_flow *f, const struct key4 *k) {
    const struct onvm_flow_key *a = &f->key;
    return ((word(a, 0) ^ k->w0) | word(a, 1) | (word(a, 2) ^ k->w2) | word(a, 3) | (word(a, 4) ^ k->w4) |
            (uint64_t)(a->vlan ^ k->vlan)) == 0;
}

/* The packet's flow is live at the first place of its window and current: count it, take
 * its chain.  0: the full path decides. */
static inline int fast_hit(struct onvm_region *r, struct onvm_meta *m, const struct key4 *k, uint32_t hash,
                           const struct rx_burst *b) {
    uint32_t i = hash & (r->flow_count - 1);
    struct onvm_flow *f = onvm_flow_at(r, i);
    /* Acquire pairs with the writer's release of the even sequence, as in find(). */
    uint32_t s1 = atomic_load_explicit(&f->seq, ONVM_ACQUIRE);
    uint16_t chain = f->chain;
    int ok = !(s1 & 1) && f->state == ONVM_FLOW_VALID && key4_eq(f, k) && !expired_at(f, b->now_ms) &&
             (!onvm_cached_origin(f->origin) || (b->caching && f->version == b->version));
    atomic_thread_fence(memory_order_acquire);
    if (!ok || atomic_load_explicit(&f->seq, ONVM_RELAXED) != s1)
        return 0;
    hit(r, i, m, b);
    m->chain_id = chain;
    return 1;
}

void onvm_classify_burst(struct onvm_region *r, struct onvm_meta *const *m, const uint8_t *const *data,
                         uint32_t n, uint64_t now) {
    for (uint32_t i = 0; i < n; i++)
        m[i]->chain_id = 0;
    if (nothing_to_look_up(r))
        return;
    uint32_t mask = r->flow_count - 1;
    struct onvm_flow_key keys[64];
    struct key4 k4[64];
    uint32_t hash[64];
    uint8_t ok[64]; /* 1: keys[i] built; 2: k4[i] built (the fast path's); 0: not IP */
    struct rx_burst b;
    rx_begin(r, &b, now);
    for (uint32_t base = 0; base < n; base += 64) {
        uint32_t k = n - base < 64 ? n - base : 64;
        for (uint32_t i = 0; i < k; i++) {
            const struct onvm_meta *mi = m[base + i];
            /* An IPv4 packet's flow hash (onvm_parse) is the key's hash before the port's share. */
            if (mi->flow_hash && key4_of(mi, data[base + i], &k4[i])) {
                ok[i] = 2;
                hash[i] = mix_port(mi->flow_hash, mi->in_port, k4[i].vlan);
            } else if (onvm_flow_key_of(mi, data[base + i], &keys[i]) == 0) {
                ok[i] = 1;
                hash[i] = keys[i].ipver == 4 && mi->flow_hash ? with_port(mi->flow_hash, &keys[i])
                                                              : onvm_flow_key_hash(&keys[i]);
            } else {
                ok[i] = 0;
                continue;
            }
            struct onvm_flow *f = onvm_flow_at(r, hash[i] & mask);
            __builtin_prefetch(f);
            __builtin_prefetch(onvm_flow_data_of(f), 1);
        }
        for (uint32_t i = 0; i < k; i++) {
            if (ok[i] == 2) {
                if (fast_hit(r, m[base + i], &k4[i], hash[i], &b)) {
                    b.fast++;
                    continue;
                }
                key4_full(&k4[i], &keys[i]);
            } else if (!ok[i]) {
                continue;
            }
            classify_key(r, m[base + i], &keys[i], hash[i], &b);
        }
    }
    rx_end(r, &b);
}

void onvm_classify(struct onvm_region *r, struct onvm_meta *m, const uint8_t *data, uint64_t now) {
    onvm_classify_burst(r, &m, &data, 1, now); /* one path, so that the tests of one packet test RX */
}

/* ---- bulk lookup ----------------------------------------------------------- */

/* Look up n keys at once: hash them all, prefetch every first probe, then
 * search.  The misses to memory overlap instead of queueing one after another.
 * out[i] is the chain of key i, or -1 when it has no entry. */
void onvm_flow_lookup_bulk(struct onvm_region *r, const struct onvm_flow_key *keys, uint32_t n, int32_t *out) {
    uint32_t mask = r->flow_count - 1, hash[64], seq;
    uint32_t now_ms = ms32(onvm_now_ns());
    for (uint32_t base = 0; base < n; base += 64) {
        uint32_t m = n - base < 64 ? n - base : 64;
        for (uint32_t i = 0; i < m; i++) {
            hash[i] = onvm_flow_key_hash(&keys[base + i]);
            __builtin_prefetch(onvm_flow_at(r, hash[i] & mask));
        }
        for (uint32_t i = 0; i < m; i++) {
            long j = find(r, &keys[base + i], hash[i], &seq, NULL, now_ms);
            out[base + i] = j < 0 ? -1 : onvm_flow_at(r, (uint32_t)j)->chain;
        }
    }
}
