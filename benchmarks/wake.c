/* wake.c - how long a futex wake-up takes to reach a sleeping thread.
 *
 *     wake SLEEPER_CPU WAKER_CPU [GAP_US] [ROUNDS]
 *
 * A sleeper thread pinned to SLEEPER_CPU waits on a futex; the waker, pinned
 * to WAKER_CPU, sleeps GAP_US (so the machine goes idle between rounds, as it
 * does between packets at a low rate), stamps the time and wakes it.  The
 * sleeper stamps the time it runs again.  Prints one JSON line with the
 * median and 99th percentile of the difference, in microseconds.
 *
 * With both on one CPU the wake-up is a context switch on a CPU that is
 * awake.  On two CPUs the sleeper's CPU is idle: on a VM whose idle vCPUs
 * halt, this is the time the hypervisor takes to run it again.  This is the
 * figure behind packing (src/onvm/manager/packing.py).
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static _Atomic uint32_t word;   /* 1 while the sleeper waits */
static _Atomic uint64_t woke_at; /* the waker's stamp */
static _Atomic int done;
static uint64_t *lat;
static int rounds, got, sleeper_cpu;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) {
        fprintf(stderr, "wake: cannot run on CPU %d\n", cpu);
        exit(2);
    }
}

static void *sleeper(void *arg) {
    (void)arg;
    pin(sleeper_cpu);
    while (!atomic_load(&done)) {
        atomic_store(&word, 1);
        while (atomic_load(&word) == 1)
            syscall(SYS_futex, &word, FUTEX_WAIT, 1, NULL, NULL, 0);
        uint64_t t = now_ns();
        if (!atomic_load(&done) && got < rounds)
            lat[got++] = t - atomic_load(&woke_at);
    }
    return NULL;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void wake(void) {
    atomic_store(&word, 0);
    syscall(SYS_futex, &word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: wake SLEEPER_CPU WAKER_CPU [GAP_US] [ROUNDS]\n");
        return 2;
    }
    sleeper_cpu = atoi(argv[1]);
    int waker_cpu = atoi(argv[2]);
    long gap_us = argc > 3 ? atol(argv[3]) : 100;
    rounds = argc > 4 ? atoi(argv[4]) : 5000;
    if (rounds < 1 || gap_us < 0) {
        fprintf(stderr, "wake: ROUNDS must be positive and GAP_US not negative\n");
        return 2;
    }
    lat = calloc((size_t)rounds, sizeof *lat);
    pthread_t t;
    pthread_create(&t, NULL, sleeper, NULL);
    pin(waker_cpu);
    for (int i = 0; i < rounds; i++) {
        struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
        nanosleep(&gap, NULL);
        while (atomic_load(&word) != 1) /* the sleeper is back on its futex */
            sched_yield();
        atomic_store(&woke_at, now_ns());
        wake();
    }
    while (atomic_load(&word) != 1)
        sched_yield();
    atomic_store(&done, 1);
    wake();
    pthread_join(t, NULL);
    qsort(lat, (size_t)got, sizeof *lat, cmp);
    printf("{\"sleeper_cpu\": %d, \"waker_cpu\": %d, \"gap_us\": %ld, \"rounds\": %d, "
           "\"p50_us\": %.2f, \"p99_us\": %.2f}\n",
           sleeper_cpu, waker_cpu, gap_us, got, lat[got / 2] / 1e3, lat[(size_t)got * 99 / 100] / 1e3);
    free(lat);
    return 0;
}
