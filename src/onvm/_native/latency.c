/* latency.c - read the latency histograms out of the region (module functions).
 *
 * The recording side is inline in onvm_latency.h; this file only turns a
 * histogram into a dict for Python: {count, sum_ns, max_ns, buckets}.  The
 * recorder's test entry points are in the hooks module (hooks.c).
 */
#include "onvm_latency.h"
#include "onvm_nf.h"

PyObject *onvm_lat_hist_dict(const struct onvm_lat_hist *h) {
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
    return onvm_lat_hist_dict(&h);
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
    return onvm_lat_hist_dict(&sum);
}

static PyMethodDef latency_methods[] = {
    {"nf_latency", mod_nf_latency, METH_VARARGS, "nf_latency(region, nf_id) -> histogram dict"},
    {"port_latency", mod_port_latency, METH_VARARGS, "port_latency(region, port) -> histogram dict"},
    {NULL}};

int onvm_latency_register(PyObject *m) { return PyModule_AddFunctions(m, latency_methods); }
