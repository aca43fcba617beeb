"""Hundreds of NF lifetimes do not grow the manager: what it keeps of NFs that left is bounded."""

from __future__ import annotations

from onvm.control.client import Client
from tests.integration.conftest import status, wait_for


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _lifetimes(name: str, count: int) -> None:
    for i in range(count):
        with Client(name) as c:
            c.register(f"brief-{i}", 1)
            c.start()
        if i % 40 == 39:  # let the retirements catch up before the NF ids run out
            wait_for(lambda: not status(name)["nfs"], what="the NFs to be retired")
    wait_for(lambda: not status(name)["nfs"], what="the NFs to be retired")


def test_nf_lifetimes_leave_a_bounded_trace_in_the_manager(deploy):
    dep = deploy([])
    pid = status(dep.name)["manager"]["pid"]
    _lifetimes(dep.name, 200)  # warm up: the rings of NFs that left and of events fill
    before = _rss_kib(pid)
    _lifetimes(dep.name, 800)
    grown = _rss_kib(pid) - before
    st = status(dep.name)
    assert len(st["left"]) <= 16 and len(st["events"]) <= 20
    # Unbounded it was about 5 KiB per lifetime, 4000 KiB here; now the event ring (3 entries a
    # lifetime, up to 10000 kept) still fills over these, about 0.7 KiB a lifetime, then stops.
    assert grown < 1024, f"the manager grew by {grown} KiB over 800 NF lifetimes"
