"""One thread samples the manager; every web client reads its latest sample.

Theory of operation
-------------------
However many browsers, scrapers and API clients there are, the manager is
read once per ``interval``: the sampler calls its ``source``, which takes the
manager's lock and returns the status, the chains as the region holds them and
any further sections, and turns the counters into rates against the previous
sample.  Requests are answered from that sample and never touch the lock, so
the web side cannot stall the control socket, and the packet path (native
threads without the GIL) never waits for either.

Each key of the source's ``sections`` (rules, flows, ...) becomes a section
of the sample, and ``/api/<key>`` serves it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from onvm.constants import Action

HISTORY = 240  # samples kept for charts that open late


def _rate(now: int, before: int | None, dt: float) -> float:
    if before is None or dt <= 0 or now < before:
        return 0.0
    return round((now - before) / dt, 1)


def worker_name(w: dict[str, Any]) -> str:
    """A worker of a status as top and the benchmarks name it: ``RX 0``, ``TX 1``."""
    return f"{w['role'].upper()} {w['index']}"


def busy_figures(spent_ns: int, packets: int, seconds: float) -> tuple[float, float | None]:
    """A thread's share of ``seconds`` spent on bursts and what each of ``packets`` cost it
    (None: no packet); (0, None) for counters that went back."""
    if seconds <= 0 or spent_ns < 0 or packets < 0:
        return 0.0, None
    share = round(min(spent_ns / (seconds * 1e9), 1.0), 3)  # two clocks: a share a hair over 1 is 1
    return share, round(spent_ns / packets, 1) if packets else None


def _busy(t: dict[str, Any], b: dict[str, Any], packets: str, dt: float) -> None:
    """A thread's busy share and cost per packet over the last ``dt`` seconds (none without an
    earlier sample of the same thread)."""
    t["busy"], t["ns_per_packet"] = (busy_figures(t.get("busy_ns", 0) - b.get("busy_ns", 0),
                                                  t[packets] - b[packets], dt) if b else (0.0, None))


def add_rates(status: dict[str, Any], prev: dict[str, Any] | None, dt: float) -> None:
    """Give every port, worker and NF of ``status`` rates per second against ``prev``, and each
    worker and NF its busy share and cost per packet."""
    before: dict[tuple[Any, ...], dict[str, Any]] = {}
    if prev is not None:
        for p in prev["ports"]:
            before[("p", p["id"])] = p
        for w in prev.get("workers", []):
            before[("w", w["id"])] = w
        for n in prev["nfs"]:
            before[("n", n["id"], n["pid"])] = n
    for w in status.get("workers", []):
        b = before.get(("w", w["id"]), {})
        w["pps"] = _rate(w["packets"], b.get("packets"), dt)
        _busy(w, b, "packets", dt)
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
        _busy(n, b, "rx", dt)


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


class EventSource(Protocol):
    def since(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]: ...


class Sampler:
    """Samples a manager every ``interval`` seconds on its own thread.

    ``source()`` returns ``{"status", "chains": [(id, hops, drops)], "sections"}`` or
    None once the manager is gone; ``log`` is its event log."""

    def __init__(self, source: Callable[[], dict[str, Any] | None], log: EventSource,
                 interval: float = 0.5) -> None:
        self.source = source
        self.log = log
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
            self.sample()

    def sample(self) -> None:
        """Read the manager once and publish the result."""
        snap = self.source()
        if snap is None:
            return
        status = snap["status"]
        chains = [{"id": cid, "hops": describe_hops(hops),
                   "drops": [{"early": e, "late": late} for e, late in drops]}
                  for cid, hops, drops in snap["chains"]]
        extra: dict[str, Any] = snap.get("sections", {})
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
        return self.log.since(since, limit)

    def wait(self, seq: int, timeout: float) -> int:
        """Wait until a sample newer than ``seq`` is out (or the timeout, or stop)."""
        with self._cond:
            self._cond.wait_for(lambda: self.seq != seq or self._stop.is_set(), timeout)
            return self.seq
