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
signal, ``always``) under the same instance number, so the same flows reach it
again.  The budget is a rate: at most ``max_restarts`` restarts within any
``restart_window`` seconds; one more and the supervisor gives up on it.  The
delay before a restart doubles with each exit that follows a short run and
goes back to the first one after a healthy run (:data:`HEALTHY_RUN`), so an
NF that crashes once a day is restarted at once for ever, and one that
crashes at start is held back.  The manager has
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
from collections import deque
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
HEALTHY_RUN = 10.0  # seconds an NF must run for its next restart to come at once again
EXITS_KEPT = 32  # exit statuses kept per NF instance (its total restarts are counted apart)
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
    restarts: int = 0  # in all
    exits: deque[int] = field(default_factory=lambda: deque(maxlen=EXITS_KEPT))  # the last statuses
    recent: deque[float] = field(default_factory=deque)  # when it was restarted, within the window
    quick_exits: int = 0  # exits in a row after a short run: the back-off's exponent
    started_at: float = 0.0
    next_start: float = 0.0
    done: bool = False  # exited for good (policy), gave up or scaled away
    fresh: bool = False  # added by scaling: its first start is not a restart

    @property
    def label(self) -> str:
        return f"{self.spec.label}.{self.instance}"


def restart_delay(c: Child, now: float) -> float | None:
    """After ``c`` exited at ``now``: seconds before its restart, or None when it had
    ``max_restarts`` restarts within the last ``restart_window`` seconds already.

    The delay doubles with each exit after a run shorter than :data:`HEALTHY_RUN`
    (up to :data:`BACKOFF_MAX`) and is back to :data:`BACKOFF_FIRST` after a healthy run."""
    while c.recent and c.recent[0] <= now - c.spec.restart_window:
        c.recent.popleft()
    if len(c.recent) >= c.spec.max_restarts:
        return None
    if now - c.started_at >= HEALTHY_RUN:
        c.quick_exits = 0
    delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(c.quick_exits, 16))
    c.quick_exits += 1
    return delay


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
        self.manager_name = name
        self._paths = python_paths()
        self._shared = shared
        # Scaling asks from the control thread; the supervisor's own thread starts and
        # retires (bubblewrap's --die-with-parent follows the thread that started it).
        self._asked = threading.Lock()
        self._new: list[Child] = []
        self._retiring: set[tuple[int, int]] = set()
        next_instance: dict[int, int] = {}
        for spec in topo.nfs:
            assert spec.service is not None  # filled in by validation
            for _ in range(spec.instances):
                inst = next_instance.get(spec.service, 0)
                next_instance[spec.service] = inst + 1
                self.children.append(self._child(spec, inst))

    def _child(self, spec: NFSpec, inst: int) -> Child:
        """Instance ``inst`` of a topology entry, as the file says to start it."""
        assert spec.service is not None
        name = self.manager_name
        code = find(spec.program).paths  # where the NF's own code lives, outside the package
        nf_env = {"ONVM_RUNTIME_DIR": runtime_dir(), "ONVM_MANAGER": name,
                  "ONVM_SERVICE": str(spec.service), "ONVM_INSTANCE": str(inst),
                  "PYTHONPATH": os.pathsep.join([*code, nf_pythonpath()]), **nf_threads()}
        if spec.cpus:
            nf_env["ONVM_CPUS"] = format_cpus(spec.cpus)
        launch = Launch(nf_argv(spec, name, spec.service, inst, self.quiet), nf_env, self._shared,
                        f"onvm-{name}-{spec.label}-{inst}-{os.getpid()}", spec.image or IMAGE,
                        self._paths, code)
        return Child(spec, spec.service, inst, backend(spec.isolation), launch)

    # ---- the launcher of the topology's services (see onvm.manager.launch) ----
    name = "topology"

    def owns(self, service: int) -> bool:
        return any(spec.service == service for spec in self.topo.nfs)

    def grow(self, service: int, count: int, taken: set[int]) -> list[str]:
        """``count`` more instances of the service's (last) topology entry, started and
        supervised by this supervisor's thread like the first ones."""
        spec = [s for s in self.topo.nfs if s.service == service][-1]
        with self._asked:
            held = taken | {c.instance for c in [*self.children, *self._new]
                            if c.service == service and not c.done
                            and (service, c.instance) not in self._retiring}
            out = []
            for _ in range(count):
                inst = next(i for i in range(len(held) + 1) if i not in held)
                held.add(inst)
                self._retiring.discard((service, inst))
                child = self._child(spec, inst)
                self._new.append(child)
                out.append(child.label)
        return out

    def shrink(self, service: int, instances: list[int]) -> None:
        with self._asked:
            self._retiring.update((service, i) for i in instances)

    def _take_asked(self) -> None:
        """Apply what scaling asked for: new children to start, instances not to restart."""
        with self._asked:
            new, self._new = self._new, []
            retiring = set(self._retiring)
        for c in self.children:
            if (c.service, c.instance) in retiring and not c.done:
                c.done = True
                if c.proc is None:
                    with self._asked:
                        self._retiring.discard((c.service, c.instance))
        later = []
        for child in new:
            key = (child.service, child.instance)
            old = next((c for c in self.children if (c.service, c.instance) == key), None)
            if old is None:
                child.fresh = True
                self.children.append(child)
            elif old.proc is None:  # an instance scaled away and back: the same record
                old.done, old.next_start, old.fresh = False, 0.0, True
            else:
                later.append(child)  # its previous process is still leaving
        if later:
            with self._asked:
                self._new[:0] = later

    def log(self, text: str) -> None:
        self.manager.log(text)

    # ---- starting -------------------------------------------------------------
    def _spawn(self, c: Child) -> None:
        c.started_at = time.monotonic()
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
            self._take_asked()
            now = time.monotonic()
            for c in self.children:
                if c.proc is None:
                    if c.done or now < c.next_start or self.manager.stopping.is_set():
                        continue
                    if c.fresh:
                        c.fresh = False
                        self.log(f"starting {c.label} (scaled up)")
                    else:
                        c.restarts += 1
                        c.recent.append(now)
                        self.log(f"restarting {c.label} (restart {c.restarts}; {len(c.recent)} of "
                                 f"{c.spec.max_restarts} within {c.spec.restart_window:g} s)")
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
                if c.done:  # scaled away
                    with self._asked:
                        self._retiring.discard((c.service, c.instance))
                    self.log(f"{c.label} exited with {how}; scaled away")
                elif policy == "no" or (policy == "on-failure" and rc == 0):
                    self.log(f"{c.label} exited with {how}; restart policy '{policy}': left stopped")
                    c.done = True
                elif (delay := restart_delay(c, now)) is None:
                    self.log(f"{c.label} exited with {how}; gave up: {len(c.recent)} restarts within "
                             f"{c.spec.restart_window:g} s ({c.restarts} in all)")
                    c.done = True
                else:
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
        if mgr.services is not None:
            mgr.services.add_launcher(sup)  # scaling a topology's service goes through its supervisor
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


__all__ = ["Child", "ManagerView", "Supervisor", "nf_argv", "preflight", "restart_delay", "run"]
