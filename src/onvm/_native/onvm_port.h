/* onvm_port.h - port drivers behind one interface (gen, null, pcap, pcap-out,
 * afpacket, tap).
 *
 * An input port has one RX queue (rx(), or rxq() with q = 0), served by RX
 * worker id % nrx, or several (nrxq > 1, rxq()): then RX worker i polls queue
 * i of the port, so each worker reads its own kernel socket (AF_PACKET fanout).
 * A port with rxq() also gives a file descriptor per queue that an idle RX
 * worker sleeps on, so packets from the kernel wake it at once. */
#ifndef ONVM_PORT_H
#define ONVM_PORT_H

#include <pthread.h>
#include <stdio.h>

#include "onvm_region.h"

/* Port kinds, listed once (see ONVM_ACTIONS in onvm_layout.h); the names are the
 * URI schemes.  Kind 0 marks an unused port. */
#define ONVM_PORT_KINDS(X)                                                                         \
    X(NULL, "null")                                                                                \
    X(GEN, "gen")                                                                                  \
    X(PCAP_IN, "pcap")                                                                             \
    X(PCAP_OUT, "pcap-out")                                                                        \
    X(AFPACKET, "afpacket")                                                                        \
    X(TAP, "tap")

enum onvm_port_kind {
    ONVM_PORT_UNUSED = 0,
#define ONVM_X_ENUM(id, name) ONVM_PORT_##id,
    ONVM_PORT_KINDS(ONVM_X_ENUM)
#undef ONVM_X_ENUM
    ONVM_PORT_KIND_END
};

#define ONVM_PORT_MAX_QUEUES ONVM_MAX_WORKERS

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
    int timing;        /* pcap in: 1 = replay at the capture's own pace */
    double speed;      /* with timing: 2.0 replays twice as fast */
};

struct onvm_port;
typedef uint32_t (*onvm_port_rx_fn)(struct onvm_port *p, struct onvm_region *r, uint32_t *slots,
                                   uint32_t n, uint64_t now, uint64_t *next_due);
/* Takes every slot (frees them all); returns how many went out. */
typedef uint32_t (*onvm_port_tx_fn)(struct onvm_port *p, struct onvm_region *r,
                                   const uint32_t *slots, uint32_t n, uint64_t *bytes);

/* Reads up to n packets of queue q; drops it sees (kernel ring full, too big)
 * go to st, the port's stats row of the calling worker. */
typedef uint32_t (*onvm_port_rxq_fn)(struct onvm_port *p, unsigned q, struct onvm_region *r,
                                    uint32_t *slots, uint32_t n, uint64_t now, uint64_t *next_due,
                                    struct onvm_port_stats *st);

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
    uint64_t skipped; /* frames that did not fit a slot (afpacket, tap) */
    /* pcap out */
    FILE *out;
    uint32_t snaplen;
    /* queues and kernel-backed drivers (afpacket.c, tap.c) */
    unsigned nrxq;          /* > 1: RX worker i polls queue i */
    onvm_port_rxq_fn rxq;   /* used instead of rx when set */
    int rx_fd[ONVM_PORT_MAX_QUEUES]; /* what an idle worker polls, valid when rxq is set */
    void (*close)(struct onvm_port *p); /* driver cleanup */
    void *drv;              /* driver state */
    char path[256];         /* file or interface, for messages */
    /* pcap in: format and timing */
    int pcapng;
    uint32_t file_snaplen;
    int timing;
    double speed;
    uint64_t first_ts_ns, base_ns; /* capture time of the first packet, when it was sent */
    uint64_t loop_offset_ns;
    uint64_t last_ts_ns;
};

/* Returns NULL and fills err on failure. */
struct onvm_port *onvm_port_open_gen(int id, const struct onvm_gen_conf *c, char *err, size_t errlen);
struct onvm_port *onvm_port_open_null(int id);
struct onvm_port *onvm_port_open_pcap_in(int id, const struct onvm_pcap_conf *c, char *err,
                                         size_t errlen);
struct onvm_port *onvm_port_open_pcap_out(int id, const struct onvm_pcap_conf *c, char *err,
                                          size_t errlen);
struct onvm_afpacket_conf {
    const char *ifname;
    unsigned queues;     /* RX sockets in one fanout group, one per RX worker */
    int promisc;         /* default on */
    int qdisc_bypass;    /* default on */
    unsigned block_size; /* ring block bytes (power of two, >= page) */
    unsigned blocks;     /* ring blocks per queue */
};
struct onvm_port *onvm_port_open_afpacket(int id, const struct onvm_afpacket_conf *c, char *err,
                                          size_t errlen);
struct onvm_port *onvm_port_open_tap(int id, const char *name, char *err, size_t errlen);
void onvm_port_close(struct onvm_port *p);

/* Shared by the drivers (ports.c). */
struct onvm_port *onvm_port_new(int id, int kind);
/* Completes the TCP/UDP checksum of a frame whose checksum the sending host
 * left to offload (CHECKSUM_PARTIAL on veth and loopback); 0 if it did. */
int onvm_fix_l4_csum(uint8_t *frame, uint32_t len);

#endif
