"""Closed-loop scenarios: packets loop through NFs with no port in the way.

Each starts a manager and NFs as separate processes under a unique manager
name, lets them warm up, measures over ``seconds`` from the counters in the
region (read through ``onvm status``) and stops everything it started.  The
first NF of a pipeline is its traffic source (``speed_tester``); it starts last,
once every NF downstream of it runs, so the packets it makes find each service
of the chain.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from onvm._deploy import Deployment
from onvm._proc import cpu_seconds
from onvm.bench._scenario import Option, Scenario
from onvm.web.sampler import add_rates, worker_name

WARMUP = 1.0


def deployment(manager_args: Sequence[str] = (), verbose: bool = False) -> Deployment:
    """A manager (not started yet) under a unique name."""
    return Deployment(f"bench-{uuid.uuid4().hex[:8]}", list(manager_args), verbose)


def start_pipeline(dep: Deployment, nfs: Sequence[Sequence[str]]) -> None:
    """Start the manager and the NFs (argument lists for ``onvm nf``), the first one last."""
    dep.start_manager()
    for argv in nfs[1:]:
        dep.start_nf(list(argv))
    dep.wait_running(len(nfs) - 1)
    if nfs:
        dep.start_nf(list(nfs[0]))
    dep.wait_running(len(nfs))


def threads(before: dict[str, Any], after: dict[str, Any], dt: float) -> list[dict[str, Any]]:
    """Each worker's and NF's share of ``dt`` seconds spent on bursts and what a packet cost it,
    between two statuses (``onvm top``'s busy and ns/pkt): the thread near 1.0 is the one that
    limited the rate."""
    st = copy.deepcopy(after)  # add_rates writes its figures into the status it is given
    add_rates(st, before, dt)
    rows = [(worker_name(w), w) for w in st.get("workers", [])]
    rows += [(f"NF {n['id']} {n['name']}", n) for n in st["nfs"]]
    return [{"thread": name, "busy": t["busy"], "ns_per_packet": t["ns_per_packet"]} for name, t in rows]


def nf_rate(dep: Deployment, seconds: float, nf_name: str) -> dict[str, Any]:
    """Packets the NF named ``nf_name`` received per second over ``seconds``, the drops, and
    where the time went (``threads``)."""

    def read() -> tuple[dict[str, Any], float, float]:
        st = dep.status()
        named = [n for n in st["nfs"] if n.get("name") == nf_name]
        first = named[0] if named else min(st["nfs"], key=lambda n: n["id"])
        return st, float(first["rx"]), float(sum(sum(n["drops"].values()) for n in st["nfs"]))

    t0, (s0, v0, d0) = time.monotonic(), read()
    time.sleep(seconds)
    t1, (s1, v1, d1) = time.monotonic(), read()
    dt = t1 - t0
    return {"mpps": round((v1 - v0) / dt / 1e6, 3), "packets": int(v1 - v0), "seconds": round(dt, 3),
            "drops": int(d1 - d0), "threads": threads(s0, s1, dt)}


def run_loop(seconds: float, verbose: bool, nfs: Sequence[Sequence[str]],
             capture: str = "none") -> dict[str, Any]:
    """Rate of the first NF of a closed loop of NFs.  With ``capture``: while a capture runs on
    another NF (``other``, an NF of service 9 that receives nothing), or on every NF of the loop
    with a filter no packet matches (``unmatched``: each burst is filtered, nothing is copied),
    or while a trace is armed that no packet matches (``trace``)."""
    dep = deployment(verbose=verbose)
    extra = [["simple_forward", "--service", "9"]] if capture == "other" else []
    try:
        start_pipeline(dep, [*nfs, *extra])
        if capture == "other":
            taps = [["--service", "9"]]
        elif capture == "unmatched":
            taps = [["--nf", str(n["id"]), "in-port", "15"] for n in dep.status()["nfs"]]
        else:
            taps = []
        if capture == "trace":
            subprocess.run([sys.executable, "-m", "onvm.cli.main", "trace", "add", "10000", "in-port", "15",
                            "--name", dep.name], check=True, stdout=subprocess.DEVNULL)
        for tap in taps:  # the manager's stop ends them (their connections close)
            argv = [sys.executable, "-m", "onvm.cli.main", "capture", "--name", dep.name, "-w", os.devnull,
                    *tap]
            dep.procs.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
        time.sleep(WARMUP)
        return nf_rate(dep, seconds, nfs[0][0])
    finally:
        dep.stop()


def run_idle(seconds: float, verbose: bool) -> dict[str, Any]:
    """CPU use of a manager and three NFs with no traffic, all processes together."""
    dep = deployment(verbose=verbose)
    try:
        start_pipeline(dep, [["simple_forward", "--service", "1", "--dest", "2"],
                             ["simple_forward", "--service", "2", "--dest", "3"],
                             ["basic_monitor", "--service", "3", "--interval", "0"]])
        time.sleep(WARMUP)
        pids = [p.pid for p in dep.procs]

        def cpu() -> float:
            return sum(cpu_seconds(p) or 0.0 for p in pids)

        t0, c0 = time.monotonic(), cpu()
        time.sleep(seconds)
        dt, used = time.monotonic() - t0, cpu() - c0
        return {"mpps": 0.0, "packets": 0, "seconds": round(dt, 3),
                "cpu_percent": round(100.0 * used / dt, 3), "processes": len(pids)}
    finally:
        dep.stop()


def run_lb(seconds: float, verbose: bool) -> dict[str, Any]:
    """How evenly two instances of one service share a gen: load of 4096 flows."""
    dep = deployment(["--port", "gen:flows=4096,rate=200k", "--port", "null", "--default-chain", "1,out:1"],
                     verbose)
    try:
        start_pipeline(dep, [["simple_forward", "--service", "1"], ["simple_forward", "--service", "1"]])
        time.sleep(WARMUP)

        def rx() -> list[int]:
            return [n["rx"] for n in sorted(dep.status()["nfs"], key=lambda n: n["id"])]

        r0, t0 = rx(), time.monotonic()
        time.sleep(seconds)
        r1, dt = rx(), time.monotonic() - t0
        got = [b - a for a, b in zip(r0, r1, strict=True)]
        share = got[0] / max(1, sum(got))
        return {"mpps": round(sum(got) / dt / 1e6, 3), "packets": sum(got), "seconds": round(dt, 3),
                "shares": [round(g / max(1, sum(got)), 4) for g in got],
                "imbalance": round(abs(share - 0.5) * 2, 4)}
    finally:
        dep.stop()


CAPTURE = Option("--capture", "none", "measure while a capture runs: on another NF (other), or on each NF "
                 "of the loop with a filter nothing matches (unmatched); or while a trace that nothing "
                 "matches is armed (trace)", choices=("none", "other", "unmatched", "trace"))

SCENARIOS = [
    Scenario("loop", "one speed_tester sending to its own service, batch handler", key="mpps",
             target=">= 10 Mpps",
             run=lambda seconds, verbose, capture: run_loop(
                 seconds, verbose, [["speed_tester", "--service", "1"]], capture),
             options=(CAPTURE,)),
    Scenario("loop-packet", "the same with a per-packet handler that reads each packet's IPv4 5-tuple",
             key="mpps", target=">= 1 Mpps",
             run=lambda seconds, verbose: run_loop(seconds, verbose,
                                                   [["speed_tester", "--service", "1", "--per-packet"]])),
    Scenario("chain3", "speed_tester -> simple_forward -> simple_forward -> back to speed_tester", key="mpps",
             target=">= 3 Mpps",
             run=lambda seconds, verbose, capture: run_loop(seconds, verbose, [
                 ["speed_tester", "--service", "1", "--dest", "2"],
                 ["simple_forward", "--service", "2", "--dest", "3"],
                 ["simple_forward", "--service", "3", "--dest", "1"]], capture),
             options=(CAPTURE,)),
    Scenario("idle", "a manager and three NFs with no traffic; CPU of one core, all processes together",
             key="cpu_percent", target="< 2 % CPU", run=run_idle,
             show=lambda r: f"{r['cpu_percent']:.2f} % of one core"),
    Scenario("lb", "two instances of one service share a gen: load of 4096 flows; "
             "imbalance = abs(share - 0.5) x 2", key="imbalance", target="imbalance < 0.1", run=run_lb,
             show=lambda r: f"imbalance {r['imbalance']:.3f} (shares {r['shares']})"),
]
