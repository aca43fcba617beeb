/* packet.c - the per-packet API: zero-copy header views, the action record,
 * checksums and held packets.
 *
 * Theory of operation
 * -------------------
 * RX parsed each packet once and left the header offsets in its meta record
 * (parse.c).  A view is a tiny object naming a header kind; every field access
 * finds the header from the meta's offsets and reads or writes the slot's bytes
 * in place.  Each access checks that the field lies inside the packet's length,
 * so a view never reads past the packet's end, even after a handler shortened
 * it.  A header the parser did not find (absent, or cut short: the meta's
 * TRUNC flag) has no view: the packet's attribute is None.
 *
 * Packet, Meta and their views are reused for every packet of a run loop and
 * are valid only during the handler call; outside it, any access raises.
 */
#include "onvm_packet.h"

#include <string.h>

#include "onvm_parse.h"
#include "onvm_capture.h"

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void wr32(uint8_t *p, uint32_t v) {
    wr16(p, (uint16_t)(v >> 16));
    wr16(p + 2, (uint16_t)v);
}

static PyObject *need_packet(void) {
    PyErr_SetString(PyExc_RuntimeError, "packet views are valid only inside the handler call");
    return NULL;
}

/* ===== header geometry ===================================================== */

/* Offset of header kind k in the packet, or -1 when the packet has none. */
static long hdr_off(const struct onvm_meta *m, int k) {
    int trunc = m->flags & ONVM_MF_TRUNC;
    switch (k) {
    case HV_ETH:
        return m->len >= 14 ? 0 : -1;
    case HV_VLAN:
        return (m->flags & ONVM_MF_VLAN) && m->len >= 18 ? 14 : -1;
    case HV_ARP:
        return m->l3_type == ONVM_L3_ARP && !trunc ? m->l3_off : -1;
    case HV_IPV4:
        return m->l3_type == ONVM_L3_IPV4 ? m->l3_off : -1;
    case HV_IPV6:
        return m->l3_type == ONVM_L3_IPV6 ? m->l3_off : -1;
    case HV_ICMP:
        return m->l4_off && m->l4_proto == 1 && m->l3_type == ONVM_L3_IPV4 ? m->l4_off : -1;
    case HV_ICMP6:
        return m->l4_off && m->l4_proto == 58 && m->l3_type == ONVM_L3_IPV6 ? m->l4_off : -1;
    case HV_TCP:
        return m->l4_off && m->l4_proto == 6 ? m->l4_off : -1;
    case HV_UDP:
        return m->l4_off && m->l4_proto == 17 ? m->l4_off : -1;
    }
    return -1;
}

/* Where the payload starts: after the deepest header found. */
static uint32_t payload_start(const struct onvm_meta *m, const uint8_t *d) {
    uint32_t len = m->len, off;
    long l4 = m->l4_off;
    if (l4 && m->l4_proto == 6)
        off = (uint32_t)l4 + 12 < len ? (uint32_t)l4 + (d[l4 + 12] >> 4) * 4u : len;
    else if (l4 && (m->l4_proto == 17 || m->l4_proto == 1 || m->l4_proto == 58))
        off = (uint32_t)l4 + 8;
    else if (m->l3_type == ONVM_L3_IPV4)
        off = m->l3_off < len ? m->l3_off + (d[m->l3_off] & 0x0fu) * 4u : len;
    else if (m->l3_type == ONVM_L3_IPV6)
        off = m->l3_off + 40u;
    else if (m->l3_type == ONVM_L3_ARP)
        off = m->l3_off + 28u;
    else if (len >= 14) { /* after the Ethernet header and any VLAN tags */
        off = 12;
        uint16_t et = rd16(d + off);
        for (int t = 0; t < 2 && (et == 0x8100 || et == 0x88a8) && off + 6 <= len; t++) {
            off += 4;
            et = rd16(d + off);
        }
        off += 2;
    } else
        off = len;
    return off < len ? off : len;
}

/* Where the payload ends: the IP length when it is shorter than the frame (padding). */
static uint32_t payload_end(const struct onvm_meta *m, const uint8_t *d) {
    uint32_t len = m->len, end = len;
    if (m->l3_type == ONVM_L3_IPV4 && m->l3_off + 4u <= len)
        end = m->l3_off + (uint32_t)rd16(d + m->l3_off + 2);
    else if (m->l3_type == ONVM_L3_IPV6 && m->l3_off + 6u <= len)
        end = m->l3_off + 40u + (uint32_t)rd16(d + m->l3_off + 4);
    return end < len ? end : len;
}

/* ===== header views ======================================================== */

typedef struct {
    PyObject_HEAD PacketObject *pkt; /* strong: a view kept past its NF stays safe */
    int kind;
} HeaderObject;

/* A field: width 1/2/4 bytes is an integer (shift/mask select bits), 6 and 16 are bytes. */
struct hfield {
    uint8_t off, width, shift;
    uint32_t mask; /* 0: the whole width */
};

static uint8_t *field_at(HeaderObject *h, const struct hfield *f) {
    PacketObject *p = h->pkt;
    if (!p->m) {
        need_packet();
        return NULL;
    }
    long off = hdr_off(p->m, h->kind);
    if (off < 0 || (uint32_t)off + f->off + f->width > p->m->len) {
        PyErr_Format(PyExc_ValueError, "the field at byte %ld lies past the packet's end (%u bytes)",
                     off < 0 ? -1L : off + f->off, p->m->len);
        return NULL;
    }
    return p->data + off + f->off;
}

static PyObject *hget(HeaderObject *h, void *closure) {
    const struct hfield *f = closure;
    uint8_t *b = field_at(h, f);
    if (!b)
        return NULL;
    uint32_t v;
    switch (f->width) {
    case 1:
        v = b[0];
        break;
    case 2:
        v = rd16(b);
        break;
    case 4:
        v = rd32(b);
        break;
    default:
        return PyBytes_FromStringAndSize((const char *)b, f->width);
    }
    if (f->mask)
        v = (v >> f->shift) & f->mask;
    return PyLong_FromUnsignedLong(v);
}

static int hset(HeaderObject *h, PyObject *value, void *closure) {
    const struct hfield *f = closure;
    if (!value) {
        PyErr_SetString(PyExc_AttributeError, "header fields cannot be deleted");
        return -1;
    }
    uint8_t *b = field_at(h, f);
    if (!b)
        return -1;
    if (f->width == 6 || f->width == 16) {
        Py_buffer v;
        if (PyObject_GetBuffer(value, &v, PyBUF_SIMPLE) < 0)
            return -1;
        int ok = v.len == f->width;
        if (ok)
            memcpy(b, v.buf, f->width);
        PyBuffer_Release(&v);
        if (!ok)
            PyErr_Format(PyExc_ValueError, "this field takes %u bytes", f->width);
        return ok ? 0 : -1;
    }
    unsigned long x = PyLong_AsUnsignedLong(value);
    if (x == (unsigned long)-1 && PyErr_Occurred())
        return -1;
    uint32_t full = f->width == 4 ? 0xffffffffu : (1u << (8 * f->width)) - 1u;
    uint32_t mask = f->mask ? f->mask : full;
    if (x > mask) {
        PyErr_Format(PyExc_ValueError, "%lu does not fit this field (max %u)", x, mask);
        return -1;
    }
    uint32_t old = f->width == 1 ? b[0] : f->width == 2 ? rd16(b) : rd32(b);
    uint32_t v = f->mask ? (old & ~(mask << f->shift)) | ((uint32_t)x << f->shift) : (uint32_t)x;
    if (f->width == 1)
        b[0] = (uint8_t)v;
    else if (f->width == 2)
        wr16(b, (uint16_t)v);
    else
        wr32(b, v);
    return 0;
}

static void Header_dealloc(HeaderObject *h) {
    Py_XDECREF(h->pkt);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyObject *Header_bytes(HeaderObject *h, PyObject *u) {
    (void)u;
    PacketObject *p = h->pkt;
    if (!p->m)
        return need_packet();
    long off = hdr_off(p->m, h->kind);
    uint32_t end = payload_start(p->m, p->data);
    if (h->kind == HV_ETH)
        end = 14;
    else if (h->kind == HV_VLAN)
        end = 18;
    else if (h->kind == HV_IPV4 || h->kind == HV_IPV6 || h->kind == HV_ARP) {
        uint32_t l4 = p->m->l4_off ? p->m->l4_off : end;
        end = l4 < end ? l4 : end;
    }
    if (off < 0 || end < (uint32_t)off)
        return PyBytes_FromStringAndSize("", 0);
    return PyBytes_FromStringAndSize((const char *)p->data + off, end - off);
}

static PyMethodDef Header_methods[] = {
    {"bytes", (PyCFunction)Header_bytes, METH_NOARGS, "A copy of this header's bytes."},
    {NULL}};

#define F(name, off, width, shift, mask, doc)                                                      \
    {name, (getter)hget, (setter)hset, doc, &(struct hfield){off, width, shift, mask}}

static PyGetSetDef eth_fields[] = {
    F("dst", 0, 6, 0, 0, "destination MAC (6 bytes)"),
    F("src", 6, 6, 0, 0, "source MAC (6 bytes)"),
    F("type", 12, 2, 0, 0, "outer EtherType (0x8100 when tagged)"),
    {NULL}};
static PyGetSetDef vlan_fields[] = {
    F("tci", 0, 2, 0, 0, "tag control information"),
    F("vid", 0, 2, 0, 0x0fff, "VLAN id"),
    F("pcp", 0, 2, 13, 0x7, "priority code point"),
    F("type", 2, 2, 0, 0, "EtherType after the tag"),
    {NULL}};
static PyGetSetDef arp_fields[] = {
    F("htype", 0, 2, 0, 0, "hardware type (1 Ethernet)"),
    F("ptype", 2, 2, 0, 0, "protocol type (0x0800 IPv4)"),
    F("op", 6, 2, 0, 0, "1 request, 2 reply"),
    F("sha", 8, 6, 0, 0, "sender MAC"),
    F("spa", 14, 4, 0, 0, "sender IPv4 address"),
    F("tha", 18, 6, 0, 0, "target MAC"),
    F("tpa", 24, 4, 0, 0, "target IPv4 address"),
    {NULL}};
static PyGetSetDef ipv4_fields[] = {
    F("version", 0, 1, 4, 0xf, "IP version (4)"),
    F("ihl", 0, 1, 0, 0xf, "header length in 32-bit words"),
    F("tos", 1, 1, 0, 0, "type of service / DSCP+ECN"),
    F("total_length", 2, 2, 0, 0, "total length"),
    F("id", 4, 2, 0, 0, "identification"),
    F("frag", 6, 2, 0, 0, "flags and fragment offset"),
    F("ttl", 8, 1, 0, 0, "time to live"),
    F("proto", 9, 1, 0, 0, "protocol"),
    F("checksum", 10, 2, 0, 0, "header checksum"),
    F("src", 12, 4, 0, 0, "source address (integer)"),
    F("dst", 16, 4, 0, 0, "destination address (integer)"),
    {NULL}};
static PyGetSetDef ipv6_fields[] = {
    F("version", 0, 1, 4, 0xf, "IP version (6)"),
    F("flow_label", 0, 4, 0, 0xfffff, "flow label"),
    F("payload_length", 4, 2, 0, 0, "payload length"),
    F("next_header", 6, 1, 0, 0, "next header"),
    F("proto", 6, 1, 0, 0, "next header (alias)"),
    F("hop_limit", 7, 1, 0, 0, "hop limit"),
    F("ttl", 7, 1, 0, 0, "hop limit (alias)"),
    F("src", 8, 16, 0, 0, "source address (16 bytes)"),
    F("dst", 24, 16, 0, 0, "destination address (16 bytes)"),
    {NULL}};
static PyGetSetDef icmp_fields[] = {
    F("type", 0, 1, 0, 0, "message type"),
    F("code", 1, 1, 0, 0, "message code"),
    F("checksum", 2, 2, 0, 0, "checksum"),
    F("id", 4, 2, 0, 0, "echo identifier"),
    F("seq", 6, 2, 0, 0, "echo sequence number"),
    {NULL}};
static PyGetSetDef tcp_fields[] = {
    F("src_port", 0, 2, 0, 0, "source port"),
    F("dst_port", 2, 2, 0, 0, "destination port"),
    F("src", 0, 2, 0, 0, "source port (alias)"),
    F("dst", 2, 2, 0, 0, "destination port (alias)"),
    F("seq", 4, 4, 0, 0, "sequence number"),
    F("ack", 8, 4, 0, 0, "acknowledgment number"),
    F("data_offset", 12, 1, 4, 0xf, "header length in 32-bit words"),
    F("flags", 13, 1, 0, 0, "flags (FIN 1, SYN 2, RST 4, PSH 8, ACK 16, URG 32)"),
    F("window", 14, 2, 0, 0, "window"),
    F("checksum", 16, 2, 0, 0, "checksum"),
    F("urgent", 18, 2, 0, 0, "urgent pointer"),
    {NULL}};
static PyGetSetDef udp_fields[] = {
    F("src_port", 0, 2, 0, 0, "source port"),
    F("dst_port", 2, 2, 0, 0, "destination port"),
    F("src", 0, 2, 0, 0, "source port (alias)"),
    F("dst", 2, 2, 0, 0, "destination port (alias)"),
    F("length", 4, 2, 0, 0, "length of header and payload"),
    F("checksum", 6, 2, 0, 0, "checksum (0: none)"),
    {NULL}};

#define HEADER_TYPE(var, pyname, fields, doc)                                                      \
    PyTypeObject var = {                                                                           \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native." pyname,                           \
        .tp_basicsize = sizeof(HeaderObject),                                                      \
        .tp_dealloc = (destructor)Header_dealloc,                                                  \
        .tp_flags = Py_TPFLAGS_DEFAULT,                                                            \
        .tp_doc = doc,                                                                             \
        .tp_methods = Header_methods,                                                              \
        .tp_getset = fields,                                                                       \
    }

static HEADER_TYPE(EthernetType, "Ethernet", eth_fields, "Ethernet header view.");
static HEADER_TYPE(VlanType, "Vlan", vlan_fields, "Outer 802.1Q/802.1ad tag view.");
static HEADER_TYPE(ArpType, "Arp", arp_fields, "ARP (Ethernet/IPv4) view.");
HEADER_TYPE(HeaderType, "IPv4", ipv4_fields, "IPv4 header view.");
static HEADER_TYPE(IPv6Type, "IPv6", ipv6_fields, "IPv6 header view.");
static HEADER_TYPE(IcmpType, "Icmp", icmp_fields, "ICMP or ICMPv6 header view.");
static HEADER_TYPE(TcpType, "Tcp", tcp_fields, "TCP header view.");
static HEADER_TYPE(UdpType, "Udp", udp_fields, "UDP header view.");

static PyTypeObject *const kind_type[HV_COUNT] = {
    [HV_ETH] = &EthernetType, [HV_VLAN] = &VlanType, [HV_ARP] = &ArpType, [HV_IPV4] = &HeaderType,
    [HV_IPV6] = &IPv6Type,    [HV_ICMP] = &IcmpType, [HV_ICMP6] = &IcmpType, [HV_TCP] = &TcpType,
    [HV_UDP] = &UdpType};

/* ===== Packet ============================================================== */

#define PKT_LIVE(p)                                                                                \
    do {                                                                                           \
        if (!(p)->m)                                                                               \
            return need_packet();                                                                  \
    } while (0)

static PyObject *view(PacketObject *p, int kind) {
    PKT_LIVE(p);
    if (hdr_off(p->m, kind) < 0)
        Py_RETURN_NONE;
    if (!p->views[kind]) {
        HeaderObject *h = PyObject_New(HeaderObject, kind_type[kind]);
        if (!h)
            return NULL;
        Py_INCREF(p);
        h->pkt = p;
        h->kind = kind;
        p->views[kind] = (PyObject *)h;
    }
    Py_INCREF(p->views[kind]);
    return p->views[kind];
}

#define VIEW_GETTER(name, kind)                                                                    \
    static PyObject *Packet_##name(PacketObject *p, void *c) {                                     \
        (void)c;                                                                                   \
        return view(p, kind);                                                                      \
    }
VIEW_GETTER(eth, HV_ETH)
VIEW_GETTER(vlan, HV_VLAN)
VIEW_GETTER(arp, HV_ARP)
VIEW_GETTER(ipv4, HV_IPV4)
VIEW_GETTER(ipv6, HV_IPV6)
VIEW_GETTER(icmp, HV_ICMP)
VIEW_GETTER(icmp6, HV_ICMP6)
VIEW_GETTER(tcp, HV_TCP)
VIEW_GETTER(udp, HV_UDP)

static PyObject *Packet_len(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromUnsignedLong(p->m->len);
}
static int Packet_set_len(PacketObject *p, PyObject *v, void *c) {
    (void)c;
    if (!p->m) {
        need_packet();
        return -1;
    }
    unsigned long n = v ? PyLong_AsUnsignedLong(v) : 0;
    if (!v || PyErr_Occurred())
        return v ? -1 : (PyErr_SetString(PyExc_AttributeError, "len cannot be deleted"), -1);
    uint32_t room = p->r->slot_size - p->m->data_off;
    if (n > room) {
        PyErr_Format(PyExc_ValueError, "length %lu exceeds the slot's room (%u bytes)", n, room);
        return -1;
    }
    if (n > p->m->len)
        memset(p->data + p->m->len, 0, n - p->m->len); /* never expose an old packet's bytes */
    p->m->len = (uint32_t)n;
    return 0;
}
#define META_INT(name, expr)                                                                       \
    static PyObject *Packet_##name(PacketObject *p, void *c) {                                     \
        (void)c;                                                                                   \
        PKT_LIVE(p);                                                                               \
        return PyLong_FromUnsignedLongLong(expr);                                                  \
    }
META_INT(slot, p->slot)
META_INT(in_port, p->m->in_port)
META_INT(flow_hash, p->m->flow_hash)
META_INT(rx_ns, p->m->rx_ns)
META_INT(flags, p->m->flags)

static PyObject *Packet_truncated(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyBool_FromLong(p->m->flags & ONVM_MF_TRUNC);
}
/* ---- pkt.data and pkt.payload ----
 *
 * They are memoryviews over the slot (zero copy), valid while the handler has the
 * packet.  Each is made over a small exporter that holds the region, and is
 * released when the loop moves to the next packet or the burst ends: using it
 * afterwards raises ValueError.  A slice of it, or a buffer another object took
 * from it (numpy.frombuffer), cannot be recalled; it keeps the region mapped
 * instead (see RegionObject.exports), so it reads stale bytes, never unmapped
 * memory. */

typedef struct {
    PyObject_HEAD RegionObject *region;
    char *buf;
    Py_ssize_t len;
} SlotBufObject;

static int SlotBuf_getbuffer(SlotBufObject *o, Py_buffer *view, int flags) {
    if (PyBuffer_FillInfo(view, (PyObject *)o, o->buf, o->len, 0, flags) < 0)
        return -1;
    o->region->exports++;
    return 0;
}

static void SlotBuf_releasebuffer(SlotBufObject *o, Py_buffer *view) {
    (void)view;
    onvm_region_export_done(o->region);
}

static void SlotBuf_dealloc(SlotBufObject *o) {
    Py_XDECREF(o->region);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyBufferProcs SlotBuf_as_buffer = {(getbufferproc)SlotBuf_getbuffer,
                                          (releasebufferproc)SlotBuf_releasebuffer};

static PyTypeObject SlotBufType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.SlotBuffer",
    .tp_basicsize = sizeof(SlotBufObject),
    .tp_dealloc = (destructor)SlotBuf_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The bytes of a packet in its slot, behind pkt.data and pkt.payload.",
    .tp_as_buffer = &SlotBuf_as_buffer,
};

static PyObject *slot_view(PacketObject *p, uint8_t *at, uint32_t len) {
    SlotBufObject *o = PyObject_New(SlotBufObject, &SlotBufType);
    if (!o)
        return NULL;
    Py_INCREF(p->region);
    o->region = p->region;
    o->buf = (char *)at;
    o->len = len;
    PyObject *mv = PyMemoryView_FromObject((PyObject *)o);
    Py_DECREF(o);
    if (mv && PyList_Append(p->handed, mv) < 0)
        Py_CLEAR(mv);
    return mv;
}

void onvm_packet_release_views(PacketObject *p) {
    PyObject *et, *ev, *tb; /* a handler's exception survives this */
    PyErr_Fetch(&et, &ev, &tb);
    Py_ssize_t n = PyList_GET_SIZE(p->handed);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyObject_CallMethod(PyList_GET_ITEM(p->handed, i), "release", NULL);
        if (!r)
            PyErr_Clear(); /* something exported from it: it stays, and so does the mapping */
        Py_XDECREF(r);
    }
    PyList_SetSlice(p->handed, 0, n, NULL);
    PyErr_Restore(et, ev, tb);
}

static PyObject *Packet_data(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return slot_view(p, p->data, p->m->len);
}
static PyObject *Packet_payload(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    uint32_t a = payload_start(p->m, p->data), b = payload_end(p->m, p->data);
    if (b < a)
        b = a;
    return slot_view(p, p->data + a, b - a);
}
static PyObject *Packet_payload_offset(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    return PyLong_FromUnsignedLong(payload_start(p->m, p->data));
}
static PyObject *Packet_ether_type(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    uint32_t len = p->m->len, l3 = p->m->l3_off;
    if (l3 && l3 <= len)
        return PyLong_FromLong(rd16(p->data + l3 - 2));
    if (len < 14)
        Py_RETURN_NONE;
    uint32_t off = 12; /* not IP or ARP: the type after any VLAN tags */
    uint16_t et = rd16(p->data + off);
    for (int t = 0; t < 2 && (et == 0x8100 || et == 0x88a8) && off + 6 <= len; t++) {
        off += 4;
        et = rd16(p->data + off);
    }
    return PyLong_FromLong(et);
}
static PyObject *Packet_five_tuple(PacketObject *p, void *c) {
    (void)c;
    PKT_LIVE(p);
    if (p->m->l3_type != ONVM_L3_IPV4 || p->m->l3_off + 20u > p->m->len)
        Py_RETURN_NONE;
    const uint8_t *ip = p->data + p->m->l3_off;
    unsigned sp = 0, dp = 0;
    if (p->m->l4_off && (p->m->l4_proto == 6 || p->m->l4_proto == 17) && p->m->l4_off + 4u <= p->m->len) {
        sp = rd16(p->data + p->m->l4_off);
        dp = rd16(p->data + p->m->l4_off + 2);
    }
    return Py_BuildValue("(kkBII)", (unsigned long)rd32(ip + 12), (unsigned long)rd32(ip + 16),
                         p->m->l4_proto, sp, dp);
}

/* ---- checksums ---- */

static uint32_t csum_add(uint32_t sum, const uint8_t *p, uint32_t n) {
    for (; n > 1; p += 2, n -= 2)
        sum += rd16(p);
    if (n)
        sum += (uint32_t)p[0] << 8;
    return sum;
}
static uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Recompute the IPv4 header checksum and the TCP/UDP/ICMP checksum in place.
 * Returns the number of checksums written. */
static int fix_checksums(const struct onvm_meta *m, uint8_t *d, int l4too) {
    int done = 0;
    uint32_t len = m->len, end = payload_end(m, d);
    if (m->l3_type == ONVM_L3_IPV4 && m->l3_off + 20u <= len) {
        uint8_t *ip = d + m->l3_off;
        uint32_t ihl = (ip[0] & 0x0fu) * 4u;
        if (m->l3_off + ihl <= len) {
            wr16(ip + 10, 0);
            wr16(ip + 10, csum_fold(csum_add(0, ip, ihl)));
            done++;
        }
    }
    if (!l4too || !m->l4_off || (m->flags & ONVM_MF_FRAG) || end <= m->l4_off)
        return done;
    uint8_t *l4 = d + m->l4_off;
    uint32_t l4len = end - m->l4_off, at;
    switch (m->l4_proto) {
    case 6:
        at = 16;
        break;
    case 17:
        at = 6;
        break;
    case 1:
    case 58:
        at = 2;
        break;
    default:
        return done;
    }
    if (at + 2 > l4len)
        return done;
    uint32_t sum = 0;
    const uint8_t *ip = d + m->l3_off;
    if (m->l3_type == ONVM_L3_IPV4 && m->l4_proto != 1)
        sum = csum_add(sum, ip + 12, 8) + m->l4_proto + l4len;
    else if (m->l3_type == ONVM_L3_IPV6)
        sum = csum_add(sum, ip + 8, 32) + m->l4_proto + l4len;
    wr16(l4 + at, 0);
    uint16_t c = csum_fold(csum_add(sum, l4, l4len));
    if (m->l4_proto == 17 && c == 0)
        c = 0xffff; /* UDP sends a computed zero as all ones */
    wr16(l4 + at, c);
    return done + 1;
}

static PyObject *Packet_update_checksums(PacketObject *p, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"l4", NULL};
    int l4 = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &l4))
        return NULL;
    PKT_LIVE(p);
    return PyLong_FromLong(fix_checksums(p->m, p->data, l4));
}

static PyObject *Packet_reparse(PacketObject *p, PyObject *u) {
    (void)u;
    PKT_LIVE(p);
    onvm_parse(p->m, p->data, p->m->len);
    return Py_NewRef(Py_None);
}

static PyObject *Packet_to_scapy(PacketObject *p, PyObject *u) {
    (void)u;
    PKT_LIVE(p);
    PyObject *mod = PyImport_ImportModule("scapy.layers.l2");
    if (!mod)
        return NULL;
    PyObject *ether = PyObject_GetAttrString(mod, "Ether");
    Py_DECREF(mod);
    if (!ether)
        return NULL;
    PyObject *raw = PyBytes_FromStringAndSize((const char *)p->data, p->m->len);
    PyObject *res = raw ? PyObject_CallOneArg(ether, raw) : NULL;
    Py_XDECREF(raw);
    Py_DECREF(ether);
    return res;
}

static PyObject *Packet_bytes(PacketObject *p, PyObject *u) {
    (void)u;
    PKT_LIVE(p);
    return PyBytes_FromStringAndSize((const char *)p->data, p->m->len);
}

static void Packet_dealloc(PacketObject *p) {
    for (int i = 0; i < HV_COUNT; i++)
        Py_XDECREF(p->views[i]);
    if (p->handed)
        onvm_packet_release_views(p);
    Py_XDECREF(p->handed);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMethodDef Packet_methods[] = {
    {"update_checksums", (PyCFunction)(void (*)(void))Packet_update_checksums, METH_VARARGS | METH_KEYWORDS,
     "update_checksums(l4=True): recompute the IPv4 header (and TCP/UDP/ICMP) checksums in place; "
     "-> how many."},
    {"reparse", (PyCFunction)Packet_reparse, METH_NOARGS,
     "Parse the headers again (after changing their layout or the length)."},
    {"to_scapy", (PyCFunction)Packet_to_scapy, METH_NOARGS, "A scapy Ether of a copy of the bytes."},
    {"bytes", (PyCFunction)Packet_bytes, METH_NOARGS, "A copy of the packet's bytes."},
    {NULL}};

static PyGetSetDef Packet_getset[] = {
    {"len", (getter)Packet_len, (setter)Packet_set_len, "length in bytes (writable, up to the slot's room)", NULL},
    {"slot", (getter)Packet_slot, NULL, "pool slot index", NULL},
    {"in_port", (getter)Packet_in_port, NULL, "port the packet came in on (65535: made by an NF)", NULL},
    {"flow_hash", (getter)Packet_flow_hash, NULL, "symmetric 5-tuple hash (0: not IP)", NULL},
    {"rx_ns", (getter)Packet_rx_ns, NULL, "CLOCK_MONOTONIC at RX", NULL},
    {"flags", (getter)Packet_flags, NULL, "parse flags (1 VLAN, 2 truncated, 4 fragment)", NULL},
    {"truncated", (getter)Packet_truncated, NULL, "a header was cut short (it is absent)", NULL},
    {"data", (getter)Packet_data, NULL, "writable memoryview of the bytes (zero copy)", NULL},
    {"payload", (getter)Packet_payload, NULL, "writable memoryview of what follows the last header", NULL},
    {"payload_offset", (getter)Packet_payload_offset, NULL, "where the payload starts in data", NULL},
    {"ether_type", (getter)Packet_ether_type, NULL, "EtherType after any VLAN tags", NULL},
    {"eth", (getter)Packet_eth, NULL, "Ethernet header view or None", NULL},
    {"vlan", (getter)Packet_vlan, NULL, "outer VLAN tag view or None", NULL},
    {"arp", (getter)Packet_arp, NULL, "ARP view or None", NULL},
    {"ipv4", (getter)Packet_ipv4, NULL, "IPv4 header view or None", NULL},
    {"ipv6", (getter)Packet_ipv6, NULL, "IPv6 header view or None", NULL},
    {"icmp", (getter)Packet_icmp, NULL, "ICMP (over IPv4) header view or None", NULL},
    {"icmp6", (getter)Packet_icmp6, NULL, "ICMPv6 header view or None", NULL},
    {"tcp", (getter)Packet_tcp, NULL, "TCP header view or None", NULL},
    {"udp", (getter)Packet_udp, NULL, "UDP header view or None", NULL},
    {"five_tuple", (getter)Packet_five_tuple, NULL, "(src, dst, proto, sport, dport) for IPv4, else None", NULL},
    {NULL}};

PyTypeObject PacketType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Packet",
    .tp_basicsize = sizeof(PacketObject),
    .tp_dealloc = (destructor)Packet_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A zero-copy view of the packet being handled.",
    .tp_methods = Packet_methods,
    .tp_getset = Packet_getset,
};

PacketObject *onvm_packet_new(RegionObject *region) {
    PacketObject *p = PyObject_New(PacketObject, &PacketType);
    if (!p)
        return NULL;
    p->r = &region->r;
    p->region = region;
    p->handed = PyList_New(0);
    p->slot = 0;
    p->m = NULL;
    p->data = NULL;
    memset(p->views, 0, sizeof p->views);
    if (!p->handed)
        Py_CLEAR(p);
    return p;
}

/* ===== Meta ================================================================ */

#define META_LIVE(o)                                                                               \
    do {                                                                                           \
        if (!(o)->m)                                                                               \
            return need_packet();                                                                  \
    } while (0)

static PyObject *meta_set(MetaObject *o, unsigned action, unsigned dest) {
    META_LIVE(o);
    o->m->action = (uint8_t)action;
    o->m->dest = (uint16_t)dest;
    Py_RETURN_NONE;
}
static PyObject *Meta_drop(MetaObject *o, PyObject *u) {
    (void)u;
    return meta_set(o, ONVM_ACT_DROP, 0);
}
static PyObject *Meta_next(MetaObject *o, PyObject *u) {
    (void)u;
    return meta_set(o, ONVM_ACT_NEXT, 0);
}
static void hold_one(struct onvm_meta *m);
static PyObject *Meta_hold(MetaObject *o, PyObject *u) {
    (void)u;
    META_LIVE(o);
    hold_one(o->m);
    return PyLong_FromUnsignedLong(o->slot);
}
static PyObject *dest_arg(MetaObject *o, PyObject *arg, unsigned action, unsigned limit) {
    unsigned long d = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    if (d >= limit)
        return PyErr_Format(PyExc_ValueError, "destination %lu is out of range (0..%u)", d, limit - 1);
    return meta_set(o, action, (unsigned)d);
}
static PyObject *Meta_tonf(MetaObject *o, PyObject *arg) {
    return dest_arg(o, arg, ONVM_ACT_TONF, ONVM_MAX_SERVICES);
}
static PyObject *Meta_out(MetaObject *o, PyObject *arg) {
    return dest_arg(o, arg, ONVM_ACT_OUT, ONVM_MAX_PORTS);
}

static PyObject *Meta_get_action(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->action);
}
static int Meta_set_action(MetaObject *o, PyObject *v, void *c) {
    (void)c;
    if (!o->m) {
        need_packet();
        return -1;
    }
    unsigned long a = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (a >= ONVM_ACT_COUNT) {
        PyErr_Format(PyExc_ValueError, "action %lu is not DROP, NEXT, TONF or OUT", a);
        return -1;
    }
    o->m->action = (uint8_t)a;
    return 0;
}
static PyObject *Meta_get_dest(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->dest);
}
static int Meta_set_dest(MetaObject *o, PyObject *v, void *c) {
    (void)c;
    if (!o->m) {
        need_packet();
        return -1;
    }
    unsigned long d = PyLong_AsUnsignedLong(v);
    if (PyErr_Occurred())
        return -1;
    if (d > 0xffff) {
        PyErr_SetString(PyExc_ValueError, "destination is 16 bits");
        return -1;
    }
    o->m->dest = (uint16_t)d;
    return 0;
}
static PyObject *Meta_chain_idx(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->chain_idx);
}
static PyObject *Meta_src_nf(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->src_nf);
}
static PyObject *Meta_flags(MetaObject *o, void *c) {
    (void)c;
    META_LIVE(o);
    return PyLong_FromLong(o->m->flags);
}

static PyMethodDef Meta_methods[] = {
    {"drop", (PyCFunction)Meta_drop, METH_NOARGS, "Drop the packet."},
    {"next", (PyCFunction)Meta_next, METH_NOARGS, "Send it to the next hop of its chain."},
    {"tonf", (PyCFunction)Meta_tonf, METH_O, "tonf(service): send it to a service."},
    {"out", (PyCFunction)Meta_out, METH_O, "out(port): send it out of a port."},
    {"hold", (PyCFunction)Meta_hold, METH_NOARGS,
     "Keep the packet in this NF; -> its slot, for NF.release(slots, action, dest)."},
    {NULL}};

static PyGetSetDef Meta_getset[] = {
    {"action", (getter)Meta_get_action, (setter)Meta_set_action, "DROP=0, NEXT=1, TONF=2, OUT=3", NULL},
    {"dest", (getter)Meta_get_dest, (setter)Meta_set_dest, "service (TONF) or port (OUT)", NULL},
    {"chain_idx", (getter)Meta_chain_idx, NULL, "hop of the chain the packet is at", NULL},
    {"src_nf", (getter)Meta_src_nf, NULL, "NF that handled the packet last", NULL},
    {"flags", (getter)Meta_flags, NULL, "parse flags (1 VLAN, 2 truncated, 4 fragment)", NULL},
    {NULL}};

PyTypeObject MetaType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "onvm._native.Meta",
    .tp_basicsize = sizeof(MetaObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The action record of the packet being handled.",
    .tp_methods = Meta_methods,
    .tp_getset = Meta_getset,
};

MetaObject *onvm_meta_new(void) {
    MetaObject *o = PyObject_New(MetaObject, &MetaType);
    if (o) {
        o->m = NULL;
        o->slot = 0;
    }
    return o;
}

/* ===== held packets ========================================================
 *
 * A held packet stays stamped with the NF's id (the run loop's dequeue put it
 * there), so a killed NF's held packets are reclaimed with the rest of what it
 * had.  The HELD flag, not the action, says a packet is held: a batch handler's
 * action array is copied to the metas after the handler returned.
 */

static void hold_one(struct onvm_meta *m) {
    m->flags |= ONVM_MF_HELD;
    m->action = ONVM_ACT_HOLD;
}

static unsigned long slot_arg(PyObject *o) {
    PyObject *i = PyNumber_Index(o); /* numpy integers too */
    if (!i)
        return (unsigned long)-1;
    unsigned long s = PyLong_AsUnsignedLong(i);
    Py_DECREF(i);
    return s;
}

static int held_by(struct onvm_region *r, unsigned long s, unsigned nf_id) {
    return s < r->pool_count && atomic_load_explicit(&r->meta[s].owner, ONVM_RELAXED) == nf_id;
}

PyObject *onvm_hold_slots(struct onvm_region *r, unsigned nf_id, PyObject *args) {
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "O", &seq))
        return NULL;
    PyObject *fast = PySequence_Fast(seq, "hold() takes a sequence of slots");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), done = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long s = slot_arg(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred())
            break;
        if (held_by(r, s, nf_id) && !(r->meta[s].flags & ONVM_MF_RELEASING)) {
            hold_one(&r->meta[s]);
            done++;
        }
    }
    Py_DECREF(fast);
    return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(done);
}

static int held_push(struct onvm_held *h, uint32_t s, uint8_t action, uint16_t dest) {
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 256;
        uint32_t *ns = PyMem_Realloc(h->slot, cap * sizeof *ns);
        if (ns)
            h->slot = ns;
        uint16_t *nd = ns ? PyMem_Realloc(h->dest, cap * sizeof *nd) : NULL;
        if (nd)
            h->dest = nd;
        uint8_t *na = nd ? PyMem_Realloc(h->action, cap) : NULL;
        if (!na) {
            PyErr_NoMemory();
            return -1;
        }
        h->action = na;
        h->cap = cap;
    }
    h->slot[h->n] = s;
    h->action[h->n] = action;
    h->dest[h->n++] = dest;
    return 0;
}

PyObject *onvm_release_held(struct onvm_region *r, struct onvm_held *h, unsigned nf_id, PyObject *args) {
    PyObject *seq;
    unsigned action, dest = 0;
    if (!PyArg_ParseTuple(args, "OI|I", &seq, &action, &dest))
        return NULL;
    if (action >= ONVM_ACT_COUNT || dest > 0xffff)
        return PyErr_Format(PyExc_ValueError, "cannot release with action %u, dest %u", action, dest);
    PyObject *fast = PySequence_Fast(seq, "release() takes a sequence of slots");
    if (!fast)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast), done = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long s = slot_arg(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred())
            break;
        /* Only what this NF holds: a stale, foreign or twice-released slot is ignored. */
        if (!held_by(r, s, nf_id) || (r->meta[s].flags & (ONVM_MF_HELD | ONVM_MF_RELEASING)) != ONVM_MF_HELD)
            continue;
        if (held_push(h, (uint32_t)s, (uint8_t)action, (uint16_t)dest) < 0)
            break;
        r->meta[s].flags |= ONVM_MF_RELEASING;
        done++;
    }
    Py_DECREF(fast);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(done);
}

void onvm_held_flush(struct onvm_route_ctx *c, struct onvm_held *h) {
    uint32_t buf[64], k = 0;
    for (uint32_t i = 0; i < h->n; i++) {
        struct onvm_meta *m = &c->r->meta[h->slot[i]];
        if (atomic_load_explicit(&m->owner, ONVM_RELAXED) != c->self_nf)
            continue; /* freed meanwhile (its burst failed): nothing to send */
        m->flags &= (uint8_t)~(ONVM_MF_HELD | ONVM_MF_RELEASING);
        m->action = h->action[i];
        m->dest = h->dest[i];
        buf[k++] = h->slot[i];
        if (k == 64) {
            onvm_cap_nf_sent(c->r, c->self_nf, buf, k); /* sent late, copied as it goes */
            onvm_route_burst(c, buf, k, ONVM_ROUTE_META);
            k = 0;
        }
    }
    if (k) {
        onvm_cap_nf_sent(c->r, c->self_nf, buf, k);
        onvm_route_burst(c, buf, k, ONVM_ROUTE_META);
    }
    h->n = 0;
}

void onvm_held_free(struct onvm_held *h) {
    PyMem_Free(h->slot);
    PyMem_Free(h->dest);
    PyMem_Free(h->action);
    memset(h, 0, sizeof *h);
}

/* ===== module functions ==================================================== */

static PyObject *mod_checksum(PyObject *m, PyObject *arg) {
    (void)m;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint16_t c = csum_fold(csum_add(0, b.buf, (uint32_t)b.len));
    PyBuffer_Release(&b);
    return PyLong_FromLong(c);
}

/* fix_checksums(bytearray) -> number written: the same as Packet.update_checksums. */
static PyObject *mod_fix_checksums(PyObject *m, PyObject *arg) {
    (void)m;
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_WRITABLE) < 0)
        return NULL;
    struct onvm_meta meta = {0};
    meta.len = (uint32_t)b.len;
    onvm_parse(&meta, b.buf, meta.len);
    int n = fix_checksums(&meta, b.buf, 1);
    PyBuffer_Release(&b);
    return PyLong_FromLong(n);
}

/* update_checksums(region, slots uint32[n], l4=True) -> checksums written */
static PyObject *mod_update_checksums(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"region", "slots", "l4", NULL};
    PyObject *region, *so;
    int l4 = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O|p", kwlist, &RegionType, &region, &so, &l4))
        return NULL;
    struct onvm_region *r = &((RegionObject *)region)->r;
    if (!r->base)
        return PyErr_Format(PyExc_ValueError, "region is closed");
    Py_buffer s;
    if (PyObject_GetBuffer(so, &s, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (s.itemsize != 4) {
        PyBuffer_Release(&s);
        return PyErr_Format(PyExc_ValueError, "slots must be uint32");
    }
    const uint32_t *slots = s.buf;
    long done = 0;
    for (Py_ssize_t i = 0; i < s.len / 4; i++) {
        struct onvm_meta m;
        uint8_t *d;
        if (onvm_slot_view(r, slots[i], &m, &d))
            done += fix_checksums(&m, d, l4);
    }
    PyBuffer_Release(&s);
    return PyLong_FromLong(done);
}

static PyMethodDef packet_functions[] = {
    {"update_checksums", (PyCFunction)(void (*)(void))mod_update_checksums, METH_VARARGS | METH_KEYWORDS,
     "update_checksums(region, slots, l4=True) -> count: Packet.update_checksums for many packets"},
    {"checksum", mod_checksum, METH_O, "checksum(data) -> the Internet checksum (RFC 1071) of data"},
    {"fix_checksums", mod_fix_checksums, METH_O,
     "fix_checksums(buffer) -> count: recompute a frame's IPv4 and L4 checksums in place"},
    {NULL}};

int onvm_packet_register(PyObject *module) {
    if (PyType_Ready(&SlotBufType) < 0)
        return -1;
    PyTypeObject *types[] = {&EthernetType, &VlanType, &ArpType, &IPv6Type, &IcmpType, &TcpType, &UdpType};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        if (PyType_Ready(types[i]) < 0)
            return -1;
        Py_INCREF(types[i]);
        PyModule_AddObject(module, strrchr(types[i]->tp_name, '.') + 1, (PyObject *)types[i]);
    }
    return PyModule_AddFunctions(module, packet_functions);
}
