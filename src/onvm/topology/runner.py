"""``onvm run FILE.yaml``: start a whole topology, supervise its NFs, stop it all on Ctrl-C.

Theory of operation
-------------------
The file is validated first (:mod:`onvm.topology.schema`), then every
isolation runtime it names is checked (installed, image present), so a
topology that cannot run fails before anything starts.  The manager then runs
in this process: region, ports, default chain, workers, control socket.  A
supervisor thread starts the NFs in file order; each instance gets a fixed
instance number of its service, and the next NF starts only once the
previous one's instances run (input ports are held until the default chain's
services run, so no packet meets a missing NF).

The supervisor watches every NF process.  One that exits while the manager
runs is restarted by its policy (``no``, ``on-failure``: a non-zero exit or a
signal, ``always``) with a growing delay, at most ``max_restarts`` times, under
the same instance number, so the same flows reach it again.  The manager has
already returned the dead NF's slots to the pool when its socket closed.

Ctrl-C (or SIGTERM, the duration, exhausted inputs) stops the manager, which
asks the NFs to stop and prints the exit summary; the supervisor then waits
for every NF process, ends any that hang and removes their containers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from onvm import env
from onvm.errors import ConfigError, OnvmError
from onvm.manager.manager import Manager
from onvm.manager.placement import format_cpus
from onvm.nfs import find
from onvm.paths import runtime_dir, socket_path
from onvm.topology.isolation import (
    IMAGE,
    ContainerIsolation,
    ForkedProcess,
    ForkServer,
    Isolation,
    Launch,
    backend,
    python_paths,
)
from onvm.topology.schema import NFSpec, Topology

START_TIMEOUT = 20.0  # seconds for one NF entry's instances to run
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
STOP_TIMEOUT = 5.0
EXIT_LOOK = 0.1  # seconds between looks at NF processes that may have died before registering


@dataclass
class Child:
    """One NF instance the supervisor keeps running."""

    spec: NFSpec
    service: int
    instance: int
    iso: Isolation
    launch: Launch
    proc: subprocess.Popen[bytes] | ForkedProcess | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)
    next_start: float = 0.0
    done: bool = False  # exited for good (policy) or gave up

    @property
    def label(self) -> str:
        return f"{self.spec.label}.{self.instance}"


def preflight(topo: Topology) -> None:
    """Check every runtime and image the topology needs; raises ConfigError naming what is missing."""
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for i, nf in enumerate(topo.nfs):
        key = (nf.isolation, nf.image or IMAGE)
        if key in seen:
            continue
        seen.add(key)
        iso = backend(nf.isolation)
        try:
            iso.check()
            if isinstance(iso, ContainerIsolation):
                iso.check_image(nf.image or IMAGE)
        except OnvmError as e:
            problems.append(f"{topo.source}: nfs[{i}] ({nf.label}): {e.message}")
    if problems:
        raise ConfigError("\n".join(problems))


def nf_argv(spec: NFSpec, manager: str, service: int, instance: int, quiet: bool) -> list[str]:
    """The command line of one NF instance (the same in every isolation mode)."""
    # -S: no site module.  The NF needs onvm, numpy and its own code, whose directories
    # PYTHONPATH names (nf_pythonpath(), Program.paths); site's .pth processing costs tens of ms.
    program = find(spec.program)
    argv = [sys.executable, "-S", "-m", "onvm.cli.main", "nf", program.target]
    if program.is_script:  # it reads its manager, service and instance from the environment
        return argv + spec.argv_options()
    argv += ["--name", manager, "--service", str(service), "--instance", str(instance)]
    if spec.cpus:
        argv += ["--cpus", format_cpus(spec.cpus)]
    if quiet:
        argv.append("--quiet")
    return argv + spec.argv_options()


def use_forkserver() -> bool:
    """Whether process-isolated example NFs are forked from a warm parent (ONVM_FORKSERVER=0: no)."""
    return env.forkserver()


def nf_threads() -> dict[str, str]:
    """An NF runs on one CPU: numpy's BLAS gets one thread unless the caller chose otherwise."""
    return {} if "OPENBLAS_NUM_THREADS" in os.environ else {"OPENBLAS_NUM_THREADS": "1"}


def nf_pythonpath() -> str:
    """PYTHONPATH for an NF started with -S: where onvm and numpy live, then the caller's own."""
    import numpy

    import onvm

    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__ or ""))) for m in (onvm, numpy)]
    dirs += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(dirs))


class ManagerView(Protocol):
    """What the supervisor sees of the manager its NFs join."""

    stopping: threading.Event  # set when the manager stops (and by the supervisor when it fails)

    def log(self, text: str) -> None: ...

    def nf_running(self, service: int, instance: int) -> bool: ...

    def wait_nfs(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()``, woken whenever an NF registers, starts or leaves."""


class Supervisor:
    """Starts NFs in order and restarts them by policy while manager ``name`` runs.

    ``shared`` are the files every NF needs (the region and the control socket)."""

    def __init__(self, topo: Topology, name: str, manager: ManagerView, shared: list[str],
                 quiet: bool = False) -> None:
        self.topo = topo
        self.manager = manager
        self.quiet = quiet
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.error: str = ""
        self.forkserver: ForkServer | None = None
        self._thread = threading.Thread(target=self._run, name="onvm-supervisor", daemon=True)
        paths = python_paths()
        next_instance: dict[int, int] = {}
        for spec in topo.nfs:
            assert spec.service is not None  # filled in by validation
            iso = backend(spec.isolation)
            code = find(spec.program).paths  # where the NF's own code lives, outside the package
            for _ in range(spec.instances):
                inst = next_instance.get(spec.service, 0)
                next_instance[spec.service] = inst + 1
                nf_env = {"ONVM_RUNTIME_DIR": runtime_dir(), "ONVM_MANAGER": name,
                          "ONVM_SERVICE": str(spec.service), "ONVM_INSTANCE": str(inst),
                          "PYTHONPATH": os.pathsep.join([*code, nf_pythonpath()]), **nf_threads()}
                if spec.cpus:
                    nf_env["ONVM_CPUS"] = format_cpus(spec.cpus)
                launch = Launch(nf_argv(spec, name, spec.service, inst, quiet), nf_env, shared,
                                f"onvm-{name}-{spec.label}-{inst}-{os.getpid()}", spec.image or IMAGE,
                                paths, code)
                self.children.append(Child(spec, spec.service, inst, iso, launch))

    def log(self, text: str) -> None:
        self.manager.log(text)

    # ---- starting -------------------------------------------------------------
    def _spawn(self, c: Child) -> None:
        if self.forkserver is not None and c.spec.isolation == "process" \
                and self.forkserver.handles(c.launch.argv):
            c.proc = self.forkserver.spawn(c.launch.argv, c.launch.env)
            return
        c.iso.cleanup(c.launch)  # a container of the same name left by a crash
        out = subprocess.DEVNULL if self.quiet else None
        c.proc = subprocess.Popen(c.iso.command(c.launch), env=c.iso.env(c.launch), stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=out, start_new_session=True)

    def _running(self, c: Child) -> bool:
        return self.manager.nf_running(c.service, c.instance)

    def _run(self) -> None:
        # This thread starts, watches and reaps every NF: bubblewrap's --die-with-parent
        # ends a sandbox when the thread that started it exits, so no other thread may.
        try:
            if use_forkserver() and any(c.spec.isolation == "process" for c in self.children):
                self.forkserver = ForkServer({"ONVM_RUNTIME_DIR": runtime_dir(),
                                              "PYTHONPATH": nf_pythonpath()}, self.quiet)
            self._start_all()
            self._watch()
        except Exception as e:  # a bug or a dead runtime: stop the whole topology
            self.error = f"supervisor: {e}"
            self.log(self.error)
            self.manager.stopping.set()
        finally:
            self._reap()

    def _start_all(self) -> None:
        by_entry: dict[int, list[Child]] = {}
        for c in self.children:
            by_entry.setdefault(id(c.spec), []).append(c)
        for group in by_entry.values():
            if self.stopping.is_set() or self.manager.stopping.is_set():
                return
            t0 = time.monotonic()
            for c in group:
                self._spawn(c)
            deadline = t0 + START_TIMEOUT

            def up(group: list[Child] = group) -> bool:  # each instance runs, or its process is gone
                return self.manager.stopping.is_set() or all(
                    self._running(c) or (c.proc is not None and c.proc.poll() is not None) for c in group)

            # Woken by each NF that registers, starts or leaves; a process that dies before
            # it registers is noticed within EXIT_LOOK.
            while not up() and time.monotonic() < deadline:
                self.manager.wait_nfs(up, min(EXIT_LOOK, max(0.0, deadline - time.monotonic())))
            ready = sum(self._running(c) for c in group)
            spec = group[0].spec
            self.log(f"{spec.label}: {ready} of {len(group)} instances of service {spec.service} running"
                     f" ({spec.isolation}, {time.monotonic() - t0:.2f} s)")

    # ---- watching --------------------------------------------------------------
    def _watch(self) -> None:
        while not self.manager.stopping.wait(0.05):
            now = time.monotonic()
            for c in self.children:
                if c.done:
                    continue
                if c.proc is None:
                    if now >= c.next_start and not self.manager.stopping.is_set():
                        c.restarts += 1
                        self.log(f"restarting {c.label} (restart {c.restarts} of {c.spec.max_restarts})")
                        self._spawn(c)
                    continue
                rc = c.proc.poll()
                if rc is None:
                    continue
                c.exits.append(rc)
                c.proc = None
                c.iso.cleanup(c.launch)
                how = f"signal {-rc}" if rc < 0 else f"status {rc}"
                policy = c.spec.restart
                if policy == "no" or (policy == "on-failure" and rc == 0):
                    self.log(f"{c.label} exited with {how}; restart policy '{policy}': left stopped")
                    c.done = True
                elif c.restarts >= c.spec.max_restarts:
                    self.log(f"{c.label} exited with {how}; gave up after {c.restarts} restarts")
                    c.done = True
                else:
                    delay = min(BACKOFF_MAX, BACKOFF_FIRST * (2 ** c.restarts))
                    c.next_start = now + delay
                    self.log(f"{c.label} exited with {how}; restarting in {delay:.1f} s")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; wait until every NF process is gone and its container removed."""
        self.stopping.set()
        self._thread.join(timeout=START_TIMEOUT + STOP_TIMEOUT + 30)

    def _reap(self) -> None:
        """Wait for every NF process (the manager asks them to stop), end those that hang."""
        self.manager.stopping.wait()
        deadline = time.monotonic() + STOP_TIMEOUT
        for c in self.children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.terminate()
                try:
                    c.proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
            c.exits.append(c.proc.wait())
            c.proc = None
        for c in self.children:
            c.iso.cleanup(c.launch)
        if self.forkserver is not None:
            self.forkserver.close()

    def summary(self) -> dict[str, dict[str, object]]:
        return {c.label: {"service": c.service, "instance": c.instance, "isolation": c.spec.isolation,
                          "restarts": c.restarts, "exits": list(c.exits)} for c in self.children}


def run(topo: Topology, overrides: Mapping[str, Any] | None = None, as_json: bool = False) -> int:
    """Run a validated topology until it is stopped; returns the exit status.

    ``overrides`` are manager options (``onvm run``'s flags) over the file's;
    with ``as_json`` the final status and each NF instance's restarts and exits
    are printed as one JSON object on stdout at the end."""
    cfg = topo.manager_config(overrides)
    preflight(topo)
    mgr = Manager(cfg)
    mgr.start()
    sup: Supervisor | None = None
    try:
        assert mgr.dp is not None
        sup = Supervisor(topo, cfg.name, mgr, [mgr.dp.region.path, socket_path(cfg.name)], cfg.quiet)
        sup.start()
        rc = mgr.run()  # returns once stopped: Ctrl-C, SIGTERM, onvm stop, duration, inputs done
    finally:
        mgr.stop()
        if sup is not None:
            sup.stop()
            if not cfg.quiet:
                restarted = {k: v["restarts"] for k, v in sup.summary().items() if v["restarts"]}
                if restarted:
                    print(f"onvm[{cfg.name}]: restarts: "
                          + ", ".join(f"{k} {v}" for k, v in restarted.items()), file=sys.stderr)
    if as_json:
        print(json.dumps({"status": mgr.final_status, "nfs": sup.summary() if sup else {}}), flush=True)
    if sup is not None and sup.error:
        print(f"onvm: error: {sup.error}", file=sys.stderr)
        return 1
    return rc


__all__ = ["Child", "ManagerView", "Supervisor", "nf_argv", "preflight", "run"]
