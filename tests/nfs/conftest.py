"""Helpers for running the example NFs in process on crafted packets."""

from __future__ import annotations

from typing import Any

from onvm.testing import make_nf


def build(name: str, *argv: str) -> Any:
    """The NF ``onvm nf NAME ARGV...`` would run (quiet), not yet running."""
    return make_nf(name, *argv, "--quiet")
