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
    steps: list[tuple[int, ...]] = field(default_factory=list)  # (now, want, taken[, new rate])
    answers: list[tuple[int, int]] = field(default_factory=list)  # (granted, next_due or 0)
    sent_at: list[int] = field(default_factory=list)  # the clock reading each packet left at
    model: models.PacerModel | None = None


def simulate(rate: int, seconds: float, seed: int, late_ns: int = 20_000, short: float = 0.0,
             stall: tuple[float, float] | None = None, held: float = 0.0, cap: int = 0,
             changes: tuple[tuple[float, int], ...] = ()) -> Run:
    """A worker polling a paced gen port (cap: its count): woken up to late_ns after the
    due time; with probability short the pool has room for fewer packets than granted,
    with probability held the worker leaves the port unread (backpressure) for a poll;
    stall=(at, for) holds the worker for a while (in seconds from the start); changes
    are (at, rate): the port's rate is set to rate (0: unpaced) at the first poll from then."""
    rng = random.Random(seed)
    model = models.PacerModel(rate, cap)
    run = Run(rate, cap, model=model)
    start = now = NS + rng.randrange(10**12)  # anywhere on the clock
    stalled = False
    pending = sorted(changes)
    while now < start + seconds * NS and not (cap and model.sent >= cap):  # a gen port is done
        change: tuple[int, ...] = ()
        if pending and now >= start + pending[0][0] * NS:
            change = (pending.pop(0)[1],)
            model.set_rate(now, change[0])
        if rng.random() < held:
            model.pace(now, 0)
            run.steps.append((now, 0, 0, *change))
            run.answers.append((0, 0))
            now += rng.randrange(1_000, 200_000)
            continue
        granted, due = model.pace(now, WANT)
        taken = granted if rng.random() >= short else rng.randrange(granted + 1)
        model.took(taken)
        run.steps.append((now, WANT, taken, *change))
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
            if pending:  # the manager kicks a sleeping worker when it changes the rate
                now = min(now, start + int(pending[0][0] * NS))
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


@pytest.mark.parametrize("rates", [(1000, 100_000), (100_000, 1000), (0, 5000), (5000, 0, 20_000),
                                   (3, 10**9, 7)])
def test_native_pacer_follows_the_model_through_rate_changes(rates):
    first, *later = rates
    changes = tuple((0.3 * (i + 1), r) for i, r in enumerate(later))
    for seed in range(3):
        check_native(simulate(first, 0.3 * len(rates), seed, changes=changes))
        check_native(simulate(first, 0.3 * len(rates), seed, late_ns=3_000_000, short=0.2, held=0.1,
                              changes=changes))


@pytest.mark.parametrize("before,after", [(2000, 50_000), (50_000, 2000), (0, 20_000)])
def test_a_rate_change_takes_effect_at_once_and_loses_nothing(before, after):
    """After a change the port sends at the new rate from the change on (counted over any
    tenth of a second, to a burst), and nothing is missed by a worker that keeps up."""
    run = simulate(before, 1.5, seed=before, late_ns=0, changes=((0.5, after),))
    check_native(run)
    assert run.model is not None and run.model.missed == 0
    changed = next(s[0] for s in run.steps if len(s) == 4)
    burst = min(256, max(1, after // 10000))
    tenth = NS // 10
    for start in range(changed, run.sent_at[-1] - tenth, tenth // 3):
        n = bisect.bisect_left(run.sent_at, start + tenth) - bisect.bisect_left(run.sent_at, start)
        assert abs(n - after // 10) <= burst + 1, ((start - changed) / NS, n)


def test_a_change_keeps_what_was_waiting():
    """Packets that fell due under the old rate and wait unread (a stalled worker) are
    still sent after a change, not dropped and not counted missed."""
    rate = 10_000
    run = simulate(rate, 1.0, seed=3, late_ns=0, stall=(0.2, 0.1), changes=((0.3, 1000),))
    check_native(run)
    assert run.model is not None and run.model.missed == 0
    changed = next(s[0] for s in run.steps if len(s) == 4)
    # 0.1 s of 10,000 a second waited through the stall; the new rate adds one a millisecond
    first_ms = (bisect.bisect_left(run.sent_at, changed + NS // 1000)
                - bisect.bisect_left(run.sent_at, changed))
    assert 995 <= first_ms <= 1010, first_ms


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
