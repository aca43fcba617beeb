"""Per-burst numpy views for batch handlers.

The native loop fills six fixed arrays for each burst; a handler sees views
of their first ``n`` entries.  Views for each burst length are made once and
cached, so a call costs a handful of attribute stores, not array creation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onvm.actions import Action

_FIELDS = (
    ("slots", np.uint32),
    ("length", np.uint32),
    ("flow_hash", np.uint32),
    ("in_port", np.uint16),
    ("action", np.uint8),
    ("dest", np.uint16),
)


class Batch:
    """One burst of packets, as arrays of equal length ``n``.

    ``slots``, ``length``, ``flow_hash`` and ``in_port`` are read-only facts;
    ``action`` and ``dest`` start as the NF's default (NEXT) and whatever the
    handler leaves in them is applied to each packet.
    """

    __slots__ = ("n", "_full", "_views", *(name for name, _ in _FIELDS))

    def __init__(self, capacity: int) -> None:
        self._full = tuple(np.zeros(capacity, dtype=dt) for _, dt in _FIELDS)
        self._views: dict[int, tuple[np.ndarray[Any, Any], ...]] = {}
        self.n = 0
        self._set(capacity)

    @property
    def arrays(self) -> tuple[np.ndarray[Any, Any], ...]:
        """The full-capacity arrays the native loop writes into."""
        return self._full

    def _set(self, n: int) -> None:
        views = self._views.get(n)
        if views is None:
            views = tuple(a[:n] for a in self._full)
            self._views[n] = views
        self.n = n
        (self.slots, self.length, self.flow_hash, self.in_port, self.action, self.dest) = views

    # Convenience for whole-burst or masked decisions.
    def drop(self, mask: Any = slice(None)) -> None:
        """Drop every packet (or those selected by ``mask``)."""
        self.action[mask] = Action.DROP

    def next(self, mask: Any = slice(None)) -> None:
        """Send packets on to the next hop of their chain."""
        self.action[mask] = Action.NEXT

    def tonf(self, service: int, mask: Any = slice(None)) -> None:
        """Send packets to a service."""
        self.action[mask] = Action.TONF
        self.dest[mask] = service

    def out(self, port: int, mask: Any = slice(None)) -> None:
        """Send packets out of a port."""
        self.action[mask] = Action.OUT
        self.dest[mask] = port

    def __len__(self) -> int:
        return self.n
