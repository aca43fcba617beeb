"""l2fwd: sends each packet out of its port's pair (0<->1, 2<->3, ...), rewriting MACs as DPDK's l2fwd.

Expects:   packets from ports.
Modifies:  the Ethernet header, unless --no-mac-updating: the destination becomes
           02:00:00:00:00:PP and the source 02:00:00:00:01:PP, PP the output port.
Actions:   OUT to ``in_port ^ 1``; packets not from a port (made by an NF) are dropped.
Options:   --no-mac-updating.
"""

from __future__ import annotations

import argparse

from onvm.nf import NF, from_args

SUMMARY = "port pairs 0<->1, 2<->3, ... with DPDK l2fwd's MAC rewriting"
SERVICE = 1
MAX_PORT = 15


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-mac-updating", action="store_true", help="leave the MAC addresses alone")


def make(args: argparse.Namespace) -> NF:
    nf = from_args("l2fwd", args)
    update = not args.no_mac_updating
    dst_mac = [bytes([2, 0, 0, 0, 0, p]) for p in range(MAX_PORT + 1)]
    src_mac = [bytes([2, 0, 0, 0, 1, p]) for p in range(MAX_PORT + 1)]

    @nf.packet
    def forward(pkt, meta):  # type: ignore[no-untyped-def]
        port = pkt.in_port
        if port > MAX_PORT:
            meta.drop()
            return
        out = port ^ 1
        eth = pkt.eth
        if update and eth is not None:
            eth.dst = dst_mac[out]
            eth.src = src_mac[out]
        meta.out(out)

    return nf
