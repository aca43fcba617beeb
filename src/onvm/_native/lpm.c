/* lpm.c - an IPv4 longest-prefix-match table for per-packet and batch handlers.
 *
 * Theory of operation
 * -------------------
 * A multibit trie of stride 8: four levels of 256-entry nodes.  A prefix of
 * length L lives in the node at level (L-1)/8, expanded over the 2^(8*(level+1)-L)
 * entries it covers; an entry keeps the longest prefix that covers it (its
 * depth).  A lookup walks at most four nodes along the address's bytes and keeps
 * the last value it passed: deeper levels hold longer prefixes, so the last one
 * seen is the longest match.  Tables are built once and read on the fast path;
 * there is no removal (build a new table).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

struct lpm_entry {
    int32_t value;
    uint8_t depth; /* prefix length that set value; 0: none */
    uint8_t pad[3];
    uint32_t child; /* node index, 0: none (node 0 is the root) */
};

struct lpm_node {
    struct lpm_entry e[256];
};

typedef struct {
    PyObject_HEAD struct lpm_node *nodes;
    uint32_t count, cap;
    int32_t deflt;
    Py_ssize_t rules;
} LPMObject;

static inline int32_t lpm_lookup(const LPMObject *t, uint32_t a) {
    int32_t best = t->deflt;
    uint32_t node = 0;
    for (int lvl = 0; lvl < 4; lvl++) {
        const struct lpm_entry *e = &t->nodes[node].e[(a >> (24 - 8 * lvl)) & 0xff];
        if (e->depth)
            best = e->value;
        if (!e->child)
            break;
        node = e->child;
    }
    return best;
}

static int lpm_grow(LPMObject *t) {
    if (t->count < t->cap)
        return 0;
    uint32_t cap = t->cap ? t->cap * 2 : 16;
    struct lpm_node *n = PyMem_Realloc(t->nodes, (size_t)cap * sizeof *n);
    if (!n) {
        PyErr_NoMemory();
        return -1;
    }
    t->nodes = n;
    t->cap = cap;
    return 0;
}

static int LPM_init(LPMObject *t, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"default", NULL};
    int deflt = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", kwlist, &deflt))
        return -1;
    PyMem_Free(t->nodes);
    t->nodes = NULL;
    t->count = t->cap = 0;
    t->rules = 0;
    t->deflt = deflt;
    if (lpm_grow(t) < 0)
        return -1;
    memset(&t->nodes[0], 0, sizeof t->nodes[0]);
    t->count = 1;
    return 0;
}

static void LPM_dealloc(LPMObject *t) {
    PyMem_Free(t->nodes);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* add(prefix, length, value): prefix an integer address, value >= 0 */
static PyObject *LPM_add(LPMObject *t, PyObject *args) {
    unsigned long prefix;
    int len, value;
    if (!PyArg_ParseTuple(args, "kii", &prefix, &len, &value))
        return NULL;
    if (!t->nodes)
        return PyErr_Format(PyExc_ValueError, "table not initialised");
    if (prefix > 0xffffffffUL || len < 0 || len > 32 || value < 0)
        return PyErr_Format(PyExc_ValueError,
                            "bad rule: prefix %lu (32 bits), length %d (0..32), value %d (>= 0)", prefix, len, value);
    uint32_t p = len ? (uint32_t)prefix & (0xffffffffu << (32 - len)) : 0;
    t->rules++;
    if (len == 0) {
        t->deflt = value;
        Py_RETURN_NONE;
    }
    int level = (len - 1) / 8;
    uint32_t node = 0;
    for (int lvl = 0; lvl < level; lvl++) {
        unsigned b = (p >> (24 - 8 * lvl)) & 0xff;
        if (!t->nodes[node].e[b].child) {
            if (lpm_grow(t) < 0)
                return NULL;
            memset(&t->nodes[t->count], 0, sizeof t->nodes[0]);
            t->nodes[node].e[b].child = t->count++;
        }
        node = t->nodes[node].e[b].child;
    }
    unsigned span = (unsigned)(8 * (level + 1) - len);
    unsigned base = (p >> (24 - 8 * level)) & 0xff & ~((1u << span) - 1u);
    for (unsigned i = base; i < base + (1u << span); i++) {
        struct lpm_entry *e = &t->nodes[node].e[i];
        if (e->depth <= len) {
            e->depth = (uint8_t)len;
            e->value = value;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *LPM_lookup(LPMObject *t, PyObject *arg) {
    if (!t->nodes)
        return PyErr_Format(PyExc_ValueError, "table not initialised");
    unsigned long a = PyLong_AsUnsignedLong(arg);
    if (a == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (a > 0xffffffffUL)
        return PyErr_Format(PyExc_ValueError, "an IPv4 address is 32 bits");
    return PyLong_FromLong(lpm_lookup(t, (uint32_t)a));
}

/* lookup_into(addrs uint32[n], out int32[>= n], n=len(addrs)) */
static PyObject *LPM_lookup_into(LPMObject *t, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3)
        return PyErr_Format(PyExc_TypeError, "lookup_into(addrs, out, n=len(addrs))");
    if (!t->nodes)
        return PyErr_Format(PyExc_ValueError, "table not initialised");
    Py_buffer a, o;
    if (PyObject_GetBuffer(args[0], &a, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &o, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    Py_ssize_t n = a.len / 4;
    if (nargs == 3) {
        n = PyLong_AsSsize_t(args[2]);
        if (n == -1 && PyErr_Occurred())
            goto fail;
    }
    /* n is compared with what the buffers hold, never multiplied: a huge n must not wrap. */
    if (a.itemsize != 4 || o.itemsize != 4 || n < 0 || n > a.len / 4 || n > o.len / 4) {
        PyErr_SetString(PyExc_ValueError, "lookup_into needs uint32 addresses and an int32 output of room n");
        goto fail;
    }
    const uint32_t *in = a.buf;
    int32_t *out = o.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = lpm_lookup(t, in[i]);
    PyBuffer_Release(&a);
    PyBuffer_Release(&o);
    Py_RETURN_NONE;
fail:
    PyBuffer_Release(&a);
    PyBuffer_Release(&o);
    return NULL;
}

static Py_ssize_t LPM_len(LPMObject *t) { return t->rules; }

static PyMethodDef LPM_methods[] = {
    {"add", (PyCFunction)LPM_add, METH_VARARGS, "add(prefix, length, value): a rule (value >= 0)."},
    {"lookup", (PyCFunction)LPM_lookup, METH_O, "lookup(addr) -> value of the longest match, or the default."},
    {"lookup_into", (PyCFunction)(void (*)(void))LPM_lookup_into, METH_FASTCALL,
     "lookup_into(addrs, out, n=len(addrs)): out[i] = lookup(addrs[i]) (uint32 in, int32 out)."},
    {NULL}};

static PySequenceMethods LPM_seq = {.sq_length = (lenfunc)LPM_len};

static PyTypeObject LPMType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.LPM",
    .tp_basicsize = sizeof(LPMObject),
    .tp_dealloc = (destructor)LPM_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LPM(default=-1): IPv4 longest-prefix match from prefixes to integer values.",
    .tp_methods = LPM_methods,
    .tp_as_sequence = &LPM_seq,
    .tp_init = (initproc)LPM_init,
    .tp_new = PyType_GenericNew,
};

int onvm_lpm_register(PyObject *module) {
    if (PyType_Ready(&LPMType) < 0)
        return -1;
    Py_INCREF(&LPMType);
    return PyModule_AddObject(module, "LPM", (PyObject *)&LPMType);
}
