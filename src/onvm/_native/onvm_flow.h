/* onvm_flow.h - the flow table (exact match) and the rules (wildcards) in the region.
 *
 * Theory of operation
 * -------------------
 * The RX path classifies each packet once: it looks the packet's exact key
 * (IPv4 or IPv6 5-tuple plus in-port and outer VLAN) up in the flow table; on a miss it
 * scans the rules by priority, and a rule hit installs an exact entry so the
 * next packet of the flow finds it at once (the cached lookup).  What matches
 * nothing takes the default chain (0).
 *
 * Flow table: open addressing over a power-of-two array, indexed by the
 * packet's symmetric flow hash, probing at most ONVM_FLOW_PROBE entries.
 * Each entry has a sequence word: odd while a writer owns it.  Writers (RX
 * workers installing rule hits, NFs steering flows, the manager's API and its
 * expiry sweep) claim an entry with a CAS from even to odd, write, and publish
 * with a release store of the next even value.  Readers copy what they need
 * and retry if the sequence moved.  Deleted entries become tombstones that
 * keep probe chains intact and are reused by inserts.
 *
 * An entry is two cache lines in two arrays: the key, chain and expiry
 * deadline that a lookup reads, and the counters and times that a hit updates.
 * Counters, idle and hard timeouts: the RX worker that owns a flow (a flow
 * always arrives on one port, served by one RX worker) updates its packets,
 * bytes, last-seen time and deadline.  A lookup treats an expired entry as a miss, and
 * the manager's sweep removes expired entries and counts them, so timeouts are
 * exact at lookup and the table never fills with dead flows.
 *
 * Rules: each rule keeps its slot in an array for life; a priority-sorted list
 * of slot indices says the order to try them.  The manager rewrites both under
 * a seqlock.  Each slot has a generation; an entry remembers the slot and the
 * generation that made it, and is stale (a miss, re-evaluated, and removed by
 * the sweep if no packet refreshes it) once that generation moves.  The
 * manager moves it when the rule changes or goes, and when a rule of higher
 * priority arrives (that rule may now claim the flows the older one cached).
 */
#ifndef ONVM_FLOW_H
#define ONVM_FLOW_H

#include "onvm_region.h"

enum { ONVM_FLOW_EMPTY = 0, ONVM_FLOW_VALID = 1, ONVM_FLOW_DELETED = 2 };
enum { ONVM_FLOW_BY_RULE = 0, ONVM_FLOW_BY_NF = 1, ONVM_FLOW_BY_API = 2 };

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
    uint32_t hash;
    uint8_t state;
    uint8_t origin;
    uint16_t chain;
    uint16_t rule; /* rule slot + 1 that installed it, 0 if none */
    struct onvm_flow_key key;
    uint32_t deadline_ms; /* when it expires, on the 32-bit millisecond clock; 0: never */
    uint32_t rule_gen;
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

/* A consistent copy of both parts, for the API. */
struct onvm_flow_view {
    struct onvm_flow f;
    struct onvm_flow_data d;
};

struct onvm_rule {
    uint32_t gen; /* bumped whenever the entries this slot produced must go */
    int32_t priority;
    uint16_t chain;
    uint16_t in_port; /* 0xffff: any */
    uint16_t vlan;    /* 0xffff: any */
    uint8_t proto;    /* 0: any */
    uint8_t ipver;    /* 0: any, 4, 6 */
    uint8_t src[16], dst[16];
    uint8_t src_len, dst_len; /* prefix lengths; 0 matches all */
    uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
    uint32_t idle_ms, hard_ms; /* timeouts of the entries it installs */
    uint32_t id;               /* the manager's rule id */
    _Atomic uint64_t hits;
};

struct onvm_rules {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t seq;
    uint32_t count;                 /* active rules, listed in order[] */
    uint16_t order[ONVM_MAX_RULES]; /* slot indices by priority, highest first */
    struct onvm_rule rule[ONVM_MAX_RULES];
};

/* Look n keys up together (prefetching); out[i] = chain or -1. */
void onvm_flow_lookup_bulk(struct onvm_region *r, const struct onvm_flow_key *keys, uint32_t n, int32_t *out);

/* Manager: replace the active rules.  rules[i] goes to slot slots[i]; gens of
 * the slots in bump[] move on (their cached entries become stale). */
void onvm_rules_set(struct onvm_region *r, const struct onvm_rule *rules, const uint16_t *slots, uint32_t n,
                    const uint16_t *bump, uint32_t nbump);

/* From the process's own copy of the layout (onvm_region.h), never from the header. */
static inline struct onvm_flow *onvm_flows(const struct onvm_region *r) {
    return r->flows;
}
static inline struct onvm_flow_data *onvm_flow_data(const struct onvm_region *r) {
    return r->flow_data;
}
static inline struct onvm_rules *onvm_rules(const struct onvm_region *r) {
    return r->rules;
}

/* Fill key from a parsed packet; returns 0, or -1 if it is not IP. */
int onvm_flow_key_of(const struct onvm_meta *m, const uint8_t *data, struct onvm_flow_key *key);
uint32_t onvm_flow_key_hash(const struct onvm_flow_key *key);

/* RX: set m->chain_id for the packet (flow table, then rules, then 0). */
void onvm_classify(struct onvm_region *r, struct onvm_meta *m, const uint8_t *data, uint64_t now);
/* The same for a burst, with the table's cache misses overlapped. */
void onvm_classify_burst(struct onvm_region *r, struct onvm_meta *const *m, const uint8_t *const *data,
                         uint32_t n, uint64_t now);

/* A copy of the entry for key; 0 if found (expired and stale ones are not). */
int onvm_flow_get(struct onvm_region *r, const struct onvm_flow_key *key, uint64_t now,
                  struct onvm_flow_view *out);
/* A consistent copy of entry i if it is live; 0 if so. */
int onvm_flow_read(struct onvm_region *r, uint32_t i, struct onvm_flow_view *out);
/* Insert or replace; returns the entry's index, -ENOSPC when no entry is free
 * within the probe limit. */
int onvm_flow_put(struct onvm_region *r, const struct onvm_flow_key *key, uint16_t chain,
                  uint32_t idle_ms, uint32_t hard_ms, uint8_t origin, uint16_t rule,
                  uint32_t rule_gen, uint64_t now);
int onvm_flow_del(struct onvm_region *r, const struct onvm_flow_key *key);
/* Remove expired and stale entries among [start, start+n); returns how many. */
uint32_t onvm_flow_expire(struct onvm_region *r, uint32_t start, uint32_t n, uint64_t now);
/* Remove every entry (chain < 0) or every entry using a chain; returns how many. */
uint32_t onvm_flow_flush(struct onvm_region *r, int chain);

/* The first rule (highest priority) matching the packet: its index, and a copy
 * of it in *out; -1 when none matches.  m may be NULL (then vlan is unknown
 * and only rules without a VLAN match). */
int onvm_rule_match(struct onvm_region *r, const struct onvm_meta *m, const struct onvm_flow_key *key,
                    struct onvm_rule *out);

#endif
