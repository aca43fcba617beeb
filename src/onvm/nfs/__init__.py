"""The example NFs, run as ``onvm nf NAME``; each module is a short example of the API.

Every module defines ``SUMMARY`` (one line), ``SERVICE`` (its default service),
``add_arguments(parser)`` for its own options and ``make(args) -> NF``: the NF
program protocol, which NFs in files and installed packages follow too
(:func:`find` finds any of them; see ``onvm.nfs._programs``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from onvm.nfs._programs import GROUP, Program, find, installed, parser

__all__ = ["GROUP", "NAMES", "Program", "find", "installed", "load", "parser"]

NAMES = (
    "speed_tester",
    "simple_forward",
    "basic_monitor",
    "bridge",
    "firewall",
    "l2fwd",
    "router",
    "arp_response",
    "load_balancer",
    "nat",
    "flow_tracker",
    "payload_scan",
    "aes_encrypt",
    "aes_decrypt",
    "rate_limiter",
    "fair_queue",
    "load_generator",
    "skeleton",
)


def load(name: str) -> ModuleType:
    """The module of example NF ``name`` (dashes may stand for underscores)."""
    key = name.replace("-", "_")
    if key not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"onvm.nfs.{key}")
