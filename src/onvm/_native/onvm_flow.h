/* onvm_flow.h - the flow table (exact match) and the rule classifier (wildcards) in the region.
 *
 * Theory of operation
 * -------------------
 * The RX path classifies each packet once: it looks the packet's exact key
 * (IPv4 or IPv6 5-tuple plus in-port and outer VLAN) up in the flow table; on a
 * miss it asks the rule classifier, and whatever the answer (a rule, or no rule:
 * the input port's default chain, else the default chain) it installs an exact
 * entry, so the flow's next packets find it at once: every classification
 * result is cached.  Only when there is nothing to classify by (no rule, no
 * port default, no entry) does a packet take the default chain without a lookup.
 *
 * Flow table: open addressing over a power-of-two array, indexed by the
 * packet's symmetric flow hash, probing at most ONVM_FLOW_PROBE entries.
 * Each entry has a sequence word: odd while a writer owns it.  Writers (RX
 * workers caching results, NFs steering flows, the manager's API and its
 * sweep) claim an entry with a CAS from even to odd, write, and publish with a
 * release store of the next even value.  Readers copy what they need and retry
 * if the sequence moved.  Deleted entries become tombstones that keep probe
 * chains intact and are reused by inserts.
 *
 * An entry is two cache lines in two arrays: the key, chain and deadline that a
 * lookup reads, and the counters and times that a hit updates.  The RX worker
 * that owns a flow (a flow arrives on one port, served by one RX worker)
 * updates its counters, last-seen time and deadline.  A lookup treats an
 * expired entry as a miss; the manager's sweep removes expired entries and
 * counts them.  Deadlines are on a 32-bit millisecond clock compared by signed
 * difference, so no timeout may exceed ONVM_TIMEOUT_MAX_MS (checked where
 * timeouts enter, and clamped here).
 *
 * Pressure: cached results (origin RULE or DEFAULT) get an idle timeout, the
 * rule's own or the region's default (ctl->default_idle_ms), so the table
 * drains by itself.  When a new flow finds no free entry in its probe window,
 * its result is not cached (counted in flows_full) and it is classified again
 * at its next packet: entries already in the table are never displaced by
 * traffic.  An explicit entry (NF or API) that finds no free entry replaces
 * the cached result in its window that has been idle longest (flows_evicted),
 * and fails only when its window holds nothing but explicit entries.
 *
 * Rules and their classifier (classify.c): tuple space search.  A rule looks
 * at some fields and at some bits of each (prefix lengths, whether the
 * protocol, in-port and VLAN count, port ranges as prefixes): that mask is its
 * tuple.  Rules of one tuple are found by one hash lookup of the packet's key
 * masked by the tuple.  The tuples are tried best first (by the highest
 * priority each holds), and the search stops once the best rule found beats
 * every tuple left.  A port range that is not a single prefix becomes several
 * prefixes (at most 30 per range), each in its tuple: one rule, several
 * groups.  A group is one (tuple, masked key) and names the best rule of all
 * rules that share it.  Beside each image's group table lies a 16-bit tag per
 * entry (empty, deleted, or 16 bits of the entry's hash): a probe reads the
 * tags and opens a group entry only when its tag is the key's, so a tuple
 * that holds nothing for the key (the usual case: traffic that matches no
 * rule visits every tuple) costs one line of a table 32 times smaller than
 * the groups', which stays in the cache.
 *
 * Two images, swapped: the groups and the tuple order exist twice.  Readers use
 * image (gen & 1), and check after the lookup that gen did not move (else they
 * look again, in the image now current).  The manager applies a change to the
 * image nobody uses, swaps (bumping gen and the version), then applies the same
 * change to the other image.  RX never waits for a change, however large: a
 * batch of rules appears at once, whole.  Rule records live in slots of their
 * own, stable for the rule's life and reused only after both images have
 * forgotten the slot.
 *
 * Invalidation: every change of the rules (or of a port's default) moves the
 * version on and appends one record per rule added or removed (and per port
 * changed) to a log.  A cached entry remembers the version its result was
 * computed at.  A hit on an entry whose version is behind reads the log
 * records since then: only a rule removed that made the entry, a port default
 * changed for its port, or a rule added that matches the entry's key and beats
 * the entry's own rule can change the result; if none did, the entry is
 * current again (its version moves on, its counters stay); if one did, the
 * packet is classified afresh and the entry rewritten.  When the log has
 * wrapped since the entry's version, the entry is classified afresh (and kept,
 * with its counters, when the answer is the same).  So a change costs the
 * packet path nothing until a flow's next packet, and then one short check.
 */
#ifndef ONVM_FLOW_H
#define ONVM_FLOW_H

#include "onvm_region.h"

enum { ONVM_FLOW_EMPTY = 0, ONVM_FLOW_VALID = 1, ONVM_FLOW_DELETED = 2 };
/* Who made an entry, listed once (see ONVM_ACTIONS in onvm_layout.h).  RULE and
 * DEFAULT entries are cached classification results; NF and API ones are explicit. */
#define ONVM_FLOW_ORIGINS(X)                                                                       \
    X(RULE, "rule")       /* a rule decided it */                                                  \
    X(NF, "nf")           /* an NF steered it (nf.steer) */                                        \
    X(API, "api")         /* onvm flow add */                                                      \
    X(DEFAULT, "default") /* no rule matched: the input port's default chain, or the default chain */

enum onvm_flow_origin {
#define ONVM_X_ENUM(id, name) ONVM_FLOW_BY_##id,
    ONVM_FLOW_ORIGINS(ONVM_X_ENUM)
#undef ONVM_X_ENUM
    ONVM_FLOW_ORIGIN_COUNT
};

#define ONVM_FLOW_PROBE 64              /* entries probed before a lookup misses or an insert gives up */
#define ONVM_TIMEOUT_MAX_MS 2000000000u /* 23.1 days: below 2^31 ms, what the 32-bit clock can compare */
#define ONVM_IDLE_DEFAULT 0xffffffffu   /* a rule's idle_ms: the region's default idle timeout */
#define ONVM_DEFAULT_IDLE_MS 10000u     /* the region's default idle timeout of cached results */
static_assert(ONVM_TIMEOUT_MAX_MS < (1u << 31), "deadlines compare by signed 32-bit difference");

static inline int onvm_cached_origin(unsigned origin) {
    return origin == ONVM_FLOW_BY_RULE || origin == ONVM_FLOW_BY_DEFAULT;
}

struct onvm_flow_key {
    uint8_t src[16]; /* IPv4 addresses use the first 4 bytes, the rest is zero */
    uint8_t dst[16];
    uint16_t sport, dport;
    uint16_t in_port;
    uint8_t proto;
    uint8_t ipver; /* 4 or 6 */
    uint16_t vlan; /* 1 + the outer VLAN id; 0: untagged (rules may match on it) */
};
static_assert(sizeof(struct onvm_flow_key) == 42, "flow key is 42 bytes");

/* An entry is split in two lines: what a lookup reads, and what a hit updates. */
struct onvm_flow {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t seq; /* odd while a writer owns the entry */
    uint8_t state;
    uint8_t origin;
    uint16_t chain;
    uint32_t rule;    /* slot + 1 of the rule that decided it (origin RULE), else 0 */
    uint32_t version; /* the rules' version its result was computed at (cached origins) */
    struct onvm_flow_key key;
    uint16_t pad;
    uint32_t deadline_ms; /* when it expires, on the 32-bit millisecond clock; 0: never */
};
static_assert(sizeof(struct onvm_flow) == 64, "the lookup's part of an entry is one cache line");

struct onvm_flow_data {
    alignas(ONVM_CACHE_LINE) uint32_t idle_ms; /* 0: none */
    uint32_t hard_ms;                          /* 0: none */
    uint64_t created_ns;
    uint64_t last_ns;
    uint64_t packets;
    uint64_t bytes;
};
static_assert(sizeof(struct onvm_flow_data) == 64, "an entry's counters are one cache line");

/* An entry is its two lines side by side: a hit reads the first and counts in the
 * second, and the two share a page (one TLB entry for both) and an aligned pair of
 * lines, which the cache fetches together.  The API copies one whole. */
struct onvm_flow_entry {
    struct onvm_flow f;
    struct onvm_flow_data d;
};
static_assert(sizeof(struct onvm_flow_entry) == 2 * ONVM_CACHE_LINE, "an entry is two lines");

/* ---- rules and the classifier ------------------------------------------------ */

#define ONVM_RULES_DEFAULT 262144u /* rule slots a region reserves unless told otherwise */
#define ONVM_RULES_LIMIT 4194304u
#define ONVM_TUPLES_MAX 4096 /* distinct masks among the rules */
#define ONVM_CLS_PROBE 64    /* group entries probed before a lookup gives up */
#define ONVM_CLS_LOG 256     /* change records kept for revalidating cached entries */
#define ONVM_ANY16 0xffffu   /* a rule's in_port or vlan: any */

/* A rule as the manager gave it, in its slot. */
struct onvm_rule {
    uint32_t id; /* the manager's rule id: among equal priorities the smaller (older) wins */
    int32_t priority;
    uint16_t chain;
    uint16_t in_port; /* ONVM_ANY16: any */
    uint16_t vlan;    /* ONVM_ANY16: any; else the VLAN id (tagged packets only) */
    uint8_t proto;    /* 0: any */
    uint8_t ipver;    /* 0: any, 4, 6 */
    uint8_t src[16], dst[16];
    uint8_t src_len, dst_len; /* prefix lengths; 0 matches all */
    uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
    uint16_t pad;
    uint32_t idle_ms; /* of the entries it installs; ONVM_IDLE_DEFAULT: the region's default */
    uint32_t hard_ms;
    uint32_t reserved;
};
static_assert(sizeof(struct onvm_rule) == 72, "rule record layout");

/* A key widened to whole words, so that a tuple's mask applies word by word. */
struct onvm_cls_key {
    uint64_t w[6];
};
static_assert(sizeof(struct onvm_cls_key) >= sizeof(struct onvm_flow_key), "a flow key fits a cls key");

/* A tuple: the bits of the key that its rules look at. */
struct onvm_tuple {
    struct onvm_cls_key mask;
    uint8_t ipver; /* nonzero: only keys of this IP version can match */
    uint8_t pad[15];
};
static_assert(sizeof(struct onvm_tuple) == 64, "a tuple is one cache line");

/* One (tuple, masked key) and the best rule among those that share it. */
struct onvm_cls_group {
    struct onvm_cls_key key;
    uint32_t tuple; /* tuple + 1; 0: empty; ONVM_CLS_TOMB: deleted */
    uint32_t rule;  /* the best rule's slot */
    int32_t priority;
    uint32_t id;
};
static_assert(sizeof(struct onvm_cls_group) == 64, "a group entry is one cache line");
#define ONVM_CLS_TOMB 0xffffffffu

struct onvm_cls_order {
    uint32_t tuple;
    int32_t max_priority; /* no rule of the tuple beats this: the search may stop before it */
};

/* One image: the tuples in the order to try them, and the groups' hash table. */
struct onvm_cls_image {
    alignas(ONVM_CACHE_LINE) uint32_t version; /* the rules' version this image holds */
    uint32_t ntuples;                          /* entries of order[] in use */
    uint32_t slots;                            /* group table entries, a power of two */
    uint32_t max_probe;                        /* no group sits further than this from its hash */
    struct onvm_cls_order order[ONVM_TUPLES_MAX];
};

/* Log records: version << 32 | kind << 30 | value. */
enum { ONVM_CLS_ADD = 0, ONVM_CLS_DEL = 1, ONVM_CLS_PORT = 2, ONVM_CLS_ALL = 3 };

/* The classifier's control block: where its parts are, which image is in use, the log. */
struct onvm_cls_ctl {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t gen; /* swaps so far; readers use image gen & 1 */
    _Atomic uint32_t version;                      /* the version of the image in use */
    uint32_t default_idle_ms;                      /* idle timeout of results whose rule names none */
    uint32_t max_rules;
    uint32_t max_slots; /* group table entries reserved per image */
    uint32_t rules;     /* rules in place */
    uint32_t ports_set; /* ports with a default chain of their own (a bit each) */
    uint32_t pad;
    uint16_t port_chain[ONVM_MAX_PORTS]; /* each input port's default chain (0: the default chain) */
    uint64_t off_tuples, off_images[2], off_groups[2], off_rules, off_hits;
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t log_head; /* records ever written */
    _Atomic uint64_t log[ONVM_CLS_LOG];
};

/* Bytes the classifier reserves for max_rules rules (onvm_region_create), and
 * how many of them, from the start, are resident from creation on. */
uint64_t onvm_cls_bytes(uint32_t max_rules);
uint64_t onvm_cls_eager_bytes(uint32_t max_rules);
/* Lay the classifier out at region offset off (creator only). */
void onvm_cls_init(struct onvm_region *r, uint64_t off, uint32_t max_rules);
/* Check an attached region's classifier lies inside the region; 0 or -EPROTO. */
int onvm_cls_bind(struct onvm_region *r);

/* What the rules say for a key. */
struct onvm_cls_result {
    long slot;        /* the best rule's slot; -1: no rule matches */
    uint32_t version; /* the version of the rules consulted */
    uint16_t chain;   /* the rule's chain */
    uint32_t idle_ms, hard_ms;
};
/* The best rule for key, read consistently.  Returns 0, or -EAGAIN when the
 * images kept moving (hostile writes to the region): the caller then takes
 * the default chain without caching. */
int onvm_cls_lookup(struct onvm_region *r, const struct onvm_flow_key *key, struct onvm_cls_result *out);
/* Is an entry computed at version `from` (rule slot+1 `rule`, origin) still what
 * the rules say for key at version `now`?  1 yes, 0 no or cannot tell (log wrapped). */
int onvm_cls_still_current(struct onvm_region *r, const struct onvm_flow_key *key, unsigned origin,
                           uint32_t rule, uint32_t from);
/* Does rule u match key?  (The plain reference, used to check log records.) */
int onvm_rule_matches(const struct onvm_rule *u, const struct onvm_flow_key *k);

/* Where this process found the classifier (onvm_cls_bind), never where the header says now. */
static inline struct onvm_cls_ctl *onvm_cls(const struct onvm_region *r) {
    return (struct onvm_cls_ctl *)(r->base + r->cls_ctl);
}
/* Nothing to classify by: no rules and no port defaults, so every flow takes the default
 * chain and no result is worth caching (RX, and the rules' writer when it empties them). */
static inline int onvm_cls_empty(const struct onvm_cls_ctl *c) {
    return c->rules == 0 && c->ports_set == 0;
}
static inline struct onvm_rule *onvm_rule_at(const struct onvm_region *r, uint32_t slot) {
    return (struct onvm_rule *)(r->base + r->cls_rules) + slot;
}
static inline _Atomic uint64_t *onvm_rule_hits(const struct onvm_region *r) {
    return (_Atomic uint64_t *)(r->base + r->cls_hits);
}

/* ---- the manager's side of the classifier (classify.c) --------------------------- */

struct onvm_cls_writer; /* private to the manager: member lists, tuples, free slots */

/* Apply one change, all or nothing: remove the rules in slots dels[0..ndel),
 * add rules adds[0..nadd) (their slots go to slots_out[]), and give ports
 * ports[0..nports) the default chains chains[]; the change is seen at once by
 * readers.  0, or -errno with a message in r->errmsg (nothing applied). */
int onvm_cls_apply(struct onvm_region *r, const uint32_t *dels, uint32_t ndel, const struct onvm_rule *adds,
                   uint32_t nadd, uint32_t *slots_out, const uint16_t *ports, const uint16_t *chains,
                   uint32_t nports);
void onvm_cls_writer_free(struct onvm_region *r);
struct onvm_cls_stats {
    uint32_t rules, tuples, groups, slots, tombs, version, rebuilds, max_rules;
    uint64_t bytes; /* group tables and rule records in use */
};
void onvm_cls_stats(struct onvm_region *r, struct onvm_cls_stats *out);

/* ---- the flow table ----------------------------------------------------------- */

/* From the process's own copy of the layout (onvm_region.h), never from the header. */
static inline struct onvm_flow *onvm_flow_at(const struct onvm_region *r, uint32_t i) {
    return &r->flows[i].f;
}
/* The counters of the entry whose lookup line f is. */
static inline struct onvm_flow_data *onvm_flow_data_of(struct onvm_flow *f) {
    return &((struct onvm_flow_entry *)f)->d;
}

/* Look n keys up together (prefetching); out[i] = chain or -1. */
void onvm_flow_lookup_bulk(struct onvm_region *r, const struct onvm_flow_key *keys, uint32_t n, int32_t *out);

/* Fill key from a parsed packet; returns 0, or -1 if it is not IP. */
int onvm_flow_key_of(const struct onvm_meta *m, const uint8_t *data, struct onvm_flow_key *key);
/* The same for a record an NF may have written: reads only within data[0, len); -1 if the IP
 * header lies beyond, ports 0 if the transport header does.  Inline: the capture taps of the
 * hooks module use it too. */
/* A parsed packet's VLAN as a flow key holds it: 1 + the outer VLAN id, 0 untagged. */
static inline uint16_t onvm_flow_vlan(const struct onvm_meta *m) {
    return (m->flags & ONVM_MF_VLAN) ? (uint16_t)(m->vlan + 1u) : 0;
}

/* A parsed packet's ports as a flow key holds them: TCP and UDP that are not fragments,
 * when the header lies within data[0, len); else both 0. */
static inline void onvm_flow_ports(const struct onvm_meta *m, const uint8_t *data, uint32_t len, uint16_t *sport,
                                   uint16_t *dport) {
    *sport = *dport = 0;
    if (m->l4_off && (m->l4_proto == 6 || m->l4_proto == 17) && !(m->flags & ONVM_MF_FRAG) &&
        (uint64_t)m->l4_off + 4 <= len) {
        const uint8_t *l4 = data + m->l4_off;
        *sport = (uint16_t)(l4[0] << 8 | l4[1]);
        *dport = (uint16_t)(l4[2] << 8 | l4[3]);
    }
}

static inline int onvm_flow_key_within(const struct onvm_meta *m, const uint8_t *data, uint32_t len,
                                       struct onvm_flow_key *key) {
    memset(key, 0, sizeof *key);
    key->in_port = m->in_port;
    key->vlan = onvm_flow_vlan(m);
    const uint8_t *ip = data + m->l3_off;
    if (m->l3_type == ONVM_L3_IPV4 && (uint64_t)m->l3_off + 20 <= len) {
        memcpy(key->src, ip + 12, 4);
        memcpy(key->dst, ip + 16, 4);
        key->ipver = 4;
    } else if (m->l3_type == ONVM_L3_IPV6 && (uint64_t)m->l3_off + 40 <= len) {
        memcpy(key->src, ip + 8, 16);
        memcpy(key->dst, ip + 24, 16);
        key->ipver = 6;
    } else {
        return -1;
    }
    key->proto = m->l4_proto;
    onvm_flow_ports(m, data, len, &key->sport, &key->dport);
    return 0;
}

/* Whether the first len bits of addr and pfx agree (len at most 128: the caller checks). */
static inline int onvm_prefix_match(const uint8_t *addr, const uint8_t *pfx, unsigned len) {
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
uint32_t onvm_flow_key_hash(const struct onvm_flow_key *key);

/* RX: set m->chain_id for the packet (flow table, then rules, then the default); m as
 * onvm_parse left it for data. */
void onvm_classify(struct onvm_region *r, struct onvm_meta *m, const uint8_t *data, uint64_t now);
/* The same for a burst, with the table's cache misses overlapped; each m[i] as
 * onvm_parse left it for data[i] (its flow hash is reused). */
void onvm_classify_burst(struct onvm_region *r, struct onvm_meta *const *m, const uint8_t *const *data,
                         uint32_t n, uint64_t now);

/* A copy of the live entry for key; 0 if found.  Expired entries, and cached
 * results the rules have since changed, are not found; neither are cached
 * default-chain results unless `defaults`. */
int onvm_flow_get(struct onvm_region *r, const struct onvm_flow_key *key, uint64_t now, int defaults,
                  struct onvm_flow_entry *out);
/* A consistent copy of entry i if it is live and current; 0 if so. */
int onvm_flow_read(struct onvm_region *r, uint32_t i, uint64_t now, struct onvm_flow_entry *out);
/* Insert or replace an explicit entry (origin NF or API); returns the entry's
 * index, -ENOSPC when its window holds only explicit entries, -EINVAL for a
 * timeout above ONVM_TIMEOUT_MAX_MS. */
int onvm_flow_put(struct onvm_region *r, const struct onvm_flow_key *key, uint16_t chain, uint32_t idle_ms,
                  uint32_t hard_ms, uint8_t origin, uint64_t now);
int onvm_flow_del(struct onvm_region *r, const struct onvm_flow_key *key);
/* Among [start, start+n): remove expired entries and cached results the rules
 * have changed, and mark the others current; returns how many were removed. */
uint32_t onvm_flow_expire(struct onvm_region *r, uint32_t start, uint32_t n, uint64_t now);
/* Remove every entry (chain < 0) or every entry using a chain, or only the cached
 * results among them (cached_only: origin rule or default); returns how many. */
uint32_t onvm_flow_flush(struct onvm_region *r, int chain, int cached_only);

#endif
