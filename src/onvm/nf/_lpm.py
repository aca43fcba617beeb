"""Address helpers and the longest-prefix-match table, for per-packet and batch handlers."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np

from onvm import _native
from onvm.errors import ConfigError


def ip4(addr: str | int) -> int:
    """An IPv4 address ("10.0.0.1" or an integer) as an integer."""
    try:
        return int(ipaddress.IPv4Address(addr))
    except (ipaddress.AddressValueError, ValueError):
        raise ConfigError(f"{addr!r} is not an IPv4 address") from None


def ip4_str(addr: int) -> str:
    """An integer IPv4 address in dotted form."""
    return str(ipaddress.IPv4Address(int(addr)))


def mac(addr: str | bytes) -> bytes:
    """A MAC address ("02:00:00:00:00:01" or 6 bytes) as 6 bytes."""
    if isinstance(addr, bytes | bytearray) and len(addr) == 6:
        return bytes(addr)
    try:
        raw = bytes.fromhex(str(addr).replace(":", "").replace("-", ""))
    except ValueError:
        raw = b""
    if len(raw) != 6:
        raise ConfigError(f"{addr!r} is not a MAC address like 02:00:00:00:00:01")
    return raw


def prefix(text: str) -> tuple[int, int]:
    """ "10.0.0.0/8" (or a bare address: /32) as (network as integer, length)."""
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not an IPv4 prefix like 10.0.0.0/8") from None
    return int(net.network_address), net.prefixlen


class PrefixTable:
    """IPv4 longest-prefix match from prefixes to integer values (native lookups).

    >>> t = PrefixTable()
    >>> t.add("10.0.0.0/8", 1); t.add("10.1.0.0/16", 2)
    >>> t.lookup("10.1.2.3"), t.lookup("10.2.0.0"), t.lookup("11.0.0.0")
    (2, 1, -1)
    """

    def __init__(self, default: int = -1) -> None:
        self._t = _native.LPM(default)
        self._out = np.zeros(0, dtype=np.int32)

    def add(self, pfx: str, value: int) -> None:
        """Map ``pfx`` ("10.0.0.0/8") to ``value`` (>= 0); a longer prefix wins."""
        net, length = prefix(pfx)
        if value < 0:
            raise ConfigError(f"prefix {pfx}: values must be >= 0, got {value}")
        self._t.add(net, length, value)

    def lookup(self, addr: int | str) -> int:
        """The value of the longest prefix covering ``addr``, or the default."""
        return int(self._t.lookup(addr if isinstance(addr, int) else ip4(addr)))

    def lookup_many(self, addrs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Look up a uint32 array of addresses; returns int32 values (a reused buffer)."""
        n = len(addrs)
        if len(self._out) < n:
            self._out = np.zeros(max(n, 512), dtype=np.int32)
        a = np.ascontiguousarray(addrs, dtype=np.uint32)
        self._t.lookup_into(a, self._out, n)
        return self._out[:n]

    def __len__(self) -> int:
        return len(self._t)
