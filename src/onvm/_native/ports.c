/* ports.c - the gen, null, pcap and pcap-out port drivers.
 *
 * RX drivers allocate slots from the pool (stamped as the manager's), fill
 * data, len, in_port and rx_ns; the RX worker parses them.  TX drivers take
 * ownership of every slot they are given and free them all.
 */
#define _GNU_SOURCE
#include "onvm_port.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct onvm_port *onvm_port_new(int id, int kind) {
    struct onvm_port *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->id = id;
    p->kind = kind;
    for (int q = 0; q < ONVM_PORT_MAX_QUEUES; q++)
        p->rx_fd[q] = -1;
    pthread_mutex_init(&p->tx_lock, NULL);
    return p;
}

/* A port its RX worker leaves unread (a congested chain): its schedule goes on
 * (onvm_pace.h), and a gen port whose count is all sent or missed is done. */
void onvm_port_held(struct onvm_port *p, uint64_t now) {
    onvm_port_pace(p, 0, now, NULL); /* moves what overflowed its queue to missed */
    if (p->kind == ONVM_PORT_GEN && p->gen.count && p->produced + p->pace.missed >= p->gen.count)
        atomic_store(&p->rx_done, 1);
}

int onvm_port_set_rate(struct onvm_port *p, uint64_t rate) {
    if (!p->pacable)
        return -1;
    atomic_store_explicit(&p->rate_want, rate, memory_order_relaxed);
    return 0;
}

/* The pool ran dry: note it and come back shortly instead of sleeping long. */
static void pool_empty(struct onvm_region *r, struct onvm_port *p, uint32_t lost, uint64_t now,
                       uint64_t *next_due) {
    (void)r;
    p->no_slot += lost;
    if (next_due && now + 20000 < *next_due)
        *next_due = now + 20000;
}

/* ---- null ---------------------------------------------------------------- */

static uint32_t null_tx(struct onvm_port *p, struct onvm_region *r, const uint32_t *slots,
                        uint32_t n, uint64_t *bytes, struct onvm_port_stats *st) {
    (void)p;
    (void)st;
    uint64_t b = 0;
    for (uint32_t i = 0; i < n; i++)
        b += r->meta[slots[i]].len;
    *bytes = b;
    onvm_pool_free_burst(r, slots, n);
    return n;
}

struct onvm_port *onvm_port_open_null(int id) {
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_NULL);
    if (p)
        p->tx = null_tx;
    return p;
}

/* ---- gen ----------------------------------------------------------------- */

static inline uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static void put32(uint8_t *p, uint32_t v) {
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static uint32_t csum_partial(const uint8_t *p, uint32_t len) {
    uint32_t s = 0;
    for (uint32_t i = 0; i + 1 < len; i += 2)
        s += (uint32_t)(p[i] << 8 | p[i + 1]);
    return s;
}

static uint16_t csum_fold(uint32_t s) {
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

/* Frame size (with FCS) of the next packet. */
static uint32_t gen_size(struct onvm_port *p) {
    uint64_t x = xorshift(&p->rng);
    uint32_t pick = (uint32_t)(x % 1000);
    uint32_t u = (uint32_t)(x >> 20);
    switch (p->gen.mix) {
    case ONVM_MIX_HTTP: /* 44.3% 64 B, 18.5% 65-1023 B, 37.2% 1024-1518 B */
        if (pick < 443)
            return 64;
        if (pick < 628)
            return 65 + u % (1023 - 65 + 1);
        return 1024 + u % (1518 - 1024 + 1);
    case ONVM_MIX_IMIX: /* 7:4:1 of 64, 570, 1518 */
        pick %= 12;
        return pick < 7 ? 64 : pick < 11 ? 570 : 1518;
    default:
        return p->gen.size;
    }
}

static uint32_t gen_rx(struct onvm_port *p, struct onvm_region *r, uint32_t *slots, uint32_t n,
                       uint64_t now, uint64_t *next_due) {
    if (p->gen.count) {
        uint64_t left = p->gen.count - p->produced - p->pace.missed;
        if (left == 0) {
            atomic_store(&p->rx_done, 1);
            return 0;
        }
        if (n > left)
            n = (uint32_t)left;
    }
    n = onvm_port_pace(p, n, now, next_due);
    if (n == 0)
        return 0;
    uint32_t got = onvm_pool_alloc_burst(r, slots, n, ONVM_OWNER_MGR);
    if (got < n)
        pool_empty(r, p, n - got, now, next_due);
    uint32_t room = onvm_slot_room(r);
    for (uint32_t i = 0; i < got; i++) {
        uint32_t s = slots[i];
        onvm_slot_reset(r, s);
        struct onvm_meta *m = &r->meta[s];
        uint8_t *d = onvm_slot_data(r, s);
        uint32_t flow = (uint32_t)(p->flow_next++ % p->gen.flows);
        uint32_t len = gen_size(p) - 4; /* the NIC would strip the FCS */
        if (len > room) /* refused at open; kept so a slot is never overrun */
            len = room;
        if (len < p->hdr_len)
            len = p->hdr_len;
        memcpy(d, p->templates + (size_t)flow * 64, p->hdr_len);
        memset(d + p->hdr_len, 0, len - p->hdr_len);
        uint16_t ip_len = (uint16_t)(len - 14);
        put16(d + 16, ip_len);
        put16(d + 24, csum_fold(p->tmpl_csum[flow] + ip_len));
        if (p->gen.proto == 17)
            put16(d + 38, (uint16_t)(ip_len - 20));
        m->len = len;
        m->rx_ns = now;
        m->in_port = (uint16_t)p->id;
    }
    p->produced += got;
    onvm_pace_sent(&p->pace, got);
    return got;
}

struct onvm_port *onvm_port_open_gen(int id, const struct onvm_gen_conf *c, char *err, size_t errlen) {
    if (c->flows == 0 || c->flows > (1u << 20)) {
        onvm_set_err(err, errlen, "gen: flows must be between 1 and 1048576 (got %u)", c->flows);
        return NULL;
    }
    if (c->mix == ONVM_MIX_FIXED && (c->size < 64 || c->size > 9018)) {
        onvm_set_err(err, errlen, "gen: size must be between 64 and 9018 (got %u)", c->size);
        return NULL;
    }
    if (c->proto != 17 && c->proto != 6) {
        onvm_set_err(err, errlen, "gen: proto must be udp or tcp (got %u)", c->proto);
        return NULL;
    }
    uint32_t largest = c->mix == ONVM_MIX_FIXED ? c->size : 1518; /* frame bytes with FCS */
    if (largest - 4 + ONVM_HEADROOM > c->slot_size) {
        onvm_set_err(err, errlen,
                "gen: a %u-byte frame (%u bytes without the FCS) does not fit a %u-byte slot, whose "
                "first %u bytes are headroom; start the manager with --slot-size %u or more",
                largest, largest - 4, c->slot_size, ONVM_HEADROOM,
                (largest - 4 + ONVM_HEADROOM + 63) / 64 * 64);
        return NULL;
    }
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_GEN);
    if (!p)
        return NULL;
    p->gen = *c;
    p->rx = gen_rx;
    p->pace.rate_pps = c->rate_pps;
    p->pace.cap = c->count;
    p->pace.lossy = 1;
    p->pacable = 1;
    p->rate_want = c->rate_pps;
    p->rng = c->seed ? c->seed : 0x9e3779b97f4a7c15ull;
    p->hdr_len = c->proto == 17 ? 42 : 54;
    p->templates = calloc(c->flows, 64);
    p->tmpl_csum = calloc(c->flows, sizeof(uint32_t));
    if (!p->templates || !p->tmpl_csum) {
        onvm_port_close(p);
        return NULL;
    }
    for (uint32_t f = 0; f < c->flows; f++) {
        uint8_t *t = p->templates + (size_t)f * 64;
        static const uint8_t dmac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x02};
        static const uint8_t smac[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01};
        memcpy(t, dmac, 6);
        memcpy(t + 6, smac, 6);
        put16(t + 12, 0x0800);
        uint8_t *ip = t + 14;
        ip[0] = 0x45;
        put16(ip + 4, (uint16_t)f);
        put16(ip + 6, 0x4000); /* don't fragment */
        ip[8] = 64;
        ip[9] = (uint8_t)c->proto;
        put32(ip + 12, c->src_ip + f);
        put32(ip + 16, c->dst_ip);
        /* checksum over the header without total length; added per packet */
        p->tmpl_csum[f] = csum_partial(ip, 20);
        uint8_t *l4 = ip + 20;
        put16(l4, (uint16_t)(c->sport + f % 50000));
        put16(l4 + 2, c->dport);
        if (c->proto == 6) {
            put32(l4 + 4, 1);
            l4[12] = 5 << 4;
            l4[13] = 0x10; /* ACK */
            put16(l4 + 14, 65535);
        }
    }
    return p;
}

/* ---- pcap in ------------------------------------------------------------- *
 *
 * The file is read with pread() into a buffer, record by record; it is never
 * mapped, so a file truncated or rewritten while the port reads it gives an
 * error (or damaged records), not a SIGBUS in the manager.  Classic pcap (either byte
 * order, microsecond or nanosecond stamps) and pcapng (section headers,
 * interface descriptions with their timestamp resolution, enhanced and simple
 * packet blocks; other blocks are skipped) are read.  Anything that does not
 * add up stops the port with an error naming the file and the byte offset of
 * the bad record, after the packets before it have been sent.
 *
 * Records that are valid but cannot be sent are skipped, counted by reason, and
 * the port goes on: an empty record or one shorter than its link header (runt),
 * a frame larger than a slot (oversize: not even read), a cooked or raw-IP
 * record with no EtherType to give it (no_ethertype).
 *
 * Link types: Ethernet is sent as it is.  Linux cooked captures (SLL, 113;
 * SLL2, 276) and raw IP (101; IPv4 228; IPv6 229) become Ethernet frames: the
 * cooked header, or nothing, is replaced by 14 bytes of Ethernet with the
 * EtherType of the record (SLL's protocol field; 0x0800 or 0x86dd by the IP
 * version of a raw packet), the source MAC of the cooked header when it holds
 * an Ethernet address (else 02:00:00:00:00:01), and 02:00:00:00:00:02 as the
 * destination (ff:ff:ff:ff:ff:ff for a cooked broadcast), the MACs gen uses.
 */

enum { LT_EN10MB = 1, LT_RAW = 101, LT_LINUX_SLL = 113, LT_IPV4 = 228, LT_IPV6 = 229, LT_LINUX_SLL2 = 276 };

static int linktype_ok(uint32_t lt) {
    return lt == LT_EN10MB || lt == LT_RAW || lt == LT_LINUX_SLL || lt == LT_IPV4 || lt == LT_IPV6 ||
           lt == LT_LINUX_SLL2;
}

/* Bytes the record's link header has beyond (<0) or short of (>0) Ethernet's 14. */
static int link_delta(uint32_t lt) {
    switch (lt) {
    case LT_LINUX_SLL:
        return 14 - 16;
    case LT_LINUX_SLL2:
        return 14 - 20;
    case LT_RAW:
    case LT_IPV4:
    case LT_IPV6:
        return 14;
    default:
        return 0;
    }
}

enum { SKIP_RUNT = -1, SKIP_NO_ETHERTYPE = -2 };

/* Writes the Ethernet frame of a record of link type lt (len > 0 bytes at d)
 * to out, which has room for len + link_delta(lt); returns its length, or a
 * SKIP_ reason. */
static int64_t pcap_frame(uint32_t lt, const uint8_t *d, uint32_t len, uint8_t *out) {
    static const uint8_t dmac[6] = {0x02, 0, 0, 0, 0, 0x02}, smac[6] = {0x02, 0, 0, 0, 0, 0x01};
    static const uint8_t bcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    if (lt == LT_EN10MB) {
        memcpy(out, d, len);
        return len;
    }
    const uint8_t *src = smac, *dst = dmac;
    uint16_t ethertype;
    uint32_t hdr = (uint32_t)(14 - link_delta(lt));
    if (len <= hdr && lt != LT_RAW && lt != LT_IPV4 && lt != LT_IPV6)
        return SKIP_RUNT;
    if (lt == LT_LINUX_SLL || lt == LT_LINUX_SLL2) {
        int sll2 = lt == LT_LINUX_SLL2;
        uint16_t pkttype = sll2 ? d[10] : (uint16_t)(d[0] << 8 | d[1]);
        uint16_t hatype = (uint16_t)(sll2 ? d[8] << 8 | d[9] : d[2] << 8 | d[3]);
        unsigned halen = sll2 ? d[11] : (unsigned)(d[4] << 8 | d[5]);
        ethertype = (uint16_t)(sll2 ? d[0] << 8 | d[1] : d[14] << 8 | d[15]);
        if (ethertype < 0x0600) /* Novell 802.3, 802.2 LLC, CAN: not an Ethernet II payload */
            return SKIP_NO_ETHERTYPE;
        if ((hatype == 1 || hatype == 772) && halen == 6) /* ARPHRD_ETHER, ARPHRD_LOOPBACK */
            src = d + (sll2 ? 12 : 6);
        if (pkttype == 1) /* PACKET_BROADCAST */
            dst = bcast;
    } else {
        unsigned ver = d[0] >> 4;
        if (lt == LT_IPV4 ? ver != 4 : lt == LT_IPV6 ? ver != 6 : ver != 4 && ver != 6)
            return SKIP_NO_ETHERTYPE;
        ethertype = ver == 4 ? 0x0800 : 0x86dd;
    }
    memcpy(out, dst, 6);
    memcpy(out + 6, src, 6);
    out[12] = (uint8_t)(ethertype >> 8);
    out[13] = (uint8_t)ethertype;
    memcpy(out + 14, d + hdr, len - hdr);
    return 14 + (int64_t)(len - hdr);
}

#define PCAPNG_MAX_IFS 64

struct pcapng_if {
    uint32_t snaplen;
    uint32_t linktype;
    uint64_t units; /* timestamp units per second */
};

#define PCAP_BUF (1u << 17) /* bytes read at once, cache-sized; a packet or interface block must fit */

struct pcap_state {
    struct pcapng_if ifs[PCAPNG_MAX_IFS];
    uint32_t nifs;
    int fd;
    uint8_t *buf;     /* PCAP_BUF bytes of the file from buf_off */
    uint64_t buf_off; /* file offset of buf[0] */
    size_t buf_len;   /* bytes of the file in buf */
};

static uint32_t rd32le(const uint8_t *p, int swapped) {
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

static uint16_t rd16(const uint8_t *p, int swapped) {
    uint16_t v;
    memcpy(&v, p, 2);
    return swapped ? __builtin_bswap16(v) : v;
}

static void pcap_fail(struct onvm_port *p, const char *what, uint64_t at, uint64_t a, uint64_t b) {
    char msg[112];
    snprintf(msg, sizeof msg, what, (unsigned long long)a, (unsigned long long)b);
    snprintf(p->error, sizeof p->error, "pcap %.100s: %.112s at byte %llu", p->path, msg,
             (unsigned long long)at);
    atomic_store(&p->rx_done, 1);
}

/* pread until len bytes or the end of the file; -1 on an error. */
static ssize_t pread_full(int fd, uint8_t *to, size_t len, uint64_t off) {
    size_t got = 0;
    while (got < len) {
        ssize_t k = pread(fd, to + got, len - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return -1;
        if (k == 0)
            break;
        got += (size_t)k;
    }
    return (ssize_t)got;
}

/* The file's bytes [off, off + len), len <= PCAP_BUF, which the caller knows lie
 * below file_len; valid until the next call.  NULL (and the port stops) when the
 * file no longer has them: it shrank, or the read failed. */
static const uint8_t *pcap_at(struct onvm_port *p, uint64_t off, size_t len) {
    struct pcap_state *ps = p->drv;
    if (off >= ps->buf_off && off + len <= ps->buf_off + ps->buf_len)
        return ps->buf + (off - ps->buf_off);
    size_t want = p->file_len - off < PCAP_BUF ? (size_t)(p->file_len - off) : PCAP_BUF;
    ssize_t got = pread_full(ps->fd, ps->buf, want, off);
    ps->buf_off = off;
    ps->buf_len = got > 0 ? (size_t)got : 0;
    if (got < 0) {
        pcap_fail(p, "read failed (errno %llu)%.0llu", off, (uint64_t)errno, 0);
        return NULL;
    }
    if ((size_t)got < len) {
        pcap_fail(p, "the file shrank while being read: %llu of %llu bytes left", off, (uint64_t)got, len);
        return NULL;
    }
    return ps->buf;
}

/* Checks a captured length against the file's snaplen: -1 (the port stops) if
 * it is past it; 1 if the record is to be skipped unread (empty, or its frame
 * would not fit a slot); 0 to read it. */
static int pcap_check_len(struct onvm_port *p, uint64_t at, uint32_t caplen, uint32_t snaplen,
                          uint32_t room, uint32_t lt) {
    if (snaplen && caplen > snaplen) {
        pcap_fail(p, "captured length %llu exceeds the snaplen %llu", at, caplen, snaplen);
        return -1;
    }
    return caplen == 0 || (int64_t)caplen + link_delta(lt) > (int64_t)room;
}

/* pcapng: walks blocks from p->pos to the next packet.  Returns 1 with the
 * packet, 0 at the end of the file, -1 after an error. */
static int pcapng_next(struct onvm_port *p, uint32_t room, const uint8_t **data, uint32_t *caplen,
                       uint64_t *ts_ns, uint64_t *next, uint32_t *lt) {
    struct pcap_state *ps = p->drv;
    uint64_t pos = p->pos;
    for (;;) {
        if (pos == p->file_len)
            return 0;
        if (pos + 12 > p->file_len) {
            pcap_fail(p, "truncated block header (%llu of 12 bytes)%.0llu", pos, p->file_len - pos, 0);
            return -1;
        }
        const uint8_t *b = pcap_at(p, pos, 12);
        if (!b)
            return -1;
        uint32_t type;
        memcpy(&type, b, 4);
        if (type == 0x0a0d0d0au) { /* a section header: its byte order applies from here */
            uint32_t bom;
            memcpy(&bom, b + 8, 4);
            if (bom == 0x1a2b3c4du)
                p->swapped = 0;
            else if (bom == 0x4d3c2b1au)
                p->swapped = 1;
            else {
                pcap_fail(p, "bad byte-order magic 0x%08llx in a section header%.0llu", pos, bom, 0);
                return -1;
            }
            ps->nifs = 0;
        } else {
            type = rd32le(b, p->swapped);
        }
        uint32_t blen = rd32le(b + 4, p->swapped);
        if (blen < 12 || blen % 4 || blen > (1u << 26)) {
            pcap_fail(p, "corrupt block (type %llu, length %llu)", pos, type, blen);
            return -1;
        }
        if (pos + blen > p->file_len) {
            pcap_fail(p, "truncated block: %llu bytes announced, %llu in the file", pos, blen,
                      p->file_len - pos);
            return -1;
        }
        /* Interface blocks are read whole, packet blocks up to their data
         * (read below, when the frame fits a slot), others only framed. */
        int whole = type == 1;
        if (whole && blen > PCAP_BUF) {
            pcap_fail(p, "a %llu-byte block of type %llu is longer than this reader takes", pos, blen, type);
            return -1;
        }
        const uint8_t *tail = pcap_at(p, pos + blen - 4, 4); /* each read may move the buffer */
        if (!tail)
            return -1;
        uint32_t trailer = rd32le(tail, p->swapped);
        if (whole && !(b = pcap_at(p, pos, blen)))
            return -1;
        if ((type == 3 || type == 6) && !(b = pcap_at(p, pos, blen < 32 ? blen : 32)))
            return -1;
        if (trailer != blen) {
            pcap_fail(p, "corrupt block: trailing length differs from %llu%.0llu", pos, blen, 0);
            return -1;
        }
        uint64_t at = pos;
        pos += blen;
        if (type == 1) { /* interface description */
            if (blen < 20) {
                pcap_fail(p, "interface block too short (%llu bytes)%.0llu", at, blen, 0);
                return -1;
            }
            uint16_t link = rd16(b + 8, p->swapped);
            if (!linktype_ok(link)) {
                pcap_fail(p, "interface %llu has link type %llu (read: Ethernet, Linux cooked, raw IP)", at,
                          ps->nifs, link);
                return -1;
            }
            if (ps->nifs == PCAPNG_MAX_IFS) {
                pcap_fail(p, "more than %llu interfaces%.0llu", at, PCAPNG_MAX_IFS, 0);
                return -1;
            }
            struct pcapng_if *f = &ps->ifs[ps->nifs++];
            f->snaplen = rd32le(b + 12, p->swapped);
            f->linktype = link;
            f->units = 1000000;
            for (size_t o = 16; o + 4 <= blen - 4;) { /* options */
                uint16_t code = rd16(b + o, p->swapped), olen = rd16(b + o + 2, p->swapped);
                if (code == 0 || o + 4 + olen > blen - 4)
                    break;
                if (code == 9 && olen >= 1) { /* if_tsresol */
                    uint8_t v = b[o + 4];
                    uint64_t u = 1;
                    for (unsigned k = 0; k < (v & 0x7f) && k < 19; k++)
                        u *= (v & 0x80) ? 2 : 10;
                    f->units = u ? u : 1000000;
                }
                o += 4 + ((olen + 3u) & ~3u);
            }
            continue;
        }
        if (type == 6 || type == 3) { /* enhanced or simple packet */
            uint32_t ifid = 0, cap, hdr;
            uint64_t ts = 0;
            if (type == 6) {
                if (blen < 32) {
                    pcap_fail(p, "packet block too short (%llu bytes)%.0llu", at, blen, 0);
                    return -1;
                }
                ifid = rd32le(b + 8, p->swapped);
                ts = (uint64_t)rd32le(b + 12, p->swapped) << 32 | rd32le(b + 16, p->swapped);
                cap = rd32le(b + 20, p->swapped);
                hdr = 28;
            } else {
                if (blen < 16) {
                    pcap_fail(p, "packet block too short (%llu bytes)%.0llu", at, blen, 0);
                    return -1;
                }
                cap = rd32le(b + 8, p->swapped);
                hdr = 12;
            }
            if (ifid >= ps->nifs) {
                pcap_fail(p, "packet of interface %llu, which was not described%.0llu", at, ifid, 0);
                return -1;
            }
            uint32_t snap = ps->ifs[ifid].snaplen;
            if (type == 3 && snap && cap > snap)
                cap = snap; /* a simple block stores min(original length, snaplen) */
            if ((uint64_t)hdr + cap + 4 > blen) {
                pcap_fail(p, "captured length %llu runs past its block of %llu bytes", at, cap, blen);
                return -1;
            }
            *lt = ps->ifs[ifid].linktype;
            int skip = pcap_check_len(p, at, cap, snap, room, *lt);
            if (skip < 0)
                return -1;
            if (!skip && !(b = pcap_at(p, at, hdr + cap))) /* hdr + cap < room + 32 <= PCAP_BUF */
                return -1;
            uint64_t units = ps->ifs[ifid].units;
            *ts_ns = units == 1000000000ull ? ts : (uint64_t)((__uint128_t)ts * 1000000000ull / units);
            *data = skip ? NULL : b + hdr;
            *caplen = cap;
            *next = pos;
            return 1;
        }
        /* statistics, name resolution, custom blocks: nothing to send */
    }
}

/* Classic pcap: the record at p->pos.  Same returns as pcapng_next. */
static int classic_next(struct onvm_port *p, uint32_t room, const uint8_t **data, uint32_t *caplen,
                        uint64_t *ts_ns, uint64_t *next, uint32_t *lt) {
    uint64_t pos = p->pos;
    if (pos == p->file_len)
        return 0;
    if (pos + 16 > p->file_len) {
        pcap_fail(p, "truncated record header (%llu of 16 bytes)%.0llu", pos, p->file_len - pos, 0);
        return -1;
    }
    const uint8_t *h = pcap_at(p, pos, 16);
    if (!h)
        return -1;
    uint32_t incl = rd32le(h + 8, p->swapped);
    if (incl > 262144 && incl > p->file_snaplen) {
        pcap_fail(p, "corrupt record (captured length %llu)%.0llu", pos, incl, 0);
        return -1;
    }
    if (pos + 16 + incl > p->file_len) {
        pcap_fail(p, "truncated record: %llu bytes announced, %llu in the file", pos, incl,
                  p->file_len - pos - 16);
        return -1;
    }
    *lt = p->linktype;
    int skip = pcap_check_len(p, pos, incl, p->file_snaplen, room, *lt);
    if (skip < 0)
        return -1;
    if (!skip && !(h = pcap_at(p, pos, 16 + (size_t)incl))) /* room < PCAP_BUF: the record fits */
        return -1;
    uint64_t sec = rd32le(h, p->swapped), frac = rd32le(h + 4, p->swapped);
    *ts_ns = sec * 1000000000ull + (p->nsec ? frac : frac * 1000);
    *data = skip ? NULL : h + 16;
    *caplen = incl;
    *next = pos + 16 + incl;
    return 1;
}

static int pcap_rewind(struct onvm_port *p);

#define PCAP_SKIPS 4096 /* records skipped in one call at most: a worker never spins on a file */

static uint32_t pcap_rx(struct onvm_port *p, struct onvm_region *r, uint32_t *slots, uint32_t n,
                        uint64_t now, uint64_t *next_due) {
    if (atomic_load_explicit(&p->rx_done, memory_order_relaxed))
        return 0;
    n = onvm_port_pace(p, n, now, next_due);
    if (n == 0)
        return 0;
    uint32_t got = onvm_pool_alloc_burst(r, slots, n, ONVM_OWNER_MGR);
    if (got == 0) {
        /* a file waits for room rather than losing packets */
        pool_empty(r, p, 0, now, next_due);
        return 0;
    }
    uint32_t room = onvm_slot_room(r), k = 0, skipped = 0;
    while (k < got && skipped < PCAP_SKIPS) {
        const uint8_t *data;
        uint32_t caplen, lt;
        uint64_t ts, next;
        int rc = p->pcapng ? pcapng_next(p, room, &data, &caplen, &ts, &next, &lt)
                           : classic_next(p, room, &data, &caplen, &ts, &next, &lt);
        if (rc < 0)
            break;
        if (rc == 0) {
            if (p->records_in_file == 0 || (p->loops_left && --p->loops_left == 0)) {
                atomic_store(&p->rx_done, 1);
                break;
            }
            if (pcap_rewind(p) < 0)
                break;
            p->records_in_file = 0;
            p->loop_offset_ns += p->last_ts_ns - p->first_ts_ns;
            continue;
        }
        if (p->timing) {
            if (p->base_ns == 0) {
                p->base_ns = now;
                p->first_ts_ns = ts;
            }
            uint64_t rel = ts > p->first_ts_ns ? ts - p->first_ts_ns : 0;
            uint64_t due = p->base_ns + (uint64_t)((double)(rel + p->loop_offset_ns) / p->speed);
            if (due > now) {
                if (next_due && due < *next_due)
                    *next_due = due;
                break;
            }
            p->last_ts_ns = ts > p->last_ts_ns ? ts : p->last_ts_ns;
        }
        p->pos = next;
        uint32_t s = slots[k];
        onvm_slot_reset(r, s);
        int64_t len = data ? pcap_frame(lt, data, caplen, onvm_slot_data(r, s)) : 0;
        if (len <= 0) { /* skipped unread (empty or oversize), or not made a frame */
            skipped++;
            if (len == SKIP_NO_ETHERTYPE)
                p->no_ethertype++;
            else if (len == SKIP_RUNT || caplen == 0)
                p->runt++;
            else
                p->skipped++;
            continue;
        }
        p->records_in_file++;
        k++;
        r->meta[s].len = (uint32_t)len;
        r->meta[s].rx_ns = now;
        r->meta[s].in_port = (uint16_t)p->id;
    }
    if (k < got)
        onvm_pool_free_burst(r, slots + k, got - k);
    onvm_pace_sent(&p->pace, k);
    return k;
}

/* Back to the first record for another pass; the file's size is taken again. */
static int pcap_rewind(struct onvm_port *p) {
    struct pcap_state *ps = p->drv;
    struct stat st;
    uint64_t start = p->pcapng ? 0 : 24;
    if (fstat(ps->fd, &st) != 0 || (uint64_t)st.st_size < start) {
        pcap_fail(p, "the file shrank to %llu bytes%.0llu", 0, (uint64_t)st.st_size, 0);
        return -1;
    }
    p->file_len = (uint64_t)st.st_size;
    p->pos = start;
    ps->buf_len = 0;
    return 0;
}

static void pcap_in_close(struct onvm_port *p) {
    struct pcap_state *ps = p->drv;
    if (ps) {
        if (ps->fd >= 0)
            close(ps->fd);
        free(ps->buf);
    }
    free(p->drv);
    p->drv = NULL;
}

struct onvm_port *onvm_port_open_pcap_in(int id, const struct onvm_pcap_conf *c, char *err,
                                         size_t errlen) {
    int fd = open(c->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err)
            snprintf(err, errlen, "pcap %.160s: cannot open (%s)", c->path, strerror(errno));
        return NULL;
    }
    struct stat st;
    uint8_t head[24];
    if (fstat(fd, &st) != 0 || st.st_size < 24 || pread_full(fd, head, sizeof head, 0) != (ssize_t)sizeof head) {
        close(fd);
        if (err)
            snprintf(err, errlen, "pcap %.160s: truncated file header (%lld bytes; a pcap header has 24)",
                     c->path, (long long)st.st_size);
        return NULL;
    }
    uint32_t magic;
    memcpy(&magic, head, 4);
    int swapped = 0, nsec = 0, ng = 0;
    if (magic == 0xa1b2c3d4u) {
    } else if (magic == 0xd4c3b2a1u) {
        swapped = 1;
    } else if (magic == 0xa1b23c4du) {
        nsec = 1;
    } else if (magic == 0x4d3cb2a1u) {
        swapped = nsec = 1;
    } else if (magic == 0x0a0d0d0au) {
        ng = 1;
    } else {
        close(fd);
        if (err)
            snprintf(err, errlen, "pcap %.160s: not a pcap or pcapng file (magic 0x%08x at byte 0)",
                     c->path, magic);
        return NULL;
    }
    uint32_t snaplen = 0, linktype = LT_EN10MB;
    if (!ng) {
        linktype = rd32le(head + 20, swapped) & 0x0fffffff;
        snaplen = rd32le(head + 16, swapped);
        if (!linktype_ok(linktype)) {
            close(fd);
            if (err)
                snprintf(err, errlen,
                         "pcap %.160s: link type %u at byte 20 is not one this port reads (Ethernet 1, Linux "
                         "cooked 113 and 276, raw IP 101, 228 and 229)",
                         c->path, linktype);
            return NULL;
        }
    }
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_PCAP_IN);
    struct pcap_state *ps = p ? calloc(1, sizeof *ps) : NULL;
    uint8_t *buf = ps ? malloc(PCAP_BUF) : NULL;
    if (!buf) {
        close(fd);
        free(ps);
        onvm_port_close(p);
        return NULL;
    }
    ps->fd = fd;
    ps->buf = buf;
    p->drv = ps;
    p->close = pcap_in_close;
    snprintf(p->path, sizeof p->path, "%s", c->path);
    p->rx = pcap_rx;
    p->file_len = (uint64_t)st.st_size;
    p->pcapng = ng;
    p->pos = ng ? 0 : 24;
    p->swapped = swapped;
    p->nsec = nsec;
    p->file_snaplen = snaplen;
    p->loops_left = c->loops;
    p->pace.rate_pps = c->timing ? 0 : c->rate_pps;
    p->pacable = !c->timing;
    p->rate_want = p->pace.rate_pps;
    p->timing = c->timing;
    p->speed = c->speed > 0 ? c->speed : 1.0;
    p->linktype = linktype;
    p->keep_all = !c->loss && !c->rate_pps && !c->timing;
    return p;
}

/* ---- pcap out ------------------------------------------------------------ *
 *
 * Records gather in a buffer that is written with write() when it fills and
 * when the port is flushed or closed.  A write that fails (a full disk, a file
 * system gone read-only) stops the port: the file is cut back to the end of
 * the last whole record, so it stays readable, and the packets that were
 * counted as sent but never reached it are counted in `lost`.  Later packets
 * are port drops. */

#define PCAP_OUT_BUF (1u << 20)
#define PCAP_OUT_RECS (PCAP_OUT_BUF / 64) /* records buffered at most */

struct pcap_writer {
    int fd;
    int failed;
    uint64_t file_len; /* bytes in the file: the header and whole records */
    uint32_t len;      /* bytes in buf */
    uint32_t nrec;     /* records in buf; end[i] is where record i ends */
    uint32_t end[PCAP_OUT_RECS];
    uint8_t buf[PCAP_OUT_BUF];
};

static void pcap_out_flush(struct onvm_port *p) {
    struct pcap_writer *w = p->drv;
    if (!w || w->failed || w->len == 0)
        return;
    uint32_t done = 0;
    int err = 0;
    while (done < w->len) {
        ssize_t k = write(w->fd, w->buf + done, w->len - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            err = k < 0 ? errno : ENOSPC;
            break;
        }
        done += (uint32_t)k;
    }
    if (!err) {
        w->file_len += w->len;
        w->len = w->nrec = 0;
        return;
    }
    uint32_t whole = 0; /* records that reached the file complete */
    while (whole < w->nrec && w->end[whole] <= done)
        whole++;
    uint64_t keep = w->file_len + (whole ? w->end[whole - 1] : 0);
    int cut = ftruncate(w->fd, (off_t)keep);
    p->lost += w->nrec - whole;
    snprintf(p->error, sizeof p->error, "pcap-out %.160s: write failed (%s): %u packets lost%s", p->path,
             strerror(err), w->nrec - whole, cut ? "; the file ends in a cut record" : "");
    w->failed = 1;
    w->len = w->nrec = 0;
}

static uint32_t pcap_tx(struct onvm_port *p, struct onvm_region *r, const uint32_t *slots,
                        uint32_t n, uint64_t *bytes, struct onvm_port_stats *st) {
    (void)st;
    struct pcap_writer *w = p->drv;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t sent = 0;
    uint64_t b = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct onvm_meta *m = &r->meta[slots[i]];
        uint32_t cap = m->len < p->snaplen ? m->len : p->snaplen;
        if (w->len + 16 + cap > PCAP_OUT_BUF || w->nrec == PCAP_OUT_RECS)
            pcap_out_flush(p);
        if (w->failed)
            break; /* the rest are port drops */
        uint32_t hdr[4] = {(uint32_t)ts.tv_sec, (uint32_t)(ts.tv_nsec / 1000), cap, m->len};
        memcpy(w->buf + w->len, hdr, sizeof hdr);
        memcpy(w->buf + w->len + sizeof hdr, onvm_slot_data(r, slots[i]), cap);
        w->len += (uint32_t)sizeof hdr + cap;
        w->end[w->nrec++] = w->len;
        sent++;
        b += m->len;
    }
    *bytes = b;
    onvm_pool_free_burst(r, slots, n);
    return sent;
}

static void pcap_out_close(struct onvm_port *p) {
    struct pcap_writer *w = p->drv;
    if (!w)
        return;
    pcap_out_flush(p);
    close(w->fd);
    free(w);
    p->drv = NULL;
}

struct onvm_port *onvm_port_open_pcap_out(int id, const struct onvm_pcap_conf *c, char *err,
                                          size_t errlen) {
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        if (err)
            snprintf(err, errlen, "pcap-out %s: cannot create (%s)", c->path, strerror(errno));
        return NULL;
    }
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_PCAP_OUT);
    struct pcap_writer *w = p ? calloc(1, sizeof *w) : NULL;
    if (!w) {
        close(fd);
        onvm_port_close(p);
        return NULL;
    }
    p->snaplen = c->snaplen ? c->snaplen : 65535;
    uint32_t hdr[6] = {0xa1b2c3d4u, 0x00040002u /* version 2.4 */, 0, 0, p->snaplen, 1};
    /* Written at once, so a file that cannot be written fails here, by name. */
    ssize_t k = write(fd, hdr, sizeof hdr);
    if (k != (ssize_t)sizeof hdr) {
        if (err)
            snprintf(err, errlen, "pcap-out %s: cannot write its header (%s)", c->path,
                     k < 0 ? strerror(errno) : "no space left");
        close(fd);
        free(w);
        onvm_port_close(p);
        return NULL;
    }
    w->fd = fd;
    w->file_len = sizeof hdr;
    p->drv = w;
    p->close = pcap_out_close;
    p->flush = pcap_out_flush;
    p->tx = pcap_tx;
    snprintf(p->path, sizeof p->path, "%s", c->path);
    return p;
}

void onvm_port_close(struct onvm_port *p) {
    if (!p)
        return;
    if (p->close)
        p->close(p);
    free(p->templates);
    free(p->tmpl_csum);
    pthread_mutex_destroy(&p->tx_lock);
    free(p);
}
