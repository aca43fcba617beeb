/* latency.c - read the latency histograms out of the region (module functions).
 *
 * The recording side is inline in onvm_latency.h; this file only turns a
 * histogram into a dict for Python: {count, sum_ns, max_ns, buckets}.
 */
#include "onvm_latency.h"
#include "onvm_nf.h"

static PyObject *hist_dict(const struct onvm_lat_hist *h) {
    PyObject *b = PyTuple_New(ONVM_LAT_BUCKETS);
    if (!b)
        return NULL;
    for (int i = 0; i < ONVM_LAT_BUCKETS; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(h->buckets[i]);
        if (!v) {
            Py_DECREF(b);
            return NULL;
        }
        PyTuple_SET_ITEM(b, i, v);
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:N}", "count", (unsigned long long)h->count, "sum_ns",
                         (unsigned long long)h->sum_ns, "max_ns", (unsigned long long)h->max_ns,
                         "buckets", b);
}

static void hist_add(struct onvm_lat_hist *to, const struct onvm_lat_hist *h) {
    to->count += h->count;
    to->sum_ns += h->sum_ns;
    if (h->max_ns > to->max_ns)
        to->max_ns = h->max_ns;
    for (int i = 0; i < ONVM_LAT_BUCKETS; i++)
        to->buckets[i] += h->buckets[i];
}

static RegionObject *open_region(PyObject *arg) {
    if (!PyObject_TypeCheck(arg, &RegionType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Region");
        return NULL;
    }
    RegionObject *ro = (RegionObject *)arg;
    if (!ro->r.base) {
        PyErr_SetString(PyExc_ValueError, "region is closed");
        return NULL;
    }
    return ro;
}

/* nf_latency(region, nf_id) -> dict: RX to the end of the NF's handler */
static PyObject *mod_nf_latency(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *region;
    unsigned id;
    if (!PyArg_ParseTuple(args, "OI", &region, &id))
        return NULL;
    RegionObject *ro = open_region(region);
    if (!ro)
        return NULL;
    if (id == 0 || id >= ONVM_MAX_NFS)
        return PyErr_Format(PyExc_ValueError, "NF id %u is out of range (1..%d)", id, ONVM_MAX_NFS - 1);
    struct onvm_lat_hist h = ro->r.nfs[id].stats.lat; /* a snapshot; the NF writes it alone */
    return hist_dict(&h);
}

/* port_latency(region, port) -> dict: end to end, summed over the worker rows */
static PyObject *mod_port_latency(PyObject *m, PyObject *args) {
    (void)m;
    PyObject *region;
    unsigned id;
    if (!PyArg_ParseTuple(args, "OI", &region, &id))
        return NULL;
    RegionObject *ro = open_region(region);
    if (!ro)
        return NULL;
    if (id >= ONVM_MAX_PORTS)
        return PyErr_Format(PyExc_ValueError, "port %u is out of range (0..%d)", id, ONVM_MAX_PORTS - 1);
    struct onvm_lat_hist sum;
    memset(&sum, 0, sizeof sum);
    for (int w = 0; w < ONVM_MAX_WORKERS; w++)
        hist_add(&sum, &ro->r.ports[id].by_worker[w].lat);
    return hist_dict(&sum);
}

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
    ret = hist_dict(h);
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

static PyMethodDef latency_methods[] = {
    {"nf_latency", mod_nf_latency, METH_VARARGS, "nf_latency(region, nf_id) -> histogram dict"},
    {"port_latency", mod_port_latency, METH_VARARGS, "port_latency(region, port) -> histogram dict"},
    {"lat_record", mod_lat_record, METH_VARARGS, "lat_record(rx_ns_list, now) -> histogram dict"},
    {"lat_bucket", mod_lat_bucket, METH_O, "lat_bucket(ns) -> bucket index"},
    {NULL}};

int onvm_latency_register(PyObject *m) {
    if (PyModule_AddFunctions(m, latency_methods) < 0)
        return -1;
    return PyModule_AddIntConstant(m, "LAT_BUCKETS", ONVM_LAT_BUCKETS);
}
