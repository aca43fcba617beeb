"""What the manager makes of an audit (onvm.manager.fencing), and how it kills a process."""

from __future__ import annotations

import subprocess
import sys
import time

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
                      ev("table", peer=2, why="service"), ev("pool", count=99999)])
    assert all(f.fence == 0 for f in out)
    assert out[0] == Finding("NF 3's RX ring was held up by an enqueue that never completed: "
                             "published again (7 entries)")
    assert out[1].text.startswith("chain 5 was left half written")
    assert out[2].text.startswith("service 2 was left half written")
    assert "slot 99999" in out[3].text


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
    dp = SimpleNamespace(is_open=True, audit=lambda: found,
                         nf_info=lambda nf_id: {"fenced": fenced_now[nf_id], "drops": {}})
    nfs = SimpleNamespace(fenced=lambda nf_id, why: asked.append(nf_id))  # None: as if gone (nothing to kill)
    registry = SimpleNamespace(live=lambda: [])
    logged: list[str] = []
    Warden(dp, registry, nfs, threading.RLock(), logged.append).look()  # type: ignore[arg-type]
    assert asked == [4]
