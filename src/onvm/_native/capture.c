/* capture.c - tap points copy packets into capture rings (onvm_capture.h). */
#include "onvm_capture.h"
#include "onvm_flow.h"

#include <string.h>
#include <time.h>

/* Everything below uses the geometry this process bound when it created or
 * attached the region (region.c), never the header an NF can rewrite. */
static struct onvm_cap_record *rec_at(const struct onvm_region *r, unsigned c, uint64_t pos) {
    uint8_t *area = (uint8_t *)(r->captures + ONVM_MAX_CAPTURES);
    uint64_t i = pos & (r->cap_records - 1);
    return (struct onvm_cap_record *)(area + ((uint64_t)c * r->cap_records + i) * r->cap_rec_size);
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
        for (uint64_t i = 0; i < r->cap_records; i++)
            atomic_store_explicit(&rec_at(r, c, i)->seq, i, ONVM_RELAXED);
    struct onvm_trace *t = onvm_trace(r);
    for (uint64_t i = 0; i < ONVM_TRACE_EVENTS; i++)
        atomic_store_explicit(&t->ev[i].seq, i, ONVM_RELAXED);
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
    /* The offsets are the parser's, but an NF may have written them, and the filter too. */
    struct onvm_flow_key k;
    if (onvm_flow_key_within(m, data, len, &k) != 0)
        return 0;
    if (f->ipver && f->ipver != k.ipver)
        return 0;
    if (f->proto && f->proto != k.proto)
        return 0;
    unsigned bits = k.ipver == 4 ? 32 : 128;
    if (f->src_len && (f->src_len > bits || !onvm_prefix_match(k.src, f->src, f->src_len)))
        return 0;
    if (f->dst_len && (f->dst_len > bits || !onvm_prefix_match(k.dst, f->dst, f->dst_len)))
        return 0;
    return k.sport >= f->sport_lo && k.sport <= f->sport_hi && k.dport >= f->dport_lo && k.dport <= f->dport_hi;
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

void onvm_cap_burst(struct onvm_region *r, uint32_t taps, const uint32_t *slots, uint32_t n, int sent) {
    uint64_t now = 0;
    uint32_t room = onvm_slot_room(r), data_max = r->cap_rec_size - ONVM_CAP_REC_HDR;
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
            struct onvm_cap_record *rec = onvm_rec_claim(&cp->head, (uint8_t *)rec_at(r, c, 0), r->cap_rec_size,
                                                r->cap_records, &pos);
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
    uint32_t n = r->cap_records, data_max = r->cap_rec_size - ONVM_CAP_REC_HDR;
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
