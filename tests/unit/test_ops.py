"""The operations table: each operation's fields, checks, wire form, client method and handler."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from typing import Any

import pytest

from onvm import _native
from onvm.control import ops
from onvm.control.client import Client
from onvm.errors import ConfigError
from onvm.manager.handlers import HANDLERS, INTERNAL, Handlers

# One valid instance of every operation, with every argument set where it has one.
SAMPLES: dict[str, ops.Op] = {
    "hello": ops.Hello(),
    "register": ops.Register("fw", 2, 1, 123, [0, 1]),
    "start": ops.Start(),
    "stopping": ops.Stopping("ttl"),
    "subscribe": ops.Subscribe(3),
    "status": ops.Status(),
    "shutdown": ops.Shutdown(),
    "stop_nf": ops.StopNF(4),
    "chain_add": ops.ChainAdd("web", "1,2,out:0"),
    "chain_list": ops.ChainList(),
    "chain_del": ops.ChainDel("web"),
    "rule_add": ops.RuleAdd(rules=["tcp -> chain web", "udp -> chain web"]),
    "rule_load": ops.RuleLoad(["# web", "tcp -> chain web"], 3, True, False),
    "rule_change": ops.RuleChange(["tcp -> chain web"], [3, 4]),
    "rule_list": ops.RuleList(400, 100),
    "rule_del": ops.RuleDel(7),
    "port_chain": ops.PortChain(1, "web"),
    "port_rate": ops.PortRate(0, 2_000_000),
    "flow_list": ops.FlowList(10, "web"),
    "flow_add": ops.FlowAdd("10.0.0.1:5 10.0.0.2:80 tcp", "web", 1.5, 30.0),
    "flow_del": ops.FlowDel("10.0.0.1:5 10.0.0.2:80 tcp"),
    "flow_flush": ops.FlowFlush("web", cached_only=False),
    "flow_stats": ops.FlowStats(),
    "flow_explain": ops.FlowExplain("10.0.0.1:5 10.0.0.2:80 tcp in-port 0"),
    "send": ops.Send({"reload": [1, 2]}, service=3),
    "service_list": ops.ServiceList(),
    "service_policy": ops.ServicePolicy(2, "round-robin"),
    "scale": ops.Scale(3, 2),
    "packet_in": ops.PacketIn("AAAA", 1, 60),
    "capture_start": ops.CaptureStart(service=2, direction="rx", filter="tcp dst port 80", count=10),
    "capture_stop": ops.CaptureStop(1),
    "trace_add": ops.TraceAdd(10, "udp"),
    "trace_show": ops.TraceShow(),
    "trace_clear": ops.TraceClear(),
}


def test_every_operation_has_a_sample_a_client_method_and_a_handler() -> None:
    assert set(SAMPLES) == set(ops.OPS)
    for name, cls in ops.OPS.items():
        assert cls.op_name == name and type(SAMPLES[name]) is cls
        assert cls in HANDLERS, f"no handler for {name}"
        method = getattr(Client, name, None)
        assert method is not None, f"Client has no method {name}"
        fields = [(f.name, f.default) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        assert _params(inspect.signature(cls)) == fields
        c = _Recorder()
        method(c, **{f: getattr(SAMPLES[name], f) for f, _ in fields})  # the method sends the same object
        assert c.sent == [SAMPLES[name]]


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[ops.Op] = []

    def call(self, op: ops.Op) -> dict[str, Any]:
        self.sent.append(op)
        return {}


def _params(sig: inspect.Signature) -> list[tuple[str, Any]]:
    return [(p.name, dataclasses.MISSING if p.default is p.empty else p.default)
            for p in sig.parameters.values()]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_wire_form_decodes_to_the_same_operation(name: str) -> None:
    op = SAMPLES[name]
    assert ops.decode(name, op.args()) == op
    assert all(v is not None for v in op.args().values())  # None travels as absent


def test_optional_arguments_may_be_absent_or_null() -> None:
    assert ops.decode("register", {"name": "x", "service": None, "cpus": None}) == ops.Register("x")
    assert ops.decode("register", {}) == ops.Register()
    assert ops.decode("flow_add", {"flow": "a b tcp", "chain": "c", "idle": 3}).idle == 3.0  # int for float


@pytest.mark.parametrize("name, args, message", [
    ("nope", {}, "unknown operation 'nope'"),
    ("chain_add", {"name": "web"}, "'hops' is required"),
    ("chain_add", {"name": "web", "hops": None}, "'hops' is required"),
    ("chain_add", {"name": 1, "hops": "1"}, "'name' must be a string"),
    ("stop_nf", {"nf_id": True}, "'nf_id' must be an integer"),
    ("stop_nf", {"nf_id": 1.0}, "'nf_id' must be an integer"),
    ("flow_add", {"flow": "x", "chain": "c", "idle": "3"}, "'idle' must be a number"),
    ("register", {"cpus": [0, "1"]}, r"'cpus\[1\]' must be an integer"),
    ("register", {"cpus": 3}, "'cpus' must be a list of integers"),
    ("rule_add", {"rules": "tcp -> chain web"}, "'rules' must be a list of strings"),
    ("scale", {"count": 1, "bogus": 2}, "scale: unknown argument 'bogus' \\(expected: count, service\\)"),
    ("status", {"verbose": True}, "unknown argument 'verbose' \\(expected: none\\)"),
    # check(): ranges and syntax, before any handler
    ("register", {"service": _native.MAX_SERVICES}, "service 64 is out of range"),
    ("register", {"instance": -1}, "instance -1 is out of range"),
    ("subscribe", {"nf_id": 0}, "NF id 0 is out of range"),
    ("rule_add", {}, "rule_add takes 'rule'"),
    ("rule_add", {"rule": "x", "rules": ["y"]}, "rule_add takes 'rule'"),
    ("flow_list", {"limit": 0}, "'limit' must be an integer in 1..1000000"),
    ("flow_add", {"flow": "x", "chain": "c", "hard": -1}, "hard timeout -1.0 s: expected 0..2000000 s"),
    ("flow_add", {"flow": "10.0.0.1 10.0.0.2 udp", "chain": "web", "idle": 3e6},
     "idle timeout 3000000.0 s: expected 0..2000000 s"),
    ("rule_list", {"limit": 1000}, "'limit' must be an integer in 1..200"),
    ("rule_load", {"rules": [], "line": 0}, "'line' 0 must be at least 1"),
    ("port_chain", {"port": 16}, "port 16 is out of range"),
    ("port_rate", {"port": 0, "pps": -1}, "'pps' -1 is out of range"),
    ("send", {"data": 1}, "'service' is required"),
    ("capture_start", {}, "capture one tap point: 'port', 'nf' or 'service'"),
    ("capture_start", {"port": 0, "nf": 1}, "capture one tap point"),
    ("capture_start", {"nf": 0}, "NF id 0 is out of range"),
    ("capture_start", {"port": 0, "direction": "up"}, "direction 'up' must be rx, tx or both"),
    ("capture_start", {"port": 0, "snaplen": 0}, "'snaplen' must be within 1..262144"),
    ("capture_start", {"port": 0, "filter": "tcp dst port 80 -> chain x"}, "'->' has no place in a filter"),
    ("capture_start", {"port": 0, "filter": "tcp dst port 99999"},
     "filter 'tcp dst port 99999': token 4 '99999': expected a port"),
    ("service_policy", {"service": 1, "policy": "fastest"}, "policy 'fastest'"),
    ("service_policy", {"service": -1, "policy": "hash"}, "service -1 is out of range"),
    ("scale", {"count": 1, "service": 99}, "service 99 is out of range"),
])
def test_bad_arguments_are_refused_with_the_argument_named(name: str, args: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ops.decode(name, args)


def test_operations_are_frozen_values() -> None:
    op = ops.ChainAdd("web", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.name = "other"  # type: ignore[misc]
    assert op == ops.ChainAdd("web", "1") and hash(op) == hash(ops.ChainAdd("web", "1"))


def test_web_and_nf_only_marks() -> None:
    assert {n for n, c in ops.OPS.items() if not c.from_web} == {
        "hello", "register", "start", "stopping", "subscribe", "packet_in", "capture_start", "capture_stop"}
    assert {n for n, c in ops.OPS.items() if c.nf_only} == {"start", "stopping"}


def test_an_nf_only_operation_from_inside_is_refused_before_its_handler() -> None:
    class NoNFs:
        def of(self, caller: Any) -> None:
            raise ConfigError("this connection has no registered NF")

    h = Handlers.__new__(Handlers)
    h.lock, h.nfs = threading.RLock(), NoNFs()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="no registered NF"):
        h.call(ops.Start(), INTERNAL)


def test_a_class_outside_the_table_cannot_be_sent() -> None:
    class Stray(ops.Op):  # no name: not in the table
        x: int = 1

    assert Stray().args() == {"x": 1} and "Stray" not in str(ops.OPS)
    h = Handlers.__new__(Handlers)
    with pytest.raises(ConfigError, match="unknown operation"):
        h.call(Stray())


@pytest.mark.parametrize(("name", "args", "error"), [
    ("register", {"instance": 65536}, "instance 65536 is out of range"),
    ("register", {"name": "bad\udcffname"}, "bad.*name"),
    ("register", {"name": "tab\there"}, "printable text"),
    ("register", {"name": "x" * 300}, "at most 256 characters"),
    ("stop_nf", {"nf_id": 0}, "NF id 0 is out of range"),
    ("stop_nf", {"nf_id": 10**30}, "out of range"),
    ("send", {"data": 1, "nf": 64}, "NF id 64 is out of range"),
    ("send", {"data": 1, "service": 99}, "service 99 is out of range"),
    ("packet_in", {"data": "", "in_port": 2**32}, "in_port"),
    ("packet_in", {"data": "", "in_port": 1, "total_len": 70000}, "total_len"),
])
def test_numbers_and_text_are_checked_where_they_enter(name, args, error):
    with pytest.raises(ConfigError, match=error):
        ops.decode(name, args)
