"""bridge: sends what came in on port 0 out of port 1 and the other way round.

Expects:   packets from ports (a default chain that starts with this NF's service).
Modifies:  nothing.
Actions:   OUT to the other port of the pair.
Options:   --ports A,B (default 0,1).
"""

from __future__ import annotations

import argparse

import numpy as np

from onvm.constants import Action
from onvm.errors import ConfigError
from onvm.nf import NF, from_args

SUMMARY = "port 0 <-> port 1: a bump in the wire"
SERVICE = 1
NOWHERE = 0xFFFF


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ports", default="0,1", help="the two ports to join (default 0,1)")


def make(args: argparse.Namespace) -> NF:
    try:
        a, b = (int(x) for x in args.ports.split(","))
    except ValueError:
        raise ConfigError(f"--ports {args.ports}: expected two port numbers like 0,1") from None
    nf = from_args("bridge", args)
    other = np.full(65536, NOWHERE, dtype=np.uint16)  # in_port -> out port
    other[a], other[b] = b, a

    @nf.batch
    def cross(batch):  # type: ignore[no-untyped-def]
        batch.dest[:] = other[batch.in_port]
        batch.action[:] = Action.OUT
        batch.action[batch.dest == NOWHERE] = Action.DROP  # not from either port

    return nf
