"""router: routes IPv4 packets by longest-prefix match on their destination.

Expects:   IPv4 packets; others take ``default``.
Modifies:  the IPv4 TTL (decremented) and header checksum, unless --no-ttl.
Actions:   per route TONF or OUT (or DROP); packets whose TTL runs out are dropped;
           unmatched packets take ``default`` (drop unless set).
Options:   --routes FILE (YAML or JSON, below), --no-ttl.

The routes file::

    default: drop
    routes:
      - {prefix: 10.0.0.0/8, to: out:1}
      - {prefix: 10.1.0.0/16, to: tonf:3}     # longer prefixes win
"""

from __future__ import annotations

import argparse

from onvm.errors import ConfigError
from onvm.nf import NF, PrefixTable, from_args
from onvm.nfs._rules import load_rules, target

SUMMARY = "longest-prefix-match routing of IPv4 to services or ports"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--routes", required=True, help="routes file (YAML or JSON)")
    p.add_argument("--no-ttl", action="store_true", help="do not decrement the TTL")


def make(args: argparse.Namespace) -> NF:
    doc = load_rules(args.routes)
    if not isinstance(doc, dict) or not isinstance(doc.get("routes"), list):
        raise ConfigError(f"{args.routes}: expected a mapping with a 'routes' list")
    table = PrefixTable()
    hops: list[tuple[int, int]] = []
    for i, r in enumerate(doc["routes"]):
        if not isinstance(r, dict) or "prefix" not in r or "to" not in r:
            raise ConfigError(f"{args.routes}: route {i + 1} needs a prefix and a 'to'")
        a, d = target(r["to"], f"{args.routes}: route {i + 1}")
        table.add(str(r["prefix"]), len(hops))
        hops.append((int(a), d))
    a, d = target(doc.get("default", "drop"), f"{args.routes}: default")
    hops.append((int(a), d))  # index -1
    nf = from_args("router", args)
    nf.state = table
    lookup = table._t.lookup
    ttl = not args.no_ttl

    @nf.packet
    def route(pkt, meta):  # type: ignore[no-untyped-def]
        ip = pkt.ipv4
        if ip is None:
            meta.action, meta.dest = hops[-1]
            return
        if ttl:
            t = ip.ttl
            if t <= 1:
                meta.drop()
                return
            ip.ttl = t - 1
            pkt.update_checksums(l4=False)
        meta.action, meta.dest = hops[lookup(ip.dst)]

    return nf
