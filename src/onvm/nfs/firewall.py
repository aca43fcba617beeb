"""firewall: passes or drops IPv4 packets by prefix rules on their source (or destination).

Expects:   any packet; rules apply to IPv4, everything else takes the default action.
Modifies:  nothing.
Actions:   per rule: DROP, NEXT ("pass"), TONF or OUT; unmatched packets take ``default``.
Options:   --rules FILE (YAML or JSON, below), --handler batch|packet (default batch).

The rules file::

    match: src            # src (default) or dst address
    default: drop         # drop, pass, tonf:SERVICE or out:PORT (default pass)
    rules:                # first match wins
      - {prefix: 10.0.0.0/8, action: pass}
      - {prefix: 10.6.0.0/16, action: drop}   # never hit: 10.0.0.0/8 comes first

First match wins, yet lookups are a longest-prefix match in native code: prefixes
are nested or disjoint, so each prefix is stored with the first rule among those
covering it, and the longest prefix matching an address carries the first rule
matching it.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from onvm.errors import ConfigError
from onvm.nf import NF, PrefixTable, from_args, prefix
from onvm.nfs._rules import load_rules, target

SUMMARY = "drops or passes IPv4 packets by prefix rules (first match wins)"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rules", required=True, help="rules file (YAML or JSON)")
    p.add_argument("--handler", choices=("batch", "packet"), default="batch", help="handler kind")


class Rules:
    """The compiled rules: a prefix table to rule index, and actions by index."""

    def __init__(self, doc: Any, where: str = "rules") -> None:
        if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
            raise ConfigError(f"{where}: expected a mapping with a 'rules' list")
        self.match = str(doc.get("match", "src"))
        if self.match not in ("src", "dst"):
            raise ConfigError(f"{where}: match must be src or dst, not {self.match!r}")
        rules = doc.get("rules") or []
        nets, lens = [], []
        acts, dests = [], []
        for i, r in enumerate(rules):
            if not isinstance(r, dict) or "prefix" not in r:
                raise ConfigError(f"{where}: rule {i + 1} needs a prefix")
            net, length = prefix(str(r["prefix"]))
            a, d = target(r.get("action", "drop"), f"{where}: rule {i + 1}")
            nets.append(net)
            lens.append(length)
            acts.append(a)
            dests.append(d)
        a, d = target(doc.get("default", "pass"), f"{where}: default")
        acts.append(a)  # the default is the last entry: index -1
        dests.append(d)
        self.actions = np.array(acts, dtype=np.uint8)
        self.dests = np.array(dests, dtype=np.uint16)
        self.table = PrefixTable()
        n = len(nets)
        if n:
            net_a = np.array(nets, dtype=np.uint64)
            len_a = np.array(lens, dtype=np.uint64)
            masks = (0xFFFFFFFF << (32 - len_a)) & 0xFFFFFFFF
            for i in range(n):
                # rules whose prefix covers rule i's prefix: the first of them wins there
                covers = (len_a <= len_a[i]) & ((net_a[i] & masks) == net_a)
                first = int(np.argmax(covers))  # rule i covers itself, so one is true
                self.table._t.add(int(net_a[i]), int(len_a[i]), first)
        self.count = n

    def verdict(self, addr: int) -> int:
        """Index into actions/dests for one address (-1: the default)."""
        return self.table.lookup(addr)


def make(args: argparse.Namespace) -> NF:
    rules = Rules(load_rules(args.rules), args.rules)
    nf = from_args("firewall", args)
    nf.state = rules
    acts, dests = rules.actions, rules.dests
    default_a, default_d = int(acts[-1]), int(dests[-1])
    use_dst = rules.match == "dst"
    table = rules.table
    lookup = table._t.lookup

    if args.handler == "packet":
        acts_l, dests_l = acts.tolist(), dests.tolist()

        @nf.packet
        def handle(pkt, meta):  # type: ignore[no-untyped-def]
            ip = pkt.ipv4
            if ip is None:
                meta.action, meta.dest = default_a, default_d
                return
            i = lookup(ip.dst if use_dst else ip.src)
            meta.action, meta.dest = acts_l[i], dests_l[i]

    else:
        field = "ipv4_dst" if use_dst else "ipv4_src"

        @nf.batch(fields=[field, "l3_type"])
        def handle_batch(b):  # type: ignore[no-untyped-def]
            idx = table.lookup_many(getattr(b, field))
            idx[b.l3_type != 1] = -1
            b.action[:] = acts[idx]
            b.dest[:] = dests[idx]

    return nf
