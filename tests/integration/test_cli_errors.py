"""Bad input gives one clear error line and a non-zero exit; nothing is left behind."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys

import pytest

from onvm import _native
from onvm.manager.region_path import region_path
from tests.integration.conftest import onvm, status, wait_for


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool-size", "10"], "--pool-size 10: expected 64..16777216 slots"),
        (["--ring-size", "1000"], "--ring-size 1000: expected a power of two"),
        (["--rx-workers", "0"], "--rx-workers 0: expected 1..7"),
        (["--port", "gen:size=1"], "size=1 is out of range"),
        (["--default-chain", "1,zz"], "--default-chain 1,zz: hop 2 'zz'"),
        (["--default-chain", "out:0"], "port 0 is not an output port"),
        (["--name", "../evil"], "invalid manager name"),
    ],
)
def test_bad_manager_options(runtime, args, message):
    r = onvm("manager", "--name", "bad", *args) if "--name" not in args else onvm("manager", *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("onvm: error: ") and message in lines[0]
    assert os.listdir(runtime) == []


def test_no_manager(runtime):
    for args in (["status", "--name", "ghost"], ["stop", "--name", "ghost"],
                 ["nf", "simple_forward", "--name", "ghost"]):
        r = onvm(*args)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "no manager named 'ghost' is running" in lines[0], r.stderr


def test_unknown_nf(runtime):
    r = onvm("nf", "teleporter")
    assert r.returncode == 1 and "no NF named 'teleporter'" in r.stderr


def test_second_manager_with_same_name_is_refused(deploy):
    dep = deploy([])
    r = onvm("manager", "--name", dep.name)
    assert r.returncode == 1
    assert "already running" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert status(dep.name)["manager"]["name"] == dep.name  # the first one is untouched


def test_nf_against_incompatible_region(deploy):
    dep = deploy([])
    path = region_path(dep.name)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        saved = m[8:12]
        m[8:12] = (99).to_bytes(4, "little")
        try:
            r = onvm("nf", "simple_forward", "--name", dep.name)
        finally:
            m[8:12] = saved
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"layout version 99; this build speaks version {_native.LAYOUT_VERSION}" in lines[0]


def test_stale_region_is_replaced(runtime):
    name = "stale"
    code = (f"import os, onvm._native as n; r = n.Region.create({region_path(name)!r}, 'stale', "
            "256, 2048, 64); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], check=False)
    assert os.path.exists(region_path(name))
    r = onvm("nf", "simple_forward", "--name", name)
    assert r.returncode == 1  # no manager: no socket
    proc = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "manager", "--name", name,
                             "--stats", "0"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: os.path.exists(os.path.join(runtime, f"onvm-{name}.sock")), what="manager")
        wait_for(lambda: status(name)["manager"]["name"] == name, what="status")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert "replaced a stale region" in err
    assert not os.path.exists(region_path(name))
