"""``wake``: how long a futex wake-up takes to reach a sleeping thread, on the waker's
CPU and on another, idle one, 100 us apart (the figure behind packing: a hand-off
to a thread on a halted vCPU waits for the hypervisor to run that vCPU again).
The threads are the hooks module's (hookbench.c); ``seconds`` does not apply."""

from __future__ import annotations

import os
from typing import Any

from onvm.bench._scenario import Option, Scenario


def run(seconds: float, verbose: bool, rounds: int = 5000, gap_us: int = 100) -> dict[str, Any]:
    """p50 and p99 of a wake-up on the waker's CPU and on another, idle one."""
    from onvm import _hooks

    cpus = sorted(os.sched_getaffinity(0))
    same = _hooks.futex_wake(cpus[0], cpus[0], gap_us=gap_us, rounds=rounds)
    cross = _hooks.futex_wake(cpus[-1], cpus[0], gap_us=gap_us, rounds=rounds) if len(cpus) > 1 else same
    return {"same_cpu_p50_us": same["p50_us"], "same_cpu_p99_us": same["p99_us"],
            "cross_cpu_p50_us": cross["p50_us"], "cross_cpu_p99_us": cross["p99_us"],
            "gap_us": gap_us, "rounds": same["rounds"]}


SCENARIOS = [
    Scenario("wake", "a futex wake-up reaching a thread on the waker's CPU and on another, idle one, "
             "100 us apart", key="cross_cpu_p50_us",
             target="why packing: a wake-up on another, idle CPU against one on the waker's", run=run,
             show=lambda r: (f"p50 {r['cross_cpu_p50_us']:.1f} us to an idle CPU, "
                             f"{r['same_cpu_p50_us']:.1f} us on the waker's CPU"),
             options=(Option("--rounds", 5000, "wake-ups per CPU pair"),
                      Option("--gap-us", 100, "microseconds between wake-ups"))),
]
