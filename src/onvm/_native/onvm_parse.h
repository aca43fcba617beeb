#ifndef ONVM_PARSE_H
#define ONVM_PARSE_H
#include "onvm_layout.h"

/* Fill the header offsets, l3/l4 types, flags and flow hash of m from p[0..len). */
void onvm_parse(struct onvm_meta *m, const uint8_t *p, uint32_t len);
uint32_t onvm_flow_hash(uint32_t a, uint32_t b, uint16_t pa, uint16_t pb, uint8_t proto);

#endif
