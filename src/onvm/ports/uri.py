"""Port URIs.

==================================  ==================================================
``gen:size=64,flows=1024,rate=1M``  synthetic Ethernet/IPv4 traffic (input)
``pcap:FILE?loop=N&rate=R``         replay a classic pcap file (input)
``pcap-out:FILE?snaplen=N``         write what leaves the port (output)
``null``                            swallow what leaves the port (output)
``afpacket:IFNAME?queues=N``        a Linux interface through AF_PACKET (input and output)
``afxdp:IFNAME?queues=N&mode=auto``  a Linux interface through AF_XDP, the pool as UMEM (input and output)
``tap:NAME``                        a TAP device the manager creates (input and output)
``dpdk:DEVARGS?rxq=N``              any device DPDK drives: a NIC or a vdev (input and output)
==================================  ==================================================

``gen`` options: ``size`` (frame bytes with FCS, 64-9018, default 64), ``mix``
(``fixed``, ``http`` = the paper's 44.3% 64 B / 18.5% 65-1023 B / 37.2%
1024-1518 B, or ``imix``), ``flows`` (default 1), ``proto`` (udp or tcp),
``rate`` (packets per second; ``k``, ``M``, ``G`` suffixes; default unlimited),
``count`` (packets in all; default unlimited), ``seed``, ``src`` and ``dst`` (IPv4
addresses; flow i comes from src + i), ``sport`` (flow i uses sport + i) and ``dport``.
``pcap`` options: ``loop`` (times through the file, 0 = forever, default 1),
``rate`` (packets per second, default as fast as possible, or ``capture`` to
replay at the capture's own timing), ``speed`` (with ``rate=capture``: 2 replays
twice as fast, 0.5 at half speed), ``loss`` (1: drop like a wire when the chain is
full; default 0: without a rate the file waits for room and every packet reaches the
chain).  Classic pcap and pcapng are both read, with Ethernet, Linux cooked (SLL,
SLL2) and raw-IP (101, 228, 229) link types.
``afpacket`` options: ``queues`` (RX sockets in one fanout group; default: one
per RX worker), ``promisc`` (1/0, default 1), ``bypass`` (PACKET_QDISC_BYPASS on
TX, 1/0, default 1), ``blocks`` and ``block_size`` (the TPACKET_V3 ring).
``afxdp`` options: ``queues`` (one AF_XDP socket per RX queue 0..N-1; default: one per
RX worker), ``mode`` (``auto``: zero-copy where the driver offers it, else copy, with
the XDP program in the driver or, failing that, generic; ``zc``, ``copy``, ``skb``
force one), ``ring`` (RX and TX ring entries, a power of two, default 2048),
``fill`` (slots kept in each fill ring, at most ``ring``; default a quarter of the
pool over the queues, at most ``ring``), ``promisc`` (1/0, default 1).  The build needs libxdp and
libbpf (``apt-get install libxdp-dev libbpf-dev``).
``dpdk`` takes DPDK's own device arguments (``net_null0``,
``net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap``, ``0000:03:00.0``; the text up to
the first ``?``), then options of ours: ``rxq`` (RX queues; default one per RX
worker, as many as the device has; 0 makes an output-only port), ``txq`` (TX
queues; default one per worker), ``rxd`` and ``txd`` (descriptors per queue,
default 1024) and ``promisc`` (1/0, default 1).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from onvm.errors import ConfigError
from onvm.text import check_text

KINDS = ("gen", "pcap", "pcap-out", "null", "afpacket", "afxdp", "tap", "dpdk")
AFXDP_MODES = {"auto": 0, "zc": 1, "copy": 2, "skb": 3}
MIXES = {"fixed": 0, "http": 1, "imix": 2}
PROTOS = {"udp": 17, "tcp": 6}

MAX_RATE = 10**10  # packets a second a paced port may be asked for
_GEN_KEYS = {"size", "mix", "flows", "proto", "rate", "count", "seed", "src", "dst", "sport", "dport"}
_PCAP_KEYS = {"loop", "rate", "speed", "loss"}
_AFPACKET_KEYS = {"queues", "promisc", "bypass", "blocks", "block_size"}
_AFXDP_KEYS = {"queues", "mode", "ring", "fill", "promisc"}
AFXDP_MISSING = ("afxdp ports need a build of pyonvm with libxdp and libbpf: install their headers "
                 "(apt-get install libxdp-dev libbpf-dev, or make deps) and rebuild (pip install -e .)")
_IFNAME_BAD = set("/: \t\n?&=,")
_PCAP_OUT_KEYS = {"snaplen"}
_DPDK_KEYS = {"rxq", "txq", "rxd", "txd", "promisc"}
# A DPDK device name: a vdev (net_pcap0) or a bus address (0000:03:00.0); its arguments follow a comma.
_DPDK_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_PCI_ADDR = re.compile(r"([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")


@dataclass(frozen=True)
class PortSpec:
    """A parsed port URI: its kind, file path (pcap kinds) and options."""

    uri: str
    kind: str
    path: str = ""
    options: dict[str, int] = field(default_factory=dict)

    @property
    def is_input(self) -> bool:
        if self.kind == "dpdk":
            return self.options["rxq"] != 0
        return self.kind in ("gen", "pcap", "afpacket", "afxdp", "tap")

    @property
    def is_output(self) -> bool:
        if self.kind == "dpdk":
            return self.options["txq"] != 0
        return self.kind in ("pcap-out", "null", "afpacket", "afxdp", "tap")

    @property
    def is_pci(self) -> bool:
        """A dpdk port on a PCI device (the EAL must be allowed to use it)."""
        return self.kind == "dpdk" and _PCI_ADDR.fullmatch(self.path.partition(",")[0]) is not None


def number(text: str, lo: int, hi: int, what: str) -> int:
    """A count with an optional ``k``, ``M`` or ``G`` suffix (``2.5M``), in lo..hi;
    ``what`` names it in the error."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}
    t = text.strip().lower()
    mult = 1
    if t and t[-1] in scale:
        mult, t = scale[t[-1]], t[:-1]
    try:
        value = int(float(t) * mult) if "." in t else int(t) * mult
    except ValueError:
        raise ConfigError(f"{what} is not a number") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{what} is out of range ({lo}..{hi})")
    return value


def parse_rate(text: str) -> int:
    """A paced port's rate as an operator writes it: packets a second (``k``, ``M``, ``G``
    suffixes), or ``unpaced`` (0)."""
    return 0 if text.strip().lower() == "unpaced" else number(text, 0, MAX_RATE, f"rate {text}")


def rate_text(pps: int) -> str:
    """A paced port's rate as the manager says it: ``2000000 packets/s``, or ``unpaced`` for 0."""
    return f"{pps} packets/s" if pps else "unpaced"


def _number(uri: str, key: str, text: str, lo: int, hi: int) -> int:
    return number(text, lo, hi, f"port '{uri}': {key}={text}")


def _pairs(uri: str, text: str, sep: str, allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, text.split(sep)):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or not value:
            raise ConfigError(f"port '{uri}': '{item}' should be key=value")
        if key not in allowed:
            raise ConfigError(
                f"port '{uri}': unknown option '{key}' (expected one of {', '.join(sorted(allowed))})"
            )
        out[key] = value
    return out


def _afxdp(uri: str, name: str, query: str) -> PortSpec:
    from onvm import _native

    if not _native.HAVE_AFXDP:
        raise ConfigError(f"port '{uri}': {AFXDP_MISSING}")
    raw = _pairs(uri, query, "&", _AFXDP_KEYS)
    mode = raw.get("mode", "auto").lower()
    if mode not in AFXDP_MODES:
        raise ConfigError(f"port '{uri}': mode={mode} (expected {', '.join(AFXDP_MODES)})")
    opts = {
        "queues": _number(uri, "queues", raw.get("queues", "0"), 0, 8),
        "mode": AFXDP_MODES[mode],
        "ring": _number(uri, "ring", raw.get("ring", "2048"), 64, 16384),
        "fill": _number(uri, "fill", raw.get("fill", "0"), 0, 16384),
        "promisc": _number(uri, "promisc", raw.get("promisc", "1"), 0, 1),
    }
    if opts["ring"] & (opts["ring"] - 1):
        raise ConfigError(f"port '{uri}': ring={opts['ring']} is not a power of two")
    if opts["fill"] > opts["ring"]:
        raise ConfigError(f"port '{uri}': fill={opts['fill']} is more than the RX ring holds "
                          f"(ring={opts['ring']})")
    return PortSpec(uri, "afxdp", name, opts)


def parse_port(uri: str) -> PortSpec:
    """Parse a port URI; errors name the URI and the bad part."""
    spec = _parse_port(uri)
    check_text(uri, "port", 4096)  # what the kinds' own checks let through: it is shown, and kept
    return spec


def _parse_port(uri: str) -> PortSpec:
    kind, _, rest = uri.partition(":")
    kind = kind.strip().lower()
    if kind == "null":
        if rest:
            raise ConfigError(f"port '{uri}': null takes no options")
        return PortSpec(uri, "null")
    if kind == "gen":
        raw = _pairs(uri, rest, ",", _GEN_KEYS)
        opts: dict[str, int] = {
            "size": _number(uri, "size", raw.get("size", "64"), 64, 9018),
            "flows": _number(uri, "flows", raw.get("flows", "1"), 1, 1 << 20),
            "rate": _number(uri, "rate", raw.get("rate", "0"), 0, MAX_RATE),
            "count": _number(uri, "count", raw.get("count", "0"), 0, 1 << 62),
            "seed": _number(uri, "seed", raw.get("seed", "0"), 0, (1 << 63) - 1),
            "sport": _number(uri, "sport", raw.get("sport", "1024"), 0, 65535),
            "dport": _number(uri, "dport", raw.get("dport", "80"), 0, 65535),
        }
        for key, default in (("src", "10.0.0.1"), ("dst", "10.1.0.1")):
            try:
                opts[key] = int(ipaddress.IPv4Address(raw.get(key, default)))
            except ValueError:
                raise ConfigError(f"port '{uri}': {key}={raw[key]} is not an IPv4 address") from None
        mix = raw.get("mix", "fixed").lower()
        if mix not in MIXES:
            raise ConfigError(f"port '{uri}': mix={mix} (expected {', '.join(MIXES)})")
        proto = raw.get("proto", "udp").lower()
        if proto not in PROTOS:
            raise ConfigError(f"port '{uri}': proto={proto} (expected udp or tcp)")
        opts["mix"] = MIXES[mix]
        opts["proto"] = PROTOS[proto]
        return PortSpec(uri, "gen", "", opts)
    if kind in ("pcap", "pcap-out"):
        path, _, query = rest.partition("?")
        if not path:
            raise ConfigError(f"port '{uri}': expected {kind}:FILE")
        if kind == "pcap":
            raw = _pairs(uri, query, "&", _PCAP_KEYS)
            if not os.path.isfile(path):
                raise ConfigError(f"port '{uri}': no such file {path}")
            rate = raw.get("rate", "0")
            capture = rate.strip().lower() == "capture"
            speed = raw.get("speed", "1")
            try:
                speed_f = float(speed)
            except ValueError:
                raise ConfigError(f"port '{uri}': speed={speed} is not a number") from None
            if not 0.001 <= speed_f <= 1e6:
                raise ConfigError(f"port '{uri}': speed={speed} is out of range (0.001..1000000)")
            if "speed" in raw and not capture:
                raise ConfigError(f"port '{uri}': speed applies to rate=capture only")
            opts = {
                "loop": _number(uri, "loop", raw.get("loop", "1"), 0, 1 << 40),
                "rate": 0 if capture else _number(uri, "rate", rate, 0, MAX_RATE),
                "timing": int(capture),
                "speed_milli": round(speed_f * 1000),
                "loss": _number(uri, "loss", raw.get("loss", "0"), 0, 1),
            }
        else:
            raw = _pairs(uri, query, "&", _PCAP_OUT_KEYS)
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise ConfigError(f"port '{uri}': directory {parent} does not exist")
            opts = {"snaplen": _number(uri, "snaplen", raw.get("snaplen", "65535"), 14, 262144)}
        return PortSpec(uri, kind, path, opts)
    if kind in ("afpacket", "afxdp", "tap"):
        name, _, query = rest.partition("?")
        if not 1 <= len(name) <= 15 or set(name) & _IFNAME_BAD:
            raise ConfigError(f"port '{uri}': expected {kind}:NAME with an interface name of 1-15 "
                              "characters")
        if kind == "tap":
            if query:
                raise ConfigError(f"port '{uri}': tap takes no options")
            return PortSpec(uri, kind, name, {})
        if kind == "afxdp":
            return _afxdp(uri, name, query)
        raw = _pairs(uri, query, "&", _AFPACKET_KEYS)
        opts = {
            "queues": _number(uri, "queues", raw.get("queues", "0"), 0, 8),
            "promisc": _number(uri, "promisc", raw.get("promisc", "1"), 0, 1),
            "bypass": _number(uri, "bypass", raw.get("bypass", "1"), 0, 1),
            "blocks": _number(uri, "blocks", raw.get("blocks", "16"), 2, 4096),
            "block_size": _number(uri, "block_size", raw.get("block_size", "131072"), 4096, 1 << 26),
        }
        if opts["block_size"] & (opts["block_size"] - 1):
            raise ConfigError(f"port '{uri}': block_size={opts['block_size']} is not a power of two")
        return PortSpec(uri, kind, name, opts)
    if kind == "dpdk":
        return _parse_dpdk(uri, rest)
    raise ConfigError(f"port '{uri}': unknown kind '{kind}' (expected one of {', '.join(KINDS)})")


def _parse_dpdk(uri: str, rest: str) -> PortSpec:
    devargs, _, query = rest.partition("?")
    name = devargs.partition(",")[0]
    if not _DPDK_NAME.fullmatch(name):
        raise ConfigError(f"port '{uri}': expected dpdk:DEVICE[,ARG=VALUE...], e.g. dpdk:net_null0 or "
                          "dpdk:0000:03:00.0")
    if any(c.isspace() or not c.isprintable() for c in devargs):
        raise ConfigError(f"port '{uri}': device arguments cannot hold spaces or control characters")
    raw = _pairs(uri, query, "&", _DPDK_KEYS)
    opts = {
        # -1: as many as the manager's workers and the device allow
        "rxq": _number(uri, "rxq", raw["rxq"], 0, 8) if "rxq" in raw else -1,
        "txq": _number(uri, "txq", raw["txq"], 0, 8) if "txq" in raw else -1,
        "rxd": _number(uri, "rxd", raw.get("rxd", "0"), 0, 32768),
        "txd": _number(uri, "txd", raw.get("txd", "0"), 0, 32768),
        "promisc": _number(uri, "promisc", raw.get("promisc", "1"), 0, 1),
    }
    if opts["rxq"] == 0 and opts["txq"] == 0:
        raise ConfigError(f"port '{uri}': rxq=0 and txq=0 leave the port nothing to do")
    return PortSpec(uri, "dpdk", devargs, opts)
