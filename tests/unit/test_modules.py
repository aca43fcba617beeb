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
