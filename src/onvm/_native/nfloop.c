/* nfloop.c - the NF run loop and the per-packet views it hands to Python.
 *
 * The loop dequeues a burst from the NF's RX ring, calls the Python handler
 * once per burst (batch mode) or once per packet (packet mode), then delivers
 * every packet by its action: straight into the next NF's RX ring when the
 * action names a service, into the NF's TX ring when a port must send it.
 * It polls while packets come and sleeps on a futex when they stop.
 *
 * Packet, Meta and header views are reused for every packet: they are valid
 * only during the handler call.
 */


#include "onvm_latency.h"
#include "onvm_nf.h"
#include "onvm_parse.h"

#define NF_SPIN_POLLS 512
#define NF_MAX_SLEEP_NS 100000000L

/* ===== views =============================================================== */

typedef struct {
    PyObject_HEAD struct onvm_region *r;
    uint32_t slot;
    struct onvm_meta *m;
    uint8_t *data;
    PyObject *views[3]; /* ipv4, tcp, udp */
} PacketObject;

enum { HV_IPV4 = 0, HV_TCP = 1, HV_UDP = 2 };

typedef struct {
    PyObject_HEAD PacketObject *pkt; /* borrowed: the packet owns its views */
    int kind;
} HeaderObject;

typedef struct {
    PyObject_HEAD struct onvm_meta *m;
} MetaObject;

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static PyObject *need_packet(void) {
    PyErr_SetString(PyExc_RuntimeError, "packet views are valid only inside the handler call");
    return NULL;
}

#define PKT_LIVE(p)                                                                                \
    do {                                                                                           \
        if (!(p)->m)                                                                               \
            return need_packet();                                                                  \
    } while (0)

static PyObject *Packet_len(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromUnsignedLong(p->m->len);
}
static PyObject *Packet_slot(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromUnsignedLong(p->slot);
}
static PyObject *Packet_in_port(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromLong(p->m->in_port);
}
static PyObject *Packet_flow_hash(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromUnsignedLong(p->m->flow_hash);
}
static PyObject *Packet_rx_ns(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromUnsignedLongLong(p->m->rx_ns);
}
static PyObject *Packet_data(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyMemoryView_FromMemory((char *)p->data, p->m->len, PyBUF_WRITE);
}
static PyObject *Packet_ether_type(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    if (p->m->len < 14)
        Py_RETURN_NONE;
    uint32_t off = p->m->l3_off ? p->m->l3_off - 2u : 12u;
    return PyLong_FromLong(rd16(p->data + off));
}

static PyObject *view(PacketObject *p, int kind) {
    PKT_LIVE(p);
    int present = kind == HV_IPV4 ? p->m->l3_type == ONVM_L3_IPV4
                                  : p->m->l4_off && p->m->l4_proto == (kind == HV_TCP ? 6 : 17);
    if (!present)
        Py_RETURN_NONE;
    if (!p->views[kind]) {
        HeaderObject *h = PyObject_New(HeaderObject, &HeaderType);
        if (!h)
            return NULL;
        h->pkt = p;
        h->kind = kind;
        p->views[kind] = (PyObject *)h;
    }
    Py_INCREF(p->views[kind]);
    return p->views[kind];
}
static PyObject *Packet_ipv4(PacketObject *p, void *c) {
    (void)c;
    return view(p, HV_IPV4);
}
static PyObject *Packet_tcp(PacketObject *p, void *c) {
    (void)c;
    return view(p, HV_TCP);
}
static PyObject *Packet_udp(PacketObject *p, void *c) {
    (void)c;
    return view(p, HV_UDP);
}

static PyObject *Packet_five_tuple(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    if (p->m->l3_type != ONVM_L3_IPV4)
        Py_RETURN_NONE;
    const uint8_t *ip = p->data + p->m->l3_off;
    unsigned sp = 0, dp = 0;
    if (p->m->l4_off && (p->m->l4_proto == 6 || p->m->l4_proto == 17)) {
        sp = rd16(p->data + p->m->l4_off);
        dp = rd16(p->data + p->m->l4_off + 2);
    }
    return Py_BuildValue("(kkBII)", (unsigned long)rd32(ip + 12), (unsigned long)rd32(ip + 16),
                         p->m->l4_proto, sp, dp);
}

static void Packet_dealloc(PacketObject *p) {
    for (int i = 0; i < 3; i++)
        Py_XDECREF(p->views[i]);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyGetSetDef Packet_getset[] = {
    {"len", (getter)Packet_len, NULL, "packet length in bytes", NULL},
    {"slot", (getter)Packet_slot, NULL, "pool slot index", NULL},
    {"in_port", (getter)Packet_in_port, NULL, "port the packet came in on", NULL},
    {"flow_hash", (getter)Packet_flow_hash, NULL, "symmetric 5-tuple hash (0: not IP)", NULL},
    {"rx_ns", (getter)Packet_rx_ns, NULL, "CLOCK_MONOTONIC at RX", NULL},
    {"data", (getter)Packet_data, NULL, "writable memoryview of the bytes (zero copy)", NULL},
    {"ether_type", (getter)Packet_ether_type, NULL, "EtherType after any VLAN tags", NULL},
    {"ipv4", (getter)Packet_ipv4, NULL, "IPv4 header view or None", NULL},
    {"tcp", (getter)Packet_tcp, NULL, "TCP header view or None", NULL},
    {"udp", (getter)Packet_udp, NULL, "UDP header view or None", NULL},
    {"five_tuple", (getter)Packet_five_tuple, NULL, "(src, dst, proto, sport, dport) for IPv4, else None", NULL},
    {NULL}};

PyTypeObject PacketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Packet",
    .tp_basicsize = sizeof(PacketObject),
    .tp_dealloc = (destructor)Packet_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A zero-copy view of the packet being handled.",
    .tp_getset = Packet_getset,
};

/* ---- header views ---- */

static uint8_t *hdr_base(HeaderObject *h) {
    PacketObject *p = h->pkt;
    if (!p->m)
        return NULL;
    return p->data + (h->kind == HV_IPV4 ? p->m->l3_off : p->m->l4_off);
}

#define HDR_GET(name, expr)                                                                        \
    static PyObject *Header_##name(HeaderObject *h, void *c) {                                     \
        (void)c;                                                                                   \
        uint8_t *b = hdr_base(h);                                                                  \
        if (!b)                                                                                    \
            return need_packet();                                                                  \
        return PyLong_FromUnsignedLong(expr);                                                      \
    }

HDR_GET(src, h->kind == HV_IPV4 ? rd32(b + 12) : rd16(b))
HDR_GET(dst, h->kind == HV_IPV4 ? rd32(b + 16) : rd16(b + 2))
HDR_GET(proto, h->kind == HV_IPV4 ? b[9] : 0)
HDR_GET(ttl, h->kind == HV_IPV4 ? b[8] : 0)
HDR_GET(total_length, h->kind == HV_IPV4 ? rd16(b + 2) : 0)
HDR_GET(flags, h->kind == HV_TCP ? b[13] : 0)

static int Header_set_port(HeaderObject *h, PyObject *v, int off) {
    uint8_t *b = hdr_base(h);
    if (!b) {
        need_packet();
        return -1;
    }
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (h->kind == HV_IPV4) {
        if (x > 0xffffffffUL) {
            PyErr_SetString(PyExc_ValueError, "an IPv4 address is 32 bits");
            return -1;
        }
        uint8_t *a = b + 12 + off * 4;
        a[0] = (uint8_t)(x >> 24);
        a[1] = (uint8_t)(x >> 16);
        a[2] = (uint8_t)(x >> 8);
        a[3] = (uint8_t)x;
        return 0;
    }
    if (x > 0xffff) {
        PyErr_SetString(PyExc_ValueError, "a port is 16 bits");
        return -1;
    }
    wr16(b + off * 2, (uint16_t)x);
    return 0;
}
static int Header_set_src(HeaderObject *h, PyObject *v, void *c) {
    (void)c;
    return Header_set_port(h, v, 0);
}
static int Header_set_dst(HeaderObject *h, PyObject *v, void *c) {
    (void)c;
    return Header_set_port(h, v, 1);
}
static int Header_set_ttl(HeaderObject *h, PyObject *v, void *c) {
    (void)c;
    uint8_t *b = hdr_base(h);
    if (!b || h->kind != HV_IPV4) {
        PyErr_SetString(PyExc_AttributeError, "ttl belongs to an IPv4 header");
        return -1;
    }
    unsigned long x = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (x > 255) {
        PyErr_SetString(PyExc_ValueError, "ttl is 8 bits");
        return -1;
    }
    b[8] = (uint8_t)x;
    return 0;
}

static PyGetSetDef Header_getset[] = {
    {"src", (getter)Header_src, (setter)Header_set_src, "source address (IPv4) or port (TCP/UDP)", NULL},
    {"dst", (getter)Header_dst, (setter)Header_set_dst, "destination address or port", NULL},
    {"src_port", (getter)Header_src, (setter)Header_set_src, "TCP/UDP source port", NULL},
    {"dst_port", (getter)Header_dst, (setter)Header_set_dst, "TCP/UDP destination port", NULL},
    {"proto", (getter)Header_proto, NULL, "IPv4 protocol", NULL},
    {"ttl", (getter)Header_ttl, (setter)Header_set_ttl, "IPv4 time to live", NULL},
    {"total_length", (getter)Header_total_length, NULL, "IPv4 total length", NULL},
    {"flags", (getter)Header_flags, NULL, "TCP flags", NULL},
    {NULL}};

PyTypeObject HeaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Header",
    .tp_basicsize = sizeof(HeaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A view of one header of the packet being handled.",
    .tp_getset = Header_getset,
};

/* ---- meta ---- */

#define META_LIVE(o)                                                                               \
    do {                                                                                           \
        if (!(o)->m)                                                                               \
            return need_packet();                                                                  \
    } while (0)

static PyObject *meta_set(MetaObject *o, unsigned action, unsigned dest) {
    META_LIVE(o);
    o->m->action = (uint8_t)action;
    o->m->dest = (uint16_t)dest;
    Py_RETURN_NONE;
}
static PyObject *Meta_drop(MetaObject *o, PyObject *u) {
    (void)u;
    return meta_set(o, ONVM_ACT_DROP, 0);
}
static PyObject *Meta_next(MetaObject *o, PyObject *u) {
    (void)u;
    return meta_set(o, ONVM_ACT_NEXT, 0);
}
static PyObject *dest_arg(MetaObject *o, PyObject *arg, unsigned action, unsigned limit) {
    unsigned long d = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (d >= limit)
        return PyErr_Format(PyExc_ValueError, "destination %lu is out of range (0..%u)", d, limit - 1);
    return meta_set(o, action, (unsigned)d);
}
static PyObject *Meta_tonf(MetaObject *o, PyObject *arg) {
    return dest_arg(o, arg, ONVM_ACT_TONF, ONVM_MAX_SERVICES);
}
static PyObject *Meta_out(MetaObject *o, PyObject *arg) {
    return dest_arg(o, arg, ONVM_ACT_OUT, ONVM_MAX_PORTS);
}

static PyObject *Meta_get_action(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->action);
}
static int Meta_set_action(MetaObject *o, PyObject *v, void *c) {
    (void)c;
    if (!o->m) {
        need_packet();
        return -1;
    }
    unsigned long a = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (a >= ONVM_ACT_COUNT) {
        PyErr_Format(PyExc_ValueError, "action %lu is not DROP, NEXT, TONF or OUT", a);
        return -1;
    }
    o->m->action = (uint8_t)a;
    return 0;
}
static PyObject *Meta_get_dest(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->dest);
}
static int Meta_set_dest(MetaObject *o, PyObject *v, void *c) {
    (void)c;
    if (!o->m) {
        need_packet();
        return -1;
    }
    unsigned long d = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (d > 0xffff) {
        PyErr_SetString(PyExc_ValueError, "destination is 16 bits");
        return -1;
    }
    o->m->dest = (uint16_t)d;
    return 0;
}
static PyObject *Meta_chain_idx(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->chain_idx);
}
static PyObject *Meta_src_nf(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->src_nf);
}
static PyObject *Meta_flags(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->flags);
}

static PyMethodDef Meta_methods[] = {
    {"drop", (PyCFunction)Meta_drop, METH_NOARGS, "Drop the packet."},
    {"next", (PyCFunction)Meta_next, METH_NOARGS, "Send it to the next hop of its chain."},
    {"tonf", (PyCFunction)Meta_tonf, METH_O, "tonf(service): send it to a service."},
    {"out", (PyCFunction)Meta_out, METH_O, "out(port): send it out of a port."},
    {NULL}};

static PyGetSetDef Meta_getset[] = {
    {"action", (getter)Meta_get_action, (setter)Meta_set_action, "DROP=0, NEXT=1, TONF=2, OUT=3", NULL},
    {"dest", (getter)Meta_get_dest, (setter)Meta_set_dest, "service (TONF) or port (OUT)", NULL},
    {"chain_idx", (getter)Meta_chain_idx, NULL, "hop of the chain the packet is at", NULL},
    {"src_nf", (getter)Meta_src_nf, NULL, "NF that handled the packet last", NULL},
    {"flags", (getter)Meta_flags, NULL, "parse flags (1 VLAN, 2 truncated, 4 fragment)", NULL},
    {NULL}};

PyTypeObject MetaType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Meta",
    .tp_basicsize = sizeof(MetaObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The action record of the packet being handled.",
    .tp_methods = Meta_methods,
    .tp_getset = Meta_getset,
};

/* ===== NFContext ============================================================ */

typedef struct {
    PyObject_HEAD RegionObject *region;
    unsigned nf_id;
    struct onvm_route_ctx *route;
    PacketObject *pkt;
    MetaObject *meta;
    int local_stop;
    uint32_t buf[ONVM_BURST_MAX];
} NFContextObject;

static int NFContext_init(NFContextObject *self, PyObject *args) {
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
    self->route->act = nf->stats.act;
    self->route->drops = nf->stats.drops;
    self->route->tx = &nf->stats.tx;
    self->pkt = PyObject_New(PacketObject, &PacketType);
    self->meta = PyObject_New(MetaObject, &MetaType);
    if (!self->pkt || !self->meta)
        return -1;
    self->pkt->r = &ro->r;
    self->pkt->m = NULL;
    self->pkt->data = NULL;
    memset(self->pkt->views, 0, sizeof self->pkt->views);
    self->meta->m = NULL;
    return 0;
}

static void NFContext_dealloc(NFContextObject *self) {
    Py_XDECREF(self->pkt);
    Py_XDECREF(self->meta);
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
                             "default_action", "default_dest", NULL};
    PyObject *handler, *arrays = Py_None, *periodic = Py_None;
    int batch = 1;
    unsigned burst = 256, def_action = ONVM_ACT_NEXT, def_dest = 0;
    unsigned long long limit = 0;
    double ttl = 0.0, period = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pOIKdOdII", kwlist, &handler, &batch, &arrays, &burst,
                                     &limit, &ttl, &periodic, &period, &def_action, &def_dest))
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
    uint64_t start = onvm_now_ns();
    uint64_t ttl_ns = ttl > 0 ? (uint64_t)(ttl * 1e9) : 0;
    uint64_t period_ns = period > 0 ? (uint64_t)(period * 1e9) : 1000000000ull;
    uint64_t next_periodic = start + period_ns, next_yield = start + 10000000ull;
    uint64_t handled = 0;
    unsigned idle = 0;
    const char *reason = "stopped";
    int failed = 0;
    self->local_stop = 0;

    for (;;) {
        if (atomic_load_explicit(&nf->stop, ONVM_RELAXED)) {
            reason = "manager";
            break;
        }
        if (self->local_stop)
            break;
        uint32_t want = burst;
        if (limit && limit - handled < want)
            want = (uint32_t)(limit - handled);
        uint32_t n = onvm_ring_dequeue_sc(rx, self->buf, want, 0, r->meta, (uint16_t)self->nf_id);
        atomic_fetch_add_explicit(&nf->epoch, 1, ONVM_RELAXED);
        uint64_t now;
        if (n == 0) {
            if (++idle < NF_SPIN_POLLS) {
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
                if (onvm_ring_count(rx) || atomic_load(&nf->stop)) {
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
            uint64_t t0 = onvm_now_ns(), bytes = 0;
            uint32_t routed = n;
            if (batch) {
                uint32_t *a_slot = bb.b[0].buf, *a_len = bb.b[1].buf, *a_hash = bb.b[2].buf;
                uint16_t *a_port = bb.b[3].buf, *a_dest = bb.b[5].buf;
                uint8_t *a_act = bb.b[4].buf;
                for (uint32_t i = 0; i < n; i++) {
                    struct onvm_meta *m = &r->meta[self->buf[i]];
                    a_slot[i] = self->buf[i];
                    a_len[i] = m->len;
                    bytes += m->len;
                    a_hash[i] = m->flow_hash;
                    a_port[i] = m->in_port;
                    a_act[i] = (uint8_t)def_action;
                    a_dest[i] = (uint16_t)def_dest;
                }
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
                    m->action = (uint8_t)def_action;
                    m->dest = (uint16_t)def_dest;
                    bytes += m->len;
                    self->pkt->slot = s;
                    self->pkt->m = m;
                    self->pkt->data = onvm_slot_data(r, s);
                    self->meta->m = m;
                    PyObject *ret = PyObject_Vectorcall(handler, argv, 2, NULL);
                    if (!ret) {
                        routed = i; /* those before it have their actions */
                        failed = 1;
                        break;
                    }
                    Py_DECREF(ret);
                }
                self->pkt->m = NULL;
                self->meta->m = NULL;
            }
            now = onvm_now_ns();
            st->handler_ns += now - t0;
            onvm_lat_record_burst(&st->lat, r->meta, self->buf, routed, now);
            st->rx_bytes += bytes;
            onvm_route_burst(self->route, self->buf, routed, ONVM_ROUTE_META);
            if (routed < n)
                free_slots(self, self->buf + routed, n - routed);
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
        if (ttl_ns && now - start >= ttl_ns) {
            reason = "ttl";
            break;
        }
        if (periodic != Py_None && now >= next_periodic) {
            next_periodic = now + period_ns;
            PyObject *ret = PyObject_CallNoArgs(periodic);
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
    if (failed)
        return NULL;
    return PyUnicode_FromString(reason);
}

static PyObject *NFContext_stop(NFContextObject *self, PyObject *u) {
    (void)u;
    self->local_stop = 1;
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
    uint32_t sent = 0;
    while (sent < count) {
        uint32_t want = count - sent > ONVM_BURST_MAX ? ONVM_BURST_MAX : count - sent;
        uint32_t got = onvm_pool_alloc_burst(r, self->buf, want, (uint16_t)self->nf_id);
        if (!got)
            break;
        for (uint32_t i = 0; i < got; i++) {
            uint32_t s = self->buf[i];
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
        onvm_route_burst(self->route, self->buf, got, ONVM_ROUTE_META);
        sent += got;
    }
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(sent);
}

static PyMethodDef NFContext_methods[] = {
    {"run", (PyCFunction)(void (*)(void))NFContext_run, METH_VARARGS | METH_KEYWORDS,
     "run(handler, batch=True, arrays=None, burst=256, limit=0, ttl=0.0, periodic=None, period=1.0, "
     "default_action=1, default_dest=0) -> reason"},
    {"stop", (PyCFunction)NFContext_stop, METH_NOARGS, "Leave run() after the current burst."},
    {"inject", (PyCFunction)(void (*)(void))NFContext_inject, METH_VARARGS | METH_KEYWORDS,
     "inject(data, action=NEXT, dest=0, count=1, chain=0) -> packets sent"},
    {NULL}};

PyTypeObject NFContextType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.NFContext",
    .tp_basicsize = sizeof(NFContextObject),
    .tp_dealloc = (destructor)NFContext_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "NFContext(region, nf_id): the native side of one NF.",
    .tp_methods = NFContext_methods,
    .tp_init = (initproc)NFContext_init,
    .tp_new = PyType_GenericNew,
};
