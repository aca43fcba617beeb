/* module.c - the Python binding: Region, Manager, NFContext, Packet, Meta, Ring.
 *
 * All native error codes become Python exceptions here and nowhere else:
 * RegionError (with errno and message) for the slow path, ValueError for
 * arguments out of range.  The NF run loop lives in nfloop.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>


#include "onvm_capi.h"
#include <sys/mman.h>

#include "onvm_capture.h"
#include "onvm_flow.h"
#include "onvm_mgr.h"
#include "onvm_nf.h"
#include "onvm_packet.h"
#include "onvm_parse.h"
#include "onvm_sched.h"

PyObject *onvm_RegionError; /* onvm.errors.RegionError */
int onvm_latency_register(PyObject *m);   /* latency.c */
int onvm_constants_register(PyObject *m); /* constants.c */
PyObject *onvm_mod_packet_key(PyObject *mod, PyObject *args); /* flowbind.c */

/* RegionError(message, errno=err): the slow path's -errno and message, as Python sees them. */
static PyObject *raise_region(int err, const char *msg) {
    PyObject *args = Py_BuildValue("(s)", msg);
    PyObject *kw = Py_BuildValue("{s:i}", "errno", err < 0 ? -err : err);
    PyObject *exc = args && kw ? PyObject_Call(onvm_RegionError, args, kw) : NULL;
    if (exc) {
        PyErr_SetObject(onvm_RegionError, exc);
        Py_DECREF(exc);
    }
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return NULL;
}

/* ===== Region ============================================================= */

/* Unmap (the creator also removes the file).  While Python still holds buffers over
 * the region, the mapping stays until the last of them is released. */
static void region_close(RegionObject *self) {
    if (!self->r.base)
        return;
    if (self->r.owner && self->path)
        unlink(PyUnicode_AsUTF8(self->path));
    if (self->exports) {
        self->kept_base = self->r.base;
        self->kept_size = self->r.size;
        self->r.base = NULL; /* closed for every other use */
        onvm_guard_file_closed(self->kept_base);
        if (self->r.fd >= 0)
            close(self->r.fd);
        self->r.fd = -1;
        return;
    }
    onvm_region_detach(&self->r);
}

void onvm_region_export_done(RegionObject *self) {
    if (--self->exports == 0 && self->kept_base) {
        onvm_guard_unmap(self->kept_base);
        munmap(self->kept_base, self->kept_size);
        self->kept_base = NULL;
    }
}

static void Region_dealloc(RegionObject *self) {
    region_close(self); /* no buffer is left: each holds a reference to us */
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Region_create(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"path",      "name",      "pool_size", "slot_size", "ring_size",
                             "flow_size", "max_rules", "free_stacks", NULL};
    const char *path, *name = "onvm";
    unsigned int pool = 16384, slot = 2048, ring = 4096, flows = 65536, max_rules = ONVM_RULES_DEFAULT, stacks = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|sIIIIII", kwlist, &path, &name, &pool, &slot, &ring, &flows,
                                     &max_rules, &stacks))
        return NULL;
    RegionObject *self = (RegionObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    struct onvm_region_params p = {
        .pool_count = pool, .slot_size = slot, .ring_size = ring, .flow_count = flows, .max_rules = max_rules,
        .free_stacks = stacks, .name = name};
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = onvm_region_create(&self->r, path, &p);
    Py_END_ALLOW_THREADS if (rc != 0) {
        raise_region(rc, self->r.errmsg);
        Py_DECREF(self);
        return NULL;
    }
    self->path = PyUnicode_FromString(path);
    return (PyObject *)self;
}

static PyObject *Region_attach(PyTypeObject *type, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path))
        return NULL;
    RegionObject *self = (RegionObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    int rc = onvm_region_attach(&self->r, path);
    if (rc != 0) {
        raise_region(rc, self->r.errmsg);
        Py_DECREF(self);
        return NULL;
    }
    self->path = PyUnicode_FromString(path);
    return (PyObject *)self;
}

#define REGION_OPEN(self)                                                                          \
    do {                                                                                           \
        if (!(self)->r.base)                                                                       \
            return raise_region(EBADF, "region is closed");                                        \
    } while (0)

static PyObject *Region_close(RegionObject *self, PyObject *unused) {
    (void)unused;
    region_close(self);
    Py_RETURN_NONE;
}

static PyObject *region_info_dict(RegionObject *self, struct onvm_header *h);

static PyObject *Region_info(RegionObject *self, PyObject *unused) {
    (void)unused;
    REGION_OPEN(self);
    struct onvm_header *h = self->r.hdr;
    PyObject *d = region_info_dict(self, h);
    /* What this process found damaged in the shared tables (each counted where it was met). */
    PyObject *c = d ? Py_BuildValue("{s:K,s:K}", "broken_links",
                                    (unsigned long long)atomic_load(&self->r.broken_links), "table_stalls",
                                    (unsigned long long)atomic_load(&self->r.table_stalls))
                    : NULL;
    if (!c || PyDict_Update(d, c) < 0)
        Py_CLEAR(d);
    Py_XDECREF(c);
    return d;
}

static PyObject *region_info_dict(RegionObject *self, struct onvm_header *h) {
    return Py_BuildValue("{s:O,s:N,s:K,s:I,s:I,s:I,s:I,s:I,s:i,s:L,s:L,s:I,s:i,s:i,s:I,s:K,s:K}", "path", self->path,
                         "name", onvm_text(h->name, sizeof h->name), "size", (unsigned long long)h->total_size,
                         "pool_size", h->pool_count, "free_stacks", self->r.free_stacks, "slot_size", h->slot_size,
                         "ring_size", h->ring_size,
                         "layout_version", h->version, "manager_pid", h->mgr_pid, "pool_free",
                         (long long)onvm_pool_free_count(&self->r), "pool_lent",
                         (long long)onvm_pool_lent(&self->r), "max_nfs", ONVM_MAX_NFS, "owner",
                         self->r.owner, "replaced", self->r.replaced, "capture_records", self->r.cap_records,
                         "capture_offset", (unsigned long long)((uint8_t *)self->r.captures - self->r.base),
                         "trace_offset", (unsigned long long)((uint8_t *)self->r.trace - self->r.base));
}

/* damaged() -> True once the region's file was cut short under this process's mapping
 * (see mapguard.c): what it holds past the cut reads as zeros, and nothing can go on. */
static PyObject *Region_damaged(RegionObject *self, PyObject *unused) {
    (void)unused;
    REGION_OPEN(self);
    return PyBool_FromLong(onvm_region_damaged(&self->r));
}

static PyObject *Region_free_count(RegionObject *self, PyObject *unused) {
    (void)unused;
    REGION_OPEN(self);
    return PyLong_FromLongLong(onvm_pool_free_count(&self->r));
}

/* A list of n numbers (slot indices, ids). */
static PyObject *list_of_u32(const uint32_t *s, uint32_t n) {
    PyObject *l = PyList_New(n);
    if (!l)
        return NULL;
    for (uint32_t i = 0; i < n; i++)
        PyList_SET_ITEM(l, i, PyLong_FromUnsignedLong(s[i]));
    return l;
}

/* Read a sequence of slot indices, checked against the pool. */
static int slots_from_seq(RegionObject *self, PyObject *seq, uint32_t **out, Py_ssize_t *n) {
    PyObject *fast = PySequence_Fast(seq, "expected a sequence of slot indices");
    if (!fast)
        return -1;
    *n = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Malloc(sizeof(uint32_t) * (size_t)(*n ? *n : 1));
    if (!*out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred() || v >= self->r.pool_count) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "slot %lu is outside the pool (0..%u)", v,
                             self->r.pool_count - 1);
            PyMem_Free(*out);
            Py_DECREF(fast);
            return -1;
        }
        (*out)[i] = (uint32_t)v;
    }
    Py_DECREF(fast);
    return 0;
}

static PyObject *Region_alloc(RegionObject *self, PyObject *args) {
    unsigned int n, owner = ONVM_OWNER_MGR, home = 0;
    if (!PyArg_ParseTuple(args, "I|II", &n, &owner, &home))
        return NULL;
    REGION_OPEN(self);
    if (owner >= ONVM_OWNER_FREE)
        return PyErr_Format(PyExc_ValueError, "owner %u is not a valid stamp (0..%u)", owner,
                            ONVM_OWNER_FREE - 1);
    if (home >= self->r.free_stacks)
        return PyErr_Format(PyExc_ValueError, "free stack %u: the region has %u", home, self->r.free_stacks);
    if (n > self->r.pool_count)
        n = self->r.pool_count;
    uint32_t *buf = PyMem_Malloc(sizeof(uint32_t) * (n ? n : 1));
    if (!buf)
        return PyErr_NoMemory();
    uint32_t got = 0;
    unsigned was = onvm_pool_set_home(home);
    while (got < n) {
        uint32_t k = onvm_pool_alloc_burst(&self->r, buf + got, n - got > 256 ? 256 : n - got,
                                           (uint16_t)owner);
        if (!k)
            break;
        got += k;
    }
    onvm_pool_set_home(was);
    for (uint32_t i = 0; i < got; i++)
        onvm_slot_reset(&self->r, buf[i]);
    PyObject *l = list_of_u32(buf, got);
    PyMem_Free(buf);
    return l;
}

static PyObject *Region_free(RegionObject *self, PyObject *seq) {
    REGION_OPEN(self);
    uint32_t *buf;
    Py_ssize_t n;
    if (slots_from_seq(self, seq, &buf, &n) < 0)
        return NULL;
    /* A double free would link a slot into the free stack twice: refuse it.
     * Stamping as we go also catches a slot named twice in the list. */
    uint16_t *saved = PyMem_Malloc(sizeof(uint16_t) * (size_t)(n ? n : 1));
    if (!saved) {
        PyMem_Free(buf);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        saved[i] = atomic_load(&self->r.meta[buf[i]].owner);
        if (saved[i] == ONVM_OWNER_FREE) {
            for (Py_ssize_t j = i - 1; j >= 0; j--)
                atomic_store(&self->r.meta[buf[j]].owner, saved[j]);
            PyErr_Format(PyExc_ValueError, "slot %u is already free", buf[i]);
            PyMem_Free(saved);
            PyMem_Free(buf);
            return NULL;
        }
        atomic_store(&self->r.meta[buf[i]].owner, ONVM_OWNER_FREE);
    }
    for (Py_ssize_t i = 0; i < n; i++) /* checked: the free below stamps them itself */
        atomic_store(&self->r.meta[buf[i]].owner, saved[i]);
    PyMem_Free(saved);
    for (Py_ssize_t i = 0; i < n; i += 256)
        onvm_pool_free_burst(&self->r, buf + i, (uint32_t)(n - i > 256 ? 256 : n - i));
    PyMem_Free(buf);
    Py_RETURN_NONE;
}

static int check_slot(RegionObject *self, unsigned long s) {
    if (s >= self->r.pool_count) {
        PyErr_Format(PyExc_ValueError, "slot %lu is outside the pool (0..%u)", s, self->r.pool_count - 1);
        return -1;
    }
    return 0;
}

static PyObject *Region_write(RegionObject *self, PyObject *args) {
    unsigned long s;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "ky*", &s, &b))
        return NULL;
    if (!self->r.base || check_slot(self, s) < 0) {
        PyBuffer_Release(&b);
        return self->r.base ? NULL : raise_region(EBADF, "region is closed");
    }
    if ((size_t)b.len > onvm_slot_room(&self->r)) {
        PyErr_Format(PyExc_ValueError, "packet of %zd bytes does not fit a slot (%u bytes)", b.len,
                     onvm_slot_room(&self->r));
        PyBuffer_Release(&b);
        return NULL;
    }
    struct onvm_meta *m = &self->r.meta[s];
    m->data_off = ONVM_HEADROOM;
    memcpy(onvm_slot_data(&self->r, (uint32_t)s), b.buf, (size_t)b.len);
    m->len = (uint32_t)b.len;
    onvm_parse(m, onvm_slot_data(&self->r, (uint32_t)s), m->len);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyObject *Region_read(RegionObject *self, PyObject *args) {
    unsigned long s;
    if (!PyArg_ParseTuple(args, "k", &s))
        return NULL;
    REGION_OPEN(self);
    if (check_slot(self, s) < 0)
        return NULL;
    struct onvm_meta m;
    uint8_t *d;
    if (!onvm_slot_view(&self->r, s, &m, &d))
        return PyBytes_FromStringAndSize("", 0); /* a record that names no bytes of its slot */
    return PyBytes_FromStringAndSize((const char *)d, m.len);
}

static PyObject *meta_dict(const struct onvm_meta *m) {
    return Py_BuildValue("{s:I,s:I,s:K,s:H,s:H,s:H,s:H,s:B,s:B,s:B,s:B,s:B,s:H,s:H,s:H}", "len",
                         m->len, "flow_hash", m->flow_hash, "rx_ns", (unsigned long long)m->rx_ns,
                         "in_port", m->in_port, "owner", (uint16_t)atomic_load(&((struct onvm_meta *)m)->owner),
                         "dest", m->dest, "src_nf", m->src_nf, "action", m->action, "chain_idx",
                         m->chain_idx, "flags", m->flags, "l3_type", m->l3_type, "l4_proto",
                         m->l4_proto, "l3_off", m->l3_off, "l4_off", m->l4_off, "chain_id",
                         m->chain_id);
}

static PyObject *Region_meta(RegionObject *self, PyObject *args) {
    unsigned long s;
    if (!PyArg_ParseTuple(args, "k", &s))
        return NULL;
    REGION_OPEN(self);
    if (check_slot(self, s) < 0)
        return NULL;
    return meta_dict(&self->r.meta[s]);
}

static PyObject *Region_owners(RegionObject *self, PyObject *unused) {
    (void)unused;
    REGION_OPEN(self);
    PyObject *d = PyDict_New();
    for (uint32_t i = 0; d && i < self->r.pool_count; i++) {
        PyObject *k = PyLong_FromLong(atomic_load_explicit(&self->r.meta[i].owner, ONVM_RELAXED));
        PyObject *v = PyDict_GetItem(d, k);
        PyObject *nv = PyLong_FromLong(v ? PyLong_AsLong(v) + 1 : 1);
        PyDict_SetItem(d, k, nv);
        Py_DECREF(k);
        Py_DECREF(nv);
    }
    return d;
}

/* Lending as a port driver does it (onvm_port.h), for tests of the pool's balance. */
static struct onvm_port_stats *port_row(RegionObject *self, unsigned port, unsigned worker) {
    if (port >= ONVM_MAX_PORTS || worker >= ONVM_MAX_WORKERS) {
        PyErr_Format(PyExc_ValueError, "port %u or worker %u is out of range (0..%d, 0..%d)", port,
                     worker, ONVM_MAX_PORTS - 1, ONVM_MAX_WORKERS - 1);
        return NULL;
    }
    return &self->r.ports[port].by_worker[worker];
}

static PyObject *Region_lend(RegionObject *self, PyObject *args) {
    unsigned port, worker, n;
    if (!PyArg_ParseTuple(args, "III", &port, &worker, &n))
        return NULL;
    REGION_OPEN(self);
    struct onvm_port_stats *st = port_row(self, port, worker);
    if (!st)
        return NULL;
    if (n > 4096)
        return PyErr_Format(PyExc_ValueError, "lend at most 4096 slots at a time (not %u)", n);
    uint32_t buf[4096];
    uint32_t got = onvm_port_lend_alloc(&self->r, st, port, buf, n);
    return list_of_u32(buf, got);
}

static PyObject *Region_took_back(RegionObject *self, PyObject *args) {
    unsigned port, worker;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "IIO", &port, &worker, &seq))
        return NULL;
    REGION_OPEN(self);
    struct onvm_port_stats *st = port_row(self, port, worker);
    uint32_t *buf;
    Py_ssize_t n;
    if (!st || slots_from_seq(self, seq, &buf, &n) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (atomic_load(&self->r.meta[buf[i]].owner) != ONVM_OWNER_PORT(port)) {
            PyErr_Format(PyExc_ValueError, "slot %u is not lent to port %u", buf[i], port);
            PyMem_Free(buf);
            return NULL;
        }
    }
    onvm_port_took_back(&self->r, st, buf, (uint32_t)n);
    PyMem_Free(buf);
    Py_RETURN_NONE;
}

static PyObject *Region_port_reclaim(RegionObject *self, PyObject *args) {
    unsigned port;
    if (!PyArg_ParseTuple(args, "I", &port))
        return NULL;
    REGION_OPEN(self);
    if (!port_row(self, port, 0))
        return NULL;
    return PyLong_FromLong(onvm_port_reclaim(&self->r, port));
}

static int check_nf(unsigned id) {
    if (id == 0 || id >= ONVM_MAX_NFS) {
        PyErr_Format(PyExc_ValueError, "NF id %u is out of range (1..%d)", id, ONVM_MAX_NFS - 1);
        return -1;
    }
    return 0;
}

static PyObject *Region_nf_activate(RegionObject *self, PyObject *args) {
    unsigned id, svc, inst, txw;
    int pid;
    const char *name;
    if (!PyArg_ParseTuple(args, "IIIiIs", &id, &svc, &inst, &pid, &txw, &name))
        return NULL;
    REGION_OPEN(self);
    if (check_nf(id) < 0)
        return NULL;
    if (txw >= ONVM_MAX_WORKERS)
        return PyErr_Format(PyExc_ValueError, "TX worker %u is out of range", txw);
    if (svc >= ONVM_MAX_SERVICES || inst > ONVM_INSTANCE_MAX)
        return PyErr_Format(PyExc_ValueError, "service %u instance %u is out of range (0..%d, 0..%u)", svc, inst,
                            ONVM_MAX_SERVICES - 1, ONVM_INSTANCE_MAX);
    int rc = onvm_nf_activate(&self->r, id, svc, inst, pid, txw, name);
    if (rc)
        return raise_region(rc, "NF slot is in use");
    Py_RETURN_NONE;
}

static PyObject *Region_nf_set_draining(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (check_nf(id) < 0)
        return NULL;
    onvm_nf_set_draining(&self->r, id);
    Py_RETURN_NONE;
}

static PyObject *Region_nf_request_stop(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (check_nf(id) < 0)
        return NULL;
    onvm_nf_request_stop(&self->r, id);
    Py_RETURN_NONE;
}

static PyObject *Region_nf_reclaim(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (check_nf(id) < 0)
        return NULL;
    long n;
    Py_BEGIN_ALLOW_THREADS n = onvm_region_reclaim(&self->r, id);
    Py_END_ALLOW_THREADS if (n < 0) return raise_region((int)n, "reclaim failed");
    return PyLong_FromLong(n);
}

static PyObject *Region_nf_release(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (check_nf(id) < 0)
        return NULL;
    onvm_nf_release(&self->r, id);
    Py_RETURN_NONE;
}

static PyObject *u64_tuple(const uint64_t *v, int n) {
    PyObject *t = PyTuple_New(n);
    for (int i = 0; t && i < n; i++)
        PyTuple_SET_ITEM(t, i, PyLong_FromUnsignedLongLong(v[i]));
    return t;
}

/* The CPU request words (onvm_sched.h) as numbers: cpu_want is the CPU asked
 * for or -1 for home; cpu_now is the CPU applied, -1 home, -2 refused. */
static long cpu_word(uint32_t v) {
    return v == ONVM_CPU_REFUSED ? -2 : (long)v - 1;
}

/* d[key] = v for counters; -1 with an exception set on failure. */
static int put_u64(PyObject *d, const char *key, uint64_t v) {
    PyObject *o = d ? PyLong_FromUnsignedLongLong(v) : NULL;
    int rc = o && PyDict_SetItemString(d, key, o) == 0 ? 0 : -1;
    Py_XDECREF(o);
    return rc;
}

static int put_cpu(PyObject *d, _Atomic uint32_t *want, _Atomic uint32_t *now) {
    PyObject *w = PyLong_FromLong(cpu_word(atomic_load_explicit(want, ONVM_RELAXED)));
    PyObject *n = PyLong_FromLong(cpu_word(atomic_load_explicit(now, ONVM_RELAXED)));
    int rc = w && n && PyDict_SetItemString(d, "cpu_want", w) == 0 && PyDict_SetItemString(d, "cpu_now", n) == 0
                 ? 0 : -1;
    Py_XDECREF(w);
    Py_XDECREF(n);
    return rc;
}

/* busy_ns(workers, nf_ids) -> the sum of the busy_ns counters of worker rows
 * 0..workers-1 and of the NF slots named.  Packing reads it twice a second;
 * only the slots asked for are touched. */
static PyObject *Region_busy_ns(RegionObject *self, PyObject *args) {
    unsigned nw;
    PyObject *ids;
    if (!PyArg_ParseTuple(args, "IO", &nw, &ids))
        return NULL;
    REGION_OPEN(self);
    if (nw > ONVM_MAX_WORKERS)
        return PyErr_Format(PyExc_ValueError, "at most %d workers", ONVM_MAX_WORKERS);
    PyObject *fast = PySequence_Fast(ids, "nf_ids must be a sequence of NF ids");
    if (!fast)
        return NULL;
    uint64_t sum = 0;
    for (unsigned i = 0; i < nw; i++)
        sum += self->r.workers[i].busy_ns;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
        long id = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (id < 1 || id >= ONVM_MAX_NFS) {
            Py_DECREF(fast);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "NF id %ld is out of range (1..%d)", id, ONVM_MAX_NFS - 1);
            return NULL;
        }
        sum += self->r.nfs[id].stats.busy_ns;
    }
    Py_DECREF(fast);
    return PyLong_FromUnsignedLongLong(sum);
}

/* set_cpu(kind, index, cpu): ask NF or worker `index` to run on `cpu`, or at home with -1. */
static PyObject *Region_set_cpu(RegionObject *self, PyObject *args) {
    const char *kind;
    unsigned id;
    int cpu;
    if (!PyArg_ParseTuple(args, "sIi", &kind, &id, &cpu))
        return NULL;
    REGION_OPEN(self);
    if (cpu < -1 || cpu >= CPU_SETSIZE)
        return PyErr_Format(PyExc_ValueError, "CPU %d is out of range (-1 for home, 0..%d)", cpu, CPU_SETSIZE - 1);
    _Atomic uint32_t *want;
    if (strcmp(kind, "nf") == 0) {
        if (check_nf(id) < 0)
            return NULL;
        want = &self->r.nfs[id].cpu.want;
    } else if (strcmp(kind, "worker") == 0) {
        if (id >= ONVM_MAX_WORKERS)
            return PyErr_Format(PyExc_ValueError, "worker %u is out of range", id);
        want = &self->r.workers[id].cpu_want;
    } else {
        return PyErr_Format(PyExc_ValueError, "kind must be 'nf' or 'worker', not '%s'", kind);
    }
    atomic_store_explicit(want, (uint32_t)(cpu + 1), ONVM_RELAXED);
    Py_RETURN_NONE;
}

static const char *fault_name(unsigned why) {
    static const char *const names[ONVM_FAULT_COUNT] = {
        [ONVM_FAULT_NONE] = "", [ONVM_FAULT_SLOT] = "slot", [ONVM_FAULT_RECORD] = "record",
        [ONVM_FAULT_STALL] = "stall", [ONVM_FAULT_FLAG] = "flag"};
    return why < ONVM_FAULT_COUNT ? names[why] : "";
}

static PyObject *Region_nf_info(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (check_nf(id) < 0)
        return NULL;
    struct onvm_nf *nf = &self->r.nfs[id];
    struct onvm_nf_stats st = nf->stats; /* a snapshot; each field is written by the NF alone */
    PyObject *d = Py_BuildValue(
        "{s:I,s:H,s:H,s:i,s:N,s:I,s:I,s:I,s:K,s:K,s:K,s:K,s:N,s:N,s:K,s:I,s:I,s:K}", "state",
        atomic_load(&nf->state), "service", nf->service, "instance", nf->instance, "pid", nf->pid,
        "name", onvm_text(nf->name, sizeof nf->name), "epoch", atomic_load(&nf->epoch), "rx_ring", onvm_ring_count(onvm_nf_ring(&self->r, id, 0), self->r.ring_mask),
        "tx_ring", onvm_ring_count(onvm_nf_ring(&self->r, id, 1), self->r.ring_mask), "rx",
        (unsigned long long)st.rx, "tx", (unsigned long long)st.tx, "rx_bytes",
        (unsigned long long)st.rx_bytes, "bursts", (unsigned long long)st.bursts, "actions",
        u64_tuple(st.act, ONVM_ACT_COUNT), "drops", u64_tuple(st.drops, ONVM_DROP_COUNT),
        "handler_ns", (unsigned long long)st.handler_ns, "sleeping",
        atomic_load(&nf->wait.sleeping), "tx_worker", nf->tx_worker, "wakeups",
        (unsigned long long)nf->wait.wakeups);
    struct onvm_ring *rx = onvm_nf_ring(&self->r, id, 0);
    if (put_u64(d, "parse_errors", st.parse_errors) < 0 || put_u64(d, "busy_ns", st.busy_ns) < 0 ||
        put_u64(d, "late", st.late) < 0 || put_u64(d, "blocked", st.blocked) < 0 ||
        put_u64(d, "blocked_ns", st.blocked_ns) < 0 ||
        put_u64(d, "early", atomic_load_explicit(&nf->bp.early, ONVM_RELAXED)) < 0 ||
        put_u64(d, "blocked_on", atomic_load_explicit(&nf->bp.blocked_on, ONVM_RELAXED)) < 0 ||
        put_u64(d, "rx_congested", onvm_bp_congested(rx)) < 0 ||
        put_cpu(d, &nf->cpu.want, &nf->cpu.now) < 0)
        Py_CLEAR(d);
    /* The manager's own view of it (what the NF cannot write): fenced, and why. */
    struct onvm_nf_view *v = &self->r.view[id];
    PyObject *view = d ? Py_BuildValue("{s:O,s:K,s:s}", "fenced",
                                       atomic_load(&v->fenced) ? Py_True : Py_False, "faults",
                                       (unsigned long long)atomic_load(&v->faults), "fault",
                                       fault_name(atomic_load(&v->fault_why)))
                       : NULL;
    if (!view || PyDict_Update(d, view) < 0)
        Py_CLEAR(d);
    Py_XDECREF(view);
    return d;
}

static PyObject *Region_port_info(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (id >= ONVM_MAX_PORTS)
        return PyErr_Format(PyExc_ValueError, "port %u is out of range (0..%d)", id, ONVM_MAX_PORTS - 1);
    struct onvm_port_info *p = &self->r.ports[id];
    struct onvm_port_stats sum = {0};
    for (int w = 0; w < ONVM_MAX_WORKERS; w++) {
        sum.rx += p->by_worker[w].rx;
        sum.rx_bytes += p->by_worker[w].rx_bytes;
        sum.tx += p->by_worker[w].tx;
        sum.tx_bytes += p->by_worker[w].tx_bytes;
        for (int k = 0; k < ONVM_DROP_COUNT; k++)
            sum.drops[k] += p->by_worker[w].drops[k];
    }
    uint64_t rx_by_worker[ONVM_MAX_WORKERS];
    for (int w = 0; w < ONVM_MAX_WORKERS; w++)
        rx_by_worker[w] = p->by_worker[w].rx;
    return Py_BuildValue("{s:I,s:I,s:I,s:N,s:K,s:K,s:K,s:K,s:N,s:N,s:L}", "in_use", p->in_use, "kind",
                         p->kind, "rx_done", p->rx_done, "uri", onvm_text(p->uri, sizeof p->uri), "rx",
                         (unsigned long long)sum.rx,
                         "rx_bytes", (unsigned long long)sum.rx_bytes, "tx",
                         (unsigned long long)sum.tx, "tx_bytes", (unsigned long long)sum.tx_bytes,
                         "drops", u64_tuple(sum.drops, ONVM_DROP_COUNT), "rx_by_worker",
                         u64_tuple(rx_by_worker, ONVM_MAX_WORKERS), "lent",
                         (long long)onvm_port_lent(&self->r, id));
}

static PyObject *Region_set_port_info(RegionObject *self, PyObject *args) {
    unsigned id, kind;
    const char *uri;
    if (!PyArg_ParseTuple(args, "IIs", &id, &kind, &uri))
        return NULL;
    REGION_OPEN(self);
    if (id >= ONVM_MAX_PORTS)
        return PyErr_Format(PyExc_ValueError, "port %u is out of range (0..%d)", id, ONVM_MAX_PORTS - 1);
    if (kind == ONVM_PORT_UNUSED || kind >= ONVM_PORT_KIND_END)
        return PyErr_Format(PyExc_ValueError, "port kind %u is out of range (1..%d)", kind, ONVM_PORT_KIND_END - 1);
    struct onvm_port_info *p = &self->r.ports[id];
    p->in_use = 1;
    p->kind = kind;
    onvm_set_text(p->uri, sizeof p->uri, uri);
    Py_RETURN_NONE;
}

static PyObject *Region_worker_info(RegionObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    REGION_OPEN(self);
    if (id >= ONVM_MAX_WORKERS)
        return PyErr_Format(PyExc_ValueError, "worker %u is out of range", id);
    struct onvm_worker *w = &self->r.workers[id];
    PyObject *d = Py_BuildValue("{s:I,s:I,s:I,s:K,s:K,s:K,s:K,s:K}", "epoch", atomic_load(&w->epoch),
                                "sleeping", atomic_load(&w->wait.sleeping), "role", w->role, "loops", (unsigned long long)w->loops, "busy_loops",
                                (unsigned long long)w->busy_loops, "sleeps",
                                (unsigned long long)w->wait.sleeps, "wakeups",
                                (unsigned long long)w->wait.wakeups, "busy_ns", (unsigned long long)w->busy_ns);
    if (put_u64(d, "held", w->held) < 0 || put_u64(d, "packets", w->packets) < 0 ||
        put_cpu(d, &w->cpu_want, &w->cpu_now) < 0)
        Py_CLEAR(d);
    return d;
}

/* chain_drops(chain) -> [(early, late)] for each hop of the chain (onvm_hop_drops). */
static PyObject *Region_chain_drops(RegionObject *self, PyObject *args) {
    unsigned chain;
    if (!PyArg_ParseTuple(args, "I", &chain))
        return NULL;
    REGION_OPEN(self);
    if (chain >= ONVM_MAX_CHAINS)
        return PyErr_Format(PyExc_ValueError, "chain %u is out of range (0..%d)", chain, ONVM_MAX_CHAINS - 1);
    struct onvm_chain *c = &self->r.chains[chain];
    unsigned n = c->count < ONVM_MAX_HOPS ? c->count : ONVM_MAX_HOPS;
    PyObject *l = PyList_New(n);
    for (unsigned i = 0; l && i < n; i++) {
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)atomic_load_explicit(&c->drops[i].early, ONVM_RELAXED),
                                    (unsigned long long)atomic_load_explicit(&c->drops[i].late, ONVM_RELAXED));
        if (!t) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, t);
    }
    return l;
}

static PyObject *Region_set_service(RegionObject *self, PyObject *args) {
    unsigned svc, policy = 0;
    PyObject *members;
    if (!PyArg_ParseTuple(args, "IO|I", &svc, &members, &policy))
        return NULL;
    REGION_OPEN(self);
    if (svc >= ONVM_MAX_SERVICES)
        return PyErr_Format(PyExc_ValueError, "service %u is out of range (0..%d)", svc, ONVM_MAX_SERVICES - 1);
    if (policy >= ONVM_POLICY_COUNT)
        return PyErr_Format(PyExc_ValueError, "policy %u is out of range (0..%d)", policy, ONVM_POLICY_COUNT - 1);
    PyObject *fast = PySequence_Fast(members, "members must be a sequence of (nf_id, instance)");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > ONVM_MAX_INSTANCES) {
        Py_DECREF(fast);
        return PyErr_Format(PyExc_ValueError, "a service has at most %d instances", ONVM_MAX_INSTANCES);
    }
    uint16_t nf[ONVM_MAX_INSTANCES], inst[ONVM_MAX_INSTANCES];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned a, b;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "II", &a, &b) || check_nf(a) < 0) {
            Py_DECREF(fast);
            return NULL;
        }
        nf[i] = (uint16_t)a;
        inst[i] = (uint16_t)b;
    }
    Py_DECREF(fast);
    onvm_service_set(&self->r, svc, nf, inst, (unsigned)n, policy);
    Py_RETURN_NONE;
}

static PyObject *Region_pick(RegionObject *self, PyObject *args) {
    unsigned svc, hash;
    int rx = -1;
    if (!PyArg_ParseTuple(args, "II|i", &svc, &hash, &rx))
        return NULL;
    REGION_OPEN(self);
    if (rx < -1 || rx >= ONVM_MAX_WORKERS)
        return PyErr_Format(PyExc_ValueError, "RX worker %d: expected 0..%d, or -1 for none", rx,
                            ONVM_MAX_WORKERS - 1);
    static uint32_t rr[ONVM_MAX_SERVICES];
    return PyLong_FromUnsignedLong(
        onvm_service_pick(&self->r, svc, hash, &rr[svc % ONVM_MAX_SERVICES], (unsigned)(rx + 1), NULL));
}

static PyObject *Region_set_chain(RegionObject *self, PyObject *args) {
    unsigned chain;
    PyObject *hops;
    const char *name = "";
    if (!PyArg_ParseTuple(args, "IO|s", &chain, &hops, &name))
        return NULL;
    REGION_OPEN(self);
    PyObject *fast = PySequence_Fast(hops, "hops must be a sequence of (action, dest)");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (chain >= ONVM_MAX_CHAINS || n > ONVM_MAX_HOPS) {
        Py_DECREF(fast);
        return PyErr_Format(PyExc_ValueError, "chain %u with %zd hops: at most %d chains of %d hops",
                            chain, n, ONVM_MAX_CHAINS, ONVM_MAX_HOPS);
    }
    struct onvm_hop h[ONVM_MAX_HOPS];
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned a, d;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "II", &a, &d)) {
            Py_DECREF(fast);
            return NULL;
        }
        if (a >= ONVM_ACT_COUNT || a == ONVM_ACT_NEXT) {
            Py_DECREF(fast);
            return PyErr_Format(PyExc_ValueError, "hop %zd: action %u is not DROP, TONF or OUT", i, a);
        }
        h[i].action = (uint8_t)a;
        h[i].pad = 0;
        h[i].dest = (uint16_t)d;
    }
    Py_DECREF(fast);
    onvm_chain_set(&self->r, chain, h, (unsigned)n, name);
    Py_RETURN_NONE;
}

static PyObject *Region_chain(RegionObject *self, PyObject *args) {
    unsigned chain;
    if (!PyArg_ParseTuple(args, "I", &chain))
        return NULL;
    REGION_OPEN(self);
    PyObject *l = PyList_New(0);
    struct onvm_hop h;
    for (unsigned i = 0; l && onvm_chain_hop(&self->r, chain, i, &h) == 0; i++) {
        PyObject *t = Py_BuildValue("(BH)", h.action, h.dest);
        PyList_Append(l, t);
        Py_DECREF(t);
    }
    return l;
}

static PyObject *Region_getpath(RegionObject *self, void *c) {
    (void)c;
    Py_INCREF(self->path);
    return self->path;
}

static PyMethodDef Region_methods[] = {
    {"create", (PyCFunction)(void (*)(void))Region_create, METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "create(path, name='onvm', pool_size=16384, slot_size=2048, ring_size=4096): make a region (manager)."},
    {"attach", (PyCFunction)Region_attach, METH_VARARGS | METH_CLASS,
     "attach(path): map a running manager's region."},
    {"close", (PyCFunction)Region_close, METH_NOARGS, "Unmap; the creator also removes the file."},
    {"info", (PyCFunction)Region_info, METH_NOARGS, "Header facts as a dict."},
    {"free_count", (PyCFunction)Region_free_count, METH_NOARGS, "Free slots in the pool."},
    {"damaged", (PyCFunction)Region_damaged, METH_NOARGS,
     "True once the region's file was cut short under this mapping (it reads zeros past the cut)."},
    {"alloc", (PyCFunction)Region_alloc, METH_VARARGS,
     "alloc(n, owner=MGR, home=0) -> list of slot indices, from free stack home first."},
    {"free", (PyCFunction)Region_free, METH_O, "free(slots): return slots to the pool."},
    {"write", (PyCFunction)Region_write, METH_VARARGS, "write(slot, data): set a slot's packet."},
    {"read", (PyCFunction)Region_read, METH_VARARGS, "read(slot) -> bytes of the packet."},
    {"meta", (PyCFunction)Region_meta, METH_VARARGS, "meta(slot) -> dict."},
    {"owners", (PyCFunction)Region_owners, METH_NOARGS, "{owner stamp: slot count}."},
    {"lend", (PyCFunction)Region_lend, METH_VARARGS,
     "lend(port, worker, n) -> slots allocated as lent to the port's device (as a driver does)."},
    {"took_back", (PyCFunction)Region_took_back, METH_VARARGS,
     "took_back(port, worker, slots): the device gave them back; they are the manager's."},
    {"port_reclaim", (PyCFunction)Region_port_reclaim, METH_VARARGS,
     "port_reclaim(port) -> slots still lent to the port, now freed (after it closed)."},
    {"nf_activate", (PyCFunction)Region_nf_activate, METH_VARARGS, "nf_activate(id, service, instance, pid, tx_worker, name)."},
    {"nf_set_draining", (PyCFunction)Region_nf_set_draining, METH_VARARGS, ""},
    {"nf_request_stop", (PyCFunction)Region_nf_request_stop, METH_VARARGS, ""},
    {"nf_reclaim", (PyCFunction)Region_nf_reclaim, METH_VARARGS, "Return a dead NF's slots; -> count."},
    {"nf_release", (PyCFunction)Region_nf_release, METH_VARARGS, ""},
    {"nf_info", (PyCFunction)Region_nf_info, METH_VARARGS, "NF entry and counters."},
    {"port_info", (PyCFunction)Region_port_info, METH_VARARGS, "Port counters summed over workers."},
    {"set_port_info", (PyCFunction)Region_set_port_info, METH_VARARGS, ""},
    {"worker_info", (PyCFunction)Region_worker_info, METH_VARARGS, "Worker counters and CPU request."},
    {"chain_drops", (PyCFunction)Region_chain_drops, METH_VARARGS, "chain_drops(chain) -> [(early, late)] per hop."},
    {"busy_ns", (PyCFunction)Region_busy_ns, METH_VARARGS,
     "busy_ns(workers, nf_ids) -> total busy ns of worker rows 0..workers-1 and the NFs named."},
    {"set_cpu", (PyCFunction)Region_set_cpu, METH_VARARGS,
     "set_cpu(kind, index, cpu): ask NF or worker index to run on cpu (-1: home)."},
    {"set_service", (PyCFunction)Region_set_service, METH_VARARGS, "set_service(svc, [(nf_id, instance)], policy=0)."},
    {"pick", (PyCFunction)Region_pick, METH_VARARGS,
     "pick(svc, flow_hash, rx_worker=-1) -> NF id or 0 (rx_worker: who asks, for the local policy)."},
    {"set_chain", (PyCFunction)Region_set_chain, METH_VARARGS, "set_chain(id, [(action, dest)])."},
    {"chain", (PyCFunction)Region_chain, METH_VARARGS, "chain(id) -> [(action, dest)]."},
    {"chains", (PyCFunction)Region_chains, METH_NOARGS, "chains() -> [(id, name, hops)] of named chains."},
    {"flow_put", (PyCFunction)(void (*)(void))Region_flow_put, METH_VARARGS | METH_KEYWORDS,
     "flow_put(key, chain, idle_ms=0, hard_ms=0, origin=2): steer an exact flow to a chain."},
    {"flow_get", (PyCFunction)Region_flow_get, METH_O, "flow_get(key) -> dict or None."},
    {"flow_del", (PyCFunction)Region_flow_del, METH_O, "flow_del(key) -> True if it was there."},
    {"flow_list", (PyCFunction)(void (*)(void))Region_flow_list, METH_VARARGS | METH_KEYWORDS,
     "flow_list(limit=1000, chain=-1, origin=-1) -> [dict] of live entries (of a chain, an origin)."},
    {"flow_stats", (PyCFunction)Region_flow_stats, METH_NOARGS, "Flow table counters."},
    {"flow_expire", (PyCFunction)Region_flow_expire, METH_VARARGS, "flow_expire(start, n) -> removed."},
    {"flow_flush", (PyCFunction)Region_flow_flush, METH_VARARGS, "flow_flush(chain=-1, cached_only=False) -> removed."},
    {"rules_apply", (PyCFunction)(void (*)(void))Region_rules_apply, METH_VARARGS | METH_KEYWORDS,
     "rules_apply(adds=(), dels=(), ports=()) -> slots: one change of the rules, all or nothing (manager)."},
    {"rule_hits", (PyCFunction)Region_rule_hits, METH_O, "rule_hits(slots) -> [new flows each rule decided]."},
    {"rule_lookup", (PyCFunction)Region_rule_lookup, METH_O, "rule_lookup(key) -> (slot or -1, version)."},
    {"rules_stats", (PyCFunction)Region_rules_stats, METH_NOARGS, "The classifier's sizes and counters."},
    {"set_flow_idle", (PyCFunction)Region_set_flow_idle, METH_O,
     "set_flow_idle(ms): idle timeout of cached results whose rule names none."},
    {"flow_key", (PyCFunction)Region_flow_key, METH_VARARGS, "flow_key(slot) -> key tuple or None."},
    {NULL}};

static PyGetSetDef Region_getset[] = {{"path", (getter)Region_getpath, NULL, "region file", NULL}, {NULL}};

PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Region",
    .tp_basicsize = sizeof(RegionObject),
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mapped shared region (pool, rings, tables).",
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
};

/* ===== Manager ============================================================ */

typedef struct {
    PyObject_HEAD RegionObject *region;
    struct onvm_mgr *m;
    int running;
    uint64_t cap_stuck[ONVM_MAX_CAPTURES]; /* onvm_cap_read's clock per capture */
} ManagerObject;

static int Manager_build(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"region", "rx_workers", "tx_workers", "burst", NULL};
    PyObject *region;
    unsigned nrx = 1, ntx = 1, burst = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!|III", kwlist, &RegionType, &region, &nrx, &ntx, &burst))
        return -1;
    if (nrx < 1 || ntx < 1 || nrx + ntx > ONVM_MAX_WORKERS) {
        PyErr_Format(PyExc_ValueError, "need at least one RX and one TX worker, at most %d in all",
                     ONVM_MAX_WORKERS);
        return -1;
    }
    if (burst < 1 || burst > ONVM_BURST_MAX) {
        PyErr_Format(PyExc_ValueError, "burst must be between 1 and %d", ONVM_BURST_MAX);
        return -1;
    }
    self->m = PyMem_Calloc(1, sizeof(struct onvm_mgr));
    if (!self->m)
        return -1;
    Py_INCREF(region);
    self->region = (RegionObject *)region;
    self->m->r = &self->region->r;
    self->m->nrx = nrx;
    self->m->ntx = ntx;
    self->m->burst = burst;
    return 0;
}

static void manager_shutdown(ManagerObject *self) {
    if (self->m && self->running) {
        Py_BEGIN_ALLOW_THREADS onvm_mgr_stop(self->m);
        Py_END_ALLOW_THREADS self->running = 0;
    }
}

static void Manager_dealloc(ManagerObject *self) {
    manager_shutdown(self);
    if (self->m) {
        for (int i = 0; i < ONVM_MAX_PORTS; i++)
            onvm_port_close(self->m->ports[i]);
        PyMem_Free(self->m);
    }
    Py_XDECREF(self->region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int port_slot_ok(ManagerObject *self, unsigned id) {
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "ports are added before the workers start");
        return 0;
    }
    if (id >= ONVM_MAX_PORTS || self->m->ports[id]) {
        PyErr_Format(PyExc_ValueError, "port %u is out of range or taken (0..%d)", id, ONVM_MAX_PORTS - 1);
        return 0;
    }
    return 1;
}

static PyObject *port_added(ManagerObject *self, unsigned id, struct onvm_port *p, const char *err) {
    if (!p)
        return raise_region(EINVAL, err[0] ? err : "cannot open port");
    self->m->ports[id] = p;
    Py_RETURN_NONE;
}

static PyObject *Manager_add_null(ManagerObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id) || !port_slot_ok(self, id))
        return NULL;
    return port_added(self, id, onvm_port_open_null((int)id), "");
}

static PyObject *Manager_add_gen(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"port", "size", "mix", "flows", "proto", "rate", "count", "seed",
                             "src_ip", "dst_ip", "sport", "dport", NULL};
    struct onvm_gen_conf c = {.size = 64, .flows = 1, .proto = 17, .src_ip = 0x0a000001,
                              .dst_ip = 0x0a010001, .sport = 1024, .dport = 80};
    unsigned id, sport = 1024, dport = 80;
    unsigned long long rate = 0, count = 0, seed = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "I|IIIIKKKIIII", kwlist, &id, &c.size, &c.mix, &c.flows,
                                     &c.proto, &rate, &count, &seed, &c.src_ip, &c.dst_ip, &sport, &dport))
        return NULL;
    if (!port_slot_ok(self, id))
        return NULL;
    c.rate_pps = rate;
    c.count = count;
    c.seed = seed;
    c.slot_size = self->m->r->slot_size;
    c.sport = (uint16_t)sport;
    c.dport = (uint16_t)dport;
    char err[256] = "";
    return port_added(self, id, onvm_port_open_gen((int)id, &c, err, sizeof err), err);
}

static PyObject *Manager_add_pcap_in(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"port", "path", "loops", "rate", "timing", "speed", "loss", NULL};
    struct onvm_pcap_conf c = {.speed = 1.0};
    unsigned id;
    unsigned long long loops = 1, rate = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Is|KKpdp", kwlist, &id, &c.path, &loops, &rate,
                                     &c.timing, &c.speed, &c.loss))
        return NULL;
    if (!port_slot_ok(self, id))
        return NULL;
    c.loops = loops;
    c.rate_pps = rate;
    char err[256] = "";
    return port_added(self, id, onvm_port_open_pcap_in((int)id, &c, err, sizeof err), err);
}

static PyObject *Manager_add_pcap_out(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"port", "path", "snaplen", NULL};
    struct onvm_pcap_conf c = {0};
    unsigned id;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Is|I", kwlist, &id, &c.path, &c.snaplen))
        return NULL;
    if (!port_slot_ok(self, id))
        return NULL;
    char err[256] = "";
    return port_added(self, id, onvm_port_open_pcap_out((int)id, &c, err, sizeof err), err);
}

static PyObject *Manager_add_afpacket(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"port", "ifname", "queues", "promisc", "qdisc_bypass", "block_size",
                             "blocks", NULL};
    struct onvm_afpacket_conf c = {.queues = 1, .promisc = 1, .qdisc_bypass = 1};
    unsigned id;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Is|IppII", kwlist, &id, &c.ifname, &c.queues,
                                     &c.promisc, &c.qdisc_bypass, &c.block_size, &c.blocks))
        return NULL;
    if (!port_slot_ok(self, id))
        return NULL;
    char err[256] = "";
    return port_added(self, id, onvm_port_open_afpacket((int)id, &c, err, sizeof err), err);
}

#define AFXDP_MISSING                                                                              \
    "this build of pyonvm has no AF_XDP support: install the libxdp and libbpf headers (apt-get "  \
    "install libxdp-dev libbpf-dev) and rebuild (pip install -e .)"

static PyObject *Manager_add_afxdp(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"port", "ifname", "queues", "mode", "ring", "fill", "promisc", NULL};
    struct onvm_afxdp_conf c = {.queues = 1, .ring = 2048, .promisc = 1};
    unsigned id;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Is|IIIIp", kwlist, &id, &c.ifname, &c.queues, &c.mode,
                                     &c.ring, &c.fill, &c.promisc))
        return NULL;
    if (!port_slot_ok(self, id))
        return NULL;
#ifdef ONVM_HAVE_AFXDP
    char err[256] = "";
    struct onvm_port *p;
    Py_BEGIN_ALLOW_THREADS p = onvm_port_open_afxdp((int)id, &self->region->r, &c, err, sizeof err);
    Py_END_ALLOW_THREADS return port_added(self, id, p, err);
#else
    return raise_region(EOPNOTSUPP, AFXDP_MISSING);
#endif
}

static PyObject *Manager_add_tap(ManagerObject *self, PyObject *args) {
    unsigned id;
    const char *name;
    if (!PyArg_ParseTuple(args, "Is", &id, &name) || !port_slot_ok(self, id))
        return NULL;
    char err[256] = "";
    return port_added(self, id, onvm_port_open_tap((int)id, name, err, sizeof err), err);
}

static PyObject *Manager_start(ManagerObject *self, PyObject *unused) {
    (void)unused;
    if (self->running)
        Py_RETURN_NONE;
    int rc = onvm_mgr_start(self->m);
    if (rc)
        return raise_region(rc, "cannot start workers");
    self->running = 1;
    Py_RETURN_NONE;
}

static PyObject *Manager_stop(ManagerObject *self, PyObject *unused) {
    (void)unused;
    manager_shutdown(self);
    Py_RETURN_NONE;
}

static PyObject *Manager_close_ports(ManagerObject *self, PyObject *unused) {
    (void)unused;
    manager_shutdown(self);
    for (int i = 0; i < ONVM_MAX_PORTS; i++) {
        onvm_port_close(self->m->ports[i]);
        self->m->ports[i] = NULL;
    }
    Py_RETURN_NONE;
}

/* flush_ports(): stop the workers, then have output ports write what they buffered
 * (their errors show in port_state, which stays readable until close_ports). */
static PyObject *Manager_flush_ports(ManagerObject *self, PyObject *unused) {
    (void)unused;
    manager_shutdown(self);
    for (int i = 0; i < ONVM_MAX_PORTS; i++) {
        struct onvm_port *p = self->m->ports[i];
        if (p && p->flush) {
            Py_BEGIN_ALLOW_THREADS p->flush(p);
            Py_END_ALLOW_THREADS
        }
    }
    Py_RETURN_NONE;
}

static PyObject *Manager_kick(ManagerObject *self, PyObject *unused) {
    (void)unused;
    onvm_mgr_kick(self->m);
    Py_RETURN_NONE;
}

static PyObject *Manager_pause_input(ManagerObject *self, PyObject *arg) {
    int paused = PyObject_IsTrue(arg);
    if (paused < 0)
        return NULL;
    atomic_store(&self->m->rx_paused, paused);
    onvm_mgr_kick(self->m);
    Py_RETURN_NONE;
}

/* retire(nf_id, grace=0.5, drain=1.0) -> {"reclaimed", "grace_ok", "pending", "drained", "grace_s"} */
static PyObject *Manager_retire(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"nf_id", "grace", "drain", NULL};
    unsigned id;
    double grace = 0.5, drain = 1.0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "I|dd", kwlist, &id, &grace, &drain))
        return NULL;
    if (id == 0 || id >= ONVM_MAX_NFS)
        return PyErr_Format(PyExc_ValueError, "NF id %u is out of range (1..%d)", id, ONVM_MAX_NFS - 1);
    if (!(grace >= 0 && grace <= 60 && drain >= 0 && drain <= 60))
        return PyErr_Format(PyExc_ValueError, "grace and drain are 0..60 seconds");
    if (!self->region->r.base)
        return raise_region(EBADF, "region is closed");
    struct onvm_retire_result res;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = onvm_mgr_retire_nf(self->m, id, (uint64_t)(grace * 1e9), (uint64_t)(drain * 1e9), &res);
    Py_END_ALLOW_THREADS if (rc) return raise_region(rc, "retiring the NF failed");
    return Py_BuildValue("{s:l,s:O,s:I,s:O,s:d}", "reclaimed", res.reclaimed, "grace_ok",
                         res.grace_ok ? Py_True : Py_False, "pending", res.pending, "drained",
                         res.drained ? Py_True : Py_False, "grace_s", (double)res.grace_ns / 1e9);
}

/* drain(timeout) -> True once every NF ring is empty, False if the timeout came first */
static PyObject *Manager_drain(ManagerObject *self, PyObject *arg) {
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(timeout >= 0 && timeout <= 60))
        return PyErr_Format(PyExc_ValueError, "timeout is 0..60 seconds");
    if (!self->region->r.base)
        return raise_region(EBADF, "region is closed");
    int ok;
    Py_BEGIN_ALLOW_THREADS ok = onvm_mgr_wait_drained(self->m, (uint64_t)(timeout * 1e9));
    Py_END_ALLOW_THREADS return PyBool_FromLong(ok);
}

/* audit() -> [event]: one look for what the packet path cannot settle itself (fence.c). */
static PyObject *Manager_audit(ManagerObject *self, PyObject *unused) {
    (void)unused;
    if (!self->region->r.base)
        return raise_region(EBADF, "region is closed");
    static const char *const kinds[] = {[ONVM_AUDIT_FAULT] = "fault", [ONVM_AUDIT_STALL] = "stall",
                                        [ONVM_AUDIT_RING] = "ring", [ONVM_AUDIT_TABLE] = "table",
                                        [ONVM_AUDIT_POOL] = "pool"};
    static const char *const tables[] = {"chain", "service"};
    struct onvm_audit_event ev[2 * ONVM_MAX_NFS + ONVM_MAX_CHAINS + ONVM_MAX_SERVICES + 2];
    int n = onvm_mgr_audit(self->m, ev, (int)(sizeof ev / sizeof *ev));
    PyObject *l = PyList_New(0);
    for (int i = 0; l && i < n; i++) {
        const char *why = ev[i].kind == ONVM_AUDIT_TABLE ? tables[ev[i].why < 2 ? ev[i].why : 0]
                                                         : fault_name(ev[i].why);
        PyObject *d = Py_BuildValue("{s:s,s:I,s:I,s:s,s:K}", "kind", kinds[ev[i].kind], "nf", ev[i].nf, "peer",
                                    ev[i].peer, "why", why, "count", (unsigned long long)ev[i].count);
        if (!d || PyList_Append(l, d) < 0)
            Py_CLEAR(l);
        Py_XDECREF(d);
    }
    return l;
}

/* sweep(grace=0.5, settle=False) -> slots returned: those nobody can free any more (see
 * fence.c); None when the grace period did not complete in time, and nothing was freed. */
static PyObject *Manager_sweep(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"grace", "settle", NULL};
    double grace = 0.5;
    int settle = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|dp", kwlist, &grace, &settle))
        return NULL;
    if (!(grace >= 0 && grace <= 60))
        return PyErr_Format(PyExc_ValueError, "grace is 0..60 seconds");
    if (!self->region->r.base)
        return raise_region(EBADF, "region is closed");
    long n;
    Py_BEGIN_ALLOW_THREADS n = onvm_mgr_sweep(self->m, (uint64_t)(grace * 1e9), settle);
    Py_END_ALLOW_THREADS if (n == -EAGAIN) Py_RETURN_NONE;
    if (n < 0)
        return raise_region((int)n, "sweep failed");
    return PyLong_FromLong(n);
}

/* stalled() -> who had not passed a loop iteration when the last grace period timed out (retire.c):
 * {"nfs": [ids], "workers": [rows, RX workers first], "nfs_total": n, "workers_total": n}; all empty
 * after one that completed. */
static PyObject *Manager_stalled(ManagerObject *self, PyObject *Py_UNUSED(ignored)) {
    const struct onvm_grace_stall *st = &self->m->stalled;
    unsigned nn = st->nfs < ONVM_STALL_NAMED ? st->nfs : ONVM_STALL_NAMED;
    unsigned nw = st->workers < ONVM_STALL_NAMED ? st->workers : ONVM_STALL_NAMED;
    return Py_BuildValue("{s:N,s:N,s:I,s:I}", "nfs", list_of_u32(st->nf, nn), "workers",
                         list_of_u32(st->worker, nw), "nfs_total", st->nfs, "workers_total", st->workers);
}

/* fence(nf_id): take nothing more from the NF and send it nothing more (see fence.c). */
static PyObject *Manager_fence(ManagerObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    if (check_nf(id) < 0)
        return NULL;
    atomic_store(&self->region->r.view[id].fenced, 1);
    Py_RETURN_NONE;
}

static PyObject *Manager_set_rate(ManagerObject *self, PyObject *args) {
    unsigned id;
    unsigned long long rate;
    if (!PyArg_ParseTuple(args, "IK", &id, &rate))
        return NULL;
    if (id >= ONVM_MAX_PORTS || !self->m->ports[id])
        return PyErr_Format(PyExc_ValueError, "there is no port %u", id);
    if (onvm_port_set_rate(self->m->ports[id], rate) < 0)
        return PyErr_Format(PyExc_ValueError,
                            "cannot be paced: only gen ports and pcap inputs without rate=capture can");
    onvm_mgr_kick(self->m); /* a worker asleep until its next packet was due looks again */
    Py_RETURN_NONE;
}

static PyObject *Manager_port_state(ManagerObject *self, PyObject *args) {
    unsigned id;
    if (!PyArg_ParseTuple(args, "I", &id))
        return NULL;
    if (id >= ONVM_MAX_PORTS || !self->m->ports[id])
        Py_RETURN_NONE;
    struct onvm_port *p = self->m->ports[id];
    PyObject *d = Py_BuildValue("{s:i,s:i,s:s,s:K,s:K,s:K,s:K,s:i,s:i,s:K,s:s,s:s,s:i,s:K}", "kind", p->kind, "done",
                                atomic_load(&p->rx_done), "error", p->error, "pool_empty",
                                (unsigned long long)p->no_slot, "skipped", (unsigned long long)p->skipped,
                                "runt", (unsigned long long)p->runt, "no_ethertype",
                                (unsigned long long)p->no_ethertype,
                                "rx", p->rx != NULL || p->rxq != NULL, "tx", p->tx != NULL, "lost",
                                (unsigned long long)p->lost, "mode", p->mode, "notice", p->notice, "pacable",
                                p->pacable, "rate", (unsigned long long)atomic_load(&p->rate_want));
    if (d && p->has_devstats) {
        const struct onvm_port_devstats *s = &p->devstats;
        PyObject *dev = Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}", "ipackets",
                                      (unsigned long long)s->ipackets, "opackets", (unsigned long long)s->opackets,
                                      "ibytes", (unsigned long long)s->ibytes, "obytes",
                                      (unsigned long long)s->obytes, "imissed", (unsigned long long)s->imissed,
                                      "ierrors", (unsigned long long)s->ierrors, "oerrors",
                                      (unsigned long long)s->oerrors, "rx_nombuf", (unsigned long long)s->rx_nombuf);
        if (!dev || PyDict_SetItemString(d, "device", dev) < 0)
            Py_CLEAR(d);
        Py_XDECREF(dev);
    }
    return d;
}

/* ---- captures (onvm_capture.h) ---- */

static int capture_arg(ManagerObject *self, unsigned c) {
    if (c >= ONVM_MAX_CAPTURES) {
        PyErr_Format(PyExc_ValueError, "capture %u is out of range (0..%d)", c, ONVM_MAX_CAPTURES - 1);
        return -1;
    }
    if (!self->region->r.base) {
        raise_region(EBADF, "region is closed");
        return -1;
    }
    return 0;
}

/* capture_start(c, filter, snaplen, count): the filter is a dict of Rule.native()'s match fields. */
static PyObject *Manager_capture_start(ManagerObject *self, PyObject *args) {
    unsigned c, snaplen;
    unsigned long long count;
    PyObject *fd;
    if (!PyArg_ParseTuple(args, "IO!IK", &c, &PyDict_Type, &fd, &snaplen, &count) || capture_arg(self, c) < 0)
        return NULL;
    struct onvm_cap_filter f;
    if (onvm_cap_filter_from(fd, &f) < 0)
        return NULL;
    struct onvm_region *r = &self->region->r;
    uint8_t scratch[4096]; /* what a capture that used this one before left: thrown away */
    self->cap_stuck[c] = 0;
    while (onvm_cap_read(r, c, scratch, sizeof scratch, &self->cap_stuck[c]) > 0) {
    }
    onvm_cap_start(r, c, &f, snaplen, count);
    Py_RETURN_NONE;
}

/* capture_tap(c, port=-1, nf=0, rx=True, tx=False, on=True): watch (or stop watching) a tap point. */
static PyObject *Manager_capture_tap(ManagerObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"c", "port", "nf", "rx", "tx", "on", NULL};
    unsigned c, nf = 0;
    int port = -1, rx = 1, tx = 0, on = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "I|iIppp", kwlist, &c, &port, &nf, &rx, &tx, &on) ||
        capture_arg(self, c) < 0)
        return NULL;
    _Atomic uint32_t *word;
    if (port >= 0) {
        if (port >= ONVM_MAX_PORTS || !self->m->ports[port])
            return PyErr_Format(PyExc_ValueError, "no port %d", port);
        word = &self->m->ports[port]->tap;
    } else {
        if (nf == 0 || nf >= ONVM_MAX_NFS)
            return PyErr_Format(PyExc_ValueError, "NF id %u is out of range", nf);
        word = &self->region->r.nfs[nf].cpu.tap;
    }
    uint32_t bits = (rx ? 1u << c : 0) | (tx ? 1u << (ONVM_CAP_TX_SHIFT + c) : 0);
    /* Relaxed: the capture's active flag (release in onvm_cap_start) orders its settings. */
    if (on)
        atomic_fetch_or_explicit(word, bits, ONVM_RELAXED);
    else
        atomic_fetch_and_explicit(word, ~bits, ONVM_RELAXED);
    Py_RETURN_NONE;
}

/* capture_stop(c): clears c's bits on every port and NF, then ends it. */
static PyObject *Manager_capture_stop(ManagerObject *self, PyObject *args) {
    unsigned c;
    if (!PyArg_ParseTuple(args, "I", &c) || capture_arg(self, c) < 0)
        return NULL;
    uint32_t keep = ~((1u << c) | (1u << (ONVM_CAP_TX_SHIFT + c)));
    for (unsigned p = 0; p < ONVM_MAX_PORTS; p++)
        if (self->m->ports[p])
            atomic_fetch_and_explicit(&self->m->ports[p]->tap, keep, ONVM_RELAXED); /* relaxed: see capture_tap */
    for (unsigned n = 1; n < ONVM_MAX_NFS; n++)
        atomic_fetch_and_explicit(&self->region->r.nfs[n].cpu.tap, keep, ONVM_RELAXED);
    onvm_cap_stop(&self->region->r, c);
    Py_RETURN_NONE;
}

/* capture_read(c, max=65536) -> bytes: pcap records (nanosecond stamps), oldest first. */
static PyObject *Manager_capture_read(ManagerObject *self, PyObject *args) {
    unsigned c, max = 65536;
    if (!PyArg_ParseTuple(args, "I|I", &c, &max) || capture_arg(self, c) < 0)
        return NULL;
    if (max < 16 + self->region->r.cap_rec_size || max > (64u << 20))
        return PyErr_Format(PyExc_ValueError, "max must hold a record: %u..%u bytes",
                            16 + self->region->r.cap_rec_size, 64u << 20);
    PyObject *out = PyBytes_FromStringAndSize(NULL, max);
    if (!out)
        return NULL;
    size_t n = onvm_cap_read(&self->region->r, c, (uint8_t *)PyBytes_AS_STRING(out), max, &self->cap_stuck[c]);
    if (_PyBytes_Resize(&out, (Py_ssize_t)n) < 0)
        return NULL;
    return out;
}

/* capture_wait(c, timeout): sleep until capture c has a record (or timeout seconds pass). */
static PyObject *Manager_capture_wait(ManagerObject *self, PyObject *args) {
    unsigned c;
    double timeout;
    if (!PyArg_ParseTuple(args, "Id", &c, &timeout) || capture_arg(self, c) < 0)
        return NULL;
    if (!(timeout >= 0 && timeout <= 60))
        return PyErr_Format(PyExc_ValueError, "timeout is 0..60 seconds");
    struct onvm_capture *cp = onvm_cap(&self->region->r, c);
    Py_BEGIN_ALLOW_THREADS onvm_waiter_prepare(&cp->wait);
    /* After the fence in prepare: a record published before it is seen here, a later one kicks us. */
    if (atomic_load(&cp->head) != atomic_load_explicit(&cp->tail, ONVM_RELAXED))
        onvm_waiter_cancel(&cp->wait);
    else
        onvm_waiter_sleep(&cp->wait, (long)(timeout * 1e9));
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

/* capture_stats(c) -> {taken, drops, remaining (None: no count), pending} */
static PyObject *Manager_capture_stats(ManagerObject *self, PyObject *args) {
    unsigned c;
    if (!PyArg_ParseTuple(args, "I", &c) || capture_arg(self, c) < 0)
        return NULL;
    struct onvm_capture *cp = onvm_cap(&self->region->r, c);
    uint64_t left = atomic_load(&cp->remaining);
    PyObject *rem = left == ONVM_CAP_FOREVER ? Py_NewRef(Py_None) : PyLong_FromUnsignedLongLong(left);
    if (!rem)
        return NULL;
    return Py_BuildValue("{s:K,s:K,s:N,s:K}", "taken", (unsigned long long)atomic_load(&cp->taken), "drops",
                         (unsigned long long)atomic_load(&cp->drops), "remaining", rem, "pending",
                         (unsigned long long)(atomic_load(&cp->head) - atomic_load(&cp->tail)));
}

/* trace_arm(filter, count): mark the next count packets RX takes by filter (count 0: disarm) */
static PyObject *Manager_trace_arm(ManagerObject *self, PyObject *args) {
    PyObject *fd;
    unsigned count;
    if (!PyArg_ParseTuple(args, "O!I", &PyDict_Type, &fd, &count) || capture_arg(self, 0) < 0)
        return NULL;
    struct onvm_cap_filter f;
    if (onvm_cap_filter_from(fd, &f) < 0)
        return NULL;
    onvm_trace_arm(&self->region->r, &f, count);
    Py_RETURN_NONE;
}

/* trace_read() -> [event dict], oldest first; trace_state() -> {armed, remaining, lost} */
static PyObject *Manager_trace_read(ManagerObject *self, PyObject *unused) {
    (void)unused;
    if (capture_arg(self, 0) < 0)
        return NULL;
    PyObject *list = PyList_New(0);
    struct onvm_trace_event ev[64];
    uint32_t n;
    while (list && (n = onvm_trace_read(&self->region->r, ev, 64)) > 0) {
        for (uint32_t i = 0; i < n; i++) {
            const struct onvm_trace_event *e = &ev[i];
            PyObject *d = Py_BuildValue("{s:K,s:K,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "rx_ns",
                                        (unsigned long long)e->rx_ns, "t_ns", (unsigned long long)e->t_ns, "slot",
                                        e->slot, "kind", e->kind, "action", e->action, "dest", e->dest, "by",
                                        e->by, "nf", e->nf, "chain", e->chain, "hop", e->hop, "reason", e->reason,
                                        "rule", e->rule, "flow_hash", e->flow_hash, "len", e->len);
            if (!d || PyList_Append(list, d) < 0) {
                Py_XDECREF(d);
                Py_CLEAR(list);
                break;
            }
            Py_DECREF(d);
        }
        if (n < 64)
            break;
    }
    return list;
}

static PyObject *Manager_trace_state(ManagerObject *self, PyObject *unused) {
    (void)unused;
    if (capture_arg(self, 0) < 0)
        return NULL;
    struct onvm_trace *t = onvm_trace(&self->region->r);
    return Py_BuildValue("{s:i,s:I,s:K}", "armed", (int)atomic_load(&t->armed), "remaining",
                         (unsigned)atomic_load(&t->remaining), "lost", (unsigned long long)atomic_load(&t->lost));
}

static PyObject *Manager_worker_stats(ManagerObject *self, PyObject *unused) {
    (void)unused;
    PyObject *l = PyList_New(0);
    for (unsigned i = 0; l && i < self->m->nrx + self->m->ntx; i++) {
        struct onvm_mgr_worker *w = &self->m->workers[i];
        PyObject *d = Py_BuildValue("{s:s,s:I,s:K,s:N,s:N}", "role", w->tx ? "tx" : "rx", "index",
                                    w->index, "handed", (unsigned long long)w->handed, "actions",
                                    u64_tuple(w->act, ONVM_ACT_COUNT), "drops",
                                    u64_tuple(w->drops, ONVM_DROP_COUNT));
        PyList_Append(l, d);
        Py_DECREF(d);
    }
    return l;
}

static PyMethodDef Manager_methods[] = {
    {"add_null", (PyCFunction)Manager_add_null, METH_VARARGS, "add_null(port)"},
    {"add_gen", (PyCFunction)(void (*)(void))Manager_add_gen, METH_VARARGS | METH_KEYWORDS,
     "add_gen(port, size, mix, flows, proto, rate, count, seed, src_ip, dst_ip, sport, dport)"},
    {"add_pcap_in", (PyCFunction)(void (*)(void))Manager_add_pcap_in, METH_VARARGS | METH_KEYWORDS,
     "add_pcap_in(port, path, loops=1, rate=0, timing=False, speed=1.0, loss=False)"},
    {"add_pcap_out", (PyCFunction)(void (*)(void))Manager_add_pcap_out, METH_VARARGS | METH_KEYWORDS,
     "add_pcap_out(port, path, snaplen=65535)"},
    {"add_afpacket", (PyCFunction)(void (*)(void))Manager_add_afpacket, METH_VARARGS | METH_KEYWORDS,
     "add_afpacket(port, ifname, queues=1, promisc=True, qdisc_bypass=True, block_size=0, blocks=0)"},
    {"add_tap", (PyCFunction)Manager_add_tap, METH_VARARGS, "add_tap(port, name)"},
    {"add_afxdp", (PyCFunction)(void (*)(void))Manager_add_afxdp, METH_VARARGS | METH_KEYWORDS,
     "add_afxdp(port, ifname, queues=1, mode=0, ring=2048, fill=0, promisc=True): mode 0 auto, 1 zc, "
     "2 copy, 3 skb"},
    {"start", (PyCFunction)Manager_start, METH_NOARGS, "Start the worker threads."},
    {"stop", (PyCFunction)Manager_stop, METH_NOARGS, "Stop and join the worker threads."},
    {"close_ports", (PyCFunction)Manager_close_ports, METH_NOARGS, "Stop, then flush and close ports."},
    {"flush_ports", (PyCFunction)Manager_flush_ports, METH_NOARGS,
     "Stop, then flush output ports (their errors stay readable in port_state)."},
    {"kick", (PyCFunction)Manager_kick, METH_NOARGS, "Wake every worker."},
    {"retire", (PyCFunction)(void (*)(void))Manager_retire, METH_VARARGS | METH_KEYWORDS,
     "retire(nf_id, grace=0.5, drain=1.0): take a leaving NF out of the packet path (see retire.c)."},
    {"drain", (PyCFunction)Manager_drain, METH_O, "drain(timeout) -> True once every NF ring is empty."},
    {"audit", (PyCFunction)Manager_audit, METH_NOARGS,
     "audit() -> [{kind, nf, peer, why, count}]: faults, stalls, repairs found in the region (fence.c)."},
    {"stalled", (PyCFunction)Manager_stalled, METH_NOARGS,
     "stalled() -> who had not passed a loop iteration when the last grace period timed out: "
     "{'nfs': [ids], 'workers': [rows, RX workers first], 'nfs_total', 'workers_total'} (the first 8 of "
     "each named)"},
    {"sweep", (PyCFunction)(void (*)(void))Manager_sweep, METH_VARARGS | METH_KEYWORDS,
     "sweep(grace=0.5, settle=False) -> slots returned that nobody could free any more (see fence.c), "
     "or None when the grace period did not complete in time: nothing was freed, sweep again later "
     "(settle=True: only once the packet path has moved on, without looking at the pool first)."},
    {"fence", (PyCFunction)Manager_fence, METH_VARARGS,
     "fence(nf_id): take nothing more from the NF and send it nothing more."},
    {"pause_input", (PyCFunction)Manager_pause_input, METH_O, "pause_input(flag): hold or release input ports."},
    {"port_state", (PyCFunction)Manager_port_state, METH_VARARGS, "Driver state of a port."},
    {"set_rate", (PyCFunction)Manager_set_rate, METH_VARARGS,
     "set_rate(port, pps): a paced input's rate from now on (0: unpaced)."},
    {"worker_stats", (PyCFunction)Manager_worker_stats, METH_NOARGS, ""},
    {"capture_start", (PyCFunction)Manager_capture_start, METH_VARARGS,
     "capture_start(c, filter, snaplen, count): capture c takes what its filter (a dict of rule fields) takes"},
    {"capture_tap", (PyCFunction)(void (*)(void))Manager_capture_tap, METH_VARARGS | METH_KEYWORDS,
     "capture_tap(c, port=-1, nf=0, rx=True, tx=False, on=True): watch a port or an NF"},
    {"capture_stop", (PyCFunction)Manager_capture_stop, METH_VARARGS, "capture_stop(c): end capture c"},
    {"capture_read", (PyCFunction)Manager_capture_read, METH_VARARGS,
     "capture_read(c, max=65536) -> bytes of pcap records (nanosecond stamps)"},
    {"capture_wait", (PyCFunction)Manager_capture_wait, METH_VARARGS,
     "capture_wait(c, timeout): sleep until capture c has something to read"},
    {"capture_stats", (PyCFunction)Manager_capture_stats, METH_VARARGS,
     "capture_stats(c) -> {taken, drops, remaining, pending}"},
    {"trace_arm", (PyCFunction)Manager_trace_arm, METH_VARARGS,
     "trace_arm(filter, count): trace the next count packets the filter takes (0: disarm)"},
    {"trace_read", (PyCFunction)Manager_trace_read, METH_NOARGS, "trace_read() -> [event], oldest first"},
    {"trace_state", (PyCFunction)Manager_trace_state, METH_NOARGS, "trace_state() -> {armed, remaining, lost}"},
    {NULL}};

/* Built whole by tp_new: there is no __init__ to call again, and no half-made object. */
static PyObject *Manager_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    ManagerObject *self = (ManagerObject *)type->tp_alloc(type, 0);
    if (self && Manager_build(self, args, kw) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

static PyTypeObject ManagerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Manager",
    .tp_basicsize = sizeof(ManagerObject),
    .tp_dealloc = (destructor)Manager_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Manager(region, rx_workers=1, tx_workers=1, burst=64): native workers and ports.",
    .tp_methods = Manager_methods,
    .tp_new = Manager_new,
};

/* ===== C API for the modules built apart: drivers, hooks (onvm_capi.h) ===== */

static struct onvm_region *capi_region(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &RegionType)) {
        PyErr_SetString(PyExc_TypeError, "expected an onvm._native.Region");
        return NULL;
    }
    RegionObject *self = (RegionObject *)obj;
    if (!self->r.base) {
        raise_region(EBADF, "region is closed");
        return NULL;
    }
    return &self->r;
}

static struct onvm_mgr *capi_manager(PyObject *obj) {
    if (!PyObject_TypeCheck(obj, &ManagerType)) {
        PyErr_SetString(PyExc_TypeError, "expected an onvm._native.Manager");
        return NULL;
    }
    return ((ManagerObject *)obj)->m;
}

static int capi_add_port(PyObject *obj, unsigned id, struct onvm_port *p) {
    if (!capi_manager(obj) || !port_slot_ok((ManagerObject *)obj, id))
        return -1;
    ((ManagerObject *)obj)->m->ports[id] = p;
    return 0;
}

static const struct onvm_capi capi = {
    .version = ONVM_CAPI_VERSION,
    .layout_version = ONVM_LAYOUT_VERSION,
    .sizeof_port = sizeof(struct onvm_port),
    .sizeof_region = sizeof(struct onvm_region),
    .region = capi_region,
    .manager = capi_manager,
    .add_port = capi_add_port,
    .port_new = onvm_port_new,
    .port_close = onvm_port_close,
    .pool_alloc_burst = onvm_pool_alloc_burst,
    .pool_free_burst = onvm_pool_free_burst,
    .port_reclaim = onvm_port_reclaim,
    .slot_reset = onvm_slot_reset,
    .parse = onvm_parse,
    .classify = onvm_classify,
    .flow_put = onvm_flow_put,
    .cls_lookup = onvm_cls_lookup,
    .key_from = onvm_key_from,
    .flow_lookup_bulk = onvm_flow_lookup_bulk,
    .classify_burst = onvm_classify_burst,
    .fix_l4_csum = onvm_fix_l4_csum,
    .lat_hist_dict = onvm_lat_hist_dict,
    .take = onvm_take,
};

/* ===== module functions ==================================================== */

static PyObject *mod_parse(PyObject *m, PyObject *arg) {
    (void)m;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    struct onvm_meta meta = {0};
    meta.len = (uint32_t)b.len;
    onvm_parse(&meta, b.buf, (uint32_t)b.len);
    PyBuffer_Release(&b);
    return meta_dict(&meta);
}

static PyObject *mod_flow_hash(PyObject *m, PyObject *args) {
    (void)m;
    unsigned a, b, pa, pb, proto;
    if (!PyArg_ParseTuple(args, "IIIII", &a, &b, &pa, &pb, &proto))
        return NULL;
    return PyLong_FromUnsignedLong(onvm_flow_hash(a, b, (uint16_t)pa, (uint16_t)pb, (uint8_t)proto));
}

static PyMethodDef module_methods[] = {
    {"parse", mod_parse, METH_O, "parse(data) -> the metadata RX would compute"},
    {"packet_key", onvm_mod_packet_key, METH_VARARGS,
     "packet_key(data, in_port=0) -> the flow key RX classification would use, or None (not IP)"},
    {"flow_hash", mod_flow_hash, METH_VARARGS, "flow_hash(a, b, port_a, port_b, proto)"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "onvm._native",
                                       "pyonvm's native core.", -1, module_methods};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    PyTypeObject *types[] = {&RegionType, &ManagerType, &NFContextType, &PacketType, &MetaType,
                             &HeaderType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        if (PyType_Ready(types[i]) < 0)
            return NULL;
        Py_INCREF(types[i]);
        PyModule_AddObject(m, strrchr(types[i]->tp_name, '.') + 1, (PyObject *)types[i]);
    }
    /* One RegionError: the package's own (onvm.errors), raised here with errno and message. */
    PyObject *errors = PyImport_ImportModule("onvm.errors");
    onvm_RegionError = errors ? PyObject_GetAttrString(errors, "RegionError") : NULL;
    Py_XDECREF(errors);
    if (!onvm_RegionError || PyModule_AddObjectRef(m, "RegionError", onvm_RegionError) < 0)
        return NULL;
    PyObject *capsule = PyCapsule_New((void *)&capi, ONVM_CAPI_NAME, NULL);
    if (!capsule || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        return NULL;
    }
    if (onvm_constants_register(m) < 0 || onvm_packet_register(m) < 0 || onvm_gather_register(m) < 0 ||
        onvm_lpm_register(m) < 0 || onvm_latency_register(m) < 0)
        return NULL;
    return m;
}
