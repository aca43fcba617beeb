"""``onvm nf new NAME``: a skeleton NF and its test, ready to edit, run and test."""

from __future__ import annotations

import keyword
import os

from onvm.errors import ConfigError

NF_TEMPLATE = '''\
"""{name}: one line saying what this NF does.

Expects:   any packet.
Modifies:  nothing.
Actions:   NEXT (on along the packet's chain); DROP for packets shorter than --min-length.
Options:   --min-length BYTES.

Run it:    onvm nf {path} --service 1 [--name MANAGER]
Test it:   python -m pytest {test}
"""

from __future__ import annotations

import argparse

from onvm.nf import NF, from_args

SUMMARY = "one line saying what this NF does"
SERVICE = 1  # the default service; --service overrides it


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This NF's own options (the common ones, --name, --service, ..., come on their own)."""
    p.add_argument("--min-length", type=int, default=0, help="drop packets shorter than this (bytes)")


def make(args: argparse.Namespace) -> NF:
    """Build the NF from its parsed options."""
    nf = from_args("{name}", args)
    min_length = args.min_length

    @nf.packet
    def handle(pkt, meta):  # type: ignore[no-untyped-def]
        if pkt.len < min_length:
            meta.drop()
        else:
            meta.next()

    return nf
'''

TEST_TEMPLATE = '''\
"""Tests of {name}: its real native loop on crafted packets, no manager needed."""

from onvm.testing import make_nf, run_nf

import {name}

# Ethernet, IPv4 10.0.0.1 -> 10.0.0.2, UDP 1024 -> 53, 18 bytes of payload: 60 bytes
FRAME = bytes.fromhex("020000000002" "020000000001" "0800"  # Ethernet
                      "4500002e0000400040110000" "0a000001" "0a000002"  # IPv4
                      "04000035001a0000" + "00" * 18)  # UDP and payload


def test_passes_packets_on() -> None:
    res = run_nf(make_nf({name}), [FRAME])
    assert res.out == {{0: [FRAME]}}  # NEXT: on along the chain, here out of port 0
    assert res.dropped == 0


def test_drops_short_packets() -> None:
    res = run_nf(make_nf({name}, "--min-length", "61"), [FRAME])
    assert res.out == {{}}
    assert res.drops == {{"action": 1}}
'''


def write_skeleton(name: str, directory: str = ".") -> tuple[str, str]:
    """Write ``NAME.py`` and ``test_NAME.py`` into ``directory``; returns their paths.

    Refuses a name that is not a Python identifier and files that exist already,
    before writing anything."""
    if not name.isidentifier() or keyword.iskeyword(name) or not name.isascii():
        raise ConfigError(f"NF name '{name}': expected a Python identifier (letters, digits, _), "
                          f"e.g. my_nf")
    if not os.path.isdir(directory):
        raise ConfigError(f"'{directory}' is not a directory")
    path, test = os.path.join(directory, f"{name}.py"), os.path.join(directory, f"test_{name}.py")
    for p in (path, test):
        if os.path.exists(p):
            raise ConfigError(f"{p} exists already: choose another name or directory")
    fields = {"name": name, "path": path, "test": test}
    with open(path, "x", encoding="utf-8") as f:
        f.write(NF_TEMPLATE.format(**fields))
    with open(test, "x", encoding="utf-8") as f:
        f.write(TEST_TEMPLATE.format(**fields))
    return path, test
