/* onvm_port.h - port drivers behind one interface (gen, null, pcap, pcap-out). */
#ifndef ONVM_PORT_H
#define ONVM_PORT_H

#include <pthread.h>
#include <stdio.h>

#include "onvm_region.h"

enum onvm_port_kind {
    ONVM_PORT_NULL = 1,
    ONVM_PORT_GEN = 2,
    ONVM_PORT_PCAP_IN = 3,
    ONVM_PORT_PCAP_OUT = 4,
};

enum onvm_gen_mix { ONVM_MIX_FIXED = 0, ONVM_MIX_HTTP = 1, ONVM_MIX_IMIX = 2 };

struct onvm_gen_conf {
    uint32_t size; /* frame size with FCS, as traffic generators count it */
    uint32_t mix;
    uint32_t flows;
    uint32_t proto; /* 17 udp, 6 tcp */
    uint64_t rate_pps; /* 0: as fast as the pool allows */
    uint64_t count;    /* 0: no end */
    uint32_t src_ip, dst_ip;
    uint16_t sport, dport;
    uint64_t seed;
};

struct onvm_pcap_conf {
    const char *path;
    uint64_t loops;    /* 0: forever */
    uint64_t rate_pps; /* 0: as fast as possible */
    uint32_t snaplen;  /* pcap-out only */
};

struct onvm_port;
typedef uint32_t (*onvm_port_rx_fn)(struct onvm_port *p, struct onvm_region *r, uint32_t *slots,
                                   uint32_t n, uint64_t now, uint64_t *next_due);
/* Takes every slot (frees them all); returns how many went out. */
typedef uint32_t (*onvm_port_tx_fn)(struct onvm_port *p, struct onvm_region *r,
                                   const uint32_t *slots, uint32_t n, uint64_t *bytes);

struct onvm_port {
    int id;
    int kind;
    onvm_port_rx_fn rx; /* NULL: not an input */
    onvm_port_tx_fn tx; /* NULL: not an output */
    pthread_mutex_t tx_lock;
    _Atomic int rx_done;
    char error[256]; /* why the port stopped early, "" if it did not */
    uint64_t no_slot; /* packets a generator could not make: the pool was empty */
    /* pacing */
    uint64_t rate_pps, next_ns, budget_start, sent_in_budget;
    /* gen */
    struct onvm_gen_conf gen;
    uint8_t *templates; /* flows * 64 bytes of headers */
    uint32_t hdr_len;
    uint32_t *tmpl_csum; /* per-flow IPv4 checksum partial sum */
    uint64_t produced, rng, flow_next;
    /* pcap in */
    const uint8_t *map;
    size_t map_len;
    size_t pos;
    int swapped, nsec;
    uint64_t loops_left, records_in_file;
    uint64_t skipped; /* records longer than a slot, or empty */
    /* pcap out */
    FILE *out;
    uint32_t snaplen;
};

/* Returns NULL and fills err on failure. */
struct onvm_port *onvm_port_open_gen(int id, const struct onvm_gen_conf *c, char *err, size_t errlen);
struct onvm_port *onvm_port_open_null(int id);
struct onvm_port *onvm_port_open_pcap_in(int id, const struct onvm_pcap_conf *c, char *err,
                                         size_t errlen);
struct onvm_port *onvm_port_open_pcap_out(int id, const struct onvm_pcap_conf *c, char *err,
                                          size_t errlen);
void onvm_port_close(struct onvm_port *p);

#endif
