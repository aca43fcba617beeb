"""``classify``: what a rule set costs the packet path, for established and for new flows.

Two managers, one after the other, each ``gen -> simple_forward -> null``:

* established: gen sends 4,096 flows (``--flows``, in a table of at least eight
  times as many entries), every one of them cached after its first packet; the
  rules can only cost something through the cache;
* new flows: gen cycles over 1,048,576 flows with a 1 ms idle timeout for what
  the classifier caches, so every flow has expired by the time gen comes back to
  it and each packet is looked up, missed, classified and cached again (in a
  table of 2M entries, so it is never more than half full).

Each manager is measured with no rules (``_0``: with nothing to classify by,
RX does not even look the flow table up), with one rule that matches nothing
(``_1``: every packet looked up in the flow table, new flows classified), and
after ``--rules N`` more are loaded in one rule set (``rule_load_s``, as
``onvm rule add -f`` sends them): delivered packets per second at the null
port, over ``seconds`` each.  The three windows are a round; then every rule is
deleted (which takes the cached results with it) and the next round starts from
no rules again, ``--rounds`` times (3), so that each ratio compares windows
seconds apart, not minutes, on a machine whose load drifts.  The figures are the
medians over the rounds, the ratios the medians of each round's ratio.
``established_ratio_1`` (N rules against one) is what the rules cost
established flows; ``established_ratio`` (against none) adds the flow table's
own lookup.  Of the N rules, one in a hundred matches some of gen's flows (to
a chain with the same hops as the default); the rest match nothing gen sends
and have a firewall's variety of masks: source prefixes of /16 to /32, each
with no port, one port or a port range (16 masks in all; ``tuples`` in the
result).  A range that is no single prefix adds a mask per prefix it takes.

In the same windows the pipeline's RX worker's time on bursts per packet it read
(``rx_busy_ns_per_packet_0``, ``_1``, ``rx_busy_ns_per_packet``, and
``new_flow_rx_busy_ns_per_packet``; ``onvm top``'s ns/pkt) says what the rules cost
the thread that classifies, apart from what the NF and the TX worker did meanwhile.

Beside the pipeline, the same three phases are measured in one thread and nothing
else (``rx_ns_per_packet_0``, ``_1`` and ``rx_ns_per_packet``, with ``rx_ratio`` the
rule-less cost over the N-rule one): what an RX worker spends on parsing and
classifying a packet of the established flows, in a region of its own.  Those
figures move by a few percent from run to run; the pipeline's, which depend on where
the scheduler puts three busy threads on the machine's CPUs, by tens.
"""

from __future__ import annotations

import os
import random
import statistics
import time
import uuid
from typing import Any

from onvm.bench._scenario import Option, Scenario, whole_number
from onvm.bench.pipeline import WARMUP, deployment, start_pipeline, threads
from onvm.manager.config import ManagerConfig

GEN = "gen:size=64,src=10.0.0.1,dst=10.1.0.1,sport=1024,dport=80"
ESTABLISHED_FLOWS = 4096
DEFAULT_TABLE: int = ManagerConfig.model_fields["flow_table_size"].default  # the manager's own default
NEW_FLOWS = 1 << 20
DELETE_PART = 4000  # rule ids per change: a part fits one message


def rule_set(n: int, seed: int = 1) -> list[str]:
    """``n`` rule texts: one in a hundred matches part of gen's traffic, the rest none of it."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 100 == 99:  # gen's sources are 10.0.0.1 + flow
            out.append(f"udp src 10.0.{rng.randrange(16)}.{rng.randrange(256)}/32 priority 200 -> chain same")
            continue
        plen = rng.choice((16, 20, 24, 28, 32))
        net = (172 << 24 | 16 << 16 | rng.getrandbits(16)) & (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        src = f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{plen}"
        port = rng.choice(("", f" dst port {rng.randrange(1, 65536)}", " dst port 1024-2047"))
        out.append(f"udp src {src}{port} priority {rng.randrange(1, 1000)} -> chain default")
    return out


def _window(dep: Any, seconds: float) -> tuple[float, float]:
    """Over ``seconds``: packets per second out of the null port (port 1), in millions, and the
    RX worker's time on bursts per packet it read, in ns (``onvm top``'s ns/pkt; 0 if it read none)."""
    t0, s0 = time.monotonic(), dep.status()
    time.sleep(seconds)
    t1, s1 = time.monotonic(), dep.status()
    rx = next(t for t in threads(s0, s1, t1 - t0) if t["thread"] == "RX 0")
    mpps = (s1["ports"][1]["tx"] - s0["ports"][1]["tx"]) / (t1 - t0) / 1e6
    return round(mpps, 3), rx["ns_per_packet"] or 0.0


ONE_RULE = "udp src 192.0.2.1/32 -> chain default"  # matches nothing gen sends


def _delete_all(c: Any, ids: list[int]) -> None:
    """Delete the rules ``ids``, in changes that each fit a message."""
    for i in range(0, len(ids), DELETE_PART):
        c.rule_change(delete=ids[i:i + DELETE_PART])


def _measure(verbose: bool, seconds: float, flows: int, extra: list[str], rules: list[str],
             rounds: int) -> dict[str, Any]:
    """Rounds of: the rate with no rules, with one (the flow table in use), and with ``rules``
    added to it; then every rule deleted again."""
    from onvm.control.client import Client

    dep = deployment(["--port", f"{GEN},flows={flows}", "--port", "null", "--default-chain", "1,out:1",
                      "--chain", "same=1,out:1", *extra], verbose)
    rates: list[list[float]] = [[], [], []]  # none, one, many: Mpps of each round
    rx_ns: list[list[float]] = [[], [], []]  # the RX worker's ns per packet, the same windows
    load_s = []

    def window(phase: int) -> None:
        time.sleep(WARMUP)
        mpps, ns = _window(dep, seconds)
        rates[phase].append(mpps)
        rx_ns[phase].append(ns)

    added = 0
    try:
        start_pipeline(dep, [["simple_forward", "--service", "1"]])
        with Client(dep.name, timeout=120) as c:
            for _ in range(rounds):
                window(0)
                ids = [c.rule_add(ONE_RULE)["id"]]
                window(1)
                t0 = time.monotonic()
                if rules:
                    res = c.load_rules(rules)
                    added = res["added"]
                    ids += list(range(res["first_id"], res["last_id"] + 1))
                    if len(ids) != added + 1:
                        raise RuntimeError(f"rule ids {res['first_id']}..{res['last_id']} for {added} rules")
                load_s.append(time.monotonic() - t0)
                window(2)
                st = dep.status()["flows"]
                _delete_all(c, ids)
        return {"mpps_0": rates[0], "mpps_1": rates[1], "mpps": rates[2], "rx_ns": rx_ns,
                "rule_load_s": load_s, "added": added,
                "tuples": st["classifier"]["tuples"], "uncached": st["full"]}
    finally:
        dep.stop()


RX_PACKETS = 20_000_000  # per window of the single-thread measurement (about half a second)


def rx_cost(flows: int, table: int, rules: list[str], rounds: int,
            packets: int = RX_PACKETS) -> dict[str, Any]:
    """What RX's parse and classification cost per packet in one thread and nothing else
    (``_hooks.bench_rx``, a region of its own): with no rules, one, and ``rules`` more, in rounds
    like the pipeline's.  The scheduler and the other threads of the pipeline do not enter it,
    so it moves by a few percent from run to run where the pipeline's rates move by tens."""
    from onvm import _hooks, _native
    from onvm.flows.rules import parse_rule
    from onvm.manager.region_path import region_dir

    native = [parse_rule(t).native(1) for t in (ONE_RULE, *rules)]  # the chain does not change the cost
    path = os.path.join(region_dir(), f"onvm-bench-rx-{uuid.uuid4().hex[:8]}.region")
    region = _native.Region.create(path, "bench-rx", 256, 2048, 64, table, len(native))
    ns: list[list[float]] = [[], [], []]
    try:
        for _ in range(rounds):
            ns[0].append(_hooks.bench_rx(region, flows, packets)["ns_per_packet"])
            slots = region.rules_apply(adds=native[:1])
            ns[1].append(_hooks.bench_rx(region, flows, packets)["ns_per_packet"])
            if len(native) > 1:
                slots += region.rules_apply(adds=native[1:])
            ns[2].append(_hooks.bench_rx(region, flows, packets)["ns_per_packet"])
            region.rules_apply(dels=slots)
    finally:
        region.close()
        if os.path.exists(path):
            os.unlink(path)
    med = [round(statistics.median(v), 2) for v in ns]
    return {"rx_ns_per_packet_0": med[0], "rx_ns_per_packet_1": med[1], "rx_ns_per_packet": med[2],
            "rx_ratio": round(statistics.median(a / c for a, c in zip(ns[0], ns[2], strict=True)), 3)}


def run(seconds: float, verbose: bool, rules: int = 10000, rounds: int = 3,
        flows: int = ESTABLISHED_FLOWS) -> dict[str, Any]:
    """Established and new-flow rates with no rules, one rule and ``rules`` more, and the load time."""
    texts = rule_set(rules)
    table = max(DEFAULT_TABLE, 1 << (8 * flows - 1).bit_length())  # an eighth full at most (README: Sizing)
    est = _measure(verbose, seconds, flows, ["--flow-table-size", str(table)], texts, rounds)
    new_args = ["--flow-idle", "0.001", "--flow-table-size", str(2 * NEW_FLOWS)]  # half full at most
    new = _measure(verbose, seconds, NEW_FLOWS, new_args, texts, rounds)
    rx = rx_cost(flows, table, texts, rounds)

    def ratio(a: list[float], b: list[float]) -> float | None:
        return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3) if all(b) else None

    def med(v: list[float]) -> float:
        return round(statistics.median(v), 3)

    def per_round(m: dict[str, Any]) -> list[list[float]]:  # [none, one, many] Mpps of each round
        return [list(t) for t in zip(m["mpps_0"], m["mpps_1"], m["mpps"], strict=True)]

    return {"mpps": med(est["mpps"]), "rules": rules, "rules_added": est["added"], "tuples": est["tuples"],
            "flows": flows, "flow_table_size": table,
            "established_mpps": med(est["mpps"]), "established_mpps_0": med(est["mpps_0"]),
            "established_mpps_1": med(est["mpps_1"]),
            "new_flow_mpps": med(new["mpps"]), "new_flow_mpps_0": med(new["mpps_0"]),
            "new_flow_mpps_1": med(new["mpps_1"]),
            "rule_load_s": med(est["rule_load_s"]), "rule_load_s_new": med(new["rule_load_s"]),
            "new_flows_uncached": new["uncached"],
            "established_ratio": ratio(est["mpps"], est["mpps_0"]),
            "established_ratio_1": ratio(est["mpps"], est["mpps_1"]),
            # the pipeline's RX worker, the same windows: what a packet cost it (time on bursts)
            "rx_busy_ns_per_packet_0": med(est["rx_ns"][0]), "rx_busy_ns_per_packet_1": med(est["rx_ns"][1]),
            "rx_busy_ns_per_packet": med(est["rx_ns"][2]),
            "new_flow_rx_busy_ns_per_packet": med(new["rx_ns"][2]),
            **rx,
            "rounds": rounds, "seconds": seconds,
            "rounds_established": per_round(est), "rounds_new_flow": per_round(new)}


SCENARIOS = [
    Scenario("classify", "gen -> simple_forward -> null with N rules (1 in 100 matching): established flows "
             "(4,096 or --flows, cached) and new flows (1M, 1 ms idle), each with no rules, one and N more, "
             "and the rule set's load time", key="established_ratio_1",
             target="established_mpps >= 0.9 x established_mpps_1 and _0; new_flow_mpps >= 1; "
                    "rule_load_s < 2 for 10,000 rules", run=run,
             show=lambda r: (f"{r['rules']:,} rules: established {r['established_mpps']:.2f} Mpps "
                             f"({r['established_mpps_1']:.2f} with one, "
                             f"{r['established_mpps_0']:.2f} with none), "
                             f"new flows {r['new_flow_mpps']:.2f} Mpps ({r['new_flow_mpps_1']:.2f}, "
                             f"{r['new_flow_mpps_0']:.2f}), loaded in {r['rule_load_s']:.2f} s"),
             options=(Option("--rules", 10000, "rules loaded (up to 1,000,000; the manager holds "
                             "--max-rules, 262,144 by default)", type=whole_number("rules", 0, 1_000_000)),
                      Option("--rounds", 3, "rounds of the three windows, the rules deleted between them "
                             "(1..20)", type=whole_number("rounds", 1, 20)),
                      Option("--flows", ESTABLISHED_FLOWS, "established flows (1..1048576), in a flow table "
                             "of at least eight times as many entries",
                             type=whole_number("flows", 1, NEW_FLOWS)))),
]
