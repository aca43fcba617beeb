"""onvm flow explain against where packets really go: a running manager with random rules, a
port default, an explicit entry, two replicas and an OUT; every flow of a replayed file is
traced hop by hop, and its explanation names the same chain, the same instance at each hop
and the same exit."""

from __future__ import annotations

import json
import random
from typing import Any

from onvm.flows.explain import frame_of
from onvm.flows.keys import FlowKey
from tests.integration.conftest import onvm, status, wait_for
from tests.integration.test_pcap_files import classic

CHAINS = {"a": "1,2,out:1", "b": "2,out:1", "c": "1,drop"}


def call(dep: Any, *args: str) -> dict[str, Any]:
    r = onvm(*args, "--name", dep.name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def flows(rng: random.Random, n: int) -> list[FlowKey]:
    out: list[FlowKey] = []
    while len(out) < n:
        key = FlowKey.of(f"10.0.{rng.randrange(2)}.{rng.randrange(1, 9)}", f"10.1.{rng.randrange(2)}.1",
                         rng.choice(["tcp", "udp"]), rng.choice([1000, 2000, 3000]),
                         rng.choice([53, 80, 443]))
        if key not in out:
            out.append(key)
    return out


def random_rules(rng: random.Random) -> list[str]:
    words = ["tcp", "udp", "src 10.0.0.0/24", "src 10.0.1.0/24", "dst 10.1.1.0/24", "dst port 80",
             "dst port 53", "src port 1000-2000", "dst port 400-500"]
    return [" ".join([f"priority {rng.randrange(90, 110)}", *rng.sample(words, rng.randrange(1, 3)),
                      "to", "chain", rng.choice(list(CHAINS))]) for _ in range(6)]


def test_explain_names_the_path_the_trace_sees(deploy, tmp_path):
    rng = random.Random(13)
    keys = flows(rng, 16)
    src = tmp_path / "flows.pcap"
    src.write_bytes(classic([frame_of(k) for k in keys]))
    args = ["--port", f"pcap:{src}?rate=500&loop=0", "--port", "null", "--default-chain", "2,out:1"]
    for name, hops in CHAINS.items():
        args += ["--chain", f"{name}={hops}"]
    for rule in random_rules(rng):
        args += ["--rule", rule]
    dep = deploy(args)
    for svc in (1, 1, 2):
        dep.start_nf(["simple_forward", "--service", str(svc)])
    dep.wait_running(3)
    call(dep, "flow", "add", str(keys[0]), "--chain", "c")  # an explicit entry wins over every rule
    call(dep, "trace", "add", str(3 * len(keys)))
    shown = wait_for(lambda: (t := call(dep, "trace", "show")) and len(t["packets"]) == 3 * len(keys)
                     and all(p["end"] != "in flight" for p in t["packets"]) and t, timeout=30,
                     what="every flow traced three times")
    explained = {k: call(dep, "flow", "explain", str(k)) for k in keys}
    by_hash = {e["flow_hash"]: (k, e) for k, e in explained.items()}
    assert len(by_hash) == len(keys), "the flows have distinct hashes"
    services = {n["id"]: n["service"] for n in status(dep.name)["nfs"]}
    decided = set()
    for p in shown["packets"]:
        key, e = by_hash[p["flow_hash"]]
        decided.add(e["decided_by"])
        why = (str(key), e, p)
        assert p["chain"] == e["chain"], why
        went = [h["nf"] for h in p["hops"] if h.get("action") == "tonf"]
        picked = [h["nf"] for h in e["hops"] if h["action"] == "tonf"]
        assert went == picked and all(services[n] == h["service"] for n, h in zip(
            went, [h for h in e["hops"] if h["action"] == "tonf"], strict=True)), why
        last = e["hops"][-1]
        assert p["end"] == (f"out port {last['port']}" if last["action"] == "out" else p["end"]), why
        if last["action"] == "drop":
            assert p["end"].endswith(": action"), why
    assert explained[keys[0]]["decided_by"] == "flow entry" and explained[keys[0]]["chain"] == "c"
    assert {"rule", "flow entry"} <= decided, decided  # the rules decided some flows, not all alike
    assert any(e["missed"] for e in explained.values()), "some rule above the one that matched missed"
    text = onvm("flow", "explain", str(keys[1]), "--name", dep.name)
    assert text.returncode == 0 and f"-> chain {explained[keys[1]]['chain']}" in text.stdout, text.stdout
    bad = onvm("flow", "explain", "10.0.0.1:5", "--name", dep.name)
    assert bad.returncode == 1 and "expected SRC[:PORT] DST[:PORT] PROTO" in bad.stderr, bad.stderr
