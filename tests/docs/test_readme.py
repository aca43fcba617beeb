"""The README's examples, run: an example that stops working fails the tests.

Which blocks run, and how, is in tests/docs/readme.py and tests/docs/shell.py.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.docs import readme
from tests.docs.shell import VENV_BIN, Sandbox, SkipSection

SECTIONS = readme.sections()


def test_examples_are_marked():
    langs = [b.lang for blocks in SECTIONS.values() for b in blocks]
    assert langs.count("python") >= 2 and langs.count("sh") >= 4


def test_topology_examples_load():
    """The topology files the README shows (but the one that shows errors) are valid."""
    from onvm.topology import loads_topology

    files = [b for blocks in SECTIONS.values() for b in blocks
             if b.lang == "yaml" and not b.options.get("file", "bad").startswith("bad")]
    assert files
    for b in files:
        loads_topology(b.code, f"README.md:{b.line}")


@pytest.mark.parametrize("section", list(SECTIONS))
def test_section_examples_run(section, runtime, tmp_path):
    try:
        box = Sandbox(SECTIONS[section], tmp_path)
    except SkipSection as e:
        pytest.skip(str(e))
    try:
        box.run_section()
    finally:
        problems = box.stop()
        if box.testbed:  # safe to run twice
            subprocess.run([str(VENV_BIN / "onvm"), "testbed", "down", "--prefix", box.testbed],
                           capture_output=True, timeout=60)
    assert not problems, "\n".join(problems)
