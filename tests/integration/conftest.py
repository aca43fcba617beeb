"""Fixtures for tests that run managers and NFs as real processes.

Each test gets its own runtime directory (sockets and regions) and unique
manager names, so tests can run side by side; everything is removed after.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from onvm._deploy import Deployment
from onvm.control.client import Client
from onvm.errors import OnvmError
from onvm.topology.isolation import Launch, backend


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="onvm-t-", dir="/tmp")
    monkeypatch.setenv("ONVM_RUNTIME_DIR", d)
    monkeypatch.delenv("ONVM_REGION_DIR", raising=False)
    try:
        yield d
    finally:
        left = os.listdir(d)
        shutil.rmtree(d, ignore_errors=True)
        assert not left, f"runtime files left behind: {left}"


@pytest.fixture
def deploy(runtime: str) -> Iterator[Any]:
    """deploy(manager_args) -> a started Deployment; all are stopped at the end."""
    made: list[Deployment] = []

    def start(manager_args: list[str], verbose: bool = False, name: str | None = None) -> Deployment:
        dep = Deployment(name or f"t{uuid.uuid4().hex[:8]}", manager_args, verbose=verbose)
        made.append(dep)
        dep.start_manager()
        return dep

    try:
        yield start
    finally:
        for dep in made:
            dep.stop()


def onvm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the onvm command; returns the completed process."""
    return subprocess.run([sys.executable, "-m", "onvm.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout)


def wait_for(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def pcap_records(path: Any) -> list[bytes]:
    """The packets of a classic little-endian pcap file, as bytes (fast, no parsing)."""
    out = []
    with open(path, "rb") as f:
        assert f.read(4) == b"\xd4\xc3\xb2\xa1", "not a little-endian pcap file"
        f.read(20)
        while len(hdr := f.read(16)) == 16:
            out.append(f.read(struct.unpack("<IIII", hdr)[2]))
    return out


def pcap_stamps(path: Any) -> list[float]:
    """The timestamps (seconds) of a classic little-endian microsecond pcap file's records."""
    out = []
    with open(path, "rb") as f:
        f.read(24)
        while len(hdr := f.read(16)) == 16:
            sec, usec, cap, _ = struct.unpack("<IIII", hdr)
            f.read(cap)
            out.append(sec + usec / 1e6)
    return out


def fitted_rate(stamps: list[float]) -> float:
    """Packets per second from a least-squares line through the send times: one late
    packet (a busy machine) moves it little, a schedule that loses time does."""
    n = len(stamps)
    mean_k, mean_t = (n - 1) / 2, sum(stamps) / n
    slope = sum((k - mean_k) * (t - mean_t) for k, t in enumerate(stamps)) / sum(
        (k - mean_k) ** 2 for k in range(n))
    return 1 / slope


def status(name: str) -> dict[str, Any]:
    with Client(name) as c:
        return c.request("status")


def _have(mode: str) -> bool:
    try:
        backend(mode).check()
        return True
    except OnvmError:
        return False


@pytest.fixture(scope="session")
def nf_image() -> Iterator[str]:
    """The NF image, built once per test run from this checkout (no registry).

    Its tag is unique: other checkouts on the machine build their own."""
    if not _have("podman"):
        pytest.skip("podman is not installed (make deps installs it)")
    tag = f"localhost/onvm-nf:test-{uuid.uuid4().hex[:8]}"
    r = onvm("image", "build", "--json", "--tag", tag, timeout=600)
    assert r.returncode == 0, r.stderr
    try:
        yield str(json.loads(r.stdout.splitlines()[-1])["image"])
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=120)


def probe_isolated(mode: str, image: str, code: str, args: list[str], shared: list[str]) -> dict[str, Any]:
    """Run Python ``code`` (with ``args``) in isolation ``mode`` as an NF would run; the JSON
    object it prints last."""
    iso = backend(mode)
    launch = Launch([sys.executable, "-S", "-c", code, *args], {}, shared,
                    f"onvm-probe-{uuid.uuid4().hex[:8]}", image)
    try:
        r = subprocess.run(iso.command(launch), env=iso.env(launch), capture_output=True, text=True,
                           timeout=120)
    finally:
        iso.cleanup(launch)
    assert r.returncode == 0, r.stderr
    seen: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
    return seen


def need(mode: str, request: pytest.FixtureRequest) -> str:
    """Skip unless ``mode`` works here; returns the image to use (containers) or ''."""
    if mode == "podman":
        return str(request.getfixturevalue("nf_image"))
    if not _have(mode):
        pytest.skip(f"{mode} isolation is not available here (make deps installs it)")
    return ""
