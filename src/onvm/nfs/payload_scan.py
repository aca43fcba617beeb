"""payload_scan: looks for a byte string in each packet's payload and drops (or counts) the hits.

Expects:   any packet (the payload is what follows the last header found).
Modifies:  nothing.
Actions:   DROP for payloads containing the pattern (``--action drop``), else NEXT;
           ``--action count`` passes everything and only counts.
Options:   --pattern TEXT or --hex HEX, --action drop|count, --ignore-case.
"""

from __future__ import annotations

import argparse
import sys

from onvm.errors import ConfigError
from onvm.nf import NF, from_args

SUMMARY = "drops or counts packets whose payload contains a pattern"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--pattern", help="text to look for")
    g.add_argument("--hex", help="bytes to look for, in hex")
    p.add_argument("--action", choices=("drop", "count"), default="drop")
    p.add_argument("--ignore-case", action="store_true", help="ASCII case-insensitive match")


def make(args: argparse.Namespace) -> NF:
    try:
        pattern = args.pattern.encode() if args.pattern is not None else bytes.fromhex(args.hex)
    except ValueError:
        raise ConfigError(f"--hex {args.hex!r} is not hex") from None
    if not pattern:
        raise ConfigError("the pattern is empty")
    fold = args.ignore_case
    if fold:
        pattern = pattern.lower()
    drop = args.action == "drop"
    nf = from_args("payload_scan", args)
    counts = nf.state = {"scanned": 0, "hits": 0}

    @nf.packet
    def scan(pkt, meta):  # type: ignore[no-untyped-def]
        counts["scanned"] += 1
        data = bytes(pkt.payload)
        if (data.lower() if fold else data).find(pattern) >= 0:
            counts["hits"] += 1
            if drop:
                meta.drop()

    @nf.teardown
    def report(nf: NF) -> None:
        if not nf.quiet:
            print(f"payload_scan: {counts['hits']} of {counts['scanned']} packets matched",
                  file=sys.stderr)

    return nf
