"""Open-loop scenarios: ``overload`` and ``paper``.

Closed-loop benchmarks (``loop``, ``chain3``) circle a fixed set of packets, so
no queue ever overflows.  These offer traffic the way a port does, whether or
not the chain keeps up: ``gen:mix=http`` ports (the paper's HTTP size mix) into
``simple_forward`` NFs and out of a ``null`` port.  Delivered traffic is what
left by the output port over the window, read from the ports' counters.

``overload`` sweeps a chain of N NFs over offered rates (fractions and
multiples of what an unpaced run delivered, then unpaced again) and reports
whether throughput holds at the chain's peak when the port offers more than
the chain can take (``overload_ratio``), and how much work was thrown away
after an NF had done it (``late_drop_ratio``).

``paper`` runs the three configurations of the OpenNetVM paper's Figure 2,
unpaced: one NF with one RX and one TX worker, two replicas of one service
with two RX and two TX workers (one gen port each), a chain of five NFs; the
three in turn, ``--rounds`` times (3), reporting medians.  The replicas are
balanced by the ``local`` policy (``replicas_policy``): RX worker i feeds
replica i, and each such pipeline runs on a CPU of its own, as a NIC's RSS
queues would each feed a core.  The replicas' rate swings from one manager to
the next on a shared machine, so ``replicas_ratio`` is the median of each
round's ratio.

``overload`` runs its whole sweep in one manager with one set of NFs, changing
the input port's rate between windows (as ``onvm port rate`` does), so the
curve shows what the offered rate does to one running chain and nothing else:
two managers on a shared machine differ by more than the curve would (where
their threads land, what shares a cache).  Each configuration of ``paper``
starts its own manager.  Every window reports the load average of the machine:
compare figures from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from onvm._deploy import Deployment
from onvm._proc import cpu_seconds
from onvm.bench._scenario import Option, Scenario, whole_number
from onvm.bench.pipeline import deployment, threads
from onvm.constants import MAX_HOPS
from onvm.errors import ConfigError
from onvm.manager.config import ManagerConfig, check_ring_size

WARMUP = 1.5
SWEEP = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)  # offered rates, times what an unpaced run delivered
PAPER_GBPS = {"one_nf": 48, "replicas": 68, "chain5": 40}  # Figure 2, 10/40G NICs, many cores
PAPER_FIELDS = (("mpps", "delivered_mpps"), ("gbps", "delivered_gbps"), ("late_drops", "late_drops"),
                ("cpu", "cpu"), ("mpps_per_cpu", "mpps_per_cpu"), ("load", "load"))  # (paper's, measure()'s)
HTTP = "gen:mix=http,flows=1024"
RING_SIZE: int = ManagerConfig.model_fields["ring_size"].default  # the manager's own default


@dataclass
class Setup:
    """One open-loop configuration: input ports, NFs (``onvm nf`` argument lists), workers."""

    inputs: int = 1
    nfs: tuple[tuple[str, ...], ...] = (("simple_forward", "--service", "1"),)
    chain: str = "1"
    workers: int = 1  # RX and TX workers each
    ring_size: int = RING_SIZE  # entries per NF ring (the manager's --ring-size)
    policy: str = "hash"  # service 1's balancing policy (the manager's --policy 1=...)


def chain_setup(nfs: int, ring_size: int = RING_SIZE) -> Setup:
    if not 1 <= nfs < MAX_HOPS:  # the chain's last hop is the output port
        raise ConfigError(f"--nfs {nfs}: expected 1..{MAX_HOPS - 1}")
    return Setup(nfs=tuple(("simple_forward", "--service", str(i)) for i in range(1, nfs + 1)),
                 chain=",".join(str(i) for i in range(1, nfs + 1)), ring_size=ring_size)


@contextlib.contextmanager
def running(setup: Setup, rate: float | None = None, verbose: bool = False) -> Iterator[Deployment]:
    """A manager and the setup's NFs, running; ``rate`` packets/s per input port (None: unpaced)."""
    port = HTTP + (f",rate={int(rate)}" if rate else "")
    args = [a for _ in range(setup.inputs) for a in ("--port", port)] + [
        "--port", "null", "--default-chain", f"{setup.chain},out:{setup.inputs}",
        "--rx-workers", str(setup.workers), "--tx-workers", str(setup.workers),
        "--ring-size", str(setup.ring_size), "--policy", f"1={setup.policy}"]
    dep = deployment(args, verbose)
    try:
        dep.start_manager()
        for argv in setup.nfs:
            dep.start_nf(list(argv))
        dep.wait_running(len(setup.nfs))
        yield dep
    finally:
        dep.stop()


def pace(dep: Deployment, setup: Setup, rate: float | None) -> None:
    """Every input port at ``rate`` packets/s from now on (None: unpaced), as ``onvm port rate``."""
    from onvm.control.client import Client

    with Client(dep.name) as c:
        for port in range(setup.inputs):
            c.port_rate(port, int(rate or 0))


def window(dep: Deployment, setup: Setup, seconds: float, rate: float | None) -> dict[str, Any]:
    """After a warm-up, what a running setup delivered over ``seconds``; ``rate`` is what its
    input ports are paced at (None: unpaced)."""
    time.sleep(WARMUP)
    s0 = dep.status()
    pids = [s0["manager"]["pid"], *(n["pid"] for n in s0["nfs"])]
    c0, t0 = cpu_of(pids), time.monotonic()
    time.sleep(seconds)
    s1, c1, dt = dep.status(), cpu_of(pids), time.monotonic() - t0
    out = setup.inputs  # the null port comes after the inputs

    def port_delta(key: str, ids: range) -> int:
        return sum(s1["ports"][i][key] - s0["ports"][i][key] for i in ids)

    def drops_delta(reason: str, ids: range) -> int:
        return sum(s1["ports"][i]["drops"].get(reason, 0) - s0["ports"][i]["drops"].get(reason, 0)
                   for i in ids)

    def nf_delta(key: str, service: int | None = None) -> int:
        before = {n["id"]: n[key] for n in s0["nfs"]}
        return sum(n[key] - before.get(n["id"], 0) for n in s1["nfs"] if service in (None, n["service"]))

    inputs = range(setup.inputs)
    made = port_delta("rx", inputs)
    early = sum(drops_delta(r, inputs) for r in ("early", "ring_full", "no_dest"))
    return {
        # Paced: the rate asked for; unpaced: what the ports made (RX read it).
        "offered_mpps": round(rate * setup.inputs / 1e6 if rate else made / dt / 1e6, 3),
        "paced": bool(rate),
        "delivered_mpps": round(port_delta("tx", range(out, out + 1)) / dt / 1e6, 3),
        "delivered_gbps": round(port_delta("tx_bytes", range(out, out + 1)) * 8 / dt / 1e9, 2),
        # CPUs the manager and the NFs got: on a shared machine a pipeline of more threads gets
        # more of it, so compare configurations by delivered per CPU as well.
        "cpu": round((c1 - c0) / dt, 2),
        "mpps_per_cpu": round(port_delta("tx", range(out, out + 1)) / 1e6 / max(c1 - c0, 1e-9), 3),
        "read_mpps": round(made / dt / 1e6, 3),  # what RX took from the input ports
        "missed": drops_delta("missed", inputs),
        "early_drops": early,
        "late_drops": nf_delta("late"),
        "first_nf_packets": nf_delta("rx", 1),
        "blocked": nf_delta("blocked"),
        "seconds": round(dt, 3),
        "load": round(os.getloadavg()[0], 2),
        "threads": threads(s0, s1, dt),  # where the time went: the thread near busy 1.0 limited the rate
    }


def measure(setup: Setup, seconds: float, rate: float | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run a setup once, in a manager of its own; ``rate`` packets/s per input port (None: unpaced)."""
    with running(setup, rate, verbose) as dep:
        return window(dep, setup, seconds, rate)


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes, all their threads."""
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def overload(seconds: float = 5.0, verbose: bool = False, nfs: int = 5, ring_size: int = RING_SIZE,
             rounds: int = 3) -> dict[str, Any]:
    """Delivered against offered rate through a chain of ``nfs`` NFs (see the module docstring)."""
    setup = chain_setup(nfs, ring_size)
    with running(setup, None, verbose) as dep:
        first = window(dep, setup, seconds, None)
        base = max(first["delivered_mpps"], 0.01) * 1e6
        plan: list[float | None] = [None, *(f * base for f in SWEEP)]  # a round; unpaced once more at the end
        seen: list[list[dict[str, Any]]] = [[first]] + [[] for _ in SWEEP]
        for r in range(rounds):
            for i, rate in enumerate(plan):
                if r or i:
                    pace(dep, setup, rate)
                    seen[i].append(window(dep, setup, seconds, rate))
        pace(dep, setup, None)
        seen[0].append(window(dep, setup, seconds, None))

    def med(ws: list[dict[str, Any]], key: str) -> float:
        return round(statistics.median(w[key] for w in ws), 3)

    order = seen[1:] + seen[:1]  # the sweep, then unpaced
    curve = [[med(ws, "offered_mpps"), med(ws, "delivered_mpps")] for ws in order]
    points = [{"offered_mpps": c[0], "delivered_mpps": c[1], "windows": ws}
              for c, ws in zip(curve, order, strict=True)]
    peak = max(c[1] for c in curve)
    unpaced = seen[0]
    return {
        "nfs": nfs,
        "peak_mpps": peak,
        "overload_mpps": med(unpaced, "delivered_mpps"),
        "overload_ratio": round(med(unpaced, "delivered_mpps") / peak, 3) if peak else 0.0,
        "late_drop_ratio": round(sum(w["late_drops"] for w in unpaced)
                                 / max(sum(w["first_nf_packets"] for w in unpaced), 1), 6),
        "curve": curve,
        "unpaced_read_mpps": med(unpaced, "read_mpps"),
        "points": points,
        "mpps": med(unpaced, "delivered_mpps"),
        "ring_size": ring_size,
        "rounds": rounds,
        "seconds": seconds,
        "load": round(os.getloadavg()[0], 2),
    }


def paper(seconds: float = 5.0, verbose: bool = False, ring_size: int = RING_SIZE,
          rounds: int = 3) -> dict[str, Any]:
    """The paper's Figure 2 configurations, unpaced (see the module docstring): the three in
    turn, ``rounds`` times, so that each round compares runs a minute apart.  The figures are
    medians over the rounds; ``replicas_ratio`` is the median of each round's replicas/one NF."""
    setups = {
        "one_nf": Setup(ring_size=ring_size),
        "replicas": Setup(inputs=2, nfs=(("simple_forward", "--service", "1"),) * 2, workers=2,
                          ring_size=ring_size, policy="local"),
        "chain5": chain_setup(5, ring_size),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, setup in setups.items():
            runs[name].append(measure(setup, seconds, None, verbose))
    out: dict[str, Any] = {}
    for name, results in runs.items():
        for key, field in PAPER_FIELDS:
            out[f"{name}_{key}"] = round(statistics.median(r[field] for r in results), 3)
        out[f"rounds_{name}_mpps"] = [r["delivered_mpps"] for r in results]
        middle = sorted(results, key=lambda r: r["delivered_mpps"])[len(results) // 2]
        out[f"{name}_threads"] = middle["threads"]  # where the time went in the round of the median rate
    out["replicas_ratio"] = round(statistics.median(
        r["delivered_mpps"] / max(o["delivered_mpps"], 1e-9)
        for r, o in zip(runs["replicas"], runs["one_nf"], strict=True)), 3)
    out["replicas_policy"] = setups["replicas"].policy
    out["paper_gbps"] = PAPER_GBPS
    out["mpps"] = out["chain5_mpps"]
    out["ring_size"] = ring_size
    out["rounds"] = rounds
    out["seconds"] = seconds
    return out


def _ring_size(text: str) -> int:
    try:
        return check_ring_size(int(text) if text.isdecimal() else 0)  # not a number: no ring size either
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, got '{text}'") from None


def ring_size_option(default: int = RING_SIZE) -> Option:
    """``--ring-size``: a scenario's NF rings, as the manager's option."""
    return Option("--ring-size", default, "entries per NF ring, as the manager's --ring-size "
                  "(in flight: up to half a ring per NF under backpressure)", type=_ring_size)


RING_OPTION = ring_size_option()
ROUNDS_OPTION = Option("--rounds", 3, "rounds (1..20): each point, or each configuration, is measured "
                       "once a round and reported as the median", type=whole_number("rounds", 1, 20))

SCENARIOS = [
    Scenario("overload", "gen (HTTP mix) into a chain of --nfs simple_forward NFs at rising offered rates, "
             "then unpaced: delivered against offered, and the work thrown away after an NF did it",
             key="overload_ratio", target="delivered does not fall past the peak (overload_ratio near 1)",
             run=overload, default=False,
             options=(Option("--nfs", 5, "NFs in the chain"), RING_OPTION, ROUNDS_OPTION),
             show=lambda r: (f"{r['overload_mpps']:.2f} Mpps unpaced, peak {r['peak_mpps']:.2f} Mpps "
                             f"(ratio {r['overload_ratio']:.2f}, late {r['late_drop_ratio']:.4f})")),
    Scenario("paper", "the OpenNetVM paper's Figure 2, unpaced: one NF, two replicas of a service, a chain "
             "of five NFs, in turn, --rounds times", key="chain5_mpps", target="", run=paper, default=False,
             options=(RING_OPTION, ROUNDS_OPTION),
             show=lambda r: (f"one NF {r['one_nf_gbps']} Gbps, replicas {r['replicas_gbps']} Gbps "
                             f"({r['replicas_ratio']:.2f} of one NF), chain of five {r['chain5_gbps']} Gbps "
                             f"(paper: {r['paper_gbps']})")),
]
