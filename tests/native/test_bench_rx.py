"""``_hooks.bench_rx``: RX's parse and classification in one thread, as ``onvm bench classify``
measures it beside the pipeline.  The figures are timings; what is checked here is that the
packets went the RX path's way: with nothing to classify by, no flow is cached; with a rule,
each flow is, and its entry counts every packet of it."""

from __future__ import annotations

import ipaddress

import pytest
from tests.native.test_rules import make_region

from onvm import _hooks, _native
from onvm.bench.classify import ONE_RULE, rule_set, rx_cost
from onvm.flows.rules import parse_rule


@pytest.fixture
def region():
    r, _ = make_region(max_rules=64)
    try:
        yield r
    finally:
        r.close()  # its creator's close removes the file


def test_nothing_to_classify_by_caches_nothing(region):
    got = _hooks.bench_rx(region, 100, 1000)
    assert got["packets"] == 1000 and got["ns_per_packet"] > 0
    assert got["flows_used"] == 0


def test_with_a_rule_every_flow_is_cached_and_counts_its_packets(region):
    region.rules_apply(adds=[parse_rule(ONE_RULE).native(1)])
    got = _hooks.bench_rx(region, 100, 1000)  # 1,000 packets in turn over 100 flows: 10 each
    assert got["flows_used"] == 100
    entries = region.flow_list(limit=1000, origin=_native.FLOW_ORIGINS["default"])  # no rule matched them
    sources = {ipaddress.IPv4Address(e["key"][1]) for e in entries}
    assert sources == {ipaddress.IPv4Address("10.0.0.1") + i for i in range(100)}
    dst = ipaddress.IPv4Address("10.1.0.1").packed
    got_entries = {(e["key"][2:], e["packets"], e["bytes"]) for e in entries}
    assert got_entries == {((dst, 17, 1024, 80, 0, 0), 10, 640)}


def test_bad_arguments_are_refused(region):
    with pytest.raises(ValueError):
        _hooks.bench_rx(region, 0, 10)
    with pytest.raises(ValueError):
        _hooks.bench_rx(region, 10, 0)


def test_rx_cost_reports_the_three_phases():
    got = rx_cost(64, 1024, rule_set(200), rounds=1, packets=10_000)
    assert set(got) == {"rx_ns_per_packet_0", "rx_ns_per_packet_1", "rx_ns_per_packet", "rx_ratio"}
    assert all(v > 0 for v in got.values())


def test_more_flows_than_buffers_are_still_that_many_flows():
    r, _ = make_region(flows=65536, max_rules=64)
    try:
        r.rules_apply(adds=[parse_rule(ONE_RULE).native(1)])
        got = _hooks.bench_rx(r, 20000, 40000)  # 16,384 buffers, each rewritten for the flow it carries
        assert got["flows_used"] == 20000
    finally:
        r.close()
