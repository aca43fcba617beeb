/* onvm_capi.h - what the core module (onvm._native) lends to the modules built
 * apart from it: optional drivers (onvm._dpdk, which links DPDK and is loaded
 * only by a manager that opens a dpdk: port) and the test and benchmark hooks
 * (onvm._hooks, which the package never loads at run time).
 *
 * The core exports one capsule, onvm._native._C_API, holding a struct
 * onvm_capi.  A driver module checks the versions below (both modules come from
 * one build, but a stale .so must fail cleanly, not corrupt a region), then
 * reaches the region and the pool only through these calls, and hands the
 * ports it opens to a manager with add_port(): from then on the core's workers
 * poll them and the core closes them (onvm_port_close), exactly as its own. */
#ifndef ONVM_CAPI_H
#define ONVM_CAPI_H

#include <Python.h>

#include "onvm_flow.h"
#include "onvm_latency.h"
#include "onvm_mgr.h"

#define ONVM_CAPI_NAME "onvm._native._C_API"
#define ONVM_CAPI_VERSION 4u

struct onvm_capi {
    uint32_t version;        /* ONVM_CAPI_VERSION */
    uint32_t layout_version; /* ONVM_LAYOUT_VERSION */
    uint32_t sizeof_port;    /* sizeof(struct onvm_port) */
    uint32_t sizeof_region;  /* sizeof(struct onvm_region) */
    /* The handle of a _native.Region; NULL with a Python exception if obj is not an open one. */
    struct onvm_region *(*region)(PyObject *obj);
    /* The native state of a _native.Manager (its region, worker counts); NULL
     * with a Python exception if obj is not one. */
    struct onvm_mgr *(*manager)(PyObject *obj);
    /* Installs a port opened by a driver module as port id of a _native.Manager
     * whose workers have not started.  On success the manager owns p; on failure
     * (-1, Python exception set) the caller still does. */
    int (*add_port)(PyObject *manager, unsigned id, struct onvm_port *p);
    struct onvm_port *(*port_new)(int id, int kind);
    void (*port_close)(struct onvm_port *p); /* the driver's close, then the port is freed */
    uint32_t (*pool_alloc_burst)(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner);
    void (*pool_free_burst)(struct onvm_region *r, const uint32_t *idx, uint32_t n);
    long (*port_reclaim)(struct onvm_region *r, unsigned port);
    /* for the hooks: the RX path's steps one at a time, and the latency histogram's dict */
    void (*slot_reset)(struct onvm_region *r, uint32_t idx);
    void (*parse)(struct onvm_meta *m, const uint8_t *p, uint32_t len);
    void (*classify)(struct onvm_region *r, struct onvm_meta *m, const uint8_t *data, uint64_t now);
    void (*classify_burst)(struct onvm_region *r, struct onvm_meta *const *m, const uint8_t *const *data,
                           uint32_t n, uint64_t now);
    int (*flow_put)(struct onvm_region *r, const struct onvm_flow_key *key, uint16_t chain, uint32_t idle_ms,
                    uint32_t hard_ms, uint8_t origin, uint64_t now);
    int (*cls_lookup)(struct onvm_region *r, const struct onvm_flow_key *key, struct onvm_cls_result *out);
    int (*key_from)(PyObject *o, struct onvm_flow_key *k); /* a key tuple, as Region.flow_get takes */
    void (*flow_lookup_bulk)(struct onvm_region *r, const struct onvm_flow_key *keys, uint32_t n, int32_t *out);
    int (*fix_l4_csum)(uint8_t *frame, uint32_t len);
    PyObject *(*lat_hist_dict)(const struct onvm_lat_hist *h);
    /* validated takes from a ring (onvm_region.h) */
    uint32_t (*take)(struct onvm_region *r, struct onvm_ring *ring, uint32_t *head, uint32_t *out, uint32_t n,
                     uint16_t want_mask, uint16_t want, uint16_t me, uint32_t *bad_slot, uint32_t *bad_rec);
};

/* The core's table for module `name` (onvm._dpdk, onvm._hooks), or NULL with an
 * ImportError when the two were built from other sources. */
static inline const struct onvm_capi *onvm_capi_import(const char *name) {
    const struct onvm_capi *api = PyCapsule_Import(ONVM_CAPI_NAME, 0);
    if (api && (api->version != ONVM_CAPI_VERSION || api->layout_version != ONVM_LAYOUT_VERSION ||
                api->sizeof_port != sizeof(struct onvm_port) || api->sizeof_region != sizeof(struct onvm_region))) {
        PyErr_Format(PyExc_ImportError,
                     "%s was built with another onvm._native (C API %u, layout %u; the core has %u, %u): "
                     "rebuild the package",
                     name, ONVM_CAPI_VERSION, ONVM_LAYOUT_VERSION, api->version, api->layout_version);
        return NULL;
    }
    return api;
}

/* latency.c: a histogram as {count, sum_ns, max_ns, buckets} */
PyObject *onvm_lat_hist_dict(const struct onvm_lat_hist *h);

#endif
