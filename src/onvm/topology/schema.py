"""The topology file: its schema, and validation with errors that name file, line and field.

A topology is one YAML file::

    manager: {name: fw, pool_size: 8192, web: 8080}
    ports: [gen:size=64,rate=100k, pcap-out:out.pcap]
    nfs:
      - {name: monitor, program: basic_monitor, service: 1, options: {interval: 0}}
      - {name: fwd, program: simple_forward, service: 2, instances: 2, isolation: namespace}
    chains:
      default: [1, 2, out:1]
      web: [2, out:1]
    rules:
      - tcp dst port 80 -> chain web

The ``manager:`` section is the manager's own configuration model
(:class:`onvm.manager.config.ManagerOptions`: everything ``onvm manager`` takes
but its ports, chains and rules, which a topology says at its top level), read
as it is.  Rules are written as for ``onvm rule add`` (or as a ``match:``
mapping), with the same defaults.

:func:`load_topology` checks everything it can before anything starts (types,
ranges, port URIs, NF programs and their options, chain hops against ports and
services) and raises :class:`TopologyError` listing every problem as
``FILE:LINE: FIELD: message``.  :meth:`Topology.manager_config` is the whole
manager's configuration, with the command line's overrides.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from onvm.constants import MAX_INSTANCES, MAX_PORTS, MAX_SERVICES, Action
from onvm.errors import ConfigError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.flows.rules import DEFAULT_PRIORITY, parse_rule
from onvm.manager.config import ManagerConfig, ManagerOptions, PortUri, RuleText, describe, from_flags
from onvm.manager.placement import check_available, parse_cpus
from onvm.paths import validate_name
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
    max_restarts: int = Field(5, ge=0, le=1000)  # at most this many restarts within restart_window
    restart_window: float = Field(60.0, ge=1.0, le=86400.0)  # seconds
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


PortRange = Annotated[int | str, Field(description="a port or a range N-M")]


class RuleMatch(_Model):
    """The fields a rule matches; absent ones match anything (the words of ``onvm rule add``)."""

    proto: Literal["tcp", "udp", "icmp", "icmp6", "sctp", "ip", "ip6", "any"] | None = None
    src: str | None = None  # an IPv4 or IPv6 prefix
    dst: str | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None
    in_port: int | None = Field(None, ge=0, le=MAX_PORTS - 1)
    vlan: int | None = Field(None, ge=0, le=4095)

    @field_validator("sport", "dport")
    @classmethod
    def _port(cls, v: int | str | None) -> int | str | None:
        for part in str(v).split("-", 1) if v is not None else ():
            if not part.isdecimal() or int(part) > 65535:
                raise ValueError("Input should be less than or equal to 65535" if part.isdecimal()
                                 else f"{v!r}: expected a port N or a range N-M")
        return v


class RuleSpec(_Model):
    """A flow rule as a mapping: packets that ``match`` go down ``chain``."""

    match: RuleMatch = Field(default_factory=lambda: RuleMatch.model_validate({}))
    chain: str
    priority: int = Field(DEFAULT_PRIORITY, ge=-1_000_000, le=1_000_000)  # as onvm rule add
    idle: float | None = Field(None, ge=0)  # seconds: idle timeout of the entries it installs
    hard: float | None = Field(None, ge=0)  # seconds: their hard timeout

    def to_text(self) -> str:
        """The rule in the manager's rule syntax (``onvm rule add``)."""
        m = self.match
        words = [f"priority {self.priority}"] if self.priority != DEFAULT_PRIORITY else []
        for word, value in (("in-port", m.in_port), ("vlan", m.vlan), ("", m.proto), ("src", m.src),
                            ("dst", m.dst), ("src port", m.sport), ("dst port", m.dport), ("idle", self.idle),
                            ("hard", self.hard)):
            if value is not None:
                words.append(f"{word} {value}".strip())
        return " ".join([*words, "->", "chain", self.chain])


def _rule_form(v: Any) -> str:
    return "text" if isinstance(v, str) else "spec"


#: A rule: its text as for ``onvm rule add``, or a RuleSpec mapping.
RuleItem = Annotated[Annotated[RuleText, Tag("text")] | Annotated[RuleSpec, Tag("spec")],
                     Discriminator(_rule_form)]


class Topology(_Model):
    """A whole deployment: one manager, its ports, NFs, chains and rules."""

    manager: ManagerOptions = Field(default_factory=lambda: ManagerOptions.model_validate({}))
    ports: list[PortUri] = Field(default_factory=list, max_length=MAX_PORTS)
    nfs: list[NFSpec] = Field(default_factory=list)
    chains: dict[str, list[int | str] | str] = Field(default_factory=dict)
    rules: list[RuleItem] = Field(default_factory=list)

    # Filled by load_topology after the checks that need more than one field.
    source: SkipJsonSchema[str] = ""
    port_specs: SkipJsonSchema[list[PortSpec]] = Field(default_factory=list, exclude=True)
    default_chain: SkipJsonSchema[list[Hop]] = Field(default_factory=list, exclude=True)
    named_chains: SkipJsonSchema[dict[str, str]] = Field(default_factory=dict, exclude=True)  # name -> hops

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def default_chain_text(self) -> str:
        return ",".join(str(h) for h in self.default_chain)

    def rule_texts(self) -> list[str]:
        return [r if isinstance(r, str) else r.to_text() for r in self.rules]

    def manager_config(self, overrides: Mapping[str, Any] | None = None) -> ManagerConfig:
        """The manager's whole configuration: the ``manager:`` section with ``overrides`` (flags of
        ``onvm run``) over it, and the file's ports, chains and rules."""
        options = self.manager.model_dump(include=set(ManagerOptions.model_fields), exclude_unset=True)
        base = {**options, "ports": list(self.ports),
                "default_chain": self.default_chain_text(), "chains": dict(self.named_chains),
                "rules": self.rule_texts()}
        config: ManagerConfig = from_flags(overrides or {}, ManagerConfig, base)
        return config

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


def _message(err: Any, loc: tuple[Any, ...], model_fields: list[str], model: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden" and model_fields:
        return f"unknown field (expected one of: {', '.join(model_fields)})"
    if kind in _FRIENDLY:
        return _FRIENDLY[kind]
    if len(loc) == 2 and loc[0] == "manager":  # worded as the manager's own command line words it
        return describe(err, model.model_fields["manager"].annotation.model_fields.get(loc[1]))
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _fields_at(loc: tuple[Any, ...], model: Any = None) -> list[str]:
    """The field names of the model an error location points into (for 'unknown field')."""
    model = model or Topology
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


def validate(data: Any, lines: dict[tuple[Any, ...], int], source: str,
             model: type[Topology] | None = None) -> Topology:
    """Build a Topology (or ``model``, one with more options) from loaded YAML; raises TopologyError
    listing every problem."""
    model = model or Topology
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
            add((key,), f"unknown field (expected one of: {', '.join(_fields_at((key,), model))})")
    if problems:
        raise TopologyError([p for _, p in sorted(problems)])
    try:
        topo = model.model_validate(data)
    except ValidationError as e:
        failed = []
        for err in e.errors():
            where = err["loc"]
            if where[:1] == ("rules",) and len(where) > 2:  # drop the rule's form: text or mapping
                where = where[:2] + where[3:]
            loc = _data_path(data, where)
            msg = _message(err, loc, _fields_at(loc, model), model)
            if loc[:1] == ("ports",) and len(loc) == 2 and data["ports"][loc[1]] is None:
                msg = "expected a port URI (write the null port in quotes: 'null')"
            add(loc, msg)
            failed.append(loc)
        # Go on with what is left, so the checks across sections report in this same pass.
        rest = _without(data, failed)
        try:
            if rest is None:
                raise ValueError("a whole section is unusable")
            topo = model.model_validate(rest)
        except (ValueError, ValidationError):
            raise TopologyError([p for _, p in sorted(problems, key=lambda x: x[0])]) from None
    topo.source = source

    from onvm.ports.dpdk import check_available as check_dpdk

    for i, uri in enumerate(topo.ports):
        topo.port_specs.append(parse_port(uri))
        try:
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
    if not problems:
        try:  # what only the whole manager's configuration can check (a port's queues, say)
            topo.manager_config()
        except ConfigError as e:
            add(("manager",), e.message)
    if problems:
        raise TopologyError([p for _, p in sorted(problems, key=lambda x: x[0])])
    return topo


_STAND_INS = {"ports": "null", "rules": "any to default", "nfs": {"program": "skeleton"}}


def _without(data: dict[str, Any], failed: list[tuple[Any, ...]]) -> dict[str, Any] | None:
    """The file with every value that failed taken out: a field dropped (its default applies),
    a port or a text rule replaced by one that checks nothing (``null``, ``any to default``),
    a chain by ``drop``; None when a whole section is of the wrong kind."""
    rest = copy.deepcopy(data)
    for loc in failed:
        if len(loc) < 2 or not isinstance(rest.get(loc[0]), dict | list):
            return None
        node = rest[loc[0]]
        if loc[0] == "chains":
            node[loc[1]] = "drop"
        elif isinstance(node, dict):  # manager
            node.pop(loc[1], None)
        elif isinstance(node[loc[1]], dict) and len(loc) > 2:
            node[loc[1]].pop(loc[2], None)
            if loc[0] == "nfs" and "program" not in node[loc[1]]:
                node[loc[1]]["program"] = "skeleton"
        else:
            node[loc[1]] = copy.deepcopy(_STAND_INS.get(loc[0]))
    return rest


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
    for i, (rule, text) in enumerate(zip(topo.rules, topo.rule_texts(), strict=True)):
        try:
            target = parse_rule(text).chain
        except ConfigError as e:
            add(("rules", i) if isinstance(rule, str) else ("rules", i, "match"), e.message)
            continue
        if target not in topo.chains and target != "default":
            where = ("rules", i) if isinstance(rule, str) else ("rules", i, "chain")
            add(where, f"no chain named '{target}'")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a topology file, for editors (``onvm run --schema``)."""
    schema: dict[str, Any] = Topology.model_json_schema(mode="validation")
    schema["title"] = "pyonvm topology"
    return schema


def load_topology(path: str) -> Topology:
    """Read and validate a topology file; raises TopologyError (file, line, field) or ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read topology file {path}: {e.strerror}") from None
    return loads_topology(text, path)


def loads_topology(text: str, source: str = "<string>", model: type[Topology] | None = None) -> Topology:
    """Validate a topology given as text (tests, tools)."""
    try:
        data, lines = _yaml.load(text, source)
    except _yaml.YamlError as e:
        raise TopologyError([e.message]) from None
    return validate(data, lines, source, model)
