"""skeleton: a template to copy: every hook, a per-packet handler that passes everything.

Expects:   any packet.
Modifies:  nothing.
Actions:   NEXT.
Options:   --verbose (print each packet's summary; slow).

Copy this file to start an NF: keep the docstring's four headings up to date,
register the name in onvm/nfs/__init__.py NAMES and it runs as ``onvm nf NAME``.
"""

from __future__ import annotations

import argparse
import sys

from onvm.nf import NF
from onvm.nf._nf import nf_from_args

SUMMARY = "a template NF to copy: all hooks, passes every packet on"
SERVICE = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="print a line per packet")


def make(args: argparse.Namespace) -> NF:
    nf = nf_from_args("skeleton", args)
    nf.state = {"packets": 0}
    verbose = args.verbose

    @nf.setup
    def setup(nf: NF) -> None:
        pass  # load tables, inject packets, wait for services...

    @nf.packet
    def handle(pkt, meta):  # type: ignore[no-untyped-def]
        nf.state["packets"] += 1
        if verbose:
            print(pkt.to_scapy().summary(), file=sys.stderr)
        meta.next()

    @nf.periodic(1.0)
    def tick(nf: NF) -> None:
        pass  # age tables, print stats...

    @nf.teardown
    def teardown(nf: NF) -> None:
        if not nf.quiet:
            print(f"skeleton: {nf.state['packets']} packets", file=sys.stderr)

    return nf
