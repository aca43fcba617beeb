/* onvm_dpdk.h - the dpdk: port driver (dpdk.c) as its binding (dpdkmod.c) sees it.
 * Both are built into onvm._dpdk only, the one module that links DPDK. */
#ifndef ONVM_DPDK_H
#define ONVM_DPDK_H

#include "onvm_capi.h"

/* Set once by the binding, before anything below is called. */
extern const struct onvm_capi *onvm_dpdk_api;

/* Initialises DPDK's EAL with argv (argv[0] is a program name).  Once per
 * process: later calls return -EALREADY.  On failure, err says why, quoting
 * what DPDK logged.  Returns 0 or -errno. */
int onvm_dpdk_eal_init(int argc, char **argv, char *err, size_t errlen);
int onvm_dpdk_eal_ready(void);

/* DPDK's log: the lines logged since the last call, at most max, oldest first
 * (warnings and errors only when serious_only).  Returns how many. */
int onvm_dpdk_log_take(char (*lines)[256], int max, int serious_only);

/* The mbuf pool over a region's slots (see dpdk.c).  NULL and err on failure. */
struct onvm_dpdk_pool;
struct onvm_dpdk_pool *onvm_dpdk_pool_create(struct onvm_region *r, char *err, size_t errlen);
void onvm_dpdk_pool_put(struct onvm_dpdk_pool *pool); /* drops a reference */
struct onvm_region *onvm_dpdk_pool_region(const struct onvm_dpdk_pool *pool);

struct onvm_dpdk_conf {
    const char *devargs;
    unsigned rx_workers, workers; /* the manager's RX workers, and all of its workers */
    int rxq, txq;                 /* queues; -1: one per RX worker / per worker, as the device allows */
    unsigned rxd, txd;            /* descriptors per queue, 0: the device's default */
    int promisc;
};

/* Probes (or finds) the device, sets up its queues over the pool and starts it. */
struct onvm_port *onvm_dpdk_port_open(struct onvm_dpdk_pool *pool, int id, const struct onvm_dpdk_conf *c,
                                      char *err, size_t errlen);

/* What a port is after opening: its DPDK port id and name, queues, driver. */
struct onvm_dpdk_port_facts {
    unsigned port_id, nrxq, ntxq;
    char name[64], driver[64];
};
int onvm_dpdk_port_facts(const struct onvm_port *p, struct onvm_dpdk_port_facts *out);

#endif
