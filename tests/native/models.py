"""Pure-Python reference models of the native core: the oracles of tests/native.

Theory of operation
-------------------
Each model states what the native structure must do, in the plainest Python
that says it, and nothing about how it does it:

* ``RingModel`` is a bounded FIFO of ``size - 1`` entries.  A burst enqueue or
  dequeue moves as many entries as fit (up to n); a bulk one moves all n or
  nothing.  Single- and multi-producer enqueues mean the same thing to a
  single thread.
* ``PoolModel`` is the packet pool's LIFO free stacks with ownership stamps.
  A fresh pool hands out slots 0, 1, 2, ...; ``free(slots)`` puts the given
  slots on top in the order given, so an ``alloc`` right after it returns
  them in that same order.  The binding frees in bursts of ``FREE_BURST``
  slots, each burst landing on top of the one before: that is modelled too.
  With several stacks, the pool is cut into that many spans of consecutive
  slots; a freed slot goes to its span's stack (each stack gets its part of a
  burst on top, in the order given), and an allocation takes from its home
  stack first, then from the next ones in turn.
* ``parse_model`` reads Ethernet, up to two VLAN tags, IPv4, IPv6 with its
  common extension headers, ARP, TCP, UDP and ICMP the way the RX path must,
  and computes the symmetric flow hash bit for bit.
* ``pick_model`` is rendezvous hashing over a service's instances.
* ``PacerModel`` is a paced gen port's schedule: packet k is due at
  ``t0 + k / rate`` (exact fractions), t0 being the first time it is asked,
  up to ``cap`` packets.  It releases packets once a burst of them is due
  (100 us worth, 1 to 256), and counts as missed what lies more than
  ``QUEUE`` packets behind.

The hash functions read multi-byte words little endian, as the native code
does on the little-endian machines pyonvm runs on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from fractions import Fraction

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF

ENTRY_MAX = 0xFFFFFFFF  # ring entries are 32 bits: any value may travel (readers validate)
OWNER_FREE = 0xFFFF
OWNER_PORT_BASE = 0xFF00  # + port id: the slot is lent to that port's device
FREE_BURST = 256  # Region.free pushes at most this many slots per stack push

L3_NONE, L3_IPV4, L3_IPV6, L3_ARP = 0, 1, 2, 3
MF_VLAN, MF_TRUNC, MF_FRAG = 0x01, 0x02, 0x04

# Smallest header the parser needs before it records an offset.
L3_MIN = {L3_IPV4: 20, L3_IPV6: 40, L3_ARP: 28}
L4_MIN = {6: 20, 17: 8, 1: 4, 58: 4}

# The fields parse_model computes; the native metadata dict has more.
PARSE_KEYS = ("len", "flow_hash", "flags", "l3_type", "l4_proto", "l3_off", "l4_off")


# ---- ring ----------------------------------------------------------------------


class RingModel:
    """A bounded FIFO with the native ring's burst/bulk contract."""

    def __init__(self, size: int) -> None:
        if not (2 <= size <= 1 << 24) or size & (size - 1):
            raise ValueError(f"ring size {size} is not a power of two in 2..2^24")
        self.size = size
        self.capacity = size - 1
        self.entries: list[int] = []

    def enqueue(self, items: Sequence[int], mp: bool = False, bulk: bool = False) -> int:
        """Append up to len(items) (burst) or all of them or none (bulk); return how many."""
        del mp  # one thread cannot tell single- from multi-producer enqueue apart
        for v in items:
            if not 0 <= v <= ENTRY_MAX:
                raise ValueError("ring entries are 32 bits")
        room = self.free_count()
        n = len(items)
        if n > room:
            if bulk:
                return 0
            n = room
        self.entries.extend(items[:n])
        return n

    def dequeue(self, n: int, bulk: bool = False) -> list[int]:
        """Take up to n entries (burst) or exactly n or none (bulk), oldest first."""
        if n > len(self.entries):
            if bulk:
                return []
            n = len(self.entries)
        out, self.entries = self.entries[:n], self.entries[n:]
        return out

    def count(self) -> int:
        return len(self.entries)

    def free_count(self) -> int:
        return self.capacity - len(self.entries)

    def __repr__(self) -> str:
        shown = self.entries if len(self.entries) <= 16 else self.entries[:8] + ["..."]
        return f"RingModel(size={self.size}, count={self.count()}, entries={shown})"


class WatermarkModel:
    """A ring's backpressure flag (onvm_bp.h): congested from high until drained to low."""

    def __init__(self, size: int) -> None:
        self.ring = RingModel(size)
        self.high, self.low = size // 2, size // 4
        self.congested = False

    def enqueue(self, items: Sequence[int]) -> int:
        """A producer's enqueue: the ring congests once it holds high entries or more."""
        n = self.ring.enqueue(items)
        if self.ring.count() >= self.high:
            self.congested = True
        return n

    def dequeue(self, n: int) -> list[int]:
        """The consumer's dequeue (an empty poll too): it clears the flag at low or below."""
        out = self.ring.dequeue(n)
        if self.ring.count() <= self.low:
            self.congested = False
        return out

    def __repr__(self) -> str:
        return f"WatermarkModel(high={self.high}, low={self.low}, congested={self.congested}, {self.ring!r})"


# ---- pool ----------------------------------------------------------------------


class PoolModel:
    """The packet pool: LIFO free stacks of slot indices with owner stamps."""

    def __init__(self, count: int, stacks: int = 1) -> None:
        self.count = count
        self.span = -(-count // stacks)  # slots per stack's span
        self.stacks: list[list[int]] = [[] for _ in range(stacks)]  # top of each at the end
        self.owner = [0] * count
        self.lent: dict[tuple[int, int], int] = {}
        for top in range(count, 0, -FREE_BURST):  # as the region is filled: slot 0 on top
            self.free(range(max(top - FREE_BURST, 0), top))

    @property
    def stack(self) -> list[int]:
        """Every free slot, stack after stack."""
        return [s for st in self.stacks for s in st]

    def alloc(self, n: int, owner: int = 0, home: int = 0) -> list[int]:
        """Pop up to n slots, most recently freed first, from stack home and then the
        ones after it, and stamp them with owner."""
        out: list[int] = []
        for i in range(len(self.stacks)):
            st = self.stacks[(home + i) % len(self.stacks)]
            out += [st.pop() for _ in range(min(n - len(out), len(st)))]
        for s in out:
            self.owner[s] = owner & 0xFFFF
        return out

    def _push(self, burst: Sequence[int]) -> None:
        for k, st in enumerate(self.stacks):
            st.extend(reversed([s for s in burst if s // self.span == k]))

    def free(self, slots: Iterable[int]) -> None:
        """Return held slots; the first slot of each burst ends on top."""
        slots = list(slots)
        for s in slots:
            if not 0 <= s < self.count:
                raise ValueError(f"slot {s} is outside the pool (0..{self.count - 1})")
            if self.owner[s] == OWNER_FREE:
                raise ValueError(f"slot {s} is already free")
        if len(set(slots)) != len(slots):
            raise ValueError("a slot is freed twice in one call")
        for i in range(0, len(slots), FREE_BURST):
            burst = slots[i : i + FREE_BURST]
            self._push(burst)
            for s in burst:
                self.owner[s] = OWNER_FREE

    def free_count(self) -> int:
        return sum(len(st) for st in self.stacks)

    def held(self) -> list[int]:
        """Slots currently allocated, in index order."""
        return [s for s, o in enumerate(self.owner) if o != OWNER_FREE]

    def owners(self) -> dict[int, int]:
        """{owner stamp: number of slots}, as Region.owners() reports it."""
        return dict(Counter(self.owner))

    # Slots lent to ports' devices: lent[(port, worker)] is each worker's count.
    def lend(self, port: int, worker: int, n: int) -> list[int]:
        out = self.alloc(n, OWNER_PORT_BASE + port)
        self.lent[port, worker] = self.lent.get((port, worker), 0) + len(out)
        return out

    def took_back(self, port: int, worker: int, slots: Iterable[int]) -> None:
        slots = list(slots)
        if any(self.owner[s] != OWNER_PORT_BASE + port for s in slots):
            raise ValueError(f"a slot is not lent to port {port}")
        for s in slots:
            self.owner[s] = 0
        self.lent[port, worker] = self.lent.get((port, worker), 0) - len(slots)

    def port_reclaim(self, port: int) -> int:
        """After the port closed: what its device still held goes back to the pool."""
        slots = [s for s, o in enumerate(self.owner) if o == OWNER_PORT_BASE + port]
        self.free(slots)
        for key in [k for k in self.lent if k[0] == port]:
            del self.lent[key]
        return len(slots)

    def port_lent(self, port: int) -> int:
        return sum(v for (p, _), v in self.lent.items() if p == port)

    def in_use(self) -> int:
        """Slots neither free nor lent: in rings, NFs, workers."""
        return sum(1 for o in self.owner if o < OWNER_PORT_BASE)

    def __repr__(self) -> str:
        top = list(reversed(self.stack[-8:]))
        return f"PoolModel(count={self.count}, free={self.free_count()}, top={top})"


# ---- pacer ---------------------------------------------------------------------


class PacerModel:
    """When a gen port paced at ``rate`` packets per second (``cap`` in all) may send;
    ``rate`` 0: unpaced, and :meth:`set_rate` changes it on the way."""

    QUEUE = 4096  # packets that may fall due unread before the oldest are missed

    def __init__(self, rate: int, cap: int = 0) -> None:
        self.rate = rate
        self.cap = cap
        self.t0: int | None = None
        self.base = 0  # packets of the schedule before the grid that starts at t0
        self.sent = 0  # packets of the schedule sent or missed
        self.missed = 0

    @property
    def burst(self) -> int:
        return min(256, max(1, self.rate // 10000))

    def due_at(self, k: int) -> Fraction:
        """When packet k of the schedule is due, in ns."""
        assert self.t0 is not None
        return self.t0 + Fraction((k - self.base) * 10**9, self.rate)

    def due_by(self, now: int) -> int:
        """How many packets of the schedule are due by now."""
        assert self.t0 is not None
        if now < self.t0:
            return self.base
        due = self.base + math.floor(Fraction(now - self.t0) * self.rate / 10**9) + 1
        return min(due, self.cap) if self.cap else due

    def pace(self, now: int, want: int) -> tuple[int, int | None]:
        """(packets allowed now, the ns when more will be, or None)."""
        if not self.rate:
            return want, None
        if self.t0 is None:
            self.t0 = now
        due = self.due_by(now)
        if due - self.sent > self.QUEUE:
            self.missed += due - self.sent - self.QUEUE
            self.sent = due - self.QUEUE
        if want == 0:
            return 0, None
        burst = min(self.burst, want)
        can = due - self.sent
        if can < burst:
            return 0, math.ceil(self.due_at(self.sent + burst - 1))
        return min(can, want), None

    def took(self, n: int) -> None:
        self.sent += n

    def set_rate(self, now: int, rate: int) -> None:
        """From now on, ``rate`` a second: what fell due and waits still waits, and the
        next packet is due at once."""
        base = self.sent
        if self.rate and self.t0 is not None:
            self.pace(now, 0)
            base = self.due_by(now)
        self.rate, self.base, self.t0 = rate, base, now


# ---- hashes --------------------------------------------------------------------


def mix64(x: int) -> int:
    x &= M64
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & M64
    x ^= x >> 33
    return x


def mix32(x: int) -> int:
    x &= M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def flow_hash_model(a: int, b: int, pa: int, pb: int, proto: int) -> int:
    """Symmetric 5-tuple hash: swapping (a, pa) with (b, pb) gives the same value; never 0."""
    lo, hi = min(a, b), max(a, b)
    plo, phi = min(pa, pb), max(pa, pb)
    h = mix64(((lo << 32) | hi) ^ mix64((plo << 24) | (phi << 8) | (proto & 0xFF)))
    v = (h ^ (h >> 32)) & M32
    return v or 1


def fold_ipv6(addr: bytes) -> int:
    """Fold a 16-byte IPv6 address to the 32-bit word the flow hash takes."""
    hi = int.from_bytes(addr[0:8], "little")
    lo = int.from_bytes(addr[8:16], "little")
    h = mix64(hi ^ mix64(lo))
    return (h ^ (h >> 32)) & M32


def pick_model(members: Sequence[tuple[int, int]], flow_hash: int) -> int:
    """NF id that serves flow_hash among (nf_id, instance) members; 0 when there are none."""
    if not members:
        return 0
    if len(members) == 1:
        return members[0][0]
    best, pick = -1, 0
    for nf_id, inst in members:
        score = mix32(flow_hash ^ ((0x9E3779B9 * (inst + 1)) & M32))
        if score > best:  # the first of equal scores wins
            best, pick = score, nf_id
    return pick


# ---- header parsing ------------------------------------------------------------


def _rd16(p: bytes, off: int) -> int:
    return p[off] << 8 | p[off + 1]


def parse_model(data: bytes) -> dict[str, int]:
    """What the RX path records about a frame: offsets, types, flags, flow hash.

    Rules: a header that does not fit is never recorded; the frame is then
    flagged MF_TRUNC and what was found before it stays.  ARP is the one
    exception: its type and offset are recorded even when its 28 bytes are
    cut short.  A non-first fragment (IPv4 offset != 0, or an IPv6 fragment
    header with offset != 0) carries no transport header: it is flagged
    MF_FRAG, its l4_proto is the fragment's protocol and it is hashed without
    ports.  A first fragment is flagged MF_FRAG and parsed on.
    """
    n = len(data)
    out = {k: 0 for k in PARSE_KEYS}
    out["len"] = n

    def done(**kw: int) -> dict[str, int]:
        out.update(kw)
        return out

    if n < 14:
        return done(flags=MF_TRUNC)
    flags = 0
    off = 12
    et = _rd16(data, off)
    for _ in range(2):  # 802.1Q / 802.1ad, at most two tags
        if et not in (0x8100, 0x88A8):
            break
        if off + 6 > n:
            return done(flags=flags | MF_TRUNC)
        flags |= MF_VLAN
        off += 4
        et = _rd16(data, off)
    off += 2

    if et == 0x0806:
        if off + 28 > n:
            flags |= MF_TRUNC
        return done(l3_type=L3_ARP, l3_off=off, flags=flags)

    if et == 0x0800:
        if off + 20 > n:
            return done(flags=flags | MF_TRUNC)
        ver, ihl = data[off] >> 4, (data[off] & 0x0F) * 4
        if ver != 4 or ihl < 20 or off + ihl > n:
            return done(flags=flags | MF_TRUNC)
        proto = data[off + 9]
        a = int.from_bytes(data[off + 12 : off + 16], "big")
        b = int.from_bytes(data[off + 16 : off + 20], "big")
        frag = _rd16(data, off + 6)
        out.update(l3_type=L3_IPV4, l3_off=off)
        if frag & 0x1FFF:
            return done(flags=flags | MF_FRAG, l4_proto=proto, flow_hash=flow_hash_model(a, b, 0, 0, proto))
        if frag & 0x2000:
            flags |= MF_FRAG
        l4 = off + ihl
    elif et == 0x86DD:
        if off + 40 > n:
            return done(flags=flags | MF_TRUNC)
        out.update(l3_type=L3_IPV6, l3_off=off)
        proto = data[off + 6]
        a = fold_ipv6(data[off + 8 : off + 24])
        b = fold_ipv6(data[off + 24 : off + 40])
        l4 = off + 40
        for _ in range(8):  # hop-by-hop, routing, destination options, fragment
            if proto in (0, 43, 60):
                if l4 + 8 > n:
                    return done(
                        flags=flags | MF_TRUNC,
                        l4_proto=proto,
                        flow_hash=flow_hash_model(a, b, 0, 0, proto),
                    )
                proto, l4 = data[l4], l4 + 8 + data[l4 + 1] * 8
            elif proto == 44:
                if l4 + 8 > n:
                    # l4_proto stays 0 here, unlike the cut-short options headers above.
                    return done(flags=flags | MF_TRUNC, flow_hash=flow_hash_model(a, b, 0, 0, 44))
                flags |= MF_FRAG
                proto = data[l4]
                if _rd16(data, l4 + 2) >> 3:
                    return done(flags=flags, l4_proto=proto, flow_hash=flow_hash_model(a, b, 0, 0, proto))
                l4 += 8
            else:
                break
    else:
        return done(flags=flags)

    pa = pb = 0
    need = L4_MIN.get(proto, 0)
    if need:
        if l4 + need > n:
            flags |= MF_TRUNC
        else:
            out["l4_off"] = l4
            if proto in (6, 17) and not flags & MF_FRAG:  # fragments hash without ports
                pa, pb = _rd16(data, l4), _rd16(data, l4 + 2)
    return done(flags=flags, l4_proto=proto, flow_hash=flow_hash_model(a, b, pa, pb, proto))


def is_later_ipv6_fragment(data: bytes) -> bool:
    """True if data is an IPv6 packet whose fragment header has a nonzero offset.

    Such a fragment carries no transport header (see
    test_parse.py::test_ipv6_later_fragment_has_no_transport_header).
    """
    n = len(data)
    if n < 14:
        return False
    off, et = 12, _rd16(data, 12)
    for _ in range(2):
        if et not in (0x8100, 0x88A8) or off + 6 > n:
            break
        off += 4
        et = _rd16(data, off)
    off += 2
    if et != 0x86DD or off + 40 > n:
        return False
    proto, l4 = data[off + 6], off + 40
    for _ in range(8):
        if l4 + 8 > n:
            return False
        if proto == 44:
            if _rd16(data, l4 + 2) >> 3:
                return True
            proto, l4 = data[l4], l4 + 8
        elif proto in (0, 43, 60):
            proto, l4 = data[l4], l4 + 8 + data[l4 + 1] * 8
        else:
            return False
    return False
