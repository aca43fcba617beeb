/* onvm_nf.h - Python object layouts shared by module.c and nfloop.c. */
#ifndef ONVM_NF_H
#define ONVM_NF_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "onvm_route.h"

typedef struct {
    PyObject_HEAD struct onvm_region r;
    PyObject *path;
    /* Buffers over the region handed to Python (pkt.data, pkt.payload) that are not
     * released yet.  close() leaves the mapping in place until the last one goes, so
     * no buffer, whoever holds it, ever points at unmapped memory. */
    Py_ssize_t exports;
    void *kept_base;
    size_t kept_size;
} RegionObject;

/* A fixed-size text field of the region as str: up to its first NUL or its size, bad
 * UTF-8 replaced.  Any process that maps the region may have written it. */
static inline PyObject *onvm_text(const char *s, size_t size) {
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strnlen(s, size), "replace");
}

/* A buffer over the region was released (the other half of a getbuffer on it). */
void onvm_region_export_done(RegionObject *self);

extern PyTypeObject RegionType;
extern PyTypeObject NFContextType;
extern PyTypeObject PacketType;
extern PyTypeObject MetaType;
extern PyTypeObject HeaderType;
extern PyObject *onvm_RegionError;

/* flowbind.c */
/* A flow key from (ipver, src, dst, proto, sport, dport, in_port[, vlan]); -1 with ValueError. */
struct onvm_flow_key;
int onvm_key_from(PyObject *o, struct onvm_flow_key *k);
PyObject *Region_flow_put(RegionObject *self, PyObject *args, PyObject *kw);
PyObject *Region_flow_get(RegionObject *self, PyObject *key);
PyObject *Region_flow_del(RegionObject *self, PyObject *key);
PyObject *Region_flow_list(RegionObject *self, PyObject *args, PyObject *kw);
PyObject *Region_flow_stats(RegionObject *self, PyObject *unused);
PyObject *Region_flow_expire(RegionObject *self, PyObject *args);
PyObject *Region_flow_flush(RegionObject *self, PyObject *args);
PyObject *Region_rules_apply(RegionObject *self, PyObject *args, PyObject *kw);
PyObject *Region_rule_hits(RegionObject *self, PyObject *slots);
PyObject *Region_rule_lookup(RegionObject *self, PyObject *key);
PyObject *Region_rules_stats(RegionObject *self, PyObject *unused);
PyObject *Region_set_flow_idle(RegionObject *self, PyObject *ms);
PyObject *Region_flow_key(RegionObject *self, PyObject *args);
PyObject *Region_chains(RegionObject *self, PyObject *unused);

#endif
