/* onvm_packet.h - the objects a handler touches (packet.c) and the hooks the
 * NF run loop (nfloop.c) calls on them. */
#ifndef ONVM_PACKET_H
#define ONVM_PACKET_H

#include "onvm_nf.h"

/* ONVM_ACT_HOLD (onvm_layout.h): the packet stays in the NF's hands (stamped
 * with its id, so a killed NF still gives it back) until released. */

enum onvm_hv_kind { HV_ETH, HV_VLAN, HV_ARP, HV_IPV4, HV_IPV6, HV_ICMP, HV_ICMP6, HV_TCP, HV_UDP, HV_COUNT };

typedef struct {
    PyObject_HEAD struct onvm_region *r;
    RegionObject *region; /* borrowed: the NF context that owns this packet holds it */
    uint32_t slot;
    struct onvm_meta *m; /* NULL outside a handler call */
    uint8_t *data;
    PyObject *views[HV_COUNT];
    PyObject *handed; /* memoryviews given out for this packet, released when it changes */
} PacketObject;

typedef struct {
    PyObject_HEAD struct onvm_meta *m;
    uint32_t slot;
} MetaObject;

void onvm_packet_release_views(PacketObject *p);

/* Point the reused views at slot s (m NULL: invalidate them).  The memoryviews the
 * handler took of the previous packet are released: using one later raises. */
static inline void onvm_views_set(PacketObject *p, MetaObject *o, struct onvm_region *r, uint32_t s,
                                  struct onvm_meta *m) {
    if (PyList_GET_SIZE(p->handed))
        onvm_packet_release_views(p);
    p->slot = s;
    p->m = m;
    p->data = m ? onvm_slot_data(r, s) : NULL;
    o->m = m;
    o->slot = s;
}

PacketObject *onvm_packet_new(RegionObject *region);
MetaObject *onvm_meta_new(void);

/* Releases wait in a list until the burst in hand is routed, so a packet held
 * and released within one burst is routed once, with the release's action. */
struct onvm_held {
    uint32_t n, cap;
    uint32_t *slot;
    uint16_t *dest;
    uint8_t *action;
};

/* hold(slots): mark packets of the burst in hand as held (batch handlers). */
PyObject *onvm_hold_slots(struct onvm_region *r, unsigned nf_id, PyObject *args);
/* release(slots, action, dest): queue held packets for routing; -> how many were held. */
PyObject *onvm_release_held(struct onvm_region *r, struct onvm_held *h, unsigned nf_id, PyObject *args);
/* Route the queued releases. */
void onvm_held_flush(struct onvm_route_ctx *c, struct onvm_held *h);
void onvm_held_free(struct onvm_held *h);

/* Adds the packet API's types and functions to the module. */
int onvm_packet_register(PyObject *module);
int onvm_lpm_register(PyObject *module);
int onvm_gather_register(PyObject *module);

#endif
