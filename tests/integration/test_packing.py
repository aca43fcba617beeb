"""Packing: a lightly loaded pipeline moves onto one CPU, and spreads again under load."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.integration.conftest import onvm, status, wait_for

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="packing needs two CPUs")


def allowed(pid: int, tid: int | None = None) -> str:
    """The CPU list a thread may run on (the main thread by default)."""
    with open(f"/proc/{pid}/task/{tid or pid}/status", encoding="ascii") as f:
        return next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list"))


def workers(pid: int) -> dict[str, str]:
    """Manager worker thread name -> its allowed CPUs."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm", encoding="ascii") as f:
            name = f.read().strip()
        if name.startswith(("onvm-rx", "onvm-tx")):
            out[name] = allowed(pid, int(tid))
    return out


def packed_on(name: str) -> int | None:
    cpu: int | None = status(name)["manager"]["packing"]["packed_on"]
    return cpu


def nf_now(name: str) -> int | None:
    cpu: int | None = status(name)["nfs"][0]["cpu_now"]
    return cpu


def home_list() -> str:
    """/proc's spelling of every CPU we may use, e.g. 0-1."""
    return allowed(os.getpid())


def test_a_light_pipeline_packs_onto_one_cpu(deploy):
    dep = deploy(["--port", "gen:flows=8,rate=2000", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    wait_for(lambda: packed_on(dep.name) is not None, what="packing", timeout=10)
    cpu = packed_on(dep.name)
    st = status(dep.name)
    nf, mgr_pid = st["nfs"][0], st["manager"]["pid"]
    assert st["manager"]["packing"]["load"] < 0.5
    wait_for(lambda: nf_now(dep.name) == cpu, what="the NF's move")
    assert allowed(nf["pid"]) == str(cpu)
    wait_for(lambda: set(workers(mgr_pid).values()) == {str(cpu)}, what="the workers' move")
    assert sorted(workers(mgr_pid)) == ["onvm-rx0", "onvm-tx0"]
    assert any("packed onto CPU" in e["text"] for e in st["events"])
    # Traffic still flows, and nothing is lost on the way.
    before = status(dep.name)["ports"][1]["tx"]
    wait_for(lambda: status(dep.name)["ports"][1]["tx"] > before + 500, what="traffic after packing")
    assert all(sum(n["drops"].values()) == 0 for n in status(dep.name)["nfs"])


def test_pack_below_zero_leaves_placement_alone(deploy):
    dep = deploy(["--port", "gen:flows=8,rate=2000", "--port", "null", "--default-chain", "1,out:1",
                  "--pack-below", "0"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    st = status(dep.name)
    assert st["manager"]["packing"] == {"enabled": False, "packed_on": None, "load": 0.0, "balanced": [],
                                        "pipelines": [], "below": 0.0, "above": 0.8}
    nf = st["nfs"][0]
    wait_for(lambda: status(dep.name)["ports"][1]["tx"] > 3000, what="traffic")  # > 1.5 s of it
    assert packed_on(dep.name) is None
    assert allowed(nf["pid"]) == str(nf["cpu"]) and nf["cpu_now"] == nf["cpu"]
    assert set(workers(st["manager"]["pid"]).values()) == {home_list()}


BURNER = textwrap.dedent('''
    import sys, time
    from onvm import NF

    nf = NF("burner", service=1, manager=sys.argv[1], quiet=True)
    work = {"us": 0}

    @nf.batch
    def handle(b):
        end = time.perf_counter() + work["us"] * 1e-6 * b.n
        while time.perf_counter() < end:
            pass

    @nf.message
    def on_message(nf, sender, data):
        work["us"] = int(data)

    nf.run()
''')


def test_rising_load_spreads_the_pipeline_again(deploy, tmp_path):
    dep = deploy(["--port", "gen:flows=8,rate=4000", "--port", "null", "--default-chain", "1,out:1"])
    script = tmp_path / "burner.py"
    script.write_text(BURNER)
    dep.procs.append(subprocess.Popen([sys.executable, str(script), dep.name]))
    dep.wait_running(1)
    wait_for(lambda: packed_on(dep.name) is not None, what="packing", timeout=10)
    mgr_pid = status(dep.name)["manager"]["pid"]
    # 300 us per packet at 4000 packets/s: 1.2 CPU, more than one CPU can give.
    r = onvm("send", "300", "--service", "1", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: packed_on(dep.name) is None, what="spreading", timeout=10)
    st = status(dep.name)
    nf = st["nfs"][0]
    assert st["manager"]["packing"]["load"] > 0.8
    assert any("spread again" in e["text"] for e in st["events"])

    def spread() -> bool:  # home again, or where the balancer put each: not all on one CPU
        where = {allowed(nf["pid"]), *workers(mgr_pid).values()}
        return len(where) > 1 or where == {home_list()}

    wait_for(spread, what="the threads to spread")
    # Spread by load: the NF that burns a CPU gets one of its own, the workers share the other.
    wait_for(lambda: any("threads spread by load" in e["text"] for e in status(dep.name)["events"]),
             what="balancing", timeout=10)
    wait_for(lambda: allowed(nf["pid"]) not in workers(mgr_pid).values(),
             what="the NF apart from the workers")
    # Light again: it packs again.
    assert onvm("send", "0", "--service", "1", "--name", dep.name).returncode == 0
    wait_for(lambda: packed_on(dep.name) is not None, what="packing again", timeout=10)
