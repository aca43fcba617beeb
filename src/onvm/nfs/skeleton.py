"""skeleton: a template to copy: every hook, a per-packet handler that passes everything.

Expects:   any packet.
Modifies:  nothing.
Actions:   NEXT.
Options:   --verbose (print each packet's summary; slow).

Copy this file to start an NF (or let ``onvm nf new NAME`` write one, with its
test): keep the docstring's four headings up to date; ``onvm nf path/to/NAME.py``
runs it, and an installed package publishes it in the ``onvm.nfs`` entry points.
"""

from __future__ import annotations

import argparse
import sys

from onvm.nf import NF, from_args

SUMMARY = "a template NF to copy: all hooks, passes every packet on"
SERVICE = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="print a line per packet")


def make(args: argparse.Namespace) -> NF:
    nf = from_args("skeleton", args)
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
