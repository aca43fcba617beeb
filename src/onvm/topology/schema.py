"""The topology file: its schema, and validation with errors that name file, line and field.

A topology is one YAML file::

    manager: {name: fw, pool_size: 8192}
    ports: [gen:size=64,rate=100k, pcap-out:out.pcap]
    nfs:
      - {name: monitor, program: basic_monitor, service: 1, options: {interval: 0}}
      - {name: fwd, program: simple_forward, service: 2, instances: 2, isolation: namespace}
    chains:
      default: [1, 2, out:1]

:func:`load_topology` checks everything it can before anything starts (types,
ranges, port URIs, NF programs and their options, chain hops against ports and
services) and raises :class:`TopologyError` listing every problem as
``FILE:LINE: FIELD: message``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from onvm.constants import MAX_INSTANCES, MAX_PORTS, MAX_SERVICES, Action
from onvm.errors import ConfigError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.flows.rules import parse_rule
from onvm.manager.placement import check_available, parse_cpus
from onvm.paths import validate_name
from onvm.ports.dpdk import check_available as check_dpdk
from onvm.ports.uri import PortSpec, parse_port
from onvm.topology import _yaml

ISOLATIONS = ("process", "namespace", "podman", "docker")
RESTARTS = ("no", "on-failure", "always")
# Fields the loader fills in, not the file.
_INTERNAL = ("source", "port_specs", "default_chain", "named_chains")
# Options the runner sets itself from the NF's fields.
RESERVED_OPTIONS = {"name": "manager.name", "service": "service", "instance": "instances",
                    "cpus": "cpus"}


class TopologyError(ConfigError):
    """A topology file that cannot run; ``problems`` holds each ``FILE:LINE: FIELD: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


def _cpus(v: Any) -> tuple[int, ...] | None:
    if v is None:
        return None
    try:
        cpus = parse_cpus(v)
        check_available(cpus)
    except ConfigError as e:
        raise ValueError(e.message) from None
    return cpus


class ManagerSpec(_Model):
    """The manager: its name, pool, rings and workers (the options of ``onvm manager``)."""

    name: str = "onvm"
    pool_size: int = Field(16384, ge=64, le=1 << 24)  # packet slots
    slot_size: int = Field(2048, ge=384, le=65536, multiple_of=64)  # bytes per slot
    ring_size: int = Field(4096, ge=64, le=1 << 20)  # entries per NF ring, a power of two
    rx_workers: int = Field(1, ge=1)
    tx_workers: int = Field(1, ge=1)
    burst: int = Field(64, ge=1, le=512)
    cpus: tuple[int, ...] | None = None  # pin the manager and its workers
    nf_cpus: tuple[int, ...] | None = None  # CPUs NFs are placed on (default: all allowed)
    pack_below: float = Field(0.5, ge=0, lt=0.8)  # one CPU for the pipeline below this load; 0 = never
    dpdk_eal: str = Field("", max_length=4096)  # DPDK EAL options for dpdk: ports (onvm manager --dpdk-eal)
    stats: float = Field(1.0, ge=0)  # live stats interval in seconds, 0 = off
    duration: float = Field(0.0, ge=0)  # stop after this long, 0 = until stopped
    exit_when_done: bool = False  # stop once every input port is exhausted
    wait: bool = True  # hold input ports until the default chain's services run

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return validate_name(v)
        except ConfigError as e:
            raise ValueError(e.message) from None

    @field_validator("ring_size")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"{v} is not a power of two")
        return v

    _cpu = field_validator("cpus", "nf_cpus", mode="before")(lambda cls, v: _cpus(v))


class NFSpec(_Model):
    """One NF of the topology; ``instances`` copies of it share its service."""

    name: str | None = None  # label in logs and container names (default: the program)
    program: str  # an example NF, a path to a Python file, an installed NF or a module (onvm nf --list)
    options: dict[str, Any] | list[str] = Field(default_factory=dict)
    service: int | None = Field(None, ge=0, le=MAX_SERVICES - 1)  # default: the program's own
    instances: int = Field(1, ge=1, le=MAX_INSTANCES)
    isolation: Literal["process", "namespace", "podman", "docker"] = "process"
    image: str | None = None  # podman/docker image (default: the one 'onvm image build' makes)
    restart: Literal["no", "on-failure", "always"] = "on-failure"
    max_restarts: int = Field(5, ge=0)  # give up after this many restarts
    cpus: tuple[int, ...] | None = None  # place its instances on these CPUs

    _cpu = field_validator("cpus", mode="before")(lambda cls, v: _cpus(v))

    @field_validator("restart", mode="before")
    @classmethod
    def _restart(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false: `restart: no` means what it says.
        return "no" if v is False else v

    @field_validator("name")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                validate_name(v)
            except ConfigError:
                raise ValueError(f"'{v}' is not a valid NF name: expected 1-32 characters of "
                                 "A-Z a-z 0-9 _ . - not starting with '.' or '-'") from None
        return v

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if "/" in self.program or self.program.endswith(".py"):
            return os.path.splitext(os.path.basename(self.program))[0]
        return self.program.rsplit(":", 1)[-1].rsplit(".", 1)[-1]  # a module's last part

    def argv_options(self) -> list[str]:
        """The options as command-line arguments."""
        if isinstance(self.options, list):
            return [str(o) for o in self.options]
        out: list[str] = []
        for key, value in self.options.items():
            flag = "--" + str(key).replace("_", "-")
            if value is True:
                out.append(flag)
            elif value is False or value is None:
                continue
            elif isinstance(value, list):
                for v in value:
                    out += [flag, str(v)]
            else:
                out += [flag, str(value)]
        return out


class RuleMatch(_Model):
    """The fields a rule matches; absent ones match anything."""

    src: str | None = None
    dst: str | None = None
    proto: Literal["tcp", "udp", "icmp"] | int | None = None
    sport: int | None = Field(None, ge=0, le=65535)
    dport: int | None = Field(None, ge=0, le=65535)
    in_port: int | None = Field(None, ge=0, le=MAX_PORTS - 1)


class RuleSpec(_Model):
    """A flow rule: packets that match go down ``chain``."""

    match: RuleMatch
    chain: str
    priority: int = Field(0, ge=0, le=65535)

    def to_text(self) -> str:
        """The rule in the manager's rule syntax (``onvm rule add``)."""
        m = self.match
        words = [f"priority {self.priority}"]
        if m.in_port is not None:
            words.append(f"in-port {m.in_port}")
        if m.proto is not None:
            names = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp"}
            words.append(m.proto if isinstance(m.proto, str) else names.get(m.proto, f"protocol-{m.proto}"))
        for word, value in (("src", m.src), ("dst", m.dst)):
            if value is not None:
                words.append(f"{word} {value}")
        for word, port in (("src port", m.sport), ("dst port", m.dport)):
            if port is not None:
                words.append(f"{word} {port}")
        return " ".join([*words, "->", "chain", self.chain])


class Topology(_Model):
    """A whole deployment: one manager, its ports, NFs, chains and rules."""

    manager: ManagerSpec = Field(default_factory=lambda: ManagerSpec.model_validate({}))
    ports: list[str] = Field(default_factory=list, max_length=MAX_PORTS)
    nfs: list[NFSpec] = Field(default_factory=list)
    chains: dict[str, list[int | str] | str] = Field(default_factory=dict)
    rules: list[RuleSpec] = Field(default_factory=list)

    # Filled by load_topology after the checks that need more than one field.
    source: str = ""
    port_specs: list[PortSpec] = Field(default_factory=list, exclude=True)
    default_chain: list[Hop] = Field(default_factory=list, exclude=True)
    named_chains: dict[str, str] = Field(default_factory=dict, exclude=True)  # name -> hops text

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def default_chain_text(self) -> str:
        return ",".join(str(h) for h in self.default_chain)

    def services(self) -> dict[int, int]:
        """Instances per service."""
        out: dict[int, int] = {}
        for nf in self.nfs:
            if nf.service is not None:
                out[nf.service] = out.get(nf.service, 0) + nf.instances
        return out


_FRIENDLY = {
    "extra_forbidden": "unknown field",
    "missing": "required field is missing",
}


def _message(err: Any, model_fields: list[str]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden" and model_fields:
        return f"unknown field (expected one of: {', '.join(model_fields)})"
    if kind in _FRIENDLY:
        return _FRIENDLY[kind]
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the model an error location points into (for 'unknown field')."""
    model: Any = Topology
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = model.model_fields.get(part)
        if f is None:
            return []
        ann = f.annotation
        inner = getattr(ann, "__args__", (ann,))
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return [k for k in model.model_fields if k not in _INTERNAL]


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise _ArgError(message)

    def exit(self, status: int = 0, message: str | None = None) -> Any:  # type: ignore[override]
        raise _ArgError(message or "asked to exit")


def _check_program(nf: NFSpec) -> list[tuple[str, str]]:
    """Problems with an NF's program and options, as (field, message)."""
    from onvm import nfs

    try:
        program = nfs.find(nf.program)
    except ConfigError as e:
        return [("program", e.message)]
    if program.is_script:
        return [] if nf.service is not None else [("service", "a plain NF script needs a service")]
    out: list[tuple[str, str]] = []
    if isinstance(nf.options, dict):
        for key in nf.options:
            k = str(key).replace("-", "_")
            if k in RESERVED_OPTIONS:
                out.append((f"options.{key}", f"set by the topology: use {RESERVED_OPTIONS[k]} instead"))
    if out:
        return out
    try:
        mod = program.load()
    except ConfigError as e:
        return [("program", e.message)]
    p = nfs.parser(mod, f"onvm nf {nf.program}", cls=_Parser, add_help=False)
    try:
        p.parse_args(nf.argv_options())
    except _ArgError as e:
        out.append(("options", f"{nf.program}: {e}"))
    if nf.service is None:
        nf.service = getattr(mod, "SERVICE", None)
        if nf.service is None:
            out.append(("service", f"{nf.program} has no default service: set one"))
    return out


def validate(data: Any, lines: dict[tuple[Any, ...], int], source: str) -> Topology:
    """Build a Topology from loaded YAML; raises TopologyError listing every problem."""
    problems: list[tuple[int, str]] = []

    def add(path: tuple[Any, ...], message: str) -> None:
        problems.append((_yaml.line_of(lines, path), f"{source}:{_yaml.line_of(lines, path)}: "
                                                     f"{_yaml.dotted(path)}: {message}"))

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopologyError([f"{source}:1: (top): expected a mapping with manager, ports, nfs, "
                             f"chains and rules, got {type(data).__name__}"])
    for key in _INTERNAL:
        if key in data:
            add((key,), f"unknown field (expected one of: {', '.join(_fields_at((key,)))})")
    if problems:
        raise TopologyError([p for _, p in sorted(problems)])
    try:
        topo = Topology.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = _data_path(data, err["loc"])
            msg = _message(err, _fields_at(loc))
            if loc[:1] == ("ports",) and len(loc) == 2 and data["ports"][loc[1]] is None:
                msg = "expected a port URI (write the null port in quotes: 'null')"
            add(loc, msg)
        raise TopologyError([p for _, p in sorted(problems, key=lambda x: x[0])]) from None
    topo.source = source

    for i, uri in enumerate(topo.ports):
        try:
            topo.port_specs.append(parse_port(uri))
            check_dpdk(topo.port_specs[-1:])
        except ConfigError as e:
            add(("ports", i), e.message)
    labels: dict[str, int] = {}
    for i, nf in enumerate(topo.nfs):
        for field, msg in _check_program(nf):
            add(("nfs", i, *field.split(".")), msg)
        if nf.label in labels:
            add(("nfs", i, "name" if nf.name else "program"),
                f"NF name '{nf.label}' is used by nfs[{labels[nf.label]}] too: give each a distinct name")
        labels.setdefault(nf.label, i)
    for svc, count in topo.services().items():
        if count > MAX_INSTANCES:
            first = next(i for i, nf in enumerate(topo.nfs) if nf.service == svc)
            add(("nfs", first, "instances"), f"service {svc} has {count} instances in all; at most "
                                             f"{MAX_INSTANCES}")
    _check_chains(topo, add)
    if problems:
        raise TopologyError([p for _, p in sorted(problems, key=lambda x: x[0])])
    return topo


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Keep the parts of a pydantic location that exist in the data (drops union/type tags)."""
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and not any(c in part for c in "[]-"):
            out.append(part)  # a missing or unknown field: name it
            break
        else:
            continue
        out.append(part)
    return tuple(out)


def _check_chains(topo: Topology, add: Any) -> None:
    services = topo.services()
    for name, hops in topo.chains.items():
        text = hops if isinstance(hops, str) else ",".join(str(h) for h in hops)
        try:
            chain = parse_chain(text)
        except ConfigError as e:
            add(("chains", name), e.message)
            continue
        for i, hop in enumerate(chain):
            path = ("chains", name) if isinstance(hops, str) else ("chains", name, i)
            if hop.action == Action.OUT:
                if hop.dest >= len(topo.port_specs):
                    add(path, f"hop {i + 1} 'out:{hop.dest}': there is no port {hop.dest} "
                              f"({len(topo.ports)} ports)")
                elif not topo.port_specs[hop.dest].is_output:
                    add(path, f"hop {i + 1} 'out:{hop.dest}': port {hop.dest} "
                              f"'{topo.ports[hop.dest]}' is not an output port (pcap-out or null)")
            elif hop.action == Action.TONF and hop.dest not in services:
                add(path, f"hop {i + 1}: no NF provides service {hop.dest}")
        if name == "default":
            topo.default_chain = chain
        else:
            topo.named_chains[name] = format_chain(chain)
    if not topo.chains:
        topo.default_chain = parse_chain("1")
        if 1 not in services and topo.port_specs and any(s.is_input for s in topo.port_specs):
            add(("chains",), "no default chain: packets from ports would go to service 1, which no NF "
                             "provides; add chains: {default: [...]}")
    for i, rule in enumerate(topo.rules):
        if rule.chain not in topo.chains:
            add(("rules", i, "chain"), f"no chain named '{rule.chain}'")
            continue
        try:
            parse_rule(rule.to_text())
        except ConfigError as e:
            add(("rules", i, "match"), e.message)


def load_topology(path: str) -> Topology:
    """Read and validate a topology file; raises TopologyError (file, line, field) or ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read topology file {path}: {e.strerror}") from None
    return loads_topology(text, path)


def loads_topology(text: str, source: str = "<string>") -> Topology:
    """Validate a topology given as text (tests, tools)."""
    try:
        data, lines = _yaml.load(text, source)
    except _yaml.YamlError as e:
        raise TopologyError([e.message]) from None
    return validate(data, lines, source)
