/* capture.c - tap points copy packets into capture rings; traced packets leave events (onvm_capture.h). */
#include "onvm_capture.h"
#include "onvm_flow.h"

#include <string.h>
#include <time.h>

#define CAS_TRIES 16 /* a producer that loses the claim this often counts a drop instead */

static uint32_t rec_size(const struct onvm_header *h) {
    return h->cap_rec_size;
}

static struct onvm_cap_record *rec_at(const struct onvm_region *r, unsigned c, uint64_t pos) {
    const struct onvm_header *h = r->hdr;
    uint8_t *area = r->base + h->off_captures + ONVM_MAX_CAPTURES * sizeof(struct onvm_capture);
    uint64_t i = pos & (h->cap_records - 1);
    return (struct onvm_cap_record *)(area + ((uint64_t)c * h->cap_records + i) * rec_size(h));
}

uint64_t onvm_cap_layout(struct onvm_header *h, uint64_t off, uint32_t slot_size) {
    uint32_t size = (ONVM_CAP_REC_HDR + (slot_size - ONVM_HEADROOM) + 63u) & ~63u;
    uint32_t n = 16;
    while ((uint64_t)n * 2 * size <= ONVM_CAP_AREA)
        n *= 2;
    h->off_captures = off;
    h->cap_rec_size = size;
    h->cap_records = n;
    off += ONVM_MAX_CAPTURES * (sizeof(struct onvm_capture) + (uint64_t)n * size);
    h->off_trace = (off + ONVM_CACHE_LINE - 1) & ~(uint64_t)(ONVM_CACHE_LINE - 1);
    return h->off_trace + sizeof(struct onvm_trace);
}

void onvm_cap_init(struct onvm_region *r) {
    for (unsigned c = 0; c < ONVM_MAX_CAPTURES; c++)
        for (uint64_t i = 0; i < r->hdr->cap_records; i++)
            atomic_store_explicit(&rec_at(r, c, i)->seq, i, ONVM_RELAXED);
    struct onvm_trace *t = onvm_trace(r);
    for (uint64_t i = 0; i < ONVM_TRACE_EVENTS; i++)
        atomic_store_explicit(&t->ev[i].seq, i, ONVM_RELAXED);
}

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

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] << 8 | p[1]);
}

int onvm_cap_match(const struct onvm_cap_filter *f, const struct onvm_meta *m, const uint8_t *data, uint32_t len) {
    if (f->in_port != 0xffff && f->in_port != m->in_port)
        return 0;
    if (f->vlan != 0xffff && (!(m->flags & ONVM_MF_VLAN) || m->vlan != f->vlan))
        return 0;
    int needs_ip = f->ipver || f->proto || f->src_len || f->dst_len || f->sport_lo || f->dport_lo ||
                   f->sport_hi != 0xffff || f->dport_hi != 0xffff;
    if (!needs_ip)
        return 1;
    /* The offsets are the parser's, but an NF may have written them: each is checked. */
    unsigned ipver = m->l3_type == ONVM_L3_IPV4 ? 4 : m->l3_type == ONVM_L3_IPV6 ? 6 : 0;
    if (!ipver || (uint32_t)m->l3_off + (ipver == 4 ? 20 : 40) > len)
        return 0;
    const uint8_t *ip = data + m->l3_off;
    uint8_t src[16] = {0}, dst[16] = {0};
    memcpy(src, ip + (ipver == 4 ? 12 : 8), ipver == 4 ? 4 : 16);
    memcpy(dst, ip + (ipver == 4 ? 16 : 24), ipver == 4 ? 4 : 16);
    uint16_t sport = 0, dport = 0;
    if (m->l4_off && (m->l4_proto == 6 || m->l4_proto == 17) && !(m->flags & ONVM_MF_FRAG) &&
        (uint32_t)m->l4_off + 4 <= len) {
        sport = rd16(data + m->l4_off);
        dport = rd16(data + m->l4_off + 2);
    }
    if (f->ipver && f->ipver != ipver)
        return 0;
    if (f->proto && f->proto != m->l4_proto)
        return 0;
    if (f->src_len && !prefix_match(src, f->src, f->src_len))
        return 0;
    if (f->dst_len && !prefix_match(dst, f->dst, f->dst_len))
        return 0;
    return sport >= f->sport_lo && sport <= f->sport_hi && dport >= f->dport_lo && dport <= f->dport_hi;
}

static uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Take one from remaining (a count); 0 when it is spent. */
static int take_one(struct onvm_capture *cp) {
    uint64_t left = atomic_load_explicit(&cp->remaining, ONVM_RELAXED);
    while (left != ONVM_CAP_FOREVER) {
        if (left == 0)
            return 0;
        /* Relaxed: a counter; the record's own seq orders the data. */
        if (atomic_compare_exchange_weak_explicit(&cp->remaining, &left, left - 1, ONVM_RELAXED, ONVM_RELAXED))
            return 1;
    }
    return 1;
}

static void give_back(struct onvm_capture *cp) {
    if (atomic_load_explicit(&cp->remaining, ONVM_RELAXED) != ONVM_CAP_FOREVER)
        atomic_fetch_add_explicit(&cp->remaining, 1, ONVM_RELAXED);
}

/* Claim the record for the next position of a ring of n records of size bytes
 * at base, each starting with its seq word; NULL when the ring is full. */
static void *claim(_Atomic uint64_t *head, uint8_t *base, uint32_t size, uint32_t n, uint64_t *pos_out) {
    uint64_t pos = atomic_load_explicit(head, ONVM_RELAXED);
    for (int tries = 0; tries < CAS_TRIES; tries++) {
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

void onvm_cap_burst(struct onvm_region *r, uint32_t taps, const uint32_t *slots, uint32_t n, int sent) {
    uint64_t now = 0;
    uint32_t room = onvm_slot_room(r), data_max = rec_size(r->hdr) - ONVM_CAP_REC_HDR;
    for (unsigned c = 0; c < ONVM_MAX_CAPTURES; c++) {
        if (!(taps & (1u << c)))
            continue;
        struct onvm_capture *cp = onvm_cap(r, c);
        /* Acquire pairs with onvm_cap_start's release: the filter and snaplen are written. */
        if (!atomic_load_explicit(&cp->active, ONVM_ACQUIRE))
            continue;
        struct onvm_cap_filter f = cp->filter;
        uint32_t snap = cp->snaplen < data_max ? cp->snaplen : data_max;
        uint64_t taken = 0, dropped = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (slots[i] >= r->pool_count)
                continue;
            const struct onvm_meta *m = &r->meta[slots[i]];
            if (sent && (m->action == ONVM_ACT_DROP || m->action == ONVM_ACT_HOLD || (m->flags & ONVM_MF_HELD)))
                continue;
            uint32_t len = m->len < room ? m->len : room;
            if (m->data_off > r->slot_size - len) /* an NF moved the packet start: read only inside its slot */
                continue;
            const uint8_t *data = onvm_slot_data(r, slots[i]);
            if (!onvm_cap_match(&f, m, data, len) || !take_one(cp))
                continue;
            uint64_t pos;
            struct onvm_cap_record *rec = claim(&cp->head, (uint8_t *)rec_at(r, c, 0), rec_size(r->hdr),
                                                r->hdr->cap_records, &pos);
            if (!rec) {
                give_back(cp);
                dropped++;
                continue;
            }
            if (!now)
                now = wall_ns();
            rec->ts_ns = now;
            rec->orig_len = m->len;
            rec->cap_len = len < snap ? len : snap;
            memcpy(rec->data, data, rec->cap_len);
            /* Release pairs with the consumer's acquire load of seq: the copy is visible. */
            atomic_store_explicit(&rec->seq, pos + 1, ONVM_RELEASE);
            taken++;
        }
        /* Relaxed adds: counters, read by the manager. */
        if (dropped)
            atomic_fetch_add_explicit(&cp->drops, dropped, ONVM_RELAXED);
        if (taken) {
            atomic_fetch_add_explicit(&cp->taken, taken, ONVM_RELAXED);
            onvm_waiter_kick(&cp->wait);
        }
    }
}

void onvm_cap_start(struct onvm_region *r, unsigned c, const struct onvm_cap_filter *f, uint32_t snaplen,
                    uint64_t count) {
    struct onvm_capture *cp = onvm_cap(r, c);
    cp->filter = *f;
    cp->snaplen = snaplen;
    atomic_store_explicit(&cp->remaining, count ? count : ONVM_CAP_FOREVER, ONVM_RELAXED);
    atomic_store_explicit(&cp->drops, 0, ONVM_RELAXED);
    atomic_store_explicit(&cp->taken, 0, ONVM_RELAXED);
    /* Release pairs with the producers' acquire load of active. */
    atomic_store_explicit(&cp->active, 1, ONVM_RELEASE);
}

void onvm_cap_stop(struct onvm_region *r, unsigned c) {
    atomic_store_explicit(&onvm_cap(r, c)->active, 0, ONVM_RELEASE);
}

static void put32(uint8_t *p, uint32_t v) {
    memcpy(p, &v, 4);
}

size_t onvm_cap_read(struct onvm_region *r, unsigned c, uint8_t *out, size_t max, uint64_t *stuck_since) {
    struct onvm_capture *cp = onvm_cap(r, c);
    uint32_t n = r->hdr->cap_records, data_max = rec_size(r->hdr) - ONVM_CAP_REC_HDR;
    uint64_t tail = atomic_load_explicit(&cp->tail, ONVM_RELAXED);
    size_t used = 0;
    for (;;) {
        struct onvm_cap_record *rec = rec_at(r, c, tail);
        /* Acquire pairs with the producer's release of seq = tail + 1 (its copy is done). */
        uint64_t seq = atomic_load_explicit(&rec->seq, ONVM_ACQUIRE);
        if (seq != tail + 1) {
            /* Claimed and not published yet, or nothing there: wait, unless it stays so. */
            if ((int64_t)(atomic_load_explicit(&cp->head, ONVM_RELAXED) - tail) <= 0) {
                *stuck_since = 0;
                break;
            }
            uint64_t now = onvm_now_ns();
            if (!*stuck_since) {
                *stuck_since = now;
                break;
            }
            if (now - *stuck_since < ONVM_CAP_STUCK_NS)
                break;
            atomic_fetch_add_explicit(&cp->drops, 1, ONVM_RELAXED); /* relaxed: a counter */
        } else {
            uint32_t cap = rec->cap_len < data_max ? rec->cap_len : data_max;
            if (used + 16 + cap > max)
                break;
            uint64_t ts = rec->ts_ns;
            put32(out + used, (uint32_t)(ts / 1000000000ull));
            put32(out + used + 4, (uint32_t)(ts % 1000000000ull));
            put32(out + used + 8, cap);
            put32(out + used + 12, rec->orig_len > cap ? rec->orig_len : cap);
            memcpy(out + used + 16, rec->data, cap);
            used += 16 + cap;
        }
        *stuck_since = 0;
        /* Release pairs with a producer's acquire load of seq: we are done with the record. */
        atomic_store_explicit(&rec->seq, tail + n, ONVM_RELEASE);
        tail++;
        atomic_store_explicit(&cp->tail, tail, ONVM_RELAXED);
    }
    return used;
}

/* ---- trace ---------------------------------------------------------------- */

static void trace_put(struct onvm_region *r, const struct onvm_trace_event *e) {
    struct onvm_trace *t = onvm_trace(r);
    uint64_t pos;
    struct onvm_trace_event *slot = claim(&t->head, (uint8_t *)t->ev, sizeof *e, ONVM_TRACE_EVENTS, &pos);
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

void onvm_trace_rx(struct onvm_region *r, const uint32_t *slots, uint32_t n, uint64_t now) {
    struct onvm_trace *t = onvm_trace(r);
    struct onvm_cap_filter f = t->filter;
    uint32_t room = onvm_slot_room(r);
    for (uint32_t i = 0; i < n; i++) {
        struct onvm_meta *m = &r->meta[slots[i]];
        const uint8_t *data = onvm_slot_data(r, slots[i]);
        if (!onvm_cap_match(&f, m, data, m->len < room ? m->len : room))
            continue;
        uint32_t left = atomic_load_explicit(&t->remaining, ONVM_RELAXED);
        do { /* relaxed: a count; each packet takes one */
            if (left == 0) {
                atomic_store_explicit(&t->armed, 0, ONVM_RELAXED);
                return;
            }
        } while (!atomic_compare_exchange_weak_explicit(&t->remaining, &left, left - 1, ONVM_RELAXED,
                                                        ONVM_RELAXED));
        m->flags |= ONVM_MF_TRACED;
        struct onvm_trace_event e;
        event_of(r, slots[i], &e);
        e.kind = ONVM_TEV_RX;
        e.nf = m->in_port;
        struct onvm_flow_key key;
        struct onvm_flow_view v;
        if (onvm_flow_key_of(m, data, &key) != 0) {
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
