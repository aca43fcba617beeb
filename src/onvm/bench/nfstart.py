"""Time from launching an NF to its first handled packet, under each isolation.

A manager generates traffic for service 1 all along (``--no-wait``); each start
launches one simple_forward through the isolation backend, polls the manager's
status until the NF's rx counter moves, then stops the NF and waits until the
manager has retired it.  Process isolation forks the NF from the fork server,
as ``onvm run`` does, unless ``cold`` (then a new interpreter every time).
``seconds`` does not apply: the figure is the median of ``starts`` starts.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from onvm._deploy import Deployment
from onvm._proc import cpu_seconds
from onvm.bench._scenario import Option, Scenario


def nf_start(seconds: float = 0.0, verbose: bool = False, isolation: str = "process", starts: int = 10,
             cold: bool = False) -> dict[str, Any]:
    """Launch-to-first-packet times of ``starts`` NF starts under ``isolation``; the median in ms."""
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
                        nfs = c.status()["nfs"]
                        hit = [n for n in nfs if n["rx"] > 0]
                        if hit:
                            times.append((time.monotonic() - t0) * 1000)
                            cpu.append((cpu_seconds(hit[0]["pid"]) or 0.0) * 1000)
                            nf_id = hit[0]["id"]
                            break
                        if proc.poll() is not None:
                            raise RuntimeError(f"the NF exited with status {proc.returncode}")
                        time.sleep(0.001)
                    else:
                        raise RuntimeError("the NF handled no packet within 30 s")
                    c.stop_nf(nf_id)
                    proc.wait(timeout=30)
                    while c.status()["nfs"]:
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
    return {"isolation": isolation, "starts": len(times),
            "launcher": "forkserver" if forkserver is not None else "exec",
            "median_ms": round(statistics.median(times), 1), "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1), "cpu_ms": round(statistics.median(cpu), 1),
            "load": round(os.getloadavg()[0], 2), "times_ms": [round(t, 1) for t in times]}


ISOLATIONS = ("process", "namespace", "podman", "docker")
OPTIONS = (Option("--isolation", "process", "how the NF is isolated", choices=ISOLATIONS),
           Option("--starts", 10, "NF starts to take the median of"),
           Option("--cold", False, "a new interpreter for every process NF, not the fork server"))


def _show(r: dict[str, Any]) -> str:
    return f"{r['median_ms']:.0f} ms median of {r['starts']} starts"


SCENARIOS = [
    Scenario("nf-start", "launch to first handled packet of a simple_forward NF, the median of --starts",
             key="median_ms", target="", run=nf_start, show=_show, options=OPTIONS, default=False),
    *(Scenario(f"nf-start-{iso}", f"nf-start with {iso} isolation", key="median_ms", target=target,
               run=nf_start, show=_show, options=OPTIONS, preset={"isolation": iso}, default=False)
      for iso, target in (("process", "< 150 ms"), ("namespace", "< 250 ms"), ("podman", "< 1000 ms"))),
]
