"""Per-burst numpy views for batch handlers.

The native loop fills six fixed arrays for each burst (slots, length,
flow_hash, in_port, action, dest); the parsed fields a handler asked for
(``@nf.batch(fields=...)``) are gathered natively into arrays of their own,
and only those.  A handler sees views of the first ``n`` entries.  Views for
each burst length are made once and cached, so a call costs a handful of
attribute stores, not array creation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from onvm import _native
from onvm.constants import Action
from onvm.errors import ConfigError

_FIELDS = (
    ("slots", np.uint32),
    ("length", np.uint32),
    ("flow_hash", np.uint32),
    ("in_port", np.uint16),
    ("action", np.uint8),
    ("dest", np.uint16),
)

#: Parsed fields a batch handler may ask for, and their array types.  A packet
#: without the field has 0 there (IPv6 addresses are rows of 16 bytes).
GATHER_DTYPES: dict[str, Any] = {
    "ether_type": np.uint16,
    "l3_type": np.uint8,  # 0 none, 1 IPv4, 2 IPv6, 3 ARP
    "proto": np.uint8,  # IP protocol / IPv6 next header of the transport
    "ipv4_src": np.uint32,
    "ipv4_dst": np.uint32,
    "ipv6_src": np.uint8,
    "ipv6_dst": np.uint8,
    "src_port": np.uint16,
    "dst_port": np.uint16,
    "tcp_flags": np.uint8,
    "ttl": np.uint8,  # IPv4 TTL or IPv6 hop limit
    "vlan": np.uint16,  # outer VLAN id
    "flags": np.uint8,  # parse flags: 1 VLAN, 2 truncated, 4 fragment
    "icmp_type": np.uint8,
}
HOLD = _native.ACT_HOLD
WRITABLE = ("ipv4_src", "ipv4_dst", "src_port", "dst_port", "ttl", "tcp_flags")


def check_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """The requested field names, validated."""
    out = tuple(dict.fromkeys(fields))
    bad = [f for f in out if f not in GATHER_DTYPES]
    if bad:
        raise ConfigError(f"unknown batch field(s) {', '.join(bad)}; known: {', '.join(GATHER_DTYPES)}")
    return out


class Batch:
    """One burst of packets, as arrays of equal length ``n``.

    ``slots``, ``length``, ``flow_hash`` and ``in_port`` are read-only facts;
    ``action`` and ``dest`` start as the NF's default (NEXT) and whatever the
    handler leaves in them is applied to each packet.  Requested parsed fields
    (``ipv4_src``, ``dst_port``, ...) are arrays of the same length.
    """

    __slots__ = ("n", "fields", "_full", "_views", "_gathered", "_gather", "_ctx", "_region",
                 *(name for name, _ in _FIELDS), *GATHER_DTYPES)

    def __init__(self, capacity: int, fields: Iterable[str] = ()) -> None:
        self.fields = check_fields(fields)
        self._full = tuple(np.zeros(capacity, dtype=dt) for _, dt in _FIELDS)
        self._gathered = tuple(
            np.zeros((capacity, 16) if f.startswith("ipv6_") else capacity, dtype=GATHER_DTYPES[f])
            for f in self.fields)
        self._views: dict[int, tuple[np.ndarray[Any, Any], ...]] = {}
        self._gather: Any = None
        self._ctx: Any = None
        self._region: Any = None
        self.n = 0
        self._set(capacity)

    @property
    def arrays(self) -> tuple[np.ndarray[Any, Any], ...]:
        """The full-capacity arrays the native loop writes into."""
        return self._full

    def bind(self, region: Any, ctx: Any = None) -> None:
        """Gather the requested fields from ``region`` on each burst; hold through ``ctx``."""
        self._ctx = ctx
        self._region = region
        if self.fields:
            ids = [_native.GATHER_FIELDS[f][0] for f in self.fields]
            specs = list(zip(ids, self._gathered, strict=True))
            self._gather = _native.Gather(region, self._full[0], specs)

    def _set(self, n: int) -> None:
        views = self._views.get(n)
        if views is None:
            views = tuple(a[:n] for a in self._full + self._gathered)
            self._views[n] = views
        self.n = n
        (self.slots, self.length, self.flow_hash, self.in_port, self.action, self.dest) = views[:6]
        for name, v in zip(self.fields, views[6:], strict=True):
            setattr(self, name, v)
        if self._gather is not None:
            self._gather(n)

    def __getattr__(self, name: str) -> Any:
        if name in GATHER_DTYPES:
            raise AttributeError(
                f"batch field {name} was not requested: use @nf.batch(fields=[{name!r}, ...])")
        raise AttributeError(name)

    # Convenience for whole-burst or masked decisions.
    def drop(self, mask: Any = slice(None)) -> None:
        """Drop every packet (or those selected by ``mask``)."""
        self.action[mask] = Action.DROP

    def next(self, mask: Any = slice(None)) -> None:
        """Send packets on to the next hop of their chain."""
        self.action[mask] = Action.NEXT

    def tonf(self, service: Any, mask: Any = slice(None)) -> None:
        """Send packets to a service (one id, or an array of ids matching ``mask``)."""
        self.action[mask] = Action.TONF
        self.dest[mask] = service

    def out(self, port: Any, mask: Any = slice(None)) -> None:
        """Send packets out of a port (one id, or an array of ids matching ``mask``)."""
        self.action[mask] = Action.OUT
        self.dest[mask] = port

    def hold(self, mask: Any = slice(None)) -> np.ndarray[Any, Any]:
        """Keep packets in this NF; returns their slots, for ``NF.release``."""
        if self._ctx is None:
            raise RuntimeError("hold() needs a batch of a running NF")
        slots = np.array(self.slots[mask], dtype=np.uint32)
        self._ctx.hold(slots.tolist())
        self.action[mask] = HOLD
        return slots

    def write(self, field: str, values: Any, mask: Any = slice(None)) -> int:
        """Store ``values`` (one, or one per selected packet) into ``field`` of the packets
        ``mask`` selects, in place; packets without the field are skipped.  Writable:
        ``ipv4_src``, ``ipv4_dst``, ``src_port``, ``dst_port``, ``ttl``, ``tcp_flags``.
        Returns how many packets were written; checksums are left to ``update_checksums``."""
        if field not in WRITABLE:
            raise ValueError(f"batch field {field} cannot be written (writable: {', '.join(WRITABLE)})")
        slots = np.ascontiguousarray(self.slots[mask], dtype=np.uint32)
        vals = np.ascontiguousarray(np.broadcast_to(np.asarray(values).astype(np.uint32), slots.shape))
        done = int(_native.write_field(self._region, _native.GATHER_FIELDS[field][0], slots, vals))
        if field in self.fields:
            getattr(self, field)[mask] = values
        return done

    def update_checksums(self, mask: Any = slice(None), l4: bool = True) -> int:
        """Recompute the IPv4 (and TCP/UDP/ICMP) checksums of the selected packets."""
        slots = np.ascontiguousarray(self.slots[mask], dtype=np.uint32)
        return int(_native.update_checksums(self._region, slots, l4=l4))

    def __len__(self) -> int:
        return self.n
