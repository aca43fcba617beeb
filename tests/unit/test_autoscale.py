"""The autoscaler's decision on made-up ring readings: no region, no processes."""

from __future__ import annotations

import threading
from itertools import cycle
from typing import Any

from onvm.manager.registry import Registry
from onvm.manager.services import AutoscaleSpec, Services

RING = 1024


def services(readings: list[tuple[int, bool]]) -> tuple[Services, AutoscaleSpec, list[int]]:
    """A service of one running NF whose RX ring reads as ``readings`` (count, congested), in turn;
    scaling is recorded, not done."""
    reg = Registry()
    rec = reg.register("slow", 1, pid=100)
    reg.start(rec.nf_id)
    seq = cycle(readings)
    rx = iter(range(0, 10**9, 100))  # it handles packets: never idle

    def nf_info(nf_id: int) -> dict[str, Any]:
        count, congested = next(seq)
        return {"rx_ring": count, "rx_congested": congested, "rx": next(rx)}

    spec = AutoscaleSpec(1, 1, 3)
    svc = Services(reg, [spec], stop_nf=lambda r: None, nf_info=nf_info, ring_size=RING,
                   lock=threading.RLock(), log=lambda text: None)
    asked: list[int] = []
    svc.scale = lambda service, count: asked.append(count) or {}  # type: ignore[method-assign]
    return svc, spec, asked


def test_a_service_that_backpressure_holds_between_its_watermarks_gets_an_instance() -> None:
    # It cannot keep up: backpressure stops its producers at half the ring and lets them
    # go again at a quarter, so a look finds the ring between the two, congested or not.
    svc, spec, asked = services([(300, False), (512, True), (400, True), (262, False), (450, False)])
    for _ in range(spec.busy_checks):
        svc.check(spec)
    assert asked == [2]


def test_a_service_that_keeps_up_gets_none() -> None:
    svc, spec, asked = services([(0, False), (40, False), (3, False), (120, False)])
    for _ in range(10 * spec.busy_checks):
        svc.check(spec)
    assert asked == []
