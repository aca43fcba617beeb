"""A paced port's schedule: the native pacer against PacerModel.

A simulated RX worker drives the model: it asks for a burst, sends what the
pool lets it, and when the pacer allows nothing it sleeps until the time the
pacer named, waking a little late.  The native pacer is then driven with the
same clock readings and must answer every step exactly as the model did.
The schedule itself is checked from the send times: no packet leaves before
its time on the grid ``t0 + k / rate``, none leaves later than a burst plus
the wake-up delay after it, so the rate holds over any window.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

import pytest

from onvm import _hooks

try:
    from . import models
except ImportError:  # collected as rootdir modules: tests/native is no package
    import models  # type: ignore[no-redef]

NS = 10**9
WANT = 64  # the RX worker's burst


@dataclass
class Run:
    rate: int
    cap: int
    steps: list[tuple[int, int, int]] = field(default_factory=list)  # (now, want, taken)
    answers: list[tuple[int, int]] = field(default_factory=list)  # (granted, next_due or 0)
    sent_at: list[int] = field(default_factory=list)  # the clock reading each packet left at
    model: models.PacerModel | None = None


def simulate(rate: int, seconds: float, seed: int, late_ns: int = 20_000, short: float = 0.0,
             stall: tuple[float, float] | None = None, held: float = 0.0, cap: int = 0) -> Run:
    """A worker polling a paced gen port (cap: its count): woken up to late_ns after the
    due time; with probability short the pool has room for fewer packets than granted,
    with probability held the worker leaves the port unread (backpressure) for a poll;
    stall=(at, for) holds the worker for a while (in seconds from the start)."""
    rng = random.Random(seed)
    model = models.PacerModel(rate, cap)
    run = Run(rate, cap, model=model)
    start = now = NS + rng.randrange(10**12)  # anywhere on the clock
    stalled = False
    while now < start + seconds * NS and not (cap and model.sent >= cap):  # a gen port is done
        if rng.random() < held:
            model.pace(now, 0)
            run.steps.append((now, 0, 0))
            run.answers.append((0, 0))
            now += rng.randrange(1_000, 200_000)
            continue
        granted, due = model.pace(now, WANT)
        taken = granted if rng.random() >= short else rng.randrange(granted + 1)
        model.took(taken)
        run.steps.append((now, WANT, taken))
        run.answers.append((granted, due or 0))
        run.sent_at += [now] * taken
        if stall and not stalled and now >= start + stall[0] * NS:
            stalled = True
            now += int(stall[1] * NS)
        elif granted:
            now += rng.randrange(100, 2_000)  # the next poll of a busy worker
        else:
            assert due is not None and due > now
            now = due + rng.randrange(late_ns + 1)
    return run


def check_native(run: Run) -> None:
    answers, missed = _hooks.pace_run(run.rate, run.steps, run.cap)
    assert run.model is not None
    for i, (got, want) in enumerate(zip(answers, run.answers, strict=True)):
        if got != want:
            lo = max(0, i - 6)
            last = "\n  ".join(f"{s} -> model {a}" for s, a in zip(run.steps[lo:i + 1],
                                                                  run.answers[lo:i + 1], strict=True))
            pytest.fail(f"rate {run.rate}: step {i} {run.steps[i]}: native {got}, model {want}\n  {last}")
    assert missed == run.model.missed


RATES = [1, 3, 100, 100_000]


@pytest.mark.parametrize("rate", RATES + [7, 9_999, 999_983, 10**9])
def test_native_pacer_follows_the_model(rate):
    seconds = min(6.0, 200_000 / rate)
    for seed in range(3):
        check_native(simulate(rate, seconds, seed))
        check_native(simulate(rate, seconds, seed, late_ns=3_000_000, short=0.2, held=0.1))


@pytest.mark.parametrize("rate", RATES)
def test_packets_leave_on_the_grid(rate):
    """Every packet leaves at or after its time t0 + k/rate, and no later than a burst
    plus the wake-up delay after it: the rate holds exactly over any window."""
    late_ns = 20_000
    seconds = min(12.0, 300_000 / rate)  # a dozen seconds: a loss per second would show
    run = simulate(rate, seconds, seed=rate)
    check_native(run)
    assert run.model is not None and run.model.missed == 0
    burst, t0 = run.model.burst, run.model.t0
    assert t0 is not None
    slack = (burst - 1) * NS // rate + late_ns + 2_000 + 1
    for k, at in enumerate(run.sent_at):
        due = t0 + k * NS / rate
        assert due - 1 <= at <= due + slack, (
            f"rate {rate}: packet {k} left {(at - due) / 1e3:+.1f} us from its time on the grid")
    # and so, counted over one second anywhere in the run, the rate is exact to a burst
    for start in range(t0, run.sent_at[-1] - NS, NS // 7):
        n = bisect.bisect_left(run.sent_at, start + NS) - bisect.bisect_left(run.sent_at, start)
        assert abs(n - rate) <= burst, (rate, (start - t0) / NS, n)


def test_a_stall_keeps_the_grid():
    """A worker held for two seconds finds the last 4096 packets of its schedule waiting
    (as in a NIC's ring) and sends them at once; the older ones are missed, and then
    packets go out on the same grid as before."""
    rate = 5000
    run = simulate(rate, 4.0, seed=5, late_ns=0, stall=(0.5, 2.0))
    check_native(run)
    assert run.model is not None and run.model.t0 is not None
    assert abs(run.model.missed - (2 * rate - models.PacerModel.QUEUE)) <= 2
    t0 = run.model.t0
    after = [at for at in run.sent_at if at > t0 + 3 * NS]
    assert after and all((at - t0) * rate % NS < NS // 100 for at in after), "off the grid"


def test_a_count_ends_the_schedule():
    """With a count, sent and missed together never pass it, stall or not."""
    for seed in range(3):
        run = simulate(100_000, 1.5, seed, stall=(0.2, 0.5), held=0.05, cap=30_000)
        check_native(run)
        assert run.model is not None and run.model.missed > 0
        assert len(run.sent_at) + run.model.missed == 30_000


def test_unpaced_and_zero_want():
    answers, missed = _hooks.pace_run(0, [(5, 64, 64), (5, 0, 0)])
    assert answers == [(64, 0), (0, 0)] and missed == 0
    answers, _ = _hooks.pace_run(10, [(NS, 0, 0), (NS, 4, 4)])
    assert answers[1] == (1, 0)
