"""Header parsing and the flow hash against parse_model, on scapy-built frames.

Every frame is checked three ways: the native result equals the model's; it
matches the offsets written down by hand for it; and the frame's twin going
the other way (addresses and ports swapped) gets the same flow hash.  Every
truncation of every frame, random bytes and mutated frames must parse without
a crash, with offsets inside the data, and agree with the model.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Padding, Raw

from onvm import _native

try:
    from . import models
except ImportError:  # collected as rootdir modules: tests/native is no package
    import models  # type: ignore[no-redef]

FIELDS = ("flow_hash", "flags", "l3_type", "l4_proto", "l3_off", "l4_off")

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
IP4 = ("192.0.2.1", "198.51.100.7")
IP6 = ("2001:db8::1", "2001:db8:ffff::42")
PORTS = (40000, 443)


def ends(fwd: bool, v6: bool = False) -> tuple[str, str, str, str, int, int]:
    """(src MAC, dst MAC, src IP, dst IP, sport, dport) of one direction of the test flow."""
    a, b = IP6 if v6 else IP4
    if fwd:
        return MAC_A, MAC_B, a, b, PORTS[0], PORTS[1]
    return MAC_B, MAC_A, b, a, PORTS[1], PORTS[0]


def eth(fwd: bool, **kw: Any) -> Packet:
    ma, mb, *_ = ends(fwd)
    return Ether(src=ma, dst=mb, **kw)


def v4(fwd: bool, **kw: Any) -> Packet:
    _, _, s, d, _, _ = ends(fwd)
    return IP(src=s, dst=d, **kw)


def v6(fwd: bool, **kw: Any) -> Packet:
    _, _, s, d, _, _ = ends(fwd, v6=True)
    return IPv6(src=s, dst=d, **kw)


def tcp(fwd: bool) -> Packet:
    *_, sp, dp = ends(fwd)
    return TCP(sport=sp, dport=dp, flags="S") / Raw(b"GET / HTTP/1.1\r\n\r\n")


def udp(fwd: bool) -> Packet:
    *_, sp, dp = ends(fwd)
    return UDP(sport=sp, dport=dp) / Raw(b"\x00" * 12)


def arp(fwd: bool) -> Packet:
    ma, mb, s, d, _, _ = ends(fwd)
    return ARP(op=1 if fwd else 2, hwsrc=ma, hwdst=mb, psrc=s, pdst=d)


# name -> (builder(fwd), expected (l3_type, l3_off, l4_proto, l4_off, flags))
Case = tuple[Callable[[bool], Packet], tuple[int, int, int, int, int]]
CASES: dict[str, Case] = {
    "ipv4_tcp": (lambda f: eth(f) / v4(f) / tcp(f), (models.L3_IPV4, 14, 6, 34, 0)),
    "ipv4_udp": (lambda f: eth(f) / v4(f) / udp(f), (models.L3_IPV4, 14, 17, 34, 0)),
    "ipv4_tcp_padded": (
        lambda f: eth(f) / v4(f) / TCP(sport=ends(f)[4], dport=ends(f)[5]) / Padding(b"\0" * 6),
        (models.L3_IPV4, 14, 6, 34, 0),
    ),
    "dot1q_ipv4_udp": (
        lambda f: eth(f) / Dot1Q(vlan=10) / v4(f) / udp(f),
        (models.L3_IPV4, 18, 17, 38, models.MF_VLAN),
    ),
    "qinq_ipv4_udp": (
        lambda f: eth(f) / Dot1AD(vlan=100) / Dot1Q(vlan=10) / v4(f) / udp(f),
        (models.L3_IPV4, 22, 17, 42, models.MF_VLAN),
    ),
    "qinq_8100_8100_ipv4_tcp": (
        lambda f: eth(f) / Dot1Q(vlan=100) / Dot1Q(vlan=10) / v4(f) / tcp(f),
        (models.L3_IPV4, 22, 6, 42, models.MF_VLAN),
    ),
    "three_vlan_tags": (  # two tags at most: the third hides the IP header
        lambda f: eth(f) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / v4(f) / udp(f),
        (models.L3_NONE, 0, 0, 0, models.MF_VLAN),
    ),
    "ipv4_options_tcp": (
        lambda f: eth(f) / v4(f, options=[IPOption_Router_Alert()]) / tcp(f),
        (models.L3_IPV4, 14, 6, 38, 0),
    ),
    "ipv4_first_fragment_udp": (
        lambda f: eth(f) / v4(f, flags="MF", id=7) / udp(f),
        (models.L3_IPV4, 14, 17, 34, models.MF_FRAG),
    ),
    "ipv4_later_fragment": (
        lambda f: eth(f) / v4(f, frag=185, id=7, proto=17) / Raw(b"\x9c\x40\x01\xbb" * 8),
        (models.L3_IPV4, 14, 17, 0, models.MF_FRAG),
    ),
    "ipv4_icmp": (lambda f: eth(f) / v4(f) / ICMP(type=8 if f else 0), (models.L3_IPV4, 14, 1, 34, 0)),
    "ipv4_gre": (lambda f: eth(f) / v4(f, proto=47) / Raw(b"\x00" * 8), (models.L3_IPV4, 14, 47, 0, 0)),
    "ipv6_tcp": (lambda f: eth(f) / v6(f) / tcp(f), (models.L3_IPV6, 14, 6, 54, 0)),
    "ipv6_udp_vlan": (
        lambda f: eth(f) / Dot1Q(vlan=5) / v6(f) / udp(f),
        (models.L3_IPV6, 18, 17, 58, models.MF_VLAN),
    ),
    "ipv6_hop_by_hop_udp": (
        lambda f: eth(f) / v6(f) / IPv6ExtHdrHopByHop() / udp(f),
        (models.L3_IPV6, 14, 17, 62, 0),
    ),
    "ipv6_routing_destopt_tcp": (
        lambda f: eth(f) / v6(f) / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt() / tcp(f),
        (models.L3_IPV6, 14, 6, 70, 0),
    ),
    "ipv6_first_fragment_tcp": (
        lambda f: eth(f) / v6(f) / IPv6ExtHdrFragment(offset=0, m=1, id=9) / tcp(f),
        (models.L3_IPV6, 14, 6, 62, models.MF_FRAG),
    ),
    "ipv6_hbh_fragment_udp": (
        lambda f: eth(f) / v6(f) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / udp(f),
        (models.L3_IPV6, 14, 17, 70, models.MF_FRAG),
    ),
    "ipv6_icmpv6": (lambda f: eth(f) / v6(f) / ICMPv6EchoRequest(), (models.L3_IPV6, 14, 58, 54, 0)),
    "ipv6_no_next_header": (lambda f: eth(f) / v6(f, nh=59), (models.L3_IPV6, 14, 59, 0, 0)),
    "arp": (lambda f: eth(f) / arp(f), (models.L3_ARP, 14, 0, 0, 0)),
    "arp_vlan": (lambda f: eth(f) / Dot1Q(vlan=3) / arp(f), (models.L3_ARP, 18, 0, 0, models.MF_VLAN)),
    "lldp_non_ip": (lambda f: eth(f, type=0x88CC) / Raw(b"\x02\x07" + b"\x00" * 40), (0,) * 5),
}


def later_v6_fragment(fwd: bool) -> Packet:
    """A non-first IPv6 fragment: its payload is not a transport header."""
    return eth(fwd) / v6(fwd) / IPv6ExtHdrFragment(offset=100, nh=6, id=9) / Raw(bytes(range(48)))


PACKETS = {name: bytes(build(True)) for name, (build, _) in CASES.items()}
PACKETS["ipv6_later_fragment"] = bytes(later_v6_fragment(True))


def parse(data: bytes) -> dict[str, int]:
    m = _native.parse(data)
    return {k: m[k] for k in FIELDS}


def model(data: bytes) -> dict[str, int]:
    m = models.parse_model(data)
    return {k: m[k] for k in FIELDS}


def check_invariants(data: bytes, m: dict[str, int]) -> None:
    """What every consumer of the metadata may rely on, whatever the bytes."""
    n = len(data)
    ctx = f" for {data.hex()} -> {m}"
    assert m["flags"] & ~(models.MF_VLAN | models.MF_TRUNC | models.MF_FRAG) == 0, ctx
    assert m["l3_off"] <= n and m["l4_off"] <= n, ctx
    if m["l3_type"] == models.L3_NONE:
        assert m["l3_off"] == 0 and m["l4_off"] == 0 and m["flow_hash"] == 0, ctx
        return
    assert m["l3_off"] in (14, 18, 22), ctx
    cut_arp = m["l3_type"] == models.L3_ARP and m["flags"] & models.MF_TRUNC
    if not cut_arp:
        assert m["l3_off"] + models.L3_MIN[m["l3_type"]] <= n, ctx
    if m["l3_type"] == models.L3_ARP:
        assert m["l4_off"] == 0 and m["flow_hash"] == 0, ctx
        return
    assert m["flow_hash"] != 0, ctx
    if m["l4_off"]:
        assert m["l4_off"] >= m["l3_off"] + models.L3_MIN[m["l3_type"]], ctx
        assert m["l4_off"] + models.L4_MIN[m["l4_proto"]] <= n, ctx
        assert not m["flags"] & models.MF_TRUNC, ctx


def check(data: bytes) -> None:
    got = parse(data)
    check_invariants(data, got)
    want = model(data)
    assert got == want, f"\n{data.hex()}\nnative: {got}\nmodel:  {want}"


# ---- known frames ----------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_frame_matches_model_and_expectation(name: str) -> None:
    build, (l3_type, l3_off, l4_proto, l4_off, flags) = CASES[name]
    data = bytes(build(True))
    got = parse(data)
    assert got == model(data), f"{name}: {build(True).summary()}"
    want = {"l3_type": l3_type, "l3_off": l3_off, "l4_proto": l4_proto, "l4_off": l4_off}
    assert {k: got[k] for k in want} == want, name
    assert got["flags"] == flags, name
    check_invariants(data, got)


@pytest.mark.parametrize("name", CASES)
def test_reversed_twin_has_the_same_flow_hash(name: str) -> None:
    build, (l3_type, *_) = CASES[name]
    fwd, rev = bytes(build(True)), bytes(build(False))
    assert fwd != rev
    h = parse(fwd)["flow_hash"]
    assert parse(rev)["flow_hash"] == h
    if l3_type in (models.L3_IPV4, models.L3_IPV6):
        assert h != 0
    else:
        assert h == 0


@pytest.mark.parametrize(
    "name", ["ipv4_tcp", "ipv4_udp", "dot1q_ipv4_udp", "ipv4_icmp", "ipv4_later_fragment"]
)
def test_ipv4_flow_hash_is_the_five_tuple_hash(name: str) -> None:
    build, (_, _, proto, l4_off, _) = CASES[name]
    data = bytes(build(True))
    a, b = (int(ipaddress.IPv4Address(x)) for x in IP4)
    pa, pb = PORTS if proto in (6, 17) and l4_off else (0, 0)
    assert parse(data)["flow_hash"] == _native.flow_hash(a, b, pa, pb, proto)
    assert parse(data)["flow_hash"] == models.flow_hash_model(b, a, pb, pa, proto)


def test_ipv6_flow_hash_folds_the_addresses() -> None:
    data = PACKETS["ipv6_tcp"]
    a, b = (ipaddress.IPv6Address(x).packed for x in IP6)
    want = models.flow_hash_model(models.fold_ipv6(a), models.fold_ipv6(b), *PORTS, 6)
    assert parse(data)["flow_hash"] == want


@pytest.mark.parametrize("count", [7, 8, 9])
def test_ipv6_extension_header_limit(count: int) -> None:
    """Eight extension headers are walked; a ninth stops the walk without a transport."""
    chain = IPv6ExtHdrHopByHop()
    for _ in range(count - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    data = bytes(eth(True) / v6(True) / chain / udp(True))
    got = parse(data)
    assert got == model(data)
    if count <= 8:
        assert (got["l4_proto"], got["l4_off"]) == (17, 14 + 40 + 8 * count)
    else:
        assert (got["l4_proto"], got["l4_off"], got["flags"]) == (60, 0, 0)


def test_other_flows_hash_differently() -> None:
    base = parse(PACKETS["ipv4_tcp"])["flow_hash"]
    other_port = eth(True) / v4(True) / TCP(sport=40001, dport=443)
    other_proto = eth(True) / v4(True) / UDP(sport=40000, dport=443)
    assert parse(bytes(other_port))["flow_hash"] != base
    assert parse(bytes(other_proto))["flow_hash"] != base


def test_parse_takes_any_buffer() -> None:
    data = PACKETS["ipv4_udp"]
    assert parse(bytearray(data)) == parse(data)  # type: ignore[arg-type]
    assert parse(memoryview(data)) == parse(data)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _native.parse("not bytes")  # type: ignore[arg-type]


def test_parse_reports_the_length() -> None:
    data = PACKETS["ipv4_tcp"]
    assert _native.parse(data)["len"] == len(data)


def test_ipv6_later_fragment_has_no_transport_header() -> None:
    data = bytes(later_v6_fragment(True))
    got = parse(data)
    assert got["l4_off"] == 0
    assert got["flags"] & models.MF_FRAG
    # The flow hash must not depend on payload bytes.
    other = eth(True) / v6(True) / IPv6ExtHdrFragment(offset=100, nh=6, id=9) / Raw(b"\xff" * 48)
    assert parse(bytes(other))["flow_hash"] == got["flow_hash"]
    assert got == model(data)


def test_later_fragment_detector() -> None:
    assert models.is_later_ipv6_fragment(PACKETS["ipv6_later_fragment"])
    assert not any(models.is_later_ipv6_fragment(p) for n, p in PACKETS.items() if n in CASES)


# ---- truncation and fuzzing --------------------------------------------------------


@pytest.mark.parametrize("name", PACKETS)
def test_every_truncation(name: str) -> None:
    data = PACKETS[name]
    for k in range(len(data) + 1):
        check(data[:k])


@pytest.mark.parametrize("name", ["ipv4_tcp", "qinq_ipv4_udp", "ipv6_routing_destopt_tcp", "arp"])
def test_truncated_headers_are_flagged(name: str) -> None:
    data = PACKETS[name]
    l3_type, l3_off, l4_proto, l4_off, _ = CASES[name][1]
    complete = l4_off + models.L4_MIN[l4_proto] if l4_off else l3_off + models.L3_MIN[l3_type]
    for k in range(len(data)):
        got = parse(data[:k])
        assert bool(got["flags"] & models.MF_TRUNC) == (k < complete), (name, k, got)
    assert not parse(data)["flags"] & models.MF_TRUNC


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=160))
def test_random_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=400, deadline=None)
@given(
    name=st.sampled_from(sorted(PACKETS)),
    edits=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 200),
)
def test_mutated_frames(name: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(PACKETS[name])
    for pos, val in edits:
        if pos < len(data):
            data[pos] = val
    check(bytes(data[:cut]))


EXT = st.sampled_from([0, 43, 60, 44, 6, 17, 58, 1, 59, 255])


@st.composite
def ipv6_frames(draw: st.DrawFn) -> bytes:
    """IPv6 with random chains of extension headers, each of a random length."""
    tags = draw(st.lists(st.sampled_from([0x8100, 0x88A8]), max_size=2))
    head = bytes(12) + b"".join(struct.pack("!HH", t, 1) for t in tags) + b"\x86\xdd"
    nh = draw(EXT)
    body = b"\x60\x00\x00\x00\x00\x00" + bytes([nh, 64]) + draw(st.binary(min_size=32, max_size=32))
    for _ in range(draw(st.integers(0, 9))):
        nxt, units = draw(EXT), draw(st.integers(0, 2))
        frag_off = draw(st.sampled_from([0, 0, 8, 0xFFF8]))
        body += bytes([nxt, units]) + struct.pack("!H", frag_off) + bytes(4 + 8 * units)
    body += draw(st.binary(max_size=24))
    return head + body


@settings(max_examples=300, deadline=None)
@given(data=ipv6_frames(), cut=st.integers(0, 400))
def test_ipv6_extension_chains(data: bytes, cut: int) -> None:
    check(data)
    check(data[:cut])


@st.composite
def ipv4_frames(draw: st.DrawFn) -> bytes:
    """IPv4 with random version/ihl, fragment field, protocol and options."""
    tags = draw(st.lists(st.sampled_from([0x8100, 0x88A8]), max_size=3))
    head = bytes(12) + b"".join(struct.pack("!HH", t, 1) for t in tags) + b"\x08\x00"
    vihl = draw(st.sampled_from([0x45, 0x46, 0x4F, 0x44, 0x65, 0x40]) | st.integers(0, 255))
    frag = draw(st.sampled_from([0, 0x2000, 0x4000, 0x0001, 0x3FFF]) | st.integers(0, 0xFFFF))
    proto = draw(st.sampled_from([6, 17, 1, 58, 47, 0]))
    ip = struct.pack("!BBHHHBBH", vihl, 0, 0, 0, frag, 64, proto, 0) + draw(st.binary(min_size=8, max_size=8))
    return head + ip + draw(st.binary(max_size=80))


@settings(max_examples=300, deadline=None)
@given(data=ipv4_frames(), cut=st.integers(0, 200))
def test_ipv4_header_variants(data: bytes, cut: int) -> None:
    check(data)
    check(data[:cut])
