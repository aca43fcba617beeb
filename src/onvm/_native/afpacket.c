/* afpacket.c - the afpacket:IFNAME port: a Linux interface through AF_PACKET.
 *
 * RX: one socket per queue, each with a TPACKET_V3 ring mapped into the
 * manager.  The kernel fills blocks of the ring; we copy each frame once into
 * a pool slot (the ring belongs to the kernel socket, the slot to the region,
 * so this copy is the price of not owning the NIC) and hand the block back when
 * all its frames are taken.  With several RX workers the sockets join one
 * PACKET_FANOUT_HASH group: the kernel spreads flows over them (symmetric
 * hash, both directions of a flow on one queue) and RX worker i reads queue i.
 * Drops the kernel counts on a ring (PACKET_STATISTICS) show as the port's
 * "kernel" drops.
 *
 * TX: sendmmsg() of a whole burst on one socket bound to the interface, with
 * PACKET_QDISC_BYPASS (the frames go straight to the driver, like a NIC queue
 * would take them).  The iovecs point into the slots: no copy on our side.
 *
 * The interface is put in promiscuous mode (a bump in the wire forwards frames
 * that are not addressed to it); the kernel undoes that when the sockets close.
 */
#define _GNU_SOURCE
#include "onvm_port.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef PACKET_QDISC_BYPASS
#define PACKET_QDISC_BYPASS 20
#endif
#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define POOL_RETRY_NS 100000ull  /* the pool was empty: come back this soon */
#define STATS_EVERY_NS 100000000ull /* read the kernel's drop counter 10 times a second */

struct afp_queue {
    int fd;
    uint8_t *ring;
    size_t ring_len;
    unsigned block_size, blocks, cur;
    struct tpacket_block_desc *blk; /* block being read, NULL when none */
    uint32_t left;                  /* frames of blk not yet read */
    uint8_t *frame;                 /* next frame of blk */
    uint64_t stats_ns;
};

struct afp {
    int ifindex;
    int txfd;
    unsigned nq;
    struct afp_queue q[ONVM_PORT_MAX_QUEUES];
    struct mmsghdr msgs[ONVM_BURST_MAX];
    struct iovec iov[ONVM_BURST_MAX];
};

/* ---- checksum completion --------------------------------------------------- */

static uint32_t sum16(const uint8_t *p, uint32_t len, uint32_t s) {
    uint32_t i = 0;
    for (; i + 1 < len; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (i < len)
        s += (uint32_t)(p[i] << 8);
    return s;
}

static uint16_t fold(uint32_t s) {
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

int onvm_fix_l4_csum(uint8_t *f, uint32_t len) {
    uint32_t off = 14;
    if (len < 14)
        return -1;
    uint16_t et = (uint16_t)(f[12] << 8 | f[13]);
    while ((et == 0x8100 || et == 0x88a8) && off + 4 <= len) {
        et = (uint16_t)(f[off + 2] << 8 | f[off + 3]);
        off += 4;
    }
    uint32_t s = 0, l4, l4len;
    uint8_t proto;
    if (et == 0x0800) {
        if (off + 20 > len)
            return -1;
        uint8_t *ip = f + off;
        uint32_t ihl = (ip[0] & 0x0fu) * 4u, tot = (uint32_t)(ip[2] << 8 | ip[3]);
        if (ihl < 20 || tot < ihl || off + tot > len || (ip[6] & 0x3f) || ip[7])
            return -1; /* a fragment carries no complete L4 segment */
        proto = ip[9];
        l4 = off + ihl;
        l4len = tot - ihl;
        s = sum16(ip + 12, 8, 0);
    } else if (et == 0x86dd) {
        if (off + 40 > len)
            return -1;
        uint8_t *ip = f + off;
        proto = ip[6];
        l4 = off + 40;
        l4len = (uint32_t)(ip[4] << 8 | ip[5]);
        if (l4 + l4len > len)
            return -1;
        s = sum16(ip + 8, 32, 0);
    } else {
        return -1;
    }
    uint32_t at;
    if (proto == 6 && l4len >= 20)
        at = l4 + 16;
    else if (proto == 17 && l4len >= 8)
        at = l4 + 6;
    else
        return -1;
    s += proto + l4len;
    f[at] = f[at + 1] = 0;
    uint16_t c = fold(sum16(f + l4, l4len, s));
    if (proto == 17 && c == 0)
        c = 0xffff;
    f[at] = (uint8_t)(c >> 8);
    f[at + 1] = (uint8_t)c;
    return 0;
}

/* ---- RX -------------------------------------------------------------------- */

static void read_kernel_drops(struct afp_queue *q, struct onvm_port_stats *st) {
    struct tpacket_stats_v3 ks;
    socklen_t len = sizeof ks;
    /* each read returns the counts since the previous one */
    if (getsockopt(q->fd, SOL_PACKET, PACKET_STATISTICS, &ks, &len) == 0 && st)
        st->drops[ONVM_DROP_KERNEL] += ks.tp_drops;
}

/* Copies one frame into a slot; puts back a VLAN tag the kernel took off. */
static uint32_t frame_copy(uint8_t *dst, uint32_t room, const struct tpacket3_hdr *h) {
    const uint8_t *src = (const uint8_t *)h + h->tp_mac;
    uint32_t len = h->tp_snaplen;
    if (len < h->tp_len)
        return 0; /* cut by the ring: longer than a ring frame */
    if (h->tp_status & TP_STATUS_VLAN_VALID) {
        if (len + 4 > room || len < 12)
            return 0;
        uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->hv1.tp_vlan_tpid : 0x8100;
        memcpy(dst, src, 12);
        dst[12] = (uint8_t)(tpid >> 8);
        dst[13] = (uint8_t)tpid;
        dst[14] = (uint8_t)(h->hv1.tp_vlan_tci >> 8);
        dst[15] = (uint8_t)h->hv1.tp_vlan_tci;
        memcpy(dst + 16, src + 12, len - 12);
        len += 4;
    } else {
        if (len > room)
            return 0;
        memcpy(dst, src, len);
    }
    if (h->tp_status & TP_STATUS_CSUMNOTREADY)
        onvm_fix_l4_csum(dst, len);
    return len;
}

static void block_release(struct afp_queue *q) {
    /* this release store hands the block back; the kernel reads it before refilling */
    __atomic_store_n(&q->blk->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    q->blk = NULL;
    q->cur = (q->cur + 1) % q->blocks;
}

static uint32_t afp_rxq(struct onvm_port *p, unsigned qi, struct onvm_region *r, uint32_t *slots,
                        uint32_t n, uint64_t now, uint64_t *next_due, struct onvm_port_stats *st) {
    struct afp *a = p->drv;
    struct afp_queue *q = &a->q[qi];
    if (now - q->stats_ns > STATS_EVERY_NS) {
        q->stats_ns = now;
        read_kernel_drops(q, st);
    }
    uint32_t got = 0, room = onvm_slot_room(r), toobig = 0;
    while (got < n) {
        if (!q->blk) {
            struct tpacket_block_desc *b =
                (struct tpacket_block_desc *)(q->ring + (size_t)q->cur * q->block_size);
            /* this acquire load pairs with the kernel's release of a full block */
            if (!(__atomic_load_n(&b->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
                break;
            q->blk = b;
            q->left = b->hdr.bh1.num_pkts;
            q->frame = (uint8_t *)b + b->hdr.bh1.offset_to_first_pkt;
            if (q->left == 0) {
                block_release(q);
                continue;
            }
        }
        uint32_t want = n - got;
        if (want > q->left)
            want = q->left;
        uint32_t k = onvm_pool_alloc_burst(r, slots + got, want, ONVM_OWNER_MGR);
        if (k == 0) {
            /* The frames wait in the ring (the kernel drops what no longer fits,
             * at no cost to us); look again shortly rather than spin. */
            __atomic_fetch_add(&p->no_slot, 1, __ATOMIC_RELAXED); /* queues share it */
            if (next_due && now + POOL_RETRY_NS < *next_due)
                *next_due = now + POOL_RETRY_NS;
            break;
        }
        uint32_t used = 0;
        for (uint32_t i = 0; i < k; i++) {
            struct tpacket3_hdr *h = (struct tpacket3_hdr *)q->frame;
            q->frame += h->tp_next_offset;
            q->left--;
            uint32_t s = slots[got + used];
            onvm_slot_reset(r, s);
            uint32_t len = frame_copy(onvm_slot_data(r, s), room, h);
            if (len == 0) {
                toobig++;
                continue;
            }
            r->meta[s].len = len;
            r->meta[s].rx_ns = now;
            r->meta[s].in_port = (uint16_t)p->id;
            used++;
        }
        if (used < k)
            onvm_pool_free_burst(r, slots + got + used, k - used);
        got += used;
        if (q->left == 0)
            block_release(q);
    }
    if (toobig) {
        __atomic_fetch_add(&p->skipped, toobig, __ATOMIC_RELAXED);
        if (st)
            st->drops[ONVM_DROP_PORT] += toobig;
    }
    return got;
}

/* ---- TX -------------------------------------------------------------------- */

static uint32_t afp_tx(struct onvm_port *p, struct onvm_region *r, const uint32_t *slots, uint32_t n,
                       uint64_t *bytes, struct onvm_port_stats *st) {
    (void)st;
    struct afp *a = p->drv;
    uint64_t b = 0;
    for (uint32_t i = 0; i < n; i++) {
        a->iov[i].iov_base = onvm_slot_data(r, slots[i]);
        a->iov[i].iov_len = r->meta[slots[i]].len;
        memset(&a->msgs[i].msg_hdr, 0, sizeof a->msgs[i].msg_hdr);
        a->msgs[i].msg_hdr.msg_iov = &a->iov[i];
        a->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint32_t i = 0, sent = 0;
    int again = 0;
    while (i < n) {
        int rc = sendmmsg(a->txfd, a->msgs + i, n - i, MSG_DONTWAIT);
        if (rc > 0) {
            for (int k = 0; k < rc; k++)
                b += a->iov[i + (uint32_t)k].iov_len;
            i += (uint32_t)rc;
            sent += (uint32_t)rc;
            continue;
        }
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0 && (errno == EAGAIN || errno == ENOBUFS) && again++ < 4)
            continue; /* the device queue is full: try a little, then drop */
        if (rc < 0 && errno != EAGAIN && errno != ENOBUFS && !p->error[0])
            snprintf(p->error, sizeof p->error, "afpacket %.160s: send failed: %s", p->path,
                     strerror(errno));
        i++; /* this frame is lost; the rest may still go */
    }
    *bytes = b;
    onvm_pool_free_burst(r, slots, n);
    return sent;
}

/* ---- open and close ------------------------------------------------------- */

static void afp_close(struct onvm_port *p) {
    struct afp *a = p->drv;
    if (!a)
        return;
    for (unsigned i = 0; i < a->nq; i++) {
        if (a->q[i].ring)
            munmap(a->q[i].ring, a->q[i].ring_len);
        if (a->q[i].fd >= 0)
            close(a->q[i].fd);
    }
    if (a->txfd >= 0)
        close(a->txfd);
    free(a);
    p->drv = NULL;
}

static int open_queue(struct afp_queue *q, int ifindex, const struct onvm_afpacket_conf *c,
                      int fanout_id, int promisc) {
    q->fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (q->fd < 0)
        return -errno;
    int v = TPACKET_V3;
    if (setsockopt(q->fd, SOL_PACKET, PACKET_VERSION, &v, sizeof v) != 0)
        return -errno;
    v = 1; /* what we send ourselves is not input (kernels from 4.20; older ones ignore it) */
    setsockopt(q->fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &v, sizeof v);
    struct tpacket_req3 req = {0};
    req.tp_block_size = c->block_size;
    req.tp_block_nr = c->blocks;
    req.tp_frame_size = 2048;
    req.tp_frame_nr = c->block_size / 2048 * c->blocks;
    req.tp_retire_blk_tov = 1; /* ms: a partly filled block is handed over this soon */
    if (setsockopt(q->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) != 0)
        return -errno;
    q->block_size = c->block_size;
    q->blocks = c->blocks;
    q->ring_len = (size_t)c->block_size * c->blocks;
    void *m = mmap(NULL, q->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, q->fd, 0);
    if (m == MAP_FAILED) {
        q->ring = NULL;
        return -errno;
    }
    q->ring = m;
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = ifindex};
    if (bind(q->fd, (struct sockaddr *)&sll, sizeof sll) != 0)
        return -errno;
    if (promisc) {
        struct packet_mreq mr = {.mr_ifindex = ifindex, .mr_type = PACKET_MR_PROMISC};
        if (setsockopt(q->fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) != 0)
            return -errno;
    }
    if (fanout_id >= 0) {
        int f = fanout_id | (PACKET_FANOUT_HASH << 16);
        if (setsockopt(q->fd, SOL_PACKET, PACKET_FANOUT, &f, sizeof f) != 0)
            return -errno;
    }
    return 0;
}

struct onvm_port *onvm_port_open_afpacket(int id, const struct onvm_afpacket_conf *c, char *err,
                                          size_t errlen) {
    struct onvm_afpacket_conf conf = *c;
    if (conf.queues < 1)
        conf.queues = 1;
    if (conf.queues > ONVM_PORT_MAX_QUEUES) {
        snprintf(err, errlen, "afpacket %s: at most %d queues", c->ifname, ONVM_PORT_MAX_QUEUES);
        return NULL;
    }
    if (conf.block_size == 0)
        conf.block_size = 1u << 17;
    if (conf.blocks == 0)
        conf.blocks = 16;
    if (conf.block_size < 4096 || (conf.block_size & (conf.block_size - 1))) {
        snprintf(err, errlen, "afpacket %s: block size %u is not a power of two >= 4096", c->ifname,
                 conf.block_size);
        return NULL;
    }
    unsigned ifindex = if_nametoindex(c->ifname);
    if (ifindex == 0) {
        snprintf(err, errlen, "afpacket %s: no such interface", c->ifname);
        return NULL;
    }
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_AFPACKET);
    struct afp *a = calloc(1, sizeof *a);
    if (!p || !a) {
        free(a);
        onvm_port_close(p);
        snprintf(err, errlen, "afpacket %s: out of memory", c->ifname);
        return NULL;
    }
    snprintf(p->path, sizeof p->path, "%s", c->ifname);
    a->ifindex = (int)ifindex;
    a->txfd = -1;
    for (unsigned i = 0; i < ONVM_PORT_MAX_QUEUES; i++)
        a->q[i].fd = -1;
    p->drv = a;
    p->close = afp_close;
    int fanout = conf.queues > 1 ? (int)(((unsigned)getpid() * 31u + (unsigned)id) & 0xffffu) : -1;
    const char *step = "RX socket";
    int rc = 0;
    for (unsigned i = 0; i < conf.queues && rc == 0; i++) {
        a->nq = i + 1;
        rc = open_queue(&a->q[i], (int)ifindex, &conf, fanout, conf.promisc && i == 0);
        p->rx_fd[i] = a->q[i].fd;
    }
    if (rc == 0) {
        step = "TX socket";
        /* protocol 0: this socket receives nothing */
        a->txfd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
        struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)ifindex};
        int one = 1;
        if (a->txfd < 0 || bind(a->txfd, (struct sockaddr *)&sll, sizeof sll) != 0)
            rc = -errno;
        else if (conf.qdisc_bypass &&
                 setsockopt(a->txfd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) != 0)
            rc = -errno;
        if (rc == 0) {
            int sndbuf = 4 << 20;
            setsockopt(a->txfd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        }
    }
    if (rc != 0) {
        snprintf(err, errlen, "afpacket %s: %s: %s%s", c->ifname, step, strerror(-rc),
                 -rc == EPERM ? " (needs CAP_NET_RAW)" : "");
        onvm_port_close(p);
        return NULL;
    }
    p->nrxq = conf.queues;
    p->rxq = afp_rxq;
    p->tx = afp_tx;
    return p;
}
