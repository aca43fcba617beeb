"""Replica policies, scaling, the autoscaler and messages between NFs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from tests.integration.conftest import onvm, status, wait_for


def shares(name: str, service: int, seconds: float) -> list[int]:
    before = {n["id"]: n["rx"] for n in status(name)["nfs"] if n["service"] == service}
    time.sleep(seconds)
    after = {n["id"]: n["rx"] for n in status(name)["nfs"] if n["service"] == service}
    return [after[i] - before[i] for i in sorted(before) if i in after]


def test_round_robin_spreads_one_flow(deploy):
    # One flow: hashing would send all of it to one instance; round-robin splits it.
    dep = deploy(["--port", "gen:flows=1,rate=100k", "--port", "null", "--default-chain", "1,out:1",
                  "--policy", "1=round-robin"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(2)
    got = shares(dep.name, 1, 1.0)
    assert sum(got) > 20_000 and min(got) > 0.4 * sum(got)
    r = onvm("service", "policy", "1", "hash", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    got = shares(dep.name, 1, 1.0)
    assert min(got) == 0 and max(got) > 20_000  # one flow, one instance
    listing = json.loads(onvm("service", "list", "--name", dep.name, "--json").stdout)["services"]
    assert [(s["service"], s["policy"], len(s["instances"])) for s in listing] == [(1, "hash", 2)]


def test_local_sends_each_rx_worker_to_its_own_instance(deploy):
    # Port 0 (RX worker 0) at 10k/s, port 1 (RX worker 1) at 30k/s, the same 64 flows on
    # both: with local, instance i gets what RX worker i read; with hash, each flow goes to
    # one instance whichever port it came in by, so the two see the same mix.
    dep = deploy(["--port", "gen:flows=64,rate=10k", "--port", "gen:flows=64,rate=30k", "--port", "null",
                  "--default-chain", "1,out:2", "--rx-workers", "2", "--tx-workers", "2",
                  "--policy", "1=local"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(2)
    by_instance = {n["instance"]: n["id"] for n in status(dep.name)["nfs"]}
    ids = sorted(by_instance.values())

    def per_instance() -> list[int]:
        got = dict(zip(ids, shares(dep.name, 1, 1.0), strict=True))
        return [got[by_instance[0]], got[by_instance[1]]]

    first, second = per_instance()
    assert 5_000 < first < 15_000 and 2 * first < second, (first, second)
    r = onvm("flow", "explain", "10.0.0.1:1 10.0.0.2:2 udp", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    assert ("local, the NF paired with the RX worker that read the packet "
            f"(RX worker 0: NF {by_instance[0]}, RX worker 1: NF {by_instance[1]}") in r.stdout, r.stdout
    assert onvm("service", "policy", "1", "hash", "--name", dep.name).returncode == 0
    time.sleep(0.2)
    first, second = per_instance()
    assert first + second > 30_000 and abs(first - second) < 0.5 * (first + second), (first, second)


SLOW = textwrap.dedent('''
    import sys, time
    from onvm import NF

    nf = NF("slow", service=1, manager=sys.argv[1], quiet=True, burst=16)

    @nf.batch
    def handle(b):
        time.sleep(0.002)   # about 8k packets/s at most

    nf.run()
''')


def test_least_loaded_avoids_the_slow_instance(deploy, tmp_path):
    dep = deploy(["--port", "gen:flows=64,rate=60k", "--port", "null", "--default-chain", "1,out:1",
                  "--policy", "1=least-loaded"])
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    dep.procs.append(subprocess.Popen([sys.executable, str(script), dep.name]))
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(2)
    st = {n["id"]: n["name"] for n in status(dep.name)["nfs"]}
    got = dict(zip(sorted(st), shares(dep.name, 1, 1.5), strict=True))
    slow = next(i for i, name in st.items() if name == "slow")
    fast = next(i for i, name in st.items() if name != "slow")
    assert got[fast] > 4 * got[slow], got
    drops = sum(sum(n["drops"].values()) for n in status(dep.name)["nfs"])
    assert drops == 0


def test_scale_up_and_down(deploy):
    dep = deploy(["--port", "gen:flows=256,rate=20k", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    r = onvm("scale", "1", "3", "--name", dep.name, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["from"], out["to"], out["launcher"], len(out["started"])) == (1, 3, "recipe", 2)
    wait_for(lambda: sorted(n["instance"] for n in status(dep.name)["nfs"]) == [0, 1, 2], timeout=15,
             what="three instances")
    wait_for(lambda: all(n["rx"] > 0 for n in status(dep.name)["nfs"]), timeout=5,
             what="traffic on every instance")
    r = onvm("scale", "1", "1", "--name", dep.name, "--json")
    assert json.loads(r.stdout)["stopping_nfs"]
    wait_for(lambda: [n["instance"] for n in status(dep.name)["nfs"]] == [0], timeout=10,
             what="back to one instance")
    r = onvm("scale", "7", "2", "--name", dep.name)
    assert r.returncode == 1 and "service 7 has no running NF to copy" in r.stderr


def test_autoscaler_adds_instances_under_load_and_removes_them_idle(deploy, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW)
    dep = deploy(["--port", "gen:flows=64,rate=30k,count=60000", "--port", "null",
                  "--default-chain", "1,out:1", "--autoscale", "1:1:3", "--ring-size", "1024"])
    dep.procs.append(subprocess.Popen([sys.executable, str(script), dep.name]))
    dep.wait_running(1)
    wait_for(lambda: len(status(dep.name)["nfs"]) >= 2, timeout=20, what="the autoscaler to add an instance")
    wait_for(lambda: status(dep.name)["ports"][0]["done"], timeout=60, what="traffic to end")
    wait_for(lambda: len(status(dep.name)["nfs"]) == 1, timeout=40, what="the autoscaler to remove them")


RECEIVER = textwrap.dedent('''
    import json, sys
    from onvm import NF

    nf = NF("receiver", service=int(sys.argv[2]), manager=sys.argv[1], quiet=True)
    got = []

    @nf.batch
    def handle(b):
        pass

    @nf.message
    def on_message(nf, sender, data):
        got.append((sender, data))
        if data == "report":
            nf.send({"got": [d for _, d in got]}, service=9)
        if data == "bye":
            nf.stop()

    nf.run()
    print(json.dumps(got), flush=True)
''')


def test_messages_between_manager_and_nfs(deploy, tmp_path):
    dep = deploy([])
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    a = subprocess.Popen([sys.executable, str(script), dep.name, "2"], stdout=subprocess.PIPE, text=True)
    b = subprocess.Popen([sys.executable, str(script), dep.name, "9"], stdout=subprocess.PIPE, text=True)
    dep.procs += [a, b]
    dep.wait_running(2)
    nf_a = next(n["id"] for n in status(dep.name)["nfs"] if n["service"] == 2)
    wait_for(lambda: onvm("send", "{\"k\": 1}", "--nf", str(nf_a), "--name", dep.name).stdout.startswith(
        "delivered to 1"), what="the message connection")
    r = onvm("send", "report", "--service", "2", "--name", dep.name)
    assert r.stdout.strip() == "delivered to 1 of 1 NF(s)"
    for nf_proc, svc in ((a, 2), (b, 9)):
        onvm("send", "bye", "--service", str(svc), "--name", dep.name)
        out, _ = nf_proc.communicate(timeout=10)
        got = json.loads(out)
        if svc == 2:
            assert [d for _, d in got] == [{"k": 1}, "report", "bye"]
            assert got[0][0] == {"manager": True}
        else:
            sender, data = got[0]
            assert data == {"got": [{"k": 1}, "report"]} and sender["service"] == 2
