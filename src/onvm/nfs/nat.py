"""nat: source NAT: inside hosts share one public address, told apart by a pool of ports.

Expects:   IPv4 TCP, UDP and ICMP echo; outbound packets come from the ``--inside``
           prefix, inbound ones are addressed to ``--public``.
Modifies:  outbound: source address and port become the public address and a port
           from the pool; inbound: destination address and port go back to the inside
           host's (for ICMP echo, the identifier plays the port).  Checksums follow.
Actions:   NEXT (or OUT to ``--outside-port`` / ``--inside-port`` when given) for
           translated packets; DROP for inbound packets with no mapping, other IPv4
           protocols and ICMP messages, and outbound packets when the pool is
           exhausted; packets neither inside nor addressed to us pass with NEXT.
Options:   --inside PREFIX, --public ADDR, --ports LO-HI, --timeout SECONDS
           (an idle mapping is forgotten), --inside-port N, --outside-port N.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from onvm.errors import ConfigError
from onvm.nf import NF, from_args, ip4, prefix

SUMMARY = "source NAT with a port pool, both directions"
SERVICE = 2
ECHO_REQUEST, ECHO_REPLY = 8, 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inside", default="10.0.0.0/8", help="inside prefix (default 10.0.0.0/8)")
    p.add_argument("--public", required=True, help="public IPv4 address")
    p.add_argument("--ports", default="20000-29999", help="public port pool LO-HI")
    p.add_argument("--timeout", type=float, default=60.0, help="idle seconds before a mapping goes")
    p.add_argument("--inside-port", type=int, default=None, help="port to send inbound packets out of")
    p.add_argument("--outside-port", type=int, default=None, help="port to send outbound packets out of")


class NatTable:
    """(proto, inside addr, inside port) <-> (proto, public port), with last-use times."""

    def __init__(self, lo: int, hi: int) -> None:
        if not 1 <= lo <= hi <= 65535:
            raise ConfigError(f"port pool {lo}-{hi}: expected 1 <= LO <= HI <= 65535")
        self.free: deque[int] = deque(range(lo, hi + 1))
        self.out: dict[tuple[int, int, int], int] = {}
        self.back: dict[tuple[int, int], tuple[int, int]] = {}
        self.used: dict[tuple[int, int], float] = {}
        self.exhausted = 0

    def outbound(self, proto: int, addr: int, port: int, now: float) -> int | None:
        key = (proto, addr, port)
        pub = self.out.get(key)
        if pub is None:
            if not self.free:
                self.exhausted += 1
                return None
            pub = self.free.popleft()
            self.out[key] = pub
            self.back[(proto, pub)] = (addr, port)
        self.used[(proto, pub)] = now
        return pub

    def inbound(self, proto: int, pub: int, now: float) -> tuple[int, int] | None:
        inside = self.back.get((proto, pub))
        if inside is not None:
            self.used[(proto, pub)] = now
        return inside

    def expire(self, before: float) -> int:
        old = [k for k, t in self.used.items() if t < before]
        for proto, pub in old:
            addr, port = self.back.pop((proto, pub))
            del self.out[(proto, addr, port)]
            del self.used[(proto, pub)]
            self.free.append(pub)
        return len(old)


def make(args: argparse.Namespace) -> NF:
    net, length = prefix(args.inside)
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    public = ip4(args.public)
    try:
        lo, hi = (int(x) for x in args.ports.split("-"))
    except ValueError:
        raise ConfigError(f"--ports {args.ports!r}: expected LO-HI like 20000-29999") from None
    table = NatTable(lo, hi)
    to_out = ("out", args.outside_port) if args.outside_port is not None else ("next", 0)
    to_in = ("out", args.inside_port) if args.inside_port is not None else ("next", 0)
    nf = from_args("nat", args)
    nf.state = table
    clock = time.monotonic

    def send(meta, where):  # type: ignore[no-untyped-def]
        if where[0] == "out":
            meta.out(where[1])
        else:
            meta.next()

    @nf.packet
    def translate(pkt, meta):  # type: ignore[no-untyped-def]
        ip = pkt.ipv4
        if ip is None:
            return
        src, dst = ip.src, ip.dst
        inside = (src & mask) == net
        if not inside and dst != public:
            return
        proto = ip.proto
        l4 = pkt.tcp or pkt.udp
        icmp = pkt.icmp if l4 is None else None
        if l4 is None and (icmp is None or icmp.type != (ECHO_REQUEST if inside else ECHO_REPLY)):
            meta.drop()
            return
        if inside:
            pub = table.outbound(proto, src, l4.src_port if l4 else icmp.id, clock())
            if pub is None:
                meta.drop()
                return
            ip.src = public
            if l4:
                l4.src_port = pub
            else:
                icmp.id = pub
            where = to_out
        else:
            back = table.inbound(proto, l4.dst_port if l4 else icmp.id, clock())
            if back is None:
                meta.drop()
                return
            ip.dst = back[0]
            if l4:
                l4.dst_port = back[1]
            else:
                icmp.id = back[1]
            where = to_in
        pkt.update_checksums()
        send(meta, where)

    @nf.periodic(1.0)
    def age(nf: NF) -> None:
        table.expire(clock() - args.timeout)

    return nf
