"""Rules and the flow table in the region, against the plain reference matcher."""

from __future__ import annotations

import ipaddress
import os
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6  # type: ignore[import-untyped]

from onvm import _hooks, _native
from onvm.flows.keys import FlowKey
from onvm.flows.rules import PacketFields, Rule, match_rules, ordered, parse_rule

# Explicit addresses: scapy would otherwise look the destination MAC up on the network.
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


@pytest.fixture
def region():
    path = f"/dev/shm/onvm-test-{uuid.uuid4()}"
    r = _native.Region.create(path, "t", 256, 2048, 64, 1024)
    try:
        yield r
    finally:
        r.close()
        assert not os.path.exists(path)


def publish(region, rules: list[Rule]) -> None:
    """Rule i goes to slot i and targets chain i + 1, so the chain names the rule."""
    for i, r in enumerate(rules):
        r.id = i + 1
    region.set_rules([r.native(r.id - 1, r.id) for r in ordered(rules)], list(range(len(rules))))
    region.flow_flush()


ADDR4 = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.1.2.3", "192.168.1.1", "172.16.0.9"])
ADDR6 = st.sampled_from(["2001:db8::1", "2001:db8::2", "2001:db8:1::5", "fe80::1"])
PORTS = st.sampled_from([0, 22, 53, 80, 443, 1024, 8080, 65535])


@st.composite
def packets(draw):
    v6 = draw(st.booleans())
    a, b = (draw(ADDR6), draw(ADDR6)) if v6 else (draw(ADDR4), draw(ADDR4))
    proto = draw(st.sampled_from(["tcp", "udp"]))
    sp, dp = draw(PORTS), draw(PORTS)
    vlan = draw(st.one_of(st.none(), st.sampled_from([5, 7])))
    l4 = TCP(sport=sp, dport=dp) if proto == "tcp" else UDP(sport=sp, dport=dp)
    l3 = IPv6(src=a, dst=b) if v6 else IP(src=a, dst=b)
    eth = Ether(src=MAC_A, dst=MAC_B)
    frame = eth / Dot1Q(vlan=vlan) / l3 / l4 if vlan is not None else eth / l3 / l4
    fields = PacketFields(6 if v6 else 4, ipaddress.ip_address(a).packed, ipaddress.ip_address(b).packed,
                          6 if proto == "tcp" else 17, sp, dp, 0, vlan)
    return bytes(frame), fields


@st.composite
def rules(draw):
    parts = []
    if draw(st.booleans()):
        parts.append(f"priority {draw(st.integers(-5, 5))}")
    kind = draw(st.sampled_from(["", "tcp", "udp", "ip", "ip6"]))
    v6 = kind == "ip6" or (kind == "" and draw(st.booleans()))
    if kind:
        parts.append(kind)
    for word in ("src", "dst"):
        if draw(st.booleans()):
            addr = draw(ADDR6 if v6 else ADDR4)
            length = draw(st.sampled_from([0, 8, 16, 24, 32, 48, 64, 128] if v6 else [0, 8, 16, 24, 32]))
            parts.append(f"{word} {addr}/{length}")
    for word in ("src port", "dst port"):
        if draw(st.booleans()):
            lo = draw(PORTS)
            hi = draw(st.sampled_from([lo, min(65535, lo + 100), 65535]))
            parts.append(f"{word} {lo}-{hi}")
    if draw(st.integers(0, 4)) == 0:
        parts.append(f"vlan {draw(st.sampled_from([5, 7]))}")
    if draw(st.integers(0, 5)) == 0:
        parts.append("in-port 1")
    return parse_rule(" ".join(parts + ["-> chain c"]))


def test_flows_that_differ_only_in_vlan_get_their_own_entries(region):
    # A rule hit installs an exact entry.  Its key carries the VLAN, so the same
    # 5-tuple untagged (or on another VLAN) is classified afresh, not by that entry.
    publish(region, [parse_rule("udp vlan 7 -> chain c")])
    l3 = IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=22, dport=0)
    eth = Ether(src=MAC_A, dst=MAC_B)
    frames = {7: eth / Dot1Q(vlan=7) / l3, None: eth / l3, 5: eth / Dot1Q(vlan=5) / l3}
    slots = region.alloc(len(frames))
    try:
        got = {}
        for order in ([7, None, 5], [None, 5, 7]):  # the second round finds the entry installed
            for slot, vlan in zip(slots, order, strict=True):
                region.write(slot, bytes(frames[vlan]))
                got.setdefault(vlan, set()).add(_hooks.classify(region, slot))
        assert got == {7: {1}, None: {0}, 5: {0}}
        key = FlowKey.of("2001:db8::1", "2001:db8::2", "udp", 22, 0, vlan=7)
        assert region.flow_get(key.native()) is not None
        assert region.flow_get(FlowKey.of("2001:db8::1", "2001:db8::2", "udp", 22, 0).native()) is None
    finally:
        region.free(slots)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(rules(), max_size=8), st.lists(packets(), min_size=1, max_size=6))
def test_native_rules_agree_with_the_reference(region, rule_list, pkts):
    publish(region, rule_list)
    slots = region.alloc(len(pkts))
    try:
        for slot, (data, fields) in zip(slots, pkts, strict=True):
            region.write(slot, data)
            want = match_rules(rule_list, fields)
            got = _hooks.classify(region, slot)
            assert got == (want.id if want else 0), (want and want.to_text(), fields)
            assert _hooks.classify(region, slot) == got  # the cached entry gives the same answer
    finally:
        region.free(slots)


def test_rule_hit_installs_one_exact_entry_and_counts(region):
    publish(region, [parse_rule("tcp dst port 80 -> chain web")])
    slot = region.alloc(1)[0]
    pkt = Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=999, dport=80)
    region.write(slot, bytes(pkt))
    for _ in range(5):
        assert _hooks.classify(region, slot) == 1
    flows = region.flow_list()
    assert len(flows) == 1 and flows[0]["packets"] == 5 and flows[0]["chain"] == 1
    assert region.rule_hits() == {1: 1}  # only the first packet consulted the rules
    key = FlowKey.from_native(flows[0]["key"])
    assert str(key) == "10.0.0.1:999 10.0.0.2:80 tcp"
    region.free([slot])


def test_changing_a_rule_invalidates_its_entries(region):
    web = parse_rule("tcp dst port 80 -> chain web")
    publish(region, [web])
    slot = region.alloc(1)[0]
    region.write(slot, bytes(Ether(src=MAC_A, dst=MAC_B) / IP() / TCP(dport=80)))
    assert _hooks.classify(region, slot) == 1
    # the same slot now holds a rule to another chain: the cached entry must not win
    region.set_rules([{**web.native(0, 9), "id": 1}], [0])
    assert _hooks.classify(region, slot) == 9
    # rule removed: back to the default chain; the stale entry is swept
    region.set_rules([], [0])
    assert _hooks.classify(region, slot) == 0
    assert region.flow_expire(0, 1024) == 1
    assert region.flow_stats()["used"] == 0
    region.free([slot])


def test_higher_priority_rule_takes_over_cached_flows(region):
    low = parse_rule("priority 1 tcp -> chain a")
    publish(region, [low])
    slot = region.alloc(1)[0]
    region.write(slot, bytes(Ether(src=MAC_A, dst=MAC_B) / IP() / TCP(dport=80)))
    assert _hooks.classify(region, slot) == 1
    high = parse_rule("priority 9 tcp dst port 80 -> chain b")
    publish(region, [low, high])
    assert _hooks.classify(region, slot) == 2
    region.free([slot])


def test_idle_and_hard_timeouts_are_enforced(region):
    k1 = FlowKey.parse("10.0.0.1:1 10.0.0.2:2 udp").native()
    k2 = FlowKey.parse("10.0.0.1:3 10.0.0.2:4 udp").native()
    region.flow_put(k1, 3, idle_ms=150)
    region.flow_put(k2, 3, hard_ms=150)
    assert region.flow_get(k1)["chain"] == 3 and region.flow_get(k2)["chain"] == 3
    time.sleep(0.25)
    assert region.flow_get(k1) is None and region.flow_get(k2) is None  # exact at lookup
    assert region.flow_stats()["used"] == 2
    assert region.flow_expire(0, 1024) == 2  # the sweep removes and counts them
    st_ = region.flow_stats()
    assert st_["used"] == 0 and st_["expired"] == 2


def test_table_full_is_counted_not_fatal():
    path = f"/dev/shm/onvm-test-{uuid.uuid4()}"
    r = _native.Region.create(path, "t", 256, 2048, 64, 32)
    try:
        n = 0
        for i in range(200):
            try:
                r.flow_put(FlowKey.parse(f"10.0.0.1:{i + 1} 10.0.0.2:80 tcp").native(), 1)
                n += 1
            except MemoryError:
                pass
        assert n == 32 and r.flow_stats()["full"] == 200 - 32
    finally:
        r.close()


def test_ipv6_and_in_port_keys(region):
    k = FlowKey.parse("[2001:db8::1]:5000 [2001:db8::2]:443 tcp in-port 3")
    region.flow_put(k.native(), 4)
    assert region.flow_get(k.native())["chain"] == 4
    assert region.flow_get(FlowKey.parse("[2001:db8::1]:5000 [2001:db8::2]:443 tcp").native()) is None
    assert region.flow_del(k.native()) and not region.flow_del(k.native())


def test_a_million_entries_fit():
    path = f"/dev/shm/onvm-test-{uuid.uuid4()}"
    r = _native.Region.create(path, "t", 256, 2048, 64, 1 << 20)
    try:
        assert r.flow_stats()["size"] == 1 << 20
    finally:
        r.close()



def test_both_directions_of_a_flow_reach_the_same_instance(region):
    region.set_service(3, [(1, 0), (2, 1), (5, 2), (7, 3)])
    slots = region.alloc(2)
    seen = set()
    for i in range(300):
        a, b = f"10.{i % 7}.{i % 5}.{i % 251}", f"192.168.{i % 3}.{(i * 7) % 251}"
        sp, dp = 1024 + i * 13 % 60000, 1 + i * 7 % 1000
        fwd = Ether(src=MAC_A, dst=MAC_B) / IP(src=a, dst=b) / TCP(sport=sp, dport=dp)
        rev = Ether(src=MAC_B, dst=MAC_A) / IP(src=b, dst=a) / TCP(sport=dp, dport=sp)
        region.write(slots[0], bytes(fwd))
        region.write(slots[1], bytes(rev))
        h1, h2 = region.meta(slots[0])["flow_hash"], region.meta(slots[1])["flow_hash"]
        assert h1 == h2
        seen.add(region.pick(3, h1))
        assert region.pick(3, h1) == region.pick(3, h2)
    assert seen == {1, 2, 5, 7}
    region.free(slots)


def test_registry_adds_a_batch_all_or_none(region):
    from onvm.errors import ConfigError
    from onvm.manager.flows import FlowRegistry

    reg = FlowRegistry(region, lambda port: True)
    reg.add_chain("web", "1,out:0")
    with pytest.raises(ConfigError, match="token 4 'x'"):
        reg.add_rules(["tcp dst port 80 -> web", "udp dst port x -> web"])
    with pytest.raises(ConfigError, match="no chain named 'nope'"):
        reg.add_rules(["tcp dst port 80 -> web", "udp -> nope"])
    assert reg.list_rules() == [] and region.flow_stats()["rules"] == 0
    ids = [r["id"] for r in reg.add_rules(["priority 1 udp -> web", "priority 9 tcp -> web"])]
    assert [r["id"] for r in reg.list_rules()] == ids[::-1]  # tried by priority
    reg.del_rule(ids[0])
    assert [r["rule"] for r in reg.list_rules()] == ["priority 9 tcp -> chain web"]


@settings(max_examples=200, deadline=None)
@given(packets())
def test_packet_key_reads_what_the_reference_fields_say(pkt):
    data, fields = pkt
    ipver, src, dst, proto, sport, dport, in_port, vlan = _native.packet_key(data, 0)
    assert PacketFields(ipver, src, dst, proto, sport, dport, in_port, vlan - 1 if vlan else None) == fields
    assert _native.packet_key(data, 9)[6] == 9


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=120), packets().map(lambda p: p[0]).flatmap(
    lambda d: st.integers(0, len(d)).map(lambda n: d[:n]))))
def test_packet_key_on_any_bytes_is_the_rx_paths_key(region, data):
    """Bytes from a controller or an NF (cut, garbage) give the key the RX path computes, or None."""
    slot = region.alloc(1)[0]
    try:
        region.write(slot, data)
        assert _native.packet_key(data) == region.flow_key(slot)
    finally:
        region.free([slot])
