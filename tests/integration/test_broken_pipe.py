"""A reader that goes away (``onvm manager ... 2>&1 | head -1``) does not take the manager down."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

from tests.integration.conftest import pcap_records


def test_manager_outlives_its_reader(runtime):
    """The manager keeps logging and printing stats into a pipe nobody reads, then stops
    as asked (here: when its input is done), exits 0 and removes its files."""
    name = f"t{uuid.uuid4().hex[:8]}"
    p = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "manager", "--name", name,
                          "--port", "gen:rate=2k,count=4000", "--port", "null", "--default-chain", "out:1",
                          "--no-wait", "--exit-when-done", "--stats", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert p.stdout is not None
        first = p.stdout.readline()
        assert b"running" in first
        p.stdout.close()  # as head -1 does after its line
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert os.listdir(runtime) == []


def test_topology_and_its_nfs_outlive_their_reader(runtime, tmp_path):
    """`onvm run FILE | head -1`: the runner, the manager and an NF that keeps printing
    (basic_monitor, forked from the warm parent) all carry on; every packet gets through."""
    out = tmp_path / "out.pcap"
    topo = tmp_path / "t.yaml"
    topo.write_text(textwrap.dedent(f"""\
        manager: {{name: t{uuid.uuid4().hex[:8]}, stats: 0.2, exit_when_done: true}}
        ports: ["gen:rate=2k,count=4000", "pcap-out:{out}"]
        nfs:
          - {{program: basic_monitor, service: 1, options: {{interval: 0.1}}, restart: "no"}}
        chains: {{default: [1, out:1]}}
        """))
    p = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "run", str(topo)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        p.stdout.close()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert len(pcap_records(out)) == 4000
    assert os.listdir(runtime) == []
