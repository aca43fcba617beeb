"""The manager's event log: what happened (an NF registered, a port failed), for people and the web.

Each entry is printed as ``onvm[NAME]: text`` unless the manager is quiet,
and kept for ``onvm status`` and the dashboard, which reads entries by id
(ids count from 1 and never change; the oldest entries are let go).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any

__all__ = ["EventLog"]

KEPT = 10_000


class EventLog:
    """Log lines of one manager; calling it logs one."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self._entries: deque[tuple[float, str]] = deque(maxlen=KEPT)
        self._count = 0  # entries ever logged: the id of the newest
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            self._entries.append((time.time(), text))
            self._count += 1
        if not self.quiet:
            print(f"onvm[{self.name}]: {text}", file=sys.stderr, flush=True)

    def recent(self, n: int) -> list[dict[str, Any]]:
        """The last ``n`` entries as ``{"time", "text"}``."""
        with self._lock:
            return [{"time": t, "text": text} for t, text in list(self._entries)[-n:]]

    def since(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Entries with an id above ``since``, at most the last ``limit`` of them."""
        with self._lock:
            first = self._count - len(self._entries) + 1  # id of the oldest kept
            start = max(since + 1, self._count - limit + 1, first)
            return [{"id": i, "time": t, "text": text}
                    for i, (t, text) in enumerate(list(self._entries)[start - first:], start)]
