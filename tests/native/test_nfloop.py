"""The real NF run loop in process: stop requests, and backpressure (onvm_bp.h) as
the loop applies it: it stops taking packets while the ring it feeds is
congested, is woken when that ring drains, and drops nothing late."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from onvm import _hooks, _native

try:
    from tests.native.test_pool import create, new_path
except ImportError:  # run from the sanitizer build's directory
    from test_pool import create, new_path  # type: ignore[no-redef]

PID = os.getpid()
FRAME = bytes(60)
TONF = 2


def wait_for(cond: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def test_a_stop_before_run_ends_it_at_once() -> None:
    # A signal handled as an NF starts (after it said it runs, before the loop) is not lost.
    path = new_path()
    r = create(path, 128)
    try:
        r.nf_activate(1, 1, 0, PID, 0, "nf")
        ctx = _native.NFContext(r, 1)
        ctx.stop()
        t0 = time.monotonic()
        assert ctx.run(lambda pkt, meta: None, batch=False, ttl=5.0) == "stopped"
        assert time.monotonic() - t0 < 1.0
    finally:
        r.close()


def test_the_loop_waits_while_the_ring_it_feeds_is_congested() -> None:
    path = new_path()
    r = create(path, 256, ring_size=64)  # congested at 32, clear again at 16
    try:
        r.nf_activate(1, 1, 0, PID, 0, "upstream")
        r.nf_activate(2, 2, 0, PID, 0, "slow")  # nobody runs its loop: we drain it by hand
        r.set_service(2, [(2, 0)])

        def forward(pkt: Any, meta: Any) -> None:
            meta.tonf(2)

        ctx = _native.NFContext(r, 1)
        t = threading.Thread(target=ctx.run, args=(forward,), kwargs={"batch": False, "ttl": 20.0})
        t.start()
        try:
            assert _hooks.deliver(r, 1, [FRAME] * 40) == 40
            wait_for(lambda: r.nf_info(1)["rx"] == 40, "the first packets")
            assert r.nf_info(2)["rx_congested"]
            wait_for(lambda: r.nf_info(1)["blocked_on"] == 2, "the loop to wait for NF 2")
            assert _hooks.deliver(r, 1, [FRAME] * 30) == 30
            time.sleep(0.2)
            info = r.nf_info(1)
            assert info["rx"] == 40 and info["rx_ring"] == 30, "it took packets while NF 2 was congested"
            assert info["blocked"] == 1 and info["late"] == 0
            assert len(_hooks.drain(r, 2, False)) == 40  # NF 2 drains: it wakes the loop
            wait_for(lambda: r.nf_info(1)["rx"] == 70, "the loop to go on")
            assert len(_hooks.drain(r, 2, False)) == 30
            wait_for(lambda: r.nf_info(1)["blocked_on"] == 0, "the loop to wait no more")
            info = r.nf_info(1)
            assert info["late"] == 0 and sum(info["drops"]) == 0 and info["blocked_ns"] > 0
        finally:
            ctx.stop()
            t.join(timeout=10)
        assert not t.is_alive()
    finally:
        r.close()


def test_the_loop_never_waits_for_its_own_ring() -> None:
    path = new_path()
    r = create(path, 256, ring_size=64)
    try:
        r.nf_activate(1, 1, 0, PID, 0, "loop")
        r.set_service(1, [(1, 0)])
        seen = []

        def again(pkt: Any, meta: Any) -> None:  # back to itself, 20 times each
            seen.append(1)
            if len(seen) < 40 * 20:
                meta.tonf(1)
            else:
                meta.drop()

        ctx = _native.NFContext(r, 1)
        _hooks.deliver(r, 1, [FRAME] * 40)  # past its own high watermark
        t = threading.Thread(target=ctx.run, args=(again,), kwargs={"batch": False, "ttl": 20.0})
        t.start()
        try:
            wait_for(lambda: len(seen) >= 40 * 20, "the packets to circle")
        finally:
            ctx.stop()
            t.join(timeout=10)
        assert r.nf_info(1)["blocked"] == 0
    finally:
        r.close()
