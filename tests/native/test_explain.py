"""onvm flow explain against the packet path: over random rules, port defaults, explicit
entries and keys, the chain explain names is the chain RX classification gives a packet
of that flow (native, with its cache), the rule it names is the reference matcher's,
the rules it lists above it are exactly those that do not match, its flow hash is the
parser's, and each hop's instance is the reference pick (models.pick_model)."""

from __future__ import annotations

import dataclasses
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.native.test_rules import Model, make_region, packets, rules

from onvm import _hooks, _native
from onvm.constants import POLICIES, Action
from onvm.errors import ConfigError
from onvm.flows.chain import Hop
from onvm.flows.explain import Instance, ServiceView, Situation, explain, frame_of, packet_of, render
from onvm.flows.keys import FlowKey
from onvm.flows.rules import match_rules, ordered, rule_matches

try:
    from . import models
except ImportError:  # run from another directory (the sanitizer build)
    import models  # type: ignore[no-redef]

SERVICES = {1: [(11, 0), (12, 1), (13, 2)], 2: [(21, 0)], 3: []}  # service -> (NF id, instance)


def hops_of(chain: int) -> list[Hop]:
    """Chain c runs service 1 + c % 3, then 1 (or drops), then leaves by port c % 4."""
    first = Hop(Action.TONF, 1 + chain % 3)
    if chain % 2:
        return [first, Hop(Action.TONF, 1), Hop(Action.OUT, chain % 4)]
    return [first, Hop(Action.DROP)]


def key_of(fields) -> FlowKey:
    return FlowKey.of(ipaddress.ip_address(fields.src), ipaddress.ip_address(fields.dst), fields.proto,
                      fields.sport, fields.dport, fields.in_port, fields.vlan)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(rules(), max_size=12), st.lists(packets(), min_size=1, max_size=6),
       st.sets(st.sampled_from([0, 1, 2]), max_size=2), st.lists(st.booleans(), min_size=6, max_size=6))
def test_explain_agrees_with_classification_and_the_reference(rule_list, pkts, port_defaults, explicit):
    region, _ = make_region()
    slots: list[int] = []
    try:
        for svc, members in SERVICES.items():
            region.set_service(svc, members, POLICIES["hash"])
        model = Model(region)
        model.add(rule_list)
        for rule in rule_list:
            rule.chain = f"c{model.chain_of(rule.id)}"
        for port in port_defaults:
            model.set_port(port, True)
        keys = [key_of(f) for _, f in pkts]
        for key, steer in zip(keys, explicit, strict=False):
            if steer:
                region.flow_put(key.native(), 40)
        slots = region.alloc(len(pkts))
        for slot, (data, _) in zip(slots, pkts, strict=True):
            region.write(slot, data)
        got = [_hooks.classify(region, s, f.in_port) for s, (_, f) in zip(slots, pkts, strict=True)]
        for slot, (data, fields), key, chain in zip(slots, pkts, keys, got, strict=True):
            seen, flow_hash = packet_of(key)
            assert seen == key
            assert flow_hash == _native.parse(data)["flow_hash"] == region.meta(slot)["flow_hash"]
            entry = region.flow_get(key.native())
            if entry is not None:
                entry["origin"] = {v: k for k, v in _native.FLOW_ORIGINS.items()}[entry["origin"]]
            situation = Situation(
                rules=ordered([r for r, _ in model.rules.values()]),
                chains={c: (f"c{c}" if c else "default", hops_of(c)) for c in range(64)},
                port_chains=dict(model.ports), entry=entry,
                service=lambda svc, h: ServiceView("hash", [Instance(n, i) for n, i in SERVICES[svc]],
                                                   region.pick(svc, h) or None))
            e = explain(key, flow_hash, situation)
            log = (model.log, str(key), render(e))
            # As the manager asks: the classifier names the first rule that matches, explain the rest.
            slot_got, _ = region.rule_lookup(key.native())
            order = ordered([r for r, _ in model.rules.values()])
            first = next((i for i, r in enumerate(order) if model.rules[r.id][1] == slot_got), -1)
            assert explain(key, flow_hash, dataclasses.replace(situation, first=first)) == e, log
            assert e["chain_id"] == chain, log  # where the packet path really sends it
            want = match_rules([r for r, _ in model.rules.values()], fields)
            if e["decided_by"] == "flow entry":
                assert chain == 40 and entry is not None and entry["origin"] == "api", log
            else:
                assert (e["rule"] or {}).get("id") == (want.id if want else None), log
                order = ordered([r for r, _ in model.rules.values()])
                above = order[: order.index(want)] if want else order
                assert [m["id"] for m in e["missed"]] == [r.id for r in above][:20], log
                assert e["missed_total"] == len(above)
                assert not any(rule_matches(r, fields) for r in above)
                assert e["decided_by"] == ("rule" if want else "port default" if fields.in_port in model.ports
                                           else "default chain"), log
            for hop, spec in zip(e["hops"], hops_of(chain), strict=True):
                if spec.action == Action.TONF:
                    members = SERVICES[spec.dest]
                    assert hop.get("nf") == (models.pick_model(members, flow_hash) or None), log
                    assert hop["service"] == spec.dest and len(hop["instances"]) == len(members)
                else:
                    assert hop["action"] == ("out" if spec.action == Action.OUT else "drop")
    finally:
        region.free(slots)
        region.close()


def test_frames_of_keys_parse_back_to_the_key():
    for text in ("10.0.0.1:5 10.0.0.2:80 tcp", "10.0.0.1:53 10.0.0.9:5353 udp in-port 3 vlan 7",
                 "[2001:db8::1]:443 [2001:db8::2]:1000 tcp", "10.1.1.1 10.1.1.2 icmp",
                 "2001:db8::1 2001:db8::2 icmp6 in-port 1"):
        key = FlowKey.parse(text)
        got = _native.packet_key(frame_of(key), key.in_port)
        assert got is not None and FlowKey.from_native(got) == key, text


def test_a_key_that_is_not_a_flow_is_refused_by_name():
    from onvm.control import ops

    for text, message in (("10.0.0.1 tcp", "expected SRC[:PORT] DST[:PORT] PROTO"),
                          ("10.0.0.1:5 10.0.0.2:99999 tcp", "out of range"),
                          ("10.0.0.1:5 ::1:80 tcp", "different IP versions"),
                          ("10.0.0.1:5 10.0.0.2:80 bogus", "unknown protocol 'bogus'")):
        try:
            ops.FlowExplain(text)
        except ConfigError as e:
            assert message in e.message, (text, e.message)
        else:
            raise AssertionError(f"{text!r} was taken")
