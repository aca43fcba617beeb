"""The packing decision on made-up loads, and /proc readers it uses."""

from __future__ import annotations

import os

import pytest

from onvm._proc import cpu_busy_seconds, cpu_seconds
from onvm.errors import ConfigError
from onvm.manager.config import ManagerConfig
from onvm.manager.packing import Packer, PackSettings, least_busy, summary

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
    assert summary({"enabled": False, "packed_on": None}) == ""
