"""packet_io: the manager's path to and from its OpenFlow controllers (PACKET_IN, PACKET_OUT).

Run it as service 63 (the default) next to a manager started with
``--controller``::

    python -m onvm.sdn.packet_io --name MANAGER

A flow whose actions output to CONTROLLER sends its packets into this
service: each one goes to the manager (a ``packet_in`` request with the
packet and its in-port), which sends a PACKET_IN to its controllers, and the
packet is dropped here.  A PACKET_OUT from a controller arrives here as a
message; the packet is injected once per output: out of a manager port, or
into a service (then on along the default chain).
"""

from __future__ import annotations

import argparse
import base64
import sys
from typing import Any

from onvm.constants import Action
from onvm.errors import OnvmError
from onvm.nf import NF, from_args
from onvm.sdn import CONTROLLER_SERVICE

SUMMARY = "PACKET_IN and PACKET_OUT between the datapath and OpenFlow controllers"
SERVICE = CONTROLLER_SERVICE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-len", type=int, default=65535, help="bytes of each packet sent up (default all)")


def make(args: argparse.Namespace) -> NF:
    nf = from_args("packet_io", args)
    counts = nf.state = {"in": 0, "out": 0, "lost": 0}

    @nf.packet
    def up(pkt, meta):  # type: ignore[no-untyped-def]
        data = pkt.bytes()
        try:
            assert nf._client is not None
            nf._client.packet_in(base64.b64encode(data[:args.max_len]).decode(), pkt.in_port, len(data))
            counts["in"] += 1
        except OnvmError:
            counts["lost"] += 1
        meta.drop()

    @nf.message
    def down(nf: NF, sender: Any, data: Any) -> None:
        if not isinstance(data, dict) or "packet_out" not in data:
            return
        raw = base64.b64decode(data["packet_out"])
        for action, dest in data.get("outputs", []):
            counts["out"] += nf.inject(raw, Action(action), int(dest))

    return nf


def main(argv: list[str] | None = None) -> int:
    from onvm.nfs import parser

    nf = make(parser(sys.modules[__name__], "python -m onvm.sdn.packet_io").parse_args(argv))
    nf.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
