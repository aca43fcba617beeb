"""simple_forward: sends every packet to one service, or on along its chain.

Expects:   any packet.
Modifies:  nothing.
Actions:   TONF to ``--dest``; NEXT when no ``--dest`` is given.
Options:   --dest SERVICE.
"""

from __future__ import annotations

import argparse

from onvm.nf import NF, from_args

SUMMARY = "forwards every packet to a service (or the next hop of its chain)"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=int, default=None,
                   help="service to forward to (default: the next hop of the chain)")


def make(args: argparse.Namespace) -> NF:
    nf = from_args("simple_forward", args)
    dest = args.dest

    @nf.batch
    def forward(b):  # type: ignore[no-untyped-def]
        if dest is None:
            b.next()
        else:
            b.tonf(dest)

    return nf
