"""A manager and its NFs go together, and a region cut short under them kills nobody.

* A manager killed with SIGKILL takes its NFs with it within about a second:
  they see the control socket hang up.
* The next manager of the same name makes a new region file: an NF left over
  from the old one (here stopped so that it cannot leave) maps only the old one.
* The region's file truncated under a running manager and NF (anyone with write
  access can): both notice, say so and stop; neither dies of SIGBUS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from onvm.manager.region_path import region_path
from tests.integration.conftest import wait_for


def kill_manager(dep, runtime: str) -> None:
    """SIGKILL dep's manager; remove the files it could not (a test leaves nothing behind)."""
    dep.procs[0].send_signal(signal.SIGKILL)
    dep.procs[0].wait()
    for f in os.listdir(runtime):
        if f.startswith(f"onvm-{dep.name}."):
            os.unlink(os.path.join(runtime, f))


def exit_time(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> float:
    """Seconds until ``proc`` exits (fails the test after ``timeout``)."""
    t0 = time.monotonic()
    proc.wait(timeout=timeout)
    return time.monotonic() - t0


def test_nfs_exit_within_a_second_of_their_managers_death(deploy, runtime):
    dep = deploy(["--port", "gen:rate=20k", "--port", "null", "--default-chain", "1,2,out:1"])
    busy = dep.start_nf(["simple_forward", "--service", "1"])
    idle = dep.start_nf(["simple_forward", "--service", "2"])
    dep.wait_running(2)
    wait_for(lambda: dep.status()["nfs"][1]["rx"] > 100, what="traffic through both NFs")
    kill_manager(dep, runtime)
    assert exit_time(busy) < 1.5
    assert exit_time(idle) < 1.5


def test_nf_stuck_in_its_handler_still_leaves_when_its_manager_dies(deploy, runtime, tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from onvm import NF
        nf = NF("stuck", service=1, manager=sys.argv[1], quiet=True)
        @nf.packet
        def handle(pkt, meta):
            while True:  # never returns
                time.sleep(0.01)
        nf.run()
    """))
    dep = deploy(["--port", "gen:rate=1k", "--port", "null", "--default-chain", "1,out:1"])
    nf = subprocess.Popen([sys.executable, str(script), dep.name], stderr=subprocess.DEVNULL)
    try:
        dep.wait_running(1)
        wait_for(lambda: dep.status()["nfs"][0]["rx"] > 0, what="the NF to take a packet")
        kill_manager(dep, runtime)
        assert exit_time(nf) < 4.0  # interrupted after a second, or ended hard after three
    finally:
        if nf.poll() is None:
            nf.kill()
            nf.wait()


def test_a_new_manager_never_shares_its_region_with_an_old_managers_nf(deploy, runtime):
    first = deploy(["--port", "null"])
    orphan = first.start_nf(["simple_forward", "--service", "1"])
    first.wait_running(1)
    path = region_path(first.name)
    old_ino = os.stat(path).st_ino
    orphan.send_signal(signal.SIGSTOP)  # it cannot see its manager die, nor leave
    try:
        first.procs[0].send_signal(signal.SIGKILL)  # its files stay: the next manager replaces them
        first.procs[0].wait()
        second = deploy(["--port", "null"], name=first.name)
        new_ino = os.stat(path).st_ino
        assert new_ino != old_ino
        with open(f"/proc/{orphan.pid}/maps") as f:
            inodes = {int(line.split()[4]) for line in f if path in line}
        assert inodes == {old_ino}  # the orphan maps the old file, now unlinked, not the new region
        fresh = second.start_nf(["simple_forward", "--service", "1"])
        second.wait_running(1)
        orphan.send_signal(signal.SIGCONT)
        assert exit_time(orphan) < 1.5  # awake, it sees its manager's socket hung up
        assert fresh.poll() is None
    finally:
        orphan.send_signal(signal.SIGCONT)


def test_region_file_cut_short_stops_manager_and_nf_without_a_crash(deploy):
    dep = deploy(["--port", "gen:rate=50k", "--port", "null", "--default-chain", "1,out:1"])
    nf = dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    wait_for(lambda: dep.status()["nfs"][0]["rx"] > 1000, what="traffic")
    os.truncate(region_path(dep.name), 4096)  # only the header is left
    manager = dep.procs[0]
    assert exit_time(manager) < 5.0
    assert manager.returncode == 1  # stopped, with a reason; not killed by SIGBUS (-7)
    nf.wait(timeout=5)
    assert nf.returncode == 0
