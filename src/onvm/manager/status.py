"""What ``onvm status`` shows: the manager's state read from its parts, and the exit summary.

:class:`StatusView` reads the registry, the data plane's counters, the
chains and rules, the services and packing into one JSON object (the
``status`` operation, the live stats, the web sample).  Other parts add
sections of their own (``extra``: the OpenFlow agent adds ``openflow``).
Callers hold the control handlers' lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from onvm import _native, latency
from onvm.constants import Action, drop_counts
from onvm.control.protocol import PROTOCOL_VERSION
from onvm.manager.dataplane import DataPlane
from onvm.manager.events import EventLog
from onvm.manager.flows import FlowRegistry
from onvm.manager.packing import Packing
from onvm.manager.registry import NFRecord, Registry
from onvm.manager.services import Services

__all__ = ["LEFT_SHOWN", "StatusView", "nf_status", "summary"]

LEFT_SHOWN = 16  # NFs that left, in a status
WEB_RULES = 100  # rules in each web sample (the first, by priority); /api/rules pages through the rest


class StatusView:
    """Builds the status of one manager (see the module docstring).

    ``facts`` are fixed facts of the manager's ``manager`` section (its
    default chain, CPUs, ring size)."""

    def __init__(self, *, name: str, facts: dict[str, Any], registry: Registry, dataplane: DataPlane,
                 flows: FlowRegistry, services: Services, packing: Packing, events: EventLog) -> None:
        self.name = name
        self.facts = facts
        self.registry = registry
        self.dp = dataplane
        self.flows = flows
        self.services = services
        self.packing = packing
        self.events = events
        self.started_at = time.monotonic()
        self.web_url = ""
        self.extra: dict[str, Callable[[], Any]] = {}  # section name -> what it shows

    def status(self) -> dict[str, Any]:
        dp = self.dp
        ports = dp.port_status()
        return {
            "manager": {
                "name": self.name,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - self.started_at, 3),
                "region": dp.region.path,
                "layout": _native.LAYOUT_VERSION,
                "protocol": PROTOCOL_VERSION,
                **self.facts,
                "web": self.web_url,
                "packing": self.packing.describe(),
            },
            "pool": dp.pool(),
            "ports": ports,
            "workers": dp.worker_status(ports),
            "nfs": [nf_status(r, dp.nf_info(r.nf_id)) for r in self.registry],
            "chains": self.flows.list_chains(),
            "services": self.services.describe(),
            "flows": self.flows.stats(),
            **{name: fn() for name, fn in self.extra.items()},
            "left": [nf_status(r, r.final) for r in list(self.registry.left)[-LEFT_SHOWN:]],
            "events": self.events.recent(20),
        }

    def web_sample(self) -> dict[str, Any]:
        """What the web sampler takes each time: the status, the chains as the region holds
        them, and the sections the web API serves besides."""
        return {"status": self.status(), "chains": self.dp.chains(),
                "sections": {"rules": self.flows.list_rules(0, WEB_RULES),
                             "flows": self.flows.list_flows(200),
                             "flow_stats": self.flows.stats(), "chain_names": self.flows.list_chains()}}


def nf_status(rec: NFRecord, info: dict[str, Any]) -> dict[str, Any]:
    """One NF as status shows it, from its record and its counters."""
    acts = info.get("actions", (0, 0, 0, 0))
    cpu_now = info.get("cpu_now", -1)
    return {
        "id": rec.nf_id,
        "name": rec.name,
        "service": rec.service,
        "instance": rec.instance,
        "pid": rec.pid,
        "state": rec.state.value,
        "cpu": rec.cpu,
        "cpu_now": cpu_now if cpu_now >= 0 else rec.cpu,  # where it runs now (packing moves it)
        "cpu_refused": cpu_now == -2,  # the kernel refused to move it
        "rx": info.get("rx", 0),
        "tx": info.get("tx", 0),
        "rx_ring": info.get("rx_ring", 0),
        "tx_ring": info.get("tx_ring", 0),
        "actions": {a.name.lower(): acts[a] for a in Action},
        "drops": drop_counts(info.get("drops", ())),
        # Overload (onvm_bp.h): dropped at RX before any NF because this NF was congested,
        # and handled by this NF and then dropped (the next ring full or gone).
        "early": info.get("early", 0),
        "late": info.get("late", 0),
        "rx_congested": bool(info.get("rx_congested")),  # its RX ring is past its high watermark
        "blocked": info.get("blocked", 0),  # times it stopped taking packets (a ring it feeds congested)
        "blocked_ms": round(info.get("blocked_ns", 0) / 1e6, 3),
        "blocked_on": info.get("blocked_on", 0),  # the NF it waits for now (0: none)
        "busy_ns": info.get("busy_ns", 0),  # time spent on bursts (add_rates: busy share, ns per packet)
        "parse_errors": info.get("parse_errors", 0),  # malformed packets the NF was handed
        "reclaimed": rec.reclaimed,
        "fenced": bool(info.get("fenced")),  # broke the rules of the region (see fencing.py)
        "faults": info.get("faults", 0),  # what it handed over that failed validation
        "messages": rec.messages_in,
        "latency": latency.summary(info.get("latency")),
    }


def summary(st: dict[str, Any], seconds: float) -> str:
    """The exit summary: what went in and out of each port and NF, and the pool."""
    out = [f"onvm[{st['manager']['name']}] summary after {seconds:.1f} s:"]
    for p in st["ports"]:
        out.append(
            f"  port {p['id']} {p['uri']}: in {p['rx']} pkts / {p['rx_bytes']} B, "
            f"out {p['tx']} pkts / {p['tx_bytes']} B, dropped {sum(p['drops'].values())}"
            + (f" {p['drops']}" if p["drops"] else "")
            + (f"; skipped {p['skipped']}" if p.get("skipped") else "")
            + (f"; error: {p['error']}" if p["error"] else "")
            + (f"; {p['lost']} packets lost after being counted as sent" if p.get("lost") else "")
        )
    for n in st["nfs"] + st["left"]:
        out.append(
            f"  NF {n['id']} {n['name']} (service {n['service']}.{n['instance']}, {n['state']}): "
            f"in {n['rx']}, onward {n['tx']}, dropped {sum(n['drops'].values())}"
            + (f" {n['drops']}" if n["drops"] else "")
            + (f"; early {n['early']}, late {n['late']}" if n["early"] or n["late"] else "")
        )
    pool = st["pool"]  # after the ports closed: their devices hold nothing
    out.append(f"  pool: {pool['free']} of {pool['total']} slots free"
               + (f", {pool['lent']} still lent to ports" if pool["lent"] else ""))
    return "\n".join(out)
