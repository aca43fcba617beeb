/* onvm_pace.h - the schedule of a paced input port (gen, pcap with rate=).
 *
 * Theory of operation.  Packet k (from 0) of a paced port's schedule is due
 * at t0 + k * 1e9 / rate ns, t0 being the first time the port is asked.  The
 * schedule is one fixed grid for the port's whole life, so the rate holds
 * exactly over any window however late each wake-up is (nothing restarts, so
 * no interval is lost).  Packets leave in bursts (up to 100 us worth, at
 * most 256) rather than one at a time, so a paced port costs a wake-up per
 * burst, not per packet.
 *
 * What falls due and is not read yet waits, up to ONVM_PACE_QUEUE packets, as
 * frames wait in a NIC's RX descriptor ring.  Beyond that the oldest are let
 * go and the grid stays where it was: a gen port counts them missed (they were
 * never made: no CPU spent on them), so delivered + missed is what the rate
 * asked for, less at most ONVM_PACE_QUEUE still waiting; a file only sends
 * them later.
 *
 * The rate may change while the port runs (onvm_pace_rate, `onvm port rate`):
 * the grid starts again at the change, with the next packet of the schedule
 * due at once, and what fell due under the old rate and is still waiting stays
 * waiting, so a change neither loses nor owes a packet.
 *
 * Pure arithmetic on the caller's clock readings, so the port drivers and the
 * test hook that checks it against a Python model (tests/native/test_pace.py)
 * compile the same code.
 */
#ifndef ONVM_PACE_H
#define ONVM_PACE_H

#include <stdint.h>

#define ONVM_PACE_QUEUE 4096
#define ONVM_NS_PER_S 1000000000ull

struct onvm_pacer {
    uint64_t rate_pps; /* 0: not paced */
    uint64_t cap;      /* packets in the whole schedule (gen's count); 0: no end */
    uint64_t t0;       /* when packet `base` was due: the first time the port was asked, or the last
                        * change of rate */
    uint64_t base;     /* the schedule's packets before the grid that starts at t0 */
    uint64_t sent;     /* packets of the schedule sent, or let go */
    uint64_t missed;   /* let go because the port fell behind, when `lossy` */
    int lossy;         /* 1: what falls behind is lost (gen); 0: it is only late (a file) */
    int started;
};

/* When packet k (k >= base) of the schedule is due (rounded up to a whole ns). */
static inline uint64_t onvm_pace_due(const struct onvm_pacer *pc, uint64_t k) {
    return pc->t0 + (uint64_t)(((__uint128_t)(k - pc->base) * ONVM_NS_PER_S + pc->rate_pps - 1) / pc->rate_pps);
}

/* How many packets of the schedule are due by now (packets 0 .. due-1), at most cap. */
static inline uint64_t onvm_pace_due_by(const struct onvm_pacer *pc, uint64_t now) {
    uint64_t due = now < pc->t0 ? pc->base
                                : pc->base + (uint64_t)((__uint128_t)(now - pc->t0) * pc->rate_pps / ONVM_NS_PER_S) + 1;
    return pc->cap && due > pc->cap ? pc->cap : due;
}

/* How many of want packets the schedule allows at now; when none, lowers
 * *next_due to when it will.  The caller reports what it sent with
 * onvm_pace_sent().  want 0 only moves what fell out of the port's queue to
 * missed (a port its RX worker leaves unread). */
static inline uint32_t onvm_pace(struct onvm_pacer *pc, uint32_t want, uint64_t now, uint64_t *next_due) {
    if (!pc->rate_pps)
        return want;
    if (!pc->started) {
        pc->started = 1;
        pc->t0 = now;
    }
    uint64_t due = onvm_pace_due_by(pc, now);
    if (due > pc->sent + ONVM_PACE_QUEUE) {
        if (pc->lossy)
            pc->missed += due - ONVM_PACE_QUEUE - pc->sent;
        pc->sent = due - ONVM_PACE_QUEUE;
    }
    if (want == 0)
        return 0;
    uint64_t burst = pc->rate_pps / 10000;
    burst = burst < 1 ? 1 : burst > 256 ? 256 : burst;
    if (burst > want)
        burst = want;
    uint64_t can = due - pc->sent;
    if (can < burst) {
        uint64_t at = onvm_pace_due(pc, pc->sent + burst - 1);
        if (next_due && at < *next_due)
            *next_due = at;
        return 0;
    }
    return can < want ? (uint32_t)can : want;
}

static inline void onvm_pace_sent(struct onvm_pacer *pc, uint32_t n) { pc->sent += n; }

/* From now on, rate packets a second (0: unpaced).  What is due under the old
 * rate and not sent yet stays due; the new grid starts at now with the packet
 * after it. */
static inline void onvm_pace_rate(struct onvm_pacer *pc, uint64_t rate, uint64_t now) {
    uint64_t base = pc->sent;
    if (pc->rate_pps && pc->started) {
        onvm_pace(pc, 0, now, NULL); /* what overflowed the queue is missed first */
        base = onvm_pace_due_by(pc, now);
    }
    pc->rate_pps = rate;
    pc->base = base;
    pc->t0 = now;
    pc->started = 1;
}

#endif
