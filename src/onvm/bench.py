"""Benchmark scenarios for ``onvm bench``.

Each scenario starts a manager and NFs as separate processes under a unique
manager name, lets them warm up, measures over ``seconds`` from the counters in
the region (read through ``onvm status``), and stops everything it started.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onvm._deploy import Deployment
from onvm.errors import ConfigError

WARMUP = 1.0


@dataclass
class Scenario:
    """NFs to start (argument lists for ``onvm nf``) and what to measure."""

    nfs: list[list[str]]
    measure: str = "rx"  # "rx": packets the first NF received; "cpu": CPU use
    manager_args: list[str] = field(default_factory=list)
    note: str = ""


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
    "idle": Scenario(
        [["simple_forward", "--service", "1", "--dest", "2"],
         ["simple_forward", "--service", "2", "--dest", "3"],
         ["basic_monitor", "--service", "3", "--interval", "0"]],
        measure="cpu", note="a manager and three NFs with no traffic"),
}


LATENCY_NOTE = "gen port at a low rate through a chain of simple_forward NFs to a null port"


def run_latency(nfs: int = 1, seconds: float = 5.0, rate: int = 10000,
                verbose: bool = False) -> dict[str, Any]:
    """Latency at a low rate through ``nfs`` NFs: end to end (RX to the output port) and per NF.

    The histograms are read from the region before and after the measuring
    window, so warm-up packets do not count."""
    from onvm import _native, latency

    if not 1 <= nfs <= 15:
        raise ConfigError(f"--nfs {nfs}: expected 1..15")
    if rate < 1:
        raise ConfigError(f"--rate {rate}: expected at least 1 packet/s")
    chain = ",".join(str(i) for i in range(1, nfs + 1)) + ",out:1"
    args = ["--port", f"gen:size=64,flows=64,rate={rate}", "--port", "null", "--default-chain", chain]
    dep = Deployment(f"bench-{uuid.uuid4().hex[:8]}", args, verbose)
    region = None
    try:
        dep.start_manager()
        for i in range(1, nfs + 1):
            dep.start_nf(["simple_forward", "--service", str(i)])
        dep.wait_running(nfs)
        time.sleep(WARMUP)
        st = dep.status()
        region = _native.Region.attach(st["manager"]["region"])
        ids = sorted(n["id"] for n in st["nfs"])

        def read() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
            return (_native.port_latency(region, 1), [_native.nf_latency(region, i) for i in ids],
                    [region.nf_info(i) for i in ids])

        e0, n0, i0 = read()
        t0 = time.monotonic()
        time.sleep(seconds)
        e1, n1, i1 = read()
        dt = time.monotonic() - t0
        e2e = latency.summary(latency.diff(e1, e0))
        per_nf = [latency.summary(latency.diff(b, a)) for a, b in zip(n0, n1, strict=True)]
        drops = sum(sum(n["drops"].values()) for n in dep.status()["nfs"])
        return {
            "scenario": "latency",
            "nfs": nfs,
            "rate_pps": rate,
            "packets": e2e["count"],
            "seconds": round(dt, 3),
            "p50_us": e2e["p50_us"],
            "p99_us": e2e["p99_us"],
            "mean_us": e2e["mean_us"],
            "max_us": e2e["max_us"],
            "per_nf_p50_us": [n["p50_us"] for n in per_nf],
            "per_nf_p99_us": [n["p99_us"] for n in per_nf],
            "handler_us_per_burst": [
                round((b["handler_ns"] - a["handler_ns"]) / max(b["bursts"] - a["bursts"], 1) / 1e3, 2)
                for a, b in zip(i0, i1, strict=True)],
            "packets_per_burst": [
                round((b["rx"] - a["rx"]) / max(b["bursts"] - a["bursts"], 1), 1)
                for a, b in zip(i0, i1, strict=True)],
            "drops": drops,
        }
    finally:
        if region is not None:
            region.close()
        dep.stop()


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_scenario(name: str, seconds: float = 5.0, verbose: bool = False) -> dict[str, Any]:
    """Run one scenario; returns its figures (``scenario``, ``mpps``, ``packets``, ``seconds``...)."""
    sc = SCENARIOS[name]
    dep = Deployment(f"bench-{uuid.uuid4().hex[:8]}", sc.manager_args, verbose)
    try:
        dep.start_manager()
        for argv in sc.nfs:
            dep.start_nf(argv)
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
                first = min(st["nfs"], key=lambda n: n["id"])
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
        return result
    finally:
        dep.stop()
