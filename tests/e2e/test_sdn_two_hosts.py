"""Two managers as two hosts under one os-ken controller: a chain that crosses both.

::

    [ns A] == PREFIX-a  manager 1  PREFIX-x1 ==veth== PREFIX-x2  manager 2  PREFIX-b == [ns B]

(``Testbed(managers=2)``, what ``onvm testbed up --managers 2`` builds.)

Each manager's default chain is the bridge NF (ARP, replies and everything
else).  The controller steers TCP to port 8080 through service 2 of manager 1,
out to manager 2, through its service 2 and out to host B: a real HTTP transfer
from B's server to A's client takes that path one way and the bridges back.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("os_ken")

from onvm.testbed import Testbed  # noqa: E402
from tests.e2e.conftest import needs_root  # noqa: E402
from tests.e2e.test_wire import _http_transfer, _ping  # noqa: E402
from tests.integration.conftest import wait_for  # noqa: E402
from tests.integration.test_sdn_osken import Controller, free_port  # noqa: E402

pytestmark = needs_root


@pytest.fixture
def testbed2() -> Iterator[Testbed]:
    tb = Testbed(f"t{uuid.uuid4().hex[:7]}", "10.216.0", managers=2)
    try:
        tb.up()
        assert os.path.exists(f"/sys/class/net/{tb.trunk_if(2)}")
        yield tb
    finally:
        tb.down()
        assert not os.path.exists(f"/sys/class/net/{tb.trunk_if(1)}"), "testbed left behind"


def test_a_chain_across_two_managers(testbed2: Testbed, deploy: Any, tmp_path: Path) -> None:
    testbed = testbed2
    ctl = Controller(free_port(), tmp_path / "steer.log",
                     env={"STEER_WEB": "1002,2", "STEER_OTHER": "none", "STEER_TCP_PORT": "8080"})
    try:
        ctl.start()
        deps = []
        for m in (1, 2):
            ports = testbed.manager_ports(m)
            dep = deploy(["--port", ports[0], "--port", ports[1],
                          "--default-chain", "1", "--controller", f"tcp:127.0.0.1:{ctl.port}"])
            dep.start_nf(["bridge", "--service", "1"])
            dep.start_nf(["simple_forward", "--service", "2"])
            dep.wait_running(2)
            deps.append(dep)
        wait_for(lambda: len({e["dpid"] for e in ctl.events("installed")}) == 2, timeout=30,
                 what="flows on both managers")
        _ping(testbed, "a", "b")
        _http_transfer(testbed, "b", "a", tmp_path)  # A's requests and ACKs to 8080 cross both chains
        for dep in deps:
            st = dep.status()
            svc = {n["service"]: n["rx"] for n in st["nfs"]}
            assert svc[2] > 100, st["nfs"]  # the steered direction went through service 2
            assert svc[1] > 100  # and the replies through the bridge
            assert st["openflow"]["flows"] == 1

        def counted() -> dict[int, int] | bool:
            last = {e["dpid"]: e["flows"][0]["packets"] for e in ctl.events("flow_stats") if e["flows"]}
            return len(last) == 2 and all(p > 100 for p in last.values()) and last

        wait_for(counted, timeout=15, what="both managers to report the steered packets")
    finally:
        ctl.kill()
