"""Backpressure (onvm_bp.h): the watermark flag against WatermarkModel, and the
wait/wake protocol under threads, where a lost wake-up shows as a sleep that
runs into its timeout."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onvm import _hooks

try:
    from . import models
    from .test_pool import create, new_path
except ImportError:  # collected as rootdir modules: tests/native is no package
    import models  # type: ignore[no-redef]
    from test_pool import create, new_path  # type: ignore[no-redef]

SIZES = [4, 16, 64, 1024]


@pytest.mark.parametrize("size", SIZES)
def test_watermarks_are_half_and_a_quarter(size: int) -> None:
    assert _hooks.Ring(size).watermarks == (size // 2, size // 4)


@pytest.mark.parametrize("size", SIZES)
@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 1100)), max_size=60))
def test_flag_follows_the_model(size: int, ops: list[tuple[bool, int]]) -> None:
    ring, model = _hooks.Ring(size), models.WatermarkModel(size)
    history: list[str] = []
    item = 0
    for push, n in ops:
        if push:
            items = list(range(item, item + n))
            got, want = ring.enqueue(items, mp=True, bp=True), model.enqueue(items)
            item += got
        else:
            got, want = len(ring.dequeue(n, bp=True)), len(model.dequeue(n))
        history.append(f"{'enqueue' if push else 'dequeue'}({n}) -> {got}, congested {ring.congested}")
        assert (got, ring.congested) == (want, model.congested), f"{model!r}\n  " + "\n  ".join(history[-10:])


def test_a_producer_that_sees_the_ring_drained_clears_its_own_flag() -> None:
    # The consumer drained to low before the producer's flag was visible: the producer's
    # recheck after setting it clears it, or nobody would (onvm_bp_pushed).
    ring = _hooks.Ring(16)
    ring.enqueue(list(range(8)), bp=True)
    assert ring.congested
    ring.dequeue(8)  # a consumer that did not look at the flag
    ring.enqueue([], bp=True)
    assert ring.congested  # count 0 < high: an empty push leaves the flag to the consumer
    ring.dequeue(0, bp=True)
    assert not ring.congested


@pytest.mark.parametrize("ring_size, producers, burst", [(16, 1, 8), (16, 3, 8), (64, 2, 32), (256, 4, 64)])
def test_no_lost_wake_up_under_threads(ring_size: int, producers: int, burst: int) -> None:
    path = new_path()
    region = create(path, 128, ring_size=ring_size)
    try:
        for nf in range(1, producers + 2):
            region.nf_activate(nf, nf, 0, os.getpid(), 0, f"nf{nf}")
        items = 300000 // producers
        res = _hooks.bp_stress(region, producers, items, burst, ring_size)
    finally:
        region.close()  # the creator's close unlinks the file
    assert res["received"] == producers * items and res["errors"] == 0, res
    assert res["timeouts"] == 0, f"a sleep ran into its timeout: a wake-up was lost {res}"
    assert res["waits"] > 0 and res["sleeps"] > 0, f"backpressure never engaged {res}"
    assert not res["congested"], res
