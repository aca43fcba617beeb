"""The ``onvm`` command: manager, nf, status, stop, bench."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from onvm.errors import OnvmError

EPILOG = """examples:
  onvm manager --port gen:size=64,flows=64 --port null --default-chain 1,out:1
  onvm nf simple_forward --service 1 --dest 2
  onvm nf --list
  onvm status --json
  onvm top
  onvm manager --port gen:rate=100k --port null --default-chain 1,out:1 --web 127.0.0.1:8080
  onvm bench loop --seconds 5 --json
  onvm stop
"""


def _manager_parser(sub: Any) -> None:
    p = sub.add_parser("manager", help="run an NF manager",
                       description="Run an NF manager: shared region, ports, workers, control socket.")
    p.add_argument("--name", default="onvm", help="manager name (default onvm)")
    p.add_argument("--port", action="append", default=[], metavar="URI",
                   help="a port: gen:..., pcap:FILE, pcap-out:FILE, null (repeatable; ids from 0)")
    p.add_argument("--default-chain", default="1", metavar="SPEC",
                   help="hops for packets from ports, e.g. 1,2,out:0 (default: 1)")
    p.add_argument("--pool-size", type=int, default=16384, help="packet slots (default 16384)")
    p.add_argument("--slot-size", type=int, default=2048, help="bytes per slot (default 2048)")
    p.add_argument("--ring-size", type=int, default=4096, help="entries per NF ring (default 4096)")
    p.add_argument("--rx-workers", type=int, default=1, help="RX worker threads (default 1)")
    p.add_argument("--tx-workers", type=int, default=1, help="TX worker threads (default 1)")
    p.add_argument("--burst", type=int, default=64, help="worker burst size (default 64)")
    p.add_argument("--stats", type=float, default=1.0, metavar="SECONDS",
                   help="live stats interval, 0 = off (default 1)")
    p.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                   help="stop after this long (default: run until stopped)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="stop once every input port is exhausted and the pipeline drained")
    p.add_argument("--no-wait", action="store_true",
                   help="start input ports at once, not when the default chain's services run")
    p.add_argument("--quiet", action="store_true", help="no log lines, stats or summary")
    p.add_argument("--web", default="", metavar="HOST:PORT",
                   help="serve the dashboard, JSON API and /metrics there (HOST defaults to 127.0.0.1)")


def cmd_manager(args: argparse.Namespace) -> int:
    from onvm.manager.manager import Manager, ManagerConfig

    cfg = ManagerConfig(
        name=args.name, ports=args.port, default_chain=args.default_chain,
        pool_size=args.pool_size, slot_size=args.slot_size, ring_size=args.ring_size,
        rx_workers=args.rx_workers, tx_workers=args.tx_workers, burst=args.burst,
        stats_interval=0 if args.quiet else args.stats, duration=args.duration,
        exit_when_done=args.exit_when_done, wait_for_chain=not args.no_wait, quiet=args.quiet,
        web=args.web,
    )
    mgr = Manager(cfg)
    mgr.start()
    return mgr.run()


def cmd_nf(argv: list[str]) -> int:
    from onvm import nfs
    from onvm.nf._nf import add_common_arguments

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: onvm nf NAME [--name MANAGER] [--service S] [NF options]\n"
              "       onvm nf --list\n\nrun 'onvm nf --list' to see the NFs")
        return 0
    if argv[0] == "--list":
        for name in nfs.NAMES:
            print(f"{name:<16} {nfs.load(name).SUMMARY}")
        return 0
    try:
        mod = nfs.load(argv[0])
    except KeyError:
        raise OnvmError(f"no NF named '{argv[0]}' (see 'onvm nf --list')", code="not_found") from None
    p = argparse.ArgumentParser(prog=f"onvm nf {argv[0]}", description=mod.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, service=mod.SERVICE)
    mod.add_arguments(p)
    args = p.parse_args(argv[1:])
    nf = mod.make(args)
    nf.run()
    return 0


def _print_status(st: dict[str, Any]) -> None:
    m, pool = st["manager"], st["pool"]
    print(f"manager {m['name']} (pid {m['pid']}), up {m['uptime']:.1f} s, region {m['region']}")
    print(f"default chain {m['default_chain']}; pool {pool['free']}/{pool['total']} slots free")
    print("ports:")
    for p in st["ports"]:
        drops = sum(p["drops"].values())
        print(f"  {p['id']:<3} {p['uri']:<40} rx {p['rx']:<12} tx {p['tx']:<12} drops {drops}"
              + ("  done" if p["done"] else "") + (f"  error: {p['error']}" if p["error"] else ""))
    print("NFs:")
    if not st["nfs"]:
        print("  (none)")
    for n in st["nfs"]:
        drops = sum(n["drops"].values())
        print(f"  {n['id']:<3} {n['name']:<16} svc {n['service']}.{n['instance']:<3} {n['state']:<9}"
              f" pid {n['pid']:<8} rx {n['rx']:<12} tx {n['tx']:<12} drops {drops}")
    _print_latency(st)


def _print_latency(st: dict[str, Any]) -> None:
    rows = [(f"NF {n['id']} {n['name']}", n.get("latency")) for n in st["nfs"]]
    rows += [(f"port {p['id']} (end to end)", p.get("latency")) for p in st["ports"]]
    rows = [(what, lat) for what, lat in rows if lat and lat["count"]]
    if not rows:
        return
    print("latency since start (us):")
    for what, lat in rows:
        print(f"  {what:<26} p50 {lat['p50_us']:<10.1f} p99 {lat['p99_us']:<10.1f} "
              f"max {lat['max_us']:<10.1f} mean {lat['mean_us']:<10.1f} packets {lat['count']}")


def cmd_status(args: argparse.Namespace) -> int:
    from onvm.control.client import Client

    with Client(args.name) as c:
        st = c.request("status")
    if args.json:
        print(json.dumps(st))
    else:
        _print_status(st)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from onvm.cli.top import run_top

    return run_top(args.name, args.interval, args.iterations)


def cmd_stop(args: argparse.Namespace) -> int:
    import os
    import time

    from onvm.control.client import Client
    from onvm.paths import socket_path

    with Client(args.name) as c:
        c.request("shutdown")
    deadline = time.monotonic() + args.timeout
    while os.path.exists(socket_path(args.name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from onvm.bench import run_scenario

    if args.scenario == "latency":
        from onvm.bench import run_latency

        result = run_latency(nfs=args.nfs, seconds=args.seconds, rate=args.rate, verbose=not args.json)
    else:
        result = run_scenario(args.scenario, seconds=args.seconds, verbose=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(" ".join(f"{k}={v}" for k, v in result.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from onvm.bench import SCENARIOS

    p = argparse.ArgumentParser(prog="onvm", description="pyonvm: NFV in Python over shared memory.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _manager_parser(sub)
    sub.add_parser("nf", help="run an example NF (onvm nf --list)", add_help=False)
    s = sub.add_parser("status", help="show a manager's ports, NFs and pool")
    s.add_argument("--name", default="onvm")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("top", help="a live full-screen view of a manager (Ctrl-C leaves)")
    s.add_argument("--name", default="onvm")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between screens (default 1)")
    s.add_argument("--iterations", type=int, default=0, help="leave after this many screens (0: never)")
    s = sub.add_parser("stop", help="stop a manager and its NFs")
    s.add_argument("--name", default="onvm")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for it to exit")
    b = sub.add_parser("bench", help="run a benchmark scenario")
    b.add_argument("scenario", choices=sorted([*SCENARIOS, "latency"]))
    b.add_argument("--nfs", type=int, default=1, help="latency: NFs in the chain (default 1)")
    b.add_argument("--rate", type=int, default=10000, help="latency: packets/s offered (default 10000)")
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "nf":
            return cmd_nf(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        handler = {"manager": cmd_manager, "status": cmd_status, "stop": cmd_stop, "bench": cmd_bench,
                   "top": cmd_top}
        return handler[args.command](args)
    except OnvmError as e:
        print(f"onvm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
