/* harness.c - put packets into an NF's ring and take them out of rings, in
 * process: what the manager's RX and TX workers do, for tests of NFs that run
 * the real native loop without a manager (onvm.testing).  Part of the hooks
 * module (hooks.c). */
#include "onvm_hooks.h"

#include <string.h>

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
        if (onvm_ring_enqueue_mp(rx, &s, 1, 1, NULL, 0) != 1) {
            onvm_core->pool_free_burst(r, &s, 1);
            PyErr_Format(PyExc_ValueError, "NF %u's RX ring is full", nf_id);
            break;
        }
        sent++;
    }
    Py_DECREF(fast);
    onvm_bp_pushed(r, rx); /* a producer: past high, the ring is congested */
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(sent);
}

/* drain(region, nf_id, tx) -> [(bytes, action, dest, in_port, src_nf)]; frees the slots */
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
    uint32_t buf[64], n;
    while (out && (n = onvm_ring_dequeue_sc(ring, buf, 64, 0, r->meta, ONVM_OWNER_MGR)) > 0) {
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

static PyMethodDef harness_functions[] = {
    {"deliver", mod_deliver, METH_VARARGS,
     "deliver(region, nf_id, packets, in_port=0, chain=0) -> count: as RX would, into the NF's RX ring"},
    {"drain", mod_drain, METH_VARARGS,
     "drain(region, nf_id, tx) -> [(bytes, action, dest, in_port, src_nf)]: empty a ring, free its slots"},
    {NULL}};

int onvm_harness_register(PyObject *module) { return PyModule_AddFunctions(module, harness_functions); }
