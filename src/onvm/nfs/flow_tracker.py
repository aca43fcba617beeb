"""flow_tracker: counts packets and bytes per IPv4 5-tuple and prints the busiest flows.

Expects:   any packet (non-IPv4 packets are counted apart).
Modifies:  nothing.
Actions:   NEXT.
Options:   --interval SECONDS between reports (0: only at exit), --top N flows to show,
           --timeout SECONDS (flows idle that long are forgotten, 0: never).

Per burst, the native loop gathers the 5-tuple fields into arrays; numpy groups
the burst by flow, so Python touches each flow once per burst, not each packet.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from onvm.nf import NF, from_args, ip4_str

SUMMARY = "per-flow packet and byte counts, busiest flows reported"
SERVICE = 2
FIELDS = ["l3_type", "ipv4_src", "ipv4_dst", "proto", "src_port", "dst_port"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=0.0, help="seconds between reports (0: at exit)")
    p.add_argument("--top", type=int, default=10, help="flows to show")
    p.add_argument("--timeout", type=float, default=0.0, help="forget flows idle this long (0: never)")


Key = tuple[int, int, int, int, int]


class FlowTable:
    """(src, dst, proto, sport, dport) -> [packets, bytes, last seen]."""

    def __init__(self) -> None:
        self.flows: dict[Key, list[float]] = {}
        self.other = 0

    def add_burst(self, src: np.ndarray, dst: np.ndarray, proto: np.ndarray, sport: np.ndarray,
                  dport: np.ndarray, length: np.ndarray, now: float) -> None:
        addrs = src.astype(np.uint64) << 32 | dst
        rest = proto.astype(np.uint64) << 32 | sport.astype(np.uint64) << 16 | dport
        keys = np.stack((addrs, rest), axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        pk = np.bincount(inv, minlength=len(uniq))
        by = np.bincount(inv, weights=length, minlength=len(uniq))
        for (a, b), p, n in zip(uniq.tolist(), pk.tolist(), by.tolist(), strict=True):
            k = (a >> 32, a & 0xFFFFFFFF, b >> 32, (b >> 16) & 0xFFFF, b & 0xFFFF)
            e = self.flows.get(k)
            if e is None:
                self.flows[k] = [p, n, now]
            else:
                e[0] += p
                e[1] += n
                e[2] = now

    def expire(self, before: float) -> None:
        for k in [k for k, e in self.flows.items() if e[2] < before]:
            del self.flows[k]

    def report(self, top: int) -> str:
        best = sorted(self.flows.items(), key=lambda kv: -kv[1][1])[:top]
        lines = [f"{len(self.flows)} flows, {self.other} non-IPv4 packets"]
        for (s, d, pr, sp, dp), (p, n, _) in best:
            lines.append(f"  {ip4_str(s)}:{sp} -> {ip4_str(d)}:{dp} proto {pr}: "
                         f"{int(p)} packets, {int(n)} bytes")
        return "\n".join(lines)


def make(args: argparse.Namespace) -> NF:
    nf = from_args("flow_tracker", args)
    table = nf.state = FlowTable()
    clock = time.monotonic

    @nf.batch(fields=FIELDS)
    def track(b):  # type: ignore[no-untyped-def]
        ip = b.l3_type == 1
        if not ip.all():
            table.other += int(b.n - ip.sum())
            if not ip.any():
                return
        table.add_burst(b.ipv4_src[ip], b.ipv4_dst[ip], b.proto[ip], b.src_port[ip], b.dst_port[ip],
                        b.length[ip], clock())

    if args.interval > 0 or args.timeout > 0:

        @nf.periodic(args.interval if args.interval > 0 else args.timeout)
        def tick(nf: NF) -> None:
            if args.timeout > 0:
                table.expire(clock() - args.timeout)
            if args.interval > 0:
                print(f"flow_tracker {nf.nf_id}: {table.report(args.top)}", file=sys.stderr, flush=True)

    @nf.teardown
    def final(nf: NF) -> None:
        if not nf.quiet:
            print(f"flow_tracker {nf.nf_id} total: {table.report(args.top)}", file=sys.stderr)

    return nf
