"""The ``onvm`` command: manager, nf, status, stop, bench, testbed."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

from onvm import env
from onvm.control import ops
from onvm.errors import OnvmError

EPILOG = """examples:
  onvm manager --port gen:size=64,flows=64 --port null --default-chain 1,out:1
  onvm nf simple_forward --service 1 --dest 2
  onvm nf --list
  onvm nf path/to/my_nf.py --service 3
  onvm nf new my_nf
  onvm status --json
  onvm top
  onvm manager --port gen:rate=100k --port null --default-chain 1,out:1 --web 127.0.0.1:8080
  onvm bench loop --seconds 5 --json
  onvm chain add web 2,3,out:1
  onvm rule add tcp dst port 80 to chain web
  onvm flow list
  onvm flow explain 10.0.0.1:5 10.0.0.2:80 tcp in-port 0
  onvm capture --service 2 -w - | tcpdump -nr -
  onvm trace add 5 tcp dst port 80 && onvm trace show
  onvm service policy 2 round-robin
  onvm scale 2 3
  onvm stop
  onvm run examples/firewall-chain.yaml
  onvm image build
"""


def _manager_parser(sub: Any, flags: bool) -> None:
    p = sub.add_parser("manager", help="run an NF manager",
                       description="Run an NF manager: shared region, ports, workers, control socket. "
                                   "Every option can also be said in a topology file (onvm run).")
    if flags:  # made from the configuration model, whose import (pydantic) the other commands skip
        from onvm.manager.config import add_flags

        add_flags(p)


def cmd_manager(args: argparse.Namespace) -> int:
    from onvm.manager.config import from_flags
    from onvm.manager.manager import Manager

    mgr = Manager(from_flags(args))
    mgr.start()
    return mgr.run()


def _rate_shown(pps: int) -> str:
    """A paced port's rate in ``onvm status``, worded as ``onvm port rate`` says it."""
    from onvm.ports.uri import rate_text

    return ("rate " if pps else "") + rate_text(pps)


def _print_status(st: dict[str, Any]) -> None:
    m, pool = st["manager"], st["pool"]
    print(f"manager {m['name']} (pid {m['pid']}), up {m['uptime']:.1f} s, region {m['region']}")
    from onvm.manager.stats import describe_pool

    print(f"default chain {m['default_chain']}; {describe_pool(pool)}"
          + (f"; NF CPUs {m['nf_cpus']}" if m.get("nf_cpus") else "")
          + (f"; manager CPUs {m['cpus']}" if m.get("cpus") else ""))
    from onvm.manager.packing import summary

    if line := summary(m.get("packing") or {}):
        print(line)
    print("ports:")
    for p in st["ports"]:
        drops = sum(p["drops"].values())
        why = ", ".join(f"{k} {v}" for k, v in p["drops"].items())
        print(f"  {p['id']:<3} {p['uri']:<40} rx {p['rx']:<12} tx {p['tx']:<12} drops {drops}"
              + (f" ({why})" if why else "")
              + (f"  mode {p['mode']}" if p.get("mode") else "")
              + (f"  {_rate_shown(p['rate_pps'])}" if "rate_pps" in p else "")
              + (f"  lent {p['lent']}" if p.get("lent") else "")
              + ("  done" if p["done"] else "") + (f"  error: {p['error']}" if p["error"] else "")
              + (f"  lost {p['lost']}" if p.get("lost") else ""))
    print("NFs:")
    if not st["nfs"]:
        print("  (none)")
    for n in st["nfs"]:
        drops, cpu = sum(n["drops"].values()), n.get("cpu_now", n.get("cpu"))
        print(f"  {n['id']:<3} {n['name']:<16} svc {n['service']}.{n['instance']:<3} {n['state']:<9}"
              f" pid {n['pid']:<8} cpu {cpu!s:<4} rx {n['rx']:<12} tx {n['tx']:<12}"
              f" drops {drops}" + _overload(n)
              + ("  (the kernel refused to move it)" if n.get("cpu_refused") else ""))
    _print_work(st)
    _print_chain_drops(st)
    if st.get("left"):
        print("NFs that left (latest last):")
        for n in st["left"]:
            print(f"  {n['id']:<3} {n['name']:<16} svc {n['service']}.{n['instance']:<3} {n['state']:<9}"
                  f" pid {n['pid']:<8} rx {n['rx']:<12} tx {n['tx']:<12} drops {sum(n['drops'].values())}"
                  f"  {n['reclaimed']} slots reclaimed")
    _print_latency(st)


def _overload(n: dict[str, Any]) -> str:
    """An NF's backpressure figures, when there are any (see README: Overload)."""
    out = f"  early {n['early']} late {n['late']}" if n.get("early") or n.get("late") else ""
    if n.get("blocked"):
        out += f"  waited {n['blocked']}x ({n['blocked_ms']:.0f} ms)"
    return out + ("  congested" if n.get("rx_congested") else "")


def _print_work(st: dict[str, Any]) -> None:
    """Each worker's and NF's time on bursts since it started: what a packet cost it, and for the
    workers the share of the manager's uptime (``onvm top`` shows both for the last interval)."""
    from onvm.web.sampler import busy_figures

    up = st["manager"]["uptime"]
    rows: list[tuple[str, int, float | None, str]] = []
    for w in st.get("workers", []):
        busy, each = busy_figures(w["busy_ns"], w["packets"], up)
        name = f"{w['role'].upper()} worker {w['index']}"
        rows.append((name, w["packets"], each, f"busy {100 * busy:3.0f}%"))
    for n in st["nfs"]:  # a cost only: the status does not say when an NF started
        each = busy_figures(n.get("busy_ns", 0), n["rx"], up)[1]
        rows.append((f"NF {n['id']} {n['name']}", n["rx"], each, ""))
    if not any(packets for _, packets, _, _ in rows):
        return
    print("time on bursts since start (a thread near 100% busy is what limits the rate):")
    for what, packets, each, share in rows:
        cost = "-" if each is None else f"{each:.1f} ns a packet"
        print(f"  {what:<26} packets {packets:<12} {cost:<18} {share}".rstrip())


def _print_chain_drops(st: dict[str, Any]) -> None:
    rows = [(c, i, d) for c in st.get("chains", []) for i, d in enumerate(c.get("drops", []))
            if d["early"] or d["late"]]
    if not rows:
        return
    print("drops per chain hop (early: at RX, before any NF; late: after the hop's NF):")
    for c, i, d in rows:
        print(f"  {c['name']:<16} hop {i} ({c['hops'].split(',')[i]}): early {d['early']}, late {d['late']}")


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
    st = _call(args, ops.Status())
    if args.json:
        print(json.dumps(st))
    else:
        _print_status(st)
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from onvm.cli.top import run_top

    return run_top(args.name, args.interval, args.iterations)


def cmd_stop(args: argparse.Namespace) -> int:
    from onvm.control.client import Client

    with Client(args.name) as c:
        c.shutdown()
        # The manager removes its socket, then closes every connection once its NFs are
        # gone: wait for the end of this one (nothing else comes on it).
        for _ in c.events(timeout=args.timeout):
            pass
    return 0


def _call(args: argparse.Namespace, op: ops.Op) -> dict[str, Any]:
    """Run one operation of the table on manager ``--name``."""
    from onvm.control.client import Client

    with Client(args.name) as c:
        return c.call(op)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))


def cmd_chain(args: argparse.Namespace) -> int:
    if args.action in ("add", "del") and not args.chain or args.action == "add" and not args.hops:
        raise OnvmError(f"usage: onvm chain {args.action} NAME" + (" HOPS" if args.action == "add" else ""),
                        code="bad_request")
    if args.action == "port":
        if not (args.chain or "").isdecimal() or not args.hops:
            raise OnvmError("usage: onvm chain port PORT NAME (NAME default: the default chain again)",
                            code="bad_request")
        name = None if args.hops == "default" else args.hops
        out = _call(args, ops.PortChain(int(args.chain), name))
    elif args.action == "add":
        out = _call(args, ops.ChainAdd(args.chain, args.hops))
    elif args.action == "del":
        out = _call(args, ops.ChainDel(args.chain))
    else:
        out = _call(args, ops.ChainList())
    if args.json:
        print(json.dumps(out))
    elif args.action == "list":
        _table(out["chains"], ["id", "name", "hops"])
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def cmd_rule(args: argparse.Namespace) -> int:
    from onvm.control.client import Client

    if args.action == "add" and args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise OnvmError(f"rule file {args.file}: {e}", code="bad_request") from None
        with Client(args.name) as c:  # in parts, applied all together or not at all
            out = c.load_rules(lines)
    elif args.action == "add":
        out = _call(args, ops.RuleAdd(rule=" ".join(args.rule)))
    elif args.action == "del":
        if not args.rule or not all(r.isdecimal() for r in args.rule):
            raise OnvmError("onvm rule del takes rule ids (see onvm rule list)", code="bad_request")
        ids = [int(r) for r in args.rule]
        out = _call(args, ops.RuleDel(ids[0]) if len(ids) == 1 else ops.RuleChange(delete=ids))
    else:
        with Client(args.name) as c:
            rules = list(itertools.islice(c.rules(args.offset), args.limit))
        out = {"rules": rules}
    if args.json:
        print(json.dumps(out))
    elif args.action == "list":
        _table(out["rules"], ["id", "priority", "hits", "rule"])
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def cmd_flow(args: argparse.Namespace) -> int:
    flow = " ".join(args.flow)
    if args.action == "list":
        out = _call(args, ops.FlowList(args.limit, args.chain or None))
    elif args.action == "stats":
        out = _call(args, ops.FlowStats())
    elif args.action == "explain":
        out = _call(args, ops.FlowExplain(flow))
        if not args.json:
            from onvm.flows.explain import render

            print(render(out))
            return 0
    elif args.action == "flush":
        if flow:
            raise OnvmError("onvm flow flush takes no flow: it flushes them all (--chain NAME: one chain's)",
                            code="bad_request")
        out = _call(args, ops.FlowFlush(args.chain or None, not args.all))
    elif args.action == "add":
        if not args.chain:
            raise OnvmError("onvm flow add needs --chain NAME", code="bad_request")
        out = _call(args, ops.FlowAdd(flow, args.chain, args.idle, args.hard))
    else:
        out = _call(args, ops.FlowDel(flow))
    if args.json:
        print(json.dumps(out))
    elif args.action == "list":
        _table(out["flows"], ["flow", "chain", "origin", "packets", "bytes", "age_s", "idle_s"])
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def cmd_service(args: argparse.Namespace) -> int:
    if args.action == "policy":
        if args.service is None or not args.policy:
            raise OnvmError("usage: onvm service policy SERVICE hash|round-robin|least-loaded|local",
                            code="bad_request")
        out = _call(args, ops.ServicePolicy(args.service, args.policy))
    else:
        out = _call(args, ops.ServiceList())
    if args.json:
        print(json.dumps(out))
    elif args.action == "list":
        rows = [{"service": s["service"], "policy": s["policy"], "instances": len(s["instances"]),
                 "nfs": ",".join(str(i["nf_id"]) for i in s["instances"]),
                 "autoscale": f"{s['autoscale']['min']}-{s['autoscale']['max']}" if s["autoscale"] else ""}
                for s in out["services"]]
        _table(rows, ["service", "policy", "instances", "nfs", "autoscale"])
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def cmd_port(args: argparse.Namespace) -> int:
    from onvm.ports.uri import parse_rate, rate_text

    out = _call(args, ops.PortRate(args.port, parse_rate(args.pps)))
    print(json.dumps(out) if args.json else f"port {out['port']}: {rate_text(out['pps'])}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    if (args.nf is None) == (args.service is None):
        raise OnvmError("onvm send needs exactly one of --nf ID or --service S", code="bad_request")
    try:
        data = json.loads(args.data)
    except ValueError:
        data = args.data
    out = _call(args, ops.Send(data, nf=args.nf, service=args.service))
    print(json.dumps(out) if args.json else f"delivered to {out['delivered']} of {out['targets']} NF(s)")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    out = _call(args, ops.Scale(args.count, args.service))
    print(json.dumps(out) if args.json else " ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def _quote_rule(argv: list[str]) -> list[str]:
    """``onvm rule add tcp ... to chain web``: the rule's words as one argument."""
    opts, words, rest = [], [], argv[2:]
    while rest:
        tok = rest.pop(0)
        if tok == "--name" and rest:
            opts += [tok, rest.pop(0)]
        elif tok in ("--file", "-f") and rest:
            opts += [tok, rest.pop(0)]
        elif tok in ("--json", "-h", "--help") or tok.startswith(("--name=", "--file=")):
            opts.append(tok)
        else:
            words.append(tok)
    return ["rule", "add", " ".join(words), *opts] if words else ["rule", "add", *opts]


def cmd_testbed(args: argparse.Namespace) -> int:
    from onvm.testbed import Testbed

    tb = Testbed(args.prefix, args.subnet, getattr(args, "managers", 1), getattr(args, "kind", "afpacket"),
                 getattr(args, "queues", 1))
    workers = f" --rx-workers {tb.queues}" if tb.queues > 1 else ""
    if args.action == "down":
        removed = tb.down()
        print("removed " + ", ".join(removed) if removed else f"no testbed '{tb.prefix}' found")
        return 0
    tb.up()
    if tb.managers == 2:
        print(f"hosts: {tb.ns('a')} ({tb.addr('a')}) and {tb.ns('b')} ({tb.addr('b')}), namespaces\n"
              f"manager 1 ports: {' '.join(tb.manager_ports(1))}\n"
              f"manager 2 ports: {' '.join(tb.manager_ports(2))}\n"
              "try (an OpenFlow controller steering across both: see examples/sdn/README.md):\n"
              + "".join(f"  onvm manager --name m{m} --port {' --port '.join(tb.manager_ports(m))} "
                        f"--default-chain 1{workers}\n" for m in (1, 2)) +
              "  onvm nf bridge --name m1 --service 1; onvm nf bridge --name m2 --service 1\n"
              f"  onvm testbed down{'' if tb.prefix == 'onvm' else ' --prefix ' + tb.prefix}")
        return 0
    print(f"hosts: {tb.ns('a')} ({tb.addr('a')}) and {tb.ns('b')} ({tb.addr('b')}), namespaces\n"
          f"manager ports: {tb.port_if('a')} (port 0) and {tb.port_if('b')} (port 1)\n"
          "try:\n"
          f"  onvm manager --port {tb.ports[0]} --port {tb.ports[1]} --default-chain 1{workers}\n"
          "  onvm nf bridge --service 1\n"
          f"  {' '.join(tb.exec_argv('a', 'ping', '-c', '3', tb.addr('b')))}\n"
          f"  onvm testbed down{'' if tb.prefix == 'onvm' else ' --prefix ' + tb.prefix}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from onvm.topology import load_topology
    from onvm.topology.runner import preflight, run

    if args.schema:
        from onvm.topology.schema import json_schema

        print(json.dumps(json_schema(), indent=2))
        return 0
    if args.file is None:
        raise OnvmError("onvm run needs a topology file (FILE.yaml), or --schema", code="bad_request")
    from onvm.manager.config import ManagerOptions

    topo = load_topology(args.file)
    overrides = {k: v for k, v in vars(args).items() if k in ManagerOptions.model_fields}
    if args.check:
        topo.manager_config(overrides)
        preflight(topo)
        print(f"{args.file}: ok ({len(topo.ports)} ports, {sum(n.instances for n in topo.nfs)} NF instances,"
              f" default chain {topo.default_chain_text()})")
        return 0
    return run(topo, overrides, as_json=args.json)


def cmd_capture(args: argparse.Namespace) -> int:
    from onvm.cli.capture import cmd_capture as run

    return run(args)


def cmd_trace(args: argparse.Namespace) -> int:
    from onvm.cli.capture import cmd_trace as run

    return run(args)


def cmd_image(args: argparse.Namespace) -> int:
    from onvm.topology.image import build

    result = build(args.runtime, args.tag, verbose=not args.json)
    if args.json:
        print(json.dumps(result))
    return 0


def _name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=env.manager_name(),
                   help="the manager (default: $ONVM_MANAGER, else onvm)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line; the manager's options are added to ``manager`` and ``run`` when
    ``command`` is one of them (or None: every command whole)."""
    flags = command in (None, "manager", "run")
    p = argparse.ArgumentParser(prog="onvm", description="pyonvm: NFV in Python over shared memory.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from onvm import __version__

    p.add_argument("--version", action="version", version=f"pyonvm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _manager_parser(sub, flags)
    sub.add_parser("nf", help="run an NF: an example, a file or an installed one (onvm nf --list)",
                   add_help=False)
    sub.add_parser("bench", help="run a benchmark scenario (onvm bench --list)", add_help=False)
    s = sub.add_parser("status", help="show a manager's ports, NFs and pool")
    _name_arg(s)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("top", help="a live full-screen view of a manager (Ctrl-C leaves)")
    _name_arg(s)
    s.add_argument("--interval", type=float, default=1.0, help="seconds between screens (default 1)")
    s.add_argument("--iterations", type=int, default=0, help="leave after this many screens (0: never)")
    s = sub.add_parser("stop", help="stop a manager and its NFs")
    _name_arg(s)
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for it to exit")
    c = sub.add_parser("chain", help="add, list or delete named chains; a port's default chain",
                       description="Named chains of up to 16 hops: a service id, out:PORT or drop.  "
                       "'onvm chain port 1 web': what arrives on port 1 and matches no rule takes chain "
                       "web ('default': the default chain again).")
    c.add_argument("action", choices=["add", "list", "del", "port"])
    c.add_argument("chain", nargs="?", help="chain name (add, del); the port (port)")
    c.add_argument("hops", nargs="?", help="hops for add, e.g. 1,2,out:0; the chain (port)")
    _name_arg(c)
    c.add_argument("--json", action="store_true")
    r = sub.add_parser("rule", help="add, list or delete flow rules",
                       description="Rules steer flows to chains, e.g. "
                       "onvm rule add tcp dst port 80 src 10.0.0.0/8 to chain web "
                       "(an arrow, '-> chain web', works too when quoted)")
    r.add_argument("action", choices=["add", "list", "del"])
    r.add_argument("rule", nargs="*", help="the rule text (add) or its id (del)")
    r.add_argument("--file", "-f", help="add every rule of a file (one per line, # comments; any number of "
                   "them); all or none")
    r.add_argument("--offset", type=int, default=0, help="list from the rule at this position (default 0)")
    r.add_argument("--limit", type=int, default=None, help="list at most this many rules (default: all)")
    _name_arg(r)
    r.add_argument("--json", action="store_true")
    f = sub.add_parser("flow", help="list, add, delete, explain flow entries; flow table stats",
                       description="Flows are written SRC[:PORT] DST[:PORT] PROTO [in-port N] [vlan N] "
                       "(without vlan: untagged packets), "
                       "e.g. 10.0.0.1:1234 10.0.0.2:80 tcp.  'explain' says what the manager would do "
                       "with such packets now and why: the exact entry or the rule that decides (and the "
                       "rules above it that do not), the chain, and the instance each hop's policy picks.  "
                       "'flush' removes the cached classification results (--all: every entry), so that "
                       "their flows are classified afresh; --chain limits it to one chain's entries.")
    f.add_argument("action", choices=["list", "add", "del", "flush", "stats", "explain"])
    f.add_argument("flow", nargs="*", help="the flow (add, del, explain)")
    f.add_argument("--chain", help="chain (add; list and flush filter)")
    f.add_argument("--all", action="store_true",
                   help="flush: the explicit entries too (flow add, NFs, OpenFlow), not only cached results")
    f.add_argument("--idle", type=float, default=0.0, help="idle timeout in seconds (add)")
    f.add_argument("--hard", type=float, default=0.0, help="hard timeout in seconds (add)")
    f.add_argument("--limit", type=int, default=1000, help="entries to list (default 1000)")
    _name_arg(f)
    f.add_argument("--json", action="store_true")
    sv = sub.add_parser("service", help="list services or set a service's load-balancing policy")
    sv.add_argument("action", choices=["list", "policy"])
    sv.add_argument("service", nargs="?", type=int)
    sv.add_argument("policy", nargs="?", help="hash, round-robin, least-loaded or local")
    _name_arg(sv)
    sv.add_argument("--json", action="store_true")
    pt = sub.add_parser("port", help="change a running input port's rate",
                        description="'onvm port rate 0 2M': input port 0 (a gen port, or a pcap input "
                        "without rate=capture) sends 2,000,000 packets a second from now on; 'unpaced' "
                        "(or 0): as fast as the chain takes them.  Packets already due stay due.")
    pt.add_argument("action", choices=["rate"])
    pt.add_argument("port", type=int)
    pt.add_argument("pps", help="packets a second (k, M, G suffixes), or unpaced")
    _name_arg(pt)
    pt.add_argument("--json", action="store_true")
    sc = sub.add_parser("scale", help="start or stop instances of a service",
                        description="Start new instances the way the first was started (by a topology's "
                                    "supervisor, or from the command an NF started by hand gave), or stop "
                                    "the highest-numbered ones.")
    sc.add_argument("service", type=int)
    sc.add_argument("count", type=int)
    _name_arg(sc)
    sc.add_argument("--json", action="store_true")
    m = sub.add_parser("send", help="send a message to an NF or to every instance of a service",
                       description="The NF's @nf.message hook receives it (JSON if DATA parses as JSON).")
    m.add_argument("data")
    m.add_argument("--nf", type=int, help="NF id")
    m.add_argument("--service", type=int, help="service id: every running instance")
    _name_arg(m)
    m.add_argument("--json", action="store_true")
    t = sub.add_parser("testbed", help="create or remove two namespaces linked to manager ports")
    t.add_argument("action", choices=["up", "down"])
    t.add_argument("--prefix", default="onvm", help="names of the namespaces and links (default onvm)")
    t.add_argument("--subnet", default="10.211.0.0/24",
                   help="the hosts' /24: host A is .1, host B .2 (default 10.211.0.0/24)")
    t.add_argument("--managers", type=int, default=1, choices=[1, 2],
                   help="2: host A on manager 1, host B on manager 2, and a link between the managers")
    t.add_argument("--kind", default="afpacket", choices=["afpacket", "afxdp"],
                   help="the port URIs printed for the manager (default afpacket)")
    t.add_argument("--queues", type=int, default=1,
                   help="queues of each link (the ports and RX workers follow)")
    r = sub.add_parser("run", help="run a topology file: manager, ports, NFs, chains",
                       description="Validate a topology file, start everything it describes, supervise "
                                   "the NFs and stop it all on Ctrl-C.")
    r.add_argument("file", metavar="FILE.yaml", nargs="?")
    r.add_argument("--check", action="store_true", help="validate the file and the runtimes, start nothing")
    r.add_argument("--json", action="store_true",
                   help="at the end, print the final status and each NF's restarts and exits as one JSON "
                        "object on stdout")
    r.add_argument("--schema", action="store_true",
                   help="print the topology file's JSON Schema (for editors) and exit")
    if flags:
        from onvm.manager.config import ManagerOptions, add_flags

        o = r.add_argument_group("manager options", "override the file's manager: section (same meaning "
                                                    "as in onvm manager)")
        add_flags(o, ManagerOptions)
    from onvm.cli.capture import add_parser as capture_parser
    from onvm.cli.capture import add_trace_parser

    capture_parser(sub, _name_arg)
    add_trace_parser(sub, _name_arg)
    i = sub.add_parser("image", help="build the NF container image (no registry needed)")
    isub = i.add_subparsers(dest="image_command", metavar="build", required=True)
    ib = isub.add_parser("build", help="build the image from this host's Python and the installed package")
    ib.add_argument("--runtime", choices=("podman", "docker"), default="podman")
    ib.add_argument("--tag", default="localhost/onvm-nf:latest")
    ib.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from onvm._streams import guard_output

    guard_output()  # a reader that goes away (| head) does not take a manager down
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "nf":
            from onvm.nfs._cli import main as nf_main

            return nf_main(argv[1:])
        if argv and argv[0] == "bench":
            from onvm.bench._cli import main as bench_main

            return bench_main(argv[1:])
        if argv[:2] == ["rule", "add"]:
            argv = _quote_rule(argv)
        parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        handler = {"manager": cmd_manager, "status": cmd_status, "stop": cmd_stop,
                   "chain": cmd_chain, "rule": cmd_rule, "flow": cmd_flow, "service": cmd_service,
                   "port": cmd_port, "scale": cmd_scale, "send": cmd_send, "testbed": cmd_testbed,
                   "run": cmd_run, "image": cmd_image, "top": cmd_top, "capture": cmd_capture,
                   "trace": cmd_trace}
        return handler[args.command](args)
    except OnvmError as e:
        print(f"onvm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
