"""``onvm bench``: its command line is made from the scenarios' descriptions."""

from __future__ import annotations

import argparse
import json

from onvm.bench._scenario import Scenario, get, scenarios


def listing() -> str:
    """Every scenario: its name, what runs and its target."""
    rows = [f"  {sc.name:<20} {sc.what}" + (f" [target: {sc.target}]" if sc.target else "")
            for sc in scenarios().values()]
    return "scenarios:\n" + "\n".join(rows)


def _add_scenario(sub: argparse._SubParsersAction, sc: Scenario) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(sc.name, help=sc.what, description=f"{sc.what}. Judged by {sc.key}"
                       + (f", target {sc.target}." if sc.target else "."))
    p.add_argument("--seconds", type=float, default=5.0, help="how long to measure (default 5)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    for o in sc.options:
        if o.dest in sc.preset:
            continue
        if isinstance(o.default, bool):
            p.add_argument(o.flag, action="store_true", help=o.help)
        else:
            p.add_argument(o.flag, type=o.convert(), default=o.default, choices=o.choices,
                           help=o.help + (f" (default {o.default})" if o.default is not None else ""))


def main(argv: list[str]) -> int:
    """Run the scenario ``argv`` names; print its figures (``--json``: one JSON object)."""
    p = argparse.ArgumentParser(prog="onvm bench", description="Run a benchmark scenario, print its figures.",
                                epilog="onvm bench SCENARIO --help shows a scenario's options.")
    p.add_argument("--list", action="store_true", help="list the scenarios")
    sub = p.add_subparsers(dest="scenario", metavar="SCENARIO")
    for sc in scenarios().values():
        _add_scenario(sub, sc)
    args = p.parse_args(argv)
    if args.list or args.scenario is None:
        print(listing())
        return 0
    sc = get(args.scenario)
    options = {o.dest: getattr(args, o.dest) for o in sc.options if o.dest not in sc.preset}
    result = sc.execute(seconds=args.seconds, verbose=not args.json, **options)
    print(json.dumps(result) if args.json else " ".join(f"{k}={v}" for k, v in result.items()))
    return 0
