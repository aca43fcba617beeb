/* onvm_core_api.h - the core's functions that the hooks module (onvm._hooks) calls.
 *
 * Test and benchmark entry points live in a second extension module, which the
 * package never imports at run time.  That module does not carry its own copy
 * of the core: onvm._native hands it this table of function pointers in a
 * capsule (the CPython way for one extension to call another), so both work on
 * the same code and the same objects.  A hooks module built against another
 * table refuses to load (size and layout version checked). */
#ifndef ONVM_CORE_API_H
#define ONVM_CORE_API_H

#include "onvm_flow.h"
#include "onvm_latency.h"
#include "onvm_nf.h"

#define ONVM_CORE_API_CAPSULE "onvm._native.core_api"

struct onvm_core_api {
    uint32_t size;           /* sizeof(struct onvm_core_api) */
    uint32_t layout_version; /* ONVM_LAYOUT_VERSION */
    PyTypeObject *region_type;
    PyObject *region_error;
    uint32_t (*pool_alloc_burst)(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner);
    void (*pool_free_burst)(struct onvm_region *r, const uint32_t *idx, uint32_t n);
    void (*slot_reset)(struct onvm_region *r, uint32_t idx);
    void (*parse)(struct onvm_meta *m, const uint8_t *p, uint32_t len);
    void (*classify)(struct onvm_region *r, struct onvm_meta *m, const uint8_t *data, uint64_t now);
    int (*flow_put)(struct onvm_region *r, const struct onvm_flow_key *key, uint16_t chain, uint32_t idle_ms,
                    uint32_t hard_ms, uint8_t origin, uint16_t rule, uint32_t rule_gen, uint64_t now);
    void (*flow_lookup_bulk)(struct onvm_region *r, const struct onvm_flow_key *keys, uint32_t n, int32_t *out);
    int (*fix_l4_csum)(uint8_t *frame, uint32_t len);
    PyObject *(*lat_hist_dict)(const struct onvm_lat_hist *h); /* latency.c */
};

/* latency.c: a histogram as {count, sum_ns, max_ns, buckets} */
PyObject *onvm_lat_hist_dict(const struct onvm_lat_hist *h);

/* ---- the hooks module's own files (hooks.c, harness.c, hookbench.c) ---- */

extern const struct onvm_core_api *onvm_core;
/* The open region behind a Region object, or NULL with an exception set. */
struct onvm_region *onvm_hook_region(PyObject *obj);
int onvm_harness_register(PyObject *module);
int onvm_hookbench_register(PyObject *module);

#endif
