"""The source distribution: it builds, installs with pip in a fresh virtual environment
(compiling both extensions from what it carries) and works there."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from onvm import __version__

ROOT = Path(__file__).resolve().parents[2]

SMOKE = """
from onvm.testing import make_nf, run_nf
frame = bytes.fromhex("020000000002" "020000000001" "0800" "4500002e0000400040110000" "0a000001" "0a000002"
                      "04000035001a0000" + "00" * 18)
res = run_nf(make_nf("simple_forward", "--quiet"), [frame])
assert res.out == {0: [frame]}, res
print("ok")
"""


def run(*argv: str | Path, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=timeout)
    assert r.returncode == 0, f"{argv}: {r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow
def test_sdist_builds_and_installs_in_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--skip-dependency-check", "-o", dist,
        ROOT, cwd=tmp_path)
    (sdist,) = dist.glob("pyonvm-*.tar.gz")
    assert sdist.name == f"pyonvm-{__version__}.tar.gz"
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for need in ("LICENSE", "CHANGELOG.md", "README.md", "src/onvm/_native/onvm_layout.h",
                 "src/onvm/_native/onvm_capi.h", "src/onvm/_native/hooks.c", "src/onvm/_native.pyi",
                 "src/onvm/py.typed", "src/onvm/web/static/app.js", "tests/unit/test_constants.py"):
        assert need in names, f"{need} is not in {sdist.name}"
    assert not [n for n in names if n.endswith((".so", ".pyc"))]

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", sdist, cwd=tmp_path, timeout=1200)
    assert run(venv / "bin" / "onvm", "--version", cwd=tmp_path).strip() == f"pyonvm {__version__}"
    assert run(venv / "bin" / "python", "-m", "onvm", "--version", cwd=tmp_path).strip() == \
        f"pyonvm {__version__}"
    assert "simple_forward" in run(venv / "bin" / "python", "-m", "onvm", "nf", "--list", cwd=tmp_path)
    # both extensions were built from the sdist, and the installed package is the one running
    where = run(venv / "bin" / "python", "-c", "import onvm, onvm._hooks; print(onvm.__file__)",
                cwd=tmp_path)
    assert where.startswith(str(venv))
    assert run(venv / "bin" / "python", "-c", SMOKE, cwd=tmp_path).strip() == "ok"
    meta = run(venv / "bin" / "python", "-c", "import importlib.metadata as m; d = m.distribution('pyonvm');"
               "print(d.metadata['License']); print(any('LICENSE' in str(f) for f in d.files))", cwd=tmp_path)
    assert meta.split() == ["BSD-3-Clause", "True"]
