"""speed_tester: makes its own packets and loops them through a service, printing Mpps.

Expects:   nothing; it creates ``--packets`` UDP packets of ``--size`` bytes at start.
Modifies:  nothing.
Actions:   TONF to ``--dest`` (default: its own service, so packets loop through it).
Options:   --dest SERVICE, --packets N, --size BYTES, --per-packet (read each packet's
           IPv4 5-tuple in a per-packet handler instead of the batch handler).

As in OpenNetVM, point two or more speed_testers/forwarders at each other to
measure a chain: ``--dest`` of the last NF names the first one's service.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time

from onvm.constants import Action
from onvm.nf import NF, from_args

SUMMARY = "makes packets and loops them through services, printing Mpps"
SERVICE = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", type=int, default=None, help="service to send to (default: own)")
    p.add_argument("--packets", type=int, default=2048, help="packets in flight (default 2048)")
    p.add_argument("--size", type=int, default=64, help="packet size in bytes (default 64)")
    p.add_argument("--per-packet", action="store_true", help="use a per-packet handler")
    p.add_argument("--report", type=float, default=1.0, help="seconds between reports, 0 = none")


def udp_packet(size: int) -> bytes:
    """A minimal Ethernet/IPv4/UDP packet of ``size`` bytes (at least 60)."""
    size = max(size, 60)
    eth = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
    ip_len = size - 14
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 1, 0, 1]))
    s = sum(struct.unpack("!10H", ip))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
    udp = struct.pack("!HHHH", 1234, 5678, ip_len - 20, 0)
    return eth + ip + udp + bytes(size - 42)


def make(args: argparse.Namespace) -> NF:
    nf = from_args("speed_tester", args)
    state: dict[str, float] = {"last": 0, "t": time.monotonic()}
    dest = int(args.dest if args.dest is not None else args.service)

    @nf.setup
    def start(nf: NF) -> None:
        if not nf.wait_for_service(dest):
            print(f"speed_tester: service {dest} has no running NF; sending anyway",
                  file=sys.stderr)
        sent = nf.inject(udp_packet(args.size), Action.TONF, dest, count=args.packets)
        if sent < args.packets:
            print(f"speed_tester: the pool gave {sent} of {args.packets} packets", file=sys.stderr)

    if args.per_packet:

        @nf.packet
        def handle(pkt, meta):  # type: ignore[no-untyped-def]
            ip = pkt.ipv4
            if ip is not None:
                l4 = pkt.udp or pkt.tcp
                _ = (ip.src, ip.dst, ip.proto, l4.src_port if l4 else 0, l4.dst_port if l4 else 0)
            meta.tonf(dest)

    else:

        @nf.batch
        def handle_batch(b):  # type: ignore[no-untyped-def]
            b.action[:] = Action.TONF
            b.dest[:] = dest

    if args.report > 0:

        @nf.periodic(args.report)
        def report(nf: NF) -> None:
            now = time.monotonic()
            rx = nf.stats.get("rx", 0)
            mpps = (rx - state["last"]) / (now - state["t"]) / 1e6
            state["last"], state["t"] = rx, now
            print(f"speed_tester {nf.nf_id}: {mpps:.2f} Mpps", file=sys.stderr, flush=True)

    return nf
