"""``onvm run``: topologies end to end, each isolation mode, supervision, Ctrl-C, bad files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from onvm.control.client import Client
from onvm.errors import OnvmError
from onvm.topology.isolation import backend
from tests.integration.conftest import need, onvm, pcap_records, probe_isolated, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODES = ["process", "namespace", "podman"]


def _run(path: Path, *args: str, cwd: Path | None = None, **kw) -> subprocess.Popen[str]:
    # absolute import paths: the command may run in another directory
    pp = os.pathsep.join(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)
    env = dict(os.environ, PYTHONPATH=pp)
    return subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "run", str(path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env, **kw)


def _status(name: str) -> dict:
    with Client(name) as c:
        return c.request("status")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "topo.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("mode", MODES)
def test_each_isolation_mode_carries_packets(runtime, tmp_path, request, mode):
    image = need(mode, request)
    out = tmp_path / "out.pcap"
    topo = _write(tmp_path, f"""\
        manager: {{name: iso{uuid.uuid4().hex[:6]}, exit_when_done: true, ring_size: 8192}}
        ports: ["gen:size=96,flows=32,count=3000,rate=20k", "pcap-out:{out}"]
        nfs:
          - {{name: fwd, program: simple_forward, service: 1, isolation: {mode}{f", image: '{image}'"
                                                                                if image else ""}}}
        chains: {{default: [1, out:1]}}
        """)
    p = _run(topo, "--quiet")
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert len(pcap_records(out)) == 3000


SCRIPT = """\
from onvm import NF

nf = NF("counter")  # manager, service and instance come from the topology


@nf.packet
def handle(pkt, meta):
    meta.next()


nf.run()
"""


@pytest.mark.parametrize("mode", ["process", "namespace"])
def test_nf_script_runs_from_a_topology(runtime, tmp_path, request, mode):
    need(mode, request)
    (tmp_path / "counter.py").write_text(SCRIPT)
    out = tmp_path / "out.pcap"
    topo = _write(tmp_path, f"""\
        manager: {{name: sc{uuid.uuid4().hex[:6]}, exit_when_done: true}}
        ports: ["gen:size=64,count=500,rate=10k", "pcap-out:{out}"]
        nfs:
          - {{program: {tmp_path / "counter.py"}, service: 3, isolation: {mode}}}
        chains: {{default: [3, out:1]}}
        """)
    p = _run(topo, "--quiet")
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert len(pcap_records(out)) == 500


PROBE = """\
import json, os, socket, sys
pids = [p for p in os.listdir('/proc') if p.isdigit()]
def writable(path):
    try:
        with open(path, 'a'):
            return True
    except OSError:
        return False
print(json.dumps({'pids': pids, 'secret': os.path.exists(sys.argv[1]), 'tests': os.path.exists(sys.argv[2]),
                  'shared': open(sys.argv[3]).read(), 'shared_rw': writable(sys.argv[3]),
                  'usr_rw': writable('/usr/onvm-probe'), 'root_rw': writable('/onvm-probe'),
                  'hostname': socket.gethostname(), 'ifaces': sorted(os.listdir('/sys/class/net'))
                  if os.path.isdir('/sys/class/net') else []}))
"""


@pytest.mark.parametrize("mode", ["namespace", "podman"])
def test_isolated_nf_sees_only_its_mounts(tmp_path, request, mode):
    image = need(mode, request)
    secret = tmp_path / "secret"
    secret.write_text("host only")
    shared = tmp_path / "region"
    shared.write_text("shared")
    seen = probe_isolated(mode, image, PROBE, [str(secret), str(ROOT / "tests"), str(shared)], [str(shared)])
    # its own pid namespace: a handful of low pids, none of the host's processes
    assert len(seen["pids"]) <= 3 and all(int(p) < 10 for p in seen["pids"]), seen["pids"]
    assert not seen["secret"] and not seen["tests"]  # host files outside its mounts are absent
    assert seen["shared"] == "shared" and seen["shared_rw"]  # the shared files are there, writable
    assert not seen["usr_rw"] and not seen["root_rw"]  # read-only root
    assert seen["hostname"] != os.uname().nodename
    assert set(seen["ifaces"]) <= {"lo"}  # no network but its own loopback


def _nfs(name: str) -> list[dict]:
    return _status(name)["nfs"]


@pytest.mark.parametrize("policy", ["on-failure", "no"])
def test_killed_nf_is_restarted_by_policy_and_ctrl_c_stops_all(runtime, tmp_path, policy):
    name = f"rs{uuid.uuid4().hex[:6]}"
    topo = _write(tmp_path, f"""\
        manager: {{name: {name}, stats: 0}}
        ports: ["gen:size=64,flows=64,rate=20k", "null"]
        nfs:
          - {{name: mon, program: basic_monitor, service: 1, options: {{interval: 0}}}}
          - {{name: fwd, program: simple_forward, service: 2, restart: {policy}, cpus: 0}}
        chains: {{default: [1, 2, out:1]}}
        """)
    p = _run(topo, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(runtime, f"onvm-{name}.sock")) and
                 sum(n["state"] == "running" and n["rx"] > 0 for n in _nfs(name)) == 2,
                 timeout=30, what="both NFs to handle packets")
        nfs = {n["name"]: n for n in _nfs(name)}
        victim = nfs["simple_forward"]
        assert victim["cpu"] == 0 and os.sched_getaffinity(victim["pid"]) == {0}  # pinned as asked
        assert nfs["basic_monitor"]["cpu"] is not None
        text = onvm("status", "--name", name).stdout
        assert f"cpu {victim['cpu']}" in text
        os.kill(victim["pid"], signal.SIGKILL)
        if policy == "on-failure":
            back = wait_for(lambda: [n for n in _nfs(name) if n["service"] == 2 and n["pid"] != victim["pid"]
                                     and n["state"] == "running"], timeout=20, what="the restart")
            assert back[0]["instance"] == victim["instance"]  # the same flows come back to it
            wait_for(lambda: [n for n in _nfs(name) if n["service"] == 2 and n["rx"] > 0], timeout=10,
                     what="packets through the restarted NF")
        else:
            wait_for(lambda: all(n["service"] != 2 for n in _nfs(name)), timeout=10, what="retirement")
            time.sleep(1.0)
            assert all(n["service"] != 2 for n in _nfs(name))  # left stopped
        st = _status(name)
        assert any(n["state"] == "failed" for n in st["left"])
        pids = [n["pid"] for n in st["nfs"]]
        os.kill(p.pid, signal.SIGINT)  # Ctrl-C
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, stderr
    assert "summary after" in stderr
    pool = [ln for ln in stderr.splitlines() if "pool:" in ln][-1]
    free, total = pool.split("pool:")[1].split(" slots")[0].split(" of ")
    assert int(free) == int(total)  # the dead NF's slots came back; nothing leaked
    if policy == "on-failure":
        assert "restarting fwd.0" in stderr and "restarts: fwd.0 1" in stderr
    else:
        assert "restart policy 'no': left stopped" in stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_bad_topology_starts_nothing(runtime, tmp_path):
    topo = _write(tmp_path, """\
        manager: {name: bad1}
        ports: [gen:size=64, "null"]
        nfs:
          - {program: simple_forward, service: 1, isolation: kvm}
        chains: {default: [1, out:1]}
        """)
    r = onvm("run", str(topo))
    assert r.returncode == 1
    assert r.stderr.strip() == (f"onvm: error: {topo}:4: nfs[0].isolation: Input should be 'process', "
                                "'namespace', 'podman' or 'docker'")
    assert os.listdir(runtime) == []


def test_missing_runtime_fails_before_anything_starts(runtime, tmp_path):
    topo = _write(tmp_path, """\
        manager: {name: miss1}
        ports: [gen:size=64, "null"]
        nfs:
          - {program: simple_forward, service: 1, isolation: namespace}
        chains: {default: [1, out:1]}
        """)
    env = dict(os.environ, PATH="/nonexistent")
    r = subprocess.run([sys.executable, "-m", "onvm.cli.main", "run", str(topo)], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert (f"{topo}: nfs[0] (simple_forward): isolation 'namespace' needs bwrap, which is not installed "
            "(install it with: apt-get install bubblewrap)") in r.stderr
    assert os.listdir(runtime) == []


@pytest.mark.parametrize("example,count", [("firewall-chain.yaml", 100000), ("bump-in-the-wire.yaml", 20000),
                                           ("lb-replicas.yaml", 100000)])
def test_examples_run(runtime, tmp_path, request, example, count):
    if example == "lb-replicas.yaml":
        need("namespace", request)
    shutil.copy(ROOT / "examples" / example, tmp_path / example)
    p = _run(tmp_path / example, "--json", cwd=tmp_path)
    stdout, stderr = p.communicate(timeout=180)
    assert p.returncode == 0, stderr
    assert "summary after" in stderr
    # The generator sends `count` frames, less those it missed while the chain held it
    # (backpressure on a loaded machine); whatever it sent reaches the end, none lost inside.
    status = json.loads(stdout.strip().splitlines()[-1])["status"]
    gen = status["ports"][0]
    assert gen["rx"] > 0 and gen["rx"] + gen["drops"].get("missed", 0) == count, gen
    assert sum(gen["drops"].values()) == gen["drops"].get("missed", 0), gen
    if example != "lb-replicas.yaml":
        (out,) = tmp_path.glob("*.pcap")
        fw = sum(n["actions"]["drop"] for n in status["nfs"] + status["left"] if n["service"] == 2)
        assert len(pcap_records(out)) == gen["rx"] - fw
        if example == "firewall-chain.yaml":  # it drops flows 0-14 of 256 (10.0.0.0/28)
            assert fw > 0
            if not gen["drops"]:  # all sent: 15 in each of 390 rounds of 256, and 15 of the last 160
                assert fw == 390 * 15 + 15
    else:  # every replica got a share of the flows, and they add up to what the generator sent
        shares = [int(ln.split(": in ")[1].split(",")[0]) for ln in stderr.splitlines()
                  if ln.startswith("  NF ") and "simple_forward (service 1." in ln]
        assert len(shares) == 3 and all(s > 0 for s in shares), shares
        assert sum(shares) == gen["rx"]


def test_image_built_from_other_code_is_refused(nf_image, monkeypatch):
    from onvm.topology import image

    iso = backend("podman")
    iso.check_image(nf_image)  # just built from this code: fine
    monkeypatch.setattr(image, "package_digest", lambda: "0" * 16)
    with pytest.raises(OnvmError, match="holds other onvm code than this installation"):
        iso.check_image(nf_image)
    with pytest.raises(OnvmError, match="image localhost/onvm-nf:nosuch not found; build it with "
                                        "'onvm image build --runtime podman'"):
        iso.check_image("localhost/onvm-nf:nosuch")
    assert nf_image != "localhost/onvm-nf:latest"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_manager_pinning_and_least_loaded_placement(runtime, tmp_path):
    name = f"pl{uuid.uuid4().hex[:6]}"
    topo = _write(tmp_path, f"""\
        manager: {{name: {name}, stats: 0, cpus: 0, nf_cpus: "0-1"}}
        ports: ["gen:size=64,rate=5k", "null"]
        nfs:
          - {{name: a, program: simple_forward, service: 1}}
          - {{name: b, program: simple_forward, service: 2}}
          - {{name: c, program: basic_monitor, service: 3, options: {{interval: 0}}}}
        chains: {{default: [1, 2, 3, out:1]}}
        """)
    p = _run(topo, "--quiet", start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(runtime, f"onvm-{name}.sock")) and
                 sum(n["state"] == "running" for n in _nfs(name)) == 3, timeout=30, what="three NFs")
        st = _status(name)
        assert os.sched_getaffinity(st["manager"]["pid"]) == {0}  # manager and workers pinned
        assert st["manager"]["cpus"] == "0" and st["manager"]["nf_cpus"] == "0-1"
        # CPU 0 carries the two workers: NFs fill CPU 1 first, then the tie goes to CPU 0
        placed = {n["name"] + str(n["service"]): n["cpu"] for n in st["nfs"]}
        assert placed == {"simple_forward1": 1, "simple_forward2": 1, "basic_monitor3": 0}
        for n in st["nfs"]:
            assert os.sched_getaffinity(n["pid"]) == {n["cpu"]}
        os.kill(p.pid, signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0
