"""Fixtures for end-to-end tests: real kernel traffic between network namespaces.

Each test gets its own testbed (namespaces and veth links under a unique
prefix) and manager name; all are removed afterwards, also when a test fails.
These tests need root (namespaces, AF_PACKET) and the ip, ethtool and ping
commands (``make deps`` installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator

import pytest

from onvm.testbed import Testbed
from tests.integration.conftest import deploy, runtime  # noqa: F401  (fixtures used here)

MISSING = [t for t in ("ip", "ethtool", "ping") if shutil.which(t) is None]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or bool(MISSING),
                                reason=f"needs root and {', '.join(MISSING) or 'ip/ethtool/ping'}")


@pytest.fixture
def region_in_tmpfs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Regions in tmpfs, not in the runtime directory (/tmp may be a disk): an AF_XDP
    UMEM must be memory the kernel can pin."""
    request.getfixturevalue("runtime")  # first: it clears ONVM_REGION_DIR
    d = tempfile.mkdtemp(prefix="onvm-t-", dir="/dev/shm")
    monkeypatch.setenv("ONVM_REGION_DIR", d)
    try:
        yield
    finally:
        left = os.listdir(d)
        shutil.rmtree(d, ignore_errors=True)
        assert not left, f"region files left behind: {left}"


@pytest.fixture
def make_testbed() -> Iterator[Callable[..., Testbed]]:
    """make_testbed(kind=..., queues=...) -> a testbed that is up; all are removed at the end."""
    made: list[Testbed] = []

    def make(**options: object) -> Testbed:
        tb = Testbed(f"t{uuid.uuid4().hex[:7]}", **options)  # type: ignore[arg-type]
        made.append(tb)
        tb.up()
        return tb

    try:
        yield make
    finally:
        for tb in made:
            tb.down()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for tb in made:
            leftover = [n for n in (tb.port_if("a"), tb.port_if("b"))
                        if os.path.exists(f"/sys/class/net/{n}")]
            assert not leftover and tb.ns("a") not in names, "testbed left behind"


@pytest.fixture
def testbed(make_testbed: Callable[..., Testbed]) -> Testbed:
    return make_testbed()
