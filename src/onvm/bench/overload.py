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
three in turn, ``--rounds`` times (3), reporting medians.  The replicas' rate
swings from one manager to the next on a shared machine (half or all of one
NF's), so ``replicas_ratio`` is the median of each round's ratio.

Every point starts its own manager and NFs, and reports the load average of
the machine: on a shared machine, compare figures from one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from onvm._proc import cpu_seconds
from onvm.bench._scenario import Option, Scenario, whole_number
from onvm.bench.pipeline import deployment
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


def chain_setup(nfs: int, ring_size: int = RING_SIZE) -> Setup:
    if not 1 <= nfs < MAX_HOPS:  # the chain's last hop is the output port
        raise ConfigError(f"--nfs {nfs}: expected 1..{MAX_HOPS - 1}")
    return Setup(nfs=tuple(("simple_forward", "--service", str(i)) for i in range(1, nfs + 1)),
                 chain=",".join(str(i) for i in range(1, nfs + 1)), ring_size=ring_size)


def measure(setup: Setup, seconds: float, rate: float | None = None, verbose: bool = False) -> dict[str, Any]:
    """Run a setup once; ``rate`` packets/s per input port (None: unpaced)."""
    port = HTTP + (f",rate={int(rate)}" if rate else "")
    out = setup.inputs  # the null port comes after the inputs
    args = [a for _ in range(setup.inputs) for a in ("--port", port)] + [
        "--port", "null", "--default-chain", f"{setup.chain},out:{out}",
        "--rx-workers", str(setup.workers), "--tx-workers", str(setup.workers),
        "--ring-size", str(setup.ring_size)]
    dep = deployment(args, verbose)
    try:
        dep.start_manager()
        for argv in setup.nfs:
            dep.start_nf(list(argv))
        dep.wait_running(len(setup.nfs))
        time.sleep(WARMUP)
        s0 = dep.status()
        pids = [s0["manager"]["pid"], *(n["pid"] for n in s0["nfs"])]
        c0, t0 = cpu_of(pids), time.monotonic()
        time.sleep(seconds)
        s1, c1, dt = dep.status(), cpu_of(pids), time.monotonic() - t0
    finally:
        dep.stop()

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
    }


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of these processes, all their threads."""
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def overload(seconds: float = 5.0, verbose: bool = False, nfs: int = 5,
             ring_size: int = RING_SIZE) -> dict[str, Any]:
    """Delivered against offered rate through a chain of ``nfs`` NFs (see the module docstring)."""
    setup = chain_setup(nfs, ring_size)
    first = measure(setup, seconds, None, verbose)
    base = max(first["delivered_mpps"], 0.01) * 1e6
    points = [measure(setup, seconds, f * base, verbose) for f in SWEEP]
    last = measure(setup, seconds, None, verbose)
    points += [first, last]
    peak = max(p["delivered_mpps"] for p in points)
    unpaced = last["delivered_mpps"]
    return {
        "nfs": nfs,
        "peak_mpps": peak,
        "overload_mpps": unpaced,
        "overload_ratio": round(unpaced / peak, 3) if peak else 0.0,
        "late_drop_ratio": round(last["late_drops"] / max(last["first_nf_packets"], 1), 6),
        "curve": [[p["offered_mpps"], p["delivered_mpps"]] for p in points],
        "unpaced_read_mpps": last["read_mpps"],
        "points": points,
        "mpps": unpaced,
        "ring_size": ring_size,
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
                          ring_size=ring_size),
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
    out["replicas_ratio"] = round(statistics.median(
        r["delivered_mpps"] / max(o["delivered_mpps"], 1e-9)
        for r, o in zip(runs["replicas"], runs["one_nf"], strict=True)), 3)
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

SCENARIOS = [
    Scenario("overload", "gen (HTTP mix) into a chain of --nfs simple_forward NFs at rising offered rates, "
             "then unpaced: delivered against offered, and the work thrown away after an NF did it",
             key="overload_ratio", target="delivered does not fall past the peak (overload_ratio near 1)",
             run=overload, options=(Option("--nfs", 5, "NFs in the chain"), RING_OPTION), default=False,
             show=lambda r: (f"{r['overload_mpps']:.2f} Mpps unpaced, peak {r['peak_mpps']:.2f} Mpps "
                             f"(ratio {r['overload_ratio']:.2f}, late {r['late_drop_ratio']:.4f})")),
    Scenario("paper", "the OpenNetVM paper's Figure 2, unpaced: one NF, two replicas of a service, a chain "
             "of five NFs, in turn, --rounds times", key="chain5_mpps", target="", run=paper, default=False,
             options=(RING_OPTION, Option("--rounds", 3, "rounds of the three configurations (1..20)",
                                          type=whole_number("rounds", 1, 20))),
             show=lambda r: (f"one NF {r['one_nf_gbps']} Gbps, replicas {r['replicas_gbps']} Gbps "
                             f"({r['replicas_ratio']:.2f} of one NF), chain of five {r['chain5_gbps']} Gbps "
                             f"(paper: {r['paper_gbps']})")),
]
