"""The control operations: one typed request per operation, all in one table.

Theory of operation
-------------------
Everything a client can ask of a manager is an operation: a frozen dataclass
below.  Its fields are the operation's arguments, their types are checked when
a request is decoded, and its :meth:`Op.check` holds the rest of the
validation (ranges, syntax), so a bad request is refused with the argument
named before any handler runs.  The same class serves everyone:

* the control server decodes a request's JSON arguments with
  :func:`decode` (unknown, missing and mistyped arguments are refused);
* the manager's handlers receive the decoded object (``manager/handlers.py``);
* :class:`onvm.control.client.Client` has one typed method per operation,
  made from the class: ``client.chain_add("web", "1,2,out:0")``;
* the CLI, the web server (``POST /api/control/OP``) and the OpenFlow agent
  build the objects and hand them to a client or, inside the manager, to
  the handlers directly, under the same lock and the same checks.

On the wire an operation is ``{"op": NAME, "args": {...}}`` (see
``protocol.py``); :meth:`Op.args` leaves out arguments that are None, so
an optional argument may be absent or null.

Adding an operation
-------------------
1. Write its class here: ``class TraceStart(Op, name="trace_start")`` makes
   a frozen dataclass and enters it in the table.  Fields may be ``int``, ``float``,
   ``str``, ``bool``, ``list[int]``, ``list[str]``, :data:`Json` (any JSON
   value) or one of those ``| None``; give optional ones a default.  Put
   range and syntax checks in ``check()`` and raise ``ConfigError`` naming
   the argument.  Set ``from_web = False`` if only an NF's own connection may
   ask for it, and ``nf_only = True`` if it needs the caller to be a
   registered NF.
2. Give the client its method: ``trace_start = method(ops.TraceStart)`` in
   ``Client`` (``control/client.py``).
3. Handle it in the manager: a method of ``Handlers`` decorated with
   ``@handles(ops.TraceStart)`` (``manager/handlers.py``), returning a dict.
4. ``tests/unit/test_ops.py`` checks that every operation has a client
   method with its fields and a handler, so nothing is half added.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Union

from onvm import _native
from onvm.errors import ConfigError
from onvm.flows.rules import check_timeouts
from onvm.ports.uri import MAX_RATE
from onvm.text import check_text

__all__ = ["OPS", "Json", "Op", "decode"]

#: Any JSON value (the argument is passed through as decoded).
Json = Any

OPS: dict[str, type[Op]] = {}


@typing.dataclass_transform(frozen_default=True)
class Op:
    """Base of every operation: ``class ChainAdd(Op, name="chain_add")`` makes a frozen
    dataclass and enters it in :data:`OPS` under that name."""

    op_name: ClassVar[str] = ""
    from_web: ClassVar[bool] = True  # POST /api/control/NAME may ask for it
    nf_only: ClassVar[bool] = False  # only on the connection of a registered NF

    def __init_subclass__(cls, name: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        dataclasses.dataclass(frozen=True)(cls)
        if name:
            if name in OPS:
                raise ValueError(f"operation {name!r} is defined twice")
            cls.op_name = name
            OPS[name] = cls

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validation beyond the types; raises ConfigError naming the argument."""

    def args(self) -> dict[str, Any]:
        """The arguments as they travel, None ones left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


# ---- decoding ---------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_hints: dict[type[Op], dict[str, Any]] = {}


def _hints_of(cls: type[Op]) -> dict[str, Any]:
    if cls not in _hints:
        _hints[cls] = typing.get_type_hints(cls)
    return _hints[cls]


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type, or ConfigError naming ``where``."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, inner[0], where)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"'{where}' must be a list of {_TYPE_NAMES[item].split(' ', 1)[1]}s")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool):
        raise ConfigError(f"'{where}' must be {_TYPE_NAMES.get(hint, hint.__name__)}")
    return value


def decode(name: str, args: Mapping[str, Any]) -> Op:
    """The operation ``name`` with ``args`` from a request; ConfigError for anything amiss."""
    cls = OPS.get(name)
    if cls is None:
        raise ConfigError(f"unknown operation '{name}'")
    hints = _hints_of(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(args) - set(fields))
    if unknown:
        expected = ", ".join(fields) or "none"
        raise ConfigError(f"{name}: unknown argument '{unknown[0]}' (expected: {expected})")
    kw: dict[str, Any] = {}
    for fname, f in fields.items():
        value = args.get(fname)
        if value is not None:
            kw[fname] = _convert(value, hints[fname], fname)
        elif f.default is dataclasses.MISSING:
            raise ConfigError(f"'{fname}' is required")
    return cls(**kw)


# ---- shared checks ----------------------------------------------------------

#: Rules in one page of rule_list: the longest rule text (IPv6 prefixes and every
#: field) and its listing stay under 300 bytes, so a page fits one message.
RULE_PAGE = 200

def check_service(service: int, what: str = "service") -> None:
    if not 0 <= service < _native.MAX_SERVICES:
        raise ConfigError(f"{what} {service} is out of range (0..{_native.MAX_SERVICES - 1})")


def check_nf_id(nf_id: int) -> None:
    if not 1 <= nf_id < _native.MAX_NFS:
        raise ConfigError(f"NF id {nf_id} is out of range (1..{_native.MAX_NFS - 1})")



# ---- the operations ---------------------------------------------------------

class Hello(Op, name="hello"):
    """The manager's name, pid, protocol and layout versions."""

    from_web = False


class Register(Op, name="register"):
    """An NF joins: it gets an id, an instance, a CPU and the region's path."""

    from_web = False
    name: str = "nf"
    service: int | None = None  # default 1
    instance: int | None = None  # default: the lowest free one
    pid: int = 0  # used when the connection carries no credentials
    cpus: list[int] | None = None  # CPUs it may be placed on
    # How this process was started (argv, cwd, env): recorded for scaling only when the
    # process holds the manager's own privileges (see onvm.manager.launch).
    launch: Json = None

    def check(self) -> None:
        check_text(self.name, "NF name")
        if self.service is not None:
            check_service(self.service)
        if self.instance is not None and not 0 <= self.instance <= _native.INSTANCE_MAX:
            raise ConfigError(f"instance {self.instance} is out of range (0..{_native.INSTANCE_MAX})")
        if self.cpus is not None and any(c < 0 for c in self.cpus):
            raise ConfigError(f"cpus {list(self.cpus)}: CPU numbers cannot be negative")
        if self.launch is not None:
            from onvm.manager.launch import Recipe

            Recipe.parse(self.launch)


class Start(Op, name="start"):
    """The caller's NF entered its packet loop: packets may reach it."""

    from_web = False
    nf_only = True


class Stopping(Op, name="stopping"):
    """The caller's NF is leaving its loop."""

    from_web = False
    nf_only = True
    reason: str = ""


class Subscribe(Op, name="subscribe"):
    """This connection receives the messages of NF ``nf_id`` (its own process only)."""

    from_web = False
    nf_id: int

    def check(self) -> None:
        check_nf_id(self.nf_id)


class Status(Op, name="status"):
    """Everything ``onvm status --json`` shows."""


class Shutdown(Op, name="shutdown"):
    """Stop the manager and its NFs."""


class StopNF(Op, name="stop_nf"):
    """Ask one NF to stop."""

    nf_id: int

    def check(self) -> None:
        check_nf_id(self.nf_id)


class ChainAdd(Op, name="chain_add"):
    """Make (or replace) the chain ``name``: hops such as ``1,2,out:0``."""

    name: str
    hops: str


class ChainList(Op, name="chain_list"):
    """The chains, default first."""


class ChainDel(Op, name="chain_del"):
    """Remove a chain no rule uses, with the flow entries that lead to it."""

    name: str


class RuleAdd(Op, name="rule_add"):
    """One rule (``rule``), or several applied all together or not at all (``rules``)."""

    rule: str | None = None
    rules: list[str] | None = None

    def check(self) -> None:
        if (self.rule is None) == (self.rules is None):
            raise ConfigError("rule_add takes 'rule' (one rule) or 'rules' (a list of rule texts)")


class RuleLoad(Op, name="rule_load"):
    """A part of a rule set too large for one message (``onvm rule add -f``).

    The parts are checked as they come and kept on this connection; the part
    that says ``commit`` applies them all in one change, or none of them if any
    is bad.  ``begin`` starts a new set (dropping one left unfinished);
    ``line`` is the file's line number of ``rules[0]``, for errors."""

    rules: list[str]
    line: int = 1
    begin: bool = False
    commit: bool = False

    def check(self) -> None:
        if self.line < 1:
            raise ConfigError(f"'line' {self.line} must be at least 1")


class RuleChange(Op, name="rule_change"):
    """Remove the rules ``delete`` (ids) and add ``add`` in one change: all or nothing."""

    add: list[str] | None = None
    delete: list[int] | None = None


class RuleList(Op, name="rule_list"):
    """The rules in the order they are tried, with their hits, ``limit`` of them from ``offset``."""

    offset: int = 0
    limit: int = RULE_PAGE

    def check(self) -> None:
        if self.offset < 0:
            raise ConfigError(f"'offset' {self.offset} cannot be negative")
        if not 1 <= self.limit <= RULE_PAGE:
            raise ConfigError(f"'limit' must be an integer in 1..{RULE_PAGE} (a page fits one message)")


class RuleDel(Op, name="rule_del"):
    """Remove a rule by id."""

    id: int


class PortChain(Op, name="port_chain"):
    """Give input port ``port`` a default chain of its own (``chain`` null: the default chain again)."""

    port: int
    chain: str | None = None

    def check(self) -> None:
        if not 0 <= self.port < _native.MAX_PORTS:
            raise ConfigError(f"port {self.port} is out of range (0..{_native.MAX_PORTS - 1})")


class PortRate(Op, name="port_rate"):
    """Pace input port ``port`` at ``pps`` packets a second from now on (0: unpaced):
    a gen port, or a pcap input replayed without ``rate=capture``."""

    port: int
    pps: int

    def check(self) -> None:
        if not 0 <= self.port < _native.MAX_PORTS:
            raise ConfigError(f"port {self.port} is out of range (0..{_native.MAX_PORTS - 1})")
        if not 0 <= self.pps <= MAX_RATE:
            raise ConfigError(f"'pps' {self.pps} is out of range (0..{MAX_RATE}; 0: unpaced)")


class FlowList(Op, name="flow_list"):
    """Flow entries (of one chain), with counters and ages."""

    limit: int = 1000
    chain: str | None = None

    def check(self) -> None:
        if not 1 <= self.limit <= 1_000_000:
            raise ConfigError("'limit' must be an integer in 1..1000000")


class FlowAdd(Op, name="flow_add"):
    """Steer one flow (``SRC[:PORT] DST[:PORT] PROTO ...``) to a chain."""

    flow: str
    chain: str
    idle: float = 0.0  # seconds without packets before the entry expires; 0: never
    hard: float = 0.0  # seconds after which it expires anyway; 0: never

    def check(self) -> None:
        check_timeouts(self.idle, self.hard)


class FlowDel(Op, name="flow_del"):
    """Remove one flow entry."""

    flow: str


class FlowFlush(Op, name="flow_flush"):
    """Remove the cached classification results (of one chain): their flows' next packets are
    classified afresh.  ``cached_only`` false: the explicit entries (``flow add``, NFs, OpenFlow) too."""

    chain: str | None = None
    cached_only: bool = True


class FlowExplain(Op, name="flow_explain"):
    """What the manager would do with packets of ``flow`` now, and why: the exact entry or
    the rule that decides (and the rules above it that do not), the chain, each hop's instance."""

    flow: str  # SRC[:PORT] DST[:PORT] PROTO [in-port N] [vlan N]

    def check(self) -> None:
        from onvm.flows.keys import FlowKey

        FlowKey.parse(self.flow)


class FlowStats(Op, name="flow_stats"):
    """Flow table size, use and counters."""


class Send(Op, name="send"):
    """Send ``data`` to NF ``nf``, or to every running instance of ``service``."""

    data: Json
    nf: int | None = None
    service: int | None = None

    def check(self) -> None:
        if self.nf is None and self.service is None:
            raise ConfigError("'service' is required (or 'nf')")
        if self.nf is not None:
            check_nf_id(self.nf)
        if self.service is not None:
            check_service(self.service)


class ServiceList(Op, name="service_list"):
    """Services: instances, policy, autoscale bounds."""


class ServicePolicy(Op, name="service_policy"):
    """Set how a service spreads packets over its instances."""

    service: int
    policy: str  # hash, round-robin, least-loaded or local

    def check(self) -> None:
        from onvm.manager.services import parse_policy

        check_service(self.service)
        parse_policy(self.policy)


class Scale(Op, name="scale"):
    """Run ``count`` instances of ``service`` (default: the calling NF's)."""

    count: int
    service: int | None = None

    def check(self) -> None:
        if self.service is not None:
            check_service(self.service)


class CaptureStart(Op, name="capture_start"):
    """Copy what passes a tap point (a port, an NF, a service's instances) to this connection as
    ``capture`` events of pcap records, then a ``capture_end`` event.  The web takes captures
    through ``POST /api/capture`` (a download), not on a connection of its own."""

    from_web = False
    port: int | None = None
    nf: int | None = None
    service: int | None = None
    direction: str = "both"  # rx (what it receives), tx (what it sends) or both
    filter: str = ""  # in the rule syntax, without the arrow: ``tcp dst port 80 src 10.0.0.0/8``
    count: int = 0  # packets, then it ends; 0: until stopped
    snaplen: int = 262144  # bytes kept of each packet (at most a slot's room)

    def check(self) -> None:
        from onvm.flows.rules import parse_filter

        if sum(x is not None for x in (self.port, self.nf, self.service)) != 1:
            raise ConfigError("capture one tap point: 'port', 'nf' or 'service'")
        if self.port is not None and not 0 <= self.port < _native.MAX_PORTS:
            raise ConfigError(f"port {self.port} is out of range (0..{_native.MAX_PORTS - 1})")
        if self.nf is not None:
            check_nf_id(self.nf)
        if self.service is not None:
            check_service(self.service)
        if self.direction not in ("rx", "tx", "both"):
            raise ConfigError(f"direction '{self.direction}' must be rx, tx or both")
        if not 0 <= self.count <= 1 << 62:
            raise ConfigError("'count' must be a non-negative integer")
        if not 1 <= self.snaplen <= 262144:
            raise ConfigError("'snaplen' must be within 1..262144")
        parse_filter(self.filter)


class CaptureStop(Op, name="capture_stop"):
    """End a capture this connection started; its counts."""

    from_web = False
    id: int


class TraceAdd(Op, name="trace_add"):
    """Trace the next ``count`` packets that ``filter`` takes at RX, hop by hop (replaces the last trace)."""

    count: int
    filter: str = ""  # in the rule syntax, without the arrow

    def check(self) -> None:
        from onvm.flows.rules import parse_filter

        if not 1 <= self.count <= 10_000:
            raise ConfigError("'count' must be within 1..10000")
        parse_filter(self.filter)


class TraceShow(Op, name="trace_show"):
    """The traced packets so far, each with its hops."""


class TraceClear(Op, name="trace_clear"):
    """Disarm the trace and forget what it recorded."""


class PacketIn(Op, name="packet_in"):
    """A packet for the OpenFlow controllers (from the packet_io NF)."""

    from_web = False
    data: str  # base64
    in_port: int
    total_len: int = 0  # the packet's length before it was cut (0: len(data))

    def check(self) -> None:
        if not 0 <= self.in_port <= 0xFFFFFFFF:
            raise ConfigError(f"in_port {self.in_port} is out of range (0..{0xFFFFFFFF})")
        if not 0 <= self.total_len <= 0xFFFF:
            raise ConfigError(f"total_len {self.total_len} is out of range (0..65535)")
