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
#include <stdarg.h>
#include <stdio.h>

#include "onvm_pace.h"
#include "onvm_region.h"

/* Port kinds, listed once (see ONVM_ACTIONS in onvm_layout.h); the names are the
 * URI schemes.  Kind 0 marks an unused port. */
#define ONVM_PORT_KINDS(X)                                                                         \
    X(NULL, "null")                                                                                \
    X(GEN, "gen")                                                                                  \
    X(PCAP_IN, "pcap")                                                                             \
    X(PCAP_OUT, "pcap-out")                                                                        \
    X(AFPACKET, "afpacket")                                                                        \
    X(TAP, "tap")                                                                                  \
    X(AFXDP, "afxdp")                                                                              \
    X(DPDK, "dpdk") /* dpdk.c, in the optional module onvm._dpdk */

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
    uint32_t slot_size; /* the pool's: a frame that does not fit is refused at open */
};

struct onvm_pcap_conf {
    const char *path;
    uint64_t loops;    /* 0: forever */
    uint64_t rate_pps; /* 0: as fast as possible */
    uint32_t snaplen;  /* pcap-out only */
    int timing;        /* pcap in: 1 = replay at the capture's own pace */
    double speed;      /* with timing: 2.0 replays twice as fast */
    int loss;          /* pcap in: 1 = drop like a wire when the chain is full, never wait */
};

/* Counters a device keeps itself (DPDK's rte_eth_stats), as last read by the
 * one worker that reads them. */
struct onvm_port_devstats {
    uint64_t ipackets, opackets, ibytes, obytes;
    uint64_t imissed;   /* the device's RX ring was full */
    uint64_t ierrors, oerrors;
    uint64_t rx_nombuf; /* RX refills that found the pool empty */
};

struct onvm_port;
typedef uint32_t (*onvm_port_rx_fn)(struct onvm_port *p, struct onvm_region *r, uint32_t *slots,
                                   uint32_t n, uint64_t now, uint64_t *next_due);
/* Takes every slot (frees them, or lends them to the device until it has sent
 * them); returns how many went out.  st: the port's stats row of the caller. */
typedef uint32_t (*onvm_port_tx_fn)(struct onvm_port *p, struct onvm_region *r,
                                   const uint32_t *slots, uint32_t n, uint64_t *bytes,
                                   struct onvm_port_stats *st);

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
    int tx_mt;          /* tx is safe on several workers at once (queues of its own): no tx_lock */
    pthread_mutex_t tx_lock;
    _Atomic int rx_done;
    char error[256]; /* why the port stopped early, "" if it did not */
    uint64_t no_slot; /* packets a generator could not make: the pool was empty */
    struct onvm_pacer pace;  /* the RX worker's own */
    uint64_t missed_counted; /* how much of pace.missed the RX worker has put in the port's stats */
    int pacable;             /* a gen port, or a pcap input without timing: its rate may change */
    _Atomic uint64_t rate_want; /* the rate asked for (0: unpaced); the RX worker moves pace to it */
    /* gen */
    struct onvm_gen_conf gen;
    uint8_t *templates; /* flows * 64 bytes of headers */
    uint32_t hdr_len;
    uint32_t *tmpl_csum; /* per-flow IPv4 checksum partial sum */
    uint64_t produced, rng, flow_next;
    /* pcap in: read with pread into the driver's buffer (a file that shrinks or changes
     * while it is read gives an error, never a SIGBUS) */
    uint64_t file_len; /* the file's size when this pass through it began */
    uint64_t pos;
    int swapped, nsec;
    uint64_t loops_left, records_in_file;
    uint64_t skipped; /* frames that did not fit a slot (afpacket, tap, pcap: oversize) */
    /* An input that is a file, not a wire (pcap without rate or loss): the RX
     * worker leaves it unread while any chain it feeds is congested and never
     * drops its packets early, so every packet reaches the chain. */
    int keep_all;
    _Atomic uint32_t tap; /* captures watching it: RX bits, TX bits (onvm_capture.h) */
    /* pcap out */
    uint32_t snaplen;
    uint64_t lost; /* packets counted as sent whose bytes never reached the file */
    /* queues and kernel-backed drivers (afpacket.c, tap.c) */
    unsigned nrxq;          /* > 1: RX worker i polls queue i */
    onvm_port_rxq_fn rxq;   /* used instead of rx when set */
    int rx_fd[ONVM_PORT_MAX_QUEUES]; /* what an idle worker polls, valid when rxq is set */
    void (*close)(struct onvm_port *p); /* driver cleanup */
    void (*flush)(struct onvm_port *p); /* output drivers: push what is buffered (errors in error) */
    void *drv;              /* driver state */
    int has_devstats;       /* devstats is kept */
    struct onvm_port_devstats devstats;
    char path[256];         /* file or interface, for messages */
    char mode[16];          /* how the driver runs, for status (afxdp: zc, copy or skb) */
    char notice[224];       /* something the manager logs once the port is open */
    /* pcap in: format and timing */
    int pcapng;
    uint32_t file_snaplen;
    uint32_t linktype;      /* classic pcap's; pcapng keeps one per interface */
    uint64_t runt;          /* records skipped: empty, or shorter than their link header */
    uint64_t no_ethertype;  /* records skipped: cooked or raw-IP, with nothing to make an EtherType of */
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
enum onvm_afxdp_mode { ONVM_AFXDP_AUTO = 0, ONVM_AFXDP_ZC = 1, ONVM_AFXDP_COPY = 2, ONVM_AFXDP_SKB = 3 };
struct onvm_afxdp_conf {
    const char *ifname;
    unsigned queues; /* one socket per RX queue 0..queues-1; RX worker i serves queue i */
    unsigned mode;   /* enum onvm_afxdp_mode */
    unsigned ring;   /* RX and TX ring entries, a power of two */
    unsigned fill;   /* slots kept in each fill ring; 0: a quarter of the pool over the queues */
    int promisc;
};
/* Built only where libxdp and libbpf are (ONVM_HAVE_AFXDP; see afxdp.c). */
struct onvm_port *onvm_port_open_afxdp(int id, struct onvm_region *r, const struct onvm_afxdp_conf *c,
                                       char *err, size_t errlen);
void onvm_port_close(struct onvm_port *p);
/* The RX worker left an input unread this round (backpressure): a paced port
 * counts what its queue could not keep (missed) and a gen port with a count
 * ends once all of it was made or missed. */
void onvm_port_held(struct onvm_port *p, uint64_t now);
/* From now on, a paced port sends rate packets a second (0: unpaced); -1 if
 * the port cannot be paced.  Any thread: the port's RX worker applies it at
 * its next look at the port (onvm_port_pace); the caller kicks the workers. */
int onvm_port_set_rate(struct onvm_port *p, uint64_t rate);

/* The pacer as the port's RX worker asks it (onvm_pace), once it has moved to
 * the rate last asked for. */
static inline uint32_t onvm_port_pace(struct onvm_port *p, uint32_t n, uint64_t now, uint64_t *next_due) {
    uint64_t want = atomic_load_explicit(&p->rate_want, memory_order_relaxed);
    if (want != p->pace.rate_pps)
        onvm_pace_rate(&p->pace, want, now);
    return onvm_pace(&p->pace, n, now, next_due);
}

/* ---- slots lent to a device ------------------------------------------------
 *
 * A driver that hands pool slots to its device (AF_XDP fill and TX rings, DPDK
 * RX and TX queues) stamps them ONVM_OWNER_PORT(id) and counts them in the
 * stats row of the worker that lends them (st->lent, see onvm_layout.h); the
 * worker that takes them back restamps them and counts them down in its own
 * row.  So, at every moment, pool free + sum of lent + in use = total, and
 * after the device has let go of everything, onvm_port_reclaim() returns the
 * slots still stamped as lent to the port (it never got them back) to the pool.
 * The rows are written only by their worker; setup and teardown run while the
 * workers are stopped. */

/* Allocates up to n slots stamped as lent to port p; returns how many. */
static inline uint32_t onvm_port_lend_alloc(struct onvm_region *r, struct onvm_port_stats *st,
                                            unsigned port, uint32_t *out, uint32_t n) {
    uint32_t got = onvm_pool_alloc_burst(r, out, n, ONVM_OWNER_PORT(port));
    st->lent += got;
    return got;
}

/* Lends slots the caller owns (a TX ring takes them until they are sent). */
static inline void onvm_port_lend(struct onvm_region *r, struct onvm_port_stats *st, unsigned port,
                                  const uint32_t *slots, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&r->meta[slots[i]].owner, ONVM_OWNER_PORT(port), ONVM_RELAXED);
    st->lent += n;
}

/* The device gave these back: they are the manager's again (to route or to free). */
static inline void onvm_port_took_back(struct onvm_region *r, struct onvm_port_stats *st,
                                       const uint32_t *slots, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&r->meta[slots[i]].owner, ONVM_OWNER_MGR, ONVM_RELAXED);
    st->lent -= n;
}

/* A driver's error message, formatted into err when there is one. */
static inline void onvm_set_err(char *err, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static inline void onvm_set_err(char *err, size_t len, const char *fmt, ...) {
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
}

/* Shared by the drivers (ports.c). */
struct onvm_port *onvm_port_new(int id, int kind);
/* Completes the TCP/UDP checksum of a frame whose checksum the sending host
 * left to offload (CHECKSUM_PARTIAL on veth and loopback); 0 if it did. */
int onvm_fix_l4_csum(uint8_t *frame, uint32_t len);

#endif
