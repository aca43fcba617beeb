"""A real os-ken controller process programs a manager: steering, statistics, a restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("os_ken")

from tests.integration.conftest import status, wait_for  # noqa: E402

APP = Path(__file__).resolve().parents[2] / "examples" / "sdn" / "steer.py"
TCP, UDP = 6000, 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Controller:
    def __init__(self, port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port, self.log = port, log
        self.env = env or {"STEER_WEB": "1001,1002,3", "STEER_OTHER": "3"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, **self.env, STEER_LOG=str(self.log))
        self.proc = subprocess.Popen([sys.executable, "-m", "onvm.sdn.controller", "--listen",
                                      f"127.0.0.1:{self.port}", str(APP)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def events(self, kind: str) -> list[dict]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        out = []
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:  # a line being written
                continue
            if e["event"] == kind:
                out.append(e)
        return out


@pytest.fixture
def controller(tmp_path):
    ctl = Controller(free_port(), tmp_path / "steer.log")
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.kill()


def test_controller_steers_web_traffic_through_a_chain_and_survives_a_restart(deploy, controller):
    dep = deploy([
        "--port", f"gen:proto=tcp,dport=80,flows=8,count={TCP},rate=1500",
        "--port", f"gen:proto=udp,dport=53,flows=4,count={UDP},rate=750",
        "--port", "null", "--default-chain", "1,out:2", "--ring-size", "8192",
        "--controller", f"tcp:127.0.0.1:{controller.port}",
    ])
    wait_for(lambda: controller.events("installed"), timeout=30, what="the controller's flows")
    # the port list answers a request sent after the barrier's: it may come a moment later
    ports = wait_for(lambda: controller.events("ports"), timeout=10, what="the port list")[0]["ports"]
    assert ports["1"] == "p0-gen" and ports["3"] == "p2-null" and ports["1002"] == "svc2"
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "2"])
    dep.wait_running(2)

    def nf_rx():
        return sum(n["rx"] for n in status(dep.name)["nfs"])

    wait_for(lambda: nf_rx() > 500, timeout=20, what="web traffic through the chain")
    # The controller dies: the installed flows keep forwarding.
    controller.kill()
    wait_for(lambda: not status(dep.name)["openflow"]["controllers"][0]["connected"], timeout=10,
             what="the agent to notice")
    before = nf_rx()
    wait_for(lambda: nf_rx() > before + 300, timeout=20, what="forwarding without a controller")
    # It comes back: the session recovers.
    controller.start()
    wait_for(lambda: len(controller.events("connected")) >= 2, timeout=30, what="the session to recover")
    st = status(dep.name)["openflow"]
    assert st["controllers"][0]["connects"] >= 2 and st["flows"] == 2

    def settled():
        s = status(dep.name)
        return all(p["done"] for p in s["ports"][:2]) and s["pool"]["free"] == s["pool"]["total"] and s

    s = wait_for(settled, timeout=60, what="traffic to end")
    rx = {n["service"]: n["rx"] for n in s["nfs"]}
    assert rx == {1: TCP, 2: TCP}  # only TCP port 80 went through the chain
    assert s["ports"][2]["tx"] == TCP + UDP

    def final_stats():
        for e in reversed(controller.events("flow_stats")):
            by_cookie = {f["cookie"]: f["packets"] for f in e["flows"]}
            return by_cookie == {0x80: TCP, 0x1: UDP} and by_cookie
        return False

    wait_for(final_stats, timeout=15, what="flow statistics that match the packets sent")
