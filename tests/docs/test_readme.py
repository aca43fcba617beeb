"""The README's examples, run: an example that stops working fails the tests.

Which blocks run, and how, is in tests/docs/readme.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.docs import readme

GROUPS = readme.python_groups()


def test_examples_are_marked():
    assert sum(len(g) for g in GROUPS.values()) >= 2


@pytest.mark.parametrize("section", list(GROUPS))
def test_python_examples_run(section, tmp_path):
    r = subprocess.run([sys.executable, "-c", readme.python_script(GROUPS[section])], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"the README's Python examples in '{section}' failed:\n{r.stderr}"
