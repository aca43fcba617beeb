"""load_balancer: spreads connections to a virtual address over backend servers (L4).

Expects:   IPv4 TCP/UDP: clients send to ``--vip`` (and ``--vport``), backends answer.
Modifies:  client packets: destination address (and port, when the backend names one)
           become the backend's; backend answers: source goes back to the VIP.
           Checksums follow.  A connection (client address, port, protocol) keeps its
           backend.
Actions:   NEXT (or OUT to ``--out``) for all; packets for neither pass unchanged.
Options:   --vip ADDR, --vport PORT (0: any), --backend ADDR[:PORT][@WEIGHT],... ,
           --policy rr|random|weighted, --seed N.
"""

from __future__ import annotations

import argparse
import itertools
import random

from onvm.errors import ConfigError
from onvm.nf import NF, from_args, ip4

SUMMARY = "L4 load balancer: round-robin, random or weighted, with address rewriting"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vip", required=True, help="virtual IPv4 address")
    p.add_argument("--vport", type=int, default=0, help="virtual port (0: any)")
    p.add_argument("--backend", required=True, action="append",
                   help="ADDR[:PORT][@WEIGHT], comma separated or repeated")
    p.add_argument("--policy", choices=("rr", "random", "weighted"), default="rr")
    p.add_argument("--seed", type=int, default=None, help="seed for random and weighted")
    p.add_argument("--out", type=int, default=None, help="port to send everything out of")


def parse_backends(specs: list[str]) -> list[tuple[int, int, float]]:
    """ "10.0.0.2:8080@3" -> (address, port or 0, weight)."""
    out = []
    for spec in (s.strip() for item in specs for s in item.split(",") if s.strip()):
        body, _, w = spec.partition("@")
        addr, _, port = body.partition(":")
        try:
            weight = float(w) if w else 1.0
            p = int(port) if port else 0
        except ValueError:
            raise ConfigError(f"backend {spec!r}: expected ADDR[:PORT][@WEIGHT]") from None
        if weight <= 0 or not 0 <= p <= 65535:
            raise ConfigError(f"backend {spec!r}: weight must be positive and the port 0..65535")
        out.append((ip4(addr), p, weight))
    if not out:
        raise ConfigError("give at least one --backend")
    return out


class Balancer:
    """Connection -> backend index, chosen by the policy on a connection's first packet."""

    def __init__(self, backends: list[tuple[int, int, float]], policy: str, seed: int | None) -> None:
        self.backends = backends
        self.rng = random.Random(seed)
        self.rr = itertools.cycle(range(len(backends)))
        self.policy = policy
        self.weights = [w for _, _, w in backends]
        self.conns: dict[tuple[int, int, int], int] = {}
        self.by_addr = {(a, p): i for i, (a, p, _) in enumerate(backends)}
        self.by_ip = {a: i for i, (a, _, _) in enumerate(backends)}

    def pick(self, conn: tuple[int, int, int]) -> int:
        i = self.conns.get(conn)
        if i is None:
            if self.policy == "rr":
                i = next(self.rr)
            elif self.policy == "random":
                i = self.rng.randrange(len(self.backends))
            else:
                i = self.rng.choices(range(len(self.backends)), weights=self.weights)[0]
            self.conns[conn] = i
        return i

    def backend_of(self, addr: int, port: int) -> int | None:
        i = self.by_addr.get((addr, port))
        return i if i is not None else self.by_addr.get((addr, 0))


def make(args: argparse.Namespace) -> NF:
    lb = Balancer(parse_backends(args.backend), args.policy, args.seed)
    vip, vport = ip4(args.vip), args.vport
    out = args.out
    nf = from_args("load_balancer", args)
    nf.state = lb

    @nf.packet
    def balance(pkt, meta):  # type: ignore[no-untyped-def]
        if out is not None:
            meta.out(out)
        ip = pkt.ipv4
        l4 = pkt.tcp or pkt.udp if ip is not None else None
        if l4 is None:
            return
        if ip.dst == vip and (not vport or l4.dst_port == vport):
            addr, port, _ = lb.backends[lb.pick((ip.src, l4.src_port, ip.proto))]
            ip.dst = addr
            if port:
                l4.dst_port = port
        elif lb.backend_of(ip.src, l4.src_port) is not None and (ip.dst, l4.dst_port, ip.proto) in lb.conns:
            ip.src = vip
            if vport:
                l4.src_port = vport
        else:
            return
        pkt.update_checksums()

    return nf
