/* flowbind.c - Region methods for chains by name, the flow table and rules. */
#include "onvm_flow.h"
#include "onvm_parse.h"
#include "onvm_nf.h"

#include <stdlib.h>

/* key: (ipver, src bytes, dst bytes, proto, sport, dport, in_port[, vlan]); vlan is
 * 1 + the outer VLAN id, 0 (the default) for untagged packets. */
static int key_from(PyObject *o, struct onvm_flow_key *k) {
    unsigned ipver, proto, sport, dport, in_port, vlan = 0;
    Py_buffer src, dst;
    memset(k, 0, sizeof *k);
    if (!PyArg_ParseTuple(o, "Iy*y*IIII|I;key must be (ipver, src, dst, proto, sport, dport, in_port[, vlan])",
                          &ipver, &src, &dst, &proto, &sport, &dport, &in_port, &vlan))
        return -1;
    Py_ssize_t want = ipver == 4 ? 4 : 16;
    int ok = (ipver == 4 || ipver == 6) && src.len == want && dst.len == want && proto < 256 &&
             sport < 65536 && dport < 65536 && in_port < 65536 && vlan <= 4096;
    if (ok) {
        memcpy(k->src, src.buf, (size_t)want);
        memcpy(k->dst, dst.buf, (size_t)want);
        k->ipver = (uint8_t)ipver;
        k->proto = (uint8_t)proto;
        k->sport = (uint16_t)sport;
        k->dport = (uint16_t)dport;
        k->in_port = (uint16_t)in_port;
        k->vlan = (uint16_t)vlan;
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "bad flow key: IPv4 needs 4-byte addresses, IPv6 16; ports and "
                                          "in_port are 16 bits, proto 8, vlan 0..4096 (1 + the VLAN id)");
        return -1;
    }
    return 0;
}

static PyObject *key_tuple(const struct onvm_flow_key *k) {
    Py_ssize_t n = k->ipver == 4 ? 4 : 16;
    return Py_BuildValue("(By#y#BHHHH)", k->ipver, (const char *)k->src, n, (const char *)k->dst, n, k->proto,
                         k->sport, k->dport, k->in_port, k->vlan);
}

static PyObject *flow_dict(const struct onvm_flow_view *v, uint64_t now) {
    const struct onvm_flow *f = &v->f;
    const struct onvm_flow_data *d = &v->d;
    return Py_BuildValue("{s:N,s:H,s:B,s:I,s:I,s:H,s:K,s:K,s:d,s:d}", "key", key_tuple(&f->key), "chain",
                         f->chain, "origin", f->origin, "idle_ms", d->idle_ms, "hard_ms", d->hard_ms, "rule_slot",
                         (uint16_t)(f->rule ? f->rule - 1 : 0xffff), "packets", (unsigned long long)d->packets,
                         "bytes", (unsigned long long)d->bytes, "age_s",
                         (double)(now > d->created_ns ? now - d->created_ns : 0) / 1e9, "idle_s",
                         (double)(now > d->last_ns ? now - d->last_ns : 0) / 1e9);
}

#define OPEN_OR_FAIL(self)                                                                                   \
    do {                                                                                                     \
        if (!(self)->r.base) {                                                                               \
            PyErr_SetString(onvm_RegionError, "region is closed");                                          \
            return NULL;                                                                                     \
        }                                                                                                    \
    } while (0)

PyObject *Region_flow_put(RegionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"key", "chain", "idle_ms", "hard_ms", "origin", NULL};
    PyObject *ko;
    unsigned chain, idle = 0, hard = 0, origin = ONVM_FLOW_BY_API;
    struct onvm_flow_key k;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OI|III", kwlist, &ko, &chain, &idle, &hard, &origin))
        return NULL;
    OPEN_OR_FAIL(self);
    if (key_from(ko, &k) < 0)
        return NULL;
    if (chain >= ONVM_MAX_CHAINS)
        return PyErr_Format(PyExc_ValueError, "chain %u is out of range (0..%d)", chain, ONVM_MAX_CHAINS - 1);
    int rc = onvm_flow_put(&self->r, &k, (uint16_t)chain, idle, hard, (uint8_t)origin, 0, 0, onvm_now_ns());
    if (rc == -ENOSPC)
        return PyErr_Format(PyExc_MemoryError, "flow table is full near this flow (%u entries, %d probed)",
                            self->r.flow_count, ONVM_FLOW_PROBE);
    Py_RETURN_NONE;
}

PyObject *Region_flow_get(RegionObject *self, PyObject *ko) {
    OPEN_OR_FAIL(self);
    struct onvm_flow_key k;
    if (key_from(ko, &k) < 0)
        return NULL;
    struct onvm_flow_view f;
    uint64_t now = onvm_now_ns();
    int rc;
    while ((rc = onvm_flow_get(&self->r, &k, now, &f)) == -EAGAIN)
        ;
    if (rc != 0)
        Py_RETURN_NONE;
    return flow_dict(&f, now);
}

PyObject *Region_flow_del(RegionObject *self, PyObject *ko) {
    OPEN_OR_FAIL(self);
    struct onvm_flow_key k;
    if (key_from(ko, &k) < 0)
        return NULL;
    return PyBool_FromLong(onvm_flow_del(&self->r, &k) == 0);
}

PyObject *Region_flow_list(RegionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"limit", "chain", NULL};
    unsigned limit = 1000;
    int chain = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Ii", kwlist, &limit, &chain))
        return NULL;
    OPEN_OR_FAIL(self);
    PyObject *l = PyList_New(0);
    uint64_t now = onvm_now_ns();
    for (uint32_t i = 0; l && i < self->r.flow_count && (uint32_t)PyList_GET_SIZE(l) < limit; i++) {
        struct onvm_flow_view copy;
        if (onvm_flows(&self->r)[i].state != ONVM_FLOW_VALID || onvm_flow_read(&self->r, i, &copy) != 0)
            continue;
        if (chain >= 0 && copy.f.chain != chain)
            continue;
        PyObject *d = flow_dict(&copy, now);
        PyList_Append(l, d);
        Py_DECREF(d);
    }
    return l;
}

PyObject *Region_flow_stats(RegionObject *self, PyObject *u) {
    (void)u;
    OPEN_OR_FAIL(self);
    struct onvm_header *h = self->r.hdr;
    return Py_BuildValue("{s:I,s:L,s:K,s:K,s:K,s:I}", "size", h->flow_count, "used",
                         (long long)atomic_load(&h->flows_used), "installed",
                         (unsigned long long)atomic_load(&h->flows_installed), "expired",
                         (unsigned long long)atomic_load(&h->flows_expired), "full",
                         (unsigned long long)atomic_load(&h->flows_full), "rules", onvm_rules(&self->r)->count);
}

PyObject *Region_flow_expire(RegionObject *self, PyObject *args) {
    unsigned start, n;
    if (!PyArg_ParseTuple(args, "II", &start, &n))
        return NULL;
    OPEN_OR_FAIL(self);
    uint32_t removed;
    Py_BEGIN_ALLOW_THREADS removed = onvm_flow_expire(&self->r, start, n, onvm_now_ns());
    Py_END_ALLOW_THREADS return PyLong_FromUnsignedLong(removed);
}

PyObject *Region_flow_flush(RegionObject *self, PyObject *args) {
    int chain = -1;
    if (!PyArg_ParseTuple(args, "|i", &chain))
        return NULL;
    OPEN_OR_FAIL(self);
    uint32_t removed;
    Py_BEGIN_ALLOW_THREADS removed = onvm_flow_flush(&self->r, chain);
    Py_END_ALLOW_THREADS return PyLong_FromUnsignedLong(removed);
}

static int rule_from(PyObject *d, struct onvm_rule *u, uint16_t *slot) {
    memset(u, 0, sizeof *u);
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "each rule is a dict");
        return -1;
    }
    static const char *ints[] = {"slot", "id", "priority", "chain", "in_port", "vlan", "proto", "ipver",
                                 "src_len", "dst_len", "sport_lo", "sport_hi", "dport_lo", "dport_hi",
                                 "idle_ms", "hard_ms"};
    long long v[16];
    for (int i = 0; i < 16; i++) {
        PyObject *x = PyDict_GetItemString(d, ints[i]);
        if (!x) {
            PyErr_Format(PyExc_KeyError, "rule needs '%s'", ints[i]);
            return -1;
        }
        v[i] = PyLong_AsLongLong(x);
        if (PyErr_Occurred())
            return -1;
    }
    if (v[0] < 0 || v[0] >= ONVM_MAX_RULES || v[3] < 0 || v[3] >= ONVM_MAX_CHAINS || v[8] > 128 || v[9] > 128) {
        PyErr_SetString(PyExc_ValueError, "rule slot, chain or prefix length out of range");
        return -1;
    }
    *slot = (uint16_t)v[0];
    u->id = (uint32_t)v[1];
    u->priority = (int32_t)v[2];
    u->chain = (uint16_t)v[3];
    u->in_port = (uint16_t)v[4];
    u->vlan = (uint16_t)v[5];
    u->proto = (uint8_t)v[6];
    u->ipver = (uint8_t)v[7];
    u->src_len = (uint8_t)v[8];
    u->dst_len = (uint8_t)v[9];
    u->sport_lo = (uint16_t)v[10];
    u->sport_hi = (uint16_t)v[11];
    u->dport_lo = (uint16_t)v[12];
    u->dport_hi = (uint16_t)v[13];
    u->idle_ms = (uint32_t)v[14];
    u->hard_ms = (uint32_t)v[15];
    const char *addr[] = {"src", "dst"};
    uint8_t *dst[] = {u->src, u->dst};
    for (int i = 0; i < 2; i++) {
        PyObject *x = PyDict_GetItemString(d, addr[i]);
        Py_buffer b;
        if (!x || PyObject_GetBuffer(x, &b, PyBUF_SIMPLE) < 0) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_KeyError, "rule needs '%s'", addr[i]);
            return -1;
        }
        if (b.len != 16) {
            PyBuffer_Release(&b);
            PyErr_Format(PyExc_ValueError, "rule '%s' must be 16 bytes", addr[i]);
            return -1;
        }
        memcpy(dst[i], b.buf, 16);
        PyBuffer_Release(&b);
    }
    return 0;
}

/* set_rules(rules in priority order, bump=[slots]) */
PyObject *Region_set_rules(RegionObject *self, PyObject *args) {
    PyObject *rules, *bump = NULL;
    if (!PyArg_ParseTuple(args, "O|O", &rules, &bump))
        return NULL;
    OPEN_OR_FAIL(self);
    PyObject *fast = PySequence_Fast(rules, "rules must be a sequence of dicts");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > ONVM_MAX_RULES) {
        Py_DECREF(fast);
        return PyErr_Format(PyExc_ValueError, "at most %d rules", ONVM_MAX_RULES);
    }
    struct onvm_rule *buf = PyMem_Calloc((size_t)(n ? n : 1), sizeof *buf);
    uint16_t slots[ONVM_MAX_RULES], bumps[ONVM_MAX_RULES];
    Py_ssize_t nb = 0;
    if (!buf) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rule_from(PySequence_Fast_GET_ITEM(fast, i), &buf[i], &slots[i]) < 0) {
            PyMem_Free(buf);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    if (bump && bump != Py_None) {
        PyObject *bf = PySequence_Fast(bump, "bump must be a sequence of slots");
        if (!bf) {
            PyMem_Free(buf);
            return NULL;
        }
        nb = PySequence_Fast_GET_SIZE(bf);
        for (Py_ssize_t i = 0; i < nb && i < ONVM_MAX_RULES; i++)
            bumps[i] = (uint16_t)PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(bf, i));
        Py_DECREF(bf);
        if (nb > ONVM_MAX_RULES)
            nb = ONVM_MAX_RULES;
        if (PyErr_Occurred()) {
            PyMem_Free(buf);
            return NULL;
        }
    }
    onvm_rules_set(&self->r, buf, slots, (uint32_t)n, bumps, (uint32_t)nb);
    PyMem_Free(buf);
    Py_RETURN_NONE;
}

PyObject *Region_rule_hits(RegionObject *self, PyObject *u) {
    (void)u;
    OPEN_OR_FAIL(self);
    struct onvm_rules *rs = onvm_rules(&self->r);
    PyObject *d = PyDict_New();
    for (uint32_t k = 0; d && k < rs->count && k < ONVM_MAX_RULES; k++) {
        struct onvm_rule *u2 = &rs->rule[rs->order[k]];
        PyObject *key = PyLong_FromUnsignedLong(u2->id);
        PyObject *val = PyLong_FromUnsignedLongLong(atomic_load(&u2->hits));
        PyDict_SetItem(d, key, val);
        Py_DECREF(key);
        Py_DECREF(val);
    }
    return d;
}

/* flow_key(slot) -> the slot's key tuple, or None when it is not IP */
PyObject *Region_flow_key(RegionObject *self, PyObject *args) {
    unsigned long s;
    if (!PyArg_ParseTuple(args, "k", &s))
        return NULL;
    OPEN_OR_FAIL(self);
    struct onvm_meta m;
    uint8_t *d;
    if (!onvm_slot_view(&self->r, s, &m, &d))
        return PyErr_Format(PyExc_ValueError, "slot %lu is not a packet of the pool", s);
    struct onvm_flow_key k;
    if (onvm_flow_key_of(&m, d, &k) != 0)
        Py_RETURN_NONE;
    return key_tuple(&k);
}

/* packet_key(data, in_port=0) -> the flow key RX classification would use, or None (not IP) */
PyObject *onvm_mod_packet_key(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer b;
    unsigned in_port = 0;
    if (!PyArg_ParseTuple(args, "y*|I", &b, &in_port))
        return NULL;
    if (in_port > UINT16_MAX || b.len > UINT16_MAX) {
        PyBuffer_Release(&b);
        return PyErr_Format(PyExc_ValueError, "in_port is 16 bits and a packet at most 65535 bytes");
    }
    struct onvm_meta meta = {0};
    meta.len = (uint32_t)b.len;
    meta.in_port = (uint16_t)in_port;
    onvm_parse(&meta, b.buf, meta.len);
    struct onvm_flow_key k;
    int rc = onvm_flow_key_of(&meta, b.buf, &k);
    PyBuffer_Release(&b);
    if (rc != 0)
        Py_RETURN_NONE;
    return key_tuple(&k);
}

/* chains() -> [(id, name, [(action, dest)])] for named chains */
PyObject *Region_chains(RegionObject *self, PyObject *u) {
    (void)u;
    OPEN_OR_FAIL(self);
    PyObject *l = PyList_New(0);
    for (unsigned c = 0; l && c < ONVM_MAX_CHAINS; c++) {
        struct onvm_chain *ch = &self->r.chains[c];
        if (!ch->name[0])
            continue;
        PyObject *hops = PyList_New(0);
        struct onvm_hop h;
        for (unsigned i = 0; onvm_chain_hop(&self->r, c, i, &h) == 0; i++) {
            PyObject *t = Py_BuildValue("(BH)", h.action, h.dest);
            PyList_Append(hops, t);
            Py_DECREF(t);
        }
        PyObject *t = Py_BuildValue("(INN)", c, onvm_text(ch->name, sizeof ch->name), hops);
        PyList_Append(l, t);
        Py_DECREF(t);
    }
    return l;
}
