"""``flow-setup``: rules per second through the control API, and the packet path's flow
lookup rate in a table holding 1M flows (in bulk, and one at a time for comparison)."""

from __future__ import annotations

import os
import time
from typing import Any

from onvm.bench._scenario import Scenario
from onvm.bench.pipeline import deployment

BATCH, RULES = 1000, 8000


def flow_setup(seconds: float, verbose: bool) -> dict[str, Any]:
    """Rules per second through the control API, and the packet path's lookup rate at 1M flows."""
    from onvm import _hooks, _native
    from onvm.control.client import Client
    from onvm.paths import runtime_dir

    rules = [f"udp src 10.{i >> 8 & 255}.{i & 255}.0/24 dst port {1 + i % 60000} -> chain c"
             for i in range(RULES)]
    dep = deployment(verbose=verbose)
    try:
        dep.start_manager()
        with Client(dep.name) as c:
            c.chain_add("c", "1")
            t0 = time.monotonic()
            for i in range(0, RULES, BATCH):
                c.rule_add(rules=rules[i:i + BATCH])
            dt = time.monotonic() - t0
    finally:
        dep.stop()
    path = os.path.join(runtime_dir(), f"onvm-{dep.name}-lookup.region")
    region = _native.Region.create(path, "lookup", 256, 2048, 64, 1 << 21)
    try:
        lookups = max(1_000_000, int(seconds * 2_000_000))
        bulk = _hooks.bench_lookup(region, 1 << 20, lookups, bulk=True)
        single = _hooks.bench_lookup(region, 1 << 20, lookups, bulk=False)
    finally:
        region.close()
    return {"mpps": 0.0, "packets": 0, "seconds": round(dt, 3), "rules": RULES,
            "rules_per_second": round(RULES / dt), "lookups_mpps": round(bulk["mpps"], 2),
            "lookups_mpps_one_at_a_time": round(single["mpps"], 2), "flow_entries": bulk["installed"]}


SCENARIOS = [
    Scenario("flow-setup", "8000 rules added through the control API in batches of 1000, and the packet "
             "path's bulk lookup in a table holding 1M flows", key="rules_per_second",
             target=">= 20,000 rules/s; >= 10 Mpps lookups", run=flow_setup,
             show=lambda r: (f"{r['rules_per_second']:,} rules/s; {r['lookups_mpps']:.2f} Mpps bulk "
                             f"lookups ({r['lookups_mpps_one_at_a_time']:.2f} one at a time) in "
                             f"{r['flow_entries']:,} flows")),
]
