"""onvm trace through a running chain: a rule, two replicas, a second NF and an OUT."""

from __future__ import annotations

import json

from tests.integration.conftest import onvm, status, wait_for


def trace(dep, *args: str) -> dict:
    r = onvm("trace", *args, "--name", dep.name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_trace_follows_the_rule_the_replicas_and_the_out(deploy):
    dep = deploy(["--port", "gen:flows=8,rate=2k,dport=53", "--port", "null", "--default-chain", "drop",
                  "--chain", "dns=1,2,out:1", "--rule", "udp dst port 53 -> chain dns"])
    for svc in (1, 1, 2):
        dep.start_nf(["simple_forward", "--service", str(svc)])
    dep.wait_running(3)
    nfs = {n["id"]: n["service"] for n in status(dep.name)["nfs"]}
    assert trace(dep, "add", "6", "udp", "dst", "port", "53")["count"] == 6
    shown = wait_for(lambda: (t := trace(dep, "show")) and len(t["packets"]) == 6
                     and all(p["end"] != "in flight" for p in t["packets"]) and t, what="six traced packets")
    by_flow: dict[int, int] = {}
    for p in shown["packets"]:
        assert p["chain"] == "dns" and p["end"] == "out port 1", p
        assert p["classified"] in ("rule", "flow entry")
        if p["classified"] == "rule":
            assert p["rule"] == "udp dst port 53 -> chain dns"
        hops = p["hops"]
        assert [h.get("action") for h in hops] == [None, "tonf", "tonf", "out", "out"], hops
        first, second = hops[1]["nf"], hops[2]["nf"]
        assert nfs[first] == 1 and nfs[second] == 2 and hops[2]["by"].startswith(f"NF {first} ")
        assert hops[3]["by"].startswith(f"NF {second} ") and hops[3]["dest"] == 1
        assert [h["t_us"] for h in hops] == sorted(h["t_us"] for h in hops)
        assert by_flow.setdefault(p["flow_hash"], first) == first  # a flow keeps its replica
    assert shown["remaining"] == 0
    text = onvm("trace", "show", "--name", dep.name)
    assert text.returncode == 0 and text.stdout.count("\npacket ") == 6, text.stdout
    assert "-> chain dns" in text.stdout and "out port 1" in text.stdout
    assert trace(dep, "clear")["cleared"] > 0 and trace(dep, "show")["packets"] == []


def test_a_trace_shows_where_a_packet_is_dropped_and_bad_requests_are_refused(deploy):
    dep = deploy(["--port", "gen:flows=4,rate=1k", "--port", "null", "--default-chain", "1,drop"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    trace(dep, "add", "2")
    shown = wait_for(lambda: (t := trace(dep, "show")) and len(t["packets"]) == 2
                     and all(p["end"] != "in flight" for p in t["packets"]) and t, what="two traced packets")
    assert all(p["end"].endswith(": action") and p["chain"] == "default" for p in shown["packets"])
    for args, message in ((["add", "x"], "usage: onvm trace add COUNT"), (["add", "0"], "within 1..10000"),
                          (["add", "3", "tcp", "dst", "port", "x"], "expected a port")):
        r = onvm("trace", *args, "--name", dep.name)
        assert r.returncode == 1 and message in r.stderr, r.stderr
