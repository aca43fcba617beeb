"""Run the benchmark scenarios side by side and record the figures.

    python benchmarks/run.py [--seconds 5] [--repeat 1] [SCENARIO ...]
    python benchmarks/run.py nf-start-process nf-start-namespace nf-start-podman

Prints each result and writes benchmarks/results.json and benchmarks/RESULTS.md
(the table the README quotes).  The machine is shared and noisy: compare
figures from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from onvm.bench import nf_start, run_latency, run_scenario, scenario_names

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"loop": ">= 10 Mpps", "loop-packet": ">= 1 Mpps", "chain3": ">= 3 Mpps", "idle": "< 2 % CPU",
           "pcap-replay": ">= 5 Mpps", "veth-bridge": ">= 80 % of a Linux bridge",
           "lb": "imbalance < 0.1", "flow-setup": ">= 20,000 rules/s; >= 10 Mpps lookups",
           "nf-start-process": "< 150 ms", "nf-start-namespace": "< 250 ms", "nf-start-podman": "< 1000 ms",
           "firewall": ">= 8 Mpps", "flow-mod": ">= 5,000 FLOW_MODs/s",
           "latency": "p50 < 20 us through one NF",
           "latency-3": "p50 and p99 through three NFs",
           "latency-spread": "packing off, for comparison with latency",
           "wake": "why packing: a wake-up on another, idle CPU against one on the waker's"}
LATENCY = {"latency": (1, None), "latency-3": (3, None), "latency-spread": (1, 0.0)}
NF_START = ("nf-start-process", "nf-start-namespace", "nf-start-podman")  # not run by default
# The figure each scenario is judged by (the median of --repeat runs is kept).
KEYS = {"idle": "cpu_percent", "veth-bridge": "ratio", "lb": "imbalance", "flow-setup": "rules_per_second",
        "flow-mod": "flow_mods_per_second",
        "latency": "p50_us", "latency-3": "p50_us", "latency-spread": "p50_us", "wake": "cross_cpu_p50_us"}


def render(r: dict) -> str:
    """One result as the table shows it."""
    name = r["scenario"]
    if name in NF_START:
        return f"{r['median_ms']:.0f} ms median of {r['starts']} starts"
    if name in LATENCY:
        packed = "packed" if r.get("packed_on") is not None else "spread"
        return f"p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us at {r['rate_pps']} packets/s ({packed})"
    if name == "wake":
        return (f"p50 {r['cross_cpu_p50_us']:.1f} us to an idle CPU, {r['same_cpu_p50_us']:.1f} us "
                f"on the waker's CPU")
    if name == "idle":
        return f"{r['cpu_percent']:.2f} % of one core"
    if name == "flow-mod":
        return f"{r['flow_mods_per_second']:,} FLOW_MODs/s ({r['errors']} errors)"
    if name == "veth-bridge":
        return f"{r['mpps']:.2f} Mpps vs {r['kernel_mpps']:.2f} Mpps (ratio {r['ratio']:.2f})"
    if name == "lb":
        return f"imbalance {r['imbalance']:.3f} (shares {r['shares']})"
    if name == "flow-setup":
        return (f"{r['rules_per_second']:,} rules/s; {r['lookups_mpps']:.2f} Mpps bulk lookups "
                f"({r['lookups_mpps_one_at_a_time']:.2f} one at a time) in {r['flow_entries']:,} flows")
    return f"{r['mpps']:.2f} Mpps"


def wake() -> dict:
    """benchmarks/wake.c, built here: a futex wake-up on the waker's CPU and on another, idle one."""
    cpus = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "wake")
        subprocess.run(["gcc", "-O2", "-pthread", os.path.join(HERE, "wake.c"), "-o", exe], check=True)

        def run(sleeper: int, waker: int) -> dict:
            out = subprocess.run([exe, str(sleeper), str(waker)], check=True, capture_output=True, text=True)
            return json.loads(out.stdout)

        same = run(cpus[0], cpus[0])
        cross = run(cpus[-1], cpus[0]) if len(cpus) > 1 else same
    return {"scenario": "wake", "same_cpu_p50_us": same["p50_us"], "same_cpu_p99_us": same["p99_us"],
            "cross_cpu_p50_us": cross["p50_us"], "cross_cpu_p99_us": cross["p99_us"],
            "gap_us": same["gap_us"], "rounds": same["rounds"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=[*scenario_names(), *LATENCY, "wake"])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median is kept")
    args = p.parse_args()
    results = []
    for name in args.scenarios:
        if name in NF_START:
            r = nf_start(name.removeprefix("nf-start-"))
            r["scenario"] = name
            results.append(r)
            print(json.dumps(r), flush=True)
            continue
        if name in LATENCY:
            nfs, pack_below = LATENCY[name]
            runs = [{**run_latency(nfs=nfs, seconds=args.seconds, pack_below=pack_below), "scenario": name}
                    for _ in range(args.repeat)]
        elif name == "wake":
            runs = [wake() for _ in range(args.repeat)]
        else:
            runs = [run_scenario(name, seconds=args.seconds) for _ in range(args.repeat)]
        key = KEYS.get(name, "mpps")
        best = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
        best["runs"] = [r[key] for r in runs]
        best["median"] = statistics.median(best["runs"])
        results.append(best)
        print(json.dumps(best), flush=True)
    doc = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
        "results": results,
    }
    with open(os.path.join(HERE, "results.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    rows = ["| scenario | result | target |", "|---|---|---|"]
    for r in results:
        rows.append(f"| {r['scenario']} | {render(r)} | {TARGETS.get(r['scenario'], '')} |")
    with open(os.path.join(HERE, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(f"Measured {doc['when']} on {doc['machine']['cpus']} CPUs with `{doc['command']}`.\n\n")
        f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
