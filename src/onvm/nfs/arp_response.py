"""arp_response: answers ARP requests for its addresses, out of the port they came in on.

Expects:   ARP requests from ports (other packets pass along the chain).
Modifies:  a matching request becomes the reply in place: the Ethernet and ARP
           sender become ``--mac`` and the asked address, the target the asker.
Actions:   OUT to the packet's input port for answered requests; NEXT for the rest.
Options:   --ip ADDR[,ADDR...] (the addresses to answer for), --mac MAC.
"""

from __future__ import annotations

import argparse

from onvm.errors import ConfigError
from onvm.nf import NF, from_args, ip4, mac

SUMMARY = "answers ARP requests for its IPv4 addresses"
SERVICE = 1
REQUEST, REPLY = 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip", required=True, help="IPv4 addresses to answer for, comma separated")
    p.add_argument("--mac", default="02:00:00:00:00:fe", help="MAC to answer with")


def make(args: argparse.Namespace) -> NF:
    ours = {ip4(a.strip()) for a in args.ip.split(",") if a.strip()}
    if not ours:
        raise ConfigError("--ip: give at least one address")
    my_mac = mac(args.mac)
    nf = from_args("arp_response", args)
    nf.state = {"answered": 0}

    @nf.packet
    def answer(pkt, meta):  # type: ignore[no-untyped-def]
        arp = pkt.arp
        if arp is None or arp.op != REQUEST or arp.tpa not in ours or pkt.in_port > 15:
            meta.next()
            return
        asker_mac, asker_ip, asked = arp.sha, arp.spa, arp.tpa
        arp.op = REPLY
        arp.tha, arp.tpa = asker_mac, asker_ip
        arp.sha, arp.spa = my_mac, asked
        eth = pkt.eth
        eth.dst, eth.src = asker_mac, my_mac
        nf.state["answered"] += 1
        meta.out(pkt.in_port)

    return nf
