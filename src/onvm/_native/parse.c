/* parse.c - header parsing and the symmetric flow hash, done once at RX.
 *
 * A short or malformed header never reads past len: parsing stops where the
 * data runs out, ONVM_MF_TRUNC is set, and what was found so far stays.
 * Fragments (IPv4 MF/offset, any IPv6 fragment header) are hashed without
 * ports, so every fragment of a datagram reaches the same instance; only a
 * first fragment has an L4 offset.
 */
#include "onvm_parse.h"

#include <string.h>

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

uint32_t onvm_flow_hash(uint32_t a, uint32_t b, uint16_t pa, uint16_t pb, uint8_t proto) {
    /* Order-independent in (a, pa) <-> (b, pb): both directions of a flow hash alike. */
    uint32_t lo = a < b ? a : b, hi = a < b ? b : a;
    uint16_t plo = pa < pb ? pa : pb, phi = pa < pb ? pb : pa;
    uint64_t h = mix64(((uint64_t)lo << 32 | hi) ^ mix64((uint64_t)plo << 24 | (uint64_t)phi << 8 | proto));
    uint32_t v = (uint32_t)(h ^ (h >> 32));
    return v ? v : 1; /* 0 means "no flow" */
}

static uint32_t fold6(const uint8_t *p) {
    uint64_t hi, lo;
    memcpy(&hi, p, 8);
    memcpy(&lo, p + 8, 8);
    uint64_t h = mix64(hi ^ mix64(lo));
    return (uint32_t)(h ^ (h >> 32));
}

void onvm_parse(struct onvm_meta *m, const uint8_t *p, uint32_t len) {
    m->l3_type = ONVM_L3_NONE;
    m->l4_proto = 0;
    m->l3_off = 0;
    m->l4_off = 0;
    m->flow_hash = 0;
    m->flags = 0;
    m->vlan = 0;
    if (len < 14) {
        m->flags |= ONVM_MF_TRUNC;
        return;
    }
    uint32_t off = 12;
    uint16_t et = rd16(p + off);
    /* Up to two VLAN tags (802.1Q, 802.1ad). */
    for (int tags = 0; (et == 0x8100 || et == 0x88a8) && tags < 2; tags++) {
        if (off + 6 > len) {
            m->flags |= ONVM_MF_TRUNC;
            return;
        }
        if (!(m->flags & ONVM_MF_VLAN))
            m->vlan = rd16(p + off + 2) & 0x0fff; /* the outer tag */
        m->flags |= ONVM_MF_VLAN;
        off += 4;
        et = rd16(p + off);
    }
    off += 2;
    uint32_t a = 0, b = 0;
    uint16_t pa = 0, pb = 0;
    uint8_t proto = 0;
    uint32_t l4 = 0;
    if (et == 0x0800) {
        if (off + 20 > len) {
            m->flags |= ONVM_MF_TRUNC;
            return;
        }
        const uint8_t *ip = p + off;
        uint32_t ihl = (uint32_t)(ip[0] & 0x0f) * 4;
        if ((ip[0] >> 4) != 4 || ihl < 20 || off + ihl > len) {
            m->flags |= ONVM_MF_TRUNC;
            return;
        }
        m->l3_type = ONVM_L3_IPV4;
        m->l3_off = (uint16_t)off;
        proto = ip[9];
        a = rd32(ip + 12);
        b = rd32(ip + 16);
        uint16_t frag = rd16(ip + 6);
        if (frag & 0x1fff) {
            m->flags |= ONVM_MF_FRAG; /* no L4 header in a non-first fragment */
            m->l4_proto = proto;
            m->flow_hash = onvm_flow_hash(a, b, 0, 0, proto);
            return;
        }
        if (frag & 0x2000)
            m->flags |= ONVM_MF_FRAG;
        l4 = off + ihl;
    } else if (et == 0x86dd) {
        if (off + 40 > len) {
            m->flags |= ONVM_MF_TRUNC;
            return;
        }
        const uint8_t *ip = p + off;
        m->l3_type = ONVM_L3_IPV6;
        m->l3_off = (uint16_t)off;
        proto = ip[6];
        a = fold6(ip + 8);
        b = fold6(ip + 24);
        l4 = off + 40;
        /* Walk the common extension headers to find the transport. */
        for (int ext = 0; ext < 8; ext++) {
            if (proto == 0 || proto == 43 || proto == 60) {
                if (l4 + 8 > len) {
                    m->flags |= ONVM_MF_TRUNC;
                    m->l4_proto = proto;
                    m->flow_hash = onvm_flow_hash(a, b, 0, 0, proto);
                    return;
                }
                proto = p[l4];
                l4 += 8u + (uint32_t)p[l4 + 1] * 8u;
            } else if (proto == 44) {
                if (l4 + 8 > len) {
                    m->flags |= ONVM_MF_TRUNC;
                    m->flow_hash = onvm_flow_hash(a, b, 0, 0, proto);
                    return;
                }
                m->flags |= ONVM_MF_FRAG;
                proto = p[l4];
                if (rd16(p + l4 + 2) >> 3) { /* not the first fragment: no L4 header */
                    m->l4_proto = proto;
                    m->flow_hash = onvm_flow_hash(a, b, 0, 0, proto);
                    return;
                }
                l4 += 8;
            } else {
                break;
            }
        }
    } else if (et == 0x0806) {
        m->l3_type = ONVM_L3_ARP;
        m->l3_off = (uint16_t)off;
        if (off + 28 > len)
            m->flags |= ONVM_MF_TRUNC;
        return;
    } else {
        return;
    }
    m->l4_proto = proto;
    uint32_t need = proto == 6 ? 20 : proto == 17 ? 8 : (proto == 1 || proto == 58) ? 4 : 0;
    if (need) {
        if (l4 + need > len || l4 > 0xffff) {
            m->flags |= ONVM_MF_TRUNC;
        } else {
            m->l4_off = (uint16_t)l4;
            if (proto == 6 || proto == 17) {
                pa = rd16(p + l4);
                pb = rd16(p + l4 + 2);
            }
        }
    }
    /* Every fragment of a datagram must hash alike, and only the first has ports. */
    if (m->flags & ONVM_MF_FRAG)
        pa = pb = 0;
    m->flow_hash = onvm_flow_hash(a, b, pa, pb, proto);
}
