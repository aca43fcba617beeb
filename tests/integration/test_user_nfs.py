"""NFs from anywhere: a user's NF in a file and one an installed package publishes run like
the examples, listed by ``onvm nf --list``, under the fork server and in every sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import need, onvm, pcap_records, status, wait_for
from tests.unit.test_nf_programs import make_dist

USER_NF = '''\
"""tagger: a user NF in a file; it notes where it runs, then passes packets on."""
import os

SUMMARY = "a user NF in a file"


def add_arguments(p):
    p.add_argument("--probe", default="")


def make(args):
    from onvm.nf import from_args

    nf = from_args("tagger", args)
    if args.probe:  # how this process was started: forked from the fork server, or not
        with open(args.probe, "a") as f:
            f.write(open("/proc/self/cmdline").read().replace("\\0", " ") + "\\n")

    @nf.batch
    def handle(b):
        b.next()

    return nf
'''


def env_with(site: Path) -> dict[str, str]:
    pp = [str(site), *(os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(pp))


@pytest.fixture
def user_nfs(tmp_path: Path) -> tuple[Path, Path]:
    """(a user NF file, a sys.path entry holding a distribution that publishes the NF 'relay')."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "tagger.py").write_text(USER_NF)
    return code / "tagger.py", make_dist(tmp_path / "site")


def test_list_shows_installed_nfs_and_a_file_nf_shows_its_options(user_nfs: tuple[Path, Path]) -> None:
    nf_file, site = user_nfs
    r = subprocess.run([sys.executable, "-m", "onvm.cli.main", "nf", "--list"], capture_output=True,
                       text=True, env=env_with(site), timeout=60, check=True)
    assert "simple_forward" in r.stdout
    assert "installed (entry point group 'onvm.nfs'):" in r.stdout
    assert "relay            passes packets on, from an installed package  [usernfpkg 1.0]" in r.stdout
    r = onvm("nf", str(nf_file), "--help")
    assert r.returncode == 0 and "--probe" in r.stdout and "--service" in r.stdout


@pytest.mark.parametrize("mode", ["process", "namespace", "podman"])
def test_user_nfs_run_from_a_topology(runtime: str, tmp_path: Path, user_nfs: tuple[Path, Path],
                                      request: pytest.FixtureRequest, mode: str) -> None:
    """A file NF and an entry-point NF in a chain; in process mode both are forked by the fork server."""
    image = need(mode, request)
    nf_file, site = user_nfs
    out, probe = tmp_path / "out.pcap", tmp_path / "probe.txt"
    name = f"u{uuid.uuid4().hex[:6]}"
    opts = f", options: {{probe: '{probe}'}}" if mode == "process" else ""
    iso = f"isolation: {mode}" + (f", image: '{image}'" if image else "")
    topo = tmp_path / "topo.yaml"
    topo.write_text(textwrap.dedent(f"""\
        manager: {{name: {name}, exit_when_done: true}}
        ports: ["gen:size=64,flows=16,count=2000,rate=20k", "pcap-out:{out}"]
        nfs:
          - {{program: '{nf_file}', service: 1, {iso}{opts}}}
          - {{program: relay, service: 2, {iso}}}
        chains: {{default: [1, 2, out:1]}}
        """))
    r = subprocess.run([sys.executable, "-m", "onvm.cli.main", "run", str(topo)], capture_output=True,
                       text=True, env=env_with(site), cwd=tmp_path, timeout=180)
    assert r.returncode == 0, r.stderr
    assert len(pcap_records(out)) == 2000
    for label in ("tagger", "relay"):
        assert f"{label}: 1 of 1 instances of service" in r.stderr and f"({mode}," in r.stderr
    if mode == "process":
        (line,) = probe.read_text().splitlines()
        assert "onvm.topology._forkserver" in line  # forked from the warm parent, not a new interpreter


def test_onvm_nf_new_writes_an_nf_whose_test_passes_and_that_runs(tmp_path: Path, deploy) -> None:
    r = onvm("nf", "new", "my_nf", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "my_nf.py").exists() and (tmp_path / "test_my_nf.py").exists()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout + r.stderr
    dep = deploy(["--port", "gen:rate=5k", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf([str(tmp_path / "my_nf.py"), "--service", "1"])
    wait_for(lambda: [n for n in status(dep.name)["nfs"] if n["name"] == "my_nf" and n["rx"] > 0],
             timeout=30, what="packets through the new NF")
    assert onvm("nf", "new", "my_nf", "--dir", str(tmp_path)).returncode == 1  # never overwrites
