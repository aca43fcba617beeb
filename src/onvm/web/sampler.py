"""One thread samples the manager; every web client reads its latest sample.

Theory of operation
-------------------
However many browsers, scrapers and API clients there are, the manager's
registry is read once per ``interval``: the sampler takes ``Manager.lock``,
calls ``Manager.status()`` (plus the chains in the region and any extra
sections the manager offers), lets go of the lock and turns the counters into
rates against the previous sample.  Requests are answered from that sample and
never touch the lock, so the web side cannot stall the control socket, and
the packet path (native threads without the GIL) never waits for either.

Sections other parts of the manager may add: if the manager has a
``web_sections()`` method, each key of the dict it returns (called under the
lock) becomes a section of the sample, and ``/api/<key>`` serves it.  ``rules``
and ``flows`` are taken from ``status()`` when it has them.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from onvm.actions import Action

HISTORY = 240  # samples kept for charts that open late


def _rate(now: int, before: int | None, dt: float) -> float:
    if before is None or dt <= 0 or now < before:
        return 0.0
    return round((now - before) / dt, 1)


def add_rates(status: dict[str, Any], prev: dict[str, Any] | None, dt: float) -> None:
    """Give every port and NF of ``status`` rates per second against ``prev``."""
    before: dict[tuple[Any, ...], dict[str, Any]] = {}
    if prev is not None:
        for p in prev["ports"]:
            before[("p", p["id"])] = p
        for n in prev["nfs"]:
            before[("n", n["id"], n["pid"])] = n
    for p in status["ports"]:
        b = before.get(("p", p["id"]), {})
        p["drops_total"] = sum(p["drops"].values())
        p["rx_pps"] = _rate(p["rx"], b.get("rx"), dt)
        p["tx_pps"] = _rate(p["tx"], b.get("tx"), dt)
        p["rx_bps"] = _rate(p["rx_bytes"] * 8, b.get("rx_bytes", -1) * 8 if b else None, dt)
        p["tx_bps"] = _rate(p["tx_bytes"] * 8, b.get("tx_bytes", -1) * 8 if b else None, dt)
        p["drops_ps"] = _rate(p["drops_total"], b.get("drops_total"), dt)
    for n in status["nfs"]:
        b = before.get(("n", n["id"], n["pid"]), {})
        n["drops_total"] = sum(n["drops"].values())
        n["rx_pps"] = _rate(n["rx"], b.get("rx"), dt)
        n["tx_pps"] = _rate(n["tx"], b.get("tx"), dt)
        n["drops_ps"] = _rate(n["drops_total"], b.get("drops_total"), dt)


def services(status: dict[str, Any]) -> list[dict[str, Any]]:
    """NFs grouped by service, with their counters added up."""
    by: dict[int, dict[str, Any]] = {}
    for n in status["nfs"]:
        s = by.setdefault(n["service"], {"id": n["service"], "instances": [], "rx": 0, "tx": 0,
                                         "drops": 0, "rx_pps": 0.0, "tx_pps": 0.0, "rx_ring": 0})
        s["instances"].append({"nf": n["id"], "name": n["name"], "instance": n["instance"],
                               "state": n["state"]})
        s["rx"] += n["rx"]
        s["tx"] += n["tx"]
        s["drops"] += sum(n["drops"].values())
        s["rx_pps"] += n.get("rx_pps", 0.0)
        s["tx_pps"] += n.get("tx_pps", 0.0)
        s["rx_ring"] += n["rx_ring"]
    return [by[k] for k in sorted(by)]


def describe_hops(hops: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Region chain hops as JSON: ``{"action": "tonf", "dest": 2}``."""
    out = []
    for action, dest in hops:
        try:
            name = Action(action).name.lower()
        except ValueError:
            name = str(action)
        out.append({"action": name, "dest": dest})
    return out


class Sampler:
    """Samples ``manager`` every ``interval`` seconds on its own thread."""

    def __init__(self, manager: Any, interval: float = 0.5) -> None:
        self.manager = manager
        self.interval = interval
        self.seq = 0
        self._sample: dict[str, Any] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onvm-web-sampler", daemon=True)

    def start(self) -> None:
        self.sample()  # the first answer is ready before the server listens
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # the manager is tearing down under us
                if self.manager.region is None or self.manager.stopping.is_set():
                    return
                raise

    def sample(self) -> None:
        """Read the manager once and publish the result."""
        m = self.manager
        with m.lock:
            if m.region is None:
                return
            status = m.status()
            chains = []
            for cid in range(64):
                try:
                    hops = m.region.chain(cid)
                except (ValueError, OSError):
                    break
                if hops or cid == 0:
                    drops = [{"early": e, "late": late} for e, late in m.region.chain_drops(cid)]
                    chains.append({"id": cid, "hops": describe_hops(hops), "drops": drops})
            extra_fn = getattr(m, "web_sections", None)
            extra: dict[str, Any] = extra_fn() if callable(extra_fn) else {}
        now = time.time()
        prev = self._sample or None
        add_rates(status, prev["status"] if prev else None, now - prev["time"] if prev else 0.0)
        sample = {
            "time": now,
            "status": status,
            "services": services(status),
            "chains": chains,
            "rules": status.get("rules", []),
            "flows": status.get("flows", []),
        }
        sample.update(extra)
        point = {
            "time": round(now, 3),
            "ports": {p["id"]: [p["rx_pps"], p["tx_pps"], p["drops_ps"]] for p in status["ports"]},
            "nfs": {n["id"]: [n["rx_pps"], n["tx_pps"], n["drops_ps"]] for n in status["nfs"]},
        }
        with self._cond:
            self._sample = sample
            self._history.append(point)
            self.seq += 1
            self._cond.notify_all()

    def latest(self) -> dict[str, Any]:
        with self._cond:
            return self._sample

    def history(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self._history)

    def events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Manager log entries with an id greater than ``since`` (ids count from 1)."""
        log = self.manager.events
        start = max(since, len(log) - limit, 0)
        return [{"id": i + 1, "time": t, "text": text} for i, (t, text) in enumerate(log[start:], start)]

    def wait(self, seq: int, timeout: float) -> int:
        """Wait until a sample newer than ``seq`` is out (or the timeout, or stop)."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq != seq or self._stop.is_set(), timeout)
            return self.seq
