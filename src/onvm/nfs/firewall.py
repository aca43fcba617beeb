"""firewall: passes or drops IPv4 packets by prefix rules on their source (or destination).

Expects:   any packet; rules apply to IPv4, everything else takes the default action.
Modifies:  nothing.
Actions:   per rule: DROP, NEXT ("pass"), TONF or OUT; unmatched packets take ``default``.
Options:   --rules FILE (YAML or JSON, below), or the rules themselves: --rule
           PREFIX=ACTION (repeatable, in order), --default ACTION, --match src|dst;
           --handler batch|packet (default batch).

In a topology file the rules can sit in the NF's options::

    options: {rule: [10.0.0.0/28=drop, 10.0.0.0/8=pass], default: drop}

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
    p.add_argument("--rules", help="rules file (YAML or JSON)")
    p.add_argument("--rule", action="append", default=[], metavar="PREFIX=ACTION",
                   help="a rule without a file, e.g. 10.0.0.0/8=drop (repeatable; first match wins)")
    p.add_argument("--default", default=None, metavar="ACTION",
                   help="with --rule: what unmatched packets get (default pass)")
    p.add_argument("--match", choices=("src", "dst"), default=None,
                   help="with --rule: the address the rules match (default src)")
    p.add_argument("--handler", choices=("batch", "packet"), default="batch", help="handler kind")


def rules_doc(args: argparse.Namespace) -> tuple[Any, str]:
    """The rules document (as a rules file holds it) and where it came from."""
    inline = args.rule or args.default is not None or args.match is not None
    if bool(args.rules) == bool(inline):
        raise ConfigError("firewall: give the rules in a file (--rules FILE) or as --rule "
                          "PREFIX=ACTION options, not both and not neither")
    if args.rules:
        return load_rules(args.rules), args.rules
    rules = []
    for text in args.rule:
        pfx, eq, action = text.partition("=")
        if not eq:
            raise ConfigError(f"--rule {text}: expected PREFIX=ACTION, e.g. 10.0.0.0/8=drop")
        rules.append({"prefix": pfx.strip(), "action": action.strip()})
    return {"rules": rules, "default": args.default or "pass", "match": args.match or "src"}, "--rule"


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
    rules = Rules(*rules_doc(args))
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
