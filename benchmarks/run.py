"""Run the benchmark scenarios side by side and record the figures.

    python benchmarks/run.py [--seconds 5] [--repeat 1] [SCENARIO ...]

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
import sys
import time

from onvm.bench import SCENARIOS, run_scenario

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {"loop": ">= 10 Mpps", "loop-packet": ">= 1 Mpps", "chain3": ">= 3 Mpps", "idle": "< 2 % CPU",
           "firewall": ">= 8 Mpps"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=list(SCENARIOS))
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median is kept")
    args = p.parse_args()
    results = []
    for name in args.scenarios:
        runs = [run_scenario(name, seconds=args.seconds) for _ in range(args.repeat)]
        key = "cpu_percent" if name == "idle" else "mpps"
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
        value = (f"{r['cpu_percent']:.2f} % of one core" if r["scenario"] == "idle"
                 else f"{r['mpps']:.2f} Mpps")
        rows.append(f"| {r['scenario']} | {value} | {TARGETS.get(r['scenario'], '')} |")
    with open(os.path.join(HERE, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(f"Measured {doc['when']} on {doc['machine']['cpus']} CPUs with `{doc['command']}`.\n\n")
        f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
