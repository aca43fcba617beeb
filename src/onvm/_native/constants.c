/* constants.c - the facts C and Python share, exported to Python once.
 *
 * Actions, drop reasons, port kinds and policies come from their X-macro lists
 * (onvm_layout.h, onvm_port.h, onvm_region.h), as {name: value} dicts; limits
 * come from the #defines.  onvm.constants builds Python's enums and tables from
 * these and restates none of them. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "onvm_capture.h"
#include "onvm_flow.h"
#include "onvm_latency.h"
#include "onvm_port.h"

struct named {
    const char *name;
    long value;
};

static int add_table(PyObject *m, const char *attr, const struct named *t, size_t n) {
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < n; i++) {
        PyObject *v = PyLong_FromLong(t[i].value);
        if (!v || PyDict_SetItemString(d, t[i].name, v) < 0)
            Py_CLEAR(d);
        Py_XDECREF(v);
    }
    if (!d || PyModule_AddObject(m, attr, d) < 0) {
        Py_XDECREF(d);
        return -1;
    }
    return 0;
}

static const struct named actions[] = {
#define X(id, name) {name, ONVM_ACT_##id},
    ONVM_ACTIONS(X)
#undef X
};
static const struct named drop_reasons[] = {
#define X(id, name) {name, ONVM_DROP_##id},
    ONVM_DROP_REASONS(X)
#undef X
};
static const struct named port_kinds[] = {
#define X(id, name) {name, ONVM_PORT_##id},
    ONVM_PORT_KINDS(X)
#undef X
};
static const struct named flow_origins[] = {
#define X(id, name) {name, ONVM_FLOW_BY_##id},
    ONVM_FLOW_ORIGINS(X)
#undef X
};
static const struct named policies[] = {
#define X(id, name) {name, ONVM_POLICY_##id},
    ONVM_POLICIES(X)
#undef X
};
static_assert(sizeof actions / sizeof *actions == ONVM_ACT_COUNT, "one name per action");
static_assert(sizeof drop_reasons / sizeof *drop_reasons == ONVM_DROP_COUNT, "one name per drop reason");
static_assert(sizeof port_kinds / sizeof *port_kinds == ONVM_PORT_KIND_END - 1, "one name per port kind");
static_assert(sizeof policies / sizeof *policies == ONVM_POLICY_COUNT, "one name per policy");
static_assert(sizeof flow_origins / sizeof *flow_origins == ONVM_FLOW_ORIGIN_COUNT, "one name per origin");

/* limits, layout and build facts, as module ints */
static const struct named limits[] = {
    {"LAYOUT_VERSION", ONVM_LAYOUT_VERSION},
    {"MAX_NFS", ONVM_MAX_NFS},
    {"MAX_SERVICES", ONVM_MAX_SERVICES},
    {"MAX_INSTANCES", ONVM_MAX_INSTANCES},
    {"INSTANCE_MAX", ONVM_INSTANCE_MAX},
    {"MAX_PORTS", ONVM_MAX_PORTS},
    {"MAX_WORKERS", ONVM_MAX_WORKERS},
    {"MAX_CHAINS", ONVM_MAX_CHAINS},
    {"RULES_DEFAULT", ONVM_RULES_DEFAULT},
    {"RULES_LIMIT", ONVM_RULES_LIMIT},
    {"TUPLES_MAX", ONVM_TUPLES_MAX},
    {"IDLE_DEFAULT", ONVM_IDLE_DEFAULT},
    {"TIMEOUT_MAX_MS", ONVM_TIMEOUT_MAX_MS},
    {"DEFAULT_IDLE_MS", ONVM_DEFAULT_IDLE_MS},
    {"MAX_HOPS", ONVM_MAX_HOPS},
    {"MAX_CAPTURES", ONVM_MAX_CAPTURES},
    {"BURST_MAX", ONVM_BURST_MAX},
    {"HEADROOM", ONVM_HEADROOM},
    {"OWNER_FREE", ONVM_OWNER_FREE},
    {"OWNER_PORT_BASE", ONVM_OWNER_PORT_BASE},
    {"ACT_HOLD", ONVM_ACT_HOLD},
    {"DROP_COUNT", ONVM_DROP_COUNT},
    {"LAT_BUCKETS", ONVM_LAT_BUCKETS},
#ifdef ONVM_HAVE_AFXDP /* a build fact: the afxdp port is compiled in */
    {"HAVE_AFXDP", 1},
#else
    {"HAVE_AFXDP", 0},
#endif
};

int onvm_constants_register(PyObject *m) {
    for (size_t i = 0; i < sizeof limits / sizeof *limits; i++)
        if (PyModule_AddIntConstant(m, limits[i].name, limits[i].value) < 0)
            return -1;
    if (add_table(m, "ACTIONS", actions, sizeof actions / sizeof *actions) < 0 ||
        add_table(m, "DROP_REASONS", drop_reasons, sizeof drop_reasons / sizeof *drop_reasons) < 0 ||
        add_table(m, "PORT_KINDS", port_kinds, sizeof port_kinds / sizeof *port_kinds) < 0 ||
        add_table(m, "POLICIES", policies, sizeof policies / sizeof *policies) < 0 ||
        add_table(m, "FLOW_ORIGINS", flow_origins, sizeof flow_origins / sizeof *flow_origins) < 0)
        return -1;
    return 0;
}
