"""The manager's configuration: one model for its command line, topology files and the environment.

Theory of operation
-------------------
:class:`ManagerConfig` (pydantic) holds every option of a manager with its
type, default, bounds, checks and help text.  Everything else is made from it:

* ``onvm manager``'s flags: :func:`add_flags` writes one flag per field
  (``ring_size`` becomes ``--ring-size``; the field's description is the
  help; lists and mappings take one item per use), and :func:`from_flags`
  validates what was given, the model's defaults filling the rest;
* a topology file: its ``manager:`` section is :class:`ManagerOptions` (every
  field but the four a topology says at its top level: ``ports``, ``chains``
  with the ``default`` chain, and ``rules``), read as it is;
* ``onvm run``'s overrides: the flags of :class:`ManagerOptions`, applied
  over the file's section;
* the JSON Schema editors use (``onvm run --schema``).

The environment is read in one place (``onvm.env``): ``ONVM_MANAGER`` names
the manager when nothing else does, ``ONVM_RUNTIME_DIR`` says where its files
live.

Adding an option: add a field to :class:`ManagerOptions` with a
``description`` (and, when its name alone does not say how it is written on
the command line, a :class:`Flag`).  The flag, the topology key and the
schema follow; ``tests/unit/test_config.py`` checks that each field reaches
all of them.

A bad value is refused naming the flag or key it came from and what was
expected; checks that involve several fields (a chain's output ports, a
port's queues and the RX workers) sit with the later field.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from onvm import env
from onvm.constants import (
    BURST_MAX,
    DEFAULT_IDLE_MS,
    MAX_INSTANCES,
    MAX_PORTS,
    MAX_SERVICES,
    MAX_WORKERS,
    RULES_DEFAULT,
    RULES_LIMIT,
    Action,
)
from onvm.errors import ConfigError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.flows.rules import check_timeouts, parse_rule
from onvm.manager.packing import PackSettings
from onvm.manager.placement import check_available, parse_cpus
from onvm.manager.services import POLICY_NAMES, AutoscaleSpec, parse_policy
from onvm.paths import validate_name
from onvm.ports.uri import PortSpec, parse_port

__all__ = ["Flag", "ManagerConfig", "ManagerOptions", "add_flags", "config_error", "from_flags"]


@dataclass(frozen=True)
class Flag:
    """How a field is written on the command line, where its name alone does not say it."""

    name: str = ""  # default: --FIELD-NAME
    metavar: str = ""
    negate: bool = False  # the field defaults to true and the flag (--no-...) turns it off


def _checked(fn: Any) -> Any:
    """A ConfigError-raising check as a pydantic validator (its message becomes the error)."""

    def check(value: Any) -> Any:
        try:
            return fn(value)
        except ConfigError as e:
            raise ValueError(e.message) from None

    return check


def _cpus(value: Any) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    cpus = parse_cpus(value)
    check_available(cpus)
    return cpus


def _hops(value: Any) -> Any:
    """A chain given as a list (YAML ``[1, 2, out:1]``) or as text; kept as canonical text."""
    if isinstance(value, list):
        value = ",".join(str(h) for h in value)
    return value


def _power_of_two(lo: int, hi: int, zero: bool = False) -> Callable[[int], int]:
    def check(n: int) -> int:
        if not (zero and n == 0) and (n < lo or n > hi or n & (n - 1)):
            raise ValueError(f"expected {'0 or ' if zero else ''}a power of two in {lo}..{hi}")
        return n

    return check


check_ring_size = _power_of_two(64, 1 << 20)  # the manager's --ring-size, and the benchmarks' that set it


def _items(sep: str, what: str) -> Any:
    """``["K=V", ...]`` (the command line's repeated flag) as a mapping; a mapping passes."""

    def convert(value: Any) -> Any:
        if not isinstance(value, list):
            return value
        out: dict[str, str] = {}
        for item in value:
            key, found, rest = str(item).partition(sep)
            if not found or not key.strip():
                raise ValueError(f"'{item}': expected {what}")
            out[key.strip()] = rest.strip()
        return out

    return convert


def _autoscale_items(value: Any) -> Any:
    if isinstance(value, list):  # "SERVICE:MIN:MAX" each
        out: dict[str, str] = {}
        for item in value:
            svc, found, bounds = str(item).partition(":")
            if not found or not svc.isdecimal():
                raise ValueError(f"'{item}': expected SERVICE:MIN:MAX, e.g. 2:1:4")
            out[svc] = bounds
        return out
    return value


def _policy(name: str) -> str:
    return POLICY_NAMES[parse_policy(name)]


CpuList = Annotated[tuple[int, ...] | None, BeforeValidator(_checked(_cpus))]
ChainText = Annotated[str, BeforeValidator(_hops),
                      AfterValidator(_checked(lambda t: format_chain(parse_chain(t))))]
PortUri = Annotated[str, AfterValidator(_checked(lambda u: parse_port(u).uri))]
RuleText = Annotated[str, AfterValidator(_checked(lambda t: parse_rule(t) and t.strip()))]
ServiceId = Annotated[int, Field(ge=0, lt=MAX_SERVICES)]


class Bounds(BaseModel):
    """How many instances the autoscaler keeps: ``{min: 1, max: 4}`` or ``"1:4"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int = Field(ge=1, le=MAX_INSTANCES)
    max: int = Field(ge=1, le=MAX_INSTANCES)

    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, str):
            lo, found, hi = value.partition(":")
            if not found or not lo.isdecimal() or not hi.isdecimal():
                raise ValueError(f"'{value}': expected MIN:MAX, e.g. 1:4")
            return {"min": int(lo), "max": int(hi)}
        return value

    @model_validator(mode="after")
    def _order(self) -> Bounds:
        if self.min > self.max:
            raise ValueError(f"expected MIN <= MAX, got {self.min}:{self.max}")
        return self


AutoscaleBounds = Annotated[Bounds, BeforeValidator(Bounds._text)]


class ManagerOptions(BaseModel):
    """Everything about a manager except its ports, chains and rules (a topology's ``manager:``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    name: str = Field(default_factory=env.manager_name,
                      description="manager name: names the region and the control socket "
                                  "(default: $ONVM_MANAGER, else onvm)")
    pool_size: int = Field(16384, ge=64, le=1 << 24, description="packet slots; keep it small, "
                           "hot slots are reused first", json_schema_extra={"unit": "slots"})
    slot_size: int = Field(2048, ge=384, le=65536, multiple_of=64, description="bytes per slot, 128 of them "
                           "headroom", json_schema_extra={"unit": "bytes"})
    ring_size: Annotated[int, AfterValidator(check_ring_size)] = Field(
        4096, description="entries per NF RX/TX ring, a power of two")
    rx_workers: int = Field(1, ge=1, le=MAX_WORKERS - 1, description="RX worker threads")
    tx_workers: int = Field(1, ge=1, le=MAX_WORKERS - 1, description="TX worker threads")
    burst: int = Field(64, ge=1, le=BURST_MAX, description="packets per worker burst")
    flow_table_size: Annotated[int, AfterValidator(_power_of_two(1, 1 << 26, zero=True))] = Field(
        65536, description="exact-match flow entries, a power of two (0: no flow table)")
    flow_idle: Annotated[float, Flag(metavar="SECONDS"),
                         AfterValidator(_checked(lambda s: check_timeouts(s, 0) or s))] = Field(
        DEFAULT_IDLE_MS / 1000, description="idle timeout in seconds of the flow entries that cache what the "
                                            "rules (or the default chain) decided, when the rule names none")
    max_rules: int = Field(RULES_DEFAULT, ge=1, le=RULES_LIMIT,
                           description="rules the manager can hold (only the rules in place take memory)")
    stats: Annotated[float, Flag(metavar="SECONDS")] = Field(
        1.0, ge=0, description="live stats interval in seconds (0: off)")
    duration: Annotated[float, Flag(metavar="SECONDS")] = Field(
        0.0, ge=0, description="stop after this many seconds (0: run until stopped)")
    exit_when_done: bool = Field(False, description="stop once every input port is exhausted and the "
                                                    "pipeline drained")
    wait: Annotated[bool, Flag(negate=True)] = Field(
        True, description="hold input ports until every service of the chains has a running NF "
                          "(--no-wait: start them at once)")
    quiet: bool = Field(False, description="no log lines, live stats or summary")
    cpus: Annotated[CpuList, Flag(metavar="LIST")] = Field(
        None, description="pin the manager and its workers to these CPUs, e.g. 0 or 0-1")
    nf_cpus: Annotated[CpuList, Flag(metavar="LIST")] = Field(
        None, description="CPUs NFs are placed on, least-loaded first (default: all allowed)")
    pin: Annotated[bool, Flag(negate=True)] = Field(
        True, description="place each NF on one CPU (--no-pin: leave NFs to the scheduler, unless an NF "
                          "asks with --cpus, which also turns packing off)")
    pack_below: Annotated[float, Flag(metavar="CPUS")] = Field(
        PackSettings.below, ge=0, lt=PackSettings.above,
        description=f"while the pipeline uses less CPU than this, run its workers and NFs on one CPU; "
                    f"spread again above {PackSettings.above:g} (0: never)")
    web: Annotated[str | None, Flag(metavar="HOST:PORT")] = Field(
        None, description="serve the dashboard, the JSON API and /metrics there (PORT alone: on "
                          "127.0.0.1)")
    controllers: Annotated[list[str], Flag("--controller", metavar="tcp|ssl:HOST:PORT")] = Field(
        default_factory=list, description="OpenFlow 1.3 controllers that program the manager (repeatable; "
                                          "needs os-ken); ssl: needs the three files below")
    private_key: Annotated[str | None, Flag(metavar="FILE")] = Field(
        None, description="for ssl: controllers, the manager's private key (PEM), as ovs-vswitchd takes it")
    certificate: Annotated[str | None, Flag(metavar="FILE")] = Field(
        None, description="for ssl: controllers, the manager's certificate (PEM)")
    ca_cert: Annotated[str | None, Flag(metavar="FILE")] = Field(
        None, description="for ssl: controllers, the CA certificate (PEM) a controller's certificate must be "
                          "signed by")
    fail_mode: Literal["secure", "standalone"] = Field(
        "secure", description="with no controller connected: keep its flows (secure) or remove them "
                              "(standalone)")
    policies: Annotated[dict[ServiceId, Annotated[str, AfterValidator(_checked(_policy))]],
                        BeforeValidator(_items("=", "SERVICE=POLICY, e.g. 2=round-robin")),
                        Flag("--policy", metavar="SERVICE=POLICY")] = Field(
        default_factory=dict, description="how a service spreads packets over its instances: hash "
                                          "(default), round-robin, least-loaded or local (repeatable)")
    autoscale: Annotated[dict[ServiceId, AutoscaleBounds], BeforeValidator(_autoscale_items),
                         Flag(metavar="SERVICE:MIN:MAX")] = Field(
        default_factory=dict, description="keep MIN to MAX instances of a service: add one while its "
                                          "rings stay a fifth full or congested, remove one when idle "
                                          "(repeatable)")
    dpdk_eal: str = Field("", max_length=4096, description="DPDK EAL options for dpdk: ports, added to "
                                                            "(or replacing) the defaults")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _checked(validate_name)(v)  # type: ignore[no-any-return]

    @field_validator("tx_workers")
    @classmethod
    def _workers(cls, v: int, info: ValidationInfo) -> int:
        if v + info.data.get("rx_workers", 1) > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers in all (RX and TX)")
        return v

    @field_validator("web", mode="before")
    @classmethod
    def _web(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if v in (None, ""):
            return None
        from onvm.web.server import parse_listen

        _checked(parse_listen)(v)
        return v

    @field_validator("controllers")
    @classmethod
    def _controllers(cls, v: list[str]) -> list[str]:
        if v:
            from onvm.sdn import check_controllers

            _checked(lambda c: check_controllers(c, "secure"))(v)
        return v

    @model_validator(mode="after")
    def _tls(self) -> Self:
        if any(c.startswith("ssl:") for c in self.controllers) or self.private_key or self.certificate \
                or self.ca_cert:
            from onvm.sdn import check_controllers

            _checked(lambda c: check_controllers(c, self.fail_mode, self.tls_files))(self.controllers)
        return self

    @property
    def tls_files(self) -> tuple[str | None, str | None, str | None]:
        """(private key, certificate, CA certificate) for ssl: controllers."""
        return self.private_key, self.certificate, self.ca_cert

    # ---- what the rest of the manager reads --------------------------------------
    @property
    def web_addr(self) -> tuple[str, int] | None:
        from onvm.web.server import parse_listen

        return parse_listen(self.web) if self.web else None

    @property
    def policy_map(self) -> dict[int, int]:
        return {svc: parse_policy(p) for svc, p in self.policies.items()}

    @property
    def autoscale_specs(self) -> list[AutoscaleSpec]:
        return [AutoscaleSpec(svc, b.min, b.max) for svc, b in self.autoscale.items()]


class ManagerConfig(ManagerOptions):
    """A whole manager: its options, ports, default and named chains, and rules."""

    ports: Annotated[list[PortUri], Flag("--port", metavar="URI")] = Field(
        default_factory=list, max_length=MAX_PORTS,
        description="a port, numbered from 0 in order: gen:..., pcap:FILE, pcap-out:FILE, null, "
                    "afpacket:IF, afxdp:IF, tap:NAME, dpdk:DEVARGS (repeatable)")
    default_chain: Annotated[ChainText, Flag(metavar="HOPS")] = Field(
        "1", description="hops for packets from ports, e.g. 1,2,out:0 (drop: drop them)")
    chains: Annotated[dict[str, ChainText], BeforeValidator(_items("=", "NAME=HOPS, e.g. web=1,2,out:0")),
                      Flag("--chain", metavar="NAME=HOPS")] = Field(
        default_factory=dict, description="a named chain made at start, e.g. web=1,2,out:0 (repeatable)")
    rules: Annotated[list[RuleText], Flag("--rule", metavar="RULE")] = Field(
        default_factory=list, description="a rule added at start, e.g. 'tcp dst port 80 -> chain web' "
                                          "(repeatable)")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise config_error(e, type(self), data) from None

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: list[str], info: ValidationInfo) -> list[str]:
        from onvm.ports.dpdk import check_available as check_dpdk

        specs = [parse_port(u) for u in v]
        _checked(check_dpdk)(specs)
        rx, slot = info.data.get("rx_workers", 1), info.data.get("slot_size", 2048)
        for pid, spec in enumerate(specs):
            queues = spec.options.get("rxq" if spec.kind == "dpdk" else "queues", 0)
            if spec.kind in ("afpacket", "afxdp", "dpdk") and queues > rx:
                raise ValueError(f"port {pid} '{spec.uri}': {queues} queues need as many RX workers "
                                 f"(--rx-workers is {rx})")
            if spec.kind == "afxdp" and slot not in (2048, 4096):
                raise ValueError(f"port {pid} '{spec.uri}': the pool's slots are the AF_XDP UMEM's chunks, "
                                 f"2048 or 4096 bytes: --slot-size {slot} will not do")
        return v

    @field_validator("default_chain", "chains")
    @classmethod
    def _outputs(cls, v: Any, info: ValidationInfo) -> Any:
        if "ports" not in info.data:
            return v  # the ports are refused already
        ports = [parse_port(u) for u in info.data["ports"]]
        for name, text in ([("", v)] if isinstance(v, str) else list(v.items())):
            if name and (name == "default" or len(name) > 23 or not name.isascii()
                         or not name.replace("-", "").replace("_", "").isalnum()):
                raise ValueError(f"chain name '{name}': 1-23 ASCII letters, digits, - or _, not 'default' "
                                 "(that is the default chain)")
            for hop in parse_chain(text):
                if hop.action == Action.OUT and (hop.dest >= len(ports) or not ports[hop.dest].is_output):
                    raise ValueError(f"{f'chain {name} {text!r}: ' if name else ''}port {hop.dest} is not an "
                                     "output port (pcap-out or null)")
        return v

    @field_validator("rules")
    @classmethod
    def _rule_chains(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if "chains" not in info.data:
            return v  # the chains are refused already
        known = {"default", *info.data["chains"]}
        for text in v:
            rule = parse_rule(text)
            if rule.chain not in known:
                raise ValueError(f"rule '{text}': no chain named '{rule.chain}'")
        return v

    @cached_property
    def port_specs(self) -> list[PortSpec]:
        return [parse_port(u) for u in self.ports]

    @cached_property
    def chain(self) -> list[Hop]:
        """The default chain's hops."""
        return parse_chain(self.default_chain)



# ---- the command line ---------------------------------------------------------------

def flag_of(name: str, info: FieldInfo) -> Flag:
    """The field's Flag, with the defaults filled in."""
    f = next((m for m in info.metadata if isinstance(m, Flag)), Flag())
    dashed = name.replace("_", "-")
    return Flag(f.name or (f"--no-{dashed}" if f.negate else f"--{dashed}"), f.metavar, f.negate)


def _repeated(info: FieldInfo) -> bool:
    return info.default_factory in (list, dict)


def _default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        return ""
    d = info.default
    if d is None or d == "" or isinstance(d, bool):
        return ""
    return f" (default {d:g})" if isinstance(d, float) else f" (default {d})"


def add_flags(parser: argparse.ArgumentParser | Any, model: type[BaseModel] = ManagerConfig) -> None:
    """One flag per field of ``model`` (see the module docstring); values stay unset unless given.

    A topology's top-level parts (ports, chains, rules) come first, then the options."""
    fields = model.model_fields
    for name in sorted(fields, key=lambda n: n in ManagerOptions.model_fields):
        info = fields[name]
        f = flag_of(name, info)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS,
                              "help": (info.description or "") + _default_text(info)}
        if info.annotation is bool:
            kw["action"] = "store_false" if f.negate else "store_true"
        elif get_origin(info.annotation) is Literal:
            kw["choices"] = get_args(info.annotation)
        else:
            kw["metavar"] = f.metavar or ("N" if info.annotation is int else name.upper())
            if _repeated(info):
                kw["action"] = "append"
        parser.add_argument(f.name, **kw)


def from_flags(args: argparse.Namespace | Mapping[str, Any], model: type[ManagerOptions] = ManagerConfig,
               base: Mapping[str, Any] | None = None) -> Any:
    """A model from the flags given (over ``base``, e.g. a topology's section); ConfigError if bad."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    data = {**(base or {}), **{k: v for k, v in given.items() if k in model.model_fields}}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise config_error(e, model, data) from None


def config_error(e: ValidationError, model: type[BaseModel], data: Mapping[str, Any]) -> ConfigError:
    """One error line naming each flag at fault, its value and what was expected."""
    out = []
    for err in e.errors():
        loc = err["loc"]
        field = str(loc[0]) if loc else ""
        info = model.model_fields.get(field)
        flag = flag_of(field, info).name if info is not None else field
        value = data.get(field, err.get("input"))
        shown = (" ".join(map(str, value)) if isinstance(value, list)
                 else "" if isinstance(value, bool) else value)
        text = describe(err, info)
        out.append(text if text.startswith(flag + " ") else  # the check named the flag itself
                   f"{flag}{f' {shown}' if shown not in ('', None) else ''}: {text}")
    return ConfigError("; ".join(out))


def describe(err: Any, info: FieldInfo | None) -> str:
    """A validation error in words: bounds as the range expected, our own checks as they said."""
    kind = err["type"]
    if info is not None and kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than",
                                     "multiple_of"):
        b = {a: getattr(m, a) for m in info.metadata for a in ("ge", "gt", "le", "lt", "multiple_of")
             if hasattr(m, a)}
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        unit = str(extra.get("unit", ""))
        lo = b.get("ge", b.get("gt"))
        hi = f"{b['le']}" if "le" in b else f"up to, not including, {b['lt']}" if "lt" in b else ""
        span = f"{lo}..{hi}" if "le" in b else f"{lo} {hi}" if hi else f"at least {lo}"
        mult = f"a multiple of {b['multiple_of']} in " if "multiple_of" in b else ""
        return f"expected {mult}{span}{' ' + unit if unit else ''}"
    if kind == "extra_forbidden":
        return "unknown option"
    return str(err["msg"]).removeprefix("Value error, ")
