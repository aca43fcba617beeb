/* dpdkmod.c - the binding of onvm._dpdk: DPDK's EAL, the mbuf pool over a
 * region's slots, and dpdk: ports handed to a _native.Manager (dpdk.c).
 *
 * The core module lends what this one needs through its C API capsule
 * (onvm_capi.h).  Errors become onvm._dpdk.DpdkError (an OSError with errno
 * and message) here and nowhere else. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "onvm_dpdk.h"

#include <rte_version.h>

static PyObject *DpdkError;

static PyObject *raise_dpdk(int err, const char *msg) {
    PyObject *v = Py_BuildValue("(is)", err < 0 ? -err : err, msg);
    if (v) {
        PyErr_SetObject(DpdkError, v);
        Py_DECREF(v);
    }
    return NULL;
}

static PyObject *mod_eal_init(PyObject *m, PyObject *seq) {
    (void)m;
    PyObject *fast = PySequence_Fast(seq, "eal_init takes a sequence of strings");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > 256) {
        Py_DECREF(fast);
        return PyErr_Format(PyExc_ValueError, "eal_init takes 1 to 256 arguments (the first is a program name)");
    }
    char **argv = PyMem_Calloc((size_t)n + 1, sizeof *argv);
    if (!argv) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PySequence_Fast_GET_ITEM(fast, i);
        argv[i] = PyUnicode_Check(s) ? (char *)PyUnicode_AsUTF8(s) : NULL;
        if (!argv[i]) {
            PyMem_Free(argv);
            Py_DECREF(fast);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "eal_init takes strings");
            return NULL;
        }
    }
    char err[512] = "";
    int rc;
    /* The EAL copies what it keeps (dpdk.c): argv may go after the call. */
    Py_BEGIN_ALLOW_THREADS rc = onvm_dpdk_eal_init((int)n, argv, err, sizeof err);
    Py_END_ALLOW_THREADS PyMem_Free(argv);
    Py_DECREF(fast);
    if (rc < 0)
        return raise_dpdk(rc, err[0] ? err : "DPDK's EAL did not start");
    Py_RETURN_NONE;
}

static PyObject *mod_eal_ready(PyObject *m, PyObject *unused) {
    (void)m;
    (void)unused;
    return PyBool_FromLong(onvm_dpdk_eal_ready());
}

static PyObject *mod_log(PyObject *m, PyObject *args, PyObject *kw) {
    (void)m;
    static char *kwlist[] = {"serious_only", NULL};
    int serious = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &serious))
        return NULL;
    static char lines[64][256];
    int n = onvm_dpdk_log_take(lines, 64, serious);
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(lines[i], (Py_ssize_t)strlen(lines[i]), "replace");
        if (!s) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, s);
    }
    return l;
}

/* ===== Pool =============================================================== */

typedef struct {
    PyObject_HEAD PyObject *region; /* keeps the mapping alive as long as the pool */
    struct onvm_dpdk_pool *pool;
} PoolObject;

static int Pool_init(PoolObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"region", NULL};
    PyObject *region;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &region))
        return -1;
    struct onvm_region *r = onvm_dpdk_api->region(region);
    if (!r)
        return -1;
    if (self->pool) {
        PyErr_SetString(PyExc_RuntimeError, "the pool is made already");
        return -1;
    }
    char err[512] = "";
    self->pool = onvm_dpdk_pool_create(r, err, sizeof err);
    if (!self->pool) {
        raise_dpdk(ENOMEM, err);
        return -1;
    }
    Py_INCREF(region);
    self->region = region;
    return 0;
}

static void Pool_dealloc(PoolObject *self) {
    onvm_dpdk_pool_put(self->pool); /* the mempool goes with the last port that uses it */
    Py_XDECREF(self->region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Pool_add_port(PoolObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"manager", "port", "devargs", "rxq", "txq", "rxd", "txd", "promisc", NULL};
    PyObject *manager;
    unsigned id;
    struct onvm_dpdk_conf c = {.rxq = -1, .txq = -1, .promisc = 1};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OIs|iiIIp", kwlist, &manager, &id, &c.devargs, &c.rxq, &c.txq,
                                     &c.rxd, &c.txd, &c.promisc))
        return NULL;
    if (!self->pool)
        return PyErr_Format(PyExc_RuntimeError, "the pool is not made");
    struct onvm_mgr *mgr = onvm_dpdk_api->manager(manager);
    if (!mgr)
        return NULL;
    if (mgr->r != onvm_dpdk_pool_region(self->pool))
        return PyErr_Format(PyExc_ValueError, "the manager works on another region than the pool");
    if (id >= ONVM_MAX_PORTS)
        return PyErr_Format(PyExc_ValueError, "port %u is out of range (0..%d)", id, ONVM_MAX_PORTS - 1);
    if (c.rxq > ONVM_MAX_WORKERS || c.txq > ONVM_MAX_WORKERS || c.rxd > 32768 || c.txd > 32768)
        return PyErr_Format(PyExc_ValueError, "queues at most %d, descriptors at most 32768", ONVM_MAX_WORKERS);
    c.rx_workers = mgr->nrx;
    c.workers = mgr->nrx + mgr->ntx;
    char err[512] = "";
    struct onvm_port *p;
    Py_BEGIN_ALLOW_THREADS p = onvm_dpdk_port_open(self->pool, (int)id, &c, err, sizeof err);
    Py_END_ALLOW_THREADS if (!p) return raise_dpdk(EINVAL, err);
    struct onvm_dpdk_port_facts f;
    onvm_dpdk_port_facts(p, &f);
    if (onvm_dpdk_api->add_port(manager, id, p) < 0) {
        onvm_dpdk_api->port_close(p);
        return NULL;
    }
    return Py_BuildValue("{s:I,s:s,s:s,s:I,s:I}", "port_id", f.port_id, "name", f.name, "driver", f.driver,
                         "rx_queues", f.nrxq, "tx_queues", f.ntxq);
}

static PyMethodDef Pool_methods[] = {
    {"add_port", (PyCFunction)(void (*)(void))Pool_add_port, METH_VARARGS | METH_KEYWORDS,
     "add_port(manager, port, devargs, rxq=-1, txq=-1, rxd=0, txd=0, promisc=True) -> facts: "
     "probe the device, set it up over the pool and give it to the manager as its port"},
    {NULL}};

static PyTypeObject PoolType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._dpdk.Pool",
    .tp_basicsize = sizeof(PoolObject),
    .tp_dealloc = (destructor)Pool_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pool(region): mbufs over the region's slots, for the dpdk: ports of one manager.",
    .tp_methods = Pool_methods,
    .tp_init = (initproc)Pool_init,
    .tp_new = PyType_GenericNew,
};

static PyMethodDef module_methods[] = {
    {"eal_init", mod_eal_init, METH_O, "eal_init(argv): start DPDK's EAL (once per process)"},
    {"eal_ready", mod_eal_ready, METH_NOARGS, "Whether the EAL runs in this process."},
    {"log", (PyCFunction)(void (*)(void))mod_log, METH_VARARGS | METH_KEYWORDS,
     "log(serious_only=False) -> the lines DPDK logged since the last call"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "onvm._dpdk",
                                       "pyonvm's dpdk: ports (links DPDK; the manager only).", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__dpdk(void) {
    const struct onvm_capi *api = onvm_capi_import("onvm._dpdk");
    if (!api)
        return NULL;
    onvm_dpdk_api = api;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    if (PyType_Ready(&PoolType) < 0)
        return NULL;
    Py_INCREF(&PoolType);
    PyModule_AddObject(m, "Pool", (PyObject *)&PoolType);
    DpdkError = PyErr_NewException("onvm._dpdk.DpdkError", PyExc_OSError, NULL);
    PyModule_AddObject(m, "DpdkError", DpdkError);
    PyModule_AddStringConstant(m, "PMD_DIR", ONVM_DPDK_PMD_DIR);
    PyModule_AddStringConstant(m, "VERSION", rte_version());
    return m;
}
