/* gather.c - per-burst numpy arrays of parsed fields for batch handlers.
 *
 * A Gather is built once per NF with the arrays of the fields its handler
 * asked for; calling it with a burst length fills entry i of each array from
 * packet slots[i].  A field a packet does not have is 0.  Every read checks
 * the packet's length, so a packet shortened after RX parsed it is safe.
 * write_field() is the way back: it stores an array of values into a field
 * of many packets, skipping those that lack the field.
 */
#include "onvm_packet.h"

#include <string.h>

enum {
    GF_ETHER_TYPE, GF_L3_TYPE, GF_PROTO, GF_IPV4_SRC, GF_IPV4_DST, GF_IPV6_SRC, GF_IPV6_DST,
    GF_SRC_PORT, GF_DST_PORT, GF_TCP_FLAGS, GF_TTL, GF_VLAN, GF_FLAGS, GF_ICMP_TYPE, GF_COUNT
};

static const struct {
    const char *name;
    Py_ssize_t itemsize;
} gfields[GF_COUNT] = {
    [GF_ETHER_TYPE] = {"ether_type", 2}, [GF_L3_TYPE] = {"l3_type", 1},   [GF_PROTO] = {"proto", 1},
    [GF_IPV4_SRC] = {"ipv4_src", 4},     [GF_IPV4_DST] = {"ipv4_dst", 4}, [GF_IPV6_SRC] = {"ipv6_src", 16},
    [GF_IPV6_DST] = {"ipv6_dst", 16},    [GF_SRC_PORT] = {"src_port", 2}, [GF_DST_PORT] = {"dst_port", 2},
    [GF_TCP_FLAGS] = {"tcp_flags", 1},   [GF_TTL] = {"ttl", 1},           [GF_VLAN] = {"vlan", 2},
    [GF_FLAGS] = {"flags", 1},           [GF_ICMP_TYPE] = {"icmp_type", 1},
};

#define GATHER_MAX GF_COUNT

typedef struct {
    PyObject_HEAD RegionObject *region;
    Py_buffer slots;
    int n;
    int id[GATHER_MAX];
    Py_buffer buf[GATHER_MAX];
    Py_ssize_t capacity;
} GatherObject;

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void gather_one(int id, void *out, uint32_t i, const struct onvm_meta *m, const uint8_t *d) {
    uint32_t len = m->len, l3 = m->l3_off, l4 = m->l4_off;
    int v4 = m->l3_type == ONVM_L3_IPV4 && l3 + 20 <= len;
    int v6 = m->l3_type == ONVM_L3_IPV6 && l3 + 40 <= len;
    int ports = l4 && (m->l4_proto == 6 || m->l4_proto == 17) && l4 + 4 <= len;
    switch (id) {
    case GF_ETHER_TYPE: { /* after any VLAN tags, as Packet.ether_type */
        uint16_t et = 0;
        if (l3 && l3 <= len) {
            et = rd16(d + l3 - 2);
        } else if (len >= 14) {
            uint32_t off = 12;
            et = rd16(d + off);
            for (int t = 0; t < 2 && (et == 0x8100 || et == 0x88a8) && off + 6 <= len; t++) {
                off += 4;
                et = rd16(d + off);
            }
        }
        ((uint16_t *)out)[i] = et;
        break;
    }
    case GF_L3_TYPE:
        ((uint8_t *)out)[i] = m->l3_type;
        break;
    case GF_PROTO:
        ((uint8_t *)out)[i] = m->l4_proto;
        break;
    case GF_IPV4_SRC:
        ((uint32_t *)out)[i] = v4 ? rd32(d + l3 + 12) : 0;
        break;
    case GF_IPV4_DST:
        ((uint32_t *)out)[i] = v4 ? rd32(d + l3 + 16) : 0;
        break;
    case GF_IPV6_SRC:
    case GF_IPV6_DST: {
        uint8_t *o = (uint8_t *)out + (size_t)i * 16;
        if (v6)
            memcpy(o, d + l3 + (id == GF_IPV6_SRC ? 8 : 24), 16);
        else
            memset(o, 0, 16);
        break;
    }
    case GF_SRC_PORT:
        ((uint16_t *)out)[i] = ports ? rd16(d + l4) : 0;
        break;
    case GF_DST_PORT:
        ((uint16_t *)out)[i] = ports ? rd16(d + l4 + 2) : 0;
        break;
    case GF_TCP_FLAGS:
        ((uint8_t *)out)[i] = l4 && m->l4_proto == 6 && l4 + 14 <= len ? d[l4 + 13] : 0;
        break;
    case GF_TTL:
        ((uint8_t *)out)[i] = v4 ? d[l3 + 8] : v6 ? d[l3 + 7] : 0;
        break;
    case GF_VLAN:
        ((uint16_t *)out)[i] = (m->flags & ONVM_MF_VLAN) && len >= 18 ? rd16(d + 14) & 0x0fff : 0;
        break;
    case GF_FLAGS:
        ((uint8_t *)out)[i] = m->flags;
        break;
    case GF_ICMP_TYPE:
        ((uint8_t *)out)[i] = l4 && l4 < len && ((m->l4_proto == 1 && m->l3_type == ONVM_L3_IPV4) ||
                                                 (m->l4_proto == 58 && m->l3_type == ONVM_L3_IPV6))
                                  ? d[l4]
                                  : 0;
        break;
    }
}

static void Gather_dealloc(GatherObject *g) {
    for (int i = 0; i < g->n; i++)
        PyBuffer_Release(&g->buf[i]);
    if (g->slots.obj)
        PyBuffer_Release(&g->slots);
    Py_XDECREF(g->region);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

/* Gather(region, slots, [(field_id, array), ...]) */
static int Gather_build(GatherObject *g, PyObject *args, PyObject *kw) {
    (void)kw;
    PyObject *region, *slots, *specs;
    if (!PyArg_ParseTuple(args, "O!OO", &RegionType, &region, &slots, &specs))
        return -1;
    if (PyObject_GetBuffer(slots, &g->slots, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    if (g->slots.itemsize != 4) {
        PyErr_SetString(PyExc_ValueError, "slots must be a uint32 array");
        return -1;
    }
    g->capacity = g->slots.len / 4;
    Py_INCREF(region);
    g->region = (RegionObject *)region;
    PyObject *fast = PySequence_Fast(specs, "fields must be a sequence of (field id, array)");
    if (!fast)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > GATHER_MAX) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many fields");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        int id;
        PyObject *arr;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "iO", &id, &arr))
            goto fail;
        if (id < 0 || id >= GF_COUNT) {
            PyErr_Format(PyExc_ValueError, "no gather field %d", id);
            goto fail;
        }
        if (PyObject_GetBuffer(arr, &g->buf[g->n], PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
            goto fail;
        g->id[g->n++] = id;
        if (g->buf[g->n - 1].len < g->capacity * gfields[id].itemsize) {
            PyErr_Format(PyExc_ValueError, "array for %s needs %zd bytes per packet and room for %zd",
                         gfields[id].name, gfields[id].itemsize, g->capacity);
            goto fail;
        }
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    return -1;
}

static PyObject *Gather_call(GatherObject *g, PyObject *args, PyObject *kw) {
    (void)kw;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "n", &n))
        return NULL;
    struct onvm_region *r = &g->region->r;
    if (!r->base)
        return PyErr_Format(PyExc_ValueError, "region is closed");
    if (n < 0 || n > g->capacity)
        return PyErr_Format(PyExc_ValueError, "burst %zd exceeds the arrays (%zd)", n, g->capacity);
    const uint32_t *slots = g->slots.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct onvm_meta m; /* one copy: fields read from it agree with each other */
        uint8_t *d;
        if (!onvm_slot_view(r, slots[i], &m, &d))
            return PyErr_Format(PyExc_ValueError, "slot %u is not a packet of the pool", slots[i]);
        for (int f = 0; f < g->n; f++)
            gather_one(g->id[f], g->buf[f].buf, (uint32_t)i, &m, d);
    }
    Py_RETURN_NONE;
}

/* Store v into field id of one packet; returns 1 if the packet has the field. */
static int scatter_one(int id, uint32_t v, struct onvm_meta *m, uint8_t *d) {
    uint32_t len = m->len, l3 = m->l3_off, l4 = m->l4_off;
    int v4 = m->l3_type == ONVM_L3_IPV4 && l3 + 20 <= len;
    int v6 = m->l3_type == ONVM_L3_IPV6 && l3 + 40 <= len;
    int ports = l4 && (m->l4_proto == 6 || m->l4_proto == 17) && l4 + 4 <= len;
    uint8_t *p;
    switch (id) {
    case GF_IPV4_SRC:
    case GF_IPV4_DST:
        if (!v4)
            return 0;
        p = d + l3 + (id == GF_IPV4_SRC ? 12 : 16);
        p[0] = (uint8_t)(v >> 24);
        p[1] = (uint8_t)(v >> 16);
        p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
        return 1;
    case GF_SRC_PORT:
    case GF_DST_PORT:
        if (!ports)
            return 0;
        p = d + l4 + (id == GF_SRC_PORT ? 0 : 2);
        p[0] = (uint8_t)(v >> 8);
        p[1] = (uint8_t)v;
        return 1;
    case GF_TTL:
        if (!v4 && !v6)
            return 0;
        d[l3 + (v4 ? 8 : 7)] = (uint8_t)v;
        return 1;
    case GF_TCP_FLAGS:
        if (!(l4 && m->l4_proto == 6 && l4 + 14 <= len))
            return 0;
        d[l4 + 13] = (uint8_t)v;
        return 1;
    }
    return 0;
}

/* write_field(region, field_id, slots uint32[n], values uint32[n]) -> packets written */
static PyObject *mod_write_field(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *region, *so, *vo;
    int id;
    if (!PyArg_ParseTuple(args, "O!iOO", &RegionType, &region, &id, &so, &vo))
        return NULL;
    if (id != GF_IPV4_SRC && id != GF_IPV4_DST && id != GF_SRC_PORT && id != GF_DST_PORT && id != GF_TTL &&
        id != GF_TCP_FLAGS)
        return PyErr_Format(PyExc_ValueError, "field %d cannot be written", id);
    struct onvm_region *r = &((RegionObject *)region)->r;
    if (!r->base)
        return PyErr_Format(PyExc_ValueError, "region is closed");
    Py_buffer s, v;
    if (PyObject_GetBuffer(so, &s, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (PyObject_GetBuffer(vo, &v, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&s);
        return NULL;
    }
    Py_ssize_t n = s.len / 4, done = 0;
    if (s.itemsize != 4 || v.itemsize != 4 || v.len != s.len) {
        PyBuffer_Release(&s);
        PyBuffer_Release(&v);
        return PyErr_Format(PyExc_ValueError, "write_field needs uint32 slots and values of equal length");
    }
    const uint32_t *slots = s.buf, *vals = v.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        struct onvm_meta m;
        uint8_t *d;
        if (onvm_slot_view(r, slots[i], &m, &d))
            done += scatter_one(id, vals[i], &m, d);
    }
    PyBuffer_Release(&s);
    PyBuffer_Release(&v);
    return PyLong_FromSsize_t(done);
}

static PyMethodDef gather_functions[] = {
    {"write_field", mod_write_field, METH_VARARGS,
     "write_field(region, field_id, slots, values) -> count: store values[i] into packet slots[i]"},
    {NULL}};

/* Built whole by tp_new: there is no __init__ to call again, and no half-made object. */
static PyObject *Gather_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    GatherObject *self = (GatherObject *)type->tp_alloc(type, 0);
    if (self && Gather_build(self, args, kw) < 0)
        Py_CLEAR(self);
    return (PyObject *)self;
}

static PyTypeObject GatherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Gather",
    .tp_basicsize = sizeof(GatherObject),
    .tp_dealloc = (destructor)Gather_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Gather(region, slots, [(field id, array)]): g(n) fills the arrays for a burst.",
    .tp_new = Gather_new,
    .tp_call = (ternaryfunc)Gather_call,
};

int onvm_gather_register(PyObject *module) {
    if (PyType_Ready(&GatherType) < 0)
        return -1;
    Py_INCREF(&GatherType);
    PyModule_AddObject(module, "Gather", (PyObject *)&GatherType);
    PyObject *d = PyDict_New();
    if (!d)
        return -1;
    for (int i = 0; i < GF_COUNT; i++) {
        PyObject *v = Py_BuildValue("(in)", i, gfields[i].itemsize);
        if (!v || PyDict_SetItemString(d, gfields[i].name, v) < 0)
            return -1;
        Py_DECREF(v);
    }
    if (PyModule_AddObject(module, "GATHER_FIELDS", d) < 0)
        return -1;
    return PyModule_AddFunctions(module, gather_functions);
}
