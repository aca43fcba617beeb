"""``onvm capture``: a live pcap stream of what passes a port, an NF or a service."""

from __future__ import annotations

import argparse
import base64
import os
import struct
import sys
from typing import IO, Any

from onvm.control import ops
from onvm.errors import OnvmError

EXAMPLES = """examples:
  onvm capture --service 2 -w - | tcpdump -nr -
  onvm capture --port 0 --direction rx -c 100 -w in.pcap tcp dst port 80 src 10.0.0.0/8
  onvm capture --nf 3 --direction tx -s 96
"""


def add_parser(sub: Any, name_arg: Any) -> None:
    c = sub.add_parser(
        "capture", help="copy the packets passing a port, an NF or a service into a pcap stream",
        description="Copies (never takes) the packets at a tap point. The packet path never waits for a "
                    "capture: what it cannot take is counted as the capture's drops, shown at the end. "
                    "The filter is written as a rule without its arrow.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="a port: what it receives (rx) and sends (tx)")
    where.add_argument("--nf", type=int, help="an NF: what it is handed (rx) and what it hands on (tx)")
    where.add_argument("--service", type=int, help="every instance of a service, as --nf")
    c.add_argument("--direction", choices=["rx", "tx", "both"], default="both", help="default both")
    c.add_argument("-c", dest="count", type=int, default=0, help="stop after this many packets")
    c.add_argument("-s", dest="snaplen", type=int, default=262144,
                   help="bytes kept of each packet (default: all that a slot holds)")
    c.add_argument("-w", dest="write", metavar="FILE",
                   help="write a pcap file (nanosecond stamps); '-' for stdout. Without it: a line a packet")
    c.add_argument("filter", nargs="*", help="e.g. tcp dst port 80 src 10.0.0.0/8")
    name_arg(c)


def _summary(ts: int, data: bytes, orig: int) -> str:
    import scapy.layers.inet  # noqa: F401 - IP, TCP and UDP in the summary
    import scapy.layers.inet6  # noqa: F401
    from scapy.layers.l2 import Ether

    stamp = f"{ts // 10**9}.{ts % 10**9:09d}"
    return f"{stamp} {orig} B {Ether(data).summary()}"


def _records(blob: bytes) -> list[tuple[int, bytes, int]]:
    out, pos = [], 0
    while pos + 16 <= len(blob):
        sec, nsec, cap, orig = struct.unpack_from("<IIII", blob, pos)
        out.append((sec * 10**9 + nsec, blob[pos + 16:pos + 16 + cap], orig))
        pos += 16 + cap
    return out


def cmd_capture(args: argparse.Namespace) -> int:
    from onvm.control.capture import pcap_header, stream
    from onvm.control.client import Client

    op = ops.CaptureStart(port=args.port, nf=args.nf, service=args.service, direction=args.direction,
                          filter=" ".join(args.filter), count=args.count, snaplen=args.snaplen)
    out: IO[bytes] | None = None
    if args.write == "-":
        out = sys.stdout.buffer
    elif args.write:
        try:
            out = open(args.write, "wb")  # noqa: SIM115 - closed below, after the stream ends
        except OSError as e:
            raise OnvmError(f"-w {args.write}: cannot create ({e.strerror})", code="bad_request") from None
    end: dict[str, Any] = {}
    with Client(args.name) as client:
        started = client.call(op)
        cid = started["id"]
        try:
            if out is not None:
                out.write(pcap_header(started["snaplen"]))
                out.flush()
            for item in stream(client, cid):
                if isinstance(item, dict):
                    end = item
                    break
                if out is not None:
                    out.write(item)
                    out.flush()
                else:
                    for ts, data, orig in _records(item):
                        print(_summary(ts, data, orig), flush=True)
            else:
                print("onvm capture: the manager closed the connection", file=sys.stderr)
        except (KeyboardInterrupt, BrokenPipeError) as e:
            end = client.call(ops.CaptureStop(cid))
            while out is not None and not isinstance(e, BrokenPipeError) and (ev := client.next_event(0)):
                if ev.name == "capture" and ev.data.get("id") == cid:  # copied before it ended
                    out.write(base64.b64decode(ev.data["data"]))
            if isinstance(e, BrokenPipeError):  # the reader left: nothing more goes to it
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            if out is not None and out is not sys.stdout.buffer:
                out.close()
    if end:
        print(f"{end['captured']} packets captured\n{end['dropped']} packets dropped by the capture",
              file=sys.stderr)
    return 0


def add_trace_parser(sub: Any, name_arg: Any) -> None:
    t = sub.add_parser(
        "trace", help="follow the next packets a filter takes through every hop",
        description="trace add COUNT [FILTER]: the next COUNT packets the filter takes at RX are followed: "
                    "how they were classified, each NF's action and destination with the time since RX, "
                    "where they left or why they were dropped. trace show prints them, trace clear forgets.",
        epilog="examples:\n  onvm trace add 5 tcp dst port 80\n  onvm trace show\n  onvm trace show --json\n"
               "  onvm trace clear", formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("action", choices=["add", "show", "clear"])
    t.add_argument("words", nargs="*", metavar="COUNT [FILTER]",
                   help="add: how many packets, then the filter")
    t.add_argument("--json", action="store_true")
    name_arg(t)


def cmd_trace(args: argparse.Namespace) -> int:
    import json

    from onvm.control.client import Client
    from onvm.manager.traces import render

    if args.action == "add":
        if not args.words or not args.words[0].isdecimal():
            raise OnvmError("usage: onvm trace add COUNT [FILTER], e.g. onvm trace add 5 udp dst port 53",
                            code="bad_request")
        op: ops.Op = ops.TraceAdd(int(args.words[0]), " ".join(args.words[1:]))
    elif args.words:
        raise OnvmError(f"onvm trace {args.action} takes no arguments", code="bad_request")
    else:
        op = ops.TraceShow() if args.action == "show" else ops.TraceClear()
    with Client(args.name) as client:
        out = client.call(op)
    if args.json:
        print(json.dumps(out))
    elif args.action == "show":
        print(render(out["packets"], out))
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0
