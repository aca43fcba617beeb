"""Checksum completion for frames a local stack left to offload, against scapy as the reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, UDP, Dot1Q, Ether, IPv6, Raw  # type: ignore[import-untyped]

from onvm import _hooks


def reference(pkt):  # type: ignore[no-untyped-def]
    """The frame with every checksum computed by scapy."""
    return bytes(pkt.__class__(bytes(pkt)))


@settings(max_examples=200, deadline=None)
@given(v6=st.booleans(), tcp=st.booleans(), vlan=st.booleans(), payload=st.binary(max_size=300),
       sport=st.integers(0, 65535), garbage=st.integers(0, 65535))
def test_checksum_matches_scapy(v6, tcp, vlan, payload, sport, garbage):  # type: ignore[no-untyped-def]
    l3 = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.0.0.1", dst="10.0.0.2")
    l4 = TCP(sport=sport, dport=80, chksum=garbage) if tcp else UDP(sport=sport, dport=53, chksum=garbage)
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    pkt = (eth / Dot1Q(vlan=5) if vlan else eth) / l3 / l4 / Raw(payload)
    broken = bytes(pkt)  # carries the garbage checksum
    fixed = _hooks.fix_l4_csum(broken)
    layer = TCP if tcp else UDP
    pkt[layer].chksum = None  # scapy computes it
    want = bytes(pkt)
    assert fixed == want
    assert Ether(fixed)[layer].chksum == Ether(reference(Ether(want)))[layer].chksum


def test_not_fixable_is_left_alone():
    assert _hooks.fix_l4_csum(b"\x00" * 10) is None
    arp = bytes(Ether(type=0x0806) / Raw(b"\x00" * 28))
    assert _hooks.fix_l4_csum(arp) is None
    frag = bytes(Ether() / IP(flags=1, frag=0) / UDP() / Raw(b"x" * 8))
    assert _hooks.fix_l4_csum(frag) is None  # a first fragment holds only part of the segment
