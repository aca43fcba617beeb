"""A bump in the wire made of dpdk: ports: DPDK's net_af_packet on the testbed's
links, the real Linux stack in two namespaces on either side (ARP, ping, an
HTTP transfer compared by sha256, UDP echo), through the bridge NF."""

from __future__ import annotations

import os
from typing import Any

import pytest

from onvm.testbed import Testbed
from tests.e2e.conftest import needs_root
from tests.e2e.test_wire import _http_transfer, _ping, _udp_echo

try:
    from onvm import _dpdk
except ImportError:
    _dpdk = None  # type: ignore[assignment]

pytestmark = [needs_root, pytest.mark.skipif(_dpdk is None or not os.path.isdir(_dpdk.PMD_DIR),
                                             reason="onvm._dpdk not built or DPDK's PMDs missing")]


def test_dpdk_af_packet_bump_in_the_wire(testbed: Testbed, deploy: Any, tmp_path: Any) -> None:
    ports = [f"dpdk:net_af_packet{i},iface={testbed.port_if(side)}" for i, side in enumerate("ab")]
    # net_af_packet's ring frames hold 2016 bytes of packet: slots must hold as much
    dep = deploy(["--port", ports[0], "--port", ports[1], "--default-chain", "1", "--slot-size", "2176"])
    dep.start_nf(["bridge", "--service", "1"])
    dep.wait_running(1)
    _ping(testbed, "a", "b")
    _ping(testbed, "b", "a")
    _http_transfer(testbed, "b", "a", tmp_path)
    _http_transfer(testbed, "a", "b", tmp_path)
    _udp_echo(testbed, "a", "b")
    st = dep.status()
    p0, p1 = st["ports"]
    assert p0["kind"] == p1["kind"] == "dpdk"
    assert p0["rx"] > 2000 and p1["rx"] > 2000  # the transfers went through the DPDK ports
    assert p0["tx"] >= p1["rx"] - sum(p1["drops"].values()) - 8
    assert p1["tx"] >= p0["rx"] - sum(p0["drops"].values()) - 8
    pool = st["pool"]
    assert pool["free"] + pool["lent"] + pool["in_use"] == pool["total"] and pool["in_use"] < 64
