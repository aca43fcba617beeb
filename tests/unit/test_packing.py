"""The packing decision on made-up loads, and /proc readers it uses."""

from __future__ import annotations

import os

import pytest

from onvm._proc import cpu_busy_seconds, cpu_seconds
from onvm.errors import ConfigError
from onvm.manager.config import ManagerConfig
from onvm.manager.packing import (
    Balancer,
    Packer,
    PackSettings,
    balance,
    least_busy,
    offered_more,
    peak,
    summary,
)

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


def test_offered_more_than_it_handles() -> None:
    # (loops, busy loops, ports held), summed over the RX workers
    assert offered_more((100, 50, 3), (200, 60, 4))  # it held a port
    assert offered_more((100, 100, 0), (300, 298, 0))  # packets on nearly every loop: unpaced
    assert not offered_more((100, 50, 0), (300, 100, 0))  # paced: it idles between bursts
    assert not offered_more((100, 100, 0), (100, 100, 0))  # no RX loop at all
