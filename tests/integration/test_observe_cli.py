"""Latency in `onvm status`, `onvm top`, and the NF summary and CSV at exit."""

from __future__ import annotations

import csv

from onvm.control.client import Client
from tests.integration.conftest import onvm, status, wait_for


def test_status_top_and_nf_csv(deploy, tmp_path):
    out = tmp_path / "nf.csv"
    dep = deploy(["--port", "gen:size=64,flows=8,rate=20k", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1", "--csv", str(out)])
    dep.wait_running(1)
    wait_for(lambda: status(dep.name)["ports"][1]["latency"]["count"] > 100, what="end-to-end latency")

    r = onvm("status", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    assert "latency since start" in r.stdout and "port 1 (end to end)" in r.stdout
    assert "NF 1 simple_forward" in r.stdout
    assert "pipeline uses" in r.stdout  # packing on: its load, and packed or spread
    assert "time on bursts since start" in r.stdout
    work = {line.split(" packets ")[0].strip(): line for line in r.stdout.splitlines() if " a packet" in line}
    assert {"RX worker 0", "TX worker 0", "NF 1 simple_forward"} <= set(work), r.stdout
    assert "% " not in work["NF 1 simple_forward"] and "busy" in work["RX worker 0"]

    r = onvm("top", "--name", dep.name, "--iterations", "2", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    assert "simple_forward" in r.stdout and "ports" in r.stdout and "events" in r.stdout
    assert "pipeline uses" in r.stdout
    assert "workers" in r.stdout and "ns/pkt" in r.stdout and "RX 0" in r.stdout and "TX 0" in r.stdout

    nf_id = status(dep.name)["nfs"][0]["id"]
    with Client(dep.name) as c:
        c.request("stop_nf", nf_id=nf_id)
    assert dep.procs[1].wait(timeout=10) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1
    row = rows[0]
    assert row["name"] == "simple_forward" and int(row["rx"]) > 0 and row["rx"] == row["tx"]
    assert float(row["latency_p50_us"]) > 0 and float(row["latency_max_us"]) >= float(row["latency_p99_us"])
    assert row["stopped"] == "manager"
    # the NF that left, with the slots taken back from it, in the plain status too
    r = onvm("status", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    left = r.stdout.split("NFs that left", 1)[1]
    assert "simple_forward" in left and "stopped" in left and "slots reclaimed" in left


def test_bench_latency_json(runtime):
    import json

    r = onvm("bench", "latency", "--seconds", "1", "--rate", "5000", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["scenario"] == "latency" and result["nfs"] == 1
    assert result["packets"] > 1000  # accounting, not timing: about 5000 went through
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    assert len(result["per_nf_p50_us"]) == 1


def test_workers_count_their_packets_and_time(deploy):
    """Status's workers: the RX worker counted every packet it read, the TX worker every packet the
    NF handed back, and both spent time on them; the NF's time is there too."""
    dep = deploy(["--port", "gen:size=64,flows=8,rate=50k,count=20000", "--port", "null",
                  "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    wait_for(lambda: status(dep.name)["ports"][1]["tx"] == 20000, what="all 20000 packets out")
    st = status(dep.name)
    rx, tx = st["workers"]
    assert (rx["role"], rx["index"], tx["role"], tx["index"]) == ("rx", 0, "tx", 0)
    assert rx["packets"] == st["ports"][0]["rx"] == 20000
    assert tx["packets"] == st["nfs"][0]["tx"] == 20000
    assert rx["busy_ns"] > 0 and tx["busy_ns"] > 0 and st["nfs"][0]["busy_ns"] > 0
    # what top shows: nothing moved since, so nothing was busy and no packet cost anything
    from onvm.web.sampler import add_rates

    later = status(dep.name)
    add_rates(later, st, 1.0)
    assert later["workers"][0]["pps"] == 0.0 and later["workers"][0]["ns_per_packet"] is None
