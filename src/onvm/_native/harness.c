/* harness.c - put packets into an NF's ring and take them out of rings, in
 * process: what the manager's RX and TX workers do, for tests of NFs that run
 * the real native loop without a manager (onvm.testing).  Part of the hooks
 * module (hooks.c). */
#include "onvm_hooks.h"
#include "onvm_capture.h"

#include <limits.h>
#include <string.h>

#include "onvm_pace.h"

static int region_nf(PyObject *region, unsigned nf_id, struct onvm_region **out) {
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return -1;
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS || atomic_load(&r->nfs[nf_id].state) == ONVM_NFS_FREE) {
        PyErr_Format(PyExc_ValueError, "NF %u is not active in an open region", nf_id);
        return -1;
    }
    *out = r;
    return 0;
}

/* deliver(region, nf_id, packets, in_port=0, chain=0) -> packets enqueued */
static PyObject *mod_deliver(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region, *seq;
    unsigned nf_id, in_port = 0, chain = 0;
    if (!PyArg_ParseTuple(args, "OIO|II", &region, &nf_id, &seq, &in_port, &chain))
        return NULL;
    struct onvm_region *r;
    if (region_nf(region, nf_id, &r) < 0)
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "packets must be a sequence of bytes");
    if (!fast)
        return NULL;
    struct onvm_ring *rx = onvm_nf_ring(r, nf_id, 0);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), sent = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_buffer b;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, i), &b, PyBUF_SIMPLE) < 0)
            break;
        uint32_t s;
        if ((size_t)b.len > onvm_slot_room(r) || onvm_core->pool_alloc_burst(r, &s, 1, ONVM_OWNER_MGR) != 1) {
            PyBuffer_Release(&b);
            PyErr_Format(PyExc_ValueError, "packet %zd: too long or the pool is empty", i);
            break;
        }
        onvm_core->slot_reset(r, s);
        struct onvm_meta *m = &r->meta[s];
        memcpy(onvm_slot_data(r, s), b.buf, (size_t)b.len);
        PyBuffer_Release(&b);
        m->len = (uint32_t)b.len;
        onvm_core->parse(m, onvm_slot_data(r, s), m->len);
        m->rx_ns = onvm_now_ns();
        m->in_port = (uint16_t)in_port;
        m->chain_id = (uint16_t)chain;
        m->chain_idx = 0;
        m->action = ONVM_ACT_TONF;
        m->dest = r->nfs[nf_id].service;
        uint32_t pos;
        if (onvm_ring_mp_reserve(rx, r->ring_mask, 1, 1, &pos, NULL, 0) != 1) {
            onvm_core->pool_free_burst(r, &s, 1);
            PyErr_Format(PyExc_ValueError, "NF %u's RX ring is full", nf_id);
            break;
        }
        atomic_store_explicit(&m->owner, ONVM_OWNER_TRANSIT(ONVM_OWNER_MGR, nf_id), ONVM_RELAXED);
        onvm_ring_put(rx, r->ring_mask, pos, s);
        onvm_ring_mp_commit(rx, NULL);
        sent++;
    }
    Py_DECREF(fast);
    onvm_bp_pushed(r, rx); /* a producer: past high, the ring is congested */
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(sent);
}

/* drain(region, nf_id, tx) -> [(bytes, action, dest, in_port, src_nf)]; frees the slots
 * (entries that fail validation are left out) */
static PyObject *mod_drain(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned nf_id;
    int tx;
    if (!PyArg_ParseTuple(args, "OIp", &region, &nf_id, &tx))
        return NULL;
    struct onvm_region *r;
    if (region_nf(region, nf_id, &r) < 0)
        return NULL;
    struct onvm_ring *ring = onvm_nf_ring(r, nf_id, tx);
    PyObject *out = PyList_New(0);
    uint32_t buf[64], n, bad = 0, head = atomic_load_explicit(&ring->cons.head, ONVM_RELAXED);
    /* As the TX worker takes from a TX ring (what the NF handed over), or as the NF from its RX ring. */
    uint16_t mask = tx ? 0xffffu : ONVM_TRANSIT_TO;
    uint16_t want = tx ? ONVM_OWNER_TRANSIT(nf_id, ONVM_OWNER_MGR) : ONVM_OWNER_TRANSIT(0, nf_id);
    while (out && onvm_ring_count(ring, r->ring_mask)) {
        n = onvm_core->take(r, ring, &head, buf, 64, mask, want, ONVM_OWNER_MGR, &bad, &bad);
        for (uint32_t i = 0; i < n && out; i++) {
            struct onvm_meta *m = &r->meta[buf[i]];
            PyObject *t = Py_BuildValue("(y#IIII)", (const char *)onvm_slot_data(r, buf[i]), (Py_ssize_t)m->len,
                                        (unsigned)m->action, (unsigned)m->dest, (unsigned)m->in_port,
                                        (unsigned)m->src_nf);
            if (!t || PyList_Append(out, t) < 0)
                Py_CLEAR(out);
            Py_XDECREF(t);
        }
        onvm_core->pool_free_burst(r, buf, n);
    }
    onvm_bp_drained(r, ring); /* the consumer: producers waiting for the ring go on */
    return out;
}

/* pace_run(rate, steps, cap=0) -> ([(granted, next_due)], missed): drives a
 * gen port's pacer (cap: its count) with made-up clock readings.  Each step
 * is (now, want, taken): the pacer is asked for up to want packets at now,
 * and the caller then sends taken of those granted (fewer when the pool ran
 * dry; want 0: a port its RX worker left unread).  next_due is 0 when
 * the pacer set no wake-up time.  A step of four, (now, want, taken, rate),
 * first changes the rate at now (onvm_pace_rate; 0: unpaced). */
static PyObject *mod_pace_run(PyObject *mod, PyObject *args) {
    (void)mod;
    unsigned long long rate, cap = 0;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "KO|K", &rate, &seq, &cap))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "steps must be a sequence of (now, want, taken)");
    if (!fast)
        return NULL;
    struct onvm_pacer pc = {.rate_pps = rate, .cap = cap, .lossy = 1};
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out && i < PySequence_Fast_GET_SIZE(fast); i++) {
        unsigned long long now, new_rate = ULLONG_MAX;
        unsigned want, taken;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "KII|K", &now, &want, &taken, &new_rate)) {
            Py_CLEAR(out);
            break;
        }
        if (new_rate != ULLONG_MAX)
            onvm_pace_rate(&pc, new_rate, now);
        uint64_t due = UINT64_MAX;
        uint32_t granted = onvm_pace(&pc, want, now, &due);
        onvm_pace_sent(&pc, taken < granted ? taken : granted);
        PyObject *t = Py_BuildValue("(IK)", granted, (unsigned long long)(due == UINT64_MAX ? 0 : due));
        if (!t || PyList_Append(out, t) < 0)
            Py_CLEAR(out);
        Py_XDECREF(t);
    }
    Py_DECREF(fast);
    if (!out)
        return NULL;
    return Py_BuildValue("(NK)", out, (unsigned long long)pc.missed);
}

/* ===== what a hostile NF can do (tests of the manager's defences) ========= */

static struct onvm_region *open_region(PyObject *region) {
    return onvm_core->region(region);
}

/* layout(region) -> offsets of what a test writes over, as a hostile NF could. */
static PyObject *mod_layout(PyObject *mod, PyObject *region) {
    (void)mod;
    struct onvm_region *r = open_region(region);
    if (!r)
        return NULL;
    struct onvm_header *h = r->hdr;
    return Py_BuildValue(
        "{s:K,s:n,s:K,s:K,s:n,s:n,s:n,s:n,s:n,s:n,s:K,s:n,s:n,s:n,s:n,s:n,s:n,s:K,s:I,s:I,s:n,s:n,s:K,s:n,s:K,"
        "s:n,s:n,s:K,s:n,s:n,s:n,s:n,s:n,s:n,s:n}",
        "nfs", (unsigned long long)((uint8_t *)r->nfs - r->base), "nf_size", (Py_ssize_t)sizeof(struct onvm_nf),
        "rings", (unsigned long long)r->off_rings, "ring_bytes", (unsigned long long)r->ring_bytes,
        "prod_head", offsetof(struct onvm_ring, prod.head), "prod_tail", offsetof(struct onvm_ring, prod.tail),
        "cons_head", offsetof(struct onvm_ring, cons.head), "cons_tail", offsetof(struct onvm_ring, cons.tail),
        "entries", offsetof(struct onvm_ring, entries), "congested", offsetof(struct onvm_ring, congested), "meta", (unsigned long long)h->off_meta,
        "meta_size", (Py_ssize_t)sizeof(struct onvm_meta), "owner", offsetof(struct onvm_meta, owner),
        "len", offsetof(struct onvm_meta, len), "data_off", offsetof(struct onvm_meta, data_off), "action",
        offsetof(struct onvm_meta, action), "dest", offsetof(struct onvm_meta, dest), "slots", (unsigned long long)h->off_slots, "slot_size",
        r->slot_size, "pool_size", r->pool_count, "enq", offsetof(struct onvm_nf, enq), "state",
        offsetof(struct onvm_nf, state), "sleeping", offsetof(struct onvm_nf, wait.sleeping), "chains",
        (unsigned long long)h->off_chains, "chain_size",
        (Py_ssize_t)sizeof(struct onvm_chain), "services", (unsigned long long)h->off_services, "service_size",
        (Py_ssize_t)sizeof(struct onvm_service), "free_head", offsetof(struct onvm_header, free[0].head),
        "free_stride", (Py_ssize_t)sizeof(struct onvm_freestack), "free_stacks",
        offsetof(struct onvm_header, free_stacks),
        "captures", (unsigned long long)((uint8_t *)r->captures - r->base), "capture_size",
        (Py_ssize_t)sizeof(struct onvm_capture), "cap_src_len", offsetof(struct onvm_capture, filter.src_len),
        "next_free", offsetof(struct onvm_meta, next_free), "flows_used", offsetof(struct onvm_header, flows_used));
}

/* poke(region, offset, data): write bytes into the mapping (anything mapping it can). */
static PyObject *mod_poke(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned long long off;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "OKy*", &region, &off, &b))
        return NULL;
    struct onvm_region *r = open_region(region);
    if (r && (off > r->size || (size_t)b.len > r->size - off)) {
        PyErr_Format(PyExc_ValueError, "%zd bytes at %llu lie outside the region", b.len, off);
        r = NULL;
    }
    if (r)
        memcpy(r->base + off, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    if (!r)
        return NULL;
    Py_RETURN_NONE;
}

/* peek(region, offset, n) -> bytes of the mapping. */
static PyObject *mod_peek(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned long long off, n;
    if (!PyArg_ParseTuple(args, "OKK", &region, &off, &n))
        return NULL;
    struct onvm_region *r = open_region(region);
    if (!r)
        return NULL;
    if (off > r->size || n > r->size - off)
        return PyErr_Format(PyExc_ValueError, "%llu bytes at %llu lie outside the region", n, off);
    return PyBytes_FromStringAndSize((const char *)r->base + off, (Py_ssize_t)n);
}

static inline uint64_t xs64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* hostile_writes(region, nf_id, slots, count, seed) -> seed: count random writes of 1, 2, 4
 * or 8 random bytes, each at a random place of what NF nf_id may write: its RX ring, its TX
 * ring (headers and entries), its record, and the slots named (their record and bytes). */
static PyObject *mod_hostile_writes(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region, *so;
    unsigned nf_id, count;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OIOIK", &region, &nf_id, &so, &count, &seed))
        return NULL;
    struct onvm_region *r = open_region(region);
    if (!r)
        return NULL;
    if (nf_id == 0 || nf_id >= ONVM_MAX_NFS)
        return PyErr_Format(PyExc_ValueError, "NF id %u is out of range", nf_id);
    Py_buffer sb;
    if (PyObject_GetBuffer(so, &sb, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    const uint32_t *slots = sb.buf;
    size_t nslots = sb.itemsize == 4 ? (size_t)sb.len / 4 : 0;
    uint64_t st = seed | 1;
    Py_BEGIN_ALLOW_THREADS
    for (unsigned i = 0; i < count; i++) {
        uint64_t x = xs64(&st), y = xs64(&st);
        uint8_t *at;
        size_t room;
        unsigned what = (unsigned)(x % 8);
        if (what < 2) { /* a ring: its header lines and entries */
            at = (uint8_t *)onvm_nf_ring(r, nf_id, (int)what);
            room = onvm_ring_bytes(r->ring_size);
        } else if (what < 4) {
            at = (uint8_t *)&r->nfs[nf_id];
            room = sizeof(struct onvm_nf);
        } else if (nslots) {
            uint32_t s = slots[(x >> 8) % nslots];
            if (s >= r->pool_count)
                continue;
            if (what < 6) {
                at = (uint8_t *)&r->meta[s];
                room = sizeof(struct onvm_meta);
            } else {
                at = r->slots + (size_t)s * r->slot_size;
                room = r->slot_size;
            }
        } else {
            continue;
        }
        size_t width = (size_t)1 << ((x >> 32) % 4);
        size_t off = (size_t)((y >> 8) % (room - width + 1));
        uint64_t v = xs64(&st);
        if ((y & 7) == 0)
            v = (y & 8) ? UINT64_MAX : 0; /* the values that break things most often */
        memcpy(at + off, &v, width);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&sb);
    return PyLong_FromUnsignedLongLong(st);
}

/* reserve_only(region, target_nf, n, as_nf) -> position: reserve n entries of NF target_nf's
 * RX ring as NF as_nf would (its record says so) and never complete them: a producer stopped
 * half way, as SIGSTOP or a debugger leaves one. */
static PyObject *mod_reserve_only(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned target, n, as_nf;
    if (!PyArg_ParseTuple(args, "OIII", &region, &target, &n, &as_nf))
        return NULL;
    struct onvm_region *r = open_region(region);
    if (!r)
        return NULL;
    if (target == 0 || target >= ONVM_MAX_NFS || as_nf == 0 || as_nf >= ONVM_MAX_NFS || n == 0)
        return PyErr_Format(PyExc_ValueError, "NF ids are 1..%d, n at least 1", ONVM_MAX_NFS - 1);
    struct onvm_ring *ring = onvm_nf_ring(r, target, 0);
    uint32_t pos = 0;
    if (onvm_ring_mp_reserve(ring, r->ring_mask, n, 1, &pos, (struct onvm_enq_record *)&r->nfs[as_nf].enq,
                             onvm_nf_ring_off(r, target, 0)) != n)
        return PyErr_Format(PyExc_ValueError, "no room for %u entries", n);
    return PyLong_FromUnsignedLong(pos);
}

/* late_count(region, epoch, n, stack=0): count n freed slots under free-count epoch `epoch`
 * (0 or 1) of a free stack now, as a push that took that stack in that epoch and was held
 * up before it counted. */
static PyObject *mod_late_count(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region;
    unsigned epoch, stack = 0;
    long long n;
    if (!PyArg_ParseTuple(args, "OIL|I", &region, &epoch, &n, &stack))
        return NULL;
    struct onvm_region *r = open_region(region);
    if (!r)
        return NULL;
    if (stack >= r->free_stacks)
        return PyErr_Format(PyExc_ValueError, "the region has %u free stacks", r->free_stacks);
    onvm_free_count_add(&r->hdr->free[stack], (uint64_t)(epoch & 1u) << 32, n);
    Py_RETURN_NONE;
}

static PyMethodDef harness_functions[] = {
    {"deliver", mod_deliver, METH_VARARGS,
     "deliver(region, nf_id, packets, in_port=0, chain=0) -> count: as RX would, into the NF's RX ring"},
    {"drain", mod_drain, METH_VARARGS,
     "drain(region, nf_id, tx) -> [(bytes, action, dest, in_port, src_nf)]: empty a ring, free its slots"},
    {"pace_run", mod_pace_run, METH_VARARGS,
     "pace_run(rate, steps, cap=0) -> ([(granted, next_due)], missed): a gen port's pacer, made-up clock; "
     "a step (now, want, taken, rate) changes the rate first"},
    {"layout", mod_layout, METH_O, "layout(region) -> offsets of rings, records and tables (tests)"},
    {"poke", mod_poke, METH_VARARGS, "poke(region, offset, data): write into the mapping (tests)"},
    {"peek", mod_peek, METH_VARARGS, "peek(region, offset, n) -> bytes of the mapping (tests)"},
    {"hostile_writes", mod_hostile_writes, METH_VARARGS,
     "hostile_writes(region, nf_id, slots, count, seed) -> seed: random writes where NF nf_id may write"},
    {"late_count", mod_late_count, METH_VARARGS,
     "late_count(region, epoch, n): a push of n slots that took the free stack in epoch, counted now"},
    {"reserve_only", mod_reserve_only, METH_VARARGS,
     "reserve_only(region, target_nf, n, as_nf) -> position: a ring reservation never completed"},
    {NULL}};

int onvm_harness_register(PyObject *module) { return PyModule_AddFunctions(module, harness_functions); }
