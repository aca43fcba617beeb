"""Latency at a low rate: a ``gen`` port through a chain of ``simple_forward`` NFs to a
``null`` port, end to end (RX to the output port) and per NF.

The histograms are read from the region before and after the measuring window,
so warm-up packets do not count.  The window starts once the manager has packed
the pipeline onto one CPU (onvm.manager.packing), unless ``pack_below`` is 0.
"""

from __future__ import annotations

import time
from typing import Any

from onvm.bench._scenario import Option, Scenario
from onvm.bench.pipeline import WARMUP, deployment
from onvm.constants import MAX_HOPS
from onvm.errors import ConfigError


def run_latency(seconds: float = 5.0, verbose: bool = False, nfs: int = 1, rate: int = 10000,
                pack_below: float | None = None) -> dict[str, Any]:
    """End-to-end and per-NF latency through ``nfs`` NFs at ``rate`` packets/s."""
    from onvm import _native, latency

    if not 1 <= nfs < MAX_HOPS:  # the chain's last hop is the output port
        raise ConfigError(f"--nfs {nfs}: expected 1..{MAX_HOPS - 1}")
    if rate < 1:
        raise ConfigError(f"--rate {rate}: expected at least 1 packet/s")
    chain = ",".join(str(i) for i in range(1, nfs + 1)) + ",out:1"
    args = ["--port", f"gen:size=64,flows=64,rate={rate}", "--port", "null", "--default-chain", chain]
    if pack_below is not None:
        args += ["--pack-below", str(pack_below)]
    dep = deployment(args, verbose)
    region = None
    try:
        dep.start_manager()
        for i in range(1, nfs + 1):
            dep.start_nf(["simple_forward", "--service", str(i)])
        dep.wait_running(nfs)
        time.sleep(WARMUP)
        st = _settle_packing(dep)
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
            "packed_on": st["manager"]["packing"].get("packed_on"),
        }
    finally:
        if region is not None:
            region.close()
        dep.stop()


def _settle_packing(dep: Any, timeout: float = 5.0) -> dict[str, Any]:
    """Status once the manager has packed a lightly loaded pipeline (or after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        st = dep.status()
        pk = st["manager"]["packing"]
        if not pk["enabled"] or pk["packed_on"] is not None or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def _show(r: dict[str, Any]) -> str:
    packed = "packed" if r.get("packed_on") is not None else "spread"
    return f"p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us at {r['rate_pps']} packets/s ({packed})"


OPTIONS = (Option("--nfs", 1, "NFs in the chain"),
           Option("--rate", 10000, "packets/s offered"),
           Option("--pack-below", None, "the manager's --pack-below (0 keeps the pipeline spread)",
                  type=float))
WHAT = "a gen port at a low rate through N simple_forward NFs to a null port, end to end and per NF"

SCENARIOS = [
    Scenario("latency", WHAT, key="p50_us", target="p50 < 20 us through one NF", run=run_latency, show=_show,
             options=OPTIONS),
    Scenario("latency-3", "latency through three NFs", key="p50_us", target="p50 and p99 through three NFs",
             run=run_latency, show=_show, options=OPTIONS, preset={"nfs": 3}),
    Scenario("latency-spread", "latency with packing off (--pack-below 0)", key="p50_us",
             target="packing off, for comparison with latency", run=run_latency, show=_show, options=OPTIONS,
             preset={"pack_below": 0.0}),
]
