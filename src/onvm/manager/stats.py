"""Live stats, printed once a second from the counters in the region."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def describe_pool(pool: dict[str, Any]) -> str:
    """The pool's balance in one line: free + lent to ports + in use = total."""
    if not pool.get("lent"):
        return f"pool {pool['free']}/{pool['total']} slots free"
    return (f"pool {pool['free']} free + {pool['lent']} lent to ports + {pool['in_use']} in use"
            f" = {pool['total']} slots")


def _rate(now: int, before: int, secs: float) -> str:
    pps = (now - before) / secs
    return f"{pps / 1e6:7.3f} Mpps" if pps >= 1e4 else f"{pps:7.0f} pps "


class StatsPrinter:
    """A thread that prints per-port and per-NF rates every ``interval`` seconds.

    ``status`` returns the manager's status (as ``onvm status --json`` shows it)."""

    def __init__(self, status: Callable[[], dict[str, Any]], interval: float) -> None:
        self.status = status
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onvm-stats", daemon=True)
        self._last: dict[tuple[str, int], tuple[int, int]] = {}
        self._last_t = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                status = self.status()
            except Exception:  # the manager is going away under us
                return
            print(self.render(status), file=sys.stderr, flush=True)

    def render(self, status: dict[str, Any]) -> str:
        now = time.monotonic()
        secs = max(now - self._last_t, 1e-9)
        self._last_t = now
        lines = [f"--- onvm[{status['manager']['name']}] {status['manager']['uptime']:.0f} s, "
                 + describe_pool(status["pool"])]
        for p in status["ports"]:
            rx0, tx0 = self._last.get(("p", p["id"]), (p["rx"], p["tx"]))
            self._last[("p", p["id"])] = (p["rx"], p["tx"])
            drops = sum(p["drops"].values())
            why = ", ".join(f"{k} {v}" for k, v in p["drops"].items())
            lines.append(f"  port {p['id']:<2} {p['kind']:<8} rx {_rate(p['rx'], rx0, secs)}"
                         f"  tx {_rate(p['tx'], tx0, secs)}  drops {drops}" + (f" ({why})" if why else "")
                         + ("  (done)" if p["done"] else ""))
        for n in status["nfs"]:
            rx0, tx0 = self._last.get(("n", n["id"]), (n["rx"], n["tx"]))
            self._last[("n", n["id"])] = (n["rx"], n["tx"])
            drops = sum(n["drops"].values())
            acts = " ".join(f"{k} {v}" for k, v in n["actions"].items() if v)
            lines.append(f"  NF {n['id']:<3} {n['name'][:14]:<14} svc {n['service']}.{n['instance']}"
                         f" {n['state']:<8} rx {_rate(n['rx'], rx0, secs)}  tx {_rate(n['tx'], tx0, secs)}"
                         f"  drops {drops}  ring {n['rx_ring']}" + (f"  [{acts}]" if acts else "")
                         + (f"  early {n['early']} late {n['late']}" if n.get("early") or n.get("late")
                            else ""))
        return "\n".join(lines)
