/* nfloop.c - the NF run loop and the per-packet views it hands to Python.
 *
 * The loop dequeues a burst from the NF's RX ring, calls the Python handler
 * once per burst (batch mode) or once per packet (packet mode), then delivers
 * every packet by its action: straight into the next NF's RX ring when the
 * action names a service, into the NF's TX ring when a port must send it.
 * It polls while packets come and sleeps on a futex when they stop.
 *
 * Packet, Meta and header views (packet.c) are reused for every packet: they
 * are valid only during the handler call.
 */


#include "onvm_packet.h"
#include "onvm_capture.h"
#include "onvm_latency.h"
#include "onvm_sched.h"
#include "onvm_nf.h"
#include "onvm_parse.h"

#define NF_SPIN_POLLS 512
#define NF_BLOCKED_POLLS 16 /* a congested ring drains by ring_size/4 before it clears: sleep soon */
#define NF_MAX_SLEEP_NS 1000000000L /* every stop, message and signal wakes it sooner */

/* ===== NFContext ============================================================ */

typedef struct {
    PyObject_HEAD RegionObject *region;
    unsigned nf_id;
    struct onvm_route_ctx *route;
    PacketObject *pkt;
    MetaObject *meta;
    int local_stop;
    _Atomic int msg_flag; /* set by notify() from another thread: messages wait */
    uint32_t buf[ONVM_BURST_MAX];
    int running;              /* inside run(): releases wait for the end of the burst */
    struct onvm_held held;    /* releases waiting to be routed */
} NFContextObject;

static int NFContext_build(NFContextObject *self, PyObject *args) {
    PyObject *region;
    unsigned id;
    if (!PyArg_ParseTuple(args, "O!I", &RegionType, &region, &id))
        return -1;
    if (id == 0 || id >= ONVM_MAX_NFS) {
        PyErr_Format(PyExc_ValueError, "NF id %u is out of range", id);
        return -1;
    }
    RegionObject *ro = (RegionObject *)region;
    if (!ro->r.base) {
        PyErr_SetString(PyExc_ValueError, "region is closed");
        return -1;
    }
    Py_INCREF(region);
    self->region = ro;
    self->nf_id = id;
    self->route = PyMem_Calloc(1, sizeof(struct onvm_route_ctx));
    if (!self->route)
        return -1;
    struct onvm_nf *nf = &ro->r.nfs[id];
    self->route->r = &ro->r;
    self->route->self_nf = id;
    self->route->rec = (struct onvm_enq_record *)&nf->enq;
    self->route->tx_ring = onvm_nf_ring(&ro->r, id, 1);
    /* Read once: the record is ours to write, and a wrong row must not lead anywhere. */
    uint32_t txw = nf->tx_worker;
    self->route->tx_waiter = txw < ONVM_MAX_WORKERS ? &ro->r.workers[txw].wait : NULL;
    self->route->act = nf->stats.act;
    self->route->drops = nf->stats.drops;
    self->route->tx = &nf->stats.tx;
    self->route->late = &nf->stats.late;
    self->pkt = onvm_packet_new(ro);
    self->meta = onvm_meta_new();
    if (!self->pkt || !self->meta)
        return -1;
    return 0;
}

static void NFContext_dealloc(NFContextObject *self) {
    Py_XDECREF(self->pkt);
    Py_XDECREF(self->meta);
    onvm_held_free(&self->held);
    PyMem_Free(self->route);
    Py_XDECREF(self->region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

struct batch_bufs {
    Py_buffer b[6];
    int n;
};

static const struct {
    const char *name;
    Py_ssize_t itemsize;
} batch_fields[6] = {{"slots", 4}, {"length", 4}, {"flow_hash", 4}, {"in_port", 2}, {"action", 1}, {"dest", 2}};

static void release_bufs(struct batch_bufs *bb) {
    for (int i = 0; i < bb->n; i++)
        PyBuffer_Release(&bb->b[i]);
    bb->n = 0;
}

static int get_bufs(PyObject *arrays, unsigned burst, struct batch_bufs *bb) {
    bb->n = 0;
    if (!PyTuple_Check(arrays) || PyTuple_GET_SIZE(arrays) != 6) {
        PyErr_SetString(PyExc_TypeError, "arrays must be a 6-tuple (slots, length, flow_hash, in_port, action, dest)");
        return -1;
    }
    for (int i = 0; i < 6; i++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(arrays, i), &bb->b[i], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            release_bufs(bb);
            return -1;
        }
        bb->n++;
        if (bb->b[i].itemsize != batch_fields[i].itemsize || bb->b[i].len / bb->b[i].itemsize < burst) {
            PyErr_Format(PyExc_ValueError, "array %s needs %zd-byte items and room for %u", batch_fields[i].name,
                         batch_fields[i].itemsize, burst);
            release_bufs(bb);
            return -1;
        }
    }
    return 0;
}

static void free_slots(NFContextObject *self, const uint32_t *s, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        self->route->drops[ONVM_DROP_ACTION]++;
    onvm_pool_free_burst(&self->region->r, s, n);
}

/* run(handler, batch=True, arrays=None, burst=256, limit=0, ttl=0.0,
 *     periodic=None, period=1.0, default_action=NEXT, default_dest=0) -> reason
 *
 * batch=True: handler(n) is called once per burst after the six arrays were
 * filled for n packets; the actions and destinations it leaves in them are
 * applied.  batch=False: handler(packet, meta) is called once per packet.
 * Returns "manager" (asked to stop), "stopped" (stop() was called), "limit" or
 * "ttl"; an exception from a handler or a signal handler propagates after the
 * burst in hand was finished (the rest of the burst is dropped and counted). */
static PyObject *NFContext_run(NFContextObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"handler", "batch", "arrays", "burst", "limit", "ttl", "periodic", "period",
                             "default_action", "default_dest", "messages", NULL};
    PyObject *handler, *arrays = Py_None, *periodic = Py_None, *messages = Py_None;
    int batch = 1;
    unsigned burst = 256, def_action = ONVM_ACT_NEXT, def_dest = 0;
    unsigned long long limit = 0;
    double ttl = 0.0, period = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pOIKdOdIIO", kwlist, &handler, &batch, &arrays, &burst,
                                     &limit, &ttl, &periodic, &period, &def_action, &def_dest, &messages))
        return NULL;
    if (burst < 1 || burst > ONVM_BURST_MAX)
        return PyErr_Format(PyExc_ValueError, "burst must be between 1 and %d", ONVM_BURST_MAX);
    if (def_action >= ONVM_ACT_COUNT)
        return PyErr_Format(PyExc_ValueError, "default action %u is not an action", def_action);
    struct batch_bufs bb = {0};
    if (batch && get_bufs(arrays, burst, &bb) < 0)
        return NULL;

    struct onvm_region *r = &self->region->r;
    struct onvm_nf *nf = &r->nfs[self->nf_id];
    struct onvm_nf_stats *st = &nf->stats;
    struct onvm_ring *rx = onvm_nf_ring(r, self->nf_id, 0);
    uint32_t rx_head = atomic_load_explicit(&rx->cons.head, ONVM_RELAXED);
    uint64_t start = onvm_now_ns();
    uint64_t ttl_ns = ttl > 0 ? (uint64_t)(ttl * 1e9) : 0;
    uint64_t period_ns = period > 0 ? (uint64_t)(period * 1e9) : 1000000000ull;
    uint64_t next_periodic = start + period_ns, next_yield = start + 10000000ull;
    uint64_t handled = 0, blocked_since = 0;
    unsigned idle = 0, spin_budget = NF_SPIN_POLLS;
    struct onvm_spin spin;
    onvm_spin_init(&spin, NF_SPIN_POLLS);
    const char *reason = "stopped";
    int failed = 0;
    self->running = 1; /* a stop() that came before run() (a signal at start-up) ends it at once */
    struct onvm_cpu_follow cpu;
    onvm_cpu_follow_init(&cpu, &nf->cpu.now);

    for (;;) {
        onvm_cpu_follow(&cpu, &nf->cpu.want, &nf->cpu.now);
        if (atomic_load_explicit(&nf->stop, ONVM_RELAXED)) {
            reason = "manager";
            break;
        }
        if (atomic_load_explicit(&onvm_guard_tripped, ONVM_RELAXED)) {
            reason = "region"; /* its file was cut short (mapguard.c): nothing here is real now */
            break;
        }
        if (self->local_stop)
            break;
        /* Backpressure (onvm_bp.h): while a ring it fed is congested, take nothing new. */
        struct onvm_ring *blocked = NULL;
        if (self->route->nfed || blocked_since) {
            blocked = onvm_route_blocked(self->route);
            if (blocked && !blocked_since) {
                blocked_since = onvm_now_ns();
                st->blocked++;
            } else if (!blocked && blocked_since) {
                st->blocked_ns += onvm_now_ns() - blocked_since;
                blocked_since = 0;
            }
        }
        uint32_t n = 0;
        if (!blocked) {
            uint32_t want = burst;
            if (limit && limit - handled < want)
                want = (uint32_t)(limit - handled);
            uint32_t bad_slot = 0, bad_rec = 0;
            n = onvm_take(r, rx, &rx_head, self->buf, want, ONVM_TRANSIT_TO, ONVM_OWNER_TRANSIT(0, self->nf_id),
                          (uint16_t)self->nf_id, &bad_slot, &bad_rec);
            if (bad_slot | bad_rec)
                st->drops[ONVM_DROP_INVALID] += bad_slot + bad_rec; /* what another NF sent wrongly */
            onvm_bp_drained(r, rx);
        }
        /* seq_cst pairs with the manager's store in onvm_grace_pass's protocol. */
        atomic_fetch_add_explicit(&nf->epoch, 1, memory_order_seq_cst);
        onvm_grace_pass(r->hdr);
        uint64_t now;
        if (n == 0) {
            if (++idle == 1)
                spin_budget = blocked ? NF_BLOCKED_POLLS
                                      : onvm_spin_budget(&spin, onvm_now_ns(), st->busy_ns, NF_SPIN_POLLS);
            if (idle < spin_budget) {
                onvm_idle_poll(idle);
                continue;
            }
            idle = 0;
            now = onvm_now_ns();
            long sleep_ns = NF_MAX_SLEEP_NS;
            if (periodic != Py_None)
                sleep_ns = next_periodic > now ? (long)(next_periodic - now) : 0;
            if (ttl_ns) {
                long until = start + ttl_ns > now ? (long)(start + ttl_ns - now) : 0;
                if (until < sleep_ns)
                    sleep_ns = until;
            }
            if (sleep_ns > NF_MAX_SLEEP_NS)
                sleep_ns = NF_MAX_SLEEP_NS;
            if (sleep_ns > 0) {
                onvm_waiter_prepare(&nf->wait);
                if (!blocked)
                    onvm_bp_drained(r, rx); /* after the fence: a flag set as we drained is seen */
                if (atomic_load(&nf->stop) || atomic_load(&self->msg_flag) ||
                    (blocked ? !onvm_bp_wait_on(blocked, 1ull << self->nf_id) : onvm_ring_count(rx, r->ring_mask) != 0)) {
                    onvm_waiter_cancel(&nf->wait);
                } else {
                    Py_BEGIN_ALLOW_THREADS onvm_waiter_sleep(&nf->wait, sleep_ns);
                    Py_END_ALLOW_THREADS
                }
                now = onvm_now_ns();
            }
        } else {
            idle = 0;
            st->rx += n;
            st->bursts++;
            uint32_t tap = atomic_load_explicit(&nf->cpu.tap, ONVM_RELAXED); /* onvm_capture.h */
            if (tap & ONVM_CAP_RX_MASK)
                onvm_cap_burst(r, tap & ONVM_CAP_RX_MASK, self->buf, n, 0);
            uint64_t t0 = onvm_now_ns(), bytes = 0;
            uint32_t routed = n;
            if (batch) {
                uint32_t *a_slot = bb.b[0].buf, *a_len = bb.b[1].buf, *a_hash = bb.b[2].buf;
                uint16_t *a_port = bb.b[3].buf, *a_dest = bb.b[5].buf;
                uint8_t *a_act = bb.b[4].buf;
                const uint8_t act0 = (uint8_t)def_action;
                const uint16_t dest0 = (uint16_t)def_dest;
                uint64_t trunc = 0;
                /* Each field read once into a register, counters summed in registers:
                 * the region's counters could alias the arrays, and a per-packet add
                 * to one would chain every iteration through memory. */
                for (uint32_t i = 0; i < n; i++) {
                    uint32_t s = self->buf[i];
                    struct onvm_meta *m = &r->meta[s];
                    uint8_t flags = m->flags;
                    uint32_t len = m->len;
                    if (ONVM_UNLIKELY(flags & (ONVM_MF_HELD | ONVM_MF_RELEASING)))
                        m->flags = (uint8_t)(flags & ~(ONVM_MF_HELD | ONVM_MF_RELEASING)); /* nobody holds what arrives */
                    a_slot[i] = s;
                    a_len[i] = len;
                    bytes += len;
                    trunc += (flags & ONVM_MF_TRUNC) != 0;
                    a_hash[i] = m->flow_hash;
                    a_port[i] = m->in_port;
                    a_act[i] = act0;
                    a_dest[i] = dest0;
                }
                st->parse_errors += trunc;
                PyObject *nobj = PyLong_FromUnsignedLong(n);
                PyObject *ret = nobj ? PyObject_CallOneArg(handler, nobj) : NULL;
                Py_XDECREF(nobj);
                if (!ret) {
                    routed = 0;
                    failed = 1;
                } else {
                    Py_DECREF(ret);
                    for (uint32_t i = 0; i < n; i++) {
                        struct onvm_meta *m = &r->meta[self->buf[i]];
                        m->action = a_act[i];
                        m->dest = a_dest[i];
                    }
                }
            } else {
                PyObject *argv[2] = {(PyObject *)self->pkt, (PyObject *)self->meta};
                for (uint32_t i = 0; i < n; i++) {
                    uint32_t s = self->buf[i];
                    struct onvm_meta *m = &r->meta[s];
                    if (ONVM_UNLIKELY(m->flags & (ONVM_MF_HELD | ONVM_MF_RELEASING)))
                        m->flags &= (uint8_t)~(ONVM_MF_HELD | ONVM_MF_RELEASING); /* nobody holds what arrives */
                    m->action = (uint8_t)def_action;
                    m->dest = (uint16_t)def_dest;
                    bytes += m->len;
                    st->parse_errors += (m->flags & ONVM_MF_TRUNC) != 0;
                    onvm_views_set(self->pkt, self->meta, r, s, m);
                    PyObject *ret = PyObject_Vectorcall(handler, argv, 2, NULL);
                    if (!ret) {
                        routed = i; /* those before it have their actions */
                        failed = 1;
                        break;
                    }
                    Py_DECREF(ret);
                }
                onvm_views_set(self->pkt, self->meta, r, 0, NULL);
            }
            now = onvm_now_ns();
            st->handler_ns += now - t0;
            onvm_lat_sample_burst(&st->lat, r->meta, self->buf, routed, now);
            st->rx_bytes += bytes;
            if ((tap = atomic_load_explicit(&nf->cpu.tap, ONVM_RELAXED) >> ONVM_CAP_TX_SHIFT))
                onvm_cap_burst(r, tap, self->buf, routed, 1); /* what it hands on */
            onvm_route_burst(self->route, self->buf, routed, ONVM_ROUTE_META); /* held packets stay */
            if (routed < n)
                free_slots(self, self->buf + routed, n - routed);
            onvm_held_flush(self->route, &self->held);
            st->busy_ns += onvm_now_ns() - t0;
            handled += n;
            if (failed)
                break;
            if (limit && handled >= limit) {
                reason = "limit";
                break;
            }
        }
        if (PyErr_CheckSignals() < 0) {
            failed = 1;
            break;
        }
        if (messages != Py_None && atomic_exchange(&self->msg_flag, 0)) {
            PyObject *ret = PyObject_CallNoArgs(messages);
            if (!ret) {
                failed = 1;
                break;
            }
            Py_DECREF(ret);
        }
        if (ttl_ns && now - start >= ttl_ns) {
            reason = "ttl";
            break;
        }
        if (periodic != Py_None && now >= next_periodic) {
            next_periodic = now + period_ns;
            PyObject *ret = PyObject_CallNoArgs(periodic);
            onvm_held_flush(self->route, &self->held);
            if (!ret) {
                failed = 1;
                break;
            }
            Py_DECREF(ret);
        }
        if (now >= next_yield) { /* let the process's other Python threads run */
            next_yield = now + 10000000ull;
            Py_BEGIN_ALLOW_THREADS Py_END_ALLOW_THREADS
        }
    }
    release_bufs(&bb);
    self->local_stop = 0;
    if (blocked_since) {
        st->blocked_ns += onvm_now_ns() - blocked_since;
        atomic_store(&nf->bp.blocked_on, 0);
    }
    self->running = 0;
    onvm_held_flush(self->route, &self->held);
    if (failed)
        return NULL;
    return PyUnicode_FromString(reason);
}

static PyObject *NFContext_stop(NFContextObject *self, PyObject *u) {
    (void)u;
    self->local_stop = 1;
    onvm_waiter_wake(&self->region->r.nfs[self->nf_id].wait);
    Py_RETURN_NONE;
}

/* notify(): messages are waiting; the loop calls its messages hook soon, even asleep. */
static PyObject *NFContext_notify(NFContextObject *self, PyObject *u) {
    (void)u;
    atomic_store(&self->msg_flag, 1);
    onvm_waiter_wake(&self->region->r.nfs[self->nf_id].wait);
    Py_RETURN_NONE;
}

/* inject(data, action=NEXT, dest=0, count=1, chain=0) -> packets sent */
static PyObject *NFContext_inject(NFContextObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"data", "action", "dest", "count", "chain", NULL};
    Py_buffer b;
    unsigned action = ONVM_ACT_NEXT, dest = 0, count = 1, chain = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|IIII", kwlist, &b, &action, &dest, &count, &chain))
        return NULL;
    struct onvm_region *r = &self->region->r;
    if ((size_t)b.len > onvm_slot_room(r) || action >= ONVM_ACT_COUNT || chain >= ONVM_MAX_CHAINS) {
        PyBuffer_Release(&b);
        return PyErr_Format(PyExc_ValueError, "cannot inject: %zd bytes (slot room %u), action %u, chain %u",
                            b.len, onvm_slot_room(r), action, chain);
    }
    uint32_t sent = 0, buf[64]; /* not self->buf: a handler may inject while a burst is in it */
    while (sent < count) {
        uint32_t want = count - sent > 64 ? 64 : count - sent;
        uint32_t got = onvm_pool_alloc_burst(r, buf, want, (uint16_t)self->nf_id);
        if (!got)
            break;
        for (uint32_t i = 0; i < got; i++) {
            uint32_t s = buf[i];
            onvm_slot_reset(r, s);
            struct onvm_meta *m = &r->meta[s];
            memcpy(onvm_slot_data(r, s), b.buf, (size_t)b.len);
            m->len = (uint32_t)b.len;
            onvm_parse(m, onvm_slot_data(r, s), m->len);
            m->rx_ns = onvm_now_ns();
            m->in_port = 0xffff;
            m->action = (uint8_t)action;
            m->dest = (uint16_t)dest;
            m->chain_id = (uint16_t)chain;
            m->chain_idx = 0;
        }
        /* Acquire pairs with onvm_trace_arm's release: the filter and count are written. */
        if (atomic_load_explicit(&onvm_trace(r)->armed, ONVM_ACQUIRE))
            onvm_trace_injected(r, buf, got, self->nf_id);
        onvm_cap_nf_sent(r, self->nf_id, buf, got); /* what it sends, as what it hands on */
        onvm_route_burst(self->route, buf, got, ONVM_ROUTE_META);
        sent += got;
    }
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(sent);
}

static PyObject *NFContext_release(NFContextObject *self, PyObject *args) {
    PyObject *res = onvm_release_held(&self->region->r, &self->held, self->nf_id, args);
    if (res && !self->running)
        onvm_held_flush(self->route, &self->held);
    return res;
}

static PyObject *NFContext_hold(NFContextObject *self, PyObject *args) {
    return onvm_hold_slots(&self->region->r, self->nf_id, args);
}

static PyMethodDef NFContext_methods[] = {
    {"release", (PyCFunction)NFContext_release, METH_VARARGS,
     "release(slots, action, dest=0) -> how many of them this NF held and sent on"},
    {"hold", (PyCFunction)NFContext_hold, METH_VARARGS, "hold(slots) -> how many: keep packets of this burst"},
    {"run", (PyCFunction)(void (*)(void))NFContext_run, METH_VARARGS | METH_KEYWORDS,
     "run(handler, batch=True, arrays=None, burst=256, limit=0, ttl=0.0, periodic=None, period=1.0, "
     "default_action=1, default_dest=0, messages=None) -> reason"},
    {"stop", (PyCFunction)NFContext_stop, METH_NOARGS, "Leave run() after the current burst."},
    {"notify", (PyCFunction)NFContext_notify, METH_NOARGS, "Have run() call its messages hook soon."},
    {"inject", (PyCFunction)(void (*)(void))NFContext_inject, METH_VARARGS | METH_KEYWORDS,
     "inject(data, action=NEXT, dest=0, count=1, chain=0) -> packets sent"},
    {NULL}};

/* Built whole by tp_new: there is no __init__ to call again, and no half-made object. */
static PyObject *NFContext_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    (void)kw;
    NFContextObject *self = (NFContextObject *)type->tp_alloc(type, 0);
    if (self && NFContext_build(self, args) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

PyTypeObject NFContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.NFContext",
    .tp_basicsize = sizeof(NFContextObject),
    .tp_dealloc = (destructor)NFContext_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NFContext(region, nf_id): the native side of one NF.",
    .tp_methods = NFContext_methods,
    .tp_new = NFContext_new,
};
