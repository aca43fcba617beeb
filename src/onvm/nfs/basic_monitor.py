"""basic_monitor: summarises what passes (packets, bytes, sizes, protocols) and passes it on.

Expects:   any packet.
Modifies:  nothing.
Actions:   NEXT (the packet continues along its chain).
Options:   --interval SECONDS between summaries (default 1; 0 = only at exit).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from onvm.nf import NF, from_args

SUMMARY = "counts packets, bytes and sizes and passes them along the chain"
SERVICE = 1

SIZE_BINS = np.array([0, 65, 128, 256, 512, 1024, 1519, 1 << 31], dtype=np.int64)
SIZE_NAMES = ("<=64", "65-127", "128-255", "256-511", "512-1023", "1024-1518", ">1518")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, help="seconds between summaries")


class Monitor:
    """Counters a batch handler updates with a few numpy calls per burst."""

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.sizes = np.zeros(len(SIZE_NAMES), dtype=np.int64)
        self.flows: set[int] = set()

    def add(self, length: np.ndarray, flow_hash: np.ndarray) -> None:
        self.packets += len(length)
        self.bytes += int(length.sum())
        self.sizes += np.histogram(length, bins=SIZE_BINS)[0]
        if len(self.flows) < 1_000_000:
            self.flows.update(np.unique(flow_hash).tolist())

    def line(self) -> str:
        sizes = ", ".join(f"{n} {c}" for n, c in zip(SIZE_NAMES, self.sizes, strict=True) if c)
        return (f"{self.packets} packets, {self.bytes} bytes, ~{len(self.flows)} flows"
                + (f"; sizes: {sizes}" if sizes else ""))


def make(args: argparse.Namespace) -> NF:
    nf = from_args("basic_monitor", args)
    mon = Monitor()
    t0 = time.monotonic()

    @nf.batch
    def watch(b):  # type: ignore[no-untyped-def]
        mon.add(b.length, b.flow_hash)

    if args.interval > 0:

        @nf.periodic(args.interval)
        def report(nf: NF) -> None:
            print(f"basic_monitor {nf.nf_id} [{time.monotonic() - t0:5.1f} s]: {mon.line()}",
                  file=sys.stderr, flush=True)

    @nf.teardown
    def final(nf: NF) -> None:
        print(f"basic_monitor {nf.nf_id} total: {mon.line()}", file=sys.stderr, flush=True)

    return nf
