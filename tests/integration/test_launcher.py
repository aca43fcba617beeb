"""New instances come only from whoever started the first: an NF cannot make the manager run its
command on the host, and scaling under ``onvm run`` works in every isolation mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from onvm.manager.launch import Recipe, same_privileges
from onvm.topology.isolation import Launch, backend
from tests.integration.conftest import need, onvm, status, wait_for
from tests.integration.test_topology import MODES, _run, _write

# An NF that tries to escape: it re-executes itself as ``python -c CODE``, so that its
# command line is a program of its choosing, then asks for more instances of itself.
# Run on the host, CODE writes the marker (a directory the sandbox cannot see).
HOSTILE = '''\
import os, sys
MARKER = {marker!r}
CODE = """
import os, sys
MARKER = {marker!r}
if os.path.isdir(os.path.dirname(MARKER)):
    open(MARKER, 'w').write('ran on the host')
    sys.exit(0)
from onvm import NF
nf = NF('hostile')
@nf.setup
def grow(nf):
    if nf.instance == 0:
        nf.scale(3)
@nf.packet
def handle(pkt, meta):
    meta.next()
nf.run()
"""
os.execv(sys.executable, [sys.executable, '-c', CODE])
'''


def _stop(p: subprocess.Popen[str]) -> None:
    """Stop ``onvm run`` as Ctrl-C would (so it removes its files), killing it only if it hangs."""
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()


@pytest.mark.parametrize("mode", ["namespace", "podman"])
def test_sandboxed_nf_cannot_make_scale_run_its_command_on_the_host(runtime, tmp_path, request, mode):
    image = need(mode, request)
    (tmp_path / "host").mkdir()
    (tmp_path / "nf").mkdir()
    marker = tmp_path / "host" / "escaped"  # a directory the sandbox does not bind
    script = tmp_path / "nf" / "hostile.py"
    script.write_text(HOSTILE.format(marker=str(marker)))
    name = f"hs{uuid.uuid4().hex[:6]}"
    topo = _write(tmp_path, f"""\
        manager: {{name: {name}, stats: 0}}
        nfs:
          - {{program: {script}, service: 4, isolation: {mode}{f", image: '{image}'" if image else ""}}}
        """)
    p = _run(topo, "--quiet", start_new_session=True)
    try:
        # the topology's launcher starts the two copies, in the same sandbox, from the file
        wait_for(lambda: marker.exists() or os.path.exists(os.path.join(runtime, f"onvm-{name}.sock")) and
                 sorted(n["instance"] for n in status(name)["nfs"] if n["state"] == "running") == [0, 1, 2],
                 timeout=90, what="three sandboxed instances")
        assert not marker.exists(), "the NF's command ran on the host"
        os.kill(p.pid, signal.SIGINT)
        _, stderr = p.communicate(timeout=60)
    finally:
        _stop(p)
    assert p.returncode == 0, stderr
    assert not marker.exists(), "the NF's command ran on the host"


def test_recipe_is_recorded_only_for_a_process_with_the_managers_privileges(tmp_path, request):
    need("namespace", request)
    host = subprocess.Popen(["sleep", "30"])
    iso = backend("namespace")
    launch = Launch(["sleep", "30"], {}, [], f"onvm-probe-{uuid.uuid4().hex[:8]}")
    boxed = subprocess.Popen(iso.command(launch), env=iso.env(launch))
    try:
        # bwrap's child is the sandboxed process: the one that would register
        inner = wait_for(lambda: [int(c) for c in Path(f"/proc/{boxed.pid}/task/{boxed.pid}/children")
                                  .read_text().split()], timeout=10, what="the sandboxed process")
        assert same_privileges(host.pid)
        assert not same_privileges(boxed.pid)  # bwrap itself holds no capabilities after it started
        assert not any(same_privileges(pid) for pid in inner)
        assert not same_privileges(os.getpid()) and not same_privileges(0)
    finally:
        for proc in (host, boxed):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("bad", [{"argv": []}, {"argv": ["x"], "cwd": "relative"},
                                 {"argv": ["a\0b"], "cwd": "/"}, {"argv": "x", "cwd": "/"},
                                 {"argv": ["x"], "cwd": "/", "env": {"A=B": "1"}},
                                 {"argv": ["x"], "cwd": "/", "shell": True}])
def test_a_malformed_recipe_is_refused_by_name(bad):
    from onvm.errors import ConfigError

    with pytest.raises(ConfigError, match="launch"):
        Recipe.parse(bad)


@pytest.mark.parametrize("mode", MODES)
def test_scale_under_run_starts_supervised_instances_in_the_same_isolation(runtime, tmp_path, request, mode):
    image = need(mode, request)
    name = f"sc{uuid.uuid4().hex[:6]}"
    topo = _write(tmp_path, f"""\
        manager: {{name: {name}, stats: 0}}
        ports: ["gen:size=64,flows=64,rate=5k", "null"]
        nfs:
          - {{name: fwd, program: simple_forward, service: 1, restart: always, isolation: {mode}{
                f", image: '{image}'" if image else ""}}}
        chains: {{default: [1, out:1]}}
        """)
    p = _run(topo, start_new_session=True)

    def running() -> list[dict]:
        nfs = [n for n in status(name)["nfs"] if n["state"] == "running"]
        return sorted(nfs, key=lambda n: n["instance"])

    try:
        wait_for(lambda: os.path.exists(os.path.join(runtime, f"onvm-{name}.sock")) and len(running()) == 1,
                 timeout=90, what="the first instance")
        r = onvm("scale", "1", "3", "--name", name, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert (out["from"], out["to"], out["launcher"]) == (1, 3, "topology")
        assert out["started"] == ["fwd.1", "fwd.2"]
        wait_for(lambda: [n["instance"] for n in running()] == [0, 1, 2], timeout=90, what="three instances")
        # supervised like the first: a scaled-up instance that is killed comes back
        victim = running()[2]
        os.kill(victim["pid"], signal.SIGKILL)
        def restarted() -> bool:
            now = running()
            return [n["instance"] for n in now] == [0, 1, 2] and now[2]["pid"] != victim["pid"]

        wait_for(restarted, timeout=60, what="the killed instance to be restarted")
        r = onvm("scale", "1", "1", "--name", name, "--json")
        assert r.returncode == 0 and len(json.loads(r.stdout)["stopping_nfs"]) == 2, r.stderr
        wait_for(lambda: [n["instance"] for n in running()] == [0], timeout=30, what="back to one instance")
        time.sleep(1.0)
        assert [n["instance"] for n in running()] == [0]  # scaled away: not restarted ('always')
        os.kill(p.pid, signal.SIGINT)
        _, stderr = p.communicate(timeout=60)
    finally:
        _stop(p)
    assert p.returncode == 0, stderr
    assert "fwd.1 exited with status 0; scaled away" in stderr


def test_nf_started_by_hand_is_copied_from_its_recorded_command(deploy, tmp_path):
    dep = deploy([])
    script = tmp_path / "by_hand.py"
    script.write_text(textwrap.dedent('''
        import sys
        from onvm import NF
        nf = NF("by_hand", service=5, manager=sys.argv[1], quiet=True)
        @nf.packet
        def handle(pkt, meta):
            meta.next()
        nf.run()
    '''))
    dep.procs.append(subprocess.Popen([sys.executable, str(script), dep.name], cwd=tmp_path))
    dep.wait_running(1)
    r = onvm("scale", "5", "2", "--name", dep.name, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["launcher"] == "recipe"
    wait_for(lambda: sorted(n["instance"] for n in status(dep.name)["nfs"]) == [0, 1], timeout=20,
             what="the copy")
    names = {n["name"] for n in status(dep.name)["nfs"]}
    assert names == {"by_hand"}


def test_a_command_line_too_long_for_one_control_message_is_not_carried(monkeypatch):
    import sys as _sys

    monkeypatch.setattr(_sys, "orig_argv", [_sys.executable, "-c", "x" * 100_000])
    assert Recipe.of_this_process() is None
