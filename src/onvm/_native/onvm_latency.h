/* onvm_latency.h - latency histograms recorded on the packet path.
 *
 * Each packet carries meta->rx_ns, CLOCK_MONOTONIC when it entered.  A
 * recorder takes one clock reading per burst and adds (now - rx_ns) of every
 * packet of the burst to a histogram it alone writes: an NF into its own
 * stats after its handler ran, a manager worker into its row of a port's
 * stats just before it hands a burst to the port.  Readers sum and convert.
 *
 * Buckets: values 0..3 ns have one bucket each; above, every power of two
 * [2^k, 2^(k+1)) is split in 4 equal sub-buckets, so a bucket is at most 25%
 * wide.  onvm/latency.py holds the same mapping in Python (the test oracle).
 */
#ifndef ONVM_LATENCY_H
#define ONVM_LATENCY_H

#include "onvm_layout.h"
#include "onvm_ring.h"

static inline unsigned onvm_lat_bucket(uint64_t ns) {
    if (ns < 4)
        return (unsigned)ns;
    unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
    unsigned idx = 4u * (msb - 1u) + (unsigned)((ns >> (msb - 2u)) & 3u);
    return idx < ONVM_LAT_BUCKETS ? idx : ONVM_LAT_BUCKETS - 1u;
}

/* Add the latency of n packets at time now.  Packets stamped after now (a
 * clock read on another CPU a little later) count as 0. */
static inline void onvm_lat_record_burst(struct onvm_lat_hist *h, const struct onvm_meta *meta,
                                         const uint32_t *slots, uint32_t n, uint64_t now) {
    uint64_t sum = 0, max = h->max_ns;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t rx = meta[slots[i]].rx_ns;
        uint64_t d = now > rx ? now - rx : 0;
        sum += d;
        if (d > max)
            max = d;
        h->buckets[onvm_lat_bucket(d)]++;
    }
    h->count += n;
    h->sum_ns += sum;
    h->max_ns = max;
}

/* The packet path's version: every packet of a small burst, and an even spread
 * of ONVM_LAT_SAMPLES packets of a larger one, so the cost per burst stays
 * bounded at high rates while low rates (where latency is watched) lose nothing.
 * count then counts samples, not packets. */
#define ONVM_LAT_SAMPLES 16u
static inline void onvm_lat_sample_burst(struct onvm_lat_hist *h, const struct onvm_meta *meta,
                                         const uint32_t *slots, uint32_t n, uint64_t now) {
    if (n <= ONVM_LAT_SAMPLES) {
        onvm_lat_record_burst(h, meta, slots, n, now);
        return;
    }
    uint32_t pick[ONVM_LAT_SAMPLES];
    for (uint32_t i = 0; i < ONVM_LAT_SAMPLES; i++)
        pick[i] = slots[(uint64_t)i * n / ONVM_LAT_SAMPLES];
    onvm_lat_record_burst(h, meta, pick, ONVM_LAT_SAMPLES, now);
}

#endif
