"""Example NFs as real processes: `onvm nf NAME` under a manager, pcap in and out."""

from __future__ import annotations

import json
import os
import signal

from scapy.all import IP, UDP, Ether, wrpcap  # type: ignore[import-untyped]

from onvm import nfs
from tests.integration.conftest import onvm, pcap_records, status, wait_for


def test_nf_list_names_every_nf_on_one_line():
    r = onvm("nf", "--list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(nfs.NAMES)
    assert all(len(ln.split(None, 1)) == 2 for ln in lines)


def test_firewall_process_filters_a_pcap(deploy, tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"default": "pass", "rules": [{"prefix": "10.0.0.0/24", "action": "drop"}]}))
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    sent = [Ether() / IP(src=f"10.0.{i % 2}.{i}", dst="192.0.2.1") / UDP(sport=i) for i in range(1, 101)]
    wrpcap(str(src), sent)
    dep = deploy(["--port", f"pcap:{src}", "--port", f"pcap-out:{out}", "--default-chain", "1,out:1",
                  "--exit-when-done"])
    dep.start_nf(["firewall", "--service", "1", "--rules", str(rules), "--handler", "packet"])
    assert dep.procs[0].wait(timeout=30) == 0
    assert pcap_records(out) == [bytes(p) for p in sent if p[IP].src.startswith("10.0.1.")]


def _pool(name):
    st = status(name)
    return st["pool"]["free"], st["pool"]["total"]


def test_killed_fair_queue_gives_back_the_packets_it_held(deploy):
    # 1 packet/s out of fair_queue: nearly all of the 500 packets are held when it dies.
    dep = deploy(["--port", "gen:size=64,flows=8,count=500,rate=50k", "--port", "null",
                  "--default-chain", "1,out:1"])
    fq = dep.start_nf(["fair_queue", "--service", "1", "--rate", "1"])
    wait_for(lambda: status(dep.name)["ports"][0]["done"], timeout=20, what="the input to end")
    free, total = _pool(dep.name)
    assert total - free >= 450  # held by fair_queue
    os.kill(fq.pid, signal.SIGKILL)
    fq.wait(timeout=5)
    wait_for(lambda: _pool(dep.name)[0] == total, timeout=5, what="the pool to be whole")


def test_every_nf_explains_itself():
    for name in nfs.NAMES:
        r = onvm("nf", name, "--help")
        assert r.returncode == 0, (name, r.stderr)
        assert "Expects:" in r.stdout and "--service" in r.stdout, name
