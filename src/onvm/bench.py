"""Benchmark scenarios for ``onvm bench``.

Each scenario starts a manager and NFs as separate processes under a unique
manager name, lets them warm up, measures over ``seconds`` from the counters in
the region (read through ``onvm status``), and stops everything it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onvm import _bench_firewall
from onvm._deploy import Deployment
from onvm._proc import cpu_seconds
from onvm.errors import ConfigError

WARMUP = 1.0


@dataclass
class Scenario:
    """NFs to start (argument lists for ``onvm nf``) and what to measure."""

    nfs: list[list[str]]
    measure: str = "rx"  # "rx": packets the first NF received; "cpu": CPU use
    manager_args: list[str] = field(default_factory=list)
    note: str = ""
    measure_nf: str = ""  # measure this NF's rx (default: the first NF of the list)
    prepare: Callable[[str], None] | None = None  # writes files into "{tmp}" before the start
    extra: Callable[[str], dict[str, Any]] | None = None  # more figures, after the run


SCENARIOS: dict[str, Scenario] = {
    "loop": Scenario([["speed_tester", "--service", "1"]],
                     note="one speed_tester sending to its own service, batch handler"),
    "loop-packet": Scenario([["speed_tester", "--service", "1", "--per-packet"]],
                            note="the same with a per-packet handler reading each 5-tuple"),
    "chain3": Scenario(
        [["speed_tester", "--service", "1", "--dest", "2"],
         ["simple_forward", "--service", "2", "--dest", "3"],
         ["simple_forward", "--service", "3", "--dest", "1"]],
        note="speed_tester -> simple_forward -> simple_forward -> speed_tester"),
    "lb": Scenario(
        [["simple_forward", "--service", "1"], ["simple_forward", "--service", "1"]],
        measure="lb", manager_args=["--port", "gen:flows=4096,rate=200k", "--port", "null",
                                    "--default-chain", "1,out:1"],
        note="two instances of one service share a gen: load of 4096 flows"),
    "flow-setup": Scenario([], measure="flows", note="rules through the control API; 1M-entry lookups"),
    "firewall": Scenario(
        [["speed_tester", "--service", "1", "--dest", "2", "--report", "0"],
         ["firewall", "--service", "2", "--rules", "{tmp}/rules.json", "--handler", "{handler}"]],
        measure_nf="firewall", prepare=_bench_firewall.write_rules, extra=_bench_firewall.references,
        note="firewall with 1,000 prefix rules looping speed_tester's packets; the same logic "
             "over dpkt and scapy in process"),
    "idle": Scenario(
        [["simple_forward", "--service", "1", "--dest", "2"],
         ["simple_forward", "--service", "2", "--dest", "3"],
         ["basic_monitor", "--service", "3", "--interval", "0"]],
        measure="cpu", note="a manager and three NFs with no traffic"),
}


LATENCY_NOTE = "gen port at a low rate through a chain of simple_forward NFs to a null port"


def run_latency(nfs: int = 1, seconds: float = 5.0, rate: int = 10000,
                verbose: bool = False, pack_below: float | None = None) -> dict[str, Any]:
    """Latency at a low rate through ``nfs`` NFs: end to end (RX to the output port) and per NF.

    The histograms are read from the region before and after the measuring
    window, so warm-up packets do not count.  The window starts once the
    manager has packed the pipeline (onvm.manager.packing), unless
    ``pack_below`` is 0."""
    from onvm import _native, latency

    if not 1 <= nfs <= 15:
        raise ConfigError(f"--nfs {nfs}: expected 1..15")
    if rate < 1:
        raise ConfigError(f"--rate {rate}: expected at least 1 packet/s")
    chain = ",".join(str(i) for i in range(1, nfs + 1)) + ",out:1"
    args = ["--port", f"gen:size=64,flows=64,rate={rate}", "--port", "null", "--default-chain", chain]
    if pack_below is not None:
        args += ["--pack-below", str(pack_below)]
    dep = Deployment(f"bench-{uuid.uuid4().hex[:8]}", args, verbose)
    region = None
    try:
        dep.start_manager()
        for i in range(1, nfs + 1):
            dep.start_nf(["simple_forward", "--service", str(i)])
        dep.wait_running(nfs)
        time.sleep(WARMUP)
        st = _settle_packing(dep)
        region = _native.Region.attach(st["manager"]["region"])
        ids = sorted(n["id"] for n in st["nfs"])

        def read() -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
            return (_native.port_latency(region, 1), [_native.nf_latency(region, i) for i in ids],
                    [region.nf_info(i) for i in ids])

        e0, n0, i0 = read()
        t0 = time.monotonic()
        time.sleep(seconds)
        e1, n1, i1 = read()
        dt = time.monotonic() - t0
        e2e = latency.summary(latency.diff(e1, e0))
        per_nf = [latency.summary(latency.diff(b, a)) for a, b in zip(n0, n1, strict=True)]
        drops = sum(sum(n["drops"].values()) for n in dep.status()["nfs"])
        return {
            "scenario": "latency",
            "nfs": nfs,
            "rate_pps": rate,
            "packets": e2e["count"],
            "seconds": round(dt, 3),
            "p50_us": e2e["p50_us"],
            "p99_us": e2e["p99_us"],
            "mean_us": e2e["mean_us"],
            "max_us": e2e["max_us"],
            "per_nf_p50_us": [n["p50_us"] for n in per_nf],
            "per_nf_p99_us": [n["p99_us"] for n in per_nf],
            "handler_us_per_burst": [
                round((b["handler_ns"] - a["handler_ns"]) / max(b["bursts"] - a["bursts"], 1) / 1e3, 2)
                for a, b in zip(i0, i1, strict=True)],
            "packets_per_burst": [
                round((b["rx"] - a["rx"]) / max(b["bursts"] - a["bursts"], 1), 1)
                for a, b in zip(i0, i1, strict=True)],
            "drops": drops,
            "packed_on": st["manager"]["packing"].get("packed_on"),
        }
    finally:
        if region is not None:
            region.close()
        dep.stop()


def _settle_packing(dep: Deployment, timeout: float = 5.0) -> dict[str, Any]:
    """Status once the manager has packed a lightly loaded pipeline (or after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        st = dep.status()
        pk = st["manager"]["packing"]
        if not pk["enabled"] or pk["packed_on"] is not None or time.monotonic() > deadline:
            return st
        time.sleep(0.1)


def _cpu_seconds(pid: int) -> float:
    return cpu_seconds(pid) or 0.0


def flow_setup(dep: Deployment, seconds: float) -> dict[str, Any]:
    """Rules per second through the control API, and the packet path's lookup rate at 1M flows."""
    from onvm import _native
    from onvm.control.client import Client

    batch, total = 1000, 8000
    rules = [f"udp src 10.{i >> 8 & 255}.{i & 255}.0/24 dst port {1 + i % 60000} -> chain c"
             for i in range(total)]
    with Client(dep.name) as c:
        c.request("chain_add", name="c", hops="1")
        t0 = time.monotonic()
        for i in range(0, total, batch):
            c.request("rule_add", rules=rules[i:i + batch])
        dt = time.monotonic() - t0
    path = os.path.join(os.environ.get("ONVM_RUNTIME_DIR", "/dev/shm"), f"onvm-{dep.name}-lookup.region")
    region = _native.Region.create(path, "lookup", 256, 2048, 64, 1 << 21)
    try:
        lookups = max(1_000_000, int(seconds * 2_000_000))
        bulk = region.bench_lookup(1 << 20, lookups, bulk=True)
        single = region.bench_lookup(1 << 20, lookups, bulk=False)
    finally:
        region.close()
    return {"mpps": 0.0, "packets": 0, "seconds": round(dt, 3), "rules": total,
            "rules_per_second": round(total / dt), "lookups_mpps": round(bulk["mpps"], 2),
            "lookups_mpps_one_at_a_time": round(single["mpps"], 2), "flow_entries": bulk["installed"]}


def scenario_names() -> list[str]:
    """Every scenario ``onvm bench`` knows, the port benchmarks included."""
    from onvm._bench_ports import SCENARIOS as PORT_SCENARIOS
    from onvm.sdn.bench import SCENARIOS as SDN_SCENARIOS

    return sorted([*SCENARIOS, *PORT_SCENARIOS, *SDN_SCENARIOS])


def nf_start(isolation: str = "process", starts: int = 10, verbose: bool = False,
             cold: bool = False) -> dict[str, Any]:
    """Time from launching an NF to its first handled packet, ``starts`` times; the median in ms.

    A manager generates traffic for service 1 all along (``--no-wait``); each start
    launches one simple_forward through the isolation backend, polls the manager's
    status until the NF's rx counter moves, then stops the NF and waits until the
    manager has retired it.  Process isolation forks the NF from the fork server,
    as ``onvm run`` does, unless ``cold`` (then a new interpreter every time).
    """
    import statistics
    import subprocess

    from onvm.control.client import Client
    from onvm.paths import runtime_dir, socket_path
    from onvm.topology.isolation import ContainerIsolation, ForkServer, Launch, backend, python_paths
    from onvm.topology.runner import nf_argv, nf_pythonpath, nf_threads
    from onvm.topology.schema import NFSpec

    iso = backend(isolation)
    iso.check()
    spec = NFSpec.model_validate({"program": "simple_forward", "service": 1, "isolation": isolation})
    if isinstance(iso, ContainerIsolation):
        iso.check_image(spec.image or "localhost/onvm-nf:latest")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    dep = Deployment(name, ["--port", "gen:size=64,flows=64,rate=50k", "--port", "null",
                            "--default-chain", "1,out:1", "--no-wait"], verbose)
    forkserver: ForkServer | None = None
    times: list[float] = []
    cpu: list[float] = []  # the NF process's own CPU time until its first packet: load-independent
    try:
        dep.start_manager()
        region = dep.status()["manager"]["region"]
        paths = python_paths()
        if isolation == "process" and not cold:
            forkserver = ForkServer({"ONVM_RUNTIME_DIR": runtime_dir(), "PYTHONPATH": nf_pythonpath()},
                                    quiet=not verbose)
        with Client(name) as c:
            for i in range(starts):
                env = {"ONVM_RUNTIME_DIR": runtime_dir(), "PYTHONPATH": nf_pythonpath(), **nf_threads()}
                launch = Launch(nf_argv(spec, name, 1, 0, quiet=True), env, [region, socket_path(name)],
                                f"onvm-{name}-{i}", python_paths=paths)
                cmd, penv = iso.command(launch), iso.env(launch)
                err = None if verbose else subprocess.DEVNULL
                t0 = time.monotonic()
                proc: Any
                if forkserver is not None:
                    proc = forkserver.spawn(launch.argv, launch.env)
                else:
                    proc = subprocess.Popen(cmd, env=penv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
                nf_id = None
                try:
                    deadline = t0 + 30
                    while time.monotonic() < deadline:
                        nfs = c.request("status")["nfs"]
                        hit = [n for n in nfs if n["rx"] > 0]
                        if hit:
                            times.append((time.monotonic() - t0) * 1000)
                            cpu.append(_cpu_seconds(hit[0]["pid"]) * 1000)
                            nf_id = hit[0]["id"]
                            break
                        if proc.poll() is not None:
                            raise RuntimeError(f"the NF exited with status {proc.returncode}")
                        time.sleep(0.001)
                    else:
                        raise RuntimeError("the NF handled no packet within 30 s")
                    c.request("stop_nf", nf_id=nf_id)
                    proc.wait(timeout=30)
                    while c.request("status")["nfs"]:
                        time.sleep(0.005)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                    iso.cleanup(launch)
    finally:
        if forkserver is not None:
            forkserver.close()
        dep.stop()
    return {"scenario": "nf-start", "isolation": isolation, "starts": len(times),
            "launcher": "forkserver" if forkserver is not None else "exec",
            "median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1), "cpu_ms": round(statistics.median(cpu), 1),
            "load": round(os.getloadavg()[0], 2), "times_ms": [round(t, 1) for t in times]}


def run_scenario(name: str, seconds: float = 5.0, verbose: bool = False,
                 handler: str = "batch") -> dict[str, Any]:
    """Run one scenario; returns its figures (``scenario``, ``mpps``, ``packets``, ``seconds``...)."""
    from onvm._bench_ports import SCENARIOS as PORT_SCENARIOS

    if name in PORT_SCENARIOS:
        return PORT_SCENARIOS[name][0](seconds, verbose)
    from onvm.sdn.bench import SCENARIOS as SDN_SCENARIOS

    if name in SDN_SCENARIOS:
        return SDN_SCENARIOS[name][0](seconds, verbose)
    sc = SCENARIOS[name]
    tmp = tempfile.mkdtemp(prefix="onvm-bench-")
    dep = Deployment(f"bench-{uuid.uuid4().hex[:8]}", sc.manager_args, verbose)
    try:
        if sc.prepare is not None:
            sc.prepare(tmp)
        dep.start_manager()
        # The first NF (a traffic source such as speed_tester) starts last, once every NF
        # downstream of it runs: packets it makes must find each service of the chain.
        argvs = [[a.format(tmp=tmp, handler=handler) for a in argv] for argv in sc.nfs]
        for argv in argvs[1:]:
            dep.start_nf(argv)
        dep.wait_running(len(argvs) - 1)
        if argvs:
            dep.start_nf(argvs[0])
        dep.wait_running(len(argvs))
        if sc.measure == "flows":
            return {"scenario": name, **flow_setup(dep, seconds)}
        time.sleep(WARMUP)
        measure: Callable[[], tuple[float, float]]
        if sc.measure == "cpu":
            pids = [p.pid for p in dep.procs]

            def measure() -> tuple[float, float]:
                return sum(_cpu_seconds(p) for p in pids), 0.0
        elif sc.measure == "lb":
            def rx() -> list[int]:
                return [n["rx"] for n in sorted(dep.status()["nfs"], key=lambda n: n["id"])]

            r0, t0 = rx(), time.monotonic()
            time.sleep(seconds)
            r1, dt = rx(), time.monotonic() - t0
            got = [b - a for a, b in zip(r0, r1, strict=True)]
            share = got[0] / max(1, sum(got))
            return {"scenario": name, "mpps": round(sum(got) / dt / 1e6, 3), "packets": sum(got),
                    "seconds": round(dt, 3), "shares": [round(g / max(1, sum(got)), 4) for g in got],
                    "imbalance": round(abs(share - 0.5) * 2, 4)}
        else:

            def measure() -> tuple[float, float]:
                st = dep.status()
                want = sc.measure_nf or (sc.nfs[0][0] if sc.nfs else "")
                named = [n for n in st["nfs"] if n.get("name") == want]
                first = named[0] if named else min(st["nfs"], key=lambda n: n["id"])
                return float(first["rx"]), float(sum(sum(n["drops"].values()) for n in st["nfs"]))

        t0, (v0, d0) = time.monotonic(), measure()
        time.sleep(seconds)
        t1, (v1, d1) = time.monotonic(), measure()
        dt = t1 - t0
        result: dict[str, Any] = {"scenario": name}
        if sc.measure == "cpu":
            result.update(mpps=0.0, packets=0, seconds=round(dt, 3),
                          cpu_percent=round(100.0 * (v1 - v0) / dt, 3), processes=len(dep.procs))
        else:
            result.update(mpps=round((v1 - v0) / dt / 1e6, 3), packets=int(v1 - v0),
                          seconds=round(dt, 3), drops=int(d1 - d0))
        if sc.prepare is not None:
            result["handler"] = handler
        dep.stop()
        if sc.extra is not None:
            result.update(sc.extra(tmp))
        return result
    finally:
        dep.stop()
        shutil.rmtree(tmp, ignore_errors=True)
