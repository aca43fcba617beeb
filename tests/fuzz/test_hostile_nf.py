"""The hostile-NF fuzzer: an NF writes random bytes into its rings, its record and the
slots it holds, round after round, among NFs that behave.

Each round starts a hostile NF (tests/fuzz/hostile_nf.py) with a new seed on a chain of
its own (port 1 -> hostile -> well-behaved B -> port 3), beside the well-behaved chain
(port 0 -> A -> B -> port 2).  A round ends when the manager has fenced the hostile NF
off (killed it and reclaimed what it held), or after ROUND_SECONDS (then it is stopped).
After every round: the manager answers and never counts more free slots than the pool
has, A and B live and keep forwarding.  At the end, once the inputs are exhausted, the
pool is whole.  ONVM_FUZZ_SECONDS sets the time budget (the sanitizer build runs it for
a minute, a plain run for a few seconds); ONVM_FUZZ_SEED the first seed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import deploy, runtime, wait_for  # noqa: F401 (fixtures)

FUZZ_SECONDS = float(os.environ.get("ONVM_FUZZ_SECONDS", "8"))
FIRST_SEED = int(os.environ.get("ONVM_FUZZ_SEED", "1"))
ROUND_SECONDS = 4.0
RATE = 10_000  # packets per second on each input
POOL = 4096
HOSTILE = Path(__file__).with_name("hostile_nf.py")


def alive(dep: Any) -> dict[str, Any]:
    """The manager's status, checked: it answers whatever the hostile NF wrote, and the
    pool never has more free slots than it holds (a slot freed twice would show)."""
    st: dict[str, Any] = dep.status()
    pool = st["pool"]
    assert pool["free"] <= pool["total"], f"more free slots than the pool has: {pool}"
    return st


def forwarded(dep: Any) -> int:
    return sum(n["rx"] for n in alive(dep)["nfs"] if n["name"] == "simple_forward")


def run_round(dep: Any, seed: int) -> bool:
    """One hostile NF until the manager fences it off or the round ends; True if fenced."""
    hostile = subprocess.Popen([sys.executable, str(HOSTILE), dep.name, str(seed), str(1 + seed % 7)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hostile.wait(timeout=ROUND_SECONDS)
    except subprocess.TimeoutExpired:
        hostile.send_signal(signal.SIGTERM)
        try:
            hostile.wait(timeout=5)
        except subprocess.TimeoutExpired:
            hostile.kill()
            hostile.wait()
    return hostile.returncode == -signal.SIGKILL  # only the manager kills it


def whole(dep: Any) -> bool:
    st = alive(dep)
    return all(p["done"] for p in st["ports"][:2]) and st["pool"]["free"] == st["pool"]["total"]


def last_events(dep: Any) -> list[str]:
    """The manager's last events (which NF it fenced off and why), for a failure's message."""
    try:
        return [e["text"] for e in dep.status()["events"]]
    except Exception as e:  # noqa: BLE001 - the manager itself may be what failed
        return [f"(the manager did not answer: {e!r})"]


def stamps(dep: Any) -> dict[int, int]:
    """The pool's ownership stamps and how many slots carry each (for a failure's message)."""
    from onvm import _native

    region = _native.Region.attach(dep.status()["manager"]["region"])
    try:
        return dict(region.owners())
    finally:
        region.close()


@pytest.mark.slow
def test_a_hostile_nf_costs_the_manager_and_the_other_nfs_nothing(deploy):  # noqa: F811
    count = int(RATE * (FUZZ_SECONDS + 10))  # enough for every round, exhausted at the end
    dep = deploy(["--port", f"gen:rate={RATE},flows=64,count={count}",
                  "--port", f"gen:rate={RATE},flows=64,count={count},src=10.9.0.1",
                  "--port", "null", "--port", "null",
                  "--default-chain", "1,3,out:2", "--chain", "hostile=2,3,out:3",
                  "--rule", "any in-port 1 -> chain hostile", "--pool-size", str(POOL), "--ring-size", "512",
                  "--no-wait"])
    a = dep.start_nf(["simple_forward", "--service", "1"])
    b = dep.start_nf(["simple_forward", "--service", "3"])
    dep.wait_running(2)
    deadline = time.monotonic() + FUZZ_SECONDS
    rounds = fenced = 0
    texts: set[str] = set()  # the manager's events, read after every round (status shows the last 20)
    while rounds == 0 or time.monotonic() < deadline:
        seed = FIRST_SEED + rounds
        try:
            before = forwarded(dep)
            fenced += run_round(dep, seed)
            texts.update(e["text"] for e in alive(dep)["events"])
            assert dep.procs[0].poll() is None, "the manager died"
            assert a.poll() is None and b.poll() is None, "a well-behaved NF died"
            wait_for(lambda before=before: forwarded(dep) > before + 100, what="A and B to keep forwarding")
        except AssertionError as e:
            e.add_note(f"in the round of seed {seed} (ONVM_FUZZ_SEED={seed} starts there)")
            e.add_note("the manager's last events:\n  " + "\n  ".join(last_events(dep)))
            raise
        rounds += 1
    print(f"{rounds} rounds, {fenced} hostile NFs fenced off")
    assert fenced >= 1 and any("fenced off" in t for t in texts), sorted(texts)
    # Inputs exhausted, everything drained: every slot is back, none twice.
    try:
        wait_for(lambda: whole(dep), timeout=FUZZ_SECONDS + 30, what="the pool to be whole")
    except AssertionError:
        st = dep.status()
        raise AssertionError(f"the pool is not whole: {st['pool']}, stamps {stamps(dep)}") from None
    assert alive(dep)["pool"]["total"] == POOL
