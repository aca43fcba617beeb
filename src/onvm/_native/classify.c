/* classify.c - the rule classifier: tuple space search over two swapped images.
 * See the theory of operation in onvm_flow.h.
 *
 * Readers (RX workers, and anyone asking what the rules say) use
 * onvm_cls_lookup() and onvm_cls_still_current(): they never wait and never
 * write, and everything they read from the region is bounds-checked against
 * what this process recorded when it created or attached the region, since
 * any NF can write the region.
 *
 * The writer is the manager (onvm_cls_apply): it keeps a private copy of the
 * rules, the member lists of every group and each tuple's priorities, works
 * out which groups a change touches, and writes those into one image, swaps,
 * and writes them into the other.  An image whose table grew too full or too
 * holed is rebuilt whole, off the packet path, the same way.
 */
#define _GNU_SOURCE
#include "onvm_flow.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#define MIN_SLOTS 1024u
#define SLOT_CHUNK 4096u /* rule slots made resident at a time */

/* ---- layout -------------------------------------------------------------------- */

static uint32_t max_slots_for(uint32_t max_rules) {
    uint64_t want = (uint64_t)max_rules * 4; /* two groups per rule on average, half full */
    uint32_t s = MIN_SLOTS;
    while (s < want && s < (1u << 30))
        s <<= 1;
    return s;
}

#define ALIGN_PAGE(x) (((x) + 4095u) & ~(uint64_t)4095u)

/* ctl | tuples | image 0 | image 1 | rules | hits | groups 0, tags 0 | groups 1, tags 1 (offsets
 * relative to ctl).  An image's tags follow its groups: one 16-bit tag per group entry. */
struct cls_layout {
    uint64_t tuples, images[2], rules, hits, groups[2], total, eager;
};

static struct cls_layout layout_of(uint32_t max_rules) {
    struct cls_layout l;
    uint64_t off = ALIGN_PAGE(sizeof(struct onvm_cls_ctl));
    l.tuples = off;
    off = ALIGN_PAGE(off + sizeof(struct onvm_tuple) * ONVM_TUPLES_MAX);
    for (int i = 0; i < 2; i++) {
        l.images[i] = off;
        off = ALIGN_PAGE(off + sizeof(struct onvm_cls_image));
    }
    l.eager = off; /* what is written at creation; the rest becomes resident as it is used */
    l.rules = off;
    off = ALIGN_PAGE(off + sizeof(struct onvm_rule) * (uint64_t)max_rules);
    l.hits = off;
    off = ALIGN_PAGE(off + sizeof(uint64_t) * (uint64_t)max_rules);
    for (int i = 0; i < 2; i++) {
        l.groups[i] = off;
        off = ALIGN_PAGE(off + (sizeof(struct onvm_cls_group) + sizeof(uint16_t)) * (uint64_t)max_slots_for(max_rules));
    }
    l.total = off;
    return l;
}

uint64_t onvm_cls_bytes(uint32_t max_rules) { return layout_of(max_rules).total; }

uint64_t onvm_cls_eager_bytes(uint32_t max_rules) { return layout_of(max_rules).eager; }

static void bind_private(struct onvm_region *r, uint64_t off, uint32_t max_rules) {
    struct cls_layout l = layout_of(max_rules);
    r->cls_ctl = off;
    r->cls_tuples = off + l.tuples;
    r->cls_images[0] = off + l.images[0];
    r->cls_images[1] = off + l.images[1];
    r->cls_rules = off + l.rules;
    r->cls_hits = off + l.hits;
    r->cls_groups[0] = off + l.groups[0];
    r->cls_groups[1] = off + l.groups[1];
    r->cls_max_rules = max_rules;
    r->cls_max_slots = max_slots_for(max_rules);
}

void onvm_cls_init(struct onvm_region *r, uint64_t off, uint32_t max_rules) {
    bind_private(r, off, max_rules);
    struct onvm_cls_ctl *c = (struct onvm_cls_ctl *)(r->base + off);
    c->default_idle_ms = ONVM_DEFAULT_IDLE_MS;
    c->max_rules = max_rules;
    c->max_slots = r->cls_max_slots;
    c->off_tuples = r->cls_tuples;
    c->off_rules = r->cls_rules;
    c->off_hits = r->cls_hits;
    for (int i = 0; i < 2; i++) {
        c->off_images[i] = r->cls_images[i];
        c->off_groups[i] = r->cls_groups[i];
    }
}

int onvm_cls_bind(struct onvm_region *r) {
    struct onvm_header *h = r->hdr;
    uint32_t max_rules = h->max_rules;
    if (!h->off_cls || max_rules == 0 || max_rules > ONVM_RULES_LIMIT ||
        h->off_cls + onvm_cls_bytes(max_rules) > r->size)
        return -EPROTO;
    bind_private(r, h->off_cls, max_rules);
    return 0;
}

static inline struct onvm_cls_image *image(const struct onvm_region *r, unsigned i) {
    return (struct onvm_cls_image *)(r->base + r->cls_images[i & 1]);
}
static inline struct onvm_cls_group *groups(const struct onvm_region *r, unsigned i) {
    return (struct onvm_cls_group *)(r->base + r->cls_groups[i & 1]);
}
/* Image i's tags, after its max_slots group entries. */
static inline uint16_t *tags(const struct onvm_region *r, unsigned i) {
    return (uint16_t *)(r->base + r->cls_groups[i & 1] + (uint64_t)r->cls_max_slots * sizeof(struct onvm_cls_group));
}
static inline struct onvm_tuple *tuples(const struct onvm_region *r) {
    return (struct onvm_tuple *)(r->base + r->cls_tuples);
}

/* ---- matching ------------------------------------------------------------------ */

static inline void widen(const struct onvm_flow_key *k, struct onvm_cls_key *out) {
    static_assert(offsetof(struct onvm_flow_key, vlan) == 40, "the VLAN is the key's sixth word");
    memcpy(out->w, k, 40); /* whole words: no byte stores for the masking to wait on */
    out->w[5] = k->vlan;
}

/* Each word through its own odd multiplier (the six products do not wait for
 * each other), summed with the tuple's, then mixed whole (murmur3's finalizer):
 * a tuple costs a few cycles, not a chain of six dependent rounds. */
static inline uint64_t cls_hash(const struct onvm_cls_key *k, uint32_t tuple) {
    uint64_t h = (k->w[0] + 0x9e3779b97f4a7c15ull) * 0xbf58476d1ce4e5b9ull +
                 (k->w[1] + 0x94d049bb133111ebull) * 0xd6e8feb86659fd93ull +
                 (k->w[2] + 0xff51afd7ed558ccdull) * 0xc4ceb9fe1a85ec53ull +
                 (k->w[3] + 0x2545f4914f6cdd1dull) * 0x9e3779b97f4a7c15ull +
                 (k->w[4] + 0xbf58476d1ce4e5b9ull) * 0x94d049bb133111ebull +
                 (k->w[5] + 0xd6e8feb86659fd93ull) * 0xff51afd7ed558ccdull + (uint64_t)tuple * 0x2545f4914f6cdd1dull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ (h >> 33);
}

/* A group entry's tag: 0 empty, 1 deleted, else 16 bits of its hash (never 0 or 1). */
#define TAG_EMPTY 0u
#define TAG_TOMB 1u
static inline uint16_t tag_of(uint64_t h) {
    uint16_t t = (uint16_t)(h >> 48);
    return t > TAG_TOMB ? t : (uint16_t)(t + 2);
}

static inline int cls_key_eq(const struct onvm_cls_key *a, const struct onvm_cls_key *b) {
    return ((a->w[0] ^ b->w[0]) | (a->w[1] ^ b->w[1]) | (a->w[2] ^ b->w[2]) | (a->w[3] ^ b->w[3]) |
            (a->w[4] ^ b->w[4]) | (a->w[5] ^ b->w[5])) == 0;
}

int onvm_rule_matches(const struct onvm_rule *u, const struct onvm_flow_key *k) {
    if (u->in_port != ONVM_ANY16 && u->in_port != k->in_port)
        return 0;
    if (u->vlan != ONVM_ANY16 && (unsigned)u->vlan + 1u != k->vlan)
        return 0;
    if (u->ipver && u->ipver != k->ipver)
        return 0;
    if (u->proto && u->proto != k->proto)
        return 0;
    unsigned bits = k->ipver == 4 ? 32 : 128;
    if (u->src_len && (u->src_len > bits || !onvm_prefix_match(k->src, u->src, u->src_len)))
        return 0;
    if (u->dst_len && (u->dst_len > bits || !onvm_prefix_match(k->dst, u->dst, u->dst_len)))
        return 0;
    return k->sport >= u->sport_lo && k->sport <= u->sport_hi && k->dport >= u->dport_lo &&
           k->dport <= u->dport_hi;
}

/* ---- readers ------------------------------------------------------------------- */

#define LOOKUP_TRIES 64
#define LOOKUP_BATCH 8 /* tuples whose first probes are in flight together */

int onvm_cls_lookup(struct onvm_region *r, const struct onvm_flow_key *key, struct onvm_cls_result *out) {
    struct onvm_cls_ctl *c = onvm_cls(r);
    const struct onvm_tuple *tt = tuples(r);
    struct onvm_cls_key k;
    widen(key, &k);
    for (int tries = 0; tries < LOOKUP_TRIES; tries++) {
        /* Acquire pairs with the writer's release of gen: the image it names is whole. */
        uint32_t g = atomic_load_explicit(&c->gen, ONVM_ACQUIRE);
        const struct onvm_cls_image *im = image(r, g);
        const struct onvm_cls_group *gt = groups(r, g);
        const uint16_t *tg = tags(r, g);
        uint32_t v = im->version, n = im->ntuples, slots = im->slots, maxp = im->max_probe;
        if (n > ONVM_TUPLES_MAX || slots > r->cls_max_slots || (slots & (slots - 1)) || !slots)
            n = 0; /* torn (we will look again) or written by someone hostile */
        if (maxp >= slots)
            maxp = slots - 1;
        const struct onvm_cls_group *best = NULL;
        int32_t bp = 0;
        uint32_t bid = 0, brule = 0;
        /* Tuples in batches: hash a batch and prefetch its first probes, then
         * probe them in order, so the cache misses of a batch overlap.  A probe
         * reads the tags (two bytes an entry, so they stay in the cache) and
         * reads an entry only when its tag is the key's: a tuple that holds no
         * group for the key costs one tag line, not a group entry. */
        for (uint32_t base = 0; base < n; base += LOOKUP_BATCH) {
            uint32_t m = n - base < LOOKUP_BATCH ? n - base : LOOKUP_BATCH;
            struct onvm_cls_key mk[LOOKUP_BATCH];
            uint64_t hh[LOOKUP_BATCH];
            uint16_t want[LOOKUP_BATCH];
            struct onvm_cls_order ob[LOOKUP_BATCH];
            for (uint32_t i = 0; i < m; i++) {
                struct onvm_cls_order o = ob[i] = im->order[base + i];
                hh[i] = UINT64_MAX;
                if (o.tuple >= ONVM_TUPLES_MAX)
                    continue;
                const struct onvm_tuple *t = &tt[o.tuple];
                if (t->ipver && t->ipver != key->ipver)
                    continue;
                for (int w = 0; w < 6; w++)
                    mk[i].w[w] = k.w[w] & t->mask.w[w];
                uint64_t h = cls_hash(&mk[i], o.tuple);
                hh[i] = h & (slots - 1);
                want[i] = tag_of(h);
                __builtin_prefetch(&tg[hh[i]]);
            }
            for (uint32_t i = 0; i < m; i++) {
                if (best && bp > ob[i].max_priority) {
                    base = n; /* no rule of this tuple or those after it can win */
                    break;
                }
                if (hh[i] == UINT64_MAX)
                    continue;
                for (uint32_t p = 0; p <= maxp; p++) {
                    uint64_t j = (hh[i] + p) & (slots - 1);
                    uint16_t t = tg[j];
                    if (t == TAG_EMPTY)
                        break;
                    if (t != want[i])
                        continue;
                    const struct onvm_cls_group *e = &gt[j];
                    if (e->tuple == ob[i].tuple + 1 && cls_key_eq(&e->key, &mk[i])) {
                        if (!best || e->priority > bp || (e->priority == bp && e->id < bid)) {
                            best = e;
                            bp = e->priority;
                            bid = e->id;
                            brule = e->rule;
                        }
                        break;
                    }
                }
            }
        }
        out->slot = -1;
        if (best && brule < r->cls_max_rules) {
            /* Read inside the check: the slot is this rule's until both images forget it. */
            const struct onvm_rule *u = onvm_rule_at(r, brule);
            out->slot = brule;
            out->chain = u->chain;
            out->idle_ms = u->idle_ms;
            out->hard_ms = u->hard_ms;
        }
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&c->gen, ONVM_RELAXED) == g) {
            out->version = v;
            return 0;
        }
    }
    return -EAGAIN;
}

int onvm_cls_still_current(struct onvm_region *r, const struct onvm_flow_key *key, unsigned origin,
                           uint32_t rule, uint32_t from) {
    struct onvm_cls_ctl *c = onvm_cls(r);
    /* Acquire pairs with the writer's release of log_head: the records below it are written. */
    uint64_t head = atomic_load_explicit(&c->log_head, ONVM_ACQUIRE);
    uint64_t lo = head > ONVM_CLS_LOG ? head - ONVM_CLS_LOG : 0, j = head;
    const struct onvm_rule *own = NULL;
    int reached = 0;
    while (j > lo) {
        j--;
        uint64_t rec = atomic_load_explicit(&c->log[j % ONVM_CLS_LOG], ONVM_RELAXED);
        if ((int32_t)((uint32_t)(rec >> 32) - from) <= 0) {
            reached = 1; /* this record and all before it were seen by the entry */
            break;
        }
        unsigned kind = (unsigned)(rec >> 30) & 3;
        uint32_t val = (uint32_t)rec & 0x3fffffffu;
        if (kind == ONVM_CLS_DEL) {
            if (origin == ONVM_FLOW_BY_RULE && rule == val + 1)
                return 0;
        } else if (kind == ONVM_CLS_PORT) {
            if (origin == ONVM_FLOW_BY_DEFAULT && key->in_port == val)
                return 0;
        } else if (kind == ONVM_CLS_ADD && val < r->cls_max_rules) {
            const struct onvm_rule *u = onvm_rule_at(r, val);
            if (!onvm_rule_matches(u, key))
                continue;
            if (origin != ONVM_FLOW_BY_RULE)
                return 0; /* any matching rule beats the default */
            if (!own) {
                if (rule == 0 || rule > r->cls_max_rules)
                    return 0;
                own = onvm_rule_at(r, rule - 1);
            }
            /* If own's slot was reused, a DEL record for it is in the window too. */
            if (u->priority > own->priority || (u->priority == own->priority && u->id < own->id))
                return 0;
        } else {
            return 0; /* ONVM_CLS_ALL, or a record we cannot read */
        }
    }
    if (!reached && lo > 0)
        return 0; /* the log wrapped since the entry's version */
    /* Acquire: if the head moved past a record we read, that record may be a newer one. */
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&c->log_head, ONVM_RELAXED) <= j + ONVM_CLS_LOG;
}

/* ---- the writer's private state --------------------------------------------------- */

struct member {
    int32_t priority;
    uint32_t id;
    uint32_t slot;
};

struct wgroup {
    struct onvm_cls_key key;
    uint32_t tuple; /* UINT32_MAX: free record */
    uint32_t n, cap;
    uint32_t dirty; /* 1 + its index in the batch's change list */
    struct member *m; /* best first */
};

struct prio_count {
    int32_t priority;
    uint32_t count;
};

struct wtuple {
    uint64_t code;
    uint32_t in_use;
    uint32_t groups; /* groups using it (the deleted ones until both images forgot them) */
    uint32_t members;
    uint32_t nprio, capprio;
    struct prio_count *prio; /* ascending: the last is the tuple's best priority */
};

#define GI_EMPTY 0u
#define GI_TOMB 0xffffffffu

struct onvm_cls_writer {
    pthread_mutex_t lock;
    struct onvm_rule *rules; /* private copies, by slot */
    uint8_t *used;
    uint32_t cap_slots;  /* private arrays' length */
    uint32_t next_slot;  /* slots below were handed out at least once */
    uint32_t resident;   /* slots whose shared record and hit counter are resident */
    uint32_t *free_slots, nfree;
    uint32_t nrules;
    struct wgroup *g;
    uint32_t ng, capg, gfree; /* records; free list through ->n of free records */
    uint32_t live_groups;
    uint32_t *gi; /* hash index: group record + 1, GI_EMPTY, GI_TOMB */
    uint32_t gi_mask, gi_used, gi_tombs;
    struct wtuple t[ONVM_TUPLES_MAX];
    uint32_t ntuples;
    uint32_t *changed, nchanged, capchanged;
    uint32_t tombs[2];       /* deleted entries in each image's table */
    uint32_t resident_slots; /* group table entries resident per image */
    uint32_t rebuilds;
    struct onvm_cls_order order[ONVM_TUPLES_MAX];
    uint16_t tmap[2 * ONVM_TUPLES_MAX];      /* tuple code -> tuple + 1, open addressing */
    uint64_t new_codes[2 * ONVM_TUPLES_MAX]; /* a batch's new tuples, counted once each */
    uint8_t new_used[2 * ONVM_TUPLES_MAX];
};

static int wfail(struct onvm_region *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int wfail(struct onvm_region *r, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof r->errmsg, fmt, ap);
    va_end(ap);
    return -err;
}

static struct onvm_cls_writer *writer(struct onvm_region *r) {
    if (r->clsw)
        return r->clsw;
    struct onvm_cls_writer *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    pthread_mutex_init(&w->lock, NULL);
    w->gi_mask = 1023;
    w->gi = calloc(w->gi_mask + 1, sizeof *w->gi);
    if (!w->gi) {
        free(w);
        return NULL;
    }
    for (unsigned i = 0; i < 2; i++)
        image(r, i)->slots = 0;
    r->clsw = w;
    return w;
}

void onvm_cls_writer_free(struct onvm_region *r) {
    struct onvm_cls_writer *w = r->clsw;
    if (!w)
        return;
    for (uint32_t i = 0; i < w->ng; i++)
        free(w->g[i].m);
    for (uint32_t i = 0; i < ONVM_TUPLES_MAX; i++)
        free(w->t[i].prio);
    free(w->g);
    free(w->gi);
    free(w->rules);
    free(w->used);
    free(w->free_slots);
    free(w->changed);
    pthread_mutex_destroy(&w->lock);
    free(w);
    r->clsw = NULL;
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t size) {
    if (need <= *cap)
        return 0;
    uint32_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, (size_t)n * size);
    if (!q)
        return -ENOMEM;
    memset((uint8_t *)q + (size_t)*cap * size, 0, (size_t)(n - *cap) * size);
    *p = q;
    *cap = n;
    return 0;
}

/* The private per-slot arrays, grown to n slots together. */
static int grow_slots(struct onvm_cls_writer *w, uint32_t n) {
    if (n <= w->cap_slots)
        return 0;
    struct onvm_rule *rules = realloc(w->rules, (size_t)n * sizeof *rules);
    if (rules)
        w->rules = rules;
    uint8_t *used = realloc(w->used, n);
    if (used)
        w->used = used;
    uint32_t *fs = realloc(w->free_slots, (size_t)n * sizeof *fs);
    if (fs)
        w->free_slots = fs;
    if (!rules || !used || !fs)
        return -ENOMEM;
    memset(used + w->cap_slots, 0, n - w->cap_slots);
    w->cap_slots = n;
    return 0;
}

/* ---- a rule's groups ------------------------------------------------------------- */

/* The prefixes covering [lo, hi] of a 16-bit field (at most 30). */
static unsigned range_prefixes(unsigned lo, unsigned hi, uint16_t *val, uint8_t *len) {
    unsigned n = 0;
    while (lo <= hi) {
        unsigned size = 1, bits = 0;
        while (bits < 16 && (lo & (size * 2 - 1)) == 0 && lo + size * 2 - 1 <= hi) {
            size *= 2;
            bits++;
        }
        val[n] = (uint16_t)lo;
        len[n] = (uint8_t)(16 - bits);
        n++;
        lo += size;
    }
    return n;
}

static void prefix_mask(uint8_t *m, unsigned len) {
    memset(m, 0, 16);
    for (unsigned i = 0; i < len / 8; i++)
        m[i] = 0xff;
    if (len % 8)
        m[len / 8] = (uint8_t)(0xff << (8 - len % 8));
}

/* The tuple and masked key of rule u for one sport and one dport prefix. */
static uint64_t tuple_of(const struct onvm_rule *u, uint16_t sp, uint8_t splen, uint16_t dp, uint8_t dplen,
                         struct onvm_tuple *t, struct onvm_cls_key *key) {
    struct onvm_flow_key m, v;
    memset(&m, 0, sizeof m);
    memset(&v, 0, sizeof v);
    unsigned src_len = u->ipver ? u->src_len : 0, dst_len = u->ipver ? u->dst_len : 0;
    prefix_mask(m.src, src_len);
    prefix_mask(m.dst, dst_len);
    memcpy(v.src, u->src, 16);
    memcpy(v.dst, u->dst, 16);
    m.sport = (uint16_t)(splen ? 0xffffu << (16 - splen) : 0);
    m.dport = (uint16_t)(dplen ? 0xffffu << (16 - dplen) : 0);
    v.sport = sp;
    v.dport = dp;
    m.in_port = u->in_port != ONVM_ANY16 ? 0xffff : 0;
    v.in_port = u->in_port;
    m.proto = u->proto ? 0xff : 0;
    v.proto = u->proto;
    m.ipver = u->ipver ? 0xff : 0;
    v.ipver = u->ipver;
    m.vlan = u->vlan != ONVM_ANY16 ? 0xffff : 0;
    v.vlan = (uint16_t)(u->vlan + 1u);
    memset(t, 0, sizeof *t);
    widen(&m, &t->mask);
    t->ipver = u->ipver;
    widen(&v, key);
    for (int w = 0; w < 6; w++)
        key->w[w] &= t->mask.w[w];
    return (uint64_t)(u->ipver == 4 ? 1 : u->ipver == 6 ? 2 : 0) | (uint64_t)src_len << 2 |
           (uint64_t)dst_len << 10 | (uint64_t)splen << 18 | (uint64_t)dplen << 23 |
           (uint64_t)(m.proto != 0) << 28 | (uint64_t)(m.in_port != 0) << 29 | (uint64_t)(m.vlan != 0) << 30;
}

struct expansion {
    uint16_t sv[32], dv[32];
    uint8_t sl[32], dl[32];
    unsigned ns, nd;
};

static unsigned expand(const struct onvm_rule *u, struct expansion *x) {
    x->ns = range_prefixes(u->sport_lo, u->sport_hi, x->sv, x->sl);
    x->nd = range_prefixes(u->dport_lo, u->dport_hi, x->dv, x->dl);
    return x->ns * x->nd;
}

/* ---- private maps ---------------------------------------------------------------- */

#define TMAP_SLOTS (2 * ONVM_TUPLES_MAX)

static inline uint32_t tmap_home(uint64_t code) { return (uint32_t)(code * 0x9e3779b97f4a7c15ull >> 40) & (TMAP_SLOTS - 1); }

static int tuple_find(struct onvm_cls_writer *w, uint64_t code) {
    for (uint32_t h = tmap_home(code);; h = (h + 1) & (TMAP_SLOTS - 1)) {
        uint16_t v = w->tmap[h];
        if (!v)
            return -1;
        if (w->t[v - 1].code == code)
            return v - 1;
    }
}

static void tmap_put(struct onvm_cls_writer *w, uint64_t code, uint32_t id) {
    uint32_t h = tmap_home(code);
    while (w->tmap[h])
        h = (h + 1) & (TMAP_SLOTS - 1);
    w->tmap[h] = (uint16_t)(id + 1);
}

static int gi_rehash(struct onvm_cls_writer *w, uint32_t mask) {
    uint32_t *gi = calloc((size_t)mask + 1, sizeof *gi);
    if (!gi)
        return -ENOMEM;
    for (uint32_t i = 0; i < w->ng; i++) {
        if (w->g[i].tuple == UINT32_MAX)
            continue;
        uint64_t h = cls_hash(&w->g[i].key, w->g[i].tuple);
        for (uint32_t p = 0;; p++) {
            uint32_t *s = &gi[(h + p) & mask];
            if (*s == GI_EMPTY) {
                *s = i + 1;
                break;
            }
        }
    }
    free(w->gi);
    w->gi = gi;
    w->gi_mask = mask;
    w->gi_used = w->live_groups;
    w->gi_tombs = 0;
    return 0;
}

/* The group record of (tuple, key): its index, or -1; *where gets the index slot to insert at. */
static long group_find(struct onvm_cls_writer *w, uint32_t tuple, const struct onvm_cls_key *key, uint32_t **where) {
    uint64_t h = cls_hash(key, tuple);
    uint32_t *tomb = NULL;
    for (uint32_t p = 0;; p++) {
        uint32_t *s = &w->gi[(h + p) & w->gi_mask];
        if (*s == GI_EMPTY) {
            if (where)
                *where = tomb ? tomb : s;
            return -1;
        }
        if (*s == GI_TOMB) {
            if (!tomb)
                tomb = s;
            continue;
        }
        struct wgroup *g = &w->g[*s - 1];
        if (g->tuple == tuple && cls_key_eq(&g->key, key)) {
            if (where)
                *where = s;
            return (long)(*s - 1);
        }
    }
}

static int mark_changed(struct onvm_cls_writer *w, uint32_t gidx) {
    if (w->g[gidx].dirty)
        return 0;
    if (grow((void **)&w->changed, &w->capchanged, w->nchanged + 1, sizeof *w->changed) < 0)
        return -ENOMEM;
    w->changed[w->nchanged++] = gidx;
    w->g[gidx].dirty = w->nchanged;
    return 0;
}

static int prio_add(struct wtuple *t, int32_t p, int delta) {
    uint32_t lo = 0, hi = t->nprio;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (t->prio[mid].priority < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->nprio && t->prio[lo].priority == p) {
        if (delta < 0 && --t->prio[lo].count == 0) {
            memmove(&t->prio[lo], &t->prio[lo + 1], (t->nprio - lo - 1) * sizeof *t->prio);
            t->nprio--;
        } else if (delta > 0) {
            t->prio[lo].count++;
        }
        return 0;
    }
    if (delta < 0)
        return 0;
    if (grow((void **)&t->prio, &t->capprio, t->nprio + 1, sizeof *t->prio) < 0)
        return -ENOMEM;
    memmove(&t->prio[lo + 1], &t->prio[lo], (t->nprio - lo) * sizeof *t->prio);
    t->prio[lo] = (struct prio_count){p, 1};
    t->nprio++;
    return 0;
}

static inline int beats(int32_t pa, uint32_t ida, int32_t pb, uint32_t idb) {
    return pa > pb || (pa == pb && ida < idb);
}

/* Add (or with remove, take out) rule `slot` to group (tuple, key). */
static int member_add(struct onvm_region *r, struct onvm_cls_writer *w, uint32_t tuple, const struct onvm_cls_key *key,
                      const struct onvm_rule *u, uint32_t slot) {
    (void)r;
    uint32_t *where;
    long gi = group_find(w, tuple, key, &where);
    if (gi < 0) {
        uint32_t idx;
        if (w->gfree) {
            idx = w->gfree - 1;
            w->gfree = w->g[idx].n;
        } else {
            if (grow((void **)&w->g, &w->capg, w->ng + 1, sizeof *w->g) < 0)
                return -ENOMEM;
            idx = w->ng++;
        }
        struct wgroup *g = &w->g[idx];
        memset(g, 0, sizeof *g);
        g->key = *key;
        g->tuple = tuple;
        if (*where == GI_TOMB)
            w->gi_tombs--;
        else
            w->gi_used++;
        *where = idx + 1;
        w->live_groups++;
        w->t[tuple].groups++;
        gi = idx;
    }
    struct wgroup *g = &w->g[gi];
    if (grow((void **)&g->m, &g->cap, g->n + 1, sizeof *g->m) < 0)
        return -ENOMEM;
    uint32_t pos = g->n;
    while (pos > 0 && beats(u->priority, u->id, g->m[pos - 1].priority, g->m[pos - 1].id))
        pos--;
    memmove(&g->m[pos + 1], &g->m[pos], (g->n - pos) * sizeof *g->m);
    g->m[pos] = (struct member){u->priority, u->id, slot};
    g->n++;
    w->t[tuple].members++;
    if (prio_add(&w->t[tuple], u->priority, 1) < 0)
        return -ENOMEM;
    return pos == 0 ? mark_changed(w, (uint32_t)gi) : 0;
}

static int member_remove(struct onvm_cls_writer *w, uint32_t tuple, const struct onvm_cls_key *key,
                         const struct onvm_rule *u, uint32_t slot) {
    uint32_t *where;
    long gi = group_find(w, tuple, key, &where);
    if (gi < 0)
        return 0;
    struct wgroup *g = &w->g[gi];
    uint32_t pos = 0;
    while (pos < g->n && g->m[pos].slot != slot)
        pos++;
    if (pos == g->n)
        return 0;
    memmove(&g->m[pos], &g->m[pos + 1], (g->n - pos - 1) * sizeof *g->m);
    g->n--;
    w->t[tuple].members--;
    prio_add(&w->t[tuple], u->priority, -1);
    if (pos == 0 && mark_changed(w, (uint32_t)gi) < 0)
        return -ENOMEM;
    if (g->n == 0) { /* the record stays until the change is written (it says "delete") */
        *where = GI_TOMB;
        w->gi_tombs++;
        w->live_groups--;
    }
    return 0;
}

/* ---- images ---------------------------------------------------------------------- */

/* Make [off, off+len) of the region resident: an out-of-memory file system fails
 * here, not later with SIGBUS in a thread that touches the page. */
static int make_resident(struct onvm_region *r, uint64_t off, uint64_t len) {
    if (!len || r->fd < 0)
        return 0;
    if (fallocate(r->fd, 0, (off_t)off, (off_t)len) != 0 && errno != EOPNOTSUPP)
        return -errno;
    return 0;
}

static int order_cmp(const void *a, const void *b) {
    const struct onvm_cls_order *x = a, *y = b;
    if (x->max_priority != y->max_priority)
        return x->max_priority > y->max_priority ? -1 : 1;
    return x->tuple < y->tuple ? -1 : x->tuple > y->tuple;
}

static uint32_t build_order(struct onvm_cls_writer *w, struct onvm_cls_order *order) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < ONVM_TUPLES_MAX; i++)
        if (w->t[i].groups && w->t[i].nprio)
            order[n++] = (struct onvm_cls_order){i, w->t[i].prio[w->t[i].nprio - 1].priority};
    qsort(order, n, sizeof *order, order_cmp);
    return n;
}

static void write_entry(struct onvm_cls_group *e, uint16_t *tag, const struct wgroup *g, uint64_t h) {
    *tag = tag_of(h);
    e->key = g->key;
    e->rule = g->m[0].slot;
    e->priority = g->m[0].priority;
    e->id = g->m[0].id;
    e->tuple = g->tuple + 1;
}

/* Write every group into image i afresh (it is not in use). */
static void rebuild(struct onvm_region *r, struct onvm_cls_writer *w, unsigned i, uint32_t slots) {
    struct onvm_cls_group *gt = groups(r, i);
    uint16_t *tg = tags(r, i);
    uint32_t maxp = 0;
    memset(gt, 0, (size_t)slots * sizeof *gt);
    memset(tg, 0, (size_t)slots * sizeof *tg);
    for (uint32_t k = 0; k < w->ng; k++) {
        struct wgroup *g = &w->g[k];
        if (g->tuple == UINT32_MAX || g->n == 0)
            continue;
        uint64_t h = cls_hash(&g->key, g->tuple);
        for (uint32_t p = 0; p < slots; p++) {
            uint64_t j = (h + p) & (slots - 1);
            if (gt[j].tuple == 0) {
                write_entry(&gt[j], &tg[j], g, h);
                if (p > maxp)
                    maxp = p;
                break;
            }
        }
    }
    image(r, i)->slots = slots;
    image(r, i)->max_probe = maxp;
    w->tombs[i & 1] = 0;
}

/* Write the changed groups into image i; -1 if one found no room within
 * ONVM_CLS_PROBE (the image is then rebuilt). */
static int update(struct onvm_region *r, struct onvm_cls_writer *w, unsigned i) {
    struct onvm_cls_image *im = image(r, i);
    struct onvm_cls_group *gt = groups(r, i);
    uint16_t *tg = tags(r, i);
    uint32_t mask = im->slots - 1;
    for (uint32_t k = 0; k < w->nchanged; k++) {
        struct wgroup *g = &w->g[w->changed[k]];
        uint64_t h = cls_hash(&g->key, g->tuple);
        long found = -1, room = -1;
        uint32_t room_p = 0;
        for (uint32_t p = 0; p <= im->max_probe || (room < 0 && p < ONVM_CLS_PROBE); p++) {
            long j = (long)((h + p) & mask);
            const struct onvm_cls_group *e = &gt[j];
            if (e->tuple == 0 || e->tuple == ONVM_CLS_TOMB) {
                if (room < 0) {
                    room = j;
                    room_p = p;
                }
                if (e->tuple == 0)
                    break;
                continue;
            }
            if (e->tuple == g->tuple + 1 && cls_key_eq(&e->key, &g->key)) {
                found = j;
                break;
            }
        }
        if (g->n == 0) {
            if (found >= 0) {
                gt[found].tuple = ONVM_CLS_TOMB;
                tg[found] = TAG_TOMB;
                w->tombs[i & 1]++;
            }
        } else if (found >= 0) {
            write_entry(&gt[found], &tg[found], g, h);
        } else if (room >= 0) {
            if (gt[room].tuple == ONVM_CLS_TOMB)
                w->tombs[i & 1]--;
            write_entry(&gt[room], &tg[room], g, h);
            if (room_p > im->max_probe)
                im->max_probe = room_p;
        } else {
            return -1;
        }
    }
    return 0;
}

/* Bring image i up to date for version v: the changed groups, or everything
 * afresh (rebuild_slots != 0, or when an update finds no room). */
static void refresh(struct onvm_region *r, struct onvm_cls_writer *w, unsigned i, uint32_t v,
                    const struct onvm_cls_order *order, uint32_t norder, uint32_t rebuild_slots) {
    struct onvm_cls_image *im = image(r, i);
    if (rebuild_slots || update(r, w, i) < 0) {
        rebuild(r, w, i, rebuild_slots ? rebuild_slots : im->slots);
        if (i == 0)
            w->rebuilds++;
    }
    memcpy(im->order, order, norder * sizeof *order);
    im->ntuples = norder;
    im->version = v;
}

/* ---- the change ------------------------------------------------------------------ */

static int check_rule(struct onvm_region *r, const struct onvm_rule *u, uint32_t i) {
    unsigned bits = u->ipver == 4 ? 32 : u->ipver == 6 ? 128 : 0;
    if (u->ipver != 0 && u->ipver != 4 && u->ipver != 6)
        return wfail(r, EINVAL, "rule %u: ipver %u is not 0, 4 or 6", i, u->ipver);
    if (u->src_len > bits || u->dst_len > bits)
        return wfail(r, EINVAL, "rule %u: a prefix longer than IPv%u addresses", i, u->ipver);
    if (u->sport_lo > u->sport_hi || u->dport_lo > u->dport_hi)
        return wfail(r, EINVAL, "rule %u: a port range with its bounds reversed", i);
    if (u->chain >= ONVM_MAX_CHAINS)
        return wfail(r, EINVAL, "rule %u: chain %u is out of range", i, u->chain);
    if ((u->idle_ms > ONVM_TIMEOUT_MAX_MS && u->idle_ms != ONVM_IDLE_DEFAULT) || u->hard_ms > ONVM_TIMEOUT_MAX_MS)
        return wfail(r, EINVAL, "rule %u: a timeout above %u ms", i, ONVM_TIMEOUT_MAX_MS);
    if (u->vlan != ONVM_ANY16 && u->vlan > 4095)
        return wfail(r, EINVAL, "rule %u: VLAN %u is out of range", i, u->vlan);
    return 0;
}

static void log_append(struct onvm_cls_ctl *c, uint64_t *head, uint32_t v, unsigned kind, uint32_t val) {
    /* Relaxed: the release store of log_head publishes the record. */
    atomic_store_explicit(&c->log[*head % ONVM_CLS_LOG], (uint64_t)v << 32 | (uint64_t)kind << 30 | val,
                          ONVM_RELAXED);
    (*head)++;
}

static int apply_locked(struct onvm_region *r, struct onvm_cls_writer *w, const uint32_t *dels, uint32_t ndel,
                        const struct onvm_rule *adds, uint32_t nadd, uint32_t *slots_out, const uint16_t *ports,
                        const uint16_t *chains, uint32_t nports) {
    struct onvm_cls_ctl *c = onvm_cls(r);
    /* ---- check everything before changing anything ---- */
    for (uint32_t i = 0; i < ndel; i++) {
        uint32_t d = dels[i];
        int bad = d >= w->next_slot ? 1 : w->used[d] == 1 ? 0 : w->used[d] + 1; /* 1: unused, 3: twice */
        if (!bad)
            w->used[d] = 2; /* seen in this change */
        if (bad || i + 1 == ndel)
            for (uint32_t j = 0; j < i + !bad; j++)
                w->used[dels[j]] = 1;
        if (bad)
            return wfail(r, bad == 3 ? EINVAL : ENOENT, bad == 3 ? "rule slot %u is removed twice"
                                                                 : "rule slot %u is not in use", d);
    }
    for (uint32_t i = 0; i < nports; i++)
        if (ports[i] >= ONVM_MAX_PORTS || chains[i] >= ONVM_MAX_CHAINS)
            return wfail(r, EINVAL, "port %u or chain %u is out of range", ports[i], chains[i]);
    uint64_t expansions = 0;
    uint32_t new_tuples = 0;
    memset(w->new_used, 0, sizeof w->new_used);
    for (uint32_t i = 0; i < nadd; i++) {
        int rc = check_rule(r, &adds[i], i);
        if (rc < 0)
            return rc;
        struct expansion x;
        expansions += expand(&adds[i], &x);
        for (unsigned a = 0; a < x.ns; a++) {
            for (unsigned b = 0; b < x.nd; b++) {
                struct onvm_tuple t;
                struct onvm_cls_key k;
                uint64_t code = tuple_of(&adds[i], x.sv[a], x.sl[a], x.dv[b], x.dl[b], &t, &k);
                if (tuple_find(w, code) >= 0)
                    continue;
                uint32_t m = TMAP_SLOTS - 1, h = tmap_home(code);
                while (w->new_used[h] && w->new_codes[h] != code)
                    h = (h + 1) & m;
                if (!w->new_used[h]) {
                    if (w->ntuples + ++new_tuples > ONVM_TUPLES_MAX)
                        return wfail(r, ENOSPC, "the rules would need more than %d distinct masks (prefix "
                                     "lengths, port ranges as prefixes, fields matched)", ONVM_TUPLES_MAX);
                    w->new_used[h] = 1;
                    w->new_codes[h] = code;
                }
            }
        }
    }
    if ((uint64_t)w->nrules - ndel + nadd > r->cls_max_rules)
        return wfail(r, ENOSPC, "at most %u rules (%u in place); start the manager with a larger --max-rules",
                     r->cls_max_rules, w->nrules);
    uint64_t groups_after = w->live_groups + expansions;
    if (groups_after > r->cls_max_slots / 2)
        return wfail(r, ENOSPC, "the rules would need %llu classifier entries, more than the %u reserved; "
                     "start the manager with a larger --max-rules (port ranges count once per prefix)",
                     (unsigned long long)groups_after, r->cls_max_slots / 2);
    /* Room: rule slots, and each image's table sized for what it will hold. */
    uint32_t reuse = nadd < w->nfree ? nadd : w->nfree;
    uint32_t high = w->next_slot + (nadd - reuse);
    if (high > w->resident) {
        uint32_t want = (high + SLOT_CHUNK - 1) / SLOT_CHUNK * SLOT_CHUNK;
        if (want > r->cls_max_rules)
            want = r->cls_max_rules;
        int rc = make_resident(r, r->cls_rules + (uint64_t)w->resident * sizeof(struct onvm_rule),
                               (uint64_t)(want - w->resident) * sizeof(struct onvm_rule));
        if (rc == 0)
            rc = make_resident(r, r->cls_hits + (uint64_t)w->resident * 8, (uint64_t)(want - w->resident) * 8);
        if (rc < 0)
            return wfail(r, -rc, "cannot make room for rules in the region (file system full?)");
        if (grow_slots(w, want) < 0)
            return wfail(r, ENOMEM, "out of memory");
        w->resident = want;
    }
    uint32_t slots = image(r, atomic_load_explicit(&c->gen, ONVM_RELAXED))->slots, rebuild_slots = 0;
    uint32_t tombs = w->tombs[0] > w->tombs[1] ? w->tombs[0] : w->tombs[1];
    if (slots < MIN_SLOTS || groups_after > slots / 2 || tombs + groups_after > slots / 2 + slots / 4) {
        rebuild_slots = slots < MIN_SLOTS ? MIN_SLOTS : slots;
        while (groups_after > rebuild_slots / 4 && rebuild_slots < r->cls_max_slots)
            rebuild_slots *= 2;
    }
    if (rebuild_slots > w->resident_slots) {
        for (unsigned i = 0; i < 2; i++) {
            int rc = make_resident(r, r->cls_groups[i], (uint64_t)rebuild_slots * sizeof(struct onvm_cls_group));
            if (rc == 0)
                rc = make_resident(r, (uint64_t)((uint8_t *)tags(r, i) - r->base), (uint64_t)rebuild_slots * 2);
            if (rc < 0)
                return wfail(r, -rc, "cannot make room for the classifier in the region (file system full?)");
        }
        w->resident_slots = rebuild_slots;
    }
    if (w->gi_used + w->gi_tombs + expansions > (w->gi_mask + 1) / 2) {
        uint32_t mask = w->gi_mask;
        while ((uint64_t)w->live_groups + expansions > (mask + 1) / 4)
            mask = mask * 2 + 1;
        if (gi_rehash(w, mask) < 0)
            return wfail(r, ENOMEM, "out of memory");
    }

    /* ---- the private state ---- */
    int rc = 0;
    for (uint32_t i = 0; i < ndel && rc == 0; i++) {
        const struct onvm_rule *u = &w->rules[dels[i]];
        struct expansion x;
        expand(u, &x);
        for (unsigned a = 0; a < x.ns && rc == 0; a++) {
            for (unsigned b = 0; b < x.nd && rc == 0; b++) {
                struct onvm_tuple t;
                struct onvm_cls_key k;
                int ti = tuple_find(w, tuple_of(u, x.sv[a], x.sl[a], x.dv[b], x.dl[b], &t, &k));
                if (ti >= 0)
                    rc = member_remove(w, (uint32_t)ti, &k, u, dels[i]);
            }
        }
        w->used[dels[i]] = 0;
        w->nrules--;
    }
    for (uint32_t i = 0; i < nadd && rc == 0; i++) {
        const struct onvm_rule *u = &adds[i];
        uint32_t slot = w->nfree ? w->free_slots[--w->nfree] : w->next_slot++;
        slots_out[i] = slot;
        w->rules[slot] = *u;
        w->used[slot] = 1;
        w->nrules++;
        /* Nobody reads this slot now: both images forgot it before it was freed. */
        memcpy(onvm_rule_at(r, slot), u, sizeof *u);
        atomic_store_explicit(&onvm_rule_hits(r)[slot], 0, ONVM_RELAXED);
        struct expansion x;
        expand(u, &x);
        for (unsigned a = 0; a < x.ns && rc == 0; a++) {
            for (unsigned b = 0; b < x.nd && rc == 0; b++) {
                struct onvm_tuple t;
                struct onvm_cls_key k;
                uint64_t code = tuple_of(u, x.sv[a], x.sl[a], x.dv[b], x.dl[b], &t, &k);
                int ti = tuple_find(w, code);
                if (ti < 0) {
                    for (ti = 0; ti < ONVM_TUPLES_MAX && w->t[ti].in_use; ti++)
                        ;
                    w->t[ti].code = code;
                    w->t[ti].in_use = 1;
                    w->ntuples++;
                    tmap_put(w, code, (uint32_t)ti);
                    tuples(r)[ti] = t; /* not in any image's order yet */
                }
                rc = member_add(r, w, (uint32_t)ti, &k, u, slot);
            }
        }
    }
    if (rc < 0) /* out of memory half way: the private state is no longer trustworthy */
        return wfail(r, -rc, "out of memory while changing the rules; restart the manager");

    /* ---- the log, then the images ---- */
    uint32_t v = atomic_load_explicit(&c->version, ONVM_RELAXED) + 1;
    uint64_t head = atomic_load_explicit(&c->log_head, ONVM_RELAXED);
    if ((uint64_t)ndel + nadd + nports > ONVM_CLS_LOG) {
        log_append(c, &head, v, ONVM_CLS_ALL, 0);
    } else {
        for (uint32_t i = 0; i < ndel; i++)
            log_append(c, &head, v, ONVM_CLS_DEL, dels[i]);
        for (uint32_t i = 0; i < nadd; i++)
            log_append(c, &head, v, ONVM_CLS_ADD, slots_out[i]);
        for (uint32_t i = 0; i < nports; i++)
            log_append(c, &head, v, ONVM_CLS_PORT, ports[i]);
    }
    for (uint32_t i = 0; i < nports; i++) {
        c->port_chain[ports[i]] = chains[i];
        if (chains[i])
            c->ports_set |= 1u << ports[i];
        else
            c->ports_set &= ~(1u << ports[i]);
    }
    c->rules = w->nrules;
    /* Release: records before the head that names them. */
    atomic_store_explicit(&c->log_head, head, ONVM_RELEASE);

    uint32_t norder = build_order(w, w->order);
    uint32_t g = atomic_load_explicit(&c->gen, ONVM_RELAXED);
    refresh(r, w, g + 1, v, w->order, norder, rebuild_slots);
    /* Release pairs with readers' acquire of gen: the image they switch to is whole. */
    atomic_store_explicit(&c->gen, g + 1, ONVM_RELEASE);
    /* Release pairs with the RX path's acquire of version, read before gen. */
    atomic_store_explicit(&c->version, v, ONVM_RELEASE);
    refresh(r, w, g, v, w->order, norder, rebuild_slots);

    /* ---- both images forgot what went: free it ---- */
    for (uint32_t k = 0; k < w->nchanged; k++) {
        struct wgroup *gr = &w->g[w->changed[k]];
        gr->dirty = 0;
        if (gr->n == 0) {
            w->t[gr->tuple].groups--;
            gr->tuple = UINT32_MAX;
            free(gr->m);
            gr->m = NULL;
            gr->cap = 0;
            gr->n = w->gfree; /* free list link */
            w->gfree = (uint32_t)(gr - w->g) + 1;
        }
    }
    w->nchanged = 0;
    int freed = 0;
    for (uint32_t i = 0; i < ONVM_TUPLES_MAX; i++)
        if (w->t[i].in_use && !w->t[i].groups) {
            w->t[i].in_use = 0;
            w->ntuples--;
            freed = 1;
        }
    if (freed) {
        memset(w->tmap, 0, sizeof w->tmap);
        for (uint32_t i = 0; i < ONVM_TUPLES_MAX; i++)
            if (w->t[i].in_use)
                tmap_put(w, w->t[i].code, i);
    }
    for (uint32_t i = 0; i < ndel; i++)
        w->free_slots[w->nfree++] = dels[i];
    return 0;
}

int onvm_cls_apply(struct onvm_region *r, const uint32_t *dels, uint32_t ndel, const struct onvm_rule *adds,
                   uint32_t nadd, uint32_t *slots_out, const uint16_t *ports, const uint16_t *chains,
                   uint32_t nports) {
    if (!r->owner)
        return wfail(r, EPERM, "only the manager changes the rules");
    struct onvm_cls_writer *w = writer(r);
    if (!w)
        return wfail(r, ENOMEM, "out of memory");
    pthread_mutex_lock(&w->lock);
    int rc = apply_locked(r, w, dels, ndel, adds, nadd, slots_out, ports, chains, nports);
    int none = rc >= 0 && onvm_cls_empty(onvm_cls(r));
    pthread_mutex_unlock(&w->lock);
    /* Nothing left to classify by: every flow takes the default chain, and RX neither
     * caches that (flowtable.c) nor needs the results cached so far.  Removing them
     * gives RX back its path without lookups once no explicit entry is left. */
    if (none && atomic_load_explicit(&r->hdr->flows_used, ONVM_RELAXED) > 0)
        onvm_flow_flush(r, -1, 1);
    return rc;
}

void onvm_cls_stats(struct onvm_region *r, struct onvm_cls_stats *out) {
    memset(out, 0, sizeof *out);
    struct onvm_cls_ctl *c = onvm_cls(r);
    out->max_rules = r->cls_max_rules;
    out->version = atomic_load_explicit(&c->version, ONVM_RELAXED);
    out->rules = c->rules;
    struct onvm_cls_writer *w = r->clsw;
    if (!w) {
        out->tuples = image(r, atomic_load(&c->gen))->ntuples;
        return;
    }
    pthread_mutex_lock(&w->lock);
    out->rules = w->nrules;
    out->tuples = w->ntuples;
    out->groups = w->live_groups;
    out->slots = image(r, atomic_load(&c->gen))->slots;
    out->tombs = w->tombs[atomic_load(&c->gen) & 1];
    out->rebuilds = w->rebuilds;
    out->bytes = (uint64_t)w->resident_slots * (sizeof(struct onvm_cls_group) + sizeof(uint16_t)) * 2 +
                 (uint64_t)w->resident * (sizeof(struct onvm_rule) + 8);
    pthread_mutex_unlock(&w->lock);
}
