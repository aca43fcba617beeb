"""OpenFlow matches and actions as rules and chains; the switch-side codec; decoder fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import pytest

pytest.importorskip("os_ken")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from os_ken.ofproto import ofproto_v1_3 as ofp  # noqa: E402
from os_ken.ofproto import ofproto_v1_3_parser as parser  # noqa: E402

from onvm.constants import Action  # noqa: E402
from onvm.errors import ConfigError  # noqa: E402
from onvm.flows.chain import Hop  # noqa: E402
from onvm.flows.rules import parse_rule  # noqa: E402
from onvm.sdn import wire  # noqa: E402
from onvm.sdn.agent import datapath_id, parse_controller  # noqa: E402
from onvm.sdn.translate import Match, chain_name, hops_from_of, match_from_of, outputs_of  # noqa: E402
from onvm.sdn.wire import OFError  # noqa: E402


def m(**kw):
    return match_from_of(list(parser.OFPMatch(**kw).items()))


def test_matches_become_rules():
    mt = m(in_port=2, eth_type=0x0800, ip_proto=6, ipv4_src=("10.0.0.0", "255.0.0.0"), tcp_dst=80)
    assert mt == Match(in_port=1, ipver=4, proto=6, src=ipaddress.ip_network("10.0.0.0/8"), dport=80)
    text = mt.rule("web", 300).to_text()
    assert text == "priority 300 in-port 1 tcp src 10.0.0.0/8 dst port 80 -> chain web"
    assert parse_rule(text).to_text() == text
    v6 = m(eth_type=0x86DD, ipv6_dst="2001:db8::1", ip_proto=17, udp_src=53)
    assert v6.dst == ipaddress.ip_network("2001:db8::1/128") and v6.sport == 53 and v6.proto == 17
    assert m(vlan_vid=ofp.OFPVID_PRESENT | 7).vlan == 7
    assert m() == Match()
    v4tcp = m(eth_type=0x0800, ip_proto=6, tcp_dst=80).rule("c", 1)
    assert v4tcp.to_text() == "priority 1 tcp src 0.0.0.0/0 dst port 80 -> chain c"
    assert parse_rule(v4tcp.to_text()).ipver == 4


@pytest.mark.parametrize("kw, code", [
    (dict(eth_src="00:00:00:00:00:01"), ofp.OFPBMC_BAD_FIELD),
    (dict(eth_type=0x0806), ofp.OFPBMC_BAD_VALUE),
    (dict(ip_proto=6), ofp.OFPBMC_BAD_PREREQ),
    (dict(eth_type=0x0800, ip_proto=17, tcp_dst=80), ofp.OFPBMC_BAD_PREREQ),
    (dict(eth_type=0x0800, ipv4_src=("10.0.0.0", "255.0.255.0")), ofp.OFPBMC_BAD_WILDCARDS),
    (dict(in_port=40), ofp.OFPBMC_BAD_VALUE),
    (dict(eth_type=0x0800, ip_proto=6, tcp_dst=(80, 0xFFF0)), ofp.OFPBMC_BAD_WILDCARDS),
])
def test_matches_rules_cannot_express(kw, code):
    with pytest.raises(OFError) as e:
        m(**kw)
    assert (e.value.type, e.value.code) == (ofp.OFPET_BAD_MATCH, code)


def test_non_strict_cover():
    wide = m(eth_type=0x0800, ipv4_dst=("10.0.0.0", "255.0.0.0"))
    narrow = m(eth_type=0x0800, ip_proto=6, ipv4_dst="10.1.2.3", tcp_dst=80)
    assert Match().covers(narrow) and wide.covers(narrow) and not narrow.covers(wide)
    assert not m(eth_type=0x86DD).covers(narrow)


def actions(*ports):
    return [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(p) for p in ports])]


def test_outputs_become_chains():
    ok = {0, 2}.__contains__  # manager ports 0 and 2 are outputs
    hops = hops_from_of(actions(1001, 1002, 3), ok)
    assert hops == [Hop(Action.TONF, 1), Hop(Action.TONF, 2), Hop(Action.OUT, 2)]
    assert outputs_of(hops) == [1001, 1002, 3] and chain_name(hops) == "of-1-2-out2"
    to_ctl = hops_from_of(actions(1001, ofp.OFPP_CONTROLLER), ok)
    assert to_ctl == [Hop(Action.TONF, 1), Hop(Action.TONF, 63)]
    assert outputs_of(to_ctl) == [1001, ofp.OFPP_CONTROLLER]
    assert hops_from_of([], ok) == [Hop(Action.DROP)] and chain_name([Hop(Action.DROP)]) == "of-drop"
    long = [Hop(Action.TONF, i) for i in range(10, 25)] + [Hop(Action.OUT, 0)]
    assert len(chain_name(long)) <= 23
    for ports, code in (([2], ofp.OFPBAC_BAD_OUT_PORT), ([1, 1001], ofp.OFPBAC_UNSUPPORTED_ORDER),
                        ([ofp.OFPP_FLOOD], ofp.OFPBAC_BAD_OUT_PORT), ([1001] * 17, ofp.OFPBAC_TOO_MANY),
                        ([ofp.OFPP_CONTROLLER, 1], ofp.OFPBAC_UNSUPPORTED_ORDER)):
        with pytest.raises(OFError) as e:
            hops_from_of(actions(*ports), ok)
        assert e.value.code == code
    with pytest.raises(OFError) as e:
        hops_from_of([parser.OFPInstructionGotoTable(1)], ok)
    assert e.value.type == ofp.OFPET_BAD_INSTRUCTION


def test_switch_side_messages():
    assert wire.hello_versions(4, wire.hello()[8:]) == {4}
    assert wire.hello_versions(1, b"") == {1}
    assert wire.hello_versions(6, struct.pack("!HHI", 1, 8, (1 << 4) | (1 << 6))) == {4, 6}
    v, t, length, xid = wire.HEADER.unpack(wire.features_reply(9, 0xABC)[:8])
    assert (v, t, length, xid) == (4, ofp.OFPT_FEATURES_REPLY, 32, 9)
    items = [bytes(1000)] * 200  # 200 kB: several replies, MORE on all but the last
    replies = wire.multipart_replies(3, ofp.OFPMP_FLOW, items)
    assert len(replies) == 4 and all(len(r) <= 65535 for r in replies)
    flags = [struct.unpack_from("!HH", r, 8)[1] for r in replies]
    assert flags == [1, 1, 1, 0] and sum(len(r) - 16 for r in replies) == 200_000
    assert parse_controller("tcp:127.0.0.1:6653") == ("tcp", "127.0.0.1", 6653)
    assert parse_controller("ssl:127.0.0.1:6653") == ("ssl", "127.0.0.1", 6653)
    assert parse_controller("[::1]:6633") == ("tcp", "::1", 6633)
    with pytest.raises(ConfigError):
        parse_controller("tcp:nowhere")
    assert datapath_id("a") != datapath_id("b") and datapath_id("a") < 1 << 48


def _flow_mod_bytes() -> bytes:
    class DP:
        ofproto = ofp
        ofproto_parser = parser

    fm = parser.OFPFlowMod(DP(), match=parser.OFPMatch(eth_type=0x0800, ip_proto=6, tcp_dst=80),
                           instructions=actions(1001, 1))
    fm.serialize()
    return bytes(fm.buf)


FLOW_MOD = _flow_mod_bytes()


def test_flow_mod_that_os_ken_cannot_parse():
    # an eth_type OXM whose length says 13: os-ken gives up (and returns None)
    raw = bytes.fromhex("040e004800000000570000000071000000000000000000000000000000008000ffffffff0000"
                        "000000000000000000000001001580000a0d0800800014010680001c5f00500000ad")
    with pytest.raises(OFError) as e:
        wire.parse_flow_mod(raw)
    assert e.value.type == ofp.OFPET_BAD_REQUEST


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_flow_mod_decoder_fuzz(data):
    """Any byte changes to a FLOW_MOD decode or raise OFError: nothing else, and no hang."""
    raw = bytearray(FLOW_MOD)
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(8, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(raw)))
    raw = raw[:cut] + data.draw(st.binary(max_size=40))
    raw[2:4] = struct.pack("!H", len(raw))
    try:
        msg = wire.parse_flow_mod(bytes(raw))
        match_from_of(list(msg.match.items()))
        hops_from_of(msg.instructions, lambda p: True)
    except OFError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_request_body_decoders_fuzz(body):
    for fn in (wire.parse_role_request, wire.parse_multipart_request, wire.parse_flow_stats_request,
               wire.parse_port_stats_request):
        try:
            fn(body)
        except OFError:
            pass
