/* hooks.c - onvm._hooks: test and benchmark entry points of the native core.
 *
 * Nothing in the package imports this module at run time; tests, onvm.testing
 * and onvm.bench do.  It reaches the core through the function table that
 * onvm._native lends (onvm_capi.h).  Here: a process-private Ring with
 * the shared ring's code, the latency recorder, the RX classifier on one slot
 * and the checksum completion of AF_PACKET RX.  harness.c feeds and drains NF
 * rings in process; hookbench.c holds the benchmark hooks.
 */
#include "onvm_hooks.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "onvm_bp.h"
#include "onvm_capture.h"
#include "onvm_latency.h"

const struct onvm_capi *onvm_core;

/* ===== Ring (a private ring for tests and models) ========================= */

typedef struct {
    PyObject_HEAD struct onvm_ring *ring;
    uint32_t mask; /* the geometry is ours, as every user of a shared ring keeps its own */
    uint32_t head; /* the consumer's position */
} RingObject;

static PyObject *list_from_slots(const uint32_t *buf, uint32_t n) {
    PyObject *l = PyList_New(n);
    for (uint32_t i = 0; l && i < n; i++) {
        PyObject *v = PyLong_FromUnsignedLong(buf[i]);
        if (!v) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static int Ring_build(RingObject *self, PyObject *args) {
    unsigned size;
    if (!PyArg_ParseTuple(args, "I", &size))
        return -1;
    if (!onvm_ring_size_ok(size)) {
        PyErr_Format(PyExc_ValueError, "ring size %u is not a power of two in 2..2^24", size);
        return -1;
    }
    if (posix_memalign((void **)&self->ring, 64, onvm_ring_bytes(size)) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    onvm_ring_init(self->ring, size, 0);
    self->mask = size - 1;
    self->head = 0;
    return 0;
}

static void Ring_dealloc(RingObject *self) {
    free(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Ring_enqueue(RingObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"items", "mp", "bulk", "bp", NULL};
    PyObject *items;
    int mp = 0, bulk = 0, bp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|ppp", kwlist, &items, &mp, &bulk, &bp))
        return NULL;
    PyObject *fast = PySequence_Fast(items, "items must be a sequence of ints");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    uint32_t *buf = PyMem_Malloc(sizeof(uint32_t) * (size_t)(n ? n : 1));
    if (!buf) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        buf[i] = (uint32_t)v;
        if (PyErr_Occurred() || v > UINT32_MAX) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "ring entries are 32 bits");
            PyMem_Free(buf);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    uint32_t done = mp ? onvm_ring_enqueue_mp(self->ring, self->mask, buf, (uint32_t)n, bulk, NULL, 0)
                       : onvm_ring_enqueue_sp(self->ring, self->mask, buf, (uint32_t)n, bulk);
    if (bp)
        onvm_bp_pushed(NULL, self->ring);
    PyMem_Free(buf);
    return PyLong_FromUnsignedLong(done);
}

static PyObject *Ring_dequeue(RingObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"n", "bulk", "bp", NULL};
    unsigned n;
    int bulk = 0, bp = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "I|pp", kwlist, &n, &bulk, &bp))
        return NULL;
    if (n > self->mask) {
        if (bulk)
            return PyList_New(0);
        n = self->mask;
    }
    uint32_t *buf = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!buf)
        return PyErr_NoMemory();
    uint32_t got = onvm_ring_dequeue_sc(self->ring, self->mask, &self->head, buf, n, bulk);
    if (bp)
        onvm_bp_drained(NULL, self->ring);
    PyObject *l = list_from_slots(buf, got);
    PyMem_Free(buf);
    return l;
}

static PyObject *Ring_count(RingObject *self, PyObject *u) {
    (void)u;
    return PyLong_FromUnsignedLong(onvm_ring_count(self->ring, self->mask));
}
static PyObject *Ring_free_count(RingObject *self, PyObject *u) {
    (void)u;
    return PyLong_FromUnsignedLong(onvm_ring_free_count(self->ring, self->mask));
}
static PyObject *Ring_capacity(RingObject *self, void *c) {
    (void)c;
    return PyLong_FromUnsignedLong(self->mask);
}
static PyObject *Ring_watermarks(RingObject *self, void *c) {
    (void)c;
    return Py_BuildValue("(II)", self->ring->high, self->ring->low);
}
static PyObject *Ring_congested(RingObject *self, void *c) {
    (void)c;
    return PyBool_FromLong(onvm_bp_congested(self->ring));
}

struct stress_arg {
    struct onvm_ring *ring;
    uint32_t mask, producer, count, burst;
};

static void *stress_producer(void *p) {
    struct stress_arg *a = p;
    uint32_t buf[ONVM_BURST_MAX], sent = 0;
    while (sent < a->count) {
        uint32_t k = a->count - sent < a->burst ? a->count - sent : a->burst;
        for (uint32_t i = 0; i < k; i++)
            buf[i] = a->producer << 24 | (sent + i);
        uint32_t done = onvm_ring_enqueue_mp(a->ring, a->mask, buf, k, 0, NULL, 0);
        sent += done;
        if (!done)
            sched_yield();
    }
    return NULL;
}

/* stress(producers, per_producer, burst): MP producers in threads, one
 * consumer here; checks every item arrives once and in per-producer order. */
static PyObject *Ring_stress(RingObject *self, PyObject *args) {
    unsigned np, per, burst;
    if (!PyArg_ParseTuple(args, "III", &np, &per, &burst))
        return NULL;
    if (np < 1 || np > 8 || per >= (1u << 24) || burst < 1 || burst > ONVM_BURST_MAX)
        return PyErr_Format(PyExc_ValueError, "1-8 producers, < 2^24 items each, burst 1..%d", ONVM_BURST_MAX);
    pthread_t th[8];
    struct stress_arg a[8];
    uint32_t next[8] = {0}, errors = 0, got_total = 0;
    Py_BEGIN_ALLOW_THREADS for (unsigned i = 0; i < np; i++) {
        a[i] = (struct stress_arg){self->ring, self->mask, i, per, burst};
        pthread_create(&th[i], NULL, stress_producer, &a[i]);
    }
    uint32_t buf[ONVM_BURST_MAX];
    while (got_total < np * per) {
        uint32_t k = onvm_ring_dequeue_sc(self->ring, self->mask, &self->head, buf, burst, 0);
        if (!k)
            sched_yield();
        for (uint32_t i = 0; i < k; i++) {
            uint32_t prod = buf[i] >> 24, seq = buf[i] & 0xffffff;
            if (prod >= np || seq != next[prod])
                errors++;
            else
                next[prod]++;
        }
        got_total += k;
    }
    for (unsigned i = 0; i < np; i++)
        pthread_join(th[i], NULL);
    Py_END_ALLOW_THREADS return Py_BuildValue("{s:I,s:I,s:I}", "received", got_total, "errors", errors,
                                              "left", onvm_ring_count(self->ring, self->mask));
}

static PyMethodDef Ring_methods[] = {
    {"enqueue", (PyCFunction)(void (*)(void))Ring_enqueue, METH_VARARGS | METH_KEYWORDS,
     "enqueue(items, mp=False, bulk=False, bp=False) -> count enqueued; bp: as a producer sets the watermark flag"},
    {"dequeue", (PyCFunction)(void (*)(void))Ring_dequeue, METH_VARARGS | METH_KEYWORDS,
     "dequeue(n, bulk=False, bp=False) -> list; bp: as the consumer clears the watermark flag"},
    {"count", (PyCFunction)Ring_count, METH_NOARGS, ""},
    {"free_count", (PyCFunction)Ring_free_count, METH_NOARGS, ""},
    {"stress", (PyCFunction)Ring_stress, METH_VARARGS, "stress(producers, per_producer, burst)"},
    {NULL}};

static PyGetSetDef Ring_getset[] = {{"capacity", (getter)Ring_capacity, NULL, "usable entries", NULL},
                                     {"watermarks", (getter)Ring_watermarks, NULL, "(high, low)", NULL},
                                     {"congested", (getter)Ring_congested, NULL, "past high, not yet drained to low", NULL},
                                    {NULL}};

/* Built whole by tp_new: there is no __init__ to call again, and no half-made object. */
static PyObject *Ring_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    (void)kw;
    RingObject *self = (RingObject *)type->tp_alloc(type, 0);
    if (self && Ring_build(self, args) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._hooks.Ring",
    .tp_basicsize = sizeof(RingObject),
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring(size): a process-private ring with the shared ring's code, for tests.",
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
    .tp_new = Ring_new,
};

/* ===== latency recorder ==================================================== */

/* lat_record(rx_ns, now) -> dict: what the packet path records for packets
 * stamped rx_ns seen at now (for tests against the Python model). */
static PyObject *mod_lat_record(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *seq;
    unsigned long long now;
    if (!PyArg_ParseTuple(args, "OK", &seq, &now))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "rx_ns must be a sequence");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    struct onvm_meta *meta = PyMem_Calloc((size_t)(n ? n : 1), sizeof *meta);
    uint32_t *slots = PyMem_Calloc((size_t)(n ? n : 1), sizeof *slots);
    struct onvm_lat_hist *h = PyMem_Calloc(1, sizeof *h);
    PyObject *ret = NULL;
    if (!meta || !slots || !h) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        meta[i].rx_ns = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred())
            goto out;
        slots[i] = (uint32_t)(n - 1 - i); /* visit them out of order, as a ring would */
    }
    onvm_lat_record_burst(h, meta, slots, (uint32_t)n, now);
    ret = onvm_core->lat_hist_dict(h);
out:
    PyMem_Free(meta);
    PyMem_Free(slots);
    PyMem_Free(h);
    Py_DECREF(fast);
    return ret;
}

static PyObject *mod_lat_bucket(PyObject *m, PyObject *arg) {
    (void)m;
    unsigned long long ns = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLong(onvm_lat_bucket(ns));
}

/* ===== the RX path's decisions, one packet at a time ======================= */

/* classify(region, slot, in_port=-1) -> chain id, as the RX path would decide it for
 * the packet in slot arriving on in_port (updates counters and the flow table). */
static PyObject *mod_classify(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *region;
    unsigned long s;
    int in_port = -1;
    if (!PyArg_ParseTuple(args, "Ok|i", &region, &s, &in_port))
        return NULL;
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return NULL;
    if (in_port >= ONVM_MAX_PORTS)
        return PyErr_Format(PyExc_ValueError, "port %d is out of range", in_port);
    struct onvm_meta meta; /* one copy: another process may write the slot's record */
    uint8_t *d;
    if (!onvm_slot_view(r, s, &meta, &d))
        return PyErr_Format(PyExc_ValueError, "slot %lu is not a packet of the pool", s);
    if (in_port >= 0)
        meta.in_port = (uint16_t)in_port;
    onvm_core->classify(r, &meta, d, onvm_now_ns());
    r->meta[s].in_port = meta.in_port;
    r->meta[s].chain_id = meta.chain_id;
    return PyLong_FromLong(meta.chain_id);
}

/* fix_l4_csum(frame) -> the frame with its TCP/UDP checksum completed, or None */
static PyObject *mod_fix_l4_csum(PyObject *m, PyObject *arg) {
    (void)m;
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) != 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(in.buf, in.len);
    PyBuffer_Release(&in);
    if (out && onvm_core->fix_l4_csum((uint8_t *)PyBytes_AS_STRING(out), (uint32_t)PyBytes_GET_SIZE(out)) != 0) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* cap_match(filter, frame, in_port) -> does a capture with this filter take the frame (parsed as RX would)? */
static PyObject *mod_cap_match(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *fd;
    Py_buffer b;
    unsigned in_port;
    if (!PyArg_ParseTuple(args, "O!y*I", &PyDict_Type, &fd, &b, &in_port))
        return NULL;
    struct onvm_cap_filter f;
    if (onvm_cap_filter_from(fd, &f) < 0 || b.len > 65535) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a frame is at most 65535 bytes");
        PyBuffer_Release(&b);
        return NULL;
    }
    struct onvm_meta meta = {0};
    onvm_core->parse(&meta, b.buf, (uint32_t)b.len);
    meta.len = (uint32_t)b.len;
    meta.in_port = (uint16_t)in_port;
    int hit = onvm_cap_match(&f, &meta, b.buf, (uint32_t)b.len);
    PyBuffer_Release(&b);
    return PyBool_FromLong(hit);
}

/* cap_burst(region, taps, slots, actions=None): the packet path's copy of a burst into captures;
 * with actions (one per slot, set first), as an NF copies what it hands on */
static PyObject *mod_cap_burst(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *reg, *list, *actions = Py_None;
    unsigned taps;
    if (!PyArg_ParseTuple(args, "OIO!|O", &reg, &taps, &PyList_Type, &list, &actions))
        return NULL;
    int sent = actions != Py_None;
    if (sent && (!PyList_Check(actions) || PyList_GET_SIZE(actions) != PyList_GET_SIZE(list)))
        return PyErr_Format(PyExc_ValueError, "actions must be a list as long as slots");
    struct onvm_region *r = onvm_core->region(reg);
    if (!r)
        return NULL;
    uint32_t slots[ONVM_BURST_MAX];
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n > ONVM_BURST_MAX)
        return PyErr_Format(PyExc_ValueError, "at most %d slots", ONVM_BURST_MAX);
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long s = PyLong_AsUnsignedLong(PyList_GET_ITEM(list, i));
        if (PyErr_Occurred())
            return NULL;
        slots[i] = (uint32_t)s;
        if (sent && s < r->pool_count)
            r->meta[s].action = (uint8_t)PyLong_AsUnsignedLong(PyList_GET_ITEM(actions, i));
        if (PyErr_Occurred())
            return NULL;
    }
    onvm_cap_burst(r, taps, slots, (uint32_t)n, sent);
    Py_RETURN_NONE;
}

static PyMethodDef hooks_methods[] = {
    {"cap_burst", mod_cap_burst, METH_VARARGS,
     "cap_burst(region, taps, slots, actions=None): copy into captures (with actions: what an NF hands on)"},
    {"cap_match", mod_cap_match, METH_VARARGS,
     "cap_match(filter, frame, in_port) -> whether a capture with this filter takes the frame"},
    {"lat_record", mod_lat_record, METH_VARARGS, "lat_record(rx_ns_list, now) -> histogram dict"},
    {"lat_bucket", mod_lat_bucket, METH_O, "lat_bucket(ns) -> bucket index"},
    {"classify", mod_classify, METH_VARARGS,
     "classify(region, slot, in_port=-1) -> chain id, as RX would decide it"},
    {"fix_l4_csum", mod_fix_l4_csum, METH_O,
     "fix_l4_csum(frame) -> the frame with its TCP/UDP checksum computed, or None"},
    {NULL}};

static struct PyModuleDef hooksdef = {PyModuleDef_HEAD_INIT, "onvm._hooks",
                                      "Test and benchmark entry points of pyonvm's native core.", -1,
                                      hooks_methods};

PyMODINIT_FUNC PyInit__hooks(void) {
    const struct onvm_capi *api = onvm_capi_import("onvm._hooks");
    if (!api)
        return NULL;
    onvm_core = api;
    PyObject *m = PyModule_Create(&hooksdef);
    if (!m)
        return NULL;
    if (PyType_Ready(&RingType) < 0 || PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0 ||
        onvm_harness_register(m) < 0 || onvm_hookbench_register(m) < 0 ||
        onvm_bpstress_register(m) < 0 || onvm_poolrace_register(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
