"""The rule syntax: parsing, canonical text, errors naming the token, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from onvm.errors import ConfigError
from onvm.flows.keys import FlowKey
from onvm.flows.rules import parse_rule, parse_rules


def test_a_full_rule():
    r = parse_rule("priority 7 in-port 1 vlan 12 tcp src 10.0.0.0/8 src port 1000-2000 dst port 80 "
                   "idle 30 hard 600 -> chain web")
    assert (r.priority, r.in_port, r.vlan, r.proto, r.ipver, str(r.src), r.sport, r.dport, r.idle, r.hard,
            r.chain) == (7, 1, 12, 6, 4, "10.0.0.0/8", (1000, 2000), (80, 80), 30.0, 600.0, "web")
    assert parse_rule(r.to_text()).to_text() == r.to_text()


def test_the_arrow_as_a_word():
    """'to' needs no quoting in a shell; it means what '->' means."""
    base = parse_rule("tcp dst port 80 src 10.0.0.0/8 idle 30 -> chain web")
    for text in ("tcp dst port 80 src 10.0.0.0/8 idle 30 to chain web",
                 "tcp dst port 80 src 10.0.0.0/8 idle 30 TO web"):
        assert parse_rule(text).to_text() == base.to_text()
    assert parse_rule("udp to default").chain == "default"


def test_idle_timeouts_default_to_the_managers_unless_given():
    assert parse_rule("tcp -> web").idle is None
    assert parse_rule("tcp idle 0 -> web").idle == 0.0  # none: the entries stay until removed
    assert parse_rule("tcp idle 0 -> web").to_text() == "tcp idle 0 -> chain web"
    assert parse_rule("tcp idle 2000000 hard 2000000 -> web").hard == 2_000_000


def test_short_forms():
    assert parse_rule("udp dport 53 -> dns").chain == "dns"
    r = parse_rule("ip6 dst 2001:db8::/32 -> default")
    assert (r.ipver, str(r.dst)) == (6, "2001:db8::/32")
    assert parse_rule("any -> x").proto == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp dst port 80", "expected 'to chain NAME' at the end"),
        # '-> chain web' unquoted in bash: '>' redirects into a file 'chain', 'web' stays
        ("tcp dst port 80 - web", "token 5 '-': a lone '-': a shell took the '>' of '->' as a redirect"),
        ("tcp dst port 80x -> chain web", "token 4 '80x': expected a port as N or N-M"),
        ("tcp dst port 90-80 -> c", "lower bound first"),
        ("tcp src 10.0.0.300 -> c", "token 3 '10.0.0.300': expected an IPv4 or IPv6 address prefix"),
        ("ip6 src 10.0.0.0/8 -> c", "IPv4 prefix in an IPv6 rule"),
        ("tcp udp -> c", "token 2 'udp': a rule names one protocol"),
        ("tcp frobnicate -> c", "token 2 'frobnicate': unknown word"),
        ("vlan 5000 -> c", "expected a VLAN id (0..4095)"),
        ("tcp -> chain", "expected a chain name"),
        ("tcp -> chain a b", "token 5 'b': unexpected text after the target"),
        ("priority high -> c", "expected a priority"),
        ("idle -3 -> c", "expected an idle timeout in seconds"),
        # The flow table's clock compares 32-bit milliseconds: 25 days would wrap and expire at once.
        ("tcp idle 2160000 -> c", "token 3 '2160000': expected an idle timeout in seconds (0..2000000"),
        ("tcp hard 1e7 -> c", "expected a hard timeout in seconds (0..2000000"),
        ("tcp idle nan -> c", "expected an idle timeout in seconds (0..2000000"),
        ("src 10.0.0.0/8 src 11.0.0.0/8 -> c", "src given twice"),
    ],
)
def test_errors_name_the_token(text, message):
    with pytest.raises(ConfigError) as e:
        parse_rule(text)
    assert message in str(e.value) and f"rule '{text}'" in str(e.value)


def test_rule_files_name_the_line():
    assert len(parse_rules(["# web", "tcp dst port 80 -> web", "", "udp -> dns  # dns"])) == 2
    with pytest.raises(ConfigError, match="line 2: rule 'tcp dst port x -> web'"):
        parse_rules(["udp -> dns", "tcp dst port x -> web"])


WORDS = ["tcp", "udp", "icmp", "ip", "ip6", "any", "src", "dst", "port", "sport", "dport", "in-port", "vlan",
         "priority", "idle", "hard", "->", "to", "-", "chain", "web", "10.0.0.0/8", "2001:db8::/64", "80",
         "1-100", "65536", "-1", "x", "1.5", "::", "/", "-", ">", "chain-1"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), max_size=12))
@example(["in-port", "\u00b9"])  # superscript one: str.isdigit() says yes, int() says no
@example(["sport", "\u00b9"])
def test_fuzzed_rules_parse_or_fail_cleanly(words):
    text = " ".join(words)
    try:
        rule = parse_rule(text)
    except ConfigError as e:
        assert str(e).startswith("rule '")
        return
    again = parse_rule(rule.to_text())  # what parses has a canonical form that parses the same
    assert again.to_text() == rule.to_text()


def test_flow_keys():
    k = FlowKey.parse("10.0.0.1:1234 10.0.0.2:80 tcp in-port 2")
    assert str(k) == "10.0.0.1:1234 10.0.0.2:80 tcp in-port 2"
    assert str(k.reverse()) == "10.0.0.2:80 10.0.0.1:1234 tcp in-port 2"
    assert FlowKey.from_native(k.native()) == k
    assert str(FlowKey.parse("[2001:db8::1]:5 [2001:db8::2]:6 udp")) == "[2001:db8::1]:5 [2001:db8::2]:6 udp"
    v = FlowKey.parse("10.0.0.1:1234 10.0.0.2:80 tcp vlan 7 in-port 2")
    assert (v.vlan, v.in_port, str(v)) == (7, 2, "10.0.0.1:1234 10.0.0.2:80 tcp in-port 2 vlan 7")
    assert FlowKey.from_native(v.native()) == v and v.native()[-1] == 8  # 1 + the VLAN id
    assert k.native()[-1] == 0 and v != k and v.reverse().vlan == 7  # untagged is its own key
    for bad in ("10.0.0.1 tcp", "10.0.0.1:1 ::1:2 tcp", "10.0.0.1:x 10.0.0.2 tcp", "a b c",
                "10.0.0.1 10.0.0.2 tcp vlan 4096", "10.0.0.1 10.0.0.2 tcp vlan x",
                "10.0.0.1 10.0.0.2 tcp vlan 1 vlan 2"):
        with pytest.raises(ConfigError):
            FlowKey.parse(bad)
