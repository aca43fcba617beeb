"""What the package imports at run time."""

from __future__ import annotations

import subprocess
import sys


def test_the_hooks_module_is_not_imported_at_run_time() -> None:
    """Test and benchmark entry points live in onvm._hooks, which the manager, NFs, the CLI
    and the topology runner never load."""
    code = ("import sys, onvm, onvm.cli.main, onvm.manager.manager, onvm.nf, onvm.topology.runner, "
            "onvm.web.server, onvm.control.server, onvm.nfs, onvm.bench; "
            "from onvm.cli.main import build_parser; build_parser(); "
            "print('onvm._hooks' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "False"


def test_every_native_module_is_rebuilt_when_a_shared_header_changes(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The modules share the region's layout through the headers: a build that skips one of
    them after a header changed leaves a module that refuses to load (another layout)."""
    import glob
    import os
    import runpy

    import setuptools

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    monkeypatch.chdir(root)
    built: dict[str, list[setuptools.Extension]] = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: built.update(kw))
    runpy.run_path("setup.py", run_name="setup")
    headers = set(glob.glob("src/onvm/_native/*.h"))
    assert "src/onvm/_native/onvm_layout.h" in headers
    modules = {e.name: set(e.depends) for e in built["ext_modules"]}
    assert {"onvm._native", "onvm._hooks"} <= set(modules)
    assert {name: sorted(headers - deps) for name, deps in modules.items()} == {name: [] for name in modules}
