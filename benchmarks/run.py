"""Run the benchmark scenarios one after another and record the figures.

    python benchmarks/run.py [--seconds 5] [--repeat 1] [SCENARIO ...]
    python benchmarks/run.py nf-start-process nf-start-namespace nf-start-podman

With no scenario named, runs every scenario marked default (``onvm bench --list``
lists them all).  Prints each result and writes benchmarks/results.json and
benchmarks/RESULTS.md (the table the README quotes): for each scenario the
median of its key figure over ``--repeat`` runs, shown and judged as its
description in ``onvm.bench`` says.  The machine is shared and noisy: compare
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

from onvm.bench import get, scenarios

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", default=[n for n, sc in scenarios().items() if sc.default])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median is kept")
    p.add_argument("--out", default=HERE, help="where results.json and RESULTS.md go (default: benchmarks/)")
    args = p.parse_args()
    chosen = [get(name) for name in args.scenarios]  # every name checked before anything runs
    results = []
    for sc in chosen:
        runs = [sc.execute(seconds=args.seconds) for _ in range(args.repeat)]
        best = sorted(runs, key=lambda r: r[sc.key])[len(runs) // 2]
        best["runs"] = [r[sc.key] for r in runs]
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
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    rows = ["| scenario | result | target |", "|---|---|---|"]
    for sc, r in zip(chosen, results, strict=True):
        rows.append(f"| {sc.name} | {sc.line(r)} | {sc.target} |")
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(f"Measured {doc['when']} on {doc['machine']['cpus']} CPUs with `{doc['command']}`.\n\n")
        f.write("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
