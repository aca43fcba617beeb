"""What the manager makes of an audit (onvm.manager.fencing), and how it kills a process."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from onvm.manager.fencing import Finding, kill_process, read_audit


def ev(kind: str, nf: int = 0, peer: int = 0, why: str = "", count: int = 0) -> dict[str, object]:
    return {"kind": kind, "nf": nf, "peer": peer, "why": why, "count": count}


def test_faults_and_stalls_fence_the_nf_that_made_them() -> None:
    out = read_audit([ev("fault", nf=4, why="slot", count=3), ev("fault", nf=5, why="record", count=1),
                      ev("stall", nf=6, peer=2, why="stall", count=1)])
    assert [f.fence for f in out] == [4, 5, 6]
    assert "did not hand over" in out[0].text and "(3 refused)" in out[0].text
    assert "outside their slot" in out[1].text
    assert "a reservation of a ring" in out[2].text and "NF 2" in out[2].text


def test_repairs_are_events_and_fence_nobody() -> None:
    out = read_audit([ev("ring", peer=3, count=7), ev("table", peer=5, why="chain"),
                      ev("table", peer=2, why="service"), ev("pool", peer=1, count=99999)])
    assert all(f.fence == 0 for f in out)
    assert out[0] == Finding("NF 3's RX ring was held up by an enqueue that never completed: "
                             "published again (7 entries)")
    assert out[1].text.startswith("chain 5 was left half written")
    assert out[2].text.startswith("service 2 was left half written")
    assert out[3].text.startswith("free stack 1's head names slot 99999")


def test_kill_process_waits_until_it_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    assert kill_process(proc.pid) == ""
    assert proc.wait(timeout=5) == -9 and time.monotonic() - t0 < 5


def test_kill_process_of_nobody_says_why() -> None:
    assert kill_process(0) == "its process is not known"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert kill_process(proc.pid) == ""  # gone already: nothing to do


def test_a_fault_found_by_an_audit_fences_no_nf_that_took_the_id_since() -> None:
    """The audit runs outside the manager's lock: between it and the fence, the NF it names may
    have left and a new NF registered under its id (its view in the region starts unfenced).
    The new NF did nothing: only an NF the region still marks fenced is fenced off."""
    import threading
    from types import SimpleNamespace

    from onvm.manager.fencing import Warden

    fenced_now = {3: False, 4: True}  # NF 3's id was taken again since the audit; NF 4 is the same NF
    asked: list[int] = []
    found = [ev("fault", nf=3, why="slot", count=1), ev("fault", nf=4, why="slot", count=1)]
    dp = SimpleNamespace(is_open=True, sweep_due=False, audit=lambda: found,
                         nf_info=lambda nf_id: {"fenced": fenced_now[nf_id], "drops": {}})
    nfs = SimpleNamespace(fenced=lambda nf_id, why: asked.append(nf_id))  # None: as if gone (nothing to kill)
    registry = SimpleNamespace(live=lambda: [])
    logged: list[str] = []
    Warden(dp, registry, nfs, threading.RLock(), logged.append).look()  # type: ignore[arg-type]
    assert asked == [4]


def fake_dataplane(native: Any, logged: list[str]) -> Any:
    """A DataPlane over a stand-in for its native manager, logging into ``logged``: NF n is
    named "nfN"; worker row 0 is the one RX worker, the rows after it TX workers."""
    from types import SimpleNamespace

    from onvm.manager.dataplane import DataPlane

    dp = DataPlane.__new__(DataPlane)
    dp.native = native
    dp.region = SimpleNamespace(nf_info=lambda nf_id: {"name": f"nf{nf_id}"}, nf_release=lambda nf_id: None)
    dp.layout = SimpleNamespace(rx_workers=1)
    dp.is_open, dp.sweep_due, dp.log = True, False, logged.append
    dp.audit = lambda: []
    return dp


def test_a_sweep_put_off_is_tried_again_on_each_look_until_it_runs() -> None:
    """A sweep frees nothing while the packet path is held up (DataPlane.sweep): the warden's
    looks sweep again, under the manager's lock, until one runs."""
    import threading
    from types import SimpleNamespace

    from onvm.manager.fencing import Warden

    results = [None, None, 5]  # the native sweep: put off twice, then 5 slots back
    lock = threading.RLock()
    held: list[bool] = []
    settled: list[bool] = []

    def native_sweep(grace: float, settle: bool) -> int | None:
        held.append(lock._is_owned())  # type: ignore[attr-defined]
        settled.append(settle)
        return results.pop(0)

    logged: list[str] = []
    stalled = {"nfs": [3], "workers": [1], "nfs_total": 1, "workers_total": 10}  # row 1: the first TX worker
    dp = fake_dataplane(SimpleNamespace(sweep=native_sweep, stalled=lambda: stalled), logged)
    assert dp.sweep(0.5) == 0 and dp.sweep_due  # as when an NF left
    assert logged == ["the pool's sweep is put off: NF 3 (nf3), the TX worker 0, 9 more did not pass a "
                      "loop iteration within 0.5 s (stopped?); it is tried again twice a second"]
    warden = Warden(dp, SimpleNamespace(live=lambda: []), SimpleNamespace(), lock, logged.append)  # type: ignore[arg-type]
    warden.look()
    assert dp.sweep_due and len(logged) == 1  # said once
    warden.look()
    assert not dp.sweep_due and logged[1:] == ["the pool's sweep ran",
                                               "5 slots that nobody could free any more returned to the pool"]
    warden.look()  # nothing due: no sweep
    assert results == [] and held == [False, True, True]
    assert settled == [False, True, True]  # tried again: the packet path first


def test_a_retirement_whose_grace_period_timed_out_names_who_held_it_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retiring an NF waits for every other NF and worker to pass a loop iteration; when one
    does not in time, the log names it, as the sweep's put-off does (and says nothing otherwise)."""
    from types import SimpleNamespace

    from onvm.manager import dataplane

    grace_ok = [False, True]
    logged: list[str] = []
    stalled = {"nfs": [3], "workers": [0], "nfs_total": 1, "workers_total": 1}  # row 0: the RX worker
    dp = fake_dataplane(SimpleNamespace(
        retire=lambda nf_id, grace, drain: {"reclaimed": 2, "grace_ok": grace_ok.pop(0), "drained": True},
        stalled=lambda: stalled, sweep=lambda grace, settle: 0), logged)
    monkeypatch.setattr(dataplane._native, "nf_latency", lambda region, nf_id: [])
    gone = dp.retire(4)
    assert not gone.grace_ok and gone.reclaimed == 2
    assert logged == ["NF 4 (nf4) was retired without a full grace period: NF 3 (nf3), the RX worker 0 "
                      "did not pass a loop iteration within 0.5 s (stopped?)"]
    assert dp.retire(5).grace_ok and len(logged) == 1
