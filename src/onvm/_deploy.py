"""Start a manager and NFs as child processes, and always take them down again.

Used by ``onvm bench``, the demo and the integration tests.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from onvm.control.client import Client
from onvm.errors import ManagerNotRunning, OnvmError


class Deployment:
    """A manager and NFs started as child processes; always torn down."""

    # How long the manager and NFs get to come up: generous, a loaded machine or a
    # sanitizer build can take several seconds where an idle one takes a fraction.
    start_timeout = 30.0

    def __init__(self, name: str, manager_args: list[str], verbose: bool = False) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.verbose = verbose
        self.manager_args = manager_args

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        out = None if self.verbose else subprocess.DEVNULL
        p = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", *args],
                             stdout=out, stderr=out)
        self.procs.append(p)
        return p

    def start_manager(self) -> subprocess.Popen[bytes]:
        args = ["manager", "--name", self.name, *self.manager_args]
        if not self.verbose:
            args += ["--quiet", "--stats", "0"]
        proc = self._spawn(args)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise OnvmError(f"the manager exited with status {proc.returncode}")
            try:
                with Client(self.name) as c:
                    c.hello()
                return proc
            except ManagerNotRunning:
                time.sleep(0.02)
        raise OnvmError(f"the manager did not come up within {self.start_timeout:g} s")

    def start_nf(self, argv: list[str]) -> subprocess.Popen[bytes]:
        args = ["nf", argv[0], "--name", self.name, *argv[1:]]
        if not self.verbose:
            args.append("--quiet")
        return self._spawn(args)

    def wait_running(self, count: int, timeout: float | None = None) -> None:
        timeout = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if sum(n["state"] == "running" for n in st["nfs"]) >= count:
                return
            for p in self.procs:
                if p.poll() is not None:
                    raise OnvmError(f"process {p.args!r} exited with status {p.returncode}")
            time.sleep(0.02)
        raise OnvmError(f"{count} NFs did not start within {timeout} s")

    def status(self) -> dict[str, Any]:
        with Client(self.name) as c:
            return c.status()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask the manager to stop, wait for every process, kill what hangs."""
        try:
            with Client(self.name) as c:
                c.shutdown()
        except OnvmError:
            pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
