/* afxdp.c - the afxdp:IFNAME port: a Linux interface through AF_XDP sockets
 * whose packet memory is the region's packet pool.
 *
 * Theory of operation
 * -------------------
 * UMEM.  The pool's slot area is registered once, by the first afxdp port, as
 * the UMEM of every AF_XDP socket of the manager: chunk = slot, UMEM headroom
 * = the slot headroom.  A driver with zero-copy support DMAs frames straight
 * into pool slots; any other (veth, or mode=copy/skb) copies each frame once,
 * into the slot.  Either way no one copies it again: the RX worker hands the
 * slot index to the chain.  The kernel decides the UMEM's mode by its first
 * socket, so all afxdp ports of a manager run zero-copy or all copy.
 *
 * Sockets.  One XSK per (interface, queue), bound with XDP_SHARED_UMEM after
 * the first, each with its own fill and completion rings.  RX worker i serves
 * queue i (afpacket's rule): it keeps that queue's fill ring topped up with
 * slots from the pool's free list, takes received frames off its RX ring, and
 * sleeps in ppoll() on the socket when idle.  TX goes through queue 0's
 * socket under the port's TX lock, from whatever slot the packet is in (a gen,
 * pcap or afpacket packet is in the UMEM too); completions go back to the
 * free list.  need_wakeup is on: a syscall only when the kernel asks for one.
 *
 * Accounting.  Slots in a fill ring, an RX ring not yet read, a TX ring or a
 * completion ring not yet reaped are lent to the port (onvm_port.h): stamped
 * ONVM_OWNER_PORT(id) and counted in the lending worker's row.  When the last
 * afxdp port closes, the UMEM goes and every slot still lent comes back.
 *
 * The XDP program.  Six instructions, built here and loaded with libbpf:
 * redirect to the XSK of the frame's RX queue (an XSKMAP), XDP_PASS for
 * everything else (queues without a socket, and every frame once the sockets
 * are gone).  libxdp's xsk API could load its own default program, but it
 * finds "its" program by name, so it cannot tell ours from another AF_XDP
 * application's, and its dispatcher needs a mounted bpffs; we keep the XSK
 * rings and socket plumbing of libxdp and own the program.  It carries an
 * owner map (manager name, pid, start time) and is attached through a BPF
 * link, which the kernel detaches when the manager's process ends, crash or
 * not.  Where links are missing (old kernels, or ONVM_XDP_NETLINK=1) it is
 * attached by netlink; then a crashed manager leaves it behind (harmless: it
 * passes everything once its sockets are gone), and the next manager that
 * finds it replaces it and says so.  A program of anyone else is left alone
 * and the port refused.  On close ours is detached (only if it is still
 * ours), and the interface is as it was: without an XDP program.
 */
#define _GNU_SOURCE
#include "onvm_port.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/magic.h>
#include <net/if.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <xdp/xsk.h>

#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef XDP_MAX_TX_SKB_BUDGET
#define XDP_MAX_TX_SKB_BUDGET 9 /* Linux 6.17: frames one sendto() may transmit in copy mode */
#endif

#define UMEM_RING 16384u             /* fill and completion ring entries (UMEM-wide) */
#define FILL_BATCH 32u               /* refill when this many are missing */
#define POOL_RETRY_NS 100000ull      /* the pool was empty: come back this soon */
#define STATS_EVERY_NS 100000000ull  /* read the kernel's drop counters 10 times a second */
#define KICK_TRIES 64                /* sendto() calls per burst at most (32+ frames each) */

static const char OWNER_TAG[8] = "pyonvm1";

/* The owner map's one value: who attached the program. */
struct xdp_owner {
    char tag[8];
    int32_t pid;
    uint32_t layout;
    uint64_t start; /* the process's start time (clock ticks after boot): pid reuse */
    char manager[40];
};

/* ---- the UMEM, shared by the afxdp ports of one region ---------------------- */

struct umem {
    struct umem *next;
    struct onvm_region *r;
    struct xsk_umem *xu;
    struct xsk_ring_prod fill0; /* the rings libxdp made on the UMEM's own socket; */
    struct xsk_ring_cons comp0; /* the first socket takes them over */
    int sockets;                /* sockets bound so far */
    int refs;                   /* ports using it */
    int zc;                     /* the first socket was bound zero-copy */
    int owner_port;             /* the port whose first socket holds the UMEM */
    uint32_t ports;             /* bit p: port p lent slots through it */
};

static pthread_mutex_t umem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct umem *umems;

struct axq {
    struct xsk_socket *xsk;
    int fd;
    struct xsk_ring_cons rx;
    struct xsk_ring_prod fill;
    struct xsk_ring_cons comp;
    struct xsk_ring_prod tx; /* queue 0 only */
    uint32_t rx_lent;        /* slots in the fill ring and the RX ring */
    uint64_t stats_ns;
    uint64_t seen_drops, seen_invalid; /* the kernel's counters, as last read */
};

struct axp {
    struct umem *u;
    int ifindex;
    unsigned nq, fill_target, tx_budget;
    int prog_fd, map_fd, owner_fd, link_fd; /* link_fd < 0: attached by netlink */
    uint32_t xdp_flags;                     /* the attach mode */
    int promisc_fd;
    struct axq q[ONVM_PORT_MAX_QUEUES];
};

static int quiet_print(enum libbpf_print_level level, const char *fmt, va_list ap) {
    (void)level, (void)fmt, (void)ap;
    return 0; /* errors reach the user as the port's message, not as libbpf's */
}

static uint64_t proc_start(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the name may hold spaces and parentheses */
    unsigned long long start = 0;
    /* after ") ": state is field 3, starttime field 22 */
    if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                    &start) == 1)
        return start;
    return 0;
}

static int has_ipc_lock(void) {
    struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0)
        return 0;
    return (d[CAP_TO_INDEX(CAP_IPC_LOCK)].effective & CAP_TO_MASK(CAP_IPC_LOCK)) != 0;
}

/* Registering the UMEM pins its pages, charged to RLIMIT_MEMLOCK unless the
 * process has CAP_IPC_LOCK.  Raise the soft limit as far as the hard one lets. */
static void raise_memlock(uint64_t need) {
    struct rlimit rl;
    if (has_ipc_lock() || getrlimit(RLIMIT_MEMLOCK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    rlim_t want = rl.rlim_cur + need;
    if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
        want = rl.rlim_max;
    if (want > rl.rlim_cur) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_MEMLOCK, &rl);
    }
}

static void memlock_error(char *err, size_t len, const char *ifname, uint64_t need) {
    struct rlimit rl = {0, 0};
    getrlimit(RLIMIT_MEMLOCK, &rl);
    char lim[64];
    if (rl.rlim_max == RLIM_INFINITY)
        snprintf(lim, sizeof lim, "%llu KiB", (unsigned long long)rl.rlim_cur >> 10);
    else
        snprintf(lim, sizeof lim, "%llu KiB (hard limit %llu KiB)", (unsigned long long)rl.rlim_cur >> 10,
                 (unsigned long long)rl.rlim_max >> 10);
    snprintf(err, len,
             "afxdp %s: registering the pool as UMEM locks %llu KiB of memory; the locked-memory "
             "limit is %s: raise it (ulimit -l, systemd LimitMEMLOCK=) or give the manager "
             "CAP_IPC_LOCK",
             ifname, (unsigned long long)need >> 10, lim);
}

/* The region's UMEM, registered on first use.  Called under umem_lock. */
static struct umem *umem_get(struct onvm_region *r, const char *ifname, char *err, size_t errlen) {
    for (struct umem *u = umems; u; u = u->next)
        if (u->r == r) {
            u->refs++;
            return u;
        }
    struct umem *u = calloc(1, sizeof *u);
    if (!u) {
        snprintf(err, errlen, "afxdp %s: out of memory", ifname);
        return NULL;
    }
    /* The kernel pins a UMEM's pages for good; it does that for tmpfs and
     * hugetlbfs pages, not for a file on a disk. */
    struct statfs sf;
    if (fstatfs(r->fd, &sf) == 0 && sf.f_type != TMPFS_MAGIC && sf.f_type != HUGETLBFS_MAGIC) {
        snprintf(err, errlen,
                 "afxdp %s: the region is a file on a disk file system, whose pages cannot be a UMEM: "
                 "put it in tmpfs or hugetlbfs (ONVM_REGION_DIR=/dev/shm)",
                 ifname);
        free(u);
        return NULL;
    }
    uint64_t size = (uint64_t)r->pool_count * r->slot_size;
    struct xsk_umem_config cfg = {.fill_size = UMEM_RING, .comp_size = UMEM_RING,
                                  .frame_size = r->slot_size, .frame_headroom = ONVM_HEADROOM};
    raise_memlock(size);
    int rc = xsk_umem__create(&u->xu, r->slots, size, &u->fill0, &u->comp0, &cfg);
    if (rc == -ENOBUFS || rc == -ENOMEM) {
        memlock_error(err, errlen, ifname, size);
        free(u);
        return NULL;
    }
    if (rc != 0) {
        snprintf(err, errlen, "afxdp %s: cannot register the pool as UMEM: %s%s", ifname, strerror(-rc),
                 rc == -EPERM ? " (needs CAP_NET_RAW)" : "");
        free(u);
        return NULL;
    }
    u->r = r;
    u->refs = 1;
    u->owner_port = -1;
    u->next = umems;
    umems = u;
    return u;
}

/* A port is done with the UMEM; the last one deletes it (its sockets are
 * closed already, so the kernel holds no slot any more) and takes back every
 * slot still lent.  Called under umem_lock. */
static void umem_put(struct umem *u) {
    if (--u->refs > 0)
        return;
    xsk_umem__delete(u->xu);
    for (unsigned p = 0; p < ONVM_MAX_PORTS; p++)
        if (u->ports & (1u << p))
            onvm_port_reclaim(u->r, p);
    for (struct umem **pp = &umems; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            break;
        }
    free(u);
}

/* ---- the XDP program --------------------------------------------------------- */

#define INSN(c, d, s, o, i) ((struct bpf_insn){.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)})

static int load_program(int map_fd, int owner_fd) {
    struct bpf_insn prog[] = {
        /* r2 = ctx->rx_queue_index */
        INSN(BPF_LDX | BPF_MEM | BPF_W, BPF_REG_2, BPF_REG_1, offsetof(struct xdp_md, rx_queue_index), 0),
        /* r1 = the XSKMAP (a 64-bit immediate: two instructions) */
        INSN(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        INSN(0, 0, 0, 0, 0),
        /* r3 = XDP_PASS: what bpf_redirect_map returns when the queue has no socket */
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_3, 0, 0, XDP_PASS),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_redirect_map),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_XDP);
    int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, "onvm_xsk", "Dual MIT/GPL", prog,
                           sizeof prog / sizeof prog[0], &opts);
    if (fd < 0)
        return fd;
    /* The owner map rides with the program without being used by it. */
    int rc = bpf_prog_bind_map(fd, owner_fd, NULL);
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Who attached program fd: 1 and *o when it is a pyonvm program, 0 when not. */
static int program_owner(int fd, struct xdp_owner *o, char *name, size_t namelen) {
    struct bpf_prog_info info = {0};
    uint32_t len = sizeof info, ids[16];
    if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
        return 0;
    snprintf(name, namelen, "%s", info.name);
    uint32_t nmaps = info.nr_map_ids < 16 ? info.nr_map_ids : 16;
    memset(&info, 0, sizeof info);
    info.nr_map_ids = nmaps;
    info.map_ids = (uint64_t)(uintptr_t)ids;
    len = sizeof info;
    if (strcmp(name, "onvm_xsk") != 0 || bpf_obj_get_info_by_fd(fd, &info, &len) != 0)
        return 0;
    for (uint32_t i = 0; i < nmaps && i < info.nr_map_ids; i++) {
        int mfd = bpf_map_get_fd_by_id(ids[i]);
        if (mfd < 0)
            continue;
        struct bpf_map_info mi = {0};
        uint32_t mlen = sizeof mi, key = 0;
        int ok = bpf_obj_get_info_by_fd(mfd, &mi, &mlen) == 0 && strcmp(mi.name, "onvm_owner") == 0 &&
                 mi.value_size == sizeof *o && bpf_map_lookup_elem(mfd, &key, o) == 0 &&
                 memcmp(o->tag, OWNER_TAG, sizeof OWNER_TAG) == 0;
        close(mfd);
        if (ok) {
            o->manager[sizeof o->manager - 1] = 0;
            return 1;
        }
    }
    return 0;
}

static int owner_alive(const struct xdp_owner *o) {
    if (o->pid <= 0 || (kill(o->pid, 0) != 0 && errno == ESRCH))
        return 0;
    return proc_start(o->pid) == o->start;
}

/* What is on the interface now: 0 nothing; 1 a stale program of ours, whose fd
 * and mode are returned; -errno (with err set) when the port must be refused. */
static int check_interface(int ifindex, const char *ifname, int *stale_fd, uint32_t *stale_mode,
                           char *notice, size_t nlen, char *err, size_t errlen) {
    LIBBPF_OPTS(bpf_xdp_query_opts, q);
    if (bpf_xdp_query(ifindex, 0, &q) != 0)
        return 0; /* nothing to learn: attaching will tell */
    uint32_t id = q.drv_prog_id ? q.drv_prog_id : q.skb_prog_id ? q.skb_prog_id : q.hw_prog_id;
    if (!id)
        return 0;
    uint32_t mode = q.drv_prog_id ? XDP_FLAGS_DRV_MODE : q.skb_prog_id ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_HW_MODE;
    int fd = bpf_prog_get_fd_by_id(id);
    struct xdp_owner o;
    char name[BPF_OBJ_NAME_LEN + 1] = "?";
    if (fd < 0) {
        snprintf(err, errlen, "afxdp %s: an XDP program (id %u) is attached and cannot be inspected: %s",
                 ifname, id, strerror(errno));
        return -EBUSY;
    }
    if (!program_owner(fd, &o, name, sizeof name)) {
        close(fd);
        snprintf(err, errlen,
                 "afxdp %s: another application's XDP program '%s' (id %u) is attached; it is left "
                 "alone: detach it (ip link set dev %s xdp off) or use afpacket:%s",
                 ifname, name, id, ifname, ifname);
        return -EBUSY;
    }
    if (owner_alive(&o)) {
        close(fd);
        if (o.pid == getpid())
            snprintf(err, errlen, "afxdp %s: the interface is a port of this manager already", ifname);
        else
            snprintf(err, errlen, "afxdp %s: in use by manager '%s' (pid %d), which is running", ifname,
                     o.manager, o.pid);
        return -EBUSY;
    }
    *stale_fd = fd;
    *stale_mode = mode;
    snprintf(notice, nlen, "replaced the XDP program (id %u) left on %s by manager '%s' (pid %d, gone)", id,
             ifname, o.manager, o.pid);
    return 1;
}

/* One try in one mode, through a BPF link or by netlink. */
static int attach_mode(struct axp *a, uint32_t mode, int use_link) {
    if (use_link) {
        LIBBPF_OPTS(bpf_link_create_opts, lo, .flags = mode);
        int fd = bpf_link_create(a->prog_fd, a->ifindex, BPF_XDP, &lo);
        if (fd < 0)
            return fd;
        a->link_fd = fd;
    } else {
        int rc = bpf_xdp_attach(a->ifindex, a->prog_fd, mode | XDP_FLAGS_UPDATE_IF_NOEXIST, NULL);
        if (rc != 0)
            return rc;
    }
    a->xdp_flags = mode;
    return 0;
}

/* Attach the program in the wanted mode (auto: native, else generic). */
static int attach(struct axp *a, int want_flags, int stale_fd, uint32_t stale_mode) {
    if (stale_fd >= 0) {
        /* Remove exactly the stale program: if someone replaced it meanwhile, this fails. */
        LIBBPF_OPTS(bpf_xdp_attach_opts, o, .old_prog_fd = stale_fd);
        int rc = bpf_xdp_detach(a->ifindex, stale_mode | XDP_FLAGS_REPLACE, &o);
        if (rc != 0)
            return rc;
    }
    const char *env = getenv("ONVM_XDP_NETLINK");
    int use_link = !(env && env[0] == '1');
    uint32_t modes[2] = {XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};
    unsigned nmodes = 2;
    if (want_flags) {
        modes[0] = (uint32_t)want_flags;
        nmodes = 1;
    }
    int rc = -EOPNOTSUPP;
    for (unsigned i = 0; i < nmodes; i++) {
        rc = attach_mode(a, modes[i], use_link);
        if (rc == -EINVAL && use_link) /* a kernel without XDP links (before 5.9) */
            rc = attach_mode(a, modes[i], use_link = 0);
        if (rc == 0 || (rc != -EOPNOTSUPP && rc != -EINVAL))
            break;
    }
    return rc;
}

static void detach(struct axp *a) {
    if (a->link_fd >= 0) {
        close(a->link_fd); /* the kernel detaches a link's program when its last fd goes */
        a->link_fd = -1;
    } else if (a->xdp_flags && a->prog_fd >= 0) {
        LIBBPF_OPTS(bpf_xdp_attach_opts, o, .old_prog_fd = a->prog_fd);
        bpf_xdp_detach(a->ifindex, a->xdp_flags | XDP_FLAGS_REPLACE, &o); /* only if still ours */
    }
    a->xdp_flags = 0;
}

/* ---- RX ------------------------------------------------------------------------- */

static inline uint64_t slot_addr(const struct onvm_region *r, uint32_t s) {
    return (uint64_t)s * r->slot_size;
}

/* Tops the queue's fill ring up to the target from the pool's free list. */
static void refill(struct onvm_port *p, struct axp *a, struct axq *q, struct onvm_region *r,
                   struct onvm_port_stats *st, uint64_t now, uint64_t *next_due) {
    uint32_t want = a->fill_target - q->rx_lent;
    if (want < FILL_BATCH && q->rx_lent)
        return;
    while (want) {
        uint32_t buf[256], idx, n = want < 256 ? want : 256;
        uint32_t got = onvm_port_lend_alloc(r, st, (unsigned)p->id, buf, n);
        if (got == 0) {
            if (q->rx_lent < FILL_BATCH) {
                /* The fill ring runs dry (the kernel drops what arrives): look again soon. */
                __atomic_fetch_add(&p->no_slot, 1, __ATOMIC_RELAXED);
                if (next_due && now + POOL_RETRY_NS < *next_due)
                    *next_due = now + POOL_RETRY_NS;
            }
            return;
        }
        /* The fill ring has UMEM_RING >= fill_target >= rx_lent entries: this fits. */
        uint32_t room = xsk_ring_prod__reserve(&q->fill, got, &idx);
        for (uint32_t i = 0; i < room; i++)
            *xsk_ring_prod__fill_addr(&q->fill, idx + i) = slot_addr(r, buf[i]);
        xsk_ring_prod__submit(&q->fill, room);
        q->rx_lent += room;
        if (room < got) {
            onvm_port_took_back(r, st, buf + room, got - room);
            onvm_pool_free_burst(r, buf + room, got - room);
            return;
        }
        want -= got;
    }
}

/* Kernel drop counters of a queue, folded into the calling worker's row. */
static void read_stats(struct axq *q, struct onvm_port_stats *st) {
    struct xdp_statistics ks;
    socklen_t len = sizeof ks;
    if (getsockopt(q->fd, SOL_XDP, XDP_STATISTICS, &ks, &len) != 0)
        return;
    uint64_t drops = ks.rx_dropped + (len >= sizeof ks ? ks.rx_ring_full : 0);
    uint64_t invalid = ks.rx_invalid_descs + ks.tx_invalid_descs;
    st->drops[ONVM_DROP_KERNEL] += drops - q->seen_drops;
    st->drops[ONVM_DROP_PORT] += invalid - q->seen_invalid;
    q->seen_drops = drops;
    q->seen_invalid = invalid;
}

static void reap_completions(struct onvm_port *p, struct axq *q, struct onvm_region *r,
                             struct onvm_port_stats *st);

static uint32_t axp_rxq(struct onvm_port *p, unsigned qi, struct onvm_region *r, uint32_t *slots,
                        uint32_t n, uint64_t now, uint64_t *next_due, struct onvm_port_stats *st) {
    struct axp *a = p->drv;
    struct axq *q = &a->q[qi];
    if (now - q->stats_ns > STATS_EVERY_NS) {
        q->stats_ns = now;
        read_stats(q, st);
    }
    refill(p, a, q, r, st, now, next_due);
    uint32_t idx, got = xsk_ring_cons__peek(&q->rx, n, &idx), k = 0, bad = 0;
    uint16_t stamp = ONVM_OWNER_PORT(p->id);
    /* The kernel wrote these frames on another CPU: start fetching their first
     * line and their meta for the whole burst before touching any of them. */
    for (uint32_t i = 0; i < got; i++) {
        uint64_t addr = xsk_ring_cons__rx_desc(&q->rx, idx + i)->addr;
        if (addr < (uint64_t)r->pool_count * r->slot_size) {
            __builtin_prefetch(r->slots + addr);
            __builtin_prefetch(&r->meta[addr / r->slot_size], 1);
        }
    }
    for (uint32_t i = 0; i < got; i++) {
        const struct xdp_desc *d = xsk_ring_cons__rx_desc(&q->rx, idx + i);
        uint64_t s = d->addr / r->slot_size;
        uint32_t off = (uint32_t)(d->addr - s * r->slot_size);
        /* The kernel names slots we lent it; a slot it never got would wreck the pool. */
        if (s >= r->pool_count || atomic_load_explicit(&r->meta[s].owner, ONVM_RELAXED) != stamp ||
            off + d->len > r->slot_size || d->len == 0) {
            bad++;
            continue;
        }
        struct onvm_meta *m = &r->meta[s];
        onvm_slot_reset(r, (uint32_t)s);
        m->data_off = off;
        m->len = d->len;
        m->rx_ns = now;
        m->in_port = (uint16_t)p->id;
        slots[k++] = (uint32_t)s;
    }
    xsk_ring_cons__release(&q->rx, got);
    q->rx_lent -= got;
    onvm_port_took_back(r, st, slots, k);
    if (bad)
        st->drops[ONVM_DROP_PORT] += bad;
    /* A zero-copy driver that ran out of fill buffers waits for a kick. */
    if (xsk_ring_prod__needs_wakeup(&q->fill) && a->u->zc)
        recvfrom(q->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    /* Completions of queue 0's TX come back here too when TX is quiet. */
    if (qi == 0 && !got && pthread_mutex_trylock(&p->tx_lock) == 0) {
        reap_completions(p, q, r, st);
        pthread_mutex_unlock(&p->tx_lock);
    }
    return k;
}

/* ---- TX (under the port's TX lock) ---------------------------------------------- */

static void reap_completions(struct onvm_port *p, struct axq *q, struct onvm_region *r,
                             struct onvm_port_stats *st) {
    uint32_t buf[256], idx, n;
    while ((n = xsk_ring_cons__peek(&q->comp, 256, &idx)) > 0) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t s = *xsk_ring_cons__comp_addr(&q->comp, idx + i) / r->slot_size;
            if (s < r->pool_count &&
                atomic_load_explicit(&r->meta[s].owner, ONVM_RELAXED) == ONVM_OWNER_PORT(p->id))
                buf[k++] = (uint32_t)s;
        }
        xsk_ring_cons__release(&q->comp, n);
        onvm_port_took_back(r, st, buf, k);
        onvm_pool_free_burst(r, buf, k);
    }
}

/* Makes the kernel send what the TX ring holds (copy mode sends inside sendto()). */
static void kick_tx(struct onvm_port *p, struct axq *q, struct onvm_region *r, struct onvm_port_stats *st) {
    for (int i = 0; i < KICK_TRIES && xsk_ring_prod__needs_wakeup(&q->tx); i++) {
        /* this acquire load pairs with the kernel's release of the TX consumer index */
        if (__atomic_load_n(q->tx.consumer, __ATOMIC_ACQUIRE) == *q->tx.producer)
            return;
        if (sendto(q->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0)
            continue;
        if (errno == EAGAIN || errno == EBUSY || errno == ENOBUFS) {
            reap_completions(p, q, r, st); /* a full completion ring stops the kernel */
            continue;
        }
        if (errno != EINTR) {
            if (!p->error[0])
                snprintf(p->error, sizeof p->error, "afxdp %.160s: send failed: %s", p->path, strerror(errno));
            return;
        }
    }
}

static uint32_t axp_tx(struct onvm_port *p, struct onvm_region *r, const uint32_t *slots, uint32_t n,
                       uint64_t *bytes, struct onvm_port_stats *st) {
    struct axp *a = p->drv;
    struct axq *q = &a->q[0];
    reap_completions(p, q, r, st);
    uint32_t good[ONVM_BURST_MAX], drop[ONVM_BURST_MAX], ng = 0, nd = 0;
    uint64_t b = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct onvm_meta *m = &r->meta[slots[i]];
        if (m->len == 0 || m->data_off + m->len > r->slot_size)
            drop[nd++] = slots[i];
        else
            good[ng++] = slots[i];
    }
    uint32_t idx, room = xsk_ring_prod__reserve(&q->tx, ng, &idx);
    for (uint32_t i = 0; i < room; i++) {
        const struct onvm_meta *m = &r->meta[good[i]];
        struct xdp_desc *d = xsk_ring_prod__tx_desc(&q->tx, idx + i);
        d->addr = slot_addr(r, good[i]) + m->data_off;
        d->len = m->len;
        d->options = 0;
        b += m->len;
    }
    /* lent before the kernel can see them: completion may come at once */
    onvm_port_lend(r, st, (unsigned)p->id, good, room);
    xsk_ring_prod__submit(&q->tx, room);
    for (uint32_t i = room; i < ng; i++) /* the TX ring is full: the device is behind */
        drop[nd++] = good[i];
    onvm_pool_free_burst(r, drop, nd);
    kick_tx(p, q, r, st);
    *bytes = b;
    return room;
}

/* ---- open and close ------------------------------------------------------------ */

static void axp_close(struct onvm_port *p) {
    struct axp *a = p->drv;
    if (!a)
        return;
    detach(a); /* first: no frame is redirected to a socket that is going */
    for (unsigned i = 0; i < a->nq; i++)
        if (a->q[i].xsk)
            xsk_socket__delete(a->q[i].xsk);
    int fds[] = {a->prog_fd, a->map_fd, a->owner_fd};
    for (unsigned i = 0; i < sizeof fds / sizeof fds[0]; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (a->promisc_fd >= 0)
        close(a->promisc_fd); /* the kernel drops the promiscuous mode it held */
    if (a->u) {
        pthread_mutex_lock(&umem_lock);
        umem_put(a->u);
        pthread_mutex_unlock(&umem_lock);
    }
    free(a);
    p->drv = NULL;
}

static unsigned rx_queues(const char *ifname) {
    char path[64];
    snprintf(path, sizeof path, "/sys/class/net/%s/queues", ifname);
    DIR *d = opendir(path);
    unsigned n = 0;
    if (!d)
        return 1;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, "rx-", 3) == 0;
    closedir(d);
    return n ? n : 1;
}

static int open_sockets(struct onvm_port *p, struct axp *a, const struct onvm_afxdp_conf *c,
                        const char **step) {
    struct umem *u = a->u;
    for (unsigned i = 0; i < a->nq; i++) {
        struct axq *q = &a->q[i];
        struct xsk_socket_config sc = {.rx_size = c->ring, .tx_size = c->ring,
                                       .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD};
        if (u->sockets == 0) /* the first socket sets the UMEM's mode; the others inherit it */
            sc.bind_flags = XDP_USE_NEED_WAKEUP | (c->mode == ONVM_AFXDP_ZC       ? XDP_ZEROCOPY
                                                   : c->mode == ONVM_AFXDP_AUTO ? 0
                                                                                : XDP_COPY);
        *step = "socket";
        int rc = xsk_socket__create_shared(&q->xsk, c->ifname, i, u->xu, &q->rx, i == 0 ? &q->tx : NULL,
                                           &q->fill, &q->comp, &sc);
        if (rc != 0)
            return rc;
        q->fd = xsk_socket__fd(q->xsk);
        if (u->sockets++ == 0) {
            struct xdp_options opt = {0};
            socklen_t len = sizeof opt;
            u->zc = getsockopt(q->fd, SOL_XDP, XDP_OPTIONS, &opt, &len) == 0 &&
                    (opt.flags & XDP_OPTIONS_ZEROCOPY);
            u->owner_port = p->id;
        }
        if (i == 0 && !u->zc) {
            /* more frames per sendto() where the kernel allows it (6.17+) */
            unsigned budget = c->ring < 256 ? c->ring : 256;
            setsockopt(q->fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &budget, sizeof budget);
        }
        *step = "XSKMAP";
        uint32_t key = i;
        if (bpf_map_update_elem(a->map_fd, &key, &q->fd, 0) != 0)
            return -errno;
        p->rx_fd[i] = q->fd;
    }
    return 0;
}

struct onvm_port *onvm_port_open_afxdp(int id, struct onvm_region *r, const struct onvm_afxdp_conf *c,
                                       char *err, size_t errlen) {
    const char *ifname = c->ifname;
    unsigned nq = c->queues ? c->queues : 1;
    if (nq > ONVM_PORT_MAX_QUEUES || c->ring < 64 || c->ring > 16384 || (c->ring & (c->ring - 1)) ||
        c->fill > c->ring || c->mode > ONVM_AFXDP_SKB) {
        snprintf(err, errlen, "afxdp %s: queues 1..%d, ring a power of two 64..%u, fill 0..ring", ifname,
                 ONVM_PORT_MAX_QUEUES, UMEM_RING);
        return NULL;
    }
    if (r->slot_size != 2048 && r->slot_size != 4096) {
        snprintf(err, errlen,
                 "afxdp %s: the pool's slots are the UMEM's chunks, which must be 2048 or 4096 bytes: "
                 "start the manager with --slot-size 2048 or 4096 (not %u)",
                 ifname, r->slot_size);
        return NULL;
    }
    if ((uintptr_t)r->slots % 4096) {
        snprintf(err, errlen, "afxdp %s: the slot area is not page aligned", ifname);
        return NULL;
    }
    unsigned ifindex = if_nametoindex(ifname);
    if (ifindex == 0) {
        snprintf(err, errlen, "afxdp %s: no such interface", ifname);
        return NULL;
    }
    unsigned have = rx_queues(ifname);
    if (nq > have) {
        snprintf(err, errlen, "afxdp %s: %u queues asked for, the interface has %u", ifname, nq, have);
        return NULL;
    }
    libbpf_set_print(quiet_print);
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_AFXDP);
    struct axp *a = calloc(1, sizeof *a);
    if (!p || !a) {
        free(a);
        onvm_port_close(p);
        snprintf(err, errlen, "afxdp %s: out of memory", ifname);
        return NULL;
    }
    snprintf(p->path, sizeof p->path, "%s", ifname);
    p->drv = a;
    p->close = axp_close;
    a->ifindex = (int)ifindex;
    a->nq = nq;
    a->prog_fd = a->map_fd = a->owner_fd = a->link_fd = a->promisc_fd = -1;
    for (unsigned i = 0; i < ONVM_PORT_MAX_QUEUES; i++)
        a->q[i].fd = -1;

    int stale_fd = -1;
    uint32_t stale_mode = 0;
    const char *step = "XDP program", *hint = "";
    int rc = check_interface(a->ifindex, ifname, &stale_fd, &stale_mode, p->notice, sizeof p->notice, err,
                             errlen);
    if (rc < 0)
        goto fail_msg;
    /* The program, its XSKMAP (a slot per queue of the interface) and its owner. */
    a->map_fd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "onvm_xsks", 4, 4, have, NULL);
    a->owner_fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "onvm_owner", 4, sizeof(struct xdp_owner), 1, NULL);
    if (a->map_fd < 0 || a->owner_fd < 0) {
        rc = a->map_fd < 0 ? a->map_fd : a->owner_fd;
        goto fail;
    }
    struct xdp_owner o = {.pid = getpid(), .layout = ONVM_LAYOUT_VERSION, .start = proc_start(getpid())};
    memcpy(o.tag, OWNER_TAG, sizeof o.tag);
    snprintf(o.manager, sizeof o.manager, "%s", r->hdr->name);
    uint32_t key = 0;
    if ((rc = bpf_map_update_elem(a->owner_fd, &key, &o, 0)) != 0 ||
        (rc = a->prog_fd = load_program(a->map_fd, a->owner_fd)) < 0)
        goto fail;

    if (c->promisc) {
        /* Held through an AF_PACKET membership: the kernel undoes it when the socket
         * closes, crash or not. */
        step = "promiscuous mode";
        a->promisc_fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
        struct packet_mreq mr = {.mr_ifindex = a->ifindex, .mr_type = PACKET_MR_PROMISC};
        if (a->promisc_fd < 0 ||
            setsockopt(a->promisc_fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) != 0) {
            rc = -errno;
            goto fail;
        }
    }
    /* The program goes first: until the sockets are in its map it passes every frame. */
    step = "attaching the XDP program";
    uint32_t want = c->mode == ONVM_AFXDP_SKB ? XDP_FLAGS_SKB_MODE
                    : c->mode == ONVM_AFXDP_AUTO ? 0
                                                 : XDP_FLAGS_DRV_MODE;
    rc = attach(a, (int)want, stale_fd, stale_mode);
    if (rc != 0) {
        if (rc == -EOPNOTSUPP && want == XDP_FLAGS_DRV_MODE)
            hint = " (the driver has no native XDP: use mode=skb)";
        else if (rc == -EBUSY || rc == -EEXIST)
            hint = " (another XDP program was attached meanwhile)";
        goto fail;
    }
    /* The UMEM and the sockets. */
    pthread_mutex_lock(&umem_lock);
    a->u = umem_get(r, ifname, err, errlen);
    if (!a->u) {
        pthread_mutex_unlock(&umem_lock);
        goto fail_msg;
    }
    int clash = a->u->sockets && ((c->mode == ONVM_AFXDP_ZC && !a->u->zc) ||
                                  ((c->mode == ONVM_AFXDP_COPY || c->mode == ONVM_AFXDP_SKB) && a->u->zc));
    if (clash) {
        snprintf(err, errlen,
                 "afxdp %s: mode %s, but the pool's UMEM runs %s since port %d opened it (the afxdp "
                 "ports of a manager share one UMEM: give them the same mode)",
                 ifname, c->mode == ONVM_AFXDP_ZC ? "zc" : "copy", a->u->zc ? "zero-copy" : "in copy mode",
                 a->u->owner_port);
        pthread_mutex_unlock(&umem_lock);
        goto fail_msg;
    }
    a->u->ports |= 1u << id;
    rc = open_sockets(p, a, c, &step);
    int zc = a->u->zc;
    pthread_mutex_unlock(&umem_lock);
    if (rc != 0) {
        if (rc == -EOPNOTSUPP && c->mode == ONVM_AFXDP_ZC)
            hint = " (the driver offers no zero-copy: use mode=auto or mode=copy)";
        goto fail;
    }
    /* Enough slots in each fill ring to ride out a burst, not so many that a
     * port starves the pool; never more than the RX ring holds. */
    uint32_t fill = c->fill ? c->fill : r->pool_count / (4 * nq);
    if (fill > c->ring)
        fill = c->ring;
    if (fill < FILL_BATCH)
        fill = FILL_BATCH;
    a->fill_target = fill;

    if (stale_fd >= 0)
        close(stale_fd);
    snprintf(p->mode, sizeof p->mode, "%s", zc ? "zc" : a->xdp_flags == XDP_FLAGS_SKB_MODE ? "skb" : "copy");
    p->nrxq = nq;
    p->rxq = axp_rxq;
    p->tx = axp_tx;
    return p;

fail:
    if (rc == -EPERM && !hint[0])
        hint = " (needs CAP_NET_RAW, CAP_NET_ADMIN and CAP_BPF)";
    snprintf(err, errlen, "afxdp %s: %s: %s%s", ifname, step, strerror(-rc), hint);
fail_msg:
    if (stale_fd >= 0)
        close(stale_fd);
    onvm_port_close(p);
    return NULL;
}
