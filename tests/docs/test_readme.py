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
