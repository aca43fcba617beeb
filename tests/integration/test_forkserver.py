"""The NF fork server: NFs forked from a warm parent, with their exit status reported."""

from __future__ import annotations

import os
import signal

import pytest

from onvm.topology.isolation import ForkServer
from onvm.topology.runner import nf_pythonpath
from tests.integration.conftest import status, wait_for


@pytest.fixture
def server(runtime):
    fs = ForkServer({"ONVM_RUNTIME_DIR": runtime, "PYTHONPATH": nf_pythonpath()}, quiet=True)
    try:
        yield fs
    finally:
        fs.close()
    assert fs.proc.returncode == 0


def test_exit_status_is_reported(server):
    bad = server.spawn([*ForkServer.PREFIX, "nf", "nosuch_nf"], {})
    assert bad.wait(timeout=10) == 1  # 'no NF named nosuch_nf'
    lonely = server.spawn([*ForkServer.PREFIX, "nf", "simple_forward", "--name", "nobody"], {})
    assert lonely.wait(timeout=10) == 1  # no manager answers
    assert server.handles([*ForkServer.PREFIX, "nf", "x"]) and not server.handles(["/bin/true"])


def test_forked_nf_carries_packets_and_dies_like_a_process(deploy, server):
    dep = deploy(["--port", "gen:rate=10k", "--port", "null", "--default-chain", "1,out:1"])
    nf = server.spawn([*ForkServer.PREFIX, "nf", "simple_forward", "--name", dep.name, "--service", "1",
                       "--quiet"], {})
    wait_for(lambda: [n for n in status(dep.name)["nfs"] if n["rx"] > 0 and n["pid"] == nf.pid],
             timeout=20, what="packets through the forked NF")
    assert os.getsid(nf.pid) == nf.pid  # its own session: Ctrl-C on a terminal does not reach it
    nf.kill()
    assert nf.wait(timeout=10) == -signal.SIGKILL
    wait_for(lambda: not status(dep.name)["nfs"], timeout=10, what="the NF to be retired")
    assert status(dep.name)["left"][-1]["state"] == "failed"
