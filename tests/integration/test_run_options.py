"""``onvm run`` with everything ``onvm manager`` can do said in the file: the web endpoint, an
OpenFlow controller, a policy, autoscaling, VLAN and IPv6 rules; and its --json and overrides."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from pathlib import Path

import pytest
from scapy.all import IP, UDP, Dot1Q, Ether, IPv6, wrpcap  # type: ignore[import-untyped]

from onvm.errors import ManagerNotRunning
from tests.integration.conftest import status, wait_for

MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
V6_VLAN, V4_VLAN_DNS, PLAIN = 20, 10, 5


def _traffic(path: Path) -> None:
    eth = Ether(src=MAC_A, dst=MAC_B)
    v6 = [eth / Dot1Q(vlan=7) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=1000 + i, dport=9)
          for i in range(V6_VLAN)]
    dns = [eth / Dot1Q(vlan=7) / IP(src="10.1.2.3", dst="10.9.9.9") / UDP(sport=2000 + i, dport=53)
           for i in range(V4_VLAN_DNS)]
    plain = [eth / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=3000 + i, dport=53) for i in range(PLAIN)]
    wrpcap(str(path), v6 + dns + plain)


def test_a_file_says_everything_the_manager_can_do(runtime: str, tmp_path: Path) -> None:
    pytest.importorskip("os_ken")
    from tests.integration.test_sdn_osken import Controller, free_port

    name = f"all-{uuid.uuid4().hex[:8]}"
    _traffic(tmp_path / "in.pcap")
    ctl = Controller(free_port(), tmp_path / "ctl.log", {"STEER_WEB": "1001,2", "STEER_OTHER": "none"})
    ctl.start()
    topo = tmp_path / "all.yaml"
    topo.write_text(textwrap.dedent(f"""\
        manager:
          name: {name}
          web: 0                          # any free port on 127.0.0.1
          controllers: [tcp:127.0.0.1:{ctl.port}]
          fail_mode: standalone
          policies: {{1: round-robin}}
          autoscale: {{2: {{min: 1, max: 2}}}}
          flow_table_size: 4096
          pin: false
        ports:
          - pcap:{tmp_path / "in.pcap"}
          - "null"
        nfs:
          - {{name: plain, program: simple_forward, service: 1}}
          - {{name: tagged, program: simple_forward, service: 2}}
        chains:
          default: [1, out:1]
          tagged: [2, out:1]
        rules:
          - ip6 vlan 7 -> chain tagged                  # as onvm rule add writes it
          - match: {{proto: udp, vlan: 7, src: 10.0.0.0/8, dport: 53}}
            chain: tagged
        """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    argv = ["run", str(topo), "--json", "--stats", "0", "--pack-below", "0"]  # two flags over the file
    proc = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        def arrived():  # every packet went the way its rule says
            assert proc.poll() is None, "onvm run exited"
            try:
                st = status(name)
            except ManagerNotRunning:
                return None
            rx = {n["service"]: n["rx"] for n in st["nfs"]}
            return rx.get(2) == V6_VLAN + V4_VLAN_DNS and rx.get(1) == PLAIN and st

        st = wait_for(arrived, timeout=60, what="the packets through their chains")
        rules = [r for r in _rules(name) if r["chain"] == "tagged"]  # the file's, not the controller's
        assert [r["priority"] for r in rules] == [100, 100]  # the command line's default
        assert [r["hits"] for r in rules] == [V6_VLAN, V4_VLAN_DNS]  # one flow per packet
        services = {s["service"]: s for s in st["services"]}
        assert services[1]["policy"] == "round-robin"
        assert services[2]["autoscale"] == {"min": 1, "max": 2}
        assert st["manager"]["packing"]["enabled"] is False  # --pack-below 0 over the file
        assert st["flows"]["size"] == 4096
        wait_for(lambda: status(name)["openflow"]["controllers"][0]["connected"], timeout=30,
                 what="the controller")
        assert status(name)["openflow"]["fail_mode"] == "standalone"
        url = status(name)["manager"]["web"]

        def metrics() -> str:  # the web endpoint samples twice a second: wait for one with the NFs
            with urllib.request.urlopen(url + "metrics", timeout=10) as r:
                text = r.read().decode()
            return text if 'onvm_nf_rx_packets_total{nf="2",name="simple_forward",service="2"' in text else ""

        text = wait_for(metrics, timeout=10, what="/metrics with the NFs")
        assert f'onvm_up{{manager="{name}"}} 1' in text
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        ctl.kill()
    assert proc.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert {n["service"]: n["rx"] for n in final["status"]["nfs"] + final["status"]["left"]} == {
        1: PLAIN, 2: V6_VLAN + V4_VLAN_DNS}
    assert set(final["nfs"]) == {"plain.0", "tagged.0"}
    assert os.listdir(runtime) == []


def _rules(name: str) -> list[dict]:
    from onvm.control.client import Client

    with Client(name) as c:
        return list(c.rule_list()["rules"])


def test_run_prints_its_schema_and_refuses_a_bad_override(runtime: str, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "onvm.cli.main", "run", "--schema"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert schema["title"] == "pyonvm topology" and "web" in schema["$defs"]["ManagerOptions"]["properties"]
    topo = tmp_path / "t.yaml"
    topo.write_text("ports: ['null']\nchains: {default: [out:0]}\n")
    r = subprocess.run([sys.executable, "-m", "onvm.cli.main", "run", str(topo), "--check",
                        "--ring-size", "1000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == "onvm: error: --ring-size 1000: expected a power of two in 64..1048576"
    assert os.listdir(runtime) == []
