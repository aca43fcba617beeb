"""The runner's restart budget is a rate, its back-off resets after a healthy run, and what an
NF's lifetimes leave behind in the manager is bounded (the last N NFs that left, events, exits)."""

from __future__ import annotations

from onvm.manager.events import KEPT, EventLog
from onvm.manager.registry import LEFT_KEPT, Registry
from onvm.topology.runner import BACKOFF_FIRST, BACKOFF_MAX, EXITS_KEPT, HEALTHY_RUN, Child, restart_delay
from onvm.topology.schema import NFSpec


def _child(max_restarts: int = 5, window: float = 60.0) -> Child:
    spec = NFSpec(program="simple_forward", service=1, max_restarts=max_restarts, restart_window=window)
    return Child(spec, 1, 0, None, None)  # type: ignore[arg-type]  # the budget needs no process


def _exit_and_restart(c: Child, ran: float, now: float) -> float | None:
    """The child ran ``ran`` seconds and exited at ``now``; restarted at once if allowed."""
    c.started_at = now - ran
    delay = restart_delay(c, now)
    if delay is not None:
        c.restarts += 1
        c.recent.append(now + delay)
    return delay


def test_an_nf_crashing_now_and_then_is_restarted_for_ever():
    c = _child(max_restarts=5, window=60.0)
    now = 0.0
    for _ in range(1000):  # a crash every two minutes, for a day and more
        now += 120.0
        assert _exit_and_restart(c, 120.0, now) == BACKOFF_FIRST
    assert c.restarts == 1000 and len(c.recent) <= 5


def test_a_crash_loop_backs_off_and_is_given_up_within_the_window():
    c = _child(max_restarts=5, window=60.0)
    delays = []
    now = 0.0
    while (d := _exit_and_restart(c, 0.05, now)) is not None:
        delays.append(d)
        now += d + 0.05
    assert delays == [BACKOFF_FIRST * 2 ** i for i in range(5)]  # 0.1, 0.2, 0.4, 0.8, 1.6
    assert c.restarts == 5


def test_the_back_off_is_capped_and_resets_after_a_healthy_run():
    c = _child(max_restarts=1000, window=1.0)
    now = 0.0
    for _ in range(20):
        now += 10.0  # outside the window each time: only the back-off grows
        d = _exit_and_restart(c, 0.5, now)
    assert d == BACKOFF_MAX
    now += 100.0
    assert _exit_and_restart(c, HEALTHY_RUN, now) == BACKOFF_FIRST


def test_exits_kept_per_instance_are_bounded():
    c = _child()
    for i in range(10 * EXITS_KEPT):
        c.exits.append(i)
    assert list(c.exits) == list(range(9 * EXITS_KEPT, 10 * EXITS_KEPT))


def test_nfs_that_left_and_events_are_rings_of_the_last_n():
    reg = Registry(nf_cpus=(0,))
    log = EventLog("t", quiet=True)
    for i in range(5 * LEFT_KEPT):
        rec = reg.register(f"nf{i}", 1, 1000 + i)
        reg.start(rec.nf_id)
        reg.closed(rec.nf_id)
        reg.retired(rec.nf_id, {"rx": i}, 0)
        log(f"NF {i} left")
    assert len(reg) == 0 and len(reg.left) == LEFT_KEPT
    assert [r.name for r in reg.left][-1] == f"nf{5 * LEFT_KEPT - 1}"
    for i in range(2 * KEPT):
        log(f"event {i}")
    assert len(log.recent(10 * KEPT)) == KEPT
    assert log.since(0, 5)[-1]["id"] == 2 * KEPT + 5 * LEFT_KEPT  # ids still count every event
