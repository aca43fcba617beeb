/* onvm_capi.h - what the core module (onvm._native) lends to optional driver
 * modules built apart from it (onvm._dpdk, which links DPDK and is loaded only
 * by a manager that opens a dpdk: port).
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

#include "onvm_mgr.h"

#define ONVM_CAPI_NAME "onvm._native._C_API"
#define ONVM_CAPI_VERSION 1u

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
};

#endif
