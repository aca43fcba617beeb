"""Flow keys: the exact 5-tuple plus in-port and outer VLAN that the flow table matches on."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from onvm.errors import ConfigError

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6", 132: "sctp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}


@dataclass(frozen=True)
class FlowKey:
    """One direction of a flow.  Addresses are ipaddress objects of one version."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    proto: int
    sport: int = 0
    dport: int = 0
    in_port: int = 0
    vlan: int | None = None  # the outer VLAN id; None: untagged

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ConfigError(f"flow {self}: source and destination are of different IP versions")
        for name, value, hi in (("proto", self.proto, 255), ("sport", self.sport, 65535),
                                ("dport", self.dport, 65535), ("in_port", self.in_port, 65535),
                                ("vlan", 0 if self.vlan is None else self.vlan, 4095)):
            if not 0 <= value <= hi:
                raise ConfigError(f"flow key {name}={value} is out of range (0..{hi})")

    @classmethod
    def of(cls, src: Any, dst: Any, proto: int | str, sport: int = 0, dport: int = 0,
           in_port: int = 0, vlan: int | None = None) -> FlowKey:
        """Build a key from strings, integers or address objects; ``proto`` may be a name."""
        if isinstance(proto, str):
            if proto.lower() not in PROTO_NUMBERS and not proto.isdecimal():
                raise ConfigError(f"unknown protocol '{proto}'")
            proto = PROTO_NUMBERS.get(proto.lower()) or int(proto)
        try:
            return cls(ipaddress.ip_address(src), ipaddress.ip_address(dst), int(proto), int(sport),
                       int(dport), int(in_port), None if vlan is None else int(vlan))
        except ValueError as e:
            raise ConfigError(f"bad flow key: {e}") from None

    @classmethod
    def parse(cls, text: str) -> FlowKey:
        """``SRC[:SPORT] DST[:DPORT] PROTO [in-port N] [vlan N]``, e.g. ``10.0.0.1:1234 10.0.0.2:80 tcp``.

        IPv6 addresses with a port are written ``[2001:db8::1]:80``.  Without
        ``vlan`` the key is that of untagged packets."""
        parts = text.split()
        opts: dict[str, int] = {}
        while len(parts) >= 5 and parts[-2] in ("in-port", "in_port", "vlan"):
            name = "vlan" if parts[-2] == "vlan" else "in_port"
            if name in opts:
                break
            opts[name] = int(parts[-1]) if parts[-1].isdecimal() else -1
            parts = parts[:-2]
        if len(parts) != 3:
            raise ConfigError(f"flow '{text}': expected SRC[:PORT] DST[:PORT] PROTO [in-port N] [vlan N]")

        def host_port(tok: str) -> tuple[str, int]:
            if tok.startswith("["):
                host, _, rest = tok[1:].partition("]")
                return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdecimal() else 0
            if tok.count(":") == 1:
                host, port = tok.split(":")
                if not port.isdecimal():
                    raise ConfigError(f"flow '{text}': bad port in '{tok}'")
                return host, int(port)
            return tok, 0

        (s, sp), (d, dp) = host_port(parts[0]), host_port(parts[1])
        return cls.of(s, d, parts[2], sp, dp, opts.get("in_port", 0), opts.get("vlan"))

    def native(self) -> tuple[int, bytes, bytes, int, int, int, int, int]:
        """The tuple the region's flow methods take (the VLAN as 1 + its id, 0 untagged)."""
        return (self.src.version, self.src.packed, self.dst.packed, self.proto, self.sport, self.dport,
                self.in_port, 0 if self.vlan is None else self.vlan + 1)

    @classmethod
    def from_native(cls, t: tuple[Any, ...]) -> FlowKey:
        vlan = t[7] - 1 if len(t) > 7 and t[7] else None
        return cls(ipaddress.ip_address(t[1]), ipaddress.ip_address(t[2]), t[3], t[4], t[5], t[6], vlan)

    def reverse(self) -> FlowKey:
        """The other direction (same in-port and VLAN)."""
        return FlowKey(self.dst, self.src, self.proto, self.dport, self.sport, self.in_port, self.vlan)

    def __str__(self) -> str:
        def hp(a: Any, p: int) -> str:
            host = f"[{a}]" if a.version == 6 and p else str(a)
            return f"{host}:{p}" if p else host

        name = PROTO_NAMES.get(self.proto, str(self.proto))
        tail = (f" in-port {self.in_port}" if self.in_port else "") + (
            f" vlan {self.vlan}" if self.vlan is not None else "")
        return f"{hp(self.src, self.sport)} {hp(self.dst, self.dport)} {name}{tail}"
