/* tap.c - the tap:NAME port: a TAP device the manager creates.
 *
 * The device lives as long as the manager holds its file descriptor: closing
 * the port removes it (it is not made persistent).  A frame is one read() or
 * one write() on the descriptor, copied into or out of a pool slot.  The device
 * is brought up at open; giving it addresses or moving it into a network
 * namespace is left to the user (ip link set NAME netns NS keeps it attached).
 */
#define _GNU_SOURCE
#include "onvm_port.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

struct tap {
    int fd;
};

static uint32_t tap_rxq(struct onvm_port *p, unsigned qi, struct onvm_region *r, uint32_t *slots,
                        uint32_t n, uint64_t now, uint64_t *next_due, struct onvm_port_stats *st) {
    (void)qi;
    struct tap *t = p->drv;
    uint32_t got = 0, room = onvm_slot_room(r);
    while (got < n) {
        if (onvm_pool_alloc_burst(r, slots + got, 1, ONVM_OWNER_MGR) != 1) {
            p->no_slot++;
            if (next_due && now + 100000 < *next_due)
                *next_due = now + 100000; /* look again soon rather than spin */
            break;
        }
        uint32_t s = slots[got];
        onvm_slot_reset(r, s);
        ssize_t len = read(t->fd, onvm_slot_data(r, s), room);
        if (len <= 0) {
            onvm_pool_free_burst(r, &s, 1);
            if (len < 0 && errno != EAGAIN && errno != EINTR && !p->error[0])
                snprintf(p->error, sizeof p->error, "tap %.160s: read failed: %s", p->path,
                         strerror(errno));
            break;
        }
        if ((size_t)len == room) { /* may have been cut: a frame longer than a slot */
            onvm_pool_free_burst(r, &s, 1);
            p->skipped++;
            if (st)
                st->drops[ONVM_DROP_PORT]++;
            continue;
        }
        r->meta[s].len = (uint32_t)len;
        r->meta[s].rx_ns = now;
        r->meta[s].in_port = (uint16_t)p->id;
        got++;
    }
    return got;
}

static uint32_t tap_tx(struct onvm_port *p, struct onvm_region *r, const uint32_t *slots, uint32_t n,
                       uint64_t *bytes, struct onvm_port_stats *st) {
    (void)st;
    struct tap *t = p->drv;
    uint32_t sent = 0;
    uint64_t b = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t len = r->meta[slots[i]].len;
        ssize_t w = write(t->fd, onvm_slot_data(r, slots[i]), len);
        if (w == (ssize_t)len) {
            sent++;
            b += len;
        } else if (w < 0 && errno != EAGAIN && errno != EIO && !p->error[0]) {
            /* EIO: the device is down; the frames are dropped and counted */
            snprintf(p->error, sizeof p->error, "tap %.160s: write failed: %s", p->path, strerror(errno));
        }
    }
    *bytes = b;
    onvm_pool_free_burst(r, slots, n);
    return sent;
}

static void tap_close(struct onvm_port *p) {
    struct tap *t = p->drv;
    if (!t)
        return;
    if (t->fd >= 0)
        close(t->fd);
    free(t);
    p->drv = NULL;
}

struct onvm_port *onvm_port_open_tap(int id, const char *name, char *err, size_t errlen) {
    if (strlen(name) == 0 || strlen(name) >= IFNAMSIZ) {
        snprintf(err, errlen, "tap %s: a device name has 1 to %d characters", name, IFNAMSIZ - 1);
        return NULL;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "tap %s: cannot open /dev/net/tun: %s", name, strerror(errno));
        return NULL;
    }
    struct ifreq ifr = {0};
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        int e = errno;
        close(fd);
        snprintf(err, errlen, "tap %s: cannot create the device: %s%s", name, strerror(e),
                 e == EPERM ? " (needs CAP_NET_ADMIN)"
                 : e == EBUSY || e == EINVAL ? " (the name is taken by another device)" : "");
        return NULL;
    }
    /* bring it up */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq up = {0};
    snprintf(up.ifr_name, IFNAMSIZ, "%s", name);
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &up) != 0 ||
        (up.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &up) != 0)) {
        int e = errno;
        if (s >= 0)
            close(s);
        close(fd);
        snprintf(err, errlen, "tap %s: cannot bring the device up: %s", name, strerror(e));
        return NULL;
    }
    close(s);
    struct onvm_port *p = onvm_port_new(id, ONVM_PORT_TAP);
    struct tap *t = calloc(1, sizeof *t);
    if (!p || !t) {
        free(t);
        onvm_port_close(p);
        close(fd);
        snprintf(err, errlen, "tap %s: out of memory", name);
        return NULL;
    }
    t->fd = fd;
    snprintf(p->path, sizeof p->path, "%s", name);
    p->drv = t;
    p->close = tap_close;
    p->nrxq = 1;
    p->rx_fd[0] = fd;
    p->rxq = tap_rxq;
    p->tx = tap_tx;
    return p;
}
