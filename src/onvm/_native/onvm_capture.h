/* onvm_capture.h - copies of the packets that pass a tap point (onvm capture), and
 * the hops of traced packets (onvm trace).
 *
 * Theory of operation
 * -------------------
 * A tap point is a port (what it receives, what it sends) or an NF (what it is
 * handed, what it hands on).  Each has a tap word: bit c set while capture c
 * watches its RX side, bit ONVM_CAP_TX_SHIFT + c its TX side.  An NF's word is
 * in its record (nf->cpu.tap, on the line its loop reads anyway), a port's in
 * the manager's port (port->tap).  The packet path loads the word once per
 * burst: with no capture running, that load is all a capture costs.
 *
 * When a bit is set, the burst goes through onvm_cap_burst: each packet the
 * capture's filter takes is copied (up to its snaplen) into a record of the
 * capture's ring, stamped with the wall-clock time in nanoseconds.  Packets are
 * copied, never taken: the burst goes on unchanged.
 *
 * The ring: a bounded queue of fixed-size records with a sequence word each
 * (many producers: RX and TX workers and NFs; one consumer: the manager).
 * Record i of lap L is free for position p = L * n + i when its seq is p, and
 * holds a packet for the consumer when its seq is p + 1.  A producer claims
 * position head with a CAS, copies, and publishes seq = p + 1; the consumer
 * reads it and frees it for the next lap with seq = p + n.  A producer that
 * finds the ring full (or loses the CAS too often) does not wait: it counts
 * the packet in the capture's drops and goes on.  Packets a capture counts
 * (count, -c) are taken from remaining before the copy; one that is then
 * dropped is given back.
 *
 * Everything here is in the region, which NFs can write: the consumer checks
 * every length it reads, and a record an NF claimed and never published (it
 * died, or lies) is skipped after ONVM_CAP_STUCK_NS and counted as a drop.
 */
#ifndef ONVM_CAPTURE_H
#define ONVM_CAPTURE_H

#include "onvm_region.h"

#define ONVM_MAX_CAPTURES 8
#define ONVM_CAP_TX_SHIFT 16
#define ONVM_CAP_RX_MASK ((1u << ONVM_CAP_TX_SHIFT) - 1)
#define ONVM_CAP_AREA (1u << 20)      /* bytes of records per capture */
#define ONVM_CAP_REC_HDR 32u          /* a record's header; its data follows */
#define ONVM_CAP_STUCK_NS 200000000ull /* a claimed record left unpublished this long is skipped */
#define ONVM_CAP_FOREVER UINT64_MAX    /* remaining: no count */

/* What a capture takes: the rule matcher's fields (flows/rules.py). */
struct onvm_cap_filter {
    uint8_t src[16], dst[16];
    uint8_t src_len, dst_len; /* prefix lengths; 0 matches all */
    uint8_t proto;            /* 0: any */
    uint8_t ipver;            /* 0: any, 4, 6 */
    uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
    uint16_t in_port; /* 0xffff: any */
    uint16_t vlan;    /* 0xffff: any */
};

struct onvm_capture {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t active; /* set by the manager once the rest is written */
    uint32_t snaplen;
    struct onvm_cap_filter filter;
    _Atomic uint64_t remaining; /* packets still to take, ONVM_CAP_FOREVER for no count */
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t head; /* the next position a producer claims */
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t drops; /* packets it could not take (full ring) */
    _Atomic uint64_t taken;                          /* packets copied */
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t tail;  /* the consumer's position (manager only) */
    struct onvm_waiter wait;                         /* the consumer sleeps here */
};
static_assert(sizeof(struct onvm_capture) % ONVM_CACHE_LINE == 0, "captures are whole lines");

struct onvm_cap_record {
    _Atomic uint64_t seq;
    uint64_t ts_ns;    /* CLOCK_REALTIME when it was copied */
    uint32_t orig_len; /* the packet's length */
    uint32_t cap_len;  /* bytes copied, at most the snaplen */
    uint8_t pad[8];
    uint8_t data[];
};
static_assert(sizeof(struct onvm_cap_record) == ONVM_CAP_REC_HDR, "record header size");

/* ---- trace ------------------------------------------------------------------
 *
 * Armed with a filter and a count, the RX worker marks the next packets that
 * match (ONVM_MF_TRACED) and records how each was classified.  Routing
 * (route.c) records an event for every marked packet it moves: at RX the first
 * hop and the instance picked, after each NF its action and destination, the
 * port it leaves by, or the drop and its reason, each with the time since RX.
 * A packet is named by (rx_ns, slot): both stay with it through the chain.
 * Unarmed, the RX worker loads one word a burst and routing tests a flag bit
 * of the metadata line it reads anyway.  Events go into a ring like a
 * capture's (a full ring counts them lost); the manager reads them. */
#define ONVM_TRACE_EVENTS 4096 /* a power of two */
enum { ONVM_TEV_RX = 1, ONVM_TEV_HOP = 2, ONVM_TEV_DROP = 3 };

struct onvm_trace_event {
    _Atomic uint64_t seq;
    uint64_t rx_ns;   /* with slot: the packet */
    uint64_t t_ns;    /* since RX */
    uint32_t slot;
    uint8_t kind;     /* ONVM_TEV_* */
    uint8_t action;   /* HOP: the action taken */
    uint16_t dest;    /* HOP: service or port */
    uint16_t by;      /* the NF that routed it, 0: the manager */
    uint16_t nf;      /* HOP to a service: the instance picked; RX: the input port */
    uint16_t chain;
    uint8_t hop;      /* the chain hop it is at */
    uint8_t reason;   /* DROP: the drop reason; RX: how it was classified (ONVM_TCL_*) */
    uint32_t rule;    /* RX: the slot + 1 of the rule that decided it, else 0 */
    uint32_t flow_hash;
    uint32_t len;
    uint8_t pad[8];
};
static_assert(sizeof(struct onvm_trace_event) == 64, "a trace event is one line");
/* RX: how the chain was found; INJECTED: an NF made the packet (by names it) */
enum { ONVM_TCL_DEFAULT = 0, ONVM_TCL_ENTRY = 1, ONVM_TCL_RULE = 2, ONVM_TCL_NOT_IP = 3, ONVM_TCL_INJECTED = 4 };

struct onvm_trace {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t armed; /* RX marks packets while set */
    _Atomic uint32_t remaining;                      /* packets still to mark */
    struct onvm_cap_filter filter;
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t head;
    _Atomic uint64_t lost; /* events the ring had no room for */
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t tail; /* the manager's */
    uint64_t stuck_since;                          /* the manager's clock for an event claimed, not published */
    alignas(ONVM_CACHE_LINE) struct onvm_trace_event ev[ONVM_TRACE_EVENTS];
};

static inline struct onvm_trace *onvm_trace(const struct onvm_region *r) {
    return r->trace;
}

/* RX, after classification: mark and record the packets the armed trace takes. */
void onvm_trace_rx(struct onvm_region *r, const uint32_t *slots, uint32_t n, uint64_t now);
/* An NF, before it routes packets it made (inject): mark and record those the armed trace takes. */
void onvm_trace_injected(struct onvm_region *r, const uint32_t *slots, uint32_t n, unsigned nf_id);
/* Routing: one event for a marked packet (kind HOP or DROP). */
void onvm_trace_event(struct onvm_region *r, uint32_t slot, unsigned kind, unsigned by, unsigned nf,
                      unsigned reason);
/* Manager: arm (count > 0) or disarm (count 0) the trace; arming drops the events not read. */
void onvm_trace_arm(struct onvm_region *r, const struct onvm_cap_filter *f, uint32_t count);
/* Manager: up to max events in order; returns how many. */
uint32_t onvm_trace_read(struct onvm_region *r, struct onvm_trace_event *out, uint32_t max);

#define ONVM_REC_CAS_TRIES 16 /* a producer that loses the claim this often counts a drop instead */

/* Claim the record for the next position of a ring of n records of size bytes
 * at base, each starting with its seq word; NULL when the ring is full. */
static inline void *onvm_rec_claim(_Atomic uint64_t *head, uint8_t *base, uint32_t size, uint32_t n, uint64_t *pos_out) {
    uint64_t pos = atomic_load_explicit(head, ONVM_RELAXED);
    for (int tries = 0; tries < ONVM_REC_CAS_TRIES; tries++) {
        _Atomic uint64_t *seqp = (_Atomic uint64_t *)(base + (pos & (n - 1)) * size);
        /* Acquire pairs with the consumer's release of seq = pos (the record is free again). */
        uint64_t seq = atomic_load_explicit(seqp, ONVM_ACQUIRE);
        int64_t dif = (int64_t)(seq - pos);
        if (dif < 0)
            return NULL; /* the consumer has not freed it yet: full */
        if (dif == 0) {
            /* Relaxed CAS: the claim orders nothing; the record's seq does. */
            if (atomic_compare_exchange_weak_explicit(head, &pos, pos + 1, ONVM_RELAXED, ONVM_RELAXED)) {
                *pos_out = pos;
                return (void *)seqp;
            }
        } else {
            pos = atomic_load_explicit(head, ONVM_RELAXED);
        }
    }
    return NULL;
}

/* Region creation: lays the capture area out from off; returns the offset past it. */
uint64_t onvm_cap_layout(struct onvm_header *h, uint64_t off, uint32_t slot_size);
/* Region creation: every record free for lap 0. */
void onvm_cap_init(struct onvm_region *r);

static inline struct onvm_capture *onvm_cap(const struct onvm_region *r, unsigned c) {
    return r->captures + c;
}

/* Producer: copy the packets of slots[0..n) that the captures in taps (bits)
 * take.  sent: only packets an NF hands on (not dropped, not held). */
void onvm_cap_burst(struct onvm_region *r, uint32_t taps, const uint32_t *slots, uint32_t n, int sent);

/* An NF, before it routes what it sends (packets it made or released): a copy to the captures
 * watching its TX side.  One load when none does. */
static inline void onvm_cap_nf_sent(struct onvm_region *r, unsigned nf_id, const uint32_t *slots, uint32_t n) {
    uint32_t tap = atomic_load_explicit(&r->nfs[nf_id % ONVM_MAX_NFS].cpu.tap, ONVM_RELAXED) >> ONVM_CAP_TX_SHIFT;
    if (tap)
        onvm_cap_burst(r, tap, slots, n, 1);
}

/* Manager: capture c starts with this filter, snaplen and count (0: none). */
void onvm_cap_start(struct onvm_region *r, unsigned c, const struct onvm_cap_filter *f, uint32_t snaplen,
                    uint64_t count);
/* Manager: capture c takes nothing more (its tap bits were cleared first). */
void onvm_cap_stop(struct onvm_region *r, unsigned c);
/* Manager: up to max bytes of pcap records (16-byte header, nanosecond stamps)
 * from capture c into out; returns the bytes written.  *stuck_since: the
 * consumer's clock for a record claimed but unpublished (0: none). */
size_t onvm_cap_read(struct onvm_region *r, unsigned c, uint8_t *out, size_t max, uint64_t *stuck_since);
/* Does the filter take this packet?  (Tested against flows/rules.py's rule_matches.) */
int onvm_cap_match(const struct onvm_cap_filter *f, const struct onvm_meta *m, const uint8_t *data, uint32_t len);

#ifdef Py_PYTHON_H /* for the modules: the filter as Python gives it */
static inline int onvm_cap_filter_field(PyObject *d, const char *key, unsigned long max, unsigned long *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v)
        return 0;
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (x > max) {
        PyErr_Format(PyExc_ValueError, "filter field %s=%lu is out of range (0..%lu)", key, x, max);
        return -1;
    }
    *out = x;
    return 0;
}

static inline int onvm_cap_filter_addr(PyObject *d, const char *key, uint8_t *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v)
        return 0;
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(v, &buf, &len) < 0)
        return -1;
    if (len != 16) {
        PyErr_Format(PyExc_ValueError, "filter field %s must be 16 bytes", key);
        return -1;
    }
    memcpy(out, buf, 16);
    return 0;
}

/* A filter from a dict of Rule.native()'s match fields (absent ones match all); -1 with an exception. */
static inline int onvm_cap_filter_from(PyObject *fd, struct onvm_cap_filter *out) {
    unsigned long v[10] = {0, 0, 0, 0, 0, 65535, 0, 65535, 0xffff, 0xffff};
    static const char *keys[10] = {"src_len", "dst_len", "proto", "ipver", "sport_lo",
                                   "sport_hi", "dport_lo", "dport_hi", "in_port", "vlan"};
    static const unsigned long max[10] = {128, 128, 255, 6, 65535, 65535, 65535, 65535, 0xffff, 0xffff};
    struct onvm_cap_filter f = {0};
    for (int i = 0; i < 10; i++)
        if (onvm_cap_filter_field(fd, keys[i], max[i], &v[i]) < 0)
            return -1;
    if (onvm_cap_filter_addr(fd, "src", f.src) < 0 || onvm_cap_filter_addr(fd, "dst", f.dst) < 0)
        return -1;
    f.src_len = (uint8_t)v[0];
    f.dst_len = (uint8_t)v[1];
    f.proto = (uint8_t)v[2];
    f.ipver = (uint8_t)v[3];
    f.sport_lo = (uint16_t)v[4];
    f.sport_hi = (uint16_t)v[5];
    f.dport_lo = (uint16_t)v[6];
    f.dport_hi = (uint16_t)v[7];
    f.in_port = (uint16_t)v[8];
    f.vlan = (uint16_t)v[9];
    *out = f;
    return 0;
}
#endif

#endif
