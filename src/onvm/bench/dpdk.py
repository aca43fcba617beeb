"""The ``dpdk`` scenario: pyonvm between two DPDK devices, and dpdk-testpmd on the same ones.

pyonvm: ``dpdk:net_null0`` (input) -> ``simple_forward`` (a Python NF, batch
handler) -> ``dpdk:net_null1`` (output only): 64-byte frames that DPDK's null
driver makes and swallows at memory speed, through the RX worker, the NF's
process and the TX worker.  ``mpps`` is what leaves net_null1 per second.  The
manager runs with its own default pool and rings (16,384 slots, rings of 4096;
``--pool-size``, ``--ring-size``): smaller rings make the NF and the TX worker
take turns more often (backpressure holds a ring between a quarter and half of
its size), and 4096 slots with rings of 1024 forwarded about a third less.

testpmd: io forwarding between the same two vdevs on the same CPUs (its main
lcore and one forwarding lcore), in the same run.  testpmd forwards both ways
(net_null0 -> net_null1 and back) on its one core; ``testpmd_mpps`` is what it
sends out of net_null1 per second, the direction of pyonvm's figure, and
``testpmd_total_mpps`` both ways.  ``ratio`` = mpps / testpmd_mpps.

``direct_mpps``: the same ports with no NF (default chain ``out:1``): the RX
worker parses, classifies and hands each burst to net_null1 itself, so the
figure is DPDK's drivers, the slot mempool and the manager's RX path alone.

The three alternate, ``rounds`` times each, pyonvm first; the medians are
reported with each round's figures, and the CPU each used (in cores) and spent
per packet forwarded (``ns_per_packet``): on a shared machine the rates follow
the CPU each side gets, the costs per packet do not.  ``nf_blocked_share`` is the share of
the time the NF spent waiting for room in its TX ring (the TX worker behind): on a machine
whose CPUs are oversubscribed, the pipeline's threads wait for each other's wake-ups while
testpmd, which never sleeps, keeps its share of a CPU.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Sequence
from typing import Any

from onvm import _testpmd
from onvm._proc import cpu_seconds
from onvm.bench._scenario import Option, Scenario, whole_number
from onvm.bench.overload import ring_size_option
from onvm.bench.pipeline import WARMUP, deployment
from onvm.errors import ConfigError
from onvm.manager.config import ManagerConfig

CPUS = "0-1"
# pyonvm's side: the manager's own defaults
POOL_SIZE: int = ManagerConfig.model_fields["pool_size"].default
RING_SIZE: int = ManagerConfig.model_fields["ring_size"].default


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) or 0.0 for p in pids)


def _blocked_ms(st: dict[str, Any]) -> float:
    return float(sum(n["blocked_ms"] for n in st["nfs"]))


def _pyonvm(seconds: float, verbose: bool, burst: int, nf: bool = True, pack_below: float | None = None,
            pool_size: int = POOL_SIZE, ring_size: int = RING_SIZE) -> tuple[float, float, float, float]:
    """Mpps out of net_null1, CPU used (cores), ns of CPU per packet, and the share of the time
    the NF waited for room in the ring it feeds (the TX worker's); without the NF, the RX worker
    hands each burst to net_null1 itself."""
    dep = deployment(["--port", "dpdk:net_null0", "--port", "dpdk:net_null1?rxq=0",
                      "--default-chain", "1,out:1" if nf else "out:1", "--burst", str(burst),
                      "--pool-size", str(pool_size), "--ring-size", str(ring_size),
                      *(["--pack-below", str(pack_below)] if pack_below is not None else [])], verbose)
    try:
        dep.start_manager()
        if nf:
            dep.start_nf(["simple_forward", "--service", "1", "--burst", str(burst)])
            dep.wait_running(1)
        time.sleep(WARMUP)
        pids = [p.pid for p in dep.procs]
        t0, s0, c0 = time.monotonic(), dep.status(), _cpu(pids)
        time.sleep(seconds)
        t1, s1, c1 = time.monotonic(), dep.status(), _cpu(pids)
    finally:
        dep.stop()
    n, dt = s1["ports"][1]["tx"] - s0["ports"][1]["tx"], t1 - t0
    blocked = (_blocked_ms(s1) - _blocked_ms(s0)) / 1e3 / dt
    return n / dt / 1e6, (c1 - c0) / dt, (c1 - c0) / max(n, 1) * 1e9, blocked


def _reference(seconds: float) -> tuple[float, float, float, float]:
    """Mpps out of net_null1, out of both ports, CPU used (cores) and ns per packet forwarded."""
    with _testpmd.Testpmd(["net_null0", "net_null1"], ["--forward-mode=io", "--nb-cores=1"], cpus=CPUS) as tp:
        assert tp.proc is not None
        tp.command("start")
        time.sleep(WARMUP)
        t0, k0, c0 = time.monotonic(), tp.counts(), _cpu([tp.proc.pid])
        time.sleep(seconds)
        t1, k1, c1 = time.monotonic(), tp.counts(), _cpu([tp.proc.pid])
        tp.command("stop")
    dt = t1 - t0
    one = k1[1]["tx"] - k0[1]["tx"]
    both = one + k1[0]["tx"] - k0[0]["tx"]
    return one / dt / 1e6, both / dt / 1e6, (c1 - c0) / dt, (c1 - c0) / max(both, 1) * 1e9


def dpdk_vs_testpmd(seconds: float, verbose: bool = False, rounds: int = 3, burst: int = 256,
                    pack_below: float | None = None, pool_size: int = POOL_SIZE,
                    ring_size: int = RING_SIZE) -> dict[str, Any]:
    missing = _testpmd.available()
    if missing:
        raise ConfigError(f"bench dpdk: {missing}")
    ours: list[tuple[float, float, float, float]] = []
    direct: list[tuple[float, float, float, float]] = []
    theirs: list[tuple[float, float, float, float]] = []
    pyonvm = functools.partial(_pyonvm, seconds, verbose, burst, pack_below=pack_below, pool_size=pool_size,
                               ring_size=ring_size)
    for _ in range(rounds):
        ours.append(pyonvm(nf=True))
        theirs.append(_reference(seconds))
        direct.append(pyonvm(nf=False))

    def med(values: Sequence[tuple[float, ...]], i: int) -> float:
        return round(statistics.median(v[i] for v in values), 3)

    mpps, tp = med(ours, 0), med(theirs, 0)
    return {"mpps": mpps, "testpmd_mpps": tp, "ratio": round(mpps / tp, 3) if tp else 0.0,
            "testpmd_total_mpps": med(theirs, 1),
            "cpu": med(ours, 1), "testpmd_cpu": med(theirs, 2),
            "ns_per_packet": med(ours, 2), "testpmd_ns_per_packet": med(theirs, 3),
            "nf_blocked_share": med(ours, 3),
            "direct_mpps": med(direct, 0), "direct_ns_per_packet": med(direct, 2),
            "rounds_mpps": [round(v[0], 3) for v in ours],
            "rounds_testpmd_mpps": [round(t[0], 3) for t in theirs],
            "frame_bytes": 64, "burst": burst, "cpus": CPUS, "seconds": seconds, "pack_below": pack_below,
            "pool_size": pool_size, "ring_size": ring_size}


SCENARIOS = [
    Scenario("dpdk", "dpdk:net_null0 -> simple_forward -> dpdk:net_null1 (64 B), and dpdk-testpmd io "
             "forwarding between the same vdevs on the same CPUs, alternated in one run",
             key="ratio", target=">= 0.5 of testpmd", run=dpdk_vs_testpmd,
             show=lambda r: (f"{r['mpps']:.2f} Mpps vs testpmd {r['testpmd_mpps']:.2f} Mpps "
                             f"(ratio {r['ratio']:.2f})"),
             options=(Option("--rounds", 3, "pyonvm and testpmd runs each, alternated"),
                      Option("--burst", 256, "the manager's and the NF's burst"),
                      Option("--pack-below", None, "the manager's --pack-below (0 keeps the pipeline spread "
                             "over both CPUs)", type=float),
                      Option("--pool-size", POOL_SIZE, "the manager's --pool-size (slots)",
                             type=whole_number("slots", 64, 1 << 24)),
                      ring_size_option(RING_SIZE))),
]
