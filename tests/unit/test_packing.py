"""The packing decision on made-up loads, and /proc readers it uses."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from onvm._proc import cpu_busy_seconds, cpu_seconds
from onvm.constants import POLICIES
from onvm.errors import ConfigError
from onvm.manager.config import ManagerConfig
from onvm.manager.packing import (
    Balancer,
    Packer,
    Packing,
    PackSettings,
    Thread,
    balance,
    least_busy,
    offered_more,
    peak,
    pipelines,
    summary,
    units,
)
from onvm.manager.registry import Registry

IDLE = {0: 0.0, 1: 0.0}


def feed(p: Packer, loads: list[float], busy: dict[int, float] = IDLE) -> list[int | None]:
    return [p.step(load, busy) for load in loads]


def test_packs_after_settle_quiet_windows_in_a_row() -> None:
    p = Packer(PackSettings(below=0.5, settle=2), [0, 1])
    assert feed(p, [0.1, 0.6, 0.1]) == [None, None, None]  # the loud window restarts the count
    assert feed(p, [0.1]) == [0]


def test_spreads_only_above_the_upper_threshold() -> None:
    p = Packer(PackSettings(below=0.5, above=0.8, settle=1), [0, 1])
    assert feed(p, [0.2]) == [0]
    assert feed(p, [0.6, 0.79, 0.8]) == [0, 0, 0]  # between the thresholds it stays packed
    assert feed(p, [0.81]) == [None]
    assert feed(p, [0.6, 0.7]) == [None, None]  # and spread, until quiet again
    assert feed(p, [0.3]) == [0]


def test_packs_onto_the_least_busy_candidate() -> None:
    p = Packer(PackSettings(settle=1), [1, 2, 3])
    assert p.step(0.0, {0: 0.0, 1: 0.7, 2: 0.2, 3: 0.4}) == 2  # CPU 0 is no candidate
    assert least_busy([3, 1, 2], {}) == 1  # ties go to the lowest number


@pytest.mark.parametrize("settings, candidates", [(PackSettings(below=0), [0, 1]), (PackSettings(), [])])
def test_never_packs_when_off_or_without_candidates(settings: PackSettings, candidates: list[int]) -> None:
    p = Packer(settings, candidates)
    assert feed(p, [0.0] * 5) == [None] * 5


@pytest.mark.parametrize("value", [-0.1, 0.8, 2.0])
def test_pack_below_must_sit_under_the_spread_threshold(value: float) -> None:
    with pytest.raises(ConfigError, match="--pack-below"):
        ManagerConfig(name="t", pack_below=value)


def test_proc_readers() -> None:
    mine = cpu_seconds(os.getpid())
    assert mine is not None and mine >= 0
    assert cpu_seconds(2**22 + 12345) is None  # above pid_max: no such process
    busy = cpu_busy_seconds()
    assert set(busy) >= set(os.sched_getaffinity(0)) and all(v >= 0 for v in busy.values())


def test_summary_line() -> None:
    base = {"enabled": True, "load": 0.123, "below": 0.5, "above": 0.8}
    assert summary({**base, "packed_on": 1}) == "pipeline uses 0.12 CPU: packed onto CPU 1"
    assert summary({**base, "packed_on": None}) == "pipeline uses 0.12 CPU: spread (packs below 0.5 CPU)"
    assert summary({**base, "packed_on": None, "balanced": [{"kind": "nf", "id": 1, "cpu": 0}]}) == \
        "pipeline uses 0.12 CPU: spread by load (packs below 0.5 CPU)"
    two = [[{"kind": "nf", "id": 1}, {"kind": "worker", "id": 0}],
           [{"kind": "nf", "id": 2}, {"kind": "worker", "id": 1}]]
    spread = {**base, "packed_on": None, "balanced": [{"kind": "nf", "id": 1, "cpu": 0}], "pipelines": two}
    assert summary(spread) == ("pipeline uses 0.12 CPU: spread by load, 2 pipelines of the local policy "
                               "on a CPU each (packs below 0.5 CPU)")
    assert summary({"enabled": False, "packed_on": None}) == ""


def test_a_pipeline_that_meets_backpressure_is_not_light() -> None:
    # Starved of CPU, a pipeline spends little time on bursts and looks light; waits say otherwise.
    p = Packer(PackSettings(below=0.5, settle=1), [0, 1])
    assert p.step(0.1, IDLE, waited=True) is None
    assert p.step(0.1, IDLE) == 0
    assert p.step(0.2, IDLE, waited=True) is None  # packed and waiting: spread again


def test_balance_puts_the_heaviest_threads_apart() -> None:
    loads = {("worker", 0): 0.6, ("worker", 1): 0.05, ("nf", 1): 0.2, ("nf", 2): 0.2, ("nf", 3): 0.2}
    out = balance(loads, [0, 1])
    per = {c: sum(v for t, v in loads.items() if out[t] == c) for c in (0, 1)}
    assert sorted(per.values()) == pytest.approx([0.6, 0.65])  # not 0.8 / 0.45 by count
    assert out[("worker", 0)] != out[("nf", 1)] == out[("nf", 2)]
    # Among equally loaded CPUs a thread keeps the one it is on.
    assert balance({("nf", 1): 0.3}, [0, 1], {("nf", 1): 1}) == {("nf", 1): 1}
    assert peak(out, loads) == pytest.approx(0.65)


def test_the_balancer_moves_threads_only_for_a_real_gain() -> None:
    b = Balancer([0, 1], gain=0.2, settle=2)
    even = {("nf", 1): 0.3, ("nf", 2): 0.3, ("worker", 0): 0.3, ("worker", 1): 0.3}
    assert b.step(even) is None  # still measuring
    first = b.step(even)
    assert first is not None and peak(first, even) == pytest.approx(0.6)
    assert b.step(even) is None  # nothing to gain
    skew = {**even, ("nf", 1): 0.35}
    assert b.step(skew) is None and b.step(skew) is None  # a small change moves nothing
    heavy = {**even, ("worker", 0): 1.2}
    moves = [b.step(heavy) for _ in range(3)]
    new = next(m for m in moves if m is not None)  # the smoothed load catches up
    assert [t for t, c in new.items() if c == new[("worker", 0)]] == [("worker", 0)]
    b.step({**heavy, ("nf", 9): 0.1})  # a thread that joins is placed at once
    assert ("nf", 9) in b.assignment


def test_an_idle_pipeline_is_not_placed_again_each_window() -> None:
    b = Balancer([0, 1], gain=0.2, settle=1)
    idle = {("nf", 1): 0.0, ("worker", 0): 0.0, ("worker", 1): 0.0}
    assert b.step(idle) is not None  # the first assignment
    assert [b.step(idle) for _ in range(5)] == [None] * 5  # the same one again is no move


def test_offered_more_than_it_handles() -> None:
    # (loops, busy loops, ports held), summed over the RX workers
    assert offered_more((100, 50, 3), (200, 60, 4))  # it held a port
    assert offered_more((100, 100, 0), (300, 298, 0))  # packets on nearly every loop: unpaced
    assert not offered_more((100, 50, 0), (300, 100, 0))  # paced: it idles between bursts
    assert not offered_more((100, 100, 0), (100, 100, 0))  # no RX loop at all


# Pipelines of the local policy.  Worker rows: RX workers first, then TX workers.
def rx(w: int) -> Thread:
    return ("worker", w)


def nf(i: int) -> Thread:
    return ("nf", i)


tx = rx  # a TX worker is a worker row too; the name says which one is meant


def test_each_rx_worker_goes_with_its_replica_and_the_tx_worker_that_drains_it() -> None:
    # 2 RX workers (rows 0, 1), 2 TX workers (rows 2, 3); NF 3 is instance 0, NF 4 instance 1.
    assert pipelines(2, {5: [(3, 0), (4, 1)]}, {3: 3, 4: 2}) == [
        frozenset({rx(0), nf(3), tx(3)}), frozenset({rx(1), nf(4), tx(2)})]
    assert pipelines(2, {5: []}, {}) == [] and pipelines(2, {}, {3: 3}) == []


def test_pipelines_that_share_a_thread_merge() -> None:
    # One TX worker drains both replicas: one pipeline of everything.
    assert pipelines(2, {5: [(3, 0), (4, 1)]}, {3: 2, 4: 2}) == [
        frozenset({rx(0), rx(1), nf(3), nf(4), tx(2)})]
    # 3 RX workers, 2 replicas: RX workers 0 and 2 both feed instance 0.
    assert pipelines(3, {5: [(3, 0), (4, 1)]}, {3: 4, 4: 3}) == [
        frozenset({rx(0), rx(2), nf(3), tx(4)}), frozenset({rx(1), nf(4), tx(3)})]


def test_a_thread_that_does_not_move_joins_no_pipeline() -> None:
    local, tx_row = {5: [(3, 0), (4, 1)]}, {3: 2, 4: 2}
    # The shared TX worker is pinned: it no longer ties the two pipelines together.
    assert pipelines(2, local, tx_row, movable={rx(0), rx(1), nf(3), nf(4)}) == [
        frozenset({rx(0), nf(3)}), frozenset({rx(1), nf(4)})]
    assert pipelines(2, local, tx_row, movable={nf(3), nf(4)}) == []  # workers under --cpus


# Two pipelines of equal weight; placed one by one, the TX worker of NF 3 would end
# up away from it (all loads are sums of halves, so no rounding decides a tie).
PAIR = {rx(0): 0.5, nf(3): 0.25, tx(3): 0.125, rx(1): 0.5, nf(4): 0.25, tx(2): 0.125}
PAIR_GROUPS = [frozenset({rx(0), nf(3), tx(3)}), frozenset({rx(1), nf(4), tx(2)})]
PAIR_TOGETHER = {rx(0): 0, nf(3): 0, tx(3): 0, rx(1): 1, nf(4): 1, tx(2): 1}


def test_balance_keeps_each_pipeline_on_one_cpu() -> None:
    apart = balance(PAIR, [0, 1])
    assert apart[tx(3)] != apart[nf(3)]  # one by one
    assert balance(PAIR, [0, 1], groups=PAIR_GROUPS) == PAIR_TOGETHER


def test_balance_gives_a_heavy_pipeline_a_cpu_of_its_own() -> None:
    loads = {rx(0): 0.5, nf(1): 0.25, tx(2): 0.25, nf(5): 0.25, nf(6): 0.25, nf(7): 0.25}
    heavy = frozenset({rx(0), nf(1), tx(2)})
    assert balance(loads, [0, 1], groups=[heavy]) == {
        rx(0): 0, nf(1): 0, tx(2): 0, nf(5): 1, nf(6): 1, nf(7): 1}


def test_balance_places_threads_alone_when_a_pipeline_would_cost_a_cpu() -> None:
    # Everything in one pipeline (one TX worker): kept together it would leave CPU 1 idle.
    everything = [frozenset(PAIR)]
    assert units(PAIR, [0, 1], everything) == [frozenset({t}) for t in PAIR]
    assert balance(PAIR, [0, 1], groups=everything) == balance(PAIR, [0, 1])
    # A pipeline that would load its CPU far beyond what the threads alone load any CPU.
    loads = {rx(0): 1.0, nf(1): 0.25, tx(2): 0.25, nf(5): 0.25}
    out = balance(loads, [0, 1], groups=[frozenset({rx(0), nf(1), tx(2)})])
    assert out == {rx(0): 0, nf(1): 1, tx(2): 1, nf(5): 1}  # peak 1.0, not 1.5
    # Two pipelines on four CPUs would leave two of them idle.
    assert units(PAIR, [0, 1, 2, 3], PAIR_GROUPS) == [frozenset({t}) for t in PAIR]
    assert units(PAIR, [0, 1], PAIR_GROUPS) == PAIR_GROUPS


def test_the_balancer_places_again_when_the_pipelines_change() -> None:
    b = Balancer([0, 1], gain=0.2, settle=1)
    apart = b.step(PAIR)
    assert apart is not None and apart[tx(3)] != apart[nf(3)] and b.pipelines == []
    assert b.step(PAIR) is None
    # An instance joined a local service: nothing to gain by load, but the pipelines moved.
    assert b.step(PAIR, PAIR_GROUPS) == PAIR_TOGETHER
    assert b.pipelines == PAIR_GROUPS
    assert b.step(PAIR, PAIR_GROUPS) is None  # the same pipelines: nothing to do
    # The policy changed back: the threads already sit well, so nothing moves, and the
    # assignment no longer claims pipelines.
    assert b.step(PAIR, []) is None and b.assignment == PAIR_TOGETHER and b.pipelines == []


class Plane:
    """The part of a DataPlane that balancing reads: each thread's busy ns, growing by
    ``loads`` (in CPUs) every half-second window."""

    def __init__(self, loads: dict[Thread, float], tx_workers: int) -> None:
        self.layout = SimpleNamespace(rx_workers=2, tx_workers=tx_workers)
        self.loads, self.ns = loads, dict.fromkeys(loads, 0)

    def window(self) -> None:
        self.ns = {t: ns + int(self.loads[t] * 0.5e9) for t, ns in self.ns.items()}

    def busy_each(self, workers: int, nf_ids: list[int]) -> dict[Thread, int]:
        return {t: ns for t, ns in self.ns.items()
                if (t[0] == "worker" and t[1] < workers) or (t[0] == "nf" and t[1] in nf_ids)}


LOCAL = POLICIES["local"]


def local_replicas(move_workers: bool = True, tx_workers: int = 2) -> Packing:
    """Two replicas of service 5 with the local policy (NFs 1 and 2) and NF 3 of service 6
    with the flow hash, 2 RX workers and ``tx_workers`` TX workers, balanced over CPUs 0 and 1."""
    reg = Registry(rx_workers=2, tx_workers=tx_workers, nf_cpus=(0, 1))
    for name, service in (("a", 5), ("b", 5), ("c", 6)):
        reg.start(reg.register(name, service, pid=100).nf_id)
    reg.set_policy(5, LOCAL)
    loads = {rx(0): 0.5, rx(1): 0.5, nf(1): 0.25, nf(2): 0.25, tx(2): 0.125, tx(3): 0.125, nf(3): 0.125}
    return Packing(PackSettings(), dataplane=cast(Any, Plane(loads, tx_workers)), registry=reg,
                   lock=threading.RLock(), log=lambda text: None, candidates=[0, 1],
                   move_workers=move_workers)


def spread_by_load(p: Packing) -> None:
    plane = cast(Plane, p.dataplane)
    for _ in range(p.balancer.settle + 1):  # one window to start from, then the balancer's
        plane.window()
        p._rebalance(0.5)


def test_packing_keeps_each_local_replica_with_its_workers() -> None:
    # NF 1 (instance 0) is drained by TX worker row 3, NF 2 (instance 1) by row 2.
    p = local_replicas()
    spread_by_load(p)
    assert p.balancer.assignment == {rx(0): 0, nf(1): 0, tx(3): 0, rx(1): 1, nf(2): 1, tx(2): 1, nf(3): 0}
    assert p.describe()["pipelines"] == [
        [{"kind": "nf", "id": 1}, {"kind": "worker", "id": 0}, {"kind": "worker", "id": 3}],
        [{"kind": "nf", "id": 2}, {"kind": "worker", "id": 1}, {"kind": "worker", "id": 2}]]


def test_packing_without_the_local_policy_or_movable_workers_keeps_no_pipeline() -> None:
    # One TX worker would tie both replicas into one pipeline, but the workers are pinned:
    # the NFs go alone.
    p = local_replicas(move_workers=False, tx_workers=1)
    cast(Plane, p.dataplane).loads[nf(3)] = 0.5  # NFs 1 and 2 on one CPU would cost nothing
    spread_by_load(p)
    assert set(p.balancer.assignment) == {nf(1), nf(2), nf(3)} and p.balancer.pipelines == []
    p = local_replicas()
    p.registry.set_policy(5, POLICIES["hash"])  # the replicas go by the flow hash
    spread_by_load(p)
    assert p.balancer.pipelines == [] and p.describe()["pipelines"] == []
