"""The sampler: rates, services, events, and waiting for a new sample, with a fake manager."""

from __future__ import annotations

import time
from typing import Any

from onvm.manager.events import EventLog
from onvm.web.sampler import Sampler, add_rates, describe_hops, services
from tests.unit.test_web_api import make_status


class FakeManager:
    def __init__(self) -> None:
        self.log = EventLog("m", quiet=True)
        self.log("one")
        self.log("two")
        self.rx = 100

    def sample(self) -> dict[str, Any]:
        return {"status": make_status(self.rx), "chains": [(0, [(2, 1), (3, 1)], [(5, 0), (0, 2)])],
                "sections": {"sdn": {"controller": "none"}}}


def test_rates_follow_the_counters_and_skip_a_replaced_nf():
    before = make_status(100)
    add_rates(before, None, 0)
    assert before["nfs"][0]["rx_pps"] == 0.0
    after = make_status(300)
    after["nfs"][1]["pid"] = 999  # same id, another process: no rate against the old one
    add_rates(after, before, 2.0)
    assert after["nfs"][0]["rx_pps"] == 100.0 and after["nfs"][1]["rx_pps"] == 0.0
    assert after["ports"][0]["rx_pps"] == 100.0 and after["ports"][0]["rx_bps"] == 100.0 * 60 * 8
    assert after["nfs"][0]["drops_total"] == 2


def test_busy_share_and_cost_per_packet_of_each_worker_and_nf():
    before = make_status(100)
    add_rates(before, None, 0)
    assert before["workers"][0]["busy"] == 0.0 and before["workers"][0]["ns_per_packet"] is None
    after = make_status(300)
    after["nfs"][1]["pid"] = 999  # another process: nothing to compare with
    after["workers"][1]["busy_ns"] = 3 * 10**9  # a share over 1 (two clocks) is shown as 1
    add_rates(after, before, 2e-6)  # 2 us: 200 packets at 30 ns each is 6 us of work, 3 x the time
    rx, tx = after["workers"]
    assert rx["pps"] == 100e6 and rx["ns_per_packet"] == 30.0 and rx["busy"] == 1.0
    assert tx["busy"] == 1.0
    assert after["nfs"][0]["ns_per_packet"] == 50.0 and after["nfs"][1]["ns_per_packet"] is None
    later = make_status(400)
    later["workers"][0]["busy_ns"] = 0  # a counter that went back (a new manager under the name)
    later["nfs"][0]["busy_ns"] = 300 * 50 + 5000  # 100 packets, 5 us of work in 10 us
    add_rates(later, after, 1e-5)
    assert later["workers"][0]["busy"] == 0.0 and later["workers"][0]["ns_per_packet"] is None
    assert later["nfs"][0]["busy"] == 0.5 and later["nfs"][0]["ns_per_packet"] == 50.0


def test_services_group_instances():
    st = make_status(10)
    add_rates(st, None, 0)
    (svc,) = services(st)
    assert svc["id"] == 1 and [i["nf"] for i in svc["instances"]] == [1, 2]
    assert svc["rx"] == 15 and svc["drops"] == 4 and svc["rx_ring"] == 6


def test_describe_hops():
    assert describe_hops([(2, 3), (3, 0), (0, 0), (9, 1)]) == [
        {"action": "tonf", "dest": 3}, {"action": "out", "dest": 0}, {"action": "drop", "dest": 0},
        {"action": "9", "dest": 1}]


def test_sampler_publishes_samples_and_events():
    m = FakeManager()
    s = Sampler(m.sample, m.log, interval=0.05)
    s.start()
    try:
        first = s.latest()
        assert first["chains"][0]["hops"][0] == {"action": "tonf", "dest": 1}
        assert first["chains"][0]["drops"] == [{"early": 5, "late": 0}, {"early": 0, "late": 2}]
        assert first["sdn"] == {"controller": "none"}  # extra sections from the manager
        m.rx = 10_000
        seq = s.seq
        assert s.wait(seq, 5.0) != seq
        deadline = time.monotonic() + 5
        while s.latest()["status"]["nfs"][0]["rx"] != 10_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.latest()["status"]["nfs"][0]["rx_pps"] > 0
        assert [e["text"] for e in s.events()] == ["one", "two"]
        assert [e["id"] for e in s.events(since=1)] == [2]
        assert len(s.history()) >= 2
    finally:
        s.stop()
    assert s.stopped and s.wait(s.seq, 5.0) == s.seq  # returns at once once stopped
