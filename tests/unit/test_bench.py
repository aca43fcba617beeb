"""The benchmark scenarios' descriptions, and the three things made from them:
``onvm bench``, ``benchmarks/run.py`` and RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from onvm.bench import Option, Scenario, get, scenarios
from onvm.bench._cli import main as bench_main
from onvm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_is_described_once_and_fully() -> None:
    scs = scenarios()
    assert list(scs) == sorted(scs)
    for name, sc in scs.items():
        assert sc.name == name and sc.what and sc.key, name
        dests = [o.dest for o in sc.options]
        assert len(dests) == len(set(dests)), name
        assert set(sc.preset) <= set(dests), f"{name}: preset of options it does not take"
        for o in sc.options:
            assert o.choices is None or o.default in o.choices, f"{name} {o.flag}"
    # what used to be described elsewhere is here
    assert {"loop", "loop-packet", "chain3", "idle", "lb", "flow-setup", "firewall", "pcap-replay",
            "veth-bridge", "flow-mod", "latency", "latency-3", "latency-spread", "wake", "nf-start",
            "nf-start-process", "nf-start-namespace", "nf-start-podman"} <= set(scs)


def fake(**kw: Any) -> Scenario:
    def run(seconds: float, verbose: bool, size: int = 1, kind: str = "a") -> dict[str, Any]:
        return {"scenario": "ignored", "mpps": seconds * size, "kind": kind}

    return Scenario("fake", "a fake", key="mpps", target=">= 1 Mpps", run=run,
                    options=(Option("--size", 1, "size"), Option("--kind", "a", "kind", choices=("a", "b"))),
                    **kw)


def test_execute_takes_defaults_presets_and_options_and_names_the_result() -> None:
    assert fake().execute(seconds=2.0) == {"scenario": "fake", "mpps": 2.0, "kind": "a"}
    assert fake(preset={"size": 3}).execute(seconds=2.0)["mpps"] == 6.0
    assert fake().execute(seconds=1.0, size=5, kind="b") == {"scenario": "fake", "mpps": 5.0, "kind": "b"}
    assert fake().line({"mpps": 1.234}) == "1.23 Mpps"
    with pytest.raises(ConfigError, match="no option nfs"):
        fake().execute(nfs=3)
    with pytest.raises(ConfigError, match="--kind c: expected one of a, b"):
        fake().execute(kind="c")


def test_get_names_the_scenarios_when_there_is_no_such_one() -> None:
    with pytest.raises(ConfigError, match="no benchmark scenario 'nope'.*loop"):
        get("nope")


def test_cli_is_made_from_the_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--list"]) == 0
    out = capsys.readouterr().out
    for name, sc in scenarios().items():
        assert f"  {name} " in out
        with pytest.raises(SystemExit) as e:
            bench_main([name, "--help"])
        assert e.value.code == 0
        usage = capsys.readouterr().out
        for o in sc.options:
            assert (f"[{o.flag}" in usage) == (o.dest not in sc.preset), f"{name} {o.flag}"
    with pytest.raises(SystemExit) as e:  # an option of another scenario is refused
        bench_main(["loop", "--nfs", "3"])
    assert e.value.code == 2


def test_open_loop_scenarios_give_the_manager_their_ring_size(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--ring-size`` of ``paper`` and ``overload`` is the manager's: it sets how many slots are in
    flight under backpressure.  Its default is the manager's own; a bad size is refused in one line."""
    from onvm.bench import overload
    from onvm.manager.config import ManagerConfig

    class Started(Exception):
        pass

    seen: list[list[str]] = []

    def deployment(args: list[str], verbose: bool = False) -> Any:
        seen.append(list(args))
        raise Started

    monkeypatch.setattr(overload, "deployment", deployment)
    with pytest.raises(Started):
        get("paper").execute(seconds=0.1, ring_size=1024)
    assert seen[-1][seen[-1].index("--ring-size") + 1] == "1024"
    with pytest.raises(Started):
        get("overload").execute(seconds=0.1, nfs=2)
    assert seen[-1][seen[-1].index("--ring-size") + 1] == str(ManagerConfig.model_fields["ring_size"].default)
    for bad in ("1000", "32", "x"):
        with pytest.raises(SystemExit) as e:
            bench_main(["paper", "--ring-size", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].endswith(f"argument --ring-size: expected a power of two in 64..1048576, got '{bad}'")


def test_paper_alternates_its_setups_and_takes_each_rounds_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replicas' rate swings from one manager to the next: ``paper`` runs the three in turn,
    round after round, and reports medians and the median of each round's replicas/one NF."""
    from onvm.bench import overload

    # Mpps by setup (1: one NF, 2: the replicas, 5: the chain), round by round; ratios 0.9, 0.5, 0.9375
    rates = {1: iter([10.0, 20.0, 16.0]), 2: iter([9.0, 10.0, 15.0]), 5: iter([5.0] * 3)}
    order: list[int] = []

    def measure(setup: overload.Setup, seconds: float, rate: float | None = None,
                verbose: bool = False) -> dict[str, Any]:
        order.append(len(setup.nfs) if setup.workers == 1 else 2)
        assert setup.policy == ("local" if setup.workers == 2 else "hash")
        mpps = next(rates[order[-1]])
        return {"delivered_mpps": mpps, "delivered_gbps": mpps * 5, "late_drops": 0, "cpu": 2.0,
                "mpps_per_cpu": mpps / 2, "load": 1.0, "threads": [{"thread": "RX 0", "busy": mpps / 20}]}

    monkeypatch.setattr(overload, "measure", measure)
    r = overload.paper(seconds=0.1, rounds=3)
    assert order == [1, 2, 5] * 3
    assert r["rounds_one_nf_mpps"] == [10.0, 20.0, 16.0] and r["rounds_replicas_mpps"] == [9.0, 10.0, 15.0]
    assert (r["one_nf_mpps"], r["replicas_mpps"], r["chain5_mpps"]) == (16.0, 10.0, 5.0)
    assert r["replicas_ratio"] == 0.9  # not 10 / 16, the ratio of the medians
    assert r["rounds"] == 3 and r["replicas_policy"] == "local"
    # where the time went: the round of the median rate (16 of 10, 20, 16 Mpps for one NF)
    assert r["one_nf_threads"] == [{"thread": "RX 0", "busy": 0.8}] and r["chain5_threads"][0]["busy"] == 0.25


def test_threads_names_each_worker_and_nf_with_its_busy_share_and_cost() -> None:
    from onvm.bench.pipeline import threads
    from tests.unit.test_web_api import make_status

    before, after = make_status(100), make_status(300)
    got = threads(before, after, 1e-5)  # 200 packets in 10 us
    assert got == [{"thread": "RX 0", "busy": 0.6, "ns_per_packet": 30.0},
                   {"thread": "TX 0", "busy": 0.6, "ns_per_packet": 30.0},
                   {"thread": "NF 1 fwd", "busy": 1.0, "ns_per_packet": 50.0},
                   {"thread": "NF 2 mon", "busy": 0.5, "ns_per_packet": 50.0}]
    assert "busy" not in after["workers"][0]  # the statuses it was given are left as they were


def test_overload_sweeps_one_running_chain_round_after_round(monkeypatch: pytest.MonkeyPatch) -> None:
    """``overload`` starts one manager, changes its port's rate between windows, visits every
    point once a round, and reports each point's median: a window of a slow spell weighs no
    more than one of a fast spell, wherever in the sweep it falls."""
    import contextlib

    from onvm.bench import overload

    started: list[int] = []
    paced: list[float | None] = []
    spell = iter([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,  # the first window and round one
                  0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,  # round two: the machine slows down
                  1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # round three and the last window

    @contextlib.contextmanager
    def running(setup: overload.Setup, rate: float | None = None, verbose: bool = False) -> Any:
        started.append(len(setup.nfs))
        yield "dep"

    def window(dep: Any, setup: overload.Setup, seconds: float, rate: float | None) -> dict[str, Any]:
        capacity = 8e6 * next(spell)
        mpps = min(rate or capacity, capacity) / 1e6 * (0.9 if rate is None else 1.0)  # unpaced: 0.9
        return {"offered_mpps": (rate or capacity) / 1e6, "delivered_mpps": mpps, "read_mpps": mpps,
                "late_drops": 1, "first_nf_packets": 1000}

    monkeypatch.setattr(overload, "running", running)
    monkeypatch.setattr(overload, "pace", lambda dep, setup, rate: paced.append(rate))
    monkeypatch.setattr(overload, "window", window)
    r = overload.overload(seconds=0.1, nfs=5, rounds=3)
    sweep = [f * 7.2e6 for f in overload.SWEEP]  # the first window delivered 7.2 Mpps
    assert started == [5]
    assert paced == [*sweep, None, *sweep, None, *sweep, None]
    assert [len(p["windows"]) for p in r["points"]] == [3] * len(sweep) + [4]
    assert r["peak_mpps"] == 8.0 and r["overload_mpps"] == 7.2 and r["overload_ratio"] == 0.9
    assert r["curve"][0] == [1.8, 1.8] and r["curve"][-1] == [8.0, 7.2]
    assert r["late_drop_ratio"] == 0.001


def test_onvm_bench_runs_a_scenario_and_run_py_records_it(tmp_path: Path) -> None:
    """wake needs no manager: the whole path, CLI and run.py, in a second or two."""
    r = subprocess.run([sys.executable, "-m", "onvm.cli.main", "bench", "wake", "--rounds", "200", "--json"],
                       capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["scenario"] == "wake" and result["rounds"] == 200
    assert 0 < result["same_cpu_p50_us"] < 10_000
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "wake", "--repeat", "3",
                    "--out", str(tmp_path)], capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads((tmp_path / "results.json").read_text())
    (best,) = doc["results"]
    assert best["scenario"] == "wake" and len(best["runs"]) == 3
    assert best["median"] == best["cross_cpu_p50_us"]
    sc = get("wake")
    assert f"| wake | {sc.line(best)} | {sc.target} |" in (tmp_path / "RESULTS.md").read_text()
