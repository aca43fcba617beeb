/* hookbench.c - benchmark hooks (part of the hooks module, hooks.c): the flow
 * table's lookup rate, two senders (AF_PACKET, and XDP frames where libbpf is),
 * and how long a futex wake-up takes to reach a sleeping thread.  onvm.bench
 * calls them. */
#define _GNU_SOURCE
#include "onvm_hooks.h"

#include <errno.h>
#include <linux/futex.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* bench_lookup(region, entries, lookups, bulk=True) -> {"mpps", "seconds", "found", ...}
 * Fills the table with `entries` distinct flows, then looks `lookups` of them
 * up in random order with the packet path's lookup (bulk: 32 at a time). */
static PyObject *mod_bench_lookup(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"region", "entries", "lookups", "bulk", NULL};
    PyObject *region;
    unsigned entries, lookups;
    int bulk = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OII|p", kwlist, &region, &entries, &lookups, &bulk))
        return NULL;
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return NULL;
    if (!entries || entries > r->flow_count)
        return PyErr_Format(PyExc_ValueError, "entries must be 1..%u (the table size)", r->flow_count);
    struct onvm_flow_key *keys = PyMem_Calloc(entries, sizeof *keys);
    uint32_t *order = PyMem_Malloc(sizeof(uint32_t) * (lookups ? lookups : 1));
    if (!keys || !order) {
        PyMem_Free(keys);
        PyMem_Free(order);
        return PyErr_NoMemory();
    }
    uint64_t x = 0x9e3779b97f4a7c15ull, now = onvm_now_ns(), installed = 0, found = 0;
    double secs;
    Py_BEGIN_ALLOW_THREADS for (uint32_t i = 0; i < entries; i++) {
        struct onvm_flow_key *k = &keys[i];
        uint32_t a = 0x0a000000u | (i >> 8), b = 0xc0a80000u | (i & 0xff);
        memcpy(k->src, &a, 4);
        memcpy(k->dst, &b, 4);
        k->sport = (uint16_t)(1024 + i % 50000);
        k->dport = 80;
        k->proto = 6;
        k->ipver = 4;
        if (onvm_core->flow_put(r, k, 1, 0, 0, ONVM_FLOW_BY_API, now) >= 0)
            installed++;
    }
    for (uint32_t i = 0; i < lookups; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order[i] = (uint32_t)(x % entries);
    }
    /* The keys to look up, laid out in lookup order as packets would bring them. */
    struct onvm_flow_key *seqkeys = malloc(sizeof *seqkeys * (lookups ? lookups : 1));
    if (seqkeys)
        for (uint32_t i = 0; i < lookups; i++)
            seqkeys[i] = keys[order[i]];
    int32_t out[32];
    uint64_t t0 = onvm_now_ns();
    for (uint32_t i = 0; seqkeys && i < lookups; i += 32) {
        uint32_t m = lookups - i < 32 ? lookups - i : 32;
        if (bulk) {
            onvm_core->flow_lookup_bulk(r, &seqkeys[i], m, out);
        } else {
            for (uint32_t j = 0; j < m; j++) /* one at a time: each miss waits for the last */
                onvm_core->flow_lookup_bulk(r, &seqkeys[i + j], 1, &out[j]);
        }
        for (uint32_t j = 0; j < m; j++)
            found += out[j] >= 0;
    }
    free(seqkeys);
    secs = (double)(onvm_now_ns() - t0) / 1e9;
    Py_END_ALLOW_THREADS PyMem_Free(keys);
    PyMem_Free(order);
    return Py_BuildValue("{s:I,s:K,s:I,s:K,s:d,s:d,s:i}", "entries", entries, "installed",
                         (unsigned long long)installed, "lookups", lookups, "found", (unsigned long long)found,
                         "seconds", secs, "mpps", secs > 0 ? lookups / secs / 1e6 : 0.0, "bulk", bulk);
}

/* ===== a sender: copies of one frame on an interface, as fast as it goes ===== */

static int afpacket_blast(const char *ifname, const uint8_t *frame, uint32_t len, double seconds,
                        uint64_t *sent_out) {
    unsigned ifindex = if_nametoindex(ifname);
    if (ifindex == 0)
        return -ENODEV;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)ifindex};
    int one = 1;
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) != 0 ||
        setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    enum { B = 64 };
    struct mmsghdr msgs[B];
    struct iovec iov[B];
    for (int i = 0; i < B; i++) {
        iov[i].iov_base = (void *)frame;
        iov[i].iov_len = len;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t sent = 0, end = onvm_now_ns() + (uint64_t)(seconds * 1e9);
    while (onvm_now_ns() < end) {
        for (int k = 0; k < 16; k++) {
            int rc = sendmmsg(fd, msgs, B, 0);
            if (rc > 0)
                sent += (uint64_t)rc;
        }
    }
    close(fd);
    *sent_out = sent;
    return 0;
}

#ifdef ONVM_HAVE_AFXDP
#include <bpf/bpf.h>
#include <linux/bpf.h>

/* Copies of one frame born in the kernel as XDP frames and redirected out of
 * ifname (BPF_PROG_TEST_RUN with live frames, as xdp-trafficgen does): no socket
 * and no skb on the sender's side, so a veth peer gets them as a NIC's driver
 * would, before any skb exists.  The peer takes them only into a NAPI (an XDP
 * program on it, or GRO on). */
static int xdp_blast(const char *ifname, const uint8_t *frame, uint32_t len, double seconds,
                     uint64_t *sent_out) {
    unsigned ifindex = if_nametoindex(ifname);
    if (ifindex == 0)
        return -ENODEV;
    struct bpf_insn prog[] = {
        /* return bpf_redirect(ifindex, 0) */
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_1, .imm = (int32_t)ifindex},
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_2, .imm = 0},
        {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect},
        {.code = BPF_JMP | BPF_EXIT},
    };
    int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, "onvm_blast", "Dual MIT/GPL", prog, 4, NULL);
    if (fd < 0)
        return fd;
    enum { RUN = 1 << 16 }; /* frames per call: each call sets up a page pool */
    uint64_t sent = 0, end = onvm_now_ns() + (uint64_t)(seconds * 1e9);
    int rc = 0;
    while (rc == 0 && onvm_now_ns() < end) {
        LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = frame, .data_size_in = len, .repeat = RUN,
                    .flags = BPF_F_TEST_XDP_LIVE_FRAMES, .batch_size = 64);
        rc = bpf_prog_test_run_opts(fd, &o) ? -errno : 0;
        sent += rc ? 0 : RUN;
    }
    close(fd);
    *sent_out = sent;
    return rc;
}
#endif

typedef int (*blast_fn)(const char *ifname, const uint8_t *frame, uint32_t len, double seconds,
                        uint64_t *sent);

static PyObject *run_blast(PyObject *args, blast_fn fn) {
    const char *ifname;
    Py_buffer frame;
    double seconds;
    if (!PyArg_ParseTuple(args, "sy*d", &ifname, &frame, &seconds))
        return NULL;
    uint64_t sent = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = fn(ifname, frame.buf, (uint32_t)frame.len, seconds, &sent);
    Py_END_ALLOW_THREADS PyBuffer_Release(&frame);
    if (rc) {
        errno = -rc;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, ifname);
    }
    return PyLong_FromUnsignedLongLong(sent);
}

/* afpacket_blast(ifname, frame, seconds) -> frames sent */
static PyObject *mod_afpacket_blast(PyObject *m, PyObject *args) {
    (void)m;
    return run_blast(args, afpacket_blast);
}

/* xdp_blast(ifname, frame, seconds) -> frames sent */
static PyObject *mod_xdp_blast(PyObject *m, PyObject *args) {
    (void)m;
#ifdef ONVM_HAVE_AFXDP
    return run_blast(args, xdp_blast);
#else
    (void)args;
    PyErr_SetString(PyExc_OSError, "xdp_blast needs a build with libbpf (apt-get install libbpf-dev libxdp-dev)");
    return NULL;
#endif
}

/* ===== futex wake-up latency ================================================
 * A sleeper thread pinned to one CPU waits on a futex; a waker thread pinned to
 * another (or the same) CPU sleeps gap_us, so the machine goes idle between
 * rounds as it does between packets at a low rate, stamps the time and wakes
 * it.  The sleeper stamps the time it runs again.  On one CPU the wake-up is a
 * context switch on a CPU that is awake; on two, the sleeper's CPU is idle, and
 * on a VM whose idle vCPUs halt that is the time the hypervisor takes to run it
 * again: the figure behind packing (manager/packing.py). */

struct wake_bench {
    _Atomic uint32_t word;    /* 1 while the sleeper waits */
    _Atomic uint64_t woke_at; /* the waker's stamp */
    _Atomic int done;
    int sleeper_cpu, waker_cpu, pin_failed;
    long gap_us;
    uint32_t rounds, got;
    uint64_t *lat;
};

static int pin_self(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void wake_word(struct wake_bench *w) {
    atomic_store(&w->word, 0); /* release: the sleeper's acquire load below sees the stamp */
    syscall(SYS_futex, &w->word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void *wake_sleeper(void *arg) {
    struct wake_bench *w = arg;
    if (pin_self(w->sleeper_cpu) != 0)
        w->pin_failed = 1;
    while (!atomic_load(&w->done)) {
        atomic_store(&w->word, 1); /* pairs with the waker's load: it wakes only a waiting sleeper */
        while (atomic_load(&w->word) == 1) /* pairs with wake_word()'s store */
            syscall(SYS_futex, &w->word, FUTEX_WAIT, 1, NULL, NULL, 0);
        uint64_t t = onvm_now_ns();
        if (!atomic_load(&w->done) && w->got < w->rounds)
            w->lat[w->got++] = t - atomic_load(&w->woke_at);
    }
    return NULL;
}

static void *wake_waker(void *arg) {
    struct wake_bench *w = arg;
    if (pin_self(w->waker_cpu) != 0)
        w->pin_failed = 1;
    for (uint32_t i = 0; i < w->rounds; i++) {
        struct timespec gap = {w->gap_us / 1000000, (w->gap_us % 1000000) * 1000};
        nanosleep(&gap, NULL);
        while (atomic_load(&w->word) != 1) /* the sleeper is back on its futex */
            sched_yield();
        atomic_store(&w->woke_at, onvm_now_ns());
        wake_word(w);
    }
    while (atomic_load(&w->word) != 1)
        sched_yield();
    atomic_store(&w->done, 1);
    wake_word(w);
    return NULL;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* futex_wake(sleeper_cpu, waker_cpu, gap_us=100, rounds=5000) -> {p50_us, p99_us, ...} */
static PyObject *mod_futex_wake(PyObject *m, PyObject *args, PyObject *kw) {
    (void)m;
    static char *kwlist[] = {"sleeper_cpu", "waker_cpu", "gap_us", "rounds", NULL};
    struct wake_bench w = {.gap_us = 100, .rounds = 5000};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "ii|lI", kwlist, &w.sleeper_cpu, &w.waker_cpu, &w.gap_us,
                                     &w.rounds))
        return NULL;
    if (w.rounds < 1 || w.rounds > 10000000 || w.gap_us < 0 || w.gap_us > 1000000 || w.sleeper_cpu < 0 ||
        w.sleeper_cpu >= CPU_SETSIZE || w.waker_cpu < 0 || w.waker_cpu >= CPU_SETSIZE)
        return PyErr_Format(PyExc_ValueError, "expected CPUs 0..%d, rounds 1..10^7, gap_us 0..10^6",
                            CPU_SETSIZE - 1);
    w.lat = PyMem_Calloc(w.rounds, sizeof *w.lat);
    if (!w.lat)
        return PyErr_NoMemory();
    pthread_t ts, tw;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pthread_create(&ts, NULL, wake_sleeper, &w);
    if (rc == 0) {
        rc = pthread_create(&tw, NULL, wake_waker, &w);
        if (rc == 0) {
            pthread_join(tw, NULL);
        } else {
            atomic_store(&w.done, 1);
            wake_word(&w);
        }
        pthread_join(ts, NULL);
    }
    Py_END_ALLOW_THREADS PyObject *out = NULL;
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (w.pin_failed || w.got == 0) {
        PyErr_Format(PyExc_ValueError, "cannot run on CPUs %d and %d", w.sleeper_cpu, w.waker_cpu);
    } else {
        qsort(w.lat, w.got, sizeof *w.lat, cmp_u64);
        out = Py_BuildValue("{s:i,s:i,s:l,s:I,s:d,s:d}", "sleeper_cpu", w.sleeper_cpu, "waker_cpu", w.waker_cpu,
                            "gap_us", w.gap_us, "rounds", w.got, "p50_us", w.lat[w.got / 2] / 1e3, "p99_us",
                            w.lat[(size_t)w.got * 99 / 100] / 1e3);
    }
    PyMem_Free(w.lat);
    return out;
}

/* bench_rules(region, keys, lookups) -> {"mpps", "ns_per_lookup", "matched", "seconds", "lookups"}
 * Looks the keys up in the rule classifier, cycling through them, as RX does for a new flow. */
static PyObject *mod_bench_rules(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"region", "keys", "lookups", NULL};
    PyObject *region, *ko;
    unsigned lookups;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOI", kwlist, &region, &ko, &lookups))
        return NULL;
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return NULL;
    PyObject *f = PySequence_Fast(ko, "keys must be a sequence of key tuples");
    if (!f)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(f);
    struct onvm_flow_key *keys = PyMem_Calloc((size_t)n + 1, sizeof *keys);
    if (!keys) {
        Py_DECREF(f);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (onvm_core->key_from(PySequence_Fast_GET_ITEM(f, i), &keys[i]) < 0) {
            Py_DECREF(f);
            PyMem_Free(keys);
            return NULL;
        }
    }
    Py_DECREF(f);
    if (n == 0 || lookups == 0) {
        PyMem_Free(keys);
        return PyErr_Format(PyExc_ValueError, "bench_rules needs keys and lookups");
    }
    uint64_t matched = 0, t0, t1;
    Py_BEGIN_ALLOW_THREADS t0 = onvm_now_ns();
    for (uint32_t i = 0; i < lookups; i++) {
        struct onvm_cls_result res;
        if (onvm_core->cls_lookup(r, &keys[i % (uint32_t)n], &res) == 0 && res.slot >= 0)
            matched++;
    }
    t1 = onvm_now_ns();
    Py_END_ALLOW_THREADS PyMem_Free(keys);
    double secs = (double)(t1 - t0) / 1e9;
    return Py_BuildValue("{s:I,s:K,s:d,s:d,s:d}", "lookups", lookups, "matched", (unsigned long long)matched,
                         "seconds", secs, "mpps", secs > 0 ? lookups / secs / 1e6 : 0.0, "ns_per_lookup",
                         (double)(t1 - t0) / lookups);
}

/* bench_rx(region, flows, packets) -> {"ns_per_packet", "mpps", "seconds", "packets", "flows_used"}
 * What an RX worker does to a burst between reading it and routing it, in one thread
 * and nothing else: parse each packet and classify the burst (flow table, rules).
 * `flows` UDP flows of 64-byte IPv4 packets (10.0.0.1 + i -> 10.1.0.1, ports 1024 -> 80,
 * in-port 0) come in bursts of 64 in turn, so that a flow's packets are `flows` packets
 * apart.  As gen does, each packet is written into a 2 KiB buffer before it is parsed
 * (its source address; the rest stays), the buffers taken in turn from as many as
 * the manager's default pool holds, or one per flow if fewer. */
static PyObject *mod_bench_rx(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"region", "flows", "packets", NULL};
    PyObject *region;
    unsigned flows, packets;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OII", kwlist, &region, &flows, &packets))
        return NULL;
    struct onvm_region *r = onvm_core->region(region);
    if (!r)
        return NULL;
    if (flows == 0 || flows > (1u << 20) || packets == 0)
        return PyErr_Format(PyExc_ValueError, "bench_rx needs 1..1048576 flows and some packets");
    enum { BUF = 2048, LEN = 64, BURST = 64, POOL = 16384 };
    uint32_t nbuf = flows < POOL ? flows : POOL;
    uint8_t *bufs = PyMem_Calloc(nbuf, BUF);
    struct onvm_meta *metas = PyMem_Calloc(nbuf, sizeof *metas);
    if (!bufs || !metas) {
        PyMem_Free(bufs);
        PyMem_Free(metas);
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < nbuf; i++) {
        uint8_t *eth = bufs + (size_t)i * BUF, *ip = eth + 14, *udp = ip + 20;
        eth[12] = 0x08; /* IPv4 */
        ip[0] = 0x45;
        ip[3] = LEN - 14;
        ip[8] = 64;
        ip[9] = 17;
        ip[16] = 10, ip[17] = 1, ip[18] = 0, ip[19] = 1;
        udp[0] = 1024 >> 8, udp[1] = 1024 & 0xff, udp[3] = 80, udp[5] = LEN - 34;
    }
    struct onvm_meta *m[BURST];
    const uint8_t *d[BURST];
    uint64_t t0, t1, now;
    uint32_t flow = 0, buf = 0, done = 0;
    Py_BEGIN_ALLOW_THREADS t0 = now = onvm_now_ns();
    while (done < packets) {
        uint32_t n = packets - done < BURST ? packets - done : BURST;
        for (uint32_t j = 0; j < n; j++) {
            uint8_t *p = bufs + (size_t)buf * BUF;
            uint32_t src = 0x0a000001u + flow;
            for (int k = 0; k < 4; k++)
                p[14 + 12 + k] = (uint8_t)(src >> (24 - 8 * k));
            m[j] = &metas[buf];
            d[j] = p;
            memset(m[j], 0, sizeof *m[j]);
            m[j]->len = LEN;
            onvm_core->parse(m[j], p, LEN);
            flow = flow + 1 == flows ? 0 : flow + 1;
            buf = buf + 1 == nbuf ? 0 : buf + 1;
        }
        if ((done & 1023) < BURST) /* the clock once every 16 bursts: RX reads it once a round */
            now = onvm_now_ns();
        onvm_core->classify_burst(r, m, d, n, now);
        done += n;
    }
    t1 = onvm_now_ns();
    Py_END_ALLOW_THREADS PyMem_Free(bufs);
    PyMem_Free(metas);
    double secs = (double)(t1 - t0) / 1e9;
    return Py_BuildValue("{s:d,s:d,s:d,s:I,s:L}", "ns_per_packet", (double)(t1 - t0) / packets, "mpps",
                         secs > 0 ? packets / secs / 1e6 : 0.0, "seconds", secs, "packets", packets, "flows_used",
                         (long long)atomic_load(&r->hdr->flows_used));
}

static PyMethodDef hookbench_methods[] = {
    {"bench_rx", (PyCFunction)(void (*)(void))mod_bench_rx, METH_VARARGS | METH_KEYWORDS,
     "bench_rx(region, flows, packets) -> RX's parse and classification of a flow mix, ns per packet"},
    {"bench_rules", (PyCFunction)(void (*)(void))mod_bench_rules, METH_VARARGS | METH_KEYWORDS,
     "bench_rules(region, keys, lookups): time the rule classifier on these keys, cycled"},
    {"bench_lookup", (PyCFunction)(void (*)(void))mod_bench_lookup, METH_VARARGS | METH_KEYWORDS,
     "bench_lookup(region, entries, lookups, bulk=True): time the packet path's flow lookup"},
    {"afpacket_blast", mod_afpacket_blast, METH_VARARGS,
     "afpacket_blast(ifname, frame, seconds) -> frames sent (a benchmark sender)"},
    {"xdp_blast", mod_xdp_blast, METH_VARARGS,
     "xdp_blast(ifname, frame, seconds) -> frames sent as XDP frames (a benchmark sender)"},
    {"futex_wake", (PyCFunction)(void (*)(void))mod_futex_wake, METH_VARARGS | METH_KEYWORDS,
     "futex_wake(sleeper_cpu, waker_cpu, gap_us=100, rounds=5000) -> wake-up latency percentiles"},
    {NULL}};

int onvm_hookbench_register(PyObject *module) { return PyModule_AddFunctions(module, hookbench_methods); }
