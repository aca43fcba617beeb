/* trace.c - packets onvm trace follows leave an event at each hop (onvm_capture.h). */
#include "onvm_capture.h"
#include "onvm_flow.h"

#include <string.h>

static void trace_put(struct onvm_region *r, const struct onvm_trace_event *e) {
    struct onvm_trace *t = onvm_trace(r);
    uint64_t pos;
    struct onvm_trace_event *slot = onvm_rec_claim(&t->head, (uint8_t *)t->ev, sizeof *e, ONVM_TRACE_EVENTS, &pos);
    if (!slot) {
        atomic_fetch_add_explicit(&t->lost, 1, ONVM_RELAXED); /* relaxed: a counter */
        return;
    }
    memcpy((uint8_t *)slot + sizeof slot->seq, (const uint8_t *)e + sizeof e->seq, sizeof *e - sizeof e->seq);
    /* Release pairs with the manager's acquire load of seq: the event is written. */
    atomic_store_explicit(&slot->seq, pos + 1, ONVM_RELEASE);
}

static void event_of(struct onvm_region *r, uint32_t s, struct onvm_trace_event *e) {
    const struct onvm_meta *m = &r->meta[s];
    uint64_t now = onvm_now_ns();
    memset(e, 0, sizeof *e);
    e->rx_ns = m->rx_ns;
    e->t_ns = now > m->rx_ns ? now - m->rx_ns : 0;
    e->slot = s;
    e->chain = m->chain_id;
    e->hop = m->chain_idx;
    e->flow_hash = m->flow_hash;
    e->len = m->len;
}

/* Does the armed trace take this packet?  Takes one from its count (the last one disarms
 * it), marks the packet and starts its RX event in *e. */
static int mark(struct onvm_region *r, struct onvm_trace *t, const struct onvm_cap_filter *f, uint32_t slot,
                struct onvm_trace_event *e) {
    struct onvm_meta *m = &r->meta[slot];
    uint32_t room = onvm_slot_room(r);
    if (!onvm_cap_match(f, m, onvm_slot_data(r, slot), m->len < room ? m->len : room))
        return 0;
    uint32_t left = atomic_load_explicit(&t->remaining, ONVM_RELAXED);
    do { /* relaxed: a count; each packet takes one */
        if (left == 0) {
            atomic_store_explicit(&t->armed, 0, ONVM_RELAXED);
            return 0;
        }
    } while (!atomic_compare_exchange_weak_explicit(&t->remaining, &left, left - 1, ONVM_RELAXED, ONVM_RELAXED));
    m->flags |= ONVM_MF_TRACED;
    event_of(r, slot, e);
    e->kind = ONVM_TEV_RX;
    e->nf = m->in_port;
    return 1;
}

void onvm_trace_rx(struct onvm_region *r, const uint32_t *slots, uint32_t n, uint64_t now) {
    struct onvm_trace *t = onvm_trace(r);
    struct onvm_cap_filter f = t->filter;
    for (uint32_t i = 0; i < n; i++) {
        struct onvm_trace_event e;
        if (!mark(r, t, &f, slots[i], &e))
            continue;
        const struct onvm_meta *m = &r->meta[slots[i]];
        struct onvm_flow_key key;
        struct onvm_flow_entry v;
        if (onvm_flow_key_of(m, onvm_slot_data(r, slots[i]), &key) != 0) {
            e.reason = ONVM_TCL_NOT_IP;
        } else if (onvm_flow_get(r, &key, now, 1, &v) == 0) {
            /* Every result is cached: an entry made by this packet was decided now. */
            int fresh = v.d.created_ns >= m->rx_ns;
            e.reason = !fresh || !onvm_cached_origin(v.f.origin) ? ONVM_TCL_ENTRY
                       : v.f.origin == ONVM_FLOW_BY_RULE ? ONVM_TCL_RULE : ONVM_TCL_DEFAULT;
            e.rule = v.f.origin == ONVM_FLOW_BY_RULE ? v.f.rule : 0;
        } else {
            e.reason = ONVM_TCL_DEFAULT; /* not cached: the table was full, or nothing to classify by */
        }
        trace_put(r, &e);
    }
}

void onvm_trace_injected(struct onvm_region *r, const uint32_t *slots, uint32_t n, unsigned nf_id) {
    struct onvm_trace *t = onvm_trace(r);
    struct onvm_cap_filter f = t->filter;
    for (uint32_t i = 0; i < n; i++) {
        struct onvm_trace_event e;
        if (!mark(r, t, &f, slots[i], &e))
            continue;
        e.by = (uint16_t)nf_id;
        e.action = r->meta[slots[i]].action;
        e.reason = ONVM_TCL_INJECTED;
        trace_put(r, &e);
    }
}

void onvm_trace_event(struct onvm_region *r, uint32_t slot, unsigned kind, unsigned by, unsigned nf,
                      unsigned reason) {
    if (slot >= r->pool_count)
        return;
    const struct onvm_meta *m = &r->meta[slot];
    struct onvm_trace_event e;
    event_of(r, slot, &e);
    e.kind = (uint8_t)kind;
    e.action = m->action;
    e.dest = m->dest;
    e.by = (uint16_t)by;
    e.nf = (uint16_t)nf;
    e.reason = (uint8_t)reason;
    trace_put(r, &e);
}

void onvm_trace_arm(struct onvm_region *r, const struct onvm_cap_filter *f, uint32_t count) {
    struct onvm_trace *t = onvm_trace(r);
    atomic_store_explicit(&t->armed, 0, ONVM_RELAXED);
    if (!count)
        return;
    struct onvm_trace_event scratch[64]; /* what the last trace left unread is thrown away */
    while (onvm_trace_read(r, scratch, 64) == 64) {
    }
    t->filter = *f;
    atomic_store_explicit(&t->lost, 0, ONVM_RELAXED);
    atomic_store_explicit(&t->remaining, count, ONVM_RELAXED);
    /* Release pairs with the RX worker's acquire load of armed: filter and count are written. */
    atomic_store_explicit(&t->armed, 1, ONVM_RELEASE);
}

uint32_t onvm_trace_read(struct onvm_region *r, struct onvm_trace_event *out, uint32_t max) {
    struct onvm_trace *t = onvm_trace(r);
    uint64_t tail = atomic_load_explicit(&t->tail, ONVM_RELAXED);
    uint32_t got = 0;
    while (got < max) {
        struct onvm_trace_event *e = &t->ev[tail & (ONVM_TRACE_EVENTS - 1)];
        /* Acquire pairs with trace_put's release: the event is written.  A claimed
         * event not yet published is read next time. */
        if (atomic_load_explicit(&e->seq, ONVM_ACQUIRE) != tail + 1) {
            /* Claimed and not published: wait for it, unless it stays so (its NF died). */
            uint64_t now = onvm_now_ns();
            if ((int64_t)(atomic_load_explicit(&t->head, ONVM_RELAXED) - tail) <= 0) {
                t->stuck_since = 0;
                break;
            }
            if (!t->stuck_since)
                t->stuck_since = now;
            if (now - t->stuck_since < ONVM_CAP_STUCK_NS)
                break;
            atomic_fetch_add_explicit(&t->lost, 1, ONVM_RELAXED); /* relaxed: a counter */
        } else {
            memcpy(&out[got], e, sizeof *e);
            got++;
        }
        t->stuck_since = 0;
        /* Release pairs with a producer's acquire load in claim: we are done with it. */
        atomic_store_explicit(&e->seq, tail + ONVM_TRACE_EVENTS, ONVM_RELEASE);
        tail++;
    }
    atomic_store_explicit(&t->tail, tail, ONVM_RELAXED);
    return got;
}
