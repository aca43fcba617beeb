/* dpdk.c - the dpdk:DEVARGS port: any device DPDK drives, a NIC or a virtual
 * device (net_null, net_pcap, net_af_packet, net_tap, net_ring, net_memif).
 *
 * Built only into onvm._dpdk, the one module that links DPDK.  Only a manager
 * that opens a dpdk: port loads it; NFs never do.
 *
 * Theory of operation
 * -------------------
 * EAL.  Initialised once per process, from the manager's main thread.  The EAL
 * pins its caller to the main lcore, and the manager's workers, created later,
 * would inherit that, so the caller's CPU affinity is restored afterwards.
 * DPDK logs into a stream of ours: a ring of recent lines that error messages
 * quote and that the manager reads (what it warns of while ports run goes to
 * the manager's log).
 *
 * Packet memory, zero copy.  One mempool per region, built by hand like
 * rte_pktmbuf_pool_create_extbuf() but with our own mempool ops.  Its objects
 * are mbuf headers, one per pool slot, in DPDK's memory (the manager's; an NF
 * can write its slots but never an mbuf).  Each header's buffer is its slot
 * (buf_addr = the slot, data_off = meta.data_off), pinned: RTE_MBUF_F_EXTERNAL
 * in a pool flagged RTE_PKTMBUF_POOL_F_PINNED_EXT_BUF, so DPDK never detaches
 * it.  The mempool's ops are the region's free stack itself:
 *   - a device refilling its RX queue dequeues: slots leave the free stack lent
 *     to the port (stamped ONVM_OWNER_PORT, counted in st->lent; onvm_port.h);
 *   - rx_burst() hands them to us: we take them back (stamped as the
 *     manager's), fill their metadata and route them: the device wrote the
 *     packet into the slot that NFs read in place;
 *   - TX lends slots to the device (their mbuf header is rewritten from the
 *     slot's metadata, checked first: NFs write that) and the device enqueues
 *     them when it is done with them: they are taken back, and freed in one
 *     push when our call into the device returns.
 * So there is one free list, no copy, and pool free + lent + in use = total.
 * The region is registered with DPDK as external memory, and mapped for the
 * DMA of a PCI device at the slots' virtual addresses (IOVA as VA).
 * Which port and which worker's stats row a mempool call is for is in
 * thread-local state that rx/tx set before calling into DPDK: the calls
 * happen inside rx_burst()/tx_burst(), on the caller's thread.  Setup and
 * teardown run on the main thread while the workers are stopped.
 *
 * Queues.  RX queue q is polled by RX worker q (onvm_port.h); with several,
 * RSS with a symmetric key spreads flows so that both directions of a flow
 * reach one queue.  Worker w sends on TX queue w % ntxq; a queue that several
 * workers share is taken under a spinlock.
 *
 * Device counters (rte_eth_stats) are read by one worker only, ten times a
 * second (ethdev calls for one port must not run concurrently): the worker
 * that polls RX queue 0, or for an output-only port the one sending on TX
 * queue 0.  The deltas become drop reasons of the port: imissed -> missed (the
 * device's RX ring was full), ierrors and oerrors -> port, rx_nombuf -> no_slot.
 *
 * Idle.  Most DPDK devices give no descriptor to sleep on, so an empty RX queue
 * asks to be polled again after a nap that grows with the time it has been
 * empty, from 20 us to 1 ms (the worker's timed sleep, next_due).
 */
#define _GNU_SOURCE
#include "onvm_dpdk.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_devargs.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_prefetch.h>
#include <rte_spinlock.h>

#define OPS_NAME "onvm_slots"
#define STATS_EVERY_NS 100000000ull
#define NAP_MIN_NS 20000ull
#define NAP_MAX_NS 1000000ull

static_assert(RTE_PKTMBUF_HEADROOM == ONVM_HEADROOM, "DPDK's headroom is the slot's headroom");
static_assert(ONVM_BURST_MAX <= UINT16_MAX, "bursts are counted in uint16_t by ethdev");

const struct onvm_capi *onvm_dpdk_api;

/* The region's pool calls, which the inline helpers of onvm_port.h use, reach
 * the core module through its C API. */
uint32_t onvm_pool_alloc_burst(struct onvm_region *r, uint32_t *out, uint32_t n, uint16_t owner) {
    return onvm_dpdk_api->pool_alloc_burst(r, out, n, owner);
}

void onvm_pool_free_burst(struct onvm_region *r, const uint32_t *idx, uint32_t n) {
    onvm_dpdk_api->pool_free_burst(r, idx, n);
}

/* ---- DPDK's log ------------------------------------------------------------ */

#define LOG_LINES 64

static struct {
    pthread_mutex_t lock;
    char line[LOG_LINES][256];
    int level[LOG_LINES];
    unsigned head, taken; /* next line to write; lines before taken were read */
    char partial[256];
    size_t plen;
    int plevel;
} dlog = {.lock = PTHREAD_MUTEX_INITIALIZER};

static ssize_t log_write(void *cookie, const char *buf, size_t size) {
    (void)cookie;
    /* Called from whichever thread logs; the level is that thread's current message's. */
    int level = (int)rte_log_cur_msg_loglevel();
    pthread_mutex_lock(&dlog.lock);
    for (size_t i = 0; i < size; i++) {
        char c = buf[i];
        if (dlog.plen == 0)
            dlog.plevel = level;
        if (c != '\n' && dlog.plen < sizeof dlog.partial - 1) {
            dlog.partial[dlog.plen++] = c;
            continue;
        }
        if (c != '\n')
            continue; /* a line longer than we keep: the rest is cut */
        dlog.partial[dlog.plen] = 0;
        unsigned at = dlog.head % LOG_LINES;
        memcpy(dlog.line[at], dlog.partial, dlog.plen + 1);
        dlog.level[at] = dlog.plevel;
        dlog.head++;
        if (dlog.head - dlog.taken > LOG_LINES)
            dlog.taken = dlog.head - LOG_LINES;
        dlog.plen = 0;
    }
    pthread_mutex_unlock(&dlog.lock);
    return (ssize_t)size;
}

int onvm_dpdk_log_take(char (*lines)[256], int max, int serious_only) {
    int n = 0;
    pthread_mutex_lock(&dlog.lock);
    for (; dlog.taken != dlog.head; dlog.taken++) {
        unsigned at = dlog.taken % LOG_LINES;
        if (serious_only && dlog.level[at] > (int)RTE_LOG_WARNING)
            continue;
        if (n < max)
            memcpy(lines[n++], dlog.line[at], 256);
    }
    pthread_mutex_unlock(&dlog.lock);
    return n;
}

/* The first error DPDK logged since mark (a head value), for messages: the
 * driver's own words usually come before the generic ones.  "" if none. */
static void log_first_error(unsigned mark, char *out, size_t len) {
    out[0] = 0;
    pthread_mutex_lock(&dlog.lock);
    unsigned from = dlog.head - mark > LOG_LINES ? dlog.head - LOG_LINES : mark;
    for (unsigned i = from; i != dlog.head && !out[0]; i++) {
        unsigned at = i % LOG_LINES;
        if (dlog.level[at] <= (int)RTE_LOG_ERR && dlog.line[at][0])
            snprintf(out, len, "%s", dlog.line[at]);
    }
    pthread_mutex_unlock(&dlog.lock);
}

/* What DPDK logged since mark was about an attempt we recovered from: not for the manager's log. */
static void log_forget(unsigned mark) {
    pthread_mutex_lock(&dlog.lock);
    unsigned from = dlog.head - mark > LOG_LINES ? dlog.head - LOG_LINES : mark;
    for (unsigned i = from; i != dlog.head; i++)
        dlog.level[i % LOG_LINES] = RTE_LOG_DEBUG;
    pthread_mutex_unlock(&dlog.lock);
}

static unsigned log_mark(void) {
    pthread_mutex_lock(&dlog.lock);
    unsigned h = dlog.head;
    pthread_mutex_unlock(&dlog.lock);
    return h;
}

/* ---- EAL ------------------------------------------------------------------- */

static int eal_ready;

/* The first line written to fd (from its start), without a "PROG: " prefix. */
static void first_line(int fd, const char *prog, char *out, size_t len) {
    char buf[512];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    out[0] = 0;
    if (n <= 0)
        return;
    buf[n] = 0;
    char *line = buf;
    for (char *nl; (nl = strchr(line, '\n')) && nl == line;)
        line = nl + 1; /* skip empty lines */
    line[strcspn(line, "\n")] = 0;
    size_t plen = strlen(prog);
    if (strncmp(line, prog, plen) == 0 && strncmp(line + plen, ": ", 2) == 0)
        line += plen + 2;
    size_t n2 = strlen(line) < len - 1 ? strlen(line) : len - 1;
    memcpy(out, line, n2);
    out[n2] = 0;
}

int onvm_dpdk_eal_ready(void) { return eal_ready; }

int onvm_dpdk_eal_init(int argc, char **argv, char *err, size_t errlen) {
    if (eal_ready)
        return -EALREADY;
    static FILE *stream;
    if (!stream) {
        cookie_io_functions_t io = {.write = log_write};
        stream = fopencookie(NULL, "w", io);
        if (!stream) {
            onvm_set_err(err, errlen, "cannot open a log stream for DPDK: %s", strerror(errno));
            return -errno;
        }
        setvbuf(stream, NULL, _IOLBF, 0);
        rte_openlog_stream(stream);
    }
    cpu_set_t before;
    int have_mask = pthread_getaffinity_np(pthread_self(), sizeof before, &before) == 0;
    unsigned mark = log_mark();
    /* The EAL keeps pointers into argv: it lives as long as the process. */
    char **args = calloc((size_t)argc + 1, sizeof *args);
    for (int i = 0; args && i < argc; i++)
        args[i] = strdup(argv[i]);
    /* What the EAL prints itself (getopt's complaints, its fatal alerts) is
     * caught too: the manager reports one line. */
    int saved = dup(STDERR_FILENO), caught = memfd_create("onvm-eal-stderr", MFD_CLOEXEC);
    if (saved >= 0 && caught >= 0) {
        fflush(stderr);
        dup2(caught, STDERR_FILENO);
    }
    int rc = args ? rte_eal_init(argc, args) : -1;
    int e = args ? rte_errno : ENOMEM;
    char said[256] = "";
    if (saved >= 0 && caught >= 0) {
        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        first_line(caught, argv[0], said, sizeof said);
    }
    if (saved >= 0)
        close(saved);
    if (caught >= 0)
        close(caught);
    if (have_mask)
        pthread_setaffinity_np(pthread_self(), sizeof before, &before);
    if (rc < 0) {
        char why[256];
        log_first_error(mark, why, sizeof why);
        const char *best = said[0] ? said : why;
        onvm_set_err(err, errlen, "DPDK's EAL did not start: %s%s%s", rte_strerror(e), best[0] ? ": " : "", best);
        return -(e ? e : EINVAL);
    }
    eal_ready = 1;
    return 0;
}

/* ---- the mbuf pool over the slots -------------------------------------------- */

#define DEFER_MAX 512

struct onvm_dpdk_pool {
    struct onvm_region *r;
    struct rte_mempool *mp;
    struct rte_mbuf **mbuf; /* slot -> its mbuf */
    uint8_t *slots;
    uint32_t slot_size, count;
    uint32_t shift;      /* log2(slot_size) when a power of two, else 0 */
    int ready;           /* populated: enqueues are frees from then on */
    int refs;            /* the binding's and each open port's; main thread only */
    unsigned setup_port; /* the port being set up or torn down (main thread) */
    void *ext_va;
    size_t ext_len;
    int ext_registered;
    /* Slots a device gave back during a call of worker w into it, freed when
     * the call returns (ops_enqueue).  Setup and teardown use row 0, while
     * the workers are stopped. */
    uint32_t defer[ONVM_MAX_WORKERS][DEFER_MAX];
};

/* Thread-local state of this module, read per packet: initial-exec, a load
 * from the thread pointer instead of a __tls_get_addr() call per access (a
 * module loaded later gets only a little static TLS: keep it to a few words). */
#define THREAD_LOCAL static __thread __attribute__((tls_model("initial-exec")))

/* Whose call into DPDK this thread is making (see the theory above). */
THREAD_LOCAL int cur_port = -1;
THREAD_LOCAL unsigned cur_worker;

static inline uint32_t slot_of(const struct onvm_dpdk_pool *pool, const struct rte_mbuf *m) {
    size_t off = (size_t)((const uint8_t *)m->buf_addr - pool->slots);
    return pool->shift ? (uint32_t)(off >> pool->shift) : (uint32_t)(off / pool->slot_size);
}

static inline struct onvm_port_stats *row(const struct onvm_dpdk_pool *pool, unsigned port, unsigned worker) {
    return &pool->r->ports[port].by_worker[worker];
}

static int ops_alloc(struct rte_mempool *mp) {
    mp->pool_data = mp->pool_config;
    return 0;
}

static void ops_free(struct rte_mempool *mp) { (void)mp; }

static unsigned ops_count(const struct rte_mempool *mp) {
    const struct onvm_dpdk_pool *pool = mp->pool_data;
    int64_t n = onvm_pool_free_count(pool->r);
    return n > 0 ? (unsigned)n : 0;
}

/* Slots a device gave back during one of our calls into it (tx_burst frees
 * what it sent one mbuf at a time): freed together when the call returns,
 * one push onto the free stack instead of one per packet.  Until then they
 * are the manager's (in use), no longer lent. */
THREAD_LOCAL struct onvm_dpdk_pool *defer_pool;
THREAD_LOCAL unsigned defer_n;

static void defer_flush(void) {
    if (defer_n)
        onvm_pool_free_burst(defer_pool->r, defer_pool->defer[cur_worker], defer_n);
    defer_n = 0;
}

/* The device is done with these: take them back from the port they were lent
 * to and free them.  While the pool is populated, objects enqueue themselves:
 * their slots are in the free stack already. */
static int ops_enqueue(struct rte_mempool *mp, void *const *objs, unsigned n) {
    struct onvm_dpdk_pool *pool = mp->pool_data;
    if (!pool->ready)
        return 0;
    struct onvm_region *r = pool->r;
    int later = cur_port >= 0; /* inside rx/tx on this thread: they flush */
    if (later && defer_pool != pool) {
        defer_flush();
        defer_pool = pool;
    }
    for (unsigned i = 0; i < n; i++) {
        uint32_t s = slot_of(pool, objs[i]);
        uint16_t owner = atomic_load_explicit(&r->meta[s].owner, ONVM_RELAXED);
        if (owner >= ONVM_OWNER_PORT_BASE && owner < ONVM_OWNER_PORT(ONVM_MAX_PORTS))
            onvm_port_took_back(r, row(pool, owner - ONVM_OWNER_PORT_BASE, cur_worker), &s, 1);
        if (!later) {
            onvm_pool_free_burst(r, &s, 1);
            continue;
        }
        if (defer_n == DEFER_MAX)
            defer_flush();
        pool->defer[cur_worker][defer_n++] = s;
    }
    return 0;
}

static void give_back(struct onvm_dpdk_pool *pool, struct onvm_port_stats *st, void **objs, unsigned n) {
    uint32_t buf[64];
    for (unsigned done = 0; done < n;) {
        unsigned k = n - done < 64 ? n - done : 64;
        for (unsigned i = 0; i < k; i++)
            buf[i] = slot_of(pool, objs[done + i]);
        onvm_port_took_back(pool->r, st, buf, k);
        onvm_pool_free_burst(pool->r, buf, k);
        done += k;
    }
}

/* A device wants n buffers (all or none): lend it n slots. */
static int ops_dequeue(struct rte_mempool *mp, void **objs, unsigned n) {
    struct onvm_dpdk_pool *pool = mp->pool_data;
    unsigned port = cur_port >= 0 ? (unsigned)cur_port : pool->setup_port;
    struct onvm_port_stats *st = row(pool, port, cur_worker);
    uint32_t idx[256];
    unsigned have = 0;
    while (have < n) {
        uint32_t want = n - have < 256 ? n - have : 256;
        uint32_t got = onvm_port_lend_alloc(pool->r, st, port, idx, want);
        for (uint32_t i = 0; i < got; i++)
            objs[have + i] = pool->mbuf[idx[i]];
        have += got;
        if (got < want) {
            give_back(pool, st, objs, have);
            return -ENOBUFS;
        }
    }
    return 0;
}

static struct rte_mempool_ops slot_ops = {
    .name = OPS_NAME,
    .alloc = ops_alloc,
    .free = ops_free,
    .enqueue = ops_enqueue,
    .dequeue = ops_dequeue,
    .get_count = ops_count,
};

/* rte_mempool_obj_iter() callback: mbuf i gets slot i as its pinned buffer. */
static void init_mbuf(struct rte_mempool *mp, void *arg, void *obj, unsigned i) {
    struct onvm_dpdk_pool *pool = arg;
    struct rte_mbuf *m = obj;
    size_t mbuf_size = sizeof(struct rte_mbuf);
    if (i >= pool->count)
        return;
    memset(m, 0, mbuf_size);
    m->priv_size = 0;
    m->buf_len = (uint16_t)pool->slot_size;
    m->buf_addr = pool->slots + (size_t)i * pool->slot_size;
    rte_mbuf_iova_set(m, rte_eal_iova_mode() == RTE_IOVA_VA ? (rte_iova_t)(uintptr_t)m->buf_addr
                                                            : RTE_BAD_IOVA);
    m->data_off = RTE_PKTMBUF_HEADROOM;
    m->pool = mp;
    m->nb_segs = 1;
    m->port = RTE_MBUF_PORT_INVALID;
    m->ol_flags = RTE_MBUF_F_EXTERNAL;
    rte_mbuf_refcnt_set(m, 1);
    m->next = NULL;
    /* DPDK reads the shared info of a pinned buffer when the mbuf is freed; it
     * follows the header (elt_size below makes room for it). */
    struct rte_mbuf_ext_shared_info *shinfo = RTE_PTR_ADD(m, mbuf_size);
    memset(shinfo, 0, sizeof *shinfo);
    m->shinfo = shinfo;
    shinfo->fcb_opaque = m;
    rte_mbuf_ext_refcnt_set(shinfo, 1);
    pool->mbuf[i] = m;
}

static void pool_destroy(struct onvm_dpdk_pool *pool) {
    if (pool->mp)
        rte_mempool_free(pool->mp);
    if (pool->ext_registered)
        rte_extmem_unregister(pool->ext_va, pool->ext_len);
    free(pool->mbuf);
    free(pool);
}

struct onvm_dpdk_pool *onvm_dpdk_pool_create(struct onvm_region *r, char *err, size_t errlen) {
    static int ops_registered;
    static unsigned serial;
    if (!eal_ready) {
        onvm_set_err(err, errlen, "DPDK's EAL is not initialised");
        return NULL;
    }
    if (r->slot_size > UINT16_MAX) {
        onvm_set_err(err, errlen, "slots of %u bytes are too large for DPDK (at most 65535; see --slot-size)",
                     r->slot_size);
        return NULL;
    }
    if (!ops_registered) {
        if (rte_mempool_register_ops(&slot_ops) < 0) {
            onvm_set_err(err, errlen, "cannot register the slot mempool with DPDK");
            return NULL;
        }
        ops_registered = 1;
    }
    struct onvm_dpdk_pool *pool = calloc(1, sizeof *pool);
    if (!pool || !(pool->mbuf = calloc(r->pool_count, sizeof *pool->mbuf))) {
        free(pool);
        onvm_set_err(err, errlen, "out of memory");
        return NULL;
    }
    pool->r = r;
    pool->slots = r->slots;
    pool->slot_size = r->slot_size;
    pool->count = r->pool_count;
    pool->refs = 1;
    if ((r->slot_size & (r->slot_size - 1)) == 0)
        pool->shift = (uint32_t)__builtin_ctz(r->slot_size);

    /* Tell DPDK where the slots are: devices that DMA look their IOVA up there.
     * The whole mapping is registered, in the region's page size. */
    struct statfs fs;
    size_t pg = fstatfs(r->fd, &fs) == 0 && fs.f_bsize >= 4096 ? (size_t)fs.f_bsize : 4096;
    if (r->size % pg == 0 && (uintptr_t)r->base % pg == 0) {
        pool->ext_va = r->base;
        pool->ext_len = r->size;
        if (rte_extmem_register(pool->ext_va, pool->ext_len, NULL, 0, pg) == 0)
            pool->ext_registered = 1;
    }

    unsigned mark = log_mark();
    char name[RTE_MEMPOOL_NAMESIZE];
    snprintf(name, sizeof name, "onvm%u", serial++);
    unsigned elt = (unsigned)(sizeof(struct rte_mbuf) + sizeof(struct rte_mbuf_ext_shared_info));
    pool->mp = rte_mempool_create_empty(name, r->pool_count, elt, 0, sizeof(struct rte_pktmbuf_pool_private),
                                        SOCKET_ID_ANY, 0);
    int rc = pool->mp ? rte_mempool_set_ops_byname(pool->mp, OPS_NAME, pool) : -rte_errno;
    if (rc == 0) {
        struct rte_pktmbuf_pool_private priv = {.mbuf_data_room_size = (uint16_t)r->slot_size,
                                                .mbuf_priv_size = 0,
                                                .flags = RTE_PKTMBUF_POOL_F_PINNED_EXT_BUF};
        rte_pktmbuf_pool_init(pool->mp, &priv);
        rc = rte_mempool_populate_default(pool->mp);
        if (rc >= 0 && pool->mp->populated_size != r->pool_count)
            rc = -ENOMEM;
    }
    if (rc < 0) {
        char why[256];
        log_first_error(mark, why, sizeof why);
        onvm_set_err(err, errlen,
                     "cannot make %u mbuf headers for the pool's slots: %s%s%s (give DPDK more memory: "
                     "-m in --dpdk-eal)",
                     r->pool_count, rte_strerror(-rc), why[0] ? ": " : "", why);
        pool_destroy(pool);
        return NULL;
    }
    rte_mempool_obj_iter(pool->mp, init_mbuf, pool);
    pool->ready = 1;
    return pool;
}

void onvm_dpdk_pool_put(struct onvm_dpdk_pool *pool) {
    if (pool && --pool->refs == 0)
        pool_destroy(pool);
}

struct onvm_region *onvm_dpdk_pool_region(const struct onvm_dpdk_pool *pool) { return pool->r; }

/* ---- the port -------------------------------------------------------------- */

struct dport {
    struct onvm_dpdk_pool *pool;
    uint16_t port_id;
    struct rte_device *dev;   /* set when we probed it: removed at close */
    struct rte_device *dma;   /* a PCI device the pool is mapped for: unmapped at close */
    unsigned nrxq, ntxq, workers;
    int txq_shared; /* fewer TX queues than workers */
    int found;   /* port_id names the device */
    int started;
    int stats_on_tx; /* an output-only port: the TX queue 0 sender reads the counters */
    uint64_t stats_due;
    struct rte_eth_stats last;
    uint64_t idle_since[ONVM_PORT_MAX_QUEUES]; /* per RX queue, 0 while packets come */
    rte_spinlock_t txlock[ONVM_MAX_WORKERS];
    char name[64];
    char driver[64];
};

/* Reads the device's counters into the caller's row (see the theory above). */
static void read_stats(struct onvm_port *p, struct dport *d, struct onvm_port_stats *st, uint64_t now) {
    if (now < d->stats_due)
        return;
    d->stats_due = now + STATS_EVERY_NS;
    struct rte_eth_stats s;
    if (rte_eth_stats_get(d->port_id, &s) != 0)
        return;
    /* counters that went backwards were reset (by the device): count from there */
    if (s.imissed >= d->last.imissed)
        st->drops[ONVM_DROP_MISSED] += s.imissed - d->last.imissed;
    if (s.ierrors >= d->last.ierrors)
        st->drops[ONVM_DROP_PORT] += s.ierrors - d->last.ierrors;
    if (s.oerrors >= d->last.oerrors)
        st->drops[ONVM_DROP_PORT] += s.oerrors - d->last.oerrors;
    if (s.rx_nombuf >= d->last.rx_nombuf)
        st->drops[ONVM_DROP_NO_SLOT] += s.rx_nombuf - d->last.rx_nombuf;
    d->last = s;
    struct onvm_port_devstats *ds = &p->devstats;
    ds->ipackets = s.ipackets;
    ds->opackets = s.opackets;
    ds->ibytes = s.ibytes;
    ds->obytes = s.obytes;
    ds->imissed = s.imissed;
    ds->ierrors = s.ierrors;
    ds->oerrors = s.oerrors;
    ds->rx_nombuf = s.rx_nombuf;
}

static inline unsigned worker_of(const struct onvm_port *p, const struct onvm_region *r,
                                 const struct onvm_port_stats *st) {
    return (unsigned)(st - r->ports[p->id].by_worker);
}

/* Is m one of the pool's mbufs, with slot s as its buffer? */
static inline int ours(const struct onvm_dpdk_pool *pool, const struct rte_mbuf *m, uint32_t s) {
    return m->pool == pool->mp && s < pool->count && pool->mbuf[s] == m;
}

static void drop_chain(struct onvm_dpdk_pool *pool, struct onvm_port_stats *st, struct rte_mbuf *m) {
    st->drops[ONVM_DROP_PORT]++;
    for (struct rte_mbuf *next; m; m = next) {
        next = m->next;
        uint32_t s = slot_of(pool, m);
        if (!ours(pool, m, s)) {
            m->next = NULL;
            m->nb_segs = 1;
            rte_pktmbuf_free_seg(m); /* to its own pool */
            continue;
        }
        m->next = NULL;
        m->nb_segs = 1;
        onvm_port_took_back(pool->r, st, &s, 1);
        onvm_pool_free_burst(pool->r, &s, 1);
    }
}

static uint32_t dpdk_rxq(struct onvm_port *p, unsigned q, struct onvm_region *r, uint32_t *slots, uint32_t n,
                         uint64_t now, uint64_t *next_due, struct onvm_port_stats *st) {
    struct dport *d = p->drv;
    struct onvm_dpdk_pool *pool = d->pool;
    struct rte_mbuf *mb[ONVM_BURST_MAX];
    cur_port = p->id;
    cur_worker = worker_of(p, r, st);
    uint16_t got = rte_eth_rx_burst(d->port_id, (uint16_t)q, mb, (uint16_t)n);
    if (q == 0 && !d->stats_on_tx)
        read_stats(p, d, st, now);
    cur_port = -1;
    defer_flush();
    if (got == 0) {
        if (d->idle_since[q] == 0)
            d->idle_since[q] = now;
        uint64_t nap = (now - d->idle_since[q]) / 8;
        nap = nap < NAP_MIN_NS ? NAP_MIN_NS : nap > NAP_MAX_NS ? NAP_MAX_NS : nap;
        if (next_due && now + nap < *next_due)
            *next_due = now + nap;
        return 0;
    }
    d->idle_since[q] = 0;
    uint32_t k = 0;
    for (uint16_t i = 0; i < got; i++) {
        struct rte_mbuf *m = mb[i];
        uint32_t s = slot_of(pool, m);
        if (m->nb_segs != 1 || m->next || !ours(pool, m, s)) {
            /* Longer than a slot (the device chained buffers), or a buffer that
             * is not a slot (a driver attached memory of its own): not a packet
             * NFs can see in one slot.  It goes back where it came from. */
            drop_chain(pool, st, m);
            continue;
        }
        struct onvm_meta *meta = &r->meta[s];
        onvm_slot_reset(r, s);
        meta->data_off = m->data_off;
        meta->len = m->data_len;
        meta->rx_ns = now;
        meta->in_port = (uint16_t)p->id;
        slots[k++] = s;
    }
    onvm_port_took_back(r, st, slots, k);
    return k;
}

static uint32_t dpdk_tx(struct onvm_port *p, struct onvm_region *r, const uint32_t *slots, uint32_t n,
                        uint64_t *bytes, struct onvm_port_stats *st) {
    struct dport *d = p->drv;
    struct onvm_dpdk_pool *pool = d->pool;
    struct rte_mbuf *mb[ONVM_BURST_MAX];
    uint32_t ok[ONVM_BURST_MAX], bad[ONVM_BURST_MAX];
    uint64_t upto[ONVM_BURST_MAX + 1]; /* bytes of the first i packets: sent ones are the device's */
    uint32_t k = 0, nbad = 0;
    upto[0] = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t s = slots[i];
        const struct onvm_meta *meta = &r->meta[s];
        uint32_t off = meta->data_off, len = meta->len;
        /* An NF wrote these: the device must not read outside the slot. */
        if (off > pool->slot_size || len == 0 || len > pool->slot_size - off) {
            bad[nbad++] = s;
            continue;
        }
        if (i + 4 < n && slots[i + 4] < pool->count)
            rte_prefetch0(pool->mbuf[slots[i + 4]]); /* headers are cold: 16384 of them span MiBs */
        struct rte_mbuf *m = pool->mbuf[s];
        m->data_off = (uint16_t)off;
        m->data_len = (uint16_t)len;
        m->pkt_len = len;
        m->port = d->port_id;
        m->ol_flags = RTE_MBUF_F_EXTERNAL;
        m->packet_type = 0;
        /* tx_offload (the second cache line) stays 0: allocation resets it and nothing sets it */
        mb[k] = m;
        ok[k] = s;
        upto[k + 1] = upto[k] + len;
        k++;
    }
    if (nbad)
        onvm_pool_free_burst(r, bad, nbad);
    unsigned w = worker_of(p, r, st);
    unsigned q = w % d->ntxq;
    onvm_port_lend(r, st, (unsigned)p->id, ok, k);
    cur_port = p->id;
    cur_worker = w;
    if (d->txq_shared)
        rte_spinlock_lock(&d->txlock[q]);
    uint16_t sent = k ? rte_eth_tx_burst(d->port_id, (uint16_t)q, mb, (uint16_t)k) : 0;
    if (q == 0 && d->stats_on_tx)
        read_stats(p, d, st, onvm_now_ns());
    if (d->txq_shared)
        rte_spinlock_unlock(&d->txlock[q]);
    cur_port = -1;
    defer_flush();
    if (sent < k) { /* the device's ring is full: they are dropped, counted by the caller */
        onvm_port_took_back(r, st, ok + sent, k - sent);
        onvm_pool_free_burst(r, ok + sent, k - sent);
    }
    *bytes = upto[sent];
    return sent;
}

/* Maps (or unmaps) the region for a device's DMA, at the slots' virtual
 * addresses (IOVA as VA; rte_dev_dma_map is experimental in 22.11). */
static int dma_map(struct rte_device *dev, struct onvm_dpdk_pool *pool, int map) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    uint64_t iova = (uint64_t)(uintptr_t)pool->ext_va;
    return map ? rte_dev_dma_map(dev, pool->ext_va, iova, pool->ext_len)
               : rte_dev_dma_unmap(dev, pool->ext_va, iova, pool->ext_len);
#pragma GCC diagnostic pop
}

/* A PCI device DMAs into the slots: map the region for it, or say why it cannot be. */
static int dma_setup(struct dport *d, struct rte_device *dev, char *why, size_t len) {
    if (strcmp(rte_bus_name(rte_dev_bus(dev)), "pci") != 0)
        return 0; /* virtual devices copy with the CPU */
    if (!d->pool->ext_registered) {
        snprintf(why, len, "the region's memory could not be registered with DPDK for the device's DMA");
        return -EINVAL;
    }
    if (rte_eal_iova_mode() != RTE_IOVA_VA) {
        snprintf(why, len, "a PCI device reaches the slots by their virtual addresses: the EAL must use IOVA "
                           "as VA (vfio-pci with an IOMMU, --dpdk-eal=--iova-mode=va)");
        return -EINVAL;
    }
    if (dma_map(dev, d->pool, 1) < 0 && rte_errno != EEXIST) {
        snprintf(why, len, "cannot map the slots for the device's DMA: %s", rte_strerror(rte_errno));
        return -rte_errno;
    }
    d->dma = dev;
    return 0;
}

/* Stops the device (if it was found), takes back what it held, removes it if we
 * probed it, and lets go of the pool. */
static void release(struct dport *d, int id) {
    struct onvm_dpdk_pool *pool = d->pool;
    if (d->found) {
        pool->setup_port = (unsigned)id;
        cur_port = id;
        cur_worker = 0;
        if (d->started)
            rte_eth_dev_stop(d->port_id);
        rte_eth_dev_close(d->port_id); /* its queues give their buffers back here */
        if (d->dma)
            dma_map(d->dma, pool, 0);
        if (d->dev)
            rte_dev_remove(d->dev);
        cur_port = -1;
        defer_flush();
        /* What the device never gave back is still stamped as lent to it. */
        onvm_dpdk_api->port_reclaim(pool->r, (unsigned)id);
    }
    onvm_dpdk_pool_put(pool);
    free(d);
}

static void dpdk_close(struct onvm_port *p) {
    if (p->drv)
        release(p->drv, p->id);
    p->drv = NULL;
}

/* Both directions of a flow hash alike with this key (0x6d5a repeated). */
static uint8_t symmetric_key[52];

static int setup_queues(struct dport *d, const struct rte_eth_dev_info *info, int retry_tx, unsigned rxd,
                        unsigned txd, char *err, size_t errlen) {
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    if (d->nrxq > 1) {
        uint64_t hf = info->flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP);
        if (hf) {
            conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
            if (info->hash_key_size && info->hash_key_size <= sizeof symmetric_key) {
                for (unsigned i = 0; i < sizeof symmetric_key; i++)
                    symmetric_key[i] = i % 2 ? 0x5a : 0x6d;
                conf.rx_adv_conf.rss_conf.rss_key = symmetric_key;
                conf.rx_adv_conf.rss_conf.rss_key_len = info->hash_key_size;
            }
        }
    }
    unsigned mark = log_mark();
    int rc = rte_eth_dev_configure(d->port_id, (uint16_t)d->nrxq, (uint16_t)d->ntxq, &conf);
    if (rc < 0 && retry_tx && d->nrxq && d->ntxq != d->nrxq) {
        /* Some devices (net_tap) want as many TX queues as RX queues. */
        d->ntxq = d->nrxq;
        rc = rte_eth_dev_configure(d->port_id, (uint16_t)d->nrxq, (uint16_t)d->ntxq, &conf);
        if (rc == 0)
            log_forget(mark);
    }
    if (rc < 0) {
        onvm_set_err(err, errlen, "cannot configure %u RX and %u TX queues: %s", d->nrxq, d->ntxq, rte_strerror(-rc));
        return rc;
    }
    uint16_t nrxd = (uint16_t)rxd, ntxd = (uint16_t)txd;
    rte_eth_dev_adjust_nb_rx_tx_desc(d->port_id, &nrxd, &ntxd);
    int socket = rte_eth_dev_socket_id(d->port_id);
    if (socket < 0)
        socket = (int)SOCKET_ID_ANY;
    for (unsigned q = 0; q < d->nrxq; q++) {
        rc = rte_eth_rx_queue_setup(d->port_id, (uint16_t)q, nrxd, (unsigned)socket, NULL, d->pool->mp);
        if (rc < 0) {
            onvm_set_err(err, errlen, "cannot set up RX queue %u: %s (a slot holds %u bytes of packet; see --slot-size)",
                         q, rte_strerror(-rc), d->pool->slot_size - RTE_PKTMBUF_HEADROOM);
            return rc;
        }
    }
    for (unsigned q = 0; q < d->ntxq; q++) {
        rc = rte_eth_tx_queue_setup(d->port_id, (uint16_t)q, ntxd, (unsigned)socket, NULL);
        if (rc < 0) {
            onvm_set_err(err, errlen, "cannot set up TX queue %u: %s", q, rte_strerror(-rc));
            return rc;
        }
    }
    return 0;
}

/* Devices whose queues are those a peer connects (a memif or vhost-user
 * peer may have a single ring): one TX queue unless the port asks for more. */
static int peer_queues(const char *driver) {
    static const char *const names[] = {"net_memif", "net_vhost", "net_virtio_user"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(driver, names[i]) == 0)
            return 1;
    return 0;
}

/* Finds the ethdev port the devargs name, probing the device unless the EAL
 * did already (an allowed PCI device).  *probed says whether we did. */
static int find_port(const char *devargs, uint16_t *port_id, int *probed, char *err, size_t errlen) {
    struct rte_dev_iterator it;
    uint16_t pid;
    *probed = 0;
    unsigned mark = log_mark();
    int rc = rte_dev_probe(devargs);
    if (rc == 0)
        *probed = 1;
    else if (rc != -EEXIST) {
        char why[256];
        log_first_error(mark, why, sizeof why);
        /* DPDK's own words when it said something (its error codes here can be odd: EFAULT for a bad name) */
        onvm_set_err(err, errlen, "DPDK cannot probe '%s': %s", devargs, why[0] ? why : rte_strerror(-rc));
        return rc;
    }
    RTE_ETH_FOREACH_MATCHING_DEV(pid, devargs, &it) {
        *port_id = pid;
        rte_eth_iterator_cleanup(&it);
        return 0;
    }
    if (*probed) { /* a device, but no network port: remove it again */
        struct rte_devargs da;
        if (rte_devargs_parse(&da, devargs) == 0) {
            rte_eal_hotplug_remove(rte_bus_name(da.bus), da.name);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* experimental in 22.11, stable later */
            rte_devargs_reset(&da);
#pragma GCC diagnostic pop
        }
    }
    onvm_set_err(err, errlen, "'%s' is not a network device (no ethdev port matches it)", devargs);
    return -ENODEV;
}

struct onvm_port *onvm_dpdk_port_open(struct onvm_dpdk_pool *pool, int id, const struct onvm_dpdk_conf *c,
                                      char *err, size_t errlen) {
    if (!eal_ready) {
        onvm_set_err(err, errlen, "DPDK's EAL is not initialised");
        return NULL;
    }
    if (c->workers < 1 || c->workers > ONVM_MAX_WORKERS || c->rx_workers < 1 || c->rx_workers > c->workers) {
        onvm_set_err(err, errlen, "bad worker counts (%u RX of %u)", c->rx_workers, c->workers);
        return NULL;
    }
    struct dport *d = calloc(1, sizeof *d);
    if (!d) {
        onvm_set_err(err, errlen, "out of memory");
        return NULL;
    }
    d->pool = pool;
    pool->refs++;
    pool->setup_port = (unsigned)id;
    struct onvm_port *p;
    int probed = 0;
    char why[200] = "";
    if (find_port(c->devargs, &d->port_id, &probed, why, sizeof why) != 0)
        goto fail;
    d->found = 1;
    struct rte_eth_dev_info info;
    if (rte_eth_dev_info_get(d->port_id, &info) != 0) {
        snprintf(why, sizeof why, "cannot read the device's capabilities");
        goto fail;
    }
    if (probed)
        d->dev = info.device;
    if (dma_setup(d, info.device, why, sizeof why) < 0)
        goto fail;
    rte_eth_dev_get_name_by_port(d->port_id, d->name);
    snprintf(d->driver, sizeof d->driver, "%s", info.driver_name ? info.driver_name : "");
    d->workers = c->workers;
    unsigned want_rx = c->rxq < 0 ? c->rx_workers : (unsigned)c->rxq;
    unsigned want_tx = c->txq < 0 ? (peer_queues(d->driver) ? 1 : c->workers) : (unsigned)c->txq;
    if (want_rx > c->rx_workers) {
        snprintf(why, sizeof why, "%u RX queues need as many RX workers (there are %u)", want_rx, c->rx_workers);
        goto fail;
    }
    d->nrxq = want_rx < info.max_rx_queues ? want_rx : info.max_rx_queues;
    d->ntxq = want_tx < info.max_tx_queues ? want_tx : info.max_tx_queues;
    if (c->rxq > 0 && d->nrxq < (unsigned)c->rxq) {
        snprintf(why, sizeof why, "rxq=%d: the device has %u RX queues", c->rxq, info.max_rx_queues);
        goto fail;
    }
    if (c->txq > 0 && d->ntxq < (unsigned)c->txq) {
        snprintf(why, sizeof why, "txq=%d: the device has %u TX queues", c->txq, info.max_tx_queues);
        goto fail;
    }
    if (d->nrxq == 0 && d->ntxq == 0) {
        snprintf(why, sizeof why, "the device has neither RX nor TX queues to use");
        goto fail;
    }
    d->stats_on_tx = d->nrxq == 0;
    for (unsigned i = 0; i < ONVM_MAX_WORKERS; i++)
        rte_spinlock_init(&d->txlock[i]);
    cur_port = id;
    cur_worker = 0;
    unsigned mark = log_mark();
    int rc = setup_queues(d, &info, c->txq < 0, c->rxd ? c->rxd : 1024, c->txd ? c->txd : 1024, why, sizeof why);
    if (rc == 0 && c->promisc) {
        int prc = rte_eth_promiscuous_enable(d->port_id);
        if (prc != 0 && prc != -ENOTSUP)
            rc = prc, snprintf(why, sizeof why, "cannot enable promiscuous mode: %s", rte_strerror(-prc));
    }
    if (rc == 0 && (rc = rte_eth_dev_start(d->port_id)) < 0)
        snprintf(why, sizeof why, "cannot start the device: %s", rte_strerror(-rc));
    cur_port = -1;
    defer_flush();
    if (rc < 0) {
        char logged[160];
        log_first_error(mark, logged, sizeof logged);
        if (logged[0])
            snprintf(why + strlen(why), sizeof why - strlen(why), " (%s)", logged);
        goto fail;
    }
    d->started = 1;
    d->txq_shared = d->ntxq && d->ntxq < c->workers;
    p = onvm_dpdk_api->port_new(id, ONVM_PORT_DPDK);
    if (!p) {
        snprintf(why, sizeof why, "out of memory");
        goto fail;
    }
    p->drv = d;
    p->close = dpdk_close;
    p->nrxq = d->nrxq;
    if (d->nrxq)
        p->rxq = dpdk_rxq;
    if (d->ntxq) {
        p->tx = dpdk_tx;
        p->tx_mt = 1;
    }
    p->has_devstats = 1;
    snprintf(p->path, sizeof p->path, "%s", d->name);
    rte_eth_stats_reset(d->port_id);
    return p;

fail:
    onvm_set_err(err, errlen, "%s", why);
    release(d, id);
    return NULL;
}

int onvm_dpdk_port_facts(const struct onvm_port *p, struct onvm_dpdk_port_facts *out) {
    if (!p || p->kind != ONVM_PORT_DPDK || !p->drv)
        return -EINVAL;
    const struct dport *d = p->drv;
    out->port_id = d->port_id;
    out->nrxq = d->nrxq;
    out->ntxq = d->ntxq;
    snprintf(out->name, sizeof out->name, "%s", d->name);
    snprintf(out->driver, sizeof out->driver, "%s", d->driver);
    return 0;
}
