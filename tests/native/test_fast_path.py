"""RX's fast path (flowtable.c): an established IPv4 flow found at the first place of its
window takes its chain without the full lookup.  It must decide exactly as the full path
does, and be taken for every kind of IPv4 packet the full path caches (``flow_stats()
["fast"]`` counts the packets it took); what it must not take (an outdated result, IPv6)
goes the full way."""

from __future__ import annotations

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, IPv6  # type: ignore[import-untyped]
from tests.native.test_rules import make_region

from onvm import _hooks, _native
from onvm.flows.keys import FlowKey
from onvm.flows.rules import parse_rule

NOTHING = "udp src 192.0.2.1/32 -> chain default"  # matches none of the packets: results are cached


@pytest.fixture
def region():
    r, _ = make_region(max_rules=64)
    try:
        r.rules_apply(adds=[parse_rule(NOTHING).native(1)])
        yield r
    finally:
        r.close()  # its creator's close removes the file


def classify(region, frame, in_port=0) -> tuple[int, int]:
    """(chain, packets the fast path took) for one packet through RX's classification."""
    (slot,) = region.alloc(1)
    try:
        region.write(slot, bytes(frame))
        before = region.flow_stats()["fast"]
        chain = _hooks.classify(region, slot, in_port)
        return chain, region.flow_stats()["fast"] - before
    finally:
        region.free([slot])


IPV4 = {
    "udp": Ether() / IP(src="10.0.0.1", dst="10.1.0.1") / UDP(sport=1024, dport=80),
    "tcp": Ether() / IP(src="10.0.0.2", dst="10.1.0.1") / TCP(sport=5000, dport=443),
    "icmp": Ether() / IP(src="10.0.0.3", dst="10.1.0.1") / ICMP(),
    "vlan": Ether() / Dot1Q(vlan=42) / IP(src="10.0.0.4", dst="10.1.0.1") / UDP(sport=7, dport=9),
    "fragment": Ether() / IP(src="10.0.0.5", dst="10.1.0.1", flags="MF") / UDP(sport=7, dport=9),
}


@pytest.mark.parametrize("kind", sorted(IPV4))
@pytest.mark.parametrize("in_port", [0, 3])
def test_an_established_ipv4_flow_takes_the_fast_path(region, kind, in_port):
    frame = IPV4[kind]
    first, fast = classify(region, frame, in_port)
    assert fast == 0  # a new flow: the full path classifies and caches it
    for _ in range(3):
        assert classify(region, frame, in_port) == (first, 1)
    (entry,) = region.flow_list(limit=10, origin=_native.FLOW_ORIGINS["default"])
    assert entry["packets"] == 4


def test_a_rule_added_since_is_seen_on_the_next_packet(region):
    frame = IPV4["udp"]
    classify(region, frame)
    assert classify(region, frame) == (0, 1)
    region.rules_apply(adds=[parse_rule("udp src 10.0.0.1/32 priority 500 -> chain x").native(9)])
    assert classify(region, frame) == (9, 0)  # the entry is behind the rules: the full path
    assert classify(region, frame) == (9, 1)


def test_an_explicit_entry_steers_the_flow_at_once(region):
    frame = IPV4["tcp"]
    classify(region, frame)
    assert classify(region, frame) == (0, 1)
    region.flow_put(FlowKey.of("10.0.0.2", "10.1.0.1", "tcp", 5000, 443).native(), 7)
    assert classify(region, frame) == (7, 1)  # rewritten in place: the fast path finds the new chain


def test_a_flow_of_another_port_or_vlan_is_another_flow(region):
    classify(region, IPV4["udp"], 0)
    assert classify(region, IPV4["udp"], 1) == (0, 0)  # not the same key: a new entry
    vlan7 = Ether() / Dot1Q(vlan=7) / IP(src="10.0.0.1", dst="10.1.0.1") / UDP(sport=1024, dport=80)
    assert classify(region, vlan7, 0) == (0, 0)
    assert region.flow_stats()["used"] == 3


def test_ipv6_takes_the_full_path(region):
    frame = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1, dport=2)
    for _ in range(3):
        assert classify(region, frame) == (0, 0)
    assert region.flow_stats()["used"] == 1
