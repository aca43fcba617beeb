"""Helpers for running the example NFs in process on crafted packets."""

from __future__ import annotations

import argparse
from typing import Any

from onvm import nfs
from onvm.nf._nf import add_common_arguments


def build(name: str, *argv: str) -> Any:
    """The NF ``onvm nf NAME ARGV...`` would run (quiet), not yet running."""
    mod = nfs.load(name)
    p = argparse.ArgumentParser()
    add_common_arguments(p, service=mod.SERVICE)
    mod.add_arguments(p)
    return mod.make(p.parse_args([*argv, "--quiet"]))
