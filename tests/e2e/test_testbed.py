"""``onvm testbed up|down``: what it creates, and that nothing is left after down or a failure."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from onvm import testbed as tbmod
from onvm.errors import ConfigError, OnvmError
from onvm.testbed import Testbed
from tests.e2e.conftest import needs_root
from tests.integration.conftest import onvm


def _gone(tb: Testbed) -> bool:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return not any(os.path.exists(f"/sys/class/net/{tb.port_if(s)}") or tb.ns(s) in names for s in "ab")


@needs_root
def test_up_and_down_from_the_command_line():
    tb = Testbed(f"t{uuid.uuid4().hex[:7]}", "10.215.0")
    try:
        r = onvm("testbed", "up", "--prefix", tb.prefix, "--subnet", f"{tb.subnet}.0/24")  # as in the README
        assert r.returncode == 0, r.stderr
        assert f"afpacket:{tb.port_if('a')}" in r.stdout
        for side in "ab":
            assert os.path.exists(f"/sys/class/net/{tb.port_if(side)}")
            out = subprocess.run(["ip", "-n", tb.ns(side), "-br", "addr", "show", "eth0"],
                                 capture_output=True, text=True, check=True).stdout
            assert f"{tb.addr(side)}/24" in out and "UP" in out
        r = onvm("testbed", "up", "--prefix", tb.prefix)
        assert r.returncode == 1 and "exists already" in r.stderr
        r = onvm("testbed", "down", "--prefix", tb.prefix)
        assert r.returncode == 0 and "removed" in r.stdout
        assert _gone(tb)
        assert "no testbed" in onvm("testbed", "down", "--prefix", tb.prefix).stdout
    finally:
        tb.down()


@needs_root
def test_failure_half_way_leaves_nothing(monkeypatch):
    tb = Testbed(f"t{uuid.uuid4().hex[:7]}")
    real = tbmod._run

    def failing(argv):  # type: ignore[no-untyped-def]
        if "addr" in argv and tb.ns("b") in argv:
            raise OnvmError("simulated failure")
        real(argv)

    monkeypatch.setattr(tbmod, "_run", failing)
    with pytest.raises(OnvmError, match="simulated"):
        tb.up()
    assert _gone(tb)


def test_bad_names():
    with pytest.raises(ConfigError, match="prefix"):
        Testbed("a" * 14)
    with pytest.raises(ConfigError, match="prefix"):
        Testbed("bad name")
    for bad in ("10.0.0.0", "10.0.0.0/16", "10.0.0.5/24", "10.0.0.300", "fd00::/64", "10.0"):
        with pytest.raises(ConfigError, match=f"testbed subnet '{bad}': expected an IPv4 /24"):
            Testbed("ok", bad)


def test_the_subnet_is_a_24():
    """--subnet takes the /24 as the README writes it, and its first three octets."""
    for text in ("10.50.0.0/24", "10.50.0"):
        tb = Testbed("ok", text)
        assert (tb.subnet, tb.addr("a"), tb.addr("b")) == ("10.50.0", "10.50.0.1", "10.50.0.2")
