"""Benchmark scenarios for ``onvm bench``.

Each scenario starts a manager and NFs as separate processes under a unique
manager name, lets them warm up, measures over ``seconds`` from the counters in
the region (read through ``onvm status``), and stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onvm import _bench_firewall
from onvm._deploy import Deployment

WARMUP = 1.0


@dataclass
class Scenario:
    """NFs to start (argument lists for ``onvm nf``) and what to measure."""

    nfs: list[list[str]]
    measure: str = "rx"  # "rx": packets the first NF received; "cpu": CPU use
    manager_args: list[str] = field(default_factory=list)
    note: str = ""
    measure_nf: str = ""  # measure this NF's rx (default: the first NF started)
    prepare: Callable[[str], None] | None = None  # writes files into "{tmp}" before the start
    extra: Callable[[str], dict[str, Any]] | None = None  # more figures, after the run


SCENARIOS: dict[str, Scenario] = {
    "loop": Scenario([["speed_tester", "--service", "1"]],
                     note="one speed_tester sending to its own service, batch handler"),
    "loop-packet": Scenario([["speed_tester", "--service", "1", "--per-packet"]],
                            note="the same with a per-packet handler reading each 5-tuple"),
    "chain3": Scenario(
        [["speed_tester", "--service", "1", "--dest", "2"],
         ["simple_forward", "--service", "2", "--dest", "3"],
         ["simple_forward", "--service", "3", "--dest", "1"]],
        note="speed_tester -> simple_forward -> simple_forward -> speed_tester"),
    "firewall": Scenario(
        [["speed_tester", "--service", "1", "--dest", "2", "--report", "0"],
         ["firewall", "--service", "2", "--rules", "{tmp}/rules.json", "--handler", "{handler}"]],
        measure_nf="firewall", prepare=_bench_firewall.write_rules, extra=_bench_firewall.references,
        note="firewall with 1,000 prefix rules looping speed_tester's packets; the same logic "
             "over dpkt and scapy in process"),
    "idle": Scenario(
        [["simple_forward", "--service", "1", "--dest", "2"],
         ["simple_forward", "--service", "2", "--dest", "3"],
         ["basic_monitor", "--service", "3", "--interval", "0"]],
        measure="cpu", note="a manager and three NFs with no traffic"),
}


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_scenario(name: str, seconds: float = 5.0, verbose: bool = False,
                 handler: str = "batch") -> dict[str, Any]:
    """Run one scenario; returns its figures (``scenario``, ``mpps``, ``packets``, ``seconds``...)."""
    sc = SCENARIOS[name]
    tmp = tempfile.mkdtemp(prefix="onvm-bench-")
    dep = Deployment(f"bench-{uuid.uuid4().hex[:8]}", sc.manager_args, verbose)
    try:
        if sc.prepare is not None:
            sc.prepare(tmp)
        dep.start_manager()
        for argv in sc.nfs:
            dep.start_nf([a.format(tmp=tmp, handler=handler) for a in argv])
        dep.wait_running(len(sc.nfs))
        time.sleep(WARMUP)
        measure: Callable[[], tuple[float, float]]
        if sc.measure == "cpu":
            pids = [p.pid for p in dep.procs]

            def measure() -> tuple[float, float]:
                return sum(_cpu_seconds(p) for p in pids), 0.0
        else:

            def measure() -> tuple[float, float]:
                st = dep.status()
                named = [n for n in st["nfs"] if n.get("name") == sc.measure_nf]
                first = named[0] if named else min(st["nfs"], key=lambda n: n["id"])
                return float(first["rx"]), float(sum(sum(n["drops"].values()) for n in st["nfs"]))

        t0, (v0, d0) = time.monotonic(), measure()
        time.sleep(seconds)
        t1, (v1, d1) = time.monotonic(), measure()
        dt = t1 - t0
        result: dict[str, Any] = {"scenario": name}
        if sc.measure == "cpu":
            result.update(mpps=0.0, packets=0, seconds=round(dt, 3),
                          cpu_percent=round(100.0 * (v1 - v0) / dt, 3), processes=len(dep.procs))
        else:
            result.update(mpps=round((v1 - v0) / dt / 1e6, 3), packets=int(v1 - v0),
                          seconds=round(dt, 3), drops=int(d1 - d0))
        if sc.prepare is not None:
            result["handler"] = handler
        dep.stop()
        if sc.extra is not None:
            result.update(sc.extra(tmp))
        return result
    finally:
        dep.stop()
        shutil.rmtree(tmp, ignore_errors=True)
