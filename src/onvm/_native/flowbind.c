/* flowbind.c - Region methods for chains by name, the flow table and rules. */
#include "onvm_flow.h"
#include "onvm_parse.h"
#include "onvm_nf.h"

#include <stdlib.h>

/* key: (ipver, src bytes, dst bytes, proto, sport, dport, in_port[, vlan]); vlan is
 * 1 + the outer VLAN id, 0 (the default) for untagged packets. */
int onvm_key_from(PyObject *o, struct onvm_flow_key *k) {
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

static PyObject *flow_dict(const struct onvm_flow_entry *v, uint64_t now) {
    const struct onvm_flow *f = &v->f;
    const struct onvm_flow_data *d = &v->d;
    return Py_BuildValue("{s:N,s:H,s:B,s:I,s:I,s:l,s:K,s:K,s:d,s:d}", "key", key_tuple(&f->key), "chain",
                         f->chain, "origin", f->origin, "idle_ms", d->idle_ms, "hard_ms", d->hard_ms, "rule_slot",
                         f->rule ? (long)f->rule - 1 : -1L, "packets", (unsigned long long)d->packets,
                         "bytes", (unsigned long long)d->bytes, "age_s",
                         (double)(now > d->created_ns ? now - d->created_ns : 0) / 1e9, "idle_s",
                         (double)(now > d->last_ns ? now - d->last_ns : 0) / 1e9);
}

static PyObject *region_error(int err, const char *msg) {
    PyObject *v = Py_BuildValue("(is)", err, msg);
    if (v) {
        PyErr_SetObject(onvm_RegionError, v);
        Py_DECREF(v);
    }
    return NULL;
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
    if (onvm_key_from(ko, &k) < 0)
        return NULL;
    if (chain >= ONVM_MAX_CHAINS)
        return PyErr_Format(PyExc_ValueError, "chain %u is out of range (0..%d)", chain, ONVM_MAX_CHAINS - 1);
    if (origin != ONVM_FLOW_BY_NF && origin != ONVM_FLOW_BY_API)
        return PyErr_Format(PyExc_ValueError, "origin %u: an explicit entry comes from an NF (1) or the API (2)",
                            origin);
    if (idle > ONVM_TIMEOUT_MAX_MS || hard > ONVM_TIMEOUT_MAX_MS)
        return PyErr_Format(PyExc_ValueError, "timeouts are at most %u ms (%u s)", ONVM_TIMEOUT_MAX_MS,
                            ONVM_TIMEOUT_MAX_MS / 1000);
    int rc = onvm_flow_put(&self->r, &k, (uint16_t)chain, idle, hard, (uint8_t)origin, onvm_now_ns());
    if (rc == -ENOSPC)
        return PyErr_Format(PyExc_MemoryError,
                            "flow table is full near this flow (%u entries, %d probed, none of them a cached "
                            "result to replace)", self->r.flow_count, ONVM_FLOW_PROBE);
    Py_RETURN_NONE;
}

PyObject *Region_flow_get(RegionObject *self, PyObject *ko) {
    OPEN_OR_FAIL(self);
    struct onvm_flow_key k;
    if (onvm_key_from(ko, &k) < 0)
        return NULL;
    struct onvm_flow_entry f;
    uint64_t now = onvm_now_ns();
    int rc;
    for (int tries = 0; (rc = onvm_flow_get(&self->r, &k, now, 0, &f)) == -EAGAIN && tries < 1000; tries++)
        ;
    if (rc != 0)
        Py_RETURN_NONE;
    return flow_dict(&f, now);
}

PyObject *Region_flow_del(RegionObject *self, PyObject *ko) {
    OPEN_OR_FAIL(self);
    struct onvm_flow_key k;
    if (onvm_key_from(ko, &k) < 0)
        return NULL;
    return PyBool_FromLong(onvm_flow_del(&self->r, &k) == 0);
}

PyObject *Region_flow_list(RegionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"limit", "chain", "origin", NULL};
    unsigned limit = 1000;
    int chain = -1, origin = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Iii", kwlist, &limit, &chain, &origin))
        return NULL;
    OPEN_OR_FAIL(self);
    PyObject *l = PyList_New(0);
    uint64_t now = onvm_now_ns();
    for (uint32_t i = 0; l && i < self->r.flow_count && (uint32_t)PyList_GET_SIZE(l) < limit; i++) {
        struct onvm_flow_entry copy;
        if (onvm_flow_at(&self->r, i)->state != ONVM_FLOW_VALID || onvm_flow_read(&self->r, i, now, &copy) != 0)
            continue;
        if ((chain >= 0 && copy.f.chain != chain) || (origin >= 0 && copy.f.origin != origin))
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
    struct onvm_cls_ctl *c = onvm_cls(&self->r);
    uint64_t fast = 0;
    for (unsigned i = 0; i < ONVM_FREE_STACKS; i++)
        fast += atomic_load_explicit(&self->r.rx_fast[i].n, ONVM_RELAXED);
    return Py_BuildValue("{s:I,s:L,s:K,s:K,s:K,s:K,s:K,s:K,s:I,s:I}", "size", h->flow_count, "used",
                         (long long)atomic_load(&h->flows_used), "installed",
                         (unsigned long long)atomic_load(&h->flows_installed), "expired",
                         (unsigned long long)atomic_load(&h->flows_expired), "full",
                         (unsigned long long)atomic_load(&h->flows_full), "evicted",
                         (unsigned long long)atomic_load(&h->flows_evicted), "changed",
                         (unsigned long long)atomic_load(&h->flows_changed), "fast",
                         (unsigned long long)fast, "rules", c->rules,
                         "default_idle_ms", c->default_idle_ms);
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
    int chain = -1, cached_only = 0;
    if (!PyArg_ParseTuple(args, "|ip", &chain, &cached_only))
        return NULL;
    OPEN_OR_FAIL(self);
    uint32_t removed;
    Py_BEGIN_ALLOW_THREADS removed = onvm_flow_flush(&self->r, chain, cached_only);
    Py_END_ALLOW_THREADS return PyLong_FromUnsignedLong(removed);
}

/* A rule as Rule.native() gives it: (id, priority, chain, in_port, vlan, proto, ipver,
 * src, src_len, dst, dst_len, sport_lo, sport_hi, dport_lo, dport_hi, idle_ms, hard_ms). */
static int rule_from(PyObject *o, struct onvm_rule *u) {
    unsigned id, chain, in_port, vlan, proto, ipver, src_len, dst_len, sp_lo, sp_hi, dp_lo, dp_hi, idle, hard;
    int priority;
    Py_buffer src, dst;
    memset(u, 0, sizeof *u);
    if (!PyArg_ParseTuple(o, "IiIIIIIy*Iy*IIIIIII;a rule is (id, priority, chain, in_port, vlan, proto, ipver, "
                          "src, src_len, dst, dst_len, sport_lo, sport_hi, dport_lo, dport_hi, idle_ms, hard_ms)",
                          &id, &priority, &chain, &in_port, &vlan, &proto, &ipver, &src, &src_len, &dst, &dst_len,
                          &sp_lo, &sp_hi, &dp_lo, &dp_hi, &idle, &hard))
        return -1;
    int ok = src.len == 16 && dst.len == 16 && in_port <= 0xffff && vlan <= 0xffff && proto < 256 &&
             ipver < 256 && src_len < 256 && dst_len < 256 && sp_lo <= 0xffff && sp_hi <= 0xffff &&
             dp_lo <= 0xffff && dp_hi <= 0xffff;
    if (ok) {
        memcpy(u->src, src.buf, 16);
        memcpy(u->dst, dst.buf, 16);
    }
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "a rule's addresses are 16 bytes, its ports and ids 16 bits");
        return -1;
    }
    u->id = id;
    u->priority = priority;
    u->chain = (uint16_t)chain;
    u->in_port = (uint16_t)in_port;
    u->vlan = (uint16_t)vlan;
    u->proto = (uint8_t)proto;
    u->ipver = (uint8_t)ipver;
    u->src_len = (uint8_t)src_len;
    u->dst_len = (uint8_t)dst_len;
    u->sport_lo = (uint16_t)sp_lo;
    u->sport_hi = (uint16_t)sp_hi;
    u->dport_lo = (uint16_t)dp_lo;
    u->dport_hi = (uint16_t)dp_hi;
    u->idle_ms = idle;
    u->hard_ms = hard;
    return 0;
}

/* rules_apply(adds=(), dels=(), ports=()) -> [slot of each rule added]
 * One change, all or nothing, seen by the packet path at once. */
PyObject *Region_rules_apply(RegionObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"adds", "dels", "ports", NULL};
    PyObject *adds = NULL, *dels = NULL, *ports = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOO", kwlist, &adds, &dels, &ports))
        return NULL;
    OPEN_OR_FAIL(self);
    PyObject *empty = PyTuple_New(0), *fa = NULL, *fd = NULL, *fp = NULL, *out = NULL;
    struct onvm_rule *buf = NULL;
    uint32_t *slots = NULL, *del = NULL;
    uint16_t port[ONVM_MAX_PORTS], chain[ONVM_MAX_PORTS];
    Py_ssize_t na = 0, nd = 0, np = 0;
    if (!empty)
        return NULL;
    fa = PySequence_Fast(adds ? adds : empty, "adds must be a sequence of rules");
    fd = fa ? PySequence_Fast(dels ? dels : empty, "dels must be a sequence of slots") : NULL;
    fp = fd ? PySequence_Fast(ports ? ports : empty, "ports must be a sequence of (port, chain)") : NULL;
    if (!fp)
        goto done;
    na = PySequence_Fast_GET_SIZE(fa);
    nd = PySequence_Fast_GET_SIZE(fd);
    np = PySequence_Fast_GET_SIZE(fp);
    if (na > ONVM_RULES_LIMIT || nd > ONVM_RULES_LIMIT || np > ONVM_MAX_PORTS) {
        PyErr_Format(PyExc_ValueError, "at most %u rules and %d ports in one change", ONVM_RULES_LIMIT,
                     ONVM_MAX_PORTS);
        goto done;
    }
    buf = PyMem_Calloc((size_t)na + 1, sizeof *buf);
    slots = PyMem_Calloc((size_t)na + 1, sizeof *slots);
    del = PyMem_Calloc((size_t)nd + 1, sizeof *del);
    if (!buf || !slots || !del) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < na; i++)
        if (rule_from(PySequence_Fast_GET_ITEM(fa, i), &buf[i]) < 0)
            goto done;
    for (Py_ssize_t i = 0; i < nd; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fd, i));
        if (PyErr_Occurred())
            goto done;
        del[i] = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
    }
    for (Py_ssize_t i = 0; i < np; i++) {
        unsigned p, c;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fp, i), "II;each port is (port, chain)", &p, &c))
            goto done;
        port[i] = (uint16_t)(p > 0xffff ? 0xffff : p);
        chain[i] = (uint16_t)(c > 0xffff ? 0xffff : c);
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = onvm_cls_apply(&self->r, del, (uint32_t)nd, buf, (uint32_t)na, slots, port, chain,
                                               (uint32_t)np);
    Py_END_ALLOW_THREADS if (rc < 0) {
        if (rc == -ENOSPC)
            PyErr_SetString(PyExc_MemoryError, self->r.errmsg);
        else if (rc == -EINVAL || rc == -ENOENT)
            PyErr_SetString(PyExc_ValueError, self->r.errmsg);
        else
            region_error(-rc, self->r.errmsg);
        goto done;
    }
    out = PyList_New(na);
    for (Py_ssize_t i = 0; out && i < na; i++)
        PyList_SET_ITEM(out, i, PyLong_FromUnsignedLong(slots[i]));
done:
    Py_DECREF(empty);
    Py_XDECREF(fa);
    Py_XDECREF(fd);
    Py_XDECREF(fp);
    PyMem_Free(buf);
    PyMem_Free(slots);
    PyMem_Free(del);
    return out;
}

/* rule_hits(slots) -> [packets that took each rule's decision at RX] */
PyObject *Region_rule_hits(RegionObject *self, PyObject *slots) {
    OPEN_OR_FAIL(self);
    PyObject *f = PySequence_Fast(slots, "rule_hits takes a sequence of slots");
    if (!f)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(f);
    PyObject *out = PyList_New(n);
    for (Py_ssize_t i = 0; out && i < n; i++) {
        unsigned long s = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(f, i));
        if (PyErr_Occurred() || s >= self->r.cls_max_rules) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "rule slot %lu is out of range", s);
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, PyLong_FromUnsignedLongLong(atomic_load(&onvm_rule_hits(&self->r)[s])));
    }
    Py_DECREF(f);
    return out;
}

/* rule_lookup(key) -> (slot or -1, version): the classifier alone, as RX asks it */
PyObject *Region_rule_lookup(RegionObject *self, PyObject *ko) {
    OPEN_OR_FAIL(self);
    struct onvm_flow_key k;
    if (onvm_key_from(ko, &k) < 0)
        return NULL;
    struct onvm_cls_result res;
    if (onvm_cls_lookup(&self->r, &k, &res) < 0)
        return region_error(EAGAIN, "the classifier kept changing under the lookup");
    return Py_BuildValue("(lI)", res.slot, res.version);
}

PyObject *Region_rules_stats(RegionObject *self, PyObject *u) {
    (void)u;
    OPEN_OR_FAIL(self);
    struct onvm_cls_stats st;
    onvm_cls_stats(&self->r, &st);
    return Py_BuildValue("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:K,s:I}", "rules", st.rules, "max_rules", st.max_rules,
                         "tuples", st.tuples, "groups", st.groups, "slots", st.slots, "tombs", st.tombs, "version",
                         st.version, "rebuilds", st.rebuilds, "bytes", (unsigned long long)st.bytes,
                         "tuples_max", ONVM_TUPLES_MAX);
}

/* set_flow_idle(ms): the idle timeout of cached results whose rule names none */
PyObject *Region_set_flow_idle(RegionObject *self, PyObject *arg) {
    OPEN_OR_FAIL(self);
    unsigned long ms = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (ms > ONVM_TIMEOUT_MAX_MS)
        return PyErr_Format(PyExc_ValueError, "timeouts are at most %u ms", ONVM_TIMEOUT_MAX_MS);
    onvm_cls(&self->r)->default_idle_ms = (uint32_t)ms;
    Py_RETURN_NONE;
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
