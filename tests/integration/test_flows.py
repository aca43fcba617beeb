"""Chains, rules and the flow table through a running manager, its CLI and an NF."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.integration.conftest import onvm, status, wait_for


def settled(name: str, inputs: int):
    st = status(name)
    done = all(p["done"] for p in st["ports"][:inputs]) and st["pool"]["free"] == st["pool"]["total"]
    return done and st


def test_rules_steer_flows_to_chains(deploy):
    dep = deploy([
        "--port", "gen:proto=tcp,dport=80,flows=8,count=2000,rate=40k",
        "--port", "gen:proto=udp,dport=53,flows=4,count=1000,rate=40k,src=10.2.0.1",
        "--port", "null",
        "--default-chain", "1,out:2", "--chain", "web=2,out:2",
        # Long enough to list the entries on a loaded machine before they expire.
        "--rule", "tcp dst port 80 idle 3 -> chain web", "--ring-size", "8192", "--flow-idle", "2",
    ])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "2"])
    dep.wait_running(2)
    st = wait_for(lambda: settled(dep.name, 2), timeout=30, what="traffic to end")
    rx = {n["service"]: n["rx"] for n in st["nfs"]}
    assert rx == {1: 1000, 2: 2000}
    assert st["ports"][2]["tx"] == 3000
    flows = json.loads(onvm("flow", "list", "--name", dep.name, "--json").stdout)["flows"]
    web = [f for f in flows if f["chain"] == "web"]
    assert len(web) == 8 and sum(f["packets"] for f in web) == 2000
    assert all(f["origin"] == "rule" and f["flow"].endswith(":80 tcp") for f in web)
    # what matched no rule is cached too, for the default chain, with the manager's idle timeout
    dns = [f for f in flows if f["chain"] == "default"]
    assert len(dns) == 4 and sum(f["packets"] for f in dns) == 1000
    assert all(f["origin"] == "default" and f["idle_timeout"] == 2.0 for f in dns)
    rules = json.loads(onvm("rule", "list", "--name", dep.name, "--json").stdout)["rules"]
    assert rules[0]["hits"] == 8  # one per flow: later packets hit the cached entry
    # and most of them took RX's fast path (all but each flow's first, short of a rare collision)
    assert json.loads(onvm("flow", "stats", "--name", dep.name, "--json").stdout)["fast"] >= 2500
    # the idle timeout removes them once traffic has stopped
    wait_for(lambda: json.loads(onvm("flow", "stats", "--name", dep.name, "--json").stdout)["used"] == 0,
             timeout=15, what="entries to expire")
    assert json.loads(onvm("flow", "stats", "--name", dep.name, "--json").stdout)["expired"] >= 12


def test_chain_rule_flow_commands(deploy, tmp_path):
    dep = deploy(["--port", "null"])
    n = ["--name", dep.name]
    r = onvm("chain", "add", "web", "2,3,out:0", *n, "--json")
    assert r.returncode == 0, r.stderr

    assert json.loads(r.stdout)["hops"] == "2,3,out:0"
    chains = json.loads(onvm("chain", "list", *n, "--json").stdout)["chains"]
    assert [c["name"] for c in chains] == ["default", "web"]
    def bash(line: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", f"{sys.executable} -m onvm.cli.main {line} --name {dep.name}"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)

    # the README's rule, pasted into bash as it is printed
    r = bash("rule add tcp dst port 80 src 10.0.0.0/8 idle 30 to chain web")
    assert r.returncode == 0 and list(tmp_path.iterdir()) == [], r.stderr
    # an unquoted arrow: bash redirects into a file 'chain'; the error says what happened
    r = bash("rule add udp dst port 53 -> chain web")
    assert r.returncode == 1 and "took the '>' of '->' as a redirect" in r.stderr
    (tmp_path / "chain").unlink()
    readme_rule = json.loads(onvm("rule", "list", *n, "--json").stdout)["rules"][0]
    assert readme_rule["rule"] == "tcp src 10.0.0.0/8 dst port 80 idle 30 -> chain web"
    assert onvm("rule", "del", str(readme_rule["id"]), *n).returncode == 0
    r = onvm("rule", "add", "tcp", "dst", "port", "80x", "->", "chain", "web", *n)
    assert r.returncode == 1 and "token 4 '80x': expected a port as N or N-M" in r.stderr
    r = onvm("rule", "add", "udp", "->", "chain", "nowhere", *n)
    assert r.returncode == 1 and "no chain named 'nowhere'" in r.stderr
    r = onvm("rule", "add", "tcp dst port 80 src 10.0.0.0/8 -> chain web", *n, "--json")
    rule = json.loads(r.stdout)
    assert rule["rule"] == "tcp src 10.0.0.0/8 dst port 80 -> chain web"
    r = onvm("chain", "del", "web", *n)
    assert r.returncode == 1 and f"used by rule(s) {rule['id']}" in r.stderr
    r = onvm("flow", "add", "10.0.0.1:5 10.0.0.2:80", "tcp", "--chain", "web", "--idle", "30", *n)
    assert r.returncode == 0, r.stderr
    flows = json.loads(onvm("flow", "list", *n, "--json").stdout)["flows"]
    assert [(f["flow"], f["chain"], f["origin"], f["idle_timeout"]) for f in flows] == [
        ("10.0.0.1:5 10.0.0.2:80 tcp", "web", "api", 30.0)]
    # flush: cached results only (there are none: no traffic), then --all, one chain's
    assert json.loads(onvm("flow", "flush", *n, "--json").stdout) == {"removed": 0}
    r = onvm("flow", "flush", "--all", "--chain", "default", *n, "--json")
    assert json.loads(r.stdout) == {"removed": 0}, r.stderr
    assert len(json.loads(onvm("flow", "list", *n, "--json").stdout)["flows"]) == 1
    r = onvm("flow", "flush", "--chain", "nowhere", *n)
    assert r.returncode == 1 and "no chain named 'nowhere'" in r.stderr
    r = onvm("flow", "flush", "10.0.0.1:5", *n)
    assert r.returncode == 1 and "takes no flow" in r.stderr
    assert onvm("flow", "flush", "--all", "--chain", "web", *n).stdout.strip() == "removed=1"
    assert json.loads(onvm("flow", "list", *n, "--json").stdout)["flows"] == []
    assert onvm("flow", "add", "10.0.0.1:5 10.0.0.2:80", "tcp", "--chain", "web", *n).returncode == 0
    assert onvm("flow", "del", "10.0.0.1:5", "10.0.0.2:80", "tcp", *n).returncode == 0
    r = onvm("flow", "del", "10.0.0.1:5", "10.0.0.2:80", "tcp", *n)
    assert r.returncode == 1 and "no flow 10.0.0.1:5 10.0.0.2:80 tcp" in r.stderr
    assert onvm("rule", "del", str(rule["id"]), *n).returncode == 0
    assert onvm("chain", "del", "web", *n).returncode == 0
    r = onvm("chain", "add", "bad", "1,out:0,2", *n)
    assert r.returncode == 1 and "hop 2 'out:0' ends the chain but more hops follow it" in r.stderr
    text = onvm("rule", "list", *n).stdout
    assert "(none)" in text


def test_a_rule_file_of_100000_rules_loads_all_or_nothing_and_lists_in_pages(deploy, tmp_path):
    dep = deploy(["--port", "null", "--chain", "web=1"])
    n = ["--name", dep.name]
    lines = ["# a firewall-sized rule set"] + [
        f"udp src 172.{16 + (i >> 16)}.{i >> 8 & 255}.{i & 255}/32 dst port {1 + i % 60000} -> chain web"
        for i in range(100_000)]
    bad = tmp_path / "bad.rules"
    bad.write_text("\n".join([*lines, "udp dst port 70000 -> chain web"]) + "\n")
    r = onvm("rule", "add", "-f", str(bad), *n, timeout=120)
    assert r.returncode == 1 and "line 100002" in r.stderr and "70000" in r.stderr, r.stderr
    assert status(dep.name)["flows"]["rules"] == 0  # nothing of it applied
    good = tmp_path / "good.rules"
    good.write_text("\n".join(lines) + "\n")
    r = onvm("rule", "add", "-f", str(good), *n, "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 100_000 and status(dep.name)["flows"]["rules"] == 100_000
    page = json.loads(onvm("rule", "list", "--offset", "99998", "--limit", "5", *n, "--json").stdout)["rules"]
    assert [p["rule"] for p in page] == [f"udp src 172.17.134.{158 + k}/32 dst port {39999 + k} -> chain web"
                                         for k in range(2)]


def test_a_rule_set_larger_than_the_reservation_is_refused_as_it_comes(deploy):
    from onvm.control.client import Client
    from onvm.errors import OnvmError

    dep = deploy(["--port", "null", "--max-rules", "100"])
    with Client(dep.name) as c:
        c.rule_add("udp dst port 1 -> chain default")
        first = [f"udp dst port {i} -> chain default" for i in range(2, 60)]
        assert c.rule_load(first, begin=True)["staged"] == 58
        with pytest.raises(OnvmError, match="rule set: 116 rules so far, room for 99 more"):
            c.rule_load([f"udp dst port {i} -> chain default" for i in range(60, 118)])
        with pytest.raises(OnvmError, match="no rule set is under way"):  # the refused set is gone
            c.rule_load(["udp -> chain default"], commit=True)
        assert len(c.rule_list()["rules"]) == 1


STEERER = textwrap.dedent('''
    import sys
    from onvm import NF

    nf = NF("steerer", service=1, manager=sys.argv[1], quiet=True)

    @nf.packet
    def handle(pkt, meta):
        if nf.flow(pkt) is None:
            nf.steer(pkt, "alt", idle=10)
        meta.next()

    nf.run()
''')


def test_nf_steers_its_flows(deploy, tmp_path):
    dep = deploy(["--port", "gen:flows=4,count=4000,rate=20k", "--port", "null",
                  "--default-chain", "1,out:1", "--chain", "alt=2,out:1", "--ring-size", "8192"])
    script = tmp_path / "steerer.py"
    script.write_text(STEERER)
    dep.procs.append(subprocess.Popen([sys.executable, str(script), dep.name]))
    dep.start_nf(["simple_forward", "--service", "2"])
    dep.wait_running(2)
    st = wait_for(lambda: settled(dep.name, 1), timeout=30, what="traffic to end")
    rx = {n["service"]: n["rx"] for n in st["nfs"]}
    assert rx[1] + rx[2] == 4000 and st["ports"][1]["tx"] == 4000
    assert rx[1] < 400  # only each flow's first packets reach the steering NF
    flows = json.loads(onvm("flow", "list", "--name", dep.name, "--json").stdout)["flows"]
    assert len(flows) == 4
    assert {f["origin"] for f in flows} == {"nf"} and {f["chain"] for f in flows} == {"alt"}


def test_classify_bench_runs(runtime):
    # Windows of a second: on a busy machine a 0.3 s window once saw no packet at all.
    out = onvm("bench", "classify", "--rules", "300", "--seconds", "1", "--rounds", "2", "--json",
               timeout=240)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["rules_added"] == 300 and res["tuples"] >= 10 and res["rule_load_s"] > 0
    for key in ("established_mpps", "established_mpps_0", "established_mpps_1",
                "new_flow_mpps", "new_flow_mpps_0", "new_flow_mpps_1",
                "rx_ns_per_packet_0", "rx_ns_per_packet_1", "rx_ns_per_packet", "rx_ratio",
                "rx_busy_ns_per_packet_0", "rx_busy_ns_per_packet_1", "rx_busy_ns_per_packet",
                "new_flow_rx_busy_ns_per_packet"):
        assert res[key] > 0, key
    # a new flow is classified and cached: it costs the RX worker more than an established one
    assert res["new_flow_rx_busy_ns_per_packet"] > res["rx_busy_ns_per_packet"]
    # Three windows (none, one, N rules) in each of the two rounds.
    assert len(res["rounds_established"]) == len(res["rounds_new_flow"]) == 2
    assert all(len(w) == 3 and min(w) > 0 for w in res["rounds_established"] + res["rounds_new_flow"])
    for flag, value in (("--rules", "-1"), ("--rounds", "0"), ("--flows", "2000000")):
        r = onvm("bench", "classify", flag, value)
        assert r.returncode == 2 and flag in r.stderr
