"""load_generator: makes UDP packets at a set rate and measures the latency of those that come back.

Expects:   its own packets back (send them through a chain that ends at this NF's
           service, or with the default --dest, to itself).
Modifies:  nothing; it makes packets of ``--size`` bytes over ``--flows`` flows.
Actions:   new packets go TONF ``--dest`` (default: its own service) or OUT
           ``--out``; packets that come back are measured and dropped.
Options:   --rate PPS, --size BYTES, --flows N, --count N (0: until stopped),
           --dest SERVICE | --out PORT.

Latency is taken from the time the packet was made to the time it came back
(the slot's rx timestamp, set when the packet was made; a port resets it).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from onvm.constants import Action
from onvm.nf import NF, from_args
from onvm.nfs.speed_tester import udp_packet

SUMMARY = "rate-controlled packet maker that measures round-trip latency"
SERVICE = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=10000.0, help="packets per second (default 10000)")
    p.add_argument("--size", type=int, default=64, help="bytes per packet (default 64)")
    p.add_argument("--flows", type=int, default=1, help="flows (distinct UDP source ports)")
    p.add_argument("--count", type=int, default=0, help="packets to make, 0 = until stopped")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--dest", type=int, default=None, help="service to send to (default: own)")
    g.add_argument("--out", type=int, default=None, help="port to send out of")


class Latency:
    """Sent/received counts and latencies (ns) of packets that came back."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.samples: list[int] = []

    def summary(self) -> dict[str, float]:
        s = np.array(self.samples[-100_000:], dtype=np.float64) / 1000.0
        out = {"sent": float(self.sent), "received": float(self.received)}
        if len(s):
            out.update(min_us=float(s.min()), avg_us=float(s.mean()), p50_us=float(np.percentile(s, 50)),
                       p99_us=float(np.percentile(s, 99)), max_us=float(s.max()))
        return out


def make(args: argparse.Namespace) -> NF:
    nf = from_args("load_generator", args)
    lat = nf.state = Latency()
    base = bytearray(udp_packet(args.size))
    templates = []
    for f in range(max(args.flows, 1)):
        t = bytearray(base)
        t[34:36] = (1024 + f % 60000).to_bytes(2, "big")  # UDP source port
        templates.append(bytes(t))
    start = {"t": 0.0}

    @nf.setup
    def begin(nf: NF) -> None:
        start["t"] = time.monotonic()

    @nf.periodic(0.001)
    def generate(nf: NF) -> None:
        due = int((time.monotonic() - start["t"]) * args.rate)
        if args.count:
            due = min(due, args.count)
        action, dest = ((Action.OUT, args.out) if args.out is not None else
                        (Action.TONF, args.dest if args.dest is not None else nf.service))
        while lat.sent < due:
            k = min(due - lat.sent, 512)
            t = templates[lat.sent % len(templates)]
            made = nf.inject(t, action, int(dest or 0), count=k if len(templates) == 1 else 1)
            if made == 0:
                break  # the pool is empty: try again next tick
            lat.sent += made

    @nf.packet
    def back(pkt, meta):  # type: ignore[no-untyped-def]
        lat.received += 1
        lat.samples.append(time.monotonic_ns() - pkt.rx_ns)
        if len(lat.samples) > 200_000:
            del lat.samples[:100_000]
        meta.drop()

    @nf.teardown
    def report(nf: NF) -> None:
        if not nf.quiet:
            s = lat.summary()
            print("load_generator: " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()), file=sys.stderr)

    return nf
