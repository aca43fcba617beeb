/* flowtable.c - exact-match flow table, wildcard rules and RX classification.
 * See the theory of operation in onvm_flow.h. */
#include "onvm_flow.h"
#include "onvm_parse.h"

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

int onvm_flow_key_of(const struct onvm_meta *m, const uint8_t *data, struct onvm_flow_key *key) {
    memset(key, 0, sizeof *key);
    key->in_port = m->in_port;
    key->vlan = (m->flags & ONVM_MF_VLAN) ? (uint16_t)(m->vlan + 1u) : 0;
    if (m->l3_type == ONVM_L3_IPV4) {
        const uint8_t *ip = data + m->l3_off;
        memcpy(key->src, ip + 12, 4);
        memcpy(key->dst, ip + 16, 4);
        key->ipver = 4;
    } else if (m->l3_type == ONVM_L3_IPV6) {
        const uint8_t *ip = data + m->l3_off;
        memcpy(key->src, ip + 8, 16);
        memcpy(key->dst, ip + 24, 16);
        key->ipver = 6;
    } else {
        return -1;
    }
    key->proto = m->l4_proto;
    if (m->l4_off && (m->l4_proto == 6 || m->l4_proto == 17) && !(m->flags & ONVM_MF_FRAG)) {
        key->sport = rd16(data + m->l4_off);
        key->dport = rd16(data + m->l4_off + 2);
    }
    return 0;
}

static uint32_t fold(const uint8_t *a, int ipver) {
    if (ipver == 4)
        return (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    uint32_t x = 0;
    for (int i = 0; i < 16; i += 4)
        x = x * 0x9e3779b1u ^ ((uint32_t)a[i] << 24 | (uint32_t)a[i + 1] << 16 | (uint32_t)a[i + 2] << 8 | a[i + 3]);
    return x;
}

/* The same symmetric hash for both directions of a flow, so a flow and its
 * reply sit near each other; the key itself stays directional. */
uint32_t onvm_flow_key_hash(const struct onvm_flow_key *k) {
    uint32_t h = onvm_flow_hash(fold(k->src, k->ipver), fold(k->dst, k->ipver), k->sport, k->dport, k->proto);
    return h ^ (uint32_t)k->in_port * 0x85ebca6bu ^ (uint32_t)k->vlan * 0xc2b2ae35u;
}

static inline int key_eq(const struct onvm_flow_key *a, const struct onvm_flow_key *b) {
    uint64_t x[5], y[5];
    memcpy(x, a, sizeof x);
    memcpy(y, b, sizeof y);
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0 &&
           a->vlan == b->vlan;
}

/* The 32-bit millisecond clock of deadlines: compared by signed difference,
 * so it may wrap (every 49 days) as long as no timeout exceeds 24 days. */
static inline uint32_t ms32(uint64_t ns) { return (uint32_t)(ns / 1000000ull); }

static inline int expired(const struct onvm_flow *f, uint64_t now) {
    return f->deadline_ms && (int32_t)(ms32(now) - f->deadline_ms) >= 0;
}

static uint32_t deadline(const struct onvm_flow_data *d, uint64_t now) {
    uint64_t when = 0;
    if (d->idle_ms)
        when = now + (uint64_t)d->idle_ms * 1000000ull;
    if (d->hard_ms) {
        uint64_t hard = d->created_ns + (uint64_t)d->hard_ms * 1000000ull;
        if (!when || hard < when)
            when = hard;
    }
    if (!when)
        return 0;
    uint32_t ms = ms32(when);
    return ms ? ms : 1;
}

static inline int stale(struct onvm_region *r, const struct onvm_flow *f) {
    if (!f->rule)
        return 0;
    unsigned i = f->rule - 1u;
    return i >= ONVM_MAX_RULES || onvm_rules(r)->rule[i].gen != f->rule_gen;
}

/* Find key's entry; returns its index or -1.  *seq gets the entry's sequence. */
static long find(struct onvm_region *r, const struct onvm_flow_key *key, uint32_t hash, uint32_t *seq) {
    struct onvm_flow *t = onvm_flows(r);
    uint32_t mask = r->flow_count - 1;
    for (uint32_t p = 0; p < ONVM_FLOW_PROBE; p++) {
        uint32_t i = (hash + p) & mask;
        struct onvm_flow *f = &t[i];
        for (int tries = 0; tries < 4; tries++) {
            /* Acquire pairs with the writer's release of the even sequence. */
            uint32_t s1 = atomic_load_explicit(&f->seq, ONVM_ACQUIRE);
            if (s1 & 1) {
                onvm_pause();
                continue;
            }
            uint32_t state = f->state;
            int match = state == ONVM_FLOW_VALID && f->hash == hash && key_eq(&f->key, key);
            atomic_thread_fence(memory_order_acquire);
            if (atomic_load_explicit(&f->seq, ONVM_RELAXED) != s1)
                continue;
            if (state == ONVM_FLOW_EMPTY)
                return -1;
            if (match) {
                *seq = s1;
                return (long)i;
            }
            break;
        }
    }
    return -1;
}

int onvm_flow_read(struct onvm_region *r, uint32_t i, struct onvm_flow_view *out) {
    struct onvm_flow *f = &onvm_flows(r)[i];
    for (int tries = 0; tries < 8; tries++) {
        uint32_t s1 = atomic_load_explicit(&f->seq, ONVM_ACQUIRE);
        if (s1 & 1)
            continue;
        memcpy((uint8_t *)&out->f + sizeof f->seq, (uint8_t *)f + sizeof f->seq, sizeof *f - sizeof f->seq);
        out->d = onvm_flow_data(r)[i];
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&f->seq, ONVM_RELAXED) == s1)
            return out->f.state == ONVM_FLOW_VALID ? 0 : -ENOENT;
    }
    return -EAGAIN;
}

int onvm_flow_get(struct onvm_region *r, const struct onvm_flow_key *key, uint64_t now, struct onvm_flow_view *out) {
    if (!r->flow_count)
        return -ENOENT;
    uint32_t seq;
    long i = find(r, key, onvm_flow_key_hash(key), &seq);
    if (i < 0)
        return -ENOENT;
    int rc = onvm_flow_read(r, (uint32_t)i, out);
    if (rc != 0)
        return rc;
    if (!key_eq(&out->f.key, key) || expired(&out->f, now) || stale(r, &out->f))
        return -ENOENT;
    return 0;
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

static void publish(struct onvm_flow *f, uint32_t seq) {
    /* Release publishes both parts of the entry to readers' acquire of seq. */
    atomic_store_explicit(&f->seq, seq + 1, ONVM_RELEASE);
}

static inline int live(struct onvm_region *r, const struct onvm_flow *f, uint64_t now) {
    return f->state == ONVM_FLOW_VALID && !expired(f, now) && !stale(r, f);
}

int onvm_flow_put(struct onvm_region *r, const struct onvm_flow_key *key, uint16_t chain, uint32_t idle_ms,
                  uint32_t hard_ms, uint8_t origin, uint16_t rule, uint32_t rule_gen, uint64_t now) {
    if (!r->flow_count)
        return -ENOSPC;
    struct onvm_flow *t = onvm_flows(r);
    struct onvm_flow_data *td = onvm_flow_data(r);
    uint32_t hash = onvm_flow_key_hash(key), mask = r->flow_count - 1, seq;
    long i = find(r, key, hash, &seq);
    int fresh = i < 0;
    for (int attempt = 0; attempt < 8; attempt++) {
        struct onvm_flow *f = NULL;
        if (i >= 0) {
            f = &t[i];
            if (!claim(f, &seq))
                f = NULL;
            else if (f->state != ONVM_FLOW_VALID || !key_eq(&f->key, key)) { /* changed under us */
                publish(f, seq);
                f = NULL;
                i = -1;
                fresh = 1;
            }
        }
        for (uint32_t p = 0; !f && p < ONVM_FLOW_PROBE; p++) {
            struct onvm_flow *c = &t[(hash + p) & mask];
            if (live(r, c, now))
                continue;
            if (!claim(c, &seq))
                continue;
            if (live(r, c, now)) {
                publish(c, seq);
                continue;
            }
            if (c->state == ONVM_FLOW_VALID) { /* reusing a dead entry: it leaves now */
                atomic_fetch_sub(&r->hdr->flows_used, 1);
                atomic_fetch_add(&r->hdr->flows_expired, 1);
            }
            f = c;
        }
        if (!f) {
            if (fresh)
                continue;
            break;
        }
        struct onvm_flow_data *d = &td[f - t];
        if (fresh) {
            f->key = *key;
            f->hash = hash;
            d->created_ns = now;
            d->packets = 0;
            d->bytes = 0;
            atomic_fetch_add(&r->hdr->flows_used, 1);
            atomic_fetch_add(&r->hdr->flows_installed, 1);
        }
        d->last_ns = now;
        d->idle_ms = idle_ms;
        d->hard_ms = hard_ms;
        f->deadline_ms = deadline(d, now);
        f->chain = chain;
        f->origin = origin;
        f->rule = rule;
        f->rule_gen = rule_gen;
        f->state = ONVM_FLOW_VALID;
        publish(f, seq);
        return (int)(f - t);
    }
    atomic_fetch_add(&r->hdr->flows_full, 1);
    return -ENOSPC;
}

static void remove_entry(struct onvm_region *r, struct onvm_flow *f, uint32_t seq) {
    f->state = ONVM_FLOW_DELETED;
    publish(f, seq);
    atomic_fetch_sub(&r->hdr->flows_used, 1);
}

int onvm_flow_del(struct onvm_region *r, const struct onvm_flow_key *key) {
    if (!r->flow_count)
        return -ENOENT;
    for (int attempt = 0; attempt < 8; attempt++) {
        uint32_t seq;
        long i = find(r, key, onvm_flow_key_hash(key), &seq);
        if (i < 0)
            return -ENOENT;
        struct onvm_flow *f = &onvm_flows(r)[i];
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
    struct onvm_flow *t = onvm_flows(r);
    uint32_t count = r->flow_count, removed = 0, seq;
    for (uint32_t k = 0; k < n && count; k++) {
        struct onvm_flow *f = &t[(start + k) & (count - 1)];
        if (f->state != ONVM_FLOW_VALID || !(expired(f, now) || stale(r, f)))
            continue;
        if (!claim(f, &seq))
            continue;
        if (f->state == ONVM_FLOW_VALID && (expired(f, now) || stale(r, f))) {
            remove_entry(r, f, seq);
            atomic_fetch_add(&r->hdr->flows_expired, 1);
            removed++;
        } else {
            publish(f, seq);
        }
    }
    return removed;
}

uint32_t onvm_flow_flush(struct onvm_region *r, int chain) {
    struct onvm_flow *t = onvm_flows(r);
    uint32_t removed = 0, seq;
    for (uint32_t i = 0; i < r->flow_count; i++) {
        struct onvm_flow *f = &t[i];
        if (f->state != ONVM_FLOW_VALID || (chain >= 0 && f->chain != chain))
            continue;
        if (!claim(f, &seq))
            continue;
        if (f->state == ONVM_FLOW_VALID && (chain < 0 || f->chain == chain)) {
            remove_entry(r, f, seq);
            removed++;
        } else {
            publish(f, seq);
        }
    }
    return removed;
}

/* ---- rules ---------------------------------------------------------------- */

static int prefix_match(const uint8_t *addr, const uint8_t *pfx, unsigned len) {
    unsigned full = len / 8, rest = len % 8;
    if (memcmp(addr, pfx, full) != 0)
        return 0;
    if (rest) {
        uint8_t m = (uint8_t)(0xff << (8 - rest));
        if ((addr[full] & m) != (pfx[full] & m))
            return 0;
    }
    return 1;
}

static int rule_matches(const struct onvm_rule *u, const struct onvm_meta *m, const struct onvm_flow_key *k) {
    if (u->in_port != 0xffff && u->in_port != k->in_port)
        return 0;
    if (u->vlan != 0xffff && (!m || !(m->flags & ONVM_MF_VLAN) || m->vlan != u->vlan))
        return 0;
    if (u->ipver && u->ipver != k->ipver)
        return 0;
    if (u->proto && u->proto != k->proto)
        return 0;
    if (u->src_len && !prefix_match(k->src, u->src, u->src_len))
        return 0;
    if (u->dst_len && !prefix_match(k->dst, u->dst, u->dst_len))
        return 0;
    if (k->sport < u->sport_lo || k->sport > u->sport_hi)
        return 0;
    if (k->dport < u->dport_lo || k->dport > u->dport_hi)
        return 0;
    return 1;
}

int onvm_rule_match(struct onvm_region *r, const struct onvm_meta *m, const struct onvm_flow_key *key,
                    struct onvm_rule *out) {
    struct onvm_rules *rs = onvm_rules(r);
    struct onvm_seq_read rd = {0};
    uint32_t s1;
    while (onvm_seq_begin(&rs->seq, &s1, &rd)) { /* bounded: see onvm_region.h */
        int found = -1;
        uint32_t count = rs->count < ONVM_MAX_RULES ? rs->count : ONVM_MAX_RULES;
        for (uint32_t k = 0; k < count; k++) {
            unsigned slot = rs->order[k];
            if (slot < ONVM_MAX_RULES && rule_matches(&rs->rule[slot], m, key)) {
                memcpy((void *)out, &rs->rule[slot], offsetof(struct onvm_rule, hits));
                found = (int)slot;
                break;
            }
        }
        if (onvm_seq_end(&rs->seq, s1, &rd)) {
            if (found >= 0)
                atomic_fetch_add_explicit(&rs->rule[found].hits, 1, ONVM_RELAXED);
            return found;
        }
    }
    atomic_fetch_add_explicit(&r->table_stalls, 1, ONVM_RELAXED);
    return -1; /* the rules could not be read in time: the default chain */
}

void onvm_rules_set(struct onvm_region *r, const struct onvm_rule *rules, const uint16_t *slots, uint32_t n,
                    const uint16_t *bump, uint32_t nbump) {
    struct onvm_rules *rs = onvm_rules(r);
    uint32_t odd = onvm_seq_write_begin(&rs->seq);
    for (uint32_t k = 0; k < nbump; k++)
        if (bump[k] < ONVM_MAX_RULES)
            rs->rule[bump[k]].gen++;
    for (uint32_t k = 0; k < n && k < ONVM_MAX_RULES; k++) {
        struct onvm_rule *dst = &rs->rule[slots[k]];
        uint32_t gen = dst->gen;
        uint64_t hits = dst->id == rules[k].id ? atomic_load(&dst->hits) : 0;
        memcpy((void *)dst, &rules[k], offsetof(struct onvm_rule, hits));
        dst->gen = gen;
        atomic_store(&dst->hits, hits);
        rs->order[k] = slots[k];
    }
    rs->count = n < ONVM_MAX_RULES ? n : ONVM_MAX_RULES;
    onvm_seq_write_end(&rs->seq, odd);
}

/* A hit: count the packet and move an idle deadline on (the RX worker owns the flow). */
static inline void hit(struct onvm_region *r, long i, const struct onvm_meta *m, uint64_t now) {
    struct onvm_flow_data *d = &onvm_flow_data(r)[i];
    d->packets++;
    d->bytes += m->len;
    d->last_ns = now;
    if (d->idle_ms)
        onvm_flows(r)[i].deadline_ms = deadline(d, now);
}

static void classify_key(struct onvm_region *r, struct onvm_meta *m, const struct onvm_flow_key *key,
                         uint32_t hash, uint64_t now) {
    uint32_t seq;
    long i = find(r, key, hash, &seq);
    if (i >= 0) {
        struct onvm_flow *f = &onvm_flows(r)[i];
        uint16_t chain = f->chain;
        int dead = expired(f, now) || stale(r, f);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&f->seq, ONVM_RELAXED) == seq && !dead) {
            hit(r, i, m, now);
            m->chain_id = chain;
            return;
        }
    }
    struct onvm_rule rule;
    int idx = onvm_rule_match(r, m, key, &rule);
    if (idx < 0)
        return;
    m->chain_id = rule.chain;
    int j = onvm_flow_put(r, key, rule.chain, rule.idle_ms, rule.hard_ms, ONVM_FLOW_BY_RULE,
                          (uint16_t)(idx + 1), rule.gen, now);
    if (j >= 0)
        hit(r, j, m, now); /* count this first packet too */
}

static inline int nothing_to_look_up(struct onvm_region *r) {
    return !r->flow_count ||
           (atomic_load_explicit(&r->hdr->flows_used, ONVM_RELAXED) <= 0 && onvm_rules(r)->count == 0);
}

void onvm_classify(struct onvm_region *r, struct onvm_meta *m, const uint8_t *data, uint64_t now) {
    m->chain_id = 0;
    if (nothing_to_look_up(r))
        return;
    struct onvm_flow_key key;
    if (onvm_flow_key_of(m, data, &key) == 0)
        classify_key(r, m, &key, onvm_flow_key_hash(&key), now);
}

void onvm_classify_burst(struct onvm_region *r, struct onvm_meta *const *m, const uint8_t *const *data,
                         uint32_t n, uint64_t now) {
    for (uint32_t i = 0; i < n; i++)
        m[i]->chain_id = 0;
    if (nothing_to_look_up(r))
        return;
    struct onvm_flow *t = onvm_flows(r);
    uint32_t mask = r->flow_count - 1;
    struct onvm_flow_key keys[64];
    uint32_t hash[64];
    uint8_t ok[64];
    for (uint32_t base = 0; base < n; base += 64) {
        uint32_t k = n - base < 64 ? n - base : 64;
        for (uint32_t i = 0; i < k; i++) {
            ok[i] = onvm_flow_key_of(m[base + i], data[base + i], &keys[i]) == 0;
            if (ok[i]) {
                hash[i] = onvm_flow_key_hash(&keys[i]);
                __builtin_prefetch(&t[hash[i] & mask]);
            }
        }
        for (uint32_t i = 0; i < k; i++)
            if (ok[i])
                classify_key(r, m[base + i], &keys[i], hash[i], now);
    }
}

/* ---- bulk lookup ----------------------------------------------------------- */

/* Look up n keys at once: hash them all, prefetch every first probe, then
 * search.  The misses to memory overlap instead of queueing one after another.
 * out[i] is the chain of key i, or -1 when it has no live entry. */
void onvm_flow_lookup_bulk(struct onvm_region *r, const struct onvm_flow_key *keys, uint32_t n, int32_t *out) {
    struct onvm_flow *t = onvm_flows(r);
    uint32_t mask = r->flow_count - 1, hash[64], seq;
    for (uint32_t base = 0; base < n; base += 64) {
        uint32_t m = n - base < 64 ? n - base : 64;
        for (uint32_t i = 0; i < m; i++) {
            hash[i] = onvm_flow_key_hash(&keys[base + i]);
            __builtin_prefetch(&t[hash[i] & mask]);
        }
        for (uint32_t i = 0; i < m; i++) {
            long j = find(r, &keys[base + i], hash[i], &seq);
            out[base + i] = j < 0 ? -1 : t[j].chain;
        }
    }
}
