"""Retiring an NF (retire.c): the grace period waits for the packet path, woken by it, bounded.

The rule the grace period follows: every other active NF and every running worker
has passed a loop iteration since the NF left its service, or sleeps.  Each case
below sets up one kind of participant and checks the outcome the rule gives.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from onvm import _hooks, _native
from onvm.constants import Action

try:
    from tests.native.test_pool import fresh_region
except ImportError:  # run from the sanitizer build's directory
    from test_pool import fresh_region  # type: ignore[no-redef]

PID = os.getpid()
FRAME = bytes(60)


@contextmanager
def nf_loop(region: _native.Region, nf_id: int, handler: Any,
            ttl: float = 5.0) -> Iterator[_native.NFContext]:
    """NF ``nf_id`` running the real native loop in a thread until the block ends."""
    ctx = _native.NFContext(region, nf_id)
    t = threading.Thread(target=ctx.run, args=(handler,), kwargs={"ttl": ttl, "batch": False})
    t.start()
    try:
        yield ctx
    finally:
        ctx.stop()
        t.join(timeout=10)
        assert not t.is_alive()


def wait_for(cond: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_nobody_else_means_no_wait_and_held_slots_come_back() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        r.nf_activate(1, 1, 0, PID, 1, "leaving")
        r.alloc(10, 1)  # slots in the NF's hands
        _hooks.deliver(r, 1, [FRAME] * 5)  # and packets in its RX ring
        res = m.retire(1, grace=5.0, drain=5.0)
        assert res["grace_ok"] and res["drained"] and res["pending"] == 0
        assert res["grace_s"] < 5.0
        assert res["reclaimed"] == 15 and r.free_count() == 256
        assert r.nf_info(1)["state"] == 2  # DRAINING until the caller releases it
        r.nf_release(1)


def test_an_nf_that_never_moves_holds_the_grace_period_to_its_bound() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        r.nf_activate(1, 1, 0, PID, 1, "leaving")
        r.nf_activate(2, 2, 0, PID, 1, "stuck")  # active, never loops, never sleeps
        r.alloc(4, 1)
        t0 = time.monotonic()
        res = m.retire(1, grace=0.2, drain=0.2)
        assert time.monotonic() - t0 >= 0.2
        assert not res["grace_ok"] and res["pending"] == 1
        assert res["reclaimed"] == 4 and r.free_count() == 256  # retired all the same


def test_a_sleeping_nf_and_sleeping_workers_have_nothing_in_hand() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        m.start()
        try:
            r.nf_activate(1, 1, 0, PID, 1, "leaving")
            r.nf_activate(2, 2, 0, PID, 1, "idle")
            with nf_loop(r, 2, lambda pkt, meta: None):
                wait_for(lambda: r.nf_info(2)["sleeping"], "the NF to sleep")
                wait_for(lambda: all(r.worker_info(w)["sleeping"] for w in (0, 1)), "the workers to sleep")
                res = m.retire(1, grace=10.0)
            assert res["grace_ok"] and res["grace_s"] < 10.0
        finally:
            m.stop()


def test_the_grace_period_ends_when_a_busy_nf_finishes_its_iteration() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        r.nf_activate(1, 1, 0, PID, 1, "leaving")
        r.nf_activate(2, 2, 0, PID, 1, "busy")
        in_handler, release = threading.Event(), threading.Event()

        def handler(pkt: Any, meta: Any) -> None:
            in_handler.set()
            release.wait(10)

        _hooks.deliver(r, 2, [FRAME])
        with nf_loop(r, 2, handler):
            assert in_handler.wait(5)
            threading.Timer(0.3, release.set).start()
            res = m.retire(1, grace=10.0)
        # It waited for the iteration under way and was woken when it ended, long before its bound.
        assert res["grace_ok"] and 0.25 <= res["grace_s"] < 10.0


def test_what_the_nf_left_in_its_tx_ring_is_sent_before_it_is_released() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        m.add_null(0)
        r.nf_activate(1, 1, 0, PID, 1, "leaving")
        ctx = _native.NFContext(r, 1)
        assert ctx.inject(FRAME, int(Action.OUT), 0, count=20) == 20
        assert r.nf_info(1)["tx_ring"] == 20
        m.start()
        try:
            res = m.retire(1, grace=5.0, drain=5.0)
            assert res["drained"] and r.nf_info(1)["tx_ring"] == 0
            assert r.port_info(0)["tx"] == 20 and r.free_count() == 256
        finally:
            m.close_ports()


def test_what_no_tx_worker_drains_in_time_comes_back_to_the_pool() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        m.add_null(0)
        r.nf_activate(1, 1, 0, PID, 1, "leaving")
        ctx = _native.NFContext(r, 1)
        assert ctx.inject(FRAME, int(Action.OUT), 0, count=20) == 20
        res = m.retire(1, grace=0.1, drain=0.2)  # no TX worker runs: nothing drains it
        assert not res["drained"] and res["reclaimed"] == 20
        assert r.free_count() == 256 and r.port_info(0)["tx"] == 0
        m.close_ports()


def test_drain_waits_for_every_ring_to_empty() -> None:
    with fresh_region(pool_size=256) as r:
        m = _native.Manager(r, 1, 1)
        r.nf_activate(1, 1, 0, PID, 1, "nf")
        assert m.drain(0.0)  # nothing in any ring
        _hooks.deliver(r, 1, [FRAME] * 8)
        assert not m.drain(0.1)  # nobody reads it
        with nf_loop(r, 1, lambda pkt, meta: meta.drop()):
            assert m.drain(10.0)
        assert r.nf_info(1)["rx"] == 8


def test_bad_arguments_are_refused() -> None:
    import pytest

    with fresh_region() as r:
        m = _native.Manager(r, 1, 1)
        for bad in (0, _native.MAX_NFS):
            with pytest.raises(ValueError, match="out of range"):
                m.retire(bad)
        with pytest.raises(ValueError, match="seconds"):
            m.retire(1, grace=-1)
        with pytest.raises(ValueError, match="seconds"):
            m.drain(float("nan"))
