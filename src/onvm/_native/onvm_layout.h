/* onvm_layout.h - the shared region: every struct two processes must agree on.
 *
 * Theory of operation
 * -------------------
 * One manager creates one file (hugetlbfs or /dev/shm) and maps it; NFs map the
 * same file.  Everything is addressed by offsets from the start of the region,
 * never by pointers, because each process maps it at a different address.
 *
 *   header | free stack | NF table | services | chains | ports | workers | rings | meta[] | slots[]
 *   | flow table | captures and trace (onvm_capture.h) | rule classifier (onvm_flow.h)
 *
 * A packet is named by its slot index.  meta[i] is its 64-byte record and
 * slots[i] its buffer (headroom + data).  Only indices travel through rings.
 *
 * Ownership stamps: meta[i].owner names who is responsible for slot i: an NF
 * id or the manager (0) while one holds it, ONVM_OWNER_FREE in the free stack,
 * ONVM_OWNER_PORT(p) while a port's device has it, and ONVM_OWNER_TRANSIT(p, c)
 * from the moment producer p puts it into a ring that consumer c reads until c
 * takes it out.  A producer stamps what it enqueues before it publishes it; a
 * consumer takes an entry only if the slot it names is in the pool and stamped
 * in transit to it, and stamps it with its own id; whoever frees a slot stamps
 * it free, and only slots stamped free are handed out.  So a ring can hand a consumer only
 * what some producer gave it, once, whatever anyone wrote into the ring: a
 * wrong index, a slot twice, a slot the writer does not hold.  When an NF
 * leaves, the slots stamped with its id, or in transit to it, or in transit from
 * it but in no live ring, are exactly the ones that would be lost: the manager
 * returns them to the free stack (see onvm_region_reclaim()).
 *
 * Counters are written only by their owner: an NF writes its own entry's
 * stats, each manager worker writes its own row of the port stats.
 *
 * Any change to a struct below must bump ONVM_LAYOUT_VERSION.
 */
#ifndef ONVM_LAYOUT_H
#define ONVM_LAYOUT_H

#include <assert.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define ONVM_MAGIC 0x314d564e4f595000ULL /* "\0PYONVM1" little endian */
#define ONVM_LAYOUT_VERSION 15u /* 15: a worker's packet count */
#define ONVM_CACHE_LINE 64

#define ONVM_MAX_NFS 64 /* NF ids 1..63; 0 names the manager */
#define ONVM_MAX_SERVICES 64
#define ONVM_MAX_INSTANCES 16
#define ONVM_INSTANCE_MAX 0xffffu /* instance numbers: 16 bits in a service's table */
#define ONVM_MAX_PORTS 16
#define ONVM_MAX_WORKERS 8
#define ONVM_MAX_CHAINS 64 /* chain 0 is the default chain */
#define ONVM_MAX_HOPS 16
#define ONVM_BURST_MAX 512
#define ONVM_HEADROOM 128

#define ONVM_OWNER_MGR 0u
#define ONVM_OWNER_FREE 0xffffu
/* Slots lent to port p's device (an AF_XDP fill or TX ring, a DPDK queue) are
 * stamped ONVM_OWNER_PORT(p) until the device gives them back (onvm_port.h). */
#define ONVM_OWNER_PORT_BASE 0xff00u
#define ONVM_OWNER_PORT(p) ((uint16_t)(ONVM_OWNER_PORT_BASE + (p)))
/* A slot producer p has put (or is putting) into a ring that consumer c reads; c
 * checks the flag and its own id (the bits ONVM_TRANSIT_TO keeps) before taking it. */
#define ONVM_OWNER_TRANSIT(p, c) ((uint16_t)(0x8000u | (unsigned)(p) << 6 | (unsigned)(c)))
#define ONVM_TRANSIT_TO 0xf03fu
#define ONVM_TRANSIT_FROM(o) (((unsigned)(o) >> 6) & 63u)
#define ONVM_IS_TRANSIT(o) (((o) & 0xf000u) == 0x8000u)
#define ONVM_SLOT_NIL 0xffffffffu

/* Actions and drop reasons (and port kinds in onvm_port.h, policies in
 * onvm_region.h) are listed once, as X-macros: X(ID, "name").  The enum and the
 * table the module exports to Python (constants.c, onvm.constants) are both made
 * from the list, so C and Python cannot disagree.  Add an entry here, nowhere else;
 * the order gives the values. */
#define ONVM_ACTIONS(X)                                                                            \
    X(DROP, "drop")                                                                                \
    X(NEXT, "next") /* the next hop of the packet's chain */                                       \
    X(TONF, "tonf") /* to a service (dest = service id) */                                         \
    X(OUT, "out")   /* out of a port (dest = port id) */

enum onvm_action {
#define ONVM_X_ENUM(id, name) ONVM_ACT_##id,
    ONVM_ACTIONS(ONVM_X_ENUM)
#undef ONVM_X_ENUM
    ONVM_ACT_COUNT
};

/* A handler's "keep this packet": never routed; the packet stays with its NF (ONVM_MF_HELD). */
#define ONVM_ACT_HOLD 0xfeu

#define ONVM_DROP_REASONS(X)                                                                       \
    X(ACTION, "action")         /* a handler or chain hop said DROP */                             \
    X(RING_FULL, "ring_full")   /* the next NF's RX ring (or a TX ring) was full */                \
    X(NO_DEST, "no_dest")       /* service without a running instance, or no such port */         \
    X(BAD_ACTION, "bad_action") /* action or destination out of range */                           \
    X(CHAIN_END, "chain_end")   /* NEXT past the last hop of the chain */                          \
    X(NO_SLOT, "no_slot")       /* the pool was empty */                                           \
    X(PORT, "port")             /* the port could not take it (error, too big) */                  \
    X(KERNEL, "kernel")         /* the kernel's ring for an AF_PACKET/TAP port was full */         \
    X(MISSED, "missed")         /* left in the port: a paced gen port, a full device RX ring */    \
    X(EARLY, "early")           /* dropped at RX, before any NF: its chain was congested (onvm_bp.h) */ \
    X(INVALID, "invalid")       /* failed validation: a ring entry naming no slot handed to the reader, \
                                 * a record outside its slot, a table left half written */

enum onvm_drop_reason {
#define ONVM_X_ENUM(id, name) ONVM_DROP_##id,
    ONVM_DROP_REASONS(ONVM_X_ENUM)
#undef ONVM_X_ENUM
    ONVM_DROP_COUNT
};

enum onvm_l3 { ONVM_L3_NONE = 0, ONVM_L3_IPV4 = 1, ONVM_L3_IPV6 = 2, ONVM_L3_ARP = 3 };

/* meta flags */
#define ONVM_MF_VLAN 0x01u
#define ONVM_MF_TRUNC 0x02u /* a header was cut short: parsing stopped there */
#define ONVM_MF_FRAG 0x04u
#define ONVM_MF_TRACED 0x08u /* onvm trace follows it (onvm_capture.h) */
#define ONVM_MF_RELEASING 0x40u /* held, released, routed at the end of the NF's burst */
#define ONVM_MF_HELD 0x80u      /* held by the NF whose id the owner stamp names */

/* Per-slot metadata: one cache line. */
struct onvm_meta {
    uint32_t len;       /* bytes of packet data */
    uint32_t flow_hash; /* symmetric 5-tuple hash, 0 when not IP */
    uint64_t rx_ns;     /* CLOCK_MONOTONIC at RX */
    uint16_t in_port;
    _Atomic uint16_t owner; /* ownership stamp, see the theory above */
    uint16_t dest;          /* service id (TONF) or port id (OUT) */
    uint16_t src_nf;        /* last NF that handled the packet */
    uint8_t action;         /* enum onvm_action */
    uint8_t chain_idx;      /* current hop in the chain */
    uint8_t flags;
    uint8_t l3_type; /* enum onvm_l3 */
    uint8_t l4_proto;
    uint8_t from_hop; /* the chain hop whose NF handed the packet on last (late-drop accounting) */
    uint16_t l3_off; /* offsets from the packet start; 0 when absent */
    uint16_t l4_off;
    uint16_t chain_id;
    _Atomic uint32_t next_free; /* free stack link */
    uint32_t data_off;          /* packet start within the slot */
    uint16_t vlan;              /* outer VLAN id when ONVM_MF_VLAN is set */
    uint16_t spare;
    _Atomic uint64_t run; /* free: where the indices of the slots its push linked with it are (onvm_pool_push) */
    uint8_t reserved[8];
};
static_assert(sizeof(struct onvm_meta) == 64, "meta must be one cache line");
static_assert(ONVM_OWNER_PORT_BASE >= ONVM_MAX_NFS && ONVM_OWNER_PORT(ONVM_MAX_PORTS) <= ONVM_OWNER_FREE,
              "port owner stamps collide with NF ids or the free stamp");
static_assert(ONVM_MAX_NFS <= 64 && ONVM_OWNER_TRANSIT(ONVM_MAX_NFS - 1, ONVM_MAX_NFS - 1) < ONVM_OWNER_PORT_BASE,
              "transit stamps hold two NF ids of 6 bits below the port stamps");

/* A futex word a consumer sleeps on; a producer wakes it only when it is flagged. */
struct onvm_waiter {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t sleeping;
    uint32_t pad0;
    uint64_t sleeps;
    uint64_t wakeups;
};

/* Lock-free ring of slot indices: power-of-two size, head/tail on separate lines.
 * The producer side packs {position, count of reservations} into 64 bits (see
 * onvm_ring.h).  size, mask, capacity, waiter_off and the watermarks are written
 * once, for dumps: a ring's users take its geometry from their own copy of the
 * header, never from a ring that its consumer or a producer may have scribbled on.
 * The first line is read rarely and written rarely: the watermark state
 * (onvm_bp.h) changes once per fill and drain, not per burst. */
struct onvm_ring {
    alignas(ONVM_CACHE_LINE) uint32_t size;
    uint32_t mask;
    uint32_t capacity;
    uint32_t waiter_off;         /* region offset of the consumer's waiter, 0 for none */
    uint32_t high, low;          /* watermarks: congested past high until drained to low */
    _Atomic uint32_t congested;  /* set by a producer past high, cleared by the consumer at low */
    uint32_t pad0;
    _Atomic uint64_t waiting;    /* producers asleep until it clears: bit = NF id, bit 0 = RX workers */
    struct {
        alignas(ONVM_CACHE_LINE) _Atomic uint64_t head;
        _Atomic uint64_t tail;
    } prod;
    struct {
        alignas(ONVM_CACHE_LINE) _Atomic uint32_t head;
        _Atomic uint32_t tail;
    } cons;
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t entries[];
};
static_assert(sizeof(struct onvm_ring) == 3 * ONVM_CACHE_LINE, "ring header is three lines");

/* Treiber stack of free slots; the head packs (tag << 32 | index) against ABA.
 * The tag's low bit is an epoch: pushes and allocations add 2 to the tag and count
 * what they did in count[epoch]; only the sweep flips it (fence.c), and closes the
 * old epoch's counter (ONVM_FREE_CLOSED: late counts for it land there unread).  The
 * free count is what the open counter says. */
struct onvm_freestack {
    alignas(ONVM_CACHE_LINE) _Atomic uint64_t head;
    _Atomic int64_t count[2];
};

/* The pool is cut into free_stacks spans of consecutive slots, each with a free stack
 * of its own, and a freed slot goes back to its span's stack: so an RX worker that
 * allocates from its own stack (onvm_pool_set_home) writes slots no other RX worker
 * writes, as a NIC queue with a mempool of its own does. */
#define ONVM_FREE_STACKS ONVM_MAX_WORKERS

/* Latency histogram: 4 sub-buckets per power of two of nanoseconds (values
 * 0-3 get a bucket each; see onvm_lat_bucket() in onvm_latency.h), the last
 * bucket also takes everything above 2^33 ns (8.6 s).  Written only by its owner. */
#define ONVM_LAT_BUCKETS 128

struct onvm_lat_hist {
    uint64_t count;
    uint64_t sum_ns;
    uint64_t max_ns;
    uint64_t pad;
    uint64_t buckets[ONVM_LAT_BUCKETS];
};

struct onvm_nf_stats {
    alignas(ONVM_CACHE_LINE) uint64_t rx;
    uint64_t tx; /* packets handed onward (to an NF, a port or the manager) */
    uint64_t rx_bytes;
    uint64_t bursts;
    uint64_t act[ONVM_ACT_COUNT];
    uint64_t drops[ONVM_DROP_COUNT];
    uint64_t handler_ns; /* time spent in the Python handler */
    uint64_t parse_errors;
    uint64_t busy_ns; /* time spent on bursts, from dequeue to delivery (packing's load) */
    uint64_t late;       /* packets this NF handled that were then dropped: the next ring full or gone */
    uint64_t blocked;    /* times it stopped taking packets because a ring it feeds was congested */
    uint64_t blocked_ns; /* time spent so */
    struct onvm_lat_hist lat; /* RX to the end of this NF's handler, per packet */
};

enum onvm_nf_slot_state {
    ONVM_NFS_FREE = 0,
    ONVM_NFS_ACTIVE = 1,  /* rings valid, may receive packets */
    ONVM_NFS_DRAINING = 2 /* dead or leaving: receives nothing, manager drains its TX */
};

struct onvm_nf {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t state; /* enum onvm_nf_slot_state */
    uint16_t service;
    uint16_t instance;
    int32_t pid;
    uint32_t rx_ring_off;
    uint32_t tx_ring_off;
    uint32_t tx_worker;     /* row (in the worker table) of the TX worker draining our TX ring */
    _Atomic uint32_t stop;  /* set by the manager: leave the run loop */
    _Atomic uint32_t epoch; /* bumped each loop iteration, for grace periods */
    char name[32];
    struct onvm_waiter wait; /* the NF sleeps here when its RX ring is empty */
    struct {
        alignas(ONVM_CACHE_LINE) _Atomic uint32_t ring_off; /* nonzero while enqueuing */
        _Atomic uint32_t start;
        _Atomic uint32_t n;
        _Atomic uint32_t reserved; /* 1 once [start, start+n) is this NF's */
    } enq;
    struct {
        alignas(ONVM_CACHE_LINE) _Atomic uint32_t want; /* 1 + CPU the manager asks for; 0: home */
        _Atomic uint32_t now;                           /* what the NF applied (onvm_sched.h) */
        _Atomic uint32_t tap; /* captures watching it (onvm_capture.h); on a line its loop reads anyway */
    } cpu;
    struct { /* backpressure (onvm_bp.h); written rarely, by several parties */
        alignas(ONVM_CACHE_LINE) _Atomic uint32_t blocked_on; /* NF id it waits for, 0: none */
        uint32_t pad;
        _Atomic uint64_t early; /* packets RX dropped before any NF because this NF was congested */
    } bp;
    struct onvm_nf_stats stats;
};

/* Instances of a service; written under a seqlock by the manager. */
struct onvm_service {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t seq; /* odd while being written */
    uint16_t count;
    uint16_t policy;
    uint16_t nf[ONVM_MAX_INSTANCES];   /* NF ids */
    uint16_t inst[ONVM_MAX_INSTANCES]; /* instance numbers, the rendezvous keys */
};

struct onvm_hop {
    uint8_t action;
    uint8_t pad;
    uint16_t dest;
};

/* Drops per chain hop, added to by RX workers (early) and NFs (late), a burst at a time. */
struct onvm_hop_drops {
    _Atomic uint64_t early; /* at RX, before any NF: this hop was congested or had no instance */
    _Atomic uint64_t late;  /* after this hop's NF handled them: the next ring was full or gone */
};

struct onvm_chain {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t seq;
    uint8_t count;
    uint8_t pad[3];
    struct onvm_hop hops[ONVM_MAX_HOPS];
    char name[24]; /* "" for an unused chain; chain 0 is "default" */
    alignas(ONVM_CACHE_LINE) struct onvm_hop_drops drops[ONVM_MAX_HOPS];
};
static_assert(sizeof(struct onvm_chain) == 6 * ONVM_CACHE_LINE, "a chain: two lines of hops, four of counters");

struct onvm_port_stats {
    alignas(ONVM_CACHE_LINE) uint64_t rx;
    uint64_t rx_bytes;
    uint64_t tx;
    uint64_t tx_bytes;
    uint64_t drops[ONVM_DROP_COUNT];
    /* Slots this worker lent to the port's device minus those it took back.  A
     * row may go negative (one worker lends, another takes back); the sum over
     * the rows is what the device holds: pool free + lent + in use = total. */
    int64_t lent;
    struct onvm_lat_hist lat; /* end to end: RX to handing the packet to this port */
};

struct onvm_port_info {
    alignas(ONVM_CACHE_LINE) uint32_t in_use;
    uint32_t kind;
    uint32_t rx_done; /* an input that has nothing more to give */
    uint32_t pad;
    char uri[112];
    struct onvm_port_stats by_worker[ONVM_MAX_WORKERS];
};

struct onvm_worker {
    alignas(ONVM_CACHE_LINE) _Atomic uint32_t epoch;
    uint32_t role; /* 0 rx, 1 tx */
    uint64_t loops;
    uint64_t busy_loops;
    _Atomic uint32_t cpu_want; /* 1 + CPU the manager asks for; 0: home (onvm_sched.h) */
    _Atomic uint32_t cpu_now;  /* what the worker applied */
    uint64_t busy_ns;          /* time spent in loops that found work (packing's load) */
    uint64_t held;             /* RX: times it left a port unread because its chain was congested */
    uint64_t packets;          /* TX: taken from the NFs' TX rings (RX: the ports' by_worker rx) */
    struct onvm_waiter wait;
};

struct onvm_header {
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;
    uint64_t total_size;
    int32_t mgr_pid;
    _Atomic uint32_t stopping;
    uint32_t pool_count;
    uint32_t slot_size;
    uint32_t ring_size;
    uint32_t sizeof_meta;
    uint32_t sizeof_nf;
    uint32_t sizeof_ring;
    uint32_t max_nfs, max_services, max_ports, max_workers, max_chains, max_hops;
    uint64_t off_nfs, off_services, off_chains, off_ports, off_workers, off_rings;
    uint64_t off_meta, off_slots;
    uint64_t ring_bytes; /* bytes per ring, header included */
    char name[40];
    uint32_t free_stacks; /* stacks in use, 1..ONVM_FREE_STACKS: the pool in as many spans */
    struct onvm_freestack free[ONVM_FREE_STACKS];
    /* flow table and rule classifier (onvm_flow.h) */
    alignas(ONVM_CACHE_LINE) uint64_t off_flows;
    uint64_t off_cls;
    uint32_t flow_count; /* entries, a power of two */
    uint32_t max_rules;
    _Atomic int64_t flows_used;
    _Atomic uint64_t flows_installed;
    _Atomic uint64_t flows_expired;
    _Atomic uint64_t flows_full;    /* results not cached: no free entry within the probe limit */
    _Atomic uint64_t flows_evicted; /* cached results an explicit entry replaced */
    _Atomic uint64_t flows_changed; /* cached results the rules changed, rewritten or removed */
    /* The manager waits for the packet path here (retire.c): it sets waiting and
     * sleeps on it; the next loop iteration of any NF or worker clears it and
     * wakes the manager to look again (onvm_grace_pass).  Its own line: every
     * loop iteration reads it, and it is written only while the manager waits. */
    struct {
        alignas(ONVM_CACHE_LINE) _Atomic uint32_t waiting;
    } grace;
    /* Captures (onvm_capture.h): the table, then each one's records. */
    alignas(ONVM_CACHE_LINE) uint64_t off_captures;
    uint32_t cap_records;  /* records per capture, a power of two */
    uint32_t cap_rec_size; /* bytes per record, header included */
    uint64_t off_trace;    /* the trace (onvm_capture.h) */
};
static_assert(offsetof(struct onvm_header, grace) % ONVM_CACHE_LINE == 0, "grace word on its own line");

#endif
