"""Flow rules: a readable syntax shared by the CLI, the API and files, and a plain matcher.

A rule is a list of conditions, ``to`` (or an arrow, ``->``) and a target::

    tcp dst port 80 src 10.0.0.0/8 to chain web
    priority 50 udp dst port 53 idle 30 -> chain dns
    in-port 1 vlan 7 ip6 src 2001:db8::/32 dst port 1000-2000 to default

A shell reads the ``>`` of an unquoted arrow as a redirect, so command lines
write ``to``; a lone ``-`` where the arrow was gets an error that says so.

==========================  ===========================================================
``tcp`` ``udp`` ``icmp``    protocol (``icmp6``/``ipv6-icmp`` for ICMPv6);
``ip`` ``ip6``              IPv4 or IPv6, any protocol; ``any`` matches everything
``src P`` ``dst P``         address prefix, IPv4 or IPv6 (``/len`` optional)
``src port N[-M]``          source port or range (``sport`` also works)
``dst port N[-M]``          destination port or range (``dport`` also works)
``in-port N``               the port the packet came in on
``vlan N``                  the outer VLAN id
``priority N``              higher wins (default 100); equal priorities: older first
``idle S`` ``hard S``       timeouts (seconds) of the exact entries the rule installs
                            (without ``idle``: the manager's default, 10 s; ``idle 0``: none)
``to chain NAME``           the target chain (``to NAME``, ``-> chain NAME`` and ``-> NAME``
                            also work; ``default`` is chain 0)
==========================  ===========================================================

Errors name the bad token.  :func:`match_rules` is the plain reference the
native matcher is tested against.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from onvm import _native
from onvm.errors import ConfigError

PROTOCOLS = {"tcp": (6, 0), "udp": (17, 0), "icmp": (1, 4), "icmp6": (58, 6), "ipv6-icmp": (58, 6),
             "sctp": (132, 0), "ip": (0, 4), "ipv4": (0, 4), "ip6": (0, 6), "ipv6": (0, 6), "any": (0, 0),
             "all": (0, 0)}
ANY = 0xFFFF
DEFAULT_PRIORITY = 100
#: The longest timeout the flow table's 32-bit millisecond clock holds (23.1 days).
MAX_TIMEOUT = _native.TIMEOUT_MAX_MS // 1000


def check_timeouts(idle: float, hard: float) -> None:
    """Flow entry timeouts in seconds, within what the flow table's clock holds; ConfigError otherwise."""
    for name, value in (("idle", idle), ("hard", hard)):
        if not 0 <= value <= MAX_TIMEOUT:  # NaN fails too
            raise ConfigError(f"{name} timeout {value} s: expected 0..{MAX_TIMEOUT} s "
                              "(what the flow table's clock holds)")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class Rule:
    """One parsed rule; ``chain`` is a chain name."""

    chain: str
    priority: int = DEFAULT_PRIORITY
    proto: int = 0
    ipver: int = 0
    src: Network | None = None
    dst: Network | None = None
    sport: tuple[int, int] = (0, 65535)
    dport: tuple[int, int] = (0, 65535)
    in_port: int = ANY
    vlan: int = ANY
    idle: float | None = None  # None: the manager's default idle timeout
    hard: float = 0.0
    text: str = ""
    id: int = 0

    def to_text(self) -> str:
        """The canonical text form."""
        out: list[str] = []
        if self.priority != DEFAULT_PRIORITY:
            out.append(f"priority {self.priority}")
        if self.in_port != ANY:
            out.append(f"in-port {self.in_port}")
        if self.vlan != ANY:
            out.append(f"vlan {self.vlan}")
        name = next((k for k, v in PROTOCOLS.items() if v[0] == self.proto and self.proto), None)
        if name:
            out.append(name)
        elif self.ipver:
            out.append("ip" if self.ipver == 4 else "ip6")
        for word, net in (("src", self.src), ("dst", self.dst)):
            if net is not None:
                out.append(f"{word} {net}")
        for word, rng in (("src port", self.sport), ("dst port", self.dport)):
            if rng != (0, 65535):
                out.append(f"{word} {rng[0]}" if rng[0] == rng[1] else f"{word} {rng[0]}-{rng[1]}")
        if self.idle is not None:
            out.append(f"idle {self.idle:g}")
        if self.hard:
            out.append(f"hard {self.hard:g}")
        return " ".join([*out, "->", "chain", self.chain])

    def native(self, chain_id: int) -> tuple[Any, ...]:
        """The tuple the region's rules_apply() takes."""
        src, src_len = _packed(self.src)
        dst, dst_len = _packed(self.dst)
        idle = _native.IDLE_DEFAULT if self.idle is None else round(self.idle * 1000)
        return (self.id, self.priority, chain_id, self.in_port, self.vlan, self.proto, self.ipver,
                src, src_len, dst, dst_len, self.sport[0], self.sport[1], self.dport[0], self.dport[1],
                idle, round(self.hard * 1000))

    def match_fields(self) -> dict[str, Any]:
        """What a packet is matched on, as a capture's filter takes it (``_native/capture.c``)."""
        src, src_len = _packed(self.src)
        dst, dst_len = _packed(self.dst)
        return {"src": src, "src_len": src_len, "dst": dst, "dst_len": dst_len, "proto": self.proto,
                "ipver": self.ipver, "sport_lo": self.sport[0], "sport_hi": self.sport[1],
                "dport_lo": self.dport[0], "dport_hi": self.dport[1], "in_port": self.in_port,
                "vlan": self.vlan}


def _packed(net: Network | None) -> tuple[bytes, int]:
    """An address prefix as 16 bytes and a length (IPv4 in the first 4)."""
    if net is None:
        return bytes(16), 0
    raw = net.network_address.packed
    return raw + bytes(16 - len(raw)), net.prefixlen


class _Tokens:
    def __init__(self, text: str) -> None:
        self.text = text
        self.items = text.replace("->", " -> ").split()
        self.pos = 0

    def error(self, what: str, index: int | None = None) -> ConfigError:
        i = self.pos - 1 if index is None else index
        tok = self.items[i] if 0 <= i < len(self.items) else "end of rule"
        where = f"token {i + 1} '{tok}'" if 0 <= i < len(self.items) else "the end of the rule"
        return ConfigError(f"rule '{self.text}': {where}: {what}")

    def next(self, what: str) -> str:
        if self.pos >= len(self.items):
            self.pos += 1
            raise self.error(f"expected {what}")
        self.pos += 1
        return self.items[self.pos - 1]

    def peek(self) -> str | None:
        return self.items[self.pos] if self.pos < len(self.items) else None


def _int(t: _Tokens, what: str, lo: int, hi: int) -> int:
    tok = t.next(what)
    if not tok.isdecimal() or not lo <= int(tok) <= hi:
        raise t.error(f"expected {what} ({lo}..{hi})")
    return int(tok)


def _seconds(t: _Tokens, what: str) -> float:
    tok = t.next(what)
    try:
        value = float(tok)
    except ValueError:
        raise t.error(f"expected {what} in seconds") from None
    if not 0 <= value <= MAX_TIMEOUT:  # NaN fails too
        raise t.error(f"expected {what} in seconds (0..{MAX_TIMEOUT}, what the flow table's clock holds)")
    return value


def _range(t: _Tokens, what: str) -> tuple[int, int]:
    tok = t.next(what)
    lo, _, hi = tok.partition("-")
    if not lo.isdecimal() or (hi and not hi.isdecimal()):
        raise t.error(f"expected {what} as N or N-M")
    a, b = int(lo), int(hi or lo)
    if not (0 <= a <= b <= 65535):
        raise t.error(f"expected {what} in 0..65535 with the lower bound first")
    return a, b


def parse_rule(text: str) -> Rule:
    """Parse one rule; raises ConfigError naming the bad token."""
    t = _Tokens(text)
    rule = Rule(chain="", text=text.strip())
    seen: set[str] = set()
    proto_set = False
    while True:
        tok = t.peek()
        if tok is None:
            t.pos += 1
            raise t.error("expected 'to chain NAME' at the end")
        t.pos += 1
        word = tok.lower()
        if word in ("->", "to"):
            break
        if word == "-":
            raise t.error("a lone '-': a shell took the '>' of '->' as a redirect (and wrote the rest "
                          "into a file); write 'to chain NAME', or quote the rule")
        if word in PROTOCOLS:
            if proto_set:
                raise t.error("a rule names one protocol")
            proto_set = True
            rule.proto, ver = PROTOCOLS[word]
            if ver:
                if rule.ipver and rule.ipver != ver:
                    raise t.error(f"protocol is IPv{ver} but an address is IPv{rule.ipver}")
                rule.ipver = ver
            continue
        if word in ("src", "dst", "sport", "dport"):
            if word in ("sport", "dport") or (t.peek() or "").lower() == "port":
                if word in ("src", "dst"):
                    t.pos += 1
                key = "sport" if word in ("src", "sport") else "dport"
                if key in seen:
                    raise t.error(f"{key} given twice")
                seen.add(key)
                setattr(rule, key, _range(t, "a port"))
                continue
            if word in seen:
                raise t.error(f"{word} given twice")
            seen.add(word)
            addr = t.next("an address prefix")
            try:
                net = ipaddress.ip_network(addr, strict=False)
            except ValueError:
                raise t.error("expected an IPv4 or IPv6 address prefix") from None
            if rule.ipver and rule.ipver != net.version:
                raise t.error(f"IPv{net.version} prefix in an IPv{rule.ipver} rule")
            rule.ipver = net.version
            setattr(rule, word, net)
            continue
        if word in ("in-port", "in_port", "inport"):
            rule.in_port = _int(t, "a port number", 0, 65534)
            continue
        if word == "vlan":
            rule.vlan = _int(t, "a VLAN id", 0, 4095)
            continue
        if word == "priority":
            tok2 = t.next("a priority")
            try:
                rule.priority = int(tok2)
            except ValueError:
                raise t.error("expected a priority (an integer)") from None
            if not -1_000_000 <= rule.priority <= 1_000_000:
                raise t.error("priority must be within -1000000..1000000")
            continue
        if word in ("idle", "hard"):
            setattr(rule, word, _seconds(t, f"an {word} timeout" if word == "idle" else "a hard timeout"))
            continue
        raise t.error("unknown word (expected a protocol, src, dst, src port, dst port, in-port, vlan, "
                      "priority, idle, hard or 'to')")
    target = t.next("a chain name")
    if target.lower() == "chain":
        target = t.next("a chain name")
    if not target.replace("-", "").replace("_", "").isalnum():
        raise t.error("expected a chain name (letters, digits, - and _)")
    if t.peek() is not None:
        t.pos += 1
        raise t.error("unexpected text after the target")
    rule.chain = target
    return rule


def parse_filter(text: str) -> Rule:
    """A packet filter in the rule syntax without the arrow (``tcp dst port 80 src 10.0.0.0/8``;
    empty: every packet).  Priorities and timeouts have no meaning there and are refused."""
    words = text.lower().replace("->", " -> ").split()
    for bad in ("->", "priority", "idle", "hard"):
        if bad in words:
            raise ConfigError(f"filter '{text}': '{bad}' has no place in a filter (only what a packet is "
                              "matched on)")
    if not words or words in (["any"], ["all"]):
        return Rule(chain="", text=text.strip())
    try:
        rule = parse_rule(f"{text} -> default")
    except ConfigError as e:
        raise ConfigError(e.message.replace("rule '", "filter '").replace(" -> default'", "'", 1)) from None
    rule.text = text.strip()
    return rule


def parse_rules(lines: Iterable[str], first_line: int = 1) -> list[Rule]:
    """Parse rules, one per line (the first is line ``first_line`` of its file); blank lines
    and ``#`` comments are skipped."""
    out = []
    for n, line in enumerate(lines, first_line):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                out.append(parse_rule(text))
            except ConfigError as e:
                raise ConfigError(f"line {n}: {e.message}") from None
    return out


# ---- the reference matcher ------------------------------------------------------


@dataclass(frozen=True)
class PacketFields:
    """What rules look at in a packet."""

    ipver: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int
    in_port: int
    vlan: int | None = None


def rule_mismatch(rule: Rule, p: PacketFields) -> str | None:
    """Why ``rule`` does not take the packet (the first condition it fails), None when it does."""
    if rule.in_port != ANY and rule.in_port != p.in_port:
        return f"in-port {rule.in_port}, not {p.in_port}"
    if rule.vlan != ANY and rule.vlan != p.vlan:
        return f"vlan {rule.vlan}, not {'untagged' if p.vlan is None else p.vlan}"
    if rule.ipver and rule.ipver != p.ipver:
        return f"IPv{rule.ipver}, not IPv{p.ipver}"
    if rule.proto and rule.proto != p.proto:
        return f"protocol {rule.proto}, not {p.proto}"
    for word, net, raw in (("src", rule.src, p.src), ("dst", rule.dst, p.dst)):
        if net is not None and (net.version != p.ipver or ipaddress.ip_address(raw) not in net):
            return f"{word} {net}, not {ipaddress.ip_address(raw)}"
    for word, (lo, hi), port in (("src port", rule.sport, p.sport), ("dst port", rule.dport, p.dport)):
        if not lo <= port <= hi:
            return f"{word} {lo if lo == hi else f'{lo}-{hi}'}, not {port}"
    return None


def rule_matches(rule: Rule, p: PacketFields) -> bool:
    return rule_mismatch(rule, p) is None


def ordered(rules: Sequence[Rule]) -> list[Rule]:
    """Rules in the order they are tried: priority high to low, then oldest first."""
    return sorted(rules, key=lambda r: (-r.priority, r.id))


def match_rules(rules: Sequence[Rule], p: PacketFields) -> Rule | None:
    """The rule a packet takes, or None (default chain)."""
    return next((r for r in ordered(rules) if rule_matches(r, p)), None)
