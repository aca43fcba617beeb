"""Service chains: a short list of hops, each (action, destination).

The text form is what ``--default-chain`` takes: hops separated by commas,
where a number is a service id (TONF), ``out:N`` sends out of port N and
``drop`` drops.  ``1,2,out:0`` runs service 1, then 2, then port 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from onvm.constants import MAX_HOPS, MAX_PORTS, MAX_SERVICES, Action
from onvm.errors import ConfigError


@dataclass(frozen=True)
class Hop:
    """One hop of a chain."""

    action: Action
    dest: int = 0

    def __post_init__(self) -> None:
        if self.action == Action.NEXT:
            raise ConfigError("a chain hop cannot be NEXT: name a service, a port or drop")
        if self.action == Action.TONF and not 0 <= self.dest < MAX_SERVICES:
            raise ConfigError(f"service {self.dest} is out of range (0..{MAX_SERVICES - 1})")
        if self.action == Action.OUT and not 0 <= self.dest < MAX_PORTS:
            raise ConfigError(f"port {self.dest} is out of range (0..{MAX_PORTS - 1})")

    def __str__(self) -> str:
        if self.action == Action.TONF:
            return str(self.dest)
        if self.action == Action.OUT:
            return f"out:{self.dest}"
        return "drop"

    def as_tuple(self) -> tuple[int, int]:
        return int(self.action), self.dest


def _hop(token: str, position: int) -> Hop:
    t = token.strip().lower()
    where = f"hop {position} '{token.strip()}'"
    if t == "drop":
        return Hop(Action.DROP)
    if t.startswith("out:"):
        num = t[4:]
        if not num.isdecimal():
            raise ConfigError(f"{where}: expected out:PORT with a port number")
        try:
            return Hop(Action.OUT, int(num))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.message}") from None
    if t.isdecimal():
        try:
            return Hop(Action.TONF, int(t))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.message}") from None
    raise ConfigError(f"{where}: expected a service id, out:PORT or drop")


def parse_chain(text: str) -> list[Hop]:
    """Parse ``1,2,out:0`` into hops; errors name the bad hop."""
    if not text.strip():
        raise ConfigError("a chain needs at least one hop (for example 1,out:0)")
    tokens = text.split(",")
    if len(tokens) > MAX_HOPS:
        raise ConfigError(f"a chain has at most {MAX_HOPS} hops, got {len(tokens)}")
    hops = [_hop(tok, i + 1) for i, tok in enumerate(tokens)]
    for i, h in enumerate(hops[:-1]):
        if h.action != Action.TONF:
            raise ConfigError(f"hop {i + 1} '{h}' ends the chain but more hops follow it")
    return hops


def format_chain(hops: list[Hop]) -> str:
    return ",".join(str(h) for h in hops)
